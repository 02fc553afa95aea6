// The page cache for file data: 4 KiB pages of each cached file kept in a
// memfd (so that mappings of the file, later, can share the very same
// pages), with dirty and delayed-allocation state per page, a memory bound
// with eviction of clean pages, and dirty accounting for throttling and
// background writeback.
//
// This layer knows nothing of ext4: which pages need blocks and how they
// are written back is the filesystem's business (src/fs/writeback.cc).
// Locking: a CachedFile's mutex (kPage level) guards its pages, size and
// reservation; the cache's own map mutex is a leaf.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <absl/container/btree_map.h>

#include "alloc/block_allocator.h"
#include "base/ordered_mutex.h"
#include "cache/wb_errseq.h"
#include "uext/status.h"

namespace uext::cache {

inline constexpr uint64_t kPageSize = 4096;

struct CacheOptions {
  uint64_t max_bytes = 256ull << 20;   // clean pages beyond this are evicted
  uint64_t dirty_limit_bytes = 64ull << 20;       // writers write back past this
  uint64_t dirty_background_bytes = 16ull << 20;  // background writeback starts here
  uint32_t dirty_expire_ms = 3000;     // dirty data older than this is written back
  uint32_t writeback_interval_ms = 500;
};

enum PageFlag : uint8_t {
  kDirty = 1,    // newer than the disk
  kDelayed = 2,  // dirty over blocks not yet allocated (space reserved)
};

struct Page {
  uint8_t flags = 0;
  int64_t dirtied_ms = 0;  // when it became dirty (steady clock)
};

// A file's pages by index, in order. A B-tree rather than std::map: a
// file of 65,536 pages (256 MiB) put each page in a node of its own, and
// finding one walked about 17 of them, a cache miss each (the largest cost
// of a random 4 KiB write); here a node holds dozens. The price: adding or
// removing a page moves others, so a Page& or iterator lasts only until the
// next add, for_each_page insertion, drop or eviction of this file.
using PageMap = absl::btree_map<uint64_t, Page>;

class PageCache;

// A memory mapping of a cached file (src/vm), told when the cache changes
// pages under it. Called with the file's mutex held; must not take locks
// of the filesystem.
class PageMapper {
 public:
  virtual ~PageMapper() = default;
  // page_mkclean: pages [first, end) are about to be written back; the
  // next store to any of them must fault again. An error stops the
  // writeback (the pages stay dirty).
  virtual Status write_protect(uint64_t first, uint64_t end) = 0;
  // Pages [first, end) are leaving the cache: the next access must fault
  // (and find the page anew) rather than see a fresh zero page.
  virtual void unmap(uint64_t first, uint64_t end) = 0;
  // The file grew: pages refused for lying past the old end may be used now.
  virtual void grew() = 0;
};

// One inode's cached pages. Every member is guarded by `mu`.
class CachedFile {
 public:
  CachedFile(PageCache& cache, uint32_t ino) : cache_(cache), ino_(ino) {}
  ~CachedFile();
  CachedFile(const CachedFile&) = delete;
  CachedFile& operator=(const CachedFile&) = delete;

  uint32_t ino() const { return ino_; }
  base::OrderedMutex mu{base::LockLevel::kPage};

