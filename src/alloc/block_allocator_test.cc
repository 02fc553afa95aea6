// The allocators judged by e2fsck and dumpe2fs on images made by mke2fs:
// blocks and inodes allocated (and owned by no inode) must show up as
// exactly the bitmap differences and count changes e2fsck reports, nothing
// else; freed again, the image must be clean.
#include "alloc/block_allocator.h"

#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "alloc/inode_allocator.h"
#include "support/images.h"
#include "support/process.h"
#include "support/regex.h"

namespace uext::alloc {
namespace {


// ---- Helpers: images, opening, and reading the oracles' verdicts ----------

void make_image(const std::string& path, const std::vector<std::string>& args, const std::string& size) {
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back(path);
  argv.push_back(size);
  testing::run_ok(argv);
}

struct Opened {
  std::unique_ptr<fs::Volume> volume;
  std::unique_ptr<GroupBitmaps> groups;
  std::unique_ptr<BlockAllocator> blocks;
  std::unique_ptr<InodeAllocator> inodes;
  Status close() { return volume->close(); }
};

Opened open_rw(const std::string& image) {
  Opened o;
  auto dev = open_image_file(image, {.read_only = false});
  EXPECT_TRUE(dev.ok()) << dev.error().message();
  Options options;
  options.read_only = false;
  options.commit_interval_ms = 0;
  auto vol = fs::Volume::open(std::move(*dev), options);
  EXPECT_TRUE(vol.ok()) << vol.error().message();
  o.volume = std::move(*vol);
  o.groups = std::make_unique<GroupBitmaps>(*o.volume);
  o.blocks = std::make_unique<BlockAllocator>(*o.groups);
  o.inodes = std::make_unique<InodeAllocator>(*o.groups);
  return o;
}

// What the allocations should look like to e2fsck.
struct Expected {
  std::set<uint64_t> blocks;
  std::map<uint32_t, bool> inodes;  // ino -> directory
  uint32_t blocks_per_group = 0, first_data_block = 0, inodes_per_group = 0;

