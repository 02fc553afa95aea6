#include "disk/superblock.h"

#include <gtest/gtest.h>

#include <cctype>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>

#include "disk/checksum.h"
#include "disk/group_desc.h"
#include "support/images.h"
#include "support/process.h"

namespace uext::disk {
namespace {

using uext::testing::dumpe2fs_header;
using uext::testing::expect_dumpe2fs_shows;
using uext::testing::run;
using uext::testing::run_ok;
using uext::testing::TempDir;

std::vector<std::byte> read_at(const std::string& path, uint64_t offset, size_t n) {
  std::ifstream f(path, std::ios::binary);
  std::vector<std::byte> buf(n);
  f.seekg(static_cast<std::streamoff>(offset));
  f.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(n));
  EXPECT_EQ(static_cast<size_t>(f.gcount()), n) << path;
  return buf;
}

void write_at(const std::string& path, uint64_t offset, Bytes data) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

uint64_t file_size(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  return static_cast<uint64_t>(f.tellg());
}

int count_groups(const std::string& image) {
  std::istringstream in(run_ok({"dumpe2fs", image}));
  std::string line;
  int n = 0;
  while (std::getline(in, line)) n += line.rfind("Group ", 0) == 0 && std::isdigit(static_cast<unsigned char>(line[6]));
  return n;
}

uint64_t num(const std::string& s) { return std::stoull(s, nullptr, 0); }

std::string make_image(const TempDir& dir, const std::vector<std::string>& options, const std::string& size = "64M") {
  const std::string image = dir / "fs.img";
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  argv.insert(argv.end(), options.begin(), options.end());
  argv.push_back(image);
  argv.push_back(size);
  run_ok(argv);
  return image;
}

class SuperblockVsDumpe2fs : public ::testing::TestWithParam<std::vector<std::string>> {};

TEST_P(SuperblockVsDumpe2fs, DecodesWhatDumpe2fsReportsAndRoundTrips) {
  TempDir dir;
  const std::string image = make_image(dir, GetParam());
  auto raw = read_at(image, kSuperblockOffset, kSuperblockSize);
  auto sb = decode_superblock(raw, file_size(image));
  ASSERT_TRUE(sb.ok()) << sb.error().message();
  auto h = dumpe2fs_header(image);

  EXPECT_EQ(sb->s_inodes_count, num(h["Inode count"]));
  EXPECT_EQ(sb->s_blocks_count, num(h["Block count"]));
  EXPECT_EQ(sb->s_r_blocks_count, num(h["Reserved block count"]));
  EXPECT_EQ(sb->s_free_blocks_count, num(h["Free blocks"]));
  EXPECT_EQ(sb->s_free_inodes_count, num(h["Free inodes"]));
  EXPECT_EQ(sb->s_first_data_block, num(h["First block"]));
  EXPECT_EQ(sb->block_size(), num(h["Block size"]));
  EXPECT_EQ(sb->s_blocks_per_group, num(h["Blocks per group"]));
  EXPECT_EQ(sb->s_inodes_per_group, num(h["Inodes per group"]));
  if (sb->s_rev_level >= 1) {  // dumpe2fs prints these for dynamic revisions only
    EXPECT_EQ(sb->inode_size(), num(h["Inode size"]));
    EXPECT_EQ(sb->s_first_ino, num(h["First inode"]));
  }
  EXPECT_EQ(sb->uuid_string(), h["Filesystem UUID"]);
  EXPECT_EQ(sb->volume_name().empty() ? "<none>" : sb->volume_name(), h["Filesystem volume name"]);
  EXPECT_EQ(sb->s_reserved_gdt_blocks, h.count("Reserved GDT blocks") ? num(h["Reserved GDT blocks"]) : 0);
  EXPECT_EQ(sb->s_max_mnt_count, std::stoi(h["Maximum mount count"]));
  EXPECT_EQ(sb->group_count(), count_groups(image));
  const uint32_t desc_size = sb->is_64bit() ? static_cast<uint32_t>(num(h["Group descriptor size"])) : 32u;
  EXPECT_EQ(sb->desc_size(), desc_size);
  if (h.count("Flex block group size")) {
    EXPECT_EQ(1u << sb->s_log_groups_per_flex, num(h["Flex block group size"]));
  }
  if (h.count("Journal inode")) {
    EXPECT_EQ(sb->s_journal_inum, num(h["Journal inode"]));
  }
  if (h.count("Required extra isize")) {
    EXPECT_EQ(sb->s_min_extra_isize, num(h["Required extra isize"]));
    EXPECT_EQ(sb->s_want_extra_isize, num(h["Desired extra isize"]));
  }
  if (sb->has_metadata_csum()) {
    EXPECT_EQ(sb->s_checksum, num(h["Checksum"]));
    EXPECT_EQ(sb->s_checksum, superblock_checksum(raw));
    EXPECT_EQ(sb->s_checksum_type, kChecksumTypeCrc32c);
  }
  if (sb->has_incompat(incompat::kCsumSeed)) {
    EXPECT_EQ(sb->csum_seed(), num(h["Checksum seed"]));
  } else {
    EXPECT_EQ(sb->csum_seed(), crc32c(~0u, as_bytes(sb->s_uuid.data(), 16)));
  }

  std::vector<std::byte> again = raw;
  encode_superblock(*sb, again);
  EXPECT_TRUE(again == raw) << "encode(decode(raw)) differs from raw";
}

INSTANTIATE_TEST_SUITE_P(
    Mke2fsConfigs, SuperblockVsDumpe2fs,
    ::testing::Values(std::vector<std::string>{"-t", "ext4"}, std::vector<std::string>{"-t", "ext4", "-b", "4096"},
                      std::vector<std::string>{"-t", "ext3", "-L", "backup-vol"},
                      std::vector<std::string>{"-t", "ext2", "-b", "2048"},
                      std::vector<std::string>{"-t", "ext2", "-r", "0"},
                      std::vector<std::string>{"-t", "ext4", "-O", "^metadata_csum"},
                      std::vector<std::string>{"-t", "ext4", "-O", "^64bit"},
                      std::vector<std::string>{"-t", "ext4", "-O", "metadata_csum_seed", "-I", "128"},
                      std::vector<std::string>{"-t", "ext4", "-O", "^resize_inode,meta_bg", "-b", "1024"},
                      std::vector<std::string>{"-t", "ext4", "-O", "bigalloc", "-b", "1024"},
                      std::vector<std::string>{"-t", "ext4", "-O", "bigalloc", "-b", "4096", "-C", "65536"},
                      std::vector<std::string>{"-t", "ext4", "-E", "desc_size=256"},
                      std::vector<std::string>{"-t", "ext4", "-O", "sparse_super2", "-N", "5000"}));

TEST(Superblock, RevisionZeroImpliesFirstInoAndInodeSize) {
  TempDir dir;
  const std::string image = make_image(dir, {"-t", "ext2", "-r", "0"});
  auto raw = read_at(image, kSuperblockOffset, kSuperblockSize);
  auto sb = decode_superblock(raw, 0);
  ASSERT_TRUE(sb.ok()) << sb.error().message();
  EXPECT_EQ(sb->s_rev_level, 0u);
  EXPECT_EQ(sb->s_first_ino, 11u);
  EXPECT_EQ(sb->inode_size(), 128u);
  // The implied values are not written back into a revision 0 superblock.
  std::vector<std::byte> again = raw;
  encode_superblock(*sb, again);
  EXPECT_TRUE(again == raw);
}

TEST(Superblock, TimesUseTheHighBytes) {
  TempDir dir;
  const std::string image = make_image(dir, {"-t", "ext4", "-O", "^metadata_csum"});
  auto raw = read_at(image, kSuperblockOffset, kSuperblockSize);
  auto sb = decode_superblock(raw, 0);
  ASSERT_TRUE(sb.ok());
  const int64_t mkfs = sb->s_mkfs_time;
  EXPECT_EQ(mkfs, static_cast<int64_t>(le32(raw, 0x108)));
  sb->s_mkfs_time = (int64_t{3} << 32) + 12345;  // year ~2378
  sb->s_wtime = 0xF0000000;                      // past 2038: unsigned, not negative
  encode_superblock(*sb, raw);
  EXPECT_EQ(le32(raw, 0x108), 12345u);
  EXPECT_EQ(le8(raw, 0x276), 3u);
  EXPECT_EQ(le8(raw, 0x274), 0u);
  auto back = decode_superblock(raw, 0);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->s_mkfs_time, (int64_t{3} << 32) + 12345);
  EXPECT_EQ(back->s_wtime, int64_t{0xF0000000});
}

