// Namespace changes: new inodes of every kind, links, unlink and rmdir,
// rename with its flags. Each is one journal handle; deleting the last link
// of an inode continues in inode_life.cc after the directory is unlocked.
#include <sys/stat.h>

#include <fmt/format.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

#include "disk/dirent.h"
#include "disk/features.h"
#include "fs/dir_writer.h"
#include "fs/directory.h"
#include "fs/filesystem_impl.h"
#include "fs/map_writer.h"
#include "fs/posix_acl.h"
#include "fs/xattr_writer.h"

namespace uext::fs {

namespace {

// Blocks one new directory entry may need: a new leaf, index nodes and a
// new level, and the blocks of the directory's own map.
constexpr uint64_t kDirGrowthBlocks = 12;
// The most links an inode may have (EXT4_LINK_MAX).
constexpr uint32_t kMaxLinks = 65000;
// Ancestor walks stop here: deeper means a loop in a corrupt image.
constexpr int kMaxDepth = 65536;

uint8_t ftype_of(uint32_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG: return disk::ftype::kRegular;
    case S_IFDIR: return disk::ftype::kDirectory;
    case S_IFCHR: return disk::ftype::kCharDev;
    case S_IFBLK: return disk::ftype::kBlockDev;
    case S_IFIFO: return disk::ftype::kFifo;
    case S_IFSOCK: return disk::ftype::kSocket;
    case S_IFLNK: return disk::ftype::kSymlink;
    default: return disk::ftype::kUnknown;
  }
}

Status check_name(std::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string_view::npos ||
      name.find('\0') != std::string_view::npos) {
    return Error(EINVAL, fmt::format("\"{}\": not a valid file name", name));
  }
  if (name.size() > disk::kNameMax) {
    return Error(ENAMETOOLONG, fmt::format("{}...: File name too long ({} bytes, at most {})", name.substr(0, 32),
                                           name.size(), disk::kNameMax));
  }
  return {};
}

}  // namespace

// Sets a directory's mtime and ctime and changes its link count by
// `delta`, with dir_nlink's rule: past kMaxLinks the count becomes 1
// ("many"), and a count of 1 stays 1.
static Status touch_dir(Volume& vol, journal::Handle& h, uint32_t ino, int delta, disk::Timestamp t) {
  const bool dir_nlink = vol.sb().has_ro_compat(disk::ro_compat::kDirNlink);
  auto r = vol.update_inode(h, ino, false, [&](disk::Inode& in) {
    in.i_mtime = in.i_ctime = t;
    if (delta == 0) return;
    if (in.i_links_count == 1 && dir_nlink) return;
    int64_t links = static_cast<int64_t>(in.i_links_count) + delta;
    if (links >= kMaxLinks && dir_nlink) links = 1;
    in.i_links_count = static_cast<uint16_t>(std::clamp<int64_t>(links, 0, kMaxLinks));
  });
  if (!r.ok()) return std::move(r).error();
  return {};
}

Result<Stat> FilesystemImpl::mknod(Ino dir, std::string_view name, uint32_t mode, const Owner& owner,
                                   uint32_t rdev_major, uint32_t rdev_minor) {
  uint32_t type = mode & S_IFMT;
  if (type == 0) type = S_IFREG;
  if (type != S_IFREG && type != S_IFCHR && type != S_IFBLK && type != S_IFIFO && type != S_IFSOCK) {
    return Error(EINVAL, fmt::format("{}: mknod cannot make file type {:o}", name, type));
  }
  return make_node(dir, name, type | (mode & 07777), owner, {}, rdev_major, rdev_minor);
}

Result<Stat> FilesystemImpl::mkdir(Ino dir, std::string_view name, uint32_t mode, const Owner& owner) {
  return make_node(dir, name, S_IFDIR | (mode & 07777), owner, {}, 0, 0);
}

Result<Stat> FilesystemImpl::symlink(Ino dir, std::string_view name, std::string_view target,
                                     const Owner& owner) {
  if (target.empty()) return Error(ENOENT, fmt::format("{}: empty symbolic link target", name));
  if (target.size() >= vol_->block_size() || target.size() > 4095) {
    return Error(ENAMETOOLONG, fmt::format("{}: symbolic link target of {} bytes is too long", name, target.size()));
  }
  return make_node(dir, name, S_IFLNK | 0777, owner, target, 0, 0);
}

