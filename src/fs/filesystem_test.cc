// Library-level tests of the read path on images that mke2fs builds.
#include "uext/filesystem.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "support/images.h"
#include "support/process.h"

namespace uext {
namespace {

using testing::run_ok;
using testing::TempDir;
using testing::write_file;

std::string pattern(size_t size, uint32_t seed) {
  std::string s(size, '\0');
  std::mt19937 rng(seed);
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string read_all(Filesystem& fs, Ino ino, uint64_t offset, size_t len) {
  std::string out(len, '\0');
  auto n = fs.read(ino, offset, std::as_writable_bytes(std::span(out)));
  EXPECT_TRUE(n.ok()) << (n.ok() ? "" : n.error().message());
  out.resize(n.ok() ? *n : 0);
  return out;
}

struct ImageKind {
  const char* name;
  std::vector<std::string> mkfs_args;
};

// One image per kind, built on first use and shared by the tests of that kind.
struct BuiltImage {
  TempDir dir;
  std::string tree, image, big, slow_target;
};

BuiltImage& built_image(const ImageKind& kind) {
  static std::map<std::string, std::unique_ptr<BuiltImage>> cache;
  auto& slot = cache[kind.name];
  if (slot) return *slot;
  slot = std::make_unique<BuiltImage>();
  BuiltImage& b = *slot;
  b.tree = b.dir / "tree";
  run_ok({"mkdir", "-p", b.tree + "/sub/deeper", b.tree + "/big"});
  b.big = pattern(5 * 1024 * 1024 + 123, 1);
  write_file(b.tree + "/big/file", b.big);
  write_file(b.tree + "/small", "hello\n");
  write_file(b.tree + "/sub/deeper/empty", "");
  // Holes at the start, in the middle (not block aligned) and at the end.
  run_ok({"truncate", "-s", "3000000", b.tree + "/sparse"});
  run_ok({"sh", "-c", "printf 'middle' | dd of=" + b.tree + "/sparse bs=1 seek=1234567 conv=notrunc status=none"});
  run_ok({"ln", "-s", "sub/deeper", b.tree + "/fastlink"});
  b.slow_target = "/" + std::string(200, 'x') + "/../small";
  run_ok({"ln", "-s", b.slow_target, b.tree + "/slowlink"});
  run_ok({"ln", b.tree + "/small", b.tree + "/sub/hardlink"});
  for (int i = 0; i < 3000; ++i) write_file(b.tree + "/sub/f" + std::to_string(i), std::to_string(i));
  run_ok({"setfattr", "-n", "user.note", "-v", "kept", b.tree + "/small"});
  run_ok({"setfattr", "-n", "user.big", "-v", std::string(700, 'v'), b.tree + "/small"});
  b.image = b.dir / "fs.img";
  std::vector<std::string> args = {"mke2fs", "-F", "-q"};
  for (const auto& a : kind.mkfs_args) args.push_back(a);
  args.insert(args.end(), {"-d", b.tree, b.image, "64M"});
  run_ok(args);
  // Directories this big must use the hashed index for the lookups below
  // to exercise it: e2fsck -D (re)builds indexes the way the kernel would.
  testing::run({"e2fsck", "-fyD", b.image});
  return b;
}

class ReadPath : public ::testing::TestWithParam<ImageKind> {
 protected:
  void SetUp() override {
    BuiltImage& b = built_image(GetParam());
    tree_ = b.tree;
    image_ = b.image;
    big_ = b.big;
    slow_target_ = b.slow_target;
    auto fs = Filesystem::open(image_, {});
    ASSERT_TRUE(fs.ok()) << fs.error().message();
    fs_ = std::move(*fs);
  }

  Ino resolve(const std::string& path, bool follow = true) {
    auto ino = fs_->resolve(path, follow);
    EXPECT_TRUE(ino.ok()) << path << ": " << (ino.ok() ? "" : ino.error().message());
    return ino.ok() ? *ino : 0;
  }

  std::string tree_, image_, big_, slow_target_;
  std::unique_ptr<Filesystem> fs_;
};

TEST_P(ReadPath, ReadsWholeFilesAndOddRanges) {
  Ino big = resolve("/big/file");
  EXPECT_EQ(read_all(*fs_, big, 0, big_.size() + 100), big_);
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    uint64_t off = rng() % (big_.size() + 10);
    size_t len = rng() % 70000;
    std::string expect = off < big_.size() ? big_.substr(off, len) : "";
    ASSERT_EQ(read_all(*fs_, big, off, len), expect) << "offset " << off << " length " << len;
  }
  EXPECT_EQ(read_all(*fs_, resolve("/small"), 0, 100), "hello\n");
  EXPECT_EQ(read_all(*fs_, resolve("/sub/deeper/empty"), 0, 100), "");
}

TEST_P(ReadPath, HolesReadAsZerosAndAreNotMapped) {
  Ino sparse = resolve("/sparse");
  std::string data = read_all(*fs_, sparse, 0, 3000000);
  std::string expect(3000000, '\0');
  expect.replace(1234567, 6, "middle");
  EXPECT_EQ(data, expect);
  auto extents = fs_->extents(sparse);
  ASSERT_TRUE(extents.ok()) << extents.error().message();
  ASSERT_FALSE(extents->empty());
  uint64_t mapped = 0;
  for (const auto& e : *extents) mapped += e.length;
  EXPECT_LE(mapped, 2u * 4096);
}

TEST_P(ReadPath, StatMatchesTheSource) {
  struct stat host {};
  ASSERT_EQ(::lstat((tree_ + "/big/file").c_str(), &host), 0);
  auto st = fs_->stat(resolve("/big/file"));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->size, big_.size());
  EXPECT_EQ(st->mode, host.st_mode);
  EXPECT_EQ(st->mtime.sec, host.st_mtim.tv_sec);
  auto small = fs_->stat(resolve("/small"));
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small->nlink, 2u);
  EXPECT_EQ(resolve("/small"), resolve("/sub/hardlink"));
}

