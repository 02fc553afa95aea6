#include "alloc/block_allocator.h"

#include <fmt/format.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace uext::alloc {

namespace {
// The reservation allocations on this thread draw from (ReservationScope).
thread_local Reservation* current_reservation = nullptr;
}  // namespace

namespace {

// Start of the first free run of `want` bits in [from, limit), or limit.
uint32_t find_run(std::span<const std::byte> map, uint32_t from, uint32_t limit, uint32_t want) {
  uint32_t i = from;
  while (i < limit) {
    uint32_t s = bits::next_zero(map, i, limit);
    if (s >= limit) break;
    uint32_t cap = limit - s < want ? limit : s + want;
    uint32_t e = bits::next_one(map, s, cap);
    if (e - s >= want) return s;
    i = e;
  }
  return limit;
}

struct Run {
  uint32_t start = 0;
  uint32_t length = 0;
};

// The longest free run in [from, limit), each counted up to `want`.
Run longest_run(std::span<const std::byte> map, uint32_t from, uint32_t limit, uint32_t want) {
  Run best;
  uint32_t i = from;
  while (i < limit && best.length < want) {
    uint32_t s = bits::next_zero(map, i, limit);
    if (s >= limit) break;
    uint32_t e = bits::next_one(map, s, limit);
    uint32_t len = std::min(e - s, want);
    if (len > best.length) best = {s, len};
    i = e;
  }
  return best;
}

}  // namespace

BlockAllocator::BlockAllocator(GroupBitmaps& groups) : groups_(groups), busy_(groups.group_count()) {}

void BlockAllocator::expire_busy(uint32_t g) {
  auto& runs = busy_[g];
  if (runs.empty()) return;
  journal::Journal* j = groups_.volume().journal();
  uint32_t committed = j ? j->last_committed_tid() : 0;
  std::erase_if(runs, [&](const BusyRun& r) {
    if (j && !disk::tid_geq(committed, r.tid)) return false;
    busy_total_.fetch_sub(r.count, std::memory_order_relaxed);
    return true;
  });
}

uint64_t BlockAllocator::expire_all_busy() {
  for (uint32_t g = 0; g < groups_.group_count(); ++g) {
    std::lock_guard lock(groups_.lock(g));
    expire_busy(g);
  }
  return busy_blocks();
}

uint32_t BlockAllocator::free_credits(const disk::Superblock& sb, uint64_t first, uint32_t count) {
  if (count == 0) return 0;
  uint64_t g0 = (first - sb.s_first_data_block) / sb.s_blocks_per_group;
  uint64_t g1 = (first + count - 1 - sb.s_first_data_block) / sb.s_blocks_per_group;
  return static_cast<uint32_t>(2 * (g1 - g0 + 1) + 1);
}

uint64_t BlockAllocator::goal_for_inode(const disk::Superblock& sb, uint32_t ino, bool regular_file) {
  uint32_t groups = sb.group_count();
  uint32_t g = ino == 0 ? 0 : (ino - 1) / sb.s_inodes_per_group;
  uint32_t flex = 1;
  if (sb.has_incompat(disk::incompat::kFlexBg) && sb.s_log_groups_per_flex < 31) flex = 1u << sb.s_log_groups_per_flex;
  if (flex >= 4) {
    g &= ~(flex - 1);
    if (regular_file && g + 1 < groups) ++g;
  }
  if (g >= groups) g = 0;
  return sb.s_first_data_block + static_cast<uint64_t>(g) * sb.s_blocks_per_group;
}

