// The uext command against the oracles: GNU ls/stat/cat on the kernel's
// loop mount, dumpe2fs -h; and its exit codes and messages on bad input.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "support/images.h"
#include "support/tree.h"
#include "support/regex.h"

namespace uext::testing {
namespace {

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> v;
  std::istringstream in(s);
  std::string line;
  while (std::getline(in, line)) v.push_back(line);
  return v;
}

std::vector<std::string> tokens(const std::string& line) {
  std::vector<std::string> v;
  std::istringstream in(line);
  std::string t;
  while (in >> t) v.push_back(t);
  return v;
}

std::string joined(const std::vector<std::string>& v, size_t from = 0) {
  std::string s;
  for (size_t i = from; i < v.size(); ++i) s += (i > from ? " " : "") + v[i];
  return s;
}

std::map<std::string, std::string> labels(const std::string& text) {
  std::map<std::string, std::string> m;
  for (auto& line : lines_of(text)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    while (!key.empty() && key.front() == ' ') key.erase(key.begin());
    std::string value = line.substr(colon + 1);
    size_t b = value.find_first_not_of(" \t");
    value = b == std::string::npos ? "" : value.substr(b);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.pop_back();
    if (!m.count(key)) m[key] = value;
  }
  return m;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!can_loop_mount()) GTEST_SKIP() << "needs root and loop devices (the kernel's view is the oracle)";
    img_ = &shared_image("ext4-4k", false);
    ASSERT_TRUE(img_->error.empty()) << img_->error;
    mnt_ = dir_ / "mnt";
    ::mkdir(mnt_.c_str(), 0755);
    mount_ = std::make_unique<LoopMount>(img_->path, mnt_, true);
    ASSERT_TRUE(mount_->ok()) << mount_->error();
  }
  std::string gnu(const std::vector<std::string>& argv) {
    std::vector<std::string> a = {"env", "TZ=UTC", "LC_ALL=C"};
    a.insert(a.end(), argv.begin(), argv.end());
    CommandResult r = run(a);
    EXPECT_EQ(0, r.exit_code) << joined(argv) << ": " << r.err;
    return r.out;
  }
  const SharedImage* img_ = nullptr;
  TempDir dir_;
  std::string mnt_;
  std::unique_ptr<LoopMount> mount_;
};

TEST_F(Cli, LsLongAgreesWithGnuLsOnTheKernelMount) {
  for (std::string d : {"", "sizes", "links", "links/hl", "modes", "owners", "xattrs", "sparse", "kernel"}) {
    SCOPED_TRACE("directory /" + d);
    std::string want = gnu({"ls", "-ln", "--time-style=+%Y-%m-%d %H:%M", mnt_ + "/" + d});
    GuardedResult r = run_uext({"ls", "-l", img_->path, "/" + d});
    ASSERT_EQ(0, r.exit_code) << r.describe();
    std::vector<std::string> expected, actual;
    for (auto& l : lines_of(want))
      if (l.rfind("total ", 0) != 0) expected.push_back(l);
    for (auto& l : lines_of(r.out))
      if (l.rfind("total ", 0) != 0 && !l.empty()) actual.push_back(l);
    ASSERT_EQ(expected.size(), actual.size()) << "uext ls -l /" << d << ":\n" << r.out << "\nGNU ls -ln:\n" << want;
    for (size_t i = 0; i < expected.size(); ++i) {
      auto e = tokens(expected[i]), a = tokens(actual[i]);
      ASSERT_GE(e.size(), 8u);
      // GNU marks ACLs/security contexts with a trailing + or . on the mode.
      if (e[0].size() == 11) e[0].pop_back();
      ASSERT_GE(a.size(), 8u) << "line \"" << actual[i] << "\"";
      EXPECT_EQ(e[0], a[0]) << "mode of: " << expected[i];
      EXPECT_EQ(e[1], a[1]) << "nlink of: " << expected[i];
      EXPECT_EQ(e[2], a[2]) << "uid of: " << expected[i];
      EXPECT_EQ(e[3], a[3]) << "gid of: " << expected[i];
      EXPECT_EQ(e[4], a[4]) << "size of: " << expected[i];
      EXPECT_EQ(e[5] + " " + e[6], a[5] + " " + a[6]) << "time of: " << expected[i];
      EXPECT_EQ(joined(e, 7), joined(a, 7)) << "name of: " << expected[i];
    }
  }
}