Result<Stat> FilesystemImpl::make_node(Ino dir, std::string_view name, uint32_t mode, const Owner& owner,
                                       std::string_view symlink_target, uint32_t rdev_major,
                                       uint32_t rdev_minor) {
  UEXT_TRY(check_writable());
  UEXT_TRY(check_name(name));
  const bool is_dir = S_ISDIR(mode);
  const bool slow_symlink = S_ISLNK(mode) && symlink_target.size() >= disk::kInodeBlockBytes;
  auto dir_lock = itable_.lock(dir);
  UEXT_ASSIGN_OR_RETURN(InodeRecord parent, load_inode(dir));
  if (!S_ISDIR(parent.inode.i_mode)) return Error(ENOTDIR, fmt::format("inode {}: Not a directory", dir));
  if (parent.inode.i_links_count == 0) return Error(ENOENT, fmt::format("inode {}: directory was removed", dir));
  UEXT_ASSIGN_OR_RETURN(auto existing, dir_lookup(*vol_, parent, name));
  if (existing) return Error(EEXIST, fmt::format("{}: File exists", name));
  if (is_dir && parent.inode.i_links_count >= kMaxLinks && !vol_->sb().has_ro_compat(disk::ro_compat::kDirNlink)) {
    return Error(EMLINK, fmt::format("inode {}: Too many links (subdirectories)", dir));
  }
  // Permission bits and ACLs as ext4_init_acl gives them: the parent's
  // default ACL masks the mode (no umask) and becomes the new inode's
  // access ACL (and a new directory's default ACL); without one the umask
  // applies. Decided under the parent's lock, so a concurrent setfacl -d
  // on it is either wholly seen or not at all.
  NewInodeAcls acls;
  acls.mode = mode;
  if (!S_ISLNK(mode)) {
    std::optional<std::string> parent_default;
    if (vol_->options().posix_acl) {
      UEXT_ASSIGN_OR_RETURN(parent_default, find_xattr(parent, kAclDefaultName));
    }
    auto inherited = acl_for_new_inode(parent_default, mode, owner.umask);
    if (!inherited.ok()) {
      return Error(kErrCorrupted, fmt::format("directory inode {}: stored {}: {}", dir, kAclDefaultName,
                                              inherited.error().message()));
    }
    acls = std::move(*inherited);
  }
  mode = acls.mode;
  const int acl_count = (acls.access ? 1 : 0) + (acls.default_acl ? 1 : 0);

  uint64_t need = kDirGrowthBlocks;
  if (is_dir || slow_symlink) need += 1 + map_overhead(1);
  if (acl_count > 0) need += 1;  // an xattr block, when they do not fit in the inode
  UEXT_TRY(prepare_quota(owner.uid, new_inode_gid(parent, owner), new_inode_projid(parent)));
  UEXT_ASSIGN_OR_RETURN(alloc::Reservation space, reserve(need, kDirGrowthBlocks));
  alloc::ReservationScope scope(&space);

  uint32_t credits = kNewInodeCredits + dir_add_credits(*vol_, parent) + 3;
  if (is_dir) credits += dir_init_credits(*vol_, parent);
  if (slow_symlink) credits += map_credits(*vol_, parent, 1);
  credits += acl_count * xattr_set_credits(*vol_);
  credits += OrphanList::kAddCredits + 1;  // undoing a failure, below
  UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(credits));
  InodeRecord child;
  bool orphaned = false;
  auto make = [&]() -> Status {
    UEXT_ASSIGN_OR_RETURN(child, new_inode(h, parent, mode, owner));
    if (acls.access) UEXT_TRY(xattr_set(*vol_, h, child, kAclAccessName, *acls.access, 0, *blocks_));
    if (acls.default_acl) UEXT_TRY(xattr_set(*vol_, h, child, kAclDefaultName, *acls.default_acl, 0, *blocks_));
    if (S_ISCHR(mode) || S_ISBLK(mode)) {
      UEXT_ASSIGN_OR_RETURN(child, vol_->update_inode(h, child.ino, false, [&](disk::Inode& in) {
        disk::set_inode_device(in, {rdev_major, rdev_minor});
      }));
    } else if (S_ISLNK(mode) && !slow_symlink) {
      // A fast symlink keeps its target in i_block, without a block map.
      UEXT_ASSIGN_OR_RETURN(child, vol_->update_inode(h, child.ino, false, [&](disk::Inode& in) {
        in.i_flags &= ~disk::inode_flag::kExtents;
        in.set_i_block_bytes(std::as_bytes(std::span(symlink_target)));
        in.i_size = symlink_target.size();
      }));
    } else if (slow_symlink) {
      UEXT_ASSIGN_OR_RETURN(auto runs, map_or_allocate(*vol_, h, child, 0, 1, *blocks_));
      if (runs.empty() || runs[0].physical == 0) return Error(EIO, "symlink block was not allocated");
      std::vector<std::byte> block(vol_->block_size());
      std::memcpy(block.data(), symlink_target.data(), symlink_target.size());
      UEXT_TRY(vol_->device().write(runs[0].physical * vol_->block_size(), block));
      UEXT_ASSIGN_OR_RETURN(child, vol_->update_inode(h, child.ino, false,
                                                      [&](disk::Inode& in) { in.i_size = symlink_target.size(); }));
    } else if (is_dir) {
      UEXT_TRY(dir_init(*vol_, h, child, parent.ino, *blocks_));
    }
    UEXT_TRY(dir_add_entry(*vol_, h, parent, name, child.ino, ftype_of(mode), *blocks_));
    return touch_dir(*vol_, h, parent.ino, is_dir ? 1 : 0, now());
  };
  Status done = in_handle(h, "create", parent.ino, [&]() -> Status {
    Status made = make();
    if (!made.ok() && child.ino != 0) {
      // The handle commits what it changed, the new inode included: a
      // failure after it was allocated (a slow symlink's block write, a
      // directory that cannot take the name) would leave it unnamed. As
      // ext4 does, it loses its link and goes through the orphan list.
      auto unlinked = vol_->update_inode(h, child.ino, false, [](disk::Inode& in) { in.i_links_count = 0; });
      orphaned = unlinked.ok() && orphans_.add(*vol_, h, child.ino).ok();
      h.set_consistent(orphaned);
    }
    return made;
  });
  if (orphaned) {
    // Freed now; if that fails too, the next open finishes it.
    if (auto gone = load_inode(child.ino); gone.ok()) (void)delete_inode(*gone);
  }
  UEXT_TRY(done);
  UEXT_ASSIGN_OR_RETURN(child, load_inode(child.ino));
  return to_stat(vol_->sb(), child);
}