Result<bool> BlockAllocator::try_group(journal::Handle& handle, uint32_t g, const Search& q, BlockExtent& out,
                                       uint32_t* window) {
  std::lock_guard lock(groups_.lock(g));
  uint32_t free = groups_.free_blocks(g);
  if (free == 0 || (q.whole && free < q.search)) return false;
  UEXT_ASSIGN_OR_RETURN(GroupBitmaps::Bitmap map, groups_.load_block_bitmap(g));
  const uint32_t limit = groups_.blocks_in_group(g);
  const uint64_t base = groups_.group_first_block(g);
  // Search a copy in which blocks freed by uncommitted transactions, and
  // other inodes' windows, count as used; the bitmap stored back is the real one.
  expire_busy(g);
  std::vector<std::byte> view;
  std::span<const std::byte> search = map.bytes;
  auto mark = [&](uint64_t first, uint64_t end) {
    first = std::max(first, base);
    end = std::min(end, base + limit);
    if (first >= end) return;
    if (view.empty()) view = map.bytes;
    bits::set_range(view, static_cast<uint32_t>(first - base), static_cast<uint32_t>(end - first));
  };
  for (const BusyRun& r : busy_[g]) mark(base + r.start, base + r.start + r.count);
  if (q.avoid) {
    for (const Window& w : *q.avoid) mark(w.first, w.end());
  }
  if (!view.empty()) search = view;
  // Nothing is free below the group's floor: the searches start there.
  const uint32_t floor = groups_.first_free_block(g, map);
  const uint32_t from = std::max(q.from, floor);
  Run run;
  if (q.whole) {
    uint32_t s = find_run(search, from, limit, q.search);
    if (q.exact && s != q.from) return false;
    if (s >= limit && q.from > floor) s = find_run(search, floor, limit, q.search);
    if (s >= limit) return false;
    run = {s, q.want};
  } else {
    run = longest_run(search, from, limit, q.want);
    if (run.length < q.want && q.from > floor) {
      Run before = longest_run(search, floor, q.from, q.want);
      if (before.length > run.length) run = before;
    }
    // Only busy blocks (or windows, which the caller drops) left.
    if (run.length == 0 && !view.empty()) return false;
    if (run.length == 0) {
      return Error(kErrCorrupted, fmt::format("group {}: the descriptor counts {} free blocks but the bitmap has none",
                                              g, free));
    }
  }
  const uint64_t first = base + run.start;
  if (uint64_t sys = groups_.system_block_in(first, run.length); sys != UINT64_MAX) {
    return Error(kErrCorrupted, fmt::format("group {}: block {} is free in the bitmap but holds filesystem metadata",
                                            g, sys));
  }
  if (window) {
    const uint32_t after = run.start + run.length;
    const uint32_t cap = static_cast<uint32_t>(std::min<uint64_t>(limit, uint64_t{after} + q.window_max));
    *window = bits::next_one(search, after, cap) - after;
  }
  bits::set_range(map.bytes, run.start, run.length);
  UEXT_TRY(groups_.store_block_bitmap(handle, g, map, -static_cast<int64_t>(run.length)));
  out = {first, run.length};
  return true;
}

Result<bool> BlockAllocator::try_exact(journal::Handle& handle, uint64_t first, uint32_t n, BlockExtent& out) {
  const uint32_t g = groups_.group_of_block(first);
  const uint64_t base = groups_.group_first_block(g);
  std::lock_guard lock(groups_.lock(g));
  const uint32_t limit = groups_.blocks_in_group(g);
  const uint32_t s = static_cast<uint32_t>(first - base);
  if (s >= limit) return false;
  n = std::min(n, limit - s);
  UEXT_ASSIGN_OR_RETURN(GroupBitmaps::Bitmap map, groups_.load_block_bitmap(g));
  if (bits::next_one(map.bytes, s, s + n) != s + n) return false;
  expire_busy(g);
  for (const BusyRun& r : busy_[g]) {
    if (r.start < s + n && r.start + r.count > s) return false;
  }
  if (groups_.system_block_in(first, n) != UINT64_MAX) return false;
  bits::set_range(map.bytes, s, n);
  UEXT_TRY(groups_.store_block_bitmap(handle, g, map, -static_cast<int64_t>(n)));
  out = {first, n};
  return true;
}

