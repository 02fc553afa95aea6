#include "disk/partition_table.h"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <vector>

#include "support/process.h"

namespace uext::disk {
namespace {

using uext::testing::run_ok;
using uext::testing::TempDir;

// A disk image with the table sfdisk writes from `script`, read back whole.
std::vector<std::byte> disk_with_table(const TempDir& dir, const std::string& script) {
  const std::string image = dir / "disk.img";
  run_ok({"truncate", "-s", "64M", image});
  run_ok({"sh", "-c", "printf '" + script + "' | sfdisk -q " + image});
  std::ifstream in(image, std::ios::binary);
  std::vector<char> raw(1 << 20);  // the tables lie in the first MiB
  in.read(raw.data(), static_cast<std::streamsize>(raw.size()));
  std::vector<std::byte> out(raw.size());
  std::transform(raw.begin(), raw.end(), out.begin(), [](char c) { return static_cast<std::byte>(c); });
  return out;
}

TEST(PartitionTable, ReadsTheMbrSfdiskWrites) {
  TempDir dir;
  const auto disk = disk_with_table(
      dir, "label: dos\\nstart=2048, size=20480, type=83\\nstart=22528, size=4096, type=82\\nstart=30000, type=c\\n");
  ASSERT_TRUE(has_mbr_signature(Bytes(disk).first(kSectorSize)));
  uint64_t gpt = 99;
  auto parts = decode_mbr(Bytes(disk).first(kSectorSize), &gpt);
  EXPECT_EQ(gpt, 0u);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0].number, 1u);
  EXPECT_EQ(parts[0].offset, 2048u * 512);
  EXPECT_EQ(parts[0].size, 20480u * 512);
  EXPECT_EQ(parts[0].type, "0x83");
  EXPECT_EQ(parts[1].offset, 22528u * 512);
  EXPECT_EQ(parts[1].type, "0x82");
  EXPECT_EQ(parts[2].number, 3u);
  EXPECT_EQ(parts[2].offset, 30000u * 512);
  EXPECT_EQ(parts[2].size, (64u * 2048 - 30000) * 512);  // to the end of the disk
  EXPECT_EQ(parts[2].type, "0x0c");
}

TEST(PartitionTable, ReadsTheGptSfdiskWrites) {
  TempDir dir;
  const auto disk = disk_with_table(
      dir, "label: gpt\\nstart=2048, size=20480, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\\n"
           "start=40960, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\\n");
  uint64_t gpt = 0;
  auto mbr = decode_mbr(Bytes(disk).first(kSectorSize), &gpt);
  EXPECT_TRUE(mbr.empty());  // only the protective entry
  ASSERT_EQ(gpt, 1u);
  GptHeader header;
  ASSERT_TRUE(decode_gpt_header(Bytes(disk).subspan(gpt * kSectorSize, kSectorSize), header));
  EXPECT_EQ(header.entries_lba, 2u);
  EXPECT_EQ(header.entry_size, 128u);
  EXPECT_EQ(header.entry_count, 128u);
  auto parts = decode_gpt_entries(Bytes(disk).subspan(header.entries_lba * kSectorSize,
                                                      size_t{header.entry_count} * header.entry_size),
                                  header);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0].number, 1u);
  EXPECT_EQ(parts[0].offset, 2048u * 512);
  EXPECT_EQ(parts[0].size, 20480u * 512);
  EXPECT_EQ(parts[0].type, "0fc63daf-8483-4772-8e79-3d69d8477de4");
  EXPECT_EQ(parts[1].number, 2u);
  EXPECT_EQ(parts[1].offset, 40960u * 512);
  EXPECT_EQ(parts[1].type, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
}

TEST(PartitionTable, NothingFromWhatIsNoTable) {
  std::vector<std::byte> zeros(4096);
  EXPECT_FALSE(has_mbr_signature(zeros));
  EXPECT_TRUE(decode_mbr(zeros, nullptr).empty());
  GptHeader header;
  EXPECT_FALSE(decode_gpt_header(zeros, header));
  EXPECT_FALSE(decode_gpt_header(Bytes(zeros).first(40), header));  // too short
  // A header claiming entries too small to hold one decodes none.
  header.entries_lba = 0;
  header.entry_count = 1000;
  header.entry_size = 16;
  EXPECT_TRUE(decode_gpt_entries(zeros, header).empty());
  // Entries past the buffer are not read.
  header.entry_size = 128;
  EXPECT_TRUE(decode_gpt_entries(Bytes(zeros).first(100), header).empty());
}

}  // namespace
}  // namespace uext::disk
