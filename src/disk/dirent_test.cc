#include "disk/dirent.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "disk/disk_test_image.h"
#include "support/process.h"

namespace uext::disk {
namespace {

using testimg::Image;
using uext::testing::TempDir;

TEST(RecLen, SmallBlocksStoreTheLengthAsIs) {
  for (uint32_t bs : {1024u, 2048u, 4096u, 32768u}) {
    for (uint32_t len = 12; len <= bs && len < 65536; len += 4) {
      EXPECT_EQ(encode_rec_len(len, bs), len);
      EXPECT_EQ(decode_rec_len(static_cast<uint16_t>(len), bs), len);
    }
  }
  EXPECT_EQ(decode_rec_len(0, 4096), 0u);  // left for the validator to reject
}

TEST(RecLen, SixtyFourKiBBlocks) {
  EXPECT_EQ(encode_rec_len(65536, 65536), 65535);
  EXPECT_EQ(decode_rec_len(65535, 65536), 65536u);
  EXPECT_EQ(decode_rec_len(0, 65536), 65536u);
  EXPECT_EQ(decode_rec_len(65532, 65536), 65532u);
  for (uint32_t len = 12; len <= 65536; len += 4) ASSERT_EQ(decode_rec_len(encode_rec_len(len, 65536), 65536), len);
  // The coding carries bits 16-17 for (kernel-theoretical) 256 KiB blocks.
  EXPECT_EQ(encode_rec_len(65540, 262144), 5);
  EXPECT_EQ(decode_rec_len(5, 262144), 65540u);
  EXPECT_EQ(encode_rec_len(262144, 262144), 0);
  EXPECT_EQ(decode_rec_len(0, 262144), 262144u);
}

uint8_t ftype_of_mode(uint32_t mode) {
  switch (mode & 0170000) {
    case 0100000: return ftype::kRegular;
    case 0040000: return ftype::kDirectory;
    case 0020000: return ftype::kCharDev;
    case 0060000: return ftype::kBlockDev;
    case 0010000: return ftype::kFifo;
    case 0140000: return ftype::kSocket;
    case 0120000: return ftype::kSymlink;
  }
  return ftype::kUnknown;
}

struct Listed {
  uint32_t inode;
  uint8_t file_type;
  std::string name;
  bool operator<(const Listed& o) const { return name < o.name; }
  bool operator==(const Listed&) const = default;
};

// "ls -p" prints /inode/mode/uid/gid/name/size/ per live entry.
std::vector<Listed> debugfs_listing(const Image& img, const std::string& dir, bool filetype) {
  std::istringstream in(img.debugfs("ls -p " + dir));
  std::vector<Listed> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() < 2 || line[0] != '/') continue;
    std::vector<std::string> f;
    std::stringstream ss(line.substr(1));
    std::string part;
    while (std::getline(ss, part, '/')) f.push_back(part);
    if (f.size() < 5) continue;
    uint32_t mode = static_cast<uint32_t>(std::stoul(f[1], nullptr, 8));
    out.push_back({static_cast<uint32_t>(std::stoul(f[0])), filetype ? ftype_of_mode(mode) : uint8_t{0}, f[4]});
  }
  return out;
}

void make_tree(const std::string& root) {
  std::filesystem::create_directories(root + "/d/sub");
  for (int i = 0; i < 60; ++i) {
    std::string name = "file" + std::string(static_cast<size_t>(i % 37), 'x') + std::to_string(i);
    std::ofstream(root + "/d/" + name) << i;
  }
  std::ofstream(root + "/d/" + std::string(255, 'L')) << "long";
  std::filesystem::create_symlink("target", root + "/d/link");
  mkfifo((root + "/d/fifo").c_str(), 0644);
}

