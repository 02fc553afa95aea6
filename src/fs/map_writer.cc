#include "fs/map_writer.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>

#include "disk/extent.h"

namespace uext::fs {
namespace {

constexpr uint64_t kExtentAddressable = uint64_t{1} << 32;
constexpr uint16_t kRootMax = (disk::kInodeBlockBytes - 12) / 12;  // 4

bool is_regular(const disk::Inode& in) { return (in.i_mode & 0xF000) == 0x8000; }

// State shared by the extent and indirect writers: the inode working copy,
// the allocator, and writing the inode back.
class MapEditor {
 public:
  MapEditor(Volume& vol, journal::Handle& h, InodeRecord& rec, alloc::BlockAllocator& alloc,
            alloc::AllocOptions ao = {})
      : vol_(vol), h_(h), rec_(rec), alloc_(alloc), ao_(ao), changes_before_(h.changes()) {}

  // Writes i_block and i_blocks back (whatever happened before) and
  // returns the first error. Every edit is whole before the next begins
  // (a block is freed with the pointer that named it, a new node written
  // before it is linked), so an edit that failed left a map that holds
  // together once the inode is written (the handle's verdict, for what
  // this editor changed).
  Status finish(Status op) {
    Status released = release_spares();
    Status written = write_inode();
    if (!op.ok()) {
      if (released.ok() && written.ok()) {
        h_.step_consistent(changes_before_);
      } else {
        h_.set_consistent(false);
      }
      return op;
    }
    if (!released.ok()) return released;
    return written;
  }

 protected:
  std::string where() const { return fmt::format("inode {}", rec_.ino); }
  // A map that does not hold together, recorded as ext4_error would.
  Error corrupt(const std::string& what) const { return bad(Error(kErrCorrupted, what), where(), 0); }
  Error bad(Error err, const std::string& at, uint64_t block) const {
    return vol_.found_corrupt(std::move(err).with_context(at), "write_block_map", rec_.ino, block);
  }

  Status write_inode() {
    auto blocks = rec_.inode.i_block;
    uint64_t count = rec_.inode.i_blocks;
    UEXT_ASSIGN_OR_RETURN(InodeRecord updated,
                          vol_.update_inode(h_, rec_.ino, false, [&](disk::Inode& in) {
                            in.i_block = blocks;
                            in.i_blocks = count;
                          }));
    rec_ = std::move(updated);
    return {};
  }

  // Allocates blocks and checks them. Only data allocations move the
  // owner's preallocation window (a tree block must not start a new one).
  Result<alloc::BlockExtent> allocate(uint64_t goal, uint32_t count, bool data = false) {
    alloc::AllocOptions ao = ao_;
    if (!data) ao.prealloc = 0;
    UEXT_ASSIGN_OR_RETURN(alloc::BlockExtent got, alloc_.allocate(h_, goal, count, ao));
    if (got.count == 0 || got.count > count) {
      return Error(EIO, fmt::format("{}: allocator returned {} blocks for {}", where(), got.count, count));
    }
    UEXT_TRY(vol_.check_block_range(got.first, got.count, where() + ": newly allocated blocks"));
    return got;
  }
  Status free_blocks(uint64_t first, uint64_t count, bool metadata) {
    while (count > 0) {
      uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(count, UINT32_MAX));
      UEXT_TRY(vol_.check_block_range(first, n, where() + ": blocks to free"));
      // A directory's blocks are journaled like any metadata: freeing them
      // must revoke them too, or a checkpoint (or a replay) could write an
      // old copy over whatever reuses the block.
      const bool journaled = metadata || (rec_.inode.i_mode & 0xF000) == 0x4000;
      UEXT_TRY(alloc_.free(h_, first, n, journaled));
      add_blocks(vol_, rec_.inode, -static_cast<int64_t>(n));
      first += n;
      count -= n;
    }
    return {};
  }

  // Blocks for new map nodes, allocated before a change starts so that
  // running out of space leaves the map untouched.
  Status ensure_spares(size_t n, uint64_t goal) {
    while (spares_.size() < n) {
      UEXT_ASSIGN_OR_RETURN(alloc::BlockExtent got, allocate(goal, 1));
      spares_.push_back(got.first);
      goal = got.first + 1;
    }
    return {};
  }
  Result<uint64_t> take_spare() {
    if (spares_.empty()) return Error(EIO, where() + ": internal error: no block reserved for a map node");
    uint64_t b = spares_.front();
    spares_.erase(spares_.begin());
    add_blocks(vol_, rec_.inode, 1);
    return b;
  }
  Status release_spares() {
    Status first_error;
    for (uint64_t b : spares_) {
      Status s = alloc_.free(h_, b, 1, false);  // never written: nothing to revoke
      if (!s.ok() && first_error.ok()) first_error = s;
    }
    spares_.clear();
    return first_error;
  }

  uint64_t inode_goal() const {
    return alloc::BlockAllocator::goal_for_inode(vol_.sb(), rec_.ino, is_regular(rec_.inode));
  }

