// `uext mount` options: what -o accepts, its parsing and the --help text.
// Kept apart from the daemon so the CLI and the tests can parse and print
// options without libfuse.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "uext/filesystem.h"
#include "uext/status.h"

namespace uext::fuse {

// What ext4's errors= mount option chooses when the image turns out to be
// corrupt (EUCLEAN, EBADMSG) or the device fails (EIO).
enum class OnError { kContinue, kRemountRo, kPanic };

// FUSE over io_uring (Linux 6.14+, fuse.enable_uring=Y): requests are queued
// per CPU and answered by daemon threads pinned to that CPU. kAuto uses it
// when the kernel offers it and falls back to /dev/fuse otherwise; kOn
// fails the mount instead; kOff never tries.
enum class IoUringMode { kAuto, kOn, kOff };

struct MountOptions {
  std::string image;
  std::string mountpoint;

  bool read_only = false;
  bool no_recovery = false;  // ext4's norecovery: with ro, no replay in memory
  bool foreground = false;
  bool debug = false;
  bool verify_checksums = true;
  bool direct_io = false;
  // The filesystem's place in the image file: a partition of a disk image.
  uint64_t offset = 0;
  uint64_t size_limit = 0;  // 0: the rest of the file
  uint32_t partition = 0;   // or by number in its MBR/GPT (0: none)
  bool writeback_cache = false;
  // fuse2fs's fakeroot: every caller is served as root would be (no
  // permission checks, by the kernel or here; setuid bits kept).
  bool fakeroot = false;
  // statfs's total: data blocks (bsddf, ext4's default) or every block
  // (minixdf).
  bool minixdf = false;
  bool allow_other = false;  // defaulted to true below when run as root
  bool allow_other_set = false;
  bool allow_root = false;
  bool auto_unmount = false;
  bool use_root_reserve = false;
  // ext4's resuid= and resgid=: who may use the root reserve, instead of
  // the superblock's s_def_resuid and s_def_resgid.
  std::optional<uint32_t> reserved_uid, reserved_gid;
  bool data_err_abort = false;  // ext4's data_err=abort
  // POSIX ACLs enforced by the kernel and inherited at create (ext4's
  // `acl`, its default); false is `noacl`.
  bool acl = true;
  OnError on_error = OnError::kContinue;
  // Whether errors= was given; if not, the image's own setting (s_errors,
  // tune2fs -e) decides, as for the kernel's mount.
  bool on_error_set = false;

  double entry_timeout = 1.0;
  double attr_timeout = 1.0;
  double negative_timeout = 0.0;

  uint64_t cache_bytes = 64u << 20;
  // The library's page cache for file data and its dirty limit (0: chosen
  // from the machine's memory by finish_mount_options).
  uint64_t page_cache_bytes = 0;
  uint64_t dirty_limit_bytes = 0;
  uint32_t commit_seconds = 5;
  // The kernel's readahead window for the mount (its bdi's read_ahead_kb),
  // set after mounting when the daemon may (root); 0 leaves the kernel's
  // 128 KiB. At 128 KiB a sequential read costs eight READs a megabyte.
  uint32_t read_ahead_kb = 1024;
  unsigned max_threads = 8;
  // After each request the thread that served it polls /dev/fuse for the
  // next one this long before it sleeps (0: never polls). On machines where
  // waking a sleeping thread on another CPU is slow (virtual machines that
  // halt idle vCPUs) that wakeup dominates a small request; polling skips
  // it at the cost of a busy CPU while requests keep coming. Not used when
  // the daemon may use fewer than two CPUs (affinity, cgroup CPU quota),
  // where it would take the CPU from the program or spend the quota.
  uint32_t busy_poll_us = 200;
  bool clone_fd = false;
  // Off by default: since /dev/fuse is polled (busy_poll_us), it is as fast
  // for small files and faster for the rest (bench/README.md).
  IoUringMode io_uring = IoUringMode::kOff;

  std::string fsname;   // default: the image's absolute path
  std::string logfile;  // default: stderr in the foreground, syslog as a daemon

  // Kernel mount flags handed to libfuse as they are (dev, suid, exec,
  // noatime, ...): libfuse knows them and passes them to mount(2).
  std::vector<std::string> kernel_flags;

  // How reads change atime, from the time flags as the kernel reads them:
  // relatime unless noatime, strictatime over both; nodiratime spares
  // directories. FUSE leaves atime to the daemon (the kernel never updates
  // it on a FUSE inode), so the daemon applies them.
  bool noatime = false;
  bool strictatime = false;
  bool nodiratime = false;
  AtimeUpdate file_atime() const {
    return strictatime ? AtimeUpdate::kAlways : noatime ? AtimeUpdate::kNever : AtimeUpdate::kRelative;
  }
  AtimeUpdate dir_atime() const { return nodiratime ? AtimeUpdate::kNever : file_atime(); }
};

// Parses one -o argument (comma-separated list) into `opts`. Unknown
// options fail with EINVAL naming the option.
Status parse_mount_option_list(const std::string& list, MountOptions& opts);

// Fills what depends on the environment: allow_other for root, fsname, and
// page cache sizes from `memory_bytes` (the machine's RAM; 0 if unknown).
void finish_mount_options(MountOptions& opts, bool running_as_root, uint64_t memory_bytes = 0);

// The libfuse argument vector for fuse_session_new (-o list, -d).
std::vector<std::string> fuse_arguments(const MountOptions& opts);

// The "Mount options" section of `uext mount --help`: every option, one a line.
std::string mount_options_help();

}  // namespace uext::fuse
