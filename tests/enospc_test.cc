// Running out of space from many threads at once. Small images fill up
// while writers create, append, mkdir, set xattrs and fallocate, and other
// threads delete what the writers hand them. Every failure must be ENOSPC
// (never EIO or EUCLEAN), a failed call must have changed nothing (the API
// promises write() wrote nothing when it fails; a failed create leaves no
// name), the free block count must add up with what the inodes hold, and
// the image must be e2fsck clean. Deleting everything afterwards must give
// back every block and inode.
#include <sys/stat.h>
#include <sys/xattr.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support/crash.h"
#include "support/images.h"
#include "support/process.h"
#include "support/tree.h"
#include "uext/caller.h"
#include "uext/filesystem.h"

namespace uext::testing {
namespace {

// A boolean switch from the environment ("0" turns it off).
bool env_flag(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  return v ? std::string(v) != "0" : fallback;
}

std::span<const std::byte> bytes_of(const std::string& s) { return std::as_bytes(std::span(s)); }

std::unique_ptr<Filesystem> open_rw(const std::string& image) {
  Options o;
  o.read_only = false;
  o.commit_interval_ms = 0;
  auto fs = Filesystem::open(image, o);
  EXPECT_TRUE(fs.ok()) << fs.error().message();
  return fs.ok() ? std::move(*fs) : nullptr;
}

// Problems found by any thread.
class Problems {
 public:
  void add(std::string s) {
    std::lock_guard l(mu_);
    if (list_.size() < 50) list_.push_back(std::move(s));
  }
  std::string text() const {
    std::lock_guard l(mu_);
    std::string t;
    for (const auto& s : list_) t += s + "\n";
    return t;
  }
  bool empty() const {
    std::lock_guard l(mu_);
    return list_.empty();
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::string> list_;
};

struct FileModel {
  Ino dir = 0;
  std::string name;
  Ino ino = 0;
  std::string data;
  std::map<std::string, std::string> xattrs;
};

std::string read_all(Filesystem& fs, Ino ino, uint64_t size, Status* st) {
  std::string s(size + 1, '\0');
  auto n = fs.read(ino, 0, std::as_writable_bytes(std::span(s)));
  if (!n.ok()) {
    *st = n.error();
    return {};
  }
  s.resize(*n);
  return s;
}

// Compares a file with its model; "" when equal.
std::string verify(Filesystem& fs, const FileModel& f) {
  auto st = fs.stat(f.ino);
  if (!st.ok()) return fmt::format("{}: stat: {}", f.name, st.error().message());
  if (st->size != f.data.size()) return fmt::format("{}: size {} != {}", f.name, st->size, f.data.size());
  Status rs;
  std::string got = read_all(fs, f.ino, f.data.size(), &rs);
  if (!rs.ok()) return fmt::format("{}: read: {}", f.name, rs.error().message());
  if (got != f.data) {
    size_t i = 0;
    while (i < got.size() && i < f.data.size() && got[i] == f.data[i]) ++i;
    return fmt::format("{}: contents differ from byte {} (size {})", f.name, i, got.size());
  }
  for (const auto& [k, v] : f.xattrs) {
    auto g = fs.getxattr(f.ino, k);
    if (!g.ok() || *g != v) return fmt::format("{}: xattr {} wrong or missing", f.name, k);
  }
  return "";
}

// A hand-over queue from writers to deleters.
struct Queue {
  std::mutex mu;
  std::deque<FileModel> files;
  void push(FileModel f) {
    std::lock_guard l(mu);
    files.push_back(std::move(f));
  }
  bool empty() {
    std::lock_guard l(mu);
    return files.empty();
  }
  std::optional<FileModel> pop() {
    std::lock_guard l(mu);
    if (files.empty()) return std::nullopt;
    FileModel f = std::move(files.front());
    files.pop_front();
    return f;
  }
};

struct Kind {
  std::string name;
  std::vector<std::string> mkfs;
  std::string size;
  bool extents = true;
};

void PrintTo(const Kind& k, std::ostream* os) { *os << k.name; }

class Enospc : public ::testing::TestWithParam<Kind> {};

// Every block the tree under `dir` holds, from i_blocks (which counts
// extent nodes, indirect blocks and xattr blocks too). Hard links are not
// made here, so nothing is counted twice.
uint64_t blocks_under(Filesystem& fs, Ino dir, uint32_t bs, size_t* inodes) {
  uint64_t total = 0;
  auto st = fs.stat(dir);
  if (st.ok()) total += st->blocks * 512 / bs;
  ++*inodes;
  auto entries = fs.list_directory(dir);
  if (!entries.ok()) return total;
  for (const auto& e : *entries) {
    if (e.name == "." || e.name == "..") continue;
    auto s = fs.stat(e.ino);
    if (!s.ok()) continue;
    if (S_ISDIR(s->mode)) {
      total += blocks_under(fs, e.ino, bs, inodes);
    } else {
      total += s->blocks * 512 / bs;
      ++*inodes;
    }
  }
  return total;
}

Status remove_tree(Filesystem& fs, Ino dir) {
  UEXT_ASSIGN_OR_RETURN(auto entries, fs.list_directory(dir));
  for (const auto& e : entries) {
    if (e.name == "." || e.name == ".." || (dir == kRootIno && e.name == "lost+found")) continue;
    UEXT_ASSIGN_OR_RETURN(Stat s, fs.stat(e.ino));
    if (S_ISDIR(s.mode)) {
      UEXT_TRY(remove_tree(fs, e.ino));
      UEXT_TRY(fs.rmdir(dir, e.name));
    } else {
      UEXT_TRY(fs.unlink(dir, e.name));
    }
  }
  return {};
}

TEST_P(Enospc, ManyThreadsFillTheImageAndEveryFailureIsClean) {
  const Kind& kind = GetParam();
  TempDir tmp;
  std::string image = tmp / "img";
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  argv.insert(argv.end(), kind.mkfs.begin(), kind.mkfs.end());
  argv.push_back(image);
  argv.push_back(kind.size);
  run_ok(argv);

  FsStats start{};
  Problems problems;
  const int kWriters = std::getenv("UEXT_ENOSPC_WRITERS") ? std::atoi(std::getenv("UEXT_ENOSPC_WRITERS")) : 6;
  const int kDeleters = std::getenv("UEXT_ENOSPC_DELETERS") ? std::atoi(std::getenv("UEXT_ENOSPC_DELETERS")) : 2;
  std::atomic<uint64_t> enospc_hits{0}, successes{0}, deleted{0};
  {
    auto fs = open_rw(image);
    ASSERT_TRUE(fs);
    auto s0 = fs->statfs();
    ASSERT_TRUE(s0.ok());
    start = *s0;
    const uint32_t bs = start.block_size;
    auto root_before = fs->stat(kRootIno);
    ASSERT_TRUE(root_before.ok());

    std::vector<Ino> dirs;
    for (int t = 0; t < kWriters; ++t) {
      auto d = fs->mkdir(kRootIno, fmt::format("t{}", t), 0755, {});
      ASSERT_TRUE(d.ok()) << d.error().message();
      dirs.push_back(d->ino);
    }
    Queue queue;
    std::atomic<int> writers_left{kWriters};
    std::vector<std::vector<FileModel>> kept(kWriters);

    // Returns true for ENOSPC; any other error is a problem.
    auto expect_enospc = [&](const Error& e, const std::string& what) {
      if (e.code() == ENOSPC) {
        ++enospc_hits;
        return true;
      }
      problems.add(fmt::format("{}: errno {} ({}), expected ENOSPC", what, e.code(), e.message()));
      return false;
    };

    auto writer = [&](int t) {
      Rng rng(1000 + t);
      Ino dir = dirs[t];
      std::vector<FileModel> mine;
      int failures = 0, n = 0;
      while (failures < 40 && problems.empty()) {
        uint64_t op = rng.below(100);
        if (op < 12 || mine.empty()) {
          std::string name = fmt::format("file-{}-{}", t, n++);
          auto st = fs->create(dir, name, 0644, {});
          if (st.ok()) {
            ++successes;
            mine.push_back({dir, name, st->ino, "", {}});
            continue;
          }
          ++failures;
          if (!expect_enospc(st.error(), "create " + name)) return;
          auto l = fs->lookup(dir, name);
          if (l.ok() || l.error().code() != ENOENT) problems.add("a failed create left " + name + " behind");
          continue;
        }
        FileModel& f = mine[rng.below(mine.size())];
        if (op < 65) {
          // Append, or now and then overwrite across the end.
          uint64_t len = 1 + rng.below(rng.below(3) == 0 ? 200000 : 16000);
          uint64_t off = f.data.size();
          if (rng.below(5) == 0 && off > 0) off = rng.below(off);
          std::string buf = rng.bytes(len);
          auto w = fs->write(f.ino, off, bytes_of(buf));
          if (w.ok()) {
            ++successes;
            // A short write (space ran out part-way) wrote exactly its
            // leading *w bytes, as write(2) may.
            if (*w == 0 || *w > len) problems.add(fmt::format("{}: write returned {} of {}", f.name, *w, len));
            const uint64_t done = std::min<uint64_t>(*w, len);
            if (f.data.size() < off + done) f.data.resize(off + done, '\0');
            std::copy(buf.begin(), buf.begin() + static_cast<long>(done), f.data.begin() + static_cast<long>(off));
            auto st = fs->stat(f.ino);
            if (!st.ok() || st->size != f.data.size())
              problems.add(fmt::format("{}: a write of {} bytes at {} succeeded, the size is then {}, not {}", f.name,
                                       done, off, st.ok() ? st->size : 0, f.data.size()));
            continue;
          }
          ++failures;
          if (!expect_enospc(w.error(), "write " + f.name)) return;
          // "having written nothing in that case"
          std::string v = verify(*fs, f);
          if (!v.empty()) problems.add("after a failed write: " + v);
          continue;
        }
        if (op < 72) {
          std::string name = fmt::format("dir-{}-{}", t, n++);
          auto st = fs->mkdir(dir, name, 0755, {});
          if (st.ok()) {
            ++successes;
            continue;
          }
          ++failures;
          if (!expect_enospc(st.error(), "mkdir " + name)) return;
          auto l = fs->lookup(dir, name);
          if (l.ok() || l.error().code() != ENOENT) problems.add("a failed mkdir left " + name + " behind");
          continue;
        }
        if (op < 84) {
          std::string key = fmt::format("user.k{}", rng.below(6));
          std::string value = rng.bytes(50 + rng.below(rng.below(2) ? 300 : 1500));
          Status s = fs->setxattr(f.ino, key, value);
          if (s.ok()) {
            ++successes;
            f.xattrs[key] = value;
            continue;
          }
          // A full xattr block says ENOSPC too, with blocks to spare: it
          // does not count towards stopping.
          if (!expect_enospc(s.error(), "setxattr " + f.name)) return;
          auto g = fs->getxattr(f.ino, key);
          if (f.xattrs.count(key)) {
            if (!g.ok() || *g != f.xattrs[key]) problems.add(f.name + ": a failed setxattr changed " + key);
          } else if (g.ok() || g.error().code() != ENODATA) {
            problems.add(f.name + ": a failed setxattr left " + key);
          }
          continue;
        }
        // fallocate, with and without KEEP_SIZE (UEXT_ENOSPC_FALLOC=0 leaves
        // it out).
        if (op < 94 && kind.extents && env_flag("UEXT_ENOSPC_FALLOC", true)) {
          const bool keep = rng.below(2) == 0;
          uint64_t off = f.data.size(), len = 1 + rng.below(256 * 1024);
          Status s = fs->fallocate(f.ino, keep ? kFallocKeepSize : 0, off, len);
          if (s.ok()) {
            ++successes;
            if (!keep) f.data.resize(off + len, '\0');
            auto st = fs->stat(f.ino);
            if (!st.ok() || st->size != f.data.size())
              problems.add(fmt::format("{}: fallocate({}) of {} bytes at {} succeeded, the size is then {}, not {}",
                                       f.name, keep ? "KEEP_SIZE" : "0", len, off, st.ok() ? st->size : 0,
                                       f.data.size()));
            continue;
          }
          ++failures;
          if (!expect_enospc(s.error(), "fallocate " + f.name)) return;
          std::string v = verify(*fs, f);
          if (!v.empty()) problems.add("after a failed fallocate: " + v);
          continue;
        }
        // Hand the file to a deleter.
        size_t i = &f - mine.data();
        queue.push(std::move(f));
        mine.erase(mine.begin() + static_cast<long>(i));
      }
      for (const auto& f : mine) {
        std::string v = verify(*fs, f);
        if (!v.empty()) problems.add("at the end: " + v);
      }
      kept[t] = std::move(mine);
      --writers_left;
    };

    auto deleter = [&](int t) {
      Rng rng(2000 + t);
      while (writers_left.load() > 0 || !queue.empty()) {
        auto f = queue.pop();
        if (!f) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
          continue;
        }
        std::string v = verify(*fs, *f);
        if (!v.empty()) problems.add("before deleting: " + v);
        if (rng.below(3) == 0) {
          Status s = fs->truncate(f->ino, 0);
          if (!s.ok()) problems.add(fmt::format("truncate {}: {}", f->name, s.error().message()));
        }
        Status s = fs->unlink(f->dir, f->name);
        if (!s.ok()) problems.add(fmt::format("unlink {}: {}", f->name, s.error().message()));
        ++deleted;
      }
    };

    std::vector<std::thread> threads;
    for (int t = 0; t < kWriters; ++t) threads.emplace_back(writer, t);
    for (int t = 0; t < kDeleters; ++t) threads.emplace_back(deleter, t);
    for (auto& th : threads) th.join();
    ASSERT_TRUE(problems.empty()) << problems.text();
    EXPECT_GT(enospc_hits.load(), 0u);

    // The free count adds up: what left the free pool is what our inodes
    // hold (root's own blocks included, in case it grew).
    ASSERT_TRUE(fs->sync().ok());
    auto s1 = fs->statfs();
    ASSERT_TRUE(s1.ok());
    size_t inodes = 0;
    uint64_t held = 0;
    for (Ino d : dirs) held += blocks_under(*fs, d, bs, &inodes);
    auto root_after = fs->stat(kRootIno);
    ASSERT_TRUE(root_after.ok());
    held += (root_after->blocks - root_before->blocks) * 512 / bs;
    EXPECT_EQ(start.free_blocks - s1->free_blocks, held)
        << "free blocks " << start.free_blocks << " -> " << s1->free_blocks << ", inodes hold " << held;
    EXPECT_EQ(start.free_files - s1->free_files, inodes);
    std::printf("%s: %llu successful calls, %llu ENOSPC, %llu files deleted; %llu of %llu blocks free at the end\n",
                kind.name.c_str(), static_cast<unsigned long long>(successes.load()),
                static_cast<unsigned long long>(enospc_hits.load()), static_cast<unsigned long long>(deleted.load()),
                static_cast<unsigned long long>(s1->free_blocks), static_cast<unsigned long long>(s1->blocks));
    ASSERT_TRUE(fs->close().ok());
    auto hdr = dumpe2fs_header(image);
    EXPECT_EQ(hdr["Free blocks"], std::to_string(s1->free_blocks));
  }
  FsckVerdict v = e2fsck_clean(image);
  ASSERT_TRUE(v.clean) << v.report;