TEST_F(Cli, LsHidesDotfilesUnlessAskedAndShowsInodes) {
  auto names_in = [&](const std::string& rel, bool all) {
    std::set<std::string> s;
    if (all) s = {".", ".."};
    DIR* d = ::opendir((mnt_ + "/" + rel).c_str());
    while (dirent* e = d ? ::readdir(d) : nullptr) {
      std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      if (all || n[0] != '.') s.insert(n);
    }
    if (d) ::closedir(d);
    return s;
  };
  // A directory of plain names: the listing is exact and sorted by bytes.
  for (bool all : {false, true}) {
    std::vector<std::string> args = {"ls"};
    if (all) args.push_back("-a");
    args.insert(args.end(), {img_->path, "/sizes"});
    GuardedResult r = run_uext(args);
    ASSERT_EQ(0, r.exit_code) << r.describe();
    auto want = names_in("sizes", all);
    std::vector<std::string> sorted(want.begin(), want.end());
    auto got = lines_of(r.out);
    EXPECT_EQ(sorted, got) << "uext " << joined(args);
  }
  // Hidden names in /names show only with -a.
  GuardedResult plain = run_uext({"ls", img_->path, "/names"});
  ASSERT_EQ(0, plain.exit_code) << plain.describe();
  GuardedResult all = run_uext({"ls", "-a", img_->path, "/names"});
  ASSERT_EQ(0, all.exit_code) << all.describe();
  auto plain_lines = lines_of(plain.out), all_lines = lines_of(all.out);
  for (std::string hidden : {".hidden", "..double", "..."}) {
    EXPECT_EQ(0, std::count(plain_lines.begin(), plain_lines.end(), hidden)) << hidden << " shown without -a";
    EXPECT_EQ(1, std::count(all_lines.begin(), all_lines.end(), hidden)) << hidden << " missing with -a";
  }
  for (std::string shown : {"-rf", "--help", "with space", "#hash"})
    EXPECT_EQ(1, std::count(plain_lines.begin(), plain_lines.end(), shown)) << shown << " missing";

  // -i: inode numbers as the kernel sees them.
  GuardedResult r = run_uext({"ls", "-i", img_->path, "/links/hl"});
  ASSERT_EQ(0, r.exit_code) << r.describe();
  for (auto& l : lines_of(r.out)) {
    auto t = tokens(l);
    ASSERT_EQ(2u, t.size()) << l;
    struct stat st;
    ASSERT_EQ(0, ::lstat((mnt_ + "/links/hl/" + t[1]).c_str(), &st)) << l;
    EXPECT_EQ(std::to_string(st.st_ino), t[0]) << l;
  }
}

TEST_F(Cli, StatAgreesWithGnuStat) {
  Regex size_re(R"(Size:\s*(\d+))"), inode_re(R"(Inode:\s*(\d+))"), links_re(R"(Links:\s*(\d+))"),
      access_re(R"(Access:\s*\((\d+)/([-a-zA-Z]+)\))"), uid_re(R"(Uid:\s*\(\s*(\d+))"),
      gid_re(R"(Gid:\s*\(\s*(\d+))"),
      time_re(R"((Access|Modify|Change):\s*(-?\d+-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9}))");
  auto grab = [](const std::string& text, const Regex& re, int group = 1) {
    RegexMatch m;
    return regex_search(text, m, re) ? m[group].str() : std::string("(none)");
  };
  auto times = [&](const std::string& text) {
    std::map<std::string, std::string> t;
    for (const auto& m : regex_find_all(text, time_re)) t[m[1]] = m[2];
    return t;
  };
  for (std::string p : {"sizes/f4097", "sizes", "links/sym100", "modes/setuid", "modes/sticky", "special/null",
                        "special/fifo", "sizes/f1", "sizes/f60", "sizes/f512", "owners/odd", "owners/huge-ids",
                        "kernel/deep", "links/hl/orig"}) {
    SCOPED_TRACE(p);
    std::string want = gnu({"stat", mnt_ + "/" + p});
    GuardedResult r = run_uext({"stat", img_->path, "/" + p});
    ASSERT_EQ(0, r.exit_code) << r.describe();
    EXPECT_EQ(grab(want, size_re), grab(r.out, size_re)) << r.out;
    EXPECT_EQ(grab(want, inode_re), grab(r.out, inode_re)) << r.out;
    EXPECT_EQ(grab(want, links_re), grab(r.out, links_re)) << r.out;
    EXPECT_EQ(grab(want, access_re, 1), grab(r.out, access_re, 1)) << r.out;
    EXPECT_EQ(grab(want, access_re, 2), grab(r.out, access_re, 2)) << r.out;
    EXPECT_EQ(grab(want, uid_re), grab(r.out, uid_re)) << r.out;
    EXPECT_EQ(grab(want, gid_re), grab(r.out, gid_re)) << r.out;
    auto tw = times(want), tg = times(r.out);
    for (const char* k : {"Access", "Modify", "Change"})
      EXPECT_EQ(tw[k], tg[k]) << k << " time; GNU stat:\n" << want << "\nuext stat:\n" << r.out;
  }
}

