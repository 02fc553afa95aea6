// The uext commands that change an image (put, mkdir, rm, mv, ln, chmod,
// chown, truncate), judged by the oracles: e2fsck -fn after every command,
// the kernel's read-only mount compared with the host tree that was put,
// and `uext stat/ls/cat` (themselves checked against the kernel in
// cli_test.cc) for the small commands' results and errors.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "support/images.h"
#include "support/process.h"
#include "support/tree.h"
#include "support/regex.h"

namespace uext::testing {
namespace {

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (auto& x : v) s += (s.empty() ? "" : " ") + x;
  return s;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// mke2fs -F -q ARGS IMG SIZE.
std::string make_image(const std::string& dir, const std::vector<std::string>& args,
                       const std::string& size = "32M") {
  std::string image = dir + "/img";
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back(image);
  argv.push_back(size);
  run_ok(argv);
  return image;
}

// Runs `uext ARGS`, expecting exit 0.
void ok(const std::vector<std::string>& args) {
  GuardedResult r = run_uext(args);
  EXPECT_EQ(0, r.exit_code) << "uext " << joined(args) << ": " << r.describe();
}

// Runs `uext ARGS`, expecting `code` and a message on stderr that starts
// with "uext" and mentions each of `mentions` (case-insensitive).
void fails(const std::vector<std::string>& args, int code, const std::vector<std::string>& mentions) {
  GuardedResult r = run_uext(args);
  std::string line = "uext " + joined(args);
  EXPECT_EQ(code, r.exit_code) << line << ": " << r.describe();
  EXPECT_FALSE(r.crashed || r.sanitizer || r.timed_out) << line << ": " << r.describe();
  EXPECT_EQ(0u, r.err.rfind("uext", 0)) << line << ": stderr should start with \"uext\": " << r.err;
  for (auto& m : mentions) {
    EXPECT_NE(lower(r.err).find(lower(m)), std::string::npos)
        << line << ": stderr should mention \"" << m << "\": " << r.err;
  }
}

// Fields of `uext stat` (the GNU stat layout).
struct Probe {
  bool exists = false;
  std::string type;  // "regular file", "directory", "symbolic link", ...
  uint64_t size = 0, ino = 0, links = 0;
  unsigned mode = 0;
  uint32_t uid = 0, gid = 0;
  std::string target;  // symlinks
};

Probe probe(const std::string& image, const std::string& path) {
  Probe p;
  GuardedResult r = run_uext({"stat", image, path});
  if (r.exit_code != 0) return p;
  p.exists = true;
  RegexMatch m;
  const std::string& s = r.out;
  if (regex_search(s, m, Regex(R"(Size:\s*(\d+)\s+Blocks:\s*\d+\s+IO Block:\s*\d+\s+(.*)\n)"))) {
    p.size = std::stoull(m[1]);
    p.type = m[2];
    if (p.type == "regular empty file") p.type = "regular file";
  }
  if (regex_search(s, m, Regex(R"(Inode:\s*(\d+)\s+Links:\s*(\d+))"))) {
    p.ino = std::stoull(m[1]);
    p.links = std::stoull(m[2]);
  }
  if (regex_search(s, m, Regex(R"(Access:\s*\((\d+)/)"))) p.mode = std::stoul(m[1], nullptr, 8);
  if (regex_search(s, m, Regex(R"(Uid:\s*\(\s*(\d+)/)"))) p.uid = std::stoul(m[1]);
  if (regex_search(s, m, Regex(R"(Gid:\s*\(\s*(\d+)/)"))) p.gid = std::stoul(m[1]);
  if (regex_search(s, m, Regex(R"(File: .* -> (.*)\n)"))) p.target = m[1];
  return p;
}

std::string cat(const std::string& image, const std::string& path) {
  GuardedResult r = run_uext({"cat", image, path});
  EXPECT_EQ(0, r.exit_code) << "uext cat " << path << ": " << r.describe();
  return r.out;
}

std::vector<std::string> ls(const std::string& image, const std::string& path) {
  GuardedResult r = run_uext({"ls", "-a", image, path});
  EXPECT_EQ(0, r.exit_code) << "uext ls " << path << ": " << r.describe();
  std::vector<std::string> v;
  std::istringstream in(r.out);
  for (std::string l; std::getline(in, l);)
    if (l != "." && l != ".." && l != "lost+found") v.push_back(l);
  return v;
}

#define EXPECT_CLEAN(img) EXPECT_TRUE(image_is_clean(img))

// ------------------------------------------------------------------ put of a whole tree

// One host tree for the suite: every kind of file build_tree makes, at a
// size that keeps four copies and their checks well under a minute.
class CliWrite : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (::geteuid() != 0) return;  // build_tree needs root (owners, devices)
    source_dir_ = new ScratchDir();
    TreeOptions t;
    t.seed = 7;
    t.htree_entries = 3000;
    t.random_files = 100;
    t.big_file_size = 0;
    t.max_symlink_len = 1023;  // fits 1 KiB blocks too
    try {
      manifest_ = new TreeManifest(build_tree(*source_dir_ / "src", t));
    } catch (const std::exception& e) {
      build_error_ = new std::string(e.what());
    }
  }
  static void TearDownTestSuite() {
    delete manifest_;
    delete build_error_;
    delete source_dir_;
    manifest_ = nullptr;
    build_error_ = nullptr;
    source_dir_ = nullptr;
  }
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to build the source tree (owners, device nodes)";
    ASSERT_EQ(nullptr, build_error_) << *build_error_;
  }
  static std::string source() { return manifest_->root; }

  static ScratchDir* source_dir_;
  static TreeManifest* manifest_;
  static std::string* build_error_;
};
ScratchDir* CliWrite::source_dir_ = nullptr;
TreeManifest* CliWrite::manifest_ = nullptr;
std::string* CliWrite::build_error_ = nullptr;

