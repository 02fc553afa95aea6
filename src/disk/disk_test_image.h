// Test helper for the on-disk codec tests: builds images with mke2fs, reads
// raw blocks and inodes from them, and asks debugfs about them. Superblock
// fields are read at their raw offsets here so the codec tests do not lean
// on the superblock decoder.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "disk/bytes.h"
#include "disk/checksum.h"
#include "support/process.h"
#include "support/regex.h"

namespace uext::disk::testimg {

class Image {
 public:
  // mke2fs [-t ext4] -b block_size [extra options] -d dir path size
  Image(const std::string& path, const std::string& src_dir, uint32_t block_size, const std::string& size,
        const std::vector<std::string>& extra = {})
      : path_(path) {
    std::vector<std::string> argv = {"mke2fs", "-F", "-q", "-b", std::to_string(block_size)};
    // ext4 unless the caller names another type.
    if (std::find(extra.begin(), extra.end(), "-t") == extra.end()) argv.insert(argv.end(), {"-t", "ext4"});
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.insert(argv.end(), {"-d", src_dir, path, size});
    uext::testing::run_ok(argv);
    reload();
  }

  void reload() { data_ = uext::testing::read_file(path_); }
  const std::string& path() const { return path_; }

  Bytes sb() const { return as_bytes(data_.data() + 1024, 1024); }
  uint32_t block_size() const { return 1024u << le32(sb(), 0x18); }
  uint32_t first_data_block() const { return le32(sb(), 0x14); }
  uint64_t blocks_count() const { return le32(sb(), 0x04) | (uint64_t{le32(sb(), 0x150)} << 32); }
  uint32_t inode_size() const { return le16(sb(), 0x58); }
  uint32_t incompat() const { return le32(sb(), 0x60); }
  uint32_t ro_compat() const { return le32(sb(), 0x64); }
  bool metadata_csum() const { return ro_compat() & 0x400; }
  uint8_t def_hash_version() const { return le8(sb(), 0xFC); }
  bool unsigned_hash() const { return le32(sb(), 0x160) & 0x2; }
  void hash_seed(uint32_t out[4]) const {
    for (int i = 0; i < 4; ++i) out[i] = le32(sb(), 0xEC + 4 * i);
  }
  uint32_t fs_csum_seed() const {
    if (incompat() & 0x2000) return le32(sb(), 0x270);
    return crc32c(~0u, sb().subspan(0x68, 16));
  }

  Bytes block(uint64_t nr) const {
    size_t bs = block_size();
    EXPECT_LE((nr + 1) * bs, data_.size());
    return as_bytes(data_.data() + nr * bs, bs);
  }
  std::vector<std::byte> block_copy(uint64_t nr) const {
    Bytes b = block(nr);
    return {b.begin(), b.end()};
  }

  std::string debugfs(const std::string& request) const {
    return uext::testing::run_ok({"debugfs", "-R", request, path_});
  }

  // The inode's number and its raw bytes (inode_size of them).
  uint32_t inode_number(const std::string& file) const {
    std::string out = debugfs("stat " + file);
    uext::testing::RegexMatch m;
    EXPECT_TRUE(regex_search(out, m, uext::testing::Regex("Inode: (\\d+)"))) << out;
    return m.empty() ? 0 : static_cast<uint32_t>(std::stoul(m[1]));
  }
  Bytes inode(const std::string& file) const {
    std::string out = debugfs("imap " + file);
    uext::testing::RegexMatch m;
    if (!regex_search(out, m, uext::testing::Regex("located at block (\\d+), offset (0x[0-9a-fA-F]+)"))) {
      ADD_FAILURE() << "imap: " << out;
      return {};
    }
    uint64_t blk = std::stoull(m[1]);
    size_t off = std::stoul(m[2], nullptr, 16);
    return as_bytes(data_.data() + blk * block_size() + off, inode_size());
  }
  // The per-inode checksum seed metadata_csum uses for extent, directory and htree blocks.
  uint32_t inode_csum_seed(const std::string& file) const {
    uint32_t ino = inode_number(file);
    uint32_t gen = le32(inode(file), 0x64);
    return crc32c_le32(crc32c_le32(fs_csum_seed(), ino), gen);
  }
  // Physical blocks of a file in logical order (0 for holes), from the
  // leaf extents debugfs reports ("blocks" would mix in tree blocks).
  std::vector<uint64_t> data_blocks(const std::string& file) const {
    std::string out = debugfs("ex -l " + file);
    uext::testing::Regex re("(\\d+) -\\s*(\\d+)\\s+(\\d+) -\\s*(\\d+)\\s+(\\d+)");
    std::vector<uint64_t> map;
    for (const auto& m : regex_find_all(out, re)) {
      uint64_t lstart = std::stoull(m[1]), lend = std::stoull(m[2]), pstart = std::stoull(m[3]);
      if (map.size() <= lend) map.resize(lend + 1);
      for (uint64_t l = lstart; l <= lend; ++l) map[l] = pstart + (l - lstart);
    }
    if (map.empty()) {
      // Block-mapped (ext2/ext3) files: small test directories have only direct blocks.
      std::istringstream in(debugfs("blocks " + file));
      uint64_t blk;
      while (in >> blk) map.push_back(blk);
    }
    return map;
  }

 private:
  std::string path_;
  std::string data_;
};

inline std::vector<std::byte> to_vec(Bytes b) { return {b.begin(), b.end()}; }

// Makes random but reproducible bytes for fuzz loops.
inline void fill_random(std::vector<std::byte>& buf, uint64_t& state) {
  for (auto& b : buf) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    b = static_cast<std::byte>(state);
  }
}

}  // namespace uext::disk::testimg
