// Inode life and death: setting up and tearing down the writable state,
// new inodes, references from open files, deletion, and the orphan list
// that makes deletion and truncation survive a crash.
#include <sys/stat.h>
#include <time.h>

#include <fmt/format.h>

#include <random>

#include "base/quiet_thread.h"
#include "disk/features.h"
#include "fs/block_map.h"
#include "fs/dir_writer.h"
#include "fs/filesystem_impl.h"
#include "fs/map_writer.h"
#include "fs/xattr_writer.h"
#include "uext/caller.h"
#include "vm/mapper.h"

namespace uext::fs {

namespace {
// Flags a new inode takes from its directory (the kernel's
// EXT4_FL_INHERITED, less what uext does not implement), masked by type as
// ext4_mask_flags does: directory-only flags stay on directories, and
// only regular files and directories keep the rest.
constexpr uint32_t kInheritedFlags = disk::inode_flag::kSecrm | disk::inode_flag::kUnrm |
                                     disk::inode_flag::kSync | disk::inode_flag::kNodump |
                                     disk::inode_flag::kNoatime | disk::inode_flag::kDirsync |
                                     disk::inode_flag::kTopdir | disk::inode_flag::kProjinherit;
constexpr uint32_t kDirOnlyFlags = disk::inode_flag::kDirsync | disk::inode_flag::kTopdir;
constexpr uint32_t kOtherFlags = disk::inode_flag::kNodump | disk::inode_flag::kNoatime;

uint32_t random_generation() {
  static thread_local std::mt19937 rng{std::random_device{}()};
  return rng();
}
}  // namespace

FilesystemImpl::~FilesystemImpl() { (void)close(); }

Status FilesystemImpl::check_writable() const {
  if (!vol_->writable()) return Error(EROFS, "the image is open read-only");
  return {};
}

disk::Timestamp FilesystemImpl::now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return {static_cast<int64_t>(ts.tv_sec), static_cast<uint32_t>(ts.tv_nsec)};
}

Status FilesystemImpl::start_writing() {
  groups_ = std::make_unique<alloc::GroupBitmaps>(*vol_);
  blocks_ = std::make_unique<alloc::BlockAllocator>(*groups_);
  inodes_ = std::make_unique<alloc::InodeAllocator>(*groups_);
  make_page_cache();
  const Options& o = vol_->options();
  // Quota first: no inode may change before its charge can move.
  UEXT_ASSIGN_OR_RETURN(auto quota, QuotaFiles::load(*vol_));
  if (quota) {
    // A quota file grows by a block at a time, from the root reserve if
    // need be (ext4 charges its quota files to nobody).
    quota->set_grow([this](journal::Handle& h, uint32_t qino, uint64_t logical) -> Result<uint64_t> {
      UEXT_ASSIGN_OR_RETURN(InodeRecord rec, vol_->read_inode(qino));
      UEXT_ASSIGN_OR_RETURN(alloc::Reservation space, blocks_->reserve(0));
      alloc::AllocOptions options;
      options.use_reserved = true;
      UEXT_TRY(grow_reservation(space, 1 + map_overhead(1), options));
      alloc::ReservationScope scope(&space);
      MapOptions map;
      map.alloc.owner = qino;
      map.alloc.use_reserved = true;
      UEXT_ASSIGN_OR_RETURN(auto runs, map_or_allocate(*vol_, h, rec, logical, 1, *blocks_, map));
      if (runs.empty() || runs.front().physical == 0) {
        return Error(EIO, fmt::format("inode {}: quota file block {} left unmapped", qino, logical));
      }
      const uint64_t physical = runs.front().physical;
      UEXT_TRY(h.create(physical, [](std::span<std::byte>) {}));
      return physical;
    });
    vol_->set_quota(std::move(quota));
  }
  if (o.writeback_interval_ms > 0) writeback_thread_ = base::start_quiet_thread([this] { writeback_loop(); });
  std::string problem;
  UEXT_TRY(orphans_.load(*vol_, &problem));
  return recover_orphans();
}

Status FilesystemImpl::prepare_quota(std::optional<uint32_t> uid, std::optional<uint32_t> gid,
                                     std::optional<uint32_t> projid) {
  QuotaFiles* quota = vol_->quota();
  if (!quota) return {};
  return quota->prepare({uid, gid, projid});
}

