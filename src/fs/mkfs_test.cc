// uext mkfs against its oracles: mke2fs 1.47 with the same UUID, hash seed
// and time (dumpe2fs output and the image bytes must match), e2fsck -fn,
// the kernel (mount, write, delete, unmount, e2fsck again) and uext's own
// read path.
#include "uext/mkfs.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "support/images.h"
#include "support/process.h"
#include "uext/filesystem.h"

namespace uext {
namespace {

using testing::CommandResult;
using testing::TempDir;

constexpr const char* kUuid = "11111111-2222-3333-4444-555555555555";
constexpr const char* kSeed = "66666666-7777-8888-9999-aaaaaaaaaaaa";
constexpr int64_t kTime = 1700000000;

struct Case {
  std::string name;
  std::string size;  // for truncate
  uint64_t bytes;
  std::vector<std::string> args;  // mke2fs / uext mkfs arguments
  bool compare_bytes = true;      // cmp the whole images (skipped for the big one)
};

std::vector<Case> cases() {
  const uint64_t M = 1 << 20;
  return {
      {"ext2_1M", "1M", M, {"-t", "ext2"}},
      {"ext4_1M_no_journal_room", "1M", M, {"-t", "ext4"}},
      {"ext3_3M_small", "3M", 3 * M, {"-t", "ext3"}},
      {"ext2_32M", "32M", 32 * M, {"-t", "ext2"}},
      {"ext3_32M", "32M", 32 * M, {"-t", "ext3"}},
      {"ext4_64M_1k", "64M", 64 * M, {"-t", "ext4"}},
      {"ext4_64M_2k", "64M", 64 * M, {"-t", "ext4", "-b", "2048"}},
      {"ext4_256M_4k", "256M", 256 * M, {"-t", "ext4", "-b", "4096"}},
      {"ext4_600M", "600M", 600 * M, {"-t", "ext4"}},
      {"ext3_1G", "1G", 1024 * M, {"-t", "ext3"}},
      {"ext4_8G", "8G", 8192 * M, {"-t", "ext4"}, false},
      {"ext4_nocsum", "512M", 512 * M, {"-t", "ext4", "-O", "^metadata_csum"}},
      {"ext4_no64bit", "512M", 512 * M, {"-t", "ext4", "-O", "^64bit"}},
      {"ext4_noflex", "512M", 512 * M, {"-t", "ext4", "-O", "^flex_bg"}},
      {"ext4_noresize", "512M", 512 * M, {"-t", "ext4", "-O", "^resize_inode"}},
      {"ext4_meta_bg", "512M", 512 * M, {"-t", "ext4", "-O", "meta_bg,^resize_inode"}},
      {"ext4_inode128", "100M", 100 * M, {"-t", "ext4", "-I", "128"}},
      {"ext3_inode128", "100M", 100 * M, {"-t", "ext3", "-I", "128"}},
      {"ext2_uninit_bg", "200M", 200 * M, {"-t", "ext2", "-O", "uninit_bg"}},
      {"ext4_csum_seed_label", "50M", 50 * M, {"-t", "ext4", "-O", "metadata_csum_seed", "-L", "hello", "-m", "1", "-i", "65536"}},
      // A journal in nine extents (an index block) and one mapped through
      // double indirect blocks.
      {"ext4_noflex_journal_index", "256M", 256 * M, {"-t", "ext4", "-O", "^flex_bg", "-J", "size=40"}},
      {"ext3_1k_triple_indirect_journal", "200M", 200 * M, {"-t", "ext3", "-J", "size=72"}},
      // Quota files: user and group; with project quota too; on 4 KiB
      // blocks; on ext3 (mapped by block numbers).
      {"ext4_1k_quota", "64M", 64 * M, {"-t", "ext4", "-O", "quota"}},
      {"ext4_1k_quota_project", "64M", 64 * M, {"-t", "ext4", "-O", "quota,project"}},
      {"ext4_4k_quota", "256M", 256 * M, {"-t", "ext4", "-b", "4096", "-O", "quota"}},
      {"ext3_quota_usr", "100M", 100 * M, {"-t", "ext3", "-O", "quota", "-E", "quotatype=usrquota"}},
      // Usage types in place of the size class, the errors behaviour, -j.
      {"ext4_largefile", "256M", 256 * M, {"-t", "ext4", "-T", "largefile"}},
      {"ext4_news_small", "64M", 64 * M, {"-t", "ext4", "-T", "news"}},
      {"ext4_floppy_type", "300M", 300 * M, {"-t", "ext4", "-T", "floppy"}},
      {"ext2_j_panic", "32M", 32 * M, {"-t", "ext2", "-j", "-e", "panic"}},
  };
}

// dumpe2fs without the two lines allowed to differ: Lifetime writes
// (s_kbytes_written counts each tool's own I/O) and the superblock checksum
// that covers it.
std::string dumpe2fs_all(const std::string& image) {
  CommandResult r = testing::run({"dumpe2fs", image});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::istringstream in(r.out);
  std::string line, out;
  while (std::getline(in, line)) {
    if (line.rfind("Lifetime writes:", 0) == 0 || line.rfind("Checksum:", 0) == 0) continue;
    out += line + "\n";
  }
  return out;
}

// Byte offsets where the images differ, other than s_kbytes_written and
// s_checksum in any superblock copy.
std::vector<uint64_t> unexpected_differences(const std::string& a, const std::string& b, uint32_t block_size) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  std::vector<char> ba(1 << 20), bb(1 << 20);
  std::vector<uint64_t> diffs;
  uint64_t off = 0;
  while (fa && fb) {
    fa.read(ba.data(), static_cast<std::streamsize>(ba.size()));
    fb.read(bb.data(), static_cast<std::streamsize>(bb.size()));
    size_t n = static_cast<size_t>(std::min(fa.gcount(), fb.gcount()));
    if (n == 0) break;
    if (std::memcmp(ba.data(), bb.data(), n) != 0) {
      for (size_t i = 0; i < n; i++) {
        if (ba[i] == bb[i]) continue;
        uint64_t o = off + i;
        // A superblock copy starts at byte 1024 or at a block boundary.
        uint64_t sb_start = o < 2048 ? 1024 : o - o % block_size;
        uint64_t r = o - sb_start;
        bool allowed = (r >= 0x178 && r < 0x180) || (r >= 0x3FC && r < 0x400);
        if (!allowed && diffs.size() < 20) diffs.push_back(o);
      }
    }
    off += n;
  }
  return diffs;
}

std::string block_size_of(const std::string& image) {
  return testing::dumpe2fs_header(image)["Block size"];
}

MkfsOptions options_for(const Case& c) {
  MkfsOptions o;
  for (size_t i = 0; i < c.args.size(); i++) {
    const std::string& a = c.args[i];
    const std::string v = i + 1 < c.args.size() ? c.args[i + 1] : "";
    if (a == "-t") o.type = *parse_fs_type(v), i++;
    else if (a == "-b") o.block_size = static_cast<uint32_t>(std::stoul(v)), i++;
    else if (a == "-I") o.inode_size = static_cast<uint32_t>(std::stoul(v)), i++;
    else if (a == "-i") o.bytes_per_inode = static_cast<uint32_t>(std::stoul(v)), i++;
    else if (a == "-m") o.reserved_percent = std::stod(v), i++;
    else if (a == "-O") o.features = v, i++;
    else if (a == "-L") o.label = v, i++;
    else if (a == "-J") o.journal_size_mib = static_cast<uint32_t>(std::stoul(v.substr(5))), i++;
    else if (a == "-E" && v == "quotatype=usrquota") o.quota_types = kQuotaUser, i++;
    else if (a == "-T") o.usage_type = v, i++;
    else if (a == "-e") o.errors_behavior = v == "panic" ? 3 : v == "remount-ro" ? 2 : 1, i++;
    else if (a == "-j") o.features = "has_journal" + (o.features.empty() ? "" : "," + o.features);
  }
  o.uuid = *parse_uuid(kUuid);
  o.hash_seed = *parse_uuid(kSeed);
  o.creation_time = kTime;
  return o;
}

class MkfsMatchesMke2fs : public ::testing::TestWithParam<Case> {};

// The library's image equals mke2fs's: every dumpe2fs line (superblock and
// every group: locations, free counts, flags, checksums) and every byte but
// s_kbytes_written. Both start from an existing sparse file, so mke2fs
// takes its discard path and flags inode tables zeroed, as uext does.
TEST_P(MkfsMatchesMke2fs, Dumpe2fsAndBytes) {
  const Case& c = GetParam();
  TempDir dir;
  const std::string ours = dir / "uext.img", theirs = dir / "mke2fs.img";
  testing::run_ok({"truncate", "-s", c.size, ours});
  testing::run_ok({"truncate", "-s", c.size, theirs});
  // mke2fs takes one -E: a case's extended options join the hash seed.
  std::string extended = std::string("hash_seed=") + kSeed;
  std::string args;
  for (size_t i = 0; i < c.args.size(); i++) {
    if (c.args[i] == "-E" && i + 1 < c.args.size()) extended += "," + c.args[++i];
    else args += " '" + c.args[i] + "'";
  }
  std::string cmd = "E2FSPROGS_FAKE_TIME=" + std::to_string(kTime) + " mke2fs -q -F -U " + kUuid + " -E " +
                    extended + args;
  cmd += " " + theirs + " 2>&1";
  CommandResult m = testing::run_shell(cmd);
  ASSERT_EQ(m.exit_code, 0) << m.out;

  {
    auto dev = open_image_file(ours, {.read_only = false});
    ASSERT_TRUE(dev) << dev.error().message();
    Status st = make_filesystem(**dev, options_for(c));
    ASSERT_TRUE(st) << st.error().message();
  }
  EXPECT_TRUE(testing::image_is_clean(ours));
  EXPECT_EQ(dumpe2fs_all(ours), dumpe2fs_all(theirs));
  // Whole-image byte comparison for the small ones (reading GiBs twice
  // would dominate the run time; dumpe2fs covers the big ones).
  if (c.compare_bytes && c.bytes <= (256u << 20)) {
    auto diffs = unexpected_differences(ours, theirs, static_cast<uint32_t>(std::stoul(block_size_of(theirs))));
    EXPECT_TRUE(diffs.empty()) << "first differing byte offset: " << (diffs.empty() ? 0 : diffs[0]);
  }

  // The layout function agrees with what was written.
  auto layout = compute_mkfs_layout(c.bytes, options_for(c));
  ASSERT_TRUE(layout) << layout.error().message();
  auto h = testing::dumpe2fs_header(ours);
  EXPECT_EQ(std::to_string(layout->blocks_count), h["Block count"]);
  EXPECT_EQ(std::to_string(layout->free_blocks), h["Free blocks"]);
  EXPECT_EQ(std::to_string(layout->inodes_count), h["Inode count"]);
  EXPECT_EQ(std::to_string(layout->free_inodes), h["Free inodes"]);
  EXPECT_EQ(std::to_string(layout->reserved_gdt_blocks), h.count("Reserved GDT blocks") ? h["Reserved GDT blocks"] : "0");
}

INSTANTIATE_TEST_SUITE_P(Matrix, MkfsMatchesMke2fs, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

// Kernel oracle: mount uext's image, write and delete files, unmount;
// e2fsck must still be clean. Then uext's read path lists the root.
class MkfsKernel : public ::testing::TestWithParam<std::string> {};

TEST_P(MkfsKernel, MountWriteDeleteFsck) {
  TempDir dir;
  const std::string img = dir / "k.img", mnt = dir / "mnt";
  testing::run_ok({"truncate", "-s", "96M", img});
  MkfsOptions o;
  o.type = *parse_fs_type(GetParam());
  o.root_uid = 1000;
  o.root_gid = 100;
  {
    auto dev = open_image_file(img, {.read_only = false});
    ASSERT_TRUE(dev);
    ASSERT_TRUE(make_filesystem(**dev, o));
  }
  ASSERT_TRUE(testing::image_is_clean(img));

  {
    auto fs = Filesystem::open(img, {});
    ASSERT_TRUE(fs) << fs.error().message();
    auto list = (*fs)->list_directory(kRootIno);
    ASSERT_TRUE(list);
    std::vector<std::string> names;
    for (const auto& e : *list) names.push_back(e.name);
    EXPECT_EQ(names, (std::vector<std::string>{".", "..", "lost+found"}));
    auto st = (*fs)->stat(kRootIno);
    ASSERT_TRUE(st);
    EXPECT_EQ(st->uid, 1000u);
    EXPECT_EQ(st->gid, 100u);
    EXPECT_EQ(st->mode, 040755u);
    auto lpf = (*fs)->resolve("/lost+found");
    ASSERT_TRUE(lpf);
    EXPECT_EQ(*lpf, 11u);
  }

  if (!testing::can_loop_mount()) GTEST_SKIP() << "needs root and loop devices (the kernel is the oracle)";
  ::mkdir(mnt.c_str(), 0755);
  {
    testing::LoopMount m(img, mnt, false);
    ASSERT_TRUE(m.ok()) << m.error();
    CommandResult r = testing::run_shell(
        "set -e; cd '" + mnt + "'; mkdir -p a/b/c; for i in $(seq 1 200); do echo $i > a/f$i; done; "
        "dd if=/dev/urandom of=big bs=1M count=20 status=none; ln -s big link; "
        "rm -f a/f1*; rm -rf a/b; sync");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ASSERT_TRUE(m.unmount()) << m.error();
  }
  EXPECT_TRUE(testing::image_is_clean(img));
  auto fs = Filesystem::open(img, {});
  ASSERT_TRUE(fs) << fs.error().message();
  auto big = (*fs)->resolve("/big");
  ASSERT_TRUE(big);
  EXPECT_EQ((*fs)->stat(*big)->size, 20u << 20);
}

INSTANTIATE_TEST_SUITE_P(Types, MkfsKernel, ::testing::Values("ext2", "ext3", "ext4"));

TEST(Mkfs, ImpossibleRequestsFailClearly) {
  const uint64_t M = 1 << 20;
  struct Bad {
    uint64_t size;
    MkfsOptions o;
    std::string words;
  };
  std::vector<Bad> bad;
  {
    MkfsOptions o;
    bad.push_back({16 * 1024, o, "too small"});
  }
  {
    MkfsOptions o;
    o.block_size = 3000;
    bad.push_back({64 * M, o, "block size"});
  }
  {
    MkfsOptions o;
    o.inode_size = 200;
    bad.push_back({64 * M, o, "inode size"});
  }
  {
    MkfsOptions o;
    o.features = "^extent";
    bad.push_back({64 * M, o, "64-bit"});
  }
  {
    MkfsOptions o;
    o.features = "meta_bg";
    bad.push_back({64 * M, o, "resize_inode"});
  }
  {
    MkfsOptions o;
    o.features = "frobnicate";
    bad.push_back({64 * M, o, "unknown feature"});
  }
  {
    MkfsOptions o;
    o.features = "inline_data";
    bad.push_back({64 * M, o, "not supported"});
  }
  {
    MkfsOptions o;
    o.reserved_percent = 60;
    bad.push_back({64 * M, o, "reserved"});
  }
  {
    MkfsOptions o;
    o.inode_count = 4000000;
    bad.push_back({64 * M, o, "inode"});
  }
  {
    MkfsOptions o;
    o.label = "this label is far too long";
    bad.push_back({64 * M, o, "label"});
  }
  for (const auto& b : bad) {
    auto r = compute_mkfs_layout(b.size, b.o);
    ASSERT_FALSE(r) << b.words;
    EXPECT_EQ(r.error().code(), EINVAL) << r.error().message();
    EXPECT_NE(r.error().message().find(b.words), std::string::npos) << r.error().message();
  }
}

TEST(Mkfs, LayoutDefaultsBySize) {
  const uint64_t M = 1 << 20;
  auto small = compute_mkfs_layout(100 * M, {});
  ASSERT_TRUE(small);
  EXPECT_EQ(small->block_size, 1024u);
  EXPECT_EQ(small->inode_size, 256u);
  EXPECT_EQ(small->inodes_count, 25584u);  // one per 4 KiB, whole inode table blocks per group
  EXPECT_EQ(small->journal_blocks, 4096u);
  EXPECT_EQ(small->log_groups_per_flex, 4u);
  auto big = compute_mkfs_layout(2048 * M, {});
  ASSERT_TRUE(big);
  EXPECT_EQ(big->block_size, 4096u);
  EXPECT_EQ(big->inodes_count, 131072u);  // one per 16 KiB
  EXPECT_EQ(big->journal_blocks, 16384u);
  EXPECT_EQ(big->reserved_blocks, big->blocks_count * 5 / 100);
  // flex_bg packs group 1's bitmaps right after group 0's.
  EXPECT_EQ(big->groups[1].block_bitmap, big->groups[0].block_bitmap + 1);
  EXPECT_EQ(big->groups[1].inode_table, big->groups[0].inode_table + big->inode_blocks_per_group);
}

// The CLI: creates a sparse image, refuses to overwrite a filesystem
// without -F (naming it), and gives usage errors exit 2.
TEST(MkfsCli, CreateRefuseForceAndErrors) {
  TempDir dir;
  const std::string img = dir / "cli.img";
  auto r = testing::run_uext({"mkfs", "-q", "-L", "first", img, "64M"});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  struct stat st {};
  ASSERT_EQ(::stat(img.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 64 << 20);
  EXPECT_LT(st.st_blocks * 512, 16 << 20) << "the image should stay sparse";
  EXPECT_TRUE(testing::image_is_clean(img));

  r = testing::run_uext({"mkfs", "-q", "-t", "ext2", img});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("ext4"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("first"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("-F"), std::string::npos) << r.err;

  r = testing::run_uext({"mkfs", "-q", "-F", "-t", "ext2", img});
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_EQ(testing::dumpe2fs_header(img)["Filesystem features"],
            "ext_attr resize_inode dir_index filetype sparse_super large_file");
  EXPECT_TRUE(testing::image_is_clean(img));

  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"mkfs", "-b", "3000", img},
           {"mkfs", "-I", "100", img},
           {"mkfs", "-t", "ext5", img},
           {"mkfs", "-O", "bogus", img},
           {"mkfs", "-U", "not-a-uuid", img},
           {"mkfs", "-E", "nonsense=1", img},
           {"mkfs", "-m", "70", img},
           {"mkfs", "-T", "gigantic", img},
           {"mkfs", "-e", "explode", img},
           {"mkfs", img, "12Q"},
           {"mkfs"},
       }) {
    r = testing::run_uext(args);
    EXPECT_EQ(r.exit_code, 2) << r.describe();
    EXPECT_FALSE(r.err.empty());
  }
  r = testing::run_uext({"mkfs", dir / "missing.img"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  r = testing::run_uext({"mkfs", "-F", dir / "tiny.img", "8K"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("too small"), std::string::npos) << r.err;

  r = testing::run_uext({"mkfs", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* opt : {"-t", "-b", "-I", "-i", "-N", "-m", "-O", "-L", "-U", "-J", "-E", "-F", "-q", "-d", "-T", "-e",
                          "-j", "-n"}) {
    EXPECT_NE(r.out.find(opt), std::string::npos) << opt;
  }

  // -n: the layout printed, nothing made.
  const std::string dry = dir / "dry.img";
  r = testing::run_uext({"mkfs", "-n", "-T", "largefile", dry, "1G"});
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.out.find("Creating filesystem with 262144 4k blocks and 1024 inodes"), std::string::npos) << r.out;
  EXPECT_NE(::access(dry.c_str(), F_OK), 0) << "-n created the image";
}

// Quota files from the CLI: which ones -E quotatype= asks for, charged
// as e2fsck counts (root directory to its owner, lost+found to root), and
// an image that uext's own changes keep e2fsck-clean.
TEST(MkfsCli, QuotaFilesAsAskedAndKeptByLaterChanges) {
  TempDir dir;
  const std::string img = dir / "q.img";
  auto r = testing::run_uext({"mkfs", "-q", img, "64M", "-O", "quota", "-E",
                              "root_owner=1000:100,quotatype=usrquota:prjquota"});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  auto h = testing::dumpe2fs_header(img);
  EXPECT_NE(h["Filesystem features"].find("quota"), std::string::npos);
  EXPECT_NE(h["Filesystem features"].find("project"), std::string::npos);  // prjquota turns it on
  EXPECT_EQ(h["User quota inode"], "3");
  EXPECT_EQ(h.count("Group quota inode"), 0u);
  EXPECT_EQ(h["Project quota inode"], "12");
  EXPECT_TRUE(testing::image_is_clean(img));
  auto users = testing::run({"debugfs", "-R", "list_quota user", img});
  EXPECT_NE(users.out.find("      1000       1024"), std::string::npos) << users.out;  // the root directory
  EXPECT_NE(users.out.find("         0      12288"), std::string::npos) << users.out;  // lost+found

  // uext's changes keep the files right: e2fsck checks usage against them.
  const std::string host = dir / "host.txt";
  testing::run_ok({"sh", "-c", "head -c 100000 /dev/urandom > " + host});
  ASSERT_EQ(testing::run_uext({"put", img, host, "/f"}).exit_code, 0);
  ASSERT_EQ(testing::run_uext({"chown", img, "4242:77", "/f"}).exit_code, 0);
  ASSERT_EQ(testing::run_uext({"mkdir", img, "/d"}).exit_code, 0);
  EXPECT_TRUE(testing::image_is_clean(img));
  users = testing::run({"debugfs", "-R", "list_quota user", img});
  EXPECT_NE(users.out.find("      4242"), std::string::npos) << users.out;

  // What cannot be made is refused by name.
  r = testing::run_uext({"mkfs", "-q", "-F", img, "64M", "-O", "quota", "-E", "quotatype=usrquota:bogus"});
  EXPECT_EQ(r.exit_code, 2) << r.describe();
  EXPECT_NE(r.err.find("bogus"), std::string::npos) << r.err;
  r = testing::run_uext({"mkfs", "-q", "-F", "-I", "128", img, "64M", "-O", "project"});
  EXPECT_NE(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.err.find("128-byte inodes"), std::string::npos) << r.err;
}

// mkfs -d: the directory's contents in the new filesystem, as mke2fs -d
// puts them there (the kernel lists both images the same), plus the
// directory's own mode on the root, as cp -a DIR/. gives it.
TEST(MkfsCli, RootDirectoryCopiesATreeAsMke2fsDoes) {
  if (!testing::can_loop_mount()) GTEST_SKIP() << "needs root and loop devices (the kernel is the oracle)";
  TempDir dir;
  const std::string tree = dir / "tree";
  testing::run_ok({"sh", "-c",
                   "set -e; t=" + tree + "; mkdir -p $t/etc $t/bin $t/dev $t/empty; echo hello > $t/etc/motd; "
                   "head -c 300000 /dev/urandom > $t/bin/prog; chmod 4755 $t/bin/prog; ln -s ../etc/motd $t/link; "
                   "ln $t/etc/motd $t/etc/motd2; mknod $t/dev/null c 1 3; truncate -s 10M $t/sparse; "
                   "setfattr -n user.k -v v $t/etc/motd; chown 123:456 $t/etc; chmod 750 $t"});
  const std::string ours = dir / "uext.img", theirs = dir / "mke2fs.img";
  auto r = testing::run_uext({"mkfs", "-q", "-d", tree, ours, "64M"});
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  testing::run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-d", tree, theirs, "64M"});
  EXPECT_TRUE(testing::image_is_clean(ours));
  auto listing = [&](const std::string& image, const std::string& mnt) {
    ::mkdir(mnt.c_str(), 0755);
    testing::LoopMount m(image, mnt, true);
    EXPECT_TRUE(m.ok()) << m.error();
    auto out = testing::run_shell("cd " + mnt + " && find . -mindepth 1 -printf '%p %M %u %g %s %n %l\\n' | sort && "
                                  "find . -type f -exec md5sum {} + | sort && getfattr -d etc/motd && "
                                  "stat -c '%a' .")
                   .out;
    m.unmount();
    return out;
  };
  const std::string got = listing(ours, dir / "m1"), want = listing(theirs, dir / "m2");
  // All but the root's mode (the last line): the same.
  EXPECT_EQ(got.substr(0, got.rfind('\n', got.size() - 2)), want.substr(0, want.rfind('\n', want.size() - 2)));
  EXPECT_NE(got.find("./bin/prog -rwsr-xr-x root root 300000 1"), std::string::npos) << got;
  EXPECT_NE(got.find("user.k=\"v\""), std::string::npos) << got;
  EXPECT_EQ(got.substr(got.rfind('\n', got.size() - 2) + 1), "750\n");
  // A directory that is not there: named.
  r = testing::run_uext({"mkfs", "-q", "-F", "-d", dir / "missing", ours, "64M"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("missing"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace uext
