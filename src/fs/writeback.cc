// Delayed allocation and writeback (the ext4 way): write() into space that
// has no blocks yet only reserves them -- the data blocks plus the worst
// case of tree blocks their extents could need -- and leaves the data in
// the page cache. writepages() later maps a whole run of dirty pages with
// one allocation request inside one journal handle, writes the data, and
// raises the on-disk i_size; the commit of that handle follows the data
// (ordered mode). ENOSPC can only come from the reservation, in the write()
// that asked for it.
//
// Lock order: the inode lock, then the journal handle, then the file's page
// mutex (CachedFile::mu), as in docs/DESIGN.md.
#include <sys/stat.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "disk/bytes.h"
#include "fs/block_map.h"
#include "fs/filesystem_impl.h"
#include "fs/map_writer.h"

namespace uext::fs {

using cache::CachedFile;
using cache::kPageSize;

namespace {

constexpr uint64_t kDeviceWriteBytes = 1 << 20;
// Blocks one writeback handle maps at most (32 MiB with 4 KiB blocks).
constexpr uint64_t kWritebackChunkBlocks = 8192;
// Background writeback lets go of the file's lock for dirty runs of at
// least this many pages (1 MiB); shorter ones are written under it.
constexpr uint64_t kAsyncMinPages = 256;

// The extent root's depth and entry count (i_block holds the header).
std::pair<uint16_t, uint16_t> extent_root(const disk::Inode& in) {
  auto raw = in.i_block_bytes();
  return {disk::le16(raw, 6), disk::le16(raw, 2)};
}

}  // namespace

bool FilesystemImpl::uses_delalloc(const InodeRecord& rec) const {
  return cache_ && vol_->options().delayed_allocation && S_ISREG(rec.inode.i_mode) &&
         rec.inode.has_flag(disk::inode_flag::kExtents) && vol_->block_size() <= kPageSize;
}

// Worst-case tree blocks for `blocks` delayed blocks becoming extents of a
// file whose extent root is as `rec` has it: nothing while they fit in the
// inode's four root slots, else a leaf per 170 new extents (leaves split
// half full), plus a new path to the root.
uint64_t FilesystemImpl::delalloc_meta(const InodeRecord& rec, uint64_t blocks) const {
  if (blocks == 0) return 0;
  auto [depth, entries] = extent_root(rec.inode);
  if (depth == 0 && entries + blocks <= 4) return 0;
  return depth + 2 + 2 * ((blocks + 169) / 170);
}

// Blocks to set aside after a writeback of a file of `size_blocks` blocks
// for its next one (alloc/prealloc_windows.h): none for small files, which
// pack together; for larger ones eight times their size, at most 128 MiB
// (an extent's most at 4 KiB blocks) and an eighth of the free space, so
// that a stream written back in pieces between other streams' pieces still
// comes out in one extent per window. ext4 makes its (hard) preallocations
// twice the size up to 8 MiB; a soft window costs nothing while unused, so
// it may be bigger, but it does push other files' allocations aside.
uint32_t FilesystemImpl::prealloc_window(uint64_t size_blocks) const {
  constexpr uint64_t kMinFileBytes = 1 << 20;
  constexpr uint64_t kMaxWindowBytes = 128 << 20;
  const uint64_t bs = vol_->block_size();
  if (size_blocks * bs < kMinFileBytes) return 0;
  const uint64_t free = static_cast<uint64_t>(std::max<int64_t>(groups_->unclaimed_free_blocks(), 0));
  return static_cast<uint32_t>(std::min({8 * size_blocks, kMaxWindowBytes / bs, free / 8}));
}

Status FilesystemImpl::reserve_delayed(const InodeRecord& rec, CachedFile& file, uint64_t new_pages) {
  const uint64_t bpp = kPageSize / vol_->block_size();
  const uint64_t total = (file.delayed_pages() + new_pages) * bpp;
  const uint64_t meta = delalloc_meta(rec, total);
  const uint64_t extra_meta = meta > file.reserved_meta ? meta - file.reserved_meta : 0;
  alloc::AllocOptions options;
  UEXT_TRY(grow_reservation(file.reservation, new_pages * bpp + extra_meta, options));
  file.reserved_meta += extra_meta;
  return {};
}

Result<size_t> FilesystemImpl::cached_write(InodeRecord& rec, uint64_t offset, std::span<const std::byte> buf,
                                            const std::function<void(size_t)>* accepted) {
  const uint32_t ino = rec.ino;
  const uint64_t bs = vol_->block_size();
  const uint64_t bpp = kPageSize / bs;
  const uint64_t end = offset + buf.size();
  const uint64_t first_page = offset / kPageSize;
  const uint64_t last_page = (end - 1) / kPageSize;
  auto file = cache_->get(ino, true);

  // Which pages will need blocks: those not yet delayed that hold a hole
  // (unwritten extents have their blocks already).
  UEXT_ASSIGN_OR_RETURN(auto runs, map_blocks(*vol_, rec, first_page * bpp,
                                               std::min((last_page + 1) * bpp, max_logical_blocks(*vol_, rec)) -
                                                   first_page * bpp));
  std::vector<bool> hole(last_page - first_page + 1, false);
  for (const auto& r : runs) {
    if (r.physical != 0) continue;
    for (uint64_t b = r.logical; b < r.logical + r.length; ++b) hole[b / bpp - first_page] = true;
  }

  uint64_t pages_ok = last_page - first_page + 1;
  {
    // Reserve: data blocks for new delayed pages, and the worst-case tree
    // blocks for the file's delayed total. On failure, write this file's
    // delayed pages back (its worst case becomes exact), let background
    // writeback do the others, commit, and try again; then settle for the
    // leading pages that fit (a short write), or ENOSPC.
    auto try_reserve = [&](uint64_t pages) -> Status {
      std::lock_guard lock(file->mu);
      uint64_t new_delayed = 0;
      // Over allocated or unwritten blocks (a rewrite, a preallocated
      // file) nothing needs space: skip the walk of the page map, whose
      // nodes are cache misses in a large file.
      const bool any_hole = std::find(hole.begin(), hole.begin() + static_cast<long>(pages), true) !=
                            hole.begin() + static_cast<long>(pages);
      auto it = any_hole ? file->pages().lower_bound(first_page) : file->pages().end();
      for (uint64_t i = 0; any_hole && i < pages; ++i) {
        while (it != file->pages().end() && it->first < first_page + i) ++it;
        const bool delayed = it != file->pages().end() && it->first == first_page + i &&
                             (it->second.flags & cache::kDelayed);
        if (hole[i] && !delayed) ++new_delayed;
      }
      return reserve_delayed(rec, *file, new_delayed);
    };
    Status reserved = try_reserve(pages_ok);
    if (!reserved.ok() && reserved.error().code() == ENOSPC) {
      UEXT_TRY(writepages(rec, *file));
      UEXT_TRY(flush_others(ino));
      UEXT_TRY(vol_->sync());
      reserved = try_reserve(pages_ok);
      while (!reserved.ok() && reserved.error().code() == ENOSPC && pages_ok > 1) {
        pages_ok /= 2;
        reserved = try_reserve(pages_ok);
      }
    }
    if (!reserved.ok()) return std::move(reserved).error().with_context(fmt::format("inode {}: write", ino));
  }
  const uint64_t write_end = std::min(end, (first_page + pages_ok) * kPageSize);

  std::lock_guard lock(file->mu);
  if (!file->size_known) {
    file->size = rec.inode.i_size;
    file->size_known = true;
  }
  UEXT_TRY(file->ensure(first_page + pages_ok));
  UEXT_TRY(file->for_each_page(first_page, first_page + pages_ok, [&](uint64_t index, cache::Page& page,
                                                                      bool added) -> Status {
    const uint64_t page_start = index * kPageSize;
    const uint64_t from = std::max(offset, page_start);
    const uint64_t to = std::min(write_end, page_start + kPageSize);
    // A new page the write covers only in part starts as the file has it
    // (zeros past its end); one it covers whole is left to the copy.
    if (added && (from != page_start || to != page_start + kPageSize)) {
      std::memset(file->data(index), 0, kPageSize);
      if (page_start < file->size) {
        const uint64_t disk_len = std::min<uint64_t>(kPageSize, rec.inode.i_size > page_start ? rec.inode.i_size - page_start : 0);
        if (disk_len > 0) {
          UEXT_TRY(read_data(rec, page_start, std::span<std::byte>(file->data(index), disk_len)));
        }
      }
    }
    file->mark_dirty(index, page, hole[index - first_page]);
    return {};
  }));
  // The pages are in place (and dirty, under the lock): the write can no
  // longer fail for want of space, and a server may answer now, while the
  // bytes are copied (a reader waits for `mu`).
  if (accepted) (*accepted)(write_end - offset);
  auto copy = file->copy_in(offset, buf.first(write_end - offset));
  const size_t copied = copy.ok() ? *copy : 0;
  const uint64_t copied_end = offset + copied;
  if (accepted && copied < write_end - offset) {
    // Already answered as written: the loss must reach fsync.
    cache_->wb_errors.record(ino, EIO,
                             fmt::format("inode {}: write at byte {} answered before its copy into the page cache "
                                         "failed ({})",
                                         ino, offset + copied, copy.ok() ? "short copy" : copy.error().message()));
  }
  if (copied < write_end - offset) {
    // The source faulted part-way (EFAULT when nothing came). Pages this
    // write marked that now lie wholly past the end of the file hold only
    // zeros: they go, with their reservation, rather than wait dirty for
    // writeback or a truncate. Those inside the file stay, as written.
    const uint64_t keep = (std::max(file->size, copied_end) + kPageSize - 1) / kPageSize;
    if (file->drop(std::max(keep, first_page), first_page + pages_ok) != 0) trim_reservation(rec, *file);
  }
  if (!copy.ok()) return std::move(copy).error();
  file->set_size(std::max(file->size, copied_end));
  const disk::Timestamp t = now();
  file->times_pending = true;
  file->mtime_sec = t.sec;
  file->mtime_nsec = t.nsec;
  file->last_used_ms = cache::PageCache::now_ms();
  return copied;
}

Status FilesystemImpl::data_write_failed(Status failure) {
  if (vol_->options().data_err_abort && vol_->journal()) {
    vol_->journal()->abort(failure.error().code(), "data_err=abort: " + failure.error().message());
  }
  return failure;
}

Status FilesystemImpl::writepages(InodeRecord& rec, CachedFile& file) {
  Status s = write_dirty_runs(rec, file);
  // Every failure counts for the file's descriptions (errseq), whoever
  // started the writeback; the pages that did not make it stay dirty.
  if (!s.ok()) cache_->wb_errors.record(rec.ino, s.error().code(), s.error().message());
  return s;
}

// The dirty runs of a file, as page ranges [first, end), with page_mkclean
// done on them for mapped files: a store from now on faults (and waits for
// the inode lock the caller holds), so the pages are stable while written.
// Caller holds the inode lock and file.mu.
static Result<std::vector<std::pair<uint64_t, uint64_t>>> collect_dirty_runs(CachedFile& file) {
  std::vector<std::pair<uint64_t, uint64_t>> dirty_runs;
  for (const auto& [index, page] : file.pages()) {
    if (!(page.flags & cache::kDirty)) continue;
    if (!dirty_runs.empty() && dirty_runs.back().second == index) {
      ++dirty_runs.back().second;
    } else {
      dirty_runs.emplace_back(index, index + 1);
    }
  }
  if (file.mapped()) {
    for (auto [first, end] : dirty_runs) UEXT_TRY(file.write_protect(first, end));
  }
  return dirty_runs;
}

Result<std::vector<BlockRun>> FilesystemImpl::map_for_writeback(journal::Handle& h, InodeRecord& rec, CachedFile& file,
                                                                const WritebackChunk& c) {
  const uint32_t ino = rec.ino;
  const uint64_t bs = vol_->block_size();
  alloc::ReservationScope scope(&file.reservation);
  MapOptions options;
  options.max_new_extents = c.max_new_extents;
  options.alloc.owner = ino;
  options.alloc.prealloc = c.prealloc;
  UEXT_ASSIGN_OR_RETURN(auto runs, map_or_allocate(*vol_, h, rec, c.pos, c.blocks, *blocks_, options));
  bool unwritten = false;
  uint64_t mapped = 0;
  for (const auto& r : runs) {
    if (r.physical == 0) return Error(EIO, fmt::format("inode {}: block {} left unmapped", ino, r.logical));
    unwritten |= r.unwritten;
    mapped = r.logical + r.length - c.pos;
  }
  // The conversion and the new i_size commit with the allocation, after
  // the data: the handle stays open until the data is written.
  if (unwritten) UEXT_TRY(convert_unwritten(*vol_, h, rec, c.pos, mapped, *blocks_));
  const uint64_t disk_size = std::min(c.size, (c.pos + mapped) * bs);
  if (disk_size > rec.inode.i_size || file.times_pending) {
    UEXT_ASSIGN_OR_RETURN(rec, vol_->update_inode(h, ino, false, [&](disk::Inode& in) {
      in.i_size = std::max<uint64_t>(in.i_size, disk_size);
      if (file.times_pending) {
        const disk::Timestamp w{file.mtime_sec, file.mtime_nsec};
        in.i_mtime = w;
        // A later change (chmod, link) keeps its newer ctime.
        if (w.sec > in.i_ctime.sec || (w.sec == in.i_ctime.sec && w.nsec > in.i_ctime.nsec)) in.i_ctime = w;
      }
    }));
    file.times_pending = false;
  }
  return runs;
}

Status FilesystemImpl::write_mapped_runs(const cache::CachedFile::Source& pages, const std::vector<BlockRun>& runs) {
  const uint64_t bs = vol_->block_size();
  for (const auto& r : runs) {
    const std::byte* src = pages.bytes + r.logical * bs;
    // In pieces of at most 1 MiB: single pwrites of 2 MiB and more into
    // the image's page cache were often several times slower per byte
    // here (1 GiB: 1.3-3.7 s against 0.3 s).
    for (uint64_t done = 0; done < r.length * bs;) {
      const uint64_t n = std::min<uint64_t>(r.length * bs - done, kDeviceWriteBytes);
      // The memfd holds the pages in file order from pages.fd_offset on.
      UEXT_TRY(vol_->device().write_data_from_file(r.physical * bs + done, std::span<const std::byte>(src + done, n),
                                                   pages.fd, pages.fd_offset + r.logical * bs + done));
      done += n;
    }
  }
  return {};
}

// What stays reserved after a writeback: the data and worst-case tree
// blocks of the pages still delayed. Caller holds file.mu.
void FilesystemImpl::settle_reservation(const InodeRecord& rec, CachedFile& file) {
  // Everything is on disk, i_size included: the disk is the truth again.
  if (file.dirty_pages() == 0 && !file.writeback_in_flight()) file.size_known = false;
  trim_reservation(rec, file);
}

void FilesystemImpl::trim_reservation(const InodeRecord& rec, CachedFile& file) {
  const uint64_t bpp = kPageSize / vol_->block_size();
  const uint64_t delayed_blocks = file.delayed_pages() * bpp;
  const uint64_t meta = delalloc_meta(rec, delayed_blocks);
  const uint64_t keep = delayed_blocks + meta;
  if (file.reservation.left() > keep) file.reservation.give_back(file.reservation.left() - keep);
  file.reserved_meta = std::min(meta, file.reservation.left());
}

Status FilesystemImpl::write_dirty_runs(InodeRecord& rec, CachedFile& file) {
  const uint32_t ino = rec.ino;
  const uint64_t bs = vol_->block_size();
  const uint64_t bpp = kPageSize / bs;
  // The inode lock (held by the caller) keeps anyone from dirtying or
  // dropping pages meanwhile; a background writeback of this file still in
  // flight ends first, so no two writes of one block are ever in flight.
  std::vector<std::pair<uint64_t, uint64_t>> dirty_runs;
  uint64_t size = 0;
  {
    std::lock_guard lock(file.mu);
    file.wait_writeback();
    if (file.dirty_pages() == 0) return {};
    size = file.size_known ? file.size : rec.inode.i_size;
    UEXT_ASSIGN_OR_RETURN(dirty_runs, collect_dirty_runs(file));
  }
  const uint64_t size_blocks = (size + bs - 1) / bs;
  WritebackChunk c;
  c.size = size;
  c.max_new_extents = extents_per_handle(rec);
  c.prealloc = prealloc_window(size_blocks);
  bool committed_for_space = false;
  for (auto [first_page, end_page] : dirty_runs) {
    c.pos = first_page * bpp;
    const uint64_t stop = std::min(end_page * bpp, size_blocks);
    while (c.pos < stop) {
      c.blocks = std::min<uint64_t>(stop - c.pos, kWritebackChunkBlocks);
      UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(writeback_credits(rec, c)));
      uint64_t mapped = 0;
      bool allocation_failed = false;
      Status done = in_handle(h, "writepages", rec.ino, [&]() -> Status {
        std::lock_guard lock(file.mu);
        auto runs = map_for_writeback(h, rec, file, c);
        if (!runs.ok()) {
          allocation_failed = true;
          return std::move(runs).error();
        }
        Status io = write_mapped_runs(file.source(), *runs);
        if (!io.ok()) return data_write_failed(std::move(io));
        if (!runs->empty()) mapped = runs->back().logical + runs->back().length - c.pos;
        return {};
      }, Volume::Changes::kEachStepWhole);
      if (!done.ok() && allocation_failed && done.error().code() == ENOSPC && !committed_for_space) {
        // The space was reserved, so what the allocator misses can only be
        // blocks freed in the running transaction, free once it commits (as
        // ext4's writepages forces a commit and retries). A device out of
        // space (an image on a full host) is an error like any other.
        committed_for_space = true;
        UEXT_TRY(vol_->sync());
        continue;
      }
      UEXT_TRY(done);  // the pages stay dirty; writepages records the error
      if (mapped == 0) return Error(EIO, fmt::format("inode {}: writeback made no progress at block {}", ino, c.pos));
      c.pos += mapped;
    }
    std::lock_guard lock(file.mu);
    for (uint64_t index = first_page; index < end_page; ++index) file.mark_clean(index);
  }
  std::lock_guard lock(file.mu);
  settle_reservation(rec, file);
  check_reservations("after writepages", false);
  return {};
}

