#include "fs/dir_writer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "disk/dir_edit.h"
#include "disk/dx_edit.h"
#include "disk/features.h"
#include "disk/htree.h"
#include "fs/block_map.h"
#include "fs/directory.h"
#include "fs/map_writer.h"

namespace uext::fs {
namespace {

using disk::HtreeBlockKind;

constexpr uint16_t kModeTypeMask = 0xF000;
constexpr uint16_t kModeDir = 0x4000;
// Byte offsets of the fake ".." entry at the start of a dx root.
constexpr size_t kRootDotdotInode = 12;
constexpr size_t kRootDotdotNameLen = 18;
constexpr size_t kRootDotdotType = 19;
constexpr size_t kRootDotdotName = 20;

bool has_dir_index(const Volume& vol) { return vol.sb().has_compat(disk::compat::kDirIndex); }

// Indexed as the read side and the kernel see it: the feature and the flag.
bool is_indexed(const Volume& vol, const InodeRecord& dir) {
  return has_dir_index(vol) && dir.inode.has_flag(disk::inode_flag::kIndex);
}

disk::HtreeFormat htree_format(const Volume& vol) {
  const disk::Superblock& sb = vol.sb();
  disk::HtreeFormat f;
  f.block_size = vol.block_size();
  f.filetype = sb.has_incompat(disk::incompat::kFiletype);
  f.metadata_csum = sb.has_metadata_csum();
  f.largedir = sb.has_incompat(disk::incompat::kLargedir);
  f.def_hash_version = sb.s_def_hash_version;
  f.unsigned_hash = (sb.s_flags & disk::kFlagUnsignedHash) != 0;
  f.hash_seed = sb.s_hash_seed;
  return f;
}

uint64_t block_count(const Volume& vol, const InodeRecord& dir) {
  return (dir.inode.i_size + vol.block_size() - 1) / vol.block_size();
}

std::string block_context(const InodeRecord& dir, uint64_t logical, uint64_t physical) {
  return fmt::format("directory inode {}: block {} (logical {})", dir.ino, physical, logical);
}

// One directory block taken out for editing: where it lives and a private
// copy of its bytes.
struct EditBlock {
  uint64_t logical = 0;
  uint64_t physical = 0;
  std::vector<std::byte> bytes;
  std::string where(const InodeRecord& dir) const { return block_context(dir, logical, physical); }
};

// An interior htree block recognised by its look: one unused entry
// spanning the whole block (see directory.cc).
bool looks_like_dx_node(disk::Bytes block, uint32_t block_size) {
  return disk::le32(block, 0) == 0 && disk::decode_rec_len(disk::le16(block, 4), block_size) == block_size;
}

// Everything one editing call needs.
class DirEditor {
 public:
  DirEditor(Volume& vol, journal::Handle& handle, const InodeRecord& dir)
      : vol_(vol), h_(handle), dir_(dir), fmt_(htree_format(vol)) {}

  // A block that breaks the rules, recorded as ext4_error would. (Index
  // problems are not: the callers fall back to a linear scan, as the
  // kernel's lookup does with a warning.)
  Error corrupt(const std::string& what) const {
    return bad(Error(kErrCorrupted, what), fmt::format("directory inode {}", dir_.ino), 0);
  }
  Error bad(Error err, const std::string& at, uint64_t physical) const {
    return vol_.found_corrupt(std::move(err).with_context(at), "read_dir_block", dir_.ino, physical);
  }

  Result<uint64_t> physical_of(uint64_t logical) {
    UEXT_ASSIGN_OR_RETURN(auto runs, map_blocks(vol_, dir_, logical, 1));
    if (runs.empty() || runs[0].physical == 0 || runs[0].unwritten)
      return corrupt(fmt::format("logical block {} is a hole", logical));
    return runs[0].physical;
  }

  // Reads logical block `logical` and verifies the checksum its role carries.
  Result<EditBlock> read(uint64_t logical, HtreeBlockKind kind) {
    UEXT_ASSIGN_OR_RETURN(uint64_t physical, physical_of(logical));
    return read_at(logical, physical, kind);
  }

