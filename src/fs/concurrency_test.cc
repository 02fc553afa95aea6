// Namespace and data operations from many threads at once (run under TSan
// by scripts/test.sh: the suite names hold "Concurren"). Each thread keeps
// a model of what it alone owns, so results are exact even while others
// change the same directories; a watchdog turns a deadlock into a failure;
// e2fsck judges the image afterwards.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "support/crash.h"
#include "support/process.h"
#include "uext/filesystem.h"

namespace uext {
namespace {

using testing::run_ok;
using testing::TempDir;

#if defined(__SANITIZE_THREAD__)
constexpr int kScale = 1;  // TSan runs about ten times slower
constexpr int kWatchdogSeconds = 240;
#else
constexpr int kScale = 4;
constexpr int kWatchdogSeconds = 60;
#endif

std::span<const std::byte> bytes_of(const std::string& s) { return std::as_bytes(std::span(s)); }

// Fails the whole process when the threads have not finished in time: a
// deadlocked thread can be neither joined nor reported any other way.
class Watchdog {
 public:
  explicit Watchdog(const char* what) : what_(what) {
    thread_ = std::thread([this] {
      std::unique_lock l(mu_);
      if (!cv_.wait_for(l, std::chrono::seconds(kWatchdogSeconds), [&] { return done_; })) {
        std::fprintf(stderr, "watchdog: %s did not finish in %d s: deadlock?\n", what_, kWatchdogSeconds);
        std::fflush(stderr);
        std::abort();
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard l(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  const char* what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

class Problems {
 public:
  void add(std::string s) {
    std::lock_guard l(mu_);
    if (list_.size() < 40) list_.push_back(std::move(s));
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

std::string make_image(const TempDir& dir, const std::vector<std::string>& args, const std::string& size) {
  std::string image = dir / "img";
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back(image);
  argv.push_back(size);
  run_ok(argv);
  return image;
}

std::unique_ptr<Filesystem> open_rw(const std::string& image) {
  Options o;
  o.read_only = false;
  o.commit_interval_ms = 0;
  auto fs = Filesystem::open(image, o);
  EXPECT_TRUE(fs.ok()) << fs.error().message();
  return fs.ok() ? std::move(*fs) : nullptr;
}

std::string read_all(Filesystem& fs, Ino ino, std::string* err) {
  auto st = fs.stat(ino);
  if (!st.ok()) {
    *err = "stat: " + st.error().message();
    return {};
  }
  std::string s(st->size, '\0');
  auto n = fs.read(ino, 0, std::as_writable_bytes(std::span(s)));
  if (!n.ok()) {
    *err = "read: " + n.error().message();
    return {};
  }
  s.resize(*n);
  return s;
}

// One thread's files: name -> contents, in a directory it may share.
struct Owned {
  Ino dir = 0;
  std::map<std::string, std::string> files;
};

// The thread's own files as they should be; `prefix` selects them in a
// shared directory.
void check_owned(Filesystem& fs, const Owned& o, const std::string& prefix, const std::string& who,
                 Problems& problems) {
  auto entries = fs.list_directory(o.dir);
  if (!entries.ok()) {
    problems.add(who + ": readdir: " + entries.error().message());
    return;
  }
  std::set<std::string> seen, dups;
  for (const auto& e : *entries) {
    if (!seen.insert(e.name).second) dups.insert(e.name);
  }
  for (const auto& d : dups) problems.add(who + ": readdir lists " + d + " twice");
  for (const auto& name : seen) {
    if (name.rfind(prefix, 0) == 0 && !o.files.count(name)) problems.add(who + ": stray entry " + name);
  }
  for (const auto& [name, data] : o.files) {
    if (!seen.count(name)) {
      problems.add(who + ": readdir misses " + name);
      continue;
    }
    auto ino = fs.lookup(o.dir, name);
    if (!ino.ok()) {
      problems.add(who + ": lookup " + name + ": " + ino.error().message());
      continue;
    }
    std::string err;
    std::string got = read_all(fs, *ino, &err);
    if (!err.empty()) problems.add(who + ": " + name + ": " + err);
    else if (got != data) problems.add(fmt::format("{}: {}: contents differ (size {} vs {})", who, name, got.size(), data.size()));
  }
}

// Random operations on files this thread owns in `o` (names start with
// `prefix`); `other` is a second directory the thread moves files to and
// from, which another thread does the other way round.
void churn(Filesystem& fs, Owned& o, Owned& other, const std::string& prefix, int ops, uint32_t seed,
           Problems& problems) {
  std::mt19937 rng(seed);
  auto below = [&](uint32_t n) { return n ? static_cast<uint32_t>(rng() % n) : 0u; };
  int n = static_cast<int>(seed) * 10000;  // names stay unique across calls
  auto fail = [&](const std::string& what, const Error& e) {
    problems.add(fmt::format("{}: {}: errno {} ({})", prefix, what, e.code(), e.message()));
  };
  auto pick = [&](Owned& x) {
    auto it = x.files.begin();
    std::advance(it, below(static_cast<uint32_t>(x.files.size())));
    return it->first;
  };
  for (int i = 0; i < ops && problems.empty(); ++i) {
    uint32_t op = below(100);
    if (op < 20 || o.files.empty()) {
      std::string name = fmt::format("{}{}", prefix, n++);
      auto st = fs.create(o.dir, name, 0644, {});
      if (!st.ok()) return fail("create " + name, st.error());
      std::string data(below(9000), static_cast<char>('a' + below(26)));
      if (!data.empty()) {
        auto w = fs.write(st->ino, 0, bytes_of(data));
        if (!w.ok()) return fail("write " + name, w.error());
      }
      o.files[name] = data;
    } else if (op < 35) {  // append and read back
      std::string name = pick(o);
      auto ino = fs.lookup(o.dir, name);
      if (!ino.ok()) return fail("lookup " + name, ino.error());
      std::string more(1 + below(5000), static_cast<char>('A' + below(26)));
      auto w = fs.write(*ino, o.files[name].size(), bytes_of(more));
      if (!w.ok()) return fail("append " + name, w.error());
      o.files[name] += more;
      std::string err;
      std::string got = read_all(fs, *ino, &err);
      if (got != o.files[name]) {
        size_t d = 0;
        while (d < got.size() && d < o.files[name].size() && got[d] == o.files[name][d]) ++d;
        problems.add(fmt::format("{}: {} reads wrong after an append of {} bytes: size {} (want {}), first "
                                 "difference at byte {}: {:?} instead of {:?} {}",
                                 prefix, name, more.size(), got.size(), o.files[name].size(), d,
                                 got.substr(d, 16), o.files[name].substr(d, 16), err));
      }
    } else if (op < 45) {  // rename within the directory, sometimes over another own file
      std::string from = pick(o);
      std::string to = below(3) == 0 ? pick(o) : fmt::format("{}{}", prefix, n++);
      if (to == from) continue;
      Status s = fs.rename(o.dir, from, o.dir, to);
      if (!s.ok()) return fail("rename " + from + " " + to, s.error());
      o.files[to] = o.files[from];
      o.files.erase(from);
    } else if (op < 60) {  // move to the other directory (the other thread moves the other way)
      std::string from = pick(o);
      std::string to = fmt::format("{}{}", prefix, n++);
      Status s = fs.rename(o.dir, from, other.dir, to);
      if (!s.ok()) return fail("rename across " + from, s.error());
      other.files[to] = o.files[from];
      o.files.erase(from);
    } else if (op < 66 && !other.files.empty()) {  // and back
      std::string from = pick(other);
      std::string to = fmt::format("{}{}", prefix, n++);
      Status s = fs.rename(other.dir, from, o.dir, to);
      if (!s.ok()) return fail("rename back " + from, s.error());
      o.files[to] = other.files[from];
      other.files.erase(from);
    } else if (op < 74) {
      std::string name = pick(o);
      Status s = fs.unlink(o.dir, name);
      if (!s.ok()) return fail("unlink " + name, s.error());
      o.files.erase(name);
    } else if (op < 80) {  // link, then drop one of the names later
      std::string from = pick(o);
      std::string to = fmt::format("{}{}", prefix, n++);
      auto ino = fs.lookup(o.dir, from);
      if (!ino.ok()) return fail("lookup " + from, ino.error());
      auto st = fs.link(*ino, o.dir, to);
      if (!st.ok()) return fail("link " + to, st.error());
      // Two names for one inode: later writes through one show in the
      // other, so the model keeps only distinct inodes; drop the old name.
      Status s = fs.unlink(o.dir, from);
      if (!s.ok()) return fail("unlink " + from, s.error());
      o.files[to] = o.files[from];
      o.files.erase(from);
    } else if (op < 88) {
      // A directory made, filled, listed, emptied and removed.
      std::string name = fmt::format("{}dir{}", prefix, n++);
      auto st = fs.mkdir(o.dir, name, 0755, {});
      if (!st.ok()) return fail("mkdir " + name, st.error());
      for (int k = 0; k < 3; ++k) {
        auto c = fs.create(st->ino, fmt::format("c{}", k), 0644, {});
        if (!c.ok()) return fail("create in " + name, c.error());
      }
      auto list = fs.list_directory(st->ino);
      if (!list.ok() || list->size() != 5) problems.add(prefix + ": " + name + " lists wrong");
      for (int k = 0; k < 3; ++k) {
        Status s = fs.unlink(st->ino, fmt::format("c{}", k));
        if (!s.ok()) return fail("unlink in " + name, s.error());
      }
      Status s = fs.rmdir(o.dir, name);
      if (!s.ok()) return fail("rmdir " + name, s.error());
    } else if (op < 94) {  // truncate
      std::string name = pick(o);
      auto ino = fs.lookup(o.dir, name);
      if (!ino.ok()) return fail("lookup " + name, ino.error());
      uint64_t to = below(static_cast<uint32_t>(o.files[name].size() + 2000));
      Status s = fs.truncate(*ino, to);
      if (!s.ok()) return fail("truncate " + name, s.error());
      o.files[name].resize(to, '\0');
    } else {  // stat and readdir
      auto list = fs.list_directory(o.dir);
      if (!list.ok()) return fail("readdir", list.error());
      for (const auto& e : *list) {
        // Others change this directory: an entry may be gone by now.
        auto st = fs.stat(e.ino);
        if (!st.ok() && e.name.rfind(prefix, 0) == 0) fail("stat " + e.name, st.error());
      }
    }
  }
}

// Checks the whole image with e2fsck after close.
void expect_clean(const std::string& image) {
  testing::FsckVerdict v = testing::e2fsck_clean(image);
  EXPECT_TRUE(v.clean) << v.report;
}

class Concurrency : public ::testing::TestWithParam<std::vector<std::string>> {};

// Eight threads: pairs share a directory pair and move files both ways
// between them (the A->B / B->A lock-order pattern), all of them also work
// in one shared directory, and a ninth thread keeps syncing.
TEST_P(Concurrency, NamespaceOperationsFromManyThreads) {
  TempDir tmp;
  std::string image = make_image(tmp, GetParam(), "64M");
  Problems problems;
  const int kThreads = std::getenv("UEXT_CONC_THREADS") ? std::max(2, std::atoi(std::getenv("UEXT_CONC_THREADS")) / 2 * 2) : 8;
  {
    auto fs = open_rw(image);
    ASSERT_TRUE(fs);
    auto shared = fs->mkdir(kRootIno, "shared", 0755, {});
    ASSERT_TRUE(shared.ok());
    std::vector<Owned> own(kThreads), in_shared(kThreads);
    std::vector<Ino> pair_dirs;
    for (int p = 0; p < kThreads / 2; ++p) {
      for (const char* side : {"a", "b"}) {
        auto d = fs->mkdir(kRootIno, fmt::format("pair{}{}", p, side), 0755, {});
        ASSERT_TRUE(d.ok());
        pair_dirs.push_back(d->ino);
      }
    }
    // Thread t works in its pair's directory t%2 ("a" or "b") and moves to the other.
    for (int t = 0; t < kThreads; ++t) {
      own[t].dir = pair_dirs[(t / 2) * 2 + t % 2];
      in_shared[t].dir = shared->ino;
    }
    std::vector<Owned> away(kThreads);  // thread t's files parked in the other pair directory
    for (int t = 0; t < kThreads; ++t) away[t].dir = pair_dirs[(t / 2) * 2 + (1 - t % 2)];

    std::atomic<bool> stop{false};
    std::atomic<uint64_t> syncs{0};
    {
      Watchdog dog("NamespaceOperationsFromManyThreads");
      std::vector<std::thread> threads;
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
          const std::string prefix = fmt::format("t{}-", t);
          for (int round = 0; round < 2 && problems.empty(); ++round) {
            churn(*fs, own[t], away[t], prefix, 60 * kScale, 100 + t * 7 + round, problems);
            churn(*fs, in_shared[t], away[t], prefix + "s", 40 * kScale, 200 + t * 7 + round, problems);
          }
        });
      }
      std::thread syncer([&] {
        uint32_t i = 0;
        while (!stop.load()) {
          Status s = (i++ % 3 == 0) ? fs->sync() : fs->fsync(shared->ino, i % 2 == 0);
          if (!s.ok()) problems.add("sync: " + s.error().message());
          auto st = fs->statfs();
          if (!st.ok()) problems.add("statfs: " + st.error().message());
          ++syncs;
          std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
      });
      for (auto& th : threads) th.join();
      stop = true;
      syncer.join();
    }
    ASSERT_TRUE(problems.empty()) << problems.text();
    EXPECT_GT(syncs.load(), 0u);
    for (int t = 0; t < kThreads; ++t) {
      const std::string prefix = fmt::format("t{}-", t);
      check_owned(*fs, own[t], prefix, prefix + " own", problems);
      check_owned(*fs, away[t], prefix, prefix + " away", problems);
      check_owned(*fs, in_shared[t], prefix + "s", prefix + " shared", problems);
    }
    EXPECT_TRUE(problems.empty()) << problems.text();
    ASSERT_TRUE(fs->close().ok());
  }
  expect_clean(image);
  // And once more after a reopen: what the threads left is what is there.
  auto fs = Filesystem::open(image, {});
  ASSERT_TRUE(fs.ok());
}

// Directories moved under each other by two threads at once: each rename
// alone is legal, together they would make a loop cut off from the root
// (which the kernel's s_vfs_rename_mutex prevents). One of each crossing
// pair must fail with EINVAL or both succeed in an order that makes no
// loop; afterwards every directory is reachable and e2fsck is clean.
TEST_P(Concurrency, CrossedDirectoryRenamesNeverMakeALoop) {
  TempDir tmp;
  std::string image = make_image(tmp, GetParam(), "32M");
  Problems problems;
  {
    auto fs = open_rw(image);
    ASSERT_TRUE(fs);
    auto p = fs->mkdir(kRootIno, "P", 0755, {});
    auto q = fs->mkdir(kRootIno, "Q", 0755, {});
    ASSERT_TRUE(p.ok() && q.ok());
    const Ino P = p->ino, Q = q->ino;
    std::atomic<int> loops_refused{0};
    {
      Watchdog dog("CrossedDirectoryRenamesNeverMakeALoop");
      // Thread 0 moves P into Q and back to the root; thread 1 moves Q into
      // P and back. Where each directory is is found by lookup each time.
      auto mover = [&](Ino me, const char* my_name, Ino other, const char* other_name) {
        for (int i = 0; i < 100 * kScale && problems.empty(); ++i) {
          // Is `me` at the root? Then try into `other` (wherever it is).
          if (fs->lookup(kRootIno, my_name).ok()) {
            Status s = fs->rename(kRootIno, my_name, other, my_name);
            if (!s.ok() && s.error().code() != EINVAL && s.error().code() != ENOENT)
              problems.add(fmt::format("rename {} into {}: {}", my_name, other_name, s.error().message()));
            if (!s.ok() && s.error().code() == EINVAL) ++loops_refused;
          } else {
            Status s = fs->rename(other, my_name, kRootIno, my_name);
            if (!s.ok() && s.error().code() != ENOENT)
              problems.add(fmt::format("rename {} back: {}", my_name, s.error().message()));
          }
        }
      };
      std::thread a(mover, P, "P", Q, "Q");
      std::thread b(mover, Q, "Q", P, "P");
      a.join();
      b.join();
    }
    ASSERT_TRUE(problems.empty()) << problems.text();
    // Both reachable from the root.
    bool p_found = fs->resolve("/P").ok() || fs->resolve("/Q/P").ok();
    bool q_found = fs->resolve("/Q").ok() || fs->resolve("/P/Q").ok();
    EXPECT_TRUE(p_found && q_found) << "a directory was cut off from the root (a rename loop)";
    ASSERT_TRUE(fs->close().ok());
  }
  expect_clean(image);
}

// Many threads appending to and reading one file while others fsync it:
// reads see a prefix-consistent file (the size never runs ahead of data).
TEST_P(Concurrency, AppendersReadersAndFsyncOnOneFile) {
  TempDir tmp;
  std::string image = make_image(tmp, GetParam(), "32M");
  Problems problems;
  {
    auto fs = open_rw(image);
    ASSERT_TRUE(fs);
    std::vector<Ino> files;
    for (int f = 0; f < 4; ++f) {
      auto st = fs->create(kRootIno, fmt::format("log{}", f), 0644, {});
      ASSERT_TRUE(st.ok());
      files.push_back(st->ino);
    }
    constexpr size_t kRecord = 700;  // not a block multiple: records straddle blocks
    const int records = 60 * kScale;
    std::atomic<int> writers_done{0};
    {
      Watchdog dog("AppendersReadersAndFsyncOnOneFile");
      std::vector<std::thread> threads;
      // One writer per file: record i is kRecord bytes of the letter i % 26.
      for (int f = 0; f < 4; ++f) {
        threads.emplace_back([&, f] {
          for (int i = 0; i < records && problems.empty(); ++i) {
            std::string rec(kRecord, static_cast<char>('a' + i % 26));
            auto w = fs->write(files[f], static_cast<uint64_t>(i) * kRecord, bytes_of(rec));
            if (!w.ok()) problems.add("write: " + w.error().message());
            if (i % 16 == 0) {
              Status s = fs->fsync(files[f]);
              if (!s.ok()) problems.add("fsync: " + s.error().message());
            }
          }
          ++writers_done;
        });
      }
      // Readers: whatever size they see, the bytes below it are the records.
      for (int r = 0; r < 3; ++r) {
        threads.emplace_back([&, r] {
          while (writers_done.load() < 4 && problems.empty()) {
            Ino ino = files[r % 4];
            std::string err;
            std::string got = read_all(*fs, ino, &err);
            if (!err.empty()) {
              problems.add("reader: " + err);
              return;
            }
            for (size_t i = 0; i < got.size(); ++i) {
              char want = static_cast<char>('a' + (i / kRecord) % 26);
              if (got[i] != want) {
                problems.add(fmt::format("reader: byte {} of a {}-byte read is {:#x}, not '{}'", i, got.size(),
                                         static_cast<unsigned char>(got[i]), want));
                return;
              }
            }
          }
        });
      }
      for (auto& th : threads) th.join();
    }
    EXPECT_TRUE(problems.empty()) << problems.text();
    for (Ino ino : files) {
      auto st = fs->stat(ino);
      ASSERT_TRUE(st.ok());
      EXPECT_EQ(st->size, records * kRecord);
    }
    ASSERT_TRUE(fs->close().ok());
  }
  expect_clean(image);
}

// Background writeback lets go of the file's lock while it writes a chunk
// (src/fs/writeback.cc): writers past a tiny dirty limit, a thread that
// truncates, rewrites and punches its own file, readers and fsync all run
// against it. Every file must read back exactly, before and after reopening.
class ConcurrentWriteback : public ::testing::TestWithParam<const char*> {};

TEST_P(ConcurrentWriteback, WritersPastTheDirtyLimitRaceTruncateAndFsync) {
  TempDir tmp;
  std::string image = make_image(tmp, {"-t", "ext4", "-b", GetParam()}, "160M");
  Problems problems;
  constexpr uint64_t kPiece = 48 * 1024;
  const uint64_t file_bytes = kPiece * 96 * kScale;  // about 4.5 MiB a unit of scale
  auto byte_at = [](int f, uint64_t off) { return static_cast<char>(1 + (off / 4096 + 7 * f) % 251); };
  std::string model;  // the truncating thread's file
  {
    Options o;
    o.read_only = false;
    o.commit_interval_ms = 20;
    // Background writeback past a quarter of the limit only, so that it
    // finds long dirty runs (the ones it writes without the file's lock).
    o.dirty_limit_bytes = 12 << 20;
    o.dirty_expire_ms = 600000;
    o.writeback_interval_ms = 1;
    o.page_cache_bytes = 32 << 20;
    auto opened = Filesystem::open(image, o);
    ASSERT_TRUE(opened.ok()) << opened.error().message();
    auto& fs = **opened;
    std::vector<Ino> files;
    for (int f = 0; f < 4; ++f) {
      auto st = fs.create(kRootIno, fmt::format("w{}", f), 0100644, {});
      ASSERT_TRUE(st.ok());
      files.push_back(st->ino);
    }
    std::atomic<int> writers_done{0};
    {
      Watchdog dog("WritersPastTheDirtyLimitRaceTruncateAndFsync");
      std::vector<std::thread> threads;
      for (int f = 0; f < 3; ++f) {
        threads.emplace_back([&, f] {
          std::string piece(kPiece, '\0');
          for (uint64_t off = 0; off < file_bytes && problems.empty(); off += kPiece) {
            for (uint64_t i = 0; i < kPiece; ++i) piece[i] = byte_at(f, off + i);
            auto w = fs.write(files[f], off, bytes_of(piece));
            if (!w.ok() || *w != kPiece) problems.add(fmt::format("writer {}: write at {} failed", f, off));
            if ((off / kPiece) % 64 == 63) {
              Status s = fs.fsync(files[f]);
              if (!s.ok()) problems.add("fsync: " + s.error().message());
            }
          }
          ++writers_done;
        });
      }
      threads.emplace_back([&] {
        std::mt19937 rng(7);
        while (writers_done.load() < 3 && problems.empty()) {
          const uint64_t off = rng() % (512 * 1024);
          const std::string data(1 + rng() % (96 * 1024), static_cast<char>('a' + rng() % 26));
          auto w = fs.write(files[3], off, bytes_of(data));
          if (!w.ok()) {
            problems.add("truncator: write: " + w.error().message());
            return;
          }
          if (model.size() < off + data.size()) model.resize(off + data.size(), '\0');
          model.replace(off, data.size(), data);
          switch (rng() % 3) {
            case 0: {
              const uint64_t size = rng() % (model.size() + 1);
              if (!fs.truncate(files[3], size).ok()) problems.add("truncate failed");
              model.resize(size);
              break;
            }
            case 1: {
              const uint64_t at = rng() % (model.size() + 1), len = rng() % (64 * 1024);
              if (!fs.fallocate(files[3], kFallocPunchHole | kFallocKeepSize, at, len).ok()) {
                problems.add("punch failed");
              }
              for (uint64_t i = at; i < std::min<uint64_t>(at + len, model.size()); ++i) model[i] = '\0';
              break;
            }
            default:
              break;
          }
          std::string err;
          if (read_all(fs, files[3], &err) != model) problems.add("truncator: file differs from its model " + err);
        }
      });
      threads.emplace_back([&] {
        while (writers_done.load() < 3 && problems.empty()) {
          for (int f = 0; f < 3; ++f) {
            std::string err;
            const std::string got = read_all(fs, files[f], &err);
            for (uint64_t i = 0; i < got.size(); i += 509) {
              if (got[i] != byte_at(f, i)) {
                problems.add(fmt::format("reader: w{} byte {} of {} is wrong", f, i, got.size()));
                return;
              }
            }
          }
        }
      });
      for (auto& th : threads) th.join();
    }
    EXPECT_TRUE(problems.empty()) << problems.text();
    ASSERT_TRUE(fs.close().ok());
  }
  expect_clean(image);
  auto fs = Filesystem::open(image, {});
  ASSERT_TRUE(fs.ok());
  for (int f = 0; f < 4; ++f) {
    auto ino = (*fs)->resolve(fmt::format("/w{}", f));
    ASSERT_TRUE(ino.ok());
    std::string err;
    const std::string got = read_all(**fs, *ino, &err);
    if (f == 3) {
      EXPECT_TRUE(got == model) << "w3 differs from its model after reopening";
      continue;
    }
    ASSERT_EQ(got.size(), file_bytes) << err;
    for (uint64_t i = 0; i < got.size(); ++i) {
      if (got[i] != byte_at(f, i)) {
        ADD_FAILURE() << fmt::format("w{}: byte {} is wrong after reopening", f, i);
        break;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(BlockSizes, ConcurrentWriteback, ::testing::Values("4096", "1024"),
                         [](const auto& info) { return std::string("b") + info.param; });

// Threads making files for ids the quota files have never seen, while
// others write, chown and remove theirs and a thread syncs: entries are
// inserted (the trees and the files grow) beside entry rewrites, and
// e2fsck recounts every id's usage afterwards.
TEST(QuotaConcurrency, NewIdsFromManyThreadsKeepUsageRight) {
  TempDir tmp;
  std::string image =
      make_image(tmp, {"-t", "ext4", "-b", "1024", "-O", "quota,project", "-E", "quotatype=usrquota:grpquota:prjquota"},
                 "64M");
  Problems problems;
  {
    auto fs = open_rw(image);
    ASSERT_TRUE(fs);
    std::atomic<bool> stop{false};
    Watchdog dog("NewIdsFromManyThreadsKeepUsageRight");
    std::vector<std::thread> threads;
    for (int t = 0; t < 6; ++t) {
      threads.emplace_back([&, t] {
        auto dir = fs->mkdir(kRootIno, fmt::format("t{}", t), 0777, {});
        if (!dir.ok()) return problems.add("mkdir: " + dir.error().message());
        for (int i = 0; i < 40 && problems.empty(); ++i) {
          const Owner o{static_cast<uint32_t>(100000 + t * 1000 + i), static_cast<uint32_t>(500 + (t * 7 + i) % 23), 0};
          auto f = fs->create(dir->ino, fmt::format("f{}", i), 0644, o);
          if (!f.ok()) return problems.add("create: " + f.error().message());
          std::string data(500 + 300 * i, 'q');
          auto w = fs->write(f->ino, 0, std::as_bytes(std::span(data)));
          if (!w.ok()) return problems.add("write: " + w.error().message());
          if (i % 3 == 0) {
            SetAttr a;
            a.uid = 200000 + t * 1000 + i;
            auto c = fs->setattr(f->ino, a);
            if (!c.ok()) return problems.add("chown: " + c.error().message());
          }
          if (i % 5 == 4) {
            Status u = fs->unlink(dir->ino, fmt::format("f{}", i - 1));
            if (!u.ok()) return problems.add("unlink: " + u.error().message());
          }
        }
      });
    }
    std::thread syncer([&] {
      while (!stop.load()) {
        Status s = fs->sync();
        if (!s.ok()) problems.add("sync: " + s.error().message());
        std::this_thread::sleep_for(std::chrono::milliseconds(3));
      }
    });
    for (auto& th : threads) th.join();
    stop = true;
    syncer.join();
    ASSERT_TRUE(problems.empty()) << problems.text();
    ASSERT_TRUE(fs->close().ok());
  }
  expect_clean(image);
}

// The third keeps quota files, whose usage every thread's changes move.
std::string image_name(size_t index) {
  static const char* const kNames[] = {"ext4", "ext3_1k", "ext4_quota"};
  return kNames[index];
}
INSTANTIATE_TEST_SUITE_P(Images, Concurrency,
                         ::testing::Values(std::vector<std::string>{"-t", "ext4", "-b", "4096"},
                                           std::vector<std::string>{"-t", "ext3", "-b", "1024"},
                                           std::vector<std::string>{"-t", "ext4", "-b", "4096", "-O", "quota,project",
                                                                    "-E", "quotatype=usrquota:grpquota:prjquota"}),
                         [](const auto& info) { return image_name(info.index); });

}  // namespace
}  // namespace uext
