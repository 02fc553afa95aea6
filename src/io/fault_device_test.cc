#include "io/fault_device.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "io/recording_device.h"

namespace uext::io {
namespace {

std::vector<std::byte> filled(size_t n, uint8_t value) {
  return std::vector<std::byte>(n, static_cast<std::byte>(value));
}

struct Dev {
  FaultDevice* fault;
  std::unique_ptr<FaultDevice> owner;
  explicit Dev(uint64_t size = 1 << 20) : owner(std::make_unique<FaultDevice>(make_memory_device(size))) {
    fault = owner.get();
  }
  FaultDevice* operator->() { return fault; }
  uint8_t at(uint64_t off) {
    std::byte b{};
    EXPECT_TRUE(fault->inner().read(off, std::span(&b, 1)).ok());
    return static_cast<uint8_t>(b);
  }
};

TEST(FaultDevice, PassesThroughAndCounts) {
  Dev d;
  std::vector<std::byte> buf(100);
  EXPECT_TRUE(d->write(0, filled(4096, 1)).ok());
  EXPECT_TRUE(d->read(0, buf).ok());
  EXPECT_TRUE(d->flush().ok());
  FaultCounts c = d->counts();
  EXPECT_EQ(c.reads, 1u);
  EXPECT_EQ(c.writes, 1u);
  EXPECT_EQ(c.flushes, 1u);
  EXPECT_EQ(c.bytes_written, 4096u);
  EXPECT_EQ(c.bytes_read, 100u);
  EXPECT_EQ(c.failed_reads + c.failed_writes + c.failed_flushes + c.dropped_flushes, 0u);
  EXPECT_EQ(d->size(), 1u << 20);
  EXPECT_EQ(d.at(0), 1);
}

TEST(FaultDevice, FailsTheNthCallOfEachKindCountingFromTheRule) {
  Dev d;
  std::vector<std::byte> buf(512);
  ASSERT_TRUE(d->read(0, buf).ok());  // before the rule: not counted by it
  d->fail_nth(IoOp::kRead, 2, EIO);
  d->fail_nth(IoOp::kWrite, 3, EROFS);
  d->fail_nth(IoOp::kFlush, 1, ENOSPC);
  EXPECT_TRUE(d->read(0, buf).ok());
  Status r = d->read(0, buf);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), EIO);
  EXPECT_NE(r.error().message().find("injected"), std::string::npos) << r.error().message();
  EXPECT_TRUE(d->read(0, buf).ok());  // once only

  EXPECT_TRUE(d->write(0, filled(512, 1)).ok());
  EXPECT_TRUE(d->write(512, filled(512, 2)).ok());
  Status w = d->write(1024, filled(512, 3));
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().code(), EROFS);
  EXPECT_EQ(d.at(1024), 0) << "a failed write must not reach the device";
  EXPECT_TRUE(d->write(1024, filled(512, 3)).ok());

  Status f = d->flush();
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code(), ENOSPC);
  EXPECT_TRUE(d->flush().ok());

  FaultCounts c = d->counts();
  EXPECT_EQ(c.reads, 4u);
  EXPECT_EQ(c.failed_reads, 1u);
  EXPECT_EQ(c.writes, 4u);
  EXPECT_EQ(c.failed_writes, 1u);
  EXPECT_EQ(c.flushes, 2u);
  EXPECT_EQ(c.failed_flushes, 1u);
  EXPECT_EQ(c.bytes_written, 3u * 512);
}

TEST(FaultDevice, FailsEveryCallTouchingARangeUntilRemoved) {
  Dev d;
  std::vector<std::byte> buf(4096);
  int id = d->fail_range(IoOp::kRead | IoOp::kWrite, 8192, 4096, EIO);
  EXPECT_TRUE(d->read(4096, buf).ok());              // ends where the range starts
  EXPECT_FALSE(d->read(8000, buf).ok());             // overlaps its start
  EXPECT_FALSE(d->write(12287, filled(1, 1)).ok());  // its last byte
  EXPECT_TRUE(d->write(12288, filled(1, 1)).ok());   // just past it
  EXPECT_TRUE(d->flush().ok());                      // flushes touch no range
  EXPECT_FALSE(d->read(8192, buf).ok());
  d->remove_rule(id);
  EXPECT_TRUE(d->read(8192, buf).ok());
}

