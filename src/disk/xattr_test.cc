#include "disk/xattr.h"

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
#include "support/regex.h"

namespace uext::disk {
namespace {

using testimg::Image;
using uext::testing::TempDir;

std::string hex_decode(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

// What the kernel reports for a file's xattrs (VFS form, ACLs included).
std::map<std::string, std::string> getfattr_all(const std::string& path) {
  std::string out = uext::testing::run_ok({"getfattr", "--absolute-names", "-d", "-m", "-", "-e", "hex", path});
  std::map<std::string, std::string> m;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    size_t eq = line.find("=0x");
    if (line.empty() || line[0] == '#' || eq == std::string::npos) continue;
    m[line.substr(0, eq)] = hex_decode(line.substr(eq + 3));
  }
  m.erase("security.selinux");  // labelled by the host, not copied meaningfully
  return m;
}

struct XattrImage : ::testing::Test {
  TempDir dir;
  void SetUp() override {
    std::string src = dir / "src";
    std::filesystem::create_directories(src + "/acldir");
    uext::testing::write_file(src + "/small", "s");
    uext::testing::write_file(src + "/big", "b");
    uext::testing::write_file(src + "/acl", "a");
    auto set = [](const std::string& f, const std::string& n, const std::string& v) {
      uext::testing::run_ok({"setfattr", "-n", n, "-v", v, f});
    };
    set(src + "/small", "user.mime_type", "text/plain");
    set(src + "/small", "trusted.t", "0x00ff10");
    set(src + "/big", "user.a", "short");
    set(src + "/big", "user.large1", std::string(500, 'L'));
    set(src + "/big", "user.large2", std::string(201, 'M'));
    set(src + "/big", "user.empty", "");
    set(src + "/big", "security.sec", "label");
    uext::testing::run_ok({"setfacl", "-m", "u:1234:rw,g:55:r,m::rwx", src + "/acl"});
    uext::testing::run_ok({"setfacl", "-d", "-m", "u:99:rwx,o::r", src + "/acldir"});
    uext::testing::run_ok({"setfacl", "-m", "u:7:x", src + "/acldir"});
  }
};

// All of a file's xattrs: in-inode ones, then the block's.
std::map<std::string, std::string> read_all(const Image& img, const std::string& file, uint64_t* block_nr) {
  Bytes inode = img.inode(file);
  std::map<std::string, std::string> m;
  *block_nr = 0;
  if (inode.size() < 160) {
    ADD_FAILURE() << "cannot read inode of " << file;
    return m;
  }
  size_t extra = le16(inode, 128);
  auto in_inode = parse_inode_xattrs(inode.subspan(128 + extra));
  EXPECT_TRUE(in_inode.ok()) << in_inode.error().message();
  if (in_inode.ok())
    for (auto& x : *in_inode) m[x.name] = x.value;
  uint64_t blk = le32(inode, 0x68) | (uint64_t{le16(inode, 0x76)} << 32);
  *block_nr = blk;
  if (blk) {
    XattrBlockHeader h;
    auto in_block = parse_xattr_block(img.block(blk), &h);
    EXPECT_TRUE(in_block.ok()) << in_block.error().message();
    EXPECT_EQ(h.h_magic, kXattrMagic);
    EXPECT_EQ(h.h_blocks, 1u);
    EXPECT_GE(h.h_refcount, 1u);
    if (in_block.ok())
      for (auto& x : *in_block) {
        EXPECT_EQ(m.count(x.name), 0u) << x.name << " is both in the inode and the block";
        m[x.name] = x.value;
      }
  }
  return m;
}

TEST_F(XattrImage, ParsedAttributesMatchTheSourceFiles) {
  for (bool csum : {true, false}) {
    std::vector<std::string> opts = {"-I", "256"};
    if (!csum) opts.insert(opts.end(), {"-O", "^metadata_csum"});
    Image img(dir / (csum ? "img1" : "img2"), dir / "src", csum ? 1024 : 4096, "16M", opts);
    int with_block = 0;
    for (std::string f : {"small", "big", "acl", "acldir"}) {
      uint64_t blk = 0;
      auto ours = read_all(img, "/" + f, &blk);
      auto want = getfattr_all(dir / ("src/" + f));
      ASSERT_FALSE(want.empty()) << f;
      EXPECT_EQ(ours, want) << f;
      if (!blk) continue;
      ++with_block;
      Bytes block = img.block(blk);
      // The stored per-entry hashes and block hash are what we compute.
      for (size_t off = kXattrBlockHeaderSize; le32(block, off) != 0; off += (16 + le8(block, off) + 3) & ~3u) {
        std::string suffix(reinterpret_cast<const char*>(block.data()) + off + 16, le8(block, off));
        std::string value(reinterpret_cast<const char*>(block.data()) + le16(block, off + 2), le32(block, off + 8));
        EXPECT_EQ(le32(block, off + 12), xattr_entry_hash(suffix, value)) << suffix;
      }
      // e2fsprogs leaves h_hash 0 (block not offered for sharing); the kernel fills it in.
      if (le32(block, 12) != 0) {
        EXPECT_EQ(le32(block, 12), xattr_block_hash(block));
      }
      if (csum) {
        auto st = verify_xattr_block_checksum(img.fs_csum_seed(), blk, block);
        EXPECT_TRUE(st.ok()) << st.error().message();
        auto copy = img.block_copy(blk);
        copy[copy.size() - 1] ^= std::byte{1};
        auto bad = verify_xattr_block_checksum(img.fs_csum_seed(), blk, copy);
        ASSERT_FALSE(bad.ok());
        EXPECT_EQ(bad.error().code(), kErrBadChecksum);
        // The block number is part of the checksum.
        EXPECT_FALSE(verify_xattr_block_checksum(img.fs_csum_seed(), blk + 1, block).ok());
        set_xattr_block_checksum(img.fs_csum_seed(), blk, copy);
        EXPECT_TRUE(verify_xattr_block_checksum(img.fs_csum_seed(), blk, copy).ok());
      }
    }
    EXPECT_GE(with_block, 1) << "the large values should have needed an xattr block";
  }
}

TEST_F(XattrImage, AclDiskFormMatchesDebugfs) {
  Image img(dir / "img", dir / "src", 4096, "16M", {"-I", "256"});
  // debugfs prints the raw (disk form) ACL bytes in hex.
  std::string out = img.debugfs("ea_list /acl");
  testing::RegexMatch m;
  ASSERT_TRUE(regex_search(out, m, testing::Regex("system.posix_acl_access \\((\\d+)\\) = ((?:[0-9a-f]{2} )+)")))
      << out;
  std::string hex = m[2];
  hex.erase(std::remove(hex.begin(), hex.end(), ' '), hex.end());
  std::string disk = hex_decode(hex);
  EXPECT_EQ(disk.size(), std::stoul(m[1]));
  auto vfs = getfattr_all(dir / "src/acl").at("system.posix_acl_access");
  auto to_disk = acl_to_disk(vfs);
  ASSERT_TRUE(to_disk.ok());
  EXPECT_EQ(*to_disk, disk);
  auto back = acl_from_disk(disk);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, vfs);
}

std::string bytes_str(std::initializer_list<int> v) {
  std::string s;
  for (int b : v) s.push_back(static_cast<char>(b));
  return s;
}

TEST(XattrAcl, KnownConversionBothWays) {
  // user::rw- user:1234:rw- group::r-- mask::rw- other::r--, as getfacl/setfacl made them.
  std::string disk = bytes_str({1, 0, 0, 0, 1, 0, 6, 0, 2, 0, 6, 0, 0xd2, 4, 0, 0, 4, 0, 4, 0, 0x10, 0, 6, 0, 0x20, 0, 4, 0});
  std::string vfs = bytes_str({2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 2, 0, 6, 0, 0xd2, 4, 0, 0, 4, 0, 4, 0, 0xff,
                               0xff, 0xff, 0xff, 0x10, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 4, 0, 0xff, 0xff, 0xff,
                               0xff});
  EXPECT_EQ(*acl_from_disk(disk), vfs);
  EXPECT_EQ(*acl_to_disk(vfs), disk);
  // Header-only ACLs convert to header-only ACLs.
  EXPECT_EQ(*acl_from_disk(bytes_str({1, 0, 0, 0})), bytes_str({2, 0, 0, 0}));
  EXPECT_EQ(*acl_to_disk(bytes_str({2, 0, 0, 0})), bytes_str({1, 0, 0, 0}));
}

TEST(XattrAcl, MalformedValuesAreRejected) {
  auto bad_disk = [](const std::string& v, const char* what) {
    auto r = acl_from_disk(v);
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_EQ(r.error().code(), kErrCorrupted) << what;
  };
  bad_disk("", "empty");
  bad_disk(bytes_str({1, 0, 0}), "short header");
  bad_disk(bytes_str({2, 0, 0, 0}), "version 2 on disk");
  bad_disk(bytes_str({1, 0, 0, 0, 1, 0}), "truncated short entry");
  bad_disk(bytes_str({1, 0, 0, 0, 2, 0, 6, 0, 1, 2}), "truncated user entry");
  bad_disk(bytes_str({1, 0, 0, 0, 0x40, 0, 6, 0}), "unknown tag");
  auto bad_vfs = [](const std::string& v, const char* what) {
    auto r = acl_to_disk(v);
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_EQ(r.error().code(), EINVAL) << what;
  };
  bad_vfs("", "empty");
  bad_vfs(bytes_str({1, 0, 0, 0}), "disk version given to to_disk");
  bad_vfs(bytes_str({2, 0, 0, 0, 1, 0, 6, 0}), "entry not 8 bytes");
  bad_vfs(bytes_str({2, 0, 0, 0, 3, 0, 6, 0, 0, 0, 0, 0}), "unknown tag");
}

TEST(XattrNames, Prefixes) {
  EXPECT_EQ(*xattr_full_name(1, "x"), "user.x");
  EXPECT_EQ(*xattr_full_name(2, ""), "system.posix_acl_access");
  EXPECT_EQ(*xattr_full_name(3, ""), "system.posix_acl_default");
  EXPECT_EQ(*xattr_full_name(4, "t"), "trusted.t");
  EXPECT_EQ(*xattr_full_name(6, "selinux"), "security.selinux");
  EXPECT_EQ(*xattr_full_name(7, "data"), "system.data");
  EXPECT_EQ(*xattr_full_name(8, ""), "system.richacl");
  EXPECT_EQ(xattr_full_name(9, "c").error().code(), ENOTSUP);
  for (int i : {0, 11, 200}) EXPECT_EQ(xattr_full_name(static_cast<uint8_t>(i), "x").error().code(), kErrCorrupted);
}

TEST(XattrHash, SignedAndUnsignedDifferOnlyForHighBytes) {
  EXPECT_EQ(xattr_entry_hash("abc", "value"), xattr_entry_hash_signed("abc", "value"));
  EXPECT_NE(xattr_entry_hash("\xe9t\xe9", "v"), xattr_entry_hash_signed("\xe9t\xe9", "v"));
  // Hand-computed: name "a" -> 0x61; value "\x01" pads to word 1 -> (0x61 << 16) ^ 1.
  EXPECT_EQ(xattr_entry_hash("a", std::string("\x01", 1)), (0x61u << 16) ^ 1u);
  EXPECT_EQ(xattr_entry_hash("", ""), 0u);
}

// ---- synthetic blocks and areas ----

struct Ent {
  uint8_t index;
  std::string name;
  std::string value;
};

// Lays out entries from `first`, values from the end backwards.
std::vector<std::byte> build(size_t size, size_t first, size_t value_base, const std::vector<Ent>& ents) {
  std::vector<std::byte> b(size);
  size_t off = first, vend = size;
  for (const auto& e : ents) {
    size_t vsize = (e.value.size() + 3) & ~size_t{3};
    vend -= vsize;
    put_le8(b, off, static_cast<uint8_t>(e.name.size()));
    put_le8(b, off + 1, e.index);
    put_le16(b, off + 2, static_cast<uint16_t>(e.value.empty() ? 0 : vend - value_base));
    put_le32(b, off + 8, static_cast<uint32_t>(e.value.size()));
    put_le32(b, off + 12, xattr_entry_hash(e.name, e.value));
    std::memcpy(b.data() + off + 16, e.name.data(), e.name.size());
    std::memcpy(b.data() + vend, e.value.data(), e.value.size());
    off += (16 + e.name.size() + 3) & ~size_t{3};
  }
  return b;
}

std::vector<std::byte> build_block(const std::vector<Ent>& ents, size_t size = 1024) {
  auto b = build(size, 32, 0, ents);
  put_le32(b, 0, kXattrMagic);
  put_le32(b, 4, 1);
  put_le32(b, 8, 1);
  put_le32(b, 12, xattr_block_hash(b));
  return b;
}

std::vector<std::byte> build_area(const std::vector<Ent>& ents, size_t size = 160) {
  auto b = build(size, 4, 4, ents);
  put_le32(b, 0, kXattrMagic);
  return b;
}

const std::vector<Ent> kSample = {{1, "a", "hello"}, {4, "tt", std::string(30, 'x')}, {1, "z", ""}};

TEST(XattrParse, SyntheticBlockAndArea) {
  auto blk = parse_xattr_block(build_block(kSample));
  ASSERT_TRUE(blk.ok()) << blk.error().message();
  ASSERT_EQ(blk->size(), 3u);
  EXPECT_EQ((*blk)[0].name, "user.a");
  EXPECT_EQ((*blk)[0].value, "hello");
  EXPECT_EQ((*blk)[1].name, "trusted.tt");
  EXPECT_EQ((*blk)[2].value, "");
  auto area = parse_inode_xattrs(build_area(kSample));
  ASSERT_TRUE(area.ok()) << area.error().message();
  EXPECT_EQ(area->size(), 3u);
  EXPECT_EQ((*area)[1].value, std::string(30, 'x'));
  // No magic, or no room for it: simply no attributes.
  std::vector<std::byte> zero(96), tiny(2);
  EXPECT_TRUE(parse_inode_xattrs(zero)->empty());
  EXPECT_TRUE(parse_inode_xattrs(tiny)->empty());
  EXPECT_TRUE(parse_inode_xattrs({})->empty());
  // ea_inode entries carry the inode and no value.
  auto ea = build_block({{1, "big", ""}});
  put_le32(ea, 32 + 4, 77);
  put_le32(ea, 32 + 8, 100000);
  auto r = parse_xattr_block(ea);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ((*r)[0].value_inum, 77u);
}

TEST(XattrParse, EveryValidationRule) {
  auto expect_bad = [](Result<std::vector<Xattr>> r, const char* what, int code = kErrCorrupted) {
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_EQ(r.error().code(), code) << what << ": " << r.error().message();
  };
  auto b = build_block(kSample);
  put_le32(b, 0, 0xEA010000);
  expect_bad(parse_xattr_block(b), "block magic");
  b = build_block(kSample);
  put_le32(b, 8, 2);
  expect_bad(parse_xattr_block(b), "h_blocks 2");
  expect_bad(parse_xattr_block(Bytes(build_block(kSample)).first(20)), "short block");
  b = build_block(kSample);
  put_le16(b, 32 + 2, 1020);
  expect_bad(parse_xattr_block(b), "value runs off the end");
  b = build_block(kSample);
  put_le16(b, 32 + 2, 1100);
  expect_bad(parse_xattr_block(b), "value offset beyond the block");
  b = build_block(kSample);
  put_le16(b, 32 + 2, 40);
  expect_bad(parse_xattr_block(b), "value overlapping the names");
  b = build_block(kSample);
  put_le32(b, 32 + 8, (1u << 24) + 1);
  expect_bad(parse_xattr_block(b), "value size too large");
  b = build_block(kSample);
  put_le32(b, 32 + 8, 0xFFFFFFFF);
  expect_bad(parse_xattr_block(b), "value size that wraps when padded");
  b = build_block(kSample);
  put_le8(b, 32 + 16, 0);
  expect_bad(parse_xattr_block(b), "NUL in name");
  b = build_block(kSample);
  put_le8(b, 32 + 1, 42);
  expect_bad(parse_xattr_block(b), "unknown name index");
  b = build_block(kSample);
  put_le8(b, 32 + 1, 9);
  expect_bad(parse_xattr_block(b), "encryption index", ENOTSUP);
  b = build_block({{1, "big", ""}});
  put_le32(b, 32 + 4, 77);
  expect_bad(parse_xattr_block(b), "value inode with size 0");
  // An entry table without a terminator runs off the end.
  std::vector<Ent> many;
  for (int i = 0; i < 40; ++i) many.push_back({1, std::string(5, static_cast<char>('a' + i % 26)), ""});
  b = build_block(many, 1024);
  std::fill(b.begin() + 32, b.end(), std::byte{0x04});  // every "entry" has name_len 4, index 4
  expect_bad(parse_xattr_block(b), "no terminator");
  // A name that runs past the end.
  b = build_block({{1, "a", "v"}}, 64);
  put_le8(b, 32, 200);
  expect_bad(parse_xattr_block(b), "name past the end");
  // In-inode: too small to hold the terminator after the magic.
  auto a = build_area({}, 96);
  expect_bad(parse_inode_xattrs(Bytes(a).first(6)), "in-inode area without room for entries");
  a = build_area(kSample);
  put_le16(a, 4 + 2, 155);
  expect_bad(parse_inode_xattrs(a), "in-inode value past the end");
  a = build_area(kSample);
  put_le8(a, 4 + 16, 0);  // the "a" entry's name byte
  expect_bad(parse_inode_xattrs(a), "in-inode NUL in name");
  // A corrupt ACL value is reported with the entry.
  b = build_block({{2, "", bytes_str({1, 0, 0, 0, 0x40, 0, 6, 0})}});
  expect_bad(parse_xattr_block(b), "bad ACL value");
}

TEST(XattrChecksum, CoversBlockNumberAndSkipsItsOwnField) {
  auto b = build_block(kSample);
  set_xattr_block_checksum(99, 1234, b);
  EXPECT_TRUE(verify_xattr_block_checksum(99, 1234, b).ok());
  EXPECT_EQ(le32(b, 16), xattr_block_checksum(99, 1234, b));
  EXPECT_EQ(verify_xattr_block_checksum(99, 1235, b).error().code(), kErrBadChecksum);
  EXPECT_EQ(verify_xattr_block_checksum(98, 1234, b).error().code(), kErrBadChecksum);
  auto c = b;
  c[500] ^= std::byte{8};
  EXPECT_EQ(verify_xattr_block_checksum(99, 1234, c).error().code(), kErrBadChecksum);
  std::vector<std::byte> tiny(8);
  EXPECT_FALSE(verify_xattr_block_checksum(0, 0, tiny).ok());
  set_xattr_block_checksum(0, 0, tiny);
}

TEST(XattrFuzz, RandomBytesNeverCrash) {
  uint64_t state = 0x0123456789abcdefull;
  for (int iter = 0; iter < 5000; ++iter) {
    size_t size = iter % 2 ? 1024 : 96 + iter % 50;
    std::vector<std::byte> b(size);
    testimg::fill_random(b, state);
    if (iter % 3) {
      auto base = iter % 2 ? build_block(kSample, 1024) : build_area(kSample, size);
      std::copy(base.begin(), base.begin() + static_cast<ptrdiff_t>(std::min<size_t>(base.size(), 40 + state % 60)),
                b.begin());
    }
    (void)parse_xattr_block(b);
    (void)parse_inode_xattrs(b);
    (void)verify_xattr_block_checksum(1, 2, b);
    (void)xattr_block_hash(b);
    (void)parse_inode_xattrs(Bytes(b).first(iter % 16));
    std::string s(reinterpret_cast<const char*>(b.data()), iter % 40);
    (void)acl_from_disk(s);
    (void)acl_to_disk(s);
  }
}

// ---- encoders ----

std::vector<XattrEntry> sample_entries() {
  return {{1, "zeta", "last by name", 0}, {4, "t", std::string(37, 'T'), 0}, {1, "a", "", 0},
          {6, "selinux", "label", 0}, {1, "ab", std::string(3, '\x80'), 0}};
}

TEST(XattrEncode, InodeAreaRoundTripsInOrderWithZeroHashes) {
  std::vector<std::byte> area(512 - 128 - 32, std::byte{0xAA});
  auto in = sample_entries();
  ASSERT_TRUE(encode_inode_xattrs(area, in).ok());
  EXPECT_EQ(le32(area, 0), kXattrMagic);
  auto raw = parse_inode_xattr_entries(area);
  ASSERT_TRUE(raw.ok()) << raw.error().message();
  EXPECT_EQ(*raw, in);  // order kept
  for (size_t off = 4; le32(area, off) != 0; off += (16 + le8(area, off) + 3) & ~size_t{3}) {
    EXPECT_EQ(le32(area, off + 12), 0u) << "in-inode e_hash";
    EXPECT_EQ(le32(area, off + 4), 0u);
    if (le32(area, off + 8) == 0) EXPECT_EQ(le16(area, off + 2), 0u);
    else EXPECT_EQ(le16(area, off + 2) % 4, 0u);
  }
  auto vfs = parse_inode_xattrs(area);
  ASSERT_TRUE(vfs.ok());
  EXPECT_EQ((*vfs)[0].name, "user.zeta");
  EXPECT_EQ((*vfs)[3].name, "security.selinux");
  // No entries: no magic, all zeros.
  ASSERT_TRUE(encode_inode_xattrs(area, {}).ok());
  EXPECT_TRUE(std::all_of(area.begin(), area.end(), [](std::byte b) { return b == std::byte{0}; }));
}

TEST(XattrEncode, InodeAreaExactFitAndEnospc) {
  std::vector<std::byte> area(96);
  size_t room = inode_xattr_room(area.size());
  EXPECT_EQ(room, 88u);
  // One entry with a 4-byte name (20 bytes) and a value filling the rest.
  XattrEntry e{1, "full", std::string(room - 20, 'v'), 0};
  EXPECT_EQ(xattr_entry_space(e), room);
  ASSERT_TRUE(encode_inode_xattrs(area, {e}).ok());
  auto back = parse_inode_xattr_entries(area);
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->at(0), e);
  auto before = area;
  e.value.push_back('x');
  auto r = encode_inode_xattrs(area, {e});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ENOSPC);
  EXPECT_EQ(area, before) << "a failed encode leaves the area alone";
  // ea_inode entries are never written.
  EXPECT_EQ(encode_inode_xattrs(area, {{1, "x", "", 12}}).error().code(), EINVAL);
}