struct Kind {
  std::string name;
  std::vector<std::string> mkfs;
};

TEST_F(CliWrite, PutTreeMatchesTheSourceThroughTheKernel) {
  const std::vector<Kind> kinds = {
      {"ext4", {"-t", "ext4"}},
      {"ext4-1k", {"-t", "ext4", "-b", "1024"}},
      {"ext3", {"-t", "ext3"}},
      {"ext2", {"-t", "ext2"}},
  };
  for (const auto& kind : kinds) {
    SCOPED_TRACE(kind.name);
    TempDir t;
    std::string img = make_image(t.path(), kind.mkfs, "256M");
    // SRC/. fills the root itself, as with cp -a.
    GuardedResult r = run_uext({"put", img, source() + "/.", "/"}, 120);
    ASSERT_EQ(0, r.exit_code) << r.describe();
    EXPECT_TRUE(r.err.empty()) << r.err;
    ASSERT_TRUE(image_is_clean(img));
    if (!can_loop_mount()) continue;
    std::string mnt = t / "mnt";
    ASSERT_EQ(0, ::mkdir(mnt.c_str(), 0755));
    LoopMount m(img, mnt, true);
    ASSERT_TRUE(m.ok()) << m.error();
    CompareOptions co;
    co.owners = true;
    co.xattrs = true;
    co.ignore = {"lost+found"};
    auto d = compare_trees(source(), mnt, co);
    EXPECT_TRUE(d.empty()) << format_differences(d);
  }
}

TEST_F(CliWrite, PutFollowsCpSemantics) {
  TempDir t;
  std::string img = make_image(t.path(), {"-t", "ext4"}, "64M");
  // A file into an existing directory keeps its name...
  ok({"put", img, source() + "/sizes/f4097", "/"});
  EXPECT_EQ(read_file(source() + "/sizes/f4097"), cat(img, "/f4097"));
  // ...and to a new name takes that name.
  ok({"put", img, source() + "/sizes/f4097", "/renamed"});
  EXPECT_EQ(4097u, probe(img, "/renamed").size);
  // A directory into an existing one goes inside it, with its metadata.
  ok({"put", img, source() + "/links", "/"});
  Probe orig = probe(img, "/links/hl/orig");
  ASSERT_TRUE(orig.exists);
  EXPECT_GE(orig.links, 2u);
  // Putting it again merges directories but refuses to replace files...
  fails({"put", img, source() + "/sizes/f4097", "/renamed"}, 1, {img, "/renamed", "exists"});
  // ...unless forced.
  ok({"put", "-f", img, source() + "/sizes/f1", "/renamed"});
  EXPECT_EQ(1u, probe(img, "/renamed").size);
  // A directory cannot replace a file, nor a file a directory.
  fails({"put", img, source() + "/modes", "/renamed"}, 1, {"/renamed", "non-directory"});
  ok({"mkdir", "-p", img, "/d/f1"});
  fails({"put", "-f", img, source() + "/sizes/f1", "/d"}, 1, {"/d/f1", "directory"});
  // Missing source, missing destination parent.
  fails({"put", img, t / "no-such-file", "/x"}, 1, {"no-such-file", "No such file"});
  fails({"put", img, source() + "/sizes/f1", "/no/such/dir/f"}, 1, {"/no/such/dir/f", "No such file"});
  // A sparse file stays sparse: its image copy allocates about its data.
  ok({"put", img, source() + "/sparse", "/"});
  GuardedResult st = run_uext({"stat", img, "/sparse/far"});
  ASSERT_EQ(0, st.exit_code) << st.describe();
  RegexMatch m;
  ASSERT_TRUE(regex_search(st.out, m, Regex(R"(Blocks:\s*(\d+))"))) << st.out;
  EXPECT_LT(std::stoull(m[1]), 200u) << "5 GiB sparse file with 10 KB of data: " << st.out;
  // Usage errors.
  fails({"put", img, source()}, 2, {});
  EXPECT_CLEAN(img);
}

