// File contents and attributes: write, truncate and other setattr changes,
// fallocate, SEEK_DATA/SEEK_HOLE, fsync, statfs and extended attributes.
//
// Data reaches the image before the metadata that points at it commits
// (ordered mode): write() allocates blocks inside a handle, writes the
// bytes to them, then changes i_size and stops the handle; the commit that
// makes the new mapping durable flushes the device first.
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "disk/dirent.h"
#include "disk/features.h"
#include "fs/block_map.h"
#include "fs/filesystem_impl.h"
#include "fs/map_writer.h"
#include "fs/posix_acl.h"
#include "fs/xattr_writer.h"
#include "vm/registry.h"

namespace uext::fs {

namespace {

// Blocks one write() handle maps at most (32 MiB with 4 KiB blocks):
// bounds the credits and the reservation of each step.
constexpr uint64_t kWriteChunkBlocks = 8192;

}  // namespace

// How many new extents one handle may create, so its credits stay well
// inside what one transaction can hold.
uint32_t FilesystemImpl::extents_per_handle(const InodeRecord& rec) {
  const uint32_t cap = vol_->journal()->max_transaction_blocks();
  uint32_t k = 16;
  while (k > 1 && cap != 0 && map_credits(*vol_, rec, k) + convert_credits(*vol_, rec, k) + 8 > cap / 2) k /= 2;
  return k;
}

Result<size_t> FilesystemImpl::write(Ino ino, uint64_t offset, std::span<const std::byte> buf,
                                     const WriteOptions& options) {
  UEXT_TRY(check_writable());
  auto answer = [&](size_t n) {
    if (options.accepted) options.accepted(n);
  };
  if (buf.empty() || vm::in_mapping(buf.data(), buf.size())) {
    // Not a server's buffer: the setid bits go in a step of their own.
    if (options.drop_setid && !buf.empty()) {
      auto lock = itable_.lock(ino);
      UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
      UEXT_TRY(drop_setid_locked(rec, options));
    }
    UEXT_ASSIGN_OR_RETURN(size_t n, write(ino, offset, buf));
    answer(n);
    return n;
  }
  bool called = false;
  const std::function<void(size_t)> once = [&](size_t n) {
    called = true;
    answer(n);
  };
  UEXT_ASSIGN_OR_RETURN(size_t n, write_locked_or_cached(ino, offset, buf, &once, &options));
  if (!called) answer(n);
  return n;
}

Status FilesystemImpl::drop_setid_locked(InodeRecord& rec, const WriteOptions& options) {
  if (!options.drop_setid) return {};
  const uint32_t perm = rec.inode.i_mode & 07777;
  const uint32_t kept = mode_without_setid(perm);
  if (kept == perm || !S_ISREG(rec.inode.i_mode)) return {};
  SetAttr attr;
  attr.mode = kept;
  UEXT_TRY(setattr_locked(rec, attr));
  if (options.setid_dropped) options.setid_dropped(kept);
  return {};
}

Result<size_t> FilesystemImpl::write(Ino ino, uint64_t offset, std::span<const std::byte> buf) {
  UEXT_TRY(check_writable());
  if (buf.empty()) return size_t{0};
  if (vm::in_mapping(buf.data(), buf.size())) return bounce_write(ino, offset, buf);
  return write_locked_or_cached(ino, offset, buf, nullptr, nullptr);
}

Result<size_t> FilesystemImpl::write_locked_or_cached(Ino ino, uint64_t offset, std::span<const std::byte> buf,
                                                      const std::function<void(size_t)>* accepted,
                                                      const WriteOptions* options) {
  auto lock = itable_.lock(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  if (S_ISDIR(rec.inode.i_mode)) return Error(EISDIR, fmt::format("inode {}: Is a directory", ino));
  if (!S_ISREG(rec.inode.i_mode)) return Error(EINVAL, fmt::format("inode {}: not a regular file", ino));
  const uint64_t end = offset + buf.size();
  if (end < offset || end > max_file_bytes(*vol_, rec)) {
    return Error(EFBIG, fmt::format("inode {}: File too large (a write ending at byte {} passes the limit of {})",
                                    ino, end, max_file_bytes(*vol_, rec)));
  }
  if (options) UEXT_TRY(drop_setid_locked(rec, *options));
  if (uses_delalloc(rec)) {
    // mtime and ctime, like the size, reach the disk with the data.
    UEXT_ASSIGN_OR_RETURN(size_t n, cached_write(rec, offset, buf, accepted));
    lock.unlock();
    UEXT_TRY(balance_dirty(ino));
    if (cache_->too_many_files()) UEXT_TRY(limit_open_memfds());
    return n;
  }
  const uint64_t bs = vol_->block_size();
  const uint64_t first = offset / bs;
  const uint64_t last = (end - 1) / bs;

  // The partly written blocks at either end are written whole: their other
  // bytes come from the file as it is (zeros for holes and unwritten
  // extents, and past the end of the file).
  auto edge_block = [&](uint64_t block) -> Result<std::vector<std::byte>> {
    std::vector<std::byte> data(bs);
    UEXT_TRY(read_data(rec, block * bs, data));
    const uint64_t from = std::max(offset, block * bs);
    const uint64_t to = std::min(end, (block + 1) * bs);
    std::memcpy(data.data() + (from - block * bs), buf.data() + (from - offset), to - from);
    return data;
  };
  std::optional<std::vector<std::byte>> head, tail;
  if (offset % bs != 0 || (first == last && end % bs != 0)) {
    UEXT_ASSIGN_OR_RETURN(head, edge_block(first));
  }
  if (last != first && end % bs != 0) {
    UEXT_ASSIGN_OR_RETURN(tail, edge_block(last));
  }

  // Writes logical blocks [b, b + n) that now live at `physical`.
  auto write_run = [&](uint64_t b, uint64_t n, uint64_t physical) -> Status {
    uint64_t i = 0;
    while (i < n) {
      const uint64_t block = b + i;
      if (block == first && head) {
        UEXT_TRY(vol_->device().write((physical + i) * bs, *head));
        ++i;
        continue;
      }
      if (block == last && tail) {
        UEXT_TRY(vol_->device().write((physical + i) * bs, *tail));
        ++i;
        continue;
      }
      uint64_t j = i;
      while (j < n && !(b + j == last && tail)) ++j;
      const uint64_t from = (b + i) * bs;
      UEXT_TRY(vol_->device().write((physical + i) * bs, buf.subspan(from - offset, (j - i) * bs)));
      i = j;
    }
    return {};
  };

  const uint32_t k = extents_per_handle(rec);
  // Inside handle `h`: maps (allocating holes) and writes blocks [pos, pos
  // + chunk), then sets the size that covers them; *mapped says how many
  // blocks were mapped.
  auto write_chunk_in = [&](journal::Handle& h, uint64_t pos, uint64_t chunk, uint64_t* mapped) -> Status {
    MapOptions options;
    options.max_new_extents = k;
    // Streams written through (no delayed allocation) get windows too.
    options.alloc.owner = ino;
    options.alloc.prealloc = prealloc_window((std::max<uint64_t>(rec.inode.i_size, end) + bs - 1) / bs);
    UEXT_ASSIGN_OR_RETURN(auto runs, map_or_allocate(*vol_, h, rec, pos, chunk, *blocks_, options));
    bool any_unwritten = false;
    for (const auto& r : runs) {
      if (r.physical == 0) return Error(EIO, fmt::format("inode {}: block {} left unmapped", ino, r.logical));
      // data_err=abort: before the handle stops, so its mapping never commits.
      if (Status io = write_run(r.logical, r.length, r.physical); !io.ok()) return data_write_failed(std::move(io));
      any_unwritten |= r.unwritten;
      *mapped = r.logical + r.length - pos;
    }
    if (any_unwritten) UEXT_TRY(convert_unwritten(*vol_, h, rec, pos, *mapped, *blocks_));
    const uint64_t written_to = std::min(end, (pos + *mapped) * bs);
    const disk::Timestamp t = now();
    UEXT_ASSIGN_OR_RETURN(rec, vol_->update_inode(h, ino, false, [&](disk::Inode& in) {
      if (written_to > in.i_size) in.i_size = written_to;
      in.i_mtime = in.i_ctime = t;
    }));
    return {};
  };

  // Up to kWriteChunkBlocks blocks from logical block `pos` in one handle,
  // which commits them and the size that covers them.
  auto write_chunk = [&](uint64_t pos, uint64_t* mapped) -> Status {
    const uint64_t chunk = std::min<uint64_t>(last - pos + 1, kWriteChunkBlocks);
    UEXT_ASSIGN_OR_RETURN(auto before, map_blocks(*vol_, rec, pos, chunk));
    uint64_t holes = 0;
    uint32_t unwritten_runs = 0;
    for (const auto& r : before) {
      if (r.physical == 0) holes += r.length;
      if (r.unwritten) ++unwritten_runs;
    }
    alloc::Reservation space;
    if (holes) {
      UEXT_ASSIGN_OR_RETURN(space, reserve(holes + map_overhead(holes)));
    }
    alloc::ReservationScope scope(&space);
    // Blocks allocated past the end of the file must not outlive a failed
    // chunk (e2fsck would call the size wrong). As ext4_write_begin does,
    // the failing handle puts the inode on the orphan list, so that its
    // allocation and the pending truncate commit together.
    const uint64_t eof_block = (rec.inode.i_size + bs - 1) / bs;
    const bool may_allocate_past_eof = holes > 0 && pos + chunk > eof_block;
    const uint32_t credits = map_credits(*vol_, rec, k) + convert_credits(*vol_, rec, std::min(unwritten_runs, k) + 1) +
                             2 + (may_allocate_past_eof ? OrphanList::kAddCredits : 0);
    UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(credits));
    bool orphaned = false;
    Status done = in_handle(h, "write", ino, [&]() -> Status {
      Status wrote = write_chunk_in(h, pos, chunk, mapped);
      // An aborted journal takes the whole handle with it: nothing to undo.
      if (!wrote.ok() && may_allocate_past_eof && !vol_->journal()->aborted()) {
        orphaned = orphans_.add(*vol_, h, ino).ok();
        h.set_consistent(orphaned);
      }
      return wrote;
    }, Volume::Changes::kEachStepWhole);
    if (orphaned) {
      // What the failed chunk mapped past i_size goes; a failure here
      // leaves the inode on the orphan list for the next open to finish.
      UEXT_ASSIGN_OR_RETURN(rec, load_inode(ino));
      UEXT_TRY(finish_truncate(rec, rec.inode.i_size));
    }
    UEXT_TRY(done);
    if (*mapped == 0) return Error(EIO, fmt::format("inode {}: no progress mapping block {}", ino, pos));
    return {};
  };
  // A chunk that fails after others went in ends the write short, as
  // write(2) does: an error then would deny bytes the file already shows.
  uint64_t pos = first;
  while (pos <= last) {
    uint64_t mapped = 0;
    Status chunk_done = write_chunk(pos, &mapped);
    if (!chunk_done.ok()) {
      if (pos == first) return std::move(chunk_done).error();
      break;
    }
    pos += mapped;
  }
  const uint64_t written_end = std::min(end, pos * bs);
  if (auto file = cache_ ? cache_->get(ino, false) : nullptr) {
    // Pages cached for a mapping see the write too (and a dirty one
    // written back later carries it).
    std::lock_guard page_lock(file->mu);
    for (auto it = file->pages().lower_bound(offset / cache::kPageSize);
         it != file->pages().end() && it->first * cache::kPageSize < written_end; ++it) {
      const uint64_t page_start = it->first * cache::kPageSize;
      const uint64_t from = std::max(offset, page_start);
      const uint64_t to = std::min(written_end, page_start + cache::kPageSize);
      std::memcpy(file->data(it->first) + (from - page_start), buf.data() + (from - offset), to - from);
    }
    if (file->size_known) file->set_size(std::max(file->size, written_end));
  }
  return written_end - offset;
}

Result<Stat> FilesystemImpl::setattr(Ino ino, const SetAttr& attr) {
  UEXT_TRY(check_writable());
  auto lock = itable_.lock(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  UEXT_TRY(setattr_locked(rec, attr));
  Stat st = to_stat(vol_->sb(), rec);
  overlay_cached(st);
  return st;
}

bool FilesystemImpl::atime_due_locked(const InodeRecord& rec, AtimeUpdate policy, const disk::Timestamp& t) {
  // Times from the page cache count (a write not yet on disk).
  Stat st = to_stat(vol_->sb(), rec);
  overlay_cached(st);
  return atime_due_for(st, policy, t);
}

bool FilesystemImpl::atime_due_for(const Stat& st, AtimeUpdate policy, const disk::Timestamp& t) {
  if (policy == AtimeUpdate::kAlways) return !(st.atime == Time{t.sec, t.nsec});
  // relatime_need_update's rule: atime not newer than mtime or ctime, or a day old.
  auto before = [](const Time& a, const Time& b) { return a.sec < b.sec || (a.sec == b.sec && a.nsec < b.nsec); };
  constexpr int64_t kDay = 24 * 60 * 60;
  return !before(st.mtime, st.atime) || !before(st.ctime, st.atime) || t.sec - st.atime.sec >= kDay;
}

Result<bool> FilesystemImpl::atime_due(Ino ino, AtimeUpdate policy) {
  if (policy == AtimeUpdate::kNever || !vol_->writable()) return false;
  auto lock = itable_.lock_shared(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  return atime_due_locked(rec, policy, now());
}

Status FilesystemImpl::touch_atime(Ino ino, AtimeUpdate policy) {
  // Most reads need nothing: found out without excluding other readers.
  UEXT_ASSIGN_OR_RETURN(bool due, atime_due(ino, policy));
  if (!due) return {};
  auto lock = itable_.lock(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  const disk::Timestamp t = now();
  if (!atime_due_locked(rec, policy, t)) return {};  // another reader's update came first
  SetAttr attr;
  attr.atime = Time{t.sec, t.nsec};
  attr.keep_ctime = true;
  return setattr_locked(rec, attr);
}

Status FilesystemImpl::setattr_locked(InodeRecord& rec, const SetAttr& attr) {
  const Ino ino = rec.ino;
  if (attr.size) {
    if (S_ISDIR(rec.inode.i_mode)) return Error(EISDIR, fmt::format("inode {}: Is a directory", ino));
    if (!S_ISREG(rec.inode.i_mode)) return Error(EINVAL, fmt::format("inode {}: not a regular file", ino));
    if (*attr.size > max_file_bytes(*vol_, rec)) {
      return Error(EFBIG, fmt::format("inode {}: File too large (size {})", ino, *attr.size));
    }
    UEXT_TRY(truncate_locked(rec, *attr.size));
  }
  if (auto file = cache_ ? cache_->get(ino, false) : nullptr) {
    // Times set now win over those of earlier writes still in the cache.
    std::lock_guard page_lock(file->mu);
    if (attr.mtime || attr.mtime_now || attr.size) file->times_pending = false;
  }
  if (attr.mode || attr.uid || attr.gid || attr.atime || attr.mtime || attr.atime_now || attr.mtime_now ||
      !attr.size) {
    // chmod of a file with an access ACL rewrites the ACL in the same
    // transaction (ext4_setattr's posix_acl_chmod).
    std::optional<std::string> chmod_acl;
    alloc::Reservation acl_space;
    if (attr.mode && vol_->options().posix_acl && !S_ISLNK(rec.inode.i_mode)) {
      UEXT_ASSIGN_OR_RETURN(auto current, find_xattr(rec, kAclAccessName));
      if (current) {
        auto acl = acl_parse(*current);
        if (!acl.ok()) {
          return Error(kErrCorrupted, fmt::format("inode {}: stored {}: {}", ino, kAclAccessName,
                                                  acl.error().message()));
        }
        if (!acl->empty()) {
          acl_chmod(*acl, *attr.mode);
          std::string value = acl_format(*acl);
          if (value != *current) chmod_acl = std::move(value);
        }
      }
      if (chmod_acl) {
        UEXT_ASSIGN_OR_RETURN(acl_space, reserve(1));
      }
    }
    if (attr.uid || attr.gid) UEXT_TRY(prepare_quota(attr.uid, attr.gid, std::nullopt));
    std::optional<alloc::ReservationScope> acl_scope;
    if (chmod_acl) acl_scope.emplace(&acl_space);
    UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(2 + (chmod_acl ? xattr_set_credits(*vol_) : 0)));
    const disk::Timestamp t = now();
    // Times past what the inode can hold are clamped, as the kernel clamps
    // utimensat's to s_time_min/s_time_max (a tar member dated year 292e9).
    const bool extra_times = vol_->sb().inode_size() > disk::kGoodOldInodeSize;
    auto to_disk = [extra_times](const Time& v) {
      return disk::clamp_timestamp(disk::Timestamp{v.sec, v.nsec}, extra_times);
    };
    auto updated = vol_->update_inode(h, ino, false, [&](disk::Inode& in) {
      if (attr.mode) in.i_mode = static_cast<uint16_t>((in.i_mode & S_IFMT) | (*attr.mode & 07777));
      if (attr.uid) in.i_uid = *attr.uid;
      if (attr.gid) in.i_gid = *attr.gid;
      if (attr.atime) in.i_atime = to_disk(*attr.atime);
      if (attr.mtime) in.i_mtime = to_disk(*attr.mtime);
      if (attr.atime_now) in.i_atime = t;
      if (attr.mtime_now) in.i_mtime = t;
      if (!attr.keep_ctime) in.i_ctime = t;
    });
    Status done = updated.ok() ? Status() : Status(updated.error());
    if (updated.ok() && chmod_acl) {
      done = xattr_set(*vol_, h, *updated, kAclAccessName, *chmod_acl, 0, *blocks_);
    }
    UEXT_TRY(vol_->finish_handle(h, "setattr", ino, std::move(done)));
    rec = std::move(*updated);
  }
  return {};
}

Status FilesystemImpl::fallocate(Ino ino, int mode, uint64_t offset, uint64_t length) {
  UEXT_TRY(check_writable());
  if (mode & ~(kFallocKeepSize | kFallocPunchHole | kFallocZeroRange)) {
    return Error(EOPNOTSUPP, fmt::format("fallocate: mode {:#x} is not supported", mode));
  }
  const bool punch = mode & kFallocPunchHole;
  const bool zero = mode & kFallocZeroRange;
  const bool keep_size = mode & kFallocKeepSize;
  if (punch && zero) return Error(EINVAL, "fallocate: PUNCH_HOLE and ZERO_RANGE together");
  if (punch && !keep_size) return Error(EOPNOTSUPP, "fallocate: PUNCH_HOLE needs KEEP_SIZE");
  if (length == 0) return Error(EINVAL, "fallocate: length 0");
  auto lock = itable_.lock(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  if (S_ISDIR(rec.inode.i_mode)) return Error(EISDIR, fmt::format("inode {}: Is a directory", ino));
  if (!S_ISREG(rec.inode.i_mode)) return Error(ENODEV, fmt::format("inode {}: not a regular file", ino));
  uint64_t end = offset + length;
  if (end < offset || end > max_file_bytes(*vol_, rec)) {
    return Error(EFBIG, fmt::format("inode {}: File too large (range ends at {})", ino, end));
  }
  UEXT_TRY(flush_and_drop(rec, offset, end));
  UEXT_ASSIGN_OR_RETURN(rec, load_inode(ino));
  const bool extents = rec.inode.has_flag(disk::inode_flag::kExtents);
  if (!punch && !extents) {
    return Error(EOPNOTSUPP, fmt::format("inode {}: preallocation needs an extent-mapped file", ino));
  }
  const uint64_t bs = vol_->block_size();

  // Zeroes bytes [from, to) inside one block where that block holds data.
  auto zero_partial = [&](uint64_t from, uint64_t to) -> Status {
    if (from >= to) return {};
    UEXT_ASSIGN_OR_RETURN(auto runs, map_blocks(*vol_, rec, from / bs, 1));
    if (runs.empty() || runs[0].physical == 0 || runs[0].unwritten) return {};
    std::vector<std::byte> zeros(to - from);
    return vol_->device().write(runs[0].physical * bs + from % bs, zeros);
  };
  auto zero_edges = [&](uint64_t from, uint64_t to) -> Status {
    const uint64_t head_end = std::min(to, (from + bs - 1) / bs * bs);
    UEXT_TRY(zero_partial(from, head_end));
    const uint64_t tail_start = std::max(head_end, to / bs * bs);
    return zero_partial(tail_start, to);
  };
  auto touch = [&](std::optional<uint64_t> new_size) -> Status {
    UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(2));
    const disk::Timestamp t = now();
    auto updated = vol_->update_inode(h, ino, false, [&](disk::Inode& in) {
      if (new_size && *new_size > in.i_size) in.i_size = *new_size;
      in.i_mtime = in.i_ctime = t;
    });
    Status stopped = h.stop();
    if (!updated.ok()) return std::move(updated).error();
    rec = std::move(*updated);
    // A cached size outranks the disk's in stat, write and faults, and it
    // outlives the writeback above when no page was dirty (a truncate sets
    // it): it must grow with the file, or stat keeps the old end and
    // mappings refuse the new pages.
    if (new_size) {
      if (auto file = cache_ ? cache_->get(ino, false) : nullptr) {
        std::lock_guard page_lock(file->mu);
        if (file->size_known && rec.inode.i_size > file->size) file->set_size(rec.inode.i_size);
      }
    }
    return stopped;
  };
  // Maps [first, first + count) as unwritten extents, in handle-sized steps,
  // after reserving every block it may need.
  auto preallocate = [&](uint64_t first, uint64_t count) -> Status {
    if (count == 0) return {};
    UEXT_ASSIGN_OR_RETURN(auto before, map_blocks(*vol_, rec, first, count));
    uint64_t holes = 0;
    for (const auto& r : before) holes += r.physical == 0 ? r.length : 0;
    if (holes == 0) return {};
    UEXT_ASSIGN_OR_RETURN(alloc::Reservation space, reserve(holes + map_overhead(holes)));
    alloc::ReservationScope scope(&space);
    const uint32_t k = extents_per_handle(rec);
    uint64_t pos = first;
    while (pos < first + count) {
      UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(map_credits(*vol_, rec, k) + 2));
      uint64_t mapped = 0;
      UEXT_TRY(in_handle(h, "fallocate", ino, [&]() -> Status {
        MapOptions options;
        options.unwritten = true;
        options.max_new_extents = k;
        UEXT_ASSIGN_OR_RETURN(auto runs, map_or_allocate(*vol_, h, rec, pos, first + count - pos, *blocks_, options));
        if (!runs.empty()) mapped = runs.back().logical + runs.back().length - pos;
        return {};
      }, Volume::Changes::kEachStepWhole));
      if (mapped == 0) return Error(EIO, fmt::format("inode {}: no progress preallocating block {}", ino, pos));
      pos += mapped;
    }
    return {};
  };

  if (punch) {
    const uint64_t size_end = (rec.inode.i_size + bs - 1) / bs * bs;
    if (offset >= size_end) return {};
    end = std::min(end, size_end);
    UEXT_TRY(zero_edges(offset, end));
    const uint64_t fb = (offset + bs - 1) / bs, lb = end / bs;
    if (lb > fb) UEXT_TRY(punch_range(*vol_, rec, fb, lb - fb, *blocks_));
    return touch(std::nullopt);
  }
  if (zero) {
    UEXT_TRY(zero_edges(offset, end));
    const uint64_t fb = (offset + bs - 1) / bs, lb = end / bs;
    if (lb > fb) {
      UEXT_TRY(punch_range(*vol_, rec, fb, lb - fb, *blocks_));
      UEXT_ASSIGN_OR_RETURN(rec, load_inode(ino));
    }
    UEXT_TRY(preallocate(offset / bs, (end + bs - 1) / bs - offset / bs));
    return touch(keep_size ? std::nullopt : std::optional<uint64_t>(end));
  }
  UEXT_TRY(preallocate(offset / bs, (end + bs - 1) / bs - offset / bs));
  return touch(keep_size ? std::nullopt : std::optional<uint64_t>(end));
}

Result<uint64_t> FilesystemImpl::seek(Ino ino, uint64_t offset, int whence) {
  if (whence != SEEK_DATA && whence != SEEK_HOLE) return Error(EINVAL, fmt::format("seek: whence {} is not SEEK_DATA or SEEK_HOLE", whence));
  // Delayed pages count as data: write them back first so the map says so.
  auto lock = itable_.lock(ino);
  UEXT_TRY(writeback_inode(ino));
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  const uint64_t size = rec.inode.i_size;
  if (offset >= size) return Error(ENXIO, fmt::format("inode {}: offset {} is at or past the end ({})", ino, offset, size));
  if (!has_block_map(rec)) return whence == SEEK_DATA ? offset : size;
  const uint64_t bs = vol_->block_size();
  const uint64_t first = offset / bs;
  const uint64_t end_block = std::min((size + bs - 1) / bs, max_logical_blocks(*vol_, rec));
  if (first >= end_block) return whence == SEEK_DATA ? Result<uint64_t>(Error(ENXIO, "no data past the mapped range")) : Result<uint64_t>(offset);
  UEXT_ASSIGN_OR_RETURN(auto runs, map_blocks(*vol_, rec, first, end_block - first));
  for (const auto& r : runs) {
    const bool data = r.physical != 0 && !r.unwritten;
    if (data == (whence == SEEK_DATA)) {
      uint64_t pos = std::max(offset, r.logical * bs);
      if (pos < size) return pos;
    }
  }
  if (whence == SEEK_HOLE) return size;
  return Error(ENXIO, fmt::format("inode {}: no data at or after offset {}", ino, offset));
}

Status FilesystemImpl::fsync(Ino ino, bool datasync) { return fsync_impl(ino, datasync, nullptr); }

Status FilesystemImpl::fsync(Ino ino, bool datasync, uint64_t& wb_err_seen) {
  return fsync_impl(ino, datasync, &wb_err_seen);
}

Status FilesystemImpl::fsync_impl(Ino ino, bool datasync, uint64_t* since) {
  if (!vol_->writable()) return {};
  {
    auto lock = itable_.lock(ino);
    // A failure here is recorded before it is checked, so the caller hears
    // of it through the sequence like every other description.
    Status written = writeback_inode(ino);
    UEXT_TRY(check_wb_error(ino, since));
    UEXT_TRY(written);
  }
  // The commit below makes every namespace change durable; writing the
  // other files' delayed data back first keeps each of them consistent with
  // the names and sizes it commits (as ext3's ordered mode did: stronger
  // than ext4, which lets other files' delayed data wait).
  UEXT_TRY(writeback_all());
  // Everything uext changed is in the running transaction or already home:
  // one commit (which flushes the device before its commit block) and a
  // flush for data written in place make it all durable.
  UEXT_TRY(vol_->sync());
  return vol_->device().flush();
}

Result<FsStats> FilesystemImpl::statfs() {
  const disk::Superblock sb = vol_->superblock_snapshot();
  FsStats st;
  st.block_size = sb.block_size();
  uint64_t overhead = sb.s_overhead_clusters;
  if (overhead == 0 && groups_) {
    overhead = sb.s_first_data_block;
    for (uint32_t g = 0; g < groups_->group_count(); ++g) overhead += groups_->base_meta_blocks(g) + 2 + groups_->itable_blocks();
    if (sb.has_compat(disk::compat::kHasJournal) && sb.s_journal_inum != 0) {
      auto j = vol_->read_inode(sb.s_journal_inum);
      if (j.ok()) overhead += j->inode.i_size / st.block_size;
    }
  }
  st.blocks = sb.s_blocks_count > overhead ? sb.s_blocks_count - overhead : 0;
  st.total_blocks = sb.s_blocks_count;
  // Blocks freed by the running transaction count as free, as the kernel's
  // counter has them, though they are handed out only after its commit.
  // Free space is net of what reservations (delayed allocation) hold.
  uint64_t free = sb.s_free_blocks_count;
  if (blocks_) free -= std::min<uint64_t>(free, blocks_->reserved_blocks());
  st.free_blocks = free;
  // Like the kernel, keep back the root reserve and the 2% (at most 4096
  // blocks) that ext4 holds for metadata (s_resv_clusters).
  const uint64_t held = sb.s_r_blocks_count + std::min<uint64_t>(sb.s_blocks_count / 50, 4096);
  st.available_blocks = free > held ? free - held : 0;
  st.files = sb.s_inodes_count;
  st.free_files = sb.s_free_inodes_count;
  st.name_max = disk::kNameMax;
  return st;
}

Status FilesystemImpl::tune(const Tune& t) {
  const disk::Superblock sb = vol_->superblock_snapshot();
  if (t.label && t.label->size() > sb.s_volume_name.size()) {
    return Error(EINVAL, fmt::format("label '{}' is longer than {} bytes", *t.label, sb.s_volume_name.size()));
  }
  if (t.errors_behavior && (*t.errors_behavior < 1 || *t.errors_behavior > 3)) {
    return Error(EINVAL, fmt::format("errors behaviour {}: 1, 2 or 3", *t.errors_behavior));
  }
  if (t.reserved_blocks && *t.reserved_blocks > sb.s_blocks_count / 2) {
    return Error(EINVAL, fmt::format("{} reserved blocks: more than half of the {} blocks", *t.reserved_blocks,
                                     sb.s_blocks_count));
  }
  for (const auto& [id, what] : {std::pair{t.reserved_uid, "user"}, std::pair{t.reserved_gid, "group"}}) {
    if (id && *id > 0xFFFF) return Error(EINVAL, fmt::format("reserved {} {}: the superblock holds 16 bits", what, *id));
  }
  UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(1));
  Status done = vol_->update_superblock(h, [&](disk::Superblock& s) {
    if (t.label) {
      s.s_volume_name.fill(0);
      std::memcpy(s.s_volume_name.data(), t.label->data(), t.label->size());
    }
    if (t.errors_behavior) s.s_errors = *t.errors_behavior;
    if (t.reserved_blocks) s.s_r_blocks_count = *t.reserved_blocks;
    if (t.reserved_uid) s.s_def_resuid = static_cast<uint16_t>(*t.reserved_uid);
    if (t.reserved_gid) s.s_def_resgid = static_cast<uint16_t>(*t.reserved_gid);
    if (t.max_mount_count) s.s_max_mnt_count = *t.max_mount_count;
    if (t.check_interval) s.s_checkinterval = *t.check_interval;
  });
  return vol_->finish_handle(h, "tune", 0, std::move(done));
}

Status FilesystemImpl::setxattr(Ino ino, std::string_view name, std::string_view value, int flags) {
  if (flags & ~(XATTR_CREATE | XATTR_REPLACE | kXattrAclKillSgid))
    return Error(EINVAL, fmt::format("setxattr: bad flags {:#x}", flags));
  return change_xattr(ino, name, value, flags);
}

Status FilesystemImpl::removexattr(Ino ino, std::string_view name) {
  return change_xattr(ino, name, std::nullopt, 0);
}

Status FilesystemImpl::change_xattr(Ino ino, std::string_view name, std::optional<std::string_view> value,
                                    int flags) {
  UEXT_TRY(check_writable());
  if (name == kAclAccessName || name == kAclDefaultName) return change_acl(ino, name == kAclAccessName, value, flags);
  flags &= ~kXattrAclKillSgid;
  auto lock = itable_.lock(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  UEXT_ASSIGN_OR_RETURN(alloc::Reservation space, reserve(1));
  alloc::ReservationScope scope(&space);
  UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(xattr_set_credits(*vol_) + 1));
  return in_handle(h, "setxattr", ino, [&]() -> Status {
    UEXT_TRY(xattr_set(*vol_, h, rec, name, value, flags, *blocks_));
    const disk::Timestamp t = now();
    auto r = vol_->update_inode(h, ino, false, [&](disk::Inode& in) { in.i_ctime = t; });
    if (!r.ok()) return std::move(r).error();
    return {};
  });
}

// As ext4_set_acl: the value is checked as the kernel's
// posix_acl_from_xattr and posix_acl_valid would; an access ACL sets the
// permission bits (posix_acl_update_mode) and is dropped when the mode
// alone says as much; both changes share one transaction.
Status FilesystemImpl::change_acl(Ino ino, bool access, std::optional<std::string_view> value, int flags) {
  const std::string_view name = access ? kAclAccessName : kAclDefaultName;
  if (!vol_->options().posix_acl) {
    return Error(EOPNOTSUPP, fmt::format("inode {}: {}: POSIX ACLs are off (noacl)", ino, name));
  }
  std::optional<Acl> acl;
  if (value) {
    auto parsed = acl_parse(*value);
    if (!parsed.ok()) return std::move(parsed).error().with_context(fmt::format("inode {}: {}", ino, name));
    if (!parsed->empty()) acl = std::move(*parsed);  // only a header: removal, as posix_acl_from_xattr
  }
  auto lock = itable_.lock(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  if (S_ISLNK(rec.inode.i_mode)) {
    return Error(EOPNOTSUPP, fmt::format("inode {}: {}: symbolic links have no ACLs", ino, name));
  }
  if (!access && !S_ISDIR(rec.inode.i_mode)) {
    if (!acl) return {};
    return Error(EACCES, fmt::format("inode {}: {}: only directories have a default ACL", ino, name));
  }
  uint32_t mode = rec.inode.i_mode;
  if (access && acl) {
    const AclModeBits bits = acl_mode_bits(*acl);
    mode = (mode & ~0777u) | bits.bits;
    if (flags & kXattrAclKillSgid) mode &= ~static_cast<uint32_t>(S_ISGID);
    if (bits.equivalent) acl.reset();
  }
  std::optional<std::string> stored;
  if (acl) stored = acl_format(*acl);
  UEXT_ASSIGN_OR_RETURN(auto current, find_xattr(rec, name));
  if (!stored && !current && mode == rec.inode.i_mode) return {};  // nothing to remove, as ext4

  UEXT_ASSIGN_OR_RETURN(alloc::Reservation space, reserve(1));
  alloc::ReservationScope scope(&space);
  UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(xattr_set_credits(*vol_) + 1));
  return in_handle(h, "set_acl", ino, [&]() -> Status {
    if (stored || current) {
      std::optional<std::string_view> v;
      if (stored) v = *stored;
      UEXT_TRY(xattr_set(*vol_, h, rec, name, v, 0, *blocks_));
    }
    const disk::Timestamp t = now();
    auto r = vol_->update_inode(h, ino, false, [&](disk::Inode& in) {
      in.i_mode = static_cast<uint16_t>(mode);
      in.i_ctime = t;
    });
    if (!r.ok()) return std::move(r).error();
    return {};
  });
}

Result<std::optional<std::string>> FilesystemImpl::find_xattr(const InodeRecord& rec, std::string_view name) {
  UEXT_ASSIGN_OR_RETURN(auto attrs, read_xattrs(rec));
  for (auto& a : attrs) {
    if (a.name == name) return std::optional<std::string>(std::move(a.value));
  }
  return std::optional<std::string>();
}

}  // namespace uext::fs
