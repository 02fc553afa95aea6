// uext: an ext2/ext3/ext4 filesystem in user space.
//
//   auto fs = uext::Filesystem::open("disk.img", {});
//   if (!fs) { report(fs.error()); }
//   auto ino = (*fs)->resolve("/etc/hostname");
//   std::vector<std::byte> buf(4096);
//   auto n = (*fs)->read(*ino, 0, buf);
//
// All methods may be called from many threads at once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "uext/block_device.h"
#include "uext/mapping.h"
#include "uext/status.h"

namespace uext {

using Ino = uint32_t;
inline constexpr Ino kRootIno = 2;

struct Options {
  bool read_only = true;
  // Read-only: an image whose journal needs recovery is replayed in memory,
  // the image never written, so that reads show what the last commit left,
  // as the kernel's read-only mount does. Off: the image as it lies on disk
  // (what dumpe2fs and debugfs show). A journal that cannot be replayed
  // leaves the image as it lies, and VolumeInfo says why.
  bool replay_read_only = true;
  // Verify metadata checksums (metadata_csum images). Off only to salvage
  // data from a damaged image.
  bool verify_checksums = true;
  // Bypass the host page cache for file data (image files only).
  bool direct_io = false;
  // Opening by path: the filesystem starts `image_offset` bytes into the
  // file (a partition of a disk image) and the device spans at most
  // `image_size_limit` bytes (0: the rest of the file).
  uint64_t image_offset = 0;
  uint64_t image_size_limit = 0;
  // Or the partition of this number (1-based) in the image's MBR or GPT,
  // whose start and length are taken from the table; 0: none.
  uint32_t image_partition = 0;
  // Bytes of metadata blocks kept in memory.
  size_t metadata_cache_bytes = 64u << 20;
  // Read-write: commit the journal this often (0: only on sync/close).
  uint32_t commit_interval_ms = 5000;
  // Read-write: allocations may use the blocks the superblock reserves for
  // root (s_r_blocks_count), as a process with CAP_SYS_RESOURCE may.
  // Without it, a server decides per caller (uext/caller.h), by these ids
  // (ext4's resuid= and resgid=; unset: the superblock's s_def_resuid and
  // s_def_resgid).
  bool use_root_reserve = false;
  std::optional<uint32_t> reserved_uid, reserved_gid;
  // Read-write: delayed allocation for extent-mapped regular files, as
  // ext4 does by default. write() reserves space and caches the data;
  // blocks are allocated at writeback, a run of pages at a time.
  bool delayed_allocation = true;
  // Read-write, journaled images: ext4's data_err=abort. A data write that
  // fails after its blocks were mapped in a handle (writeback,
  // page_mkwrite) aborts the journal, so that mapping never commits and
  // nothing changes after it; the image keeps its last commit and is
  // marked for e2fsck at the next open. Off (data_err=ignore, the
  // kernel's default): the mapping commits, the error reaches fsync, and
  // the blocks may show what they held before.
  bool data_err_abort = false;
  // The page cache: clean pages beyond `page_cache_bytes` are evicted;
  // writers write back themselves past `dirty_limit_bytes`; background
  // writeback runs every `writeback_interval_ms` and writes data dirty for
  // longer than `dirty_expire_ms` (or everything past a quarter of the limit).
  uint64_t page_cache_bytes = 256ull << 20;
  uint64_t dirty_limit_bytes = 64ull << 20;
  uint32_t dirty_expire_ms = 3000;
  uint32_t writeback_interval_ms = 500;
  // How mappings (mmap) catch their faults.
  FaultHandling fault_handling = FaultHandling::kAuto;
  // POSIX ACLs as ext4 mounted with `acl` (its default) keeps them: new
  // inodes inherit their directory's default ACL (instead of the umask),
  // chmod rewrites the access ACL, setting the access ACL sets the mode.
  // Off is ext4's `noacl`: the umask always applies, and the
  // system.posix_acl_* attributes are EOPNOTSUPP and not listed.
  bool posix_acl = true;
};

// Superblock settings a read-write open may change, as tune2fs changes
// them (Filesystem::tune); each absent one stays.
struct Tune {
  std::optional<std::string> label;             // at most 16 bytes
  std::optional<uint16_t> errors_behavior;      // 1 continue, 2 remount-ro, 3 panic
  std::optional<uint64_t> reserved_blocks;      // kept for root; at most half the blocks
  std::optional<uint32_t> reserved_uid, reserved_gid;  // who may use them
  std::optional<int16_t> max_mount_count;       // -1: no check by count
  std::optional<uint32_t> check_interval;       // seconds; 0: no check by time
};

struct Time {
  int64_t sec = 0;
  uint32_t nsec = 0;
  bool operator==(const Time&) const = default;
};

struct Stat {
  Ino ino = 0;
  uint32_t mode = 0;  // S_IFMT type bits and permission bits
  uint32_t nlink = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t size = 0;
  uint64_t blocks = 0;  // 512-byte units, as st_blocks
  uint32_t rdev_major = 0;
  uint32_t rdev_minor = 0;
  Time atime, mtime, ctime, crtime;
  uint32_t flags = 0;  // ext4 inode flags (chattr)
  uint32_t generation = 0;
};

struct DirEntry {
  Ino ino = 0;
  uint32_t type = 0;  // S_IFMT bits of the entry's type, 0 if the image does not record it
  std::string name;
};

// A mapped run of a file: `length` bytes at file offset `logical` live at
// device byte offset `physical`. Unwritten (preallocated) runs read as zeros.
struct FileExtent {
  uint64_t logical = 0;
  uint64_t physical = 0;
  uint64_t length = 0;
  bool unwritten = false;
};

// The journal as its superblock and a read-only scan of the log describe it.
struct JournalInfo {
  bool present = false;
  uint64_t blocks = 0;    // s_maxlen
  uint32_t sequence = 0;  // first transaction expected in the log
  uint32_t start = 0;     // log block of that transaction; 0 when the log is empty
  // s_errno: nonzero (a negative errno) when a journal aborted and no
  // read-write open has turned it into the "with errors" state since.
  int32_t recorded_errno = 0;
  // What a replay would apply (nonzero only when the image needs recovery).
  uint32_t pending_transactions = 0;
  uint64_t pending_blocks = 0;
  std::string problem;  // why the journal could not be read, when it could not
};

struct VolumeInfo {
  std::string label;
  std::string uuid;
  uint32_t block_size = 0;
  uint64_t blocks_count = 0;
  uint64_t free_blocks = 0;
  uint64_t reserved_blocks = 0;
  uint32_t inodes_count = 0;
  uint32_t free_inodes = 0;
  uint32_t inode_size = 0;
  uint32_t group_count = 0;
  uint32_t blocks_per_group = 0;
  uint32_t inodes_per_group = 0;
  std::vector<std::string> features;
  std::string state;  // "clean", "not clean", "clean with errors", ...
  // s_errors, set by mke2fs -e or tune2fs -e: what a mount does on an error
  // unless told otherwise (1 continue, 2 remount read-only, 3 panic).
  uint16_t errors_behavior = 1;
  bool needs_recovery = false;  // the journal holds transactions not yet replayed
  bool read_only = true;        // how uext opened it
  // Journal transactions replayed when the image was opened: into the
  // image (read-write), or, read-only, in memory only (replayed_in_memory;
  // the image still needs recovery).
  uint32_t replayed_transactions = 0;
  bool replayed_in_memory = false;
  // Read-only: why the journal could not be replayed in memory (empty: it
  // was, or needed no replay).
  std::string replay_problem;
  std::string read_only_reason;  // why uext chose read-only, if it did
  int64_t mkfs_time = 0, mount_time = 0, write_time = 0;
  uint32_t mount_count = 0;
  uint32_t journal_inum = 0;
  // The quota feature's files (0: that kind has none).
  uint32_t user_quota_inum = 0, group_quota_inum = 0, project_quota_inum = 0;
  JournalInfo journal;
  std::string default_hash;
  // The error record the superblock keeps (ext4_error's, and uext's when a
  // change is left half made): how many errors, the first and the latest.
  struct ErrorRecord {
    int64_t time = 0;  // 0: none recorded
    std::string function;
    uint32_t line = 0;
    uint32_t ino = 0;
    uint64_t block = 0;
    std::string err;  // "EIO", "EFSCORRUPTED", ...; empty when not recorded
  };
  uint32_t error_count = 0;
  ErrorRecord first_error, last_error;
};

// Who creates an inode.
struct Owner {
  uint32_t uid = 0;
  uint32_t gid = 0;
  // The creating process's umask (permission bits only). As on ext4, it
  // applies only where the directory has no default ACL; there the
  // default ACL masks the mode instead. 0 takes the mode as given.
  uint32_t umask = 0;
};

// The mode after clearing as Linux does for a write, truncate or chown by a
// caller without CAP_FSETID: setuid always, setgid only with group execute
// (without it the bit means mandatory locking, which stays).
inline uint32_t mode_without_setid(uint32_t mode) {
  mode &= ~uint32_t{04000};
  if (mode & 00010) mode &= ~uint32_t{02000};
  return mode;
}

// How reading a file or listing a directory changes its atime: the mount
// options of these names.
enum class AtimeUpdate {
  kNever,     // noatime
  kRelative,  // relatime (Linux's default): when atime is not newer than mtime or ctime, or is a day old
  kAlways,    // strictatime: every time
};

// The second form of read(): what a server of reads (the FUSE daemon)
// asks of it.
struct ReadOptions {
  // The reader's atime policy. read() itself changes nothing: it only
  // finds out, under the lock it holds anyway, whether this read is due to
  // change atime, and sets `atime_due`; the server then calls touch_atime().
  AtimeUpdate atime = AtimeUpdate::kNever;
  bool atime_due = false;  // set by read()
};

// The second form of write(): what a server (the FUSE daemon) asks of it.
struct WriteOptions {
  // For a server that answers its own client as soon as the write is
  // certain. Called once on success, before write() returns: with delayed
  // allocation as soon as space for the n bytes is reserved and their pages
  // are in place, before the bytes are copied (reads of the file wait for
  // the copy); otherwise at the end. It runs with the inode's locks held and
  // must not call into the filesystem. Should the copy fail after it (no
  // memory for a page), write() returns the error and keeps it as a
  // writeback error, which the file's next fsync reports.
  std::function<void(size_t n)> accepted;
  // A writer without CAP_FSETID: clear setuid, and setgid when group
  // execute is set, as ext4 does on write (file_remove_privs), under the
  // same inode lock as the write. `setid_dropped` then hears the new
  // permission bits, if anything was cleared.
  bool drop_setid = false;
  std::function<void(uint32_t mode)> setid_dropped;
};

// What setattr changes: the fields that hold a value.
struct SetAttr {
  std::optional<uint32_t> mode;  // permission bits, setuid/setgid/sticky; the type stays
  std::optional<uint32_t> uid;
  std::optional<uint32_t> gid;
  std::optional<uint64_t> size;
  std::optional<Time> atime;
  std::optional<Time> mtime;
  bool atime_now = false;  // set atime (mtime) to the current time
  bool mtime_now = false;
  // Leave ctime alone: for the access-time update a read makes (relatime),
  // which is not a change of the inode in POSIX's sense.
  bool keep_ctime = false;
};

// statfs(2).
struct FsStats {
  uint32_t block_size = 0;
  uint64_t blocks = 0;            // data blocks (total minus the overhead of metadata)
  uint64_t total_blocks = 0;      // every block, metadata included (ext4's minixdf)
  uint64_t free_blocks = 0;
  uint64_t available_blocks = 0;  // free minus the root reserve
  uint64_t files = 0;
  uint64_t free_files = 0;
  uint32_t name_max = 255;
};

// renameat2(2) flags (the same values as Linux's).
inline constexpr unsigned kRenameNoReplace = 1;
inline constexpr unsigned kRenameExchange = 2;
inline constexpr unsigned kRenameWhiteout = 4;
// fallocate(2) modes (the same values as Linux's FALLOC_FL_*).
inline constexpr int kFallocKeepSize = 0x01;
inline constexpr int kFallocPunchHole = 0x02;
inline constexpr int kFallocZeroRange = 0x10;
// setxattr flag of uext's own (beside XATTR_CREATE 1, XATTR_REPLACE 2).
inline constexpr int kXattrAclKillSgid = 0x100;

class Filesystem {
 public:
  virtual ~Filesystem() = default;

