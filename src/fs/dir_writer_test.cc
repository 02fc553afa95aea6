// Journaled directory editing, judged by e2fsck -fn (which checks every
// leaf, the htree's hash order and depth, and link counts), debugfs (ls,
// htree) and uext's own read path on a fresh read-only open.
#include "fs/dir_writer.h"

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <cstring>
#include <map>
#include <random>
#include <sstream>

#include <fmt/format.h>

#include "alloc/block_allocator.h"
#include "alloc/group_bitmaps.h"
#include "alloc/inode_allocator.h"
#include "disk/dirent.h"
#include "disk/extent.h"
#include "disk/features.h"
#include "disk/htree.h"
#include "fs/block_map.h"
#include "fs/directory.h"
#include "support/images.h"
#include "support/process.h"
#include "uext/block_device.h"
#include "uext/filesystem.h"
#include "support/regex.h"

namespace uext::fs {
namespace {

using testing::run_ok;
namespace ftype = disk::ftype;

// Images live on tmpfs when there is one: every commit flushes.
std::string make_image(const testing::ScratchDir& dir, const std::vector<std::string>& args,
                       const std::string& size) {
  std::string img = dir / "fs.img";
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back(img);
  argv.push_back(size);
  run_ok(argv);
  return img;
}

std::string random_name(std::mt19937& rng, int i, int min_len, int max_len) {
  std::string name = fmt::format("{:05}_", i);
  int len = min_len + static_cast<int>(rng() % static_cast<uint32_t>(max_len - min_len + 1));
  while (static_cast<int>(name.size()) < len) name.push_back(static_cast<char>('a' + rng() % 26));
  // Bytes >= 0x80 make the hash's signedness matter.
  if (i % 5 == 0) name.insert(6, "\xc3\xa9");
  return name.substr(0, 255);
}

// The names of a directory as debugfs lists them ("ls -p": /ino/mode/uid/gid/name/size/),
// without "." and "..".
std::map<std::string, uint32_t> debugfs_names(const std::string& image, const std::string& path) {
  std::map<std::string, uint32_t> out;
  std::istringstream in(testing::debugfs(image, "ls -p \"" + path + "\""));
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() < 2 || line[0] != '/' || line.rfind("/0/", 0) == 0) continue;
    std::vector<std::string> fields;
    size_t pos = 1;
    for (int f = 0; f < 4; ++f) {
      size_t slash = line.find('/', pos);
      if (slash == std::string::npos) break;
      fields.push_back(line.substr(pos, slash - pos));
      pos = slash + 1;
    }
    // The name is everything up to the "/size/" at the end.
    size_t end = line.rfind('/', line.size() - 2);
    if (fields.size() < 4 || end == std::string::npos || end < pos) continue;
    std::string name = line.substr(pos, end - pos);
    if (name == "." || name == "..") continue;
    out[name] = static_cast<uint32_t>(std::stoul(fields[0]));
  }
  return out;
}

// "Number of entries (count): N" of the htree root (-1 when not indexed).
int htree_root_count(const std::string& image, const std::string& path) {
  std::string out = testing::debugfs(image, "htree \"" + path + "\"");
  testing::RegexMatch m;
  if (regex_search(out, m, testing::Regex(R"(Number of entries \(count\):\s*(\d+))"))) return std::stoi(m[1]);
  return -1;
}

// A read-write volume with its allocators, and the operations of a
// namespace layer built from dir_writer, one handle each.
class Session {
 public:
  explicit Session(const std::string& image) {
    auto dev = open_image_file(image, {.read_only = false});
    if (!dev.ok()) throw std::runtime_error(dev.error().message());
    Options o;
    o.read_only = false;
    o.commit_interval_ms = 0;
    auto v = Volume::open(std::move(*dev), o);
    if (!v.ok()) throw std::runtime_error(v.error().message());
    vol = std::move(*v);
    groups = std::make_unique<alloc::GroupBitmaps>(*vol);
    blocks = std::make_unique<alloc::BlockAllocator>(*groups);
    inodes = std::make_unique<alloc::InodeAllocator>(*groups);
    extents = vol->sb().has_incompat(disk::incompat::kExtents);
    filetype = vol->sb().has_incompat(disk::incompat::kFiletype);
  }

