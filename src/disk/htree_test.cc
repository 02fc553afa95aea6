#include "disk/htree.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "disk/dirent.h"
#include "disk/disk_test_image.h"
#include "support/process.h"
#include "support/regex.h"

namespace uext::disk {
namespace {

using testimg::Image;
using uext::testing::TempDir;

// Makes DIR/big with `count` empty files whose names are `min_len..max_len`
// bytes long; every third name carries UTF-8 (bytes >= 0x80) so signed and
// unsigned hashing differ.
void make_big_dir(const std::string& root, int count, int min_len, int max_len, uint32_t seed) {
  std::filesystem::create_directories(root + "/big");
  std::mt19937 rng(seed);
  for (int i = 0; i < count; ++i) {
    char prefix[16];
    std::snprintf(prefix, sizeof prefix, "%05d_", i);
    std::string name = prefix;
    int len = min_len + static_cast<int>(rng() % static_cast<uint32_t>(max_len - min_len + 1));
    while (static_cast<int>(name.size()) < len) name.push_back(static_cast<char>('a' + rng() % 26));
    if (i % 3 == 0) name.insert(6, "\xc3\xa9\xc3\xbc");
    std::ofstream(root + "/big/" + name).put('x');
  }
}

struct LeafEntry {
  uint32_t inode;
  uint32_t hash, minor;
  uint32_t rec_len;
  std::string name;
  bool operator==(const LeafEntry&) const = default;
};

std::ostream& operator<<(std::ostream& os, const LeafEntry& e) {
  return os << e.inode << " " << std::hex << e.hash << "-" << e.minor << std::dec << " (" << e.rec_len << ") "
            << e.name;
}

// Walks an indexed directory the way debugfs's "htree" command prints it and
// collects the same facts, so the two can be compared line for line.
struct Walker {
  explicit Walker(const Image& image) : img(image) {}
  const Image& img;
  std::vector<uint64_t> blocks;  // logical -> physical
  DxFormat format;
  uint8_t version = 0;
  uint32_t seed[4] = {};
  uint32_t csum_seed = 0;
  std::vector<std::string> index_lines;  // "Entry #i: Hash 0x..., block N"
  std::vector<std::pair<int, int>> count_limits;
  std::vector<LeafEntry> leaf_entries;
  std::vector<std::string> names_by_leaf;  // "L:name" for the lookup test

  void emit_node(const std::vector<DxEntry>& entries, uint16_t limit, int level) {
    count_limits.push_back({static_cast<int>(entries.size()), limit});
    char buf[96];
    for (size_t i = 0; i < entries.size(); ++i) {
      std::snprintf(buf, sizeof buf, "Entry #%zu: Hash 0x%08x%s, block %u", i, entries[i].hash,
                    (entries[i].hash & 1) ? " (**)" : "", entries[i].block);
      index_lines.push_back(buf);
    }
    for (size_t i = 0; i < entries.size(); ++i) {
      std::snprintf(buf, sizeof buf, "Entry #%zu: Hash 0x%08x, block %u", i, entries[i].hash, entries[i].block);
      index_lines.push_back(buf);
      ASSERT_LT(entries[i].block, blocks.size());
      Bytes child = img.block(blocks[entries[i].block]);
      if (level > 0) {
        auto node = parse_dx_node(child, format);
        ASSERT_TRUE(node.ok()) << node.error().message();
        if (format.has_tail) {
          EXPECT_TRUE(verify_dx_checksum(csum_seed, child, false).ok());
        }
        emit_node(node->entries, node->limit, level - 1);
      } else {
        leaf(entries[i].block, child);
      }
    }
  }