  // Reopen, delete everything: every block and inode comes back.
  {
    auto fs = open_rw(image);
    ASSERT_TRUE(fs);
    Status s = remove_tree(*fs, kRootIno);
    ASSERT_TRUE(s.ok()) << s.error().message();
    ASSERT_TRUE(fs->sync().ok());
    auto end = fs->statfs();
    ASSERT_TRUE(end.ok());
    EXPECT_EQ(end->free_blocks, start.free_blocks);
    EXPECT_EQ(end->free_files, start.free_files);
    ASSERT_TRUE(fs->close().ok());
  }
  auto hdr = dumpe2fs_header(image);
  EXPECT_EQ(hdr["Free blocks"], std::to_string(start.free_blocks));
  EXPECT_EQ(hdr["Free inodes"], std::to_string(start.free_files));
  v = e2fsck_clean(image);
  EXPECT_TRUE(v.clean) << v.report;
}

INSTANTIATE_TEST_SUITE_P(Images, Enospc,
                         ::testing::Values(Kind{"ext4_4k", {"-t", "ext4", "-b", "4096"}, "16M", true},
                                           Kind{"ext4_1k", {"-t", "ext4", "-b", "1024"}, "12M", true},
                                           Kind{"ext3_4k", {"-t", "ext3", "-b", "4096"}, "12M", false}),
                         [](const auto& info) { return info.param.name; });

// Few inodes: create and mkdir run out of inodes, not blocks, and say ENOSPC.
TEST(Enospc, InodeExhaustionFromManyThreads) {
  TempDir tmp;
  std::string image = tmp / "img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", "4096", "-N", "64", image, "16M"});
  Problems problems;
  std::atomic<uint64_t> created{0}, refused{0};
  FsStats start{};
  {
    auto fs = open_rw(image);
    ASSERT_TRUE(fs);
    start = *fs->statfs();
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 40; ++i) {
          std::string name = fmt::format("n-{}-{}", t, i);
          auto st = (i % 4 == 3) ? fs->mkdir(kRootIno, name, 0755, {}) : fs->create(kRootIno, name, 0644, {});
          if (st.ok()) {
            ++created;
            continue;
          }
          if (st.error().code() != ENOSPC) {
            problems.add(fmt::format("{}: errno {} ({})", name, st.error().code(), st.error().message()));
            continue;
          }
          ++refused;
          auto l = fs->lookup(kRootIno, name);
          if (l.ok() || l.error().code() != ENOENT) problems.add("a refused create left " + name);
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_TRUE(problems.empty()) << problems.text();
    EXPECT_EQ(created.load(), start.free_files);
    EXPECT_GT(refused.load(), 0u);
    auto s1 = fs->statfs();
    ASSERT_TRUE(s1.ok());
    EXPECT_EQ(s1->free_files, 0u);
    ASSERT_TRUE(fs->close().ok());
  }
  FsckVerdict v = e2fsck_clean(image);
  ASSERT_TRUE(v.clean) << v.report;
  {
    auto fs = open_rw(image);
    ASSERT_TRUE(fs);
    ASSERT_TRUE(remove_tree(*fs, kRootIno).ok());
    ASSERT_TRUE(fs->close().ok());
  }
  auto hdr = dumpe2fs_header(image);
  EXPECT_EQ(hdr["Free inodes"], std::to_string(start.free_files));
  EXPECT_EQ(hdr["Free blocks"], std::to_string(start.free_blocks));
  v = e2fsck_clean(image);
  EXPECT_TRUE(v.clean) << v.report;
}

