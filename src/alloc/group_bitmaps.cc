#include "alloc/group_bitmaps.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace uext::alloc {

namespace bits {

uint32_t next_zero(std::span<const std::byte> map, uint32_t from, uint32_t limit) {
  uint32_t i = from;
  while (i < limit) {
    if ((i & 7) == 0 && i + 8 <= limit && map[i >> 3] == std::byte{0xFF}) {
      i += 8;
      continue;
    }
    if (!test(map, i)) return i;
    ++i;
  }
  return limit;
}

uint32_t next_one(std::span<const std::byte> map, uint32_t from, uint32_t limit) {
  uint32_t i = from;
  while (i < limit) {
    if ((i & 7) == 0 && i + 8 <= limit && map[i >> 3] == std::byte{0}) {
      i += 8;
      continue;
    }
    if (test(map, i)) return i;
    ++i;
  }
  return limit;
}

uint32_t count_zero(std::span<const std::byte> map, uint32_t limit) {
  uint32_t ones = 0;
  uint32_t full = limit / 8;
  for (uint32_t b = 0; b < full; ++b) ones += static_cast<uint32_t>(__builtin_popcount(static_cast<uint8_t>(map[b])));
  for (uint32_t i = full * 8; i < limit; ++i) ones += test(map, i);
  return limit - ones;
}

void set_range(std::span<std::byte> map, uint32_t first, uint32_t count) {
  uint32_t i = first, end = first + count;
  while (i < end && (i & 7)) set(map, i++);
  while (i + 8 <= end) {
    map[i >> 3] = std::byte{0xFF};
    i += 8;
  }
  while (i < end) set(map, i++);
}

}  // namespace bits

GroupBitmaps::GroupBitmaps(fs::Volume& volume) : volume_(volume), sb_(volume.superblock_snapshot()) {
  groups_ = sb_.group_count();
  block_size_ = sb_.block_size();
  itable_blocks_ = static_cast<uint32_t>(
      (static_cast<uint64_t>(sb_.s_inodes_per_group) * sb_.inode_size() + block_size_ - 1) / block_size_);
  group_csum_ = sb_.has_metadata_csum() || sb_.has_ro_compat(disk::ro_compat::kGdtCsum);
  if (sb_.has_incompat(disk::incompat::kFlexBg) && sb_.s_log_groups_per_flex < 31) {
    flex_size_ = 1u << sb_.s_log_groups_per_flex;
  }
  state_ = std::make_unique<GroupState[]>(groups_);
  int64_t free_blocks = 0, free_inodes = 0, dirs = 0;
  for (uint32_t g = 0; g < groups_; ++g) {
    disk::GroupDesc gd = volume_.group_snapshot(g);
    state_[g].free_blocks = gd.bg_free_blocks_count;
    state_[g].free_inodes = gd.bg_free_inodes_count;
    state_[g].used_dirs = gd.bg_used_dirs_count;
    free_blocks += gd.bg_free_blocks_count;
    free_inodes += gd.bg_free_inodes_count;
    dirs += gd.bg_used_dirs_count;

    if (uint32_t n = base_meta_blocks(g)) system_.push_back({group_first_block(g), n});
    const disk::GroupDesc& fixed = volume_.group(g);
    system_.push_back({fixed.bg_block_bitmap, 1});
    system_.push_back({fixed.bg_inode_bitmap, 1});
    system_.push_back({fixed.bg_inode_table, itable_blocks_});
  }
  unclaimed_blocks_ = free_blocks;
  total_free_inodes_ = free_inodes;
  total_dirs_ = dirs;

  std::sort(system_.begin(), system_.end(), [](const Extent& a, const Extent& b) { return a.first < b.first; });
  std::vector<Extent> merged;
  for (const Extent& e : system_) {
    if (!merged.empty() && e.first <= merged.back().first + merged.back().count) {
      uint64_t end = std::max(merged.back().first + merged.back().count, e.first + e.count);
      merged.back().count = end - merged.back().first;
    } else {
      merged.push_back(e);
    }
  }
  system_ = std::move(merged);
}

uint32_t GroupBitmaps::blocks_in_group(uint32_t g) const {
  if (g + 1 < groups_) return sb_.s_blocks_per_group;
  return static_cast<uint32_t>(sb_.s_blocks_count - group_first_block(g));
}

