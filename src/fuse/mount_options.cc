#include "fuse/mount_options.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <set>

#include <fmt/core.h>

namespace uext::fuse {
namespace {

// Flags libfuse hands to mount(2) unchanged; accepted so that fstab lines
// and fuse2fs habits work.
const std::set<std::string>& kernel_flag_names() {
  static const std::set<std::string> names = {
      "dev", "nodev", "suid", "nosuid", "exec", "noexec", "async", "sync", "dirsync", "atime", "noatime",
  };
  return names;
}

// Time flags the daemon applies itself (the kernel never changes atime on a
// FUSE inode) and libfuse does not know. norelatime changes nothing, as on
// the kernel (relatime is the default unless noatime or strictatime), nor
// does lazytime (atime goes to the image in a transaction of its own).
const std::set<std::string>& daemon_time_flag_names() {
  static const std::set<std::string> names = {
      "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime", "nolazytime",
  };
  return names;
}

bool parse_double(const std::string& text, double& out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(text.c_str(), &end);
  if (errno != 0 || *end != '\0' || !(v >= 0) || v > 1e9) return false;
  out = v;
  return true;
}

bool parse_uint(const std::string& text, uint64_t& out) {
  if (text.empty() || text[0] == '-') return false;
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str()) return false;
  uint64_t mult = 1;
  std::string suffix(end);
  if (suffix == "k" || suffix == "K") mult = 1ull << 10;
  else if (suffix == "m" || suffix == "M") mult = 1ull << 20;
  else if (suffix == "g" || suffix == "G") mult = 1ull << 30;
  else if (!suffix.empty()) return false;
  if (v > UINT64_MAX / mult) return false;
  out = v * mult;
  return true;
}

Error bad_value(const std::string& key, const std::string& value, const char* expected) {
  return Error(EINVAL, fmt::format("option '{}={}': expected {}", key, value, expected));
}

}  // namespace