// A fresh 16 MiB ext4 image with blocks of `block_size` bytes, open read-write.
std::unique_ptr<Filesystem> fresh_image(const std::string& image, const char* block_size) {
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", block_size, image, "16M"});
  return open_rw(image);
}

// The set-up of the FallocateBugs tests below: fresh_image's filesystem with
// file `name` holding `bytes` bytes of `fill` at `offset`. close_and_check()
// ends the test with the filesystem closed and e2fsck -fn on the image.
struct WrittenImage {
  TempDir tmp;
  std::string image = tmp / "img";
  std::unique_ptr<Filesystem> fs;
  Ino ino = 0;  // stays 0 when the set-up failed
  WrittenImage(const char* block_size, const char* name, uint64_t offset, uint64_t bytes, char fill)
      : fs(fresh_image(image, block_size)) {
    if (!fs) return;
    auto f = fs->create(kRootIno, name, 0644, {});
    EXPECT_TRUE(f.ok()) << f.error().message();
    if (!f.ok()) return;
    auto w = fs->write(f->ino, offset, bytes_of(std::string(bytes, fill)));
    EXPECT_TRUE(w.ok() && *w == bytes) << (w.ok() ? std::to_string(*w) : w.error().message());
    if (w.ok() && *w == bytes) ino = f->ino;
  }
  void close_and_check() {
    ASSERT_TRUE(fs->close().ok());
    FsckVerdict v = e2fsck_clean(image);
    EXPECT_TRUE(v.clean) << v.report;
  }
};