  Volume& vol_;
  journal::Handle& h_;
  InodeRecord& rec_;
  alloc::BlockAllocator& alloc_;
  alloc::AllocOptions ao_;
  uint32_t changes_before_;  // the handle's changes before this editor's
  std::vector<uint64_t> spares_;
};

// ---------------------------------------------------------------------------
// Extent trees

struct Level {
  uint64_t block = 0;  // 0: the root, in i_block
  disk::ExtentNode node;
  int pos = -1;  // index followed (index nodes); extent at or before the target (leaf), or -1
};
using Path = std::vector<Level>;

size_t entry_count(const disk::ExtentNode& n) {
  return n.header.eh_depth == 0 ? n.extents.size() : n.indexes.size();
}
uint32_t first_key(const disk::ExtentNode& n) {
  return n.header.eh_depth == 0 ? n.extents.front().logical : n.indexes.front().logical;
}
template <class T>
std::vector<T>& entries(disk::ExtentNode& n);
template <>
std::vector<disk::Extent>& entries(disk::ExtentNode& n) { return n.extents; }
template <>
std::vector<disk::ExtentIndex>& entries(disk::ExtentNode& n) { return n.indexes; }

uint64_t end_of(const disk::Extent& e) { return static_cast<uint64_t>(e.logical) + e.length; }

bool can_merge(const disk::Extent& a, const disk::Extent& b) {
  uint32_t max = a.uninit ? disk::kExtentUninitMaxLen : disk::kExtentInitMaxLen;
  return a.uninit == b.uninit && end_of(a) == b.logical && a.physical + a.length == b.physical &&
         static_cast<uint32_t>(a.length) + b.length <= max;
}

class ExtentEditor : public MapEditor {
 public:
  using MapEditor::MapEditor;

  Result<std::vector<BlockRun>> map(uint64_t first, uint64_t count, const MapOptions& opts) {
    if (first + count > kExtentAddressable || first + count < first) {
      return Error(EFBIG, fmt::format("{}: logical blocks {}+{} lie past 2^32", where(), first, count));
    }
    UEXT_ASSIGN_OR_RETURN(std::vector<BlockRun> runs, map_blocks(vol_, rec_, first, count));
    std::vector<BlockRun> out;
    uint32_t made = 0;
    uint64_t last_logical_end = UINT64_MAX, last_physical_end = 0;
    for (const BlockRun& run : runs) {
      if (run.physical != 0) {
        out.push_back(run);
        continue;
      }
      uint64_t cur = run.logical, left = run.length;
      while (left > 0) {
        if (opts.max_new_extents != 0 && made >= opts.max_new_extents) return out;
        uint64_t goal;
        if (cur == last_logical_end) {
          goal = last_physical_end;
        } else {
          UEXT_ASSIGN_OR_RETURN(goal, goal_for(cur));
        }
        uint32_t max = opts.unwritten ? disk::kExtentUninitMaxLen : disk::kExtentInitMaxLen;
        uint32_t want = static_cast<uint32_t>(std::min<uint64_t>(left, max));
        UEXT_ASSIGN_OR_RETURN(alloc::BlockExtent got, allocate(goal, want, true));
        disk::Extent e{static_cast<uint32_t>(cur), static_cast<uint16_t>(got.count), got.first, opts.unwritten};
        add_blocks(vol_, rec_.inode, got.count);
        Status ins = insert(e);
        if (!ins.ok()) {
          (void)free_blocks(got.first, got.count, false);
          return std::move(ins).error();
        }
        append_run(out, {cur, got.first, got.count, opts.unwritten});
        cur += got.count;
        left -= got.count;
        last_logical_end = cur;
        last_physical_end = got.first + got.count;
        ++made;
      }
    }
    return out;
  }

  Status convert(uint64_t first, uint64_t end) {
    uint64_t cur = first;
    while (cur < end) {
      UEXT_ASSIGN_OR_RETURN(Path path, find(cur));
      Level& leaf = path.back();
      auto& ex = leaf.node.extents;
      int pos = leaf.pos;
      if (pos < 0 || end_of(ex[pos]) <= cur) {
        // A hole at cur: go on at the next extent.
        uint64_t next = pos + 1 < static_cast<int>(ex.size()) ? ex[pos + 1].logical : next_key(path);
        cur = std::min(end, next);
        continue;
      }
      disk::Extent e = ex[pos];
      if (!e.uninit) {
        cur = end_of(e);
        continue;
      }
      uint64_t lo = cur, hi = std::min<uint64_t>(end, end_of(e));
      bool has_left = lo > e.logical, has_right = hi < end_of(e);
      disk::Extent left{e.logical, static_cast<uint16_t>(lo - e.logical), e.physical, true};
      disk::Extent mid{static_cast<uint32_t>(lo), static_cast<uint16_t>(hi - lo), e.physical + (lo - e.logical), false};
      disk::Extent right{static_cast<uint32_t>(hi), static_cast<uint16_t>(end_of(e) - hi),
                         e.physical + (hi - e.logical), true};
      size_t inserts = (has_left ? 1 : 0) + (has_right ? 1 : 0);
      UEXT_TRY(ensure_spares(inserts * path.size(), node_goal(path)));
      if (has_left) {
        ex[pos] = left;
        UEXT_TRY(write_level(path, path.size() - 1));
        UEXT_TRY(insert(mid));
      } else {
        ex[pos] = mid;
        UEXT_TRY(merge_in_leaf(path, pos));
      }
      if (has_right) UEXT_TRY(insert(right));
      cur = hi;
    }
    return {};
  }

