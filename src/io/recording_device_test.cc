#include "io/recording_device.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <set>
#include <thread>

#include "io/fault_device.h"
#include "support/process.h"

namespace uext::io {
namespace {

std::vector<std::byte> filled(size_t n, uint8_t value) {
  return std::vector<std::byte>(n, static_cast<std::byte>(value));
}

std::vector<std::byte> contents(BlockDevice& dev) {
  std::vector<std::byte> out(dev.size());
  EXPECT_TRUE(dev.read(0, out).ok());
  return out;
}

uint8_t byte_at(const std::vector<std::byte>& v, size_t i) { return static_cast<uint8_t>(v.at(i)); }

// A 64 KiB device; three epochs: {A@0, B@4096} flush {C@8192} flush {D@0}.
struct Fixture {
  std::vector<std::byte> base = filled(64 << 10, 0xEE);
  RecordingDevice dev{make_memory_device(base)};
  Fixture() {
    EXPECT_TRUE(dev.write(0, filled(4096, 0xA1)).ok());
    EXPECT_TRUE(dev.write(4096, filled(4096, 0xB2)).ok());
    EXPECT_TRUE(dev.flush().ok());
    EXPECT_TRUE(dev.write(8192, filled(1024, 0xC3)).ok());
    EXPECT_TRUE(dev.flush().ok());
    EXPECT_TRUE(dev.write(0, filled(512, 0xD4)).ok());
  }
};

TEST(RecordingDevice, ForwardsEverythingAndCountsEpochs) {
  Fixture f;
  std::vector<std::byte> now = contents(f.dev);
  EXPECT_EQ(byte_at(now, 0), 0xD4);
  EXPECT_EQ(byte_at(now, 600), 0xA1);
  EXPECT_EQ(byte_at(now, 5000), 0xB2);
  EXPECT_EQ(byte_at(now, 8192), 0xC3);
  EXPECT_EQ(f.dev.flush_count(), 2u);
  IoLog log = f.dev.log();
  EXPECT_EQ(log.flushes(), 2u);
  EXPECT_EQ(log.epochs(), 3u);
  EXPECT_EQ(log.writes_in_epoch(0), 2u);
  EXPECT_EQ(log.writes_in_epoch(1), 1u);
  EXPECT_EQ(log.writes_in_epoch(2), 1u);
  EXPECT_EQ(log.writes_in_epoch(3), 0u);
  EXPECT_EQ(log.total_writes(), 4u);
  EXPECT_EQ(log.bytes_written(), 4096u + 4096 + 1024 + 512);
  EXPECT_EQ(log.write(1, 0).offset, 8192u);
  EXPECT_EQ(log.write(1, 0).size(), 1024u);
}

TEST(RecordingDevice, CleanCutsHoldExactlyWhatEachFlushMadeDurable) {
  Fixture f;
  IoLog log = f.dev.log();
  auto s0 = log.materialize_in_memory(log.clean_cut(0), f.base);
  ASSERT_TRUE(s0.ok());
  EXPECT_EQ(contents(**s0), f.base);

  auto s1 = log.materialize_in_memory(log.clean_cut(1), f.base);
  ASSERT_TRUE(s1.ok());
  auto c1 = contents(**s1);
  EXPECT_EQ(byte_at(c1, 0), 0xA1);
  EXPECT_EQ(byte_at(c1, 4096), 0xB2);
  EXPECT_EQ(byte_at(c1, 8192), 0xEE);

  auto s2 = log.materialize_in_memory(log.clean_cut(2), f.base);
  ASSERT_TRUE(s2.ok());
  auto c2 = contents(**s2);
  EXPECT_EQ(byte_at(c2, 0), 0xA1);
  EXPECT_EQ(byte_at(c2, 8192), 0xC3);

  // Everything landed after the last flush: the device as it is now.
  auto all = log.materialize_in_memory(log.all_landed(2), f.base);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(contents(**all), contents(f.dev));
}

TEST(RecordingDevice, EverySubsetOfAnEpochCanBeBuilt) {
  std::vector<std::byte> base = filled(16 << 10, 0);
  RecordingDevice dev(make_memory_device(base));
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(dev.write(static_cast<uint64_t>(i) * 4096, filled(4096, 1 + i)).ok());
  IoLog log = dev.log();
  ASSERT_EQ(log.epochs(), 1u);
  for (uint64_t mask = 0; mask < 16; ++mask) {
    auto state = log.subset(0, mask);
    ASSERT_TRUE(state.ok());
    auto m = log.materialize_in_memory(*state, base);
    ASSERT_TRUE(m.ok());
    auto c = contents(**m);
    for (int i = 0; i < 4; ++i)
      EXPECT_EQ(byte_at(c, static_cast<size_t>(i) * 4096 + 7), (mask >> i & 1) ? 1 + i : 0)
          << "mask " << mask << " write " << i;
  }
  EXPECT_FALSE(log.subset(0, 16).ok());  // names a fifth write
  EXPECT_FALSE(log.subset(1, 0).ok());   // no such epoch
}

TEST(RecordingDevice, OverlappingInFlightWritesApplyInIssueOrder) {
  std::vector<std::byte> base = filled(8192, 0);
  RecordingDevice dev(make_memory_device(base));
  ASSERT_TRUE(dev.write(0, filled(4096, 1)).ok());
  ASSERT_TRUE(dev.write(0, filled(4096, 2)).ok());
  IoLog log = dev.log();
  auto both = log.materialize_in_memory(*log.subset(0, 3), base);
  EXPECT_EQ(byte_at(contents(**both), 0), 2);
  // The older write alone is a possible state: the cache wrote it back
  // before the newer one arrived, and then the power went.
  auto first = log.materialize_in_memory(*log.subset(0, 1), base);
  EXPECT_EQ(byte_at(contents(**first), 0), 1);
}

TEST(RecordingDevice, TornWritesLandSectorBySector) {
  std::vector<std::byte> base = filled(16384, 0);
  RecordingDevice dev(make_memory_device(base));
  // Unaligned on purpose: 300 bytes into sector 1 through 100 bytes into sector 9.
  std::vector<std::byte> data(4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>(1 + i / 512);
  ASSERT_TRUE(dev.write(812, data).ok());
  IoLog log = dev.log();

  std::set<std::vector<bool>> seen;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    CrashState s = log.random_state(0, seed, {.tear_probability = 1.0});
    EXPECT_EQ(s.epoch, 0u);
    if (s.landed.empty()) continue;
    ASSERT_EQ(s.torn.size(), 1u);
    const std::vector<bool>& kept = s.torn.at(0);
    ASSERT_EQ(kept.size(), 9u);  // sectors 1..9
    size_t n = 0;
    for (bool k : kept) n += k;
    EXPECT_GT(n, 0u);
    EXPECT_LT(n, 9u);
    seen.insert(kept);
    auto m = log.materialize_in_memory(s, base);
    ASSERT_TRUE(m.ok()) << m.error().message();
    auto c = contents(**m);
    for (size_t off = 0; off < c.size(); ++off) {
      bool in_write = off >= 812 && off < 812 + 4096;
      bool sector_kept = in_write && kept[off / 512 - 1];
      uint8_t want = sector_kept ? static_cast<uint8_t>(data[off - 812]) : 0;
      ASSERT_EQ(byte_at(c, off), want) << "seed " << seed << " offset " << off << " " << s.describe(1);
    }
  }
  EXPECT_GT(seen.size(), 20u);  // many different tears came up
}

TEST(RecordingDevice, RandomStatesAreReproducibleAndVaried) {
  std::vector<std::byte> base = filled(1 << 20, 0);
  RecordingDevice dev(make_memory_device(base));
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(dev.write(static_cast<uint64_t>(i) * 8192, filled(8192, 7)).ok());
  IoLog log = dev.log();
  std::set<std::vector<size_t>> subsets;
  size_t torn = 0;
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    CrashState a = log.random_state(0, seed, {.tear_probability = 0.5});
    CrashState b = log.random_state(0, seed, {.tear_probability = 0.5});
    EXPECT_EQ(a.landed, b.landed);
    EXPECT_EQ(a.torn, b.torn);
    EXPECT_TRUE(log.validate(a).ok());
    subsets.insert(a.landed);
    torn += a.torn.size();
  }
  EXPECT_GT(subsets.size(), 45u);
  EXPECT_GT(torn, 0u);
  // Without tearing nothing is torn.
  for (uint64_t seed = 1; seed <= 20; ++seed) EXPECT_TRUE(log.random_state(0, seed).torn.empty());
}

TEST(RecordingDevice, DescribeSaysWhatLanded) {
  Fixture f;
  IoLog log = f.dev.log();
  EXPECT_EQ(log.clean_cut(1).describe(1), "epoch 1: clean cut (none of its 1 writes landed)");
  EXPECT_EQ(log.subset(0, 2)->describe(2), "epoch 0: writes {1} of 2 landed");
  CrashState s = *log.subset(0, 3);
  s.torn[1] = std::vector<bool>{true, false, false, true, false, false, false, false};
  EXPECT_TRUE(log.validate(s).ok());
  EXPECT_EQ(s.describe(2), "epoch 0: writes {0,1} of 2 landed, write 1 torn (sectors {0,3} of 8)");
}

TEST(RecordingDevice, ValidateRejectsStatesThatDoNotFitTheLog) {
  Fixture f;
  IoLog log = f.dev.log();
  CrashState s;
  s.epoch = 3;
  EXPECT_FALSE(log.validate(s).ok());
  s.epoch = 0;
  s.landed = {1, 0};
  EXPECT_FALSE(log.validate(s).ok());
  s.landed = {2};
  EXPECT_FALSE(log.validate(s).ok());
  s.landed = {0};
  s.torn[1] = std::vector<bool>(8);
  EXPECT_FALSE(log.validate(s).ok());  // torn but not landed
  s.torn.clear();
  s.torn[0] = std::vector<bool>(3);
  EXPECT_FALSE(log.validate(s).ok());  // wrong sector count
  auto dev = make_memory_device(f.base);
  EXPECT_FALSE(log.apply(s, *dev).ok());
}

TEST(RecordingDevice, FailedWritesAndFlushesAreNotRecorded) {
  auto fault = std::make_unique<FaultDevice>(make_memory_device(8192));
  FaultDevice* faults = fault.get();
  RecordingDevice dev(std::move(fault));
  faults->fail_nth(IoOp::kWrite, 2);
  faults->fail_nth(IoOp::kFlush, 1);
  EXPECT_TRUE(dev.write(0, filled(512, 1)).ok());
  EXPECT_FALSE(dev.write(512, filled(512, 2)).ok());
  EXPECT_FALSE(dev.flush().ok());
  IoLog log = dev.log();
  EXPECT_EQ(log.total_writes(), 1u);
  EXPECT_EQ(log.flushes(), 0u);
  EXPECT_TRUE(dev.flush().ok());
  EXPECT_EQ(dev.flush_count(), 1u);
}

TEST(RecordingDevice, ConcurrentWritersNeverLoseAWriteAndFsyncedWritesAreInTheirCut) {
  constexpr int kThreads = 4, kWrites = 200;
  RecordingDevice dev(make_memory_device(static_cast<uint64_t>(kThreads) * kWrites * 512));
  // durable_epoch[t][i]: flush_count seen after write i of thread t and a flush.
  std::vector<std::vector<size_t>> durable(kThreads, std::vector<size_t>(kWrites, 0));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kWrites; ++i) {
        uint64_t slot = static_cast<uint64_t>(t) * kWrites + i;
        std::vector<std::byte> b(512);
        std::memcpy(b.data(), &slot, sizeof slot);
        ASSERT_TRUE(dev.write(slot * 512, b).ok());
        if (i % 5 == 0) {
          ASSERT_TRUE(dev.flush().ok());
          durable[t][i] = dev.flush_count();
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  IoLog log = dev.log();
  ASSERT_EQ(log.total_writes(), static_cast<size_t>(kThreads) * kWrites);
  // Where each slot's write is.
  std::vector<size_t> epoch_of(static_cast<size_t>(kThreads) * kWrites, SIZE_MAX);
  for (size_t e = 0; e < log.epochs(); ++e)
    for (size_t i = 0; i < log.writes_in_epoch(e); ++i) epoch_of[log.write(e, i).offset / 512] = e;
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kWrites; i += 5) {
      size_t slot = static_cast<size_t>(t) * kWrites + i;
      ASSERT_NE(epoch_of[slot], SIZE_MAX);
      // The write is in every state from the cut at the flush count seen.
      EXPECT_LT(epoch_of[slot], durable[t][i]) << "thread " << t << " write " << i;
    }
  }
}

