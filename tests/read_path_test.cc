// The read path end to end: images made by mke2fs -d and written by the
// kernel, read back by `uext get`/`uext cat` and by the library, compared
// with the source tree and with the kernel's own view of the image.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <dirent.h>

#include <algorithm>
#include <functional>
#include <map>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>

#include "support/images.h"
#include "support/tree.h"
#include "uext/filesystem.h"

namespace uext::testing {
namespace {

std::string kind_param_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
}

std::vector<std::string> all_kind_names() {
  std::vector<std::string> v;
  for (auto& k : image_kinds()) v.push_back(k.name);
  return v;
}

// A read-only kernel mount of an image under a fresh TempDir.
struct KernelView {
  TempDir dir;
  std::unique_ptr<LoopMount> mount;
  explicit KernelView(const std::string& image) {
    std::string mnt = dir / "mnt";
    ::mkdir(mnt.c_str(), 0755);
    mount = std::make_unique<LoopMount>(image, mnt, true);
  }
  std::string path(const std::string& rel = "") const {
    return rel.empty() ? mount->dir() : mount->dir() + "/" + rel;
  }
};

// ------------------------------------------------------------------ harness

// The comparer itself must see every kind of difference it claims to.
TEST(Harness, ComparerDetectsEachKindOfDifference) {
  TempDir t;
  TreeOptions o;
  o.htree_entries = 0;
  o.random_files = 10;
  o.far_sparse = false;
  TreeManifest m = build_tree(t / "a", o);
  ASSERT_EQ(0, run({"cp", "-a", t / "a", t / "b"}).exit_code);
  auto same = compare_trees(t / "a", t / "b");
  ASSERT_TRUE(same.empty()) << "cp -a copy differs:\n" << format_differences(same);

  std::string b = t / "b";
  ASSERT_EQ(0, ::chmod((b + "/sizes/f1").c_str(), 0600));
  write_bytes(b + "/sizes/f4096", 1000, "\x01\x02");
  ASSERT_EQ(0, ::truncate((b + "/sizes/f8192").c_str(), 8000));
  timespec ts[2] = {{0, UTIME_OMIT}, {12345, 678}};
  ASSERT_EQ(0, ::utimensat(AT_FDCWD, (b + "/sizes/f2048").c_str(), ts, 0));
  ASSERT_EQ(0, ::setxattr((b + "/xattrs/small").c_str(), "user.a", "2", 1, 0));
  ASSERT_EQ(0, ::removexattr((b + "/xattrs/large").c_str(), "user.s"));
  ASSERT_EQ(0, ::unlink((b + "/links/other/cross").c_str()));
  copy_file(b + "/links/hl/orig", b + "/links/other/cross");
  ASSERT_EQ(0, ::unlink((b + "/links/sym100").c_str()));
  ASSERT_EQ(0, ::symlink("elsewhere", (b + "/links/sym100").c_str()));
  write_bytes(b + "/sparse/odd", 3 << 20, std::string(4096, '\0'));  // zeros where a hole was
  ASSERT_EQ(0, ::lchown((b + "/owners/odd").c_str(), 1, 2));
  ASSERT_EQ(0, ::unlink((b + "/special/blk").c_str()));
  ASSERT_EQ(0, ::mknod((b + "/special/blk").c_str(), S_IFBLK | 0660, makedev(7, 201)));
  write_file(b + "/extra", "x");
  ASSERT_EQ(0, ::unlink((b + "/sizes/f0").c_str()));

  auto d = compare_trees(t / "a", b);
  std::string all;
  for (auto& line : d) all += line + "\n";
  for (const char* want :
       {"sizes/f1: mode 0644 != 0600", "sizes/f4096: content differs at byte 1000", "sizes/f8192: size",
        "sizes/f2048: mtime", "xattrs/small: xattr user.a value differs", "xattrs/large: xattr user.s missing",
        "hard-link group", "links/sym100: symlink target", "sparse/odd: data/hole map", "owners/odd: owner 1234:5678 != 1:2",
        "special/blk: rdev 7,200 != 7,201", "extra: unexpected", "sizes/f0: missing"}) {
    EXPECT_NE(all.find(want), std::string::npos) << "comparer missed \"" << want << "\"; it said:\n" << all;
  }
}

TEST(Harness, KernelViewOfImagesEqualsSourceTree) {
  if (!can_loop_mount()) GTEST_SKIP() << "needs root and loop devices";
  for (const char* kind : {"ext4-4k", "ext2-1k", "ext4-4k-inode128"}) {
    const SharedImage& img = shared_image(kind, false);
    ASSERT_TRUE(img.error.empty()) << img.error;
    KernelView view(img.path);
    ASSERT_TRUE(view.mount->ok()) << view.mount->error();
    CompareOptions o;
    o.ignore = {"lost+found", kKernelDir};
    o.times_32bit = img.kind.small_inodes;
    auto d = compare_trees(img.source, view.path(), o);
    EXPECT_TRUE(d.empty()) << kind << ": the kernel's view of the image differs from the source:\n"
                           << format_differences(d);
  }
}

// ------------------------------------------------------------------ matrix

class ReadPathMatrix : public ::testing::TestWithParam<std::string> {};

TEST_P(ReadPathMatrix, GetReproducesSourceAndKernelView) {
  if (!can_loop_mount())
    GTEST_SKIP() << "needs root and loop devices (owners, devices and kernel-written files)";
  const SharedImage& img = shared_image(GetParam(), true);
  ASSERT_TRUE(img.error.empty()) << img.error;
  const TreeManifest& tree = shared_tree(img.kind.block_size, true);

  // The image really has what the test claims to cover.
  EXPECT_GE(htree_levels(img.path, "/many"), 1)
      << "/many should be a two-level htree:\n" << debugfs(img.path, "htree /many").substr(0, 600);
  if (img.kind.extents) {
    EXPECT_GE(extent_depth(img.path, std::string("/") + KernelFiles::deep), 2)
        << debugfs(img.path, std::string("ex /") + KernelFiles::deep).substr(0, 600);
  }

  ScratchDir t;
  std::string out = t / "out";
  auto t0 = std::chrono::steady_clock::now();
  GuardedResult r = run_uext({"get", img.path, "/", out}, 600);
  std::fprintf(stderr, "[timing] uext get %s: %.1fs\n", img.kind.name.c_str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  ASSERT_EQ(0, r.exit_code) << "uext get " << img.kind.name << " / OUT: " << r.describe();

  // The kernel comparison comes first: it checks atimes, and reading a
  // symlink (readlink) on the host may update the copy's atime.
  KernelView view(img.path);
  ASSERT_TRUE(view.mount->ok()) << view.mount->error();
  CompareOptions vs_kernel;
  vs_kernel.atime = true;
  auto d = compare_trees(view.path(), out, vs_kernel);
  EXPECT_TRUE(d.empty()) << img.kind.name << ": uext get differs from the kernel's view ("
                         << d.size() << " differences):\n" << format_differences(d);

  CompareOptions vs_source;
  vs_source.ignore = {"lost+found", kKernelDir};
  vs_source.times_32bit = img.kind.small_inodes;
  d = compare_trees(img.source, out, vs_source);
  EXPECT_TRUE(d.empty()) << img.kind.name << ": uext get differs from the source tree (" << d.size()
                         << " differences):\n" << format_differences(d);

  // uext cat: many files in one call (their concatenation) and some alone.
  Rng rng(std::hash<std::string>{}(GetParam()));
  std::vector<std::string> pick;
  for (int i = 0; i < 60; ++i) {
    const std::string& f = tree.regular_files[rng.below(tree.regular_files.size())];
    if (f.find("sparse/far") == std::string::npos && f != tree.big_file) pick.push_back(f);
  }
  for (auto& f : tree.regular_files)
    if (f.rfind("names/", 0) == 0 || f.rfind("sparse/", 0) == 0)
      if (f.find("far") == std::string::npos) pick.push_back(f);
  std::vector<std::string> args = {"cat", img.path};
  std::string expected;
  for (auto& f : pick) {
    args.push_back("/" + f);
    expected += read_file(img.source + "/" + f);
  }
  r = run_uext(args, 300);
  ASSERT_EQ(0, r.exit_code) << "uext cat of " << pick.size() << " files: " << r.describe();
  EXPECT_TRUE(r.out == expected) << "uext cat of " << pick.size() << " files: output ("
                                 << r.out.size() << " bytes) differs from the sources ("
                                 << expected.size() << " bytes)";
  std::vector<std::string> alone = {KernelFiles::deep, KernelFiles::small};
  if (img.kind.extents)
    alone.insert(alone.end(), {KernelFiles::prealloc, KernelFiles::prealloc_keep_size,
                               KernelFiles::prealloc_only, KernelFiles::punched});
  if (!tree.big_file.empty()) alone.push_back(tree.big_file);
  alone.push_back("names/new\nline");
  alone.push_back("names/-rf");
  for (auto& f : alone) {
    r = run_uext({"cat", img.path, "/" + f}, 300);
    ASSERT_EQ(0, r.exit_code) << "uext cat /" << printable(f) << ": " << r.describe();
    std::string want = read_file(view.path(f));
    EXPECT_TRUE(r.out == want) << "uext cat /" << printable(f) << " on " << img.kind.name << ": "
                               << r.out.size() << " bytes, the kernel reads " << want.size();
  }
}

INSTANTIATE_TEST_SUITE_P(AllKinds, ReadPathMatrix, ::testing::ValuesIn(all_kind_names()),
                         kind_param_name);

// ------------------------------------------------------------------ library

std::unique_ptr<Filesystem> open_fs(const std::string& image) {
  auto fs = Filesystem::open(image, Options{});
  if (!fs) {
    ADD_FAILURE() << "Filesystem::open(" << image << "): " << fs.error().message();
    return nullptr;
  }
  return std::move(fs).value();
}

std::string pread_all(int fd, uint64_t off, size_t len) {
  std::string s(len, '\0');
  size_t got = 0;
  while (got < len) {
    ssize_t n = ::pread(fd, s.data() + got, len - got, static_cast<off_t>(off + got));
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  s.resize(got);
  return s;
}

// Checks Filesystem::read(ino, off, len) against pread on the kernel's
// mount. Returns a message, empty when they agree.
std::string check_read(Filesystem& fs, Ino ino, int fd, uint64_t off, size_t len) {
  std::string want = pread_all(fd, off, len);
  std::vector<std::byte> buf(len);
  auto n = fs.read(ino, off, buf);
  if (!n) return "read(" + std::to_string(off) + ", " + std::to_string(len) + "): " + n.error().message();
  if (*n != want.size())
    return "read(" + std::to_string(off) + ", " + std::to_string(len) + ") returned " +
           std::to_string(*n) + " bytes, expected " + std::to_string(want.size());
  if (std::memcmp(buf.data(), want.data(), want.size()) != 0) {
    size_t i = 0;
    while (static_cast<char>(buf[i]) == want[i]) ++i;
    return "read(" + std::to_string(off) + ", " + std::to_string(len) + ") differs at file offset " +
           std::to_string(off + i);
  }
  return {};
}

class LibraryRead : public ::testing::TestWithParam<std::string> {
 protected:
  // The small tree (2,000-entry directory) keeps each test's image cheap;
  // LibraryReaddir uses the full tree's 20,000-entry directory.
  virtual bool full() const { return false; }
  void SetUp() override {
    if (!can_loop_mount()) GTEST_SKIP() << "needs root and loop devices (kernel-written files and view)";
    full_ = full();
    img_ = &shared_image(GetParam(), full_);
    ASSERT_TRUE(img_->error.empty()) << img_->error;
    view_ = std::make_unique<KernelView>(img_->path);
    ASSERT_TRUE(view_->mount->ok()) << view_->mount->error();
    fs_ = open_fs(img_->path);
    ASSERT_TRUE(fs_);
  }
  bool full_ = false;
  const SharedImage* img_ = nullptr;
  std::unique_ptr<KernelView> view_;
  std::unique_ptr<Filesystem> fs_;
};

class LibraryReaddir : public LibraryRead {
 protected:
  bool full() const override { return true; }
};

TEST_P(LibraryRead, ReadsAtOddOffsetsMatchTheKernel) {
  std::vector<std::string> files = {KernelFiles::deep, KernelFiles::small, "sparse/odd",
                                    "sparse/many-holes", "sparse/indirect-edges", "sparse/hole-start",
                                    "sparse/hole-end", "sparse/all-hole", "sizes/f12289", "sizes/f274433",
                                    "sizes/f4243457", "sizes/f3146061", "sizes/f0", "sizes/f1"};
  if (img_->kind.extents)
    files.insert(files.end(), {KernelFiles::prealloc, KernelFiles::prealloc_keep_size,
                               KernelFiles::prealloc_only, KernelFiles::punched});
  if (full_) files.push_back("sparse/far");
  Rng rng(7);
  const uint64_t bs = img_->kind.block_size;
  for (auto& f : files) {
    SCOPED_TRACE(f);
    auto ino = fs_->resolve("/" + f);
    ASSERT_TRUE(ino) << "resolve /" << f << ": " << ino.error().message();
    struct stat st;
    ASSERT_EQ(0, ::stat(view_->path(f).c_str(), &st));
    auto s = fs_->stat(*ino);
    ASSERT_TRUE(s) << s.error().message();
    ASSERT_EQ(static_cast<uint64_t>(st.st_size), s->size);
    int fd = ::open(view_->path(f).c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    uint64_t size = s->size;
    // Interesting offsets: block and extent edges, data/hole edges, EOF.
    std::vector<uint64_t> edges = {0, 1, bs - 1, bs, bs + 1, 12 * bs, 12 * bs - 1, size, size + 1,
                                   size > 0 ? size - 1 : 0, size + 100000};
    auto ex = fs_->extents(*ino);
    ASSERT_TRUE(ex) << "extents: " << ex.error().message();
    for (size_t i = 0; i < ex->size(); i += std::max<size_t>(1, ex->size() / 50)) {
      edges.push_back((*ex)[i].logical);
      edges.push_back((*ex)[i].logical + (*ex)[i].length);
      if ((*ex)[i].logical) edges.push_back((*ex)[i].logical - 1);
    }
    for (auto [a, b] : data_ranges(view_->path(f), 1)) {
      edges.push_back(a);
      edges.push_back(b);
      if (a) edges.push_back(a - 1);
    }
    std::vector<std::string> bad;
    for (uint64_t e : edges) {
      for (size_t len : {size_t{1}, size_t{7}, static_cast<size_t>(bs) + 3, size_t{100000}}) {
        uint64_t off = e >= 3 ? e - 3 : e;
        std::string m = check_read(*fs_, *ino, fd, off, len);
        if (!m.empty()) bad.push_back(m);
      }
    }
    for (int i = 0; i < 200; ++i) {
      uint64_t off = rng.below(size + 20000);
      size_t len = static_cast<size_t>(rng.below(i % 10 == 0 ? 3000000 : 70000));
      std::string m = check_read(*fs_, *ino, fd, off, len);
      if (!m.empty()) bad.push_back(m);
    }
    ::close(fd);
    EXPECT_TRUE(bad.empty()) << img_->kind.name << " /" << f << ": " << bad.size()
                             << " bad reads, first: " << bad.front();
  }

  // A directory is not readable as a file.
  auto dir = fs_->resolve("/sizes");
  ASSERT_TRUE(dir);
  std::vector<std::byte> buf(10);
  auto n = fs_->read(*dir, 0, buf);
  ASSERT_FALSE(n) << "read of a directory succeeded";
  EXPECT_EQ(EISDIR, n.error().code()) << n.error().message();
}

TEST_P(LibraryRead, ExtentMapsOfKernelFiles) {
  auto ino = fs_->resolve(std::string("/") + KernelFiles::deep);
  ASSERT_TRUE(ino);
  auto ex = fs_->extents(*ino);
  ASSERT_TRUE(ex) << ex.error().message();
  uint64_t mapped = 0, prev_end = 0;
  for (auto& e : *ex) {
    EXPECT_GE(e.logical, prev_end) << "extents overlap or are out of order";
    prev_end = e.logical + e.length;
    mapped += e.length;
    EXPECT_FALSE(e.unwritten);
  }
  // 4000 blocks of 4 KiB plus the tail's block.
  EXPECT_EQ(4000u * 4096 + img_->kind.block_size, mapped) << "mapped bytes of " << KernelFiles::deep;
  EXPECT_GE(ex->size(), img_->kind.extents ? 4001u : 1u);
  if (!img_->kind.extents) return;

  auto only = fs_->resolve(std::string("/") + KernelFiles::prealloc_only);
  ASSERT_TRUE(only);
  ex = fs_->extents(*only);
  ASSERT_TRUE(ex) << ex.error().message();
  ASSERT_FALSE(ex->empty());
  for (auto& e : *ex) EXPECT_TRUE(e.unwritten) << "prealloc-only extent at " << e.logical << " not unwritten";

  auto pre = fs_->resolve(std::string("/") + KernelFiles::prealloc);
  ASSERT_TRUE(pre);
  ex = fs_->extents(*pre);
  ASSERT_TRUE(ex) << ex.error().message();
  bool some_written = false, some_unwritten = false;
  for (auto& e : *ex) (e.unwritten ? some_unwritten : some_written) = true;
  EXPECT_TRUE(some_written && some_unwritten) << "prealloc should mix written and unwritten extents";
}

TEST_P(LibraryRead, StatReadlinkXattrsMatchTheKernelForEveryEntry) {
  std::vector<std::string> bad;
  size_t checked = 0;
  std::function<void(const std::string&)> walk = [&](const std::string& rel) {
    std::string p = view_->path(rel);
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0) return;
    auto ino = fs_->resolve("/" + rel, false);
    if (!ino) {
      bad.push_back(printable(rel) + ": resolve: " + ino.error().message());
      return;
    }
    ++checked;
    auto s = fs_->stat(*ino);
    if (!s) {
      bad.push_back(printable(rel) + ": stat: " + s.error().message());
      return;
    }
    auto cmp = [&](const char* what, uint64_t a, uint64_t b) {
      if (a != b) bad.push_back(printable(rel) + ": " + what + " " + std::to_string(a) + " (uext) != " + std::to_string(b) + " (kernel)");
    };
    cmp("ino", s->ino, st.st_ino);
    cmp("mode", s->mode, st.st_mode);
    cmp("nlink", s->nlink, st.st_nlink);
    cmp("uid", s->uid, st.st_uid);
    cmp("gid", s->gid, st.st_gid);
    cmp("size", s->size, static_cast<uint64_t>(st.st_size));
    cmp("blocks", s->blocks, static_cast<uint64_t>(st.st_blocks));
    cmp("mtime.sec", static_cast<uint64_t>(s->mtime.sec), static_cast<uint64_t>(st.st_mtim.tv_sec));
    cmp("mtime.nsec", s->mtime.nsec, static_cast<uint64_t>(st.st_mtim.tv_nsec));
    cmp("atime.sec", static_cast<uint64_t>(s->atime.sec), static_cast<uint64_t>(st.st_atim.tv_sec));
    cmp("atime.nsec", s->atime.nsec, static_cast<uint64_t>(st.st_atim.tv_nsec));
    cmp("ctime.sec", static_cast<uint64_t>(s->ctime.sec), static_cast<uint64_t>(st.st_ctim.tv_sec));
    cmp("ctime.nsec", s->ctime.nsec, static_cast<uint64_t>(st.st_ctim.tv_nsec));
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
      cmp("rdev major", s->rdev_major, major(st.st_rdev));
      cmp("rdev minor", s->rdev_minor, minor(st.st_rdev));
    }
    if (S_ISLNK(st.st_mode)) {
      std::string buf(8192, '\0');
      ssize_t n = ::readlink(p.c_str(), buf.data(), buf.size());
      buf.resize(n > 0 ? static_cast<size_t>(n) : 0);
      auto t = fs_->readlink(*ino);
      if (!t) bad.push_back(printable(rel) + ": readlink: " + t.error().message());
      else if (*t != buf) bad.push_back(printable(rel) + ": readlink gives " + std::to_string(t->size()) + " bytes, kernel " + std::to_string(buf.size()));
    }
    // xattrs: names always; values of user.* and trusted.* byte for byte.
    std::string names(65536, '\0');
    ssize_t nn = ::llistxattr(p.c_str(), names.data(), names.size());
    std::set<std::string> kernel_names;
    for (ssize_t i = 0; nn > 0 && i < nn;) {
      std::string n = names.c_str() + i;
      i += static_cast<ssize_t>(n.size()) + 1;
      kernel_names.insert(n);
    }
    auto lx = fs_->listxattr(*ino);
    if (!lx) {
      bad.push_back(printable(rel) + ": listxattr: " + lx.error().message());
    } else {
      std::set<std::string> ours(lx->begin(), lx->end());
      if (ours != kernel_names) {
        std::string a, b;
        for (auto& x : ours) a += x + " ";
        for (auto& x : kernel_names) b += x + " ";
        bad.push_back(printable(rel) + ": listxattr {" + a + "} != kernel {" + b + "}");
      }
      for (auto& n : kernel_names) {
        if (n.rfind("system.", 0) == 0) continue;
        std::string v(65536, '\0');
        ssize_t vn = ::lgetxattr(p.c_str(), n.c_str(), v.data(), v.size());
        v.resize(vn > 0 ? static_cast<size_t>(vn) : 0);
        auto g = fs_->getxattr(*ino, n);
        if (!g) bad.push_back(printable(rel) + ": getxattr " + n + ": " + g.error().message());
        else if (*g != v) bad.push_back(printable(rel) + ": getxattr " + n + " value differs");
      }
    }
    auto missing = fs_->getxattr(*ino, "user.no-such-attribute");
    if (missing || missing.error().code() != ENODATA)
      bad.push_back(printable(rel) + ": getxattr of an absent name should fail with ENODATA");
    if (S_ISDIR(st.st_mode) && rel != "many") {
      DIR* d = ::opendir(p.c_str());
      std::vector<std::string> kids;
      while (dirent* e = d ? ::readdir(d) : nullptr) {
        std::string n = e->d_name;
        if (n != "." && n != "..") kids.push_back(n);
      }
      if (d) ::closedir(d);
      for (auto& k : kids) walk(rel.empty() ? k : rel + "/" + k);
    }
  };
  walk("");
  EXPECT_GT(checked, 100u);
  EXPECT_TRUE(bad.empty()) << img_->kind.name << ": " << bad.size() << " mismatches in " << checked
                           << " entries:\n" << format_differences(bad);
}

TEST_P(LibraryRead, ResolveFollowsSymlinksAndReportsErrors) {
  auto target = fs_->resolve("/sizes/f4096");
  ASSERT_TRUE(target);
  auto via_chain = fs_->resolve("/links/chain-a");
  ASSERT_TRUE(via_chain) << via_chain.error().message();
  EXPECT_EQ(*target, *via_chain) << "a chain of three relative symlinks";
  auto link_itself = fs_->resolve("/links/chain-a", false);
  ASSERT_TRUE(link_itself);
  EXPECT_NE(*target, *link_itself);
  auto through_dir = fs_->resolve("/links/to-dir/f4096");
  ASSERT_TRUE(through_dir) << through_dir.error().message();
  EXPECT_EQ(*target, *through_dir) << "a symlink to a directory in the middle of a path";

  auto root = fs_->resolve("/");
  ASSERT_TRUE(root);
  EXPECT_EQ(kRootIno, *root);

  auto noent = fs_->resolve("/sizes/no-such-file");
  ASSERT_FALSE(noent);
  EXPECT_EQ(ENOENT, noent.error().code()) << noent.error().message();
  auto notdir = fs_->resolve("/sizes/f1/x");
  ASSERT_FALSE(notdir);
  EXPECT_EQ(ENOTDIR, notdir.error().code()) << notdir.error().message();
  auto loop = fs_->resolve("/links/loop");
  ASSERT_FALSE(loop);
  EXPECT_EQ(ELOOP, loop.error().code()) << loop.error().message();
  auto lookup_in_file = fs_->lookup(*target, "x");
  ASSERT_FALSE(lookup_in_file);
  EXPECT_EQ(ENOTDIR, lookup_in_file.error().code()) << lookup_in_file.error().message();

  // Odd names resolve to the kernel's inodes.
  for (std::string n : {"new\nline", "-rf", "\xff\xfe\x80raw-bytes", "with space", " leading space"}) {
    struct stat st;
    ASSERT_EQ(0, ::lstat(view_->path("names/" + n).c_str(), &st)) << printable(n);
    auto ino = fs_->resolve("/names/" + n);
    ASSERT_TRUE(ino) << printable(n) << ": " << ino.error().message();
    EXPECT_EQ(st.st_ino, *ino) << printable(n);
  }
}

TEST_P(LibraryReaddir, CookiesResumeWithoutLossOrRepeats) {
  auto dir = fs_->resolve("/many");
  ASSERT_TRUE(dir);
  struct Item {
    std::string name;
    Ino ino;
    uint64_t cookie;
  };
  std::vector<Item> full;
  auto st = fs_->readdir(*dir, 0, [&](const DirEntry& e, uint64_t next) {
    full.push_back({e.name, e.ino, next});
    return true;
  });
  ASSERT_TRUE(st) << st.error().message();

  std::set<std::string> names;
  std::vector<std::string> dups;
  for (auto& i : full)
    if (!names.insert(i.name).second) dups.push_back(i.name);
  EXPECT_TRUE(dups.empty()) << dups.size() << " names listed twice, e.g. " << printable(dups.front());
  std::set<std::string> kernel = {".", ".."};
  DIR* d = ::opendir(view_->path("many").c_str());
  ASSERT_TRUE(d);
  std::map<std::string, ino_t> kernel_ino;
  while (dirent* e = ::readdir(d)) {
    kernel.insert(e->d_name);
    kernel_ino[e->d_name] = e->d_ino;
  }
  ::closedir(d);
  EXPECT_EQ(20002u, kernel.size());
  EXPECT_TRUE(names == kernel) << "readdir lists " << names.size() << " names, the kernel "
                               << kernel.size();
  std::vector<std::string> wrong_ino;
  for (auto& i : full)
    if (i.name != "." && i.name != ".." && kernel_ino.count(i.name) && kernel_ino[i.name] != i.ino)
      wrong_ino.push_back(i.name);
  EXPECT_TRUE(wrong_ino.empty()) << wrong_ino.size() << " entries with the wrong inode";

  // Resume from many cookies: the rest of the listing is exactly the tail.
  Rng rng(99);
  std::vector<size_t> stops = {0, 1, 2, full.size() - 2, full.size() - 1};
  for (int i = 0; i < 40; ++i) stops.push_back(rng.below(full.size()));
  for (size_t k : stops) {
    std::vector<std::string> rest;
    auto s = fs_->readdir(*dir, full[k].cookie, [&](const DirEntry& e, uint64_t) {
      rest.push_back(e.name);
      return rest.size() < 300;
    });
    ASSERT_TRUE(s) << "resume after entry " << k << ": " << s.error().message();
    size_t expect_n = std::min<size_t>(300, full.size() - k - 1);
    ASSERT_EQ(expect_n, rest.size()) << "resume after entry " << k << " of " << full.size();
    for (size_t j = 0; j < rest.size(); ++j)
      ASSERT_EQ(full[k + 1 + j].name, rest[j]) << "resume after entry " << k << ", position " << j;
  }
  // A whole listing in pieces of 97 entries.
  std::vector<std::string> pieces;
  uint64_t cookie = 0;
  for (int rounds = 0; rounds < 1000; ++rounds) {
    size_t got = 0;
    uint64_t last = cookie;
    auto s = fs_->readdir(*dir, cookie, [&](const DirEntry& e, uint64_t next) {
      pieces.push_back(e.name);
      last = next;
      return ++got < 97;
    });
    ASSERT_TRUE(s) << s.error().message();
    if (got == 0) break;
    cookie = last;
  }
  ASSERT_EQ(full.size(), pieces.size()) << "listing in pieces of 97 lost or repeated entries";
  for (size_t j = 0; j < full.size(); ++j) ASSERT_EQ(full[j].name, pieces[j]) << "position " << j;

  // Every name found by lookup (the htree path), with the kernel's inode.
  size_t lookups_bad = 0;
  std::string first_bad;
  for (auto& [name, ino] : kernel_ino) {
    if (name == "." || name == "..") continue;
    auto r = fs_->lookup(*dir, name);
    if (!r || *r != ino) {
      if (!lookups_bad++) first_bad = name + (r ? "" : ": " + r.error().message());
    }
  }
  EXPECT_EQ(0u, lookups_bad) << "lookups in the htree directory failed, first: " << printable(first_bad);
}

TEST_P(LibraryRead, ConcurrentReadersSeeTheRightBytes) {
  std::vector<std::string> files = {KernelFiles::deep, "sparse/many-holes", "sparse/odd",
                                    "sizes/f3146061", "sizes/f1048583", "sparse/indirect-edges"};
  struct F {
    Ino ino;
    int fd;
    uint64_t size;
  };
  std::vector<F> fds;
  for (auto& f : files) {
    auto ino = fs_->resolve("/" + f);
    ASSERT_TRUE(ino) << f;
    int fd = ::open(view_->path(f).c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    struct stat st;
    ::fstat(fd, &st);
    fds.push_back({*ino, fd, static_cast<uint64_t>(st.st_size)});
  }
  std::mutex mu;
  std::vector<std::string> bad;
  std::atomic<int> reads{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      Rng rng(1000 + t);
      for (int i = 0; i < 250; ++i) {
        const F& f = fds[rng.below(fds.size())];
        uint64_t off = rng.below(f.size + 5000);
        size_t len = static_cast<size_t>(rng.below(200000));
        std::string m = check_read(*fs_, f.ino, f.fd, off, len);
        ++reads;
        if (!m.empty()) {
          std::lock_guard l(mu);
          bad.push_back("thread " + std::to_string(t) + ": " + m);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (auto& f : fds) ::close(f.fd);
  EXPECT_EQ(2000, reads.load());
  EXPECT_TRUE(bad.empty()) << bad.size() << " wrong concurrent reads:\n" << format_differences(bad);
}

INSTANTIATE_TEST_SUITE_P(Kinds, LibraryRead,
                         ::testing::Values("ext4-4k", "ext2-4k", "ext3-1k", "ext4-1k-nocsum-no64bit"),
                         kind_param_name);
INSTANTIATE_TEST_SUITE_P(Kinds, LibraryReaddir, ::testing::Values("ext4-4k", "ext2-4k"), kind_param_name);

}  // namespace
}  // namespace uext::testing