Status parse_mount_option_list(const std::string& list, MountOptions& opts) {
  bool always_on = true;  // default_permissions: accepted, never turned off
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    if (comma == std::string::npos) comma = list.size();
    std::string item = list.substr(start, comma - start);
    start = comma + 1;
    if (item.empty()) continue;
    std::string key = item, value;
    bool has_value = false;
    if (size_t eq = item.find('='); eq != std::string::npos) {
      key = item.substr(0, eq);
      value = item.substr(eq + 1);
      has_value = true;
    }
    auto flag = [&](bool& field, bool v) -> Status {
      if (has_value) return Error(EINVAL, fmt::format("option '{}' takes no value", key));
      field = v;
      return {};
    };
    // A plain count (KiB, microseconds): digits only, no k/m/g suffix.
    auto count = [&](uint32_t& field, uint64_t max, const char* expected) -> Status {
      uint64_t v = 0;
      const bool digits = !value.empty() && value.find_first_not_of("0123456789") == std::string::npos;
      if (!has_value || !digits || !parse_uint(value, v) || v > max) return bad_value(key, value, expected);
      field = static_cast<uint32_t>(v);
      return {};
    };
    auto seconds = [&](double& field) -> Status {
      if (!has_value || !parse_double(value, field)) return bad_value(key, value, "seconds (a number >= 0)");
      return {};
    };
    Status s;
    if (key == "ro") s = flag(opts.read_only, true);
    else if (key == "rw") s = flag(opts.read_only, false);
    else if (key == "norecovery" || key == "noload") s = flag(opts.no_recovery, true);
    else if (key == "debug" || key == "fuse2fs_debug") s = flag(opts.debug, true);
    else if (key == "foreground") s = flag(opts.foreground, true);
    else if (key == "nochecksums" || key == "no_checksums") s = flag(opts.verify_checksums, false);
    else if (key == "direct_io" || key == "directio") s = flag(opts.direct_io, true);
    else if (key == "writeback_cache") s = flag(opts.writeback_cache, true);
    else if (key == "no_writeback_cache") s = flag(opts.writeback_cache, false);
    else if (key == "fakeroot") s = flag(opts.fakeroot, true);
    else if (key == "minixdf") s = flag(opts.minixdf, true);
    else if (key == "bsddf") s = flag(opts.minixdf, false);
    else if (key == "acl") s = flag(opts.acl, true);
    else if (key == "noacl") s = flag(opts.acl, false);
    else if (key == "allow_other") {
      s = flag(opts.allow_other, true);
      opts.allow_other_set = true;
    } else if (key == "noallow_other") {
      s = flag(opts.allow_other, false);
      opts.allow_other_set = true;
    } else if (key == "allow_root") s = flag(opts.allow_root, true);
    else if (key == "auto_unmount") s = flag(opts.auto_unmount, true);
    else if (key == "default_permissions") s = flag(always_on, true);
    else if (key == "use_root_reserve" || key == "reservation") s = flag(opts.use_root_reserve, true);
    else if (key == "resuid" || key == "resgid") {
      uint32_t id = 0;
      s = count(id, UINT32_MAX, "a numeric user or group id");
      if (s.ok()) (key == "resuid" ? opts.reserved_uid : opts.reserved_gid) = id;
    }
    else if (key == "clone_fd") s = flag(opts.clone_fd, true);
    else if (key == "entry_timeout") s = seconds(opts.entry_timeout);
    else if (key == "attr_timeout") s = seconds(opts.attr_timeout);
    else if (key == "negative_timeout") s = seconds(opts.negative_timeout);
    else if (key == "data_err") {
      if (value == "abort") opts.data_err_abort = true;
      else if (value == "ignore") opts.data_err_abort = false;
      else s = bad_value(key, value, "ignore or abort");
    } else if (key == "errors") {
      opts.on_error_set = true;
      if (value == "continue") opts.on_error = OnError::kContinue;
      else if (value == "remount-ro") opts.on_error = OnError::kRemountRo;
      else if (value == "panic") opts.on_error = OnError::kPanic;
      else s = bad_value(key, value, "continue, remount-ro or panic");
    } else if (key == "io_uring") {
      if (value == "auto") opts.io_uring = IoUringMode::kAuto;
      else if (value == "on") opts.io_uring = IoUringMode::kOn;
      else if (value == "off") opts.io_uring = IoUringMode::kOff;
      else s = bad_value(key, value, "auto, on or off");
    } else if (key == "partition") {
      s = count(opts.partition, 256, "a partition number, 1 to 256");
      if (s.ok() && opts.partition == 0) s = bad_value(key, value, "a partition number, 1 to 256");
    } else if (key == "offset" || key == "sizelimit") {
      uint64_t v = 0;
      if (!has_value || !parse_uint(value, v) || (key == "sizelimit" && v == 0)) {
        s = bad_value(key, value, key == "offset" ? "bytes (suffixes k, m, g)" : "bytes, more than 0 (suffixes k, m, g)");
      } else {
        (key == "offset" ? opts.offset : opts.size_limit) = v;
      }
    } else if (key == "cache_size") {
      uint64_t v = 0;
      if (!has_value || !parse_uint(value, v) || v < (1u << 20)) s = bad_value(key, value, "bytes, at least 1M (suffixes k, m, g)");
      else opts.cache_bytes = v;
    } else if (key == "page_cache" || key == "dirty_limit") {
      uint64_t v = 0;
      if (!has_value || !parse_uint(value, v) || v < (1u << 20)) s = bad_value(key, value, "bytes, at least 1M (suffixes k, m, g)");
      else (key == "page_cache" ? opts.page_cache_bytes : opts.dirty_limit_bytes) = v;
    } else if (key == "commit") {
      uint64_t v = 0;
      if (!has_value || !parse_uint(value, v) || v > 86400) s = bad_value(key, value, "seconds, 0 to 86400");
      else opts.commit_seconds = static_cast<uint32_t>(v);
    } else if (key == "read_ahead_kb") {
      // Already KiB: read_ahead_kb=1m is not 1 MiB.
      s = count(opts.read_ahead_kb, 65536, "KiB, 0 to 65536");
    } else if (key == "busy_poll_us") {
      s = count(opts.busy_poll_us, 100000, "microseconds, 0 to 100000");
    } else if (key == "max_threads") {
      uint64_t v = 0;
      if (!has_value || !parse_uint(value, v) || v < 1 || v > 1024) s = bad_value(key, value, "a count from 1 to 1024");
      else opts.max_threads = static_cast<unsigned>(v);
    } else if (key == "fsname") {
      if (!has_value || value.empty()) s = bad_value(key, value, "a name");
      else opts.fsname = value;
    } else if (key == "logfile") {
      if (!has_value || value.empty()) s = bad_value(key, value, "a file name");
      else opts.logfile = value;
    } else if (!has_value && (kernel_flag_names().count(key) || daemon_time_flag_names().count(key))) {
      if (kernel_flag_names().count(key)) opts.kernel_flags.push_back(key);
      if (key == "noatime") opts.noatime = true;
      if (key == "atime") opts.noatime = false;
      if (key == "strictatime") opts.strictatime = true;
      if (key == "nostrictatime") opts.strictatime = false;
      if (key == "nodiratime") opts.nodiratime = true;
      if (key == "diratime") opts.nodiratime = false;
    } else {
      s = Error(EINVAL, fmt::format("unknown mount option '{}' (see 'uext mount --help')", item));
    }
    if (!s.ok()) return s;
  }
  // ext4 mounts read-write without replaying and leaves the inconsistency
  // to e2fsck; uext does not write an image whose journal it ignored.
  if (opts.no_recovery && !opts.read_only) {
    return Error(EINVAL, "option 'norecovery' needs 'ro': a read-write mount always replays the journal");
  }
  return {};
}