TEST(XattrEncode, BlockIsSortedHashedAndChecksummable) {
  std::vector<std::byte> block(1024, std::byte{0x55});
  auto in = sample_entries();
  ASSERT_TRUE(encode_xattr_block(block, in, 3).ok());
  XattrBlockHeader h;
  auto raw = parse_xattr_block_entries(block, &h);
  ASSERT_TRUE(raw.ok()) << raw.error().message();
  auto sorted = in;
  std::sort(sorted.begin(), sorted.end(), xattr_entry_less);
  EXPECT_EQ(*raw, sorted);
  EXPECT_EQ(h.h_refcount, 3u);
  EXPECT_EQ(h.h_blocks, 1u);
  EXPECT_EQ(h.h_checksum, 0u);
  EXPECT_EQ(h.h_hash, xattr_block_hash(block));
  EXPECT_NE(h.h_hash, 0u);
  // Sorted by index, then name length, then name: user.a, user.ab, user.zeta, trusted.t, security.selinux.
  EXPECT_EQ((*raw)[0].suffix, "a");
  EXPECT_EQ((*raw)[1].suffix, "ab");
  EXPECT_EQ((*raw)[2].suffix, "zeta");
  EXPECT_EQ((*raw)[3].name_index, 4);
  size_t i = 0;
  for (size_t off = 32; le32(block, off) != 0; off += (16 + le8(block, off) + 3) & ~size_t{3}, ++i) {
    EXPECT_EQ(le32(block, off + 12), xattr_entry_hash((*raw)[i].suffix, (*raw)[i].value));
  }
  EXPECT_EQ(i, in.size());
  set_xattr_block_checksum(7, 4242, block);
  EXPECT_TRUE(verify_xattr_block_checksum(7, 4242, block).ok());
  // The reader's view agrees.
  auto vfs = parse_xattr_block(block);
  ASSERT_TRUE(vfs.ok());
  EXPECT_EQ((*vfs)[4].name, "security.selinux");
  EXPECT_EQ((*vfs)[4].value, "label");
}