  void add_blocks(const BlockExtent& e) {
    for (uint64_t b = e.first; b < e.first + e.count; ++b) {
      EXPECT_TRUE(blocks.insert(b).second) << "block " << b << " handed out twice";
    }
  }
  void add_inode(const disk::Superblock& sb, uint32_t ino, bool dir) {
    inodes_per_group = sb.s_inodes_per_group;
    EXPECT_TRUE(inodes.emplace(ino, dir).second) << "inode " << ino << " handed out twice";
  }
  // Maximal contiguous runs (which may cross group boundaries).
  std::vector<std::pair<uint64_t, uint32_t>> block_runs() const {
    std::vector<std::pair<uint64_t, uint32_t>> runs;
    for (uint64_t b : blocks) {
      if (!runs.empty() && runs.back().first + runs.back().second == b) {
        runs.back().second++;
      } else {
        runs.push_back({b, 1});
      }
    }
    return runs;
  }
};

// "+(100--120) +130 -7" -> the numbers, by sign.
void parse_differences(const std::string& text, std::set<uint64_t>& plus, std::set<uint64_t>& minus) {
  static const testing::Regex token(R"(([+-])(?:\((\d+)--(\d+)\)|(\d+)))");
  for (const auto& m : regex_find_all(text, token)) {
    uint64_t a, b;
    if (m[2].matched) {
      a = std::stoull(m[2]);
      b = std::stoull(m[3]);
    } else {
      a = b = std::stoull(m[4]);
    }
    for (uint64_t x = a; x <= b; ++x) (m[1] == "+" ? plus : minus).insert(x);
  }
}

// e2fsck -fn must report exactly `want` as used-but-unowned, with the
// count corrections they imply, and nothing else.
void expect_e2fsck_sees(const std::string& image, const Expected& want) {
  auto r = testing::run({"e2fsck", "-fn", image});
  SCOPED_TRACE(r.out + r.err);
  std::set<uint64_t> block_plus, block_minus, inode_plus, inode_minus;
  std::map<uint32_t, int64_t> block_delta, inode_delta, dir_delta;  // counted - recorded per group
  int64_t sb_block_delta = 0, sb_inode_delta = 0;
  static const testing::Regex group_count(R"(^(Free blocks|Free inodes|Directories) count wrong for group #(\d+) \((\d+), counted=(\d+)\)\.$)");
  static const testing::Regex total_count(R"(^(Free blocks|Free inodes) count wrong \((\d+), counted=(\d+)\)\.$)");
  static const testing::Regex benign(R"(^(Pass \d.*|Fix\? no|\s*|.*WARNING: Filesystem still has errors.*|\S+: \d+/\d+ files .*)$)");
  std::istringstream lines(r.out);
  std::string line;
  testing::RegexMatch m;
  while (std::getline(lines, line)) {
    if (line.rfind("Block bitmap differences:", 0) == 0) {
      parse_differences(line.substr(25), block_plus, block_minus);
    } else if (line.rfind("Inode bitmap differences:", 0) == 0) {
      parse_differences(line.substr(25), inode_plus, inode_minus);
    } else if (regex_match(line, m, group_count)) {
      int64_t d = std::stoll(m[4]) - std::stoll(m[3]);
      uint32_t g = static_cast<uint32_t>(std::stoul(m[2]));
      (m[1] == "Free blocks" ? block_delta : m[1] == "Free inodes" ? inode_delta : dir_delta)[g] = d;
    } else if (regex_match(line, m, total_count)) {
      (m[1] == "Free blocks" ? sb_block_delta : sb_inode_delta) = std::stoll(m[3]) - std::stoll(m[2]);
    } else if (!regex_match(line, benign)) {
      ADD_FAILURE() << "e2fsck complains about something else: " << line;
    }
  }
  // "-": marked in use in the bitmap, but no inode owns it.
  EXPECT_TRUE(block_plus.empty());
  EXPECT_TRUE(inode_plus.empty());
  EXPECT_EQ(block_minus, want.blocks);
  std::set<uint64_t> inos;
  for (auto [ino, dir] : want.inodes) inos.insert(ino);
  EXPECT_EQ(inode_minus, inos);

  // Count corrections: per group exactly the allocations in it.
  auto dumped = testing::run_ok({"dumpe2fs", "-h", image});
  uint32_t bpg = 0, first = 0, ipg = 0;
  {
    testing::RegexMatch h;
    static const testing::Regex bpg_re(R"(Blocks per group:\s+(\d+))"), first_re(R"(First block:\s+(\d+))"),
        ipg_re(R"(Inodes per group:\s+(\d+))");
    if (regex_search(dumped, h, bpg_re)) bpg = std::stoul(h[1]);
    if (regex_search(dumped, h, first_re)) first = std::stoul(h[1]);
    if (regex_search(dumped, h, ipg_re)) ipg = std::stoul(h[1]);
  }
  ASSERT_GT(bpg, 0u);
  std::map<uint32_t, int64_t> want_blocks, want_inodes, want_dirs;
  for (uint64_t b : want.blocks) want_blocks[static_cast<uint32_t>((b - first) / bpg)]++;
  for (auto [ino, dir] : want.inodes) {
    want_inodes[(ino - 1) / ipg]++;
    if (dir) want_dirs[(ino - 1) / ipg]++;
  }
  // e2fsck -n leaves the bitmaps as they are and so finds the free counts
  // right; should it report a count, it must be the one the difference implies.
  for (auto [g, d] : block_delta) EXPECT_EQ(-d, want_blocks[g]) << "free blocks of group " << g;
  for (auto [g, d] : inode_delta) EXPECT_EQ(-d, want_inodes[g]) << "free inodes of group " << g;
  std::map<uint32_t, int64_t> neg_dirs;
  for (auto [g, d] : dir_delta) neg_dirs[g] = -d;
  EXPECT_EQ(neg_dirs, want_dirs) << "directory count corrections per group";
  if (sb_block_delta != 0) {
    EXPECT_EQ(-sb_block_delta, static_cast<int64_t>(want.blocks.size()));
  }
  if (sb_inode_delta != 0) {
    EXPECT_EQ(-sb_inode_delta, static_cast<int64_t>(want.inodes.size()));
  }
}

void expect_clean(const std::string& image) {
  auto r = testing::run({"e2fsck", "-fn", image});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  auto h = testing::run_ok({"dumpe2fs", "-h", image});
  EXPECT_EQ(h.find("with errors"), std::string::npos) << h;
}

struct GroupCounts {
  uint32_t free_blocks = 0, free_inodes = 0, dirs = 0;
};

std::vector<GroupCounts> dumpe2fs_groups(const std::string& image) {
  auto out = testing::run_ok({"dumpe2fs", image});
  static const testing::Regex re(R"(\n\s+(\d+) free (?:blocks|clusters), (\d+) free inodes, (\d+) directories)");
  std::vector<GroupCounts> groups;
  for (const auto& m : regex_find_all(out, re)) {
    groups.push_back({static_cast<uint32_t>(std::stoul(m[1])), static_cast<uint32_t>(std::stoul(m[2])),
                      static_cast<uint32_t>(std::stoul(m[3]))});
  }
  return groups;
}

void expect_group_counts(const std::vector<GroupCounts>& before, const std::vector<GroupCounts>& after,
                         const disk::Superblock& sb, const Expected& want) {
  ASSERT_EQ(before.size(), after.size());
  std::vector<int64_t> blocks(before.size()), inodes(before.size()), dirs(before.size());
  for (uint64_t b : want.blocks) blocks[(b - sb.s_first_data_block) / sb.s_blocks_per_group]++;
  for (auto [ino, dir] : want.inodes) {
    inodes[(ino - 1) / sb.s_inodes_per_group]++;
    if (dir) dirs[(ino - 1) / sb.s_inodes_per_group]++;
  }
  for (size_t g = 0; g < before.size(); ++g) {
    EXPECT_EQ(int64_t{after[g].free_blocks}, int64_t{before[g].free_blocks} - blocks[g]) << "group " << g;
    EXPECT_EQ(int64_t{after[g].free_inodes}, int64_t{before[g].free_inodes} - inodes[g]) << "group " << g;
    EXPECT_EQ(int64_t{after[g].dirs}, int64_t{before[g].dirs} + dirs[g]) << "group " << g;
  }
}

struct Kind {
  std::string name;
  std::vector<std::string> mkfs;
  std::string size;
};

const std::vector<Kind>& kinds() {
  static const std::vector<Kind> k = {
      // 4 KiB blocks, 8192 blocks per group: bitmaps with padding bits.
      {"ext4_4k", {"-t", "ext4", "-b", "4096", "-g", "8192", "-N", "8192"}, "256M"},
      {"ext4_1k", {"-t", "ext4", "-b", "1024"}, "128M"},
      {"ext4_gdtcsum", {"-t", "ext4", "-b", "1024", "-O", "^metadata_csum,^64bit,uninit_bg"}, "64M"},
      {"ext4_nocsum", {"-t", "ext4", "-b", "1024", "-O", "^metadata_csum,^64bit"}, "64M"},
      {"ext4_noflex", {"-t", "ext4", "-b", "1024", "-O", "^flex_bg"}, "96M"},
      {"ext3", {"-t", "ext3", "-b", "1024"}, "64M"},
      {"ext2", {"-t", "ext2", "-b", "1024"}, "64M"},
  };
  return k;
}

class Allocators : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    image_ = dir_ / "fs.img";
    make_image(image_, GetParam().mkfs, GetParam().size);
    before_ = dumpe2fs_groups(image_);
  }
  testing::TempDir dir_;
  std::string image_;
  std::vector<GroupCounts> before_;
};