  InodeRecord inode(uint32_t ino) {
    auto r = vol->read_inode(ino);
    EXPECT_TRUE(r.ok()) << r.error().message();
    return r.ok() ? *r : InodeRecord{};
  }

  // A new regular file (no blocks) or directory (with "." and ".."), not
  // yet linked anywhere.
  uint32_t create(uint32_t parent, bool directory) {
    InodeRecord shape;
    if (extents) shape.inode.i_flags = disk::inode_flag::kExtents;
    auto h = vol->start(alloc::InodeAllocator::kAllocateCredits + 1 + dir_init_credits(*vol, shape));
    EXPECT_TRUE(h.ok()) << h.error().message();
    auto ino = inodes->allocate(*h, parent, directory);
    EXPECT_TRUE(ino.ok()) << ino.error().message();
    if (!ino.ok()) return 0;
    auto rec = vol->update_inode(*h, *ino, true, [&](disk::Inode& in) {
      in.i_mode = directory ? 040755 : 0100644;
      in.i_links_count = directory ? 2 : 1;
      if (extents) {
        in.i_flags |= disk::inode_flag::kExtents;
        disk::ExtentNode root;
        root.header.eh_max = 4;
        std::array<std::byte, disk::kInodeBlockBytes> raw{};
        disk::encode_extent_node(root, raw);
        for (size_t i = 0; i < in.i_block.size(); ++i) in.i_block[i] = disk::le32(raw, 4 * i);
      }
    });
    EXPECT_TRUE(rec.ok()) << rec.error().message();
    if (directory && rec.ok()) {
      Status st = dir_init(*vol, *h, *rec, parent, *blocks);
      EXPECT_TRUE(st.ok()) << st.error().message();
    }
    EXPECT_TRUE(h->stop().ok());
    return *ino;
  }

  Status add(InodeRecord& dir, std::string_view name, uint32_t ino, uint8_t type) {
    auto h = vol->start(dir_add_credits(*vol, dir));
    if (!h.ok()) return std::move(h).error();
    Status st = dir_add_entry(*vol, *h, dir, name, ino, type, *blocks);
    Status stopped = h->stop();
    return st.ok() ? stopped : st;
  }
  Status remove(const InodeRecord& dir, std::string_view name) {
    auto h = vol->start(dir_change_credits(*vol, dir));
    if (!h.ok()) return std::move(h).error();
    Status st = dir_remove_entry(*vol, *h, dir, name);
    Status stopped = h->stop();
    return st.ok() ? stopped : st;
  }
  Status set(const InodeRecord& dir, std::string_view name, uint32_t ino, uint8_t type) {
    auto h = vol->start(dir_change_credits(*vol, dir));
    if (!h.ok()) return std::move(h).error();
    Status st = dir_set_entry(*vol, *h, dir, name, ino, type);
    Status stopped = h->stop();
    return st.ok() ? stopped : st;
  }

  // Changes a link count; refreshes `rec` when given.
  void set_links(uint32_t ino, uint16_t links, InodeRecord* rec = nullptr) {
    auto h = vol->start(1);
    ASSERT_TRUE(h.ok());
    auto r = vol->update_inode(*h, ino, false, [&](disk::Inode& in) { in.i_links_count = links; });
    ASSERT_TRUE(r.ok()) << r.error().message();
    if (rec) *rec = *r;
    ASSERT_TRUE(h->stop().ok());
  }

  // Frees a file inode that lost its last name (it has no blocks).
  void free_file(uint32_t ino) {
    auto h = vol->start(1 + alloc::InodeAllocator::kFreeCredits);
    ASSERT_TRUE(h.ok());
    auto r = vol->update_inode(*h, ino, false, [&](disk::Inode& in) {
      in.i_links_count = 0;
      in.i_dtime = 1700000000;
    });
    ASSERT_TRUE(r.ok()) << r.error().message();
    Status st = inodes->free(*h, ino, false);
    ASSERT_TRUE(st.ok()) << st.error().message();
    ASSERT_TRUE(h->stop().ok());
  }

