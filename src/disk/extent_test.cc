#include "disk/extent.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "disk/disk_test_image.h"
#include "support/process.h"
#include "support/regex.h"

namespace uext::disk {
namespace {

using testimg::Image;
using uext::testing::TempDir;

// One line of debugfs "ex" output, or the same facts from our decoder.
struct Row {
  int level, depth, index, count;
  uint64_t logical, physical;
  uint64_t length;  // leaves only (index lengths are debugfs estimates)
  bool uninit;
  bool operator==(const Row&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Row& r) {
  return os << r.level << "/" << r.depth << " " << r.index << "/" << r.count << " L" << r.logical << " P"
            << r.physical << " len " << r.length << (r.uninit ? " uninit" : "");
}

std::vector<Row> debugfs_rows(const Image& img, const std::string& file) {
  std::istringstream in(img.debugfs("ex " + file));
  testing::Regex re(
      "^\\s*(\\d+)/\\s*(\\d+)\\s+(\\d+)/\\s*(\\d+)\\s+(\\d+) -\\s*(\\d+)\\s+(\\d+)(?: -\\s*(\\d+))?\\s+(\\d+)(.*)$");
  std::vector<Row> rows;
  std::string line;
  while (std::getline(in, line)) {
    testing::RegexMatch m;
    if (!regex_match(line, m, re)) continue;
    Row r{};
    r.level = std::stoi(m[1]);
    r.depth = std::stoi(m[2]);
    r.index = std::stoi(m[3]);
    r.count = std::stoi(m[4]);
    r.logical = std::stoull(m[5]);
    r.physical = std::stoull(m[7]);
    bool leaf = r.level == r.depth;
    r.length = leaf ? std::stoull(m[9]) : 0;
    r.uninit = m[10].str().find("Uninit") != std::string::npos;
    rows.push_back(r);
  }
  return rows;
}

struct TreeWalk {
  explicit TreeWalk(const Image& image) : img(image) {}
  const Image& img;
  ExtentLimits limits;
  uint32_t csum_seed = 0;
  int depth = 0;
  std::vector<Row> rows;
  std::vector<uint64_t> node_blocks;

