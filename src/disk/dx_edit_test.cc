#include "disk/dx_edit.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <functional>
#include <set>
#include <unordered_map>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "disk/dir_edit.h"
#include "disk/disk_test_image.h"
#include "support/process.h"
#include "uext/filesystem.h"
#include "support/regex.h"

namespace uext::disk {
namespace {

using testimg::Image;
using uext::testing::TempDir;
using Block = std::vector<std::byte>;

// A directory held in memory, grown the way ext4_add_entry and
// ext4_dx_add_entry grow one, using only the functions under test; blocks
// are appended at the end, as ext4_append does. This is the sequence the
// namespace layer follows with journaled blocks.
struct MemDir {
  HtreeFormat fmt;
  bool dir_index = true;
  std::vector<Block> blocks;
  bool indexed = false;
  // Counters of what happened, so tests know which paths they covered.
  int leaf_splits = 0, node_splits = 0, levels_added = 0;

  MemDir(const HtreeFormat& f, uint32_t ino, uint32_t parent) : fmt(f) {
    blocks.emplace_back(fmt.block_size);
    EXPECT_TRUE(init_dir_block_with_dot_dotdot(blocks[0], fmt.leaf(), ino, parent).ok());
  }

  uint32_t append() {
    blocks.emplace_back(fmt.block_size);
    return static_cast<uint32_t>(blocks.size() - 1);
  }
  uint8_t root_version() const { return le8(blocks[0], 24 + 4); }

  struct Frame {
    uint32_t block;  // the index block (0 for the root)
    std::vector<DxEntry> entries;
    size_t at;
  };

  std::vector<Frame> probe(uint32_t hash) const {
    std::vector<Frame> path;
    auto root = parse_dx_root(blocks[0], fmt.dx());
    EXPECT_TRUE(root.ok()) << root.error().message();
    path.push_back({0, root->entries, dx_find_entry(root->entries, hash)});
    for (int level = 0; level < root->indirect_levels; ++level) {
      uint32_t child = path.back().entries[path.back().at].block;
      auto node = parse_dx_node(blocks.at(child), fmt.dx());
      EXPECT_TRUE(node.ok()) << node.error().message();
      path.push_back({child, node->entries, dx_find_entry(node->entries, hash)});
    }
    return path;
  }

  Status add(const std::string& name, uint32_t ino, uint8_t type) {
    if (!indexed) {
      for (auto& b : blocks) {
        UEXT_ASSIGN_OR_RETURN(auto off, insert_entry(b, fmt.leaf(), name, ino, type));
        if (off) return {};
      }
      if (blocks.size() == 1 && dir_index) {
        uint32_t a = append(), b = append();
        UEXT_ASSIGN_OR_RETURN(LeafSplit s, make_indexed_dir(blocks[0], blocks[a], a, blocks[b], b, fmt));
        indexed = true;
        ++leaf_splits;
        UEXT_ASSIGN_OR_RETURN(uint32_t h, htree_hash(name, root_version(), fmt));
        UEXT_ASSIGN_OR_RETURN(auto off, insert_entry(blocks[s.goes_to_new_leaf(h) ? b : a], fmt.leaf(), name, ino, type));
        if (!off) return Error(EIO, "no room after make_indexed_dir");
        return {};
      }
      uint32_t n = append();
      UEXT_TRY(init_leaf_block(blocks[n], fmt.leaf()));
      UEXT_ASSIGN_OR_RETURN(auto off, insert_entry(blocks[n], fmt.leaf(), name, ino, type));
      if (!off) return Error(EIO, "no room in a new block");
      return {};
    }
    UEXT_ASSIGN_OR_RETURN(uint32_t h, htree_hash(name, root_version(), fmt));
    for (int round = 0; round < 8; ++round) {
      auto path = probe(h);
      Frame& bottom = path.back();
      uint32_t leaf = bottom.entries[bottom.at].block;
      UEXT_ASSIGN_OR_RETURN(auto off, insert_entry(blocks.at(leaf), fmt.leaf(), name, ino, type));
      if (off) return {};
      if (bottom.entries.size() == (path.size() == 1 ? limit(true) : limit(false))) {
        // Find the lowest ancestor with room; split the index block under it,
        // or add a level when every index block up to the root is full.
        size_t level = path.size() - 1;
        while (level > 0 && path[level - 1].entries.size() == limit(level - 1 == 0)) --level;
        uint32_t nb = append();
        if (level == 0) {
          if (path.size() >= fmt.max_index_levels()) {
            blocks.pop_back();
            return Error(ENOSPC, "index full");
          }
          UEXT_TRY(dx_add_level(blocks[0], blocks[nb], nb, fmt.dx()));
          ++levels_added;
        } else {
          UEXT_ASSIGN_OR_RETURN(NodeSplit ns, dx_split_node(blocks[path[level].block], blocks[nb], fmt.dx()));
          Frame& parent = path[level - 1];
          UEXT_ASSIGN_OR_RETURN(bool ok, dx_insert_entry(blocks[parent.block], parent.block == 0, fmt.dx(), parent.at,
                                                         ns.hash, nb));
          if (!ok) return Error(EIO, "parent full after all");
          ++node_splits;
        }
        continue;  // probe again, as the kernel restarts
      }
      uint32_t nb = append();
      UEXT_ASSIGN_OR_RETURN(LeafSplit s, split_leaf(blocks[leaf], blocks[nb], root_version(), fmt));
      UEXT_ASSIGN_OR_RETURN(bool ok, dx_insert_entry(blocks[bottom.block], bottom.block == 0, fmt.dx(), bottom.at,
                                                     s.index_hash, nb));
      if (!ok) return Error(EIO, "index full after the check");
      ++leaf_splits;
      UEXT_ASSIGN_OR_RETURN(auto off2, insert_entry(blocks[s.goes_to_new_leaf(h) ? nb : leaf], fmt.leaf(), name, ino, type));
      if (!off2) return Error(EIO, "no room after a split");
      return {};
    }
    return Error(EIO, "no progress");
  }

