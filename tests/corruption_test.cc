// Damaged images: uext must fail cleanly (exit 1, a message naming the
// structure at fault), never crash, hang or read out of bounds. The suite
// runs under ASan+UBSan in CI; run_uext() gives sanitizer reports their
// own exit codes so they can never pass for a clean exit 1.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>
#include <thread>

#include "support/images.h"
#include "support/tree.h"
#include "support/writable.h"
#include "uext/filesystem.h"
#include "support/regex.h"

namespace uext::testing {
namespace {

uint32_t le32(const std::string& s, size_t off) {
  uint32_t v;
  std::memcpy(&v, s.data() + off, 4);
  return v;
}
uint16_t le16(const std::string& s, size_t off) {
  uint16_t v;
  std::memcpy(&v, s.data() + off, 2);
  return v;
}
std::string put32(uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); }
std::string put16(uint16_t v) { return std::string(reinterpret_cast<const char*>(&v), 2); }

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), ::tolower);
  return s;
}

// Each inner list is a set of alternatives; every list must be matched.
using Mentions = std::vector<std::vector<std::string>>;

class Corruption : public ::testing::Test {
 protected:
  // A private copy of a shared image (small tree, kernel files).
  void use(const std::string& kind) {
    if (!can_loop_mount()) GTEST_SKIP() << "needs root and loop devices to build the images";
    const SharedImage& s = shared_image(kind, false);
    ASSERT_TRUE(s.error.empty()) << s.error;
    kind_ = s.kind;
    image_ = dir_ / "damaged.img";
    copy_file(s.path, image_);
    auto h = dumpe2fs_header(image_);
    bs_ = std::stoull(h["Block size"]);
    blocks_ = std::stoull(h["Block count"]);
    inode_size_ = std::stoull(h["Inode size"]);
    desc_size_ = h.count("Group descriptor size") ? std::stoull(h["Group descriptor size"]) : 32;
    // Directories to list, from the tree (before the damage).
    // A sample of directories of every kind (all of them cost too much
    // time per case; `uext get /` walks every directory anyway).
    dirs_ = {"/", "/sizes", "/links", "/links/hl", "/many", "/kernel", "/xattrs", "/special", "/lost+found"};
  }

  uint64_t gdt_offset() const { return (bs_ == 1024 ? 2 : 1) * bs_; }
  // The first entry after "." and ".." in a directory's first block: its
  // byte offset in the image and its name.
  struct Entry {
    uint64_t at;
    std::string name;
  };
  Entry third_entry(const std::string& dir) {
    const uint64_t block = first_block(dir);
    const std::string b = read_bytes(image_, block * bs_, 64);
    uint64_t third = le16(b, 4);
    third += le16(b, third + 4);
    const uint64_t at = block * bs_ + third;
    const std::string head = read_bytes(image_, at, 8);
    return {at, read_bytes(image_, at + 8, static_cast<uint8_t>(head[6]))};
  }
  uint64_t first_block(const std::string& path) {
    std::string out = debugfs(image_, "blocks \"" + path + "\"");
    auto t = std::stoull(out.substr(0, out.find_first_of(" \n")));
    return t;
  }
  uint64_t stat_block(const std::string& path, const std::string& re_text) {
    std::string out = debugfs(image_, "stat \"" + path + "\"");
    RegexMatch m;
    Regex re(re_text);
    if (!regex_search(out, m, re)) {
      ADD_FAILURE() << "debugfs stat " << path << ": no match for " << re_text << "\n" << out.substr(0, 1500);
      return 0;
    }
    return std::stoull(m[1]);
  }

