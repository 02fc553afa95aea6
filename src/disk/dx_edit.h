// Editing hashed directories (htree) in memory, step by step as the kernel's
// fs/ext4/namei.c grows them: make_indexed_dir turns a full linear block 0
// into a root over two leaves; a full leaf splits by hash (do_split); the
// new leaf's hash goes into its parent index (dx_insert_block); a full
// index node splits in two, and a full root pushes its entries down one
// level. Pure functions on block bytes: the caller allocates the new
// logical blocks (appended to the directory, as ext4_append does), reads,
// journals and writes.
//
// Checksums: no function here computes one. New blocks get zeroed checksum
// tails (leaf tail or dx_tail) when metadata_csum is on; the caller seals
// every block it changed with set_htree_block_checksum (or
// set_dir_block_checksum / set_dx_checksum) and the directory inode's seed.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "disk/bytes.h"
#include "disk/dirent.h"
#include "disk/htree.h"
#include "uext/status.h"

namespace uext::disk {

// What htree edits need to know about the filesystem.
struct HtreeFormat {
  uint32_t block_size = 0;
  bool filetype = false;        // incompat filetype
  bool metadata_csum = false;   // leaf and dx tails
  bool largedir = false;        // three index levels instead of two
  uint8_t def_hash_version = dx_hash_version::kHalfMd4;  // s_def_hash_version, for new roots
  bool unsigned_hash = false;   // EXT2_FLAGS_UNSIGNED_HASH in s_flags
  std::array<uint32_t, 4> hash_seed{};  // s_hash_seed

  DirBlockFormat leaf() const { return {block_size, filetype, metadata_csum}; }
  DxFormat dx() const { return {block_size, metadata_csum, largedir}; }
  // Index levels a path may have, root included (ext4_dir_htree_level).
  unsigned max_index_levels() const { return largedir ? 3 : 2; }
};

// The major hash (low bit clear) of `name` in a directory whose root says
// `root_hash_version`; the unsigned flag selects versions 3..5 as the
// kernel's dx_probe does. This is the hash index lookups compare.
Result<uint32_t> htree_hash(std::string_view name, uint8_t root_hash_version, const HtreeFormat& format);

// The outcome of splitting a leaf.
struct LeafSplit {
  uint32_t hash = 0;        // lowest hash moved to the new leaf
  uint32_t index_hash = 0;  // the hash for the parent index: `hash`, plus the
                            // continuation bit (1) when equal hashes straddle
                            // the split
  // Where a name with major hash `h` now belongs (the kernel's choice for
  // the entry that did not fit).
  bool goes_to_new_leaf(uint32_t h) const { return h >= hash; }
};

// make_indexed_dir: `block0` is the full linear block 0 of a one-block
// directory ("." of rec_len 12, then ".."). Every entry after ".." moves to
// `leaf_a` (logical block `leaf_a_block`), which is then split by hash into
// `leaf_b` (logical `leaf_b_block`); block0 becomes the dx root: "." and
// ".." spanning the block, dx_root_info with s_def_hash_version, levels 0,
// the limit for the block size and tail, and two index entries.
// leaf_a and leaf_b are overwritten whole. The kernel appends leaf_a as
// block 1 and leaf_b as block 2. On error nothing is changed.
Result<LeafSplit> make_indexed_dir(MutableBytes block0, MutableBytes leaf_a, uint32_t leaf_a_block,
                                   MutableBytes leaf_b, uint32_t leaf_b_block, const HtreeFormat& format);

// do_split: sorts the leaf's live entries by hash and moves the upper ones
// (about half the bytes) into `new_leaf`, which is overwritten whole; both
// blocks are packed with the free space at the end. The caller inserts
// {result.index_hash, new block} after the parent entry that pointed at
// `leaf` (dx_insert_entry). EINVAL for fewer than two live entries.
Result<LeafSplit> split_leaf(MutableBytes leaf, MutableBytes new_leaf, uint8_t root_hash_version,
                             const HtreeFormat& format);

// dx_insert_block: puts {hash, child} right after entry `at` of a dx root
// (is_root) or node, `at` being the entry whose child was split. Returns
// false, changing nothing, when the block is full (count == limit): split
// the node, or add a level when it is the root. EINVAL when `at` is out of
// range or the hash would break the order.
Result<bool> dx_insert_entry(MutableBytes block, bool is_root, const DxFormat& format, size_t at, uint32_t hash,
                             uint32_t child);

struct NodeSplit {
  uint32_t hash = 0;  // hash of the first moved entry: goes into the parent
  size_t kept = 0;    // entries left in the old node; entry i >= kept is now
                      // entry i - kept of the new node
};

// Splits an index node (not the root) as ext4_dx_add_entry does: the upper
// half of its entries move to `new_node` (overwritten whole). The caller
// inserts {result.hash, new block} into the parent after the entry pointing
// at this node.
Result<NodeSplit> dx_split_node(MutableBytes node, MutableBytes new_node, const DxFormat& format);

// Adds a level under the root: all root entries move to `new_node` (logical
// block `new_node_block`, overwritten whole) and the root keeps one entry
// pointing at it, with indirect_levels one higher. ENOSPC when the tree
// already has the most levels the format allows (2, or 3 with largedir).
Status dx_add_level(MutableBytes root, MutableBytes new_node, uint32_t new_node_block, const DxFormat& format);

enum class HtreeBlockKind { kLeaf, kRoot, kNode };
// The metadata_csum checksum of one edited block of an indexed directory.
void set_htree_block_checksum(uint32_t inode_seed, MutableBytes block, HtreeBlockKind kind);

}  // namespace uext::disk