uint32_t FilesystemImpl::new_inode_gid(const InodeRecord& parent, const Owner& owner) {
  // A setgid directory hands its group down (inode_init_owner).
  return (parent.inode.i_mode & S_ISGID) ? parent.inode.i_gid : owner.gid;
}

uint32_t FilesystemImpl::new_inode_projid(const InodeRecord& parent) const {
  // A directory marked project-inherit hands its project down (ext4 with
  // the project feature); any other new inode is in the default project 0.
  return vol_->sb().has_ro_compat(disk::ro_compat::kProject) && (parent.inode.i_flags & disk::inode_flag::kProjinherit)
             ? parent.inode.i_projid
             : 0;
}

void FilesystemImpl::make_page_cache() {
  const Options& o = vol_->options();
  cache::CacheOptions co;
  co.max_bytes = o.page_cache_bytes;
  co.dirty_limit_bytes = o.dirty_limit_bytes;
  co.dirty_background_bytes = o.dirty_limit_bytes / 4;
  co.dirty_expire_ms = o.dirty_expire_ms;
  co.writeback_interval_ms = o.writeback_interval_ms;
  cache_ = std::make_unique<cache::PageCache>(co);
}

Status FilesystemImpl::sync() {
  Status written = writeback_all();
  if (QuotaFiles* quota = vol_->quota(); quota && written.ok()) written = quota->flush();
  check_reservations("at sync", false);
  Status committed = vol_->sync();
  UEXT_TRY(written);
  return committed;
}

void FilesystemImpl::stop_writeback() {
  {
    std::lock_guard lock(wb_mu_);
    wb_stop_ = true;
  }
  wb_cv_.notify_all();
  wb_progress_cv_.notify_all();
  if (writeback_thread_.joinable()) writeback_thread_.join();
}

Status FilesystemImpl::close() {
  if (closed_) return {};
  closed_ = true;
  Status first;
  // Mappings left open stop being served (they turn read-only); what
  // they stored is in the cache and is written back below.
  if (mapper_) mapper_->detach_all();
  stop_writeback();
  if (vol_->writable()) {
    first = writeback_all();
    // Unlinked inodes still referenced go now, as at unmount.
    for (const auto& [ino, refs] : itable_.referenced()) {
      Status s = release(ino, refs);
      if (first.ok() && !s.ok()) first = s;
    }
    // A truncate that a device error stopped part-way left its inode on
    // the orphan list with blocks past i_size; finish it as the next open
    // would, so that an image closed clean has no orphan pending (e2fsck
    // -n does not process the list and would call the size wrong).
    Status orphans = recover_orphans();
    if (first.ok() && !orphans.ok()) first = orphans;
    if (QuotaFiles* quota = vol_->quota()) {
      Status q = quota->flush();
      if (first.ok() && !q.ok()) first = q;
    }
    // Nothing else runs now: every reserved block is a cached file's.
    check_reservations("at close", true);
  }
  Status closed = vol_->close();
  if (first.ok() && !closed.ok()) first = closed;
  return first;
}

bool FilesystemImpl::may_use_root_reserve() const {
  if (vol_->options().use_root_reserve) return true;
  const Caller* caller = CallerScope::current();
  if (!caller) return false;
  // As ext4_has_free_clusters decides, cheapest question first.
  const Options& o = vol_->options();
  const uint32_t uid = o.reserved_uid.value_or(vol_->sb().s_def_resuid);
  const uint32_t gid = o.reserved_gid.value_or(vol_->sb().s_def_resgid);
  return caller->fsuid() == uid || (gid != 0 && caller->in_group(gid)) || caller->has_sys_resource();
}

Status FilesystemImpl::grow_reservation(alloc::Reservation& r, uint64_t blocks, alloc::AllocOptions& options) {
  options.use_reserved = vol_->options().use_root_reserve;
  Status grown = blocks_->grow(r, blocks, options);
  if (!grown.ok() && grown.error().code() == ENOSPC && !options.use_reserved && may_use_root_reserve()) {
    options.use_reserved = true;
    grown = blocks_->grow(r, blocks, options);
  }
  return grown;
}

