#include "disk/inode.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "disk/group_desc.h"
#include "support/process.h"
#include "support/regex.h"

namespace uext::disk {
namespace {

using uext::testing::run;
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

void write_at(const std::string& path, uint64_t offset, Bytes data) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

// A populated image: mke2fs -d with regular files, directories, fast and
// slow symlinks, devices, a FIFO and hard links.
struct Image {
  TempDir dir;
  std::string path;
  Superblock sb;

  explicit Image(const std::vector<std::string>& options) {
    const std::string src = dir / "src";
    std::filesystem::create_directories(src + "/sub/deeper");
    uext::testing::write_file(src + "/file", "hello\n");
    uext::testing::write_file(src + "/sub/big", std::string(300000, 'z'));
    std::filesystem::create_symlink("short", src + "/fast");
    std::filesystem::create_symlink(std::string(80, 'x'), src + "/slow");
    std::filesystem::create_hard_link(src + "/file", src + "/link");
    mkfifo((src + "/fifo").c_str(), 0600);
    has_devices = mknod((src + "/chr").c_str(), S_IFCHR | 0644, makedev(8, 1)) == 0 &&
                  mknod((src + "/blk").c_str(), S_IFBLK | 0600, makedev(259, 70000)) == 0;
    path = dir / "fs.img";
    std::vector<std::string> argv = {"mke2fs", "-F", "-q", "-d", src};
    argv.insert(argv.end(), options.begin(), options.end());
    argv.push_back(path);
    argv.push_back("64M");
    run_ok(argv);
    auto decoded = decode_superblock(read_at(path, kSuperblockOffset, kSuperblockSize), 0);
    EXPECT_TRUE(decoded.ok());
    if (decoded.ok()) sb = *decoded;
  }

  GroupDesc group(uint32_t g) const {
    DescLocation loc = group_desc_location(sb, g);
    auto gd = decode_group_desc(sb, g, read_at(path, loc.block * sb.block_size() + loc.offset, sb.desc_size()));
    EXPECT_TRUE(gd.ok());
    return gd.ok() ? *gd : GroupDesc{};
  }
  uint64_t slot_offset(uint32_t ino) const {
    InodeLocation loc = inode_location(sb, ino);
    return group(loc.group).bg_inode_table * sb.block_size() + loc.table_offset;
  }
  std::vector<std::byte> slot(uint32_t ino) const { return read_at(path, slot_offset(ino), sb.inode_size()); }