TEST(XattrEncode, BlockExactFitEnospcAndAcls) {
  std::vector<std::byte> block(1024);
  size_t room = xattr_block_room(block.size());
  EXPECT_EQ(room, 1024u - 36u);
  XattrEntry big{1, "big", std::string(room - 20, 'b'), 0};
  ASSERT_TRUE(encode_xattr_block(block, {big}, 1).ok());
  EXPECT_EQ(parse_xattr_block_entries(block)->at(0), big);
  big.value += "x";
  EXPECT_EQ(encode_xattr_block(block, {big}, 1).error().code(), ENOSPC);
  // ACLs: written in disk form, read back in VFS form.
  std::string vfs = bytes_str({2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 2, 0, 4, 0, 0xe8, 3, 0, 0,
                               4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, 0x10, 0, 4, 0, 0xff, 0xff, 0xff, 0xff,
                               0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff});
  auto disk_acl = acl_to_disk(vfs);
  ASSERT_TRUE(disk_acl.ok());
  ASSERT_TRUE(encode_xattr_block(block, {{2, "", *disk_acl, 0}, {1, "u", "v", 0}}, 1).ok());
  auto back = parse_xattr_block(block);
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ((*back)[0].name, "user.u");
  EXPECT_EQ((*back)[1].name, "system.posix_acl_access");
  EXPECT_EQ((*back)[1].value, vfs);
}