  // Runs `uext get IMG / OUT` and `uext ls -l -a` over every directory;
  // then `uext stat` and `uext cat` of `target`. Nothing may crash, hang or
  // trip a sanitizer; exit codes are 0 or 1. When `must_fail`, get (and the
  // target's stat/cat/ls when given) exit 1 with a message that matches
  // `mentions`.
  void check(const std::string& what, bool must_fail, const Mentions& mentions, const std::string& target = "",
             bool list_dirs = true) {
    SCOPED_TRACE(what + " on " + kind_.name);
    std::string out = scratch_ / "out";
    run({"rm", "-rf", out});
    std::vector<GuardedResult> failing;
    auto sane = [&](const std::string& cmd, const GuardedResult& r) {
      EXPECT_FALSE(r.timed_out) << what << ": uext " << cmd << " hung: " << r.describe();
      EXPECT_FALSE(r.crashed) << what << ": uext " << cmd << " crashed: " << r.describe();
      EXPECT_FALSE(r.sanitizer) << what << ": uext " << cmd << ": sanitizer report: " << r.describe();
      EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 1) << what << ": uext " << cmd << ": " << r.describe();
      if (r.exit_code == 1) {
        EXPECT_EQ(0u, r.err.rfind("uext", 0)) << what << ": uext " << cmd << ": error message format: " << r.err;
        EXPECT_NE(r.err.find(':'), std::string::npos) << r.err;
      }
    };
    auto expect_named = [&](const std::string& cmd, const GuardedResult& r) {
      EXPECT_EQ(1, r.exit_code) << what << ": uext " << cmd << " should fail: " << r.describe();
      for (auto& alternatives : mentions) {
        bool any = false;
        for (auto& m : alternatives) any = any || lower(r.err).find(lower(m)) != std::string::npos;
        std::string alts;
        for (auto& m : alternatives) alts += "\"" + m + "\" ";
        EXPECT_TRUE(any) << what << ": uext " << cmd << ": the message should name " << alts << "; it was: " << r.err;
      }
    };
    GuardedResult g = run_uext({"get", image_, "/", out}, 120);
    sane("get / OUT", g);
    if (must_fail) expect_named("get / OUT", g);
    if (list_dirs) {
      for (auto& d : dirs_) {
        GuardedResult r = run_uext({"ls", "-l", "-a", image_, d}, 60);
        sane("ls -l -a " + d, r);
      }
    }
    if (!target.empty()) {
      GuardedResult s = run_uext({"stat", image_, target}, 60);
      sane("stat " + target, s);
      GuardedResult c = run_uext({"cat", image_, target}, 60);
      sane("cat " + target, c);
      if (must_fail) {
        // At least the command that needs the damaged structure fails.
        bool stat_failed = s.exit_code == 1, cat_failed = c.exit_code == 1;
        EXPECT_TRUE(stat_failed || cat_failed)
            << what << ": neither `uext stat` nor `uext cat " << target << "` failed:\n" << s.describe() << "\n" << c.describe();
        if (cat_failed) expect_named("cat " + target, c);
        else if (stat_failed) expect_named("stat " + target, s);
      }
    }
    run({"rm", "-rf", out});
  }

  TempDir dir_;
  ScratchDir scratch_;
  ImageKind kind_;
  std::string image_;
  uint64_t bs_ = 0, blocks_ = 0, inode_size_ = 0, desc_size_ = 32;
  std::vector<std::string> dirs_;
};

// ------------------------------------------------------------- superblock

TEST_F(Corruption, SuperblockFields) {
  use("ext4-4k-nocsum");
  const std::string good = dir_ / "good.img";
  copy_file(image_, good);
  struct Case {
    const char* what;
    uint64_t off;
    std::string bytes;
  };
  uint32_t blocks = static_cast<uint32_t>(blocks_);
  std::vector<Case> cases = {
      {"bad magic", 0x38, put16(0)},
      {"log block size 20", 0x18, put32(20)},
      {"blocks per group 0", 0x20, put32(0)},
      {"inodes per group 0", 0x28, put32(0)},
      {"inode size 3", 0x58, put16(3)},
      {"inode size 8192 (more than a block)", 0x58, put16(8192)},
      {"first data block past the end", 0x14, put32(blocks + 10)},
      {"block count 16x the device", 0x04, put32(blocks * 16)},
      {"inodes count 0", 0x00, put32(0)},
  };
  for (auto& c : cases) {
    copy_file(good, image_);
    write_bytes(image_, 1024 + c.off, c.bytes);
    check(std::string("superblock ") + c.what, true, {{"superblock"}}, "", false);
    GuardedResult r = run_uext({"info", image_});
    EXPECT_EQ(1, r.exit_code) << "uext info with superblock " << c.what << ": " << r.describe();
    EXPECT_NE(lower(r.err).find("superblock"), std::string::npos) << c.what << ": " << r.err;
  }
}

TEST_F(Corruption, SuperblockChecksum) {
  use("ext4-4k");
  flip_bit(image_, 1024 + 0x78 + 2, 3);  // a letter of the volume name
  check("superblock bit flip (volume name)", true, {{"superblock"}, {"checksum"}}, "", false);
}

// ------------------------------------------------------------- group descriptors

TEST_F(Corruption, GroupDescriptorInodeTableOutsideTheDevice) {
  use("ext2-1k");
  const std::string good = dir_ / "good.img";
  copy_file(image_, good);
  for (uint32_t where : {static_cast<uint32_t>(blocks_ + 100), 0u, 0xFFFFFFF0u}) {
    copy_file(good, image_);
    write_bytes(image_, gdt_offset() + 8, put32(where));  // group 0 bg_inode_table
    check("group 0 inode table at block " + std::to_string(where), true, {{"group", "descriptor"}}, "/sizes/f1");
  }
}

TEST_F(Corruption, GroupDescriptorChecksum) {
  use("ext4-4k");
  flip_bit(image_, gdt_offset() + 0x0C, 0);  // group 0 free blocks count
  check("group 0 descriptor bit flip", true, {{"group", "descriptor"}, {"checksum"}}, "", false);
}