  Result<EditBlock> read_at(uint64_t logical, uint64_t physical, HtreeBlockKind kind) {
    auto data = vol_.read_meta_block(physical, "directory block");
    if (!data.ok()) return bad(std::move(data).error(), fmt::format("directory inode {}", dir_.ino), physical);
    EditBlock b{logical, physical, std::vector<std::byte>((*data)->begin(), (*data)->end())};
    if (vol_.verify_checksums()) {
      Status ok = kind == HtreeBlockKind::kLeaf ? disk::verify_dir_block_checksum(dir_.csum_seed, b.bytes)
                                                : disk::verify_dx_checksum(dir_.csum_seed, b.bytes,
                                                                           kind == HtreeBlockKind::kRoot);
      if (!ok.ok()) return bad(std::move(ok).error(), b.where(dir_), physical);
    }
    return b;
  }

  // Seals and journals a changed block; `fresh` for one just allocated.
  Status write(EditBlock& b, HtreeBlockKind kind, bool fresh = false) {
    if (fmt_.metadata_csum) disk::set_htree_block_checksum(dir_.csum_seed, b.bytes, kind);
    const std::vector<std::byte>& bytes = b.bytes;
    auto copy = [&bytes](std::span<std::byte> out) { std::memcpy(out.data(), bytes.data(), out.size()); };
    Status st = fresh ? h_.create(b.physical, copy) : h_.modify(b.physical, copy);
    if (!st.ok()) return std::move(st).error().with_context(b.where(dir_));
    return {};
  }

  Volume& vol() { return vol_; }
  journal::Handle& handle() { return h_; }
  const disk::HtreeFormat& format() const { return fmt_; }
  disk::DirBlockFormat leaf() const { return fmt_.leaf(); }
  disk::DxFormat dx() const { return fmt_.dx(); }

