// An fsx-style test of mappings: random mixes of stores through a shared
// mapping, write(), read(), reads through the mapping, truncate, punch,
// msync and fsync on a file, checked after every step against a model of
// the file's bytes; two files at once, each driven by its own thread, so
// fault handlers, writeback and the operations race (the TSan build runs
// it). At the end the image is checked by e2fsck and read back anew.
#include <setjmp.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support/process.h"
#include "support/sigbus.h"
#include "support/writable.h"
#include "uext/filesystem.h"
#include "uext/mapping.h"

namespace uext::testing {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMaxPages = 48;
constexpr uint64_t kMaxSize = kMaxPages * kPage;

struct Model {
  std::string bytes;  // the file as it must read
};

// Runs `steps` random operations on file `ino`; returns the first mismatch.
std::string drive(Filesystem& fs, Ino ino, uint32_t seed, int steps, Model& model) {
  std::mt19937 rng(seed);
  auto pick = [&](uint64_t n) { return n == 0 ? 0 : std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  auto mapping = fs.mmap(ino, 0, kMaxSize, kProtRead | kProtWrite, kMapShared);
  if (!mapping.ok()) return "mmap: " + mapping.error().message();
  std::byte* map = (*mapping)->data();
  for (int step = 0; step < steps; ++step) {
    const uint64_t size = model.bytes.size();
    const int op = static_cast<int>(pick(9));
    const char fill = static_cast<char>('A' + pick(26));
    std::string what;
    switch (op) {
      case 0:
      case 1: {  // store through the mapping, inside the file
        if (size == 0) break;
        const uint64_t off = pick(size);
        const uint64_t len = 1 + pick(std::min<uint64_t>(size - off, 3 * kPage));
        std::memset(map + off, fill, len);
        std::memset(model.bytes.data() + off, fill, len);
        what = fmt::format("store {}+{}", off, len);
        break;
      }
      case 2: {  // write()
        const uint64_t off = pick(kMaxSize - 1);
        const uint64_t len = 1 + pick(std::min<uint64_t>(kMaxSize - off, 3 * kPage));
        std::string data(len, fill);
        auto w = fs.write(ino, off, std::as_bytes(std::span(data)));
        if (!w.ok() || *w != len) return fmt::format("step {}: write {}+{} failed", step, off, len);
        if (model.bytes.size() < off + len) model.bytes.resize(off + len, '\0');
        std::memcpy(model.bytes.data() + off, data.data(), len);
        what = fmt::format("write {}+{}", off, len);
        break;
      }
      case 3: {  // truncate
        const uint64_t to = pick(kMaxSize + 1);
        if (!fs.truncate(ino, to).ok()) return fmt::format("step {}: truncate to {} failed", step, to);
        model.bytes.resize(to, '\0');
        what = fmt::format("truncate {}", to);
        break;
      }
      case 4: {  // punch
        if (size == 0) break;
        const uint64_t off = pick(size);
        const uint64_t len = 1 + pick(size - off);
        if (!fs.fallocate(ino, kFallocPunchHole | kFallocKeepSize, off, len).ok()) {
          return fmt::format("step {}: punch {}+{} failed", step, off, len);
        }
        std::memset(model.bytes.data() + off, 0, len);
        what = fmt::format("punch {}+{}", off, len);
        break;
      }
      case 5: {  // msync or fsync
        Status s = pick(2) ? (*mapping)->sync(kSyncNow) : fs.fsync(ino);
        if (!s.ok()) return fmt::format("step {}: sync: {}", step, s.error().message());
        what = "sync";
        break;
      }
      case 6:
      case 7: {  // read() and compare
        std::vector<std::byte> buf(kMaxSize);
        auto r = fs.read(ino, 0, buf);
        if (!r.ok() || *r != size) return fmt::format("step {}: read gave {} of {} bytes", step, r.ok() ? *r : 0, size);
        if (std::memcmp(buf.data(), model.bytes.data(), size) != 0) {
          return fmt::format("step {}: read() differs from the model", step);
        }
        break;
      }
      default: {  // read through the mapping and compare
        if (size == 0) break;
        if (std::memcmp(map, model.bytes.data(), size) != 0) {
          for (uint64_t i = 0; i < size; ++i) {
            if (static_cast<char>(map[i]) != model.bytes[i]) {
              return fmt::format("step {}: the mapping differs from the model at byte {}", step, i);
            }
          }
        }
        break;
      }
    }
    (void)what;
  }
  Status s = (*mapping)->sync(kSyncNow);
  if (!s.ok()) return "final msync: " + s.error().message();
  return {};
}

struct FsxCase {
  const char* name;
  std::vector<std::string> mkfs;
  bool delalloc;
  FaultHandling handling;
};

class MmapFsx : public ::testing::TestWithParam<FsxCase> {};

TEST_P(MmapFsx, RandomMixMatchesTheModel) {
  const FsxCase& c = GetParam();
  TempDir tmp;
  const std::string image = tmp / "fs.img";
  make_image(image, c.mkfs, "64M");
  constexpr int kFiles = 2;
  std::vector<Model> models(kFiles);
  std::vector<Ino> inos(kFiles);
  {
    Options o;
    o.delayed_allocation = c.delalloc;
    o.fault_handling = c.handling;
    o.dirty_expire_ms = 50;  // background writeback races the operations
    o.writeback_interval_ms = 20;
    auto fs = open_writable(image, o);
    ASSERT_TRUE(fs);
    for (int f = 0; f < kFiles; ++f) {
      auto st = fs->create(kRootIno, fmt::format("f{}", f), 0644, {});
      ASSERT_TRUE(st.ok());
      inos[f] = st->ino;
    }
    std::vector<std::string> failures(kFiles);
    std::vector<std::thread> threads;
    for (int f = 0; f < kFiles; ++f) {
      threads.emplace_back([&, f] { failures[f] = drive(*fs, inos[f], 1000 + f, 400, models[f]); });
    }
    for (auto& t : threads) t.join();
    for (int f = 0; f < kFiles; ++f) EXPECT_EQ(failures[f], "") << "file " << f;
    ASSERT_TRUE(fs->close().ok());
  }
  expect_fsck_clean(image);
  auto fs = Filesystem::open(image, {});
  ASSERT_TRUE(fs.ok());
  for (int f = 0; f < kFiles; ++f) {
    std::vector<std::byte> buf(kMaxSize);
    auto r = (*fs)->read(inos[f], 0, buf);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(*r, models[f].bytes.size());
    EXPECT_EQ(std::memcmp(buf.data(), models[f].bytes.data(), *r), 0) << "file " << f << " after reopening";
  }
}

// Stores through a mapping while other threads truncate, punch, fsync and
// write back the same file: no deadlock, no crash, a clean image. (The
// bytes race by design; the model test above checks contents.)
TEST_P(MmapFsx, StoresRaceTruncateFsyncAndWriteback) {
  const FsxCase& c = GetParam();
  TempDir tmp;
  const std::string image = tmp / "fs.img";
  make_image(image, c.mkfs, "64M");
  Options o;
  o.delayed_allocation = c.delalloc;
  o.fault_handling = c.handling;
  o.dirty_expire_ms = 10;
  o.writeback_interval_ms = 10;
  auto fs = open_writable(image, o);
  ASSERT_TRUE(fs);
  auto st = fs->create(kRootIno, "race", 0644, {});
  ASSERT_TRUE(st.ok());
  const Ino ino = st->ino;
  ASSERT_TRUE(fs->truncate(ino, kMaxSize).ok());
  auto m = fs->mmap(ino, 0, kMaxSize, kProtRead | kProtWrite, kMapShared);
  ASSERT_TRUE(m.ok());
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> stores{0}, refused{0};
  std::thread storer([&] {
    install_sigbus_handler();
    std::mt19937 rng(7);
    while (!stop) {
      const uint64_t page = rng() % kMaxPages;
      // Past a concurrent truncate's end this raises SIGBUS: expected.
      if (try_fill((*m)->data() + page * kPage + rng() % 64, std::byte{0x5a}, 64)) {
        ++stores;
      } else {
        ++refused;
      }
    }
  });
  std::thread changer([&] {
    std::mt19937 rng(11);
    for (int i = 0; i < 300; ++i) {
      switch (rng() % 4) {
        case 0:
          EXPECT_TRUE(fs->truncate(ino, rng() % (kMaxSize + 1)).ok());
          break;
        case 1:
          EXPECT_TRUE(fs->fallocate(ino, kFallocPunchHole | kFallocKeepSize, rng() % kMaxSize, kPage).ok());
          break;
        case 2:
          EXPECT_TRUE(fs->fsync(ino).ok());
          break;
        default:
          EXPECT_TRUE((*m)->sync(kSyncNow).ok());
      }
    }
    stop = true;
  });
  changer.join();
  storer.join();
  EXPECT_GT(stores.load(), 0u);
  m->reset();
  ASSERT_TRUE(fs->close().ok());
  expect_fsck_clean(image);
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, MmapFsx,
    ::testing::Values(FsxCase{"ext4_uffd", {"-t", "ext4", "-b", "4096"}, true, FaultHandling::kUserfaultfd},
                      FsxCase{"ext4_signal", {"-t", "ext4", "-b", "4096"}, true, FaultHandling::kSignal},
                      FsxCase{"ext4_nodelalloc", {"-t", "ext4", "-b", "4096"}, false, FaultHandling::kUserfaultfd},
                      FsxCase{"ext2_1k", {"-t", "ext2", "-b", "1024"}, false, FaultHandling::kUserfaultfd}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace uext::testing