// ------------------------------------------------------------------ the small commands

class CliWriteEdit : public ::testing::Test {
 protected:
  void SetUp() override { img_ = make_image(dir_.path(), {"-t", "ext4"}); }
  TempDir dir_;
  std::string img_;
};

TEST_F(CliWriteEdit, Mkdir) {
  ok({"mkdir", img_, "/a"});
  Probe a = probe(img_, "/a");
  EXPECT_EQ("directory", a.type);
  EXPECT_EQ(2u, a.links);
  fails({"mkdir", img_, "/a"}, 1, {img_, "/a", "File exists"});
  fails({"mkdir", img_, "/x/y"}, 1, {"/x/y", "No such file"});
  ok({"mkdir", "-p", "-m", "700", img_, "/x/y/z"});
  EXPECT_EQ(0700u, probe(img_, "/x/y/z").mode);
  EXPECT_EQ("directory", probe(img_, "/x/y").type);
  EXPECT_EQ(3u, probe(img_, "/x").links);
  ok({"mkdir", "-p", img_, "/x/y/z", "/a"});  // existing: fine with -p
  ok({"mkdir", "-m", "1777", img_, "/tmp"});
  EXPECT_EQ(01777u, probe(img_, "/tmp").mode);
  ok({"truncate", img_, "1", "/file"});
  fails({"mkdir", img_, "/file/sub"}, 1, {"/file/sub", "Not a directory"});
  fails({"mkdir", "-p", img_, "/file/sub"}, 1, {"/file", "Not a directory"});
  fails({"mkdir", "-m", "9", img_, "/b"}, 2, {"mode"});
  fails({"mkdir", img_}, 2, {});
  EXPECT_FALSE(probe(img_, "/b").exists);
  EXPECT_CLEAN(img_);
}

TEST_F(CliWriteEdit, Rm) {
  ok({"mkdir", "-p", img_, "/d/e/f"});
  ok({"truncate", img_, "5K", "/d/file", "/d/e/f/g", "/top"});
  ok({"ln", "-s", img_, "somewhere", "/d/e/link"});
  ok({"rm", img_, "/top"});
  EXPECT_FALSE(probe(img_, "/top").exists);
  fails({"rm", img_, "/top"}, 1, {img_, "/top", "No such file"});
  ok({"rm", "-f", img_, "/top", "/no/such/thing"});
  fails({"rm", img_, "/d"}, 1, {"/d", "not empty"});
  EXPECT_TRUE(probe(img_, "/d/file").exists);
  fails({"rm", img_, "/"}, 1, {"root"});
  ok({"rm", img_, "/d/e/f/g", "/d/e/f"});  // a file, then the now empty directory
  EXPECT_FALSE(probe(img_, "/d/e/f").exists);
  ok({"rm", "-r", img_, "/d"});
  EXPECT_FALSE(probe(img_, "/d").exists);
  EXPECT_EQ(std::vector<std::string>{}, ls(img_, "/"));
  EXPECT_CLEAN(img_);
}

