#include "disk/group_desc.h"

#include <fmt/format.h>

#include <algorithm>

#include "disk/checksum.h"

namespace uext::disk {

namespace {

// Byte offsets (e2fsprogs' struct ext4_group_desc); the *Hi ones exist
// only in descriptors of 64 bytes or more.
namespace off {
constexpr size_t kBlockBitmapLo = 0x00, kInodeBitmapLo = 0x04, kInodeTableLo = 0x08,
                 kFreeBlocksLo = 0x0C, kFreeInodesLo = 0x0E, kUsedDirsLo = 0x10, kFlags = 0x12,
                 kExcludeBitmapLo = 0x14, kBlockBitmapCsumLo = 0x18, kInodeBitmapCsumLo = 0x1A,
                 kItableUnusedLo = 0x1C, kChecksum = 0x1E, kBlockBitmapHi = 0x20,
                 kInodeBitmapHi = 0x24, kInodeTableHi = 0x28, kFreeBlocksHi = 0x2C,
                 kFreeInodesHi = 0x2E, kUsedDirsHi = 0x30, kItableUnusedHi = 0x32,
                 kExcludeBitmapHi = 0x34, kBlockBitmapCsumHi = 0x38, kInodeBitmapCsumHi = 0x3A;
}  // namespace off

constexpr uint32_t kMinDescSize64 = 64;

Error corrupt(uint32_t group, const std::string& what) {
  return Error(kErrCorrupted, fmt::format("group {} descriptor: {}", group, what));
}

// Where a group's metadata may live: anywhere past the superblock with
// flex_bg (bitmaps are packed into the flex group's first group), inside
// the group otherwise -- the kernel's ext4_check_descriptors rule.
struct BlockRange {
  uint64_t first;
  uint64_t last;  // inclusive
  bool whole_fs;
};

BlockRange allowed_range(const Superblock& sb, uint32_t group) {
  const uint64_t sb_block = kSuperblockOffset / sb.block_size();  // block holding the primary superblock
  BlockRange r{sb_block + 1, sb.s_blocks_count - 1, true};
  if (!sb.has_incompat(incompat::kFlexBg)) {
    const uint64_t group_first = sb.s_first_data_block + static_cast<uint64_t>(group) * sb.s_blocks_per_group;
    r.first = std::max(r.first, group_first);
    r.last = std::min(r.last, group_first + sb.s_blocks_per_group - 1);
    r.whole_fs = false;
  }
  return r;
}

Status check_extent(const Superblock& sb, uint32_t group, const char* what, uint64_t start, uint64_t count) {
  const BlockRange r = allowed_range(sb, group);
  // count >= 1 and r.last < 2^64 / block size, so start + count - 1 cannot wrap
  // once start <= r.last is known.
  if (start < r.first || start > r.last || count - 1 > r.last - start) {
    const std::string where =
        r.whole_fs ? fmt::format("the filesystem ({} blocks)", sb.s_blocks_count)
                   : fmt::format("the group (blocks {}-{})", r.first, r.last);
    if (count == 1) return corrupt(group, fmt::format("{} at block {} lies outside {}", what, start, where));
    return corrupt(group, fmt::format("{} at blocks {}-{} lies outside {}", what, start, start + (count - 1), where));
  }
  return {};
}

Status check_counts(const Superblock& sb, uint32_t group, const GroupDesc& gd) {
  if (gd.bg_free_blocks_count > sb.s_clusters_per_group) {
    return corrupt(group, fmt::format("bg_free_blocks_count {} exceeds {} per group", gd.bg_free_blocks_count,
                                      sb.s_clusters_per_group));
  }
  const uint32_t ipg = sb.s_inodes_per_group;
  if (gd.bg_free_inodes_count > ipg) {
    return corrupt(group, fmt::format("bg_free_inodes_count {} exceeds {} per group", gd.bg_free_inodes_count, ipg));
  }
  if (gd.bg_used_dirs_count > ipg) {
    return corrupt(group, fmt::format("bg_used_dirs_count {} exceeds {} per group", gd.bg_used_dirs_count, ipg));
  }
  if (gd.bg_itable_unused > ipg) {
    return corrupt(group, fmt::format("bg_itable_unused {} exceeds {} per group", gd.bg_itable_unused, ipg));
  }
  return {};
}

uint32_t bitmap_checksum(const Superblock& sb, Bytes bitmap, uint32_t bits) {
  const size_t n = std::min<size_t>(bits / 8, bitmap.size());
  return crc32c(sb.csum_seed(), bitmap.first(n));
}

}  // namespace

uint16_t group_desc_checksum(const Superblock& sb, uint32_t group, Bytes raw) {
  const size_t size = sb.desc_size();
  const std::byte zero[2] = {};
  if (sb.has_metadata_csum()) {
    uint32_t crc = crc32c_le32(sb.csum_seed(), group);
    crc = crc32c(crc, raw.subspan(0, off::kChecksum));
    crc = crc32c(crc, zero);  // bg_checksum itself counts as zero
    crc = crc32c(crc, raw.subspan(off::kChecksum + 2, size - (off::kChecksum + 2)));
    return static_cast<uint16_t>(crc & 0xFFFF);
  }
  if (sb.has_ro_compat(ro_compat::kGdtCsum)) {
    std::byte le_group[4];
    put_le32(le_group, 0, group);
    uint16_t crc = crc16(0xFFFF, as_bytes(sb.s_uuid.data(), sb.s_uuid.size()));
    crc = crc16(crc, le_group);
    crc = crc16(crc, raw.subspan(0, off::kChecksum));
    // crc16 skips bg_checksum rather than zeroing it.
    if (size > off::kChecksum + 2) crc = crc16(crc, raw.subspan(off::kChecksum + 2, size - (off::kChecksum + 2)));
    return crc;
  }
  return 0;
}

Result<GroupDesc> decode_group_desc(const Superblock& sb, uint32_t group, Bytes raw) {
  const size_t size = sb.desc_size();
  if (raw.size() < size) {
    return corrupt(group, fmt::format("need {} bytes, got {}", size, raw.size()));
  }
  GroupDesc gd;
  gd.bg_block_bitmap = le32(raw, off::kBlockBitmapLo);
  gd.bg_inode_bitmap = le32(raw, off::kInodeBitmapLo);
  gd.bg_inode_table = le32(raw, off::kInodeTableLo);
  gd.bg_free_blocks_count = le16(raw, off::kFreeBlocksLo);
  gd.bg_free_inodes_count = le16(raw, off::kFreeInodesLo);
  gd.bg_used_dirs_count = le16(raw, off::kUsedDirsLo);
  gd.bg_flags = le16(raw, off::kFlags);
  gd.bg_exclude_bitmap = le32(raw, off::kExcludeBitmapLo);
  gd.bg_block_bitmap_csum = le16(raw, off::kBlockBitmapCsumLo);
  gd.bg_inode_bitmap_csum = le16(raw, off::kInodeBitmapCsumLo);
  gd.bg_itable_unused = le16(raw, off::kItableUnusedLo);
  gd.bg_checksum = le16(raw, off::kChecksum);
  if (size >= kMinDescSize64) {
    gd.bg_block_bitmap |= static_cast<uint64_t>(le32(raw, off::kBlockBitmapHi)) << 32;
    gd.bg_inode_bitmap |= static_cast<uint64_t>(le32(raw, off::kInodeBitmapHi)) << 32;
    gd.bg_inode_table |= static_cast<uint64_t>(le32(raw, off::kInodeTableHi)) << 32;
    gd.bg_free_blocks_count |= static_cast<uint32_t>(le16(raw, off::kFreeBlocksHi)) << 16;
    gd.bg_free_inodes_count |= static_cast<uint32_t>(le16(raw, off::kFreeInodesHi)) << 16;
    gd.bg_used_dirs_count |= static_cast<uint32_t>(le16(raw, off::kUsedDirsHi)) << 16;
    gd.bg_itable_unused |= static_cast<uint32_t>(le16(raw, off::kItableUnusedHi)) << 16;
    gd.bg_exclude_bitmap |= static_cast<uint64_t>(le32(raw, off::kExcludeBitmapHi)) << 32;
    gd.bg_block_bitmap_csum |= static_cast<uint32_t>(le16(raw, off::kBlockBitmapCsumHi)) << 16;
    gd.bg_inode_bitmap_csum |= static_cast<uint32_t>(le16(raw, off::kInodeBitmapCsumHi)) << 16;
  }

  if (sb.has_metadata_csum() || sb.has_ro_compat(ro_compat::kGdtCsum)) {
    const uint16_t want = group_desc_checksum(sb, group, raw);
    if (gd.bg_checksum != want) {
      return Error(kErrBadChecksum, fmt::format("group {} descriptor: checksum 0x{:04x} does not match contents "
                                                "(0x{:04x})",
                                                group, gd.bg_checksum, want));
    }
  }

  const uint64_t itable_blocks =
      (static_cast<uint64_t>(sb.s_inodes_per_group) * sb.inode_size() + sb.block_size() - 1) / sb.block_size();
  UEXT_TRY(check_extent(sb, group, "block bitmap", gd.bg_block_bitmap, 1));
  UEXT_TRY(check_extent(sb, group, "inode bitmap", gd.bg_inode_bitmap, 1));
  UEXT_TRY(check_extent(sb, group, "inode table", gd.bg_inode_table, itable_blocks));
  UEXT_TRY(check_counts(sb, group, gd));
  return gd;
}

void encode_group_desc(const Superblock& sb, uint32_t group, const GroupDesc& gd, MutableBytes raw) {
  const size_t size = sb.desc_size();
  put_le32(raw, off::kBlockBitmapLo, static_cast<uint32_t>(gd.bg_block_bitmap));
  put_le32(raw, off::kInodeBitmapLo, static_cast<uint32_t>(gd.bg_inode_bitmap));
  put_le32(raw, off::kInodeTableLo, static_cast<uint32_t>(gd.bg_inode_table));
  put_le16(raw, off::kFreeBlocksLo, static_cast<uint16_t>(gd.bg_free_blocks_count));
  put_le16(raw, off::kFreeInodesLo, static_cast<uint16_t>(gd.bg_free_inodes_count));
  put_le16(raw, off::kUsedDirsLo, static_cast<uint16_t>(gd.bg_used_dirs_count));
  put_le16(raw, off::kFlags, gd.bg_flags);
  put_le32(raw, off::kExcludeBitmapLo, static_cast<uint32_t>(gd.bg_exclude_bitmap));
  put_le16(raw, off::kBlockBitmapCsumLo, static_cast<uint16_t>(gd.bg_block_bitmap_csum));
  put_le16(raw, off::kInodeBitmapCsumLo, static_cast<uint16_t>(gd.bg_inode_bitmap_csum));
  put_le16(raw, off::kItableUnusedLo, static_cast<uint16_t>(gd.bg_itable_unused));
  if (size >= kMinDescSize64) {
    put_le32(raw, off::kBlockBitmapHi, static_cast<uint32_t>(gd.bg_block_bitmap >> 32));
    put_le32(raw, off::kInodeBitmapHi, static_cast<uint32_t>(gd.bg_inode_bitmap >> 32));
    put_le32(raw, off::kInodeTableHi, static_cast<uint32_t>(gd.bg_inode_table >> 32));
    put_le16(raw, off::kFreeBlocksHi, static_cast<uint16_t>(gd.bg_free_blocks_count >> 16));
    put_le16(raw, off::kFreeInodesHi, static_cast<uint16_t>(gd.bg_free_inodes_count >> 16));
    put_le16(raw, off::kUsedDirsHi, static_cast<uint16_t>(gd.bg_used_dirs_count >> 16));
    put_le16(raw, off::kItableUnusedHi, static_cast<uint16_t>(gd.bg_itable_unused >> 16));
    put_le32(raw, off::kExcludeBitmapHi, static_cast<uint32_t>(gd.bg_exclude_bitmap >> 32));
    put_le16(raw, off::kBlockBitmapCsumHi, static_cast<uint16_t>(gd.bg_block_bitmap_csum >> 16));
    put_le16(raw, off::kInodeBitmapCsumHi, static_cast<uint16_t>(gd.bg_inode_bitmap_csum >> 16));
  }
  const bool has_csum = sb.has_metadata_csum() || sb.has_ro_compat(ro_compat::kGdtCsum);
  put_le16(raw, off::kChecksum, has_csum ? group_desc_checksum(sb, group, raw) : gd.bg_checksum);
}

DescLocation group_desc_location(const Superblock& sb, uint32_t group) {
  const uint32_t block_size = sb.block_size();
  const uint32_t per_block = block_size / sb.desc_size();
  const uint64_t index = group / per_block;  // which descriptor block
  const uint32_t offset = (group % per_block) * sb.desc_size();
  const uint64_t sb_block = kSuperblockOffset / block_size;
  if (!sb.has_incompat(incompat::kMetaBg) || index < sb.s_first_meta_bg) {
    // The classic table right after the primary superblock.
    return {sb_block + 1 + index, offset};
  }
  // meta_bg: each block of descriptors lives at the start of the first
  // group it describes, after that group's superblock backup if any.
  const uint32_t first_group = static_cast<uint32_t>(index * per_block);
  uint64_t block = sb.s_first_data_block + static_cast<uint64_t>(first_group) * sb.s_blocks_per_group;
  if (group_has_superblock(sb, first_group)) ++block;
  // Group 0 starts at block 0 with 1 KiB blocks under bigalloc, yet its
  // superblock sits in block 1.
  if (first_group == 0 && block_size == 1024 && sb.s_first_data_block == 0) ++block;
  return {block, offset};
}

bool group_has_superblock(const Superblock& sb, uint32_t group) {
  if (group == 0) return true;
  if (sb.has_compat(compat::kSparseSuper2)) {
    return group == sb.s_backup_bgs[0] || group == sb.s_backup_bgs[1];
  }
  if (group == 1 || !sb.has_ro_compat(ro_compat::kSparseSuper)) return true;
  if (group % 2 == 0) return false;
  for (uint32_t base : {3u, 5u, 7u}) {
    uint64_t p = base;
    while (p < group) p *= base;
    if (p == group) return true;
  }
  return false;
}

uint32_t block_bitmap_checksum(const Superblock& sb, Bytes bitmap) {
  return bitmap_checksum(sb, bitmap, sb.s_clusters_per_group);
}

uint32_t inode_bitmap_checksum(const Superblock& sb, Bytes bitmap) {
  return bitmap_checksum(sb, bitmap, sb.s_inodes_per_group);
}

}  // namespace uext::disk