TEST_P(Allocators, AllocatedShowUpInE2fsckAndFreeingCleansUp) {
  Expected want;
  disk::Superblock geometry;
  {
    Opened o = open_rw(image_);
    const uint32_t n = o.groups->group_count();
    const auto& sb = o.groups->sb();
    geometry = sb;
    auto h = o.volume->start(400);
    ASSERT_TRUE(h.ok()) << h.error().message();
    // Small runs near the start of every group (many start BLOCK_UNINIT).
    for (uint32_t g = 0; g < n; ++g) {
      auto r = o.blocks->allocate(*h, o.groups->group_first_block(g), 1 + g * 7 % 50);
      ASSERT_TRUE(r.ok()) << r.error().message();
      EXPECT_EQ(o.groups->group_of_block(r->first), g) << "goal group " << g << " had room";
      want.add_blocks(*r);
    }
    // A run longer than any group: the longest run there is, capped.
    auto big = o.blocks->allocate(*h, 0, sb.s_blocks_per_group * 3);
    ASSERT_TRUE(big.ok()) << big.error().message();
    EXPECT_GT(big->count, 1u);
    EXPECT_LE(big->count, sb.s_blocks_per_group);
    want.add_blocks(*big);
    ASSERT_TRUE(h->stop().ok());

    // Fill one whole group (a middle one).
    uint32_t fill = n / 2;
    auto h2 = o.volume->start(BlockAllocator::kAllocateCredits);
    ASSERT_TRUE(h2.ok());
    while (o.groups->free_blocks(fill) > 0) {
      auto r = o.blocks->allocate(*h2, o.groups->group_first_block(fill), o.groups->free_blocks(fill));
      ASSERT_TRUE(r.ok()) << r.error().message();
      ASSERT_EQ(o.groups->group_of_block(r->first), fill);
      want.add_blocks(*r);
    }
    ASSERT_TRUE(h2->stop().ok());
    EXPECT_EQ(o.volume->group_snapshot(fill).bg_free_blocks_count, 0u);

    // Inodes: files beside root, top-level and nested directories, files
    // in those directories.
    auto h3 = o.volume->start(400);
    ASSERT_TRUE(h3.ok());
    std::vector<uint32_t> dirs;
    for (int i = 0; i < 6; ++i) {
      auto d = o.inodes->allocate(*h3, InodeAllocator::kRootIno, true);
      ASSERT_TRUE(d.ok()) << d.error().message();
      want.add_inode(sb, *d, true);
      dirs.push_back(*d);
    }
    for (uint32_t d : std::vector<uint32_t>(dirs)) {
      auto sub = o.inodes->allocate(*h3, d, true);
      ASSERT_TRUE(sub.ok()) << sub.error().message();
      want.add_inode(sb, *sub, true);
      for (int i = 0; i < 3; ++i) {
        auto f = o.inodes->allocate(*h3, *sub, false);
        ASSERT_TRUE(f.ok()) << f.error().message();
        EXPECT_GE(*f, sb.s_first_ino);
        want.add_inode(sb, *f, false);
      }
    }
    for (int i = 0; i < 5; ++i) {
      auto f = o.inodes->allocate(*h3, InodeAllocator::kRootIno, false);
      ASSERT_TRUE(f.ok()) << f.error().message();
      want.add_inode(sb, *f, false);
    }
    ASSERT_TRUE(h3->stop().ok());
    EXPECT_TRUE(o.blocks->check_counts().ok()) << o.blocks->check_counts().error().message();
    EXPECT_TRUE(o.inodes->check_counts().ok()) << o.inodes->check_counts().error().message();
    ASSERT_TRUE(o.close().ok());
  }
  expect_e2fsck_sees(image_, want);
  expect_group_counts(before_, dumpe2fs_groups(image_), geometry, want);

  // Free everything in a second open; some blocks as metadata (revoked).
  {
    Opened o = open_rw(image_);
    bool meta = false;
    for (auto [first, count] : want.block_runs()) {
      auto h = o.volume->start(BlockAllocator::free_credits(o.groups->sb(), first, count));
      ASSERT_TRUE(h.ok());
      Status s = o.blocks->free(*h, first, count, meta);
      ASSERT_TRUE(s.ok()) << s.error().message();
      meta = !meta;
      ASSERT_TRUE(h->stop().ok());
    }
    auto h = o.volume->start(InodeAllocator::kFreeCredits * 4);
    for (auto [ino, dir] : want.inodes) {
      Status s = o.inodes->free(*h, ino, dir);
      ASSERT_TRUE(s.ok()) << s.error().message();
    }
    ASSERT_TRUE(h->stop().ok());
    EXPECT_TRUE(o.blocks->check_counts().ok());
    EXPECT_TRUE(o.inodes->check_counts().ok());
    ASSERT_TRUE(o.close().ok());
  }
  expect_clean(image_);
  auto after = dumpe2fs_groups(image_);
  ASSERT_EQ(after.size(), before_.size());
  for (size_t g = 0; g < after.size(); ++g) {
    EXPECT_EQ(after[g].free_blocks, before_[g].free_blocks) << "group " << g;
    EXPECT_EQ(after[g].free_inodes, before_[g].free_inodes) << "group " << g;
    EXPECT_EQ(after[g].dirs, before_[g].dirs) << "group " << g;
  }
}

