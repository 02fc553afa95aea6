#include "cache/page_cache.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace uext::cache {

int64_t PageCache::now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

PageCache::PageCache(const CacheOptions& options) : options_(options) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    max_memfds_ = std::max<int64_t>(64, static_cast<int64_t>(limit.rlim_cur) / 4);
  }
  max_spares_ = static_cast<size_t>(std::max<int64_t>(64, max_memfds_ / 2));
}

PageCache::~PageCache() {
  // The files first: each gives its memfd back to the pool, which must
  // still be there. Their arena slots are not punched one by one: the
  // arenas close just below.
  closing_ = true;
  files_.clear();
  for (const SpareMemfd& s : spares_) {
    munmap(s.map, s.map_pages * kPageSize);
    ::close(s.fd);
  }
  for (const Arena& a : arenas_) {
    munmap(a.map, kArenaSlots * kSlotPages * kPageSize);
    ::close(a.fd);
  }
}

bool PageCache::take_slot(Slot& out) {
  std::lock_guard lock(spare_mu_);
  if (free_slots_.empty()) {
    if (arenas_.size() >= kMaxArenas) return false;
    // A new arena: sparse, so only the pages written take memory.
    const uint64_t bytes = kArenaSlots * kSlotPages * kPageSize;
    const int fd = memfd_create("uext-page-cache-arena", MFD_CLOEXEC);
    if (fd < 0) return false;
    void* map = MAP_FAILED;
    if (ftruncate(fd, static_cast<off_t>(bytes)) == 0) {
      map = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    }
    if (map == MAP_FAILED) {
      ::close(fd);
      return false;
    }
    arenas_.push_back({fd, static_cast<std::byte*>(map)});
    const int64_t first = static_cast<int64_t>((arenas_.size() - 1) * kArenaSlots);
    // Lowest slots last, so that they are taken first.
    for (int64_t i = static_cast<int64_t>(kArenaSlots) - 1; i >= 0; --i) free_slots_.push_back(first + i);
  }
  const int64_t id = free_slots_.back();
  free_slots_.pop_back();
  const Arena& a = arenas_[static_cast<size_t>(id) / kArenaSlots];
  const uint64_t offset = (static_cast<uint64_t>(id) % kArenaSlots) * kSlotPages * kPageSize;
  out = Slot{id, a.fd, a.map + offset, offset};
  return true;
}

void PageCache::give_slot(int64_t id) {
  if (closing_) return;
  int fd;
  {
    std::lock_guard lock(spare_mu_);
    fd = arenas_[static_cast<size_t>(id) / kArenaSlots].fd;
  }
  // Its pages go (the next file starts from zeros) before anyone can take
  // it; outside the lock, as the hole punch frees them.
  const uint64_t offset = (static_cast<uint64_t>(id) % kArenaSlots) * kSlotPages * kPageSize;
  fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
            static_cast<off_t>(kSlotPages * kPageSize));
  std::lock_guard lock(spare_mu_);
  free_slots_.push_back(id);
}

bool PageCache::take_spare(SpareMemfd& out) {
  std::lock_guard lock(spare_mu_);
  if (spares_.empty()) return false;
  out = spares_.back();
  spares_.pop_back();
  return true;
}

bool PageCache::give_spare(const SpareMemfd& spare) {
  if (spare.map_pages > kMaxSpareMapPages) return false;
  {
    std::lock_guard lock(spare_mu_);
    if (spares_.size() >= max_spares_) return false;
  }
  // Empty, so that the next file starts from zeros and the memory goes
  // back now (outside the lock: it frees every page left).
  if (ftruncate(spare.fd, 0) != 0) return false;
  std::lock_guard lock(spare_mu_);
  if (spares_.size() >= max_spares_) return false;
  spares_.push_back(spare);
  return true;
}

CachedFile::~CachedFile() {
  cache_.dirty_pages_ -= static_cast<int64_t>(dirty_);
  cache_.cached_pages_ -= static_cast<int64_t>(pages_.size());
  release_memory();
}

void CachedFile::release_memory() {
  if (slot_ >= 0) {
    cache_.give_slot(slot_);
    forget_memory();
    return;
  }
  if (memfd_ >= 0) --cache_.open_memfds_;
  const bool pooled = memfd_ >= 0 && map_ && !ever_mapped_ && mappers_.empty() &&
                      cache_.give_spare({memfd_, map_, map_pages_});
  if (!pooled) {
    if (map_) munmap(map_, map_pages_ * kPageSize);
    if (memfd_ >= 0) ::close(memfd_);
  }
  ever_mapped_ = false;
  forget_memory();
}

void CachedFile::forget_memory() {
  slot_ = -1;
  base_ = 0;
  map_ = nullptr;
  memfd_ = -1;
  map_pages_ = memfd_pages_ = 0;
}

