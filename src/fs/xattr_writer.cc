#include "fs/xattr_writer.h"

#include "fs/map_writer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "disk/features.h"
#include "disk/xattr.h"

namespace uext::fs {
namespace {

constexpr size_t kVfsValueMax = 65536;  // XATTR_SIZE_MAX: the VFS refuses larger values (E2BIG)
// XATTR_NAME_MAX: the VFS refuses longer full names (ERANGE), so an
// attribute with one could be listed by the kernel but never read.
constexpr size_t kVfsNameMax = 255;

// The kernel puts a new xattr block at the start of the inode's group.
uint64_t xattr_goal(const Volume& vol, uint32_t ino) {
  const disk::Superblock& sb = vol.sb();
  uint64_t group = (ino - 1) / sb.s_inodes_per_group;
  return sb.s_first_data_block + group * sb.s_blocks_per_group;
}

void seal(const Volume& vol, uint64_t block, std::span<std::byte> bytes) {
  if (vol.sb().has_metadata_csum()) disk::set_xattr_block_checksum(vol.sb().csum_seed(), block, bytes);
}

// Where the in-inode area starts in the slot, and whether new attributes
// may go there: a large inode whose extra fields leave room for the magic,
// one entry header and the terminator.
struct InodeArea {
  size_t start = 0;
  bool exists = false;  // the slot has bytes after the extra fields
  bool usable = false;
};
InodeArea inode_area(const InodeRecord& rec) {
  InodeArea a;
  a.start = disk::kGoodOldInodeSize + rec.inode.i_extra_isize;
  a.exists = rec.raw.size() > disk::kGoodOldInodeSize && a.start + 8 <= rec.raw.size();
  // i_extra_isize 0 on a large inode is an inode whose extra fields were
  // never set up; the kernel fixes that first, so leave such an area alone.
  a.usable = a.exists && rec.inode.i_extra_isize != 0;
  return a;
}

std::vector<disk::XattrEntry>::iterator find_entry(std::vector<disk::XattrEntry>& list,
                                                   const disk::XattrEntry& key) {
  return std::find_if(list.begin(), list.end(), [&](const disk::XattrEntry& e) {
    return e.name_index == key.name_index && e.suffix == key.suffix;
  });
}

Status refuse_ea_inode(uint32_t ino, const std::vector<disk::XattrEntry>& list) {
  for (const auto& e : list) {
    if (e.value_inum != 0) {
      return Error(ENOTSUP, fmt::format("inode {}: an xattr keeps its value in inode {} "
                                        "(ea_inode is not supported)", ino, e.value_inum));
    }
  }
  return {};
}

// The attributes of the xattr block, with its header.
struct BlockState {
  uint64_t block = 0;  // 0: the inode has none
  disk::XattrBlockHeader header;
  std::vector<disk::XattrEntry> entries;
};

Result<BlockState> read_block(Volume& vol, const InodeRecord& rec) {
  BlockState st;
  st.block = rec.inode.i_file_acl;
  if (st.block == 0) return st;
  std::string where = fmt::format("inode {}: xattr block {}", rec.ino, st.block);
  auto bad = [&](Error err) { return vol.found_corrupt(std::move(err).with_context(where), "read_xattrs", rec.ino, st.block); };
  auto data = vol.read_meta_block(st.block, "xattr block");
  if (!data.ok()) return bad(std::move(data).error());
  if (vol.verify_checksums()) {
    Status ok = disk::verify_xattr_block_checksum(vol.sb().csum_seed(), st.block, **data);
    if (!ok.ok()) return bad(std::move(ok).error());
  }
  auto parsed = disk::parse_xattr_block_entries(**data, &st.header);
  if (!parsed.ok()) return bad(std::move(parsed).error());
  st.entries = std::move(*parsed);
  return st;
}

// Drops this inode's reference to `block`: one less user, or freed (and
// revoked) when this inode was the last. Returns whether it was freed.
Status drop_block(Volume& vol, journal::Handle& handle, uint64_t block, alloc::BlockAllocator& allocator) {
  bool last = false;
  // Decided on the block's current bytes, under its edit lock: two inodes
  // leaving one shared block at once must not both decrement to 0 (the
  // block would leak) nor both free it.
  UEXT_TRY(handle.modify(block, [&](std::span<std::byte> b) {
    uint32_t refcount = disk::le32(b, 4);
    if (refcount > 1) {
      disk::put_le32(b, 4, refcount - 1);
      seal(vol, block, b);
    } else {
      last = true;
    }
  }));
  if (last) UEXT_TRY(allocator.free(handle, block, 1, /*metadata=*/true));
  return {};
}

}  // namespace

uint32_t xattr_set_credits(const Volume& vol) {
  // inode + old block + new block + allocation + freeing one block.
  return 3 + alloc::BlockAllocator::kAllocateCredits +
         alloc::BlockAllocator::free_credits(vol.sb(), vol.sb().s_first_data_block, 1);
}

uint32_t xattr_release_credits(const Volume& vol) {
  return 2 + alloc::BlockAllocator::free_credits(vol.sb(), vol.sb().s_first_data_block, 1);
}

Status xattr_set(Volume& vol, journal::Handle& handle, InodeRecord& rec, std::string_view name,
                 std::optional<std::string_view> value, int flags, alloc::BlockAllocator& allocator) {
  const std::string where = fmt::format("inode {}: xattr {}", rec.ino, name);
  if (!vol.sb().has_compat(disk::compat::kExtAttr))
    return Error(EOPNOTSUPP, where + ": the filesystem has no ext_attr feature");
  UEXT_ASSIGN_OR_RETURN(disk::XattrEntry target, disk::xattr_split_name(name));
  if (name.size() > kVfsNameMax)
    return Error(ERANGE, fmt::format("inode {}: xattr name of {} bytes is longer than {}", rec.ino, name.size(),
                                     kVfsNameMax));
  if (value) {
    if (value->size() > kVfsValueMax)
      return Error(E2BIG, fmt::format("{}: value of {} bytes is over the 64 KiB limit", where, value->size()));
    if (target.name_index == 2 || target.name_index == 3) {
      auto acl = disk::acl_to_disk(*value);
      if (!acl.ok()) return std::move(acl).error().with_context(where);
      target.value = std::move(*acl);
    } else {
      target.value.assign(*value);
    }
  }

  // Both places as they are now.
  const InodeArea area = inode_area(rec);
  std::vector<disk::XattrEntry> ibody;
  if (area.exists) {
    auto parsed = disk::parse_inode_xattr_entries(disk::Bytes(rec.raw).subspan(area.start));
    if (!parsed.ok()) {
      return vol.found_corrupt(
          std::move(parsed).error().with_context(fmt::format("inode {}: in-inode xattrs", rec.ino)), "read_xattrs",
          rec.ino, 0);
    }
    ibody = std::move(*parsed);
  }
  UEXT_ASSIGN_OR_RETURN(BlockState blk, read_block(vol, rec));
  UEXT_TRY(refuse_ea_inode(rec.ino, ibody));
  UEXT_TRY(refuse_ea_inode(rec.ino, blk.entries));

  auto in_ibody = find_entry(ibody, target);
  auto in_block = find_entry(blk.entries, target);
  const bool present = in_ibody != ibody.end() || in_block != blk.entries.end();
  if (value && (flags & kXattrCreate) && present) return Error(EEXIST, where + ": already exists");
  if (!present && (!value || (flags & kXattrReplace))) return Error(ENODATA, where + ": no such attribute");

  std::vector<disk::XattrEntry> new_ibody = ibody;
  std::vector<disk::XattrEntry> new_block = blk.entries;
  const size_t area_size = area.exists ? rec.raw.size() - area.start : 0;
  std::vector<std::byte> area_bytes(area_size);
  if (!value) {
    // Removal: from wherever it is (never in both places).
    if (in_ibody != ibody.end()) {
      new_ibody.erase(new_ibody.begin() + (in_ibody - ibody.begin()));
    } else {
      new_block.erase(new_block.begin() + (in_block - blk.entries.begin()));
    }
  } else {
    // Same value: nothing to write, as the kernel.
    if (in_ibody != ibody.end() && in_ibody->value == target.value) return {};
    if (in_block != blk.entries.end() && in_block->value == target.value) return {};
    // The inode first (replacing in place keeps the order), then the
    // block; the other place loses its copy.
    auto with_target = [&](std::vector<disk::XattrEntry> list) {
      auto it = find_entry(list, target);
      if (it != list.end()) {
        *it = target;
      } else {
        list.push_back(target);
      }
      return list;
    };
    auto without_target = [&](std::vector<disk::XattrEntry> list) {
      auto it = find_entry(list, target);
      if (it != list.end()) list.erase(it);
      return list;
    };
    bool placed = false;
    if (area.usable) {
      std::vector<disk::XattrEntry> candidate = with_target(ibody);
      Status fits = disk::encode_inode_xattrs(area_bytes, candidate);
      if (fits.ok()) {
        new_ibody = std::move(candidate);
        new_block = without_target(blk.entries);
        placed = true;
      } else if (fits.error().code() != ENOSPC) {
        return std::move(fits).error().with_context(where);
      }
    }
    if (!placed) {
      new_block = with_target(blk.entries);
      new_ibody = without_target(ibody);
      size_t need = 0;
      for (const auto& e : new_block) need += disk::xattr_entry_space(e);
      if (need > disk::xattr_block_room(vol.block_size())) {
        return Error(ENOSPC, fmt::format("{}: value of {} bytes fits neither in the inode nor in the xattr block "
                                         "({} of {} bytes would be used; values in their own inodes, ea_inode, "
                                         "are not supported)",
                                         where, value->size(), need, disk::xattr_block_room(vol.block_size())));
      }
    }
  }

  const bool ibody_changed = new_ibody != ibody;
  const bool block_changed = new_block != blk.entries;
  if (ibody_changed) {
    if (!area.exists) return Error(EIO, where + ": no in-inode area to change");
    UEXT_TRY(disk::encode_inode_xattrs(area_bytes, new_ibody));
  }

  // The block's new bytes, without checksum (that depends on where it goes).
  std::vector<std::byte> block_bytes;
  if (block_changed && !new_block.empty()) {
    block_bytes.resize(vol.block_size());
    Status enc = disk::encode_xattr_block(block_bytes, new_block, 1);
    if (!enc.ok()) return std::move(enc).error().with_context(where);
  }

  uint64_t file_acl = rec.inode.i_file_acl;
  int64_t block_delta = 0;
  if (block_changed) {
    if (blk.block == 0) {
      // First attribute in a block: a new one near the inode.
      UEXT_ASSIGN_OR_RETURN(alloc::BlockExtent got,
                            allocator.allocate(handle, xattr_goal(vol, rec.ino), 1));
      if (got.count != 1) return Error(EIO, fmt::format("{}: allocator returned {} blocks", where, got.count));
      UEXT_TRY(vol.check_block_range(got.first, 1, where + ": new xattr block"));
      UEXT_TRY(handle.create(got.first, [&](std::span<std::byte> b) {
        std::memcpy(b.data(), block_bytes.data(), b.size());
        seal(vol, got.first, b);
      }));
      file_acl = got.first;
      block_delta = 1;
    } else if (new_block.empty()) {
      UEXT_TRY(drop_block(vol, handle, blk.block, allocator));
      file_acl = 0;
      block_delta = -1;
    } else {
      // Shared blocks are copied: allocate the copy's block before touching
      // anything, so that ENOSPC leaves everything as it was.
      alloc::BlockExtent copy;
      if (blk.header.h_refcount > 1) {
        UEXT_ASSIGN_OR_RETURN(copy, allocator.allocate(handle, xattr_goal(vol, rec.ino), 1));
        if (copy.count != 1) return Error(EIO, fmt::format("{}: allocator returned {} blocks", where, copy.count));
        UEXT_TRY(vol.check_block_range(copy.first, 1, where + ": new xattr block"));
      }
      // Decided on the current refcount: another inode may have left the
      // block since it was read, making it ours alone.
      bool detached = false;
      UEXT_TRY(handle.modify(blk.block, [&](std::span<std::byte> b) {
        uint32_t refcount = disk::le32(b, 4);
        if (refcount > 1) {
          disk::put_le32(b, 4, refcount - 1);
          detached = true;
        } else {
          std::memcpy(b.data(), block_bytes.data(), b.size());
        }
        seal(vol, blk.block, b);
      }));
      if (detached) {
        if (copy.count == 0) return Error(EIO, where + ": xattr block became shared while being changed");
        UEXT_TRY(handle.create(copy.first, [&](std::span<std::byte> b) {
          std::memcpy(b.data(), block_bytes.data(), b.size());
          seal(vol, copy.first, b);
        }));
        file_acl = copy.first;
      } else if (copy.count != 0) {
        // Never written: an ordinary free, nothing to revoke.
        UEXT_TRY(allocator.free(handle, copy.first, 1, /*metadata=*/false));
      }
    }
  }

  if (!ibody_changed && file_acl == rec.inode.i_file_acl) return {};
  const size_t area_start = area.start;
  auto updated = vol.update_inode_slot(handle, rec.ino, false, [&](disk::Inode& in, std::span<std::byte> slot) -> Status {
    if (ibody_changed) {
      if (disk::kGoodOldInodeSize + in.i_extra_isize != area_start || slot.size() != area_start + area_bytes.size())
        return Error(EIO, fmt::format("inode {}: slot layout changed under the xattr update", rec.ino));
      std::memcpy(slot.data() + area_start, area_bytes.data(), area_bytes.size());
    }
    in.i_file_acl = file_acl;
    add_blocks(vol, in, block_delta);
    return {};
  });
  if (!updated.ok()) return std::move(updated).error().with_context(where);
  rec.raw = std::move(updated->raw);
  rec.inode.i_file_acl = updated->inode.i_file_acl;
  rec.inode.i_blocks = updated->inode.i_blocks;
  rec.inode.i_checksum = updated->inode.i_checksum;
  return {};
}

Status xattr_release_block(Volume& vol, journal::Handle& handle, InodeRecord& rec,
                           alloc::BlockAllocator& allocator) {
  if (rec.inode.i_file_acl == 0) return {};
  const uint64_t block = rec.inode.i_file_acl;
  const std::string where = fmt::format("inode {}: xattr block {}", rec.ino, block);
  // Check it is an xattr block before changing its refcount or freeing it.
  UEXT_ASSIGN_OR_RETURN(BlockState blk, read_block(vol, rec));
  (void)blk;
  Status dropped = drop_block(vol, handle, block, allocator);
  if (!dropped.ok()) return std::move(dropped).error().with_context(where);
  auto updated = vol.update_inode(handle, rec.ino, false, [&](disk::Inode& in) {
    in.i_file_acl = 0;
    add_blocks(vol, in, -1);
  });
  if (!updated.ok()) return std::move(updated).error().with_context(where);
  rec.raw = std::move(updated->raw);
  rec.inode.i_file_acl = 0;
  rec.inode.i_blocks = updated->inode.i_blocks;
  rec.inode.i_checksum = updated->inode.i_checksum;
  return {};
}

}  // namespace uext::fs
