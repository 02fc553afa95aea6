// Device errors under the library's changes, from src/io/fault_device.
//
// WriteErrors: a write through the block map (ext2 and ext3, and ext4
// without delayed allocation) goes in chunks of up to 8,192 blocks, each
// allocating, writing and committing its blocks and the size that covers
// them. When the data writes of one chunk fail, the write must end as
// write(2) does (the bytes of the chunks before, or the error if there were
// none), and the failed chunk must leave no block mapped past the file's
// end, which e2fsck would call a wrong size.
//
// WriteErrorsSweep: every write, read and flush of a workload that touches
// every kind of change fails once, in turn, and the host's disk fills at
// points through it; the image must come out e2fsck-clean whatever the
// operations reported.
//
// Each test closes the image and checks it with e2fsck -fn and the
// superblock's state.
#include <gtest/gtest.h>

#include <cerrno>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "support/crash.h"
#include "support/faulty_fs.h"
#include "support/images.h"
#include "support/writable.h"
#include "support/process.h"
#include "uext/filesystem.h"

namespace uext::testing {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// Bytes that differ from block to block, so a block written to the wrong
// place or read from a stale one shows.
std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i / 1024 * 7 + i) % 251);
  return s;
}

std::span<const std::byte> as_bytes(const std::string& s) { return std::as_bytes(std::span(s)); }

struct Outcome {
  Result<size_t> written = Error(EINVAL, "not run");
  uint64_t size = 0;
  uint64_t failed_writes = 0;
};

// Writes `data` at offset 0 of a new file on a fresh image (`fs_type`, 1
// KiB blocks), every device write failing with EIO once `fail_after` bytes
// have gone to the device during the write; then closes and checks.
Outcome write_with_eio_after(const std::string& image, const std::string& data, uint64_t fail_after,
                             const std::string& fs_type = "ext3") {
  Outcome out;
  make_image(image, {"-t", fs_type, "-b", "1024"}, "48M");
  Options no_delalloc;  // for ext4: extents written through, as ext3's block map is
  no_delalloc.delayed_allocation = false;
  FaultyFs f = open_faulty(image, no_delalloc);
  if (!f.fs) return out;
  auto st = f.fs->create(kRootIno, "f", 0100644, {});
  EXPECT_TRUE(st.ok()) << st.error().message();
  if (!st.ok()) return out;
  EXPECT_TRUE(f.fs->sync().ok());
  uint64_t seen = 0;  // the rule runs under the device's lock, one call at a time
  f.dev->fail_if(io::IoOp::kWrite, [&seen, fail_after](const io::IoCall& call) {
    seen += call.length;
    return seen > fail_after;
  });
  out.written = f.fs->write(st->ino, 0, as_bytes(data));
  out.failed_writes = f.dev->counts().failed_writes;
  f.dev->clear_rules();
  auto now = f.fs->stat(st->ino);
  EXPECT_TRUE(now.ok());
  if (now.ok()) out.size = now->size;
  close_and_check(f, image);
  return out;
}

// Writes 12 MiB with EIO once 9 MiB have gone to the device: the first
// chunk (7.5 to 8 MiB of data: a handle maps up to 8,192 blocks, fewer
// where its credits end) goes in, a later one fails. The write returns the
// first chunks' bytes, the size covers them and no more, and the image
// holds exactly them.
void expect_short_write_after_a_later_chunk_fails(const std::string& fs_type) {
  TempDir tmp;
  const std::string image = tmp / (fs_type + ".img");
  const std::string data = pattern(12 * kMiB);
  Outcome o = write_with_eio_after(image, data, 9 * kMiB, fs_type);
  EXPECT_GT(o.failed_writes, 0u) << "no device write failed: the test did not test";
  ASSERT_TRUE(o.written.ok()) << "the first chunk went in, so the write must return its count: "
                              << o.written.error().message();
  const size_t n = *o.written;
  EXPECT_GE(n, 7 * kMiB);
  EXPECT_LT(n, data.size());
  EXPECT_EQ(n % 1024, 0u) << "a chunk ends on a block";
  EXPECT_EQ(o.size, n) << "the size must cover what the write returned, and no more";
  EXPECT_TRUE(read_back(image, "/f", data.size()) == data.substr(0, n))
      << "the image must hold exactly the " << n << " bytes the write returned";
}