  bool has_devices = false;
};

std::map<std::string, std::string> debugfs_stat(const std::string& image, uint32_t ino) {
  std::map<std::string, std::string> out;
  std::istringstream in(run_ok({"debugfs", "-R", "stat <" + std::to_string(ino) + ">", image}));
  static const testing::Regex field(R"(([A-Za-z][A-Za-z /()-]*?):\s+(\S+(?: -- .*)?))");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Fast link dest:", 0) == 0) out["Fast link dest"] = line.substr(16);
    if (auto at = line.find("Device major/minor number: "); at != std::string::npos) {
      const std::string value = line.substr(at + 27);
      out["Device"] = value.substr(0, value.find(' '));
      continue;
    }
    for (const auto& m : regex_find_all(line, field)) {
      std::string key = m[1];
      key.erase(0, key.find_first_not_of(' '));
      // "Type: block special    Mode: ..." : the key is what follows the gap.
      if (auto gap = key.rfind("  "); gap != std::string::npos) key = key.substr(gap + 2);
      out.emplace(key, m[2]);
    }
  }
  return out;
}

uint64_t num(const std::string& s) { return std::stoull(s, nullptr, 0); }

std::string time_hex(const Timestamp& t) {
  const uint32_t lo = static_cast<uint32_t>(t.sec);
  const uint32_t epoch = static_cast<uint32_t>((t.sec - static_cast<int32_t>(lo)) >> 32) & 3;
  char buf[32];
  snprintf(buf, sizeof buf, "0x%08x:%08x", lo, epoch | (t.nsec << 2));
  return buf;
}

const char* type_name(uint16_t mode) {
  switch (mode & 0xF000) {
    case 0x8000: return "regular";
    case 0x4000: return "directory";
    case 0xA000: return "symlink";
    case 0x2000: return "character";
    case 0x6000: return "block";
    case 0x1000: return "FIFO";
    case 0xC000: return "socket";
    default: return "bad";
  }
}

class InodeVsDebugfs : public ::testing::TestWithParam<std::vector<std::string>> {};

TEST_P(InodeVsDebugfs, UsedInodesMatchStat) {
  Image img(GetParam());
  const Superblock& sb = img.sb;
  const uint32_t last = sb.s_inodes_count - sb.s_free_inodes_count;  // mke2fs -d allocates densely
  int compared = 0;
  for (uint32_t ino = 1; ino <= last + 1; ++ino) {
    SCOPED_TRACE("inode " + std::to_string(ino));
    const auto raw = img.slot(ino);
    auto in = decode_inode(sb, ino, raw);
    ASSERT_TRUE(in.ok()) << in.error().message();
    if (in->i_mode == 0 && in->i_links_count == 0) continue;  // unused reserved inode
    auto st = debugfs_stat(img.path, ino);
    ++compared;
    EXPECT_EQ(st["Type"], type_name(in->i_mode));
    EXPECT_EQ(num("0" + st["Mode"]), in->i_mode & 07777u);
    EXPECT_EQ(num(st["Flags"]), in->i_flags);
    EXPECT_EQ(num(st["Generation"]), in->i_generation);
    EXPECT_EQ(num(st["User"]), in->i_uid);
    EXPECT_EQ(num(st["Group"]), in->i_gid);
    EXPECT_EQ(num(st["Size"]), in->i_size);
    EXPECT_EQ(num(st["File ACL"]), in->i_file_acl);
    EXPECT_EQ(num(st["Links"]), in->i_links_count);
    EXPECT_EQ(num(st["Blockcount"]), inode_blocks_512(sb, *in));
    EXPECT_EQ(st["ctime"].substr(0, 10), time_hex(in->i_ctime).substr(0, 10));
    EXPECT_EQ(st["mtime"].substr(0, 10), time_hex(in->i_mtime).substr(0, 10));
    EXPECT_EQ(st["atime"].substr(0, 10), time_hex(in->i_atime).substr(0, 10));
    if (sb.inode_size() > 128) {
      EXPECT_EQ(num(st["Size of extra inode fields"]), in->i_extra_isize);
      EXPECT_EQ(st["ctime"].substr(0, 19), time_hex(in->i_ctime));
      EXPECT_EQ(st["mtime"].substr(0, 19), time_hex(in->i_mtime));
      EXPECT_EQ(st["atime"].substr(0, 19), time_hex(in->i_atime));
      EXPECT_EQ(st["crtime"].substr(0, 19), time_hex(in->i_crtime));
      EXPECT_EQ(num(st["Project"]), in->i_projid);
    }
    if (sb.has_metadata_csum()) {
      EXPECT_EQ(num(st["Inode checksum"]), in->i_checksum);
      const uint32_t mask = in->i_extra_isize >= 4 ? 0xFFFFFFFF : 0xFFFF;
      EXPECT_EQ(inode_checksum(sb, ino, raw) & mask, in->i_checksum);
    }
    const bool fast = st.count("Fast link dest") != 0;
    EXPECT_EQ(is_fast_symlink(sb, *in), fast);
    if (fast) {
      auto bytes = in->i_block_bytes();
      EXPECT_EQ("\"" + std::string(reinterpret_cast<const char*>(bytes.data()), in->i_size) + "\"",
                st["Fast link dest"]);
    }
    const uint16_t type = in->i_mode & 0xF000;
    if (type == 0x2000 || type == 0x6000) {
      const DeviceNumber dev = inode_device(*in);
      const std::string want = st["Device"];
      char buf[32];
      snprintf(buf, sizeof buf, type == 0x2000 ? "%02u:%02u" : "%u:%u", dev.major, dev.minor);
      EXPECT_EQ(want, buf);
    }
  }
  // Root and lost+found plus the nine files of the source tree (the hard
  // link shares an inode); devices only when mknod was allowed.
  EXPECT_GE(compared, img.has_devices ? 11 : 9);
}

TEST_P(InodeVsDebugfs, WholeInodeTableRoundTrips) {
  Image img(GetParam());
  const Superblock& sb = img.sb;
  int nonzero = 0;
  for (uint32_t g = 0; g < std::min(2u, sb.group_count()); ++g) {
    const GroupDesc gd = img.group(g);
    if (gd.bg_flags & kBgInodeUninit) continue;
    for (uint32_t i = 0; i < sb.s_inodes_per_group; ++i) {
      const uint32_t ino = g * sb.s_inodes_per_group + i + 1;
      const auto raw = img.slot(ino);
      auto in = decode_inode(sb, ino, raw);
      ASSERT_TRUE(in.ok()) << "inode " << ino << ": " << in.error().message();
      // A never-written slot has no checksum yet; encoding one adds it.
      if (std::all_of(raw.begin(), raw.end(), [](std::byte b) { return b == std::byte{0}; })) continue;
      ++nonzero;
      std::vector<std::byte> again = raw;
      encode_inode(sb, ino, *in, again);
      ASSERT_TRUE(again == raw) << "inode " << ino << ": encode(decode(raw)) differs";
    }
  }
  EXPECT_GE(nonzero, 11);
}

TEST_P(InodeVsDebugfs, LocationMatchesImap) {
  Image img(GetParam());
  for (uint32_t ino : {1u, 2u, 11u, 12u, 13u, img.sb.s_inodes_per_group, img.sb.s_inodes_per_group + 1,
                       img.sb.s_inodes_count}) {
    if (ino > img.sb.s_inodes_count) continue;  // a single-group image
    const std::string out = run_ok({"debugfs", "-R", "imap <" + std::to_string(ino) + ">", img.path});
    testing::RegexMatch m;
    ASSERT_TRUE(regex_search(out, m, testing::Regex(R"(group (\d+)\s+located at block (\d+), offset (0x[0-9a-f]+))")))
        << out;
    const InodeLocation loc = inode_location(img.sb, ino);
    EXPECT_EQ(loc.group, num(m[1])) << ino;
    const uint64_t byte = img.group(loc.group).bg_inode_table * img.sb.block_size() + loc.table_offset;
    EXPECT_EQ(byte / img.sb.block_size(), num(m[2])) << ino;
    EXPECT_EQ(byte % img.sb.block_size(), num(m[3])) << ino;
  }
}

INSTANTIATE_TEST_SUITE_P(Mke2fsConfigs, InodeVsDebugfs,
                         ::testing::Values(std::vector<std::string>{"-t", "ext4"},
                                           std::vector<std::string>{"-t", "ext4", "-I", "128"},
                                           std::vector<std::string>{"-t", "ext4", "-O", "metadata_csum_seed,project", "-b", "4096"},
                                           std::vector<std::string>{"-t", "ext4", "-I", "1024", "-O", "^metadata_csum"},
                                           std::vector<std::string>{"-t", "ext3"},
                                           std::vector<std::string>{"-t", "ext2", "-r", "0"}));

// Extended timestamps set by debugfs come out as the kernel reads them.
TEST(Inode, ExtraTimestampFieldsFromDebugfs) {
  Image img({"-t", "ext4"});
  const uint32_t ino = 12;
  const std::string script = img.dir / "sif";
  uext::testing::write_file(script,
                            "sif <12> mtime 0x80000000\n"
                            "sif <12> mtime_extra 0x12345679\n"  // epoch 1, nsec 0x48d159e
                            "sif <12> atime 0xffffffff\n"
                            "sif <12> atime_extra 0x0\n"  // -1: a second before 1970
                            "sif <12> crtime 0x7fffffff\n"
                            "sif <12> crtime_extra 0xeE6B27FF\n");  // epoch 3, nsec 999999999
  run_ok({"debugfs", "-w", "-f", script, img.path});
  auto in = decode_inode(img.sb, ino, img.slot(ino));
  ASSERT_TRUE(in.ok()) << in.error().message();
  EXPECT_EQ(in->i_mtime, (Timestamp{int64_t{0x80000000}, 0x12345679u >> 2}));
  EXPECT_EQ(in->i_atime, (Timestamp{-1, 0}));
  EXPECT_EQ(in->i_crtime, (Timestamp{0x7fffffff + (int64_t{3} << 32), 999999999}));
}

// Changes written through encode_inode are read back by debugfs and pass e2fsck.
TEST(Inode, EncodedChangesAreAcceptedByE2fsprogs) {
  for (auto options : {std::vector<std::string>{"-t", "ext4"}, std::vector<std::string>{"-t", "ext4", "-I", "128"}}) {
    Image img(options);
    const uint32_t ino = 2;  // root directory
    auto raw = img.slot(ino);
    auto in = decode_inode(img.sb, ino, raw);
    ASSERT_TRUE(in.ok());
    in->i_mode = (in->i_mode & 0xF000) | 0700;
    in->i_uid = 0x12345;
    in->i_gid = 0x23456;
    in->i_mtime = {int64_t{1} << 32, 123456789};
    in->i_atime = {-86400, 5};
    encode_inode(img.sb, ino, *in, raw);
    write_at(img.path, img.slot_offset(ino), raw);
    auto st = debugfs_stat(img.path, ino);
    EXPECT_EQ(st["Mode"], "0700");
    EXPECT_EQ(num(st["User"]), 0x12345u);
    EXPECT_EQ(num(st["Group"]), 0x23456u);
    if (img.sb.inode_size() > 128) {
      EXPECT_EQ(st["mtime"].substr(0, 19), time_hex(in->i_mtime));
      EXPECT_EQ(st["atime"].substr(0, 19), time_hex(in->i_atime));
    } else {
      // No room for the extra fields: only the low 32 bits survive.
      EXPECT_EQ(st["mtime"].substr(0, 10), "0x00000000");
    }
    EXPECT_EQ(num(st["Inode checksum"]), le16(raw, 0x7C) | (img.sb.inode_size() > 128 ? le16(raw, 0x82) << 16 : 0u));
    auto fsck = run({"e2fsck", "-fn", img.path});
    EXPECT_EQ(fsck.exit_code, 0) << fsck.out;
  }
}

TEST(Inode, ChecksumMismatchIsEbadmsg) {
  Image img({"-t", "ext4"});
  for (size_t at : {size_t{0}, size_t{0x28}, size_t{0x7C}, size_t{0x82}, size_t{0x90}, size_t{0xFF}}) {
    auto raw = img.slot(2);
    raw[at] ^= std::byte{0x01};
    auto r = decode_inode(img.sb, 2, raw);
    ASSERT_FALSE(r.ok()) << at;
    EXPECT_EQ(r.error().code(), kErrBadChecksum);
    EXPECT_EQ(r.error().message().rfind("inode 2: checksum", 0), 0u) << r.error().message();
  }
  // The right bytes under the wrong inode number fail too.
  auto r = decode_inode(img.sb, 3, img.slot(2));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), kErrBadChecksum);
}