Result<BlockExtent> BlockAllocator::allocate(journal::Handle& handle, uint64_t goal, uint32_t count,
                                             const AllocOptions& options) {
  if (count == 0) return Error(EINVAL, "block allocation of 0 blocks");
  const disk::Superblock& sb = groups_.sb();
  const uint64_t keep = options.use_reserved ? 0 : sb.s_r_blocks_count;
  Reservation* reservation = current_reservation;
  // What an allocation past a used-up reservation leaves free.
  uint64_t keep_past = 0;
  if (reservation && reservation->left_ == 0) {
    // A worst-case estimate fell short: take what is needed from the pool,
    // root reserve included (as ext4 keeps blocks back for metadata), rather
    // than fail an operation that has already changed blocks. One that
    // knew it might fall short (allow_short) can fail cleanly instead.
    if (reservation->short_) {
      keep_past = metadata_pool() + (reservation->short_use_reserved_ ? 0 : sb.s_r_blocks_count);
    }
    reservation = nullptr;
  }
  const uint64_t claimed = reservation ? std::min<uint64_t>(count, reservation->left_)
                                       : groups_.claim_blocks(count, current_reservation ? keep_past : keep);
  if (claimed == 0) {
    int64_t left = groups_.unclaimed_free_blocks();
    if (left > 0 && !options.use_reserved) {
      return Error(ENOSPC, fmt::format("no space left: the {} free blocks are reserved for root", left));
    }
    return Error(ENOSPC, "no space left: no free blocks");
  }
  const uint32_t want = static_cast<uint32_t>(claimed);
  if (goal < sb.s_first_data_block || goal >= sb.s_blocks_count) goal = sb.s_first_data_block;
  const uint32_t n = groups_.group_count();
  const uint32_t goal_group = groups_.group_of_block(goal);
  const uint32_t goal_offset = static_cast<uint32_t>(goal - groups_.group_first_block(goal_group));

  auto settle = [&](const BlockExtent& got) {
    if (reservation) {
      adjust(*reservation, -static_cast<int64_t>(got.count));
    } else {
      groups_.unclaim_blocks(claimed - got.count);
    }
  };
  auto fail = [&](Error e) -> Result<BlockExtent> {
    if (!reservation) groups_.unclaim_blocks(claimed);
    return e;
  };

  BlockExtent out;
  // The owner's window continues where its last allocation ended.
  std::optional<Window> own = options.owner ? windows_.get(options.owner) : std::nullopt;
  if (own && own->contains(goal)) {
    const uint32_t take = static_cast<uint32_t>(std::min<uint64_t>(want, own->end() - goal));
    auto got = try_exact(handle, goal, take, out);
    if (!got.ok()) return fail(std::move(got).error());
    if (*got) {
      windows_.consume(options.owner, out.first + out.count);
      settle(out);
      return out;
    }
    windows_.drop(options.owner);  // taken when space was short: it is stale
    own.reset();
  }

  // Other inodes' windows (and the owner's own, when the goal is elsewhere)
  // count as used; the search takes a snapshot of them.
  std::vector<Window> avoid = windows_.overlapping(0, UINT64_MAX, 0);
  const uint32_t bpg = sb.s_blocks_per_group;
  const uint32_t with_window =
      static_cast<uint32_t>(std::min<uint64_t>(uint64_t{want} + options.prealloc, bpg));
  for (int attempt = 0; attempt < 2; ++attempt) {
    // The goal itself first (a file continues its last extent), then a run
    // with room for the window, then the whole request, then what there is.
    std::vector<Search> passes;
    passes.push_back({0, want, want, true, &avoid, 0, true});
    if (options.prealloc > 0 && with_window > want) passes.push_back({0, want, with_window, true, &avoid, 0});
    passes.push_back({0, want, want, true, &avoid, 0});
    passes.push_back({0, want, want, false, &avoid, 0});
    for (Search q : passes) {
      q.window_max = options.owner ? options.prealloc : 0;
      for (uint32_t i = 0; i < (q.exact ? 1 : n); ++i) {
        uint32_t g = (goal_group + i) % n;
        uint32_t hint = groups_.free_blocks(g);
        if (hint == 0 || (q.whole && hint < q.search)) continue;
        q.from = i == 0 ? goal_offset : 0;
        uint32_t window = 0;
        auto got = try_group(handle, g, q, out, q.window_max ? &window : nullptr);
        if (!got.ok()) return fail(std::move(got).error());
        if (*got) {
          if (options.owner && options.prealloc > 0) windows_.set(options.owner, out.first + out.count, window);
          settle(out);
          return out;
        }
      }
    }
    // Space is short: windows are given back (as ext4 discards its
    // preallocations before it fails an allocation) and the search repeats.
    if (avoid.empty()) break;
    windows_.drop_all();
    avoid.clear();
  }
  if (uint64_t busy = busy_blocks(); busy > 0) {
    return fail(Error(ENOSPC, fmt::format("no space left until the running transaction commits "
                                          "({} freed blocks are busy until then)", busy)));
  }
  return fail(Error(ENOSPC, "no space left: no group has a free block"));
}

Reservation& Reservation::operator=(Reservation&& other) noexcept {
  if (this != &other) {
    release();
    short_ = other.short_;
    short_use_reserved_ = other.short_use_reserved_;
    if (other.allocator_) {
      other.allocator_->moved(other, *this);
    } else {
      left_ = std::exchange(other.left_, 0);
    }
  }
  return *this;
}

