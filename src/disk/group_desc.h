// Block group descriptors: 32 bytes each, or s_desc_size (>= 64) with the
// 64bit feature, packed in the group descriptor table that follows the
// superblock (or, with meta_bg, spread over the first groups of each meta group).
#pragma once

#include <cstdint>

#include "disk/bytes.h"
#include "disk/superblock.h"
#include "uext/status.h"

namespace uext::disk {

// bg_flags
inline constexpr uint16_t kBgInodeUninit = 0x0001;
inline constexpr uint16_t kBgBlockUninit = 0x0002;
inline constexpr uint16_t kBgInodeZeroed = 0x0004;

struct GroupDesc {
  uint64_t bg_block_bitmap = 0;
  uint64_t bg_inode_bitmap = 0;
  uint64_t bg_inode_table = 0;
  uint32_t bg_free_blocks_count = 0;
  uint32_t bg_free_inodes_count = 0;
  uint32_t bg_used_dirs_count = 0;
  uint16_t bg_flags = 0;
  uint64_t bg_exclude_bitmap = 0;
  uint32_t bg_block_bitmap_csum = 0;  // hi half only when desc_size >= 64
  uint32_t bg_inode_bitmap_csum = 0;
  uint32_t bg_itable_unused = 0;
  uint16_t bg_checksum = 0;
};

// Decodes one descriptor of sb.desc_size() bytes. Verifies bg_checksum
// (metadata_csum: crc32c; gdt_csum: crc16) and that the bitmap and inode
// table locations lie inside the filesystem. `group` is the group number.
Result<GroupDesc> decode_group_desc(const Superblock& sb, uint32_t group, Bytes raw);

// Writes `gd` into `raw` (sb.desc_size() bytes) and recomputes bg_checksum.
void encode_group_desc(const Superblock& sb, uint32_t group, const GroupDesc& gd, MutableBytes raw);

// The checksum the descriptor bytes `raw` should carry (0 if the image uses
// neither metadata_csum nor gdt_csum).
uint16_t group_desc_checksum(const Superblock& sb, uint32_t group, Bytes raw);

// Where descriptor `group` lives: the block number and the byte offset in it.
// Handles meta_bg and 1 KiB blocks (table starts at block 2).
struct DescLocation {
  uint64_t block;
  uint32_t offset;
};
DescLocation group_desc_location(const Superblock& sb, uint32_t group);

// Whether `group` holds a superblock backup (sparse_super: 0, 1 and powers
// of 3, 5, 7; sparse_super2: s_backup_bgs; otherwise every group).
bool group_has_superblock(const Superblock& sb, uint32_t group);

// Bitmap checksums stored in the descriptor (metadata_csum):
// crc32c(csum_seed, bitmap bytes). The block bitmap covers
// s_clusters_per_group bits, the inode bitmap s_inodes_per_group bits.
uint32_t block_bitmap_checksum(const Superblock& sb, Bytes bitmap);
uint32_t inode_bitmap_checksum(const Superblock& sb, Bytes bitmap);

}  // namespace uext::disk
