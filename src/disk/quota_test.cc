#include "disk/quota.h"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <optional>
#include <vector>

#include "support/process.h"

namespace uext::disk::quota {
namespace {

using uext::testing::run_ok;
using uext::testing::TempDir;

// The user quota file of a fresh image, as mke2fs writes it (dumped by
// debugfs): the header, a four-block path down the tree, and the data
// block holding id 0 with the root directory and lost+found.
std::vector<std::byte> mke2fs_user_quota_file(const TempDir& dir) {
  const std::string image = dir / "fs.img";
  const std::string dump = dir / "quota.bin";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", "1024", "-O", "quota", image, "8M"});
  run_ok({"debugfs", "-R", "dump <3> " + dump, image});
  std::ifstream in(dump, std::ios::binary);
  std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(raw.size());
  std::transform(raw.begin(), raw.end(), out.begin(), [](char c) { return static_cast<std::byte>(c); });
  return out;
}

TEST(QuotaFormat, ReadsWhatMke2fsWrote) {
  TempDir dir;
  const auto file = mke2fs_user_quota_file(dir);
  ASSERT_GE(file.size(), 6 * kBlockSize);
  auto info = decode_info(std::span(file).first(kBlockSize), Type::kUser);
  ASSERT_TRUE(info.ok()) << info.error().message();
  EXPECT_EQ(info->blocks, file.size() / kBlockSize);
  EXPECT_EQ(info->block_grace, 7u * 24 * 3600);  // a week, quota-tools' default
  EXPECT_EQ(info->inode_grace, 7u * 24 * 3600);
  EXPECT_EQ(info->free_block, 0u);
  // Down the tree for id 0: slot 0 at every level.
  uint32_t block = kTreeRoot;
  for (int depth = 0; depth < kTreeDepth; ++depth) {
    block = tree_ref(std::span(file).subspan(block * kBlockSize, kBlockSize), tree_index(0, depth));
    ASSERT_NE(block, 0u) << "depth " << depth;
    ASSERT_LT(block, info->blocks);
  }
  auto data = std::span<const std::byte>(file).subspan(block * kBlockSize, kBlockSize);
  EXPECT_EQ(decode_data_header(data).entries, 1);
  EXPECT_EQ(info->free_entry, block);  // 13 entries left in it
  auto entry = data.subspan(entry_offset(0), kEntrySize);
  ASSERT_FALSE(entry_unused(entry));
  EXPECT_EQ(entry_id(entry), 0u);
  // The root directory (one 1 KiB block) and lost+found (twelve).
  EXPECT_EQ(entry_usage(entry).inodes, 2u);
  EXPECT_EQ(entry_usage(entry).space, 13u * 1024);
}

TEST(QuotaFormat, RefusesAnotherKindsFileOrVersion) {
  TempDir dir;
  auto file = mke2fs_user_quota_file(dir);
  auto as_group = decode_info(std::span(file).first(kBlockSize), Type::kGroup);
  ASSERT_FALSE(as_group.ok());
  EXPECT_EQ(as_group.error().code(), kErrCorrupted);
  EXPECT_NE(as_group.error().message().find("group quota file: magic 0xd9c01f11"), std::string::npos)
      << as_group.error().message();
  put_le32(file, 4, 0);  // version 0 (vfsv0): 32-bit limits, another entry size
  auto v0 = decode_info(std::span(file).first(kBlockSize), Type::kUser);
  ASSERT_FALSE(v0.ok());
  EXPECT_NE(v0.error().message().find("version 0"), std::string::npos) << v0.error().message();
}

TEST(QuotaFormat, InfoRoundTrips) {
  std::vector<std::byte> block(kBlockSize);
  put_le32(block, 0, 0xD9C03F14);  // project
  put_le32(block, 4, 1);
  Info info{10, 20, 0, 9, 7, 5};
  encode_info(block, info);
  auto back = decode_info(block, Type::kProject);
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->block_grace, 10u);
  EXPECT_EQ(back->inode_grace, 20u);
  EXPECT_EQ(back->blocks, 9u);
  EXPECT_EQ(back->free_block, 7u);
  EXPECT_EQ(back->free_entry, 5u);
}

// An entry for id 0 with nothing in it would read as a free slot, so it
// carries an inode grace deadline of 1; once it counts something that
// placeholder goes, and comes back when it counts nothing again. Limits
// are left as they were.
TEST(QuotaFormat, EntryUsageKeepsIdZeroVisibleAndLimitsIntact) {
  std::vector<std::byte> entry(kEntrySize);
  set_entry_usage(entry, 0, Usage{0, 0});
  EXPECT_FALSE(entry_unused(entry));
  EXPECT_EQ(le64(entry, 64), 1u);
  set_entry_usage(entry, 0, Usage{4096, 1});
  EXPECT_EQ(le64(entry, 64), 0u);
  EXPECT_EQ(entry_usage(entry).space, 4096u);
  EXPECT_EQ(entry_usage(entry).inodes, 1u);
  set_entry_usage(entry, 0, Usage{0, 0});
  EXPECT_EQ(le64(entry, 64), 1u);

  std::vector<std::byte> limited(kEntrySize);
  put_le64(limited, 8, 100);     // inode hard limit
  put_le64(limited, 32, 50000);  // block hard limit
  set_entry_usage(limited, 1234, Usage{8192, 3});
  EXPECT_EQ(entry_id(limited), 1234u);
  EXPECT_EQ(le64(limited, 8), 100u);
  EXPECT_EQ(le64(limited, 32), 50000u);
  EXPECT_EQ(le64(limited, 64), 0u);
}

TEST(QuotaFormat, TreeIndexTakesTheIdMostSignificantByteFirst) {
  EXPECT_EQ(tree_index(0x12345678, 0), 0x12u);
  EXPECT_EQ(tree_index(0x12345678, 1), 0x34u);
  EXPECT_EQ(tree_index(0x12345678, 2), 0x56u);
  EXPECT_EQ(tree_index(0x12345678, 3), 0x78u);
  EXPECT_EQ(kEntriesPerBlock, 14u);
}

TEST(QuotaFormat, ANewFileIsWhatMke2fsWrites) {
  TempDir dir;
  const auto mke2fs_file = mke2fs_user_quota_file(dir);
  const auto built = build_file(Type::kUser, {{0, Usage{13 * 1024, 2}}});
  EXPECT_EQ(built, mke2fs_file);
}

// Finds `id` by walking the tree of `file`; nullopt when it has no entry.
std::optional<Usage> lookup(const std::vector<std::byte>& file, uint32_t id) {
  uint32_t block = kTreeRoot;
  for (int depth = 0; depth < kTreeDepth; ++depth) {
    block = tree_ref(std::span(file).subspan(block * kBlockSize, kBlockSize), tree_index(id, depth));
    if (block == 0) return std::nullopt;
  }
  auto data = std::span<const std::byte>(file).subspan(block * kBlockSize, kBlockSize);
  for (uint32_t slot = 0; slot < kEntriesPerBlock; ++slot) {
    auto entry = data.subspan(entry_offset(slot), kEntrySize);
    if (!entry_unused(entry) && entry_id(entry) == id) return entry_usage(entry);
  }
  return std::nullopt;
}

TEST(QuotaFormat, ANewFileFindsEveryIdThroughItsTree) {
  std::vector<IdUsage> ids;
  // Ids sharing tree blocks, spread over them, and more than one data
  // block's worth; given out of order.
  for (uint32_t i = 0; i < 20; ++i) ids.push_back({1000 + i, Usage{4096u * (i + 1), i + 1}});
  ids.push_back({70000, Usage{1024, 1}});
  ids.push_back({0xFFFFFFFE, Usage{2048, 3}});
  ids.push_back({0, Usage{0, 0}});  // id 0, charged nothing, still findable
  const auto file = build_file(Type::kGroup, ids);
  ASSERT_EQ(file.size() % kBlockSize, 0u);
  auto info = decode_info(std::span(file).first(kBlockSize), Type::kGroup);
  ASSERT_TRUE(info.ok()) << info.error().message();
  EXPECT_EQ(info->blocks, file.size() / kBlockSize);
  for (const auto& e : ids) {
    auto u = lookup(file, e.id);
    ASSERT_TRUE(u.has_value()) << "id " << e.id;
    EXPECT_EQ(u->space, e.usage.space) << "id " << e.id;
    EXPECT_EQ(u->inodes, e.usage.inodes) << "id " << e.id;
  }
  EXPECT_FALSE(lookup(file, 1020).has_value());
  // 23 entries: one full data block and one with 9, which is the one on
  // the free-entry list.
  ASSERT_NE(info->free_entry, 0u);
  auto last = std::span<const std::byte>(file).subspan(info->free_entry * kBlockSize, kBlockSize);
  EXPECT_EQ(decode_data_header(last).entries, 23 - kEntriesPerBlock);
  EXPECT_EQ(decode_data_header(last).next_free, 0u);
}

}  // namespace
}  // namespace uext::disk::quota
