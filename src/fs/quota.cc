#include "fs/quota.h"

#include <sys/stat.h>

#include <algorithm>
#include <mutex>

#include <fmt/format.h>

#include "disk/features.h"
#include "fs/block_map.h"
#include "fs/volume.h"

namespace uext::fs {

namespace q = disk::quota;

namespace {

// Entries rewritten per handle: each kind's ids of the inodes one
// operation changes (a rename touches up to five: both directories, the
// file, the one it replaces, a whiteout).
constexpr uint32_t kEntriesPerHandle = 5;
// A handle that inserts one id: the header, four tree blocks, a data block,
// its neighbours in the free-entry list, and the growth of the file (new
// blocks, the quota inode and its map, bitmaps and descriptors).
constexpr uint32_t kInsertCredits = 24;

uint32_t quota_inode(const disk::Superblock& sb, q::Type t) {
  switch (t) {
    case q::Type::kUser: return sb.s_usr_quota_inum;
    case q::Type::kGroup: return sb.s_grp_quota_inum;
    case q::Type::kProject: return sb.s_prj_quota_inum;
  }
  return 0;
}

}  // namespace

Result<std::unique_ptr<QuotaFiles>> QuotaFiles::load(Volume& vol) {
  const disk::Superblock& sb = vol.sb();
  if (!sb.has_ro_compat(disk::ro_compat::kQuota)) return std::unique_ptr<QuotaFiles>();
  std::unique_ptr<QuotaFiles> files(new QuotaFiles(vol));
  files->first_ino_ = sb.s_rev_level == 0 ? 11 : sb.s_first_ino;
  files->skip_ino_[0] = sb.s_prj_quota_inum;
  files->skip_ino_[1] = sb.s_orphan_file_inum;
  files->block_size_ = sb.block_size();
  files->huge_file_ = sb.has_ro_compat(disk::ro_compat::kHugeFile);
  for (int t = 0; t < q::kTypes; ++t) {
    const uint32_t ino = quota_inode(sb, static_cast<q::Type>(t));
    if (ino == 0) continue;
    File f;
    f.type = static_cast<q::Type>(t);
    f.ino = ino;
    Status loaded = files->load_file(f);
    if (!loaded.ok()) {
      return std::move(loaded).error().with_context(
          fmt::format("{} quota file (inode {})", q::type_name(f.type), ino));
    }
    files->files_[t] = std::move(f);
  }
  return files;
}

Status QuotaFiles::load_file(File& f) {
  if (f.ino > vol_.sb().s_inodes_count) return Error(kErrCorrupted, "quota inode number out of range");
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, vol_.read_inode(f.ino));
  if (!S_ISREG(rec.inode.i_mode)) return Error(kErrCorrupted, "not a regular file");
  f.size = rec.inode.i_size;
  const uint64_t blocks = (f.size + block_size_ - 1) / block_size_;
  if (f.size > (uint64_t{1} << 30)) return Error(kErrCorrupted, fmt::format("implausible size {}", f.size));
  f.map.assign(blocks, 0);
  if (blocks > 0) {
    UEXT_ASSIGN_OR_RETURN(auto runs, map_blocks(vol_, rec, 0, blocks));
    for (const auto& r : runs) {
      if (r.physical == 0 || r.unwritten) continue;
      for (uint64_t i = 0; i < r.length && r.logical + i < blocks; ++i) f.map[r.logical + i] = r.physical + i;
    }
  }
  UEXT_ASSIGN_OR_RETURN(auto block0, read_qblock(f, 0));
  UEXT_ASSIGN_OR_RETURN(f.info, q::decode_info(block0, f.type));
  if (uint64_t{f.info.blocks} * q::kBlockSize > f.size) {
    return Error(kErrCorrupted, fmt::format("header counts {} blocks, the file holds {} bytes", f.info.blocks, f.size));
  }
  std::vector<bool> seen(f.info.blocks, false);
  return scan_tree(f, q::kTreeRoot, 0, seen);
}

Status QuotaFiles::scan_tree(File& f, uint32_t block, int depth, std::vector<bool>& seen) {
  // A tree block belongs to one parent; data blocks are shared by leaves.
  if (seen[block]) return Error(kErrCorrupted, fmt::format("tree block {} is referred to twice", block));
  seen[block] = true;
  UEXT_ASSIGN_OR_RETURN(auto bytes, read_qblock(f, block));
  for (uint32_t i = 0; i < q::kRefsPerBlock; ++i) {
    const uint32_t ref = q::tree_ref(bytes, i);
    if (ref == 0) continue;
    if (ref >= f.info.blocks || ref <= q::kTreeRoot) {
      return Error(kErrCorrupted, fmt::format("tree block {} refers to block {} of {}", block, ref, f.info.blocks));
    }
    if (depth < q::kTreeDepth - 1) {
      UEXT_TRY(scan_tree(f, ref, depth + 1, seen));
      continue;
    }
    if (seen[ref]) continue;  // several leaves may share a data block
    seen[ref] = true;
    UEXT_ASSIGN_OR_RETURN(auto data, read_qblock(f, ref));
    for (uint32_t slot = 0; slot < q::kEntriesPerBlock; ++slot) {
      auto entry = std::span<const std::byte>(data).subspan(q::entry_offset(slot), q::kEntrySize);
      if (q::entry_unused(entry)) continue;
      IdState& st = f.ids[q::entry_id(entry)];
      st.usage = q::entry_usage(entry);
      st.block = ref;
      st.slot = slot;
    }
  }
  return {};
}