  // Removes [first, end) from the end backwards; returns where the part
  // still to remove ends.
  Result<uint64_t> punch(uint64_t first, uint64_t end, uint32_t max_units) {
    uint32_t units = 0;
    while (end > first && units < max_units) {
      UEXT_ASSIGN_OR_RETURN(Path path, find(end - 1));
      size_t l = path.size() - 1;
      Level& leaf = path[l];
      if (leaf.pos < 0) {
        // Nothing in this leaf at or before end - 1. Its index key may lie
        // below its first extent (a tree another writer left so): go on
        // below that key, unless this is the leftmost leaf.
        uint64_t below = first;
        for (size_t k = l; k-- > 0;) {
          if (path[k].pos > 0) {
            below = path[k].node.indexes[path[k].pos].logical;
            break;
          }
        }
        end = std::max(below, first);
        continue;
      }
      disk::Extent e = leaf.node.extents[leaf.pos];
      uint64_t es = e.logical, ee = end_of(e);
      if (ee <= first) {
        end = first;
        break;
      }
      if (ee < end) {  // a hole before end
        end = ee;
        continue;
      }
      uint64_t lo = std::max(es, first), hi = std::min(ee, end);
      uint64_t free_first = e.physical + (lo - es), free_count = hi - lo;
      auto& ex = leaf.node.extents;
      if (es < lo && hi < ee) {
        // The hole is inside the extent: keep both ends.
        disk::Extent right{static_cast<uint32_t>(hi), static_cast<uint16_t>(ee - hi), e.physical + (hi - es),
                           e.uninit};
        UEXT_TRY(ensure_spares(path.size(), node_goal(path)));
        ex[leaf.pos].length = static_cast<uint16_t>(lo - es);
        UEXT_TRY(write_level(path, l));
        UEXT_TRY(insert_at(path, l, leaf.pos + 1, right));
        UEXT_TRY(free_blocks(free_first, free_count, false));
        end = first;
      } else if (es < lo) {  // the tail of the extent
        ex[leaf.pos].length = static_cast<uint16_t>(lo - es);
        UEXT_TRY(write_level(path, l));
        UEXT_TRY(free_blocks(free_first, free_count, false));
        end = first;
      } else if (hi < ee) {  // the head of the extent
        ex[leaf.pos] = {static_cast<uint32_t>(hi), static_cast<uint16_t>(ee - hi), e.physical + (hi - es), e.uninit};
        UEXT_TRY(write_level(path, l));
        if (leaf.pos == 0) UEXT_TRY(fix_keys(path, l));
        UEXT_TRY(free_blocks(free_first, free_count, false));
        end = es;
      } else {  // the whole extent
        int pos = leaf.pos;
        ex.erase(ex.begin() + pos);
        if (ex.empty() && l > 0) {
          UEXT_TRY(remove_node(path, l));
        } else {
          UEXT_TRY(write_level(path, l));
          if (pos == 0 && !ex.empty()) UEXT_TRY(fix_keys(path, l));
        }
        UEXT_TRY(free_blocks(free_first, free_count, false));
        end = es;
      }
      ++units;
    }
    UEXT_TRY(collapse());
    return std::max(end, first);
  }

 private:
  disk::ExtentLimits limits() const {
    return {vol_.sb().s_first_data_block, vol_.sb().s_blocks_count};
  }
  uint16_t block_capacity() const { return static_cast<uint16_t>((vol_.block_size() - 12) / 12); }

  Result<disk::ExtentNode> read_node(uint64_t block, int depth) {
    std::string at = fmt::format("{}: extent tree node at block {}", where(), block);
    auto data = vol_.read_meta_block(block, "extent tree node");
    if (!data.ok()) return bad(std::move(data).error(), at, block);
    if (vol_.verify_checksums()) {
      auto ok = disk::verify_extent_block_checksum(rec_.csum_seed, **data);
      if (!ok.ok()) return bad(std::move(ok).error(), at, block);
    }
    auto node = disk::decode_extent_node(**data, depth, limits());
    if (!node.ok()) return bad(std::move(node).error(), at, block);
    return std::move(*node);
  }

  // The path from the root to the leaf where `target` is or would be.
  Result<Path> find(uint64_t target) {
    Path path;
    auto root = disk::decode_extent_node(rec_.inode.i_block_bytes(), -1, limits());
    if (!root.ok()) return bad(std::move(root).error(), where() + ": extent tree root", 0);
    path.push_back({0, std::move(*root), -1});
    while (true) {
      Level& lv = path.back();
      if (lv.node.header.eh_depth == 0) {
        auto& ex = lv.node.extents;
        auto it = std::upper_bound(ex.begin(), ex.end(), target,
                                   [](uint64_t t, const disk::Extent& e) { return t < e.logical; });
        lv.pos = static_cast<int>(it - ex.begin()) - 1;
        return path;
      }
      auto& ix = lv.node.indexes;
      if (ix.empty()) return corrupt(fmt::format("empty extent index node at depth {}", lv.node.header.eh_depth));
      auto it = std::upper_bound(ix.begin(), ix.end(), target,
                                 [](uint64_t t, const disk::ExtentIndex& x) { return t < x.logical; });
      lv.pos = std::max(0, static_cast<int>(it - ix.begin()) - 1);
      uint64_t child = ix[lv.pos].leaf;
      int depth = lv.node.header.eh_depth - 1;
      UEXT_ASSIGN_OR_RETURN(disk::ExtentNode node, read_node(child, depth));
      if (entry_count(node) == 0) return corrupt(fmt::format("empty extent tree node at block {}", child));
      path.push_back({child, std::move(node), -1});
    }
  }

  // First logical block of the subtree after the path's leaf (2^32: none).
  static uint64_t next_key(const Path& path) {
    for (size_t l = path.size() - 1; l-- > 0;) {
      const Level& lv = path[l];
      if (lv.pos + 1 < static_cast<int>(lv.node.indexes.size())) return lv.node.indexes[lv.pos + 1].logical;
    }
    return kExtentAddressable;
  }

  uint64_t node_goal(const Path& path) const {
    for (size_t l = path.size(); l-- > 0;) {
      if (path[l].block != 0) return path[l].block;
    }
    return inode_goal();
  }

  // Goal for data at logical block `cur` (a hole): after the physical end
  // of the extent before it, else near the leaf, else the inode's group.
  Result<uint64_t> goal_for(uint64_t cur) {
    UEXT_ASSIGN_OR_RETURN(Path path, find(cur));
    const Level& leaf = path.back();
    if (leaf.pos >= 0) {
      const disk::Extent& e = leaf.node.extents[leaf.pos];
      return e.physical + (cur - e.logical);
    }
    return node_goal(path);
  }