TEST_P(ReadPath, SymlinksFastAndSlow) {
  auto fast = fs_->readlink(resolve("/fastlink", false));
  ASSERT_TRUE(fast.ok());
  EXPECT_EQ(*fast, "sub/deeper");
  auto slow = fs_->readlink(resolve("/slowlink", false));
  ASSERT_TRUE(slow.ok());
  EXPECT_EQ(*slow, slow_target_);
  // Following: relative and absolute targets, with ".." inside.
  EXPECT_EQ(resolve("/fastlink/empty"), resolve("/sub/deeper/empty"));
  EXPECT_EQ(resolve("/sub/../fastlink/empty"), resolve("/sub/deeper/empty"));
}

TEST_P(ReadPath, LookupErrorsUseTheRightErrno) {
  EXPECT_EQ(fs_->resolve("/nope").error().code(), ENOENT);
  EXPECT_EQ(fs_->resolve("/small/x").error().code(), ENOTDIR);
  EXPECT_EQ(fs_->resolve("relative").error().code(), EINVAL);
  EXPECT_EQ(fs_->resolve("/" + std::string(256, 'a')).error().code(), ENAMETOOLONG);
  EXPECT_EQ(fs_->read(resolve("/sub"), 0, {}).error().code(), EISDIR);
  EXPECT_EQ(fs_->readlink(resolve("/small")).error().code(), EINVAL);
  EXPECT_EQ(fs_->getxattr(resolve("/small"), "user.absent").error().code(), ENODATA);
}

TEST_P(ReadPath, ListsEveryEntryOnceAndResumesFromCookies) {
  Ino sub = resolve("/sub");
  EXPECT_TRUE(fs_->stat(sub)->flags & 0x1000) << "/sub should carry an htree index";
  auto all = fs_->list_directory(sub);
  ASSERT_TRUE(all.ok()) << all.error().message();
  std::set<std::string> names;
  for (const auto& e : *all) EXPECT_TRUE(names.insert(e.name).second) << "twice: " << e.name;
  EXPECT_EQ(names.size(), 3000u + 4);  // f*, deeper, hardlink, ".", ".."
  EXPECT_TRUE(names.count(".") && names.count("..") && names.count("deeper"));
  // Resume after every 97th entry: the concatenation is the full listing.
  std::vector<std::string> resumed;
  uint64_t cookie = 0;
  bool more = true;
  while (more) {
    more = false;
    int taken = 0;
    ASSERT_TRUE(fs_->readdir(sub, cookie, [&](const DirEntry& e, uint64_t next) {
                     resumed.push_back(e.name);
                     cookie = next;
                     if (++taken == 97) {
                       more = true;
                       return false;
                     }
                     return true;
                   }).ok());
  }
  ASSERT_EQ(resumed.size(), all->size());
  for (size_t i = 0; i < resumed.size(); ++i) EXPECT_EQ(resumed[i], (*all)[i].name);
  // Every listed name is found by lookup (through the htree where there is one).
  for (const auto& e : *all) {
    auto ino = fs_->lookup(sub, e.name);
    ASSERT_TRUE(ino.ok()) << e.name << ": " << ino.error().message();
    EXPECT_EQ(*ino, e.ino);
  }
}

