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
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "uext/block_device.h"
#include "uext/status.h"

namespace uext {

using Ino = uint32_t;
inline constexpr Ino kRootIno = 2;

struct Options {
  bool read_only = true;
  // Verify metadata checksums (metadata_csum images). Off only to salvage
  // data from a damaged image.
  bool verify_checksums = true;
  // Bypass the host page cache for file data (image files only).
  bool direct_io = false;
  // Bytes of metadata blocks kept in memory.
  size_t metadata_cache_bytes = 64u << 20;
  // Read-write: commit the journal this often (0: only on sync/close).
  uint32_t commit_interval_ms = 5000;
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
  bool needs_recovery = false;  // the journal holds transactions not yet replayed
  bool read_only = true;        // how uext opened it
  // Journal transactions replayed when the image was opened read-write.
  uint32_t replayed_transactions = 0;
  std::string read_only_reason;  // why uext chose read-only, if it did
  int64_t mkfs_time = 0, mount_time = 0, write_time = 0;
  uint32_t mount_count = 0;
  uint32_t journal_inum = 0;
  JournalInfo journal;
  std::string default_hash;
};

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
};

}  // namespace uext