  uint8_t type(bool directory) const { return filetype ? (directory ? ftype::kDirectory : ftype::kRegular) : 0; }

  void close() {
    Status b = blocks->check_counts();
    EXPECT_TRUE(b.ok()) << b.error().message();
    Status i = inodes->check_counts();
    EXPECT_TRUE(i.ok()) << i.error().message();
    blocks.reset();
    inodes.reset();
    groups.reset();
    Status st = vol->close();
    ASSERT_TRUE(st.ok()) << st.error().message();
    vol.reset();
  }

  std::unique_ptr<Volume> vol;
  std::unique_ptr<alloc::GroupBitmaps> groups;
  std::unique_ptr<alloc::BlockAllocator> blocks;
  std::unique_ptr<alloc::InodeAllocator> inodes;
  bool extents = false, filetype = false;
};

// The oracles: e2fsck -fn clean (and dumpe2fs not "with errors"), debugfs
// lists exactly `want` in `path`, and uext finds every name (and not a
// removed one) through a fresh read-only open.
void check_directory(const std::string& image, const std::string& path, const std::map<std::string, uint32_t>& want,
                     const std::vector<std::string>& gone = {}) {
  EXPECT_TRUE(testing::image_is_clean(image));
  EXPECT_EQ(debugfs_names(image, path), want) << path;
  auto fs = Filesystem::open(image, Options{});
  ASSERT_TRUE(fs.ok()) << fs.error().message();
  auto d = (*fs)->resolve(path);
  ASSERT_TRUE(d.ok()) << path << ": " << d.error().message();
  for (const auto& [name, ino] : want) {
    auto r = (*fs)->lookup(*d, name);
    ASSERT_TRUE(r.ok()) << path << "/" << name << ": " << r.error().message();
    ASSERT_EQ(*r, ino) << name;
  }
  for (const auto& name : gone) {
    auto r = (*fs)->lookup(*d, name);
    EXPECT_FALSE(r.ok()) << name << " is still there";
  }
  fs->reset();
  // The kernel: readdir (hash order through the index) and lookups.
  if (!testing::can_loop_mount()) return;
  testing::TempDir mnt;
  testing::LoopMount m(image, mnt.path(), true);
  ASSERT_TRUE(m.ok()) << m.error();
  std::map<std::string, uint32_t> listed;
  for (const auto& e : std::filesystem::directory_iterator(mnt.path() + path)) {
    struct stat st;
    ASSERT_EQ(::lstat(e.path().c_str(), &st), 0) << e.path();
    listed[e.path().filename().string()] = static_cast<uint32_t>(st.st_ino);
  }
  EXPECT_EQ(listed, want) << "the kernel lists " << path << " differently";
  for (const auto& name : gone) {
    struct stat st;
    EXPECT_NE(::lstat((mnt.path() + path + "/" + name).c_str(), &st), 0) << name;
  }
  EXPECT_TRUE(m.unmount()) << m.error();
}

// ---- linear directories, mkdir, rename, rmdir-style checks ----