  // The bytes of page `index`, valid until the next call that may grow the
  // mapping (ensure) or until `mu` is dropped. The page must be present.
  std::byte* data(uint64_t index) { return map_ + index * kPageSize; }
  // Makes room for pages [0, end_index) in the memfd and the mapping. A
  // file of a few pages gets a slot of a memfd shared with other small
  // files (PageCache's arenas) and moves to a memfd of its own when it
  // grows past the slot.
  Status ensure(uint64_t end_index);
  // ensure(), with the pages in a memfd of the file's own at their file
  // offsets, as a program's mapping of the file needs (memfd()).
  Status ensure_mappable(uint64_t end_index);
  // Where the pages are, for I/O outside `mu` while a writeback in flight
  // keeps them in place: page i's bytes at bytes + i * kPageSize, and in
  // memfd `fd` at byte fd_offset + i * kPageSize.
  struct Source {
    const std::byte* bytes;
    int fd;
    uint64_t fd_offset;
  };
  Source source() const { return {map_, memfd_, base_}; }
  bool present(uint64_t index) const { return pages_.count(index) != 0; }
  Page* find(uint64_t index);
  // Adds page `index`, its bytes zeroed, unless the caller is about to
  // overwrite all of them (`zero` false: a memset would only fault the
  // page in early and be written over).
  Page& add(uint64_t index, bool zero = true);
  // Visits pages [first, end) in order in one walk of the page map, adding
  // the absent ones with their bytes untouched (the caller fills them):
  // fn(index, Page&, bool added) -> Status; the first error stops the walk.
  template <typename Fn>
  Status for_each_page(uint64_t first, uint64_t end, Fn&& fn);
  // Copies `bytes` into the file's pages at byte `offset` through the
  // memfd (pwrite) rather than the mapping: a page the copy covers whole is
  // allocated without being zeroed first and without a page fault, as the
  // kernel's own write path fills its page cache. The pages must have been
  // added (and a partly covered new page prepared) first; ensure() covers
  // them. Returns how many bytes were copied: fewer than asked only when
  // the source faulted (EFAULT for none).
  Result<size_t> copy_in(uint64_t offset, std::span<const std::byte> bytes);
  // The reverse, for reads: pread from the memfd, so that serving a read
  // never faults pages into the daemon's mapping (docs/DESIGN.md, "Page
  // cache and delayed allocation"). Reads within pages that are present.
  Status copy_out(uint64_t offset, std::span<std::byte> dst) const;
  // `page` is page `index`'s entry.
  void mark_dirty(uint64_t index, Page& page, bool delayed);
  void mark_clean(uint64_t index);
  // Background writeback copies pages to the disk without the file's
  // locks (src/fs/writeback.cc). While such a writeback is in flight the
  // pages it reads stay where they are: no eviction, no drop and no move
  // of the mapping until it ends. start_writeback cleans pages [first,
  // end) as it begins; end_writeback marks them dirty again if it failed.
  void start_writeback(uint64_t first, uint64_t end);
  void end_writeback(uint64_t first, uint64_t end, bool failed);
  bool writeback_in_flight() const { return in_flight_ != 0; }
  // Waits, with `mu` held by the caller (it is let go meanwhile), until no
  // writeback of this file is in flight.
  void wait_writeback();
  // Removes pages [first, end) (dirty ones too: their data is gone).
  // Returns how many delayed pages were among them.
  uint64_t drop(uint64_t first, uint64_t end);
  // Zeroes bytes [from, to) of a present page.
  void zero(uint64_t index, uint32_t from, uint32_t to);
  // The file's own memfd (ensure_mappable() makes it), for mappings to share.
  int memfd() const { return memfd_; }
  // Mappings of this file (src/vm): while there are any, the memfd stays
  // and pages are write-protected in them before writeback.
  void add_mapper(PageMapper* m) {
    mappers_.push_back(m);
    ever_mapped_ = true;
  }
  void remove_mapper(PageMapper* m);
  bool mapped() const { return !mappers_.empty(); }
  // page_mkclean over pages [first, end) in every mapping.
  Status write_protect(uint64_t first, uint64_t end);
  // Sets the in-memory size; mappings hear when it grows.
  void set_size(uint64_t new_size);

  const PageMap& pages() const { return pages_; }
  // No page below this index is dirty: mark_dirty lowers it, a search that
  // found the first dirty page raises it, so the next search skips the
  // clean pages before (a streaming file keeps thousands).
  uint64_t dirty_floor() const { return dirty_floor_; }
  void raise_dirty_floor(uint64_t index) { dirty_floor_ = std::max(dirty_floor_, index); }
  uint64_t dirty_pages() const { return dirty_; }
  uint64_t delayed_pages() const { return delayed_; }
  int64_t oldest_dirty_ms() const;