TEST_P(Allocators, UntilEnospcWithAndWithoutTheReserve) {
  // Fewer inodes, so that using up every one stays quick.
  std::vector<std::string> args = GetParam().mkfs;
  args.insert(args.end(), {"-N", "1024"});
  make_image(image_, args, GetParam().size);
  Expected want;
  uint64_t reserve = 0;
  {
    Opened o = open_rw(image_);
    const auto& sb = o.groups->sb();
    reserve = sb.s_r_blocks_count;
    ASSERT_GT(reserve, 0u);
    auto take = [&](bool use_reserved) -> int {
      for (;;) {
        auto h = o.volume->start(BlockAllocator::kAllocateCredits);
        EXPECT_TRUE(h.ok());
        auto r = o.blocks->allocate(*h, 0, 4096, {.use_reserved = use_reserved});
        EXPECT_TRUE(h->stop().ok());
        if (!r.ok()) return r.error().code();
        want.add_blocks(*r);
      }
    };
    EXPECT_EQ(take(false), ENOSPC);
    EXPECT_EQ(o.volume->superblock_snapshot().s_free_blocks_count, reserve);
    EXPECT_EQ(take(true), ENOSPC);
    EXPECT_EQ(o.volume->superblock_snapshot().s_free_blocks_count, 0u);
    // Every inode, too.
    for (;;) {
      auto h = o.volume->start(InodeAllocator::kAllocateCredits);
      auto r = o.inodes->allocate(*h, InodeAllocator::kRootIno, want.inodes.size() % 7 == 0);
      EXPECT_TRUE(h->stop().ok());
      if (!r.ok()) {
        EXPECT_EQ(r.error().code(), ENOSPC) << r.error().message();
        break;
      }
      want.add_inode(sb, *r, want.inodes.size() % 7 == 0);
    }
    EXPECT_EQ(o.volume->superblock_snapshot().s_free_inodes_count, 0u);
    EXPECT_TRUE(o.blocks->check_counts().ok());
    EXPECT_TRUE(o.inodes->check_counts().ok());
    ASSERT_TRUE(o.close().ok());
  }
  expect_e2fsck_sees(image_, want);
  for (const auto& g : dumpe2fs_groups(image_)) {
    EXPECT_EQ(g.free_blocks, 0u);
    EXPECT_EQ(g.free_inodes, 0u);
  }
  {
    Opened o = open_rw(image_);
    for (auto [first, count] : want.block_runs()) {
      auto h = o.volume->start(BlockAllocator::free_credits(o.groups->sb(), first, count));
      ASSERT_TRUE(o.blocks->free(*h, first, count, false).ok());
      ASSERT_TRUE(h->stop().ok());
    }
    for (auto [ino, dir] : want.inodes) {
      auto h = o.volume->start(InodeAllocator::kFreeCredits);
      ASSERT_TRUE(o.inodes->free(*h, ino, dir).ok());
      ASSERT_TRUE(h->stop().ok());
    }
    ASSERT_TRUE(o.close().ok());
  }
  expect_clean(image_);
}

