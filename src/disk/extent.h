// Extent tree nodes. The root lives in the inode's i_block (60 bytes: a
// 12-byte header and up to 4 entries); deeper nodes fill whole blocks and,
// with metadata_csum, end in a 4-byte checksum after eh_max entries.
#pragma once

#include <cstdint>
#include <vector>

#include "disk/bytes.h"
#include "uext/status.h"

namespace uext::disk {

inline constexpr uint16_t kExtentMagic = 0xF30A;
inline constexpr uint16_t kExtentMaxDepth = 5;  // the kernel's EXT4_MAX_EXTENT_DEPTH
inline constexpr uint32_t kExtentInitMaxLen = 32768;
inline constexpr uint32_t kExtentUninitMaxLen = 32767;

struct ExtentHeader {
  uint16_t eh_magic = kExtentMagic;
  uint16_t eh_entries = 0;
  uint16_t eh_max = 0;
  uint16_t eh_depth = 0;
  uint32_t eh_generation = 0;
};

// A leaf entry, decoded: ee_len above 32768 marks an uninitialized
// (unwritten) extent of ee_len - 32768 blocks.
struct Extent {
  uint32_t logical = 0;   // ee_block
  uint16_t length = 0;    // blocks, 1..32768
  uint64_t physical = 0;  // ee_start_hi:ee_start_lo
  bool uninit = false;
};

// An index entry: the subtree covering logical blocks from `logical`.
struct ExtentIndex {
  uint32_t logical = 0;  // ei_block
  uint64_t leaf = 0;     // ei_leaf_hi:ei_leaf_lo
};

struct ExtentNode {
  ExtentHeader header;
  std::vector<Extent> extents;       // depth == 0
  std::vector<ExtentIndex> indexes;  // depth > 0
};

// Decodes a node from `raw` (60 bytes for the root in i_block, else a
// whole block). Validates: magic; eh_max fits the space; eh_entries <=
// eh_max; depth <= 5 (and, when `expected_depth` >= 0, equals it); entries
// sorted by strictly increasing logical block and not overlapping;
// extent lengths nonzero; physical blocks + lengths inside
// [first_data_block, blocks_count) (blocks_count 0: no upper bound known).
// Errors name the problem; the caller adds which inode and block.
struct ExtentLimits {
  uint64_t first_data_block = 0;
  uint64_t blocks_count = 0;
};
Result<ExtentNode> decode_extent_node(Bytes raw, int expected_depth, const ExtentLimits& limits);

// Serializes a node (header + entries) into `raw`; does not touch the
// checksum tail.
void encode_extent_node(const ExtentNode& node, MutableBytes raw);

// Checksum of a non-root extent block: crc32c(inode_seed, raw[0 .. 12 + 12*eh_max)),
// stored little-endian right after the eh_max-th entry.
uint32_t extent_block_checksum(uint32_t inode_seed, Bytes raw);
// Verifies it (EBADMSG on mismatch). Needs raw to be a whole block.
Status verify_extent_block_checksum(uint32_t inode_seed, Bytes raw);
void set_extent_block_checksum(uint32_t inode_seed, MutableBytes raw);

}  // namespace uext::disk