 private:
  Volume& vol_;
  journal::Handle& h_;
  const InodeRecord& dir_;
  disk::HtreeFormat fmt_;
};

// ---- finding an entry (remove, set) ----

// A parsed htree level on the way from the root to a leaf.
struct Frame {
  EditBlock block;
  std::vector<disk::DxEntry> entries;
  size_t at = 0;
  uint16_t limit = 0;
  bool is_root() const { return block.logical == 0; }
};

// Checks an index block's entries: nonempty, every child inside the
// directory and not block 0.
Status check_index_entries(const DirEditor& ed, const EditBlock& b, const std::vector<disk::DxEntry>& entries,
                           uint64_t blocks, const InodeRecord& dir) {
  if (entries.empty()) return Error(kErrCorrupted, b.where(dir) + ": htree index block without entries");
  for (const auto& e : entries) {
    if (e.block == 0 || e.block >= blocks)
      return Error(kErrCorrupted,
                   fmt::format("{}: htree index points at logical block {} of {}", b.where(dir), e.block, blocks));
  }
  return {};
}

// Reads the index from the root down along `hash`. Errors: EUCLEAN for a
// malformed index, EBADMSG for a checksum, as read.
Result<std::vector<Frame>> probe(DirEditor& ed, const InodeRecord& dir, uint32_t hash, uint8_t* root_version) {
  const uint64_t blocks = block_count(ed.vol(), dir);
  std::vector<Frame> path;
  UEXT_ASSIGN_OR_RETURN(EditBlock rb, ed.read(0, HtreeBlockKind::kRoot));
  auto root = disk::parse_dx_root(rb.bytes, ed.dx());
  if (!root.ok()) return std::move(root).error().with_context(rb.where(dir) + ": htree root");
  UEXT_TRY(check_index_entries(ed, rb, root->entries, blocks, dir));
  if (root_version) *root_version = root->hash_version;
  const size_t at = disk::dx_find_entry(root->entries, hash);
  path.push_back({std::move(rb), std::move(root->entries), at, root->limit});
  for (unsigned level = 0; level < root->indirect_levels; ++level) {
    const Frame& up = path.back();
    UEXT_ASSIGN_OR_RETURN(EditBlock nb, ed.read(up.entries[up.at].block, HtreeBlockKind::kNode));
    auto node = disk::parse_dx_node(nb.bytes, ed.dx());
    if (!node.ok()) return std::move(node).error().with_context(nb.where(dir) + ": htree node");
    UEXT_TRY(check_index_entries(ed, nb, node->entries, blocks, dir));
    const size_t nat = disk::dx_find_entry(node->entries, hash);
    path.push_back({std::move(nb), std::move(node->entries), nat, node->limit});
  }
  return path;
}

Result<uint32_t> name_hash(DirEditor& ed, const InodeRecord& dir, std::string_view name, uint8_t version) {
  auto h = disk::htree_hash(name, version, ed.format());
  if (!h.ok()) return Error(kErrCorrupted, fmt::format("directory inode {}: htree root: {}", dir.ino, h.error().message()));
  return *h;
}

// Whether `b` (a leaf) holds `name` live.
Result<bool> leaf_has(DirEditor& ed, const InodeRecord& dir, const EditBlock& b, std::string_view name) {
  auto entries = disk::parse_dir_block(b.bytes, ed.leaf());
  if (!entries.ok()) return ed.bad(std::move(entries).error(), b.where(dir), b.physical);
  for (const auto& e : *entries) {
    if (e.inode != 0 && e.name == name) return true;
  }
  return false;
}

// The leaf holding `name` through the index, following the collision chain
// (next leaves whose index hash is this hash with the low bit set).
Result<std::optional<EditBlock>> dx_find(DirEditor& ed, const InodeRecord& dir, std::string_view name) {
  UEXT_ASSIGN_OR_RETURN(EditBlock rb, ed.read(0, HtreeBlockKind::kRoot));
  auto root = disk::parse_dx_root(rb.bytes, ed.dx());
  if (!root.ok()) return std::move(root).error().with_context(rb.where(dir) + ": htree root");
  UEXT_ASSIGN_OR_RETURN(uint32_t hash, name_hash(ed, dir, name, root->hash_version));
  UEXT_ASSIGN_OR_RETURN(std::vector<Frame> path, probe(ed, dir, hash, nullptr));
  const uint64_t blocks = block_count(ed.vol(), dir);
  for (uint64_t visited = 0; visited <= blocks; ++visited) {
    const Frame& bottom = path.back();
    UEXT_ASSIGN_OR_RETURN(EditBlock leaf, ed.read(bottom.entries[bottom.at].block, HtreeBlockKind::kLeaf));
    UEXT_ASSIGN_OR_RETURN(bool found, leaf_has(ed, dir, leaf, name));
    if (found) return std::optional<EditBlock>(std::move(leaf));
    size_t depth = path.size();
    while (depth > 0 && path[depth - 1].at + 1 >= path[depth - 1].entries.size()) --depth;
    if (depth == 0) return std::optional<EditBlock>();
    Frame& level = path[depth - 1];
    ++level.at;
    const uint32_t next = level.entries[level.at].hash;
    if ((next & 1) == 0 || (next & ~1u) != hash) return std::optional<EditBlock>();
    path.resize(depth);
    // Down the leftmost edge of the next subtree.
    while (path.size() < root->indirect_levels + 1u) {
      const Frame& up = path.back();
      UEXT_ASSIGN_OR_RETURN(EditBlock nb, ed.read(up.entries[up.at].block, HtreeBlockKind::kNode));
      auto node = disk::parse_dx_node(nb.bytes, ed.dx());
      if (!node.ok()) return std::move(node).error().with_context(nb.where(dir) + ": htree node");
      UEXT_TRY(check_index_entries(ed, nb, node->entries, blocks, dir));
      path.push_back({std::move(nb), std::move(node->entries), 0, node->limit});
    }
  }
  return Error(kErrCorrupted, fmt::format("directory inode {}: htree collision chain does not end", dir.ino));
}

// Every leaf in on-disk order, skipping the root of an indexed directory
// and blocks that look like index nodes.
Result<std::optional<EditBlock>> linear_find(DirEditor& ed, const InodeRecord& dir, std::string_view name) {
  const uint64_t blocks = block_count(ed.vol(), dir);
  if (blocks == 0) return std::optional<EditBlock>();
  const bool indexed = is_indexed(ed.vol(), dir);
  UEXT_ASSIGN_OR_RETURN(auto runs, map_blocks(ed.vol(), dir, 0, blocks));
  for (const BlockRun& run : runs) {
    if (run.physical == 0 || run.unwritten) return ed.corrupt(fmt::format("logical block {} is a hole", run.logical));
    for (uint64_t i = 0; i < run.length; ++i) {
      const uint64_t logical = run.logical + i;
      if (indexed && logical == 0) continue;
      UEXT_ASSIGN_OR_RETURN(BlockRef data, ed.vol().read_meta_block(run.physical + i, "directory block"));
      if (looks_like_dx_node(*data, ed.vol().block_size())) continue;
      UEXT_ASSIGN_OR_RETURN(EditBlock b, ed.read_at(logical, run.physical + i, HtreeBlockKind::kLeaf));
      UEXT_ASSIGN_OR_RETURN(bool found, leaf_has(ed, dir, b, name));
      if (found) return std::optional<EditBlock>(std::move(b));
    }
  }
  return std::optional<EditBlock>();
}

// The leaf holding `name`: through the index when there is one, falling
// back to every leaf when the index is malformed, as lookup does.
Result<EditBlock> find_leaf(DirEditor& ed, const InodeRecord& dir, std::string_view name) {
  std::optional<EditBlock> found;
  bool scanned = false;
  if (is_indexed(ed.vol(), dir)) {
    auto r = dx_find(ed, dir, name);
    if (r.ok()) {
      found = std::move(*r);
      scanned = true;
    } else if (r.error().code() != kErrCorrupted) {
      return std::move(r).error();
    }
  }
  if (!scanned) {
    UEXT_ASSIGN_OR_RETURN(found, linear_find(ed, dir, name));
  }
  if (!found) return Error(ENOENT, fmt::format("directory inode {}: no entry \"{}\"", dir.ino, name));
  return std::move(*found);
}

// ---- growing ----

// Adds name entries; `dir_` is the working copy of the inode.
class Adder {
 public:
  Adder(Volume& vol, journal::Handle& handle, InodeRecord& dir, alloc::BlockAllocator& allocator)
      : ed_(vol, handle, dir), vol_(vol), h_(handle), dir_(dir), alloc_(allocator),
        changes_before_(handle.changes()) {}

