#include "disk/group_desc.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "disk/checksum.h"
#include "support/process.h"
#include "support/regex.h"

namespace uext::disk {
namespace {

using uext::testing::run_ok;
using uext::testing::TempDir;

std::vector<std::byte> read_at(const std::string& path, uint64_t offset, size_t n) {
  std::ifstream f(path, std::ios::binary);
  std::vector<std::byte> buf(n);
  f.seekg(static_cast<std::streamoff>(offset));
  f.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(n));
  EXPECT_EQ(static_cast<size_t>(f.gcount()), n) << path << " @" << offset;
  return buf;
}

std::string make_image(const TempDir& dir, const std::vector<std::string>& options, const std::string& size) {
  const std::string image = dir / "fs.img";
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  argv.insert(argv.end(), options.begin(), options.end());
  argv.push_back(image);
  argv.push_back(size);
  run_ok(argv);
  return image;
}

Superblock load_superblock(const std::string& image) {
  auto sb = decode_superblock(read_at(image, kSuperblockOffset, kSuperblockSize), 0);
  EXPECT_TRUE(sb.ok()) << sb.error().message();
  return sb.ok() ? *sb : Superblock{};
}

// One group as dumpe2fs prints it.
struct DumpedGroup {
  std::optional<uint32_t> csum;
  uint16_t flags = 0;
  bool has_superblock = false;
  std::optional<uint64_t> desc_block;  // first block of the descriptors it holds
  uint64_t block_bitmap = 0, inode_bitmap = 0, itable_first = 0, itable_last = 0;
  std::optional<uint32_t> block_bitmap_csum, inode_bitmap_csum;
  uint32_t free_blocks = 0, free_inodes = 0, dirs = 0;
  std::optional<uint32_t> unused_inodes;
};

std::vector<DumpedGroup> dumpe2fs_groups(const std::string& image) {
  static const testing::Regex head(R"(^Group (\d+): \(Blocks \d+-\d+\)(?: csum 0x([0-9a-f]+))?(?: \[(.*)\])?)");
  static const testing::Regex desc(R"(Group descriptors? at (\d+))");
  static const testing::Regex bmap(R"(^  (Block|Inode) bitmap at (\d+)[^,]*(?:, csum 0x([0-9a-f]+))?)");
  static const testing::Regex itable(R"(^  Inode table at (\d+)-(\d+))");
  static const testing::Regex counts(
      R"(^  (\d+) free (?:blocks|clusters), (\d+) free inodes, (\d+) directories(?:, (\d+) unused inodes)?)");
  std::vector<DumpedGroup> groups;
  std::istringstream in(run_ok({"dumpe2fs", image}));
  std::string line;
  testing::RegexMatch m;
  while (std::getline(in, line)) {
    if (regex_search(line, m, head)) {
      groups.emplace_back();
      if (m[2].matched) groups.back().csum = std::stoul(m[2], nullptr, 16);
      const std::string flags = m[3];
      if (flags.find("INODE_UNINIT") != std::string::npos) groups.back().flags |= kBgInodeUninit;
      if (flags.find("BLOCK_UNINIT") != std::string::npos) groups.back().flags |= kBgBlockUninit;
      if (flags.find("ITABLE_ZEROED") != std::string::npos) groups.back().flags |= kBgInodeZeroed;
      continue;
    }
    if (groups.empty()) continue;
    DumpedGroup& g = groups.back();
    if (line.find("superblock at") != std::string::npos) g.has_superblock = true;
    if (regex_search(line, m, desc)) g.desc_block = std::stoull(m[1]);
    if (regex_search(line, m, bmap)) {
      const bool block = m[1] == "Block";
      (block ? g.block_bitmap : g.inode_bitmap) = std::stoull(m[2]);
      if (m[3].matched) (block ? g.block_bitmap_csum : g.inode_bitmap_csum) = std::stoul(m[3], nullptr, 16);
    }
    if (regex_search(line, m, itable)) {
      g.itable_first = std::stoull(m[1]);
      g.itable_last = std::stoull(m[2]);
    }
    if (regex_search(line, m, counts)) {
      g.free_blocks = std::stoul(m[1]);
      g.free_inodes = std::stoul(m[2]);
      g.dirs = std::stoul(m[3]);
      if (m[4].matched) g.unused_inodes = std::stoul(m[4]);
    }
  }
  return groups;
}

std::vector<std::byte> read_desc(const std::string& image, const Superblock& sb, uint32_t group) {
  DescLocation loc = group_desc_location(sb, group);
  return read_at(image, loc.block * sb.block_size() + loc.offset, sb.desc_size());
}

struct Config {
  std::vector<std::string> options;
  std::string size;
};

class GroupDescVsDumpe2fs : public ::testing::TestWithParam<Config> {};

TEST_P(GroupDescVsDumpe2fs, EveryDescriptorMatchesAndRoundTrips) {
  TempDir dir;
  const std::string image = make_image(dir, GetParam().options, GetParam().size);
  const Superblock sb = load_superblock(image);
  const auto dumped = dumpe2fs_groups(image);
  ASSERT_EQ(dumped.size(), sb.group_count());
  ASSERT_GT(dumped.size(), 1u);
  const uint32_t per_block = sb.block_size() / sb.desc_size();
  const bool csums = sb.has_metadata_csum() || sb.has_ro_compat(ro_compat::kGdtCsum);
  const uint64_t itable_blocks = (uint64_t{sb.s_inodes_per_group} * sb.inode_size()) / sb.block_size();

  for (uint32_t g = 0; g < sb.group_count(); ++g) {
    SCOPED_TRACE("group " + std::to_string(g));
    const DumpedGroup& want = dumped[g];
    EXPECT_EQ(group_has_superblock(sb, g), want.has_superblock);

    // Where the descriptor lives, per dumpe2fs's "Group descriptor(s) at".
    const uint32_t holder = sb.has_incompat(incompat::kMetaBg) ? (g / per_block) * per_block : 0;
    ASSERT_TRUE(dumped[holder].desc_block.has_value());
    const uint64_t first_desc_block = *dumped[holder].desc_block;
    const DescLocation loc = group_desc_location(sb, g);
    EXPECT_EQ(loc.block, sb.has_incompat(incompat::kMetaBg) ? first_desc_block : first_desc_block + g / per_block);
    EXPECT_EQ(loc.offset, (g % per_block) * sb.desc_size());

    const auto raw = read_desc(image, sb, g);
    auto gd = decode_group_desc(sb, g, raw);
    ASSERT_TRUE(gd.ok()) << gd.error().message();
    EXPECT_EQ(gd->bg_block_bitmap, want.block_bitmap);
    EXPECT_EQ(gd->bg_inode_bitmap, want.inode_bitmap);
    EXPECT_EQ(gd->bg_inode_table, want.itable_first);
    EXPECT_EQ(want.itable_last - want.itable_first + 1, itable_blocks);
    EXPECT_EQ(gd->bg_free_blocks_count, want.free_blocks);
    EXPECT_EQ(gd->bg_free_inodes_count, want.free_inodes);
    EXPECT_EQ(gd->bg_used_dirs_count, want.dirs);
    if (want.unused_inodes) {
      EXPECT_EQ(gd->bg_itable_unused, *want.unused_inodes);
    }
    EXPECT_EQ(gd->bg_flags, want.flags);
    EXPECT_EQ(want.csum.has_value(), csums);
    if (csums) {
      EXPECT_EQ(gd->bg_checksum, *want.csum);
      EXPECT_EQ(group_desc_checksum(sb, g, raw), *want.csum);
    } else {
      EXPECT_EQ(group_desc_checksum(sb, g, raw), 0);
    }

    if (sb.has_metadata_csum()) {
      ASSERT_TRUE(want.block_bitmap_csum && want.inode_bitmap_csum);
      EXPECT_EQ(gd->bg_block_bitmap_csum, *want.block_bitmap_csum);
      EXPECT_EQ(gd->bg_inode_bitmap_csum, *want.inode_bitmap_csum);
      const uint32_t keep = sb.desc_size() >= 64 ? 0xFFFFFFFF : 0xFFFF;
      if (!(gd->bg_flags & kBgBlockUninit)) {
        auto bitmap = read_at(image, gd->bg_block_bitmap * sb.block_size(), sb.block_size());
        EXPECT_EQ(block_bitmap_checksum(sb, bitmap) & keep, gd->bg_block_bitmap_csum);
      }
      if (!(gd->bg_flags & kBgInodeUninit)) {
        auto bitmap = read_at(image, gd->bg_inode_bitmap * sb.block_size(), sb.block_size());
        EXPECT_EQ(inode_bitmap_checksum(sb, bitmap) & keep, gd->bg_inode_bitmap_csum);
      }
    }

    std::vector<std::byte> again = raw;
    encode_group_desc(sb, g, *gd, again);
    EXPECT_TRUE(again == raw) << "encode(decode(raw)) differs";
    // mke2fs leaves the reserved bytes zero, so every meaningful byte is a field.
    std::vector<std::byte> fresh(raw.size());
    encode_group_desc(sb, g, *gd, fresh);
    EXPECT_TRUE(fresh == raw) << "encode into zeroes differs";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Mke2fsConfigs, GroupDescVsDumpe2fs,
    ::testing::Values(Config{{"-t", "ext4"}, "64M"}, Config{{"-t", "ext4", "-b", "4096"}, "600M"},
                      Config{{"-t", "ext4", "-O", "^64bit"}, "64M"},
                      Config{{"-t", "ext4", "-O", "^metadata_csum"}, "64M"},
                      Config{{"-t", "ext4", "-O", "^metadata_csum,^64bit"}, "64M"},
                      Config{{"-t", "ext4", "-O", "^metadata_csum,uninit_bg"}, "64M"},
                      Config{{"-t", "ext4", "-O", "^metadata_csum,^64bit,uninit_bg"}, "64M"},
                      Config{{"-t", "ext4", "-O", "^metadata_csum,uninit_bg", "-E", "desc_size=128"}, "64M"},
                      Config{{"-t", "ext4", "-O", "^flex_bg"}, "64M"}, Config{{"-t", "ext3"}, "64M"},
                      Config{{"-t", "ext2", "-O", "^sparse_super,^resize_inode"}, "32M"},
                      Config{{"-t", "ext4", "-O", "^resize_inode,meta_bg", "-b", "4096"}, "600M"},
                      Config{{"-t", "ext4", "-O", "^resize_inode,meta_bg,^64bit", "-b", "1024"}, "300M"},
                      Config{{"-t", "ext4", "-E", "desc_size=256", "-b", "4096"}, "600M"},
                      Config{{"-t", "ext4", "-O", "sparse_super2", "-b", "1024"}, "128M"},
                      Config{{"-t", "ext4", "-O", "bigalloc", "-b", "1024"}, "256M"}));

TEST(GroupDesc, SparseSuperBackups) {
  Superblock sb;
  sb.s_feature_ro_compat = ro_compat::kSparseSuper;
  std::vector<uint32_t> with;
  for (uint32_t g = 0; g < 400; ++g) {
    if (group_has_superblock(sb, g)) with.push_back(g);
  }
  EXPECT_EQ(with, (std::vector<uint32_t>{0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343}));
  sb.s_feature_ro_compat = 0;
  EXPECT_TRUE(group_has_superblock(sb, 2));
  EXPECT_TRUE(group_has_superblock(sb, 398));
  sb.s_feature_compat = compat::kSparseSuper2;
  sb.s_backup_bgs = {1, 17};
  EXPECT_TRUE(group_has_superblock(sb, 0));
  EXPECT_TRUE(group_has_superblock(sb, 1));
  EXPECT_TRUE(group_has_superblock(sb, 17));
  EXPECT_FALSE(group_has_superblock(sb, 3));
}

class GroupDescCorruption : public ::testing::Test {
 protected:
  void load(const std::vector<std::string>& options) {
    image_ = make_image(dir_, options, "64M");
    sb_ = load_superblock(image_);
  }
  TempDir dir_;
  std::string image_;
  Superblock sb_;
};

TEST_F(GroupDescCorruption, ChecksumMismatchIsEbadmsg) {
  for (auto options : {std::vector<std::string>{"-t", "ext4"}, std::vector<std::string>{"-t", "ext4", "-O", "^metadata_csum,uninit_bg"},
                       std::vector<std::string>{"-t", "ext4", "-O", "^metadata_csum,^64bit,uninit_bg"}}) {
    load(options);
    for (uint32_t g : {0u, 3u}) {
      for (size_t at = 0; at < sb_.desc_size(); at += 5) {
        auto raw = read_desc(image_, sb_, g);
        raw[at] ^= std::byte{0x04};
        auto r = decode_group_desc(sb_, g, raw);
        ASSERT_FALSE(r.ok()) << "byte " << at << " group " << g << " options " << options.back();
        EXPECT_EQ(r.error().code(), kErrBadChecksum) << r.error().message();
        EXPECT_EQ(r.error().message().rfind("group " + std::to_string(g) + " descriptor: checksum", 0), 0u)
            << r.error().message();
      }
    }
  }
}

// Re-encoding (which reseals the checksum) lets the location checks trip.
Result<GroupDesc> reencoded(const Superblock& sb, uint32_t group, std::vector<std::byte> raw,
                            void (*change)(GroupDesc&)) {
  auto gd = decode_group_desc(sb, group, raw);
  EXPECT_TRUE(gd.ok());
  change(*gd);
  encode_group_desc(sb, group, *gd, raw);
  return decode_group_desc(sb, group, raw);
}

TEST_F(GroupDescCorruption, LocationsOutsideTheFilesystem) {
  load({"-t", "ext4"});  // flex_bg: anywhere in the filesystem is fine
  auto raw = read_desc(image_, sb_, 3);
  auto r = reencoded(sb_, 3, raw, [](GroupDesc& gd) { gd.bg_inode_table = 99999; });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), kErrCorrupted);
  EXPECT_EQ(r.error().message(),
            "group 3 descriptor: inode table at blocks 99999-100510 lies outside the filesystem (65536 blocks)");
  r = reencoded(sb_, 3, raw, [](GroupDesc& gd) { gd.bg_inode_table = 65100; });  // runs off the end
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("inode table at blocks 65100-65611"), std::string::npos);
  r = reencoded(sb_, 3, raw, [](GroupDesc& gd) { gd.bg_block_bitmap = uint64_t{1} << 40; });
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("block bitmap at block 1099511627776"), std::string::npos);
  r = reencoded(sb_, 3, raw, [](GroupDesc& gd) { gd.bg_inode_bitmap = 1; });  // the superblock
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("inode bitmap at block 1 lies outside"), std::string::npos);
  r = reencoded(sb_, 3, raw, [](GroupDesc& gd) { gd.bg_inode_table = ~uint64_t{0} - 3; });  // no wraparound
  ASSERT_FALSE(r.ok());
  r = reencoded(sb_, 3, raw, [](GroupDesc& gd) { gd.bg_block_bitmap = 30000; });
  EXPECT_TRUE(r.ok()) << "flex_bg allows bitmaps in other groups";
}