TEST_F(Corruption, BitmapsDoNotMatterForReading) {
  use("ext4-4k-nocsum");
  std::string out = run({"dumpe2fs", image_}).out;
  RegexMatch m;
  ASSERT_TRUE(regex_search(out, m, Regex(R"(Block bitmap at (\d+))"))) << out.substr(0, 2000);
  write_bytes(image_, std::stoull(m[1]) * bs_, std::string(bs_, '\xff'));
  ASSERT_TRUE(regex_search(out, m, Regex(R"(Inode bitmap at (\d+))")));
  write_bytes(image_, std::stoull(m[1]) * bs_, std::string(bs_, '\0'));
  check("scribbled bitmaps", false, {});
}

// ------------------------------------------------------------- inodes

TEST_F(Corruption, InodeTableEntries) {
  use("ext4-4k-nocsum");
  const std::string good = dir_ / "good.img";
  copy_file(image_, good);
  const std::string file = "/sizes/f4097";
  uint64_t ino_off = inode_offset(image_, file);
  uint32_t ino = inode_number(image_, file);
  std::string inode_word = "inode " + std::to_string(ino);
  struct Case {
    const char* what;
    std::string path;
    uint64_t off;
    std::string bytes;
    Mentions mentions;
  };
  uint64_t dir_off = inode_offset(image_, "/links/hl");
  std::vector<Case> cases = {
      {"i_extra_isize 200", file, ino_off + 0x80, put16(200), {{"inode"}}},
      {"i_extra_isize odd", file, ino_off + 0x80, put16(33), {{"inode"}}},
      {"invalid file type 0xF000", file, ino_off + 0x00, put16(0xF1A4), {{"inode"}}},
      {"negative size", file, ino_off + 0x6C, put32(0x80000000u), {{"inode"}}},
      {"directory size far past its blocks", "/links/hl", dir_off + 0x04, put32(static_cast<uint32_t>(bs_ * 1000)),
       {{"directory", "inode", "hole"}}},
      {"directory size not a block multiple", "/links/hl", dir_off + 0x04, put32(static_cast<uint32_t>(bs_ + 7)),
       {{"directory", "inode"}}},
  };
  for (auto& c : cases) {
    copy_file(good, image_);
    write_bytes(image_, c.off, c.bytes);
    check(std::string("inode: ") + c.what, true, c.mentions, c.path);
  }
  (void)inode_word;
}

TEST_F(Corruption, InodeChecksum) {
  use("ext4-4k");
  const std::string file = "/sizes/f4097";
  uint32_t ino = inode_number(image_, file);
  flip_bit(image_, inode_offset(image_, file) + 0x10, 1);  // i_mtime
  check("inode bit flip (mtime)", true, {{"inode " + std::to_string(ino), "inode"}, {"checksum"}}, file);
}

// ------------------------------------------------------------- extent trees

TEST_F(Corruption, ExtentTreeRootInTheInode) {
  use("ext4-4k-nocsum");
  const std::string good = dir_ / "good.img";
  copy_file(image_, good);
  const std::string file = "/sizes/f4097";
  uint64_t root = inode_offset(image_, file) + 0x28;
  struct Case {
    const char* what;
    uint64_t off;
    std::string bytes;
  };
  std::vector<Case> cases = {
      {"bad magic", root, put16(0)},
      {"depth 9", root + 6, put16(9)},
      {"eh_entries > eh_max", root + 2, put16(5)},
      {"eh_max 200 (more than fits)", root + 4, put16(200)},
      {"extent start past the device", root + 12 + 8, put32(static_cast<uint32_t>(blocks_ + 1000))},
      {"extent start 0 (the superblock)", root + 12 + 8, put32(0)},
  };
  for (auto& c : cases) {
    copy_file(good, image_);
    write_bytes(image_, c.off, c.bytes);
    bool must = std::string(c.what) != "extent start 0 (the superblock)";
    check(std::string("extent root: ") + c.what, must, {{"extent", "block"}}, file, false);
  }
}