  size_t limit(bool is_root) const {
    size_t space = fmt.block_size - (is_root ? 32 : 8) - (fmt.metadata_csum ? 8 : 0);
    return space / 8;
  }

  // Walks the tree and checks what e2fsck checks: every index block
  // parses, every leaf is reached exactly once, and every name in a leaf
  // hashes into [its entry's hash & ~1, the next entry's hash). Returns the
  // live names.
  std::map<std::string, uint32_t> check() const {
    std::map<std::string, uint32_t> names;
    std::set<uint32_t> seen;
    auto root = parse_dx_root(blocks[0], fmt.dx());
    EXPECT_TRUE(root.ok()) << root.error().message();
    if (!root.ok()) return names;
    std::function<void(const std::vector<DxEntry>&, int, uint32_t, uint64_t)> walk =
        [&](const std::vector<DxEntry>& entries, int level, uint32_t lo, uint64_t hi) {
          for (size_t i = 0; i < entries.size(); ++i) {
            uint32_t elo = i == 0 ? lo : entries[i].hash;
            uint64_t ehi = i + 1 < entries.size() ? entries[i + 1].hash : hi;
            uint32_t child = entries[i].block;
            ASSERT_LT(child, blocks.size());
            ASSERT_TRUE(seen.insert(child).second) << "block " << child << " referenced twice";
            if (level > 0) {
              auto node = parse_dx_node(blocks[child], fmt.dx());
              ASSERT_TRUE(node.ok()) << node.error().message();
              walk(node->entries, level - 1, elo, ehi);
              continue;
            }
            auto leaf = parse_dir_block(blocks[child], fmt.leaf());
            ASSERT_TRUE(leaf.ok()) << leaf.error().message();
            for (const auto& e : *leaf) {
              if (!e.inode) continue;
              auto h = htree_hash(e.name, root->hash_version, fmt);
              ASSERT_TRUE(h.ok());
              EXPECT_GE(*h, elo & ~1u) << e.name;
              EXPECT_LT(*h, ehi) << e.name;
              EXPECT_TRUE(names.emplace(std::string(e.name), e.inode).second);
            }
          }
        };
    walk(root->entries, root->indirect_levels, 0, uint64_t{1} << 32);
    EXPECT_EQ(seen.size(), blocks.size() - 1) << "unreferenced blocks";
    return names;
  }