TEST(Superblock, SixtyFourBitHalvesOnlyWith64bit) {
  TempDir dir;
  const std::string image = make_image(dir, {"-t", "ext4"});
  auto raw = read_at(image, kSuperblockOffset, kSuperblockSize);
  auto sb = decode_superblock(raw, 0);
  ASSERT_TRUE(sb.ok());
  ASSERT_TRUE(sb->is_64bit());
  Superblock big = *sb;
  big.s_free_blocks_count = (uint64_t{5} << 32) | 7;
  encode_superblock(big, raw);
  EXPECT_EQ(le32(raw, 0x0C), 7u);
  EXPECT_EQ(le32(raw, 0x158), 5u);

  // Without 64bit the high words are not ours: they stay as they were.
  auto raw32 = read_at(image, kSuperblockOffset, kSuperblockSize);
  put_le32(raw32, 0x150, 0xDEADBEEF);
  Superblock small = *sb;
  small.s_feature_incompat &= ~incompat::k64bit;
  encode_superblock(small, raw32);
  EXPECT_EQ(le32(raw32, 0x150), 0xDEADBEEFu);
  EXPECT_EQ(le32(raw32, 0x158), 0u);
}

// A fresh ext4 image and its superblock, raw and decoded, for tests that
// edit it and ask the real tools what they see.
class SuperblockEdit : public ::testing::Test {
 protected:
  void SetUp() override {
    image = make_image(dir, {"-t", "ext4"});
    raw = read_at(image, kSuperblockOffset, kSuperblockSize);
    auto decoded = decode_superblock(raw, 0);
    ASSERT_TRUE(decoded.ok());
    sb = *decoded;
  }
  // Encodes `sb` into `raw` and writes it to the image.
  void write_back() {
    encode_superblock(*sb, raw);
    write_at(image, kSuperblockOffset, raw);
  }
  TempDir dir;
  std::string image;
  std::vector<std::byte> raw;
  std::optional<Superblock> sb;
};