TEST(DirWriter, LinearEditsOnExt4) {
  testing::ScratchDir dir;
  std::string img = make_image(dir, {"-t", "ext4", "-b", "4096"}, "32M");
  std::map<std::string, uint32_t> want;
  std::map<std::string, uint32_t> root_want = debugfs_names(img, "/");
  uint32_t d_ino, sub_ino;
  std::vector<std::string> gone;
  {
    Session s(img);
    InodeRecord root = s.inode(2);
    // mkdir /d
    d_ino = s.create(2, true);
    InodeRecord d = s.inode(d_ino);
    EXPECT_EQ(d.inode.i_size, s.vol->block_size());
    ASSERT_TRUE(s.add(root, "d", d_ino, s.type(true)).ok());
    s.set_links(2, root.inode.i_links_count + 1, &root);
    root_want["d"] = d_ino;
    auto empty = dir_is_empty(*s.vol, d);
    ASSERT_TRUE(empty.ok());
    EXPECT_TRUE(*empty);

    // Files, some removed again.
    std::vector<uint32_t> files;
    for (int i = 0; i < 60; ++i) {
      uint32_t f = s.create(d_ino, false);
      std::string name = fmt::format("file-{}", i);
      ASSERT_TRUE(s.add(d, name, f, s.type(false)).ok()) << name;
      want[name] = f;
      files.push_back(f);
    }
    EXPECT_EQ(d.inode.i_size, s.vol->block_size()) << "60 short names fit one 4 KiB block";
    EXPECT_FALSE(*dir_is_empty(*s.vol, d));
    for (int i = 0; i < 60; i += 3) {
      std::string name = fmt::format("file-{}", i);
      ASSERT_TRUE(s.remove(d, name).ok()) << name;
      s.free_file(want[name]);
      want.erase(name);
      gone.push_back(name);
    }
    // Errors: absent, duplicate, ".", "..", bad names.
    EXPECT_EQ(s.remove(d, "file-0").error().code(), ENOENT);
    EXPECT_EQ(s.remove(d, "..").error().code(), EINVAL);
    EXPECT_EQ(s.add(d, "file-1", files[1], s.type(false)).error().code(), EEXIST);
    EXPECT_EQ(s.add(d, ".", d_ino, s.type(true)).error().code(), EINVAL);
    EXPECT_EQ(s.add(d, "a/b", files[1], s.type(false)).error().code(), EINVAL);
    EXPECT_EQ(s.set(d, ".", 2, s.type(true)).error().code(), EINVAL);
    EXPECT_EQ(s.set(d, "nothing", 2, s.type(true)).error().code(), ENOENT);

    // rename file-1 over file-2: file-2's inode loses its only name.
    ASSERT_TRUE(s.set(d, "file-2", want["file-1"], s.type(false)).ok());
    s.free_file(want["file-2"]);
    want["file-2"] = want["file-1"];
    ASSERT_TRUE(s.remove(d, "file-1").ok());
    want.erase("file-1");
    gone.push_back("file-1");

    // mkdir /d/sub, then move it to / (its ".." changes, links follow).
    sub_ino = s.create(d_ino, true);
    ASSERT_TRUE(s.add(d, "sub", sub_ino, s.type(true)).ok());
    s.set_links(d_ino, d.inode.i_links_count + 1, &d);
    InodeRecord sub = s.inode(sub_ino);
    ASSERT_TRUE(s.set(sub, "..", 2, s.type(true)).ok());
    ASSERT_TRUE(s.remove(d, "sub").ok());
    s.set_links(d_ino, d.inode.i_links_count - 1, &d);
    ASSERT_TRUE(s.add(root, "moved", sub_ino, s.type(true)).ok());
    s.set_links(2, root.inode.i_links_count + 1, &root);
    root_want["moved"] = sub_ino;
    EXPECT_TRUE(*dir_is_empty(*s.vol, sub));
    s.close();
  }
  check_directory(img, "/d", want, gone);
  EXPECT_EQ(debugfs_names(img, "/"), root_want);
  auto fs = Filesystem::open(img, Options{});
  ASSERT_TRUE(fs.ok());
  auto dotdot = (*fs)->resolve("/moved/..");
  ASSERT_TRUE(dotdot.ok()) << dotdot.error().message();
  EXPECT_EQ(*dotdot, 2u);
}

// ---- htree growth ----

struct BigCase {
  const char* label;
  std::vector<std::string> mkfs;
  std::string size;
  int names;
  int min_len, max_len;
  int expect_levels;  // indirect levels of the final tree
  bool expect_node_splits;
};