// ext4 keeps a project-inherit directory's tree in its project: a name in
// it may only be given to an inode of the same project (EXDEV otherwise, so
// that mv copies instead).
static Status check_project(const InodeRecord& dir, const InodeRecord& child, std::string_view name) {
  if (!(dir.inode.i_flags & disk::inode_flag::kProjinherit) || dir.inode.i_projid == child.inode.i_projid) return {};
  return Error(EXDEV, fmt::format("{}: inode {} is in project {}, directory inode {} keeps project {}", name, child.ino,
                                  child.inode.i_projid, dir.ino, dir.inode.i_projid));
}

Result<Stat> FilesystemImpl::link(Ino ino, Ino new_dir, std::string_view new_name) {
  UEXT_TRY(check_writable());
  UEXT_TRY(check_name(new_name));
  {
    // The type first, without locks: a directory is refused before any
    // lock is taken in an order that would not suit it.
    UEXT_ASSIGN_OR_RETURN(Stat st, stat(ino));
    if (S_ISDIR(st.mode)) return Error(EPERM, fmt::format("inode {}: hard links to directories are not allowed", ino));
  }
  auto dir_lock = itable_.lock(new_dir);
  UEXT_ASSIGN_OR_RETURN(InodeRecord parent, load_inode(new_dir));
  if (!S_ISDIR(parent.inode.i_mode)) return Error(ENOTDIR, fmt::format("inode {}: Not a directory", new_dir));
  if (parent.inode.i_links_count == 0) return Error(ENOENT, fmt::format("inode {}: directory was removed", new_dir));
  auto child_lock = itable_.lock(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord child, load_inode(ino));
  if (child.inode.i_links_count == 0) return Error(ENOENT, fmt::format("inode {}: file was removed", ino));
  if (child.inode.i_links_count >= kMaxLinks) return Error(EMLINK, fmt::format("inode {}: Too many links", ino));
  UEXT_TRY(check_project(parent, child, new_name));
  UEXT_ASSIGN_OR_RETURN(auto existing, dir_lookup(*vol_, parent, new_name));
  if (existing) return Error(EEXIST, fmt::format("{}: File exists", new_name));
  UEXT_ASSIGN_OR_RETURN(alloc::Reservation space, reserve(kDirGrowthBlocks, kDirGrowthBlocks));
  alloc::ReservationScope scope(&space);
  UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(dir_add_credits(*vol_, parent) + 3));
  const disk::Timestamp t = now();
  UEXT_TRY(in_handle(h, "link", ino, [&]() -> Status {
    UEXT_TRY(dir_add_entry(*vol_, h, parent, new_name, ino, ftype_of(child.inode.i_mode), *blocks_));
    UEXT_ASSIGN_OR_RETURN(child, vol_->update_inode(h, ino, false, [&](disk::Inode& in) {
      ++in.i_links_count;
      in.i_ctime = t;
    }));
    return touch_dir(*vol_, h, parent.ino, 0, t);
  }));
  Stat st = to_stat(vol_->sb(), child);
  overlay_cached(st);
  return st;
}

