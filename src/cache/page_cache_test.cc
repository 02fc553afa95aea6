#include "cache/page_cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
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

// Small files share an arena memfd, a slot each: their bytes stay apart,
// a copy past the slot is refused rather than spilling into the next one,
// a file growing past its slot or about to be mapped moves to a memfd of
// its own with its bytes, and a slot given back reads as zeros to the next
// file.
TEST(PageCacheArena, SmallFilesShareAMemfdAndMoveOutWhole) {
  PageCache cache(bounded(1024));
  auto fill = [](std::shared_ptr<CachedFile>& f, uint64_t pages, int value) {
    std::lock_guard lock(f->mu);
    ASSERT_TRUE(f->ensure(pages).ok());
    for (uint64_t i = 0; i < pages; ++i) f->add(i, false);
    std::vector<std::byte> bytes(pages * kPageSize, std::byte(value));
    auto n = f->copy_in(0, bytes);
    ASSERT_TRUE(n.ok()) << n.error().message();
  };
  auto holds = [](std::shared_ptr<CachedFile>& f, uint64_t pages, int value) {
    std::lock_guard lock(f->mu);
    std::vector<std::byte> out(pages * kPageSize);
    Status s = f->copy_out(0, out);
    EXPECT_TRUE(s.ok()) << s.error().message();
    return std::all_of(out.begin(), out.end(), [&](std::byte b) { return b == std::byte(value); });
  };
  auto a = cache.get(1, true), b = cache.get(2, true);
  fill(a, 3, 0xaa);
  fill(b, 2, 0xbb);
  CachedFile::Source sa = a->source(), sb = b->source();
  EXPECT_EQ(sa.fd, sb.fd) << "one arena";
  EXPECT_NE(sa.fd_offset, sb.fd_offset);
  EXPECT_TRUE(holds(a, 3, 0xaa));
  EXPECT_TRUE(holds(b, 2, 0xbb));
  {
    std::lock_guard lock(a->mu);
    std::vector<std::byte> too_far(kPageSize);
    EXPECT_FALSE(a->copy_in(16 * kPageSize, too_far).ok()) << "past the slot";
    EXPECT_FALSE(a->copy_out(16 * kPageSize, too_far).ok());
    // Growing past the slot: a memfd of its own, pages at file offsets.
    ASSERT_TRUE(a->ensure(40).ok());
    EXPECT_NE(a->source().fd, sb.fd);
    EXPECT_EQ(a->source().fd_offset, 0u);
  }
  EXPECT_TRUE(holds(a, 3, 0xaa)) << "moved with its bytes";
  EXPECT_TRUE(holds(b, 2, 0xbb)) << "the neighbour untouched";
  {
    std::lock_guard lock(b->mu);
    ASSERT_TRUE(b->ensure_mappable(2).ok());
    EXPECT_EQ(b->source().fd_offset, 0u);
    EXPECT_EQ(b->memfd(), b->source().fd);
    EXPECT_NE(b->memfd(), sa.fd);
  }
  EXPECT_TRUE(holds(b, 2, 0xbb));
  // a's old slot went back emptied: the next small file reads zeros there.
  auto c = cache.get(3, true);
  {
    std::lock_guard lock(c->mu);
    ASSERT_TRUE(c->ensure(3).ok());
    for (uint64_t i = 0; i < 3; ++i) c->add(i, false);
  }
  EXPECT_EQ(c->source().fd, sa.fd);
  EXPECT_TRUE(holds(c, 3, 0));
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