TEST_P(Allocators, DoubleFreeAndMetadataFreeAreCorruption) {
  Opened o = open_rw(image_);
  const auto& sb = o.groups->sb();
  auto h = o.volume->start(20);
  ASSERT_TRUE(h.ok());
  auto r = o.blocks->allocate(*h, 0, 4);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(o.blocks->free(*h, r->first, 4, false).ok());
  Status again = o.blocks->free(*h, r->first + 1, 2, false);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code(), EUCLEAN);
  EXPECT_NE(again.error().message().find(std::to_string(r->first + 1)), std::string::npos) << again.error().message();
  // A block of a never-used group, and the block bitmap of group 0.
  Status uninit_free = o.blocks->free(*h, sb.s_blocks_count - 1, 1, false);
  EXPECT_FALSE(uninit_free.ok());
  Status meta = o.blocks->free(*h, o.volume->group(0).bg_block_bitmap, 1, true);
  ASSERT_FALSE(meta.ok());
  EXPECT_EQ(meta.error().code(), EUCLEAN);
  Status outside = o.blocks->free(*h, sb.s_blocks_count - 1, 2, false);
  EXPECT_EQ(outside.error().code(), EUCLEAN);

  auto ino = o.inodes->allocate(*h, InodeAllocator::kRootIno, false);
  ASSERT_TRUE(ino.ok());
  ASSERT_TRUE(o.inodes->free(*h, *ino, false).ok());
  Status twice = o.inodes->free(*h, *ino, false);
  ASSERT_FALSE(twice.ok());
  EXPECT_EQ(twice.error().code(), EUCLEAN);
  Status reserved = o.inodes->free(*h, 2, true);
  EXPECT_EQ(reserved.error().code(), EUCLEAN);
  ASSERT_TRUE(h->stop().ok());
  EXPECT_TRUE(o.blocks->check_counts().ok());
  EXPECT_TRUE(o.inodes->check_counts().ok());
  ASSERT_TRUE(o.close().ok());
  // Nothing was changed by the refused frees, but each says a map on the
  // image lies: recorded as ext4_error records it.
  auto fsck = testing::run({"e2fsck", "-fn", image_});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.out << fsck.err;
  testing::expect_dumpe2fs_shows(image_, {{"Filesystem state", "clean with errors"},
                                          {"FS Error count", "6"},
                                          {"First error function", "free_blocks"},
                                          {"First error err", "EFSCORRUPTED"},
                                          {"Last error function", "free_inode"},
                                          {"Last error inode #", "2"}});
}

TEST_P(Allocators, CommittedAllocationsSurviveACrash) {
  Expected want;
  std::string crash = dir_ / "crash.img";
  {
    Opened o = open_rw(image_);
    const auto& sb = o.groups->sb();
    auto h = o.volume->start(100);
    ASSERT_TRUE(h.ok());
    for (uint32_t g = 0; g < o.groups->group_count(); g += 3) {
      auto r = o.blocks->allocate(*h, o.groups->group_first_block(g) + 100, 33);
      ASSERT_TRUE(r.ok()) << r.error().message();
      want.add_blocks(*r);
    }
    for (int i = 0; i < 4; ++i) {
      auto d = o.inodes->allocate(*h, InodeAllocator::kRootIno, i % 2 == 0);
      ASSERT_TRUE(d.ok()) << d.error().message();
      want.add_inode(sb, *d, i % 2 == 0);
    }
    ASSERT_TRUE(h->stop().ok());
    ASSERT_TRUE(o.volume->sync().ok());
    // The image as a crash right now would leave it.
    testing::run_ok({"cp", "--sparse=always", image_, crash});
    ASSERT_TRUE(o.close().ok());
  }
  auto r = testing::run({"e2fsck", "-y", "-E", "journal_only", crash});
  EXPECT_LE(r.exit_code, 1) << r.out << r.err;
  expect_e2fsck_sees(crash, want);
  expect_e2fsck_sees(image_, want);
}

INSTANTIATE_TEST_SUITE_P(Images, Allocators, ::testing::ValuesIn(kinds()),
                         [](const auto& info) { return info.param.name; });