TEST_F(CliWriteEdit, Mv) {
  ok({"mkdir", img_, "/dir", "/dir2"});
  TempDir src;
  write_file(src / "one", "one\n");
  write_file(src / "two", "two!\n");
  ok({"put", img_, src / "one", "/one"});
  ok({"put", img_, src / "two", "/two"});
  ok({"mv", img_, "/one", "/uno"});
  EXPECT_FALSE(probe(img_, "/one").exists);
  EXPECT_EQ("one\n", cat(img_, "/uno"));
  // Onto an existing directory: inside it.
  ok({"mv", img_, "/uno", "/dir"});
  EXPECT_EQ("one\n", cat(img_, "/dir/uno"));
  // --no-clobber refuses an existing name and changes nothing.
  ok({"put", img_, src / "one", "/one"});
  fails({"mv", "--no-clobber", img_, "/one", "/two"}, 1, {"/one", "/two", "File exists"});
  EXPECT_EQ("two!\n", cat(img_, "/two"));
  EXPECT_EQ("one\n", cat(img_, "/one"));
  // --exchange swaps two names.
  ok({"mv", "--exchange", img_, "/one", "/two"});
  EXPECT_EQ("two!\n", cat(img_, "/one"));
  EXPECT_EQ("one\n", cat(img_, "/two"));
  fails({"mv", "--exchange", img_, "/one", "/nothing"}, 1, {"/nothing"});
  // Plain mv replaces a file.
  ok({"mv", img_, "/one", "/two"});
  EXPECT_EQ("two!\n", cat(img_, "/two"));
  EXPECT_FALSE(probe(img_, "/one").exists);
  // A directory moves, and its ".." follows (e2fsck checks that).
  ok({"mv", img_, "/dir", "/dir2/moved"});
  EXPECT_EQ("one\n", cat(img_, "/dir2/moved/uno"));
  EXPECT_EQ(3u, probe(img_, "/dir2").links);
  fails({"mv", img_, "/dir2", "/dir2/moved/inside"}, 1, {"/dir2", "Invalid argument"});
  fails({"mv", img_, "/missing", "/x"}, 1, {"/missing", "No such file"});
  fails({"mv", "-T", img_, "/two", "/dir2"}, 1, {"/dir2"});
  fails({"mv", "--no-clobber", "--exchange", img_, "/two", "/dir2"}, 2, {});
  EXPECT_CLEAN(img_);
}

TEST_F(CliWriteEdit, Ln) {
  ok({"truncate", img_, "100", "/f"});
  ok({"mkdir", img_, "/d"});
  ok({"ln", img_, "/f", "/g"});
  Probe f = probe(img_, "/f"), g = probe(img_, "/g");
  EXPECT_EQ(f.ino, g.ino);
  EXPECT_EQ(2u, g.links);
  ok({"ln", img_, "/f", "/d"});  // into a directory, same name
  EXPECT_EQ(f.ino, probe(img_, "/d/f").ino);
  EXPECT_EQ(3u, probe(img_, "/f").links);
  ok({"ln", "-s", img_, "../f", "/d/sym"});
  Probe s = probe(img_, "/d/sym");
  EXPECT_EQ("symbolic link", s.type);
  EXPECT_EQ("../f", s.target);
  std::string long_target(300, 'x');  // a slow symlink, in a block
  ok({"ln", "-s", img_, long_target, "/long"});
  EXPECT_EQ(long_target, probe(img_, "/long").target);
  fails({"ln", img_, "/f", "/g"}, 1, {"/g", "File exists"});
  fails({"ln", img_, "/d", "/dlink"}, 1, {"/dlink", "not permitted"});
  fails({"ln", img_, "/missing", "/m"}, 1, {"/missing", "No such file"});
  ok({"truncate", img_, "7", "/other"});
  ok({"ln", "-f", img_, "/other", "/g"});
  EXPECT_EQ(7u, probe(img_, "/g").size);
  EXPECT_EQ(2u, probe(img_, "/f").links);
  EXPECT_CLEAN(img_);
}

TEST_F(CliWriteEdit, ChmodChownTruncate) {
  ok({"truncate", img_, "10", "/f"});
  ok({"ln", "-s", img_, "f", "/link"});
  ok({"chmod", img_, "4755", "/f"});
  EXPECT_EQ(04755u, probe(img_, "/f").mode);
  ok({"chmod", img_, "600", "/link"});  // follows the link, as chmod does
  EXPECT_EQ(0600u, probe(img_, "/f").mode);
  fails({"chmod", img_, "u+x", "/f"}, 2, {"mode"});
  fails({"chmod", img_, "644", "/missing"}, 1, {"/missing", "No such file"});

  ok({"chown", img_, "1234:5678", "/f"});
  Probe f = probe(img_, "/f");
  EXPECT_EQ(1234u, f.uid);
  EXPECT_EQ(5678u, f.gid);
  ok({"chown", img_, ":42", "/f"});
  EXPECT_EQ(1234u, probe(img_, "/f").uid);
  EXPECT_EQ(42u, probe(img_, "/f").gid);
  ok({"chown", "--no-dereference", img_, "3000000000", "/link"});  // the link itself; a 32-bit uid
  GuardedResult r = run_uext({"stat", img_, "/link"});
  EXPECT_NE(std::string::npos, r.out.find("3000000000")) << r.out;
  EXPECT_EQ(1234u, probe(img_, "/f").uid);
  fails({"chown", img_, "bob", "/f"}, 2, {"owner"});

  ok({"truncate", img_, "3M", "/f"});
  EXPECT_EQ(3u << 20, probe(img_, "/f").size);
  ok({"truncate", img_, "1K", "/f"});
  EXPECT_EQ(1024u, probe(img_, "/f").size);
  ok({"truncate", img_, "0", "/f"});
  EXPECT_EQ(0u, probe(img_, "/f").size);
  ok({"truncate", img_, "2G", "/new"});  // created, all hole
  EXPECT_EQ(2ull << 30, probe(img_, "/new").size);
  ok({"truncate", "-c", img_, "5", "/not-created"});
  EXPECT_FALSE(probe(img_, "/not-created").exists);
  fails({"truncate", img_, "12X", "/f"}, 2, {"size"});
  ok({"mkdir", img_, "/d"});
  fails({"truncate", img_, "5", "/d"}, 1, {"/d", "directory"});
  fails({"truncate", img_, "5", "/no/such"}, 1, {"/no/such", "No such file"});
  EXPECT_CLEAN(img_);
}

