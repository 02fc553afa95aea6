// Quota files (the "vfsv1" tree format ext4 keeps in its quota inodes when
// the quota feature is on): 1 KiB blocks whatever the filesystem's block
// size. Block 0 holds the header (magic, version) and the info (grace
// times, block count, free lists); block 1 is the root of a four-level
// radix tree indexed by the id's bytes, most significant first, each tree
// block 256 little-endian block numbers; the leaves point at data blocks
// of 14 entries of 72 bytes (id, limits, usage, grace deadlines) behind a
// 16-byte header that links blocks with free entries. Decoding and
// encoding only; no I/O.
#pragma once

#include <cstdint>
#include <vector>

#include "disk/bytes.h"
#include "uext/status.h"

namespace uext::disk::quota {

inline constexpr uint32_t kBlockSize = 1024;
inline constexpr uint32_t kTreeRoot = 1;   // quota block of the tree's root
inline constexpr int kTreeDepth = 4;
inline constexpr uint32_t kRefsPerBlock = kBlockSize / 4;
inline constexpr uint32_t kDataHeaderSize = 16;
inline constexpr uint32_t kEntrySize = 72;
inline constexpr uint32_t kEntriesPerBlock = (kBlockSize - kDataHeaderSize) / kEntrySize;  // 14

// The three kinds, in the order of the superblock's quota inode fields.
enum class Type : int { kUser = 0, kGroup = 1, kProject = 2 };
inline constexpr int kTypes = 3;
const char* type_name(Type t);  // "user", "group", "project"

// Block 0: header and info.
struct Info {
  uint32_t block_grace = 0;  // seconds past a soft limit before it binds
  uint32_t inode_grace = 0;
  uint32_t flags = 0;
  uint32_t blocks = 0;      // quota blocks in the file
  uint32_t free_block = 0;  // first block of the list of unused blocks (0: none)
  uint32_t free_entry = 0;  // first data block with a free entry (0: none)
};
// Checks the magic for `type` and version 1; EUCLEAN-style corruption otherwise.
Result<Info> decode_info(Bytes block0, Type type);
// Writes the info fields (the header stays as it is).
void encode_info(MutableBytes block0, const Info& info);

// The header of a data block.
struct DataHeader {
  uint32_t next_free = 0;
  uint32_t prev_free = 0;
  uint16_t entries = 0;
};
DataHeader decode_data_header(Bytes block);
void encode_data_header(MutableBytes block, const DataHeader& header);

// Byte offset of entry `slot` in a data block.
inline constexpr uint32_t entry_offset(uint32_t slot) { return kDataHeaderSize + slot * kEntrySize; }

// An entry of all zeros is free (which is why id 0 with nothing in it is
// stored with an inode grace deadline of 1).
bool entry_unused(Bytes entry);
uint32_t entry_id(Bytes entry);

// Usage, the part uext keeps current.
struct Usage {
  uint64_t space = 0;   // bytes
  uint64_t inodes = 0;
};
Usage entry_usage(Bytes entry);
// Sets the usage of the entry for `id`, keeping its limits and deadlines.
void set_entry_usage(MutableBytes entry, uint32_t id, const Usage& usage);

// A whole quota file of `type` holding the usage of `ids` (no limits), as a
// new filesystem starts with it: block 0 with the header and an info of
// seven days' grace for both limits, block 1 the tree's root, then each id's
// tree blocks and the data blocks, filled in id order, the last one (if it
// has room left) on the free-entry list. Ids must be distinct.
struct IdUsage {
  uint32_t id = 0;
  Usage usage;
};
std::vector<std::byte> build_file(Type type, std::vector<IdUsage> ids);

// The tree slot of `id` at `depth` (0 = root).
inline constexpr uint32_t tree_index(uint32_t id, int depth) {
  return (id >> ((kTreeDepth - depth - 1) * 8)) & 0xFF;
}
inline uint32_t tree_ref(Bytes block, uint32_t index) { return le32(block, index * 4); }
inline void set_tree_ref(MutableBytes block, uint32_t index, uint32_t ref) { put_le32(block, index * 4, ref); }

}  // namespace uext::disk::quota