  void seal(uint32_t seed) {
    if (!fmt.metadata_csum) return;
    set_htree_block_checksum(seed, blocks[0], HtreeBlockKind::kRoot);
    for (size_t i = 1; i < blocks.size(); ++i) {
      bool node = has_dir_block_tail(blocks[i]) ? false : true;
      set_htree_block_checksum(seed, blocks[i], node ? HtreeBlockKind::kNode : HtreeBlockKind::kLeaf);
    }
  }
};

HtreeFormat format_of(const Image& img) {
  HtreeFormat f;
  f.block_size = img.block_size();
  f.filetype = img.incompat() & 0x2;
  f.metadata_csum = img.metadata_csum();
  f.largedir = img.incompat() & 0x4000;
  f.def_hash_version = img.def_hash_version();
  f.unsigned_hash = img.unsigned_hash();
  img.hash_seed(f.hash_seed.data());
  return f;
}

std::string random_name(std::mt19937& rng, int i, int min_len, int max_len) {
  std::string name = fmt::format("{:05}_", i);
  int len = min_len + static_cast<int>(rng() % static_cast<uint32_t>(max_len - min_len + 1));
  while (static_cast<int>(name.size()) < len) name.push_back(static_cast<char>('a' + rng() % 26));
  if (i % 3 == 0) name.insert(6, "\xc3\xa9\xc3\xbc");  // bytes >= 0x80: signedness matters
  return name.substr(0, 255);
}

// ---- synthetic ----

HtreeFormat synthetic(uint32_t bs, bool csum, bool largedir = false) {
  HtreeFormat f;
  f.block_size = bs;
  f.filetype = true;
  f.metadata_csum = csum;
  f.largedir = largedir;
  f.hash_seed = {0x12345678, 0x9abcdef0, 0x0fedcba9, 0x87654321};
  return f;
}

TEST(DxEdit, MakeIndexedDirBuildsARootOverTwoHalves) {
  for (bool csum : {false, true}) {
    HtreeFormat f = synthetic(4096, csum);
    MemDir d(f, 12, 2);
    std::mt19937 rng(1);
    std::map<std::string, uint32_t> want = {{".", 12}, {"..", 2}};
    int i = 0;
    while (!d.indexed) {
      std::string name = random_name(rng, i, 20, 40);
      ASSERT_TRUE(d.add(name, 100 + i, ftype::kRegular).ok());
      want[name] = 100 + i++;
    }
    ASSERT_EQ(d.blocks.size(), 3u);
    auto root = parse_dx_root(d.blocks[0], f.dx());
    ASSERT_TRUE(root.ok()) << root.error().message();
    EXPECT_EQ(root->hash_version, dx_hash_version::kHalfMd4);
    EXPECT_EQ(root->indirect_levels, 0);
    EXPECT_EQ(root->limit, (4096 - 32 - (csum ? 8 : 0)) / 8);
    ASSERT_EQ(root->entries.size(), 2u);
    EXPECT_EQ(root->entries[0].block, 1u);
    EXPECT_EQ(root->entries[1].block, 2u);
    // Both halves hold roughly half the bytes.
    for (int b : {1, 2}) EXPECT_GT(largest_free_slot(d.blocks[b], f.leaf()), 4096u / 3) << b;
    auto names = d.check();
    names["."] = 12;
    names[".."] = 2;
    EXPECT_EQ(names, want);
    d.seal(77);
    if (csum) {
      EXPECT_TRUE(verify_dx_checksum(77, d.blocks[0], true).ok());
      EXPECT_TRUE(verify_dir_block_checksum(77, d.blocks[1]).ok());
    }
  }
}

TEST(DxEdit, SplitBetweenEqualHashesSetsTheContinuationBit) {
  // Two names with the same major hash, found by a birthday search.
  HtreeFormat f = synthetic(1024, true);
  std::unordered_map<uint32_t, std::string> seen;
  std::string x, y;
  for (int i = 0; x.empty() && i < 1000000; ++i) {
    std::string n = fmt::format("c{}", i);
    auto h = htree_hash(n, f.def_hash_version, f);
    ASSERT_TRUE(h.ok());
    auto [it, fresh] = seen.emplace(*h, n);
    if (!fresh) x = it->second, y = n;
  }
  ASSERT_FALSE(x.empty());
  uint32_t h = *htree_hash(x, f.def_hash_version, f);
  Block leaf(1024), other(1024);
  ASSERT_TRUE(init_leaf_block(leaf, f.leaf()).ok());
  ASSERT_TRUE(insert_entry(leaf, f.leaf(), x, 100, 1).ok());
  ASSERT_TRUE(insert_entry(leaf, f.leaf(), y, 101, 1).ok());
  auto s = split_leaf(leaf, other, f.def_hash_version, f);
  ASSERT_TRUE(s.ok()) << s.error().message();
  EXPECT_EQ(s->hash, h);
  EXPECT_EQ(s->index_hash, h | 1);
  EXPECT_TRUE(s->goes_to_new_leaf(h));
  EXPECT_EQ(parse_dir_block(leaf, f.leaf())->size(), 1u);
  EXPECT_EQ(parse_dir_block(other, f.leaf())->size(), 1u);
  EXPECT_TRUE(has_dir_block_tail(leaf) && has_dir_block_tail(other));

  // Distinct hashes: no continuation bit, lower hash stays.
  Block l2(1024), o2(1024);
  ASSERT_TRUE(init_leaf_block(l2, f.leaf()).ok());
  ASSERT_TRUE(insert_entry(l2, f.leaf(), "alpha", 100, 1).ok());
  ASSERT_TRUE(insert_entry(l2, f.leaf(), "beta", 101, 1).ok());
  uint32_t ha = *htree_hash("alpha", f.def_hash_version, f), hb = *htree_hash("beta", f.def_hash_version, f);
  auto s2 = split_leaf(l2, o2, f.def_hash_version, f);
  ASSERT_TRUE(s2.ok());
  EXPECT_EQ(s2->hash, std::max(ha, hb));
  EXPECT_EQ(s2->index_hash, std::max(ha, hb));
  EXPECT_EQ(parse_dir_block(o2, f.leaf())->at(0).name, ha > hb ? "alpha" : "beta");
}

TEST(DxEdit, IndexInsertSplitAndAddLevel) {
  const DxFormat f{1024, true, false};
  HtreeFormat hf = synthetic(1024, true);
  hf.def_hash_version = 1;
  // A root from make_indexed_dir over a block of 6 names.
  Block b0(1024), a(1024), b(1024);
  ASSERT_TRUE(init_dir_block_with_dot_dotdot(b0, hf.leaf(), 12, 2).ok());
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(insert_entry(b0, hf.leaf(), fmt::format("n{}", i), 20 + i, 1).ok());
  ASSERT_TRUE(make_indexed_dir(b0, a, 1, b, 2, hf).ok());
  // Fill the root with increasing hashes after entry 1.
  size_t limit = (1024 - 32 - 8) / 8;
  auto root = parse_dx_root(b0, f);
  uint32_t top = root->entries[1].hash;
  for (size_t i = 2; i < limit; ++i) {
    auto r = dx_insert_entry(b0, true, f, i - 1, top + 2 * static_cast<uint32_t>(i), 100 + static_cast<uint32_t>(i));
    ASSERT_TRUE(r.ok() && *r) << i;
  }
  auto full = dx_insert_entry(b0, true, f, 1, top + 1, 999);
  ASSERT_TRUE(full.ok());
  EXPECT_FALSE(*full);
  // Out-of-order hashes and bad positions are refused.
  EXPECT_EQ(dx_insert_entry(a, false, f, 0, 1, 2).error().code(), kErrCorrupted);  // not an index block
  Block node(1024);
  ASSERT_TRUE(dx_add_level(b0, node, 200, f).ok());
  root = parse_dx_root(b0, f);
  ASSERT_TRUE(root.ok()) << root.error().message();
  EXPECT_EQ(root->indirect_levels, 1);
  ASSERT_EQ(root->entries.size(), 1u);
  EXPECT_EQ(root->entries[0].block, 200u);
  auto n = parse_dx_node(node, f);
  ASSERT_TRUE(n.ok()) << n.error().message();
  EXPECT_EQ(n->entries.size(), limit);
  EXPECT_EQ(n->entries[0].block, 1u);
  EXPECT_EQ(n->entries[2].hash, top + 4);
  EXPECT_EQ(dx_insert_entry(node, false, f, 3, top, 5).error().code(), EINVAL);     // below entry 3
  EXPECT_EQ(dx_insert_entry(node, false, f, 3, top + 100, 5).error().code(), EINVAL);  // above entry 4
  EXPECT_EQ(dx_insert_entry(node, false, f, limit, top, 5).error().code(), EINVAL);
  // A second level is the limit without largedir.
  Block node2(1024);
  EXPECT_EQ(dx_add_level(b0, node2, 201, f).error().code(), ENOSPC);
  Block b0_large = b0;
  EXPECT_TRUE(dx_add_level(b0_large, node2, 201, {1024, true, true}).ok());
  // Split the node: upper half to node2.
  auto ns = dx_split_node(node, node2, f);
  ASSERT_TRUE(ns.ok()) << ns.error().message();
  EXPECT_EQ(ns->kept, limit / 2);
  auto n1 = parse_dx_node(node, f), n2 = parse_dx_node(node2, f);
  ASSERT_TRUE(n1.ok() && n2.ok());
  EXPECT_EQ(n1->entries.size() + n2->entries.size(), limit);
  EXPECT_EQ(ns->hash, n->entries[limit / 2].hash);
  EXPECT_EQ(n2->entries[0].block, n->entries[limit / 2].block);
  EXPECT_EQ(n2->entries[1].hash, n->entries[limit / 2 + 1].hash);
  ASSERT_TRUE(*dx_insert_entry(b0, true, f, 0, ns->hash, 201));
  set_htree_block_checksum(5, node2, HtreeBlockKind::kNode);
  EXPECT_TRUE(verify_dx_checksum(5, node2, false).ok());
}

TEST(DxEdit, RefusesWhatTheKernelWouldNot) {
  HtreeFormat f = synthetic(1024, false);
  Block b0(1024), a(1024), b(1024);
  ASSERT_TRUE(init_dir_block_with_dot_dotdot(b0, f.leaf(), 12, 2).ok());
  ASSERT_TRUE(insert_entry(b0, f.leaf(), "only", 20, 1).ok());
  auto before = b0;
  EXPECT_EQ(make_indexed_dir(b0, a, 1, b, 2, f).error().code(), EINVAL);  // one entry
  EXPECT_EQ(b0, before);
  ASSERT_TRUE(insert_entry(b0, f.leaf(), "two", 21, 1).ok());
  EXPECT_EQ(make_indexed_dir(b0, a, 1, b, 1, f).error().code(), EINVAL);  // same block twice
  HtreeFormat sip = f;
  sip.def_hash_version = dx_hash_version::kSiphash;
  EXPECT_EQ(make_indexed_dir(b0, a, 1, b, 2, sip).error().code(), EINVAL);
  Block leaf(1024);
  ASSERT_TRUE(init_leaf_block(leaf, f.leaf()).ok());
  ASSERT_TRUE(insert_entry(leaf, f.leaf(), "x", 3, 1).ok());
  EXPECT_EQ(split_leaf(leaf, a, 1, f).error().code(), EINVAL);
  put_le16(leaf, 4, 16);  // corrupt
  EXPECT_EQ(split_leaf(leaf, a, 1, f).error().code(), kErrCorrupted);
}

// Without largedir a full two-level tree refuses a third level with ENOSPC
// (the largedir image test below grows to three levels).
TEST(DxEdit, TwoLevelLimitWithoutLargedir) {
  HtreeFormat small = synthetic(1024, true, false);
  MemDir e(small, 12, 2);
  std::mt19937 rng(9);
  Status st;
  int i = 0;
  for (; i < 60000 && st.ok(); ++i) st = e.add(random_name(rng, i, 250, 255), 100 + i, 1);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code(), ENOSPC);
  EXPECT_EQ(e.levels_added, 1);
  EXPECT_GT(e.node_splits, 100);
  EXPECT_EQ(e.check().size(), static_cast<size_t>(i - 1));
  EXPECT_EQ(parse_dx_root(e.blocks[0], small.dx())->entries.size(), e.limit(true));
}

// ---- against e2fsck, debugfs and uext on real images ----

void write_block(const Image& img, uint64_t nr, Bytes data) {
  int fd = ::open(img.path().c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, data.data(), data.size(), static_cast<off_t>(nr * data.size())),
            static_cast<ssize_t>(data.size()));
  ::close(fd);
}