  Status write_block(uint64_t block, const disk::ExtentNode& node, bool fresh) {
    UEXT_TRY(vol_.check_block_range(block, 1, where() + ": extent tree node"));
    bool csum = vol_.sb().has_metadata_csum();
    uint32_t seed = rec_.csum_seed;
    auto edit = [&](std::span<std::byte> b) {
      std::fill(b.begin(), b.end(), std::byte{0});
      disk::encode_extent_node(node, b);
      if (csum) disk::set_extent_block_checksum(seed, b);
    };
    return fresh ? h_.create(block, edit) : h_.modify(block, edit);
  }

  Status write_level(Path& path, size_t l) {
    Level& lv = path[l];
    lv.node.header.eh_entries = static_cast<uint16_t>(entry_count(lv.node));
    if (lv.block != 0) return write_block(lv.block, lv.node, false);
    std::array<std::byte, disk::kInodeBlockBytes> raw{};
    disk::encode_extent_node(lv.node, raw);
    for (size_t i = 0; i < rec_.inode.i_block.size(); ++i) rec_.inode.i_block[i] = disk::le32(raw, i * 4);
    return {};
  }

  // Makes each index on the path above level l carry its child's first key.
  Status fix_keys(Path& path, size_t l) {
    while (l > 0) {
      if (entry_count(path[l].node) == 0) return {};
      uint32_t key = first_key(path[l].node);
      Level& parent = path[l - 1];
      disk::ExtentIndex& idx = parent.node.indexes[parent.pos];
      if (idx.logical == key) return {};
      idx.logical = key;
      UEXT_TRY(write_level(path, l - 1));
      if (parent.pos != 0) return {};
      --l;
    }
    return {};
  }

  // Inserts a new extent, merging with a neighbour when it continues it.
  Status insert(const disk::Extent& e) {
    UEXT_TRY(vol_.check_block_range(e.physical, e.length, where() + ": extent to map"));
    UEXT_ASSIGN_OR_RETURN(Path path, find(e.logical));
    size_t l = path.size() - 1;
    Level& leaf = path[l];
    auto& ex = leaf.node.extents;
    int pos = leaf.pos;
    uint64_t e_end = end_of(e);
    bool overlap = (pos >= 0 && end_of(ex[pos]) > e.logical) ||
                   (pos + 1 < static_cast<int>(ex.size()) && ex[pos + 1].logical < e_end) ||
                   e_end > next_key(path);
    if (overlap) {
      return corrupt(fmt::format("logical blocks {}..{} are already mapped", e.logical, e_end - 1));
    }
    if (pos >= 0 && can_merge(ex[pos], e)) {
      ex[pos].length = static_cast<uint16_t>(ex[pos].length + e.length);
      return merge_in_leaf(path, pos);
    }
    if (pos + 1 < static_cast<int>(ex.size()) && can_merge(e, ex[pos + 1])) {
      disk::Extent& r = ex[pos + 1];
      r.length = static_cast<uint16_t>(r.length + e.length);
      r.logical = e.logical;
      r.physical = e.physical;
      UEXT_TRY(write_level(path, l));
      if (pos + 1 == 0) UEXT_TRY(fix_keys(path, l));
      return {};
    }
    // Levels that will split: the full ones from the leaf up (a full root
    // grows the tree instead, which also takes one block).
    size_t full = 0;
    for (size_t k = path.size(); k-- > 0;) {
      if (entry_count(path[k].node) < path[k].node.header.eh_max) break;
      ++full;
    }
    if (full == path.size() && path[0].node.header.eh_depth >= disk::kExtentMaxDepth) {
      return Error(EFBIG, fmt::format("{}: the extent tree is at its maximum depth", where()));
    }
    UEXT_TRY(ensure_spares(full, node_goal(path)));
    return insert_at(path, l, static_cast<size_t>(pos + 1), e);
  }

  // Writes the leaf after extent `pos` changed, merging it with its
  // neighbours in the leaf where they continue each other.
  Status merge_in_leaf(Path& path, int pos) {
    size_t l = path.size() - 1;
    auto& ex = path[l].node.extents;
    if (pos + 1 < static_cast<int>(ex.size()) && can_merge(ex[pos], ex[pos + 1])) {
      ex[pos].length = static_cast<uint16_t>(ex[pos].length + ex[pos + 1].length);
      ex.erase(ex.begin() + pos + 1);
    }
    if (pos > 0 && can_merge(ex[pos - 1], ex[pos])) {
      ex[pos - 1].length = static_cast<uint16_t>(ex[pos - 1].length + ex[pos].length);
      ex.erase(ex.begin() + pos);
    }
    return write_level(path, l);
  }

  template <class T>
  Status insert_at(Path& path, size_t l, size_t pos, const T& entry) {
    Level& lv = path[l];
    auto& v = entries<T>(lv.node);
    if (v.size() < lv.node.header.eh_max) {
      v.insert(v.begin() + static_cast<ptrdiff_t>(pos), entry);
      UEXT_TRY(write_level(path, l));
      if (pos == 0) UEXT_TRY(fix_keys(path, l));
      return {};
    }
    if (l == 0) {
      UEXT_TRY(grow(path));
      return insert_at(path, 1, pos, entry);
    }
    // Split: entries from `pos` on move to a new node; an append leaves the
    // old node full and starts the new one with the entry (as the kernel).
    UEXT_ASSIGN_OR_RETURN(uint64_t nb, take_spare());
    disk::ExtentNode fresh;
    fresh.header = lv.node.header;
    fresh.header.eh_max = block_capacity();
    auto& nv = entries<T>(fresh);
    if (pos == v.size()) {
      nv.push_back(entry);
    } else {
      nv.assign(v.begin() + static_cast<ptrdiff_t>(pos), v.end());
      v.resize(pos);
      v.push_back(entry);
    }
    fresh.header.eh_entries = static_cast<uint16_t>(nv.size());
    UEXT_TRY(write_block(nb, fresh, true));
    UEXT_TRY(write_level(path, l));
    if (pos == 0) UEXT_TRY(fix_keys(path, l));
    size_t parent_pos = static_cast<size_t>(path[l - 1].pos) + 1;
    return insert_at(path, l - 1, parent_pos, disk::ExtentIndex{first_key(fresh), nb});
  }

