#include "disk/dx_edit.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include <fmt/format.h>

namespace uext::disk {
namespace {

constexpr size_t kDxEntrySize = 8;
constexpr size_t kDxTailSize = 8;
constexpr size_t kRootInfoOffset = 24;
constexpr size_t kRootCountOffset = 32;
constexpr size_t kNodeCountOffset = 8;

size_t count_offset(bool is_root) { return is_root ? kRootCountOffset : kNodeCountOffset; }

uint16_t dx_limit(const DxFormat& format, bool is_root) {
  size_t space = format.block_size - count_offset(is_root) - (format.has_tail ? kDxTailSize : 0);
  return static_cast<uint16_t>(space / kDxEntrySize);
}

Status check_size(Bytes block, uint32_t block_size, const char* what) {
  if (block_size < 1024 || block.size() != block_size)
    return Error(EINVAL, fmt::format("{}: {} bytes where a block of {} was expected", what, block.size(), block_size));
  return {};
}

uint32_t leaf_end(const DirBlockFormat& f) {
  return f.block_size - (f.has_tail ? static_cast<uint32_t>(kDirentTailSize) : 0);
}

// One live entry of a leaf, as dx_make_map records it.
struct MapEntry {
  uint32_t hash;
  uint32_t offset;
  uint32_t rec_len;   // counts toward the split as the kernel's map size
  uint32_t real_len;  // dirent_size(name_len)
  size_t index;       // position in on-disk order
};

// Lays out `pieces` (offset into `src`, real size) one after another from
// the start of `dst`, the last stretched to the end of the entries; the
// rest of `dst` is zeroed and gets a fresh tail.
void pack(MutableBytes dst, Bytes src, const std::vector<MapEntry>& pieces, const DirBlockFormat& f) {
  std::memset(dst.data(), 0, dst.size());
  uint32_t at = 0, last = 0;
  for (const MapEntry& p : pieces) {
    std::memcpy(dst.data() + at, src.data() + p.offset, p.real_len);
    put_le16(dst, at + 4, encode_rec_len(p.real_len, f.block_size));
    last = at;
    at += p.real_len;
  }
  put_le16(dst, last + 4, encode_rec_len(leaf_end(f) - last, f.block_size));
  if (f.has_tail) init_dir_block_tail(dst);
}

// Writes an empty index node: the fake entry spanning the block, limit,
// count 0, zeroed entries and tail.
void init_dx_node(MutableBytes node, const DxFormat& format) {
  std::memset(node.data(), 0, node.size());
  put_le16(node, 4, encode_rec_len(format.block_size, format.block_size));
  put_le16(node, kNodeCountOffset, dx_limit(format, false));
}

void set_count(MutableBytes block, bool is_root, uint16_t count) { put_le16(block, count_offset(is_root) + 2, count); }

Result<std::vector<DxEntry>> parse_index(Bytes block, bool is_root, const DxFormat& format) {
  if (is_root) {
    UEXT_ASSIGN_OR_RETURN(DxRoot root, parse_dx_root(block, format));
    return std::move(root.entries);
  }
  UEXT_ASSIGN_OR_RETURN(DxNode node, parse_dx_node(block, format));
  return std::move(node.entries);
}

}  // namespace

Result<uint32_t> htree_hash(std::string_view name, uint8_t root_hash_version, const HtreeFormat& format) {
  uint8_t version = root_hash_version;
  if (version <= dx_hash_version::kTea && format.unsigned_hash) version += 3;
  UEXT_ASSIGN_OR_RETURN(DxHash h, dx_hash(name, version, format.hash_seed.data()));
  return h.major;
}

Result<LeafSplit> split_leaf(MutableBytes leaf, MutableBytes new_leaf, uint8_t root_hash_version,
                             const HtreeFormat& format) {
  const DirBlockFormat lf = format.leaf();
  UEXT_TRY(check_size(leaf, lf.block_size, "htree leaf"));
  UEXT_TRY(check_size(new_leaf, lf.block_size, "new htree leaf"));
  if (leaf.data() == new_leaf.data()) return Error(EINVAL, "htree leaf split into itself");
  UEXT_ASSIGN_OR_RETURN(auto entries, parse_dir_block(leaf, lf));
  std::vector<MapEntry> map;
  for (const DirentView& e : entries) {
    if (e.inode == 0 || e.name.empty()) continue;
    UEXT_ASSIGN_OR_RETURN(uint32_t h, htree_hash(e.name, root_hash_version, format));
    map.push_back({h, e.offset, e.rec_len, dirent_size(e.name.size()), map.size()});
  }
  const size_t count = map.size();
  if (count < 2) return Error(EINVAL, fmt::format("htree leaf with {} live entries cannot be split", count));
  std::vector<MapEntry> sorted = map;
  std::stable_sort(sorted.begin(), sorted.end(), [](const MapEntry& a, const MapEntry& b) { return a.hash < b.hash; });

  // From the top hash down, move entries while more than half of the next
  // one would still sit in the lower half of the block; if nothing stops
  // that before the first entry, split by count instead.
  uint32_t size = 0;
  size_t move = 0;
  ptrdiff_t i = static_cast<ptrdiff_t>(count) - 1;
  for (; i >= 0; --i) {
    if (size + sorted[i].rec_len / 2 > lf.block_size / 2) break;
    size += sorted[i].rec_len;
    ++move;
  }
  const size_t split = i > 0 ? count - move : count / 2;
  LeafSplit out;
  out.hash = sorted[split].hash;
  out.index_hash = out.hash + (sorted[split - 1].hash == out.hash ? 1 : 0);

  // The moved entries go to the new leaf in hash order; the kept ones stay
  // in their on-disk order, packed to the front (dx_move_dirents,
  // dx_pack_dirents).
  std::vector<MapEntry> moved(sorted.begin() + static_cast<ptrdiff_t>(split), sorted.end());
  std::vector<bool> is_moved(count);
  for (const MapEntry& m : moved) is_moved[m.index] = true;
  std::vector<MapEntry> kept;
  for (const MapEntry& m : map)
    if (!is_moved[m.index]) kept.push_back(m);
  std::vector<std::byte> old_copy(leaf.begin(), leaf.end());
  pack(new_leaf, old_copy, moved, lf);
  pack(leaf, old_copy, kept, lf);
  return out;
}

Result<LeafSplit> make_indexed_dir(MutableBytes block0, MutableBytes leaf_a, uint32_t leaf_a_block,
                                   MutableBytes leaf_b, uint32_t leaf_b_block, const HtreeFormat& format) {
  const DirBlockFormat lf = format.leaf();
  const DxFormat df = format.dx();
  const uint32_t bs = format.block_size;
  UEXT_TRY(check_size(block0, bs, "directory block 0"));
  UEXT_TRY(check_size(leaf_a, bs, "new htree leaf"));
  UEXT_TRY(check_size(leaf_b, bs, "new htree leaf"));
  if (format.def_hash_version > dx_hash_version::kTea)
    return Error(EINVAL, fmt::format("cannot index with hash version {}", format.def_hash_version));
  if (leaf_a_block == 0 || leaf_b_block == 0 || leaf_a_block == leaf_b_block)
    return Error(EINVAL, fmt::format("htree leaves at logical blocks {} and {}", leaf_a_block, leaf_b_block));
  UEXT_ASSIGN_OR_RETURN(auto entries, parse_dir_block(block0, lf));
  if (entries.size() < 2 || entries[0].name != "." || entries[0].rec_len != 12 || entries[1].name != "..")
    return Error(kErrCorrupted, "directory block 0 does not start with \".\" (12 bytes) and \"..\"");
  size_t live = 0;
  for (size_t i = 2; i < entries.size(); ++i) live += entries[i].inode != 0;
  if (live < 2) return Error(EINVAL, fmt::format("directory block 0 has {} entries to index, fewer than 2", live));

  // Everything after ".." moves, unchanged, to the start of leaf A; the
  // last entry stretches to the end of the entries.
  std::vector<std::byte> a(bs), b(bs);
  const uint32_t start = entries[2].offset;
  const uint32_t end = leaf_end(lf);
  std::memcpy(a.data(), block0.data() + start, end - start);
  const uint32_t last = entries.back().offset - start;
  put_le16(a, last + 4, encode_rec_len(end - last, bs));
  if (lf.has_tail) init_dir_block_tail(a);
  UEXT_ASSIGN_OR_RETURN(LeafSplit split, split_leaf(a, b, format.def_hash_version, format));

  // The root: "." as it was, ".." spanning the block, then the index.
  std::vector<std::byte> root(block0.begin(), block0.begin() + 24);
  root.resize(bs);
  put_le16(root, 16, encode_rec_len(bs - 12, bs));
  put_le8(root, kRootInfoOffset + 4, format.def_hash_version);
  put_le8(root, kRootInfoOffset + 5, 8);  // info_length
  put_le16(root, kRootCountOffset, dx_limit(df, true));
  put_le16(root, kRootCountOffset + 2, 2);
  put_le32(root, kRootCountOffset + 4, leaf_a_block);
  put_le32(root, kRootCountOffset + 8, split.index_hash);
  put_le32(root, kRootCountOffset + 12, leaf_b_block);

  std::memcpy(block0.data(), root.data(), bs);
  std::memcpy(leaf_a.data(), a.data(), bs);
  std::memcpy(leaf_b.data(), b.data(), bs);
  return split;
}

Result<bool> dx_insert_entry(MutableBytes block, bool is_root, const DxFormat& format, size_t at, uint32_t hash,
                             uint32_t child) {
  UEXT_ASSIGN_OR_RETURN(auto entries, parse_index(block, is_root, format));
  const size_t count = entries.size();
  if (at >= count) return Error(EINVAL, fmt::format("index entry {} of {}", at, count));
  if (hash < entries[at].hash || (at + 1 < count && hash > entries[at + 1].hash))
    return Error(EINVAL, fmt::format("hash {:#010x} does not belong after index entry {} ({:#010x})", hash, at,
                                     entries[at].hash));
  if (count >= dx_limit(format, is_root)) return false;
  const size_t base = count_offset(is_root);
  const size_t pos = base + kDxEntrySize * (at + 1);
  std::memmove(block.data() + pos + kDxEntrySize, block.data() + pos, kDxEntrySize * (count - at - 1));
  put_le32(block, pos, hash);
  put_le32(block, pos + 4, child);
  set_count(block, is_root, static_cast<uint16_t>(count + 1));
  return true;
}

Result<NodeSplit> dx_split_node(MutableBytes node, MutableBytes new_node, const DxFormat& format) {
  UEXT_TRY(check_size(new_node, format.block_size, "new htree node"));
  if (node.data() == new_node.data()) return Error(EINVAL, "htree node split into itself");
  UEXT_ASSIGN_OR_RETURN(auto entries, parse_index(node, false, format));
  const size_t count = entries.size();
  if (count < 2) return Error(EINVAL, "htree node with one entry cannot be split");
  const size_t keep = count / 2, moved = count - keep;
  init_dx_node(new_node, format);
  // Entry `keep` becomes entry 0 of the new node, whose hash slot holds
  // limit and count instead.
  std::memcpy(new_node.data() + kNodeCountOffset + 4, node.data() + kNodeCountOffset + kDxEntrySize * keep + 4, 4);
  std::memcpy(new_node.data() + kNodeCountOffset + kDxEntrySize,
              node.data() + kNodeCountOffset + kDxEntrySize * (keep + 1), kDxEntrySize * (moved - 1));
  set_count(new_node, false, static_cast<uint16_t>(moved));
  std::memset(node.data() + kNodeCountOffset + kDxEntrySize * keep, 0, kDxEntrySize * moved);
  set_count(node, false, static_cast<uint16_t>(keep));
  return NodeSplit{entries[keep].hash, keep};
}

Status dx_add_level(MutableBytes root, MutableBytes new_node, uint32_t new_node_block, const DxFormat& format) {
  UEXT_TRY(check_size(new_node, format.block_size, "new htree node"));
  if (root.data() == new_node.data()) return Error(EINVAL, "htree root moved into itself");
  UEXT_ASSIGN_OR_RETURN(DxRoot r, parse_dx_root(root, format));
  const unsigned max_levels = format.largedir ? 3 : 2;
  if (r.indirect_levels + 1u >= max_levels)
    return Error(ENOSPC, fmt::format("htree already has {} index levels, the most allowed{}", r.indirect_levels + 1,
                                     format.largedir ? "" : " without largedir"));
  if (new_node_block == 0) return Error(EINVAL, "htree node at logical block 0");
  const size_t count = r.entries.size();
  init_dx_node(new_node, format);
  std::memcpy(new_node.data() + kNodeCountOffset + 4, root.data() + kRootCountOffset + 4,
              kDxEntrySize * count - 4);
  set_count(new_node, false, static_cast<uint16_t>(count));
  std::memset(root.data() + kRootCountOffset + 4, 0, kDxEntrySize * count - 4);
  put_le32(root, kRootCountOffset + 4, new_node_block);
  set_count(root, true, 1);
  put_le8(root, kRootInfoOffset + 6, static_cast<uint8_t>(r.indirect_levels + 1));
  return {};
}

void set_htree_block_checksum(uint32_t inode_seed, MutableBytes block, HtreeBlockKind kind) {
  switch (kind) {
    case HtreeBlockKind::kLeaf: set_dir_block_checksum(inode_seed, block); break;
    case HtreeBlockKind::kRoot: set_dx_checksum(inode_seed, block, true); break;
    case HtreeBlockKind::kNode: set_dx_checksum(inode_seed, block, false); break;
  }
}

}  // namespace uext::disk