uint32_t GroupBitmaps::base_meta_blocks(uint32_t g) const {
  const uint32_t per_block = block_size_ / sb_.desc_size();
  const bool has_sb = disk::group_has_superblock(sb_, g);
  const bool meta_bg = sb_.has_incompat(disk::incompat::kMetaBg);
  if (!meta_bg || g / per_block < sb_.s_first_meta_bg) {
    if (!has_sb) return 0;
    uint32_t gdt = meta_bg ? sb_.s_first_meta_bg : (groups_ + per_block - 1) / per_block;
    return 1 + gdt + sb_.s_reserved_gdt_blocks;
  }
  // meta_bg: a descriptor block in the first, second and last group of
  // each meta group.
  uint32_t pos = g % per_block;
  return (has_sb ? 1 : 0) + ((pos == 0 || pos == 1 || pos == per_block - 1) ? 1 : 0);
}

uint64_t GroupBitmaps::system_block_in(uint64_t first, uint64_t count) const {
  // Extents are sorted and disjoint, so their ends are sorted too: the
  // first one ending after `first` is the only candidate.
  auto it = std::partition_point(system_.begin(), system_.end(),
                                 [first](const Extent& e) { return e.first + e.count <= first; });
  if (it == system_.end() || it->first >= first + count) return UINT64_MAX;
  return std::max(first, it->first);
}

uint64_t GroupBitmaps::claim_blocks(uint64_t want, uint64_t keep) {
  int64_t cur = unclaimed_blocks_.load();
  for (;;) {
    int64_t avail = cur - static_cast<int64_t>(keep);
    if (avail <= 0) return 0;
    int64_t n = std::min<int64_t>(static_cast<int64_t>(want), avail);
    if (unclaimed_blocks_.compare_exchange_weak(cur, cur - n)) return static_cast<uint64_t>(n);
  }
}

void GroupBitmaps::build_block_bitmap(uint32_t g, std::span<std::byte> out) const {
  std::fill(out.begin(), out.end(), std::byte{0});
  const uint64_t first = group_first_block(g);
  const uint32_t len = blocks_in_group(g);
  const uint64_t end = first + len;
  // Every metadata extent that lies (partly) inside the group: its own
  // superblock backup and descriptor blocks, and with flex_bg the bitmaps
  // and inode tables of whichever groups were packed here.
  auto it = std::upper_bound(system_.begin(), system_.end(), first,
                             [](uint64_t b, const Extent& e) { return b < e.first; });
  if (it != system_.begin()) --it;
  for (; it != system_.end() && it->first < end; ++it) {
    uint64_t s = std::max(first, it->first), e = std::min(end, it->first + it->count);
    if (s < e) bits::set_range(out, static_cast<uint32_t>(s - first), static_cast<uint32_t>(e - s));
  }
  // Bits past the group's last block (the last group, or groups smaller
  // than a bitmap block) count as used.
  bits::set_range(out, len, block_size_ * 8 - len);
}

Status GroupBitmaps::verify_bitmap(uint32_t g, const char* what, std::span<const std::byte> map,
                                   uint32_t stored, uint32_t computed, uint32_t free_bits,
                                   uint32_t expect_free) const {
  if (volume_.verify_checksums()) {
    uint32_t mask = sb_.desc_size() >= 64 ? 0xFFFFFFFFu : 0xFFFFu;
    if ((stored & mask) != (computed & mask)) {
      return volume_.found_corrupt(Error(kErrBadChecksum, fmt::format("group {} {}: checksum 0x{:x} does not "
                                                                      "match contents (0x{:x})",
                                                                      g, what, stored & mask, computed & mask)),
                                   "read_bitmap", 0, 0);
    }
  }
#ifdef UEXT_DEBUG_CHECKS
  if (free_bits != expect_free) {
    return Error(kErrCorrupted, fmt::format("group {} {}: {} bits are clear but the descriptor counts {} free",
                                            g, what, free_bits, expect_free));
  }
#endif
  return {};
}