  Status add(std::string_view name, uint32_t ino, uint8_t file_type) {
    UEXT_TRY(disk::check_entry_name(name));
    if (name == "." || name == "..") return Error(EINVAL, "\".\" and \"..\" are made with the directory");
    if (ino == 0) return Error(EINVAL, "directory entry for inode 0");
    if ((dir_.inode.i_mode & kModeTypeMask) != kModeDir)
      return Error(ENOTDIR, fmt::format("inode {} is not a directory", dir_.ino));
    name_ = name;
    ino_ = ino;
    type_ = ed_.format().filetype ? file_type : 0;
    Status added = is_indexed(vol_, dir_) ? dx_add() : linear_add();
    // Out of space, the directory is as its last completed step left it (a
    // step allocates before it changes a block): whole, unless the map
    // writer said otherwise.
    if (!added.ok() && added.error().code() == ENOSPC && h_.verdict() != journal::Handle::Verdict::kBroken) {
      h_.step_consistent(changes_before_);
    }
    return added;
  }

 private:
  // Budget of allocations, matching dir_add_credits.
  uint32_t max_allocations() const {
    return has_dir_index(vol_) ? ed_.format().max_index_levels() + 1 : 1;
  }

  Status insert_into(EditBlock& b, bool* inserted) {
    auto off = disk::insert_entry(b.bytes, ed_.leaf(), name_, ino_, type_);
    if (!off.ok()) return std::move(off).error().with_context(b.where(dir_));
    *inserted = off->has_value();
    return {};
  }