TEST_F(CliWriteEdit, ImageErrors) {
  TempDir t;
  fails({"mkdir", t / "no-such.img", "/a"}, 1, {"no-such.img", "No such file"});
  write_file(t / "zeros.img", std::string(1 << 20, '\0'));
  fails({"rm", t / "zeros.img", "/a"}, 1, {"superblock"});
  fails({"put", t / "zeros.img", t.path(), "/"}, 1, {"superblock"});
}

// ------------------------------------------------------------------ tune

// uext tune sets what tune2fs sets, to the same values: dumpe2fs -h of
// the two images agrees but for the journal (uext's read-write open gives
// it revoke, 64bit and checksums, as the kernel's mount does), the times
// and the checksum; the image stays clean. Bad values are named.
TEST(CliTune, SettingsAsTune2fsSetsThem) {
  TempDir t;
  for (const char* size : {"64M", "300M"}) {
    SCOPED_TRACE(size);
    const std::string ours = t / "ours.img", theirs = t / "theirs.img";
    run_ok({"truncate", "-s", "0", ours});
    run_ok({"truncate", "-s", size, ours});
    run_ok({"mke2fs", "-F", "-q", "-t", "ext4", ours});
    run_ok({"cp", ours, theirs});
    const std::vector<std::string> args = {"-L", "newlabel", "-e", "remount-ro", "-m", "2", "-u", "1000",
                                           "-g", "100",      "-c", "30",         "-i", "2w"};
    std::vector<std::string> cmd = {"tune"};
    cmd.insert(cmd.end(), args.begin(), args.end());
    cmd.push_back(ours);
    ok(cmd);
    std::vector<std::string> tune2fs = {"tune2fs"};
    tune2fs.insert(tune2fs.end(), args.begin(), args.end());
    tune2fs.push_back(theirs);
    run_ok(tune2fs);
    auto header = [](const std::string& img) {
      return run_ok({"sh", "-c", "dumpe2fs -h " + img + " 2>/dev/null | grep -v -E "
                     "'^(Journal|Lifetime|Checksum|Last|Mount count|Next check|Filesystem created)'"});
    };
    EXPECT_EQ(header(ours), header(theirs));
    EXPECT_NE(header(ours).find("Reserved blocks uid:      1000"), std::string::npos);
    EXPECT_CLEAN(ours);
  }
  const std::string img = t / "ours.img";
  fails({"tune", "-L", "seventeen-bytes-x", img}, 1, {"label", "16 bytes"});
  fails({"tune", "-r", "99999999", img}, 1, {"reserved blocks", "half"});
  fails({"tune", "-u", "70000", img}, 1, {"16 bits"});
  fails({"tune", "-e", "explode", img}, 2, {"errors"});
  fails({"tune", "-i", "3y", img}, 2, {"interval"});
  fails({"tune", "-m", "2", "-r", "5", img}, 2, {"-m or -r"});
  fails({"tune", img}, 2, {"nothing to change"});
  EXPECT_CLEAN(img);
}

// ------------------------------------------------------------------ partitions