Result<GroupBitmaps::Bitmap> GroupBitmaps::load_block_bitmap(uint32_t g) {
  disk::GroupDesc gd = volume_.group_snapshot(g);
  Bitmap m;
  m.bytes.resize(block_size_);
  if (group_csum_ && (gd.bg_flags & disk::kBgBlockUninit)) {
    if (g + 1 == groups_) {
      return volume_.found_corrupt(Error(kErrCorrupted, fmt::format("group {} (the last) is flagged BLOCK_UNINIT", g)),
                                   "read_bitmap", 0, 0);
    }
    build_block_bitmap(g, m.bytes);
    m.uninit = true;
#ifdef UEXT_DEBUG_CHECKS
    uint32_t zero = bits::count_zero(m.bytes, blocks_in_group(g));
    if (zero != gd.bg_free_blocks_count) {
      return Error(kErrCorrupted, fmt::format("group {} uninitialised block bitmap: {} blocks are free by the layout "
                                              "but the descriptor counts {}",
                                              g, zero, gd.bg_free_blocks_count));
    }
#endif
    return m;
  }
  UEXT_ASSIGN_OR_RETURN(buffer::BlockRef ref, volume_.read_meta_block(volume_.group(g).bg_block_bitmap, "block bitmap"));
  std::memcpy(m.bytes.data(), ref->data(), block_size_);
  uint32_t free_bits = 0;
#ifdef UEXT_DEBUG_CHECKS
  free_bits = bits::count_zero(m.bytes, blocks_in_group(g));
#endif
  uint32_t csum = volume_.verify_checksums() ? disk::block_bitmap_checksum(sb_, m.bytes) : 0;
  UEXT_TRY(verify_bitmap(g, "block bitmap", m.bytes, gd.bg_block_bitmap_csum, csum, free_bits,
                         gd.bg_free_blocks_count));
  return m;
}

Result<GroupBitmaps::Bitmap> GroupBitmaps::load_inode_bitmap(uint32_t g) {
  disk::GroupDesc gd = volume_.group_snapshot(g);
  const uint32_t ipg = sb_.s_inodes_per_group;
  Bitmap m;
  m.bytes.resize(block_size_);
  if (group_csum_ && (gd.bg_flags & disk::kBgInodeUninit)) {
    bits::set_range(m.bytes, ipg, block_size_ * 8 - ipg);
    m.uninit = true;
    if (gd.bg_free_inodes_count != ipg) {
      return volume_.found_corrupt(Error(kErrCorrupted, fmt::format("group {} is flagged INODE_UNINIT but counts {} "
                                                                    "of {} inodes free",
                                                                    g, gd.bg_free_inodes_count, ipg)),
                                   "read_bitmap", 0, 0);
    }
    return m;
  }
  UEXT_ASSIGN_OR_RETURN(buffer::BlockRef ref, volume_.read_meta_block(volume_.group(g).bg_inode_bitmap, "inode bitmap"));
  std::memcpy(m.bytes.data(), ref->data(), block_size_);
  uint32_t free_bits = 0;
#ifdef UEXT_DEBUG_CHECKS
  free_bits = bits::count_zero(m.bytes, ipg);
#endif
  uint32_t csum = volume_.verify_checksums() ? disk::inode_bitmap_checksum(sb_, m.bytes) : 0;
  UEXT_TRY(verify_bitmap(g, "inode bitmap", m.bytes, gd.bg_inode_bitmap_csum, csum, free_bits,
                         gd.bg_free_inodes_count));
  return m;
}

Status GroupBitmaps::store_block_bitmap(journal::Handle& handle, uint32_t g, const Bitmap& map, int64_t delta) {
  const uint64_t where = volume_.group(g).bg_block_bitmap;
  auto fill = [&](std::span<std::byte> b) { std::memcpy(b.data(), map.bytes.data(), block_size_); };
  if (map.uninit) {
    UEXT_TRY(handle.create(where, fill));
  } else {
    UEXT_TRY(handle.modify(where, fill));
  }
  const bool csum = sb_.has_metadata_csum();
  const uint32_t sum = csum ? disk::block_bitmap_checksum(sb_, map.bytes) : 0;
  UEXT_TRY(volume_.update_group(handle, g, [&](disk::GroupDesc& gd) {
    gd.bg_free_blocks_count = static_cast<uint32_t>(gd.bg_free_blocks_count + delta);
    if (csum) gd.bg_block_bitmap_csum = sum;
    if (map.uninit) gd.bg_flags &= static_cast<uint16_t>(~disk::kBgBlockUninit);
  }));
  if (delta != 0) {
    UEXT_TRY(volume_.update_superblock(handle, [&](disk::Superblock& sb) {
      sb.s_free_blocks_count = static_cast<uint64_t>(static_cast<int64_t>(sb.s_free_blocks_count) + delta);
    }));
  }
  state_[g].free_blocks.fetch_add(static_cast<uint32_t>(delta));
  move_floor(state_[g].first_free_block, map, delta, blocks_in_group(g));
  return {};
}