// Orlov: top-level directories spread over groups; files and nested
// directories stay near their parent.
TEST(InodePlacement, OrlovSpreadsTopLevelDirectoriesAndKeepsFilesNear) {
  testing::TempDir dir;
  std::string image = dir / "fs.img";
  make_image(image, {"-t", "ext4", "-b", "1024", "-O", "^flex_bg"}, "128M");
  Opened o = open_rw(image);
  const auto& sb = o.groups->sb();
  auto h = o.volume->start(200);
  ASSERT_TRUE(h.ok());
  std::set<uint32_t> groups;
  std::vector<uint32_t> tops;
  for (int i = 0; i < 8; ++i) {
    auto d = o.inodes->allocate(*h, InodeAllocator::kRootIno, true);
    ASSERT_TRUE(d.ok());
    tops.push_back(*d);
    groups.insert((*d - 1) / sb.s_inodes_per_group);
  }
  EXPECT_GE(groups.size(), 6u) << "top-level directories should not crowd into few groups";
  for (uint32_t d : tops) {
    uint32_t g = (d - 1) / sb.s_inodes_per_group;
    auto f = o.inodes->allocate(*h, d, false);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ((*f - 1) / sb.s_inodes_per_group, g) << "a file goes to its directory's group";
    auto sub = o.inodes->allocate(*h, d, true);
    ASSERT_TRUE(sub.ok());
    EXPECT_EQ((*sub - 1) / sb.s_inodes_per_group, g) << "a subdirectory stays near its parent";
  }
  ASSERT_TRUE(h->stop().ok());
  ASSERT_TRUE(o.close().ok());
}

TEST(BlockPlacement, GoalForInodeFollowsFlexGroups) {
  disk::Superblock sb;
  sb.s_first_data_block = 1;
  sb.s_blocks_per_group = 8192;
  sb.s_clusters_per_group = 8192;
  sb.s_inodes_per_group = 2048;
  sb.s_blocks_count = 1 + 8192 * 40;
  sb.s_inodes_count = 2048 * 40;
  sb.s_feature_incompat = disk::incompat::kFlexBg;
  sb.s_log_groups_per_flex = 4;
  // Inode of group 19 -> flex group 1 (groups 16..31).
  uint32_t ino = 19 * 2048 + 5;
  EXPECT_EQ(BlockAllocator::goal_for_inode(sb, ino, false), 1u + 16 * 8192);
  EXPECT_EQ(BlockAllocator::goal_for_inode(sb, ino, true), 1u + 17 * 8192);
  sb.s_feature_incompat = 0;
  EXPECT_EQ(BlockAllocator::goal_for_inode(sb, ino, true), 1u + 19 * 8192);
}

// Threads allocating and freeing blocks and inodes at once: nothing is
// handed out twice, and the image comes out clean.
TEST(ConcurrentAllocators, ThreadsNeverShareABlockOrInode) {
  testing::TempDir dir;
  std::string image = dir / "fs.img";
  make_image(image, {"-t", "ext4", "-b", "1024"}, "64M");
  Opened o = open_rw(image);
  std::mutex mu;
  std::map<uint64_t, uint32_t> owned_blocks;  // first -> count, across threads
  std::set<uint32_t> owned_inodes;
  std::atomic<bool> failed{false};
  std::string failure;
  auto fail = [&](const std::string& what) {
    std::lock_guard lock(mu);
    if (!failed.exchange(true)) failure = what;
  };
  const int kThreads = 4, kRounds = 150;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t * 7919 + 1);
      std::vector<BlockExtent> mine;
      std::vector<std::pair<uint32_t, bool>> my_inodes;
      for (int i = 0; i < kRounds && !failed; ++i) {
        auto h = o.volume->start(BlockAllocator::kAllocateCredits + InodeAllocator::kAllocateCredits + 8);
        if (!h.ok()) return fail(h.error().message());
        uint64_t goal = rng() % o.groups->sb().s_blocks_count;
        auto r = o.blocks->allocate(*h, goal, 1 + rng() % 64);
        if (!r.ok()) return fail(r.error().message());
        bool overlap = false;
        {
          std::lock_guard lock(mu);
          auto next = owned_blocks.lower_bound(r->first);
          if (next != owned_blocks.end() && next->first < r->first + r->count) overlap = true;
          if (next != owned_blocks.begin()) {
            auto prev = std::prev(next);
            if (prev->first + prev->second > r->first) overlap = true;
          }
          owned_blocks[r->first] = r->count;
        }
        if (overlap) return fail("blocks handed out twice near " + std::to_string(r->first));
        mine.push_back(*r);
        bool dir = rng() % 3 == 0;
        auto ino = o.inodes->allocate(*h, dir ? InodeAllocator::kRootIno : 12 + rng() % 5000, dir);
        if (!ino.ok()) return fail(ino.error().message());
        bool twice = false;
        {
          std::lock_guard lock(mu);
          twice = !owned_inodes.insert(*ino).second;
        }
        if (twice) return fail("inode handed out twice: " + std::to_string(*ino));
        my_inodes.push_back({*ino, dir});
        if (rng() % 2 && !mine.empty()) {
          BlockExtent e = mine[rng() % mine.size()];
          mine.erase(std::find(mine.begin(), mine.end(), e));
          {
            std::lock_guard lock(mu);
            owned_blocks.erase(e.first);
          }
          Status s = o.blocks->free(*h, e.first, e.count, rng() % 2);
          if (!s.ok()) return fail(s.error().message());
          auto [fi, fd] = my_inodes.back();
          my_inodes.pop_back();
          {
            std::lock_guard lock(mu);
            owned_inodes.erase(fi);
          }
          s = o.inodes->free(*h, fi, fd);
          if (!s.ok()) return fail(s.error().message());
        }
        if (!h->stop().ok()) return fail("stop");
        if (i % 50 == 0 && !o.volume->sync().ok()) return fail("sync");
      }
      // Give everything back.
      for (const auto& e : mine) {
        {
          std::lock_guard lock(mu);
          owned_blocks.erase(e.first);
        }
        auto h = o.volume->start(BlockAllocator::free_credits(o.groups->sb(), e.first, e.count));
        if (!o.blocks->free(*h, e.first, e.count, false).ok()) return fail("final free");
      }
      for (auto [ino, dir] : my_inodes) {
        {
          std::lock_guard lock(mu);
          owned_inodes.erase(ino);
        }
        auto h = o.volume->start(InodeAllocator::kFreeCredits);
        if (!o.inodes->free(*h, ino, dir).ok()) return fail("final inode free");
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_FALSE(failed) << failure;
  EXPECT_TRUE(o.blocks->check_counts().ok()) << o.blocks->check_counts().error().message();
  EXPECT_TRUE(o.inodes->check_counts().ok()) << o.inodes->check_counts().error().message();
  ASSERT_TRUE(o.close().ok());
  expect_clean(image);
}

}  // namespace
}  // namespace uext::alloc