  // Maps logical block `logical` (== the current block count) to a new
  // block. Nothing changes on failure.
  Result<uint64_t> allocate(uint64_t logical) {
    if (++allocations_ > max_allocations())
      return Error(ENOSPC, fmt::format("directory inode {}: no room for \"{}\" after {} new blocks", dir_.ino, name_,
                                       allocations_ - 1));
    const uint64_t new_size = (logical + 1) * vol_.block_size();
    if (!ed_.format().largedir && new_size > UINT32_MAX)
      return Error(ENOSPC, fmt::format("directory inode {}: would pass 4 GiB without largedir", dir_.ino));
    UEXT_ASSIGN_OR_RETURN(auto runs, map_or_allocate(vol_, h_, dir_, logical, 1, alloc_));
    if (runs.empty() || runs[0].logical != logical || runs[0].physical == 0 || runs[0].unwritten)
      return Error(kErrCorrupted,
                   fmt::format("directory inode {}: logical block {} past i_size is already mapped oddly", dir_.ino,
                               logical));
    return runs[0].physical;
  }

  // Writes i_size (and, when set, the INDEX flag) back.
  Status set_size(uint64_t blocks, bool indexed) {
    const uint64_t size = blocks * vol_.block_size();
    UEXT_ASSIGN_OR_RETURN(InodeRecord updated, vol_.update_inode(h_, dir_.ino, false, [&](disk::Inode& in) {
      in.i_size = size;
      if (indexed) in.i_flags |= disk::inode_flag::kIndex;
    }));
    dir_ = std::move(updated);
    return {};
  }

  Status linear_add() {
    const uint64_t blocks = block_count(vol_, dir_);
    if (blocks > 0) {
      UEXT_ASSIGN_OR_RETURN(auto runs, map_blocks(vol_, dir_, 0, blocks));
      for (const BlockRun& run : runs) {
        if (run.physical == 0 || run.unwritten)
          return ed_.corrupt(fmt::format("logical block {} is a hole", run.logical));
        for (uint64_t i = 0; i < run.length; ++i) {
          UEXT_ASSIGN_OR_RETURN(EditBlock b, ed_.read_at(run.logical + i, run.physical + i, HtreeBlockKind::kLeaf));
          bool inserted = false;
          UEXT_TRY(insert_into(b, &inserted));
          if (inserted) return ed_.write(b, HtreeBlockKind::kLeaf);
        }
      }
    }
    if (blocks == 1 && has_dir_index(vol_)) return make_index();
    return append_leaf(blocks);
  }

  // A new leaf at the end holding just the name.
  Status append_leaf(uint64_t logical) {
    EditBlock b{logical, 0, std::vector<std::byte>(vol_.block_size())};
    UEXT_TRY(disk::init_leaf_block(b.bytes, ed_.leaf()));
    bool inserted = false;
    UEXT_TRY(insert_into(b, &inserted));
    if (!inserted) return Error(EIO, fmt::format("directory inode {}: \"{}\" does not fit an empty block", dir_.ino, name_));
    UEXT_ASSIGN_OR_RETURN(b.physical, allocate(logical));
    UEXT_TRY(ed_.write(b, HtreeBlockKind::kLeaf, true));
    return set_size(logical + 1, false);
  }