uint32_t FilesystemImpl::writeback_credits(const InodeRecord& rec, const WritebackChunk& c) {
  return map_credits(*vol_, rec, c.max_new_extents) + convert_credits(*vol_, rec, c.max_new_extents) + 2;
}

// Background writeback of one chunk of `file` (the first of its dirty
// runs, up to kWritebackChunkBlocks): the blocks are mapped and the pages
// cleaned under the inode lock, which is then let go, so that writers go
// on filling the cache while the bytes go to the disk. The handle stays
// open until they are written: no commit can make the new mapping durable
// before its data (ordered mode). Returns whether there is more to do.
Result<bool> FilesystemImpl::writeback_chunk_async(CachedFile& file) {
  const uint32_t ino = file.ino();
  auto ilock = itable_.try_lock(ino);
  if (!ilock.held()) return false;  // busy: its owner or a later pass writes it back
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  const uint64_t bs = vol_->block_size();
  const uint64_t bpp = kPageSize / bs;
  WritebackChunk c;
  uint64_t first_page = 0, end_page = 0;
  bool sync_instead = false;
  {
    std::lock_guard lock(file.mu);
    file.wait_writeback();
    if (file.dirty_pages() == 0) return false;
    c.size = file.size_known ? file.size : rec.inode.i_size;
    // The first dirty run only (the pages are in order), from the dirty
    // floor, and no further than one chunk.
    const uint64_t chunk_pages = kWritebackChunkBlocks / bpp;
    for (auto it = file.pages().lower_bound(file.dirty_floor()); it != file.pages().end(); ++it) {
      const auto& [index, page] = *it;
      if (!(page.flags & cache::kDirty)) {
        if (end_page != 0) break;
        continue;
      }
      if (end_page != 0 && (index != end_page || end_page - first_page == chunk_pages)) break;
      if (end_page == 0) {
        first_page = index;
        file.raise_dirty_floor(index);
      }
      end_page = index + 1;
    }
    // Scattered pages (random writes) cost less written by one writepages
    // of the whole file under the lock than by a pass of this per run.
    sync_instead = end_page - first_page < kAsyncMinPages;
    if (!sync_instead) {
      const uint64_t size_blocks = (c.size + bs - 1) / bs;
      c.pos = first_page * bpp;
      const uint64_t stop = std::min(end_page * bpp, size_blocks);
      if (c.pos >= stop) {
        // Dirty pages wholly past the end of the file (a truncate raced a
        // store): nothing of them goes to the disk.
        for (uint64_t index = first_page; index < end_page; ++index) file.mark_clean(index);
        settle_reservation(rec, file);
        return file.dirty_pages() != 0;
      }
      c.blocks = std::min<uint64_t>(stop - c.pos, kWritebackChunkBlocks);
      c.max_new_extents = extents_per_handle(rec);
      c.prealloc = prealloc_window(size_blocks);
      if (file.mapped()) UEXT_TRY(file.write_protect(first_page, std::min(end_page, first_page + c.blocks / bpp + 1)));
    }
  }
  if (sync_instead) {
    UEXT_TRY(writepages(rec, file));
    return false;
  }
  UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(writeback_credits(rec, c)));
  std::vector<BlockRun> runs;
  cache::CachedFile::Source pages{};
  {
    std::unique_lock lock(file.mu);
    auto mapped = map_for_writeback(h, rec, file, c);
    if (!mapped.ok()) {
      // Stopped without the page lock: an error record starts a handle,
      // and handles come before page locks.
      lock.unlock();
      Status stopped = vol_->finish_handle(h, "writepages", ino, mapped.error(), Volume::Changes::kEachStepWhole);
      return std::move(stopped).error();
    }
    runs = std::move(*mapped);
    const uint64_t mapped_end = runs.empty() ? c.pos : runs.back().logical + runs.back().length;
    if (mapped_end <= c.pos) {
      (void)h.stop();
      return Error(EIO, fmt::format("inode {}: writeback made no progress at block {}", ino, c.pos));
    }
    // The pages wholly mapped now; a page cut by the chunk's end stays
    // dirty for the next pass. The end of the run takes the pages past
    // the end of the file with it.
    const uint64_t run_stop = std::min(end_page * bpp, (c.size + bs - 1) / bs);
    const uint64_t clean_end = mapped_end >= run_stop ? end_page : mapped_end / bpp;
    end_page = std::max(first_page, clean_end);
    file.start_writeback(first_page, end_page);
    settle_reservation(rec, file);
    check_reservations("after writepages", false);
    pages = file.source();
  }
  ilock.unlock();
  notify_writeback_progress();
  Status io = write_mapped_runs(pages, runs);
  if (!io.ok()) io = data_write_failed(std::move(io));  // before the handle stops
  {
    std::lock_guard lock(file.mu);
    // Recorded before the writeback ends, so an fsync waiting for it sees it.
    if (!io.ok()) cache_->wb_errors.record(ino, io.error().code(), io.error().message());
    file.end_writeback(first_page, end_page, !io.ok());
  }
  Status stopped = h.stop();
  if (!io.ok()) return std::move(io).error();
  UEXT_TRY(stopped);
  notify_writeback_progress();
  std::lock_guard lock(file.mu);
  return file.dirty_pages() != 0;
}

