#include "cache/page_cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace uext::cache {
namespace {

// A cache bounded to `pages` pages.
CacheOptions bounded(uint64_t pages) {
  CacheOptions o;
  o.max_bytes = pages * kPageSize;
  return o;
}

// A file with pages [0, n), each filled with its index, all clean.
std::shared_ptr<CachedFile> clean_file(PageCache& cache, uint32_t ino, uint64_t n) {
  auto f = cache.get(ino, true);
  std::lock_guard lock(f->mu);
  EXPECT_TRUE(f->ensure(n).ok());
  for (uint64_t i = 0; i < n; ++i) {
    f->add(i, false);
    std::memset(f->data(i), static_cast<int>(i & 0xff), kPageSize);
  }
  return f;
}

bool page_holds(CachedFile& f, uint64_t index) {
  const std::byte want{static_cast<unsigned char>(index & 0xff)};
  for (uint64_t b = 0; b < kPageSize; ++b) {
    if (f.data(index)[b] != want) return false;
  }
  return true;
}

// Whether the page at `addr` is mapped in this process (bit 63 of its
// /proc/self/pagemap entry).
bool mapped_here(const void* addr) {
  const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  uint64_t entry = 0;
  const off_t at = static_cast<off_t>(reinterpret_cast<uintptr_t>(addr) / ::getpagesize() * sizeof entry);
  const bool ok = ::pread(fd, &entry, sizeof entry, at) == static_cast<ssize_t>(sizeof entry);
  ::close(fd);
  return ok && (entry >> 63) != 0;
}

// copy_in and copy_out go through the memfd: the bytes come back, across
// pages and at odd offsets, and neither faults the page into the mapping.
TEST(PageCacheCopy, CopyOutReadsWhatCopyInWroteWithoutMappingIt) {
  PageCache cache(bounded(64));
  auto f = cache.get(7, true);
  std::lock_guard lock(f->mu);
  ASSERT_TRUE(f->ensure(3).ok());
  for (uint64_t i = 0; i < 3; ++i) f->add(i, false);
  std::vector<std::byte> in(3 * kPageSize - 100);
  for (size_t i = 0; i < in.size(); ++i) in[i] = std::byte((i * 7 + 3) & 0xff);
  auto n = f->copy_in(50, in);
  ASSERT_TRUE(n.ok()) << n.error().message();
  ASSERT_EQ(*n, in.size());
  std::vector<std::byte> out(in.size());
  Status s = f->copy_out(50, out);
  ASSERT_TRUE(s.ok()) << s.error().message();
  EXPECT_EQ(out, in);
  for (uint64_t i = 0; i < 3; ++i) EXPECT_FALSE(mapped_here(f->data(i))) << "page " << i;
  // Past the memfd's end: an error naming the inode, not a short read.
  std::vector<std::byte> past(kPageSize);
  s = f->copy_out(1u << 30, past);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("inode 7"), std::string::npos) << s.error().message();
}

// Eviction no longer passes over a file with a writeback in flight: it
// takes the clean pages outside the pages in flight, which stay, bytes
// and all, for the writeback that reads them.
TEST(PageCacheShrink, EvictsAroundAWritebackInFlight) {
  PageCache cache(bounded(64));
  auto f = clean_file(cache, 12, 256);
  {
    std::lock_guard lock(f->mu);
    f->start_writeback(100, 140);
  }
  cache.shrink();
  {
    std::lock_guard lock(f->mu);
    EXPECT_LE(cache.cached_bytes(), cache.options().max_bytes * 3 / 4);
    for (uint64_t i = 100; i < 140; ++i) {
      ASSERT_TRUE(f->present(i)) << i;
      EXPECT_TRUE(page_holds(*f, i)) << i;
    }
    EXPECT_FALSE(f->present(0));
    f->end_writeback(100, 140, false);
  }
}

// Dirty pages are never evicted, whatever the bound.
TEST(PageCacheShrink, KeepsDirtyPages) {
  PageCache cache(bounded(16));
  auto f = clean_file(cache, 13, 64);
  {
    std::lock_guard lock(f->mu);
    for (uint64_t i = 40; i < 64; ++i) f->mark_dirty(i, *f->find(i), false);
  }
  cache.shrink();
  std::lock_guard lock(f->mu);
  for (uint64_t i = 40; i < 64; ++i) {
    ASSERT_TRUE(f->present(i)) << i;
    EXPECT_TRUE(page_holds(*f, i)) << i;
  }
  EXPECT_EQ(f->dirty_pages(), 24u);
  for (uint64_t i = 0; i < 40; ++i) EXPECT_FALSE(f->present(i)) << i;
}

// Two threads shrinking at once (a writer past the dirty limit and the
// writeback thread) while a third starts and ends writebacks: pages in
// flight are never taken, and the cache ends within its bound.
TEST(PageCacheShrink, ConcurrentShrinksLeavePagesInFlight) {
  PageCache cache(bounded(128));
  auto f = clean_file(cache, 14, 1024);
  std::atomic<bool> stop{false};
  std::atomic<int> lost{0};
  std::thread flusher([&] {
    for (uint64_t round = 0; round < 200; ++round) {
      const uint64_t first = (round * 37) % 1000;
      {
        std::lock_guard lock(f->mu);
        if (!f->present(first)) {
          // A whole shrink may have let the memfd go meanwhile.
          if (!f->ensure(first + 1).ok()) ++lost;
          f->add(first, false);
          std::memset(f->data(first), static_cast<int>(first & 0xff), kPageSize);
        }
        f->start_writeback(first, first + 1);
      }
      std::this_thread::yield();
      {
        std::lock_guard lock(f->mu);
        if (!f->present(first) || !page_holds(*f, first)) ++lost;
        f->end_writeback(first, first + 1, false);
      }
    }
    stop = true;
  });
  std::thread a([&] {
    while (!stop) cache.shrink();
  });
  while (!stop) cache.shrink();
  a.join();
  flusher.join();
  EXPECT_EQ(lost.load(), 0);
  cache.shrink();
  EXPECT_LE(cache.cached_bytes(), cache.options().max_bytes);
}

}  // namespace
}  // namespace uext::cache