  // The full block 0 becomes a dx root over leaves 1 and 2.
  Status make_index() {
    UEXT_ASSIGN_OR_RETURN(EditBlock root, ed_.read(0, HtreeBlockKind::kLeaf));
    const uint32_t bs = vol_.block_size();
    EditBlock a{1, 0, std::vector<std::byte>(bs)}, b{2, 0, std::vector<std::byte>(bs)};
    auto split = disk::make_indexed_dir(root.bytes, a.bytes, 1, b.bytes, 2, ed_.format());
    if (!split.ok()) return std::move(split).error().with_context(root.where(dir_));
    UEXT_ASSIGN_OR_RETURN(uint32_t hash, name_hash(ed_, dir_, name_, ed_.format().def_hash_version));
    bool inserted = false;
    UEXT_TRY(insert_into(split->goes_to_new_leaf(hash) ? b : a, &inserted));

    UEXT_ASSIGN_OR_RETURN(a.physical, allocate(1));
    auto second = allocate(2);
    if (!second.ok()) {
      // Give block 1 back so that ENOSPC leaves the directory as it was.
      auto undone = punch_step(vol_, h_, dir_, 1, 1, alloc_, 1);
      if (!undone.ok()) return std::move(undone).error().with_context(fmt::format("directory inode {}: undoing", dir_.ino));
      h_.step_consistent(changes_before_);
      return std::move(second).error();
    }
    b.physical = *second;
    UEXT_TRY(ed_.write(a, HtreeBlockKind::kLeaf, true));
    UEXT_TRY(ed_.write(b, HtreeBlockKind::kLeaf, true));
    UEXT_TRY(ed_.write(root, HtreeBlockKind::kRoot));
    UEXT_TRY(set_size(3, true));
    if (inserted) return {};
    // Not expected (each half keeps about half a block free), but the tree
    // is complete: let the indexed path split further.
    return dx_add();
  }

  // One round per structural step; each step leaves a valid tree.
  Status dx_add() {
    uint8_t version = 0;
    {
      UEXT_ASSIGN_OR_RETURN(EditBlock rb, ed_.read(0, HtreeBlockKind::kRoot));
      auto root = disk::parse_dx_root(rb.bytes, ed_.dx());
      if (!root.ok())
        return std::move(root).error().with_context(rb.where(dir_) + ": htree root (e2fsck -fD rebuilds it)");
      version = root->hash_version;
    }
    UEXT_ASSIGN_OR_RETURN(const uint32_t hash, name_hash(ed_, dir_, name_, version));
    for (;;) {
      const uint64_t blocks = block_count(vol_, dir_);
      UEXT_ASSIGN_OR_RETURN(std::vector<Frame> path, probe(ed_, dir_, hash, nullptr));
      Frame& bottom = path.back();
      UEXT_ASSIGN_OR_RETURN(EditBlock leaf, ed_.read(bottom.entries[bottom.at].block, HtreeBlockKind::kLeaf));
      bool inserted = false;
      UEXT_TRY(insert_into(leaf, &inserted));
      if (inserted) return ed_.write(leaf, HtreeBlockKind::kLeaf);

      if (bottom.entries.size() >= bottom.limit) {
        UEXT_TRY(grow_index(path, blocks));
        continue;  // probe again, as the kernel restarts
      }

      // Split the leaf; the new one goes after it in the index.
      EditBlock fresh{blocks, 0, std::vector<std::byte>(vol_.block_size())};
      auto split = disk::split_leaf(leaf.bytes, fresh.bytes, version, ed_.format());
      if (!split.ok()) return std::move(split).error().with_context(leaf.where(dir_));
      auto room = disk::dx_insert_entry(bottom.block.bytes, bottom.is_root(), ed_.dx(), bottom.at, split->index_hash,
                                        static_cast<uint32_t>(blocks));
      if (!room.ok()) return std::move(room).error().with_context(bottom.block.where(dir_));
      if (!*room) return Error(EIO, bottom.block.where(dir_) + ": index block full after the check");
      UEXT_TRY(insert_into(split->goes_to_new_leaf(hash) ? fresh : leaf, &inserted));
      UEXT_ASSIGN_OR_RETURN(fresh.physical, allocate(blocks));
      UEXT_TRY(ed_.write(leaf, HtreeBlockKind::kLeaf));
      UEXT_TRY(ed_.write(fresh, HtreeBlockKind::kLeaf, true));
      UEXT_TRY(ed_.write(bottom.block, bottom.is_root() ? HtreeBlockKind::kRoot : HtreeBlockKind::kNode));
      UEXT_TRY(set_size(blocks + 1, false));
      if (inserted) return {};
    }
  }