TEST_P(ReadPath, ExtendedAttributesInInodeAndBlock) {
  Ino small = resolve("/small");
  auto names = fs_->listxattr(small);
  ASSERT_TRUE(names.ok()) << names.error().message();
  std::set<std::string> set(names->begin(), names->end());
  EXPECT_TRUE(set.count("user.note"));
  EXPECT_TRUE(set.count("user.big"));
  EXPECT_EQ(*fs_->getxattr(small, "user.note"), "kept");
  EXPECT_EQ(*fs_->getxattr(small, "user.big"), std::string(700, 'v'));
}

TEST_P(ReadPath, ConcurrentReadersSeeCorrectData) {
  Ino big = resolve("/big/file");
  Ino sub = resolve("/sub");
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 100; ++i) {
        uint64_t off = rng() % big_.size();
        size_t len = 1 + rng() % 100000;
        std::string got(len, '\0');
        auto n = fs_->read(big, off, std::as_writable_bytes(std::span(got)));
        if (!n.ok() || got.substr(0, *n) != big_.substr(off, len)) ++failures;
        auto found = fs_->lookup(sub, "f" + std::to_string(rng() % 3000));
        if (!found.ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Images, ReadPath,
    ::testing::Values(ImageKind{"ext4", {"-t", "ext4", "-b", "4096"}},
                      ImageKind{"ext4_1k", {"-t", "ext4", "-b", "1024"}},
                      ImageKind{"ext4_nocsum_32bit", {"-t", "ext4", "-b", "4096", "-O", "^metadata_csum,^64bit"}},
                      ImageKind{"ext4_csum_seed_128", {"-t", "ext4", "-O", "metadata_csum_seed", "-I", "128"}},
                      ImageKind{"ext3", {"-t", "ext3", "-b", "4096"}},
                      ImageKind{"ext2_1k", {"-t", "ext2", "-b", "1024"}},
                      ImageKind{"ext2", {"-t", "ext2", "-b", "4096"}}),
    [](const ::testing::TestParamInfo<ImageKind>& info) { return std::string(info.param.name); });

TEST(OpenErrors, NamesWhatIsWrong) {
  TempDir dir;
  auto missing = Filesystem::open(dir / "absent.img", {});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), ENOENT);
  write_file(dir / "zeros.img", std::string(1 << 20, '\0'));
  auto zeros = Filesystem::open(dir / "zeros.img", {});
  ASSERT_FALSE(zeros.ok());
  EXPECT_EQ(zeros.error().code(), kErrCorrupted);
  EXPECT_NE(zeros.error().message().find("superblock"), std::string::npos) << zeros.error().message();
  write_file(dir / "tiny.img", "x");
  EXPECT_FALSE(Filesystem::open(dir / "tiny.img", {}).ok());
  Options rw;
  rw.read_only = false;
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-O", "verity", dir / "verity.img", "8M"});
  auto verity = Filesystem::open(dir / "verity.img", rw);
  ASSERT_FALSE(verity.ok());
  EXPECT_EQ(verity.error().code(), EROFS);
  EXPECT_NE(verity.error().message().find("verity"), std::string::npos) << verity.error().message();
}

TEST(OpenErrors, UnsupportedIncompatFeatureRefuses) {
  TempDir dir;
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-O", "inline_data", dir / "inline.img", "8M"});
  auto fs = Filesystem::open(dir / "inline.img", {});
  ASSERT_FALSE(fs.ok());
  EXPECT_EQ(fs.error().code(), ENOTSUP);
  EXPECT_NE(fs.error().message().find("inline_data"), std::string::npos) << fs.error().message();
}

}  // namespace
}  // namespace uext