// Edits through encode_superblock must leave an image the real tools accept.
TEST_F(SuperblockEdit, EncodedChangesAreAcceptedByE2fsprogs) {
  sb->s_mnt_count = 7;
  sb->s_max_mnt_count = 33;
  const std::string label = "relabelled";
  sb->s_volume_name.fill('\0');
  std::copy(label.begin(), label.end(), sb->s_volume_name.begin());
  write_back();
  auto h = dumpe2fs_header(image);
  EXPECT_EQ(h["Filesystem volume name"], label);
  EXPECT_EQ(h["Mount count"], "7");
  EXPECT_EQ(h["Maximum mount count"], "33");
  EXPECT_EQ(num(h["Checksum"]), le32(raw, 0x3FC));
  auto fsck = run({"e2fsck", "-fn", image});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.out << fsck.err;
}

// The error record (ext4_error's fields) lands where dumpe2fs reads it.
TEST_F(SuperblockEdit, ErrorRecordIsWhatDumpe2fsReports) {
  sb->s_state |= kStateErrors;
  sb->s_error_count = 3;
  sb->s_first_error_time = 1700000000;
  sb->s_first_error_ino = 12;
  sb->s_first_error_block = 345;
  const std::string first = "rename", last = "write";
  std::copy(first.begin(), first.end(), sb->s_first_error_func.begin());
  sb->s_first_error_line = 7;
  sb->s_first_error_errcode = error_code_of(EIO);
  sb->s_last_error_time = 1700000100;
  sb->s_last_error_ino = 13;
  std::copy(last.begin(), last.end(), sb->s_last_error_func.begin());
  sb->s_last_error_errcode = error_code_of(kErrCorrupted);
  write_back();
  auto h = expect_dumpe2fs_shows(image, {{"Filesystem state", "clean with errors"},
                                         {"FS Error count", "3"},
                                         {"First error function", first},
                                         {"First error line #", "7"},
                                         {"First error inode #", "12"},
                                         {"First error block #", "345"},
                                         {"First error err", "EIO"},
                                         {"Last error function", last},
                                         {"Last error inode #", "13"},
                                         {"Last error err", "EFSCORRUPTED"}});
  EXPECT_EQ(error_code_name(sb->s_first_error_errcode), h["First error err"]);
  EXPECT_EQ(error_code_name(sb->s_last_error_errcode), h["Last error err"]);
  EXPECT_EQ(error_code_name(1), "UNKNOWN");
  EXPECT_EQ(error_code_name(0), "");
  EXPECT_EQ(error_code_name(200), "");
  auto again = decode_superblock(read_at(image, kSuperblockOffset, kSuperblockSize), 0);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->s_first_error_func, sb->s_first_error_func);
  EXPECT_EQ(again->s_last_error_errcode, sb->s_last_error_errcode);
  EXPECT_EQ(error_code_of(ENOTEMPTY), 15);
  EXPECT_EQ(error_code_of(EPERM), 1);  // not in the numbering: "unknown"
}

// --- Rejections -----------------------------------------------------------