  static Result<std::unique_ptr<Filesystem>> open(const std::string& image_path,
                                                  const Options& options);
  static Result<std::unique_ptr<Filesystem>> open(std::unique_ptr<BlockDevice> device,
                                                  const Options& options);

  virtual VolumeInfo info() const = 0;

  // Read-write images: makes every change so far durable (syncfs).
  virtual Status sync() = 0;
  // Flushes everything and leaves the image clean with nothing to replay.
  // The destructor does the same, without a way to report failure.
  virtual Status close() = 0;

  // Name lookup in a directory. ENOENT when absent, ENOTDIR when `dir` is not one.
  virtual Result<Ino> lookup(Ino dir, std::string_view name) = 0;
  // Resolves an absolute path ("/" is the root). Symlinks in the middle are
  // followed (ELOOP past 40); the last component is followed only when
  // `follow_last` is set.
  virtual Result<Ino> resolve(std::string_view path, bool follow_last = true) = 0;

  virtual Result<Stat> stat(Ino ino) = 0;

  // Reads up to buf.size() bytes at `offset`; returns the count, short only
  // at end of file. Holes and unwritten extents read as zeros. EISDIR for a directory.
  virtual Result<size_t> read(Ino ino, uint64_t offset, std::span<std::byte> buf) = 0;
  // read() as a server needs it; see ReadOptions.
  virtual Result<size_t> read(Ino ino, uint64_t offset, std::span<std::byte> buf, ReadOptions& options) = 0;