namespace uext {
namespace {

TEST(JournalInfo, FreshImageHasAnEmptyLog) {
  testing::TempDir dir;
  testing::run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-J", "size=4", dir / "j.img", "64M"});
  auto fs = Filesystem::open(dir / "j.img", {});
  ASSERT_TRUE(fs.ok()) << fs.error().message();
  VolumeInfo v = (*fs)->info();
  EXPECT_TRUE(v.journal.present);
  EXPECT_TRUE(v.journal.problem.empty()) << v.journal.problem;
  EXPECT_EQ(v.journal.blocks * v.block_size, 4u << 20);
  EXPECT_EQ(v.journal.start, 0u);
  EXPECT_FALSE(v.needs_recovery);
}

TEST(JournalInfo, KernelShutdownLeavesTransactionsToReplay) {
  if (!testing::can_loop_mount()) GTEST_SKIP() << "needs root and loop devices to let the kernel write a journal";
  testing::TempDir dir;
  std::string img = dir / "j.img", mnt = dir / "mnt";
  testing::run_ok({"mke2fs", "-F", "-q", "-t", "ext4", img, "64M"});
  testing::run_ok({"mkdir", mnt});
  testing::run_ok({"mount", "-o", "loop", img, mnt});
  auto r = testing::run_shell("for i in $(seq 1 40); do echo $i > " + mnt + "/f$i; done; sync " + mnt +
                              "/f1; xfs_io -x -c 'shutdown -f' " + mnt);
  testing::run({"umount", mnt});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string before = testing::run_ok({"sha256sum", img});
  // As the image lies (what uext info shows).
  Options raw;
  raw.replay_read_only = false;
  auto fs = Filesystem::open(img, raw);
  ASSERT_TRUE(fs.ok()) << fs.error().message();
  VolumeInfo v = (*fs)->info();
  EXPECT_TRUE(v.needs_recovery);
  EXPECT_TRUE(v.journal.problem.empty()) << v.journal.problem;
  EXPECT_NE(v.journal.start, 0u);
  EXPECT_GT(v.journal.pending_transactions, 0u);
  EXPECT_GT(v.journal.pending_blocks, 0u);
  const uint32_t pending = v.journal.pending_transactions;
  fs->reset();
  // A read-only open replays the kernel's journal in memory: the file the
  // kernel fsynced is there, and the image is not written.
  auto replayed = Filesystem::open(img, {});
  ASSERT_TRUE(replayed.ok()) << replayed.error().message();
  VolumeInfo w = (*replayed)->info();
  EXPECT_TRUE(w.replayed_in_memory);
  EXPECT_EQ(w.replayed_transactions, pending);
  EXPECT_TRUE(w.replay_problem.empty()) << w.replay_problem;
  EXPECT_FALSE(w.needs_recovery);
  auto f1 = (*replayed)->resolve("/f1");
  ASSERT_TRUE(f1.ok()) << f1.error().message();
  std::vector<std::byte> buf(16);
  auto n = (*replayed)->read(*f1, 0, buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(buf.data()), *n), "1\n");
  replayed->reset();
  EXPECT_EQ(testing::run_ok({"sha256sum", img}), before);
  // A journal that cannot be replayed (its superblock's magic zeroed) does
  // not stop a read-only open: the image is shown as it lies, and why.
  const uint64_t jblock = std::stoull(testing::run_ok({"debugfs", "-R", "bmap <8> 0", img}));
  testing::write_bytes(img, jblock * v.block_size, std::string(4, '\0'));
  auto damaged = Filesystem::open(img, {});
  ASSERT_TRUE(damaged.ok()) << damaged.error().message();
  VolumeInfo d = (*damaged)->info();
  EXPECT_FALSE(d.replayed_in_memory);
  EXPECT_NE(d.replay_problem.find("journal superblock"), std::string::npos) << d.replay_problem;
  EXPECT_TRUE((*damaged)->resolve("/").ok());
}

}  // namespace
}  // namespace uext