void Reservation::release() {
  give_back(left_);
  allocator_ = nullptr;
}

void Reservation::give_back(uint64_t n) {
  n = std::min(n, left_);
  if (n == 0) return;
  if (!allocator_) {
    left_ -= n;
    return;
  }
  allocator_->groups_.unclaim_blocks(n);
  allocator_->adjust(*this, -static_cast<int64_t>(n));
}

void BlockAllocator::adjust(Reservation& r, int64_t delta) {
  std::lock_guard lock(res_mu_);
  r.left_ = static_cast<uint64_t>(static_cast<int64_t>(r.left_) + delta);
  reserved_total_.fetch_add(static_cast<uint64_t>(delta), std::memory_order_relaxed);
  if (r.left_ == 0) {
    holders_.erase(&r);
  } else {
    holders_.insert(&r);
  }
}

void BlockAllocator::moved(Reservation& from, Reservation& to) {
  std::lock_guard lock(res_mu_);
  to.allocator_ = std::exchange(from.allocator_, nullptr);
  to.left_ = std::exchange(from.left_, 0);
  holders_.erase(&from);
  if (to.left_ > 0) holders_.insert(&to);
}

BlockAllocator::ReservedTally BlockAllocator::tally_reserved() const {
  std::lock_guard lock(res_mu_);
  ReservedTally t;
  t.counter = reserved_total_.load(std::memory_order_relaxed);
  for (const Reservation* r : holders_) t.sum += r->left_;
  t.holders = holders_.size();
  return t;
}

ReservationScope::ReservationScope(Reservation* r) : previous_(current_reservation) {
  current_reservation = r;
}
ReservationScope::~ReservationScope() { current_reservation = previous_; }

Result<Reservation> BlockAllocator::reserve(uint64_t blocks, const AllocOptions& options) {
  Reservation r;
  r.allocator_ = this;
  UEXT_TRY(grow(r, blocks, options));
  return r;
}

Status BlockAllocator::grow(Reservation& r, uint64_t blocks, const AllocOptions& options) {
  if (blocks == 0) return {};
  r.allocator_ = this;
  // Reservations never take the metadata pool: it is what lets writeback
  // convert unwritten extents, or a worst-case estimate fall short, on a
  // filesystem that is otherwise full. Without use_reserved, the root
  // reserve stays too.
  const uint64_t keep = metadata_pool() + (options.use_reserved ? 0 : groups_.sb().s_r_blocks_count);
  const uint64_t claimed = groups_.claim_blocks(blocks, keep);
  if (claimed < blocks) {
    groups_.unclaim_blocks(claimed);
    return Error(ENOSPC, fmt::format("no space left: {} blocks needed, {} free{}", blocks, claimed,
                                     options.use_reserved ? "" : " outside the root reserve"));
  }
  // Busy blocks are free but cannot be handed out before their commit:
  // every reservation together must fit in the blocks that are not busy,
  // i.e. what stays unclaimed must cover the busy ones.
  int64_t busy = static_cast<int64_t>(busy_blocks());
  // The count forgets committed runs only as their groups are searched, and
  // a reservation searches none: count again before refusing, or frees
  // committed long ago (a commit is how callers retry) would refuse it.
  if (busy > 0 && groups_.unclaimed_free_blocks() < busy) busy = static_cast<int64_t>(expire_all_busy());
  if (busy > 0 && groups_.unclaimed_free_blocks() < busy) {
    groups_.unclaim_blocks(claimed);
    return Error(ENOSPC, fmt::format("no space left until the running transaction commits "
                                     "({} freed blocks are busy until then)", busy));
  }
  adjust(r, static_cast<int64_t>(claimed));
  return {};
}