  // The index block above the full leaf is full: split the highest full
  // node on the path whose parent has room, or, when every block up to the
  // root is full, push the root's entries one level down.
  Status grow_index(std::vector<Frame>& path, uint64_t blocks) {
    size_t level = path.size() - 1;
    while (level > 0 && path[level - 1].entries.size() >= path[level - 1].limit) --level;
    EditBlock fresh{blocks, 0, std::vector<std::byte>(vol_.block_size())};
    if (level == 0) {
      if (path.size() >= ed_.format().max_index_levels())
        return Error(ENOSPC, fmt::format("directory inode {}: directory index full ({} levels{})", dir_.ino,
                                         path.size(), ed_.format().largedir ? "" : ", 3 with largedir"));
      Frame& root = path[0];
      Status st = disk::dx_add_level(root.block.bytes, fresh.bytes, static_cast<uint32_t>(blocks), ed_.dx());
      if (!st.ok()) return std::move(st).error().with_context(root.block.where(dir_));
      UEXT_ASSIGN_OR_RETURN(fresh.physical, allocate(blocks));
      UEXT_TRY(ed_.write(fresh, HtreeBlockKind::kNode, true));
      UEXT_TRY(ed_.write(root.block, HtreeBlockKind::kRoot));
      return set_size(blocks + 1, false);
    }
    Frame& node = path[level];
    Frame& parent = path[level - 1];
    auto split = disk::dx_split_node(node.block.bytes, fresh.bytes, ed_.dx());
    if (!split.ok()) return std::move(split).error().with_context(node.block.where(dir_));
    auto room = disk::dx_insert_entry(parent.block.bytes, parent.is_root(), ed_.dx(), parent.at, split->hash,
                                      static_cast<uint32_t>(blocks));
    if (!room.ok()) return std::move(room).error().with_context(parent.block.where(dir_));
    if (!*room) return Error(EIO, parent.block.where(dir_) + ": index block full after the check");
    UEXT_ASSIGN_OR_RETURN(fresh.physical, allocate(blocks));
    UEXT_TRY(ed_.write(node.block, HtreeBlockKind::kNode));
    UEXT_TRY(ed_.write(fresh, HtreeBlockKind::kNode, true));
    UEXT_TRY(ed_.write(parent.block, parent.is_root() ? HtreeBlockKind::kRoot : HtreeBlockKind::kNode));
    return set_size(blocks + 1, false);
  }