namespace uext {
namespace {

Options read_write() {
  Options o;
  o.read_only = false;
  return o;
}

std::string dumpe2fs_header(const std::string& image) { return testing::run_ok({"dumpe2fs", "-h", image}); }

void expect_clean(const std::string& image) {
  auto r = testing::run({"e2fsck", "-fn", image});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  std::string h = dumpe2fs_header(image);
  EXPECT_NE(h.find("Filesystem state:         clean\n"), std::string::npos) << h;
  EXPECT_EQ(h.find("needs_recovery"), std::string::npos) << h;
}

TEST(ReadWriteOpen, MarksTheImageInUseAndCleanAgainOnClose) {
  for (const char* type : {"ext4", "ext3", "ext2"}) {
    SCOPED_TRACE(type);
    testing::TempDir dir;
    std::string img = dir / "fs.img";
    testing::run_ok({"mke2fs", "-F", "-q", "-t", type, img, "32M"});
    auto fs = Filesystem::open(img, read_write());
    ASSERT_TRUE(fs.ok()) << fs.error().message();
    EXPECT_FALSE((*fs)->info().read_only);
    std::string during = dumpe2fs_header(img);
    if (std::string(type) == "ext2") {
      EXPECT_NE(during.find("not clean"), std::string::npos) << during;
    } else {
      EXPECT_NE(during.find("needs_recovery"), std::string::npos) << during;
    }
    ASSERT_TRUE((*fs)->close().ok());
    expect_clean(img);
  }
}

TEST(ReadWriteOpen, ReplaysWhatTheKernelLeftInTheJournal) {
  if (!testing::can_loop_mount()) GTEST_SKIP() << "needs root and loop devices to let the kernel write a journal";
  testing::TempDir dir;
  std::string img = dir / "j.img", mnt = dir / "mnt";
  testing::run_ok({"mke2fs", "-F", "-q", "-t", "ext4", img, "64M"});
  testing::run_ok({"mkdir", mnt});
  testing::run_ok({"mount", "-o", "loop", img, mnt});
  auto r = testing::run_shell("mkdir " + mnt + "/d && for i in $(seq 1 60); do echo file-$i > " + mnt +
                              "/d/f$i; done; sync -f " + mnt + "/d/f1; rm " + mnt + "/d/f7; xfs_io -x -c 'shutdown -f' " + mnt);
  testing::run({"umount", mnt});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_NE(dumpe2fs_header(img).find("needs_recovery"), std::string::npos);
  std::string by_e2fsck = dir / "e2fsck.img";
  testing::run_ok({"cp", "--sparse=always", img, by_e2fsck});
  testing::run({"e2fsck", "-fy", by_e2fsck});

  auto fs = Filesystem::open(img, read_write());
  ASSERT_TRUE(fs.ok()) << fs.error().message();
  EXPECT_GT((*fs)->info().replayed_transactions, 0u);
  for (int i = 1; i <= 60; ++i) {
    auto ino = (*fs)->resolve("/d/f" + std::to_string(i));
    if (i == 7) {
      EXPECT_FALSE(ino.ok());
      continue;
    }
    ASSERT_TRUE(ino.ok()) << i << ": " << ino.error().message();
    std::string got(64, '\0');
    auto n = (*fs)->read(*ino, 0, std::as_writable_bytes(std::span(got)));
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(got.substr(0, *n), "file-" + std::to_string(i) + "\n");
  }
  ASSERT_TRUE((*fs)->close().ok());
  expect_clean(img);
  // The kernel agrees, and sees the same tree e2fsck's replay gives.
  testing::run_ok({"mount", "-o", "loop,ro", img, mnt});
  auto ours = testing::run_shell("cd " + mnt + " && ls -la d | awk '{print $1, $2, $5, $9}' && cat d/*");
  testing::run({"umount", mnt});
  testing::run_ok({"mount", "-o", "loop,ro", by_e2fsck, mnt});
  auto theirs = testing::run_shell("cd " + mnt + " && ls -la d | awk '{print $1, $2, $5, $9}' && cat d/*");
  testing::run({"umount", mnt});
  EXPECT_EQ(ours.out, theirs.out);
  EXPECT_FALSE(ours.out.empty());
}

}  // namespace
}  // namespace uext