struct Corruption {
  const char* name;
  size_t offset;
  int width;  // bytes: 1, 2 or 4
  uint64_t value;
  const char* expect_in_message;
};

void put(std::vector<std::byte>& raw, size_t offset, int width, uint64_t value) {
  if (width == 1) put_le8(raw, offset, static_cast<uint8_t>(value));
  if (width == 2) put_le16(raw, offset, static_cast<uint16_t>(value));
  if (width == 4) put_le32(raw, offset, static_cast<uint32_t>(value));
}

class SuperblockCorruption : public ::testing::Test {
 protected:
  void SetUp() override {
    // 64 MiB, 1 KiB blocks, 8 groups of 8192 blocks and 2048 inodes, 64bit, meta_bg-free.
    image_ = make_image(dir_, {"-t", "ext4", "-b", "1024"});
    raw_ = read_at(image_, kSuperblockOffset, kSuperblockSize);
    ASSERT_TRUE(decode_superblock(raw_, file_size(image_)).ok());
  }
  // Applies a change, reseals the checksum so the field check is what trips.
  Result<Superblock> decode_with(size_t offset, int width, uint64_t value) {
    std::vector<std::byte> raw = raw_;
    put(raw, offset, width, value);
    put_le32(raw, 0x3FC, superblock_checksum(raw));
    return decode_superblock(raw, file_size(image_));
  }
  TempDir dir_;
  std::string image_;
  std::vector<std::byte> raw_;
};

TEST_F(SuperblockCorruption, AbsurdFieldsAreRejectedByName) {
  const Corruption cases[] = {
      {"magic", 0x38, 2, 0x1234, "bad magic 0x1234"},
      {"rev", 0x4C, 4, 2, "s_rev_level 2"},
      {"log block size", 0x18, 4, 7, "s_log_block_size 7"},
      {"log block size huge", 0x18, 4, 0xFFFFFFFF, "s_log_block_size 4294967295"},
      {"cluster size", 0x1C, 4, 2, "s_log_cluster_size 2"},
      {"blocks per group 0", 0x20, 4, 0, "s_blocks_per_group 0"},
      {"clusters per group 0", 0x24, 4, 0, "s_clusters_per_group 0"},
      {"clusters per group odd", 0x24, 4, 8190, "s_clusters_per_group 8190"},
      {"clusters per group big", 0x24, 4, 16384, "s_clusters_per_group 16384"},
      {"blocks per group mismatch", 0x20, 4, 4096, "s_blocks_per_group 4096"},
      {"inodes per group 0", 0x28, 4, 0, "s_inodes_per_group 0"},
      {"inodes per group big", 0x28, 4, 8193, "s_inodes_per_group 8193"},
      {"inodes count", 0x00, 4, 16383, "s_inodes_count 16383"},
      {"inode size 0", 0x58, 2, 0, "s_inode_size 0"},
      {"inode size odd", 0x58, 2, 200, "s_inode_size 200"},
      {"inode size > block", 0x58, 2, 2048, "s_inode_size 2048"},
      {"first ino", 0x54, 4, 5, "s_first_ino 5"},
      {"first ino beyond inodes", 0x54, 4, 20000, "s_first_ino 20000"},
      {"first data block", 0x14, 4, 0, "s_first_data_block 0"},
      {"blocks count 0", 0x04, 4, 0, "s_blocks_count"},
      {"blocks count beyond device", 0x04, 4, 65537, "s_blocks_count 65537 exceeds the device"},
      {"blocks count groups", 0x04, 4, 50000, "s_inodes_count 16384 is not"},
      {"blocks count hi", 0x150, 4, 1, "s_blocks_count 4295032832"},
      {"reserved", 0x08, 4, 70000, "s_r_blocks_count 70000"},
      {"free blocks", 0x0C, 4, 70000, "s_free_blocks_count 70000"},
      {"free inodes", 0x10, 4, 16385, "s_free_inodes_count 16385"},
      {"desc size 0", 0xFE, 2, 0, "s_desc_size 0"},
      {"desc size 32", 0xFE, 2, 32, "s_desc_size 32"},
      {"desc size 96", 0xFE, 2, 96, "s_desc_size 96"},
      {"desc size 2048", 0xFE, 2, 2048, "s_desc_size 2048"},
      {"reserved gdt", 0xCE, 2, 300, "s_reserved_gdt_blocks 300"},
      {"flex", 0x174, 1, 32, "s_log_groups_per_flex 32"},
      {"want extra isize", 0x15E, 2, 160, "s_want_extra_isize 160"},
      {"checksum type", 0x175, 1, 2, "s_checksum_type 2"},
  };
  for (const Corruption& c : cases) {
    auto r = decode_with(c.offset, c.width, c.value);
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.error().code(), kErrCorrupted) << c.name;
    EXPECT_NE(r.error().message().find(c.expect_in_message), std::string::npos)
        << c.name << ": " << r.error().message();
    EXPECT_EQ(r.error().message().rfind("superblock: ", 0), 0u) << r.error().message();
  }
}

