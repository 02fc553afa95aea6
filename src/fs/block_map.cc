#include "fs/block_map.h"

#include <fmt/format.h>

#include <algorithm>

#include "disk/extent.h"

namespace uext::fs {

void append_run(std::vector<BlockRun>& out, const BlockRun& run) {
  if (!out.empty()) {
    BlockRun& last = out.back();
    bool logical_next = last.logical + last.length == run.logical;
    bool same_kind = (last.physical == 0) == (run.physical == 0) && last.unwritten == run.unwritten;
    bool physical_next = last.physical == 0 || last.physical + last.length == run.physical;
    if (logical_next && same_kind && physical_next) {
      last.length += run.length;
      return;
    }
  }
  out.push_back(run);
}

namespace {

constexpr uint64_t kExtentAddressable = uint64_t{1} << 32;

// Collects the mapped runs of an extent tree that intersect [first, end).
class ExtentWalker {
 public:
  ExtentWalker(Volume& vol, const InodeRecord& rec, uint64_t first, uint64_t end)
      : vol_(vol), rec_(rec), first_(first), end_(end) {
    limits_.first_data_block = vol.sb().s_first_data_block;
    limits_.blocks_count = vol.sb().s_blocks_count;
  }

  Status walk(std::vector<BlockRun>& mapped) {
    auto root_bytes = rec_.inode.i_block_bytes();
    auto root = disk::decode_extent_node(root_bytes, -1, limits_);
    if (!root.ok()) return std::move(root).error().with_context(context("extent tree root"));
    return visit(*root, first_, end_, mapped);
  }

 private:
  std::string context(const std::string& where) const {
    return fmt::format("inode {}: {}", rec_.ino, where);
  }

  // Visits `node` for the logical range [first, end) its parent assigned it.
  // Clamping each subtree to its parent's range keeps the work linear in the
  // tree's size even when a corrupt tree points many indexes at one block.
  Status visit(const disk::ExtentNode& node, uint64_t first, uint64_t end,
               std::vector<BlockRun>& mapped) {
    if (node.header.eh_depth == 0) {
      for (const disk::Extent& e : node.extents) {
        uint64_t e_first = e.logical, e_end = e_first + e.length;
        if (e_end > kExtentAddressable) {
          return Error(kErrCorrupted, context(fmt::format(
                                          "extent at logical block {} runs past 2^32 blocks", e_first)));
        }
        uint64_t lo = std::max(e_first, first), hi = std::min(e_end, end);
        if (lo >= hi) continue;
        mapped.push_back({lo, e.physical + (lo - e_first), hi - lo, e.uninit});
      }
      return {};
    }
    for (size_t i = 0; i < node.indexes.size(); ++i) {
      uint64_t sub_first = node.indexes[i].logical;
      uint64_t sub_end = i + 1 < node.indexes.size() ? node.indexes[i + 1].logical : kExtentAddressable;
      sub_first = std::max(sub_first, first);
      sub_end = std::min(sub_end, end);
      if (sub_first >= sub_end) continue;
      uint64_t block = node.indexes[i].leaf;
      UEXT_ASSIGN_OR_RETURN(BlockRef data, vol_.read_meta_block(block, "extent tree node"));
      std::string where = fmt::format("extent tree node at block {}", block);
      if (vol_.verify_checksums()) {
        auto ok = disk::verify_extent_block_checksum(rec_.csum_seed, *data);
        if (!ok.ok()) return std::move(ok).error().with_context(context(where));
      }
      // The child must sit exactly one level lower: this also makes a
      // pointer back to an ancestor (a loop) fail instead of recursing.
      auto child = disk::decode_extent_node(*data, node.header.eh_depth - 1, limits_);
      if (!child.ok()) return std::move(child).error().with_context(context(where));
      UEXT_TRY(visit(*child, sub_first, sub_end, mapped));
    }
    return {};
  }

  Volume& vol_;
  const InodeRecord& rec_;
  uint64_t first_, end_;
  disk::ExtentLimits limits_;
};

// Walks a direct/indirect block map over [first, end).
class IndirectWalker {
 public:
  IndirectWalker(Volume& vol, const InodeRecord& rec, uint64_t first, uint64_t end)
      : vol_(vol), rec_(rec), first_(first), end_(end), per_block_(vol.block_size() / 4) {
    // A sound map holds no more blocks than i_blocks accounts for; the
    // budget stops a corrupt map that reuses one indirect block everywhere
    // from making a walk take hours and unbounded memory.
    budget_ = disk::inode_blocks_512(vol.sb(), rec.inode) / (vol.block_size() / 512) + 16;
  }

  Status walk(std::vector<BlockRun>& mapped) {
    // i_block[0..11] map blocks 0..11 directly; [12], [13], [14] are the
    // roots of trees of depth 1, 2 and 3.
    uint64_t base = 0;
    for (int i = 0; i < 12; ++i, ++base) {
      UEXT_TRY(visit_pointer(rec_.inode.i_block[i], 0, base, mapped));
    }
    uint64_t span = per_block_;
    for (int level = 1; level <= 3; ++level) {
      UEXT_TRY(visit_pointer(rec_.inode.i_block[11 + level], level, base, mapped));
      base += span;
      span *= per_block_;
    }
    return {};
  }