// `names` names (hard links to one file, whose link count follows) go
// into /big, which starts empty and grows as the kernel grows it. Then a
// third are removed, some are re-pointed to a second file, /big moves
// under a new directory (its root's ".." changes), and more names are
// added into the freed space.
void run_big(const BigCase& c) {
  SCOPED_TRACE(c.label);
  testing::ScratchDir dir;
  std::string img = make_image(dir, c.mkfs, c.size);
  std::map<std::string, uint32_t> want;
  std::vector<std::string> gone;
  std::mt19937 rng(c.names);
  auto t0 = std::chrono::steady_clock::now();
  {
    Session s(img);
    InodeRecord root = s.inode(2);
    uint32_t big_ino = s.create(2, true);
    ASSERT_TRUE(s.add(root, "big", big_ino, s.type(true)).ok());
    s.set_links(2, root.inode.i_links_count + 1, &root);
    uint32_t f = s.create(2, false), g = s.create(2, false);
    ASSERT_TRUE(s.add(root, "f", f, s.type(false)).ok());
    ASSERT_TRUE(s.add(root, "g", g, s.type(false)).ok());
    InodeRecord big = s.inode(big_ino);

    std::vector<std::string> names;
    for (int i = 0; i < c.names; ++i) {
      names.push_back(random_name(rng, i, c.min_len, c.max_len));
      Status st = s.add(big, names.back(), f, s.type(false));
      ASSERT_TRUE(st.ok()) << names.back() << ": " << st.error().message();
      want[names.back()] = f;
    }
    const bool indexed = s.vol->sb().has_compat(disk::compat::kDirIndex);
    EXPECT_EQ(big.inode.has_flag(disk::inode_flag::kIndex), indexed);
    // The working copy is what the disk says.
    InodeRecord again = s.inode(big_ino);
    EXPECT_EQ(again.inode.i_size, big.inode.i_size);
    EXPECT_EQ(again.inode.i_blocks, big.inode.i_blocks);
    EXPECT_EQ(again.inode.i_flags, big.inode.i_flags);

    int to_g = 0;
    for (size_t i = 0; i < names.size(); ++i) {
      if (i % 3 == 0) {
        Status st = s.remove(big, names[i]);
        ASSERT_TRUE(st.ok()) << names[i] << ": " << st.error().message();
        want.erase(names[i]);
        gone.push_back(names[i]);
      } else if (i % 7 == 1) {
        Status st = s.set(big, names[i], g, s.type(false));
        ASSERT_TRUE(st.ok()) << names[i] << ": " << st.error().message();
        want[names[i]] = g;
        ++to_g;
      }
    }
    EXPECT_EQ(s.remove(big, gone.front()).error().code(), ENOENT);

    // mkdir /p; mv /big /p/big.
    uint32_t p_ino = s.create(2, true);
    ASSERT_TRUE(s.add(root, "p", p_ino, s.type(true)).ok());
    InodeRecord p = s.inode(p_ino);
    ASSERT_TRUE(s.set(big, "..", p_ino, s.type(true)).ok());
    ASSERT_TRUE(s.remove(root, "big").ok());
    ASSERT_TRUE(s.add(p, "big", big_ino, s.type(true)).ok());
    s.set_links(p_ino, 3, &p);

    // Refill some of the freed space.
    const int more = c.names / 10;
    for (int i = 0; i < more; ++i) {
      std::string name = random_name(rng, c.names + i, c.min_len, c.max_len);
      Status st = s.add(big, name, g, s.type(false));
      ASSERT_TRUE(st.ok()) << name << ": " << st.error().message();
      want[name] = g;
      ++to_g;
    }
    int to_f = static_cast<int>(want.size()) - to_g;
    s.set_links(f, static_cast<uint16_t>(1 + to_f));
    s.set_links(g, static_cast<uint16_t>(1 + to_g));
    auto empty = dir_is_empty(*s.vol, big);
    ASSERT_TRUE(empty.ok()) << empty.error().message();
    EXPECT_FALSE(*empty);
    s.close();
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cerr << c.label << ": " << c.names << " names in " << secs << " s\n";
  check_directory(img, "/p/big", want, gone);
  EXPECT_EQ(testing::htree_levels(img, "/p/big"), c.expect_levels);
  if (c.expect_node_splits) {
    EXPECT_GE(htree_root_count(img, "/p/big"), 2) << "no index node was ever split";
  }
  auto fs = Filesystem::open(img, Options{});
  ASSERT_TRUE(fs.ok());
  auto dotdot = (*fs)->resolve("/p/big/..");
  ASSERT_TRUE(dotdot.ok()) << dotdot.error().message();
  EXPECT_EQ(*dotdot, *(*fs)->resolve("/p"));
}

TEST(DirWriter, HtreeTwoLevelsExt4OneKiB) {
  run_big({"ext4 1k csum", {"-t", "ext4", "-b", "1024", "-J", "size=16"}, "128M", 20000, 4, 60, 1, true});
}
TEST(DirWriter, HtreeExt4FourKiB) {
  run_big({"ext4 4k csum", {"-t", "ext4", "-b", "4096"}, "64M", 3000, 8, 40, 0, false});
}
TEST(DirWriter, HtreeExt3IndirectMaps) {
  run_big({"ext3 1k", {"-t", "ext3", "-b", "1024"}, "64M", 4000, 10, 50, 1, false});
}
TEST(DirWriter, LinearExt2WithoutDirIndex) {
  run_big({"ext2 ^dir_index", {"-t", "ext2", "-b", "1024", "-O", "^dir_index"}, "32M", 1500, 10, 50, -1, false});
}


// Three index levels need largedir; the names are long so that leaves
// hold few of them.
TEST(DirWriter, LargedirThreeLevels) {
  run_big({"ext4 1k largedir", {"-t", "ext4", "-b", "1024", "-O", "large_dir", "-J", "size=16"}, "128M", 24000,
           250, 255, 2, true});
}

// Running out of blocks: a linear append and building the index (which
// needs two blocks, and gets only one) fail with ENOSPC and leave the
// directory as it was; once blocks are free again the same name goes in.
TEST(DirWriter, EnospcLeavesTheDirectoryAsItWas) {
  testing::ScratchDir dir;
  std::string img = make_image(dir, {"-t", "ext4", "-b", "1024"}, "8M");
  std::map<std::string, uint32_t> want;
  {
    Session s(img);
    InodeRecord root = s.inode(2);
    uint32_t d_ino = s.create(2, true);
    ASSERT_TRUE(s.add(root, "d", d_ino, s.type(true)).ok());
    s.set_links(2, root.inode.i_links_count + 1, &root);
    uint32_t f = s.create(d_ino, false);
    InodeRecord d = s.inode(d_ino);

    // Take every free block.
    std::vector<alloc::BlockExtent> hog;
    for (;;) {
      auto h = s.vol->start(alloc::BlockAllocator::kAllocateCredits);
      ASSERT_TRUE(h.ok());
      auto got = s.blocks->allocate(*h, 0, 65535);
      ASSERT_TRUE(h->stop().ok());
      if (!got.ok()) {
        ASSERT_EQ(got.error().code(), ENOSPC);
        break;
      }
      hog.push_back(*got);
    }
    auto give_back = [&](uint32_t n) {
      while (n > 0 && !hog.empty()) {
        alloc::BlockExtent& e = hog.back();
        uint32_t k = std::min(n, e.count);
        auto h = s.vol->start(alloc::BlockAllocator::free_credits(s.vol->sb(), e.first + e.count - k, k));
        ASSERT_TRUE(h.ok());
        ASSERT_TRUE(s.blocks->free(*h, e.first + e.count - k, k, false).ok());
        ASSERT_TRUE(h->stop().ok());
        e.count -= k;
        n -= k;
        if (e.count == 0) hog.pop_back();
      }
      ASSERT_TRUE(s.vol->sync().ok());  // freed blocks are reusable once committed
    };

    // Fill block 0; the first name that needs a block fails.
    int i = 0;
    Status st;
    std::string name;
    for (;; ++i) {
      name = fmt::format("name-{:03}-{}", i, std::string(40, 'x'));
      st = s.add(d, name, f, s.type(false));
      if (!st.ok()) break;
      want[name] = f;
    }
    ASSERT_EQ(st.error().code(), ENOSPC) << st.error().message();
    const InodeRecord before = s.inode(d_ino);
    EXPECT_EQ(before.inode.i_size, 1024u);
    EXPECT_FALSE(before.inode.has_flag(disk::inode_flag::kIndex));

    // One block free: the index needs two.
    give_back(1);
    st = s.add(d, name, f, s.type(false));
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.error().code(), ENOSPC) << st.error().message();
    InodeRecord after = s.inode(d_ino);
    EXPECT_EQ(after.inode.i_size, before.inode.i_size);
    EXPECT_EQ(after.inode.i_blocks, before.inode.i_blocks);
    EXPECT_EQ(after.inode.i_flags, before.inode.i_flags);
    EXPECT_EQ(after.inode.i_block, before.inode.i_block);
    d = after;

    give_back(UINT32_MAX);
    ASSERT_TRUE(s.add(d, name, f, s.type(false)).ok());
    want[name] = f;
    EXPECT_TRUE(d.inode.has_flag(disk::inode_flag::kIndex));
    EXPECT_EQ(d.inode.i_size, 3 * 1024u);
    s.set_links(f, static_cast<uint16_t>(want.size()));
    s.close();
  }
  check_directory(img, "/d", want);
}