void FilesystemImpl::notify_writeback_progress() {
  // Taking the mutex orders this after a waiter's check of the dirty
  // bytes (made under it), so the wakeup cannot fall between.
  { std::lock_guard lock(wb_mu_); }
  wb_progress_cv_.notify_all();
}

// balance_dirty_pages: a writer past the dirty limit wakes background
// writeback and waits for it to bring the dirty bytes under the limit,
// holding no lock, so that its next copy overlaps the disk writes. When
// background writeback cannot help in time (the file's lock is busy, or an
// error), the writer writes back itself.
Status FilesystemImpl::balance_dirty(Ino ino) {
  const uint64_t limit = vol_->options().dirty_limit_bytes;
  if (cache_->dirty_bytes() <= limit) return {};
  if (writeback_thread_.joinable()) {
    // Instead of only waiting, the writer frees clean pages itself, so
    // that the writeback thread's time goes to the disk (a streaming
    // writer's hole punches were a sixth of that thread's time).
    cache_->shrink();
    std::unique_lock lock(wb_mu_);
    wb_kick_ = true;
    wb_cv_.notify_all();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while (cache_->dirty_bytes() > limit && !wb_stop_) {
      if (wb_progress_cv_.wait_until(lock, deadline) == std::cv_status::timeout) break;
    }
  }
  if (cache_->dirty_bytes() <= limit) return {};
  auto relock = itable_.lock(ino);
  UEXT_TRY(writeback_inode(ino));
  relock.unlock();
  if (cache_->dirty_bytes() > limit) UEXT_TRY(writeback_all());
  return {};
}

