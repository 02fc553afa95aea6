// Random directory trees on the host, and a comparer for two host trees.
//
// build_tree() writes a real directory full of the things a filesystem
// reader gets wrong: files of every size class, sparse files with holes in
// odd places, a huge directory (htree), long and odd names, fast and slow
// symlinks, hard links across directories, xattrs and ACLs, fifos, device
// nodes, sockets, setuid/sticky modes, odd owners and extreme timestamps.
// compare_trees() checks two host trees byte for byte with their metadata
// and returns a readable list of differences.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace uext::testing {

struct TreeOptions {
  uint64_t seed = 1;
  // Size of the one big, dense file (0: none). The suite uses 100+ MiB once.
  uint64_t big_file_size = 0;
  // Entries in the huge directory "many" (0: none). Names are long so that
  // the directory needs a two-level htree on 1 KiB and 4 KiB blocks.
  uint32_t htree_entries = 20000;
  // Longest symlink target to create (the image's block size - 1 at most).
  uint32_t max_symlink_len = 4095;
  // Files far into a sparse file (offsets beyond 4 GiB: triple-indirect on
  // ext2 with 4 KiB blocks).
  bool far_sparse = true;
  // Number of files in the random subtree "random".
  uint32_t random_files = 150;
  // Regular files bigger than this many bytes are not put in the random
  // subtree (keeps it small).
  uint64_t random_max_size = 200 * 1024;
};

struct TreeManifest {
  std::string root;
  // Paths relative to the root ("dir/file"), no leading slash.
  std::vector<std::string> regular_files;
  std::vector<std::string> sparse_files;
  std::vector<std::string> symlinks;
  std::vector<std::string> directories;  // includes "" for the root
  std::string big_file;      // "" when none
  std::string htree_dir;     // "" when none
  std::vector<std::string> htree_names;  // entry names in htree_dir
  std::vector<std::vector<std::string>> hard_link_groups;
};

// Creates the tree under `root` (which must not exist, or be empty).
// Needs root privileges for owners, device nodes and trusted xattrs; throws
// std::runtime_error when a step fails.
TreeManifest build_tree(const std::string& root, const TreeOptions& options);

struct CompareOptions {
  bool owners = true;
  bool atime = false;
  bool mtime = true;
  // Expected times are clamped to what a 128-byte ext inode holds: signed
  // 32-bit seconds, no nanoseconds.
  bool times_32bit = false;
  bool directory_times = true;
  bool xattrs = true;
  bool sparseness = true;
  // Holes are compared at this granularity: a chunk is "data" when any
  // byte of it is data. 4096 suits every image block size up to 4 KiB.
  uint64_t hole_granularity = 4096;
  bool root_metadata = true;
  // Relative paths (and their subtrees) left out of the comparison.
  std::set<std::string> ignore;
};


// Differences between `expected` and `actual`, one readable line each
// ("dir/f: mode 0644 != 0600"). Empty when the trees agree.
std::vector<std::string> compare_trees(const std::string& expected, const std::string& actual,
                                       const CompareOptions& options = {});

// First `max` lines of a difference list, for a failure message.
std::string format_differences(const std::vector<std::string>& differences, size_t max = 40);

// Data ranges of a file at `granularity` (rounded out and merged), from
// SEEK_DATA/SEEK_HOLE.
std::vector<std::pair<uint64_t, uint64_t>> data_ranges(const std::string& path,
                                                       uint64_t granularity);

// A name as C-escaped text, for messages (newlines and bytes >= 0x80 shown).
std::string printable(const std::string& s);

// A small fast deterministic PRNG (splitmix64).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next();
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
  uint64_t between(uint64_t lo, uint64_t hi) { return lo + below(hi - lo + 1); }
  void fill(char* data, size_t n);
  std::string bytes(size_t n);

 private:
  uint64_t state_;
};

}  // namespace uext::testing