// A GPT disk image (sfdisk's) with a filesystem made in its second
// partition: every subcommand reaches it by number, e2fsck agrees through
// the partition's offset, the first partition's bytes stay as they were,
// and what cannot be is named.
TEST(CliPartition, ReachedByItsNumberInAGpt) {
  TempDir t;
  const std::string disk = t / "disk.img";
  run_ok({"truncate", "-s", "120M", disk});
  run_ok({"sh", "-c", "printf 'label: gpt\nstart=2048, size=40960\nstart=43008, size=131072\n' | sfdisk -q " + disk});
  run_ok({"sh", "-c", "head -c 1048576 /dev/urandom | dd of=" + disk + " bs=512 seek=2048 conv=notrunc status=none"});
  const std::string first = run_ok({"sh", "-c", "dd if=" + disk + " bs=512 skip=2048 count=40960 status=none | md5sum"});
  const std::string start = std::to_string(43008ull * 512);
  ok({"mkfs", "-q", disk, "64M", "-E", "offset=" + start});
  ok({"mkdir", "--partition", "2", disk, "/made-by-number"});
  write_file(t / "f", "partition two\n");
  ok({"put", "--partition", "2", disk, t / "f", "/made-by-number/f"});
  EXPECT_EQ(run_ok({uext_cli(), "cat", "--partition", "2", disk, "/made-by-number/f"}), "partition two\n");
  GuardedResult info = run_uext({"info", "--partition", "2", disk});
  EXPECT_NE(info.out.find("Block count:              65536"), std::string::npos) << info.out;
  EXPECT_EQ(run({"e2fsck", "-fn", disk + "?offset=" + start}).exit_code, 0);
  EXPECT_EQ(run_ok({"sh", "-c", "dd if=" + disk + " bs=512 skip=2048 count=40960 status=none | md5sum"}), first);

  fails({"ls", "--partition", "1", disk, "/"}, 1, {"partition 1", "magic"});
  fails({"ls", "--partition", "3", disk, "/"}, 1, {"no partition 3", "GPT", "2 at offset " + start});
  fails({"ls", "--partition", "2", "--offset", "1M", disk, "/"}, 1, {"partition or an offset"});
  fails({"ls", "--partition", "0", disk, "/"}, 2, {"partition"});
  fails({"ls", disk, "/"}, 1, {"GPT partition table", "--partition"});
  const std::string plain = make_image(t.path(), {"-t", "ext4"});
  fails({"ls", "--partition", "1", plain, "/"}, 1, {"no MBR or GPT partition table"});
}

// ------------------------------------------------------------------ tar

// A listing of a loop-mounted image (lost+found aside): type, mode, owner,
// size, links, times to the second (mke2fs -d keeps no more), link
// targets, the files' data and one file's xattrs.
std::string kernel_listing(const std::string& image, const std::string& mnt, const std::string& under = ".") {
  ::mkdir(mnt.c_str(), 0755);
  LoopMount m(image, mnt, true);
  EXPECT_TRUE(m.ok()) << m.error();
  if (!m.ok()) return {};
  CommandResult r = run_shell("cd " + mnt + "/" + under +
                              " && find . -mindepth 1 -printf '%p %M %u %g %s %n %TY%Tm%Td%TH%TM%TS %l\\n' | "
                              "sed 's/\\.[0-9]* / /' | grep -v '^./lost+found ' | sort && find . -type f -exec md5sum {} + | sort && "
                              "getfattr -d etc/motd");
  m.unmount();
  return r.out;
}

// A tree with what an archive of a root filesystem holds.
void make_rootfs_tree(const std::string& t) {
  run_ok({"sh", "-c",
          "set -e; t=" + t + "; mkdir -p $t/etc $t/bin $t/dev $t/deep/a/b; echo hello > $t/etc/motd; "
          "head -c 300000 /dev/urandom > $t/bin/prog; chmod 4755 $t/bin/prog; ln -s ../etc/motd $t/motd-link; "
          "ln $t/etc/motd $t/etc/motd2; mknod $t/dev/null c 1 3; mkfifo $t/dev/fifo; truncate -s 10M $t/sparse; "
          "echo mid | dd of=$t/sparse bs=1 seek=5000000 conv=notrunc status=none; setfattr -n user.k -v v $t/etc/motd; "
          "chown -R 123:456 $t/etc; chmod 700 $t/deep/a; touch -d @1000000000 $t/deep/a"});
}