Status FilesystemImpl::unlink(Ino dir, std::string_view name) { return remove_name(dir, name, false); }
Status FilesystemImpl::rmdir(Ino dir, std::string_view name) { return remove_name(dir, name, true); }

Status FilesystemImpl::remove_name(Ino dir, std::string_view name, bool want_dir) {
  UEXT_TRY(check_writable());
  if (want_dir && name == "..") return Error(ENOTEMPTY, "..: Directory not empty");
  UEXT_TRY(check_name(name));
  auto dir_lock = itable_.lock(dir);
  UEXT_ASSIGN_OR_RETURN(InodeRecord parent, load_inode(dir));
  if (!S_ISDIR(parent.inode.i_mode)) return Error(ENOTDIR, fmt::format("inode {}: Not a directory", dir));
  UEXT_ASSIGN_OR_RETURN(auto found, dir_lookup(*vol_, parent, name));
  if (!found) return Error(ENOENT, fmt::format("{}: No such file or directory", name));
  auto child_lock = itable_.lock(found->ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord child, load_inode(found->ino));
  const bool is_dir = S_ISDIR(child.inode.i_mode);
  if (want_dir && !is_dir) return Error(ENOTDIR, fmt::format("{}: Not a directory", name));
  if (!want_dir && is_dir) return Error(EISDIR, fmt::format("{}: Is a directory", name));
  if (is_dir) {
    UEXT_ASSIGN_OR_RETURN(bool empty, dir_is_empty(*vol_, child));
    if (!empty) return Error(ENOTEMPTY, fmt::format("{}: Directory not empty", name));
  }
  const uint32_t credits = dir_change_credits(*vol_, parent) + 3 + OrphanList::kAddCredits;
  UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(credits));
  const disk::Timestamp t = now();
  UEXT_TRY(in_handle(h, want_dir ? "rmdir" : "unlink", dir, [&]() -> Status {
    UEXT_TRY(dir_remove_entry(*vol_, h, parent, name));
    UEXT_ASSIGN_OR_RETURN(child, vol_->update_inode(h, child.ino, false, [&](disk::Inode& in) {
      in.i_links_count = is_dir ? 0 : static_cast<uint16_t>(in.i_links_count - (in.i_links_count > 0));
      in.i_ctime = t;
    }));
    if (child.inode.i_links_count == 0) UEXT_TRY(orphans_.add(*vol_, h, child.ino));
    return touch_dir(*vol_, h, parent.ino, is_dir ? -1 : 0, t);
  }));
  dir_lock.unlock();
  if (child.inode.i_links_count != 0) return {};
  UEXT_ASSIGN_OR_RETURN(child, load_inode(child.ino));
  return maybe_delete(child);
}