TEST(WriteErrors, EioInALaterChunkEndsABlockMapWriteShort) { expect_short_write_after_a_later_chunk_fails("ext3"); }

// The same path serves extent files when delayed allocation is off
// (nodelalloc): e2fsck refuses written extents past the size just as it
// refuses mapped blocks.
TEST(WriteErrors, EioInALaterChunkEndsAnExtentWriteShortWithoutDelalloc) {
  expect_short_write_after_a_later_chunk_fails("ext4");
}

TEST(WriteErrors, EioInTheFirstChunkFailsTheWrite) {
  TempDir tmp;
  const std::string image = tmp / "first.img";
  const std::string data = pattern(4 * kMiB);
  Outcome o = write_with_eio_after(image, data, 1 * kMiB);
  EXPECT_GT(o.failed_writes, 0u) << "no device write failed: the test did not test";
  ASSERT_FALSE(o.written.ok()) << "nothing went in, so the write must fail; it returned " << *o.written;
  EXPECT_EQ(o.written.error().code(), EIO) << o.written.error().message();
  EXPECT_EQ(o.size, 0u);
  EXPECT_EQ(read_back(image, "/f", data.size()), "");
}

// The block size and the device block of the journal's superblock.
std::pair<uint32_t, uint64_t> journal_start(const std::string& image) {
  const uint32_t bs = static_cast<uint32_t>(std::stoul(dumpe2fs_header(image)["Block size"]));
  return {bs, std::stoull(debugfs(image, "bmap <8> 0"))};
}

