// Every errno the write API promises, each followed by e2fsck: a failed
// call leaves the image as it was and consistent. Also the orphan list:
// an unlinked file still held open survives a crash as an orphan that the
// next open frees.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support/crash.h"
#include "support/images.h"
#include "support/process.h"
#include "uext/filesystem.h"

namespace uext::testing {
namespace {

std::span<const std::byte> bytes_of(const std::string& s) { return std::as_bytes(std::span(s)); }

class NamespaceErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    image_ = tmp_.path() + "/img";
    run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", "4096", image_, "32M"});
    reopen();
  }
  void reopen() {
    fs_.reset();
    Options o;
    o.read_only = false;
    o.commit_interval_ms = 0;
    auto fs = Filesystem::open(image_, o);
    ASSERT_TRUE(fs.ok()) << fs.error().message();
    fs_ = std::move(*fs);
  }
  void close_and_check() {
    Status s = fs_->close();
    ASSERT_TRUE(s.ok()) << s.error().message();
    fs_.reset();
    FsckVerdict v = e2fsck_clean(image_);
    EXPECT_TRUE(v.clean) << v.report;
  }
  Ino mk(Ino dir, const std::string& name) {
    auto st = fs_->mkdir(dir, name, 0755, {});
    EXPECT_TRUE(st.ok()) << name << ": " << st.error().message();
    return st.ok() ? st->ino : 0;
  }
  Ino file(Ino dir, const std::string& name, const std::string& data = "") {
    auto st = fs_->create(dir, name, 0644, {});
    EXPECT_TRUE(st.ok()) << name << ": " << st.error().message();
    if (!st.ok()) return 0;
    if (!data.empty()) {
      EXPECT_TRUE(fs_->write(st->ino, 0, bytes_of(data)).ok());
    }
    return st->ino;
  }
  template <class R>
  static int err(const R& r) {
    return r.ok() ? 0 : r.error().code();
  }

  TempDir tmp_;
  std::string image_;
  std::unique_ptr<Filesystem> fs_;
};

TEST_F(NamespaceErrors, CreateAndNames) {
  Ino d = mk(kRootIno, "d");
  file(d, "f");
  EXPECT_EQ(err(fs_->create(d, "f", 0644, {})), EEXIST);
  EXPECT_EQ(err(fs_->mkdir(d, "f", 0755, {})), EEXIST);
  EXPECT_EQ(err(fs_->symlink(d, "f", "x", {})), EEXIST);
  EXPECT_EQ(err(fs_->create(d, std::string(256, 'a'), 0644, {})), ENAMETOOLONG);
  EXPECT_TRUE(fs_->create(d, std::string(255, 'a'), 0644, {}).ok());
  EXPECT_EQ(err(fs_->create(d, "", 0644, {})), EINVAL);
  EXPECT_EQ(err(fs_->create(d, ".", 0644, {})), EINVAL);
  EXPECT_EQ(err(fs_->create(d, "..", 0644, {})), EINVAL);
  EXPECT_EQ(err(fs_->create(d, "a/b", 0644, {})), EINVAL);
  Ino f = *fs_->lookup(d, "f");
  EXPECT_EQ(err(fs_->create(f, "x", 0644, {})), ENOTDIR);
  EXPECT_EQ(err(fs_->mkdir(f, "x", 0755, {})), ENOTDIR);
  EXPECT_EQ(err(fs_->lookup(d, "missing")), ENOENT);
  EXPECT_EQ(err(fs_->symlink(d, "s", "", {})), ENOENT);
  EXPECT_EQ(err(fs_->symlink(d, "s", std::string(5000, 't'), {})), ENAMETOOLONG);
  EXPECT_EQ(err(fs_->mknod(d, "dir-by-mknod", S_IFDIR | 0755, {})), EINVAL);
  close_and_check();
}