TEST_F(Cli, CatAgreesWithTheKernel) {
  std::vector<std::string> files = {"sizes/f0", "sizes/f1", "sizes/f4097", "sparse/odd", "kernel/deep",
                                    "kernel/prealloc", "kernel/punched", "links/chain-a", "names/new\nline"};
  std::string all;
  std::vector<std::string> args = {"cat", img_->path};
  for (auto& f : files) {
    GuardedResult r = run_uext({"cat", img_->path, "/" + f});
    ASSERT_EQ(0, r.exit_code) << printable(f) << ": " << r.describe();
    std::string want = read_file(mnt_ + "/" + f);
    EXPECT_TRUE(r.out == want) << "uext cat /" << printable(f) << ": " << r.out.size() << " bytes, kernel "
                               << want.size();
    all += want;
    args.push_back("/" + f);
  }
  GuardedResult r = run_uext(args);
  ASSERT_EQ(0, r.exit_code) << r.describe();
  EXPECT_TRUE(r.out == all) << "uext cat of several files: not their concatenation";
}

TEST_F(Cli, GetFollowsCpSemantics) {
  TempDir t;
  // DEST absent: it becomes the copy.
  GuardedResult r = run_uext({"get", img_->path, "/sizes/f4097", t / "newname"});
  ASSERT_EQ(0, r.exit_code) << r.describe();
  EXPECT_TRUE(read_file(t / "newname") == read_file(mnt_ + "/sizes/f4097"));
  // DEST an existing directory: DEST/basename.
  ASSERT_EQ(0, ::mkdir((t / "existing").c_str(), 0755));
  r = run_uext({"get", img_->path, "/sizes/f4097", t / "existing"});
  ASSERT_EQ(0, r.exit_code) << r.describe();
  EXPECT_TRUE(read_file(t / "existing/f4097") == read_file(mnt_ + "/sizes/f4097"));
  // A directory, absent DEST.
  r = run_uext({"get", img_->path, "/links", t / "links-copy"});
  ASSERT_EQ(0, r.exit_code) << r.describe();
  auto d = compare_trees(mnt_ + "/links", t / "links-copy");
  EXPECT_TRUE(d.empty()) << format_differences(d);
  // A directory into an existing directory.
  r = run_uext({"get", img_->path, "/modes", t / "existing"});
  ASSERT_EQ(0, r.exit_code) << r.describe();
  d = compare_trees(mnt_ + "/modes", t / "existing/modes");
  EXPECT_TRUE(d.empty()) << format_differences(d);
  // A symlink is copied as a symlink.
  r = run_uext({"get", img_->path, "/links/sym100", t / "sym"});
  ASSERT_EQ(0, r.exit_code) << r.describe();
  struct stat st;
  ASSERT_EQ(0, ::lstat((t / "sym").c_str(), &st));
  EXPECT_TRUE(S_ISLNK(st.st_mode));
}

