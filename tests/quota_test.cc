// Quota usage kept in the image's quota files (user, group and project),
// judged by e2fsck, which recounts every id's space and inodes from the
// inodes and compares them with the files: a workload that makes, grows,
// shrinks, re-owns, links and removes files owned by many ids, through the
// library and through the mount, with a reopen in between (entries read
// back from the files). Crash states of such an image are the crash
// suite's (tests/crash_test.cc, ext4_quota).
#include <fcntl.h>
#include <sys/stat.h>

#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support/images.h"
#include "support/process.h"
#include "uext/filesystem.h"

namespace uext::testing {
namespace {

std::span<const std::byte> bytes_of(const std::string& s) { return std::as_bytes(std::span(s)); }

// e2fsck -fn clean with nothing said about quota, and the state clean.
void expect_quota_clean(const std::string& image) {
  CommandResult r = run({"e2fsck", "-fn", image});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ((r.out + r.err).find("uota"), std::string::npos) << r.out << r.err;
  EXPECT_TRUE(image_is_clean(image));
}

struct QuotaCase {
  std::string name;
  std::vector<std::string> mkfs;
};

class QuotaUsage : public ::testing::TestWithParam<QuotaCase> {
 protected:
  void SetUp() override {
    image_ = tmp_ / "img";
    std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
    argv.insert(argv.end(), GetParam().mkfs.begin(), GetParam().mkfs.end());
    argv.push_back(image_);
    argv.push_back("64M");
    run_ok(argv);
  }
  std::unique_ptr<Filesystem> open() {
    Options o;
    o.read_only = false;
    auto fs = Filesystem::open(image_, o);
    EXPECT_TRUE(fs.ok()) << fs.error().message();
    return fs.ok() ? std::move(*fs) : nullptr;
  }