// Found by the ENOSPC suite (single-threaded, plenty of space):
// fallocate(mode 0) past the end of a file returned success but left i_size
// where it was; without KEEP_SIZE fallocate(2) extends the file to
// offset + length.
TEST(FallocateBugs, ModeZeroPastTheEndExtendsTheSize) {
  TempDir tmp;
  auto fs = fresh_image(tmp / "img", "4096");
  ASSERT_TRUE(fs);
  auto f = fs->create(kRootIno, "f", 0644, {});
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(fs->write(f->ino, 0, bytes_of(std::string(5000, 'z'))).ok());
  ASSERT_TRUE(fs->fallocate(f->ino, 0, 5000, 10000).ok());
  EXPECT_EQ(fs->stat(f->ino)->size, 15000u);
}

// fsx through `uext mount` (write far out, truncate down, fallocate mode 0
// past the new end): the truncate leaves the page cache with a size of its
// own and no dirty page, so the writeback before the fallocate did not
// forget it, and stat (which prefers the cached size) kept the truncated
// end while the inode had the new one.
TEST(FallocateBugs, ModeZeroAfterTruncateDownGrowsTheCachedSize) {
  WrittenImage w("4096", "f", 7 << 20, 4096, 'w');
  ASSERT_NE(w.ino, 0u);
  Filesystem& fs = *w.fs;
  ASSERT_TRUE(fs.truncate(w.ino, 3 << 20).ok());
  ASSERT_TRUE(fs.fallocate(w.ino, 0, 6 << 20, 65536).ok());
  EXPECT_EQ(fs.stat(w.ino)->size, (6u << 20) + 65536);
  // The preallocated range reads as zeros, to its end.
  std::vector<std::byte> buf(65536, std::byte{1});
  auto n = fs.read(w.ino, 6 << 20, buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, buf.size());
  EXPECT_EQ(std::count(buf.begin(), buf.end(), std::byte{0}), 65536);
  w.close_and_check();
}

