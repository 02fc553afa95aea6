// The journal's writing side, judged by the replays of e2fsck and of
// uext's own recovery, on images made by mke2fs.
#include "journal/journal.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <thread>

#include "disk/superblock.h"
#include "fs/block_map.h"
#include "fs/volume.h"
#include "io/fault_device.h"
#include "support/process.h"

namespace uext::journal {
namespace {

using testing::run;
using testing::run_ok;
using testing::TempDir;

struct Opened {
  std::unique_ptr<BlockDevice> device;
  std::unique_ptr<buffer::BufferCache> cache;
  std::unique_ptr<Journal> journal;
  disk::Superblock sb;
};

JournalMap journal_map(const std::string& image) {
  auto dev = open_image_file(image, {});
  EXPECT_TRUE(dev.ok());
  auto vol = fs::Volume::open(std::move(*dev), {});
  EXPECT_TRUE(vol.ok()) << vol.error().message();
  auto rec = (*vol)->read_inode((*vol)->sb().s_journal_inum);
  EXPECT_TRUE(rec.ok());
  auto runs = fs::all_mapped_runs(**vol, *rec);
  EXPECT_TRUE(runs.ok());
  std::vector<JournalExtent> extents;
  for (const auto& r : *runs) extents.push_back({r.logical, r.physical, r.length});
  return JournalMap(std::move(extents));
}

// `wrap`, when given, puts a device of the test's between the journal and
// the image file.
using DeviceWrapper = std::function<std::unique_ptr<BlockDevice>(std::unique_ptr<BlockDevice>)>;

Opened open_journal(const std::string& image, uint32_t commit_interval_ms = 0, const DeviceWrapper& wrap = nullptr) {
  Opened o;
  auto dev = open_image_file(image, {.read_only = false});
  EXPECT_TRUE(dev.ok()) << dev.error().message();
  o.device = wrap ? wrap(std::move(*dev)) : std::move(*dev);
  std::vector<std::byte> raw(disk::kSuperblockSize);
  EXPECT_TRUE(o.device->read(disk::kSuperblockOffset, raw).ok());
  o.sb = *disk::decode_superblock(raw, o.device->size());
  o.cache = std::make_unique<buffer::BufferCache>(*o.device, o.sb.block_size(), 16 << 20);
  JournalOptions options;
  options.commit_interval_ms = commit_interval_ms;
  options.use_64bit = o.sb.is_64bit();
  options.use_csum_v3 = o.sb.has_metadata_csum();
  options.fs_blocks = o.sb.s_blocks_count;
  if (o.sb.has_compat(disk::compat::kHasJournal)) {
    auto j = Journal::open(*o.device, *o.cache, journal_map(image), options);
    EXPECT_TRUE(j.ok()) << j.error().message();
    o.journal = std::move(*j);
  } else {
    o.journal = Journal::open_without_log(*o.device, *o.cache, options);
  }
  return o;
}

// What the filesystem layer will do on its first commit: the superblock
// says the journal must be replayed after a crash.
void mark_needs_recovery(const std::string& image) {
  auto dev = *open_image_file(image, {.read_only = false});
  std::vector<std::byte> raw(disk::kSuperblockSize);
  ASSERT_TRUE(dev->read(disk::kSuperblockOffset, raw).ok());
  auto sb = *disk::decode_superblock(raw, dev->size());
  sb.s_feature_incompat |= disk::incompat::kRecover;
  disk::encode_superblock(sb, raw);
  ASSERT_TRUE(dev->write(disk::kSuperblockOffset, raw).ok());
}

// Edits the superblock's label inside the block that holds it.
buffer::BlockEdit set_label(const std::string& label, uint64_t device_size) {
  return [label, device_size](std::span<std::byte> block) {
    size_t off = block.size() == 1024 ? 0 : disk::kSuperblockOffset;
    auto raw = block.subspan(off, disk::kSuperblockSize);
    auto sb = *disk::decode_superblock(raw, device_size);
    sb.s_volume_name.fill(0);
    std::memcpy(sb.s_volume_name.data(), label.data(), label.size());
    disk::encode_superblock(sb, raw);
  };
}

uint64_t superblock_block(const disk::Superblock& sb) { return sb.block_size() == 1024 ? 1 : 0; }

std::string label_of(const std::string& image) {
  auto out = run_ok({"dumpe2fs", "-h", image});
  auto at = out.find("Filesystem volume name:");
  auto end = out.find('\n', at);
  std::string line = out.substr(at, end - at);
  return line.substr(line.find_last_of(' ') + 1);
}

std::vector<std::byte> read_block(const std::string& image, uint64_t block, uint32_t bs) {
  auto dev = *open_image_file(image, {});
  std::vector<std::byte> out(bs);
  EXPECT_TRUE(dev->read(block * bs, out).ok());
  return out;
}

buffer::BlockEdit fill_with(uint8_t value) {
  return [value](std::span<std::byte> b) { std::memset(b.data(), value, b.size()); };
}

void expect_e2fsck_clean(const std::string& image) {
  auto r = run({"e2fsck", "-fn", image});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  auto h = run_ok({"dumpe2fs", "-h", image});
  EXPECT_EQ(h.find("with errors"), std::string::npos);
  EXPECT_EQ(h.find("needs_recovery"), std::string::npos) << h;
}

class JournalWrite : public ::testing::TestWithParam<std::vector<std::string>> {
 protected:
  void SetUp() override {
    image_ = dir_ / "fs.img";
    std::vector<std::string> args = {"mke2fs", "-F", "-q", "-J", "size=4"};
    for (const auto& a : GetParam()) args.push_back(a);
    args.insert(args.end(), {image_, "64M"});
    run_ok(args);
  }