TEST_F(GroupDescCorruption, WithoutFlexBgMetadataStaysInItsGroup) {
  load({"-t", "ext4", "-O", "^flex_bg"});
  auto raw = read_desc(image_, sb_, 2);
  auto r = reencoded(sb_, 2, raw, [](GroupDesc& gd) { gd.bg_block_bitmap = 30000; });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message(),
            "group 2 descriptor: block bitmap at block 30000 lies outside the group (blocks 16385-24576)");
}

TEST_F(GroupDescCorruption, CountsBeyondTheGroup) {
  load({"-t", "ext4"});
  auto raw = read_desc(image_, sb_, 1);
  auto r = reencoded(sb_, 1, raw, [](GroupDesc& gd) { gd.bg_free_inodes_count = 2049; });
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("bg_free_inodes_count 2049"), std::string::npos) << r.error().message();
  r = reencoded(sb_, 1, raw, [](GroupDesc& gd) { gd.bg_itable_unused = 70000; });
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("bg_itable_unused 70000"), std::string::npos) << r.error().message();
  r = reencoded(sb_, 1, raw, [](GroupDesc& gd) { gd.bg_free_blocks_count = 8193; });
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("bg_free_blocks_count 8193"), std::string::npos) << r.error().message();
  r = reencoded(sb_, 1, raw, [](GroupDesc& gd) { gd.bg_used_dirs_count = 5000; });
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("bg_used_dirs_count 5000"), std::string::npos) << r.error().message();
}

TEST_F(GroupDescCorruption, NoChecksumImagesStillCheckLocations) {
  load({"-t", "ext2"});
  auto raw = read_desc(image_, sb_, 0);
  put_le32(raw, 0x08, 99999);
  auto r = decode_group_desc(sb_, 0, raw);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), kErrCorrupted);
  EXPECT_NE(r.error().message().find("inode table at blocks 99999-"), std::string::npos) << r.error().message();
  auto shortr = decode_group_desc(sb_, 0, Bytes(raw.data(), 16));
  ASSERT_FALSE(shortr.ok());
}

}  // namespace
}  // namespace uext::disk
