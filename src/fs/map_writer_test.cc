// Changing block maps (extent trees and indirect maps), judged by e2fsck
// -fn, debugfs (ex, blocks, stat), dumpe2fs free counts, the kernel (loop
// mount) and uext's own read path.
#include "fs/map_writer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>

#include "alloc/block_allocator.h"
#include "alloc/group_bitmaps.h"
#include "support/images.h"
#include "support/process.h"
#include "support/regex.h"

namespace uext::fs {
namespace {

using testing::run;
using testing::run_ok;

struct Leaf {
  uint64_t logical = 0, physical = 0, length = 0;
  bool uninit = false;
  bool operator==(const Leaf&) const = default;
};
std::ostream& operator<<(std::ostream& os, const Leaf& l) {
  return os << "{" << l.logical << "->" << l.physical << " x" << l.length << (l.uninit ? " u" : "") << "}";
}

// debugfs "ex": the leaf extents and the tree depth.
struct DebugfsExtents {
  int depth = -1;
  std::vector<Leaf> leaves;
};
DebugfsExtents debugfs_extents(const std::string& image, const std::string& file) {
  DebugfsExtents out;
  std::istringstream in(testing::debugfs(image, "ex " + file));
  std::string line;
  while (std::getline(in, line)) {
    unsigned level, max, entry, entries;
    unsigned long long ls, le, ps, pe, len;
    int n = std::sscanf(line.c_str(), " %u/ %u %u/ %u %llu - %llu %llu - %llu %llu", &level, &max, &entry,
                        &entries, &ls, &le, &ps, &pe, &len);
    if (n >= 4) out.depth = static_cast<int>(max);
    if (n == 9 && level == max) {
      out.leaves.push_back({ls, ps, len, line.find("Uninit") != std::string::npos});
    }
  }
  return out;
}

uint64_t free_blocks(const std::string& image) {
  return std::stoull(testing::dumpe2fs_header(image)["Free blocks"]);
}

Result<std::unique_ptr<Volume>> open_volume(const std::string& image, bool rw) {
  auto dev = open_image_file(image, {.read_only = !rw});
  if (!dev.ok()) return std::move(dev).error();
  Options o;
  o.read_only = !rw;
  o.commit_interval_ms = 0;
  return Volume::open(std::move(*dev), o);
}

// What a block of test data holds: its logical number and a tag.
std::string block_pattern(uint64_t logical, uint32_t bs, char tag) {
  std::string s(bs, tag);
  std::string head = "block " + std::to_string(logical) + " ";
  s.replace(0, head.size(), head);
  return s;
}

// A volume, allocator and the file being changed.
class Session {
 public:
  Session(const std::string& image, uint32_t ino) {
    auto v = open_volume(image, true);
    if (!v.ok()) throw std::runtime_error(v.error().message());
    vol = std::move(*v);
    groups = std::make_unique<alloc::GroupBitmaps>(*vol);
    allocator = std::make_unique<alloc::BlockAllocator>(*groups);
    auto r = vol->read_inode(ino);
    if (!r.ok()) throw std::runtime_error(r.error().message());
    rec = *r;
  }

  // Maps [first, first + count) in handles of at most `per_handle` new extents.
  std::vector<BlockRun> map(uint64_t first, uint64_t count, bool unwritten = false, uint32_t per_handle = 8) {
    std::vector<BlockRun> all;
    while (count > 0) {
      auto h = vol->start(map_credits(*vol, rec, per_handle));
      EXPECT_TRUE(h.ok()) << h.error().message();
      if (!h.ok()) return all;
      MapOptions opts;
      opts.unwritten = unwritten;
      opts.max_new_extents = per_handle;
      auto runs = map_or_allocate(*vol, *h, rec, first, count, *allocator, opts);
      EXPECT_TRUE(h->stop().ok());
      EXPECT_TRUE(runs.ok()) << runs.error().message();
      if (!runs.ok() || runs->empty()) return all;
      uint64_t done = 0;
      for (const BlockRun& r : *runs) {
        EXPECT_EQ(r.logical, first + done);
        done += r.length;
        all.push_back(r);
      }
      first += done;
      count -= done;
    }
    return all;
  }