void check_dir_blocks(const Image& img, bool expect_tail) {
  bool filetype = img.incompat() & 0x2;
  auto blocks = img.data_blocks("/d");
  ASSERT_FALSE(blocks.empty());
  DirBlockFormat fmt{img.block_size(), filetype, img.metadata_csum()};
  std::vector<Listed> ours;
  uint32_t seed = img.metadata_csum() ? img.inode_csum_seed("/d") : 0;
  for (uint64_t b : blocks) {
    Bytes block = img.block(b);
    EXPECT_EQ(has_dir_block_tail(block), expect_tail);
    auto entries = parse_dir_block(block, fmt);
    ASSERT_TRUE(entries.ok()) << entries.error().message();
    uint32_t covered = 0;
    for (const auto& e : *entries) {
      EXPECT_EQ(e.offset, covered);
      covered += e.rec_len;
      if (e.inode) ours.push_back({e.inode, e.file_type, std::string(e.name)});
    }
    EXPECT_EQ(covered + (expect_tail ? kDirentTailSize : 0), img.block_size());
    if (expect_tail) {
      auto st = verify_dir_block_checksum(seed, block);
      EXPECT_TRUE(st.ok()) << st.error().message();
      auto copy = img.block_copy(b);
      copy[20] ^= std::byte{0x40};
      auto bad = verify_dir_block_checksum(seed, copy);
      ASSERT_FALSE(bad.ok());
      EXPECT_EQ(bad.error().code(), kErrBadChecksum);
      set_dir_block_checksum(seed, copy);
      EXPECT_TRUE(verify_dir_block_checksum(seed, copy).ok());
      // Re-setting the checksum of the untouched block reproduces it exactly.
      auto same = img.block_copy(b);
      set_dir_block_checksum(seed, same);
      EXPECT_EQ(same, img.block_copy(b));
    }
  }
  auto want = debugfs_listing(img, "/d", filetype);
  std::sort(ours.begin(), ours.end());
  std::sort(want.begin(), want.end());
  ASSERT_GT(want.size(), 60u);
  EXPECT_EQ(ours, want);
}

TEST(DirentImage, FourKiBWithChecksumsMatchesDebugfs) {
  TempDir dir;
  make_tree(dir / "src");
  Image img(dir / "img", dir / "src", 4096, "16M");
  ASSERT_TRUE(img.metadata_csum());
  check_dir_blocks(img, true);
}

TEST(DirentImage, OneKiBWithoutChecksumsMatchesDebugfs) {
  TempDir dir;
  make_tree(dir / "src");
  Image img(dir / "img", dir / "src", 1024, "16M", {"-O", "^metadata_csum"});
  ASSERT_FALSE(img.metadata_csum());
  check_dir_blocks(img, false);
}

TEST(DirentImage, Ext2WithoutFiletype) {
  TempDir dir;
  make_tree(dir / "src");
  Image img(dir / "img", dir / "src", 2048, "16M", {"-t", "ext2", "-O", "^filetype"});
  ASSERT_FALSE(img.incompat() & 0x2);
  check_dir_blocks(img, false);
}

TEST(DirentImage, SixtyFourKiBBlocksUseTheSpecialRecLen) {
  TempDir dir;
  make_tree(dir / "src");
  Image img(dir / "img", dir / "src", 65536, "64M");
  check_dir_blocks(img, img.metadata_csum());
}

// ---- synthetic blocks ----

// Builds a block from (inode, name) pairs, the last entry taking the rest.
std::vector<std::byte> make_block(uint32_t bs, const std::vector<std::pair<uint32_t, std::string>>& ents,
                                  bool tail) {
  std::vector<std::byte> b(bs);
  uint32_t end = bs - (tail ? kDirentTailSize : 0);
  uint32_t off = 0;
  for (size_t i = 0; i < ents.size(); ++i) {
    uint32_t len = i + 1 == ents.size() ? end - off : dirent_size(ents[i].second.size());
    put_le32(b, off, ents[i].first);
    put_le16(b, off + 4, encode_rec_len(len, bs));
    put_le8(b, off + 6, static_cast<uint8_t>(ents[i].second.size()));
    put_le8(b, off + 7, ftype::kRegular);
    std::memcpy(b.data() + off + 8, ents[i].second.data(), ents[i].second.size());
    off += len;
  }
  if (tail) init_dir_block_tail(b);
  return b;
}

TEST(DirentParse, ValidBlockWithDeletedEntry) {
  auto b = make_block(1024, {{2, "."}, {2, ".."}, {0, "gone"}, {12, "name"}}, true);
  auto r = parse_dir_block(b, {1024, true, true});
  ASSERT_TRUE(r.ok()) << r.error().message();
  ASSERT_EQ(r->size(), 4u);
  EXPECT_EQ((*r)[2].inode, 0u);
  EXPECT_EQ((*r)[2].name, "gone");
  EXPECT_EQ((*r)[3].name, "name");
  EXPECT_EQ((*r)[3].offset, 36u);
  EXPECT_EQ((*r)[3].rec_len, 1024u - 12 - 36);
  EXPECT_EQ((*r)[3].file_type, ftype::kRegular);
  EXPECT_TRUE(has_dir_block_tail(b));
}