  // The in-memory i_size (the disk's lags behind until writeback), when
  // the file has one.
  bool size_known = false;
  uint64_t size = 0;
  // Space held for the delayed pages: their data blocks and the worst case
  // of the tree blocks their extents may need.
  alloc::Reservation reservation;
  uint64_t reserved_meta = 0;
  int64_t last_used_ms = 0;
  // mtime/ctime of writes not yet on disk (written with the data).
  bool times_pending = false;
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;

 private:
  friend class PageCache;
  // Drops up to `max_pages` clean pages at or after page `from` that no
  // writeback in flight reads; returns how many, and moves `from` past the
  // pages looked at (UINT64_MAX: the end).
  uint64_t evict_clean(uint64_t max_pages, uint64_t& from);
  // drop() without waiting for writeback: the caller keeps out of the
  // pages in flight.
  uint64_t drop_now(uint64_t first, uint64_t end);
  // Lets the memfd and mapping go (no pages left): back to the cache's
  // pool when nothing else may still see them, else closed.
  void release_memory();
  // Forgets the memfd, slot and mapping (already given back or closed).
  void forget_memory();
  // Forgets every page of a file with nothing dirty, in flight or mapped,
  // and lets its memory go; cheaper than dropping the pages run by run.
  void discard_clean();
  Status ensure_memfd(uint64_t end_index, bool own);
  // Moves the pages from an arena slot to a memfd of the file's own.
  Status leave_arena();
  PageCache& cache_;
  uint32_t ino_;
  int memfd_ = -1;
  int64_t slot_ = -1;      // the arena slot holding the pages, or -1: a memfd of its own
  uint64_t base_ = 0;      // byte offset of page 0 in memfd_ (0 unless in a slot)
  std::byte* map_ = nullptr;
  uint64_t map_pages_ = 0;   // pages the mapping covers
  uint64_t memfd_pages_ = 0; // pages the memfd is sized for
  PageMap pages_;
  std::vector<PageMapper*> mappers_;
  uint64_t dirty_ = 0;
  uint64_t delayed_ = 0;
  uint32_t in_flight_ = 0;
  // Pages [flight_first_, flight_end_) cover every writeback in flight.
  uint64_t flight_first_ = UINT64_MAX;
  uint64_t flight_end_ = 0;
  uint64_t dirty_floor_ = 0;
  // A memfd a program has mapped (even once) is never handed to another
  // file: a detached mapping may still show its pages.
  bool ever_mapped_ = false;
  std::condition_variable_any writeback_done_;
};

class PageCache {
 public:
  explicit PageCache(const CacheOptions& options);
  ~PageCache();
  PageCache(const PageCache&) = delete;
  PageCache& operator=(const PageCache&) = delete;
  const CacheOptions& options() const { return options_; }

  // The file's cache (created when `create`), or null.
  std::shared_ptr<CachedFile> get(uint32_t ino, bool create);
  // Forgets a file (deleted): its pages go, its reservation is released,
  // its writeback errors too.
  void forget(uint32_t ino);
  // Writeback errors per inode (errseq), kept apart from the pages so that
  // evicting them cannot lose an error.
  WbErrors wb_errors;
  // Files with dirty pages.
  std::vector<std::shared_ptr<CachedFile>> dirty_files();
  std::vector<std::shared_ptr<CachedFile>> all_files();

  uint64_t dirty_bytes() const { return dirty_pages_.load() * kPageSize; }
  // A cached file larger than an arena slot holds a memfd (a file
  // descriptor): past this many, writers write back and clean files let
  // theirs go.
  bool too_many_files() const { return open_memfds_.load() > max_memfds_; }
  // Twice that: writers stop leaving it to background writeback.
  bool far_too_many_files() const { return open_memfds_.load() > 2 * max_memfds_; }
  uint64_t cached_bytes() const { return cached_pages_.load() * kPageSize; }
  // Evicts clean pages of the least recently used files until the cache is
  // within its bound, and closes the memfds of files left without pages
  // while there are too many. Takes the files' mutexes: call without any held.
  void shrink();