Status CachedFile::ensure(uint64_t end_index) { return ensure_memfd(end_index, false); }

Status CachedFile::ensure_mappable(uint64_t end_index) { return ensure_memfd(end_index, true); }

Status CachedFile::leave_arena() {
  // The pages move: not under a writeback reading them.
  wait_writeback();
  const int old_fd = memfd_;
  const uint64_t old_base = base_;
  const int64_t old_slot = slot_;
  std::byte* const old_map = map_;
  forget_memory();
  Status made = ensure_memfd(PageCache::kSlotPages, true);
  if (made.ok()) {
    // Copied through the descriptors, so that neither mapping faults the
    // pages in (see copy_in).
    std::byte page[kPageSize];
    for (const auto& [index, p] : pages_) {
      const off_t at = static_cast<off_t>(index * kPageSize);
      ssize_t n = ::pread(old_fd, page, kPageSize, static_cast<off_t>(old_base) + at);
      if (n == static_cast<ssize_t>(kPageSize)) n = ::pwrite(memfd_, page, kPageSize, at);
      if (n != static_cast<ssize_t>(kPageSize)) {
        const int err = n < 0 ? errno : EIO;
        made = Error(err, fmt::format("page cache: moving inode {}'s pages to a memfd of their own: {}", ino_,
                                      std::strerror(err)));
        break;
      }
    }
  }
  if (!made.ok()) {
    // Back to the slot, pages intact; the new memfd (if any) goes.
    release_memory();
    slot_ = old_slot;
    base_ = old_base;
    memfd_ = old_fd;
    map_ = old_map;
    map_pages_ = memfd_pages_ = PageCache::kSlotPages;
    return made;
  }
  cache_.give_slot(old_slot);
  return {};
}

Status CachedFile::ensure_memfd(uint64_t end_index, bool own) {
  if (slot_ >= 0 && (own || end_index > PageCache::kSlotPages)) UEXT_TRY(leave_arena());
  if (memfd_ < 0 && !own && end_index <= PageCache::kSlotPages) {
    PageCache::Slot slot{};
    if (cache_.take_slot(slot)) {
      slot_ = slot.id;
      memfd_ = slot.fd;
      map_ = slot.map;
      base_ = slot.fd_offset;
      map_pages_ = memfd_pages_ = PageCache::kSlotPages;
      return {};
    }
  }
  if (memfd_ < 0) {
    PageCache::SpareMemfd spare{};
    if (cache_.take_spare(spare)) {
      memfd_ = spare.fd;
      map_ = spare.map;
      map_pages_ = spare.map_pages;  // the memfd itself is empty (size 0)
    } else {
      memfd_ = memfd_create("uext-page-cache", MFD_CLOEXEC);
      if (memfd_ < 0) return Error(errno, fmt::format("page cache: memfd_create: {}", std::strerror(errno)));
    }
    ++cache_.open_memfds_;
  }
  if (end_index > memfd_pages_) {
    // Grow in powers of two so that appends do not resize every page.
    uint64_t want = std::max<uint64_t>(end_index, std::max<uint64_t>(memfd_pages_ * 2, 16));
    if (ftruncate(memfd_, static_cast<off_t>(want * kPageSize)) != 0) {
      return Error(errno, fmt::format("page cache: growing the memfd of inode {}: {}", ino_, std::strerror(errno)));
    }
    memfd_pages_ = want;
  }
  if (end_index > map_pages_) {
    // The mapping may move: not under a writeback reading from it.
    wait_writeback();
    uint64_t want = memfd_pages_;
    void* p = map_ ? mremap(map_, map_pages_ * kPageSize, want * kPageSize, MREMAP_MAYMOVE)
                   : mmap(nullptr, want * kPageSize, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_, 0);
    if (p == MAP_FAILED) {
      return Error(errno, fmt::format("page cache: mapping inode {}'s pages: {}", ino_, std::strerror(errno)));
    }
    map_ = static_cast<std::byte*>(p);
    map_pages_ = want;
  }
  return {};
}

Page* CachedFile::find(uint64_t index) {
  auto it = pages_.find(index);
  return it == pages_.end() ? nullptr : &it->second;
}

Page& CachedFile::add(uint64_t index, bool zero) {
  auto [it, inserted] = pages_.try_emplace(index);
  if (inserted) {
    ++cache_.cached_pages_;
    if (zero) std::memset(data(index), 0, kPageSize);
  }
  return it->second;
}