TEST_F(Corruption, ExtentTreeIndexAndLeafBlocks) {
  use("ext4-4k-nocsum");
  const std::string good = dir_ / "good.img";
  copy_file(image_, good);
  const std::string file = std::string("/") + KernelFiles::deep;
  ASSERT_GE(extent_depth(image_, file), 2);
  uint64_t index = stat_block(file, R"(\(ETB0\):(\d+))");  // depth 1: points at leaves
  uint64_t leaf = stat_block(file, R"(\(ETB1\):(\d+))");   // depth 0: the first leaf
  ASSERT_NE(0u, index);
  ASSERT_NE(0u, leaf);
  std::string leaf_bytes = read_bytes(image_, leaf * bs_, bs_);
  uint16_t leaf_max = le16(leaf_bytes, 4);
  uint32_t leaf_first_logical = le32(leaf_bytes, 12);
  // A leaf rewritten as an index node that points back at its parent: an
  // ancestor loop that only a depth check (or a visited set) stops.
  std::string as_index = put16(0xF30A) + put16(1) + put16(leaf_max) + put16(1) + put32(0) +
                         put32(leaf_first_logical) + put32(static_cast<uint32_t>(index)) + put16(0) + put16(0);
  struct Case {
    const char* what;
    uint64_t off;
    std::string bytes;
  };
  std::vector<Case> cases = {
      {"index block bad magic", index * bs_, put16(0x1234)},
      {"index entry pointing at its own block", index * bs_ + 12 + 4, put32(static_cast<uint32_t>(index))},
      {"index entry pointing past the device", index * bs_ + 12 + 4, put32(static_cast<uint32_t>(blocks_ + 5))},
      {"index block eh_entries > eh_max", index * bs_ + 2, put16(0xFFFF)},
      {"index block depth 4 under a depth-2 root", index * bs_ + 6, put16(4)},
      {"leaf bad magic", leaf * bs_, put16(0)},
      {"leaf eh_entries > eh_max", leaf * bs_ + 2, put16(static_cast<uint16_t>(leaf_max + 1))},
      {"leaf extent past the device", leaf * bs_ + 12 + 8, put32(static_cast<uint32_t>(blocks_ + 1000))},
      {"leaf extent straddling the end of the device", leaf * bs_ + 12 + 4,
       put16(8) + put16(0) + put32(static_cast<uint32_t>(blocks_ - 1))},
      {"leaf rewritten as an index pointing at its parent", leaf * bs_, as_index},
  };
  for (auto& c : cases) {
    copy_file(good, image_);
    write_bytes(image_, c.off, c.bytes);
    check(std::string("extent tree: ") + c.what, true, {{"extent", "block"}}, file, false);
  }
}

TEST_F(Corruption, ExtentBlockChecksum) {
  use("ext4-4k");
  const std::string file = std::string("/") + KernelFiles::deep;
  uint64_t index = stat_block(file, R"(\(ETB0\):(\d+))");
  std::string b = read_bytes(image_, index * bs_, 12);
  uint16_t entries = le16(b, 2), max = le16(b, 4);
  ASSERT_LT(entries, max) << "need an unused slot";
  flip_bit(image_, index * bs_ + 12 + 12 * (max - 1) + 5, 2);  // an unused slot: only the checksum sees it
  check("extent index block bit flip", true, {{"checksum"}}, file, false);
}

// ------------------------------------------------------------- indirect blocks

TEST_F(Corruption, IndirectBlocksOnExt2) {
  use("ext2-1k");
  const std::string good = dir_ / "good.img";
  copy_file(image_, good);
  const std::string file = "/sizes/f274433";  // 268 KiB + 1: single and double indirect
  uint64_t ino_off = inode_offset(image_, file);
  std::string inode = read_bytes(image_, ino_off, 128);
  uint32_t ind = le32(inode, 0x28 + 48), dind = le32(inode, 0x28 + 52);
  ASSERT_NE(0u, ind);
  ASSERT_NE(0u, dind);
  uint32_t outside = static_cast<uint32_t>(blocks_ + 10);
  struct Case {
    const char* what;
    uint64_t off;
    std::string bytes;
    bool must;
  };
  std::vector<Case> cases = {
      {"i_block[12] (indirect) past the device", ino_off + 0x28 + 48, put32(outside), true},
      {"i_block[13] (double indirect) past the device", ino_off + 0x28 + 52, put32(outside), true},
      {"i_block[0] past the device", ino_off + 0x28, put32(outside), true},
      {"indirect block entry past the device", uint64_t{ind} * bs_ + 8, put32(outside), true},
      {"double indirect entry past the device", uint64_t{dind} * bs_, put32(outside), true},
      {"double indirect entry pointing at itself", uint64_t{dind} * bs_, put32(dind), false},
      {"i_block[13] pointing at the indirect block", ino_off + 0x28 + 52, put32(ind), false},
  };
  for (auto& c : cases) {
    copy_file(good, image_);
    write_bytes(image_, c.off, c.bytes);
    check(std::string("indirect: ") + c.what, c.must, {{"block", "indirect", "inode"}}, file, false);
  }
}

// ------------------------------------------------------------- directories