TEST(DirentParse, EveryValidationRule) {
  const uint32_t bs = 1024;
  DirBlockFormat fmt{bs, true, false};
  auto check = [&](const char* what, auto mutate, DirBlockFormat f) {
    auto b = make_block(bs, {{2, "."}, {2, ".."}, {12, "abcdef"}}, f.has_tail);
    mutate(b);
    auto r = parse_dir_block(b, f);
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_EQ(r.error().code(), kErrCorrupted) << what;
    EXPECT_NE(r.error().message().find("directory block"), std::string::npos) << r.error().message();
  };
  check("rec_len < 12", [](auto& b) { put_le16(b, 16, 8); }, fmt);
  check("rec_len 0", [](auto& b) { put_le16(b, 16, 0); }, fmt);
  check("rec_len not multiple of 4", [](auto& b) { put_le16(b, 16, 14); }, fmt);
  check("rec_len too small for name", [](auto& b) { put_le8(b, 18, 9); }, fmt);
  check("rec_len past end", [](auto& b) { put_le16(b, 28, 1004); }, fmt);
  check("leaves a sliver", [](auto& b) { put_le16(b, 28, 1000 - 8); }, fmt);
  check("live entry, empty name", [](auto& b) { put_le8(b, 30, 0); }, fmt);
  check("name_len > 255 without filetype",
        [](auto& b) {
          put_le16(b, 30, 300);
          put_le16(b, 28, 1000);
        },
        DirBlockFormat{bs, false, false});
  {
    auto no_tail = make_block(bs, {{2, "."}, {2, ".."}, {12, "abcdef"}}, false);
    auto r = parse_dir_block(no_tail, {bs, true, true});
    ASSERT_FALSE(r.ok()) << "tail missing";
    EXPECT_EQ(r.error().code(), kErrCorrupted);
  }
  // ...and a malformed tail: wrong file_type, rec_len, or nonzero inode.
  for (size_t off : {size_t{1024 - 12}, size_t{1024 - 8}, size_t{1024 - 5}}) {
    auto b = make_block(bs, {{2, "."}, {2, ".."}}, true);
    put_le8(b, off, 0x77);
    EXPECT_FALSE(has_dir_block_tail(b)) << off;
    EXPECT_FALSE(parse_dir_block(b, {bs, true, true}).ok()) << off;
    EXPECT_EQ(verify_dir_block_checksum(0, b).error().code(), kErrCorrupted);
  }
  // Buffer size must equal the block size.
  auto b = make_block(bs, {{2, "."}}, false);
  EXPECT_FALSE(parse_dir_block(Bytes(b).first(512), fmt).ok());
  EXPECT_FALSE(parse_dir_block(Bytes(b).first(0), DirBlockFormat{0, true, false}).ok());
}

TEST(DirentChecksum, SetOnlyTouchesARealTail) {
  auto b = make_block(1024, {{2, "."}, {2, ".."}}, false);
  auto before = b;
  set_dir_block_checksum(7, b);
  EXPECT_EQ(b, before) << "a block without a tail must be left alone";
  auto t = make_block(1024, {{2, "."}, {2, ".."}}, true);
  set_dir_block_checksum(7, t);
  EXPECT_TRUE(verify_dir_block_checksum(7, t).ok());
  EXPECT_EQ(verify_dir_block_checksum(8, t).error().code(), kErrBadChecksum);
  std::vector<std::byte> tiny(5);
  set_dir_block_checksum(7, tiny);
  EXPECT_FALSE(has_dir_block_tail(tiny));
  EXPECT_FALSE(verify_dir_block_checksum(7, tiny).ok());
}

TEST(DirentFuzz, RandomBytesNeverCrash) {
  uint64_t state = 0x1234567887654321ull;
  for (int iter = 0; iter < 4000; ++iter) {
    uint32_t bs = iter % 3 == 0 ? 65536 : 1024;
    std::vector<std::byte> b(bs);
    testimg::fill_random(b, state);
    if (iter % 2) {
      auto base = make_block(bs, {{2, "."}, {2, ".."}, {5, "x"}}, iter % 4 == 1);
      std::copy(base.begin(), base.begin() + 30, b.begin());
      b[state % 40] = static_cast<std::byte>(state >> 8);
    }
    for (bool ft : {false, true})
      for (bool tail : {false, true}) (void)parse_dir_block(b, {bs, ft, tail});
    (void)verify_dir_block_checksum(1, b);
    (void)parse_dir_block(Bytes(b).first(iter % 40), {static_cast<uint32_t>(iter % 40), true, false});
  }
}

}  // namespace
}  // namespace uext::disk