  // The root is full: its entries move to a new block, and the root becomes
  // an index one level deeper pointing at it.
  Status grow(Path& path) {
    UEXT_ASSIGN_OR_RETURN(uint64_t nb, take_spare());
    disk::ExtentNode child = path[0].node;
    child.header.eh_max = block_capacity();
    child.header.eh_entries = static_cast<uint16_t>(entry_count(child));
    UEXT_TRY(write_block(nb, child, true));
    disk::ExtentNode root;
    root.header = path[0].node.header;
    root.header.eh_depth = static_cast<uint16_t>(root.header.eh_depth + 1);
    root.header.eh_max = kRootMax;
    root.indexes.push_back({entry_count(child) ? first_key(child) : 0u, nb});
    int old_pos = path[0].pos;
    path.insert(path.begin() + 1, Level{nb, std::move(child), old_pos});
    path[0].node = std::move(root);
    path[0].pos = 0;
    return write_level(path, 0);
  }

  // Level l (not the root) has no entries left: unlink and free it.
  Status remove_node(Path& path, size_t l) {
    uint64_t block = path[l].block;
    Level& parent = path[l - 1];
    int ppos = parent.pos;
    parent.node.indexes.erase(parent.node.indexes.begin() + ppos);
    if (parent.node.indexes.empty() && l - 1 > 0) {
      UEXT_TRY(remove_node(path, l - 1));
    } else if (parent.node.indexes.empty()) {
      parent.node.header.eh_depth = 0;  // the tree is empty
      parent.node.extents.clear();
      UEXT_TRY(write_level(path, 0));
    } else {
      UEXT_TRY(write_level(path, l - 1));
      if (ppos == 0) UEXT_TRY(fix_keys(path, l - 1));
    }
    return free_blocks(block, 1, true);
  }

  // While the root has one child whose entries fit in the root, pull them up.
  Status collapse() {
    while (true) {
      auto root = disk::decode_extent_node(rec_.inode.i_block_bytes(), -1, limits());
      if (!root.ok()) return bad(std::move(root).error(), where() + ": extent tree root", 0);
      if (root->header.eh_depth == 0 || root->indexes.size() != 1) return {};
      uint64_t child_block = root->indexes[0].leaf;
      UEXT_ASSIGN_OR_RETURN(disk::ExtentNode child, read_node(child_block, root->header.eh_depth - 1));
      if (entry_count(child) > kRootMax) return {};
      Path path;
      child.header.eh_max = kRootMax;
      path.push_back({0, std::move(child), -1});
      UEXT_TRY(write_level(path, 0));
      UEXT_TRY(free_blocks(child_block, 1, true));
    }
  }
};

// ---------------------------------------------------------------------------
// Direct and indirect maps

class IndirectEditor : public MapEditor {
 public:
  IndirectEditor(Volume& vol, journal::Handle& h, InodeRecord& rec, alloc::BlockAllocator& alloc,
                 alloc::AllocOptions ao = {})
      : MapEditor(vol, h, rec, alloc, ao), p_(vol.block_size() / 4) {}