  // Lists a directory in on-disk order, "." and ".." included. `visit`
  // returns false to stop early. `cookie` resumes a listing: pass 0 to
  // start, or a value `visit` was given to continue after that entry.
  using DirVisitor = std::function<bool(const DirEntry& entry, uint64_t next_cookie)>;
  virtual Status readdir(Ino dir, uint64_t cookie, const DirVisitor& visit) = 0;
  Result<std::vector<DirEntry>> list_directory(Ino dir);

  virtual Result<std::string> readlink(Ino ino) = 0;

  virtual Result<std::vector<std::string>> listxattr(Ino ino) = 0;
  // ENODATA when absent.
  virtual Result<std::string> getxattr(Ino ino, std::string_view name) = 0;

  // The file's mapped runs in logical order (holes are the gaps).
  virtual Result<std::vector<FileExtent>> extents(Ino ino) = 0;

  // ---- Changing the image (read-write opens; EROFS otherwise) ----
  //
  // Every operation is atomic with respect to a crash: after a replay the
  // image holds all of it or none of it, and e2fsck finds it clean either
  // way. An operation is durable once fsync() of the inode it changed (or
  // sync()) returns, or once the journal's timed commit has run.
  // Names are one path component: EINVAL for "", "." or ".." or a name
  // holding '/', ENAMETOOLONG past 255 bytes. Permission checks are the
  // caller's (the FUSE daemon lets the kernel do them): the library is root.