// fsx through `uext mount` (an 8 MiB file truncated and punched many times
// a second) had fallocate fail with ENOSPC on an image almost all free:
// the allocator's count of busy blocks (freed, their transaction not yet
// committed) dropped committed runs only in groups it searched, so a
// reservation weighed the free space against frees long committed, and
// the commit meant to clear them changed nothing.
TEST(FallocateBugs, CommittedFreesDoNotStopAReservation) {
  const uint64_t size = 10 << 20;
  WrittenImage w("1024", "a", 0, size, 'a');
  ASSERT_NE(w.ino, 0u);
  Filesystem& fs = *w.fs;
  auto b = fs.create(kRootIno, "b", 0644, {});
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(fs.fsync(w.ino).ok());
  ASSERT_TRUE(fs.truncate(w.ino, 0).ok());
  ASSERT_TRUE(fs.sync().ok());
  Status s = fs.fallocate(b->ino, 0, 0, size);
  EXPECT_TRUE(s.ok()) << s.error().message();
  // The same holds for delayed writes, which reserve their blocks too.
  ASSERT_TRUE(fs.truncate(b->ino, 0).ok());
  ASSERT_TRUE(fs.sync().ok());
  auto n = fs.write(w.ino, 0, bytes_of(std::string(size, 'c')));
  EXPECT_TRUE(n.ok() && *n == size) << (n.ok() ? std::to_string(*n) : n.error().message());
  w.close_and_check();
}