// Damaged blocks are refused, naming the directory and the block, and
// nothing is changed.
TEST(DirWriter, RefusesDamagedBlocks) {
  testing::ScratchDir dir;
  std::string img = make_image(dir, {"-t", "ext4", "-b", "4096"}, "16M");
  uint32_t d_ino, f;
  {
    Session s(img);
    InodeRecord root = s.inode(2);
    d_ino = s.create(2, true);
    ASSERT_TRUE(s.add(root, "d", d_ino, s.type(true)).ok());
    s.set_links(2, root.inode.i_links_count + 1, &root);
    f = s.create(d_ino, false);
    InodeRecord d = s.inode(d_ino);
    for (int i = 0; i < 200; ++i) ASSERT_TRUE(s.add(d, fmt::format("n{}-{}", i, std::string(30, 'y')), f, 1).ok());
    ASSERT_TRUE(d.inode.has_flag(disk::inode_flag::kIndex));
    s.set_links(f, 200);
    s.close();
  }
  ASSERT_TRUE(testing::image_is_clean(img));
  // Flip a bit in the root's index (block 0 of /d): its checksum fails.
  std::string bmap = testing::debugfs(img, "bmap /d 0");
  uint64_t root_block = std::stoull(bmap);
  testing::flip_bit(img, root_block * 4096 + 40, 3);
  {
    Session s(img);
    InodeRecord d = s.inode(d_ino);
    Status st = s.add(d, "new-name", f, 1);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.error().code(), kErrBadChecksum) << st.error().message();
    EXPECT_NE(st.error().message().find(fmt::format("directory inode {}: block {}", d_ino, root_block)),
              std::string::npos)
        << st.error().message();
    EXPECT_EQ(s.set(d, "..", 2, 2).error().code(), kErrBadChecksum);
    s.close();
  }
}