// renameat2's RENAME_WHITEOUT, as on ext4 (overlayfs asks for it, fsstress
// tries it): the old name is left holding a whiteout, a character device
// 0:0 with mode 0 and one link, and the new name holds the file. With
// RENAME_EXCHANGE it is EINVAL, as on Linux; uext refused every use of it
// with EINVAL.
TEST_F(NamespaceErrors, RenameWhiteoutLeavesACharacterDevice) {
  Ino d = mk(kRootIno, "d");
  Ino e = mk(kRootIno, "e");
  Ino f = file(d, "f", "data");
  const Ino replaced = file(e, "old", "replaced");
  EXPECT_EQ(err(fs_->rename(d, "f", e, "old", kRenameWhiteout | kRenameExchange)), EINVAL);
  EXPECT_EQ(err(fs_->rename(d, "f", e, "old", kRenameWhiteout | kRenameNoReplace)), EEXIST);
  const uint64_t free_inodes = fs_->statfs()->free_files;
  ASSERT_TRUE(fs_->rename(d, "f", e, "old", kRenameWhiteout, Owner{1234, 5678, 022}).ok());
  // The replaced file's inode went; the whiteout took one.
  EXPECT_EQ(fs_->statfs()->free_files, free_inodes);
  EXPECT_NE(err(fs_->stat(replaced)), 0);
  auto moved = fs_->lookup(e, "old");
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ(*moved, f);
  EXPECT_EQ(fs_->stat(f)->nlink, 1u);
  auto wh = fs_->lookup(d, "f");
  ASSERT_TRUE(wh.ok()) << wh.error().message();
  ASSERT_NE(*wh, f);
  auto ws = fs_->stat(*wh);
  ASSERT_TRUE(ws.ok());
  EXPECT_EQ(ws->mode, static_cast<uint32_t>(S_IFCHR));
  EXPECT_EQ(ws->nlink, 1u);
  EXPECT_EQ(ws->rdev_major, 0u);
  EXPECT_EQ(ws->rdev_minor, 0u);
  EXPECT_EQ(ws->uid, 1234u);
  EXPECT_EQ(ws->gid, 5678u);
  auto entries = fs_->list_directory(d);
  ASSERT_TRUE(entries.ok());
  bool listed_as_chr = false;
  for (const auto& ent : *entries) listed_as_chr |= ent.name == "f" && ent.type == S_IFCHR;
  EXPECT_TRUE(listed_as_chr) << "the directory entry's type is a character device";
  // A directory moved away with a whiteout: its old parent loses the link
  // of its "..", the new one gains it; the whiteout is no directory.
  Ino sub = mk(d, "sub");
  ASSERT_EQ(fs_->stat(d)->nlink, 3u);
  ASSERT_TRUE(fs_->rename(d, "sub", e, "sub", kRenameWhiteout).ok());
  EXPECT_EQ(fs_->stat(d)->nlink, 2u);
  EXPECT_EQ(fs_->stat(e)->nlink, 3u);
  EXPECT_EQ(*fs_->lookup(sub, ".."), e);
  EXPECT_EQ(fs_->stat(*fs_->lookup(d, "sub"))->mode, static_cast<uint32_t>(S_IFCHR));
  // Within one directory, to a new name (overlayfs's NOREPLACE|WHITEOUT).
  ASSERT_TRUE(fs_->rename(e, "old", e, "new", kRenameWhiteout | kRenameNoReplace).ok());
  EXPECT_EQ(*fs_->lookup(e, "new"), f);
  EXPECT_EQ(fs_->stat(*fs_->lookup(e, "old"))->mode, static_cast<uint32_t>(S_IFCHR));
  close_and_check();
  for (const char* path : {"/d/f", "/d/sub", "/e/old"}) {
    const std::string st = debugfs(image_, std::string("stat ") + path);
    EXPECT_NE(st.find("Type: character special"), std::string::npos) << path << ":\n" << st;
    EXPECT_NE(st.find("Mode:  0000"), std::string::npos) << path << ":\n" << st;
    EXPECT_NE(st.find("Device major/minor number: 00:00"), std::string::npos) << path << ":\n" << st;
  }
  EXPECT_EQ(debugfs(image_, "cat /e/new"), "data");
}

