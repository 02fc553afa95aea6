// Read-write Volume operations, checked with debugfs and e2fsck.
#include "fs/volume.h"

#include <gtest/gtest.h>

#include "disk/superblock.h"
#include "support/images.h"
#include "support/process.h"

namespace uext::fs {
namespace {

using testing::dumpe2fs_header;
using testing::expect_dumpe2fs_shows;
using testing::run;
using testing::run_ok;
using Changes = Volume::Changes;

Result<std::unique_ptr<Volume>> open_rw(const std::string& image) {
  auto dev = open_image_file(image, {.read_only = false});
  if (!dev.ok()) return std::move(dev).error();
  Options o;
  o.read_only = false;
  o.commit_interval_ms = 0;
  return Volume::open(std::move(*dev), o);
}

TEST(VolumeUpdateInode, ChangesReachTheImageWithAValidChecksum) {
  for (const char* type : {"ext4", "ext2"}) {
    SCOPED_TRACE(type);
    testing::TempDir dir;
    std::string img = dir / "fs.img";
    run_ok({"mke2fs", "-F", "-q", "-t", type, img, "32M"});
    {
      auto vol = open_rw(img);
      ASSERT_TRUE(vol.ok()) << vol.error().message();
      auto h = (*vol)->start(1);
      ASSERT_TRUE(h.ok());
      auto rec = (*vol)->update_inode(*h, 2, false, [](disk::Inode& in) {
        in.i_mode = (in.i_mode & ~07777) | 01777;
        in.i_uid = 4321;
        in.i_mtime = {1234567890, 5};
      });
      ASSERT_TRUE(rec.ok()) << rec.error().message();
      ASSERT_TRUE(h->stop().ok());
      ASSERT_TRUE((*vol)->close().ok());
    }
    std::string stat = run_ok({"debugfs", "-R", "stat <2>", img});
    EXPECT_NE(stat.find("Mode:  01777"), std::string::npos) << stat;
    EXPECT_NE(stat.find("User:  4321"), std::string::npos) << stat;
    auto fsck = run({"e2fsck", "-fn", img});
    EXPECT_EQ(fsck.exit_code, 0) << fsck.out;
  }
}

TEST(VolumeUpdateInode, CommittedButNotCheckpointedChangeIsReplayed) {
  testing::TempDir dir;
  std::string img = dir / "fs.img", crashed = dir / "crashed.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", img, "32M"});
  auto vol = open_rw(img);
  ASSERT_TRUE(vol.ok());
  auto h = (*vol)->start(1);
  ASSERT_TRUE((*vol)->update_inode(*h, 2, false, [](disk::Inode& in) { in.i_uid = 777; }).ok());
  ASSERT_TRUE(h->stop().ok());
  ASSERT_TRUE((*vol)->sync().ok());
  // A crash right after the commit: copy the image as it is on disk now.
  run_ok({"cp", "--sparse=always", img, crashed});
  ASSERT_TRUE((*vol)->close().ok());
  EXPECT_NE(run_ok({"dumpe2fs", "-h", crashed}).find("needs_recovery"), std::string::npos);
  {
    auto replayed = open_rw(crashed);  // replays, then reopens
    ASSERT_TRUE(replayed.ok()) << replayed.error().message();
    EXPECT_GT((*replayed)->recovery().transactions, 0u);
    auto rec = (*replayed)->read_inode(2);
    ASSERT_TRUE(rec.ok());
    EXPECT_EQ(rec->inode.i_uid, 777u);
    ASSERT_TRUE((*replayed)->close().ok());
  }
  auto fsck = run({"e2fsck", "-fn", crashed});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.out;
}

// ---- finish_handle and record_error: when a failed handle body marks the
// image "with errors", and what dumpe2fs and e2fsck make of the record.

// Runs one handle that changes a block when `change` (the superblock,
// rewritten as it is), lets `verdict` judge it, and fails it with EIO
// through finish_handle. Returns whether the superblock now says "errors".
bool fails_with_errors_mark(Volume& vol, bool change, Changes changes,
                            const std::function<void(journal::Handle&)>& verdict = {}) {
  auto h = vol.start(2);
  EXPECT_TRUE(h.ok());
  if (!h.ok()) return false;
  if (change) {
    EXPECT_TRUE(vol.update_superblock(*h, [](disk::Superblock&) {}).ok());
  }
  if (verdict) verdict(*h);
  Status done = vol.finish_handle(*h, "test_op", 12, Error(EIO, "injected"), changes);
  EXPECT_FALSE(done.ok());
  EXPECT_EQ(done.error().code(), EIO);  // the body's error, not the record's
  return (vol.sb().s_state & disk::kStateErrors) != 0;
}

TEST(FinishHandle, OnlyAHalfMadeChangeMarksTheImage) {
  testing::TempDir dir;
  const std::string image = dir / "fs.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", image, "16M"});
  auto opened = open_rw(image);
  ASSERT_TRUE(opened.ok()) << opened.error().message();
  auto vol = std::move(*opened);
  // Nothing changed, a step-wise operation, a verdict of "consistent", a
  // first step that put its own change back: none leaves half a change.
  EXPECT_FALSE(fails_with_errors_mark(*vol, false, Changes::kAllOrNothing));
  EXPECT_FALSE(fails_with_errors_mark(*vol, true, Changes::kEachStepWhole));
  EXPECT_FALSE(fails_with_errors_mark(*vol, true, Changes::kAllOrNothing,
                                      [](journal::Handle& h) { h.set_consistent(true); }));
  EXPECT_FALSE(fails_with_errors_mark(*vol, true, Changes::kAllOrNothing,
                                      [](journal::Handle& h) { h.step_consistent(0); }));
  EXPECT_EQ(vol->sb().s_error_count, 0u);
  ASSERT_TRUE(vol->close().ok());
  EXPECT_EQ(dumpe2fs_header(image)["Filesystem state"], "clean");
}