  static int64_t now_ms();

 private:
  friend class CachedFile;
  CacheOptions options_;
  base::OrderedMutex mu_{base::LockLevel::kPageCacheMap};
  std::unordered_map<uint32_t, std::shared_ptr<CachedFile>> files_;
  std::unordered_set<uint32_t> dirty_set_;  // files with dirty pages
  void set_dirty(uint32_t ino, bool dirty);
  std::atomic<int64_t> dirty_pages_{0};
  std::atomic<int64_t> cached_pages_{0};
  std::atomic<int64_t> open_memfds_{0};
  int64_t max_memfds_ = 256;

  // Spare memfds, emptied, with their mappings: a file that needs pages
  // takes one instead of creating, sizing and mapping a new one and later
  // unmapping and closing it. Small files (a create, a 4 KiB write, a
  // close, eviction) would otherwise pay six system calls for their pages'
  // home, and every munmap interrupts the process's other CPUs to flush
  // their TLBs.
  struct SpareMemfd {
    int fd;
    std::byte* map;
    uint64_t map_pages;
  };
  // Half the memfd bound: shrink() lets files go down to that half at once,
  // and a pool that takes them all leaves the next run of new files (a
  // tree being unpacked) nothing to create. With 64 it was every other file.
  size_t max_spares_ = 64;
  static constexpr uint64_t kEvictSlicePages = 512;  // 2 MiB
  static constexpr uint64_t kMaxSpareMapPages = 256;  // 1 MiB of address space each
  bool take_spare(SpareMemfd& out);
  bool give_spare(const SpareMemfd& spare);
  base::OrderedMutex spare_mu_{base::LockLevel::kMemfdPool};
  std::vector<SpareMemfd> spares_;

  // Arenas: memfds cut into slots of kSlotPages pages, one small file's
  // pages in each. Even with the pool above, a run of new small files (a
  // tree being unpacked: 20,000 files of 4 KiB) found it empty and paid
  // memfd_create, ftruncate and mmap for every file, and later munmap and
  // close: about half the time of a 4 KiB write() here. A slot costs none
  // of these, and its file holds no descriptor; giving it back punches its
  // pages out. Programs never map a slot (ensure_mappable moves the file).
  static constexpr uint64_t kSlotPages = 16;  // 64 KiB
  static constexpr uint64_t kArenaSlots = 4096;  // 256 MiB of address space each
  static constexpr size_t kMaxArenas = 64;       // then small files get memfds of their own
  struct Slot {
    int64_t id;  // arena * kArenaSlots + index
    int fd;
    std::byte* map;       // the slot's first page in this process
    uint64_t fd_offset;   // and in the arena's memfd
  };
  bool take_slot(Slot& out);
  void give_slot(int64_t id);
  struct Arena {
    int fd;
    std::byte* map;
  };
  std::vector<Arena> arenas_;          // under spare_mu_
  std::vector<int64_t> free_slots_;    // under spare_mu_
  bool closing_ = false;               // set by ~PageCache: slots are not given back
};

template <typename Fn>
Status CachedFile::for_each_page(uint64_t first, uint64_t end, Fn&& fn) {
  auto it = pages_.lower_bound(first);
  for (uint64_t index = first; index < end; ++index, ++it) {
    bool added = false;
    if (it == pages_.end() || it->first != index) {
      it = pages_.emplace_hint(it, index, Page{});
      ++cache_.cached_pages_;
      added = true;
    }
    UEXT_TRY(fn(index, it->second, added));
  }
  return {};
}

}  // namespace uext::cache