Result<std::pair<uint64_t, uint32_t>> QuotaFiles::locate(const File& f, uint32_t qblock) const {
  const uint64_t byte = uint64_t{qblock} * q::kBlockSize;
  const uint64_t logical = byte / block_size_;
  if (logical >= f.map.size() || f.map[logical] == 0) {
    return Error(kErrCorrupted, fmt::format("{} quota file (inode {}): block {} is not mapped", q::type_name(f.type),
                                            f.ino, qblock));
  }
  return std::pair<uint64_t, uint32_t>(f.map[logical], static_cast<uint32_t>(byte % block_size_));
}

Result<std::vector<std::byte>> QuotaFiles::read_qblock(const File& f, uint32_t qblock) {
  UEXT_ASSIGN_OR_RETURN(auto where, locate(f, qblock));
  UEXT_ASSIGN_OR_RETURN(auto data, vol_.read_meta_block(where.first, "quota file block"));
  auto span = std::span<const std::byte>(data->data(), data->size()).subspan(where.second, q::kBlockSize);
  return std::vector<std::byte>(span.begin(), span.end());
}

Status QuotaFiles::edit_qblock(journal::Handle& h, const File& f, uint32_t qblock,
                               const std::function<void(std::span<std::byte>)>& edit) {
  UEXT_ASSIGN_OR_RETURN(auto where, locate(f, qblock));
  return h.modify(where.first, [&](std::span<std::byte> data) { edit(data.subspan(where.second, q::kBlockSize)); });
}

QuotaCharge QuotaFiles::charge_of(uint32_t ino, const disk::Inode& inode) const {
  QuotaCharge c;
  if (ino != disk::kRootIno && (ino < first_ino_ || ino == skip_ino_[0] || ino == skip_ino_[1])) return c;
  c.counted = true;
  c.id[static_cast<int>(q::Type::kUser)] = inode.i_uid;
  c.id[static_cast<int>(q::Type::kGroup)] = inode.i_gid;
  c.id[static_cast<int>(q::Type::kProject)] = inode.i_projid;
  const uint64_t units = inode.i_blocks;
  c.space = (huge_file_ && inode.has_flag(disk::inode_flag::kHugeFile)) ? units * block_size_ : units * 512;
  return c;
}

void QuotaFiles::discharge(journal::Handle& handle, uint32_t ino, const disk::Inode& inode) {
  transfer(handle, charge_of(ino, inode), QuotaCharge{});
}

uint32_t QuotaFiles::credits() const {
  uint32_t kinds = 0;
  for (const auto& f : files_) kinds += f ? 1 : 0;
  return kinds * kEntriesPerHandle;
}

void QuotaFiles::transfer(journal::Handle& handle, const QuotaCharge& before, const QuotaCharge& after) {
  if (!before.counted && !after.counted) return;
  if (before.counted && after.counted && before.id == after.id && before.space == after.space) return;
  std::lock_guard lock(mu_);
  for (auto& slot : files_) {
    if (!slot) continue;
    File& f = *slot;
    const int t = static_cast<int>(f.type);
    auto move = [&](uint32_t id, int64_t space, int64_t inodes) {
      if (space == 0 && inodes == 0) return;
      IdState& st = f.ids[id];
      // Usage the file had wrong to begin with must not wrap around.
      st.usage.space = space < 0 ? st.usage.space - std::min<uint64_t>(st.usage.space, -space) : st.usage.space + space;
      st.usage.inodes =
          inodes < 0 ? st.usage.inodes - std::min<uint64_t>(st.usage.inodes, -inodes) : st.usage.inodes + inodes;
      write_entry(handle, f, id, st);
    };
    const int64_t old_space = before.counted ? static_cast<int64_t>(before.space) : 0;
    const int64_t new_space = after.counted ? static_cast<int64_t>(after.space) : 0;
    const int64_t old_inodes = before.counted ? 1 : 0;
    const int64_t new_inodes = after.counted ? 1 : 0;
    if (before.counted && after.counted && before.id[t] == after.id[t]) {
      move(after.id[t], new_space - old_space, 0);
    } else {
      if (before.counted) move(before.id[t], -old_space, -old_inodes);
      if (after.counted) move(after.id[t], new_space, new_inodes);
    }
  }
}