TEST(Inode, BadExtraIsizeIsCorruption) {
  Image img({"-t", "ext4"});
  for (uint16_t bad : {uint16_t{2}, uint16_t{33}, uint16_t{132}, uint16_t{0xFFFF}}) {
    auto raw = img.slot(2);
    put_le16(raw, 0x80, bad);
    auto r = decode_inode(img.sb, 2, raw);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code(), kErrCorrupted);
    EXPECT_NE(r.error().message().find("i_extra_isize " + std::to_string(bad)), std::string::npos)
        << r.error().message();
  }
  auto r = decode_inode(img.sb, 2, Bytes(img.slot(2).data(), 100));
  EXPECT_FALSE(r.ok());
}

TEST(Inode, NeverUsedSlotDecodes) {
  Image img({"-t", "ext4"});
  std::vector<std::byte> zero(img.sb.inode_size());
  auto r = decode_inode(img.sb, 5000, zero);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->i_mode, 0);
  EXPECT_EQ(r->i_links_count, 0);
}

TEST(Inode, BlocksAndHugeFile) {
  Superblock sb;
  sb.s_log_block_size = 2;  // 4 KiB
  Inode in;
  in.i_blocks = (uint64_t{3} << 32) | 8;
  EXPECT_EQ(inode_blocks_512(sb, in), 8u) << "without huge_file the high half is ignored";
  sb.s_feature_ro_compat = ro_compat::kHugeFile;
  EXPECT_EQ(inode_blocks_512(sb, in), (uint64_t{3} << 32) | 8);
  in.i_flags = inode_flag::kHugeFile;
  EXPECT_EQ(inode_blocks_512(sb, in), ((uint64_t{3} << 32) | 8) * 8) << "units of 4 KiB blocks";
}