Result<size_t> CachedFile::copy_in(uint64_t offset, std::span<const std::byte> bytes) {
  if (offset + bytes.size() > memfd_pages_ * kPageSize) {
    return Error(EINVAL, fmt::format("page cache: copying into inode {}'s pages at byte {}: past the {} pages made "
                                     "room for", ino_, offset, memfd_pages_));
  }
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::pwrite(memfd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(base_ + offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (done > 0) break;  // a short write: what was copied stands
      const int err = n < 0 ? errno : EIO;
      return Error(err, fmt::format("page cache: copying into inode {}'s pages at byte {}: {}", ino_, offset,
                                    std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  return done;
}

Status CachedFile::copy_out(uint64_t offset, std::span<std::byte> dst) const {
  if (offset + dst.size() > memfd_pages_ * kPageSize) {
    return Error(EIO, fmt::format("page cache: reading inode {}'s pages at byte {}: {}", ino_, offset,
                                  memfd_ < 0 ? "the file has no pages" : "past the end of its memfd"));
  }
  size_t done = 0;
  while (done < dst.size()) {
    ssize_t n = ::pread(memfd_, dst.data() + done, dst.size() - done, static_cast<off_t>(base_ + offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      return Error(err, fmt::format("page cache: reading inode {}'s pages at byte {}: {}", ino_, offset + done,
                                    n < 0 ? std::strerror(err) : "end of the memfd"));
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

void CachedFile::mark_dirty(uint64_t index, Page& page, bool delayed) {
  dirty_floor_ = std::min(dirty_floor_, index);
  if (!(page.flags & kDirty)) {
    page.flags |= kDirty;
    page.dirtied_ms = PageCache::now_ms();
    if (dirty_++ == 0) cache_.set_dirty(ino_, true);
    ++cache_.dirty_pages_;
  }
  if (delayed && !(page.flags & kDelayed)) {
    page.flags |= kDelayed;
    ++delayed_;
  }
}

void CachedFile::mark_clean(uint64_t index) {
  Page* p = find(index);
  if (!p) return;
  if (p->flags & kDirty) {
    if (--dirty_ == 0) cache_.set_dirty(ino_, false);
    --cache_.dirty_pages_;
  }
  if (p->flags & kDelayed) --delayed_;
  p->flags = 0;
}

void CachedFile::start_writeback(uint64_t first, uint64_t end) {
  ++in_flight_;
  flight_first_ = std::min(flight_first_, first);
  flight_end_ = std::max(flight_end_, end);
  for (auto it = pages_.lower_bound(first); it != pages_.end() && it->first < end; ++it) mark_clean(it->first);
}

void CachedFile::end_writeback(uint64_t first, uint64_t end, bool failed) {
  if (failed) {
    // The blocks are mapped by now: dirty again, but no longer delayed.
    for (auto it = pages_.lower_bound(first); it != pages_.end() && it->first < end; ++it) {
      mark_dirty(it->first, it->second, false);
    }
  }
  if (--in_flight_ == 0) {
    flight_first_ = UINT64_MAX;
    flight_end_ = 0;
    writeback_done_.notify_all();
  }
}

void CachedFile::wait_writeback() {
  writeback_done_.wait(mu, [this] { return in_flight_ == 0; });
}

void CachedFile::remove_mapper(PageMapper* m) { std::erase(mappers_, m); }

Status CachedFile::write_protect(uint64_t first, uint64_t end) {
  for (PageMapper* m : mappers_) UEXT_TRY(m->write_protect(first, end));
  return {};
}

void CachedFile::set_size(uint64_t new_size) {
  const bool grew = !size_known || new_size > size;
  size = new_size;
  size_known = true;
  if (grew) {
    for (PageMapper* m : mappers_) m->grew();
  }
}

uint64_t CachedFile::drop(uint64_t first, uint64_t end) {
  if (first >= end) return 0;
  wait_writeback();
  return drop_now(first, end);
}

uint64_t CachedFile::drop_now(uint64_t first, uint64_t end) {
  uint64_t delayed = 0;
  for (PageMapper* m : mappers_) m->unmap(first, end);
  auto it = pages_.lower_bound(first);
  while (it != pages_.end() && it->first < end) {
    if (it->second.flags & kDirty) {
      if (--dirty_ == 0) cache_.set_dirty(ino_, false);
      --cache_.dirty_pages_;
    }
    if (it->second.flags & kDelayed) {
      --delayed_;
      ++delayed;
    }
    --cache_.cached_pages_;
    it = pages_.erase(it);
  }
  // Give the memory back (the memfd keeps its size).
  if (memfd_ >= 0 && first < memfd_pages_) {
    uint64_t stop = std::min(end, memfd_pages_);
    fallocate(memfd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(base_ + first * kPageSize),
              static_cast<off_t>((stop - first) * kPageSize));
  }
  return delayed;
}

void CachedFile::zero(uint64_t index, uint32_t from, uint32_t to) {
  if (present(index) && from < to) std::memset(data(index) + from, 0, to - from);
}

int64_t CachedFile::oldest_dirty_ms() const {
  int64_t oldest = INT64_MAX;
  for (const auto& [index, page] : pages_) {
    if (page.flags & kDirty) oldest = std::min(oldest, page.dirtied_ms);
  }
  return oldest;
}

void CachedFile::discard_clean() {
  cache_.cached_pages_ -= static_cast<int64_t>(pages_.size());
  pages_.clear();
  release_memory();
}

uint64_t CachedFile::evict_clean(uint64_t max_pages, uint64_t& from) {
  // The clean pages outside what a writeback in flight reads: runs of them,
  // each gone with one hole punch, lowest first.
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  uint64_t taken = 0;
  auto it = pages_.lower_bound(from);
  for (; it != pages_.end() && taken < max_pages;) {
    if (it->first >= flight_first_ && it->first < flight_end_) {
      it = pages_.lower_bound(flight_end_);
      continue;
    }
    if (!(it->second.flags & kDirty)) {
      if (!runs.empty() && runs.back().second == it->first) {
        ++runs.back().second;
      } else {
        runs.emplace_back(it->first, it->first + 1);
      }
      ++taken;
    }
    ++it;
  }
  // The next slice goes on from here rather than walking the dirty pages
  // before it again.
  from = it == pages_.end() ? UINT64_MAX : it->first;
  for (auto [first, end] : runs) drop_now(first, end);
  return taken;
}

std::shared_ptr<CachedFile> PageCache::get(uint32_t ino, bool create) {
  std::lock_guard lock(mu_);
  auto it = files_.find(ino);
  if (it != files_.end()) return it->second;
  if (!create) return nullptr;
  auto file = std::make_shared<CachedFile>(*this, ino);
  files_.emplace(ino, file);
  return file;
}

void PageCache::forget(uint32_t ino) {
  wb_errors.forget(ino);
  std::shared_ptr<CachedFile> file;
  {
    std::lock_guard lock(mu_);
    auto it = files_.find(ino);
    if (it == files_.end()) return;
    file = std::move(it->second);
    files_.erase(it);
  }
  std::lock_guard lock(file->mu);
  file->drop(0, UINT64_MAX);
  file->reservation.release();
}

void PageCache::set_dirty(uint32_t ino, bool dirty) {
  std::lock_guard lock(mu_);
  if (dirty) {
    dirty_set_.insert(ino);
  } else {
    dirty_set_.erase(ino);
  }
}

std::vector<std::shared_ptr<CachedFile>> PageCache::dirty_files() {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<CachedFile>> out;
  out.reserve(dirty_set_.size());
  for (uint32_t ino : dirty_set_) {
    auto it = files_.find(ino);
    if (it != files_.end()) out.push_back(it->second);
  }
  return out;
}

std::vector<std::shared_ptr<CachedFile>> PageCache::all_files() {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<CachedFile>> out;
  out.reserve(files_.size());
  for (auto& [ino, f] : files_) out.push_back(f);
  return out;
}

void PageCache::shrink() {
  if (cached_bytes() <= options_.max_bytes && !too_many_files()) return;
  auto files = all_files();
  std::vector<std::pair<int64_t, std::shared_ptr<CachedFile>>> by_age;
  for (auto& f : files) {
    std::lock_guard lock(f->mu);
    by_age.emplace_back(f->last_used_ms, f);
  }
  std::sort(by_age.begin(), by_age.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  auto enough = [&] {
    return cached_bytes() <= options_.max_bytes * 3 / 4 && open_memfds_.load() <= max_memfds_ / 2;
  };
  for (auto& [age, f] : by_age) {
    if (enough()) break;
    // A slice at a time, the file's mutex let go in between: a hole punch
    // frees about a megabyte a millisecond here, and the file's writeback
    // (or its writer) must not wait for a quarter of the cache to go.
    uint64_t from = 0;
    while (!enough()) {
      std::lock_guard lock(f->mu);
      if (f->dirty_ == 0 && f->mappers_.empty() && f->in_flight_ == 0) {
        f->discard_clean();
        break;
      }
      if (f->evict_clean(kEvictSlicePages, from) == 0 || from == UINT64_MAX) break;
    }
    std::lock_guard lock(f->mu);
    if (f->pages_.empty() && f->mappers_.empty() && f->in_flight_ == 0) f->release_memory();
  }
  // Files left with nothing to remember are dropped from the map.
  std::lock_guard lock(mu_);
  for (auto it = files_.begin(); it != files_.end();) {
    CachedFile& f = *it->second;
    if (it->second.use_count() == 1 && f.pages_.empty() && f.reservation.left() == 0 &&
        !f.size_known) {
      it = files_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace uext::cache