void QuotaFiles::write_entry(journal::Handle& h, File& f, uint32_t id, IdState& st) {
  st.pending = true;
  if (st.block == 0) return;  // no entry yet: flush() makes it
  auto where = locate(f, st.block);
  if (!where.ok() || !h.can_change(where->first)) return;
  const uint32_t offset = q::entry_offset(st.slot);
  Status s = edit_qblock(h, f, st.block, [&](std::span<std::byte> b) {
    q::set_entry_usage(b.subspan(offset, q::kEntrySize), id, st.usage);
  });
  if (s.ok()) st.pending = false;
}

Status QuotaFiles::zero_qblock(journal::Handle& h, const File& f, uint32_t qblock) {
  return edit_qblock(h, f, qblock, [](std::span<std::byte> b) { std::fill(b.begin(), b.end(), std::byte{0}); });
}

Result<uint32_t> QuotaFiles::take_block(journal::Handle& h, File& f) {
  if (f.info.free_block != 0) {
    const uint32_t blk = f.info.free_block;
    if (blk >= f.info.blocks || blk <= q::kTreeRoot) {
      return Error(kErrCorrupted, fmt::format("free block list names block {} of {}", blk, f.info.blocks));
    }
    UEXT_ASSIGN_OR_RETURN(auto bytes, read_qblock(f, blk));
    f.info.free_block = q::decode_data_header(bytes).next_free;
    UEXT_TRY(zero_qblock(h, f, blk));
    return blk;
  }
  const uint32_t blk = f.info.blocks;
  const uint64_t logical = uint64_t{blk} * q::kBlockSize / block_size_;
  if (logical >= f.map.size() || f.map[logical] == 0) {
    if (!grow_) return Error(EROFS, "quota file cannot grow: no allocator");
    UEXT_ASSIGN_OR_RETURN(uint64_t physical, grow_(h, f.ino, logical));
    std::lock_guard lock(mu_);  // transfer() reads the map under it
    if (f.map.size() <= logical) f.map.resize(logical + 1, 0);
    f.map[logical] = physical;
  } else {
    UEXT_TRY(zero_qblock(h, f, blk));
  }
  const uint64_t end = uint64_t{blk + 1} * q::kBlockSize;
  if (end > f.size) {
    UEXT_TRY(vol_.update_inode(h, f.ino, false, [&](disk::Inode& in) { in.i_size = std::max<uint64_t>(in.i_size, end); }));
    f.size = end;
  }
  f.info.blocks = blk + 1;
  return blk;
}

Status QuotaFiles::insert(journal::Handle& h, File& f, uint32_t id) {
  Status inserted = insert_entry(h, f, id);
  // The header follows every block taken, done or not, so that the file
  // never refers to blocks past the count it gives.
  Status header = edit_qblock(h, f, 0, [&](std::span<std::byte> b) { q::encode_info(b, f.info); });
  UEXT_TRY(inserted);
  return header;
}

Status QuotaFiles::insert_entry(journal::Handle& h, File& f, uint32_t id) {
  // Down the tree, making the missing tree blocks.
  uint32_t block = q::kTreeRoot;
  for (int depth = 0; depth < q::kTreeDepth - 1; ++depth) {
    UEXT_ASSIGN_OR_RETURN(auto bytes, read_qblock(f, block));
    const uint32_t index = q::tree_index(id, depth);
    uint32_t next = q::tree_ref(bytes, index);
    if (next == 0) {
      UEXT_ASSIGN_OR_RETURN(next, take_block(h, f));
      UEXT_TRY(edit_qblock(h, f, block, [&](std::span<std::byte> b) { q::set_tree_ref(b, index, next); }));
    } else if (next >= f.info.blocks || next <= q::kTreeRoot) {
      return Error(kErrCorrupted, fmt::format("tree block {} refers to block {} of {}", block, next, f.info.blocks));
    }
    block = next;
  }
  // A data block with a free entry: the head of that list, or a new one.
  uint32_t data = f.info.free_entry;
  if (data == 0) {
    UEXT_ASSIGN_OR_RETURN(data, take_block(h, f));
    f.info.free_entry = data;
  } else if (data >= f.info.blocks || data <= q::kTreeRoot) {
    return Error(kErrCorrupted, fmt::format("free entry list names block {} of {}", data, f.info.blocks));
  }
  UEXT_ASSIGN_OR_RETURN(auto bytes, read_qblock(f, data));
  q::DataHeader header = q::decode_data_header(bytes);
  uint32_t slot = 0;
  while (slot < q::kEntriesPerBlock &&
         !q::entry_unused(std::span<const std::byte>(bytes).subspan(q::entry_offset(slot), q::kEntrySize)))
    ++slot;
  if (slot == q::kEntriesPerBlock) {
    return Error(kErrCorrupted, fmt::format("data block {} is on the free entry list but full", data));
  }
  ++header.entries;
  if (header.entries >= q::kEntriesPerBlock) {
    // Full now: off the list (it is its head, so it has no predecessor).
    const uint32_t next = header.next_free;
    f.info.free_entry = next;
    if (next != 0) {
      if (next >= f.info.blocks) return Error(kErrCorrupted, fmt::format("free entry list names block {}", next));
      UEXT_TRY(edit_qblock(h, f, next, [](std::span<std::byte> b) {
        q::DataHeader n = q::decode_data_header(b);
        n.prev_free = 0;
        q::encode_data_header(b, n);
      }));
    }
    header.next_free = header.prev_free = 0;
  }
  // The leaf tree block points at the data block.
  UEXT_ASSIGN_OR_RETURN(auto leaf, read_qblock(f, block));
  const uint32_t leaf_index = q::tree_index(id, q::kTreeDepth - 1);
  if (q::tree_ref(leaf, leaf_index) != data) {
    UEXT_TRY(edit_qblock(h, f, block, [&](std::span<std::byte> b) { q::set_tree_ref(b, leaf_index, data); }));
  }
  // The entry itself, with the usage counted so far.
  std::lock_guard lock(mu_);
  IdState& st = f.ids[id];
  UEXT_TRY(edit_qblock(h, f, data, [&](std::span<std::byte> b) {
    q::encode_data_header(b, header);
    q::set_entry_usage(b.subspan(q::entry_offset(slot), q::kEntrySize), id, st.usage);
  }));
  st.block = data;
  st.slot = slot;
  st.pending = false;
  return {};
}

