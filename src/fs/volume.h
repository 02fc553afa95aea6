// A mounted image: the device, its superblock and group descriptors, and
// the metadata cache. Everything above it (block maps, directories, the
// Filesystem API) reads the image only through a Volume.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "disk/group_desc.h"
#include "disk/inode.h"
#include "disk/superblock.h"
#include "buffer/buffer_cache.h"
#include "uext/block_device.h"
#include "uext/filesystem.h"

namespace uext::fs {

using buffer::BlockRef;

// An inode as read from the table: decoded fields plus the raw slot, which
// the in-inode xattr area lives in.
struct InodeRecord {
  uint32_t ino = 0;
  disk::Inode inode;
  std::vector<std::byte> raw;
  // Seed for the checksums of this inode's extent, directory and htree blocks.
  uint32_t csum_seed = 0;
};

class Volume {
 public:
  // Reads and validates the superblock and every group descriptor.
  static Result<std::unique_ptr<Volume>> open(std::unique_ptr<BlockDevice> device,
                                              const Options& options);

  const disk::Superblock& sb() const { return sb_; }
  const Options& options() const { return options_; }
  BlockDevice& device() { return *device_; }
  uint32_t block_size() const { return sb_.block_size(); }
  const disk::GroupDesc& group(uint32_t g) const { return groups_[g]; }
  bool verify_checksums() const { return options_.verify_checksums && sb_.has_metadata_csum(); }
  const disk::FeatureVerdict& features() const { return features_; }

  // A metadata block through the cache. EUCLEAN when `block` lies outside
  // the filesystem; `what` names the structure for that message.
  Result<BlockRef> read_meta_block(uint64_t block, const char* what);

  // Validates that blocks [first, first + count) lie inside the filesystem.
  Status check_block_range(uint64_t first, uint64_t count, const std::string& what) const;

  // Reads an in-use inode. ENOENT-like misuse (ino 0 or past s_inodes_count)
  // is EUCLEAN, as it can only come from a corrupt reference; an inode that
  // is not in use (never initialised, or freed) is EUCLEAN too.
  Result<InodeRecord> read_inode(uint32_t ino);

 private:
  Volume(std::unique_ptr<BlockDevice> device, const Options& options, const disk::Superblock& sb);
  Status load_group_descriptors();

  std::unique_ptr<BlockDevice> device_;
  Options options_;
  disk::Superblock sb_;
  disk::FeatureVerdict features_;
  std::vector<disk::GroupDesc> groups_;
  std::unique_ptr<buffer::BufferCache> cache_;
};

}  // namespace uext::fs