// Found by the ENOSPC suite on ext3: a write through the block map (no
// delayed allocation) goes in chunks of up to 8,192 blocks, each committed
// with the size that covers it. When space ran out in a later chunk, the
// write said ENOSPC although the earlier chunks were in the file and in
// its size. write(2) returns the short count then.
TEST(WriteBugs, SpaceRunningOutAfterAChunkEndsTheWriteShort) {
  TempDir tmp;
  const std::string image = tmp / "img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext3", "-b", "1024", image, "24M"});
  auto fs = open_rw(image);
  ASSERT_TRUE(fs);
  auto space = fs->statfs();
  ASSERT_TRUE(space.ok());
  const uint64_t free_bytes = space->available_blocks * space->block_size;
  ASSERT_GT(free_bytes, 9u << 20) << "the first chunk (8 MiB of 1 KiB blocks) must fit";
  auto f = fs->create(kRootIno, "f", 0644, {});
  ASSERT_TRUE(f.ok());
  std::string data(free_bytes + (1 << 20), '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('a' + i % 23);
  auto w = fs->write(f->ino, 0, bytes_of(data));
  ASSERT_TRUE(w.ok()) << "after blocks went in, the write must end short: " << w.error().message();
  EXPECT_GE(*w, 1u << 20);
  EXPECT_LT(*w, data.size());
  EXPECT_EQ(fs->stat(f->ino)->size, *w);
  Status read;
  EXPECT_TRUE(read_all(*fs, f->ino, *w, &read) == data.substr(0, *w)) << "the file holds what the write said";
  EXPECT_TRUE(read.ok());
  ASSERT_TRUE(fs->close().ok());
  FsckVerdict v = e2fsck_clean(image);
  EXPECT_TRUE(v.clean) << v.report;
}