Status QuotaFiles::prepare(const std::array<std::optional<uint32_t>, q::kTypes>& ids) {
  auto missing = [&] {
    std::vector<std::pair<int, uint32_t>> out;
    std::lock_guard lock(mu_);
    for (int t = 0; t < q::kTypes; ++t) {
      if (!files_[t] || !ids[t]) continue;
      auto it = files_[t]->ids.find(*ids[t]);
      if (it == files_[t]->ids.end() || it->second.block == 0) out.emplace_back(t, *ids[t]);
    }
    return out;
  };
  if (missing().empty()) return {};
  UEXT_ASSIGN_OR_RETURN(journal::Handle h, vol_.start(kInsertCredits * q::kTypes));
  Status done;
  {
    std::lock_guard lock(insert_mu_);
    for (auto [t, id] : missing()) {  // again: another thread may have made them meanwhile
      done = insert(h, *files_[t], id);
      if (!done.ok()) {
        done = std::move(done).error().with_context(
            fmt::format("{} quota file (inode {}): entry for id {}", q::type_name(files_[t]->type), files_[t]->ino, id));
        break;
      }
    }
  }
  // A full filesystem stops an insert where the file would grow, before
  // that step changed anything (the space is reserved first), and every
  // step before it left the file whole: a refusal, not damage to record.
  if (!done.ok() && done.error().code() == ENOSPC) h.set_consistent(true);
  return vol_.finish_handle(h, "quota", 0, std::move(done));
}

Status QuotaFiles::flush() {
  // Entries first, for every id with usage waiting.
  for (;;) {
    std::array<std::optional<uint32_t>, q::kTypes> need{};
    bool any = false;
    {
      std::lock_guard lock(mu_);
      for (int t = 0; t < q::kTypes && !any; ++t) {
        if (!files_[t]) continue;
        for (auto& [id, st] : files_[t]->ids) {
          if (st.pending && st.block == 0) {
            need[t] = id;
            any = true;
            break;
          }
        }
      }
    }
    if (!any) break;
    UEXT_TRY(prepare(need));
  }
  // Then the usage, as many entries a handle as its credits allow.
  auto any_pending = [&] {
    std::lock_guard lock(mu_);
    for (auto& slot : files_) {
      if (!slot) continue;
      for (auto& [id, st] : slot->ids)
        if (st.pending) return true;
    }
    return false;
  };
  while (any_pending()) {
    UEXT_ASSIGN_OR_RETURN(journal::Handle h, vol_.start(64));
    size_t left = 0, written = 0;
    {
      std::lock_guard lock(mu_);
      for (auto& slot : files_) {
        if (!slot) continue;
        for (auto& [id, st] : slot->ids) {
          if (!st.pending) continue;
          write_entry(h, *slot, id, st);
          (st.pending ? left : written)++;
        }
      }
    }
    UEXT_TRY(vol_.finish_handle(h, "quota", 0, Status()));
    if (left > 0 && written == 0) return Error(EIO, fmt::format("quota usage of {} ids could not be written", left));
  }
  return {};
}

}  // namespace uext::fs
