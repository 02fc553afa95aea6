// What the block and inode allocators share: one lock per block group, the
// groups' free counters in memory, the map of blocks that belong to the
// filesystem's own metadata (the "system zone"), and loading and storing
// bitmaps, including building those of groups the image left uninitialised.
//
// Locking: a group's lock (LockLevel::kAllocatorGroup) covers both of its
// bitmaps and the allocation fields of its descriptor. It is taken after the
// journal handle is started; inside it the allocators call handle.modify()
// and Volume::update_group()/update_superblock(), which are later in the
// lock order. Several group locks may be held only in ascending group order.
//
// The in-memory counters mirror bg_free_blocks_count, bg_free_inodes_count
// and bg_used_dirs_count. They change only under the group's lock, in the
// same step as the descriptor; read without the lock they are hints for
// skipping groups, under it they are exact.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/ordered_mutex.h"
#include "buffer/buffer_cache.h"
#include "disk/group_desc.h"
#include "fs/volume.h"
#include "journal/journal.h"
#include "uext/status.h"

namespace uext::alloc {

// Bit helpers for ext4 bitmaps (bit i is bit i%8 of byte i/8).
namespace bits {
inline bool test(std::span<const std::byte> map, uint32_t i) {
  return (static_cast<uint8_t>(map[i >> 3]) >> (i & 7)) & 1;
}
inline void set(std::span<std::byte> map, uint32_t i) {
  map[i >> 3] |= static_cast<std::byte>(1u << (i & 7));
}
inline void clear(std::span<std::byte> map, uint32_t i) {
  map[i >> 3] &= static_cast<std::byte>(~(1u << (i & 7)));
}
// First clear bit in [from, limit), or `limit`.
uint32_t next_zero(std::span<const std::byte> map, uint32_t from, uint32_t limit);
// First set bit in [from, limit), or `limit`.
uint32_t next_one(std::span<const std::byte> map, uint32_t from, uint32_t limit);
// Clear bits in [0, limit).
uint32_t count_zero(std::span<const std::byte> map, uint32_t limit);
void set_range(std::span<std::byte> map, uint32_t first, uint32_t count);
}  // namespace bits

class GroupBitmaps {
 public:
  // `volume` must be open read-write and outlive this object.
  explicit GroupBitmaps(fs::Volume& volume);
  GroupBitmaps(const GroupBitmaps&) = delete;
  GroupBitmaps& operator=(const GroupBitmaps&) = delete;

  fs::Volume& volume() { return volume_; }
  const disk::Superblock& sb() const { return sb_; }
  uint32_t group_count() const { return groups_; }
  // gdt_csum or metadata_csum: the UNINIT flags and bg_itable_unused count.
  bool group_csum() const { return group_csum_; }
  uint32_t flex_size() const { return flex_size_; }

  base::OrderedMutex& lock(uint32_t g) { return state_[g].mu; }

  // Geometry.
  uint64_t group_first_block(uint32_t g) const {
    return sb_.s_first_data_block + static_cast<uint64_t>(g) * sb_.s_blocks_per_group;
  }
  uint32_t blocks_in_group(uint32_t g) const;
  uint32_t group_of_block(uint64_t block) const {
    return static_cast<uint32_t>((block - sb_.s_first_data_block) / sb_.s_blocks_per_group);
  }
  uint32_t itable_blocks() const { return itable_blocks_; }
  // Blocks at the start of group g taken by a superblock backup and
  // descriptor table blocks (and reserved GDT blocks), as the kernel's
  // ext4_num_base_meta_clusters counts them.
  uint32_t base_meta_blocks(uint32_t g) const;

  // The first block of [first, first + count) that belongs to the
  // filesystem's metadata (superblocks, descriptor tables, reserved GDT
  // blocks, bitmaps, inode tables), or UINT64_MAX if none does.
  uint64_t system_block_in(uint64_t first, uint64_t count) const;

  // Hints (exact under the group's lock).
  uint32_t free_blocks(uint32_t g) const { return state_[g].free_blocks.load(std::memory_order_relaxed); }
  uint32_t free_inodes(uint32_t g) const { return state_[g].free_inodes.load(std::memory_order_relaxed); }
  uint32_t used_dirs(uint32_t g) const { return state_[g].used_dirs.load(std::memory_order_relaxed); }
  int64_t total_free_inodes() const { return total_free_inodes_.load(std::memory_order_relaxed); }
  int64_t total_dirs() const { return total_dirs_.load(std::memory_order_relaxed); }
  // Free blocks not yet claimed by an allocation in progress.
  int64_t unclaimed_free_blocks() const { return unclaimed_blocks_.load(std::memory_order_relaxed); }