  Result<std::vector<BlockRun>> map(uint64_t first, uint64_t count, const MapOptions& opts) {
    uint64_t limit = 12 + p_ + p_ * p_ + p_ * p_ * p_;
    if (first + count > limit || first + count < first || first + count > kExtentAddressable) {
      return Error(EFBIG, fmt::format("{}: logical blocks {}+{} lie past what the block map addresses",
                                      where(), first, count));
    }
    if (opts.unwritten) return Error(EINVAL, where() + ": block maps have no unwritten state");
    UEXT_ASSIGN_OR_RETURN(std::vector<BlockRun> runs, map_blocks(vol_, rec_, first, count));
    std::vector<BlockRun> out;
    uint32_t made = 0;
    uint64_t last_logical_end = UINT64_MAX, last_physical_end = 0;
    for (const BlockRun& run : runs) {
      if (run.physical != 0) {
        out.push_back(run);
        continue;
      }
      uint64_t cur = run.logical, left = run.length;
      while (left > 0) {
        if (opts.max_new_extents != 0 && made >= opts.max_new_extents) return out;
        uint32_t off[4];
        int k = to_path(cur, off);
        uint64_t room = k == 0 ? 12 - cur : p_ - off[k];
        uint32_t want = static_cast<uint32_t>(std::min<uint64_t>({left, room}));
        // The indirect blocks on the way, created zeroed where missing.
        uint64_t holder = 0;
        uint32_t slot = off[0];
        uint64_t goal_hint = last_logical_end == cur ? last_physical_end : 0;
        for (int level = 1; level <= k; ++level) {
          UEXT_ASSIGN_OR_RETURN(uint32_t ptr, read_slot(holder, slot));
          if (ptr == 0) {
            uint64_t g = goal_hint ? goal_hint : (holder ? holder + 1 : inode_goal());
            UEXT_TRY(ensure_spares(1, g));
            UEXT_ASSIGN_OR_RETURN(uint64_t nb, take_spare());
            UEXT_TRY(h_.create(nb, [](std::span<std::byte> b) { std::fill(b.begin(), b.end(), std::byte{0}); }));
            UEXT_TRY(write_slots(holder, slot, {static_cast<uint32_t>(nb)}));
            ptr = static_cast<uint32_t>(nb);
            if (goal_hint) goal_hint = nb + 1;
          } else {
            UEXT_TRY(vol_.check_block_range(ptr, 1, where() + ": indirect block"));
          }
          holder = ptr;
          slot = off[level];
        }
        // The data slots must be free: never map a block twice.
        UEXT_ASSIGN_OR_RETURN(std::vector<uint32_t> current, read_slots(holder, slot, want));
        for (uint32_t i = 0; i < want; ++i) {
          if (current[i] != 0) {
            return corrupt(fmt::format("logical block {} is already mapped", cur + i));
          }
        }
        uint64_t goal = goal_hint;
        if (goal == 0) {
          // After the nearest mapped block before it in the same holder.
          for (uint32_t i = slot; i-- > 0;) {
            UEXT_ASSIGN_OR_RETURN(uint32_t prev, read_slot(holder, i));
            if (prev != 0) {
              goal = prev + (slot - i);
              break;
            }
          }
        }
        if (goal == 0) goal = holder ? holder + 1 : inode_goal();
        UEXT_ASSIGN_OR_RETURN(alloc::BlockExtent got, allocate(goal, want, true));
        if (got.first + got.count > (uint64_t{1} << 32)) {
          (void)alloc_.free(h_, got.first, got.count, false);
          return Error(EFBIG, where() + ": block maps address only 32-bit block numbers");
        }
        std::vector<uint32_t> ptrs(got.count);
        for (uint32_t i = 0; i < got.count; ++i) ptrs[i] = static_cast<uint32_t>(got.first + i);
        add_blocks(vol_, rec_.inode, got.count);
        UEXT_TRY(write_slots(holder, slot, ptrs));
        append_run(out, {cur, got.first, got.count, false});
        cur += got.count;
        left -= got.count;
        last_logical_end = cur;
        last_physical_end = got.first + got.count;
        ++made;
      }
    }
    return out;
  }

  Result<uint64_t> punch(uint64_t first, uint64_t end, uint32_t max_units) {
    first_ = first;
    end_ = end;
    units_left_ = max_units;
    stopped_ = false;
    uint64_t base = 12 + p_ + p_ * p_, span = p_ * p_ * p_;
    // Triple, double, single indirect, then the direct blocks: from the end.
    for (int level = 3; level >= 1 && !stopped_; --level) {
      if (base < end_ && base + span > first_) {
        UEXT_TRY(prune(0, 11 + level, level, base, span));
        if (!stopped_) end_ = std::min(end_, std::max(first_, base));
      }
      span /= p_;
      base -= span;
    }
    if (!stopped_ && first_ < 12 && end_ > first_) {
      if (units_left_ == 0) {
        stopped_ = true;
      } else {
        uint64_t hi = std::min<uint64_t>(end_, 12);
        UEXT_TRY(free_slots(0, static_cast<uint32_t>(first_), static_cast<uint32_t>(hi - first_)));
        end_ = first_;
      }
    }
    return std::max(end_, first_);
  }

 private:
  int to_path(uint64_t l, uint32_t off[4]) const {
    if (l < 12) {
      off[0] = static_cast<uint32_t>(l);
      return 0;
    }
    l -= 12;
    if (l < p_) {
      off[0] = 12;
      off[1] = static_cast<uint32_t>(l);
      return 1;
    }
    l -= p_;
    if (l < p_ * p_) {
      off[0] = 13;
      off[1] = static_cast<uint32_t>(l / p_);
      off[2] = static_cast<uint32_t>(l % p_);
      return 2;
    }
    l -= p_ * p_;
    off[0] = 14;
    off[1] = static_cast<uint32_t>(l / (p_ * p_));
    off[2] = static_cast<uint32_t>((l / p_) % p_);
    off[3] = static_cast<uint32_t>(l % p_);
    return 3;
  }

  // Pointer slots: holder 0 is the inode's i_block, else an indirect block.
  Result<uint32_t> read_slot(uint64_t holder, uint32_t slot) {
    UEXT_ASSIGN_OR_RETURN(auto v, read_slots(holder, slot, 1));
    return v[0];
  }
  Result<std::vector<uint32_t>> read_slots(uint64_t holder, uint32_t slot, uint32_t n) {
    std::vector<uint32_t> out(n);
    if (holder == 0) {
      for (uint32_t i = 0; i < n; ++i) out[i] = rec_.inode.i_block[slot + i];
      return out;
    }
    UEXT_ASSIGN_OR_RETURN(BlockRef data, vol_.read_meta_block(holder, "indirect block"));
    for (uint32_t i = 0; i < n; ++i) out[i] = disk::le32(*data, (slot + i) * 4);
    return out;
  }
  Status write_slots(uint64_t holder, uint32_t slot, const std::vector<uint32_t>& v) {
    for (uint32_t x : v) {
      if (x != 0) UEXT_TRY(vol_.check_block_range(x, 1, where() + ": block to map"));
    }
    if (holder == 0) {
      for (size_t i = 0; i < v.size(); ++i) rec_.inode.i_block[slot + i] = v[i];
      return {};
    }
    return h_.modify(holder, [&](std::span<std::byte> b) {
      for (size_t i = 0; i < v.size(); ++i) disk::put_le32(b, (slot + i) * 4, v[i]);
    });
  }