TEST_F(Corruption, DirectoryBlocks) {
  use("ext4-4k-nocsum");
  const std::string good = dir_ / "good.img";
  copy_file(image_, good);
  const std::string dir = "/links/hl";
  uint64_t block = first_block(dir);
  std::string b = read_bytes(image_, block * bs_, bs_);
  // The third entry: the first after "." and "..".
  uint64_t third = le16(b, 4);
  third += le16(b, third + 4);
  ASSERT_LT(third, bs_);
  uint64_t at = block * bs_ + third;
  struct Case {
    const char* what;
    uint64_t off;
    std::string bytes;
    std::vector<std::string> names = {"directory", "dir entry", "entry"};
  };
  std::vector<Case> cases = {
      {"rec_len 0", at + 4, put16(0)},
      {"rec_len past the block", at + 4, put16(static_cast<uint16_t>(bs_ - third + 8))},
      {"rec_len not a multiple of 4", at + 4, put16(13)},
      {"rec_len smaller than the name", at + 4, put16(8)},
      {"name_len 255", at + 6, std::string(1, '\xff')},
      {"'.' rec_len 0", block * bs_ + 4, put16(0)},
      {"inode number past the inode count", at, put32(0x7FFFFFF0u), {"directory", "entry", "inode 2147483632"}},
  };
  for (auto& c : cases) {
    copy_file(good, image_);
    write_bytes(image_, c.off, c.bytes);
    check(std::string("directory block: ") + c.what, true, {c.names}, dir + "/orig", false);
    GuardedResult r = run_uext({"ls", "-l", image_, dir});
    EXPECT_EQ(1, r.exit_code) << c.what << ": uext ls -l " << dir << ": " << r.describe();
  }
}

TEST_F(Corruption, DirectoryBlockChecksum) {
  use("ext4-4k");
  flip_bit(image_, third_entry("/links/hl").at + 8, 1);  // a letter of a name
  check("directory block bit flip (a name)", true, {{"checksum"}}, "", false);
  GuardedResult r = run_uext({"ls", image_, "/links/hl"});
  EXPECT_EQ(1, r.exit_code) << r.describe();
  EXPECT_NE(lower(r.err).find("checksum"), std::string::npos) << r.err;
}

// Corruption met by a read-write open is recorded in the superblock, as
// ext4_error records it: "with errors", the count, and the first error's
// function, inode, block and errno code, so that the next e2fsck checks the
// whole image. A read-only open writes nothing.
TEST_F(Corruption, FoundByAReadWriteOpenIsRecordedInTheSuperblock) {
  use("ext4-4k");
  const uint64_t block = first_block("/links/hl");
  const uint32_t dir = inode_number(image_, "/links/hl");
  flip_bit(image_, third_entry("/links/hl").at + 8, 1);  // a letter of a name: the checksum fails
  {
    Options ro;
    ro.read_only = true;
    auto fs = Filesystem::open(image_, ro);
    ASSERT_TRUE(fs.ok()) << fs.error().message();
    auto r = (*fs)->lookup(dir, "anything");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code(), kErrBadChecksum) << r.error().message();
  }
  EXPECT_EQ(superblock_state(image_), kSuperblockValid) << "a read-only open must not write";
  {
    auto fs = open_writable(image_);
    ASSERT_TRUE(fs);
    auto r = fs->lookup(dir, "anything");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code(), kErrBadChecksum) << r.error().message();
    // An error that is no corruption is not recorded.
    EXPECT_EQ(fs->lookup(kRootIno, "no such name").error().code(), ENOENT);
    // Nor is a bad inode number from the caller (not a reference on the image).
    EXPECT_FALSE(fs->stat(static_cast<Ino>(blocks_ * 64)).ok());
    ASSERT_TRUE(fs->close().ok());
  }
  auto h = expect_dumpe2fs_shows(image_, {{"Filesystem state", "clean with errors"},
                                          {"FS Error count", "1"},
                                          {"First error function", "read_dir_block"},
                                          {"First error inode #", std::to_string(dir)},
                                          {"First error block #", std::to_string(block)},
                                          {"First error err", "EFSBADCRC"}});
  EXPECT_EQ(h.count("Last error function"), 1u);
}

// A directory entry naming an inode no entry may name (past the last, or a
// reserved one) fails the lookup with a message naming both, and is
// recorded (function "lookup", the directory), as ext4's lookup records it.
TEST_F(Corruption, AnEntryNamingAnImpossibleInodeIsRecorded) {
  use("ext4-4k-nocsum");  // no checksum to give the damage away first
  const uint32_t dir = inode_number(image_, "/links/hl");
  const auto [at, name] = third_entry("/links/hl");
  write_bytes(image_, at, std::string("\xf0\xff\xff\x7f", 4));
  {
    auto fs = open_writable(image_);
    ASSERT_TRUE(fs);
    auto r = fs->lookup(dir, name);
    ASSERT_FALSE(r.ok()) << name;
    EXPECT_EQ(r.error().code(), kErrCorrupted);
    EXPECT_NE(r.error().message().find("names inode 2147483632"), std::string::npos) << r.error().message();
    ASSERT_TRUE(fs->close().ok());
  }
  expect_dumpe2fs_shows(image_, {{"Filesystem state", "clean with errors"},
                                 {"First error function", "lookup"},
                                 {"First error inode #", std::to_string(dir)}});
}

