// Test images made by the real tools: mke2fs -d from a host tree, files
// written through the Linux kernel (loop mounts), and the oracles that check
// them (e2fsck -fn, dumpe2fs -h, debugfs).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "support/process.h"
#include "support/tree.h"

namespace uext::testing {

struct ImageKind {
  std::string name;     // "ext4-4k-nocsum", used in test names
  std::string fs_type;  // ext2, ext3, ext4
  uint32_t block_size = 4096;
  std::vector<std::string> mkfs_args;  // extra mke2fs arguments (-O ..., -I 128)
  bool extents = false;
  bool metadata_csum = false;
  bool small_inodes = false;  // 128-byte inodes: 32-bit seconds, no nanoseconds
};

// ext2/ext3/ext4 x 1 KiB/4 KiB, ext4 with and without metadata_csum and
// 64bit, with -I 128 and with metadata_csum_seed.
const std::vector<ImageKind>& image_kinds();
const ImageKind& image_kind(const std::string& name);

// Where the kernel writes its files inside an image ("kernel/deep", ...).
inline const char kKernelDir[] = "kernel";
struct KernelFiles {
  static constexpr const char* deep = "kernel/deep";  // extent depth >= 2 (or indirect)
  static constexpr const char* prealloc = "kernel/prealloc";  // unwritten + written parts
  static constexpr const char* prealloc_keep_size = "kernel/prealloc-keep-size";
  static constexpr const char* prealloc_only = "kernel/prealloc-only";
  static constexpr const char* punched = "kernel/punched";
  static constexpr const char* small = "kernel/small";
};

struct BuildOptions {
  // Index every directory (e2fsck -fyD) so big directories get htrees.
  bool index_directories = true;
  // Loop-mount the image and let the kernel write KernelFiles, then copy
  // the source's atime/mtime (with nanoseconds; mke2fs 1.47.0 keeps only
  // 32-bit seconds) onto the image. Needs can_loop_mount().
  bool kernel_files = true;
  bool apply_source_times = true;
  // Source directories whose entries the kernel copies in (cp -a through a
  // loop mount) instead of mke2fs -d, which is quadratic in directory size.
  // The kernel builds their htrees as it goes.
  std::vector<std::string> kernel_copied_dirs = {"many"};
};

// mke2fs -F -q -d SOURCE, then the BuildOptions steps; finally asserts the
// image is e2fsck -fn clean and dumpe2fs -h says "clean".
::testing::AssertionResult build_image(const ImageKind& kind, const std::string& source,
                                       const std::string& image, const BuildOptions& options = {});

// The superblock's s_state: kSuperblockValid (cleanly unmounted) and
// kSuperblockErrors bits. Read straight from the image's bytes (a
// little-endian u16 at byte 58 of the superblock, which starts at byte
// 1024), not through uext's decoder, and without a dumpe2fs process: the
// crash harness asks once per crash state. nullopt when the bytes cannot
// be read (each caller says so in its own words).
inline constexpr uint16_t kSuperblockValid = 0x0001;
inline constexpr uint16_t kSuperblockErrors = 0x0002;
std::optional<uint16_t> superblock_state(const std::string& image);

// e2fsck -fn exits 0 and the superblock's state is clean: valid, without
// errors (e2fsck -n exits 0 on a state "clean with errors").
::testing::AssertionResult image_is_clean(const std::string& image);

// A loop mount that always unmounts and detaches, even when a test fails.
class LoopMount {
 public:
  // `options`: more mount options for the kernel's ext4 (comma-separated).
  LoopMount(const std::string& image, const std::string& dir, bool read_only, const std::string& options = {});
  ~LoopMount();
  LoopMount(const LoopMount&) = delete;
  LoopMount& operator=(const LoopMount&) = delete;
  bool ok() const { return mounted_; }
  const std::string& error() const { return error_; }
  const std::string& dir() const { return dir_; }
  // Unmounts and detaches now; false (with error()) when that failed.
  bool unmount();

 private:
  std::string image_, dir_, device_, error_;
  bool mounted_ = false;
};

// debugfs -R CMD IMAGE (read-only); stdout.
std::string debugfs(const std::string& image, const std::string& command);
// dumpe2fs -h as label -> value ("Block size" -> "4096").
std::map<std::string, std::string> dumpe2fs_header(const std::string& image);
// Expects dumpe2fs -h to show each label of `want` with its value, e.g. an
// error record: {{"Filesystem state", "clean with errors"},
// {"First error function", "read_dir_block"}}. Returns the whole header for
// further checks.
std::map<std::string, std::string> expect_dumpe2fs_shows(const std::string& image,
                                                         const std::map<std::string, std::string>& want);

// Depth of a file's extent tree from debugfs "ex" (-1 when it has none).
int extent_depth(const std::string& image, const std::string& path);
// "Indirect levels" of a directory's htree root from debugfs "htree";
// -1 when the directory is not indexed.
int htree_levels(const std::string& image, const std::string& path);
// Byte offset of an inode in the image (debugfs imap); path or "<ino>".
uint64_t inode_offset(const std::string& image, const std::string& path);
uint32_t inode_number(const std::string& image, const std::string& path);

// Byte-level edits of image files.
std::string read_bytes(const std::string& image, uint64_t offset, size_t n);
void write_bytes(const std::string& image, uint64_t offset, const std::string& data);
void flip_bit(const std::string& image, uint64_t offset, unsigned bit);
void copy_file(const std::string& from, const std::string& to);

// Source trees and images shared by the tests of one process, built on
// first use. The "full" tree has the 20,000-entry directory; for 1 KiB
// block sizes it also has the 100+ MiB file and symlinks up to 1023 bytes.
const TreeManifest& shared_tree(uint32_t block_size, bool full);
struct SharedImage {
  std::string path;
  std::string source;
  ImageKind kind;
  bool kernel_files = false;
  std::string error;  // set when building failed
};
const SharedImage& shared_image(const std::string& kind_name, bool full);

// Scratch space for `uext get` output: tmpfs (/dev/shm) when there is one,
// since copies to a disk filesystem cost seconds each; else a TempDir.
// tmpfs keeps holes, xattrs, ACLs, devices and nanosecond times.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
  std::unique_ptr<TempDir> fallback_;
};

// The uext CLI, run with a timeout and with sanitizer reports given their
// own exit codes (so an ASan report never looks like exit 1).
struct GuardedResult {
  int exit_code = -1;
  std::string out, err;
  bool timed_out = false;
  bool crashed = false;         // killed by a signal
  bool sanitizer = false;       // ASan/UBSan reported an error
  std::string describe() const;  // for failure messages
};
GuardedResult run_uext(const std::vector<std::string>& args, int timeout_seconds = 60);

}  // namespace uext::testing