Result<alloc::Reservation> FilesystemImpl::reserve(uint64_t blocks, uint64_t unlikely) {
  UEXT_ASSIGN_OR_RETURN(alloc::Reservation r, blocks_->reserve(0));
  alloc::AllocOptions options;
  Status grown = grow_reservation(r, blocks, options);
  if (!grown.ok() && grown.error().code() == ENOSPC && blocks_->busy_blocks() > 0) {
    // Blocks freed by the running transaction come back once it commits.
    UEXT_TRY(vol_->sync());
    grown = blocks_->grow(r, blocks, options);
  }
  if (!grown.ok() && grown.error().code() == ENOSPC && unlikely > 0 &&
      blocks_->grow(r, blocks - std::min(unlikely, blocks), options).ok()) {
    // A full filesystem still takes a name its directory has room for, as
    // ext4 does (it reserves nothing for a directory's growth): go ahead
    // with the rest, and let a growth that does come fail cleanly.
    r.allow_short(options.use_reserved);
    return r;
  }
  UEXT_TRY(grown);
  return r;
}

uint64_t FilesystemImpl::map_overhead(uint64_t data_blocks) const {
  // An extent leaf holds (block size - 12) / 12 entries and an indirect
  // block block size / 4 pointers; the worst case is one entry per block,
  // each level above needing as many blocks again at most, plus a new
  // level or two at the top.
  uint64_t per_block = (vol_->block_size() - 12) / 12;
  uint64_t leaves = (data_blocks + per_block - 1) / per_block;
  return 2 * leaves + 6;
}

Result<journal::Handle> FilesystemImpl::start(uint32_t credits) {
  uint32_t cap = vol_->journal()->max_transaction_blocks();
  if (cap != 0 && credits > cap) credits = cap;
  return vol_->start(credits);
}

Result<InodeRecord> FilesystemImpl::new_inode(journal::Handle& handle, const InodeRecord& parent, uint32_t mode,
                                              const Owner& owner) {
  const bool is_dir = S_ISDIR(mode);
  const uint32_t changes_before = handle.changes();
  UEXT_ASSIGN_OR_RETURN(uint32_t ino, inodes_->allocate(handle, parent.ino, is_dir));
  const disk::Superblock& sb = vol_->sb();
  const disk::Timestamp t = now();
  const uint32_t gid = new_inode_gid(parent, owner);
  if ((parent.inode.i_mode & S_ISGID) && is_dir) mode |= S_ISGID;  // and its setgid bit to subdirectories
  uint32_t flags = parent.inode.i_flags & kInheritedFlags;
  if (is_dir) {
    // as inherited
  } else if (S_ISREG(mode)) {
    flags &= ~kDirOnlyFlags;
  } else {
    flags &= kOtherFlags;
  }
  // Regular files, directories and (slow) symlinks map their blocks with
  // extents on an extents filesystem; the symlink code clears the flag
  // again for a fast symlink.
  if (sb.has_incompat(disk::incompat::kExtents) && (S_ISREG(mode) || S_ISDIR(mode) || S_ISLNK(mode))) {
    flags |= disk::inode_flag::kExtents;
  }
  const uint32_t generation = random_generation();
  const uint32_t projid = new_inode_projid(parent);
  auto rec = vol_->update_inode(handle, ino, true, [&](disk::Inode& in) {
    in.i_mode = static_cast<uint16_t>(mode);
    in.i_uid = owner.uid;
    in.i_gid = gid;
    in.i_links_count = is_dir ? 2 : 1;
    in.i_atime = in.i_mtime = in.i_ctime = in.i_crtime = t;
    in.i_flags = flags;
    in.i_generation = generation;
    in.i_projid = projid;
    if (flags & disk::inode_flag::kExtents) {
      // An empty extent root: header with no entries, depth 0.
      std::array<std::byte, 12> header{};
      header[0] = std::byte{0x0A};
      header[1] = std::byte{0xF3};
      header[4] = std::byte{4};  // eh_max: four entries fit in i_block
      in.set_i_block_bytes(header);
    }
  });
  if (!rec.ok()) {
    // The handle commits what it changed: a bitmap bit with no inode behind
    // it (the inode table block unreadable, say) would be a leak e2fsck
    // reports. The bit goes again in the same handle, touching the same
    // bitmap and descriptor blocks.
    if (inodes_->free(handle, ino, is_dir).ok()) {
      handle.step_consistent(changes_before);
    } else {
      handle.set_consistent(false);
    }
    return std::move(rec).error();
  }
  return std::move(*rec);
}