// An archive of a tree becomes the same image as the tree itself: mkfs -d
// from a tar file against mke2fs -d from the directory, and put --tar from
// a compressed archive on standard input into a subdirectory, both read
// back by the kernel.
TEST(CliTar, AnArchiveUnpacksAsItsTreeCopies) {
  if (!can_loop_mount()) GTEST_SKIP() << "needs root and loop devices (the kernel is the oracle)";
  TempDir t;
  const std::string tree = t / "tree";
  make_rootfs_tree(tree);
  run_ok({"tar", "--xattrs", "--sparse", "-C", tree, "-cpf", t / "root.tar", "."});
  run_ok({"tar", "--xattrs", "--sparse", "-C", tree, "-czpf", t / "root.tgz", "."});
  const std::string from_tar = t / "tar.img", from_dir = t / "dir.img";
  ok({"mkfs", "-q", "-d", t / "root.tar", from_tar, "64M"});
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-d", tree, from_dir, "64M"});
  EXPECT_CLEAN(from_tar);
  const std::string want = kernel_listing(from_dir, t / "m2");
  EXPECT_NE(want.find("./bin/prog -rwsr-xr-x root root 300000 1"), std::string::npos) << want;
  EXPECT_EQ(kernel_listing(from_tar, t / "m1"), want);
  // The sparse member's hole stays one: a few blocks, not 10 MiB.
  GuardedResult st = run_uext({"stat", from_tar, "/sparse"});
  RegexMatch m;
  ASSERT_TRUE(regex_search(st.out, m, Regex(R"(Blocks:\s*(\d+))"))) << st.out;
  EXPECT_LT(std::stoull(m[1]), 64u) << st.out;

  // put --tar from standard input, gzip'd, into an existing directory.
  const std::string img = make_image(t.path(), {"-t", "ext4"}, "64M");
  ok({"mkdir", img, "/sub"});
  CommandResult r = run_shell(uext_cli() + " put --tar " + img + " - /sub < " + (t / "root.tgz"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CLEAN(img);
  EXPECT_EQ(kernel_listing(img, t / "m3", "sub"), want);
  // Again, over what is there: refused entry by entry without -f, then -f.
  r = run_shell(uext_cli() + " put --tar " + img + " " + (t / "root.tar") + " /sub");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("/sub/etc/motd: File exists"), std::string::npos) << r.err;
  ok({"put", "--tar", "-f", img, t / "root.tar", "/sub"});
  EXPECT_CLEAN(img);
}

// get --tar writes the tree back out: GNU tar extracts from it the very
// tree the image was made from (owners, setuid, devices, links, xattrs,
// the sparse file as a hole), and put --tar of it from a pipe makes an
// image the kernel lists as the first. Compressed by the name's suffix;
// an existing archive is kept unless -f.
TEST(CliTar, GetWritesWhatTarAndPutReadBack) {
  if (!can_loop_mount()) GTEST_SKIP() << "needs root and loop devices (the kernel is the oracle)";
  TempDir t;
  const std::string tree = t / "tree";
  make_rootfs_tree(tree);
  const std::string first = t / "first.img";
  ok({"mkfs", "-q", "-d", tree, first, "64M"});
  ok({"get", "--tar", first, "/", t / "out.tar"});
  const std::string back = t / "back";
  run_ok({"mkdir", back});
  run_ok({"tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", back, "-xpf", t / "out.tar"});
  run_ok({"rm", "-rf", back + "/lost+found"});
  auto listing = [](const std::string& dir) {
    return run_ok({"sh", "-c",
                   "cd " + dir + " && find . -mindepth 1 -printf '%p %M %U %G %s %n %T@ %l\n' | "
                   "sed 's/\\.[0-9]* / /' | sort && find . -type f -exec md5sum {} + | sort && "
                   "getfattr -d etc/motd && stat -c '%b' sparse"});
  };
  const std::string want = listing(tree);
  EXPECT_EQ(listing(back), want);
  EXPECT_NE(want.find("./bin/prog -rwsr-xr-x 0 0 300000"), std::string::npos) << want;

  // Through a pipe into a second image: the kernel lists both the same.
  const std::string second = make_image(t.path(), {"-t", "ext4"}, "64M");
  CommandResult r = run_shell(uext_cli() + " get --tar " + first + " / - | " + uext_cli() + " put --tar -f " + second +
                              " - /");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_CLEAN(second);
  EXPECT_EQ(kernel_listing(second, t / "m2"), kernel_listing(first, t / "m1"));

  // Compression by suffix; a file alone; an archive kept unless -f.
  ok({"get", "--tar", first, "/etc", t / "etc.tar.gz"});
  EXPECT_EQ(run_ok({"sh", "-c", "head -c 2 " + (t / "etc.tar.gz") + " | od -An -tx1"}), " 1f 8b\n");
  EXPECT_EQ(run_ok({"sh", "-c", "tar tzf " + (t / "etc.tar.gz") + " | sort"}), "./\n./motd\n./motd2\n");
  ok({"get", "--tar", first, "/bin/prog", t / "prog.tar"});
  EXPECT_EQ(run_ok({"tar", "tf", t / "prog.tar"}), "prog\n");
  fails({"get", "--tar", first, "/", t / "out.tar"}, 1, {"out.tar", "exists"});
  ok({"get", "--tar", "-f", first, "/etc", t / "out.tar"});
  fails({"get", "--tar", first, "/no/such", t / "x.tar"}, 1, {"/no/such"});
}

// Times beyond what an inode holds (a member dated in the year 10^11, one
// before 1901) are clamped as the kernel clamps utimensat's: to 2446-05-10
// with 256-byte inodes, to 2038-01-19 with 128-byte ones; the kernel reads
// back the same.
TEST(CliTar, TimesOutOfRangeAreClampedAsTheKernelDoes) {
  TempDir t;
  run_ok({"python3", "-c",
          "import tarfile, io, sys\n"
          "with tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT) as tf:\n"
          "  for name, mtime in [('future', 2**62), ('past', -2**40), ('plain', 10**9)]:\n"
          "    info = tarfile.TarInfo(name); info.size = 1; info.mtime = mtime\n"
          "    tf.addfile(info, io.BytesIO(b'x'))\n",
          t / "times.tar"});
  for (const auto& [inode_size, max] : std::vector<std::pair<std::string, std::string>>{
           {"256", "15032385535"}, {"128", "2147483647"}}) {
    SCOPED_TRACE(inode_size);
    const std::string img = make_image(t.path(), {"-t", "ext4", "-I", inode_size});
    ok({"put", "--tar", img, t / "times.tar", "/"});
    EXPECT_CLEAN(img);
    const std::string listing = run_ok({"debugfs", "-R", "stat /future", img});
    if (!can_loop_mount()) continue;
    const std::string mnt = t / ("m" + inode_size);
    ::mkdir(mnt.c_str(), 0755);
    LoopMount m(img, mnt, true);
    ASSERT_TRUE(m.ok()) << m.error();
    EXPECT_EQ(run_ok({"stat", "-c", "%Y", mnt + "/future"}), max + "\n");
    EXPECT_EQ(run_ok({"stat", "-c", "%Y", mnt + "/past"}), "-2147483648\n");
    EXPECT_EQ(run_ok({"stat", "-c", "%Y", mnt + "/plain"}), "1000000000\n");
  }
}

// Archives that must not be unpacked as they are: paths that climb out of
// the destination are refused by name (the rest is unpacked), a cut-off
// archive stops with libarchive's reason, and a destination that is not a
// directory is named; the image stays clean each time.
TEST(CliTar, HostileAndBrokenArchivesAreRefusedByName) {
  TempDir t;
  const std::string img = make_image(t.path(), {"-t", "ext4"}, "32M");
  run_ok({"python3", "-c",
          "import tarfile, io, sys\n"
          "with tarfile.open(sys.argv[1], 'w') as tf:\n"
          "  for name in ['ok.txt', '../evil', 'a/../../evil2', '/abs/fine.txt']:\n"
          "    data = name.encode()\n"
          "    info = tarfile.TarInfo(name); info.size = len(data)\n"
          "    tf.addfile(info, io.BytesIO(data))\n",
          t / "hostile.tar"});
  fails({"put", "--tar", img, t / "hostile.tar", "/"}, 1, {"hostile.tar", "../evil", "a/../../evil2", "leave"});
  EXPECT_EQ(cat(img, "/ok.txt"), "ok.txt");
  EXPECT_EQ(cat(img, "/abs/fine.txt"), "/abs/fine.txt");  // a leading "/" is taken from the destination
  EXPECT_FALSE(probe(img, "/evil").exists);
  EXPECT_FALSE(probe(img, "/evil2").exists);
  EXPECT_CLEAN(img);

  // Cut off in the middle of a member's data.
  const std::string tree = t / "tree";
  run_ok({"sh", "-c", "mkdir -p " + tree + " && head -c 200000 /dev/urandom > " + tree + "/big"});
  run_ok({"tar", "-C", tree, "-cf", t / "whole.tar", "."});
  run_ok({"sh", "-c", "head -c 60000 " + (t / "whole.tar") + " > " + (t / "cut.tar")});
  fails({"put", "--tar", img, t / "cut.tar", "/"}, 1, {"cut.tar"});
  EXPECT_CLEAN(img);
  write_file(t / "not-an-archive", std::string(5000, 'x'));
  fails({"put", "--tar", img, t / "not-an-archive", "/"}, 1, {"not-an-archive"});
  fails({"put", "--tar", img, t / "missing.tar", "/"}, 1, {"missing.tar"});
  fails({"put", "--tar", img, t / "whole.tar", "/ok.txt"}, 1, {"/ok.txt", "Not a directory"});
  EXPECT_CLEAN(img);
}

}  // namespace
}  // namespace uext::testing