TEST_F(SuperblockCorruption, MetaBgFirstGroupBeyondTable) {
  std::vector<std::byte> raw = raw_;
  put_le32(raw, 0x60, le32(raw, 0x60) | incompat::kMetaBg);
  put_le32(raw, 0x104, 2);  // 8 groups x 64 bytes fit in one block
  put_le32(raw, 0x3FC, superblock_checksum(raw));
  auto r = decode_superblock(raw, 0);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("s_first_meta_bg 2"), std::string::npos) << r.error().message();
}

TEST_F(SuperblockCorruption, ChecksumMismatchIsEbadmsg) {
  for (size_t offset : {size_t{0x00}, size_t{0x78}, size_t{0x200}, size_t{0x3FC}, size_t{0x3FF}}) {
    std::vector<std::byte> raw = raw_;
    raw[offset] ^= std::byte{0x10};
    auto r = decode_superblock(raw, 0);
    ASSERT_FALSE(r.ok()) << offset;
    EXPECT_EQ(r.error().code(), kErrBadChecksum) << offset;
    EXPECT_NE(r.error().message().find("checksum"), std::string::npos);
  }
}

TEST_F(SuperblockCorruption, ShortBufferIsRejected) {
  auto r = decode_superblock(Bytes(raw_.data(), 512), 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), kErrCorrupted);
}

// Random damage must never crash the decoder, and whatever it accepts must
// keep the invariants the rest of uext divides and indexes by.
TEST_F(SuperblockCorruption, RandomDamageKeepsInvariants) {
  std::mt19937_64 rng(12345);
  const size_t geometry_end = 0x110;  // most geometry lives in the first 0x110 bytes
  int accepted = 0;
  for (int round = 0; round < 20000; ++round) {
    std::vector<std::byte> raw = raw_;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < flips; ++i) {
      const size_t at = (round % 4 == 0) ? rng() % kSuperblockSize : rng() % geometry_end;
      if (rng() % 3 == 0) {
        raw[at] = static_cast<std::byte>(rng());
      } else {
        raw[at] ^= static_cast<std::byte>(1u << (rng() % 8));
      }
    }
    if (round % 2 == 0) put_le32(raw, 0x3FC, superblock_checksum(raw));
    auto r = decode_superblock(raw, file_size(image_));
    if (!r.ok()) {
      EXPECT_TRUE(r.error().code() == kErrCorrupted || r.error().code() == kErrBadChecksum);
      continue;
    }
    ++accepted;
    const Superblock& sb = *r;
    ASSERT_GT(sb.s_blocks_per_group, 0u);
    ASSERT_GT(sb.s_inodes_per_group, 0u);
    ASSERT_LE(sb.s_inodes_per_group, 8 * sb.block_size());
    ASSERT_LE(sb.s_clusters_per_group, 8 * sb.block_size());
    ASSERT_EQ(uint64_t{sb.group_count()} * sb.s_inodes_per_group, sb.s_inodes_count);
    ASSERT_GE(sb.inode_size(), 128u);
    ASSERT_LE(sb.inode_size(), sb.block_size());
    ASSERT_GE(sb.desc_size(), 32u);
    ASSERT_LE(sb.desc_size(), sb.block_size());
    ASSERT_GE(sb.s_first_ino, 11u);
    for (uint32_t g = 0; g < sb.group_count(); ++g) {
      DescLocation loc = group_desc_location(sb, g);
      ASSERT_LT(loc.block, sb.s_blocks_count);
      ASSERT_LE(loc.offset + sb.desc_size(), sb.block_size());
    }
  }
  EXPECT_GT(accepted, 0);
}

TEST(Superblock, DerivedValuesOfADefaultStruct) {
  Superblock sb;  // all zero: nothing may divide by zero
  EXPECT_EQ(sb.group_count(), 0u);
  EXPECT_EQ(sb.desc_size(), 32u);
  EXPECT_EQ(sb.block_size(), 1024u);
  EXPECT_EQ(sb.uuid_string(), "00000000-0000-0000-0000-000000000000");
  EXPECT_EQ(sb.volume_name(), "");
}

}  // namespace
}  // namespace uext::disk