Status FilesystemImpl::limit_open_memfds() {
  // The writeback thread writes the files back and lets the clean ones go
  // while writers go on: done here, inline, it held up the writer's next
  // request (a FUSE daemon's reader) for 50-60 ms every few thousand new
  // small files, and other readers then did the same work beside it.
  if (writeback_thread_.joinable()) {
    std::unique_lock lock(wb_mu_);
    wb_kick_ = true;
    wb_cv_.notify_all();
    if (!cache_->far_too_many_files()) return {};
    // Past twice the bound (a thread that cannot keep up): wait for it a
    // while, then help.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while (cache_->far_too_many_files() && !wb_stop_) {
      if (wb_progress_cv_.wait_until(lock, deadline) == std::cv_status::timeout) break;
    }
    if (!cache_->far_too_many_files()) return {};
  }
  UEXT_TRY(writeback_all());
  cache_->shrink();
  return {};
}

Status FilesystemImpl::writeback_inode(uint32_t ino) {
  if (!cache_) return {};
  auto file = cache_->get(ino, false);
  if (!file) return {};
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  return writepages(rec, *file);
}

Status FilesystemImpl::flush_others(uint32_t except) {
  if (!cache_) return {};
  Status first;
  for (auto& file : cache_->dirty_files()) {
    if (file->ino() == except) continue;
    // Never wait for another inode's lock while holding one (writers call
    // this): an inode that is busy is left for later.
    auto lock = except ? itable_.try_lock(file->ino()) : itable_.lock(file->ino());
    if (!lock.held()) continue;
    Status s = writeback_inode(file->ino());
    if (first.ok() && !s.ok()) first = s;
  }
  return first;
}