// An entry naming an inode that is not in use (freed: its slot cleared) is
// the directory's damage: the lookup fails naming it and records it once,
// against the directory, as ext4's lookup records "deleted inode
// referenced" (the cleared inode's own checksum is not reported as well).
TEST_F(Corruption, AnEntryNamingAFreedInodeIsRecordedOnce) {
  use("ext4-4k");
  const uint32_t dir = inode_number(image_, "/links/hl");
  const std::string name = third_entry("/links/hl").name;
  const uint32_t freed = inode_number(image_, "/links/hl/" + name);
  run_ok({"debugfs", "-w", "-R", "clri <" + std::to_string(freed) + ">", image_});
  {
    auto fs = open_writable(image_);
    ASSERT_TRUE(fs);
    auto r = fs->lookup(dir, name);
    ASSERT_FALSE(r.ok()) << name;
    EXPECT_EQ(r.error().code(), kErrCorrupted) << r.error().message();
    EXPECT_NE(r.error().message().find("names inode " + std::to_string(freed) + ", which is not in use"),
              std::string::npos)
        << r.error().message();
    // The other names of the directory still resolve.
    EXPECT_TRUE(fs->lookup(dir, ".").ok());
    ASSERT_TRUE(fs->close().ok());
  }
  expect_dumpe2fs_shows(image_, {{"Filesystem state", "clean with errors"},
                                 {"FS Error count", "1"},
                                 {"First error function", "lookup"},
                                 {"First error inode #", std::to_string(dir)},
                                 {"First error err", "EFSCORRUPTED"}});
}