Status GroupBitmaps::store_inode_bitmap(journal::Handle& handle, uint32_t g, const Bitmap& map, int64_t delta,
                                        int32_t dirs_delta, uint32_t used_slots) {
  const uint64_t where = volume_.group(g).bg_inode_bitmap;
  auto fill = [&](std::span<std::byte> b) { std::memcpy(b.data(), map.bytes.data(), block_size_); };
  if (map.uninit) {
    UEXT_TRY(handle.create(where, fill));
  } else {
    UEXT_TRY(handle.modify(where, fill));
  }
  const bool csum = sb_.has_metadata_csum();
  const uint32_t sum = csum ? disk::inode_bitmap_checksum(sb_, map.bytes) : 0;
  const uint32_t ipg = sb_.s_inodes_per_group;
  UEXT_TRY(volume_.update_group(handle, g, [&](disk::GroupDesc& gd) {
    gd.bg_free_inodes_count = static_cast<uint32_t>(gd.bg_free_inodes_count + delta);
    gd.bg_used_dirs_count = static_cast<uint32_t>(gd.bg_used_dirs_count + dirs_delta);
    if (csum) gd.bg_inode_bitmap_csum = sum;
    if (group_csum_) {
      uint32_t used = (gd.bg_flags & disk::kBgInodeUninit) ? 0 : ipg - gd.bg_itable_unused;
      gd.bg_flags &= static_cast<uint16_t>(~disk::kBgInodeUninit);
      if (used_slots > used) gd.bg_itable_unused = ipg - used_slots;
    }
  }));
  if (delta != 0) {
    UEXT_TRY(volume_.update_superblock(handle, [&](disk::Superblock& sb) {
      sb.s_free_inodes_count = static_cast<uint32_t>(static_cast<int64_t>(sb.s_free_inodes_count) + delta);
    }));
  }
  state_[g].free_inodes.fetch_add(static_cast<uint32_t>(delta));
  state_[g].used_dirs.fetch_add(static_cast<uint32_t>(dirs_delta));
  move_floor(state_[g].first_free_inode, map, delta, ipg);
  total_free_inodes_.fetch_add(delta);
  total_dirs_.fetch_add(dirs_delta);
  return {};
}

void GroupBitmaps::move_floor(std::atomic<uint32_t>& floor, const Bitmap& map, int64_t delta, uint32_t bits_in_group) {
  if (delta < 0) {
    floor.store(bits::next_zero(map.bytes, floor.load(std::memory_order_relaxed), bits_in_group),
                std::memory_order_relaxed);
  } else if (delta > 0) {
    floor.store(0, std::memory_order_relaxed);
  }
}

uint32_t GroupBitmaps::checked_floor(uint32_t floor, const Bitmap& map, uint32_t g, const char* what) {
#ifdef UEXT_DEBUG_CHECKS
  if (uint32_t z = bits::next_zero(map.bytes, 0, floor); z < floor) {
    std::fprintf(stderr, "uext: group %u: %s %u is free below the group's floor %u\n", g, what, z, floor);
    std::abort();
  }
#else
  (void)map;
  (void)g;
  (void)what;
#endif
  return floor;
}

uint32_t GroupBitmaps::first_free_block(uint32_t g, const Bitmap& map) const {
  return checked_floor(state_[g].first_free_block.load(std::memory_order_relaxed), map, g, "block");
}

uint32_t GroupBitmaps::first_free_inode(uint32_t g, const Bitmap& map) const {
  return checked_floor(state_[g].first_free_inode.load(std::memory_order_relaxed), map, g, "inode slot");
}

Status GroupBitmaps::ensure_block_bitmap(journal::Handle& handle, uint32_t g) {
  disk::GroupDesc gd = volume_.group_snapshot(g);
  if (!group_csum_ || !(gd.bg_flags & disk::kBgBlockUninit)) return {};
  UEXT_ASSIGN_OR_RETURN(Bitmap m, load_block_bitmap(g));
  return store_block_bitmap(handle, g, m, 0);
}

}  // namespace uext::alloc