TEST_F(NamespaceErrors, RemoveAndLink) {
  Ino d = mk(kRootIno, "d");
  Ino sub = mk(d, "sub");
  file(sub, "inner");
  Ino f = file(d, "f", "data");
  EXPECT_EQ(err(fs_->unlink(d, "sub")), EISDIR);
  EXPECT_EQ(err(fs_->rmdir(d, "f")), ENOTDIR);
  EXPECT_EQ(err(fs_->rmdir(d, "sub")), ENOTEMPTY);
  EXPECT_EQ(err(fs_->rmdir(d, "missing")), ENOENT);
  EXPECT_EQ(err(fs_->unlink(d, "missing")), ENOENT);
  EXPECT_EQ(err(fs_->link(sub, kRootIno, "dirlink")), EPERM);
  EXPECT_EQ(err(fs_->link(f, d, "sub")), EEXIST);
  auto st = fs_->link(f, kRootIno, "f2");
  ASSERT_TRUE(st.ok()) << st.error().message();
  EXPECT_EQ(st->nlink, 2u);
  EXPECT_TRUE(fs_->unlink(d, "f").ok());
  EXPECT_EQ(fs_->stat(f)->nlink, 1u);
  EXPECT_EQ(fs_->list_directory(sub)->size(), 3u);
  EXPECT_TRUE(fs_->unlink(sub, "inner").ok());
  EXPECT_TRUE(fs_->rmdir(d, "sub").ok());
  EXPECT_EQ(fs_->stat(d)->nlink, 2u);
  close_and_check();
}

TEST_F(NamespaceErrors, Rename) {
  Ino a = mk(kRootIno, "a");
  Ino b = mk(kRootIno, "b");
  Ino ab = mk(a, "ab");
  file(a, "f", "F");
  file(b, "g", "G");
  mk(b, "full");
  file(*fs_->lookup(b, "full"), "x");
  // A directory cannot move into itself or below itself.
  EXPECT_EQ(err(fs_->rename(kRootIno, "a", ab, "a2", 0)), EINVAL);
  EXPECT_EQ(err(fs_->rename(kRootIno, "a", a, "a2", 0)), EINVAL);
  // Types must match when replacing.
  EXPECT_EQ(err(fs_->rename(a, "f", kRootIno, "b", 0)), EISDIR);
  EXPECT_EQ(err(fs_->rename(a, "ab", b, "g", 0)), ENOTDIR);
  EXPECT_EQ(err(fs_->rename(a, "ab", b, "full", 0)), ENOTEMPTY);
  EXPECT_EQ(err(fs_->rename(a, "missing", b, "x", 0)), ENOENT);
  EXPECT_EQ(err(fs_->rename(a, "f", b, "g", kRenameNoReplace)), EEXIST);
  EXPECT_EQ(err(fs_->rename(a, "f", b, "nothing", kRenameExchange)), ENOENT);
  EXPECT_EQ(err(fs_->rename(a, "f", b, "g", kRenameNoReplace | kRenameExchange)), EINVAL);
  // An ancestor of the source cannot be replaced.
  EXPECT_EQ(err(fs_->rename(ab, "..", kRootIno, "a", 0)), EINVAL);
  // Exchange swaps; a directory changes parent (and ".." and link counts).
  ASSERT_TRUE(fs_->rename(a, "ab", b, "g", kRenameExchange).ok());
  EXPECT_EQ(*fs_->lookup(b, "g"), ab);
  EXPECT_EQ(*fs_->lookup(ab, ".."), b);
  EXPECT_EQ(fs_->stat(a)->nlink, 2u);
  EXPECT_EQ(fs_->stat(b)->nlink, 4u);
  // Replace a file: the old target is gone.
  ASSERT_TRUE(fs_->rename(a, "f", a, "ab", 0).ok());
  EXPECT_EQ(err(fs_->lookup(a, "f")), ENOENT);
  // Replace an empty directory with a directory.
  mk(a, "empty");
  ASSERT_TRUE(fs_->rename(b, "g", a, "empty", 0).ok());
  EXPECT_EQ(*fs_->lookup(ab, ".."), a);
  EXPECT_EQ(fs_->stat(a)->nlink, 3u);
  EXPECT_EQ(fs_->stat(b)->nlink, 3u);
  close_and_check();
}

