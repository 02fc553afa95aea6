#include "fs/directory.h"

#include <fmt/format.h>

#include "disk/features.h"
#include "disk/htree.h"
#include "fs/block_map.h"

namespace uext::fs {
namespace {

bool is_htree(const Volume& vol, const InodeRecord& dir) {
  return vol.sb().has_compat(disk::compat::kDirIndex) &&
         dir.inode.has_flag(disk::inode_flag::kIndex);
}

disk::DirBlockFormat leaf_format(const Volume& vol) {
  return {vol.block_size(), vol.sb().has_incompat(disk::incompat::kFiletype),
          vol.sb().has_metadata_csum()};
}

disk::DxFormat dx_format(const Volume& vol) {
  return {vol.block_size(), vol.sb().has_metadata_csum(),
          vol.sb().has_incompat(disk::incompat::kLargedir)};
}

std::string block_context(const InodeRecord& dir, uint64_t logical, uint64_t physical) {
  return fmt::format("directory inode {}: block {} (logical {})", dir.ino, physical, logical);
}

// A directory block that fails its checks, named, and recorded as ext4_error
// would (Volume::found_corrupt).
Error bad_block(Volume& vol, const InodeRecord& dir, uint64_t logical, uint64_t physical, Error err) {
  return vol.found_corrupt(std::move(err).with_context(block_context(dir, logical, physical)), "read_dir_block",
                           dir.ino, physical);
}

// An htree interior block hides behind one unused entry spanning the block.
bool looks_like_dx_node(disk::Bytes block, uint32_t block_size) {
  return disk::le32(block, 0) == 0 &&
         disk::decode_rec_len(disk::le16(block, 4), block_size) == block_size;
}

uint64_t dir_block_count(const Volume& vol, const InodeRecord& dir) {
  return (dir.inode.i_size + vol.block_size() - 1) / vol.block_size();
}

// Reads logical block `logical` of the directory through its block map.
Result<std::pair<BlockRef, uint64_t>> read_dir_block(Volume& vol, const InodeRecord& dir,
                                                     uint64_t logical) {
  UEXT_ASSIGN_OR_RETURN(auto runs, map_blocks(vol, dir, logical, 1));
  uint64_t physical = runs.empty() ? 0 : runs[0].physical;
  if (physical == 0 || runs[0].unwritten) {
    return vol.found_corrupt(Error(kErrCorrupted, fmt::format("directory inode {}: logical block {} is a hole",
                                                              dir.ino, logical)),
                             "read_dir_block", dir.ino, 0);
  }
  auto data = vol.read_meta_block(physical, "directory block");
  if (!data.ok()) return bad_block(vol, dir, logical, physical, std::move(data).error());
  return std::make_pair(std::move(*data), physical);
}

// Parses a leaf block, verifying its checksum tail when the image has one.
Result<std::vector<disk::DirentView>> parse_leaf(Volume& vol, const InodeRecord& dir,
                                                 disk::Bytes block, uint64_t logical,
                                                 uint64_t physical) {
  if (vol.verify_checksums()) {
    Status ok = disk::verify_dir_block_checksum(dir.csum_seed, block);
    if (!ok.ok()) return bad_block(vol, dir, logical, physical, std::move(ok).error());
  }
  auto entries = disk::parse_dir_block(block, leaf_format(vol));
  if (!entries.ok()) return bad_block(vol, dir, logical, physical, std::move(entries).error());
  return entries;
}

// Entries of one directory block, whatever its role: the htree root yields
// "." and "..", interior index blocks yield nothing.
Result<std::vector<disk::DirentView>> block_entries(Volume& vol, const InodeRecord& dir,
                                                    disk::Bytes block, uint64_t logical,
                                                    uint64_t physical) {
  bool htree = is_htree(vol, dir);
  uint32_t bs = vol.block_size();
  if (htree && logical == 0) {
    if (vol.verify_checksums()) {
      Status ok = disk::verify_dx_checksum(dir.csum_seed, block, true);
      if (!ok.ok()) return bad_block(vol, dir, logical, physical, std::move(ok).error());
    }
    // The root's fake entries are ordinary dirents; the index hides in
    // the space ".." spans.
    disk::DirBlockFormat format = leaf_format(vol);
    format.has_tail = false;
    auto entries = disk::parse_dir_block(block, format);
    if (!entries.ok()) return bad_block(vol, dir, logical, physical, std::move(entries).error());
    return entries;
  }
  if (looks_like_dx_node(block, bs)) {
    if (htree && vol.verify_checksums()) {
      Status ok = disk::verify_dx_checksum(dir.csum_seed, block, false);
      if (!ok.ok()) return bad_block(vol, dir, logical, physical, std::move(ok).error());
    }
    return std::vector<disk::DirentView>{};
  }
  return parse_leaf(vol, dir, block, logical, physical);
}

Result<std::optional<FoundEntry>> search_leaf(Volume& vol, const InodeRecord& dir,
                                              uint64_t logical, std::string_view name) {
  UEXT_ASSIGN_OR_RETURN(auto block, read_dir_block(vol, dir, logical));
  UEXT_ASSIGN_OR_RETURN(auto entries, block_entries(vol, dir, *block.first, logical, block.second));
  for (const auto& e : entries) {
    if (e.inode != 0 && e.name == name) return std::optional<FoundEntry>(FoundEntry{e.inode, e.file_type});
  }
  return std::optional<FoundEntry>();
}

Result<std::optional<FoundEntry>> linear_lookup(Volume& vol, const InodeRecord& dir,
                                                std::string_view name) {
  std::optional<FoundEntry> found;
  UEXT_TRY(dir_iterate(vol, dir, 0, [&](const disk::DirentView& e, uint64_t) {
    if (e.name != name) return true;
    found = FoundEntry{e.inode, e.file_type};
    return false;
  }));
  return found;
}

// One level of the path from the htree root to a leaf.
struct DxLevel {
  std::vector<disk::DxEntry> entries;
  size_t at = 0;
};

enum class DxOutcome { kFound, kAbsent, kBadIndex };

struct DxResult {
  DxOutcome outcome = DxOutcome::kAbsent;
  FoundEntry entry;
};

// Reads the index node at logical block `logical` (depth > 0 below the root).
Result<std::vector<disk::DxEntry>> read_dx_node(Volume& vol, const InodeRecord& dir,
                                                uint64_t logical) {
  UEXT_ASSIGN_OR_RETURN(auto block, read_dir_block(vol, dir, logical));
  if (vol.verify_checksums()) {
    Status ok = disk::verify_dx_checksum(dir.csum_seed, *block.first, false);
    if (!ok.ok()) return bad_block(vol, dir, logical, block.second, std::move(ok).error());
  }
  UEXT_ASSIGN_OR_RETURN(auto node, disk::parse_dx_node(*block.first, dx_format(vol)));
  return std::move(node.entries);
}

// Hashed lookup. Structural problems in the index give kBadIndex so the
// caller can fall back to a linear scan, as the kernel does; checksum
// failures and I/O errors are returned as errors.
Result<DxResult> dx_lookup(Volume& vol, const InodeRecord& dir, std::string_view name) {
  uint64_t blocks = dir_block_count(vol, dir);
  UEXT_ASSIGN_OR_RETURN(auto root_block, read_dir_block(vol, dir, 0));
  if (vol.verify_checksums()) {
    Status ok = disk::verify_dx_checksum(dir.csum_seed, *root_block.first, true);
    if (!ok.ok()) return bad_block(vol, dir, 0, root_block.second, std::move(ok).error());
  }
  auto root = disk::parse_dx_root(*root_block.first, dx_format(vol));
  if (!root.ok()) return DxResult{DxOutcome::kBadIndex, {}};
  uint8_t version = root->hash_version;
  if (version <= disk::dx_hash_version::kTea &&
      (vol.sb().s_flags & disk::kFlagUnsignedHash)) {
    version += 3;
  }
  auto hash = disk::dx_hash(name, version, vol.sb().s_hash_seed.data());
  if (!hash.ok()) return DxResult{DxOutcome::kBadIndex, {}};

  auto valid_block = [&](const std::vector<disk::DxEntry>& entries) {
    for (const auto& e : entries) {
      if (e.block == 0 || e.block >= blocks) return false;
    }
    return !entries.empty();
  };
  // Extends `path` down to a leaf: along the hash's entries, or along the
  // leftmost ones when continuing into the next subtree. Returns false when
  // the index is damaged; errors other than corruption (checksums, I/O)
  // are returned as they are.
  std::vector<DxLevel> path;
  auto descend = [&](bool leftmost) -> Result<bool> {
    while (path.size() <= root->indirect_levels) {
      const DxLevel& up = path.back();
      auto node = read_dx_node(vol, dir, up.entries[up.at].block);
      if (!node.ok()) {
        if (node.error().code() == kErrCorrupted) return false;
        return std::move(node).error();
      }
      if (!valid_block(*node)) return false;
      size_t at = leftmost ? 0 : disk::dx_find_entry(*node, hash->major);
      path.push_back({std::move(*node), at});
    }
    return true;
  };

  if (!valid_block(root->entries)) return DxResult{DxOutcome::kBadIndex, {}};
  path.push_back({root->entries, disk::dx_find_entry(root->entries, hash->major)});
  UEXT_ASSIGN_OR_RETURN(bool sound, descend(false));
  if (!sound) return DxResult{DxOutcome::kBadIndex, {}};

  // Search the leaf; names whose hashes collide may continue into the next
  // leaves, which the index marks by setting the low bit of their hash.
  for (size_t visited = 0; visited <= blocks; ++visited) {
    const DxLevel& leaf_level = path.back();
    UEXT_ASSIGN_OR_RETURN(auto found, search_leaf(vol, dir, leaf_level.entries[leaf_level.at].block, name));
    if (found) return DxResult{DxOutcome::kFound, *found};
    // Advance to the next leaf in hash order.
    size_t depth = path.size();
    while (depth > 0 && path[depth - 1].at + 1 >= path[depth - 1].entries.size()) --depth;
    if (depth == 0) return DxResult{DxOutcome::kAbsent, {}};
    DxLevel& level = path[depth - 1];
    ++level.at;
    uint32_t next_hash = level.entries[level.at].hash;
    if ((next_hash & 1) == 0 || (next_hash & ~1u) != hash->major) {
      return DxResult{DxOutcome::kAbsent, {}};
    }
    path.resize(depth);
    UEXT_ASSIGN_OR_RETURN(sound, descend(true));
    if (!sound) return DxResult{DxOutcome::kBadIndex, {}};
  }
  return DxResult{DxOutcome::kBadIndex, {}};
}

}  // namespace

Result<std::optional<FoundEntry>> dir_lookup(Volume& vol, const InodeRecord& dir,
                                             std::string_view name) {
  if (name.empty() || name.size() > disk::kNameMax) return std::optional<FoundEntry>();
  // "." and ".." sit in block 0, outside the hash order: the linear scan
  // finds them in the first block.
  bool dot_or_dotdot = name == "." || name == "..";
  if (is_htree(vol, dir) && !dot_or_dotdot) {
    UEXT_ASSIGN_OR_RETURN(DxResult r, dx_lookup(vol, dir, name));
    if (r.outcome == DxOutcome::kFound) return std::optional<FoundEntry>(r.entry);
    if (r.outcome == DxOutcome::kAbsent) return std::optional<FoundEntry>();
  }
  return linear_lookup(vol, dir, name);
}

Status dir_iterate(Volume& vol, const InodeRecord& dir, uint64_t pos, const DirentVisitor& visit) {
  uint32_t bs = vol.block_size();
  uint64_t blocks = dir_block_count(vol, dir);
  uint64_t first = pos / bs;
  if (first >= blocks) return {};
  UEXT_ASSIGN_OR_RETURN(auto runs, map_blocks(vol, dir, first, blocks - first));
  for (const BlockRun& run : runs) {
    if (run.physical == 0 || run.unwritten) {
      return vol.found_corrupt(Error(kErrCorrupted, fmt::format("directory inode {}: logical block {} is a hole",
                                                                dir.ino, run.logical)),
                               "read_dir_block", dir.ino, 0);
    }
    for (uint64_t i = 0; i < run.length; ++i) {
      uint64_t logical = run.logical + i, physical = run.physical + i;
      auto data = vol.read_meta_block(physical, "directory block");
      if (!data.ok()) return bad_block(vol, dir, logical, physical, std::move(data).error());
      UEXT_ASSIGN_OR_RETURN(auto entries, block_entries(vol, dir, **data, logical, physical));
      uint64_t base = logical * bs;
      for (const auto& e : entries) {
        if (e.inode == 0 || base + e.offset < pos) continue;
        if (!visit(e, base + e.offset + e.rec_len)) return {};
      }
    }
  }
  return {};
}

}  // namespace uext::fs