  void leaf(uint32_t logical, Bytes block) {
    auto dirents = parse_dir_block(block, {format.block_size, true, format.has_tail});
    ASSERT_TRUE(dirents.ok()) << dirents.error().message();
    if (format.has_tail) {
      auto st = verify_dir_block_checksum(csum_seed, block);
      EXPECT_TRUE(st.ok()) << st.error().message();
    }
    for (const auto& d : *dirents) {
      auto h = dx_hash(d.name, version, seed);
      ASSERT_TRUE(h.ok());
      leaf_entries.push_back({d.inode, h->major, h->minor, d.rec_len, std::string(d.name)});
      names_by_leaf.push_back(std::to_string(logical) + ":" + std::string(d.name));
    }
  }
};

struct DebugfsDump {
  std::vector<std::string> index_lines;
  std::vector<std::pair<int, int>> count_limits;
  std::vector<LeafEntry> leaf_entries;
};

DebugfsDump parse_debugfs_htree(const std::string& out) {
  DebugfsDump d;
  std::istringstream in(out);
  std::string line;
  testing::Regex leaf_re("(\\d+) 0x([0-9a-f]{8})-([0-9a-f]{8}) \\((\\d+)\\) (\\S+)");
  int pending_count = -1;
  while (std::getline(in, line)) {
    if (line.rfind("Entry #", 0) == 0) {
      d.index_lines.push_back(line);
    } else if (std::sscanf(line.c_str(), "Number of entries (count): %d", &pending_count) == 1) {
    } else if (int limit; std::sscanf(line.c_str(), "Number of entries (limit): %d", &limit) == 1) {
      d.count_limits.push_back({pending_count, limit});
    } else {
      for (const auto& m : regex_find_all(line, leaf_re)) {
        d.leaf_entries.push_back({static_cast<uint32_t>(std::stoul(m[1])),
                                  static_cast<uint32_t>(std::stoul(m[2], nullptr, 16)),
                                  static_cast<uint32_t>(std::stoul(m[3], nullptr, 16)),
                                  static_cast<uint32_t>(std::stoul(m[4])), m[5]});
      }
    }
  }
  return d;
}

void check_htree_image(const Image& img, int expect_levels) {
  ASSERT_EQ(img.def_hash_version(), dx_hash_version::kHalfMd4);
  std::string dump = img.debugfs("htree /big");
  ASSERT_NE(dump.find("Root node dump"), std::string::npos) << "directory was not indexed:\n" << dump.substr(0, 500);
  EXPECT_EQ(dump.find("EXPECTED"), std::string::npos) << "debugfs reports a bad checksum";

  Walker w{img};
  w.blocks = img.data_blocks("/big");
  w.format = {img.block_size(), img.metadata_csum(), false};
  img.hash_seed(w.seed);
  if (img.metadata_csum()) w.csum_seed = img.inode_csum_seed("/big");

  Bytes root_block = img.block(w.blocks.at(0));
  auto root = parse_dx_root(root_block, w.format);
  ASSERT_TRUE(root.ok()) << root.error().message();
  EXPECT_EQ(root->indirect_levels, expect_levels);
  EXPECT_EQ(root->hash_version, img.def_hash_version());
  w.version = root->hash_version + (img.unsigned_hash() ? 3 : 0);
  if (img.metadata_csum()) {
    auto st = verify_dx_checksum(w.csum_seed, root_block, true);
    EXPECT_TRUE(st.ok()) << st.error().message();
  }
  w.emit_node(root->entries, root->limit, root->indirect_levels);
  if (::testing::Test::HasFatalFailure()) return;

  DebugfsDump want = parse_debugfs_htree(dump);
  EXPECT_EQ(w.count_limits, want.count_limits);
  EXPECT_EQ(w.index_lines, want.index_lines);
  ASSERT_EQ(w.leaf_entries.size(), want.leaf_entries.size());
  for (size_t i = 0; i < want.leaf_entries.size(); ++i) ASSERT_EQ(w.leaf_entries[i], want.leaf_entries[i]) << i;
  ASSERT_GT(want.leaf_entries.size(), 1000u);

  // Lookup: descending by dx_find_entry must reach the leaf holding each name.
  for (const std::string& tagged : w.names_by_leaf) {
    size_t colon = tagged.find(':');
    uint32_t want_leaf = static_cast<uint32_t>(std::stoul(tagged.substr(0, colon)));
    std::string name = tagged.substr(colon + 1);
    if (name == "." || name == "..") continue;
    auto h = dx_hash(name, w.version, w.seed);
    ASSERT_TRUE(h.ok());
    std::vector<DxEntry> entries = root->entries;
    uint32_t at = entries[dx_find_entry(entries, h->major)].block;
    for (int level = root->indirect_levels; level > 0; --level) {
      auto node = parse_dx_node(img.block(w.blocks.at(at)), w.format);
      ASSERT_TRUE(node.ok());
      at = node->entries[dx_find_entry(node->entries, h->major)].block;
    }
    ASSERT_EQ(at, want_leaf) << name;
  }
}

class HtreeImage : public ::testing::Test {
 protected:
  TempDir dir;
};

TEST_F(HtreeImage, TwoLevelTreeWithChecksumsMatchesDebugfs) {
  make_big_dir(dir / "src", 2500, 100, 200, 5);
  Image img(dir / "img", dir / "src", 1024, "32M");
  // mke2fs -d writes linear directories; e2fsck -D indexes them.
  auto r = uext::testing::run({"e2fsck", "-fyD", img.path()});
  ASSERT_LE(r.exit_code, 1) << r.out << r.err;
  img.reload();
  check_htree_image(img, 1);
}

TEST_F(HtreeImage, OneLevelTreeWithoutChecksumsMatchesDebugfs) {
  make_big_dir(dir / "src", 3000, 8, 40, 6);
  Image img(dir / "img", dir / "src", 4096, "32M", {"-O", "^metadata_csum"});
  auto r = uext::testing::run({"e2fsck", "-fyD", img.path()});
  ASSERT_LE(r.exit_code, 1) << r.out << r.err;
  img.reload();
  ASSERT_FALSE(img.metadata_csum());
  check_htree_image(img, 0);
}

TEST_F(HtreeImage, ChecksumCatchesBitFlipAndSetRepairs) {
  make_big_dir(dir / "src", 2500, 100, 200, 7);
  Image img(dir / "img", dir / "src", 1024, "32M");
  ASSERT_LE(uext::testing::run({"e2fsck", "-fyD", img.path()}).exit_code, 1);
  img.reload();
  auto blocks = img.data_blocks("/big");
  uint32_t seed = img.inode_csum_seed("/big");
  DxFormat fmt{img.block_size(), true, false};
  auto root_bytes = img.block_copy(blocks.at(0));
  auto root = parse_dx_root(root_bytes, fmt);
  ASSERT_TRUE(root.ok());
  auto node_bytes = img.block_copy(blocks.at(root->entries[0].block));
  for (auto* buf : {&root_bytes, &node_bytes}) {
    bool is_root = buf == &root_bytes;
    ASSERT_TRUE(verify_dx_checksum(seed, *buf, is_root).ok());
    (*buf)[40] ^= std::byte{0x10};  // inside the live entries of both kinds
    auto st = verify_dx_checksum(seed, *buf, is_root);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.error().code(), kErrBadChecksum);
    set_dx_checksum(seed, *buf, is_root);
    EXPECT_TRUE(verify_dx_checksum(seed, *buf, is_root).ok());
    // A wrong inode seed must not verify either.
    EXPECT_FALSE(verify_dx_checksum(seed + 1, *buf, is_root).ok());
  }
}

// ---- synthetic blocks: every validation rule ----

std::vector<std::byte> make_root(uint32_t bs, bool tail, uint16_t count) {
  std::vector<std::byte> b(bs);
  put_le32(b, 0, 2);
  put_le16(b, 4, 12);
  put_le8(b, 6, 1);
  put_le8(b, 7, 2);
  put_le8(b, 8, '.');
  put_le32(b, 12, 2);
  put_le16(b, 16, encode_rec_len(bs - 12, bs));
  put_le8(b, 18, 2);
  put_le8(b, 19, 2);
  put_le8(b, 20, '.');
  put_le8(b, 21, '.');
  put_le8(b, 24 + 4, dx_hash_version::kHalfMd4);
  put_le8(b, 24 + 5, 8);
  uint16_t limit = static_cast<uint16_t>((bs - 32 - (tail ? 8 : 0)) / 8);
  put_le16(b, 32, limit);
  put_le16(b, 34, count);
  for (uint16_t i = 0; i < count; ++i) {
    if (i) put_le32(b, 32 + 8 * i, 0x1000u * i);
    put_le32(b, 36 + 8 * i, i + 1u);
  }
  return b;
}

std::vector<std::byte> make_node(uint32_t bs, bool tail, uint16_t count) {
  std::vector<std::byte> b(bs);
  put_le16(b, 4, encode_rec_len(bs, bs));
  uint16_t limit = static_cast<uint16_t>((bs - 8 - (tail ? 8 : 0)) / 8);
  put_le16(b, 8, limit);
  put_le16(b, 10, count);
  for (uint16_t i = 0; i < count; ++i) {
    if (i) put_le32(b, 8 + 8 * i, 0x2000u * i);
    put_le32(b, 12 + 8 * i, 100u + i);
  }
  return b;
}

void expect_corrupt(const Result<DxRoot>& r, const char* what) {
  ASSERT_FALSE(r.ok()) << what;
  EXPECT_EQ(r.error().code(), kErrCorrupted) << what;
  EXPECT_FALSE(r.error().message().empty());
}

TEST(HtreeParse, ValidSyntheticRootAndNode) {
  for (uint32_t bs : {1024u, 4096u, 65536u}) {
    for (bool tail : {false, true}) {
      DxFormat fmt{bs, tail, false};
      auto root = parse_dx_root(make_root(bs, tail, 5), fmt);
      ASSERT_TRUE(root.ok()) << bs << " " << root.error().message();
      EXPECT_EQ(root->entries.size(), 5u);
      EXPECT_EQ(root->entries[0].hash, 0u);
      EXPECT_EQ(root->entries[3].hash, 0x3000u);
      EXPECT_EQ(root->entries[3].block, 4u);
      auto node = parse_dx_node(make_node(bs, tail, 3), fmt);
      ASSERT_TRUE(node.ok()) << node.error().message();
      EXPECT_EQ(node->entries[2].block, 102u);
    }
  }
}

TEST(HtreeParse, RootValidationRules) {
  const uint32_t bs = 4096;
  DxFormat fmt{bs, true, false};
  auto mutate = [&](auto fn) {
    auto b = make_root(bs, true, 4);
    fn(b);
    return parse_dx_root(b, fmt);
  };
  expect_corrupt(mutate([](auto& b) { put_le16(b, 4, 16); }), "dot rec_len");
  expect_corrupt(mutate([](auto& b) { put_le8(b, 6, 2); }), "dot name_len");
  expect_corrupt(mutate([](auto& b) { put_le8(b, 8, 'x'); }), "dot name");
  expect_corrupt(mutate([](auto& b) { put_le16(b, 16, 1000); }), "dotdot rec_len");
  expect_corrupt(mutate([](auto& b) { put_le8(b, 21, 'x'); }), "dotdot name");
  expect_corrupt(mutate([](auto& b) { put_le32(b, 24, 1); }), "reserved_zero");
  expect_corrupt(mutate([](auto& b) { put_le8(b, 29, 12); }), "info_length");
  expect_corrupt(mutate([](auto& b) { put_le8(b, 28, 4); }), "hash version 4 on disk");
  expect_corrupt(mutate([](auto& b) { put_le8(b, 28, 9); }), "hash version 9");
  expect_corrupt(mutate([](auto& b) { put_le8(b, 31, 1); }), "incompat hash flag");
  expect_corrupt(mutate([](auto& b) { put_le8(b, 30, 2); }), "two indirect levels without largedir");
  expect_corrupt(mutate([](auto& b) { put_le16(b, 32, 508); }), "limit ignoring the tail");
  expect_corrupt(mutate([](auto& b) { put_le16(b, 34, 0); }), "count 0");
  expect_corrupt(mutate([](auto& b) { put_le16(b, 34, 508); }), "count > limit");
  expect_corrupt(mutate([](auto& b) { put_le32(b, 32 + 8 * 3, 0x1000); }), "hash order");
  // Equal neighbouring hashes do occur (collision runs) and are accepted.
  EXPECT_TRUE(mutate([](auto& b) { put_le32(b, 32 + 8 * 3, 0x2000); }).ok());
  // siphash roots parse; hashing them is what is unsupported.
  EXPECT_TRUE(mutate([](auto& b) { put_le8(b, 28, 6); }).ok());
  // largedir allows a third level.
  auto b = make_root(bs, true, 4);
  put_le8(b, 30, 2);
  EXPECT_TRUE(parse_dx_root(b, {bs, true, true}).ok());
  put_le8(b, 30, 3);
  EXPECT_FALSE(parse_dx_root(b, {bs, true, true}).ok());
  // Wrong buffer size.
  auto small = make_root(bs, true, 4);
  EXPECT_FALSE(parse_dx_root(Bytes(small).first(100), fmt).ok());
  EXPECT_FALSE(parse_dx_root(Bytes(small).first(0), fmt).ok());
}

TEST(HtreeParse, NodeValidationRules) {
  const uint32_t bs = 1024;
  DxFormat fmt{bs, false, false};
  auto b = make_node(bs, false, 3);
  put_le32(b, 0, 5);
  EXPECT_FALSE(parse_dx_node(b, fmt).ok()) << "live inode in the fake entry";
  b = make_node(bs, false, 3);
  put_le16(b, 4, 12);
  EXPECT_FALSE(parse_dx_node(b, fmt).ok()) << "fake entry not spanning the block";
  b = make_node(bs, false, 3);
  EXPECT_FALSE(parse_dx_node(b, {bs, true, false}).ok()) << "limit without room for a tail";
  put_le16(b, 10, 200);
  EXPECT_FALSE(parse_dx_node(b, fmt).ok()) << "count > limit";
  // 64 KiB blocks encode a whole-block rec_len as 65535 or 0.
  auto big = make_node(65536, true, 2);
  EXPECT_EQ(le16(big, 4), 65535);
  EXPECT_TRUE(parse_dx_node(big, {65536, true, false}).ok());
  put_le16(big, 4, 0);
  EXPECT_TRUE(parse_dx_node(big, {65536, true, false}).ok());
}

TEST(HtreeChecksum, SetThenVerifyAndTailRules) {
  for (bool is_root : {true, false}) {
    auto b = is_root ? make_root(4096, true, 7) : make_node(4096, true, 7);
    set_dx_checksum(0x1234, b, is_root);
    EXPECT_TRUE(verify_dx_checksum(0x1234, b, is_root).ok());
    // Bytes past `count` entries are not covered; dt_reserved is.
    auto c = b;
    c[(is_root ? 32 : 8) + 8 * 7 + 3] ^= std::byte{1};
    EXPECT_TRUE(verify_dx_checksum(0x1234, c, is_root).ok());
    c = b;
    c[4096 - 8] ^= std::byte{1};
    EXPECT_EQ(verify_dx_checksum(0x1234, c, is_root).error().code(), kErrBadChecksum);
    // A limit that leaves no room for the tail is reported, not read past.
    c = b;
    put_le16(c, is_root ? 32 : 8, 600);
    EXPECT_EQ(verify_dx_checksum(0x1234, c, is_root).error().code(), kErrCorrupted);
    c = b;
    put_le16(c, is_root ? 34 : 10, 600);
    EXPECT_FALSE(verify_dx_checksum(0x1234, c, is_root).ok());
  }
  // Tiny buffers are rejected cleanly.
  std::vector<std::byte> tiny(10);
  EXPECT_FALSE(verify_dx_checksum(0, tiny, true).ok());
  EXPECT_FALSE(verify_dx_checksum(0, tiny, false).ok());
  set_dx_checksum(0, tiny, true);
}

TEST(HtreeFind, LastEntryNotAboveHash) {
  std::vector<DxEntry> e = {{0, 10}, {0x100, 11}, {0x200, 12}, {0x200, 13}, {0x300, 14}};
  EXPECT_EQ(dx_find_entry(e, 0), 0u);
  EXPECT_EQ(dx_find_entry(e, 0xff), 0u);
  EXPECT_EQ(dx_find_entry(e, 0x100), 1u);
  EXPECT_EQ(dx_find_entry(e, 0x1ff), 1u);
  EXPECT_EQ(dx_find_entry(e, 0x200), 3u);  // the kernel's binary search lands on the last equal one
  EXPECT_EQ(dx_find_entry(e, 0x2ff), 3u);
  EXPECT_EQ(dx_find_entry(e, 0xffffffff), 4u);
  EXPECT_EQ(dx_find_entry({{0, 1}}, 5), 0u);
  EXPECT_EQ(dx_find_entry({}, 5), 0u);
  // Against a linear scan on random tables.
  std::mt19937 rng(3);
  for (int t = 0; t < 200; ++t) {
    std::vector<DxEntry> v(1 + rng() % 50);
    uint32_t h = 0;
    for (size_t i = 1; i < v.size(); ++i) v[i].hash = h += rng() % 1000;
    for (int q = 0; q < 50; ++q) {
      uint32_t x = rng() % (h + 1000);
      size_t want = 0;
      for (size_t i = 1; i < v.size(); ++i)
        if (v[i].hash <= x) want = i;
      ASSERT_EQ(dx_find_entry(v, x), want);
    }
  }
}

TEST(HtreeFuzz, RandomBytesNeverCrash) {
  uint64_t state = 0x9e3779b97f4a7c15ull;
  for (int iter = 0; iter < 3000; ++iter) {
    uint32_t bs = iter % 2 ? 1024 : 4096;
    std::vector<std::byte> b(bs);
    testimg::fill_random(b, state);
    // Seed half the cases with plausible headers so parsing gets deeper.
    if (iter % 4 < 2) {
      auto base = iter % 4 == 0 ? make_root(bs, iter % 8 < 4, 1 + iter % 50) : make_node(bs, true, 1 + iter % 50);
      size_t keep = 40 + static_cast<size_t>(state % 400);
      std::copy(base.begin(), base.begin() + std::min<size_t>(keep, bs), b.begin());
      if (iter % 3 == 0) b[state % bs] ^= std::byte{static_cast<unsigned char>(1u << (iter % 8))};
    }
    DxFormat fmt{bs, iter % 3 == 0, iter % 5 == 0};
    (void)parse_dx_root(b, fmt);
    (void)parse_dx_node(b, fmt);
    (void)verify_dx_checksum(1, b, true);
    (void)verify_dx_checksum(1, b, false);
    (void)parse_dx_root(Bytes(b).first(iter % 64), fmt);
  }
}

}  // namespace
}  // namespace uext::disk