  DirEditor ed_;
  Volume& vol_;
  journal::Handle& h_;
  InodeRecord& dir_;
  alloc::BlockAllocator& alloc_;
  std::string_view name_;
  uint32_t ino_ = 0;
  uint8_t type_ = 0;
  uint32_t allocations_ = 0;
  uint32_t changes_before_;  // the handle's changes before this add (its verdict on an undo)
};

}  // namespace

// ---------------------------------------------------------------------------

uint32_t dir_add_credits(const Volume& vol, const InodeRecord& dir) {
  if (!has_dir_index(vol)) return 1 + map_credits(vol, dir, 1) + 1;
  const uint32_t steps = htree_format(vol).max_index_levels() + 1;
  return 3 * steps + map_credits(vol, dir, steps) + punch_credits(vol, dir, 1) + 1;
}

uint32_t dir_change_credits(const Volume&, const InodeRecord&) { return 1; }

uint32_t dir_init_credits(const Volume& vol, const InodeRecord& dir) { return map_credits(vol, dir, 1) + 2; }

Status dir_add_entry(Volume& vol, journal::Handle& handle, InodeRecord& dir, std::string_view name, uint32_t ino,
                     uint8_t file_type, alloc::BlockAllocator& allocator) {
  Adder adder(vol, handle, dir, allocator);
  return adder.add(name, ino, file_type);
}

Status dir_remove_entry(Volume& vol, journal::Handle& handle, const InodeRecord& dir, std::string_view name) {
  if (name == "." || name == "..") return Error(EINVAL, "\".\" and \"..\" go with the directory");
  UEXT_TRY(disk::check_entry_name(name));
  DirEditor ed(vol, handle, dir);
  UEXT_ASSIGN_OR_RETURN(EditBlock b, find_leaf(ed, dir, name));
  Status st = disk::remove_entry(b.bytes, ed.leaf(), name);
  if (!st.ok()) return std::move(st).error().with_context(b.where(dir));
  return ed.write(b, HtreeBlockKind::kLeaf);
}

Status dir_set_entry(Volume& vol, journal::Handle& handle, const InodeRecord& dir, std::string_view name,
                     uint32_t ino, uint8_t file_type) {
  if (name == ".") return Error(EINVAL, "\".\" always names the directory itself");
  if (ino == 0) return Error(EINVAL, "directory entry for inode 0");
  UEXT_TRY(disk::check_entry_name(name));
  DirEditor ed(vol, handle, dir);
  if (!ed.format().filetype) file_type = 0;
  if (name == ".." && is_indexed(vol, dir)) {
    // The root's fake ".." entry; the index behind it stays as it is.
    UEXT_ASSIGN_OR_RETURN(EditBlock root, ed.read(0, HtreeBlockKind::kRoot));
    const uint8_t name_len = disk::le8(root.bytes, kRootDotdotNameLen);
    if (name_len != 2 || disk::le8(root.bytes, kRootDotdotName) != '.' ||
        disk::le8(root.bytes, kRootDotdotName + 1) != '.')
      return Error(kErrCorrupted, root.where(dir) + ": htree root without \"..\" at byte 12");
    disk::put_le32(root.bytes, kRootDotdotInode, ino);
    if (ed.format().filetype) disk::put_le8(root.bytes, kRootDotdotType, file_type);
    return ed.write(root, HtreeBlockKind::kRoot);
  }
  EditBlock b;
  if (name == "..") {
    UEXT_ASSIGN_OR_RETURN(b, ed.read(0, HtreeBlockKind::kLeaf));
  } else {
    UEXT_ASSIGN_OR_RETURN(b, find_leaf(ed, dir, name));
  }
  Status st = disk::set_entry_inode(b.bytes, ed.leaf(), name, ino, file_type);
  if (!st.ok()) return std::move(st).error().with_context(b.where(dir));
  return ed.write(b, HtreeBlockKind::kLeaf);
}

Status dir_init(Volume& vol, journal::Handle& handle, InodeRecord& dir, uint32_t parent,
                alloc::BlockAllocator& allocator) {
  if ((dir.inode.i_mode & kModeTypeMask) != kModeDir)
    return Error(ENOTDIR, fmt::format("inode {} is not a directory", dir.ino));
  if (dir.inode.i_size != 0)
    return Error(EEXIST, fmt::format("directory inode {} already has {} bytes", dir.ino, dir.inode.i_size));
  if (parent == 0) return Error(EINVAL, fmt::format("directory inode {}: parent inode 0", dir.ino));
  DirEditor ed(vol, handle, dir);
  EditBlock b{0, 0, std::vector<std::byte>(vol.block_size())};
  UEXT_TRY(disk::init_dir_block_with_dot_dotdot(b.bytes, ed.leaf(), dir.ino, parent));
  UEXT_ASSIGN_OR_RETURN(auto runs, map_or_allocate(vol, handle, dir, 0, 1, allocator));
  if (runs.empty() || runs[0].physical == 0 || runs[0].unwritten)
    return Error(kErrCorrupted, fmt::format("directory inode {}: block 0 mapped oddly", dir.ino));
  b.physical = runs[0].physical;
  UEXT_TRY(ed.write(b, HtreeBlockKind::kLeaf, true));
  const uint64_t size = vol.block_size();
  UEXT_ASSIGN_OR_RETURN(InodeRecord updated,
                        vol.update_inode(handle, dir.ino, false, [&](disk::Inode& in) { in.i_size = size; }));
  dir = std::move(updated);
  return {};
}

Result<bool> dir_is_empty(Volume& vol, const InodeRecord& dir) {
  bool empty = true;
  UEXT_TRY(dir_iterate(vol, dir, 0, [&](const disk::DirentView& e, uint64_t) {
    if (e.name == "." || e.name == "..") return true;
    empty = false;
    return false;
  }));
  return empty;
}

}  // namespace uext::fs