TEST(Inode, DeviceEncodings) {
  Inode in;
  in.i_block[0] = 0x0801;
  EXPECT_EQ(inode_device(in).major, 8u);
  EXPECT_EQ(inode_device(in).minor, 1u);
  in.i_block[0] = 0;
  // new_encode_dev(259, 70000) = (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)
  in.i_block[1] = (70000 & 0xFF) | (259 << 8) | ((70000 & ~0xFFu) << 12);
  EXPECT_EQ(inode_device(in).major, 259u);
  EXPECT_EQ(inode_device(in).minor, 70000u);
}

TEST(Timestamps, ClampedToWhatTheInodeHolds) {
  // With the extra fields: 1901-12-13 to 2446-05-10, nanoseconds kept.
  EXPECT_EQ(clamp_timestamp({INT64_MAX, 5}, true), (Timestamp{15032385535, 999999999}));
  EXPECT_EQ(clamp_timestamp({INT64_MIN, 5}, true), (Timestamp{INT32_MIN, 0}));
  EXPECT_EQ(clamp_timestamp({15032385535, 7}, true), (Timestamp{15032385535, 7}));
  EXPECT_EQ(clamp_timestamp({1000000000, 2000000000}, true), (Timestamp{1000000000, 999999999}));
  // Without: a signed 32-bit second count, no nanoseconds.
  EXPECT_EQ(clamp_timestamp({INT64_MAX, 5}, false), (Timestamp{INT32_MAX, 0}));
  EXPECT_EQ(clamp_timestamp({-5, 9}, false), (Timestamp{-5, 0}));
  // The extremes round-trip through an encoded 256-byte inode.
  Superblock sb;
  sb.s_inode_size = 256;
  sb.s_rev_level = 1;
  for (const Timestamp t : {Timestamp{15032385535, 999999999}, Timestamp{INT32_MIN, 0}, Timestamp{INT64_MAX, 0}}) {
    Inode in;
    in.i_extra_isize = 32;
    in.i_mtime = t;
    std::vector<std::byte> raw(256);
    in.i_mode = 0100644;
    in.i_links_count = 1;
    encode_inode(sb, 12, in, raw);
    auto back = decode_inode(sb, 12, raw);
    ASSERT_TRUE(back.ok()) << back.error().message();
    EXPECT_EQ(back->i_mtime, clamp_timestamp(t, true));
  }
}

}  // namespace
}  // namespace uext::disk