  // Creates a regular file, device, fifo or socket (`mode` holds the S_IFMT
  // type and the permission bits; rdev the device numbers). Ownership as
  // the kernel gives it: `owner`, except that a directory with the setgid
  // bit passes its group on. EEXIST when the name is taken.
  // Permission bits as ext4 gives them (posix_acl_create): in a directory
  // with a default ACL, `mode` masked by that ACL, and an access ACL when
  // the result says more than a mode (mkdir also copies the default ACL);
  // elsewhere `mode` less owner.umask. Symlinks are always 0777.
  virtual Result<Stat> mknod(Ino dir, std::string_view name, uint32_t mode, const Owner& owner,
                             uint32_t rdev_major = 0, uint32_t rdev_minor = 0) = 0;
  Result<Stat> create(Ino dir, std::string_view name, uint32_t mode, const Owner& owner);
  // EMLINK when `dir` already has the most subdirectories a directory may.
  virtual Result<Stat> mkdir(Ino dir, std::string_view name, uint32_t mode, const Owner& owner) = 0;
  virtual Result<Stat> symlink(Ino dir, std::string_view name, std::string_view target,
                               const Owner& owner) = 0;
  // A new name for an existing non-directory. EPERM for a directory, EMLINK
  // at 65000 links.
  virtual Result<Stat> link(Ino ino, Ino new_dir, std::string_view new_name) = 0;
  // Removes a name. The inode goes when its last link does, unless it is
  // retained (below): then it lives on, on the orphan list, until released.
  // EISDIR for a directory (use rmdir).
  virtual Status unlink(Ino dir, std::string_view name) = 0;
  // ENOTEMPTY unless the directory holds only "." and "..".
  virtual Status rmdir(Ino dir, std::string_view name) = 0;
  // rename(2) and renameat2(2): kRenameNoReplace fails with EEXIST when the
  // new name exists; kRenameExchange swaps two existing names. Without
  // flags an existing target is replaced (a directory only by an empty
  // directory). EINVAL when a directory would move into itself.
  // kRenameWhiteout leaves at the old name a whiteout (overlayfs's mark of
  // a removed name): a character device 0:0 with no permission bits, owned
  // by `whiteout_owner`, made in the rename's transaction. It does not go
  // with kRenameExchange (EINVAL). Callers check CAP_MKNOD, as Linux does.
  virtual Status rename(Ino old_dir, std::string_view old_name, Ino new_dir, std::string_view new_name,
                        unsigned flags = 0, const Owner& whiteout_owner = {}) = 0;