// A step that vouches for itself after others changed blocks, a step-wise
// operation whose step broke, and an all-or-nothing one without a verdict.
TEST(FinishHandle, HalfMadeChangesAreRecordedWhereDumpe2fsAndE2fsckSeeThem) {
  for (const char* kind : {"ext4", "ext2"}) {
    SCOPED_TRACE(kind);
    testing::TempDir dir;
    const std::string image = dir / "fs.img";
    run_ok({"mke2fs", "-F", "-q", "-t", kind, image, "16M"});
    auto opened = open_rw(image);
    ASSERT_TRUE(opened.ok()) << opened.error().message();
    auto vol = std::move(*opened);
    EXPECT_TRUE(fails_with_errors_mark(*vol, true, Changes::kAllOrNothing,
                                       [](journal::Handle& h) { h.step_consistent(1); }));
    EXPECT_TRUE(fails_with_errors_mark(*vol, true, Changes::kEachStepWhole,
                                       [](journal::Handle& h) { h.set_consistent(false); }));
    EXPECT_TRUE(fails_with_errors_mark(*vol, true, Changes::kAllOrNothing));
    EXPECT_EQ(vol->sb().s_error_count, 3u);
    ASSERT_TRUE(vol->close().ok());
    vol.reset();

    expect_dumpe2fs_shows(image, {{"Filesystem state", "clean with errors"},
                                  {"FS Error count", "3"},
                                  {"First error function", "test_op"},
                                  {"First error inode #", "12"},
                                  {"First error err", "EIO"},
                                  {"Last error function", "test_op"}});
    // e2fsck -n says nothing of it (its exit status is 0): the state is the
    // signal. A repairing run checks the image and clears it.
    EXPECT_EQ(run({"e2fsck", "-fn", image}).exit_code, 0);
    auto fix = run({"e2fsck", "-fy", image});
    EXPECT_LE(fix.exit_code, 1) << fix.out << fix.err;
    EXPECT_EQ(dumpe2fs_header(image)["Filesystem state"], "clean");
  }
}

// Corruption found while reading waits in memory until a sync (or the
// background writeback, or the close) writes it: the first and the latest
// record, and every one counted. I/O errors and other errors are not
// recorded, nor is anything on a read-only volume.
TEST(FoundCorrupt, RecordsCorruptionOnlyAndWritesItAtSync) {
  testing::TempDir dir;
  const std::string image = dir / "fs.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", image, "16M"});
  {
    Options ro;
    ro.read_only = true;
    auto dev = open_image_file(image, {.read_only = true});
    ASSERT_TRUE(dev.ok());
    auto vol = Volume::open(std::move(*dev), ro);
    ASSERT_TRUE(vol.ok()) << vol.error().message();
    Error e = (*vol)->found_corrupt(Error(kErrCorrupted, "test"), "read_test", 12, 100);
    EXPECT_EQ(e.code(), kErrCorrupted) << "the error comes back unchanged";
    EXPECT_EQ(e.message(), "test");
  }
  EXPECT_EQ(dumpe2fs_header(image)["Filesystem state"], "clean");

  auto opened = open_rw(image);
  ASSERT_TRUE(opened.ok()) << opened.error().message();
  auto vol = std::move(*opened);
  (void)vol->found_corrupt(Error(EIO, "a read failed"), "read_test", 12, 100);
  (void)vol->found_corrupt(Error(ENOENT, "no such name"), "read_test", 12, 100);
  ASSERT_TRUE(vol->sync().ok());
  EXPECT_EQ(vol->sb().s_error_count, 0u) << "an I/O error or ENOENT is no corruption";
  (void)vol->found_corrupt(Error(kErrBadChecksum, "checksum"), "read_first", 12, 100);
  (void)vol->found_corrupt(Error(kErrCorrupted, "bad"), "read_second", 13, 0);
  (void)vol->found_corrupt(Error(kErrCorrupted, "bad"), "read_latest", 14, 200);
  EXPECT_EQ(vol->sb().s_error_count, 0u) << "nothing is written before a sync";
  ASSERT_TRUE(vol->sync().ok());
  EXPECT_EQ(vol->sb().s_error_count, 3u);
  ASSERT_TRUE(vol->close().ok());
  vol.reset();

  expect_dumpe2fs_shows(image, {{"Filesystem state", "clean with errors"},
                                {"FS Error count", "3"},
                                {"First error function", "read_first"},
                                {"First error inode #", "12"},
                                {"First error block #", "100"},
                                {"First error err", "EFSBADCRC"},
                                {"Last error function", "read_latest"},
                                {"Last error inode #", "14"},
                                {"Last error block #", "200"},
                                {"Last error err", "EFSCORRUPTED"}});
  EXPECT_EQ(run({"e2fsck", "-fn", image}).exit_code, 0);
}

}  // namespace
}  // namespace uext::fs