void finish_mount_options(MountOptions& opts, bool running_as_root, uint64_t memory_bytes) {
  // A mount is a long-lived server of many programs, so its page cache is
  // sized like the kernel's rather than like the library's defaults (256M,
  // 64M dirty) for one-shot commands: dirty data up to a tenth of RAM (the
  // kernel's dirty_ratio is 20%), so a program that rewrites a few hundred
  // megabytes at random is not throttled into writing back page by page,
  // and clean pages up to a quarter.
  constexpr uint64_t kMiB = 1ull << 20;
  const uint64_t mem = memory_bytes ? memory_bytes : 2048 * kMiB;
  if (opts.dirty_limit_bytes == 0) opts.dirty_limit_bytes = std::clamp(mem / 10, 64 * kMiB, 4096 * kMiB);
  if (opts.page_cache_bytes == 0) {
    opts.page_cache_bytes = std::clamp(mem / 4, 256 * kMiB, 16384 * kMiB);
  }
  opts.page_cache_bytes = std::max(opts.page_cache_bytes, opts.dirty_limit_bytes);
  // As root the mount serves every user, as a kernel mount does; the
  // kernel's permission checks (default_permissions) keep them apart.
  // Not with fakeroot, which would hand every user root's powers here.
  if (!opts.allow_other_set && running_as_root && !opts.fakeroot) opts.allow_other = true;
  if (opts.debug) opts.foreground = true;  // the trace goes to the terminal
  if (opts.fsname.empty()) {
    std::error_code ec;
    auto abs = std::filesystem::absolute(opts.image, ec);
    opts.fsname = ec ? opts.image : abs.lexically_normal().string();
  }
}

std::vector<std::string> fuse_arguments(const MountOptions& opts) {
  // default_permissions: the kernel checks modes, owners, sticky
  // directories and supplementary groups exactly as for ext4 (fakeroot
  // asks for no checks at all).
  std::string o = opts.fakeroot ? "subtype=uext" : "default_permissions,subtype=uext";
  // fsname may hold commas; libfuse accepts them escaped with a backslash.
  std::string name;
  for (char c : opts.fsname) {
    if (c == ',' || c == '\\') name += '\\';
    name += c;
  }
  o += ",fsname=" + name;
  if (opts.read_only) o += ",ro";
  if (opts.allow_other) o += ",allow_other";
  if (opts.allow_root) o += ",allow_root";
  if (opts.auto_unmount) o += ",auto_unmount";
  for (const auto& f : opts.kernel_flags) o += "," + f;
  std::vector<std::string> args = {"uext", "-o", o};
  if (opts.debug) args.push_back("-d");
  return args;
}