  TempDir tmp_;
  std::string image_;
};

TEST_P(QuotaUsage, FollowsEveryChangeOfEveryId) {
  {
    auto fs = open();
    ASSERT_TRUE(fs);
    // 60 users in 9 groups: more ids than a data block of the files holds
    // (14), so the trees grow and the files with them.
    std::vector<Ino> files;
    for (int i = 0; i < 60; ++i) {
      Owner o{static_cast<uint32_t>(1000 + i * 1013), static_cast<uint32_t>(50 + i % 9), 0};
      auto dir = fs->mkdir(kRootIno, fmt::format("home{}", i), 0755, o);
      ASSERT_TRUE(dir.ok()) << dir.error().message();
      auto f = fs->create(dir->ino, "data", 0644, o);
      ASSERT_TRUE(f.ok()) << f.error().message();
      ASSERT_TRUE(fs->write(f->ino, 0, bytes_of(std::string(1000 + i * 700, 'x'))).ok());
      files.push_back(f->ino);
    }
    // Sparse and preallocated space, an xattr block, a slow symlink.
    ASSERT_TRUE(fs->write(files[1], 10 << 20, bytes_of("far")).ok());
    const bool extents = GetParam().name.rfind("ext4", 0) == 0;  // fallocate needs extents
    if (extents) {
      ASSERT_TRUE(fs->fallocate(files[2], 0, 0, 1 << 20).ok());
    }
    Status xattr = fs->setxattr(files[3], "user.big", std::string(700, 'v'));  // past the inode: a block
    ASSERT_TRUE(xattr.ok()) << xattr.error().message();
    ASSERT_TRUE(fs->symlink(kRootIno, "long-link", std::string(300, 't'), Owner{4242, 4242, 0}).ok());
    // chown and chgrp move the usage; a hard link moves nothing.
    SetAttr to_new;
    to_new.uid = 777777;
    to_new.gid = 888888;
    ASSERT_TRUE(fs->setattr(files[4], to_new).ok());
    SetAttr group_only;
    group_only.gid = 51;
    ASSERT_TRUE(fs->setattr(files[5], group_only).ok());
    ASSERT_TRUE(fs->link(files[6], kRootIno, "second-name").ok());
    // Shrinking, punching, removing; a file removed while still open
    // stops counting at its last link, its blocks go at release.
    ASSERT_TRUE(fs->truncate(files[7], 10).ok());
    Status punched = fs->fallocate(files[1], kFallocPunchHole | kFallocKeepSize, 4096, 8 << 20);
    ASSERT_TRUE(punched.ok()) << punched.error().message();
    auto home8 = fs->lookup(kRootIno, "home8");
    ASSERT_TRUE(home8.ok());
    ASSERT_TRUE(fs->unlink(*home8, "data").ok());
    ASSERT_TRUE(fs->rmdir(kRootIno, "home8").ok());
    auto home9 = fs->lookup(kRootIno, "home9");
    ASSERT_TRUE(home9.ok());
    fs->retain(files[9]);
    ASSERT_TRUE(fs->unlink(*home9, "data").ok());
    // A rename over another owner's file, and one that leaves a whiteout.
    auto home10 = fs->lookup(kRootIno, "home10");
    auto home11 = fs->lookup(kRootIno, "home11");
    ASSERT_TRUE(home10.ok() && home11.ok());
    ASSERT_TRUE(fs->rename(*home10, "data", *home11, "data", 0).ok());
    ASSERT_TRUE(fs->rename(*home11, "data", kRootIno, "moved", kRenameWhiteout, Owner{31337, 31337, 0}).ok());
    ASSERT_TRUE(fs->sync().ok());
    ASSERT_TRUE(fs->release(files[9]).ok());
    ASSERT_TRUE(fs->close().ok());
  }
  expect_quota_clean(image_);
  {
    // Reopened: the usage comes from the files.
    auto fs = open();
    ASSERT_TRUE(fs);
    auto home12 = fs->lookup(kRootIno, "home12");
    ASSERT_TRUE(home12.ok());
    auto f = fs->lookup(*home12, "data");
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(fs->write(*f, 0, bytes_of(std::string(200000, 'y'))).ok());
    SetAttr back;
    back.uid = 1000;  // an id that already has an entry
    ASSERT_TRUE(fs->setattr(*f, back).ok());
    for (int i = 0; i < 20; ++i) {
      ASSERT_TRUE(fs->create(kRootIno, fmt::format("late{}", i), 0600, Owner{5000000u + i, 5000000u + i, 0}).ok());
    }
    ASSERT_TRUE(fs->unlink(kRootIno, "moved").ok());
    ASSERT_TRUE(fs->close().ok());
  }
  expect_quota_clean(image_);
}

INSTANTIATE_TEST_SUITE_P(
    Images, QuotaUsage,
    ::testing::Values(
        QuotaCase{"ext4_4k", {"-t", "ext4", "-b", "4096", "-O", "quota,project", "-E",
                              "quotatype=usrquota:grpquota:prjquota"}},
        QuotaCase{"ext4_1k", {"-t", "ext4", "-b", "1024", "-O", "quota"}},
        QuotaCase{"ext3_1k", {"-t", "ext3", "-b", "1024", "-O", "quota"}},
        QuotaCase{"ext2_4k", {"-t", "ext2", "-b", "4096", "-O", "quota"}}),
    [](const auto& info) { return info.param.name; });

// A quota file whose header is not the vfsv1 format: the open for writing
// is refused with a message naming the file, rather than leaving usage
// behind that no tool could read; reading still works.
TEST(QuotaFiles, ADamagedHeaderRefusesWritingByName) {
  TempDir tmp;
  const std::string image = tmp / "img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", "1024", "-O", "quota", image, "16M"});
  // The group file's header block, zeroed (its magic with it).
  const uint64_t block = std::stoull(debugfs(image, "bmap <4> 0"));
  run_ok({"dd", "if=/dev/zero", "of=" + image, "bs=1024", "count=1", "seek=" + std::to_string(block),
          "conv=notrunc", "status=none"});
  Options o;
  o.read_only = false;
  o.verify_checksums = true;
  auto fs = Filesystem::open(image, o);
  ASSERT_FALSE(fs.ok());
  EXPECT_EQ(fs.error().code(), kErrCorrupted);
  EXPECT_NE(fs.error().message().find("group quota file (inode 4)"), std::string::npos) << fs.error().message();
  EXPECT_NE(fs.error().message().find("magic 0x0"), std::string::npos) << fs.error().message();
  o.read_only = true;
  auto ro = Filesystem::open(image, o);
  ASSERT_TRUE(ro.ok()) << ro.error().message();
  EXPECT_TRUE((*ro)->resolve("/lost+found").ok());
}