void FilesystemImpl::retain(Ino ino) { itable_.retain(ino); }

Status FilesystemImpl::release(Ino ino, uint64_t count) {
  if (itable_.release(ino, count) > 0 || !vol_->writable()) return {};
  // The last close: the preallocation window goes, as ext4 discards its
  // inode preallocations at release.
  blocks_->drop_window(ino);
  auto lock = itable_.lock(ino);
  if (itable_.refs(ino) > 0) return {};  // retained again meanwhile
  auto rec = vol_->read_inode(ino, true);
  // Gone already (deleted by another path), or still linked: nothing to do.
  if (!rec.ok() || rec->inode.i_links_count != 0 || rec->inode.i_mode == 0) return {};
  if (!orphans_.contains(ino)) return {};
  return delete_inode(*rec);
}

Status FilesystemImpl::maybe_delete(InodeRecord& rec) {
  if (rec.inode.i_links_count != 0 || itable_.refs(rec.ino) > 0) return {};
  return delete_inode(rec);
}

Status FilesystemImpl::delete_inode(InodeRecord& rec) {
  const uint32_t ino = rec.ino;
  const bool is_dir = S_ISDIR(rec.inode.i_mode);
  if (cache_) cache_->forget(ino);  // its pages and reservation go with it
  blocks_->drop_window(ino);
  if (has_block_map(rec)) {
    UEXT_TRY(truncate_blocks(*vol_, rec, 0, *blocks_));
  }
  const uint32_t credits = xattr_release_credits(*vol_) + OrphanList::kRemoveCredits +
                           alloc::InodeAllocator::kFreeCredits + 2;
  UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(credits));
  auto run = [&]() -> Status {
    if (rec.inode.i_file_acl != 0) UEXT_TRY(xattr_release_block(*vol_, h, rec, *blocks_));
    UEXT_TRY(orphans_.remove(*vol_, h, ino));
    const disk::Timestamp t = now();
    UEXT_ASSIGN_OR_RETURN(InodeRecord freed, vol_->update_inode(h, ino, false, [&](disk::Inode& in) {
      in.i_links_count = 0;
      in.i_size = 0;
      // e2fsck expects a deleted inode to say when it died.
      in.i_dtime = static_cast<uint32_t>(t.sec);
    }));
    if (QuotaFiles* quota = vol_->quota()) quota->discharge(h, ino, freed.inode);
    return inodes_->free(h, ino, is_dir);
  };
  return vol_->finish_handle(h, "delete_inode", ino, run());
}