// A commit that fails aborts the journal, as jbd2's does: the failure is
// recorded in the journal superblock's s_errno (dumpe2fs "Journal errno"),
// which the replay keeps; the next read-write open turns it into the
// superblock's "with errors" state, as the kernel's mount and e2fsck do, so
// that the next e2fsck checks the whole image. What committed before the
// abort is kept.
TEST(JournalAbort, IsRecordedAndTheNextOpenMarksTheImage) {
  TempDir tmp;
  const std::string image = tmp / "abort.img";
  make_image(image, {"-t", "ext4", "-b", "4096"}, "64M");
  const auto [bs, jstart] = journal_start(image);
  const std::string kept = pattern(100000);
  {
    FaultyFs f = open_faulty(image);
    ASSERT_TRUE(f.fs);
    auto st = f.fs->create(kRootIno, "kept", 0100644, {});
    ASSERT_TRUE(st.ok()) << st.error().message();
    ASSERT_TRUE(f.fs->write(st->ino, 0, as_bytes(kept)).ok());
    ASSERT_TRUE(f.fs->sync().ok());
    // Every write fails from now on but the journal superblock's: the
    // commit's log blocks fail.
    const uint64_t jsb_offset = jstart * bs;
    f.dev->fail_if(io::IoOp::kWrite, [jsb_offset](const io::IoCall& call) { return call.offset != jsb_offset; });
    auto lost = f.fs->create(kRootIno, "lost", 0100644, {});
    ASSERT_TRUE(lost.ok()) << lost.error().message();
    Status synced = f.fs->sync();
    ASSERT_FALSE(synced.ok()) << "the commit's log writes failed, so sync must fail";
    EXPECT_EQ(synced.error().code(), EIO) << synced.error().message();
    f.dev->clear_rules();
    // The journal stays aborted: nothing more commits, the close fails.
    auto after = f.fs->mkdir(kRootIno, "after", 0755, {});
    ASSERT_FALSE(after.ok());
    EXPECT_NE(after.error().message().find("journal aborted"), std::string::npos) << after.error().message();
    EXPECT_FALSE(f.fs->close().ok());
  }
  auto h = dumpe2fs_header(image);
  EXPECT_EQ(h["Journal errno"], "-5") << "dumpe2fs must see the abort in the journal superblock";
  // uext info shows it as dumpe2fs does.
  GuardedResult info = run_uext({"info", image});
  ASSERT_EQ(0, info.exit_code) << info.describe();
  EXPECT_NE(info.out.find("Journal errno:"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("-5"), std::string::npos) << info.out;
  // e2fsck's replay sees it the same way (the oracle for what follows).
  const std::string by_e2fsck = tmp / "e2fsck.img";
  copy_file(image, by_e2fsck);
  ASSERT_TRUE(replay_journal_with_e2fsck(by_e2fsck).ok());
  EXPECT_EQ(dumpe2fs_header(by_e2fsck)["Filesystem state"], "clean with errors");

  {
    auto fs = open_writable(image);
    ASSERT_TRUE(fs);
    auto ino = fs->resolve("/kept");
    ASSERT_TRUE(ino.ok()) << "what committed before the abort must be kept: " << ino.error().message();
    std::string back(kept.size(), '\0');
    auto n = fs->read(*ino, 0, std::as_writable_bytes(std::span(back)));
    ASSERT_TRUE(n.ok());
    EXPECT_TRUE(back == kept);
    EXPECT_FALSE(fs->resolve("/lost").ok()) << "the aborted transaction must not come back";
    EXPECT_EQ(fs->info().state, "clean with errors");
    ASSERT_TRUE(fs->close().ok());
  }
  h = dumpe2fs_header(image);
  EXPECT_EQ(h["Filesystem state"], "clean with errors") << "the close must keep the mark";
  EXPECT_EQ(h.count("Journal errno"), 0u) << "the errno moved to the superblock: " << h["Journal errno"];
  CommandResult fsck = run({"e2fsck", "-fn", image});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.out << fsck.err;
  // e2fsck -fy clears the state, as after any recorded error.
  run({"e2fsck", "-fy", image});
  expect_fsck_clean(image);
}

// An errno another program left in the journal superblock (the kernel's
// aborted journal; here written with dd-like bytes) is taken the same way.
// A read-only open leaves it where it is.
TEST(JournalAbort, AnErrnoLeftByAnotherProgramMarksTheImage) {
  TempDir tmp;
  const std::string image = tmp / "errno.img";
  make_image(image, {"-t", "ext4"}, "32M");
  const auto [bs, jstart] = journal_start(image);
  write_bytes(image, jstart * bs + 0x20, std::string("\xff\xff\xff\xfb", 4));  // s_errno -5, big-endian
  ASSERT_EQ(dumpe2fs_header(image)["Journal errno"], "-5");
  {
    Options ro;
    ro.read_only = true;
    auto fs = Filesystem::open(image, ro);
    ASSERT_TRUE(fs.ok()) << fs.error().message();
    EXPECT_EQ((*fs)->info().journal.recorded_errno, -5);
    EXPECT_EQ((*fs)->info().state, "clean");
  }
  EXPECT_EQ(dumpe2fs_header(image)["Journal errno"], "-5") << "a read-only open must not write";
  {
    auto fs = open_writable(image);
    ASSERT_TRUE(fs);
    ASSERT_TRUE(fs->mkdir(kRootIno, "d", 0755, {}).ok());
    ASSERT_TRUE(fs->close().ok());
  }
  auto h = dumpe2fs_header(image);
  EXPECT_EQ(h["Filesystem state"], "clean with errors");
  EXPECT_EQ(h.count("Journal errno"), 0u) << h["Journal errno"];
  CommandResult fsck = run({"e2fsck", "-fn", image});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.out << fsck.err;
}

// data_err=abort (Options::data_err_abort): the first data write fails,
// writeback's with delayed allocation (at fsync), the write's own without
// it (ext4 with delayed allocation off, and ext3's block maps, which are
// always written through). The journal aborts before the handle that
// mapped the blocks stops, so neither that mapping nor anything after it
// commits (the file, created since the last commit, is not on the image at
// all), and the next open marks the image. With the default
// (data_err=ignore) the same failure reaches the caller and everything
// else goes on.
TEST(DataErrAbort, AFailedDataWriteAbortsTheJournal) {
  const struct {
    const char* name;
    std::vector<std::string> mkfs;
    bool delayed_allocation;  // the option
    bool written_back;        // whether the data goes through the page cache's writeback
  } cases[] = {
      {"ext4", {"-t", "ext4", "-b", "4096"}, true, true},
      {"ext4 without delayed allocation", {"-t", "ext4", "-b", "4096"}, false, false},
      {"ext3", {"-t", "ext3", "-b", "4096"}, true, false},
  };
  for (const auto& c : cases) {
    for (bool abort : {false, true}) {
      SCOPED_TRACE(std::string(c.name) + (abort ? ", data_err=abort" : ", data_err=ignore"));
      TempDir tmp;
      const std::string image = tmp / "data_err.img";
      make_image(image, c.mkfs, "64M");
      const std::string kept = pattern(50000);
      Options o;
      o.data_err_abort = abort;
      o.delayed_allocation = c.delayed_allocation;
      FaultyFs f = open_faulty(image, o);
      ASSERT_TRUE(f.fs);
      auto k = f.fs->create(kRootIno, "kept", 0100644, {});
      ASSERT_TRUE(k.ok());
      ASSERT_TRUE(f.fs->write(k->ino, 0, as_bytes(kept)).ok());
      ASSERT_TRUE(f.fs->fsync(k->ino, false).ok());
      auto st = f.fs->create(kRootIno, "f", 0100644, {});
      ASSERT_TRUE(st.ok());
      if (!c.written_back) f.dev->fail_nth(io::IoOp::kWrite, 1, EIO);  // the write's data write comes first
      auto wrote = f.fs->write(st->ino, 0, as_bytes(pattern(65536)));
      if (c.written_back) {
        ASSERT_TRUE(wrote.ok()) << wrote.error().message();
        f.dev->fail_nth(io::IoOp::kWrite, 1, EIO);  // writeback's data write comes first
        Status synced = f.fs->fsync(st->ino, false);
        ASSERT_FALSE(synced.ok());
        EXPECT_EQ(synced.error().code(), EIO) << synced.error().message();
      } else {
        ASSERT_FALSE(wrote.ok());
        EXPECT_EQ(wrote.error().code(), EIO) << wrote.error().message();
      }
      f.dev->clear_rules();
      auto after = f.fs->mkdir(kRootIno, "after", 0755, {});
      if (!abort) {
        EXPECT_TRUE(after.ok()) << after.error().message();
        close_and_check(f, image);
        continue;
      }
      ASSERT_FALSE(after.ok());
      EXPECT_NE(after.error().message().find("data_err=abort"), std::string::npos) << after.error().message();
      EXPECT_FALSE(f.fs->close().ok());
      f.fs.reset();
      EXPECT_EQ(dumpe2fs_header(image)["Journal errno"], "-5");
      auto fs = open_writable(image);
      ASSERT_TRUE(fs);
      auto ino = fs->resolve("/kept");
      ASSERT_TRUE(ino.ok());
      std::string back(kept.size(), '\0');
      ASSERT_TRUE(fs->read(*ino, 0, std::as_writable_bytes(std::span(back))).ok());
      EXPECT_TRUE(back == kept);
      EXPECT_FALSE(fs->resolve("/f").ok()) << "nothing after the failed data write commits";
      EXPECT_FALSE(fs->resolve("/after").ok());
      ASSERT_TRUE(fs->close().ok());
      EXPECT_EQ(dumpe2fs_header(image)["Filesystem state"], "clean with errors");
      CommandResult fsck = run({"e2fsck", "-fn", image});
      EXPECT_EQ(fsck.exit_code, 0) << fsck.out << fsck.err;
    }
  }
}

// A workload that touches every kind of change: names, data through both
// write paths, truncates, a slow symlink, xattrs, links, fallocate, a
// directory that grows past a block and shrinks, rmdir, fsync and sync.
// Errors are ignored: the sweep below judges only what reaches the image.
void touch_everything(Filesystem& fs) {
  auto d = fs.mkdir(kRootIno, "d", 0755, {});
  const Ino dir = d.ok() ? d->ino : kRootIno;
  for (int i = 0; i < 6; ++i) {
    auto f = fs.create(dir, "f" + std::to_string(i), 0100644, {});
    if (!f.ok()) continue;
    (void)fs.write(f->ino, 0, as_bytes(pattern(static_cast<size_t>(3000 + i * 70000))));
    if (i % 2) (void)fs.fsync(f->ino, false);
    if (i == 3) (void)fs.truncate(f->ino, 1000);
  }
  (void)fs.rename(dir, "f1", kRootIno, "moved", 0);
  (void)fs.rename(dir, "f3", kRootIno, "moved-out", kRenameWhiteout);
  (void)fs.unlink(dir, "f2");
  (void)fs.symlink(dir, "long-link", std::string(300, 'x'), {});
  if (auto f = fs.create(kRootIno, "attrs", 0100644, {}); f.ok()) {
    (void)fs.setxattr(f->ino, "user.big", std::string(700, 'v'));
    (void)fs.link(f->ino, dir, "attrs-link");
    (void)fs.fallocate(f->ino, 0, 0, 200000);
  }
  if (auto many = fs.mkdir(kRootIno, "many", 0755, {}); many.ok()) {
    auto name = [](int i) { return "name-" + std::to_string(i) + std::string(20, 'n'); };
    for (int i = 0; i < 80; ++i) (void)fs.create(many->ino, name(i), 0100644, {});
    for (int i = 0; i < 80; i += 3) (void)fs.unlink(many->ino, name(i));
  }
  (void)fs.mkdir(kRootIno, "gone", 0755, {});
  (void)fs.rmdir(kRootIno, "gone");
  if (auto big = fs.create(kRootIno, "big", 0100644, {}); big.ok()) {
    (void)fs.write(big->ino, 0, as_bytes(pattern(3 << 20)));
    (void)fs.truncate(big->ino, 1 << 20);
  }
  // On what the image held before (see the sweep's source tree).
  if (auto pre = fs.resolve("/pre"); pre.ok()) {
    if (auto big = fs.resolve("/pre/big"); big.ok()) {
      (void)fs.write(*big, 300000, as_bytes(pattern(50000)));
      (void)fs.truncate(*big, 700000);
    }
    if (auto many = fs.resolve("/pre/many"); many.ok()) {
      for (int i = 0; i < 150; i += 7) (void)fs.unlink(*many, "entry-" + std::to_string(i));
      (void)fs.create(*many, "entry-new", 0100644, {});
    }
    (void)fs.rename(*pre, "a", *pre, "b", 0);
    auto from = fs.lookup(*pre, "from");
    auto to = fs.lookup(*pre, "to");
    if (from.ok() && to.ok()) {
      (void)fs.rename(*from, "sub", *to, "sub", 0);
      (void)fs.rename(*from, "x", *to, "y", kRenameExchange);
    }
    (void)fs.rmdir(*pre, "empty");
    (void)fs.unlink(*pre, "link");
  }
  (void)fs.sync();
}

// The tree the sweep's images start with (mke2fs -d): a big file, a
// directory of 150 names (indexed on 1 KiB blocks), two small files, a
// symlink and an empty directory.
void make_sweep_source(const std::string& root) {
  run_ok({"mkdir", "-p", root + "/pre/many", root + "/pre/empty"});
  write_file(root + "/pre/big", pattern(1 << 20));
  write_file(root + "/pre/a", "a");
  write_file(root + "/pre/b", "b");
  run_ok({"ln", "-s", "a", root + "/pre/link"});
  for (int i = 0; i < 150; ++i) write_file(root + "/pre/many/entry-" + std::to_string(i), std::to_string(i));
  // Directories moved and exchanged between parents, never read before.
  run_ok({"mkdir", "-p", root + "/pre/from/sub/inner", root + "/pre/from/x", root + "/pre/to/y"});
  write_file(root + "/pre/from/sub/file", "moved with its directory");
}

struct SweepKind {
  std::string name;
  std::vector<std::string> mkfs;
  bool journaled = true;
};

// ctest lists the kind by its name rather than as bytes.
void PrintTo(const SweepKind& kind, std::ostream* os) { *os << kind.name; }

class WriteErrorsSweep : public ::testing::TestWithParam<SweepKind> {
 protected:
  // Why the image closed with status `closed` is not as it must be; "" if
  // it is.
  std::string judge(const std::string& img, const Status& closed) {
    if (!closed.ok() && !GetParam().journaled) {
      // Without a journal nothing can undo a half-written change: the
      // image must stay marked for a full check (s_state without VALID_FS,
      // which uext clears at open), as the kernel's ext2 does.
      const auto state = superblock_state(img);
      if (!state) return "close failed (" + closed.error().message() + ") and the superblock cannot be read";
      if (*state & kSuperblockValid) {
        return "close failed (" + closed.error().message() + ") but the image says it is clean";
      }
      return {};
    }
    FsckVerdict v = e2fsck_clean(img);
    if (v.clean) return {};
    return "close " + (closed.ok() ? std::string("succeeded") : "failed: " + closed.error().message()) + "\n" +
           v.report.substr(0, 2000);
  }
};

// Each device call of the workload, in turn, fails once with EIO (every
// write, every read, every flush); the rest of the workload and the close
// go on. Whatever the operations reported, the image must be e2fsck-clean
// after the close (after replaying the journal if the close failed), with
// no orphan left pending; without a journal, a failed close must leave it
// marked for a full check instead.
TEST_P(WriteErrorsSweep, EachCallFailingOnceLeavesACleanImage) {
  TempDir tmp;
  const std::string base = tmp / "base.img";
  std::vector<std::string> mkfs = {"mke2fs", "-F", "-q"};
  mkfs.insert(mkfs.end(), GetParam().mkfs.begin(), GetParam().mkfs.end());
  make_sweep_source(tmp / "src");
  mkfs.insert(mkfs.end(), {"-d", tmp / "src", base, "16M"});
  run_ok(mkfs);
  io::FaultCounts calls;
  {
    const std::string img = tmp / "count.img";
    copy_file(base, img);
    FaultyFs f = open_faulty(img);
    ASSERT_TRUE(f.fs);
    touch_everything(*f.fs);
    ASSERT_TRUE(f.fs->close().ok());
    calls = f.dev->counts();
    f.fs.reset();
    expect_fsck_clean(img);
  }
  const struct {
    io::IoOp op;
    const char* what;
    uint64_t count;
  } kinds[] = {{io::IoOp::kWrite, "write", calls.writes},
               {io::IoOp::kRead, "read", calls.reads},
               {io::IoOp::kFlush, "flush", calls.flushes}};
  std::fprintf(stderr, "%s: %llu writes (%llu bytes), %llu reads, %llu flushes\n", GetParam().name.c_str(),
               static_cast<unsigned long long>(calls.writes), static_cast<unsigned long long>(calls.bytes_written),
               static_cast<unsigned long long>(calls.reads), static_cast<unsigned long long>(calls.flushes));
  int bad = 0;
  // The host's disk fills: every write past a point fails with ENOSPC
  // until space is freed, here before the close.
  for (int step = 1; step < 12 && bad < 3; ++step) {
    const uint64_t limit = calls.bytes_written * step / 12;
    const std::string img = tmp / "n.img";
    copy_file(base, img);
    FaultyFs f = open_faulty(img);
    ASSERT_TRUE(f.fs);
    f.dev->set_space_limit(limit);
    touch_everything(*f.fs);
    f.dev->set_space_limit(std::nullopt);
    Status closed = f.fs->close();
    f.fs.reset();
    std::string why = judge(img, closed);
    if (!why.empty()) {
      ++bad;
      ADD_FAILURE() << GetParam().name << ": the host full after " << limit << " bytes: " << why;
    }
  }
  for (const auto& k : kinds) {
    ASSERT_GT(k.count, 0u) << "the workload made no " << k.what;
    // A few more than counted: a failure can add calls (a retry, a cleanup).
    for (uint64_t n = 1; n <= k.count + 3 && bad < 3; ++n) {
      const std::string img = tmp / "n.img";
      copy_file(base, img);
      FaultyFs f = open_faulty(img);
      ASSERT_TRUE(f.fs);
      f.dev->fail_nth(k.op, n, EIO);
      touch_everything(*f.fs);
      f.dev->clear_rules();
      Status closed = f.fs->close();
      f.fs.reset();
      std::string why = judge(img, closed);
      if (!why.empty()) {
        ++bad;
        ADD_FAILURE() << GetParam().name << ": " << k.what << " " << n << " of " << k.count << " failing once: " << why;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(WriteErrors, WriteErrorsSweep,
                         // ext3 with 1 KiB blocks indexes the 150-name directory;
                         // ext4 is mke2fs's default, 4 KiB blocks.
                         ::testing::Values(SweepKind{"ext2_1k", {"-t", "ext2", "-b", "1024"}, false},
                                           SweepKind{"ext3_1k", {"-t", "ext3", "-b", "1024"}},
                                           SweepKind{"ext4_4k", {"-t", "ext4", "-b", "4096"}}),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace uext::testing