Status FilesystemImpl::writeback_all() { return flush_others(0); }

void FilesystemImpl::writeback_loop() {
  const auto& o = vol_->options();
  std::unique_lock lock(wb_mu_);
  while (!wb_stop_) {
    if (!wb_kick_) wb_cv_.wait_for(lock, std::chrono::milliseconds(o.writeback_interval_ms));
    wb_kick_ = false;
    if (wb_stop_) break;
    lock.unlock();
    const int64_t now = cache::PageCache::now_ms();
    for (auto& file : cache_->dirty_files()) {
      // Past the background threshold every dirty file goes; below it only
      // those with data older than the expiry age (a walk of their pages).
      // Too many files holding a memfd: all go, so that shrink() below can
      // let them go.
      if (cache_->dirty_bytes() <= o.dirty_limit_bytes / 4 && !cache_->too_many_files()) {
        std::lock_guard flock(file->mu);
        if (now - file->oldest_dirty_ms() < static_cast<int64_t>(o.dirty_expire_ms)) continue;
      }
      // A chunk at a time, the file's lock let go during each write, until
      // the file is clean or has had its share of this pass (a writer
      // that never stops must not starve the other files).
      for (int chunks = 0; chunks < 8; ++chunks) {
        auto more = writeback_chunk_async(*file);  // errors stay with the file for fsync
        if (!more.ok() || !*more || wb_stopping()) break;
      }
    }
    cache_->shrink();
    notify_writeback_progress();
    // Corruption a read found, recorded in memory (Volume::found_corrupt):
    // journaled here, where no lock is held, as ext4's error work does.
    (void)vol_->write_pending_errors();
    lock.lock();
  }
}