  // Frees the data blocks in slots [slot, slot + n) of holder and zeroes them.
  Status free_slots(uint64_t holder, uint32_t slot, uint32_t n) {
    --units_left_;
    UEXT_ASSIGN_OR_RETURN(std::vector<uint32_t> ptrs, read_slots(holder, slot, n));
    bool any = false;
    for (uint32_t x : ptrs) any |= x != 0;
    if (!any) return {};
    UEXT_TRY(write_slots(holder, slot, std::vector<uint32_t>(n, 0)));
    uint64_t run_first = 0, run_len = 0;
    for (uint32_t x : ptrs) {
      if (x == 0) continue;
      if (run_len && run_first + run_len == x) {
        ++run_len;
        continue;
      }
      if (run_len) UEXT_TRY(free_blocks(run_first, run_len, false));
      run_first = x;
      run_len = 1;
    }
    if (run_len) UEXT_TRY(free_blocks(run_first, run_len, false));
    return {};
  }

  // Removes [first_, end_) from the subtree whose root pointer is in
  // (holder, slot), `level` levels deep, covering [base, base + span).
  Status prune(uint64_t holder, uint32_t slot, int level, uint64_t base, uint64_t span) {
    UEXT_ASSIGN_OR_RETURN(uint32_t ptr, read_slot(holder, slot));
    if (ptr == 0) return {};
    UEXT_TRY(vol_.check_block_range(ptr, 1, where() + ": indirect block"));
    uint64_t child_span = span / p_;
    uint64_t lo = (std::max(first_, base) - base) / child_span;
    uint64_t hi = (std::min(end_, base + span) - base + child_span - 1) / child_span;  // exclusive
    if (level == 1) {
      if (units_left_ == 0) {
        stopped_ = true;
        return {};
      }
      UEXT_TRY(free_slots(ptr, static_cast<uint32_t>(lo), static_cast<uint32_t>(hi - lo)));
      end_ = std::max(first_, base + lo);
    } else {
      for (uint64_t i = hi; i-- > lo;) {
        UEXT_TRY(prune(ptr, static_cast<uint32_t>(i), level - 1, base + i * child_span, child_span));
        if (stopped_) break;
        end_ = std::max(first_, std::min(end_, base + i * child_span));
      }
    }
    // An indirect block left with no pointers goes too.
    UEXT_ASSIGN_OR_RETURN(BlockRef data, vol_.read_meta_block(ptr, "indirect block"));
    bool empty = std::all_of(data->begin(), data->end(), [](std::byte b) { return b == std::byte{0}; });
    if (empty) {
      UEXT_TRY(write_slots(holder, slot, {0}));
      UEXT_TRY(free_blocks(ptr, 1, true));
    }
    return {};
  }

  uint64_t p_;
  uint64_t first_ = 0, end_ = 0;
  uint32_t units_left_ = 0;
  bool stopped_ = false;
};

bool uses_extents(const InodeRecord& rec) { return rec.inode.has_flag(disk::inode_flag::kExtents); }

uint32_t extent_depth_now(const InodeRecord& rec) {
  auto bytes = rec.inode.i_block_bytes();
  return std::min<uint32_t>(disk::le16(bytes, 6), disk::kExtentMaxDepth);
}

uint32_t groups_spanned(const Volume& vol, uint64_t blocks) {
  uint64_t per = vol.sb().s_blocks_per_group;
  uint64_t g = (blocks + per - 1) / per + 1;
  return static_cast<uint32_t>(std::min<uint64_t>(g, vol.sb().group_count()));
}

}  // namespace

// ---------------------------------------------------------------------------

uint32_t map_credits(const Volume& vol, const InodeRecord& rec, uint32_t new_extents) {
  uint64_t k = std::max<uint32_t>(new_extents, 1);
  uint64_t credits;
  if (uses_extents(rec)) {
    uint64_t d = std::min<uint64_t>(disk::kExtentMaxDepth, extent_depth_now(rec) + 1 + k / 3);
    credits = 2 + k * (4 * d + 5);
  } else {
    credits = 2 + 14 * k;
  }
  return static_cast<uint32_t>(std::min<uint64_t>(credits, UINT32_MAX));
}

uint32_t convert_credits(const Volume& vol, const InodeRecord& rec, uint32_t extents) {
  uint64_t n = 2 * static_cast<uint64_t>(std::max<uint32_t>(extents, 1));
  return map_credits(vol, rec, static_cast<uint32_t>(std::min<uint64_t>(n, UINT32_MAX)));
}

uint32_t punch_credits(const Volume& vol, const InodeRecord& rec, uint32_t units) {
  uint64_t k = std::max<uint32_t>(units, 1);
  uint64_t credits;
  if (uses_extents(rec)) {
    uint64_t d = std::min<uint64_t>(disk::kExtentMaxDepth, extent_depth_now(rec) + 1);
    uint64_t g = groups_spanned(vol, disk::kExtentInitMaxLen);
    credits = 3 + k * (2 * g + 3 * d) + (4 * d + 5) + 2 * d;
  } else {
    uint64_t p = vol.block_size() / 4;
    uint64_t g = std::min<uint64_t>(p, vol.sb().group_count());
    credits = 3 + k * (2 * g + 3 * 3 + 3);
  }
  return static_cast<uint32_t>(std::min<uint64_t>(credits, UINT32_MAX));
}

Result<std::vector<BlockRun>> map_or_allocate(Volume& vol, journal::Handle& handle, InodeRecord& rec,
                                              uint64_t first, uint64_t count,
                                              alloc::BlockAllocator& allocator, const MapOptions& options) {
  if (count == 0) return std::vector<BlockRun>{};
  Result<std::vector<BlockRun>> out = std::vector<BlockRun>{};
  Status status;
  if (uses_extents(rec)) {
    ExtentEditor ed(vol, handle, rec, allocator, options.alloc);
    out = ed.map(first, count, options);
    status = ed.finish(out.ok() ? Status{} : Status(out.error()));
  } else {
    IndirectEditor ed(vol, handle, rec, allocator, options.alloc);
    out = ed.map(first, count, options);
    status = ed.finish(out.ok() ? Status{} : Status(out.error()));
  }
  if (!status.ok()) return std::move(status).error();
  return out;
}