TEST_F(Cli, InfoAgreesWithDumpe2fs) {
  for (const char* kind : {"ext4-4k", "ext2-1k"}) {
    SCOPED_TRACE(kind);
    const SharedImage& img = shared_image(kind, false);
    ASSERT_TRUE(img.error.empty()) << img.error;
    GuardedResult r = run_uext({"info", img.path});
    ASSERT_EQ(0, r.exit_code) << r.describe();
    auto got = labels(r.out);
    auto want = dumpe2fs_header(img.path);
    for (const char* key : {"Filesystem volume name", "Filesystem UUID", "Block count", "Free blocks",
                            "Inode count", "Free inodes", "Block size", "Inode size", "Blocks per group",
                            "Inodes per group", "Filesystem state", "Errors behavior"}) {
      ASSERT_TRUE(got.count(key)) << "uext info has no \"" << key << ":\" line:\n" << r.out;
      EXPECT_EQ(want[key], got[key]) << key;
    }
    ASSERT_TRUE(got.count("Filesystem features")) << r.out;
    auto fw = tokens(want["Filesystem features"]), fg = tokens(got["Filesystem features"]);
    EXPECT_EQ(std::set<std::string>(fw.begin(), fw.end()), std::set<std::string>(fg.begin(), fg.end()))
        << "features: dumpe2fs \"" << want["Filesystem features"] << "\", uext \"" << got["Filesystem features"] << "\"";
  }
}

// The quota feature's files, named as dumpe2fs names them; the kinds an
// image has not are not printed, by either.
TEST_F(Cli, InfoNamesTheQuotaFilesAsDumpe2fsDoes) {
  TempDir t;
  const std::string image = t / "quota.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-O", "quota,project", "-E", "quotatype=usrquota:prjquota", image, "16M"});
  GuardedResult r = run_uext({"info", image});
  ASSERT_EQ(0, r.exit_code) << r.describe();
  auto got = labels(r.out);
  auto want = dumpe2fs_header(image);
  for (const char* key : {"User quota inode", "Project quota inode"}) {
    ASSERT_TRUE(want.count(key)) << "dumpe2fs has no \"" << key << ":\" line";
    ASSERT_TRUE(got.count(key)) << "uext info has no \"" << key << ":\" line:\n" << r.out;
    EXPECT_EQ(want[key], got[key]) << key;
  }
  EXPECT_FALSE(want.count("Group quota inode"));
  EXPECT_FALSE(got.count("Group quota inode"));
}

// The superblock's error record (written here with debugfs) as dumpe2fs
// prints it: the count, and each record's lines, those that are 0 left out.
TEST_F(Cli, InfoShowsTheErrorRecordAsDumpe2fsDoes) {
  TempDir t;
  const std::string image = t / "errors.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", image, "16M"});
  for (const char* set : {"state 3", "errors 2", "error_count 2", "first_error_time 1700000000", "first_error_ino 12",
                          "first_error_block 345", "first_error_func rename", "first_error_line 7",
                          "last_error_time 1700000100", "last_error_ino 13", "last_error_func write"}) {
    run_ok({"debugfs", "-w", "-R", std::string("ssv ") + set, image});
  }
  GuardedResult r = run_uext({"info", image});
  ASSERT_EQ(0, r.exit_code) << r.describe();
  auto got = labels(r.out);
  auto want = dumpe2fs_header(image);
  for (const char* key : {"Filesystem state", "Errors behavior", "FS Error count", "First error time", "First error function",
                          "First error line #", "First error inode #", "First error block #", "Last error time",
                          "Last error function", "Last error line #", "Last error inode #"}) {
    ASSERT_TRUE(want.count(key)) << "dumpe2fs has no \"" << key << ":\" line";
    ASSERT_TRUE(got.count(key)) << "uext info has no \"" << key << ":\" line:\n" << r.out;
    EXPECT_EQ(want[key], got[key]) << key;
  }
  // Zero fields are not printed, by either.
  EXPECT_FALSE(want.count("Last error block #"));
  EXPECT_FALSE(got.count("Last error block #"));
  EXPECT_EQ(want.count("First error err"), got.count("First error err"));
}

// ------------------------------------------------------------------ errors

