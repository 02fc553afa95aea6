// Writeback errors per open file description (Linux's errseq): an EIO
// injected under delayed-allocation writeback with src/io/fault_device must
// reach every description sampled before it through fsync, once each; a
// description sampled after it was reported does not see it; one nobody
// has reported yet reaches descriptions opened after it; the pages that
// failed stay dirty, so the data still reaches the image. Each test closes
// and checks the image with e2fsck -fn and dumpe2fs -h.
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "support/faulty_fs.h"
#include "support/process.h"
#include "uext/filesystem.h"

namespace uext::testing {
namespace {

std::string bytes(char c, size_t n) { return std::string(n, c); }
std::span<const std::byte> as_bytes(const std::string& s) { return std::as_bytes(std::span(s)); }

TEST(WbErrseq, EveryDescriptionHearsOnceLateOnesDoNot) {
  TempDir tmp;
  const std::string image = tmp / "errseq.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", "4096", image, "32M"});
  FaultyFs f = open_faulty(image);
  ASSERT_TRUE(f.fs);
  auto st = f.fs->create(kRootIno, "f", 0100644, {});
  ASSERT_TRUE(st.ok());
  const Ino ino = st->ino;
  ASSERT_TRUE(f.fs->sync().ok());

  uint64_t d1 = f.fs->wb_err_sample(ino), d2 = f.fs->wb_err_sample(ino);
  const std::string data = bytes('a', 64 * 1024);
  ASSERT_EQ(*f.fs->write(ino, 0, as_bytes(data)), data.size());
  // The next device write is writeback's data: it fails once.
  f.dev->fail_nth(io::IoOp::kWrite, 1, EIO);
  Status s = f.fs->fsync(ino, false, d1);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), EIO) << s.error().message();
  EXPECT_EQ(f.dev->counts().failed_writes, 1u);
  // The other description opened before the error hears of it once too;
  // its fsync writes the still-dirty pages back, this time successfully.
  s = f.fs->fsync(ino, false, d2);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), EIO);
  EXPECT_TRUE(f.fs->fsync(ino, false, d1).ok());
  EXPECT_TRUE(f.fs->fsync(ino, false, d2).ok());
  // Opened after the error was reported: nothing to hear.
  uint64_t d3 = f.fs->wb_err_sample(ino);
  EXPECT_TRUE(f.fs->fsync(ino, false, d3).ok());
  // fsync without a sample is a description of its own, opened before.
  s = f.fs->fsync(ino);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), EIO);
  EXPECT_TRUE(f.fs->fsync(ino).ok());

  close_and_check(f, image);
  EXPECT_EQ(read_back(image, "/f", data.size() + 1), data) << "the failed pages stayed dirty";
}

// Background writeback writes with the file's locks let go; its failure
// must still reach fsync, and the pages must stay dirty.
TEST(WbErrseq, BackgroundWritebackFailureReachesFsync) {
  TempDir tmp;
  const std::string image = tmp / "background.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", "4096", image, "32M"});
  FaultyFs f = open_faulty(image, {}, /*background=*/true);
  ASSERT_TRUE(f.fs);
  auto st = f.fs->create(kRootIno, "f", 0100644, {});
  ASSERT_TRUE(st.ok());
  const Ino ino = st->ino;
  ASSERT_TRUE(f.fs->sync().ok());
  uint64_t seen = f.fs->wb_err_sample(ino);
  // The next device write is background writeback's data (no commit runs
  // meanwhile: commit_interval_ms 0): it fails.
  f.dev->fail_nth(io::IoOp::kWrite, 1, EIO);
  // 2 MiB: a run long enough for writeback without the file's locks.
  const std::string data = bytes('b', 2 << 20);
  ASSERT_EQ(*f.fs->write(ino, 0, as_bytes(data)), data.size());
  for (int i = 0; i < 500 && f.dev->counts().failed_writes == 0; ++i) usleep(10 * 1000);
  ASSERT_EQ(f.dev->counts().failed_writes, 1u) << "background writeback never wrote";
  Status s = f.fs->fsync(ino, false, seen);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), EIO) << s.error().message();
  EXPECT_TRUE(f.fs->fsync(ino, false, seen).ok());
  close_and_check(f, image);
  EXPECT_EQ(read_back(image, "/f", data.size() + 1), data) << "the failed pages stayed dirty";
}

TEST(WbErrseq, UnseenErrorReachesLaterDescriptionsAndSurvivesEviction) {
  TempDir tmp;
  const std::string image = tmp / "unseen.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", "4096", image, "64M"});
  Options o;
  o.page_cache_bytes = 256 * 1024;  // clean pages go soon
  FaultyFs f = open_faulty(image, o);
  ASSERT_TRUE(f.fs);
  auto a = f.fs->create(kRootIno, "a", 0100644, {});
  auto b = f.fs->create(kRootIno, "b", 0100644, {});
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(f.fs->sync().ok());

  uint64_t before = f.fs->wb_err_sample(a->ino);
  const std::string data = bytes('u', 128 * 1024);
  ASSERT_EQ(*f.fs->write(a->ino, 0, as_bytes(data)), data.size());
  // Writeback that nobody's fsync started (sync) fails.
  f.dev->fail_nth(io::IoOp::kWrite, 1, EIO);
  EXPECT_FALSE(f.fs->sync().ok());
  // Nobody has reported it: a description opened now still hears of it.
  uint64_t after_unseen = f.fs->wb_err_sample(a->ino);
  // The pages are written back now, and clean ones are evicted while
  // another file is written through the small cache.
  ASSERT_TRUE(f.fs->sync().ok());
  const std::string other = bytes('o', 1024 * 1024);
  for (int i = 0; i < 4; ++i) ASSERT_EQ(*f.fs->write(b->ino, i * other.size(), as_bytes(other)), other.size());
  ASSERT_TRUE(f.fs->sync().ok());
  ASSERT_TRUE(f.fs->write(b->ino, 0, as_bytes(other)).ok());  // a write shrinks the cache
  ASSERT_TRUE(f.fs->sync().ok());

  Status s = f.fs->fsync(a->ino, false, after_unseen);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), EIO);
  s = f.fs->fsync(a->ino, false, before);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), EIO);
  uint64_t late = f.fs->wb_err_sample(a->ino);
  EXPECT_TRUE(f.fs->fsync(a->ino, false, late).ok());
  uint64_t b_desc = f.fs->wb_err_sample(b->ino);
  EXPECT_TRUE(f.fs->fsync(b->ino, false, b_desc).ok()) << "b never failed";

  close_and_check(f, image);
  EXPECT_EQ(read_back(image, "/a", data.size() + 1), data);
}

}  // namespace
}  // namespace uext::testing