// Without checksums a malformed root (info_length 9) is EUCLEAN for adds,
// while removing still finds the name by scanning the leaves, as lookup does.
TEST(DirWriter, MalformedRootRefusesAddsButNotRemoval) {
  testing::ScratchDir dir;
  std::string img = make_image(dir, {"-t", "ext4", "-b", "4096", "-O", "^metadata_csum"}, "16M");
  uint32_t d_ino, f;
  {
    Session s(img);
    InodeRecord root = s.inode(2);
    d_ino = s.create(2, true);
    ASSERT_TRUE(s.add(root, "d", d_ino, s.type(true)).ok());
    f = s.create(d_ino, false);
    InodeRecord d = s.inode(d_ino);
    for (int i = 0; i < 200; ++i) ASSERT_TRUE(s.add(d, fmt::format("n{}-{}", i, std::string(30, 'y')), f, 1).ok());
    ASSERT_TRUE(d.inode.has_flag(disk::inode_flag::kIndex));
    s.close();
  }
  uint64_t root_block = std::stoull(testing::debugfs(img, "bmap /d 0"));
  testing::write_bytes(img, root_block * 4096 + 24 + 5, std::string(1, '\x09'));
  Session s(img);
  InodeRecord d = s.inode(d_ino);
  Status st = s.add(d, "new-name", f, 1);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code(), kErrCorrupted) << st.error().message();
  EXPECT_NE(st.error().message().find(fmt::format("directory inode {}: block {}", d_ino, root_block)),
            std::string::npos)
      << st.error().message();
  st = s.remove(d, fmt::format("n{}-{}", 77, std::string(30, 'y')));
  EXPECT_TRUE(st.ok()) << st.error().message();
  EXPECT_EQ(s.remove(d, "absent").error().code(), ENOENT);
  s.close();
}