// The blocks kept for root (mke2fs -m): ext4 lets a process allocate from
// them when its fsuid is the image's reserved uid (s_def_resuid), it is in
// the reserved group (s_def_resgid, when not 0), or it holds
// CAP_SYS_RESOURCE. The library asks the caller a server names for this
// thread (uext/caller.h), and only once the space outside runs out.
class TestCaller final : public Caller {
 public:
  TestCaller(uint32_t uid, uint32_t group, bool sys_resource) : uid_(uid), group_(group), cap_(sys_resource) {}
  uint32_t fsuid() const override { return uid_; }
  bool in_group(uint32_t gid) const override { return gid == group_; }
  bool has_sys_resource() const override {
    ++cap_asked;
    return cap_;
  }
  mutable int cap_asked = 0;

 private:
  uint32_t uid_, group_;
  bool cap_;
};

TEST(RootReserve, TheCallerNamedForTheThreadDecides) {
  TempDir tmp;
  const std::string image = tmp / "img";
  // 16 MiB with 20% for root; members of group 4242 may use it too.
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-m", "20", image, "16M"});
  run_ok({"tune2fs", "-g", "4242", image});
  auto fs = open_rw(image);
  ASSERT_TRUE(fs);
  const std::string chunk(64 << 10, 'u');
  auto fill = [&](Ino ino, uint64_t* at) -> Error {
    for (;;) {
      auto n = fs->write(ino, *at, bytes_of(chunk));
      if (!n.ok()) return n.error();
      *at += *n;
    }
  };
  TestCaller user(1000, 1000, false);
  auto f = [&] {
    CallerScope scope(&user);
    return fs->create(kRootIno, "user", 0644, {1000, 1000, 0});
  }();
  ASSERT_TRUE(f.ok()) << f.error().message();
  uint64_t user_bytes = 0;
  {
    CallerScope scope(&user);
    Error e = fill(f->ino, &user_bytes);
    EXPECT_EQ(e.code(), ENOSPC) << e.message();
    EXPECT_NE(e.message().find("root reserve"), std::string::npos) << e.message();
    EXPECT_GE(user.cap_asked, 1) << "the capability is asked once the space outside the reserve is gone";
    // A new name needs no block here, but a directory does.
    auto d = fs->mkdir(kRootIno, "dir", 0755, {1000, 1000, 0});
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.error().code(), ENOSPC);
  }
  auto st = fs->statfs();
  ASSERT_TRUE(st.ok());
  EXPECT_LT(st->available_blocks, 16u) << "what a write's worst-case tree blocks still need";
  EXPECT_GT(st->free_blocks, 700u) << "a fifth of the 4,096 blocks (819) stays for root";
  // Without a caller the options decide (use_root_reserve is off).
  auto n = fs->write(f->ino, user_bytes, bytes_of(chunk));
  EXPECT_FALSE(n.ok());
  // A member of the reserved group, then root (the reserved uid), then a
  // process with CAP_SYS_RESOURCE: each writes 64 KiB into the reserve.
  TestCaller member(1001, 4242, false), root(0, 0, false), capable(1002, 1002, true);
  int k = 0;
  for (const Caller* who : {static_cast<const Caller*>(&member), static_cast<const Caller*>(&root),
                            static_cast<const Caller*>(&capable)}) {
    CallerScope scope(who);
    auto g = fs->create(kRootIno, "reserve" + std::to_string(k++), 0644, {who->fsuid(), 0, 0});
    ASSERT_TRUE(g.ok()) << g.error().message();
    auto w = fs->write(g->ino, 0, bytes_of(chunk));
    EXPECT_TRUE(w.ok() && *w == chunk.size()) << "caller " << k << ": "
                                              << (w.ok() ? std::to_string(*w) : w.error().message());
  }
  EXPECT_EQ(root.cap_asked, 0) << "the reserved uid needs no capability check";
  {
    CallerScope scope(&root);
    auto d = fs->mkdir(kRootIno, "rootdir", 0755, {});
    EXPECT_TRUE(d.ok()) << d.error().message();
  }
  ASSERT_TRUE(fs->close().ok());
  FsckVerdict v = e2fsck_clean(image);
  EXPECT_TRUE(v.clean) << v.report;
}