Status convert_unwritten(Volume& vol, journal::Handle& handle, InodeRecord& rec, uint64_t first,
                         uint64_t count, alloc::BlockAllocator& allocator) {
  if (!uses_extents(rec)) return Error(EINVAL, fmt::format("inode {}: block maps have no unwritten state", rec.ino));
  if (first + count > kExtentAddressable) return Error(EFBIG, fmt::format("inode {}: range past 2^32", rec.ino));
  ExtentEditor ed(vol, handle, rec, allocator);
  return ed.finish(ed.convert(first, first + count));
}

Result<uint64_t> punch_step(Volume& vol, journal::Handle& handle, InodeRecord& rec, uint64_t first,
                            uint64_t count, alloc::BlockAllocator& allocator, uint32_t max_units) {
  uint64_t end = std::min(first + count, max_logical_blocks(vol, rec));
  if (end <= first) return first;
  max_units = std::max<uint32_t>(max_units, 1);
  Result<uint64_t> left = first;
  Status status;
  if (uses_extents(rec)) {
    ExtentEditor ed(vol, handle, rec, allocator);
    left = ed.punch(first, end, max_units);
    status = ed.finish(left.ok() ? Status{} : Status(left.error()));
  } else {
    IndirectEditor ed(vol, handle, rec, allocator);
    left = ed.punch(first, end, max_units);
    status = ed.finish(left.ok() ? Status{} : Status(left.error()));
  }
  if (!status.ok()) return std::move(status).error();
  return left;
}

namespace {

// Runs punch_step in handles until the range is gone; `after_step` may
// change the inode in the same handle (truncate lowers i_size).
Status punch_loop(Volume& vol, InodeRecord& rec, uint64_t first, uint64_t count,
                  alloc::BlockAllocator& allocator,
                  const std::function<Status(journal::Handle&, uint64_t)>& after_step) {
  uint32_t units = 16;
  while (true) {
    auto handle = vol.start(punch_credits(vol, rec, units));
    if (!handle.ok()) {
      // The journal is smaller than this step: take smaller steps.
      if (handle.error().code() == EINVAL && units > 1) {
        units /= 2;
        continue;
      }
      return std::move(handle).error();
    }
    auto left = punch_step(vol, *handle, rec, first, count, allocator, units);
    Status step = left.ok() ? (after_step ? after_step(*handle, *left) : Status{}) : Status(left.error());
    UEXT_TRY(vol.finish_handle(*handle, "punch", rec.ino, std::move(step), Volume::Changes::kEachStepWhole));
    if (*left <= first) return {};
    count = *left - first;
  }
}

}  // namespace

Status punch_range(Volume& vol, InodeRecord& rec, uint64_t first, uint64_t count,
                   alloc::BlockAllocator& allocator) {
  return punch_loop(vol, rec, first, count, allocator, nullptr);
}

Status truncate_blocks(Volume& vol, InodeRecord& rec, uint64_t new_size, alloc::BlockAllocator& allocator) {
  uint32_t bs = vol.block_size();
  uint64_t keep = (new_size + bs - 1) / bs;
  uint64_t limit = max_logical_blocks(vol, rec);
  if (new_size % bs != 0) {
    // The kernel zeroes the rest of a partial last block, so that growing
    // the file later never shows the old bytes.
    UEXT_ASSIGN_OR_RETURN(auto runs, map_blocks(vol, rec, new_size / bs, 1));
    if (!runs.empty() && runs[0].physical != 0 && !runs[0].unwritten) {
      uint32_t off = static_cast<uint32_t>(new_size % bs);
      std::vector<std::byte> zeros(bs - off);
      UEXT_TRY(vol.device().write(runs[0].physical * bs + off, zeros));
    }
  }
  uint64_t old_size = rec.inode.i_size;
  if (keep < limit) {
    auto lower_size = [&](journal::Handle& h, uint64_t left) -> Status {
      uint64_t size = std::max(new_size, std::min(old_size, left * static_cast<uint64_t>(bs)));
      UEXT_ASSIGN_OR_RETURN(InodeRecord updated,
                            vol.update_inode(h, rec.ino, false, [&](disk::Inode& in) { in.i_size = size; }));
      rec = std::move(updated);
      return {};
    };
    UEXT_TRY(punch_loop(vol, rec, keep, limit - keep, allocator, lower_size));
  }
  if (rec.inode.i_size != new_size) {
    UEXT_ASSIGN_OR_RETURN(journal::Handle h, vol.start(1));
    auto updated = vol.update_inode(h, rec.ino, false, [&](disk::Inode& in) { in.i_size = new_size; });
    Status stopped = h.stop();
    if (!updated.ok()) return std::move(updated).error();
    UEXT_TRY(stopped);
    rec = std::move(*updated);
  }
  return {};
}

void add_blocks(const Volume& vol, disk::Inode& in, int64_t fs_blocks) {
  bool huge = vol.sb().has_ro_compat(disk::ro_compat::kHugeFile) && in.has_flag(disk::inode_flag::kHugeFile);
  int64_t units = huge ? fs_blocks : fs_blocks * static_cast<int64_t>(vol.block_size() / 512);
  in.i_blocks = static_cast<uint64_t>(static_cast<int64_t>(in.i_blocks) + units);
}

}  // namespace uext::fs
