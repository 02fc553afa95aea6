// Read-write Volume operations, checked with debugfs and e2fsck.
#include "fs/volume.h"

#include <gtest/gtest.h>

#include "support/process.h"

namespace uext::fs {
namespace {

using testing::run;
using testing::run_ok;

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

}  // namespace
}  // namespace uext::fs