// A full filesystem (for the caller: nothing left outside the root
// reserve) still takes a name its directory has room for, as ext4 does,
// which reserves nothing for a directory's growth: create, rename, link,
// symlink and mknod go in; mkdir, which needs a block, does not; and once
// the directory itself must grow, the create fails with ENOSPC, leaves no
// name and no inode behind, and records no error.
TEST(FullFilesystem, NamesThatFitStillGoIn) {
  TempDir tmp;
  const std::string image = tmp / "img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", image, "16M"});
  auto fs = open_rw(image);
  ASSERT_TRUE(fs);
  auto big = fs->create(kRootIno, "big", 0644, {});
  ASSERT_TRUE(big.ok()) << big.error().message();
  const std::string chunk(64 << 10, 'f');
  uint64_t at = 0;
  for (;;) {
    auto n = fs->write(big->ino, at, bytes_of(chunk));
    if (!n.ok()) {
      ASSERT_EQ(n.error().code(), ENOSPC) << n.error().message();
      break;
    }
    at += *n;
  }
  ASSERT_TRUE(fs->fsync(big->ino, false).ok());
  auto files_before = fs->statfs();
  ASSERT_TRUE(files_before.ok());
  auto a = fs->create(kRootIno, "a", 0644, {});
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_TRUE(fs->rename(kRootIno, "a", kRootIno, "b", 0).ok());
  EXPECT_TRUE(fs->link(a->ino, kRootIno, "c").ok());
  EXPECT_TRUE(fs->symlink(kRootIno, "s", "b", {}).ok());
  EXPECT_TRUE(fs->mknod(kRootIno, "p", S_IFIFO | 0644, {}).ok());
  auto d = fs->mkdir(kRootIno, "d", 0755, {});
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().code(), ENOSPC) << d.error().message();
  // Names of 200 bytes: a 4 KiB block holds 19 of them.
  int made = 0;
  Error last{0, ""};
  for (; made < 1000; ++made) {
    auto f = fs->create(kRootIno, std::string(190, 'n') + std::to_string(1000 + made), 0644, {});
    if (!f.ok()) {
      last = f.error();
      break;
    }
  }
  EXPECT_EQ(last.code(), ENOSPC) << "after " << made << " names: " << last.message();
  EXPECT_GT(made, 0);
  EXPECT_FALSE(fs->lookup(kRootIno, std::string(190, 'n') + std::to_string(1000 + made)).ok());
  auto after = fs->statfs();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(files_before->free_files - after->free_files, static_cast<uint64_t>(made) + 3)
      << "the inodes of a, s, p and the names made, and none for the create that failed";
  ASSERT_TRUE(fs->close().ok());
  EXPECT_TRUE(image_is_clean(image));
}

}  // namespace
}  // namespace uext::testing