namespace uext::alloc {
namespace {

// A block freed by a transaction must not be handed out again before that
// transaction commits: a crash in between would bring back the old owner
// with someone else's data in its block.
TEST(BusyBlocks, FreedBlocksWaitForTheirTransactionToCommit) {
  for (const char* type : {"ext4", "ext2"}) {
    SCOPED_TRACE(type);
    testing::TempDir dir;
    std::string img = dir / "fs.img";
    make_image(img, {"-t", type, "-b", "1024"}, "16M");
    Opened o = open_rw(img);
    uint64_t goal = o.volume->sb().s_blocks_count / 2;
    BlockExtent first;
    {
      auto h = o.volume->start(8);
      ASSERT_TRUE(h.ok());
      auto got = o.blocks->allocate(*h, goal, 4);
      ASSERT_TRUE(got.ok()) << got.error().message();
      first = *got;
      ASSERT_TRUE(h->stop().ok());
      ASSERT_TRUE(o.volume->sync().ok());
    }
    {
      auto h = o.volume->start(16);
      ASSERT_TRUE(o.blocks->free(*h, first.first, first.count, false).ok());
      EXPECT_EQ(o.blocks->busy_blocks(), first.count);
      auto again = o.blocks->allocate(*h, first.first, first.count);
      ASSERT_TRUE(again.ok()) << again.error().message();
      EXPECT_TRUE(again->first >= first.first + first.count || again->first + again->count <= first.first)
          << "block " << again->first << " reused before the transaction that freed it committed";
      ASSERT_TRUE(o.blocks->free(*h, again->first, again->count, false).ok());
      ASSERT_TRUE(h->stop().ok());
      ASSERT_TRUE(o.volume->sync().ok());
    }
    {
      auto h = o.volume->start(8);
      auto after = o.blocks->allocate(*h, first.first, first.count);
      ASSERT_TRUE(after.ok());
      EXPECT_EQ(after->first, first.first) << "committed frees must be reusable";
      EXPECT_EQ(o.blocks->busy_blocks(), 0u);
      ASSERT_TRUE(o.blocks->free(*h, after->first, after->count, false).ok());
      ASSERT_TRUE(h->stop().ok());
    }
    ASSERT_TRUE(o.blocks->check_counts().ok());
    ASSERT_TRUE(o.close().ok());
    auto fsck = testing::run({"e2fsck", "-fn", img});
    EXPECT_EQ(fsck.exit_code, 0) << fsck.out;
  }
}


// A writeback that splits extents takes spare tree blocks one at a time and
// frees the unused ones, each beside the last: the frees join into one busy
// run (ascending and descending), so the thousandth allocation does not
// mark a thousand runs into its search; none of those blocks is handed out
// again before the transaction commits, and all of them are after.
TEST(BusyBlocks, AdjacentFreesOfOneTransactionStayBusyTogether) {
  testing::TempDir dir;
  std::string img = dir / "fs.img";
  make_image(img, {"-t", "ext4", "-b", "4096"}, "64M");
  Opened o = open_rw(img);
  const uint64_t goal = o.volume->sb().s_blocks_count / 2;
  constexpr int kSpares = 2000;
  std::vector<uint64_t> freed;
  {
    auto h = o.volume->start(64);
    ASSERT_TRUE(h.ok());
    for (int i = 0; i < kSpares; ++i) {
      auto got = o.blocks->allocate(*h, goal, 1);
      ASSERT_TRUE(got.ok()) << got.error().message();
      for (uint64_t b : freed) ASSERT_NE(got->first, b) << "busy block reused at spare " << i;
      ASSERT_TRUE(o.blocks->free(*h, got->first, 1, false).ok());
      freed.push_back(got->first);
    }
    // Descending too: a block freed just below the run joins it.
    auto low = o.blocks->allocate(*h, freed.front() - 1, 1);
    ASSERT_TRUE(low.ok());
    ASSERT_EQ(low->first, freed.front() - 1);
    ASSERT_TRUE(o.blocks->free(*h, low->first, 1, false).ok());
    EXPECT_EQ(o.blocks->busy_blocks(), static_cast<uint64_t>(kSpares) + 1);
    ASSERT_TRUE(h->stop().ok());
    ASSERT_TRUE(o.volume->sync().ok());
  }
  {
    auto h = o.volume->start(8);
    auto after = o.blocks->allocate(*h, freed.front(), 1);
    ASSERT_TRUE(after.ok());
    EXPECT_EQ(after->first, freed.front()) << "committed frees must be reusable";
    EXPECT_EQ(o.blocks->busy_blocks(), 0u);
    ASSERT_TRUE(o.blocks->free(*h, after->first, 1, false).ok());
    ASSERT_TRUE(h->stop().ok());
  }
  ASSERT_TRUE(o.blocks->check_counts().ok());
  ASSERT_TRUE(o.close().ok());
  auto fsck = testing::run({"e2fsck", "-fn", img});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.out;
}

// Preallocation windows: an owner's next allocation continues in its
// window while another inode's allocations go around it; when nothing else
// is free the window is given up. Windows never touch the bitmaps, so
// e2fsck sees only the blocks actually handed out.
TEST(BlockPreallocWindows, OwnersContinueOthersGoAroundSpaceShortDropsThem) {
  testing::TempDir dir;
  std::string img = dir / "fs.img";
  make_image(img, {"-t", "ext4", "-b", "4096", "-m", "0"}, "64M");
  Opened o = open_rw(img);
  const uint64_t goal = o.volume->sb().s_blocks_count / 2;
  std::vector<BlockExtent> taken;
  auto alloc = [&](uint64_t g, uint32_t n, uint32_t owner, uint32_t prealloc) {
    auto h = o.volume->start(8);
    EXPECT_TRUE(h.ok());
    AllocOptions ao;
    ao.owner = owner;
    ao.prealloc = prealloc;
    auto got = o.blocks->allocate(*h, g, n, ao);
    EXPECT_TRUE(h->stop().ok());
    if (got.ok()) taken.push_back(*got);
    return got;
  };
  auto a1 = alloc(goal, 64, 100, 512);
  ASSERT_TRUE(a1.ok()) << a1.error().message();
  auto w = o.blocks->windows().get(100);
  ASSERT_TRUE(w);
  EXPECT_EQ(w->first, a1->first + a1->count);
  EXPECT_EQ(w->count, 512u);
  // Another inode asking at the same goal lands outside the window.
  auto b1 = alloc(a1->first + a1->count, 64, 200, 0);
  ASSERT_TRUE(b1.ok());
  EXPECT_TRUE(b1->first >= w->end() || b1->first + b1->count <= w->first) << b1->first;
  // The owner continues right after its first run, even beyond the window's
  // end: a request larger than the window gets the window (a partial run).
  auto a2 = alloc(a1->first + a1->count, 600, 100, 512);
  ASSERT_TRUE(a2.ok());
  EXPECT_EQ(a2->first, a1->first + a1->count);
  EXPECT_EQ(a2->count, 512u);
  EXPECT_FALSE(o.blocks->windows().get(100)) << "the window is used up";

  // A fresh window for the first inode, then a third fills the filesystem:
  // once nothing but the window is free, space is short and it goes.
  auto a3 = alloc(a2->first + a2->count, 8, 100, 4096);
  ASSERT_TRUE(a3.ok());
  ASSERT_TRUE(o.blocks->windows().get(100));
  for (;;) {
    auto c = alloc(goal, 4096, 300, 0);
    if (!c.ok()) {
      EXPECT_EQ(c.error().code(), ENOSPC);
      break;
    }
  }
  EXPECT_TRUE(o.blocks->windows().empty());
  EXPECT_EQ(o.groups->unclaimed_free_blocks(), 0);

  // Give everything back: the image is as mke2fs left it.
  for (const BlockExtent& e : taken) {
    auto h = o.volume->start(16);
    ASSERT_TRUE(h.ok());
    ASSERT_TRUE(o.blocks->free(*h, e.first, e.count, false).ok());
    ASSERT_TRUE(h->stop().ok());
  }
  ASSERT_TRUE(o.blocks->check_counts().ok());
  ASSERT_TRUE(o.close().ok());
  auto fsck = testing::run({"e2fsck", "-fn", img});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.out;
}

}  // namespace
}  // namespace uext::alloc