void expect_error(const std::vector<std::string>& args, int code, const std::vector<std::string>& mentions) {
  GuardedResult r = run_uext(args);
  std::string line = "uext " + joined(args);
  EXPECT_EQ(code, r.exit_code) << line << ": " << r.describe();
  EXPECT_FALSE(r.crashed || r.sanitizer || r.timed_out) << line << ": " << r.describe();
  EXPECT_EQ(0u, r.err.rfind("uext", 0)) << line << ": stderr should start with \"uext\": " << r.err;
  for (auto& m : mentions) {
    std::string lower_err = r.err;
    std::string lower_m = m;
    std::transform(lower_err.begin(), lower_err.end(), lower_err.begin(), ::tolower);
    std::transform(lower_m.begin(), lower_m.end(), lower_m.begin(), ::tolower);
    EXPECT_NE(lower_err.find(lower_m), std::string::npos) << line << ": stderr should mention \"" << m << "\": " << r.err;
  }
}

TEST(CliErrors, MissingAndNonImageFiles) {
  TempDir t;
  expect_error({"info", t / "no-such.img"}, 1, {"no-such.img", "No such file"});
  expect_error({"ls", t / "no-such.img", "/"}, 1, {"no-such.img"});
  write_file(t / "empty.img", "");
  expect_error({"info", t / "empty.img"}, 1, {"empty.img"});
  Rng rng(3);
  write_file(t / "random.img", rng.bytes(1 << 20));
  expect_error({"info", t / "random.img"}, 1, {"superblock"});
  expect_error({"get", t / "random.img", "/", t / "out"}, 1, {"superblock"});
  write_file(t / "zeros.img", std::string(1 << 20, '\0'));
  expect_error({"ls", t / "zeros.img", "/"}, 1, {"superblock"});
  expect_error({"info", t.path()}, 1, {t.path()});
}

TEST(CliErrors, ImagesUextCannotOpenSayWhy) {
  // The reason is the library's (a feature by name), not a bare errno such
  // as "Operation not supported".
  TempDir t;
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-O", "inline_data", t / "inline.img", "8M"});
  expect_error({"info", t / "inline.img"}, 1, {"inline.img", "inline_data"});
  expect_error({"ls", t / "inline.img", "/"}, 1, {"inline_data"});
  expect_error({"mkdir", t / "inline.img", "/d"}, 1, {"inline_data"});
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-O", "verity", t / "verity.img", "8M"});
  expect_error({"mkdir", t / "verity.img", "/d"}, 1, {"read-write", "verity"});
  expect_error({"demo", "mmap-enospc", t / "verity.img"}, 1, {"verity"});
}

TEST(CliErrors, WrongPathsInAGoodImage) {
  if (!can_loop_mount()) GTEST_SKIP() << "needs root and loop devices to build the image";
  const SharedImage& img = shared_image("ext2-1k", false);
  ASSERT_TRUE(img.error.empty()) << img.error;
  expect_error({"cat", img.path, "/no/such/file"}, 1, {"/no/such/file"});
  expect_error({"ls", img.path, "/nope"}, 1, {"/nope"});
  expect_error({"stat", img.path, "/sizes/nope"}, 1, {"/sizes/nope"});
  expect_error({"cat", img.path, "/sizes"}, 1, {"/sizes", "directory"});
  expect_error({"ls", img.path, "/sizes/f1/x"}, 1, {"/sizes/f1/x"});
  expect_error({"cat", img.path, "/links/loop"}, 1, {"/links/loop"});
  TempDir t;
  expect_error({"get", img.path, "/nope", t / "out"}, 1, {"/nope"});
}

TEST(CliErrors, UsageErrorsExitTwo) {
  if (!can_loop_mount()) GTEST_SKIP() << "needs root and loop devices to build the image";
  const SharedImage& img = shared_image("ext2-1k", false);
  ASSERT_TRUE(img.error.empty()) << img.error;
  expect_error({}, 2, {});
  expect_error({"frobnicate", img.path}, 2, {});
  expect_error({"ls", "--no-such-option", img.path, "/"}, 2, {});
  expect_error({"ls", "-Z", img.path, "/"}, 2, {});
  expect_error({"cat"}, 2, {});
  expect_error({"cat", img.path}, 2, {});
  expect_error({"stat", img.path}, 2, {});
  expect_error({"get", img.path, "/"}, 2, {});
  expect_error({"info"}, 2, {});
}

}  // namespace
}  // namespace uext::testing