 private:
  // `ptr` maps `level` levels of indirection covering per_block_^level
  // logical blocks from `base`.
  Status visit_pointer(uint32_t ptr, int level, uint64_t base, std::vector<BlockRun>& mapped) {
    uint64_t span = 1;
    for (int i = 0; i < level; ++i) span *= per_block_;
    if (base >= end_ || base + span <= first_ || ptr == 0) return {};
    const char* what = level == 0 ? "data block" : "indirect block";
    UEXT_TRY(vol_.check_block_range(ptr, 1,
                                    fmt::format("inode {}: {} for logical block {}", rec_.ino,
                                                what, std::max(base, first_))));
    if (budget_ == 0) {
      return Error(kErrCorrupted,
                   fmt::format("inode {}: block map holds more blocks than i_blocks accounts for",
                               rec_.ino));
    }
    --budget_;
    if (level == 0) {
      append_run(mapped, {base, ptr, 1, false});
      return {};
    }
    UEXT_ASSIGN_OR_RETURN(BlockRef data, vol_.read_meta_block(ptr, what));
    uint64_t child_span = span / per_block_;
    for (uint32_t i = 0; i < per_block_; ++i) {
      uint32_t child = disk::le32(*data, i * 4);
      UEXT_TRY(visit_pointer(child, level - 1, base + i * child_span, mapped));
    }
    return {};
  }

  Volume& vol_;
  const InodeRecord& rec_;
  uint64_t first_, end_;
  uint32_t per_block_;
  uint64_t budget_;
};

// A block map that does not hold together, recorded as ext4_error would.
Error bad_map(Volume& vol, const InodeRecord& rec, Error err) {
  return vol.found_corrupt(std::move(err), "read_block_map", rec.ino, 0);
}

Status collect(Volume& vol, const InodeRecord& rec, uint64_t first, uint64_t end,
               std::vector<BlockRun>& mapped) {
  Status walked = rec.inode.has_flag(disk::inode_flag::kExtents)
                      ? ExtentWalker(vol, rec, first, end).walk(mapped)
                      : IndirectWalker(vol, rec, first, end).walk(mapped);
  if (!walked.ok()) return bad_map(vol, rec, std::move(walked).error());
  return walked;
}

}  // namespace

uint64_t max_logical_blocks(const Volume& vol, const InodeRecord& rec) {
  if (rec.inode.has_flag(disk::inode_flag::kExtents)) return kExtentAddressable;
  uint64_t p = vol.block_size() / 4;
  return 12 + p + p * p + p * p * p;
}

Result<std::vector<BlockRun>> map_blocks(Volume& vol, const InodeRecord& rec, uint64_t first,
                                         uint64_t count) {
  uint64_t end = first + count;
  std::vector<BlockRun> mapped;
  UEXT_TRY(collect(vol, rec, first, end, mapped));
  std::vector<BlockRun> out;
  uint64_t cursor = first;
  for (const BlockRun& run : mapped) {
    if (run.logical < cursor) {
      return bad_map(vol, rec, Error(kErrCorrupted, fmt::format("inode {}: block map: logical block {} is "
                                                                "mapped twice or out of order",
                                                                rec.ino, run.logical)));
    }
    if (run.logical > cursor) append_run(out, {cursor, 0, run.logical - cursor, false});
    append_run(out, run);
    cursor = run.logical + run.length;
  }
  if (cursor < end) append_run(out, {cursor, 0, end - cursor, false});
  return out;
}

Result<std::vector<BlockRun>> all_mapped_runs(Volume& vol, const InodeRecord& rec) {
  std::vector<BlockRun> mapped;
  UEXT_TRY(collect(vol, rec, 0, max_logical_blocks(vol, rec), mapped));
  std::vector<BlockRun> out;
  uint64_t cursor = 0;
  for (const BlockRun& run : mapped) {
    if (run.logical < cursor) {
      return bad_map(vol, rec, Error(kErrCorrupted, fmt::format("inode {}: block map: logical block {} is "
                                                                "mapped twice or out of order",
                                                                rec.ino, run.logical)));
    }
    append_run(out, run);
    cursor = run.logical + run.length;
  }
  return out;
}

uint64_t max_file_bytes(const Volume& vol, const InodeRecord& rec) {
  const disk::Superblock& sb = vol.sb();
  const uint64_t bs = vol.block_size();
  uint64_t blocks = max_logical_blocks(vol, rec);
  if (rec.inode.has_flag(disk::inode_flag::kExtents)) blocks = std::min<uint64_t>(blocks, (uint64_t{1} << 32) - 1);
  uint64_t bytes = blocks * bs;
  // Without huge_file, i_blocks counts 512-byte sectors in 32 bits.
  if (!sb.has_ro_compat(disk::ro_compat::kHugeFile)) bytes = std::min<uint64_t>(bytes, (uint64_t{1} << 41) - bs);
  if (!sb.has_ro_compat(disk::ro_compat::kLargeFile)) bytes = std::min<uint64_t>(bytes, (uint64_t{1} << 31) - 1);
  return bytes;
}

}  // namespace uext::fs