// A directory whose ".." names another directory (damage made with
// debugfs) is not moved: rename checks ".." before its handle changes
// anything, so the names stay as they were. The damage is recorded once,
// as corruption found (not also as a half-made change).
TEST_F(NamespaceErrors, RenameOfADirectoryWhoseDotDotIsWrongChangesNothing) {
  Ino a = mk(kRootIno, "a");
  mk(a, "sub");
  Ino b = mk(kRootIno, "b");
  ASSERT_TRUE(fs_->close().ok());
  fs_.reset();
  run_ok({"debugfs", "-w", "-R", "unlink /a/sub/..", image_});
  run_ok({"debugfs", "-w", "-R", fmt::format("link <{}> /a/sub/..", b), image_});
  reopen();
  Status moved = fs_->rename(a, "sub", b, "sub", 0);
  ASSERT_FALSE(moved.ok());
  EXPECT_EQ(moved.error().code(), kErrCorrupted) << moved.error().message();
  EXPECT_NE(moved.error().message().find("\"..\" does not name its parent"), std::string::npos)
      << moved.error().message();
  EXPECT_TRUE(fs_->lookup(a, "sub").ok());
  EXPECT_EQ(err(fs_->lookup(b, "sub")), ENOENT);
  ASSERT_TRUE(fs_->close().ok());
  fs_.reset();
  EXPECT_EQ(superblock_state(image_), kSuperblockValid | kSuperblockErrors);
  expect_dumpe2fs_shows(image_, {{"FS Error count", "1"}, {"First error function", "rename"}, {"First error err", "EFSCORRUPTED"}});
}

TEST_F(NamespaceErrors, FilesAndSizes) {
  Ino d = mk(kRootIno, "d");
  Ino f = file(d, "f", std::string(10000, 'x'));
  std::vector<std::byte> buf(4);
  EXPECT_EQ(err(fs_->write(d, 0, bytes_of("x"))), EISDIR);
  EXPECT_EQ(err(fs_->read(d, 0, buf)), EISDIR);
  EXPECT_EQ(err(fs_->truncate(d, 0)), EISDIR);
  // Past the largest file an extent-mapped inode can hold (2^32 blocks).
  EXPECT_EQ(err(fs_->write(f, (uint64_t{1} << 32) * 4096, bytes_of("x"))), EFBIG);
  EXPECT_EQ(err(fs_->seek(f, 20000, SEEK_DATA)), ENXIO);
  EXPECT_EQ(err(fs_->seek(f, 0, SEEK_SET)), EINVAL);
  // A file with a hole: data at 0 and at 1 MiB.
  ASSERT_TRUE(fs_->write(f, 1 << 20, bytes_of("tail")).ok());
  EXPECT_EQ(*fs_->seek(f, 0, SEEK_DATA), 0u);
  EXPECT_EQ(*fs_->seek(f, 0, SEEK_HOLE), 12288u);
  EXPECT_EQ(*fs_->seek(f, 20000, SEEK_DATA), uint64_t{1} << 20);
  EXPECT_EQ(*fs_->seek(f, (1 << 20) + 1, SEEK_HOLE), (1u << 20) + 4);
  // fallocate modes.
  EXPECT_EQ(err(fs_->fallocate(f, kFallocPunchHole, 0, 10)), EOPNOTSUPP);
  EXPECT_EQ(err(fs_->fallocate(f, 0, 0, 0)), EINVAL);
  ASSERT_TRUE(fs_->fallocate(f, kFallocKeepSize, 2 << 20, 1 << 20).ok());
  EXPECT_EQ(fs_->stat(f)->size, (1u << 20) + 4);
  ASSERT_TRUE(fs_->fallocate(f, 0, 4 << 20, 8192).ok());
  EXPECT_EQ(fs_->stat(f)->size, (4u << 20) + 8192);
  // Unwritten blocks read as zeros and count as holes.
  auto n = fs_->read(f, 4 << 20, buf);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(buf[0], std::byte{0});
  EXPECT_EQ(*fs_->seek(f, 4 << 20, SEEK_HOLE), 4u << 20);
  ASSERT_TRUE(fs_->fallocate(f, kFallocZeroRange, 100, 5000).ok());
  std::vector<std::byte> zeros(5000);
  ASSERT_TRUE(fs_->read(f, 100, zeros).ok());
  for (auto b : zeros) ASSERT_EQ(b, std::byte{0});
  ASSERT_TRUE(fs_->read(f, 99, buf).ok());
  EXPECT_EQ(static_cast<char>(buf[0]), 'x');
  // setattr.
  SetAttr attr;
  attr.mode = 04711;
  attr.uid = 1000;
  attr.gid = 100;
  attr.mtime = Time{12345, 678};
  auto st = fs_->setattr(f, attr);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->mode, S_IFREG | 04711u);
  EXPECT_EQ(st->uid, 1000u);
  EXPECT_EQ(st->gid, 100u);
  EXPECT_EQ(st->mtime, (Time{12345, 678}));
  // An access-time update alone may leave ctime as it was.
  SetAttr atime_only;
  atime_only.atime = Time{999, 1};
  atime_only.keep_ctime = true;
  auto st2 = fs_->setattr(f, atime_only);
  ASSERT_TRUE(st2.ok());
  EXPECT_EQ(st2->atime, (Time{999, 1}));
  EXPECT_EQ(st2->ctime, st->ctime);
  close_and_check();
  // The kernel agrees on the sizes, the hole and the times.
  if (!can_loop_mount()) return;
  std::string mnt = tmp_.path() + "/mnt";
  std::filesystem::create_directories(mnt);
  LoopMount m(image_, mnt, true);
  ASSERT_TRUE(m.ok()) << m.error();
  struct stat s {};
  ASSERT_EQ(::stat((mnt + "/d/f").c_str(), &s), 0);
  EXPECT_EQ(static_cast<uint64_t>(s.st_size), (4u << 20) + 8192);
  EXPECT_EQ(s.st_mtim.tv_sec, 12345);
  EXPECT_EQ(s.st_uid, 1000u);
  EXPECT_EQ(read_file(mnt + "/d/f").substr((1 << 20), 4), "tail");
}