TEST(FaultDevice, PredicateRulesSeeTheCall) {
  Dev d;
  std::vector<IoCall> seen;
  d->fail_if(IoOp::kWrite,
             [&](const IoCall& c) {
               seen.push_back(c);
               return c.length > 1000;
             },
             EDQUOT);
  EXPECT_TRUE(d->write(0, filled(512, 1)).ok());
  Status s = d->write(4096, filled(2048, 1));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), EDQUOT);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].op, IoOp::kWrite);
  EXPECT_EQ(seen[1].offset, 4096u);
  EXPECT_EQ(seen[1].length, 2048u);
  EXPECT_EQ(seen[1].index, 2u);
}

TEST(FaultDevice, SkipAndTimesMakeWindowsOfFailures) {
  Dev d;
  FaultRule r;
  r.ops = IoOp::kWrite;
  r.skip = 2;
  r.times = 3;
  d->add_rule(r);
  std::string pattern;
  for (int i = 0; i < 8; ++i) pattern += d->write(0, filled(512, 1)).ok() ? 'o' : 'x';
  EXPECT_EQ(pattern, "ooxxxooo");
  d->clear_rules();
  d->add_rule(FaultRule{});  // no conditions: everything fails
  EXPECT_FALSE(d->flush().ok());
}

TEST(FaultDevice, RunsOutOfSpaceAfterAByteBudget) {
  Dev d;
  d->set_space_limit(10000);
  EXPECT_TRUE(d->write(0, filled(4096, 1)).ok());
  EXPECT_TRUE(d->write(4096, filled(4096, 1)).ok());
  Status s = d->write(8192, filled(4096, 1));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ENOSPC);
  EXPECT_EQ(d.at(8192), 0);
  EXPECT_TRUE(d->write(8192, filled(1808, 2)).ok());  // exactly fills it
  EXPECT_FALSE(d->write(0, filled(1, 1)).ok());
  d->set_space_limit(std::nullopt);
  EXPECT_TRUE(d->write(0, filled(1, 1)).ok());
}

TEST(FaultDevice, TornWriteLandsItsFirstBytesAndFails) {
  Dev d;
  d->tear_nth_write(2, 1536, EIO);
  EXPECT_TRUE(d->write(0, filled(4096, 1)).ok());
  Status s = d->write(0, filled(4096, 2));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), EIO);
  EXPECT_NE(s.error().message().find("torn after 1536 bytes"), std::string::npos) << s.error().message();
  EXPECT_EQ(d.at(0), 2);
  EXPECT_EQ(d.at(1535), 2);
  EXPECT_EQ(d.at(1536), 1);
  EXPECT_EQ(d->counts().bytes_written, 4096u + 1536);
}

TEST(FaultDevice, ALyingDiskDropsFlushesAndTheRecordingBeneathSeesNone) {
  // Recording beneath the liar: the disk never receives a flush, so the
  // crash states have no durable point.
  auto rec = std::make_unique<RecordingDevice>(make_memory_device(8192));
  RecordingDevice* recording = rec.get();
  FaultDevice liar(std::move(rec));
  liar.set_drop_flushes(true);
  EXPECT_TRUE(liar.write(0, filled(512, 1)).ok());
  EXPECT_TRUE(liar.flush().ok());
  EXPECT_EQ(liar.counts().dropped_flushes, 1u);
  EXPECT_EQ(recording->flush_count(), 0u);
  liar.set_drop_flushes(false);
  EXPECT_TRUE(liar.flush().ok());
  EXPECT_EQ(recording->flush_count(), 1u);
}

TEST(FaultDevice, InnerErrorsPassThroughAndCount) {
  Dev d(4096);
  Status s = d->write(4000, filled(512, 1));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(d->counts().failed_writes, 1u);
  EXPECT_EQ(d->counts().bytes_written, 0u);
}

TEST(FaultDevice, TheNthCallIsWellDefinedAcrossThreads) {
  Dev d;
  d->fail_nth(IoOp::kWrite, 150);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        if (!d->write(static_cast<uint64_t>(t) * 4096, filled(64, 1)).ok()) ++failures;
        std::vector<std::byte> b(64);
        (void)d->read(0, b);
        if (i % 10 == 0) (void)d->flush();
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 1);
  FaultCounts c = d->counts();
  EXPECT_EQ(c.writes, 400u);
  EXPECT_EQ(c.reads, 400u);
  EXPECT_EQ(c.flushes, 40u);
  EXPECT_EQ(c.failed_writes, 1u);
  EXPECT_EQ(c.bytes_written, 399u * 64);
}

}  // namespace
}  // namespace uext::io