Status FilesystemImpl::truncate_locked(InodeRecord& rec, uint64_t size) {
  blocks_->drop_window(rec.ino);
  if (auto file = cache_ ? cache_->get(rec.ino, false) : nullptr) {
    // Growing: the old last page, partly past the old end, gains blocks
    // inside the file. Write it back and write-protect it in mappings, so
    // that the next store to it reserves or allocates them (page_mkwrite),
    // as Linux's pagecache_isize_extended does.
    uint64_t old_end = 0;
    bool mapped = false;
    {
      std::lock_guard lock(file->mu);
      old_end = file->size_known ? file->size : rec.inode.i_size;
      mapped = file->mapped() && file->present(old_end / cache::kPageSize);
    }
    if (mapped && size > old_end && old_end % cache::kPageSize != 0) {
      UEXT_TRY(writepages(rec, *file));
      std::lock_guard lock(file->mu);
      UEXT_TRY(file->write_protect(old_end / cache::kPageSize, old_end / cache::kPageSize + 1));
    }
    // Cached pages past the new end go (their reservations with them), the
    // tail of a partial last page reads zeros; the cached size follows.
    std::lock_guard lock(file->mu);
    const uint64_t keep = (size + cache::kPageSize - 1) / cache::kPageSize;
    file->drop(keep, UINT64_MAX);
    if (size % cache::kPageSize != 0) {
      file->zero(size / cache::kPageSize, static_cast<uint32_t>(size % cache::kPageSize), cache::kPageSize);
    }
    file->set_size(size);
    file->times_pending = false;  // the truncate sets them, later
    trim_reservation(rec, *file);
  }
  const uint64_t old_size = rec.inode.i_size;
  if (size >= old_size) {
    // The old last page, partly past the old end, gains blocks inside the
    // file: write it back and write-protect it in mappings, so that the
    // next store to it reserves or allocates them (page_mkwrite), as
    // Linux's pagecache_isize_extended does.
    if (auto file = cache_ ? cache_->get(rec.ino, false) : nullptr; file && old_size % cache::kPageSize != 0) {
      const uint64_t last = old_size / cache::kPageSize;
      bool mapped = false;
      {
        std::lock_guard lock(file->mu);
        mapped = file->mapped() && file->present(last);
      }
      if (mapped) {
        UEXT_TRY(writepages(rec, *file));
        std::lock_guard lock(file->mu);
        UEXT_TRY(file->write_protect(last, last + 1));
      }
    }
    // Growing leaves a hole; blocks preallocated past the old size (KEEP_SIZE)
    // stay where they are.
    UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(2));
    const disk::Timestamp t = now();
    auto updated = vol_->update_inode(h, rec.ino, false, [&](disk::Inode& in) {
      in.i_size = size;
      in.i_mtime = in.i_ctime = t;
    });
    Status stopped = h.stop();
    if (!updated.ok()) return std::move(updated).error();
    UEXT_TRY(stopped);
    rec = std::move(*updated);
    return {};
  }
  // Shrinking: the new size and the orphan entry commit together, so a
  // crash before the blocks are all gone is finished at the next open.
  {
    UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(OrphanList::kAddCredits + 2));
    const disk::Timestamp t = now();
    auto run = [&]() -> Status {
      UEXT_TRY(orphans_.add(*vol_, h, rec.ino));
      UEXT_ASSIGN_OR_RETURN(rec, vol_->update_inode(h, rec.ino, false, [&](disk::Inode& in) {
        in.i_size = size;
        in.i_mtime = in.i_ctime = t;
      }));
      return {};
    };
    UEXT_TRY(vol_->finish_handle(h, "truncate", rec.ino, run()));
  }
  return finish_truncate(rec, size);
}

Status FilesystemImpl::finish_truncate(InodeRecord& rec, uint64_t size) {
  if (has_block_map(rec)) UEXT_TRY(truncate_blocks(*vol_, rec, size, *blocks_));
  // An unlinked inode (still held open) stays on the list until it goes.
  if (rec.inode.i_links_count == 0) return {};
  UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(OrphanList::kRemoveCredits + 1));
  Status removed = orphans_.remove(*vol_, h, rec.ino);
  Status stopped = h.stop();
  UEXT_TRY(removed);
  UEXT_TRY(stopped);
  UEXT_ASSIGN_OR_RETURN(rec, load_inode(rec.ino));
  return {};
}

Status FilesystemImpl::recover_orphans() {
  for (uint32_t ino : orphans_.snapshot()) {
    auto lock = itable_.lock(ino);
    auto rec = vol_->read_inode(ino, true);
    Status s;
    if (!rec.ok()) {
      // Nothing to finish for an inode that is not there: drop the link.
      UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(OrphanList::kRemoveCredits + 1));
      s = orphans_.remove(*vol_, h, ino);
      Status stopped = h.stop();
      if (s.ok()) s = stopped;
    } else if (rec->inode.i_links_count == 0) {
      s = delete_inode(*rec);
    } else {
      // A truncate was interrupted: i_size is already the new size, the
      // blocks past it are what remains to free.
      if (has_block_map(*rec)) s = truncate_blocks(*vol_, *rec, rec->inode.i_size, *blocks_);
      if (s.ok() && orphans_.contains(ino)) {
        UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(OrphanList::kRemoveCredits + 1));
        s = orphans_.remove(*vol_, h, ino);
        Status stopped = h.stop();
        if (s.ok()) s = stopped;
      }
    }
    if (!s.ok()) return std::move(s).error().with_context(fmt::format("finishing orphan inode {}", ino));
  }
  return {};
}

}  // namespace uext::fs