  void walk(const ExtentNode& node, int level) {
    int n = node.header.eh_entries;
    if (node.header.eh_depth == 0) {
      for (int i = 0; i < n; ++i) {
        const Extent& e = node.extents[static_cast<size_t>(i)];
        rows.push_back({level, depth, i + 1, n, e.logical, e.physical, e.length, e.uninit});
      }
      return;
    }
    for (int i = 0; i < n; ++i) {
      const ExtentIndex& x = node.indexes[static_cast<size_t>(i)];
      rows.push_back({level, depth, i + 1, n, x.logical, x.leaf, 0, false});
      Bytes child = img.block(x.leaf);
      auto decoded = decode_extent_node(child, node.header.eh_depth - 1, limits);
      ASSERT_TRUE(decoded.ok()) << decoded.error().message();
      node_blocks.push_back(x.leaf);
      walk(*decoded, level + 1);
    }
  }
};

// A sparse file with `runs` one-block data runs separated by holes: each
// run becomes its own extent, which forces an extent tree.
void make_sparse(const std::string& path, int runs, uint32_t block_size) {
  std::ofstream f(path, std::ios::binary);
  std::string data(block_size, 'd');
  for (int i = 0; i < runs; ++i) {
    f.seekp(static_cast<std::streamoff>(2 * i) * block_size);
    data[0] = static_cast<char>('A' + i % 26);
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
}

void check_file(const Image& img, const std::string& file, int expect_depth) {
  TreeWalk w{img};
  w.limits = {img.first_data_block(), img.blocks_count()};
  Bytes inode = img.inode(file);
  ASSERT_EQ(inode.size(), img.inode_size());
  Bytes iblock = inode.subspan(40, 60);
  auto root = decode_extent_node(iblock, -1, w.limits);
  ASSERT_TRUE(root.ok()) << root.error().message();
  ASSERT_EQ(root->header.eh_depth, expect_depth);
  EXPECT_EQ(root->header.eh_max, 4);
  w.depth = root->header.eh_depth;
  w.walk(*root, 0);
  if (::testing::Test::HasFatalFailure()) return;
  auto want = debugfs_rows(img, file);
  ASSERT_FALSE(want.empty());
  ASSERT_EQ(w.rows.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(w.rows[i], want[i]) << "row " << i;

  // Round trips: re-encoding reproduces the root and every tree block.
  auto root_copy = testimg::to_vec(iblock);
  encode_extent_node(*root, root_copy);
  EXPECT_EQ(root_copy, testimg::to_vec(iblock));
  uint32_t seed = img.metadata_csum() ? img.inode_csum_seed(file) : 0;
  for (uint64_t b : w.node_blocks) {
    auto original = img.block_copy(b);
    auto node = decode_extent_node(original, -1, w.limits);
    ASSERT_TRUE(node.ok());
    auto copy = original;
    encode_extent_node(*node, copy);
    EXPECT_EQ(copy, original) << "block " << b;
    std::vector<std::byte> fresh(original.size());
    encode_extent_node(*node, fresh);
    size_t used = 12 + 12 * size_t{node->header.eh_entries};
    EXPECT_TRUE(std::equal(fresh.begin(), fresh.begin() + static_cast<ptrdiff_t>(used), original.begin()));
    if (!img.metadata_csum()) continue;
    auto st = verify_extent_block_checksum(seed, original);
    EXPECT_TRUE(st.ok()) << st.error().message();
    EXPECT_EQ(extent_block_checksum(seed, original), le32(original, 12 + 12 * size_t{node->header.eh_max}));
    set_extent_block_checksum(seed, fresh);
    EXPECT_TRUE(verify_extent_block_checksum(seed, fresh).ok());
    copy[14] ^= std::byte{0x04};
    auto bad = verify_extent_block_checksum(seed, copy);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error().code(), kErrBadChecksum);
    set_extent_block_checksum(seed, copy);
    EXPECT_TRUE(verify_extent_block_checksum(seed, copy).ok());
  }
}

TEST(ExtentImage, DepthTwoTreeOnOneKiBBlocksMatchesDebugfs) {
  TempDir dir;
  std::filesystem::create_directories(dir / "src");
  make_sparse(dir / "src/sparse", 400, 1024);
  make_sparse(dir / "src/small", 3, 1024);
  Image img(dir / "img", dir / "src", 1024, "16M");
  ASSERT_TRUE(img.metadata_csum());
  check_file(img, "/sparse", 2);
  check_file(img, "/small", 0);
}

TEST(ExtentImage, DepthOneTreeOnFourKiBBlocksMatchesDebugfs) {
  TempDir dir;
  std::filesystem::create_directories(dir / "src");
  make_sparse(dir / "src/sparse", 10, 4096);
  {
    std::ofstream big(dir / "src/contiguous", std::ios::binary);
    big << std::string(3 << 20, 'c');
  }
  Image img(dir / "img", dir / "src", 4096, "32M", {"-O", "^metadata_csum"});
  check_file(img, "/sparse", 1);
  check_file(img, "/contiguous", 0);
}

// ---- synthetic nodes ----

const ExtentLimits kLimits{1, 100000};

std::vector<std::byte> make_leaf(size_t size, std::vector<Extent> extents, uint16_t eh_max) {
  ExtentNode n;
  n.header.eh_max = eh_max;
  n.header.eh_depth = 0;
  n.extents = std::move(extents);
  std::vector<std::byte> b(size);
  encode_extent_node(n, b);
  return b;
}

std::vector<std::byte> make_index(size_t size, std::vector<ExtentIndex> idx, uint16_t eh_max, uint16_t depth) {
  ExtentNode n;
  n.header.eh_max = eh_max;
  n.header.eh_depth = depth;
  n.indexes = std::move(idx);
  std::vector<std::byte> b(size);
  encode_extent_node(n, b);
  return b;
}

void expect_corrupt(Bytes raw, int depth, const char* what, const ExtentLimits& lim = kLimits) {
  auto r = decode_extent_node(raw, depth, lim);
  ASSERT_FALSE(r.ok()) << what;
  EXPECT_EQ(r.error().code(), kErrCorrupted) << what;
  EXPECT_NE(r.error().message().find("extent node"), std::string::npos) << r.error().message();
}

TEST(ExtentCodec, UninitAndHighBitsRoundTrip) {
  std::vector<Extent> ex = {{0, 32768, 1000, false},
                            {32768, 32767, 50, true},
                            {70000, 1, 99999, true}};
  auto b = make_leaf(60, ex, 4);
  EXPECT_EQ(le16(b, 12 + 4), 32768);       // the largest initialized extent
  EXPECT_EQ(le16(b, 24 + 4), 32768 + 32767);  // the largest unwritten one
  auto r = decode_extent_node(b, 0, kLimits);
  ASSERT_TRUE(r.ok()) << r.error().message();
  ASSERT_EQ(r->extents.size(), 3u);
  EXPECT_EQ(r->extents[1].length, 32767);
  EXPECT_TRUE(r->extents[1].uninit);
  EXPECT_FALSE(r->extents[0].uninit);
  EXPECT_EQ(r->extents[0].length, 32768);
  // 48-bit block numbers split into hi:lo.
  ExtentLimits huge{0, 1ull << 48};
  auto hb = make_leaf(60, {{5, 2, 0xABCD12345678ull, false}}, 4);
  EXPECT_EQ(le16(hb, 12 + 6), 0xABCD);
  EXPECT_EQ(le32(hb, 12 + 8), 0x12345678u);
  EXPECT_EQ(decode_extent_node(hb, 0, huge)->extents[0].physical, 0xABCD12345678ull);
  auto ib = make_index(60, {{0, 0xBEEF00000010ull}, {9, 0x20}}, 4, 1);
  EXPECT_EQ(le32(ib, 12 + 4), 0x10u);
  EXPECT_EQ(le16(ib, 12 + 8), 0xBEEF);
  EXPECT_EQ(decode_extent_node(ib, 1, huge)->indexes[0].leaf, 0xBEEF00000010ull);
  EXPECT_EQ(decode_extent_node(ib, -1, huge)->indexes[1].logical, 9u);
  // blocks_count 0: no upper bound.
  EXPECT_TRUE(decode_extent_node(hb, 0, ExtentLimits{0, 0}).ok());
}

TEST(ExtentCodec, EveryValidationRule) {
  auto good = make_leaf(60, {{0, 4, 100, false}, {10, 2, 200, false}}, 4);
  ASSERT_TRUE(decode_extent_node(good, 0, kLimits).ok());
  auto m = good;
  put_le16(m, 0, 0xF30B);
  expect_corrupt(m, 0, "magic");
  m = good;
  put_le16(m, 6, 6);
  expect_corrupt(m, -1, "depth > 5");
  expect_corrupt(good, 1, "unexpected depth");
  m = good;
  put_le16(m, 4, 0);
  put_le16(m, 2, 0);
  expect_corrupt(m, 0, "eh_max 0");
  m = good;
  put_le16(m, 4, 5);
  expect_corrupt(m, 0, "eh_max beyond 60 bytes");
  m = good;
  put_le16(m, 2, 5);
  expect_corrupt(m, 0, "entries > max");
  expect_corrupt(make_index(60, {}, 4, 1), 1, "index node without entries");
  expect_corrupt(make_leaf(60, {{0, 0, 100, false}}, 4), 0, "zero length");
  expect_corrupt(make_leaf(60, {{0, 4, 100, false}, {3, 1, 200, false}}, 4), 0, "overlapping extents");
  expect_corrupt(make_leaf(60, {{10, 4, 100, false}, {3, 1, 200, false}}, 4), 0, "unsorted extents");
  expect_corrupt(make_leaf(60, {{10, 4, 100, false}, {10, 1, 200, false}}, 4), 0, "duplicate start");
  EXPECT_TRUE(decode_extent_node(make_leaf(60, {{0, 4, 100, false}, {4, 1, 200, false}}, 4), 0, kLimits).ok());
  expect_corrupt(make_leaf(60, {{0xFFFFFFFF, 2, 100, false}}, 4), 0, "logical overflow");
  expect_corrupt(make_leaf(60, {{0, 1, 0, false}}, 4), 0, "below first_data_block");
  expect_corrupt(make_leaf(60, {{0, 1, 100000, false}}, 4), 0, "at blocks_count");
  expect_corrupt(make_leaf(60, {{0, 10, 99995, false}}, 4), 0, "runs past blocks_count");
  EXPECT_TRUE(decode_extent_node(make_leaf(60, {{0, 5, 99995, false}}, 4), 0, kLimits).ok());
  expect_corrupt(make_index(60, {{5, 10}, {5, 11}}, 4, 1), 1, "index not increasing");
  expect_corrupt(make_index(60, {{5, 10}, {2, 11}}, 4, 1), 1, "index decreasing");
  expect_corrupt(make_index(60, {{5, 200000}}, 4, 1), 1, "index beyond the filesystem");
  expect_corrupt(make_index(60, {{5, 0}}, 4, 1), 1, "index below first_data_block");
  // Too small to hold a header.
  expect_corrupt(Bytes(good).first(11), -1, "short buffer");
  expect_corrupt(Bytes(good).first(0), -1, "empty buffer");
  // A whole block allows (size - 12) / 12 entries.
  auto blk = make_leaf(1024, {{0, 1, 5, false}}, 84);
  EXPECT_TRUE(decode_extent_node(blk, 0, kLimits).ok());
  put_le16(blk, 4, 85);
  expect_corrupt(blk, 0, "eh_max 85 in 1 KiB");
}

TEST(ExtentChecksum, TailRules) {
  auto b = make_leaf(1024, {{0, 1, 5, false}, {7, 3, 9, true}}, 84);
  set_extent_block_checksum(42, b);
  EXPECT_TRUE(verify_extent_block_checksum(42, b).ok());
  EXPECT_EQ(le32(b, 1020), extent_block_checksum(42, b));
  EXPECT_EQ(verify_extent_block_checksum(43, b).error().code(), kErrBadChecksum);
  // Root-sized buffers have no room for a tail; eh_max too large neither.
  auto root = make_leaf(60, {{0, 1, 5, false}}, 4);
  EXPECT_EQ(verify_extent_block_checksum(1, root).error().code(), kErrCorrupted);
  set_extent_block_checksum(1, root);  // must not write out of bounds
  put_le16(b, 4, 85);
  EXPECT_FALSE(verify_extent_block_checksum(1, b).ok());
  std::vector<std::byte> tiny(4);
  EXPECT_FALSE(verify_extent_block_checksum(1, tiny).ok());
  (void)extent_block_checksum(1, tiny);
}

TEST(ExtentFuzz, RandomBytesNeverCrash) {
  uint64_t state = 0xdeadbeefcafef00dull;
  for (int iter = 0; iter < 5000; ++iter) {
    size_t size = iter % 3 == 0 ? 60 : (iter % 3 == 1 ? 1024 : static_cast<size_t>(iter % 97));
    std::vector<std::byte> b(size);
    testimg::fill_random(b, state);
    if (size >= 12 && iter % 2) {
      put_le16(b, 0, kExtentMagic);
      put_le16(b, 2, static_cast<uint16_t>(state % 8));
      put_le16(b, 4, static_cast<uint16_t>(size == 60 ? 4 : (state >> 8) % 90));
      put_le16(b, 6, static_cast<uint16_t>((state >> 16) % 3));
    }
    (void)decode_extent_node(b, -1, kLimits);
    (void)decode_extent_node(b, 0, ExtentLimits{0, 0});
    (void)verify_extent_block_checksum(1, b);
    set_extent_block_checksum(1, b);
    (void)extent_block_checksum(1, b);
  }
}

}  // namespace
}  // namespace uext::disk