// The atime update a read makes (touch_atime), as the kernel's noatime,
// relatime and strictatime: ctime never moves, and relatime updates only an
// atime not newer than mtime or ctime (or a day old). The image stays clean
// and debugfs reads the new atime.
TEST_F(NamespaceErrors, ReadsChangeAtimeAsTheKernelsAtimeOptions) {
  const Ino f = file(kRootIno, "f", "data");
  const Ino d = mk(kRootIno, "d");
  auto stat_of = [&](Ino ino) {
    auto st = fs_->stat(ino);
    EXPECT_TRUE(st.ok()) << st.error().message();
    return st.ok() ? *st : Stat{};
  };
  const int64_t start = ::time(nullptr);
  for (Ino ino : {f, d}) {
    SCOPED_TRACE(ino == f ? "file" : "directory");
    SetAttr old_times;
    old_times.atime = Time{start - 100, 0};
    old_times.mtime = Time{start - 50, 0};
    ASSERT_TRUE(fs_->setattr(ino, old_times).ok());
    const Stat before = stat_of(ino);
    ASSERT_TRUE(fs_->touch_atime(ino, AtimeUpdate::kNever).ok());
    EXPECT_EQ(stat_of(ino).atime, before.atime) << "noatime";
    ASSERT_TRUE(fs_->touch_atime(ino, AtimeUpdate::kRelative).ok());
    const Stat read_once = stat_of(ino);
    EXPECT_GE(read_once.atime.sec, start) << "relatime: atime was older than mtime";
    EXPECT_EQ(read_once.ctime, before.ctime) << "a read changes no ctime";
    EXPECT_EQ(read_once.mtime, before.mtime);
    ASSERT_TRUE(fs_->touch_atime(ino, AtimeUpdate::kRelative).ok());
    EXPECT_EQ(stat_of(ino).atime, read_once.atime) << "relatime: atime is newer than mtime and ctime";
    ASSERT_TRUE(fs_->touch_atime(ino, AtimeUpdate::kAlways).ok());
    const Stat strict = stat_of(ino);
    EXPECT_NE(strict.atime, read_once.atime) << "strictatime";
    EXPECT_EQ(strict.ctime, before.ctime);
  }
  // A write moves mtime past atime: the next read updates it again.
  SetAttr newer_atime;
  newer_atime.atime = Time{start + 3600, 0};
  newer_atime.keep_ctime = true;
  ASSERT_TRUE(fs_->setattr(f, newer_atime).ok());
  ASSERT_TRUE(fs_->touch_atime(f, AtimeUpdate::kRelative).ok());
  EXPECT_EQ(stat_of(f).atime, (Time{start + 3600, 0})) << "newer than mtime and ctime, not a day old";
  const Stat f_now = stat_of(f);
  ASSERT_TRUE(fs_->write(f, 0, bytes_of("more data")).ok());
  SetAttr later_mtime;  // the write's mtime is the clock's: move it past the atime above
  later_mtime.mtime = Time{start + 7200, 0};
  later_mtime.keep_ctime = true;
  ASSERT_TRUE(fs_->setattr(f, later_mtime).ok());
  ASSERT_TRUE(fs_->touch_atime(f, AtimeUpdate::kRelative).ok());
  EXPECT_NE(stat_of(f).atime, f_now.atime) << "relatime: mtime passed atime";
  const Time atime = stat_of(f).atime;
  close_and_check();
  // debugfs reads the same atime (seconds, in hex, first in its "atime:" line).
  std::string out = debugfs(image_, "stat /f");
  auto at = out.find("atime: 0x");
  ASSERT_NE(at, std::string::npos) << out;
  EXPECT_EQ(std::stoll(out.substr(at + 9, 8), nullptr, 16), atime.sec) << out;
  // A read-only open changes nothing.
  Options ro;
  auto rofs = Filesystem::open(image_, ro);
  ASSERT_TRUE(rofs.ok()) << rofs.error().message();
  ASSERT_TRUE((*rofs)->touch_atime(f, AtimeUpdate::kAlways).ok());
  EXPECT_EQ((*rofs)->stat(f)->atime, atime);
}

