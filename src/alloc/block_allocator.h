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

#include <atomic>
#include <vector>

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

  explicit BlockAllocator(GroupBitmaps& groups);

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
  // copy over what the block holds next. Freed blocks stay busy (not handed
  // out again) until the freeing transaction commits, as in the kernel:
  // otherwise a crash before that commit would bring back a file whose
  // blocks already hold someone else's data. An allocation that finds only
  // busy blocks fails with ENOSPC and busy_blocks() > 0: the caller stops
  // its handle, commits, and tries again.
  Status free(journal::Handle& handle, uint64_t first, uint32_t count, bool metadata);

  // The goal for an inode's first block, as the kernel's
  // ext4_inode_to_goal_block: the start of the inode's group; with flex
  // groups of 4 or more, the flex group's first group for directories and
  // special files and the one after it for regular files.
  static uint64_t goal_for_inode(const disk::Superblock& sb, uint32_t ino, bool regular_file);

  // Debug aid: compares every group's bitmap with its descriptor's free
  // count and the in-memory counters; EUCLEAN naming the first mismatch.
  Status check_counts();

  // Blocks freed by transactions not yet committed.
  uint64_t busy_blocks() const { return busy_total_.load(std::memory_order_relaxed); }

 private:
  Result<bool> try_group(journal::Handle& handle, uint32_t g, uint32_t from, uint32_t want, bool whole,
                         BlockExtent& out);

  struct BusyRun {
    uint32_t start;  // in the group
    uint32_t count;
    uint32_t tid;    // the transaction that freed it
  };
  // Drops group g's busy runs whose transaction has committed; the caller
  // holds the group's lock.
  void expire_busy(uint32_t g);

  GroupBitmaps& groups_;
  std::vector<std::vector<BusyRun>> busy_;  // per group, under its lock
  std::atomic<uint64_t> busy_total_{0};
};

}  // namespace uext::alloc
