// Shared by the fuzz targets: opens an image held in memory and exercises
// every read-only operation of uext::Filesystem on it, with a work budget so
// that a hostile image cannot make one input run for long.
//
// Any error a call returns is fine; what counts as a bug is a crash, a hang,
// a leak or a sanitizer report. The walk also checks a few promises of the
// public API that hold on any image, valid or not (see check()).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <sys/stat.h>
#include <unordered_set>
#include <vector>

#include "uext/block_device.h"
#include "uext/filesystem.h"

namespace uext_fuzz {

// Limits of one walk. Each unit of `work` is roughly one library call or
// one KiB read; once it is spent the walk stops.
struct Budget {
  size_t max_inodes = 128;         // inodes visited (stat + per-type work)
  size_t max_depth = 12;           // directory nesting followed
  size_t max_entries_per_dir = 200;  // entries listed per directory
  // Children of one directory walked into. The seeds' big (htree) directory
  // holds 90 near-identical files: visiting them all costs time, not coverage.
  size_t max_children_per_dir = 24;
  size_t max_read_per_file = 48 << 10;  // bytes read from one file, all ranges
  size_t max_lookups_per_dir = 8;
  size_t max_xattrs = 8;
  size_t work = 2500;
};

// A broken promise of the API: not an error return but wrong behaviour.
// Aborting makes libFuzzer keep the input.
[[noreturn]] inline void api_violation(const char* what) {
  std::fprintf(stderr, "uext API violation: %s\n", what);
  std::abort();
}

inline void check(bool ok, const char* what) {
  if (!ok) api_violation(what);
}

class Walker {
 public:
  Walker(uext::Filesystem& fs, Budget budget) : fs_(fs), b_(budget) {}

  void run() {
    (void)fs_.info();
    probe_odd_inodes();
    probe_paths();

    queue_.push_back({uext::kRootIno, 0});
    seen_.insert(uext::kRootIno);
    while (!queue_.empty() && spend(1) && visited_ < b_.max_inodes) {
      auto [ino, depth] = queue_.front();
      queue_.pop_front();
      ++visited_;
      visit(ino, depth);
    }
  }

 private:
  struct Item {
    uext::Ino ino;
    size_t depth;
  };

  bool spend(size_t units) {
    if (b_.work < units) {
      b_.work = 0;
      return false;
    }
    b_.work -= units;
    return true;
  }

  // Inode numbers no directory entry should lead to, and ones past the end.
  void probe_odd_inodes() {
    const uint32_t count = fs_.info().inodes_count;
    for (uext::Ino ino : {0u, 1u, 3u, 7u, 8u, 11u, count, count + 1, 0xFFFFFFFFu}) {
      (void)fs_.stat(ino);
      std::byte buf[64];
      (void)fs_.read(ino, 0, buf);
      (void)fs_.readlink(ino);
      (void)fs_.listxattr(ino);
      (void)fs_.extents(ino);
    }
  }

  void probe_paths() {
    for (const char* p : {"/", "/.", "/..", "/lost+found", "/nonexistent", "//a//b/",
                          "/a/../b", "relative", ""}) {
      (void)fs_.resolve(p, true);
      (void)fs_.resolve(p, false);
    }
    (void)fs_.lookup(uext::kRootIno, "");
    (void)fs_.lookup(uext::kRootIno, std::string(300, 'x'));
  }

  void visit(uext::Ino ino, size_t depth) {
    auto st = fs_.stat(ino);
    if (!st) return;
    check(st->ino == ino, "stat returned another inode number");
    visit_xattrs(ino);
    if (spend(2)) (void)fs_.extents(ino);
    switch (st->mode & S_IFMT) {
      case S_IFDIR:
        visit_dir(ino, depth);
        break;
      case S_IFLNK:
        if (spend(1)) {
          auto target = fs_.readlink(ino);
          if (target && spend(1)) (void)fs_.resolve("/" + *target, true);
        }
        read_file(ino, st->size);
        break;
      default:
        read_file(ino, st->size);
        break;
    }
  }

  void visit_xattrs(uext::Ino ino) {
    if (!spend(1)) return;
    auto names = fs_.listxattr(ino);
    if (names) {
      size_t n = 0;
      for (const auto& name : *names) {
        if (n++ == b_.max_xattrs || !spend(1)) break;
        (void)fs_.getxattr(ino, name);
      }
    }
    (void)fs_.getxattr(ino, "user.nonexistent");
    (void)fs_.getxattr(ino, "");
  }

