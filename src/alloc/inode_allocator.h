// Inode allocation from the inode bitmaps, inside a journal handle, placing
// inodes as the kernel's ext4 does (fs/ext4/ialloc.c): top-level
// directories spread over groups with the Orlov heuristic, other
// directories near their parent unless its group is crowded, files in
// their parent's group (with flex_bg, its flex group).
//
// Journal credits:
//   allocate(): kAllocateCredits = 5 -- the inode bitmap, the block bitmap
//     (written when the group was BLOCK_UNINIT, as the kernel initialises it
//     before using the group's inodes), the descriptor block, the
//     superblock, and the one inode-table block whose slot is zeroed when
//     the group's table was never zeroed (not INODE_ZEROED) and the new
//     inode extends its used part, or which starts from zeros without a
//     read when it lies wholly past the used part. The caller writing the
//     new inode into that same table block needs no further credit for it.
//   free(): kFreeCredits = 3 -- inode bitmap, descriptor block, superblock.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>

#include "alloc/group_bitmaps.h"
#include "journal/journal.h"
#include "uext/status.h"

namespace uext::alloc {

class InodeAllocator {
 public:
  static constexpr uint32_t kAllocateCredits = 5;
  static constexpr uint32_t kFreeCredits = 3;
  static constexpr uint32_t kRootIno = 2;

  explicit InodeAllocator(GroupBitmaps& groups) : groups_(groups) {}

  // Allocates an inode for a new file (directory: a new directory) in
  // directory `parent_ino` (kRootIno, or 0 when there is none, makes a
  // directory top-level). Never returns an inode below s_first_ino. Marks
  // it in the bitmap and counts it (and the directory) in the descriptor
  // and superblock; the caller writes the inode itself. ENOSPC when no
  // inode is free.
  Result<uint32_t> allocate(journal::Handle& handle, uint32_t parent_ino, bool directory);

  // Frees inode `ino` (the caller has already cleared it). Freeing an
  // inode that is free, reserved or out of range is EUCLEAN.
  Status free(journal::Handle& handle, uint32_t ino, bool directory);

  // Debug aid: compares every group's inode bitmap with its descriptor and
  // the in-memory counters.
  Status check_counts();

 private:
  struct Stats {
    uint64_t free_inodes = 0;
    uint64_t free_blocks = 0;
    uint64_t used_dirs = 0;
  };
  Stats flex_stats(uint32_t flex_group) const;
  uint32_t first_group_with_inodes(uint32_t flex_group) const;
  uint32_t find_group_orlov(uint32_t parent_group, bool top_dir);
  uint32_t find_group_other(uint32_t parent_ino);
  Result<std::optional<uint32_t>> try_group(journal::Handle& handle, uint32_t g, bool directory);

  GroupBitmaps& groups_;
  std::atomic<uint32_t> spread_{0};
};

}  // namespace uext::alloc
