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

#include <algorithm>
#include <atomic>
#include <unordered_set>
#include <vector>

#include <cstdint>

#include "alloc/group_bitmaps.h"
#include "alloc/prealloc_windows.h"
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
  // The inode the blocks are for (0: none). Allocations avoid other inodes'
  // preallocation windows; a goal inside the owner's own window is served
  // from it.
  uint32_t owner = 0;
  // Blocks to set aside for the owner after this allocation, as its new
  // window (at most this many: what is free right after the blocks given).
  uint32_t prealloc = 0;
};

class BlockAllocator;

// Space an operation has set aside before changing anything, so that it
// never meets ENOSPC half-way (a journal transaction cannot be rolled
// back). While a ReservationScope for it is active on a thread, every
// allocation that thread makes draws from the reservation instead of the
// free pool; what is left goes back when the reservation ends.
class Reservation {
 public:
  Reservation() = default;
  Reservation(Reservation&& other) noexcept { *this = std::move(other); }
  Reservation& operator=(Reservation&& other) noexcept;
  ~Reservation() { release(); }
  uint64_t left() const { return left_; }
  void release();
  // Hands back `n` blocks of it (at most what is left).
  void give_back(uint64_t n);
  // For an operation that could not reserve its worst case and goes ahead
  // with what it surely needs (a new name, which nearly always fits a block
  // its directory has): once this is used up, allocations are claimed from
  // the free space on a reservation's terms (the metadata pool kept, and
  // the root reserve unless `use_reserved`) and fail with ENOSPC past
  // them, rather than dipping into what an exhausted worst case may take.
  void allow_short(bool use_reserved) {
    short_ = true;
    short_use_reserved_ = use_reserved;
  }

 private:
  friend class BlockAllocator;
  BlockAllocator* allocator_ = nullptr;
  uint64_t left_ = 0;
  bool short_ = false;
  bool short_use_reserved_ = false;
};

// Makes allocations on this thread draw from `r` (nullptr: from the pool)
// until the scope ends.
class ReservationScope {
 public:
  explicit ReservationScope(Reservation* r);
  ~ReservationScope();
  ReservationScope(const ReservationScope&) = delete;
  ReservationScope& operator=(const ReservationScope&) = delete;

 private:
  Reservation* previous_;
};

class BlockAllocator {
 public:
  static constexpr uint32_t kAllocateCredits = 3;
  static uint32_t free_credits(const disk::Superblock& sb, uint64_t first, uint32_t count);

  explicit BlockAllocator(GroupBitmaps& groups);

  // Allocates up to `count` (>= 1) contiguous blocks, as close to `goal` as
  // possible. A goal inside the owner's window (options.owner) takes the
  // window's blocks from the goal on (fewer than `count` when the window
  // ends first). Otherwise: the goal itself when the whole size is free
  // there; with options.prealloc, a free run of count + prealloc blocks;
  // then a free run of the whole size, searched from the goal
  // onward in the goal's group (then from the start of that group) and in
  // the groups after it, wrapping; when no group has such a run, the
  // longest run (at most `count`) of the first group with free blocks from
  // the goal's group on. A goal outside the filesystem (0 included) means
  // the first group. Without options.use_reserved the free count never
  // drops below s_r_blocks_count; the request shrinks to what is left above
  // it. Other inodes' windows count as used, unless nothing else is free:
  // then every window is dropped. ENOSPC when nothing can be allocated.
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
  // Sets aside `blocks` free blocks (without options.use_reserved, never the
  // root reserve) that are not busy, so the allocations they stand for
  // cannot fail. ENOSPC when there are not that many; when busy blocks
  // stood in the way, committing the journal and asking again may succeed
  // (the message says so, and busy_blocks() is then nonzero).
  Result<Reservation> reserve(uint64_t blocks, const AllocOptions& options = {});
  // Adds `blocks` to an existing reservation, on the same terms as
  // reserve(); on failure the reservation is unchanged.
  Status grow(Reservation& r, uint64_t blocks, const AllocOptions& options = {});
  // Blocks held by every outstanding reservation.
  uint64_t reserved_blocks() const { return reserved_total_.load(std::memory_order_relaxed); }
  // The counter above and, taken at the same moment, what the outstanding
  // reservations hold one by one (the two must always agree; debug builds
  // and tests compare them with what each holder thinks it has).
  struct ReservedTally {
    uint64_t counter = 0;
    uint64_t sum = 0;
    uint64_t holders = 0;
  };
  ReservedTally tally_reserved() const;

  // The goal for an inode's first block, as the kernel's
  // ext4_inode_to_goal_block: the start of the inode's group; with flex
  // groups of 4 or more, the flex group's first group for directories and
  // special files and the one after it for regular files.
  static uint64_t goal_for_inode(const disk::Superblock& sb, uint32_t ino, bool regular_file);

  // Gives an inode's preallocation window back (close, truncate, delete).
  void drop_window(uint32_t ino) { windows_.drop(ino); }
  const PreallocWindows& windows() const { return windows_; }

  // Debug aid: compares every group's bitmap with its descriptor's free
  // count and the in-memory counters; EUCLEAN naming the first mismatch.
  Status check_counts();

  // Blocks freed by transactions not yet committed.
  uint64_t busy_blocks() const { return busy_total_.load(std::memory_order_relaxed); }

 private:
  // Blocks no reservation takes (ext4's s_resv_clusters: 2% of the blocks,
  // at most 4096), kept for what must not fail for space: writeback
  // converting unwritten extents, a worst-case estimate falling short.
  uint64_t metadata_pool() const { return std::min<uint64_t>(groups_.sb().s_blocks_count / 50, 4096); }
  // What a group search looks for: `want` blocks, from `from` on; with
  // `whole`, only a free run of `search` (>= want) blocks will do. Blocks in
  // `avoid` count as used; with `exact` only a run at `from` will do.
  // `window` is set to the free blocks right after the run, up to
  // `window_max`.
  struct Search {
    uint32_t from = 0;
    uint32_t want = 0;
    uint32_t search = 0;
    bool whole = true;
    const std::vector<Window>* avoid = nullptr;
    uint32_t window_max = 0;
    bool exact = false;  // the run must start at `from`
  };
  Result<bool> try_group(journal::Handle& handle, uint32_t g, const Search& s, BlockExtent& out,
                         uint32_t* window);
  // Takes exactly [first, first + n) when every block is free and not busy.
  Result<bool> try_exact(journal::Handle& handle, uint64_t first, uint32_t n, BlockExtent& out);

  struct BusyRun {
    uint32_t start;  // in the group
    uint32_t count;
    uint32_t tid;    // the transaction that freed it
  };
  // Drops group g's busy runs whose transaction has committed; the caller
  // holds the group's lock.
  void expire_busy(uint32_t g);
  // expire_busy over every group, one lock at a time (the caller holds no
  // group's lock); returns what is still busy.
  uint64_t expire_all_busy();

  friend class Reservation;
  GroupBitmaps& groups_;
  std::vector<std::vector<BusyRun>> busy_;  // per group, under its lock
  std::atomic<uint64_t> busy_total_{0};
  std::atomic<uint64_t> reserved_total_{0};
  // Every reservation holding blocks, so their sum can be checked against
  // reserved_total_; both change together under res_mu_ (a leaf).
  void adjust(Reservation& r, int64_t delta);
  void moved(Reservation& from, Reservation& to);
  mutable base::OrderedMutex res_mu_{base::LockLevel::kReservations};
  std::unordered_set<const Reservation*> holders_;
  PreallocWindows windows_;
};

}  // namespace uext::alloc