void debugfs_script(const Image& img, const TempDir& dir, const std::vector<std::string>& cmds) {
  std::string script;
  for (const auto& c : cmds) script += c + "\n";
  uext::testing::write_file(dir / "cmds", script);
  auto r = uext::testing::run({"debugfs", "-w", "-f", dir / "cmds", img.path()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

// Physical block of each logical block: the extent map, or for block-mapped
// (ext2) directories debugfs bmap, since "blocks" would mix in indirect blocks.
std::vector<uint64_t> logical_map(const Image& img, const TempDir& dir, const std::string& file, size_t n) {
  if (img.incompat() & 0x40) return img.data_blocks(file);
  std::string script;
  for (size_t i = 0; i < n; ++i) script += fmt::format("bmap {} {}\n", file, i);
  uext::testing::write_file(dir / "bmap", script);
  std::istringstream in(uext::testing::run_ok({"debugfs", "-f", dir / "bmap", img.path()}));
  std::vector<uint64_t> out;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty() && std::isdigit(static_cast<unsigned char>(line[0]))) out.push_back(std::stoull(line));
  return out;
}

struct Case {
  const char* label;
  uint32_t block_size;
  std::vector<std::string> mkfs;
  int files;             // files in /big made by mke2fs
  int links;             // extra names for /f, hard links added by the edits
  int min_len, max_len;  // name lengths
  int expect_levels;
};

// /big starts as a linear directory made by mke2fs -d. Its entries (plus
// `links` new names for the file /f, whose link count is raised to match)
// are rebuilt from scratch with the functions under test, in a shuffled
// order, into as many blocks as they need; debugfs expand_dir gives /big
// that many blocks, the blocks are written over them, and the INDEX flag is
// set. Then e2fsck -fn must pass, debugfs htree must show our tree with
// every name, and uext must find every name through the index.
void run_case(const Case& c, uint32_t seed) {
  SCOPED_TRACE(c.label);
  TempDir dir;
  std::filesystem::create_directories(dir / "src/big");
  std::mt19937 rng(seed);
  for (int i = 0; i < c.files; ++i) std::ofstream(dir / ("src/big/" + random_name(rng, i, c.min_len, c.max_len))).put('x');
  std::ofstream(dir / "src/f").put('f');
  Image img(dir / "img", dir / "src", c.block_size, "64M", c.mkfs);
  HtreeFormat f = format_of(img);
  ASSERT_TRUE(le32(img.sb(), 0x5C) & 0x20) << "dir_index is off";
  const uint32_t big = img.inode_number("/big"), fino = img.inode_number("/f");

  std::vector<std::pair<std::string, uint32_t>> entries;
  {
    std::istringstream in(img.debugfs("ls -p /big"));
    std::string line;
    while (std::getline(in, line)) {
      if (line.size() < 2 || line[0] != '/') continue;
      std::vector<std::string> fld;
      std::stringstream ss(line.substr(1));
      std::string part;
      while (std::getline(ss, part, '/')) fld.push_back(part);
      if (fld.size() < 5 || fld[4] == "." || fld[4] == "..") continue;
      entries.push_back({fld[4], static_cast<uint32_t>(std::stoul(fld[0]))});
    }
  }
  ASSERT_EQ(entries.size(), static_cast<size_t>(c.files));
  for (int i = 0; i < c.links; ++i) entries.push_back({random_name(rng, c.files + i, c.min_len, c.max_len), fino});
  std::shuffle(entries.begin(), entries.end(), rng);

  MemDir d(f, big, 2);
  for (const auto& [name, ino] : entries) {
    auto st = d.add(name, ino, f.filetype ? ftype::kRegular : 0);
    ASSERT_TRUE(st.ok()) << name << ": " << st.error().message();
  }
  auto names = d.check();
  ASSERT_EQ(names.size(), entries.size());
  auto root = parse_dx_root(d.blocks[0], f.dx());
  ASSERT_EQ(root->indirect_levels, c.expect_levels);
  std::cerr << c.label << ": " << entries.size() << " names, " << d.blocks.size() << " blocks, " << d.leaf_splits
            << " leaf splits, " << d.node_splits << " node splits, " << d.levels_added << " levels added\n";

  testing::RegexMatch m;
  std::string st = img.debugfs("stat /big");
  ASSERT_TRUE(regex_search(st, m, testing::Regex("Size: (\\d+)")));
  const size_t have = std::stoull(m[1]) / f.block_size;
  ASSERT_LE(have, d.blocks.size());
  std::vector<std::string> cmds(d.blocks.size() - have, "expand_dir /big");
  ASSERT_TRUE(regex_search(st, m, testing::Regex("Flags: (0x[0-9a-f]+)")));
  uint32_t flags = static_cast<uint32_t>(std::stoul(m[1], nullptr, 16)) | 0x1000;  // EXT4_INDEX_FL
  cmds.push_back(fmt::format("sif /big flags {:#x}", flags));
  if (c.links) cmds.push_back(fmt::format("sif /f links_count {}", 1 + c.links));
  debugfs_script(img, dir, cmds);
  img.reload();
  auto phys = logical_map(img, dir, "/big", d.blocks.size());
  ASSERT_EQ(phys.size(), d.blocks.size());
  d.seal(f.metadata_csum ? img.inode_csum_seed("/big") : 0);
  for (size_t i = 0; i < phys.size(); ++i) write_block(img, phys[i], d.blocks[i]);
  img.reload();

  auto fsck = uext::testing::run({"e2fsck", "-fn", img.path()});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.out << fsck.err;

  std::string dump = img.debugfs("htree /big");
  ASSERT_NE(dump.find("Root node dump"), std::string::npos) << dump.substr(0, 400);
  EXPECT_EQ(dump.find("EXPECTED"), std::string::npos) << "debugfs reports a bad checksum";
  EXPECT_NE(dump.find(fmt::format("Indirect levels: {}", c.expect_levels)), std::string::npos);
  // Leaf entries print as "inode 0xhash-minor (rec_len) name", several to
  // a line; names here hold no spaces.
  std::set<std::string> shown;
  {
    std::istringstream in(dump);
    std::vector<std::string> tok;
    for (std::string t; in >> t;) tok.push_back(t);
    for (size_t i = 1; i + 2 < tok.size(); ++i) {
      if (tok[i].size() == 19 && tok[i].rfind("0x", 0) == 0 && tok[i][10] == '-' && tok[i + 1].front() == '(' &&
          tok[i + 1].back() == ')' && std::isdigit(static_cast<unsigned char>(tok[i - 1][0])))
        shown.insert(tok[i + 2]);
    }
  }
  std::set<std::string> want;
  for (const auto& [name, ino] : entries) want.insert(name);
  EXPECT_EQ(shown, want);

  auto fs = Filesystem::open(img.path(), {});
  ASSERT_TRUE(fs.ok()) << fs.error().message();
  const size_t stride = 1 + entries.size() / 3000;  // a sample of big directories
  for (size_t i = 0; i < entries.size(); i += stride) {
    const auto& [name, ino] = entries[i];
    auto r = (*fs)->resolve("/big/" + name);
    ASSERT_TRUE(r.ok()) << name << ": " << r.error().message();
    ASSERT_EQ(*r, ino) << name;
  }
  auto absent = (*fs)->resolve("/big/not-there");
  EXPECT_FALSE(absent.ok());
}

TEST(DxEditImage, Ext4FourKiBWithChecksumsOneLevel) {
  run_case({"ext4 4k csum", 4096, {}, 500, 100, 20, 40, 0}, 1);
}
TEST(DxEditImage, Ext4OneKiBWithChecksumsTwoLevels) {
  run_case({"ext4 1k csum", 1024, {}, 900, 600, 100, 200, 1}, 2);
}
TEST(DxEditImage, Ext4WithoutMetadataCsum) {
  run_case({"ext4 4k ^metadata_csum", 4096, {"-O", "^metadata_csum"}, 400, 400, 8, 60, 0}, 3);
}
TEST(DxEditImage, Ext2WithoutFiletype) {
  run_case({"ext2 ^filetype", 1024, {"-t", "ext2", "-O", "^filetype"}, 300, 300, 30, 90, 0}, 4);
}
TEST(DxEditImage, LargedirThreeLevels) {
  run_case({"ext4 1k large_dir", 1024, {"-O", "large_dir"}, 50, 24000, 250, 255, 2}, 5);
}

}  // namespace
}  // namespace uext::disk