  // Changes what `attr` sets; a size change truncates or extends (a hole).
  // ctime is set to now whenever anything changes (unless keep_ctime).
  // A mode change rewrites an access ACL's owner, group-or-mask and other
  // entries to match, in the same transaction (posix_acl_chmod).
  virtual Result<Stat> setattr(Ino ino, const SetAttr& attr) = 0;
  Status truncate(Ino ino, uint64_t size);
  // The atime update that reading `ino` (a file's bytes, a directory's
  // entries, a symlink's target) makes under `policy`, as the kernel's
  // touch_atime: atime becomes now, ctime stays (a read changes nothing).
  // read() and the directory calls leave atime alone, so that a program
  // reading an image changes nothing it did not ask for; a server of reads
  // (uext mount) calls this after a read that ReadOptions found due, and
  // after listing a directory. Nothing on a read-only filesystem.
  virtual Status touch_atime(Ino ino, AtimeUpdate policy) = 0;
  // Whether a read of `ino` now would change its atime under `policy`
  // (false on a read-only filesystem). A server that lets a client cache
  // pages asks before it does, so that a read due to update atime reaches
  // it.
  virtual Result<bool> atime_due(Ino ino, AtimeUpdate policy) = 0;

  // Writes at `offset`, extending the file (a hole in between) as needed;
  // returns the count written: buf.size(), or fewer when space ran out
  // part-way (the leading bytes, as write(2) may; the next call gets
  // ENOSPC), or an error (ENOSPC, EFBIG past the largest file the format
  // allows) having written nothing. With delayed allocation the data goes
  // to the page cache and space is only reserved; either way ENOSPC comes
  // from this call, never later. Ordered data: the bytes reach the image
  // before the metadata that points at them.
  virtual Result<size_t> write(Ino ino, uint64_t offset, std::span<const std::byte> buf) = 0;
  // write() as a server (the FUSE daemon) needs it; see WriteOptions.
  virtual Result<size_t> write(Ino ino, uint64_t offset, std::span<const std::byte> buf,
                               const WriteOptions& options) = 0;
  // fallocate(2): mode 0 or kFallocKeepSize allocates (as unwritten extents
  // on extent-mapped files, else EOPNOTSUPP), kFallocPunchHole (with
  // kFallocKeepSize) frees, kFallocZeroRange zeroes.
  virtual Status fallocate(Ino ino, int mode, uint64_t offset, uint64_t length) = 0;
  // lseek(2) with SEEK_DATA or SEEK_HOLE (unwritten extents count as holes,
  // as the kernel reports them when they hold no written pages). ENXIO past
  // the end.
  virtual Result<uint64_t> seek(Ino ino, uint64_t offset, int whence) = 0;
  // Makes the inode's data and metadata durable. `datasync` may skip a
  // commit that only holds timestamps (fdatasync).
  virtual Status fsync(Ino ino, bool datasync = false) = 0;
  // Writeback errors as each open file description sees them (Linux's errseq):
  // sample at open; fsync with the sample reports an error that happened after it, once per description.
  virtual uint64_t wb_err_sample(Ino ino) = 0;
  virtual Status fsync(Ino ino, bool datasync, uint64_t& wb_err_seen) = 0;
  virtual Result<FsStats> statfs() = 0;
  // Changes the superblock's settings in one journal handle. EINVAL (naming
  // the setting) for a value it cannot take; EROFS read-only.
  virtual Status tune(const Tune& settings) = 0;