// A full filesystem refuses new files whose ids would need the quota files
// to grow: ENOSPC, as any create that finds no space, and nothing recorded
// as damage (the image stays clean, not "clean with errors").
TEST(QuotaFiles, AFullFilesystemRefusesNewIdsCleanly) {
  TempDir tmp;
  const std::string image = tmp / "img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", "1024", "-m", "0", "-O", "quota", image, "8M"});
  {
    Options o;
    o.read_only = false;
    auto opened = Filesystem::open(image, o);
    ASSERT_TRUE(opened.ok()) << opened.error().message();
    Filesystem& fs = **opened;
    auto big = fs.create(kRootIno, "big", 0644, Owner{1, 1, 0});
    ASSERT_TRUE(big.ok());
    const std::string chunk(64 << 10, 'f');
    uint64_t at = 0;
    for (;;) {
      auto w = fs.write(big->ino, at, bytes_of(chunk));
      if (!w.ok()) {
        ASSERT_EQ(w.error().code(), ENOSPC) << w.error().message();
        break;
      }
      at += *w;
    }
    ASSERT_TRUE(fs.sync().ok());
    // New users next to user 1 (their entries go in its data block, the
    // file need not grow), in groups far apart (each needs tree blocks of
    // its own): the user's entry is made, then the group's finds no space.
    int refused = 0;
    for (uint32_t i = 1; i <= 12 && refused == 0; ++i) {
      auto f = fs.create(kRootIno, fmt::format("n{}", i), 0644, Owner{1 + i, i << 16, 0});
      if (!f.ok()) {
        EXPECT_EQ(f.error().code(), ENOSPC) << f.error().message();
        ++refused;
      }
    }
    EXPECT_EQ(refused, 1);
    ASSERT_TRUE(fs.close().ok());
  }
  expect_quota_clean(image);
}

// A tree block that refers back to itself (a loop a damaged file could
// hold): the load stops at once with the block named, instead of walking
// the loop.
TEST(QuotaFiles, ALoopInTheTreeIsRefusedByName) {
  TempDir tmp;
  const std::string image = tmp / "img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", "1024", "-O", "quota", image, "16M"});
  // 1 KiB filesystem blocks: quota block n is the file's block n. Block 2
  // is the second level of the user file's tree; its slot 0 leads on.
  const uint64_t block = std::stoull(debugfs(image, "bmap <3> 2"));
  {
    std::fstream f(image, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(block * 1024));
    const char self[4] = {2, 0, 0, 0};  // slot 0 of block 2 names block 2
    f.write(self, sizeof self);
    ASSERT_TRUE(f.good());
  }
  Options o;
  o.read_only = false;
  auto fs = Filesystem::open(image, o);
  ASSERT_FALSE(fs.ok());
  EXPECT_EQ(fs.error().code(), kErrCorrupted);
  EXPECT_NE(fs.error().message().find("user quota file (inode 3)"), std::string::npos) << fs.error().message();
  EXPECT_NE(fs.error().message().find("tree block 2 is referred to twice"), std::string::npos) << fs.error().message();
}

}  // namespace
}  // namespace uext::testing