  void set_size(uint64_t size) {
    auto h = vol->start(1);
    ASSERT_TRUE(h.ok());
    auto r = vol->update_inode(*h, rec.ino, false, [&](disk::Inode& in) { in.i_size = size; });
    ASSERT_TRUE(r.ok()) << r.error().message();
    rec = *r;
    ASSERT_TRUE(h->stop().ok());
  }

  void write_block(uint64_t physical, const std::string& data) {
    auto s = vol->device().write(physical * vol->block_size(),
                                 std::span(reinterpret_cast<const std::byte*>(data.data()), data.size()));
    ASSERT_TRUE(s.ok()) << s.error().message();
  }

  void close() {
    auto check = allocator->check_counts();
    EXPECT_TRUE(check.ok()) << check.error().message();
    allocator.reset();
    groups.reset();
    auto s = vol->close();
    ASSERT_TRUE(s.ok()) << s.error().message();
    vol.reset();
  }

  std::unique_ptr<Volume> vol;
  std::unique_ptr<alloc::GroupBitmaps> groups;
  std::unique_ptr<alloc::BlockAllocator> allocator;
  InodeRecord rec;
};

// The file as uext reads it back (through a fresh read-only volume).
std::string read_with_uext(const std::string& image, uint32_t ino) {
  auto vol = open_volume(image, false);
  if (!vol.ok()) return "open failed: " + vol.error().message();
  auto rec = (*vol)->read_inode(ino);
  if (!rec.ok()) return "inode: " + rec.error().message();
  uint32_t bs = (*vol)->block_size();
  uint64_t size = rec->inode.i_size;
  std::string out(size, '\0');
  auto runs = map_blocks(**vol, *rec, 0, (size + bs - 1) / bs);
  if (!runs.ok()) return "map: " + runs.error().message();
  for (const BlockRun& r : *runs) {
    if (r.physical == 0 || r.unwritten) continue;
    for (uint64_t i = 0; i < r.length; ++i) {
      uint64_t off = (r.logical + i) * bs;
      if (off >= size) break;
      std::vector<std::byte> buf(bs);
      if (!(*vol)->device().read((r.physical + i) * bs, buf).ok()) return "read failed";
      size_t n = std::min<uint64_t>(bs, size - off);
      std::memcpy(out.data() + off, buf.data(), n);
    }
  }
  return out;
}

// The file as the kernel reads it, or nullopt when loop mounts are unavailable.
std::optional<std::string> read_with_kernel(const std::string& image, const std::string& file,
                                            const testing::TempDir& dir) {
  if (!testing::can_loop_mount()) return std::nullopt;
  std::string mnt = dir / "mnt";
  run({"mkdir", "-p", mnt});
  testing::LoopMount m(image, mnt, true);
  if (!m.ok()) {
    ADD_FAILURE() << m.error();
    return std::string();
  }
  std::string data = testing::read_file(mnt + "/" + file);
  m.unmount();
  return data;
}

// Checks the image against the oracles: e2fsck clean, debugfs ex lists
// `expected` (and depth, when >= 0), uext and the kernel read `content`.
void check_image(const std::string& image, uint32_t ino, const std::vector<Leaf>& expected, int depth,
                 const std::string& content, const testing::TempDir& dir) {
  EXPECT_TRUE(testing::image_is_clean(image));
  auto ex = debugfs_extents(image, "f");
  EXPECT_EQ(ex.leaves, expected);
  if (depth >= 0) {
    EXPECT_EQ(ex.depth, depth);
  }
  EXPECT_TRUE(read_with_uext(image, ino) == content) << "uext reads different data";
  auto kernel = read_with_kernel(image, "f", dir);
  if (kernel) {
    EXPECT_TRUE(*kernel == content) << "the kernel reads different data";
  }
}

// Removes [first, end) from a list of leaves, splitting as needed.
std::vector<Leaf> punch_leaves(const std::vector<Leaf>& in, uint64_t first, uint64_t end) {
  std::vector<Leaf> out;
  for (const Leaf& l : in) {
    uint64_t le = l.logical + l.length;
    if (le <= first || l.logical >= end) {
      out.push_back(l);
      continue;
    }
    if (l.logical < first) out.push_back({l.logical, l.physical, first - l.logical, l.uninit});
    if (le > end) out.push_back({end, l.physical + (end - l.logical), le - end, l.uninit});
  }
  return out;
}

std::string make_image(const testing::TempDir& dir, const std::vector<std::string>& mkfs_args) {
  std::string img = dir / "fs.img";
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  // The last argument is the size, which follows the image.
  argv.insert(argv.end(), mkfs_args.begin(), mkfs_args.end() - 1);
  argv.push_back(img);
  argv.push_back(mkfs_args.back());
  run_ok(argv);
  run_ok({"debugfs", "-w", "-R", "write /dev/null f", img});
  return img;
}

struct ExtentCase {
  const char* name;
  std::vector<std::string> mkfs;
};

class ExtentTree : public ::testing::TestWithParam<ExtentCase> {};

// Thousands of one-block extents (every other logical block): the tree
// grows to depth 2; then holes across leaves, odd truncates, truncate to 0.
TEST_P(ExtentTree, GrowsSplitsPunchesAndShrinks) {
  testing::TempDir dir;
  std::string img = make_image(dir, GetParam().mkfs);
  uint32_t ino = testing::inode_number(img, "f");
  uint64_t free0 = free_blocks(img);
  uint32_t bs;
  std::vector<Leaf> leaves;
  std::string content;
  const uint64_t n = 1500;
  {
    Session s(img, ino);
    bs = s.vol->block_size();
    for (uint64_t i = 0; i < n; ++i) {
      auto runs = s.map(2 * i, 1, false, 1);
      ASSERT_EQ(runs.size(), 1u);
      ASSERT_EQ(runs[0].length, 1u);
      leaves.push_back({2 * i, runs[0].physical, 1, false});
      s.write_block(runs[0].physical, block_pattern(2 * i, bs, 'a'));
    }
    // Mapping mapped blocks again returns them and allocates nothing.
    for (uint64_t i : {uint64_t{0}, n / 2, n - 1}) {
      auto again = s.map(2 * i, 1, false, 1);
      ASSERT_EQ(again.size(), 1u);
      EXPECT_EQ(again[0].physical, leaves[i].physical);
    }
    auto all = map_blocks(*s.vol, s.rec, 0, 2 * n);
    ASSERT_TRUE(all.ok());
    size_t mapped = 0;
    for (const BlockRun& r : *all) mapped += r.physical != 0;
    EXPECT_EQ(mapped, n);
    s.set_size((2 * n - 1) * bs);
    s.close();
  }
  content.assign((2 * n - 1) * bs, '\0');
  for (uint64_t i = 0; i < n; ++i) content.replace(2 * i * bs, bs, block_pattern(2 * i, bs, 'a'));
  check_image(img, ino, leaves, 2, content, dir);
  // Data and tree blocks are what left the free count.
  {
    auto v = open_volume(img, false);
    ASSERT_TRUE(v.ok());
    auto r = (*v)->read_inode(ino);
    ASSERT_TRUE(r.ok());
    uint64_t used = disk::inode_blocks_512((*v)->sb(), r->inode) / (bs / 512);
    EXPECT_GT(used, n);
    EXPECT_EQ(free0 - free_blocks(img), used);
  }

  // Remove whole extents across several leaves, then an odd-sized truncate.
  {
    Session s(img, ino);
    ASSERT_TRUE(punch_range(*s.vol, s.rec, 101, 1000, *s.allocator).ok());
    s.close();
  }
  leaves = punch_leaves(leaves, 101, 1101);
  std::fill(content.begin() + 101 * bs, content.begin() + 1101 * bs, '\0');
  check_image(img, ino, leaves, 2, content, dir);

  uint64_t odd = 2001 * bs + 123;
  {
    Session s(img, ino);
    ASSERT_TRUE(truncate_blocks(*s.vol, s.rec, odd, *s.allocator).ok());
    EXPECT_EQ(s.rec.inode.i_size, odd);
    s.close();
  }
  leaves = punch_leaves(leaves, 2002, UINT32_MAX);
  content.resize(odd);
  check_image(img, ino, leaves, -1, content, dir);

  // Down to a handful of extents: the tree fits in the inode again.
  {
    Session s(img, ino);
    ASSERT_TRUE(truncate_blocks(*s.vol, s.rec, 5 * bs, *s.allocator).ok());
    s.close();
  }
  leaves = punch_leaves(leaves, 5, UINT32_MAX);
  content.resize(5 * bs);
  check_image(img, ino, leaves, 0, content, dir);

  {
    Session s(img, ino);
    ASSERT_TRUE(truncate_blocks(*s.vol, s.rec, 0, *s.allocator).ok());
    EXPECT_EQ(disk::inode_blocks_512(s.vol->sb(), s.rec.inode), 0u);
    s.close();
  }
  check_image(img, ino, {}, -1, "", dir);
  EXPECT_EQ(free_blocks(img), free0);
}

// Large contiguous allocations merge into long extents; holes in their
// middles split them.
TEST_P(ExtentTree, ContiguousRunsMergeAndSplit) {
  testing::TempDir dir;
  std::string img = make_image(dir, GetParam().mkfs);
  uint32_t ino = testing::inode_number(img, "f");
  uint64_t free0 = free_blocks(img);
  uint32_t bs;
  std::vector<Leaf> leaves;
  const uint64_t n = 3000;
  {
    Session s(img, ino);
    bs = s.vol->block_size();
    auto runs = s.map(0, n, false, 4);
    for (const BlockRun& r : runs) {
      // The allocator's runs, as debugfs should list them (merged where contiguous).
      if (!leaves.empty() && leaves.back().logical + leaves.back().length == r.logical &&
          leaves.back().physical + leaves.back().length == r.physical && leaves.back().length + r.length <= 32768) {
        leaves.back().length += r.length;
      } else {
        leaves.push_back({r.logical, r.physical, r.length, false});
      }
      for (uint64_t i = 0; i < r.length; ++i) s.write_block(r.physical + i, block_pattern(r.logical + i, bs, 'c'));
    }
    s.set_size(n * bs);
    s.close();
  }
  std::string content;
  for (uint64_t i = 0; i < n; ++i) content += block_pattern(i, bs, 'c');
  check_image(img, ino, leaves, -1, content, dir);
  // Holes inside extents, at an extent's start and across its end.
  std::vector<std::pair<uint64_t, uint64_t>> holes = {{500, 600}, {1000, 1001}, {0, 3}, {2990, 3000}};
  {
    Session s(img, ino);
    for (auto [a, b] : holes) {
      ASSERT_TRUE(punch_range(*s.vol, s.rec, a, b - a, *s.allocator).ok());
      leaves = punch_leaves(leaves, a, b);
      std::fill(content.begin() + a * bs, content.begin() + b * bs, '\0');
    }
    s.close();
  }
  check_image(img, ino, leaves, -1, content, dir);
  EXPECT_EQ(free_blocks(img), free0 - (n - 100 - 1 - 3 - 10));
  {
    Session s(img, ino);
    ASSERT_TRUE(truncate_blocks(*s.vol, s.rec, 0, *s.allocator).ok());
    s.close();
  }
  check_image(img, ino, {}, -1, "", dir);
  EXPECT_EQ(free_blocks(img), free0);
}

// fallocate-style unwritten extents, converted piece by piece.
TEST_P(ExtentTree, UnwrittenExtentsConvert) {
  testing::TempDir dir;
  std::string img = make_image(dir, GetParam().mkfs);
  uint32_t ino = testing::inode_number(img, "f");
  uint64_t free0 = free_blocks(img);
  uint32_t bs;
  const uint64_t n = 200;
  std::vector<BlockRun> runs;
  std::string content;
  {
    Session s(img, ino);
    bs = s.vol->block_size();
    runs = s.map(0, n, true, 4);
    ASSERT_FALSE(runs.empty());
    for (const BlockRun& r : runs) EXPECT_TRUE(r.unwritten);
    // Stale bytes in the unwritten blocks must read as zeros.
    for (const BlockRun& r : runs)
      for (uint64_t i = 0; i < r.length; ++i) s.write_block(r.physical + i, block_pattern(r.logical + i, bs, 'x'));
    s.set_size(n * bs);
    s.close();
  }
  auto phys = [&](uint64_t logical) {
    for (const BlockRun& r : runs)
      if (logical >= r.logical && logical < r.logical + r.length) return r.physical + (logical - r.logical);
    return uint64_t{0};
  };
  content.assign(n * bs, '\0');
  std::vector<Leaf> leaves;
  for (const BlockRun& r : runs) leaves.push_back({r.logical, r.physical, r.length, true});
  check_image(img, ino, leaves, -1, content, dir);

  // Write and convert the middle of an extent, its start, its end.
  std::vector<std::pair<uint64_t, uint64_t>> writes = {{50, 60}, {0, 10}, {190, 200}, {60, 70}};
  {
    Session s(img, ino);
    for (auto [a, b] : writes) {
      for (uint64_t l = a; l < b; ++l) s.write_block(phys(l), block_pattern(l, bs, 'w'));
      auto h = s.vol->start(convert_credits(*s.vol, s.rec, 2));
      ASSERT_TRUE(h.ok());
      auto st = convert_unwritten(*s.vol, *h, s.rec, a, b - a, *s.allocator);
      ASSERT_TRUE(st.ok()) << st.error().message();
      ASSERT_TRUE(h->stop().ok());
      for (uint64_t l = a; l < b; ++l) content.replace(l * bs, bs, block_pattern(l, bs, 'w'));
    }
    s.close();
  }
  // Expected: per logical block, written or not; merged as the kernel would.
  std::vector<Leaf> expect;
  for (uint64_t l = 0; l < n; ++l) {
    bool written = content[l * bs] != '\0';
    Leaf one{l, phys(l), 1, !written};
    if (!expect.empty()) {
      Leaf& b = expect.back();
      if (b.uninit == one.uninit && b.logical + b.length == l && b.physical + b.length == one.physical) {
        ++b.length;
        continue;
      }
    }
    expect.push_back(one);
  }
  check_image(img, ino, expect, -1, content, dir);
  {
    Session s(img, ino);
    ASSERT_TRUE(truncate_blocks(*s.vol, s.rec, 0, *s.allocator).ok());
    s.close();
  }
  check_image(img, ino, {}, -1, "", dir);
  EXPECT_EQ(free_blocks(img), free0);
}

// Enough one-block extents that index nodes below the root split too (more
// than 84 leaves under one index block with 1 KiB blocks), then extents
// inserted into the middle of full leaves (unwritten between written ones,
// so nothing merges), then a punch across leaves and index nodes.
TEST(ExtentTreeIndex, IndexNodesSplitAndMiddleInsertsSplitLeaves) {
  testing::TempDir dir;
  std::string img = make_image(dir, {"-t", "ext4", "-b", "1024", "32M"});
  uint32_t ino = testing::inode_number(img, "f");
  uint64_t free0 = free_blocks(img);
  const uint64_t n = 7300;
  std::map<uint64_t, Leaf> blocks;  // logical -> its one-block extent
  {
    Session s(img, ino);
    // Several one-block mappings per handle.
    auto map_each = [&](const std::vector<uint64_t>& logicals, bool unwritten) {
      const uint32_t per = 16;
      for (size_t i = 0; i < logicals.size(); i += per) {
        auto h = s.vol->start(map_credits(*s.vol, s.rec, per));
        ASSERT_TRUE(h.ok()) << h.error().message();
        for (size_t j = i; j < std::min(logicals.size(), i + per); ++j) {
          MapOptions o;
          o.unwritten = unwritten;
          auto runs = map_or_allocate(*s.vol, *h, s.rec, logicals[j], 1, *s.allocator, o);
          ASSERT_TRUE(runs.ok()) << runs.error().message();
          ASSERT_EQ(runs->size(), 1u);
          blocks[logicals[j]] = {logicals[j], (*runs)[0].physical, 1, unwritten};
        }
        ASSERT_TRUE(h->stop().ok());
      }
    };
    std::vector<uint64_t> even, odd;
    for (uint64_t i = 0; i < n; ++i) even.push_back(2 * i);
    for (uint64_t i = 3000; i < 3300; ++i) odd.push_back(2 * i + 1);
    map_each(even, false);
    map_each(odd, true);
    s.set_size(2 * n * s.vol->block_size());
    s.close();
  }
  std::vector<Leaf> expect;
  for (auto& [l, leaf] : blocks) expect.push_back(leaf);
  EXPECT_TRUE(testing::image_is_clean(img));
  auto ex = debugfs_extents(img, "f");
  EXPECT_EQ(ex.depth, 2);
  EXPECT_TRUE(ex.leaves == expect) << ex.leaves.size() << " extents listed, " << expect.size() << " expected";
  // More than one index block at level 1.
  std::string out = testing::debugfs(img, "ex f");
  EXPECT_NE(out.find(" 0/ 2   2/"), std::string::npos) << out.substr(0, 400);
  {
    Session s(img, ino);
    ASSERT_TRUE(punch_range(*s.vol, s.rec, 1000, 12000, *s.allocator).ok());
    s.close();
  }
  expect = punch_leaves(expect, 1000, 13000);
  EXPECT_TRUE(testing::image_is_clean(img));
  EXPECT_TRUE(debugfs_extents(img, "f").leaves == expect);
  {
    Session s(img, ino);
    ASSERT_TRUE(truncate_blocks(*s.vol, s.rec, 0, *s.allocator).ok());
    s.close();
  }
  EXPECT_TRUE(testing::image_is_clean(img));
  EXPECT_TRUE(debugfs_extents(img, "f").leaves.empty());
  EXPECT_EQ(free_blocks(img), free0);
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, ExtentTree,
    ::testing::Values(ExtentCase{"ext4_1k", {"-t", "ext4", "-b", "1024", "32M"}},
                      ExtentCase{"ext4_4k", {"-t", "ext4", "-b", "4096", "32M"}},
                      ExtentCase{"ext4_1k_nocsum_no64",
                                 {"-t", "ext4", "-b", "1024", "-O", "^metadata_csum,^64bit", "32M"}}),
    [](const auto& info) { return std::string(info.param.name); });

// The data blocks "debugfs stat" lists for an indirect-mapped file.
std::map<uint64_t, uint64_t> debugfs_data_blocks(const std::string& stat) {
  std::map<uint64_t, uint64_t> out;
  testing::Regex re(R"(\((\d+)(?:-(\d+))?\):(\d+)(?:-(\d+))?)");
  for (const auto& m : regex_find_all(stat, re)) {
    uint64_t l0 = std::stoull(m[1]), l1 = m[2].matched ? std::stoull(m[2]) : l0;
    uint64_t p0 = std::stoull(m[3]);
    for (uint64_t l = l0; l <= l1; ++l) out[l] = p0 + (l - l0);
  }
  return out;
}

class IndirectMap : public ::testing::TestWithParam<const char*> {};

// ext2/ext3 files needing single, double and triple indirect blocks.
TEST_P(IndirectMap, DoubleAndTripleIndirectThenTruncate) {
  testing::TempDir dir;
  std::string img = make_image(dir, {"-t", GetParam(), "-b", "1024", "32M"});
  uint32_t ino = testing::inode_number(img, "f");
  uint64_t free0 = free_blocks(img);
  const uint64_t p = 256;
  const uint64_t triple = 12 + p + p * p + 5;  // needs the triple indirect tree
  const uint64_t n = 12 + p + 40;               // direct, single and some double
  uint32_t bs;
  std::map<uint64_t, uint64_t> where;  // logical -> physical
  {
    Session s(img, ino);
    bs = s.vol->block_size();
    for (auto [a, c] : std::vector<std::pair<uint64_t, uint64_t>>{{0, n}, {triple, 3}, {triple + 1000, 1}}) {
      auto runs = s.map(a, c, false, 4);
      for (const BlockRun& r : runs) {
        for (uint64_t i = 0; i < r.length; ++i) {
          where[r.logical + i] = r.physical + i;
          s.write_block(r.physical + i, block_pattern(r.logical + i, bs, 'i'));
        }
      }
    }
    EXPECT_EQ(where.size(), n + 4);
    s.set_size((triple + 1001) * bs);
    s.close();
  }
  EXPECT_TRUE(testing::image_is_clean(img));
  // debugfs lists the data blocks in logical order, indirect blocks among them.
  std::string stat = testing::debugfs(img, "stat f");
  EXPECT_NE(stat.find("(IND)"), std::string::npos) << stat;
  EXPECT_NE(stat.find("(DIND)"), std::string::npos) << stat;
  EXPECT_NE(stat.find("(TIND)"), std::string::npos) << stat;
  // debugfs stat lists "(logical range):physical range" for data blocks.
  EXPECT_EQ(debugfs_data_blocks(stat), where);
  auto check_content = [&](uint64_t size) {
    std::string content(size, '\0');
    for (auto [l, ph] : where) {
      if (l * bs >= size) continue;
      std::string b = block_pattern(l, bs, 'i');
      content.replace(l * bs, std::min<uint64_t>(bs, size - l * bs), b.substr(0, std::min<uint64_t>(bs, size - l * bs)));
    }
    EXPECT_TRUE(read_with_uext(img, ino) == content);
    if (auto k = read_with_kernel(img, "f", dir)) {
      EXPECT_TRUE(*k == content) << "kernel read differs";
    }
  };
  check_content((triple + 1001) * bs);

  // Punch the middle of the single indirect range, then truncate past the
  // double indirect start and finally to zero.
  {
    Session s(img, ino);
    ASSERT_TRUE(punch_range(*s.vol, s.rec, 20, 100, *s.allocator).ok());
    s.close();
  }
  for (uint64_t l = 20; l < 120; ++l) where.erase(l);
  EXPECT_TRUE(testing::image_is_clean(img));
  check_content((triple + 1001) * bs);
  uint64_t odd = (12 + p + 7) * bs + 77;
  {
    Session s(img, ino);
    ASSERT_TRUE(truncate_blocks(*s.vol, s.rec, odd, *s.allocator).ok());
    s.close();
  }
  for (auto it = where.begin(); it != where.end();) it = it->first >= 12 + p + 8 ? where.erase(it) : std::next(it);
  EXPECT_TRUE(testing::image_is_clean(img));
  stat = testing::debugfs(img, "stat f");
  EXPECT_EQ(stat.find("(TIND)"), std::string::npos) << stat;
  EXPECT_NE(stat.find("(DIND)"), std::string::npos) << stat;
  EXPECT_EQ(debugfs_data_blocks(stat), where);
  check_content(odd);
  {
    Session s(img, ino);
    ASSERT_TRUE(truncate_blocks(*s.vol, s.rec, 0, *s.allocator).ok());
    EXPECT_EQ(s.rec.inode.i_blocks, 0u);
    for (uint32_t b : s.rec.inode.i_block) EXPECT_EQ(b, 0u);
    s.close();
  }
  EXPECT_TRUE(testing::image_is_clean(img));
  EXPECT_EQ(free_blocks(img), free0);
}

INSTANTIATE_TEST_SUITE_P(Kinds, IndirectMap, ::testing::Values("ext2", "ext3"));

// Credits grow with the work and never fall below what one change needs.
TEST(MapCredits, GrowWithWork) {
  testing::TempDir dir;
  std::string img = make_image(dir, {"-t", "ext4", "-b", "1024", "16M"});
  Session s(img, testing::inode_number(img, "f"));
  EXPECT_GE(map_credits(*s.vol, s.rec, 1), 11u);
  EXPECT_LT(map_credits(*s.vol, s.rec, 1), map_credits(*s.vol, s.rec, 8));
  EXPECT_LT(punch_credits(*s.vol, s.rec, 1), punch_credits(*s.vol, s.rec, 8));
  s.close();
}

}  // namespace
}  // namespace uext::fs