// Collects `dir` and its ancestors up to the root (callers hold rename_mu_,
// so no directory moves meanwhile).
static Result<std::vector<Ino>> ancestors(Filesystem& fs, Ino dir) {
  std::vector<Ino> chain{dir};
  while (chain.back() != kRootIno) {
    if (chain.size() > static_cast<size_t>(kMaxDepth)) {
      return Error(kErrCorrupted, fmt::format("inode {}: directory ancestry loops", dir));
    }
    UEXT_ASSIGN_OR_RETURN(Ino up, fs.lookup(chain.back(), ".."));
    if (up == chain.back()) break;
    chain.push_back(up);
  }
  return chain;
}

Status FilesystemImpl::rename(Ino old_dir, std::string_view old_name, Ino new_dir, std::string_view new_name,
                              unsigned flags, const Owner& whiteout_owner) {
  UEXT_TRY(check_writable());
  // An exchange keeps both names, so it goes with neither of the others.
  if ((flags & ~(kRenameNoReplace | kRenameExchange | kRenameWhiteout)) != 0 ||
      ((flags & kRenameExchange) && (flags & (kRenameNoReplace | kRenameWhiteout)))) {
    return Error(EINVAL, fmt::format("rename: unsupported flags {:#x}", flags));
  }
  UEXT_TRY(check_name(old_name));
  UEXT_TRY(check_name(new_name));
  const bool exchange = flags & kRenameExchange;
  const bool whiteout = flags & kRenameWhiteout;
  const bool same_dir = old_dir == new_dir;
  if (same_dir && old_name == new_name) {
    UEXT_TRY(lookup(old_dir, old_name));
    return {};
  }

  std::unique_lock<base::OrderedMutex> rename_lock;
  std::vector<Ino> old_chain, new_chain;
  if (!same_dir) {
    rename_lock = std::unique_lock(rename_mu_);
    UEXT_ASSIGN_OR_RETURN(old_chain, ancestors(*this, old_dir));
    UEXT_ASSIGN_OR_RETURN(new_chain, ancestors(*this, new_dir));
  }
  auto in_chain = [](const std::vector<Ino>& chain, Ino ino) {
    return std::find(chain.begin(), chain.end(), ino) != chain.end();
  };
  // The two directories: an ancestor before its descendant, else by number.
  InodeTable::Lock first_lock, second_lock;
  if (same_dir) {
    first_lock = itable_.lock(old_dir);
  } else {
    bool old_first = in_chain(new_chain, old_dir) ? true
                     : in_chain(old_chain, new_dir) ? false
                                                    : old_dir < new_dir;
    first_lock = itable_.lock(old_first ? old_dir : new_dir);
    second_lock = itable_.lock(old_first ? new_dir : old_dir);
  }
  UEXT_ASSIGN_OR_RETURN(InodeRecord old_parent, load_inode(old_dir));
  InodeRecord new_parent_storage;
  if (!same_dir) {
    UEXT_ASSIGN_OR_RETURN(new_parent_storage, load_inode(new_dir));
  }
  InodeRecord& new_parent = same_dir ? old_parent : new_parent_storage;
  if (!S_ISDIR(old_parent.inode.i_mode)) return Error(ENOTDIR, fmt::format("inode {}: Not a directory", old_dir));
  if (!S_ISDIR(new_parent.inode.i_mode)) return Error(ENOTDIR, fmt::format("inode {}: Not a directory", new_dir));
  if (new_parent.inode.i_links_count == 0) return Error(ENOENT, fmt::format("inode {}: directory was removed", new_dir));

  UEXT_ASSIGN_OR_RETURN(auto src_found, dir_lookup(*vol_, old_parent, old_name));
  if (!src_found) return Error(ENOENT, fmt::format("{}: No such file or directory", old_name));
  UEXT_ASSIGN_OR_RETURN(auto dst_found, dir_lookup(*vol_, new_parent, new_name));
  const Ino src_ino = src_found->ino;
  const std::optional<Ino> dst_ino = dst_found ? std::optional<Ino>(dst_found->ino) : std::nullopt;
  if (exchange && !dst_ino) return Error(ENOENT, fmt::format("{}: No such file or directory", new_name));
  if ((flags & kRenameNoReplace) && dst_ino) return Error(EEXIST, fmt::format("{}: File exists", new_name));
  if (!same_dir) {
    if (in_chain(new_chain, src_ino)) {
      return Error(EINVAL, fmt::format("{}: cannot move a directory into itself", old_name));
    }
    if (dst_ino && in_chain(old_chain, *dst_ino)) {
      return exchange ? Error(EINVAL, fmt::format("{}: cannot exchange a directory with its ancestor", new_name))
                      : Error(ENOTEMPTY, fmt::format("{}: Directory not empty", new_name));
    }
  }
  if (dst_ino && *dst_ino == src_ino) return {};  // two names of one inode: nothing to do

  // The children, by inode number.
  InodeTable::Lock child_a, child_b;
  if (dst_ino) {
    child_a = itable_.lock(std::min(src_ino, *dst_ino));
    child_b = itable_.lock(std::max(src_ino, *dst_ino));
  } else {
    child_a = itable_.lock(src_ino);
  }
  UEXT_ASSIGN_OR_RETURN(InodeRecord src, load_inode(src_ino));
  InodeRecord dst;
  if (dst_ino) {
    UEXT_ASSIGN_OR_RETURN(dst, load_inode(*dst_ino));
  }
  UEXT_TRY(check_project(new_parent, src, new_name));
  if (exchange) UEXT_TRY(check_project(old_parent, dst, old_name));
  const bool src_dir = S_ISDIR(src.inode.i_mode);
  const bool dst_dir = dst_ino && S_ISDIR(dst.inode.i_mode);
  if (dst_ino && !exchange) {
    if (src_dir && !dst_dir) return Error(ENOTDIR, fmt::format("{}: Not a directory", new_name));
    if (!src_dir && dst_dir) return Error(EISDIR, fmt::format("{}: Is a directory", new_name));
    if (dst_dir) {
      UEXT_ASSIGN_OR_RETURN(bool empty, dir_is_empty(*vol_, dst));
      if (!empty) return Error(ENOTEMPTY, fmt::format("{}: Directory not empty", new_name));
    }
  }
  const bool dir_nlink = vol_->sb().has_ro_compat(disk::ro_compat::kDirNlink);
  if (!same_dir && !dir_nlink) {
    // A directory arriving adds a link to its new parent (unless one leaves).
    bool adds = (src_dir && !dst_dir) || (exchange && src_dir != dst_dir && src_dir);
    bool adds_old = exchange && dst_dir && !src_dir;
    if ((adds && new_parent.inode.i_links_count >= kMaxLinks) ||
        (adds_old && old_parent.inode.i_links_count >= kMaxLinks)) {
      return Error(EMLINK, fmt::format("{}: Too many links", new_name));
    }
  }

  // A directory changing parents has its ".." rewritten inside the handle,
  // after both names changed. Its block is read and judged now, so that a
  // read error or a damaged block fails the rename before anything changed
  // (ext4_rename_dir_prepare); the names' blocks were read by the lookups.
  auto check_dotdot = [&](const InodeRecord& dir, Ino parent) -> Status {
    UEXT_ASSIGN_OR_RETURN(auto up, dir_lookup(*vol_, dir, ".."));
    if (!up || up->ino != parent) {
      return vol_->found_corrupt(
          Error(kErrCorrupted, fmt::format("inode {}: \"..\" does not name its parent, inode {}", dir.ino, parent)),
          "rename", dir.ino, 0);
    }
    return {};
  };
  if (!same_dir && src_dir) UEXT_TRY(check_dotdot(src, old_dir));
  if (!same_dir && exchange && dst_dir) UEXT_TRY(check_dotdot(dst, new_dir));

  if (whiteout) {
    UEXT_TRY(prepare_quota(whiteout_owner.uid, new_inode_gid(old_parent, whiteout_owner),
                           new_inode_projid(old_parent)));
  }
  // A name the directory has room for goes in on a full filesystem (the
  // growth is left out of the reservation when it does not fit), but not
  // with a whiteout, whose inode comes first and would be left unnamed.
  UEXT_ASSIGN_OR_RETURN(alloc::Reservation space, reserve(dst_ino ? 0 : kDirGrowthBlocks, whiteout ? 0 : kDirGrowthBlocks));
  alloc::ReservationScope scope(&space);
  const uint32_t credits = dir_add_credits(*vol_, new_parent) + dir_change_credits(*vol_, old_parent) +
                           dir_change_credits(*vol_, new_parent) + 2 * dir_change_credits(*vol_, src) + 6 +
                           OrphanList::kAddCredits + (whiteout ? kNewInodeCredits + 1 : 0);
  UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(credits));
  const disk::Timestamp t = now();
  bool dst_unlinked = false;
  UEXT_TRY(in_handle(h, "rename", src.ino, [&]() -> Status {
    int old_delta = 0, new_delta = 0;
    auto set_ctime = [&](Ino ino) -> Status {
      auto r = vol_->update_inode(h, ino, false, [&](disk::Inode& in) { in.i_ctime = t; });
      if (!r.ok()) return std::move(r).error();
      return {};
    };
    if (exchange) {
      UEXT_TRY(dir_set_entry(*vol_, h, old_parent, old_name, dst.ino, ftype_of(dst.inode.i_mode)));
      UEXT_TRY(dir_set_entry(*vol_, h, new_parent, new_name, src.ino, ftype_of(src.inode.i_mode)));
      if (!same_dir) {
        if (src_dir) {
          UEXT_TRY(dir_set_entry(*vol_, h, src, "..", new_dir, disk::ftype::kDirectory));
          --old_delta;
          ++new_delta;
        }
        if (dst_dir) {
          UEXT_TRY(dir_set_entry(*vol_, h, dst, "..", old_dir, disk::ftype::kDirectory));
          --new_delta;
          ++old_delta;
        }
      }
      UEXT_TRY(set_ctime(src.ino));
      UEXT_TRY(set_ctime(dst.ino));
    } else {
      // The whiteout's inode first: with no inode free (ENOSPC) nothing
      // has changed yet.
      std::optional<InodeRecord> wh;
      if (whiteout) {
        UEXT_ASSIGN_OR_RETURN(InodeRecord made, new_inode(h, old_parent, S_IFCHR, whiteout_owner));
        UEXT_ASSIGN_OR_RETURN(made, vol_->update_inode(h, made.ino, false, [](disk::Inode& in) {
          disk::set_inode_device(in, {0, 0});
        }));
        wh = made;
      }
      if (dst_ino) {
        UEXT_TRY(dir_set_entry(*vol_, h, new_parent, new_name, src.ino, ftype_of(src.inode.i_mode)));
        UEXT_ASSIGN_OR_RETURN(dst, vol_->update_inode(h, dst.ino, false, [&](disk::Inode& in) {
          in.i_links_count = dst_dir ? 0 : static_cast<uint16_t>(in.i_links_count - (in.i_links_count > 0));
          in.i_ctime = t;
        }));
        if (dst_dir) --new_delta;  // the replaced directory's ".."
        if (dst.inode.i_links_count == 0) {
          UEXT_TRY(orphans_.add(*vol_, h, dst.ino));
          dst_unlinked = true;
        }
      } else {
        UEXT_TRY(dir_add_entry(*vol_, h, new_parent, new_name, src.ino, ftype_of(src.inode.i_mode), *blocks_));
      }
      if (wh) {
        UEXT_TRY(dir_set_entry(*vol_, h, old_parent, old_name, wh->ino, disk::ftype::kCharDev));
      } else {
        UEXT_TRY(dir_remove_entry(*vol_, h, old_parent, old_name));
      }
      if (src_dir && !same_dir) {
        UEXT_TRY(dir_set_entry(*vol_, h, src, "..", new_dir, disk::ftype::kDirectory));
        --old_delta;
        ++new_delta;
      }
      UEXT_TRY(set_ctime(src.ino));
    }
    if (same_dir) return touch_dir(*vol_, h, old_dir, old_delta + new_delta, t);
    UEXT_TRY(touch_dir(*vol_, h, old_dir, old_delta, t));
    return touch_dir(*vol_, h, new_dir, new_delta, t);
  }));
  if (!dst_unlinked) return {};
  first_lock.unlock();
  second_lock.unlock();
  if (rename_lock.owns_lock()) rename_lock.unlock();
  UEXT_ASSIGN_OR_RETURN(dst, load_inode(dst.ino));
  return maybe_delete(dst);
}

}  // namespace uext::fs