// The server's read() finds out whether it is due to change atime, on a
// file the page cache holds and on one it does not, and changes nothing.
TEST_F(NamespaceErrors, AReadSaysWhetherItIsDueToChangeAtime) {
  const Ino f = file(kRootIno, "f", "data");  // cached: its write is pending
  std::array<std::byte, 16> buf{};
  auto due = [&](Filesystem& fs, AtimeUpdate policy) {
    ReadOptions o;
    o.atime = policy;
    o.atime_due = !o.atime_due;  // read() must set it either way
    auto n = fs.read(f, 0, buf, o);
    EXPECT_TRUE(n.ok() && *n == 4) << (n.ok() ? "short" : n.error().message());
    return o.atime_due;
  };
  const Time atime = fs_->stat(f)->atime;
  EXPECT_TRUE(due(*fs_, AtimeUpdate::kRelative)) << "relatime: the write's mtime is not older than atime";
  EXPECT_FALSE(due(*fs_, AtimeUpdate::kNever));
  EXPECT_EQ(fs_->stat(f)->atime, atime) << "read() itself changes nothing";
  ASSERT_TRUE(fs_->touch_atime(f, AtimeUpdate::kRelative).ok());
  EXPECT_FALSE(due(*fs_, AtimeUpdate::kRelative)) << "atime is now newer than mtime";
  close_and_check();
  // Opened again, nothing cached: the same answers from the inode alone.
  reopen();
  EXPECT_FALSE(due(*fs_, AtimeUpdate::kRelative));
  SetAttr older;
  older.atime = Time{1000, 0};
  older.keep_ctime = true;
  ASSERT_TRUE(fs_->setattr(f, older).ok());
  EXPECT_TRUE(due(*fs_, AtimeUpdate::kRelative)) << "atime older than mtime";
  EXPECT_TRUE(due(*fs_, AtimeUpdate::kAlways));
  close_and_check();
  auto ro = Filesystem::open(image_, Options{});
  ASSERT_TRUE(ro.ok()) << ro.error().message();
  EXPECT_FALSE(due(**ro, AtimeUpdate::kAlways)) << "nothing changes on a read-only filesystem";
}

TEST_F(NamespaceErrors, ReadOnlyRefusesChanges) {
  file(kRootIno, "f", "x");
  close_and_check();
  auto fs = Filesystem::open(image_, Options{});
  ASSERT_TRUE(fs.ok());
  Ino f = *(*fs)->lookup(kRootIno, "f");
  EXPECT_EQ(err((*fs)->create(kRootIno, "g", 0644, {})), EROFS);
  EXPECT_EQ(err((*fs)->write(f, 0, bytes_of("y"))), EROFS);
  EXPECT_EQ(err((*fs)->unlink(kRootIno, "f")), EROFS);
  EXPECT_EQ(err((*fs)->setxattr(f, "user.a", "b")), EROFS);
}