// With background writeback (uext mount's default) the record reaches the
// superblock without waiting for a sync or the close, and each error
// found counts.
TEST_F(Corruption, FoundWhileMountedIsWrittenInTheBackground) {
  use("ext4-4k");
  const uint64_t block = first_block("/links/hl");
  const uint32_t dir = inode_number(image_, "/links/hl");
  std::string b = read_bytes(image_, block * bs_, 64);
  flip_bit(image_, block * bs_ + le16(b, 4) + 8, 0);  // ".." becomes another name
  Options o;
  o.writeback_interval_ms = 20;
  auto fs = open_writable(image_, o);
  ASSERT_TRUE(fs);
  EXPECT_EQ(fs->info().state, "clean");
  for (int i = 0; i < 2; ++i) EXPECT_EQ(fs->lookup(dir, "x").error().code(), kErrBadChecksum);
  VolumeInfo info;
  for (int waited = 0; waited < 5000; waited += 20) {
    info = fs->info();
    if (info.error_count > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(info.state, "clean with errors");
  EXPECT_EQ(info.error_count, 2u);
  EXPECT_EQ(info.first_error.function, "read_dir_block");
  EXPECT_EQ(info.first_error.ino, dir);
  ASSERT_TRUE(fs->close().ok());
  EXPECT_EQ(dumpe2fs_header(image_)["FS Error count"], "2");
}

TEST_F(Corruption, HtreeRoots) {
  use("ext4-4k-nocsum");
  const std::string good = dir_ / "good.img";
  copy_file(image_, good);
  ASSERT_GE(htree_levels(image_, "/many"), 0) << "/many should be indexed";
  const auto& names = shared_tree(4096, false).htree_names;
  ASSERT_FALSE(names.empty());
  uint64_t root = first_block("/many") * bs_;
  struct Case {
    const char* what;
    uint64_t off;
    std::string bytes;
  };
  std::vector<Case> cases = {
      {"indirect levels 7", root + 30, std::string(1, '\x07')},
      {"count > limit", root + 34, put16(static_cast<uint16_t>(le16(read_bytes(image_, root + 32, 2), 0) + 5))},
      {"count 0", root + 34, put16(0)},
      {"limit 0xFFFF", root + 32, put16(0xFFFF)},
      {"unknown hash version", root + 28, std::string(1, '\x63')},
      {"info length 200", root + 29, std::string(1, '\xc8')},
      {"first entry's block past the directory", root + 36, put32(0x00FFFFFF)},
  };
  for (auto& c : cases) {
    copy_file(good, image_);
    write_bytes(image_, c.off, c.bytes);
    // The kernel falls back to a linear scan for some bad roots, so a
    // clean success is allowed; a failure must name the directory/htree.
    check(std::string("htree root: ") + c.what, false, {}, "", false);
    for (size_t i = 0; i < names.size(); i += names.size() / 5) {
      GuardedResult r = run_uext({"stat", image_, "/many/" + names[i]}, 60);
      EXPECT_FALSE(r.crashed || r.timed_out || r.sanitizer) << c.what << ": " << r.describe();
      EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 1) << c.what << ": " << r.describe();
      if (r.exit_code == 1) {
        std::string e = lower(r.err);
        EXPECT_TRUE(e.find("htree") != std::string::npos || e.find("directory") != std::string::npos ||
                    e.find("index") != std::string::npos)
            << c.what << ": a failed lookup should name the htree/directory: " << r.err;
      }
    }
  }
}

// ------------------------------------------------------------- xattrs

TEST_F(Corruption, XattrBlocks) {
  use("ext4-4k-nocsum");
  const std::string good = dir_ / "good.img";
  copy_file(image_, good);
  const std::string file = "/xattrs/large";
  uint64_t block = stat_block(file, R"(File ACL: (\d+))");
  ASSERT_NE(0u, block);
  uint64_t at = block * bs_;
  struct Case {
    const char* what;
    uint64_t off;
    std::string bytes;
  };
  std::vector<Case> cases = {
      {"bad magic", at, put32(0x12345678)},
      {"h_blocks 5", at + 8, put32(5)},
      {"value size 0xFFFF", at + 32 + 8, put32(0xFFFF)},
      {"value offset past the block", at + 32 + 2, put16(static_cast<uint16_t>(bs_ - 2))},
      {"name length 255", at + 32, std::string(1, '\xff')},
  };
  for (auto& c : cases) {
    copy_file(good, image_);
    write_bytes(image_, c.off, c.bytes);
    check(std::string("xattr block: ") + c.what, true, {{"xattr", "attribute"}}, "", false);
  }
}

TEST_F(Corruption, XattrBlockChecksum) {
  use("ext4-4k");
  uint64_t block = stat_block("/xattrs/large", R"(File ACL: (\d+))");
  flip_bit(image_, block * bs_ + bs_ - 20, 4);  // inside the values at the block's end
  check("xattr block bit flip (a value)", true, {{"checksum"}}, "", false);
}

// ------------------------------------------------------------- symlinks

TEST_F(Corruption, SymlinkSizes) {
  use("ext4-4k-nocsum");
  const std::string good = dir_ / "good.img";
  copy_file(image_, good);
  write_bytes(image_, inode_offset(image_, "/links/sym100") + 4, put32(static_cast<uint32_t>(bs_ + 904)));
  check("slow symlink size bigger than its block", true, {{"symlink", "inode"}}, "/links/sym100", false);
  copy_file(good, image_);
  write_bytes(image_, inode_offset(image_, "/links/sym30") + 4, put32(100));
  check("fast symlink size 100", false, {}, "/links/sym30", false);
  copy_file(good, image_);
  write_bytes(image_, inode_offset(image_, "/links/sym30") + 4, put32(0xFFFFFFFF));
  check("fast symlink size 4 GiB", true, {{"symlink", "inode"}}, "/links/sym30", false);
}

// ------------------------------------------------------------- whole images

TEST_F(Corruption, TruncatedImages) {
  for (const char* kind : {"ext4-4k", "ext2-1k"}) {
    use(kind);
    const std::string good = dir_ / "good.img";
    copy_file(image_, good);
    struct stat st;
    ASSERT_EQ(0, ::stat(good.c_str(), &st));
    uint64_t size = static_cast<uint64_t>(st.st_size);
    for (uint64_t cut : {uint64_t{0}, uint64_t{1000}, uint64_t{1100}, uint64_t{2048}, uint64_t{4096},
                         uint64_t{8192}, uint64_t{65536}, uint64_t{1 << 20}, size / 4, size / 2, 3 * size / 4,
                         size - 4096}) {
      copy_file(good, image_);
      ASSERT_EQ(0, ::truncate(image_.c_str(), static_cast<off_t>(cut)));
      check("image cut at " + std::to_string(cut), cut < 2048, {{"superblock", "short", "truncated", "end of"}}, "",
            false);
    }
  }
}

// Metadata byte ranges of an image: superblock, descriptors, the used part
// of group 0's inode table, directory blocks, extent tree blocks, indirect
// blocks and xattr blocks.
std::vector<std::pair<uint64_t, uint64_t>> metadata_ranges(const std::string& image, uint64_t bs,
                                                           uint64_t inode_size, const std::vector<std::string>& dirs,
                                                           const std::vector<std::string>& files) {
  std::vector<std::pair<uint64_t, uint64_t>> r;
  r.push_back({1024, 1024});
  r.push_back({(bs == 1024 ? 2 : 1) * bs, bs});
  uint64_t it = inode_offset(image, "<1>");
  r.push_back({it, 64 * inode_size});
  Regex num(R"((\d+))");
  for (auto& d : dirs) {
    std::string out = debugfs(image, "blocks \"" + d + "\"");
    const auto found = regex_find_all(out, num);
    for (size_t i = 0; i < found.size() && i < 3; ++i) r.push_back({std::stoull(found[i][1]) * bs, bs});
  }
  Regex meta(R"(\((?:ETB\d+|IND|DIND|TIND)\):(\d+)|File ACL: ([1-9]\d*))");
  for (auto& f : files) {
    std::string out = debugfs(image, "stat \"" + f + "\"");
    const auto found = regex_find_all(out, meta);
    for (size_t i = 0; i < found.size() && i < 6; ++i) {
      const auto& m = found[i];
      r.push_back({std::stoull(m[m[1].matched ? 1 : 2]) * bs, bs});
    }
  }
  return r;
}

TEST_F(Corruption, RandomBitFlipsInMetadata) {
  struct Plan {
    const char* kind;
    int cases;
  };
  // UEXT_BITFLIP_PERCENT scales the number of cases (sanitizer builds run
  // a share of them: each case is a CLI process, ~7x slower there).
  const char* percent_env = std::getenv("UEXT_BITFLIP_PERCENT");
  const int percent = percent_env ? std::clamp(std::atoi(percent_env), 1, 1000) : 100;
  for (Plan p : {Plan{"ext4-4k-nocsum", 110}, Plan{"ext2-1k", 80}, Plan{"ext4-4k", 40}}) {
    p.cases = std::max(1, p.cases * percent / 100);
    use(p.kind);
    std::vector<std::string> dirs = {"/", "/sizes", "/links", "/links/hl", "/many", "/xattrs", "/kernel", "/names"};
    std::vector<std::string> files = {std::string("/") + KernelFiles::deep, "/xattrs/large", "/xattrs/many",
                                      "/sizes/f274433", "/sizes/f4243457", "/sparse/indirect-edges"};
    auto ranges = metadata_ranges(image_, bs_, inode_size_, dirs, files);
    ASSERT_GT(ranges.size(), 8u);
    Rng rng(0xb17f11b + p.cases);
    for (int i = 0; i < p.cases; ++i) {
      auto [start, len] = ranges[rng.below(ranges.size())];
      int flips = static_cast<int>(rng.between(1, 4));
      std::vector<std::pair<uint64_t, std::string>> saved;
      std::string desc;
      for (int f = 0; f < flips; ++f) {
        uint64_t off = start + rng.below(len);
        unsigned bit = static_cast<unsigned>(rng.below(8));
        saved.push_back({off, read_bytes(image_, off, 1)});
        flip_bit(image_, off, bit);
        desc += " " + std::to_string(off) + ":" + std::to_string(bit);
      }
      std::string out = scratch_ / "out";
      GuardedResult g = run_uext({"get", image_, "/", out}, 120);
      std::string what = std::string(p.kind) + " case " + std::to_string(i) + ", bits flipped at" + desc;
      EXPECT_FALSE(g.timed_out || g.crashed || g.sanitizer) << what << ": uext get: " << g.describe();
      EXPECT_TRUE(g.exit_code == 0 || g.exit_code == 1) << what << ": uext get: " << g.describe();
      if (i % 4 == 0) {
        GuardedResult l = run_uext({"ls", "-l", "-a", image_, dirs[rng.below(dirs.size())]}, 60);
        EXPECT_FALSE(l.timed_out || l.crashed || l.sanitizer) << what << ": uext ls: " << l.describe();
        EXPECT_TRUE(l.exit_code == 0 || l.exit_code == 1) << what << ": uext ls: " << l.describe();
      }
      run({"rm", "-rf", out});
      for (auto it = saved.rbegin(); it != saved.rend(); ++it) write_bytes(image_, it->first, it->second);
      if (::testing::Test::HasFailure()) break;  // one reproducible failure is enough
    }
  }
}

// ------------------------------------------------------------- journal state

TEST_F(Corruption, NeedsRecoveryIsReported) {
  use("ext4-4k");
  CommandResult r = run({"debugfs", "-w", "-R", "feature needs_recovery", image_});
  ASSERT_EQ(0, r.exit_code) << r.err;
  ASSERT_NE(dumpe2fs_header(image_)["Filesystem features"].find("needs_recovery"), std::string::npos);
  GuardedResult info = run_uext({"info", image_});
  ASSERT_EQ(0, info.exit_code) << info.describe();
  std::string all = info.out + "\n" + info.err;
  EXPECT_NE(all.find("needs_recovery"), std::string::npos) << "features should list needs_recovery:\n" << all;
  bool explained = false;
  std::istringstream in(all);
  std::string line;
  while (std::getline(in, line))
    if (line.find("features") == std::string::npos && lower(line).find("recover") != std::string::npos)
      explained = true;
  EXPECT_TRUE(explained) << "uext info should say, beyond the feature list, that the journal needs recovery:\n"
                         << all;
  check("needs_recovery set", false, {}, "", false);
}

}  // namespace
}  // namespace uext::testing
