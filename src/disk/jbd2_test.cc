#include "disk/jbd2.h"

#include <gtest/gtest.h>
#include <fmt/format.h>

#include <map>
#include <sstream>

#include "disk/checksum.h"
#include "support/images.h"
#include "support/process.h"
#include "support/regex.h"

namespace uext::disk {
namespace {

using uext::testing::run;
using uext::testing::run_ok;
using uext::testing::TempDir;

// An image file's journal: physical location from debugfs bmap; mke2fs
// makes it contiguous, which the test checks at both ends.
struct JournalImage {
  std::string path;
  uint32_t bs = 0;
  uint64_t first_physical = 0;
  std::string data;

  explicit JournalImage(const std::string& p) : path(p) {
    auto h = uext::testing::dumpe2fs_header(p);
    bs = static_cast<uint32_t>(std::stoul(h["Block size"]));
    first_physical = bmap(0);
    data = uext::testing::read_file(p);
  }
  uint64_t bmap(uint64_t logical) const {
    return std::stoull(uext::testing::debugfs(path, fmt::format("bmap <8> {}", logical)));
  }
  Bytes block(uint64_t logical) const {
    return as_bytes(data.data() + (first_physical + logical) * bs, bs);
  }
  std::vector<std::byte> copy(uint64_t logical) const {
    Bytes b = block(logical);
    return {b.begin(), b.end()};
  }
};

class FreshJournal : public ::testing::TestWithParam<std::vector<std::string>> {};

TEST_P(FreshJournal, SuperblockMatchesDumpe2fsAndRoundTrips) {
  TempDir dir;
  const std::string img = dir / "fs.img";
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  argv.insert(argv.end(), GetParam().begin(), GetParam().end());
  argv.insert(argv.end(), {img, "128M"});
  run_ok(argv);
  JournalImage j(img);
  auto sb = decode_journal_superblock(j.block(0), j.bs, 0);
  ASSERT_TRUE(sb.ok()) << sb.error().message();
  // Only block 0 is read here; ext3's indirect blocks interleave with the
  // journal's, extent-mapped journals are one run.
  if (GetParam()[1] != "ext3") {
    EXPECT_EQ(j.bmap(sb->s_maxlen - 1), j.first_physical + sb->s_maxlen - 1) << "journal not contiguous";
  }
  auto h = uext::testing::dumpe2fs_header(img);
  EXPECT_EQ(sb->features_string(), h["Journal features"]);
  EXPECT_EQ(std::to_string(sb->s_maxlen), h["Total journal blocks"]);
  EXPECT_EQ(fmt::format("0x{:08x}", sb->s_sequence), h["Journal sequence"]);
  EXPECT_EQ(std::to_string(sb->s_start), h["Journal start"]);
  EXPECT_EQ(sb->s_first, 1u);
  EXPECT_EQ(sb->s_blocksize, j.bs);
  EXPECT_EQ(sb->version(), 2u);
  EXPECT_EQ(sb->s_nr_users, 1u);
  EXPECT_EQ(sb->s_errno, 0);
  // The journal UUID field is zero for an internal journal; the user is the filesystem.
  std::vector<std::byte> copy = j.copy(0);
  encode_journal_superblock(*sb, copy);
  EXPECT_EQ(copy, j.copy(0));
}

INSTANTIATE_TEST_SUITE_P(Images, FreshJournal,
                         ::testing::Values(std::vector<std::string>{"-t", "ext4"},
                                           std::vector<std::string>{"-t", "ext4", "-b", "1024"},
                                           std::vector<std::string>{"-t", "ext3"},
                                           std::vector<std::string>{"-t", "ext4", "-O", "^metadata_csum,^64bit"},
                                           std::vector<std::string>{"-t", "ext4", "-J", "size=4"}));

// Descriptor tags and revoke records of a log the kernel wrote, against
// debugfs logdump; checksums verify and fail after a bit flip.
TEST(KernelWrittenJournal, BlocksMatchLogdumpChecksumsVerify) {
  if (!uext::testing::can_loop_mount()) GTEST_SKIP() << "needs root and /dev/loop-control";
  TempDir dir;
  const std::string img = dir / "fs.img", mnt = dir / "mnt";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-J", "size=4", img, "128M"});
  run_ok({"mkdir", "-p", mnt});
  {
    uext::testing::LoopMount m(img, mnt, false);
    ASSERT_TRUE(m.ok()) << m.error();
    auto r = run({"/bin/sh", "-c",
                  "cd " + mnt + " && for i in $(seq 1 20); do mkdir d$i; for j in $(seq 1 20); do echo $i > d$i/f$j; "
                  "done; done && sync && rm -rf d1 d2 d3 d4 && mkdir x && sync"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    run_ok({"xfs_io", "-x", "-c", "shutdown -f", mnt});
    ASSERT_TRUE(m.unmount()) << m.error();
  }
  JournalImage j(img);
  auto sb = decode_journal_superblock(j.block(0), j.bs, 0);
  ASSERT_TRUE(sb.ok()) << sb.error().message();
  ASSERT_NE(sb->s_start, 0u);
  JournalFormat f = sb->format();
  EXPECT_TRUE(f.csum_v3);  // the kernel uses v3 with metadata_csum
  EXPECT_TRUE(f.is_64bit);
  auto h = uext::testing::dumpe2fs_header(img);
  EXPECT_EQ(sb->features_string(), h["Journal features"]);
  EXPECT_EQ(fmt::format("0x{:08x}", sb->s_checksum), h["Journal checksum"]);
  EXPECT_EQ(h["Journal checksum type"], "crc32c");

  std::istringstream in(uext::testing::debugfs(img, "logdump -a"));
  std::string line;
  testing::RegexMatch m;
  static const testing::Regex desc_re("Dumping descriptor block, sequence (\\d+), at block (\\d+):");
  static const testing::Regex revoke_re("Dumping revoke block, sequence (\\d+), at block (\\d+):");
  static const testing::Regex commit_re("Found expected sequence (\\d+), type 2 \\(commit block\\) at block (\\d+)");
  static const testing::Regex tag_re("FS block (\\d+) logged at journal block (\\d+) \\(flags 0x([0-9a-f]+)\\)");
  static const testing::Regex rec_re("Revoke FS block (\\d+)");
  std::vector<std::string> lines;
  while (std::getline(in, line)) lines.push_back(line);
  int descriptors = 0, revokes = 0, commits = 0, tags = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (regex_search(lines[i], m, desc_re)) {
      uint32_t seq = static_cast<uint32_t>(std::stoul(m[1]));
      uint64_t at = std::stoull(m[2]);
      Bytes blk = j.block(at);
      DescriptorBlock d = decode_descriptor_block(blk, f);
      EXPECT_EQ(d.header.h_sequence, seq);
      EXPECT_TRUE(verify_block_tail(blk, f)) << "descriptor at " << at;
      size_t k = 0;
      for (size_t n = i + 1; n < lines.size() && regex_search(lines[n], m, tag_re); ++n, ++k) {
        ASSERT_LT(k, d.tags.size());
        EXPECT_EQ(d.tags[k].t_blocknr, std::stoull(m[1]));
        EXPECT_EQ(d.tags[k].t_flags, std::stoul(m[3], nullptr, 16));
        uint64_t logged = std::stoull(m[2]);
        EXPECT_TRUE(verify_tag_checksum(f, d.tags[k], seq, j.block(logged))) << "journal block " << logged;
        auto flipped = j.copy(logged);
        flipped[100] ^= std::byte{8};
        EXPECT_FALSE(verify_tag_checksum(f, d.tags[k], seq, flipped));
        ++tags;
      }
      EXPECT_EQ(k, d.tags.size());
      std::vector<std::byte> copy = j.copy(at), zero(j.bs);
      EXPECT_TRUE(encode_descriptor_block(d, f, copy).ok());
      EXPECT_EQ(copy, j.copy(at));
      // Built from scratch on a zeroed block, as the kernel does.
      EXPECT_TRUE(encode_descriptor_block(d, f, zero).ok());
      EXPECT_EQ(zero, j.copy(at));
      copy[20] ^= std::byte{1};
      EXPECT_FALSE(verify_block_tail(copy, f));
      ++descriptors;
    } else if (regex_search(lines[i], m, revoke_re)) {
      uint64_t at = std::stoull(m[2]);
      auto r = decode_revoke_block(j.block(at), f);
      ASSERT_TRUE(r.ok()) << r.error().message();
      EXPECT_EQ(r->header.h_sequence, std::stoul(m[1]));
      EXPECT_TRUE(verify_block_tail(j.block(at), f));
      size_t k = 0;
      for (size_t n = i + 1; n < lines.size() && regex_search(lines[n], m, rec_re); ++n, ++k) {
        ASSERT_LT(k, r->blocks.size());
        EXPECT_EQ(r->blocks[k], std::stoull(m[1]));
      }
      EXPECT_EQ(k, r->blocks.size());
      std::vector<std::byte> zero(j.bs);
      EXPECT_TRUE(encode_revoke_block(*r, f, zero).ok());
      EXPECT_EQ(zero, j.copy(at));
      ++revokes;
    } else if (regex_search(lines[i], m, commit_re)) {
      uint64_t at = std::stoull(m[2]);
      Bytes blk = j.block(at);
      CommitBlock c = decode_commit_block(blk);
      EXPECT_EQ(c.header.h_sequence, std::stoul(m[1]));
      EXPECT_TRUE(verify_commit_block(blk, f)) << "commit at " << at;
      EXPECT_GT(c.h_commit_sec, 1600000000u);
      EXPECT_LT(c.h_commit_nsec, 1000000000u);
      std::vector<std::byte> copy = j.copy(at);
      encode_commit_block(c, f, copy);
      EXPECT_EQ(copy, j.copy(at));
      copy[0x38] ^= std::byte{1};
      EXPECT_FALSE(verify_commit_block(copy, f));
      ++commits;
    }
  }
  EXPECT_GT(descriptors, 0);
  EXPECT_GT(revokes, 0);
  EXPECT_GT(commits, 0);
  EXPECT_GT(tags, 0);
}

TEST(Jbd2Format, TagSizes) {
  JournalFormat f;
  EXPECT_EQ(f.tag_bytes(), 8u);
  f.is_64bit = true;
  EXPECT_EQ(f.tag_bytes(), 12u);
  f.csum_v2 = true;
  EXPECT_EQ(f.tag_bytes(), 14u);
  f.is_64bit = false;
  EXPECT_EQ(f.tag_bytes(), 10u);
  f.csum_v2 = false;
  f.csum_v3 = true;
  EXPECT_EQ(f.tag_bytes(), 16u);
  f.is_64bit = true;
  EXPECT_EQ(f.tag_bytes(), 16u);
}

TEST(Jbd2Format, DescriptorRoundTripsInEveryFormat) {
  for (int mask = 0; mask < 8; ++mask) {
    JournalFormat f;
    f.block_size = 1024;
    f.is_64bit = mask & 1;
    f.csum_v2 = (mask & 6) == 2;
    f.csum_v3 = (mask & 6) == 4;
    f.csum_seed = 0x1234567;
    DescriptorBlock d;
    d.header = {kJbd2Magic, kJbd2DescriptorBlock, 77};
    for (int i = 0; i < 5; ++i) {
      JournalBlockTag t;
      t.t_blocknr = f.is_64bit ? (uint64_t{3} << 32) + i : 1000u + i;
      t.t_flags = (i ? kJbd2FlagSameUuid : 0) | (i == 2 ? kJbd2FlagEscape : 0) | (i == 4 ? kJbd2FlagLastTag : 0);
      t.t_checksum = f.csum_v3 ? 0xDEADBEEF : (f.csum_v2 ? 0xBEEF : 0);
      if (!i) t.uuid = std::array<uint8_t, 16>{1, 2, 3};
      d.tags.push_back(t);
    }
    std::vector<std::byte> blk(1024);
    ASSERT_TRUE(encode_descriptor_block(d, f, blk).ok());
    DescriptorBlock back = decode_descriptor_block(blk, f);
    ASSERT_EQ(back.tags.size(), 5u) << mask;
    for (int i = 0; i < 5; ++i) {
      EXPECT_EQ(back.tags[i].t_blocknr, d.tags[i].t_blocknr) << mask;
      EXPECT_EQ(back.tags[i].t_flags, d.tags[i].t_flags) << mask;
      EXPECT_EQ(back.tags[i].t_checksum, d.tags[i].t_checksum) << mask;
    }
    EXPECT_EQ(back.tags[0].uuid, d.tags[0].uuid);
    EXPECT_TRUE(verify_block_tail(blk, f));
    // Too many tags for one block is an error, not an overflow.
    d.tags.assign(200, d.tags[1]);
    std::vector<std::byte> small(1024);
    EXPECT_FALSE(encode_descriptor_block(d, f, small).ok());
  }
}

TEST(Jbd2Format, RevokeRecordsAndLimits) {
  JournalFormat f;
  f.block_size = 1024;
  f.csum_v3 = true;
  RevokeBlock r;
  r.header = {kJbd2Magic, kJbd2RevokeBlock, 5};
  r.blocks = {7, 9, 11};
  std::vector<std::byte> blk(1024);
  ASSERT_TRUE(encode_revoke_block(r, f, blk).ok());
  EXPECT_EQ(be32(blk, 12), 16u + 12u);
  auto back = decode_revoke_block(blk, f);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->blocks, r.blocks);
  put_be32(blk, 12, 1024);  // r_count past the tail
  EXPECT_EQ(decode_revoke_block(blk, f).error().code(), kErrCorrupted);
  r.blocks.assign(revoke_records_per_block(f) + 1, 1);
  EXPECT_FALSE(encode_revoke_block(r, f, blk).ok());
}

// Published check value: crc32c("123456789") = 0xE3069283 with the
// conventional inversions, which jbd2's raw chaining leaves to the caller.
TEST(Jbd2Format, DataChecksumIsSeededBySequence) {
  std::array<uint8_t, 16> uuid{};
  uint32_t seed = jbd2_csum_seed(uuid);
  EXPECT_EQ(seed, crc32c(~0u, as_bytes(uuid.data(), 16)));
  std::vector<std::byte> data(4096, std::byte{0x11});
  std::byte seq[4];
  put_be32(seq, 0, 42);
  EXPECT_EQ(data_block_checksum(seed, 42, data), crc32c(crc32c(seed, seq), data));
  JournalFormat f;
  f.csum_v2 = true;
  f.csum_seed = seed;
  EXPECT_EQ(tag_checksum(f, 42, data), data_block_checksum(seed, 42, data) & 0xFFFF);
  std::string check = "123456789";
  EXPECT_EQ(~crc32c(~0u, as_bytes(check.data(), check.size())), 0xE3069283u);
}

}  // namespace
}  // namespace uext::disk