std::string mount_options_help() {
  return R"(Mount options (-o, comma-separated; repeatable):
  ro                     mount read-only; a journal that needs recovery is
                         replayed in memory only, the image left as it is
  norecovery | noload    with ro: show the image as it lies, without replaying
                         the journal (as ext4's)
  rw                     mount read-write (default); replays the journal first
  debug                  trace every request (libfuse's trace and uext's own) on
                         stderr; implies foreground.  fuse2fs_debug: the same
  foreground             stay in the foreground (as -f)
  errors=continue|remount-ro|panic
                         on corruption or an I/O error: log and go on, refuse
                         further changes, or unmount at once (default: the
                         image's setting, tune2fs -e; mke2fs's is continue)
  entry_timeout=SECS     how long the kernel caches names (default 1)
  attr_timeout=SECS      how long the kernel caches attributes (default 1)
  negative_timeout=SECS  how long the kernel caches "no such name" (default 0)
  writeback_cache        let the kernel buffer writes in its page cache: faster
                         small writes, but ENOSPC and I/O errors surface at
                         fsync/close instead of at write() (default off)
  no_writeback_cache     write() goes to uext synchronously (default)
  acl                    POSIX ACLs as ext4 has them (default): the kernel
                         checks them, new files and directories inherit a
                         directory's default ACL instead of the umask, chmod
                         and the access ACL keep each other in step
  noacl                  no ACLs: the umask always applies; getfacl shows the
                         mode, setfacl fails (EOPNOTSUPP), as ext4's noacl
  direct_io | directio   read and write the image with O_DIRECT
  fakeroot               serve every caller as root (fuse2fs's option): no
                         permission checks, any owner may be set by anyone,
                         setuid bits kept; new files still belong to their
                         creator. For building images as a user; the mount
                         stays the mounting user's alone unless allow_other
                         is given (ACLs are stored but not checked)
  bsddf | minixdf        statfs's total: data blocks only (bsddf, default) or
                         every block with the metadata (minixdf), as ext4's
  offset=BYTES           the filesystem starts this far into IMG: a partition
                         of a whole-disk image (as fuse2fs's and mount's
                         offset=; the partition table's start sector times
                         512; suffixes k, m, g)
  sizelimit=BYTES        with offset=: the partition's length (default: to
                         the end of IMG), so nothing past it is touched
  partition=N            the filesystem is partition N of IMG's MBR or GPT:
                         its offset and length from the table
  cache_size=BYTES       metadata cache size (default 64M; suffixes k, m, g)
  page_cache=BYTES       file data cached in the daemon (default a quarter of
                         RAM, at least 256M)
  dirty_limit=BYTES      written data the daemon may hold before writers write
                         it back themselves (default a tenth of RAM, at least
                         64M); the rest is written back in the background
                         after 3 s, and at fsync, sync and unmount
  commit=SECS            commit the journal every SECS seconds (default 5; 0:
                         only on fsync, sync and unmount)
  data_err=ignore|abort  a file data write that fails: reported to fsync while
                         the metadata commits (ignore, the default, as ext4's),
                         or the journal aborts so nothing after it commits
  use_root_reserve       every caller's allocations may use the blocks kept
                         for root; without it (default) only those ext4
                         lets: the image's reserved uid (root unless tune2fs
                         -u) and group (tune2fs -g), and CAP_SYS_RESOURCE
  resuid=UID, resgid=GID the user and group that may use the blocks kept
                         for root, instead of the image's (as ext4's options)
  nochecksums            accept wrong metadata checksums (only with ro)
  read_ahead_kb=KIB      the kernel's readahead for the mount (default 1024,
                         the largest READ; 0: the kernel's 128); set only
                         when the daemon runs as root
  max_threads=N          request threads (default 8)
  busy_poll_us=USEC      after a request, poll /dev/fuse this long for the
                         next before sleeping (default 200; 0: never). Saves
                         the cross-CPU wakeup that dominates small requests
                         on virtual machines, for a busy CPU while requests
                         flow; off when the daemon may use less than two
                         CPUs (its affinity or its cgroup's CPU quota)
  clone_fd               one /dev/fuse descriptor per thread
  io_uring=auto|on|off   FUSE over io_uring (Linux 6.14+): requests are queued
                         per CPU and served by threads pinned to that CPU,
                         saving the cross-CPU wakeup of /dev/fuse. auto: use
                         it when the kernel offers it
                         (/sys/module/fuse/parameters/enable_uring is Y) and
                         registration works, else /dev/fuse; on: fail the
                         mount if it cannot be used; off (default): /dev/fuse
                         only, which with busy polling is as fast or faster
  allow_other            let every user access the mount (default when run
                         as root; other users need user_allow_other in
                         /etc/fuse.conf)
  noallow_other          only the mounting user (default for other users)
  allow_root             only the mounting user and root
  auto_unmount           unmount when the daemon dies (fusermount3 watches it)
  fsname=NAME            the source shown in /proc/mounts (default: the image)
  logfile=FILE           append diagnostics here (default: stderr in the
                         foreground, syslog as a daemon)
  default_permissions    accepted; on unless fakeroot: the kernel checks permissions
  relatime, noatime, strictatime, nodiratime (and atime, norelatime,
  nostrictatime, diratime, lazytime, nolazytime)
                         how reads change atime, as for the kernel's ext4:
                         relatime (default: when atime is not newer than
                         mtime or ctime, or is a day old), never, always;
                         nodiratime spares directories; never changes ctime
  dev, nodev, suid, nosuid, exec, noexec, sync, async, dirsync
                         kernel mount flags, passed to mount(2) as they are
)";
}

}  // namespace uext::fuse