  // `name` is the full name ("user.x", "trusted.x", "security.x",
  // "system.posix_acl_access"; ACLs in the VFS format getxattr returns).
  // flags: XATTR_CREATE (EEXIST when present) or XATTR_REPLACE (ENODATA
  // when absent). ENOSPC when it fits neither in the inode nor in a block.
  // ACLs as ext4 sets them: the value must be a valid ACL (EINVAL naming
  // the fault); the access ACL sets the mode's permission bits, and one
  // equivalent to a mode is stored as that mode alone; a value of only the
  // header removes the ACL; a default ACL on a non-directory is EACCES;
  // XATTR_CREATE/REPLACE do not apply to them (as in the kernel), and
  // kXattrAclKillSgid with an access ACL also clears the setgid bit
  // (posix_acl_update_mode, for a caller neither in the file's group nor
  // privileged). Removing an absent ACL succeeds, as on ext4.
  virtual Status setxattr(Ino ino, std::string_view name, std::string_view value, int flags = 0) = 0;
  virtual Status removexattr(Ino ino, std::string_view name) = 0;

  // References from open files (or a FUSE lookup count): an unlinked inode
  // stays, readable and writable, until its last reference is released;
  // the orphan list keeps a crash from leaking it.
  virtual void retain(Ino ino) = 0;
  virtual Status release(Ino ino, uint64_t count = 1) = 0;

  // ---- Mappings (uext/mapping.h) ----
  // mmap(2) of a regular file: `length` bytes from `offset` (a multiple of
  // 4096), kProtRead and/or kProtWrite, kMapShared or kMapPrivate. Shared
  // mappings share the page cache's pages: stores are seen by read() and
  // other mappings at once, write() is seen by the mapping. A shared
  // writable mapping needs a read-write open (EACCES). The mapping holds a
  // reference to the inode (retain) until it is destroyed.
  Result<std::unique_ptr<Mapping>> mmap(Ino ino, uint64_t offset, size_t length, int prot, int flags);
  // What mappings of this filesystem use (kUserfaultfd or kSignal).
  FaultHandling fault_handling() const;
};

}  // namespace uext