TEST(RecordingDevice, FlushesThatOverlapKeepBoundariesInOrder) {
  IoLog log;
  log.add_write(0, filled(512, 1));
  log.add_write(512, filled(512, 2));
  log.add_flush_at(2);
  log.add_flush_at(1);  // started before the one already logged: covered by it
  EXPECT_EQ(log.flushes(), 1u);
  log.add_write(1024, filled(512, 3));
  log.add_flush_at(2);  // started before the third write completed
  EXPECT_EQ(log.flushes(), 2u);
  EXPECT_EQ(log.writes_in_epoch(1), 0u);
  EXPECT_EQ(log.writes_in_epoch(2), 1u);
}

TEST(RecordingDevice, MaterializesToSparseImageFiles) {
  uext::testing::TempDir dir;
  const std::string base = dir / "base.img", out = dir / "state.img";
  {
    int fd = ::open(base.c_str(), O_CREAT | O_WRONLY, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 64 << 20), 0);
    ASSERT_EQ(::pwrite(fd, "base", 4, 50 << 20), 4);
    ::close(fd);
  }
  auto file = open_image_file(base, {});
  ASSERT_TRUE(file.ok());
  // Record against a memory copy; materialize against the file.
  std::vector<std::byte> bytes((*file)->size());
  ASSERT_TRUE((*file)->read(0, bytes).ok());
  RecordingDevice dev(make_memory_device(bytes));
  ASSERT_TRUE(dev.write(4096, filled(4096, 9)).ok());
  ASSERT_TRUE(dev.flush().ok());
  ASSERT_TRUE(dev.write(8192, filled(4096, 8)).ok());
  IoLog log = dev.log();
  ASSERT_TRUE(log.materialize_to_file(log.clean_cut(1), base, out).ok());
  auto r = open_image_file(out, {});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)->size(), 64u << 20);
  std::vector<std::byte> got(3 * 4096);
  ASSERT_TRUE((*r)->read(4096, got).ok());
  EXPECT_EQ(byte_at(got, 0), 9);
  EXPECT_EQ(byte_at(got, 4096), 0);
  std::vector<std::byte> marker(4);
  ASSERT_TRUE((*r)->read(50 << 20, marker).ok());
  EXPECT_EQ(std::memcmp(marker.data(), "base", 4), 0);
  struct stat st {};
  ASSERT_EQ(::stat(out.c_str(), &st), 0);
  EXPECT_LT(st.st_blocks * 512, 4 << 20) << "the copy should keep the base's holes";
  EXPECT_FALSE(log.materialize_to_file(log.clean_cut(1), dir / "missing.img", out).ok());
}

}  // namespace
}  // namespace uext::io