  // Replays `image_` with e2fsck (copy) and with uext (copy), returning both.
  std::pair<std::string, std::string> replay() {
    std::string by_e2fsck = dir_ / "by-e2fsck.img", by_uext = dir_ / "by-uext.img";
    run_ok({"cp", "--sparse=always", image_, by_e2fsck});
    run_ok({"cp", "--sparse=always", image_, by_uext});
    auto r = run({"e2fsck", "-y", "-E", "journal_only", by_e2fsck});
    EXPECT_LE(r.exit_code, 1) << r.out << r.err;
    auto map = journal_map(by_uext);
    auto dev = *open_image_file(by_uext, {.read_only = false});
    std::vector<std::byte> raw(disk::kSuperblockSize);
    EXPECT_TRUE(dev->read(disk::kSuperblockOffset, raw).ok());
    auto sb = *disk::decode_superblock(raw, dev->size());
    auto report = recover_journal(*dev, sb.block_size(), map);
    EXPECT_TRUE(report.ok()) << report.error().message();
    EXPECT_TRUE(clear_needs_recovery(*dev).ok());
    return {by_e2fsck, by_uext};
  }

  TempDir dir_;
  std::string image_;
};

TEST_P(JournalWrite, CommittedChangeSurvivesACrash) {
  {
    Opened o = open_journal(image_);
    auto h = o.journal->start(1);
    ASSERT_TRUE(h.ok()) << h.error().message();
    ASSERT_TRUE(h->modify(superblock_block(o.sb), set_label("journaled", o.device->size())).ok());
    ASSERT_TRUE(h->stop().ok());
    ASSERT_TRUE(o.journal->commit().ok());
    // Crash: nothing is checkpointed; the home superblock still has no label.
  }
  mark_needs_recovery(image_);
  EXPECT_EQ(label_of(image_), "<none>");
  auto [by_e2fsck, by_uext] = replay();
  EXPECT_EQ(label_of(by_e2fsck), "journaled");
  EXPECT_EQ(label_of(by_uext), "journaled");
  expect_e2fsck_clean(by_e2fsck);
  expect_e2fsck_clean(by_uext);
}

TEST_P(JournalWrite, UncommittedChangeIsNotReplayed) {
  {
    Opened o = open_journal(image_);
    auto h = o.journal->start(1);
    ASSERT_TRUE(h.ok());
    ASSERT_TRUE(h->modify(superblock_block(o.sb), set_label("first", o.device->size())).ok());
    ASSERT_TRUE(h->stop().ok());
    ASSERT_TRUE(o.journal->commit().ok());
    auto h2 = o.journal->start(1);
    ASSERT_TRUE(h2->modify(superblock_block(o.sb), set_label("second", o.device->size())).ok());
    ASSERT_TRUE(h2->stop().ok());
    // Crash before the second commit.
  }
  mark_needs_recovery(image_);
  auto [by_e2fsck, by_uext] = replay();
  EXPECT_EQ(label_of(by_e2fsck), "first");
  EXPECT_EQ(label_of(by_uext), "first");
}

TEST_P(JournalWrite, LogWrapsAndCheckpointsUnderLoad) {
  Opened o = open_journal(image_);
  uint32_t bs = o.sb.block_size();
  // Free blocks near the end of the filesystem serve as "metadata".
  uint64_t base = o.sb.s_blocks_count - 400;
  for (int t = 0; t < 60; ++t) {
    auto h = o.journal->start(100);
    ASSERT_TRUE(h.ok()) << h.error().message();
    for (int i = 0; i < 100; ++i) {
      uint64_t block = base + (t * 37 + i) % 300;
      ASSERT_TRUE(h->create(block, fill_with(static_cast<uint8_t>(t + 1))).ok());
    }
    ASSERT_TRUE(h->stop().ok());
    ASSERT_TRUE(o.journal->commit().ok());
  }
  EXPECT_GT(o.journal->stats().checkpoints, 0u);
  // Expected final content: the last transaction that wrote each block.
  std::vector<uint8_t> expect(300, 0);
  for (int t = 0; t < 60; ++t)
    for (int i = 0; i < 100; ++i) expect[(t * 37 + i) % 300] = static_cast<uint8_t>(t + 1);
  o.journal.reset();  // crash
  o.device.reset();
  mark_needs_recovery(image_);
  auto [by_e2fsck, by_uext] = replay();
  for (int k = 0; k < 300; ++k) {
    auto a = read_block(by_e2fsck, base + k, bs);
    auto b = read_block(by_uext, base + k, bs);
    ASSERT_EQ(static_cast<uint8_t>(a[0]), expect[k]) << "block " << base + k << " after e2fsck's replay";
    ASSERT_EQ(static_cast<uint8_t>(b[bs - 1]), expect[k]) << "block " << base + k << " after uext's replay";
  }
  expect_e2fsck_clean(by_e2fsck);
  expect_e2fsck_clean(by_uext);
}

TEST_P(JournalWrite, RevokedBlockIsNotReplayedOverNewData) {
  uint64_t block;
  uint32_t bs;
  {
    Opened o = open_journal(image_);
    bs = o.sb.block_size();
    block = o.sb.s_blocks_count - 10;
    auto h = o.journal->start(1);
    ASSERT_TRUE(h->create(block, fill_with(0xAA)).ok());
    ASSERT_TRUE(h->stop().ok());
    ASSERT_TRUE(o.journal->commit().ok());
    auto h2 = o.journal->start(1);
    ASSERT_TRUE(h2->revoke(block).ok());
    ASSERT_TRUE(h2->stop().ok());
    ASSERT_TRUE(o.journal->commit().ok());
    // The freed block is reused for file data, written in place.
    std::vector<std::byte> data(bs, std::byte{0x55});
    ASSERT_TRUE(o.device->write(block * bs, data).ok());
    ASSERT_TRUE(o.device->flush().ok());
  }
  mark_needs_recovery(image_);
  auto [by_e2fsck, by_uext] = replay();
  EXPECT_EQ(read_block(by_e2fsck, block, bs)[0], std::byte{0x55});
  EXPECT_EQ(read_block(by_uext, block, bs)[0], std::byte{0x55});
}

TEST_P(JournalWrite, BlockFreedAndReusedInOneTransactionIsReplayed) {
  uint64_t block;
  uint32_t bs;
  {
    Opened o = open_journal(image_);
    bs = o.sb.block_size();
    block = o.sb.s_blocks_count - 12;
    auto h = o.journal->start(2);
    ASSERT_TRUE(h->create(block, fill_with(0x11)).ok());
    ASSERT_TRUE(h->revoke(block).ok());
    ASSERT_TRUE(h->create(block, fill_with(0x22)).ok());
    ASSERT_TRUE(h->stop().ok());
    ASSERT_TRUE(o.journal->commit().ok());
  }
  mark_needs_recovery(image_);
  auto [by_e2fsck, by_uext] = replay();
  EXPECT_EQ(read_block(by_e2fsck, block, bs)[0], std::byte{0x22});
  EXPECT_EQ(read_block(by_uext, block, bs)[0], std::byte{0x22});
}

// A committed block freed by a later transaction still needs its
// checkpoint until that transaction commits. When the later transaction's
// own commit has to checkpoint first (the log is full) and power goes
// right after that checkpoint emptied the log, the free never happened:
// the block must hold its committed contents (found by the crash suite:
// a directory block left with a file's old data).
TEST_P(JournalWrite, CheckpointKeepsABlockWhoseFreeIsNotCommitted) {
  const std::string image = image_;
  io::FaultDevice* faults = nullptr;
  Opened o = open_journal(image, 0, [&](std::unique_ptr<BlockDevice> inner) {
    auto d = std::make_unique<io::FaultDevice>(std::move(inner));
    faults = d.get();
    return d;
  });
  const uint32_t bs = o.sb.block_size();
  const uint64_t journal_sb = *journal_map(image).physical(0) * bs;
  const uint64_t block = o.sb.s_blocks_count - 5;
  const uint32_t filler = o.journal->max_transaction_blocks() - 16;
  const uint64_t filler_base = o.sb.s_blocks_count - 20 - filler;
  auto commit_filler = [&](uint8_t value) {
    auto h = o.journal->start(filler);
    ASSERT_TRUE(h.ok()) << h.error().message();
    for (uint32_t i = 0; i < filler; ++i) ASSERT_TRUE(h->create(filler_base + i, fill_with(value)).ok());
    ASSERT_TRUE(h->stop().ok());
    ASSERT_TRUE(o.journal->commit().ok());
  };
  // How many fillers the log holds: commit them until one needs a
  // checkpoint first; the log then holds that one alone.
  int fit = 0;
  while (o.journal->stats().checkpoints == 0) {
    commit_filler(1);
    ++fit;
    ASSERT_LT(fit, 100);
  }
  // The block, committed; then the log filled again, short of a checkpoint.
  auto h = o.journal->start(1);
  ASSERT_TRUE(h->create(block, fill_with(0xAB)).ok());
  ASSERT_TRUE(h->stop().ok());
  ASSERT_TRUE(o.journal->commit().ok());
  for (int i = 0; i < fit - 2; ++i) commit_filler(2);
  ASSERT_EQ(o.journal->stats().checkpoints, 1u) << "the log filled sooner than measured";
  // The transaction that frees the block needs a checkpoint to fit; power
  // goes once that checkpoint has emptied the log: the journal superblock
  // write lands (and the flush after it), no write after it does.
  bool power_lost = false;
  faults->fail_if(io::IoOp::kWrite, [&](const io::IoCall& call) {
    if (power_lost) return true;
    power_lost = call.offset == journal_sb;
    return false;
  });
  h = o.journal->start(filler);
  ASSERT_TRUE(h->revoke(block).ok());
  for (uint32_t i = 0; i + 1 < filler; ++i) ASSERT_TRUE(h->create(filler_base + i, fill_with(3)).ok());
  ASSERT_TRUE(h->stop().ok());
  (void)o.journal->commit();  // fails: the journal aborts at the first lost write
  ASSERT_EQ(o.journal->stats().checkpoints, 2u);
  ASSERT_TRUE(power_lost);
  o.journal.reset();
  o.cache.reset();
  o.device.reset();
  mark_needs_recovery(image);
  auto [by_e2fsck, by_uext] = replay();
  EXPECT_EQ(read_block(by_e2fsck, block, bs)[0], std::byte{0xAB});
  EXPECT_EQ(read_block(by_uext, block, bs)[0], std::byte{0xAB});
  EXPECT_EQ(read_block(by_uext, filler_base, bs)[0], std::byte{2});
}

// A transaction whose handles changed nothing logs nothing, and must not
// use up a tid: the next commit takes it, so the log's sequence has no
// gap. Replay stops at the first tid it does not find, so with a gap every
// commit after it was lost at a crash (found by the crash suite's quota
// image, whose sync started a handle with nothing to write).
TEST_P(JournalWrite, AnEmptyTransactionLeavesNoGapInTheLog) {
  const std::string image = image_;
  uint64_t first = 0;
  uint32_t bs = 0;
  {
    Opened o = open_journal(image);
    first = o.sb.s_blocks_count - 10;  // free blocks at the end of the image
    bs = o.sb.block_size();
    for (int i = 0; i < 3; ++i) {
      auto h = o.journal->start(1);
      ASSERT_TRUE(h.ok()) << h.error().message();
      ASSERT_TRUE(h->create(first + i, fill_with(static_cast<uint8_t>(0x10 + i))).ok());
      ASSERT_TRUE(h->stop().ok());
      ASSERT_TRUE(o.journal->commit().ok());
      // A handle that changes nothing, committed alone.
      auto idle = o.journal->start(4);
      ASSERT_TRUE(idle.ok()) << idle.error().message();
      ASSERT_TRUE(idle->stop().ok());
      ASSERT_TRUE(o.journal->commit().ok());
    }
    // Crash: nothing is checkpointed.
  }
  mark_needs_recovery(image);
  const std::string log = run_ok({"debugfs", "-R", "logdump", image});
  EXPECT_EQ(log.find("(not "), std::string::npos) << log;
  auto [by_e2fsck, by_uext] = replay();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(read_block(by_e2fsck, first + i, bs)[0], std::byte(0x10 + i)) << "e2fsck, block " << i;
    EXPECT_EQ(read_block(by_uext, first + i, bs)[0], std::byte(0x10 + i)) << "uext, block " << i;
  }
}

// A block that starts with the journal's magic is logged escaped (a copy
// with the magic zeroed, as jbd2 does) while its neighbours are logged
// straight from the cached versions; both replays restore every byte, and
// a checkpoint writes the run home as it is.
TEST_P(JournalWrite, ABlockStartingWithTheMagicIsEscapedAndReplayedWhole) {
  uint32_t bs = 0;
  uint64_t base = 0;
  auto content = [&](uint64_t i) {
    std::vector<std::byte> b(bs);
    for (size_t k = 0; k < b.size(); ++k) b[k] = std::byte((k * 13 + i * 101) & 0xff);
    if (i == 1) disk::put_be32(b, 0, disk::kJbd2Magic);
    return b;
  };
  auto edit_to = [&](uint64_t i) {
    return [want = content(i)](std::span<std::byte> b) { std::memcpy(b.data(), want.data(), b.size()); };
  };
  {
    Opened o = open_journal(image_);
    bs = o.sb.block_size();
    base = o.sb.s_blocks_count - 100;  // free blocks at the end of the image
    auto h = o.journal->start(3);
    ASSERT_TRUE(h.ok()) << h.error().message();
    for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(h->modify(base + i, edit_to(i)).ok());
    ASSERT_TRUE(h->stop().ok());
    ASSERT_TRUE(o.journal->commit().ok());
    // Crash before the checkpoint.
  }
  mark_needs_recovery(image_);
  EXPECT_EQ(read_block(image_, base + 1, bs), std::vector<std::byte>(bs)) << "home untouched before the replay";
  auto [by_e2fsck, by_uext] = replay();
  for (uint64_t i = 0; i < 3; ++i) {
    EXPECT_EQ(read_block(by_e2fsck, base + i, bs), content(i)) << "e2fsck, block " << i;
    EXPECT_EQ(read_block(by_uext, base + i, bs), content(i)) << "uext, block " << i;
  }
  expect_e2fsck_clean(by_uext);
  // The same change checkpointed by close.
  {
    Opened o = open_journal(by_e2fsck);
    auto h = o.journal->start(3);
    ASSERT_TRUE(h.ok()) << h.error().message();
    for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(h->modify(base + 10 + i, edit_to(i)).ok());
    ASSERT_TRUE(h->stop().ok());
    ASSERT_TRUE(o.journal->close().ok());
  }
  for (uint64_t i = 0; i < 3; ++i) EXPECT_EQ(read_block(by_e2fsck, base + 10 + i, bs), content(i)) << i;
}

TEST_P(JournalWrite, CloseWritesHomeAndEmptiesTheLog) {
  {
    Opened o = open_journal(image_);
    auto h = o.journal->start(1);
    ASSERT_TRUE(h->modify(superblock_block(o.sb), set_label("closed", o.device->size())).ok());
    ASSERT_TRUE(h->stop().ok());
    ASSERT_TRUE(o.journal->close().ok());
    EXPECT_FALSE(o.journal->start(1).ok());
  }
  EXPECT_EQ(label_of(image_), "closed");
  auto h = run_ok({"dumpe2fs", "-h", image_});
  EXPECT_NE(h.find("Journal start:            0"), std::string::npos) << h;
  expect_e2fsck_clean(image_);
}

TEST_P(JournalWrite, ConcurrentHandlesWithTimedCommits) {
  Opened o = open_journal(image_, 5);
  uint32_t bs = o.sb.block_size();
  uint64_t base = o.sb.s_blocks_count - 200;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 150; ++i) {
        auto h = o.journal->start(2);
        if (!h.ok()) { ++failures; continue; }
        uint8_t v = static_cast<uint8_t>(i + 1);
        if (!h->create(base + t * 40 + i % 40, fill_with(v)).ok()) ++failures;
        if (!h->stop().ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  ASSERT_TRUE(o.journal->close().ok());
  EXPECT_EQ(o.cache->pinned_count(), 0u);
  o.journal.reset();
  for (int t = 0; t < 4; ++t) {
    for (int k = 0; k < 40; ++k) {
      // The last i with i % 40 == k below 150.
      int last = k + 40 * ((149 - k) / 40);
      auto b = read_block(image_, base + t * 40 + k, bs);
      ASSERT_EQ(static_cast<uint8_t>(b[0]), static_cast<uint8_t>(last + 1)) << "thread " << t << " block " << k;
    }
  }
  expect_e2fsck_clean(image_);
}

// Operations reserve for the worst case and change a few blocks, mostly
// the same ones (an inode table block, a bitmap, a directory block). A
// transaction closes on what is really logged: 2,000 handles that reserve
// 150 blocks each and change 2 of 50 blocks all fit into one commit, where
// counting each handle's changes (4,000) would commit every few dozen.
TEST_P(JournalWrite, ManySmallHandlesWithLargeReservationsShareOneCommit) {
  Opened o = open_journal(image_);
  uint32_t bs = o.sb.block_size();
  uint64_t base = o.sb.s_blocks_count - 100;
  const uint32_t cap = o.journal->max_transaction_blocks();
  ASSERT_GT(cap, 200u);  // 50 blocks + 150 credits + descriptors and revokes
  for (int i = 0; i < 2000; ++i) {
    auto h = o.journal->start(150);
    ASSERT_TRUE(h.ok()) << h.error().message();
    ASSERT_TRUE(h->create(base + i % 50, fill_with(static_cast<uint8_t>(i % 250 + 1))).ok());
    ASSERT_TRUE(h->create(base + (i * 7 + 3) % 50, fill_with(static_cast<uint8_t>(i % 250 + 1))).ok());
    ASSERT_TRUE(h->stop().ok());
    ASSERT_LE(o.journal->running_worst_case(), cap);
  }
  EXPECT_EQ(o.journal->stats().commits, 0u);
  ASSERT_TRUE(o.journal->commit().ok());
  EXPECT_EQ(o.journal->stats().commits, 1u);
  EXPECT_EQ(o.journal->stats().blocks_logged, 50u);
  // The last handle that wrote each block decides its content.
  std::vector<uint8_t> expect(50, 0);
  for (int i = 0; i < 2000; ++i) {
    expect[i % 50] = static_cast<uint8_t>(i % 250 + 1);
    expect[(i * 7 + 3) % 50] = static_cast<uint8_t>(i % 250 + 1);
  }
  o.journal.reset();  // crash after the commit
  o.device.reset();
  mark_needs_recovery(image_);
  auto [by_e2fsck, by_uext] = replay();
  for (int k = 0; k < 50; ++k) {
    ASSERT_EQ(static_cast<uint8_t>(read_block(by_e2fsck, base + k, bs)[0]), expect[k]) << k;
    ASSERT_EQ(static_cast<uint8_t>(read_block(by_uext, base + k, bs)[bs - 1]), expect[k]) << k;
  }
  expect_e2fsck_clean(by_e2fsck);
  expect_e2fsck_clean(by_uext);
}

// Handles that change many distinct blocks and revoke others, from four
// threads with random reservations: however credits come back, the running
// transaction's worst case (blocks, descriptors, revoke blocks, commit
// block) never passes the limit, no commit writes more than the limit, and
// the limit leaves the log room to spare.
TEST_P(JournalWrite, TransactionNeverOutgrowsTheLog) {
  Opened o = open_journal(image_);
  const uint32_t cap = o.journal->max_transaction_blocks();
  uint64_t changed_base = o.sb.s_blocks_count - 3000;  // 2,000 blocks to change
  uint64_t revoked_base = o.sb.s_blocks_count - 1000;  // 1,000 to revoke
  std::atomic<int> failures{0};
  std::atomic<uint64_t> worst_seen{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      uint64_t x = 0x9E3779B97F4A7C15ull * (t + 1);
      auto next = [&x] { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x; };
      for (int i = 0; i < 150; ++i) {
        uint32_t credits = 1 + next() % 60;
        auto h = o.journal->start(credits);
        if (!h.ok()) { ++failures; continue; }
        uint64_t w = o.journal->running_worst_case();
        uint64_t seen = worst_seen.load();
        while (w > seen && !worst_seen.compare_exchange_weak(seen, w)) {}
        uint32_t changes = 1 + next() % credits;
        for (uint32_t c = 0; c < changes; ++c) {
          uint64_t b = changed_base + (t * 500 + next() % 500);
          if (!h->create(b, fill_with(static_cast<uint8_t>(i + 1))).ok()) ++failures;
        }
        uint32_t revokes = next() % (credits + 1);
        for (uint32_t r = 0; r < revokes; ++r) {
          if (!h->revoke(revoked_base + (t * 250 + next() % 250)).ok()) ++failures;
        }
        if (!h->stop().ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_LE(worst_seen.load(), cap);
  ASSERT_TRUE(o.journal->commit().ok());
  JournalStats st = o.journal->stats();
  EXPECT_GT(st.commits, 1u);  // 2,000 distinct blocks do not fit in one
  EXPECT_LE(st.largest_commit_blocks, cap);
  ASSERT_TRUE(o.journal->close().ok());
  EXPECT_EQ(o.cache->pinned_count(), 0u);
  o.journal.reset();
  expect_e2fsck_clean(image_);
}

INSTANTIATE_TEST_SUITE_P(Images, JournalWrite,
                         ::testing::Values(std::vector<std::string>{"-t", "ext4", "-b", "4096"},
                                           std::vector<std::string>{"-t", "ext4", "-b", "1024"},
                                           std::vector<std::string>{"-t", "ext4", "-O", "^metadata_csum,^64bit"},
                                           std::vector<std::string>{"-t", "ext3", "-b", "4096"}));

TEST(JournalWithoutLog, CommitWritesHome) {
  TempDir dir;
  std::string image = dir / "ext2.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext2", image, "16M"});
  Opened o = open_journal(image);
  ASSERT_FALSE(o.journal->has_log());
  auto h = o.journal->start(1);
  ASSERT_TRUE(h->modify(superblock_block(o.sb), set_label("plain", o.device->size())).ok());
  ASSERT_TRUE(h->stop().ok());
  EXPECT_EQ(label_of(image), "<none>");
  ASSERT_TRUE(o.journal->commit().ok());
  EXPECT_EQ(label_of(image), "plain");
  EXPECT_EQ(o.cache->pinned_count(), 0u);
  expect_e2fsck_clean(image);
}

}  // namespace
}  // namespace uext::journal
