// Block allocation: contiguous runs from the block bitmaps, near a goal,
// inside a journal handle.
//
// Journal credits (blocks a call may change; reserve them in
// Volume::start()):
//   allocate(): kAllocateCredits = 3 -- the block bitmap of the one group
//     the run comes from, the descriptor block holding that group's
//     descriptor, and the superblock. (Initialising a BLOCK_UNINIT group
//     writes the same bitmap block.) Several allocations in one handle
//     share the superblock: n calls need at most 2n + 1.
//   free(): free_credits(first, count) = 2 per group the range spans (bitmap
//     and descriptor block) + 1 (superblock). Revoking freed metadata
//     blocks costs no credits.
#pragma once

#include <cstdint>

#include "alloc/group_bitmaps.h"
#include "journal/journal.h"
#include "uext/status.h"

namespace uext::alloc {

struct BlockExtent {
  uint64_t first = 0;
  uint32_t count = 0;
  bool operator==(const BlockExtent&) const = default;
};

struct AllocOptions {
  // May dip into the blocks reserved for root (s_r_blocks_count).
  bool use_reserved = false;
};

class BlockAllocator {
 public:
  static constexpr uint32_t kAllocateCredits = 3;
  static uint32_t free_credits(const disk::Superblock& sb, uint64_t first, uint32_t count);

  explicit BlockAllocator(GroupBitmaps& groups) : groups_(groups) {}

  // Allocates up to `count` (>= 1) contiguous blocks, as close to `goal` as
  // possible: first a free run of the whole size, searched from the goal
  // onward in the goal's group (then from the start of that group) and in
  // the groups after it, wrapping; when no group has such a run, the
  // longest run (at most `count`) of the first group with free blocks from
  // the goal's group on. A goal outside the filesystem (0 included) means
  // the first group. Without options.use_reserved the free count never
  // drops below s_r_blocks_count; the request shrinks to what is left above
  // it. ENOSPC when nothing can be allocated.
  Result<BlockExtent> allocate(journal::Handle& handle, uint64_t goal, uint32_t count,
                               const AllocOptions& options = {});

  // Frees blocks [first, first + count), which may span groups. A block that
  // is already free is corruption (EUCLEAN naming it) and nothing is freed;
  // so is a block of the filesystem's own metadata. `metadata` blocks are
  // revoked in the journal, so that a replay cannot write an old logged
  // copy over what the block holds next.
  Status free(journal::Handle& handle, uint64_t first, uint32_t count, bool metadata);

  // The goal for an inode's first block, as the kernel's
  // ext4_inode_to_goal_block: the start of the inode's group; with flex
  // groups of 4 or more, the flex group's first group for directories and
  // special files and the one after it for regular files.
  static uint64_t goal_for_inode(const disk::Superblock& sb, uint32_t ino, bool regular_file);

  // Debug aid: compares every group's bitmap with its descriptor's free
  // count and the in-memory counters; EUCLEAN naming the first mismatch.
  Status check_counts();

 private:
  Result<bool> try_group(journal::Handle& handle, uint32_t g, uint32_t from, uint32_t want, bool whole,
                         BlockExtent& out);

  GroupBitmaps& groups_;
};

}  // namespace uext::alloc
