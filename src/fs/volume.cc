#include "fs/volume.h"

#include <fmt/format.h>

namespace uext::fs {

Volume::Volume(std::unique_ptr<BlockDevice> device, const Options& options,
               const disk::Superblock& sb)
    : device_(std::move(device)), options_(options), sb_(sb) {
  cache_ = std::make_unique<buffer::BufferCache>(*device_, sb_.block_size(), options_.metadata_cache_bytes);
}

Result<std::unique_ptr<Volume>> Volume::open(std::unique_ptr<BlockDevice> device,
                                             const Options& options) {
  if (device->size() < disk::kSuperblockOffset + disk::kSuperblockSize) {
    return Error(kErrCorrupted, fmt::format("image is too small to hold a superblock ({} bytes)",
                                            device->size()));
  }
  std::vector<std::byte> raw(disk::kSuperblockSize);
  UEXT_TRY(device->read(disk::kSuperblockOffset, raw));
  auto sb = disk::decode_superblock(raw, device->size());
  if (!sb.ok()) {
    // Skip checksum verification only when the caller asked to salvage.
    if (sb.error().code() == kErrBadChecksum && !options.verify_checksums) {
      // decode without the checksum: recompute it into a copy so that decode
      // accepts it, keeping every other validation.
      std::vector<std::byte> fixed = raw;
      disk::put_le32(fixed, 0x3FC, disk::superblock_checksum(fixed));
      sb = disk::decode_superblock(fixed, device->size());
    }
    if (!sb.ok()) return std::move(sb).error();
  }
  UEXT_ASSIGN_OR_RETURN(auto verdict, disk::check_features(sb->s_feature_compat,
                                                           sb->s_feature_ro_compat,
                                                           sb->s_feature_incompat));
  std::unique_ptr<Volume> volume(new Volume(std::move(device), options, *sb));
  volume->features_ = verdict;
  UEXT_TRY(volume->load_group_descriptors());
  return volume;
}

Status Volume::load_group_descriptors() {
  uint32_t count = sb_.group_count();
  uint32_t desc_size = sb_.desc_size();
  groups_.reserve(count);
  for (uint32_t g = 0; g < count; ++g) {
    disk::DescLocation loc = disk::group_desc_location(sb_, g);
    UEXT_ASSIGN_OR_RETURN(BlockRef block, read_meta_block(loc.block, "group descriptor table"));
    disk::Bytes raw = disk::Bytes(*block).subspan(loc.offset, desc_size);
    auto gd = disk::decode_group_desc(sb_, g, raw);
    if (!gd.ok() && gd.error().code() == kErrBadChecksum && !verify_checksums()) {
      std::vector<std::byte> fixed(raw.begin(), raw.end());
      uint16_t csum = disk::group_desc_checksum(sb_, g, fixed);
      disk::put_le16(fixed, 0x1E, csum);
      gd = disk::decode_group_desc(sb_, g, fixed);
    }
    if (!gd.ok()) return std::move(gd).error();
    groups_.push_back(*gd);
  }
  return {};
}

Status Volume::check_block_range(uint64_t first, uint64_t count, const std::string& what) const {
  uint64_t end = first + count;
  if (first < sb_.s_first_data_block || end < first || end > sb_.s_blocks_count) {
    return Error(kErrCorrupted,
                 fmt::format("{}: blocks {}..{} lie outside the filesystem (blocks {}..{})", what,
                             first, end - 1, sb_.s_first_data_block, sb_.s_blocks_count - 1));
  }
  return {};
}

Result<BlockRef> Volume::read_meta_block(uint64_t block, const char* what) {
  UEXT_TRY(check_block_range(block, 1, what));
  return cache_->get(block);
}

Result<InodeRecord> Volume::read_inode(uint32_t ino) {
  if (ino == 0 || ino > sb_.s_inodes_count) {
    return Error(kErrCorrupted, fmt::format("inode {} is out of range (the filesystem has {} inodes)",
                                            ino, sb_.s_inodes_count));
  }
  disk::InodeLocation loc = disk::inode_location(sb_, ino);
  const disk::GroupDesc& gd = groups_[loc.group];
  bool csum_groups = sb_.has_metadata_csum() || sb_.has_ro_compat(disk::ro_compat::kGdtCsum);
  uint32_t index_in_group = (ino - 1) % sb_.s_inodes_per_group;
  if (csum_groups && ((gd.bg_flags & disk::kBgInodeUninit) ||
                      index_in_group >= sb_.s_inodes_per_group - gd.bg_itable_unused)) {
    // The table slot was never initialised: the inode cannot be in use.
    return Error(kErrCorrupted, fmt::format("inode {} is not in use (group {} has not initialised it)",
                                            ino, loc.group));
  }
  uint32_t bs = block_size();
  uint64_t block = gd.bg_inode_table + loc.table_offset / bs;
  UEXT_ASSIGN_OR_RETURN(BlockRef data, read_meta_block(block, "inode table"));
  uint32_t in_block = static_cast<uint32_t>(loc.table_offset % bs);
  disk::Bytes slot = disk::Bytes(*data).subspan(in_block, sb_.inode_size());

  InodeRecord rec;
  rec.ino = ino;
  rec.raw.assign(slot.begin(), slot.end());
  auto inode = disk::decode_inode(sb_, ino, slot);
  if (!inode.ok() && inode.error().code() == kErrBadChecksum && !verify_checksums()) {
    // Salvage mode: decode what is there without the checksum check.
    disk::Superblock no_csum = sb_;
    no_csum.s_feature_ro_compat &= ~disk::ro_compat::kMetadataCsum;
    inode = disk::decode_inode(no_csum, ino, slot);
  }
  if (!inode.ok()) return std::move(inode).error();
  rec.inode = *inode;
  if (rec.inode.i_mode == 0 || (rec.inode.i_links_count == 0 && rec.inode.i_dtime != 0)) {
    return Error(kErrCorrupted, fmt::format("inode {} is not in use (mode {:o}, links {}, dtime {})",
                                            ino, rec.inode.i_mode, rec.inode.i_links_count,
                                            rec.inode.i_dtime));
  }
  if (sb_.has_metadata_csum()) {
    rec.csum_seed = disk::inode_csum_seed(sb_, ino, rec.inode.i_generation);
  }
  return rec;
}

}  // namespace uext::fs