  // Claims up to `want` blocks of the filesystem-wide free count, keeping
  // `keep` (the root reserve) untouched; returns how many were claimed (0:
  // none left). Allocation then takes them from a group; what it does not
  // use goes back with unclaim().
  uint64_t claim_blocks(uint64_t want, uint64_t keep);
  void unclaim_blocks(uint64_t n) { unclaimed_blocks_.fetch_add(static_cast<int64_t>(n)); }

  // A group's bitmap as it stands (the caller holds the group's lock).
  // `uninit` says the group is flagged uninitialised: `bytes` were built
  // in memory and the block must be written with handle.create().
  struct Bitmap {
    std::vector<std::byte> bytes;  // always a full block
    bool uninit = false;
  };
  Result<Bitmap> load_block_bitmap(uint32_t g);
  Result<Bitmap> load_inode_bitmap(uint32_t g);
  // No block of group `g` below this one is free in its stored bitmap
  // (exact under the group's lock; `map` is that bitmap, which debug builds
  // check it against): searches start here instead of walking the group's
  // used blocks again (20,000 one-block files in a group made every
  // allocation walk all the blocks before it). store_block_bitmap keeps
  // it: an allocation moves it on, a free sends it back to 0.
  uint32_t first_free_block(uint32_t g, const Bitmap& map) const;
  // The same for inodes (an index within the group), kept by
  // store_inode_bitmap: a tree unpacked into one group searched past every
  // inode it had already taken.
  uint32_t first_free_inode(uint32_t g, const Bitmap& map) const;

  // Writes a changed block bitmap of group g through the handle together
  // with its descriptor (free count += delta, bitmap checksum, BLOCK_UNINIT
  // cleared) and the superblock's free count. Caller holds the lock.
  Status store_block_bitmap(journal::Handle& handle, uint32_t g, const Bitmap& map, int64_t delta);
  // Likewise for the inode bitmap: free inodes += delta, used dirs +=
  // dirs_delta, INODE_UNINIT cleared, and bg_itable_unused lowered so that
  // slot `used_slots - 1` is inside the used part (0: leave it).
  Status store_inode_bitmap(journal::Handle& handle, uint32_t g, const Bitmap& map, int64_t delta,
                            int32_t dirs_delta, uint32_t used_slots);

  // Initialises group g's block bitmap on disk if it is BLOCK_UNINIT (the
  // kernel does this before handing out an inode of such a group). Caller
  // holds the lock. Costs one credit (the bitmap) plus the descriptor.
  Status ensure_block_bitmap(journal::Handle& handle, uint32_t g);

 private:
  // store_*_bitmap: moves a floor on after an allocation (delta < 0;
  // only bits set since, so the first clear one is at or after it), back
  // to 0 after a free.
  static void move_floor(std::atomic<uint32_t>& floor, const Bitmap& map, int64_t delta, uint32_t bits_in_group);
  // first_free_*: the floor, checked against `map` in debug builds.
  static uint32_t checked_floor(uint32_t floor, const Bitmap& map, uint32_t g, const char* what);
  struct GroupState {
    base::OrderedMutex mu{base::LockLevel::kAllocatorGroup, /*same_level_ok=*/true};
    std::atomic<uint32_t> free_blocks{0};
    std::atomic<uint32_t> free_inodes{0};
    std::atomic<uint32_t> used_dirs{0};
    std::atomic<uint32_t> first_free_block{0};
    std::atomic<uint32_t> first_free_inode{0};
  };
  struct Extent {
    uint64_t first;
    uint64_t count;
  };

  void build_block_bitmap(uint32_t g, std::span<std::byte> out) const;
  Status verify_bitmap(uint32_t g, const char* what, std::span<const std::byte> map, uint32_t stored,
                       uint32_t computed, uint32_t free_bits, uint32_t expect_free) const;

  fs::Volume& volume_;
  disk::Superblock sb_;  // geometry only: counters are in volume_
  uint32_t groups_ = 0;
  uint32_t block_size_ = 0;
  uint32_t itable_blocks_ = 0;
  uint32_t flex_size_ = 1;
  bool group_csum_ = false;
  std::unique_ptr<GroupState[]> state_;
  std::vector<Extent> system_;  // sorted, merged
  std::atomic<int64_t> unclaimed_blocks_{0};
  std::atomic<int64_t> total_free_inodes_{0};
  std::atomic<int64_t> total_dirs_{0};

};

}  // namespace uext::alloc