TEST(XattrEncode, SplitNames) {
  auto ok = [](std::string_view n, uint8_t idx, std::string suffix) {
    auto e = xattr_split_name(n);
    ASSERT_TRUE(e.ok()) << n << ": " << e.error().message();
    EXPECT_EQ(e->name_index, idx) << n;
    EXPECT_EQ(e->suffix, suffix) << n;
  };
  ok("user.x", 1, "x");
  ok("trusted.overlay.opaque", 4, "overlay.opaque");
  ok("security.capability", 6, "capability");
  ok("system.posix_acl_access", 2, "");
  ok("system.posix_acl_default", 3, "");
  ok("user." + std::string(255, 'n'), 1, std::string(255, 'n'));
  EXPECT_EQ(xattr_split_name("user." + std::string(256, 'n')).error().code(), ERANGE);
  EXPECT_EQ(xattr_split_name("user.").error().code(), EINVAL);
  EXPECT_EQ(xattr_split_name("system.data").error().code(), EOPNOTSUPP);
  EXPECT_EQ(xattr_split_name("system.posix_acl_accessx").error().code(), EOPNOTSUPP);
  EXPECT_EQ(xattr_split_name("os2.x").error().code(), EOPNOTSUPP);
  EXPECT_EQ(xattr_split_name("User.x").error().code(), EOPNOTSUPP);
}

}  // namespace
}  // namespace uext::disk