bool FilesystemImpl::wb_stopping() {
  std::lock_guard lock(wb_mu_);
  return wb_stop_;
}

// Drops cached pages [offset, end) of a file (after writing them back), for
// operations that change the blocks underneath (punch, zero range).
Status FilesystemImpl::flush_and_drop(InodeRecord& rec, uint64_t offset, uint64_t end) {
  if (!cache_) return {};
  blocks_->drop_window(rec.ino);
  auto file = cache_->get(rec.ino, false);
  if (!file) return {};
  UEXT_TRY(writepages(rec, *file));
  blocks_->drop_window(rec.ino);
  std::lock_guard lock(file->mu);
  file->drop(offset / kPageSize, end == UINT64_MAX ? UINT64_MAX : (end + kPageSize - 1) / kPageSize);
  return {};
}

FilesystemImpl::ReservationAudit FilesystemImpl::audit_reservations() {
  ReservationAudit a;
  if (!blocks_) return a;
  if (cache_) {
    for (auto& file : cache_->all_files()) {
      std::lock_guard lock(file->mu);
      a.files += file->reservation.left();
    }
  }
  const auto t = blocks_->tally_reserved();
  a.counter = t.counter;
  a.held = t.sum;
  a.holders = t.holders;
  return a;
}

void FilesystemImpl::check_reservations(const char* where, bool idle) {
#ifdef UEXT_DEBUG_CHECKS
  // The cached files' sum takes their page mutexes: only when idle (after
  // writepages the caller still holds one).
  ReservationAudit a;
  if (idle) {
    a = audit_reservations();
  } else if (blocks_) {
    const auto t = blocks_->tally_reserved();
    a.counter = t.counter;
    a.held = t.sum;
    a.holders = t.holders;
  }
  if (a.counter != a.held || (idle && a.files != a.held)) {
    std::fprintf(stderr,
                 "uext: reservation accounting broken %s: the allocator counts %llu reserved blocks, "
                 "its %llu reservations hold %llu, the cached files %llu\n",
                 where, static_cast<unsigned long long>(a.counter), static_cast<unsigned long long>(a.holders),
                 static_cast<unsigned long long>(a.held), static_cast<unsigned long long>(a.files));
    std::abort();
  }
#else
  (void)where;
  (void)idle;
#endif
}

Status FilesystemImpl::check_wb_error(Ino ino, uint64_t* since) {
  if (!cache_) return {};
  auto e = since ? cache_->wb_errors.check(ino, *since) : cache_->wb_errors.check_unsampled(ino);
  if (!e) return {};
  return Error(e->code, fmt::format("inode {}: writeback failed: {}", ino, e->message));
}

uint64_t FilesystemImpl::wb_err_sample(Ino ino) { return cache_ ? cache_->wb_errors.sample(ino) : 0; }

}  // namespace uext::fs
