// Linear directory blocks: a chain of variable-length entries
// (inode, rec_len, name_len, file_type, name) filling the block exactly.
// With metadata_csum each leaf block ends in a 12-byte fake entry holding
// the checksum (inode 0, rec_len 12, name_len 0, file_type 0xDE).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "disk/bytes.h"
#include "uext/status.h"

namespace uext::disk {

inline constexpr size_t kDirentHeaderSize = 8;
inline constexpr size_t kDirentTailSize = 12;
inline constexpr size_t kNameMax = 255;

// file_type values (with the filetype feature)
namespace ftype {
inline constexpr uint8_t kUnknown = 0;
inline constexpr uint8_t kRegular = 1;
inline constexpr uint8_t kDirectory = 2;
inline constexpr uint8_t kCharDev = 3;
inline constexpr uint8_t kBlockDev = 4;
inline constexpr uint8_t kFifo = 5;
inline constexpr uint8_t kSocket = 6;
inline constexpr uint8_t kSymlink = 7;
}  // namespace ftype

struct DirentView {
  uint32_t inode = 0;          // 0: unused slot
  uint32_t offset = 0;         // byte offset of the entry in the block
  uint32_t rec_len = 0;        // decoded (65536 for a whole 64 KiB block)
  uint8_t file_type = 0;       // 0 without the filetype feature
  std::string_view name;       // points into the block
};

// Decodes rec_len as the kernel does for block sizes up to 64 KiB.
uint32_t decode_rec_len(uint16_t raw, uint32_t block_size);
uint16_t encode_rec_len(uint32_t len, uint32_t block_size);
// Bytes an entry with an n-byte name needs: 8 + n rounded up to 4.
inline uint32_t dirent_size(size_t name_len) { return static_cast<uint32_t>((8 + name_len + 3) & ~size_t{3}); }

struct DirBlockFormat {
  uint32_t block_size = 0;
  bool filetype = false;   // incompat filetype: name_len is one byte
  bool has_tail = false;   // metadata_csum: expect the 12-byte checksum tail
};

// Parses every entry of a leaf block, live and deleted (inode 0) alike.
// Validates each rec_len (>= 12, multiple of 4, >= dirent_size(name_len),
// within the block) and name_len, as the kernel's ext4_check_dir_entry.
// With has_tail the tail is checked and not returned.
Result<std::vector<DirentView>> parse_dir_block(Bytes block, const DirBlockFormat& format);

// Directory leaf checksum: crc32c(inode_seed, block[0 .. size - 12)), in the tail.
Status verify_dir_block_checksum(uint32_t inode_seed, Bytes block);
// Does nothing when the block has no tail (see init_dir_block_tail).
void set_dir_block_checksum(uint32_t inode_seed, MutableBytes block);
// Writes an empty checksum tail into the last 12 bytes of a block being built.
void init_dir_block_tail(MutableBytes block);
// Whether the block ends in a well-formed checksum tail.
bool has_dir_block_tail(Bytes block);

}  // namespace uext::disk