TEST_F(NamespaceErrors, XattrsThroughTheApi) {
  Ino f = file(kRootIno, "f", "x");
  EXPECT_TRUE(fs_->setxattr(f, "user.small", "v").ok());
  EXPECT_TRUE(fs_->setxattr(f, "user.big", std::string(2000, 'b')).ok());
  EXPECT_EQ(err(fs_->setxattr(f, "user.small", "w", XATTR_CREATE)), EEXIST);
  EXPECT_EQ(err(fs_->setxattr(f, "user.none", "w", XATTR_REPLACE)), ENODATA);
  EXPECT_EQ(err(fs_->removexattr(f, "user.none")), ENODATA);
  EXPECT_EQ(*fs_->getxattr(f, "user.big"), std::string(2000, 'b'));
  EXPECT_TRUE(fs_->removexattr(f, "user.small").ok());
  EXPECT_EQ(err(fs_->getxattr(f, "user.small")), ENODATA);
  close_and_check();
  EXPECT_NE(debugfs(image_, "ea_list /f").find("user.big"), std::string::npos);
}

TEST_F(NamespaceErrors, LinkCountLimit) {
  Ino f = file(kRootIno, "f");
  Ino d = mk(kRootIno, "links");
  // 65000 links is the most an inode may have.
  for (int i = 1; i < 65000; ++i) {
    auto st = fs_->link(f, d, fmt::format("l{}", i));
    ASSERT_TRUE(st.ok()) << i << ": " << st.error().message();
  }
  EXPECT_EQ(err(fs_->link(f, d, "one-too-many")), EMLINK);
  close_and_check();
}

// An unlinked file that is still held survives on the orphan list; a crash
// (the image copied while open, after a commit) leaves it there, and the
// next read-write open frees it.
TEST_F(NamespaceErrors, UnlinkedWhileHeldSurvivesAsOrphan) {
  Ino f = file(kRootIno, "f", std::string(300000, 'o'));
  ASSERT_TRUE(fs_->sync().ok());
  uint64_t free_before = fs_->statfs()->free_blocks;
  fs_->retain(f);
  ASSERT_TRUE(fs_->unlink(kRootIno, "f").ok());
  // Still readable and writable through the reference.
  ASSERT_TRUE(fs_->write(f, 0, bytes_of("still here")).ok());
  std::vector<std::byte> buf(10);
  ASSERT_TRUE(fs_->read(f, 0, buf).ok());
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf.data()), 10), "still here");
  ASSERT_TRUE(fs_->sync().ok());
  std::string crashed = tmp_.path() + "/crashed";
  copy_file(image_, crashed);
  EXPECT_EQ(fs_->statfs()->free_blocks, free_before);
  ASSERT_TRUE(fs_->release(f, 1).ok());
  EXPECT_GT(fs_->statfs()->free_blocks, free_before + 60);
  close_and_check();
  // The crashed copy: e2fsck's own replay and orphan handling agree...
  FsckOptions by_e2fsck_options;
  by_e2fsck_options.replay = Replay::kE2fsck;
  FsckVerdict by_e2fsck = e2fsck_clean(crashed, by_e2fsck_options);
  EXPECT_TRUE(by_e2fsck.clean) << by_e2fsck.report;
  // ... and uext's open finishes the orphan.
  {
    Options o;
    o.read_only = false;
    auto fs = Filesystem::open(crashed, o);
    ASSERT_TRUE(fs.ok()) << fs.error().message();
    EXPECT_GT((*fs)->statfs()->free_blocks, free_before + 60);
    ASSERT_TRUE((*fs)->close().ok());
  }
  FsckVerdict v = e2fsck_clean(crashed);
  EXPECT_TRUE(v.clean) << v.report;
}

TEST_F(NamespaceErrors, StatfsAgreesWithTheKernel) {
  for (int i = 0; i < 20; ++i) file(kRootIno, fmt::format("f{}", i), std::string(50000, 'z'));
  ASSERT_TRUE(fs_->sync().ok());
  auto st = fs_->statfs();
  ASSERT_TRUE(st.ok());
  close_and_check();
  if (!can_loop_mount()) return;
  std::string mnt = tmp_.path() + "/mnt";
  std::filesystem::create_directories(mnt);
  LoopMount m(image_, mnt, true);
  ASSERT_TRUE(m.ok()) << m.error();
  std::string out = run_ok({"stat", "-f", "-c", "%S %b %f %a %c %d", mnt});
  EXPECT_EQ(out, fmt::format("{} {} {} {} {} {}\n", st->block_size, st->blocks, st->free_blocks,
                             st->available_blocks, st->files, st->free_files));
}