  // Reads several ranges: the start, around the middle, the end, past the
  // end, and offsets near the top of the range (overflow checks).
  void read_file(uext::Ino ino, uint64_t size) {
    std::vector<std::byte> buf(8192);
    size_t left = b_.max_read_per_file;
    auto one = [&](uint64_t offset, size_t len) {
      len = std::min({len, left, buf.size()});
      if (!spend(1 + len / 1024)) return;
      left -= len;
      auto n = fs_.read(ino, offset, std::span(buf.data(), len));
      if (n) {
        check(*n <= len, "read returned more bytes than asked for");
        if (offset >= size) check(*n == 0, "read past end of file returned data");
      }
    };
    // Sequential reads from the start, the way a reader would.
    for (uint64_t off = 0; off < size && left > 0 && b_.work > 0; off += buf.size())
      one(off, buf.size());
    if (size > 1) one(size / 2 - 1, 3000);
    if (size > 0) one(size - 1, 100);
    one(size, 100);
    one(size + 4096, 10);
    one(uint64_t{1} << 40, 10);
    one(~uint64_t{0} - 5, 10);
    one(~uint64_t{0}, 1);
    one(0, 0);
  }

  void visit_dir(uext::Ino dir, size_t depth) {
    // A directory is not readable as a file.
    std::byte b[16];
    auto r = fs_.read(dir, 0, b);
    check(!r, "read of a directory succeeded");

    std::vector<uext::DirEntry> entries;
    uint64_t resume_cookie = 0;
    size_t count = 0;
    auto st = fs_.readdir(dir, 0, [&](const uext::DirEntry& e, uint64_t next) {
      if (!spend(1) || count == b_.max_entries_per_dir) return false;
      if (++count == 3) resume_cookie = next;
      entries.push_back(e);
      return true;
    });
    (void)st;

    // Resuming from a cookie must not crash whatever the directory holds.
    if (resume_cookie != 0) {
      size_t n = 0;
      (void)fs_.readdir(dir, resume_cookie,
                        [&](const uext::DirEntry&, uint64_t) { return ++n < 4 && spend(1); });
    }
    // Junk cookies.
    for (uint64_t cookie : {uint64_t{1}, uint64_t{0x7FFFFFFF}, ~uint64_t{0}}) {
      size_t n = 0;
      (void)fs_.readdir(dir, cookie,
                        [&](const uext::DirEntry&, uint64_t) { return ++n < 2 && spend(1); });
    }

    // Lookups go through the hash index on htree directories, which readdir
    // does not use.
    size_t lookups = 0;
    for (const auto& e : entries) {
      if (lookups++ == b_.max_lookups_per_dir || !spend(2)) break;
      (void)fs_.lookup(dir, e.name);
    }
    if (spend(2)) {
      (void)fs_.lookup(dir, "no-such-name");
      (void)fs_.lookup(dir, "..");
    }

    if (depth + 1 > b_.max_depth) return;
    size_t children = 0;
    for (const auto& e : entries) {
      if (e.name == "." || e.name == "..") continue;
      if (children == b_.max_children_per_dir) break;
      if (seen_.insert(e.ino).second) {
        queue_.push_back({e.ino, depth + 1});
        ++children;
      }
    }
  }

  uext::Filesystem& fs_;
  Budget b_;
  std::deque<Item> queue_;
  std::unordered_set<uext::Ino> seen_;
  size_t visited_ = 0;
};

// Opens `image` read-only in memory and walks it.
inline void open_and_walk(std::span<const std::byte> image, bool verify_checksums,
                          const Budget& budget = {}) {
  uext::Options options;
  options.read_only = true;
  options.verify_checksums = verify_checksums;
  options.metadata_cache_bytes = 1u << 20;
  auto fs = uext::Filesystem::open(uext::make_memory_device(image), options);
  if (!fs) return;
  Walker(**fs, budget).run();
}

// The size a little-endian superblock field at `off` says, or 0.
inline uint32_t le32_at(std::span<const std::byte> image, size_t off) {
  if (image.size() < off + 4) return 0;
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | std::to_integer<uint32_t>(image[off + i]);
  return v;
}

}  // namespace uext_fuzz
