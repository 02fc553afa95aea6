// Hashed directory index (dir_index, "htree"): block 0 of an indexed
// directory is a dx_root hidden behind fake "." and ".." entries; interior
// blocks are dx_nodes hidden behind one empty entry spanning the block.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "disk/bytes.h"
#include "uext/status.h"

namespace uext::disk {

// Hash versions (dx_root_info.hash_version, s_def_hash_version).
namespace dx_hash_version {
inline constexpr uint8_t kLegacy = 0;
inline constexpr uint8_t kHalfMd4 = 1;
inline constexpr uint8_t kTea = 2;
inline constexpr uint8_t kLegacyUnsigned = 3;
inline constexpr uint8_t kHalfMd4Unsigned = 4;
inline constexpr uint8_t kTeaUnsigned = 5;
inline constexpr uint8_t kSiphash = 6;
}  // namespace dx_hash_version

struct DxHash {
  uint32_t major = 0;  // low bit always clear, as the kernel leaves it
  uint32_t minor = 0;
};

// The directory hash of `name` with the given version (0..5; the unsigned
// versions treat name bytes as unsigned char) and the 4-word seed
// s_hash_seed (an all-zero seed means the default seed).
Result<DxHash> dx_hash(std::string_view name, uint8_t version, const uint32_t seed[4]);

struct DxEntry {
  uint32_t hash = 0;   // the first entry's hash is implicitly 0
  uint32_t block = 0;  // logical block in the directory
};

struct DxRoot {
  uint8_t hash_version = 0;
  uint8_t indirect_levels = 0;  // 0 .. 1 (0 .. 2 with largedir)
  uint16_t limit = 0;
  std::vector<DxEntry> entries;
};

struct DxNode {
  uint16_t limit = 0;
  std::vector<DxEntry> entries;
};

struct DxFormat {
  uint32_t block_size = 0;
  bool has_tail = false;   // metadata_csum: limit leaves room for the 8-byte dx_tail
  bool largedir = false;   // allows 3 indirect levels
};

// Validates the fake dirents, dx_root_info (reserved zero, info_length 8,
// levels), count <= limit, limit matching the block size, hashes in
// increasing order.
Result<DxRoot> parse_dx_root(Bytes block, const DxFormat& format);
Result<DxNode> parse_dx_node(Bytes block, const DxFormat& format);

// dx_tail checksum (metadata_csum): crc32c(inode_seed, block[0 .. count_offset
// + 8*count)), then over dt_reserved, then over 4 zero bytes standing for
// dt_checksum; the tail sits after `limit` entries.
Status verify_dx_checksum(uint32_t inode_seed, Bytes block, bool is_root);
void set_dx_checksum(uint32_t inode_seed, MutableBytes block, bool is_root);

// Index of the entry whose subtree may hold `hash`: the last entry with
// entry.hash <= hash (entry 0 covers everything below entry 1).
size_t dx_find_entry(const std::vector<DxEntry>& entries, uint32_t hash);

}  // namespace uext::disk