// The project feature without quota: a directory marked project-inherit
// (chattr +P, set here with debugfs as this kernel has no CONFIG_QUOTA to
// mount such an image) hands its project to every new inode under it, and
// a name in it may only go to an inode of the same project: EXDEV, as
// ext4_rename, ext4_cross_rename and ext4_link answer, so that mv copies.
TEST(ProjectInherit, NewInodesTakeTheProjectAndOthersAreKeptOut) {
  TempDir tmp;
  const std::string image = tmp.path() + "/img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-O", "project", image, "32M"});
  Options o;
  o.read_only = false;
  auto project_of = [&](const std::string& path) {
    const std::string out = debugfs(image, "stat " + path);
    const size_t at = out.find("Project:");
    if (at == std::string::npos) return std::string("none: " + out.substr(0, 200));
    return std::to_string(std::stoul(out.substr(at + 8)));
  };
  auto err = [](const auto& r) { return r.ok() ? 0 : r.error().code(); };
  {
    auto fs = Filesystem::open(image, o);
    ASSERT_TRUE(fs.ok()) << fs.error().message();
    ASSERT_TRUE((*fs)->mkdir(kRootIno, "p", 0755, {}).ok());
    ASSERT_TRUE((*fs)->mkdir(kRootIno, "q", 0755, {}).ok());
    ASSERT_TRUE((*fs)->create(kRootIno, "out", 0644, {}).ok());
    ASSERT_TRUE((*fs)->close().ok());
  }
  // chattr +P and a project number of 42 on /p (extents flag kept).
  run_ok({"debugfs", "-w", "-R", "sif /p flags 0x20080000", image});
  run_ok({"debugfs", "-w", "-R", "sif /p projid 42", image});
  ASSERT_EQ(project_of("/p"), "42");
  {
    auto opened = Filesystem::open(image, o);
    ASSERT_TRUE(opened.ok()) << opened.error().message();
    Filesystem& fs = **opened;
    const Ino p = *fs.lookup(kRootIno, "p");
    const Ino q = *fs.lookup(kRootIno, "q");
    const Ino out = *fs.lookup(kRootIno, "out");
    ASSERT_TRUE(fs.create(p, "f", 0644, {}).ok());
    auto sub = fs.mkdir(p, "sub", 0755, {});
    ASSERT_TRUE(sub.ok());
    ASSERT_TRUE(fs.create(sub->ino, "g", 0644, {}).ok());
    ASSERT_TRUE(fs.symlink(p, "l", "f", {}).ok());
    ASSERT_TRUE(fs.create(q, "h", 0644, {}).ok());
    // Names in /p for an inode of project 0.
    EXPECT_EQ(err(fs.rename(kRootIno, "out", p, "x")), EXDEV);
    EXPECT_EQ(err(fs.link(out, p, "y")), EXDEV);
    EXPECT_EQ(err(fs.rename(kRootIno, "out", sub->ino, "g", kRenameExchange)), EXDEV);
    EXPECT_EQ(err(fs.rename(q, "h", p, "f")), EXDEV);  // over an existing name too
    // Out of the project is allowed (q keeps no project), and back in.
    EXPECT_EQ(err(fs.rename(p, "f", q, "f")), 0);
    EXPECT_EQ(err(fs.rename(q, "f", p, "f")), 0);
    EXPECT_EQ(err(fs.link(*fs.lookup(p, "f"), sub->ino, "f2")), 0);
    ASSERT_TRUE(fs.close().ok());
  }
  EXPECT_EQ(project_of("/p/f"), "42");
  EXPECT_EQ(project_of("/p/sub"), "42");
  EXPECT_EQ(project_of("/p/sub/g"), "42");
  EXPECT_EQ(project_of("/p/sub/f2"), "42");
  EXPECT_EQ(project_of("/p/l"), "42");
  EXPECT_EQ(project_of("/q/h"), "0");
  EXPECT_EQ(project_of("/out"), "0");
  EXPECT_NE(debugfs(image, "stat /p/sub").find("Flags: 0x20080000"), std::string::npos);  // inherited by subdirectories
  FsckVerdict v = e2fsck_clean(image);
  EXPECT_TRUE(v.clean) << v.report;
}

}  // namespace
}  // namespace uext::testing