Status BlockAllocator::free(journal::Handle& handle, uint64_t first, uint32_t count, bool metadata) {
  if (count == 0) return {};
  // Freeing what is not in use means a map on the image lies: recorded as
  // ext4_error would (the kernel's "bit already cleared").
  auto bad = [&](std::string what) {
    return groups_.volume().found_corrupt(Error(kErrCorrupted, std::move(what)), "free_blocks", 0, first);
  };
  const disk::Superblock& sb = groups_.sb();
  const uint64_t end = first + count;
  if (first < sb.s_first_data_block || end > sb.s_blocks_count || end < first) {
    return bad(fmt::format("freeing blocks {}..{}: outside the filesystem (blocks {}..{})", first,
                           end - 1, sb.s_first_data_block, sb.s_blocks_count - 1));
  }
  if (uint64_t sys = groups_.system_block_in(first, count); sys != UINT64_MAX) {
    return bad(fmt::format("freeing block {}: it holds filesystem metadata", sys));
  }
  const uint32_t g0 = groups_.group_of_block(first), g1 = groups_.group_of_block(end - 1);
  // Lock every group the range touches (ascending: the lock order), check
  // that every block is in use, and only then change anything.
  std::vector<std::unique_lock<base::OrderedMutex>> locks;
  std::vector<GroupBitmaps::Bitmap> maps;
  for (uint32_t g = g0; g <= g1; ++g) {
    locks.emplace_back(groups_.lock(g));
    UEXT_ASSIGN_OR_RETURN(GroupBitmaps::Bitmap map, groups_.load_block_bitmap(g));
    if (map.uninit) {
      return bad(fmt::format("freeing block {}: group {} has never allocated a block",
                             std::max(first, groups_.group_first_block(g)), g));
    }
    const uint64_t base = groups_.group_first_block(g);
    const uint32_t s = static_cast<uint32_t>(std::max(first, base) - base);
    const uint32_t e = static_cast<uint32_t>(std::min(end, base + groups_.blocks_in_group(g)) - base);
    for (uint32_t i = s; i < e; ++i) {
      if (!bits::test(map.bytes, i)) {
        return bad(fmt::format("freeing block {}: it is already free (double free)", base + i));
      }
    }
    maps.push_back(std::move(map));
  }
  for (uint32_t g = g0; g <= g1; ++g) {
    GroupBitmaps::Bitmap& map = maps[g - g0];
    const uint64_t base = groups_.group_first_block(g);
    const uint32_t s = static_cast<uint32_t>(std::max(first, base) - base);
    const uint32_t e = static_cast<uint32_t>(std::min(end, base + groups_.blocks_in_group(g)) - base);
    for (uint32_t i = s; i < e; ++i) bits::clear(map.bytes, i);
    UEXT_TRY(groups_.store_block_bitmap(handle, g, map, e - s));
    // A run freed by the same transaction right beside the last one joins
    // it: every allocation marks every busy run into its search, and a
    // writeback that splits thousands of extents frees its spare tree
    // blocks one at a time, each beside the one before.
    auto& runs = busy_[g];
    const uint32_t tid = handle.transaction_id();
    if (!runs.empty() && runs.back().tid == tid && runs.back().start + runs.back().count == s) {
      runs.back().count += e - s;
    } else if (!runs.empty() && runs.back().tid == tid && e == runs.back().start) {
      runs.back().start = s;
      runs.back().count += e - s;
    } else {
      runs.push_back({s, e - s, tid});
    }
    busy_total_.fetch_add(e - s, std::memory_order_relaxed);
  }
  // Revoke while the groups are still locked: once they are unlocked the
  // blocks may be reused, and a revoke must not cancel their new contents.
  if (metadata) {
    for (uint64_t b = first; b < end; ++b) UEXT_TRY(handle.revoke(b));
  }
  groups_.unclaim_blocks(count);
  return {};
}

Status BlockAllocator::check_counts() {
  uint64_t total = 0;
  for (uint32_t g = 0; g < groups_.group_count(); ++g) {
    std::lock_guard lock(groups_.lock(g));
    disk::GroupDesc gd = groups_.volume().group_snapshot(g);
    UEXT_ASSIGN_OR_RETURN(GroupBitmaps::Bitmap map, groups_.load_block_bitmap(g));
    uint32_t zero = bits::count_zero(map.bytes, groups_.blocks_in_group(g));
    if (zero != gd.bg_free_blocks_count || zero != groups_.free_blocks(g)) {
      return Error(kErrCorrupted, fmt::format("group {}: {} blocks free in the bitmap, {} in the descriptor, {} in memory",
                                              g, zero, gd.bg_free_blocks_count, groups_.free_blocks(g)));
    }
    total += zero;
  }
  uint64_t sb_free = groups_.volume().superblock_snapshot().s_free_blocks_count;
  if (total != sb_free) {
    return Error(kErrCorrupted, fmt::format("{} blocks free in the groups, {} in the superblock", total, sb_free));
  }
  return {};
}

}  // namespace uext::alloc