// Without largedir a full two-level index refuses the name with ENOSPC
// and stays intact.
TEST(DirWriter, IndexFullWithoutLargedir) {
  testing::ScratchDir dir;
  std::string img = make_image(dir, {"-t", "ext4", "-b", "1024", "-J", "size=16"}, "128M");
  std::map<std::string, uint32_t> want;
  std::mt19937 rng(7);
  {
    Session s(img);
    InodeRecord root = s.inode(2);
    uint32_t d_ino = s.create(2, true);
    ASSERT_TRUE(s.add(root, "d", d_ino, s.type(true)).ok());
    s.set_links(2, root.inode.i_links_count + 1, &root);
    uint32_t f = s.create(2, false);
    ASSERT_TRUE(s.add(root, "f", f, s.type(false)).ok());
    InodeRecord d = s.inode(d_ino);
    Status st;
    for (int i = 0; i < 60000; ++i) {
      std::string name = random_name(rng, i, 250, 255);
      InodeRecord before = d;
      st = s.add(d, name, f, s.type(false));
      if (!st.ok()) {
        EXPECT_EQ(d.inode.i_size, before.inode.i_size);
        break;
      }
      want[name] = f;
    }
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.error().code(), ENOSPC);
    EXPECT_NE(st.error().message().find("directory index full"), std::string::npos) << st.error().message();
    s.set_links(f, static_cast<uint16_t>(1 + want.size()));
    s.close();
  }
  check_directory(img, "/d", want);
  EXPECT_EQ(testing::htree_levels(img, "/d"), 1);
  EXPECT_EQ(htree_root_count(img, "/d"), 123);
}

// Trees e2fsprogs built (mke2fs -d, then e2fsck -fD indexes them) take new
// names, lose old ones, and stay valid.
TEST(DirWriter, EditsAnIndexE2fsckBuilt) {
  testing::ScratchDir dir;
  testing::TempDir src;
  std::filesystem::create_directories(src / "many");
  std::mt19937 rng(3);
  std::vector<std::string> old_names;
  for (int i = 0; i < 1500; ++i) {
    old_names.push_back(random_name(rng, i, 10, 60));
    testing::write_file(src / ("many/" + old_names.back()), "");
  }
  std::string img = dir / "fs.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", "1024", "-d", src.path(), img, "64M"});
  testing::run({"e2fsck", "-fyD", img});
  ASSERT_TRUE(testing::image_is_clean(img));
  ASSERT_EQ(testing::htree_levels(img, "/many"), 0);
  std::map<std::string, uint32_t> want = debugfs_names(img, "/many");
  ASSERT_EQ(want.size(), old_names.size());
  std::vector<std::string> gone;
  {
    Session s(img);
    uint32_t many = static_cast<uint32_t>(testing::inode_number(img, "/many"));
    InodeRecord d = s.inode(many);
    ASSERT_TRUE(d.inode.has_flag(disk::inode_flag::kIndex));
    for (size_t i = 0; i < old_names.size(); i += 2) {
      ASSERT_TRUE(s.remove(d, old_names[i]).ok()) << old_names[i];
      s.free_file(want[old_names[i]]);
      want.erase(old_names[i]);
      gone.push_back(old_names[i]);
    }
    uint32_t f = s.create(many, false);
    for (int i = 0; i < 3000; ++i) {
      std::string name = random_name(rng, 10000 + i, 10, 60);
      Status st = s.add(d, name, f, s.type(false));
      ASSERT_TRUE(st.ok()) << name << ": " << st.error().message();
      want[name] = f;
    }
    s.set_links(f, 3000);
    s.close();
  }
  check_directory(img, "/many", want, gone);
  EXPECT_EQ(testing::htree_levels(img, "/many"), 1);
}

}  // namespace
}  // namespace uext::fs
