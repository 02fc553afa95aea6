#include "disk/features.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "disk/bytes.h"
#include "support/process.h"

namespace uext::disk {
namespace {

using uext::testing::run_ok;
using uext::testing::TempDir;

struct Flags {
  uint32_t compat, incompat, ro_compat;
};

// The three feature words straight from the primary superblock's bytes.
Flags read_flags(const std::string& image) {
  std::ifstream f(image, std::ios::binary);
  std::vector<char> sb(1024);
  f.seekg(1024);
  f.read(sb.data(), sb.size());
  Bytes b = as_bytes(sb.data(), sb.size());
  return {le32(b, 0x5C), le32(b, 0x60), le32(b, 0x64)};
}

std::string dumpe2fs_features(const std::string& image) {
  std::istringstream out(run_ok({"dumpe2fs", "-h", image}));
  std::string line;
  while (std::getline(out, line)) {
    const std::string key = "Filesystem features:";
    if (line.rfind(key, 0) == 0) {
      std::istringstream words(line.substr(key.size()));
      std::string w, joined;
      while (words >> w) joined += (joined.empty() ? "" : " ") + w;
      return joined;
    }
  }
  return "<no features line>";
}

std::string joined(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : " ") + n;
  return s;
}

class FeatureNamesVsDumpe2fs : public ::testing::TestWithParam<std::vector<std::string>> {};

TEST_P(FeatureNamesVsDumpe2fs, SameNamesInSameOrder) {
  TempDir dir;
  const std::string image = dir / "fs.img";
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  for (const auto& a : GetParam()) argv.push_back(a);
  argv.push_back(image);
  argv.push_back("64M");
  run_ok(argv);
  const Flags f = read_flags(image);
  EXPECT_EQ(joined(feature_names(f.compat, f.ro_compat, f.incompat)), dumpe2fs_features(image));
}

INSTANTIATE_TEST_SUITE_P(
    Mke2fsConfigs, FeatureNamesVsDumpe2fs,
    ::testing::Values(std::vector<std::string>{"-t", "ext4"}, std::vector<std::string>{"-t", "ext3"},
                      std::vector<std::string>{"-t", "ext2"},
                      std::vector<std::string>{"-t", "ext4", "-O", "^metadata_csum"},
                      std::vector<std::string>{"-t", "ext4", "-O", "metadata_csum_seed,large_dir,quota,project"},
                      std::vector<std::string>{"-t", "ext4", "-O", "inline_data,encrypt,casefold,ea_inode"},
                      std::vector<std::string>{"-t", "ext4", "-O", "bigalloc,^resize_inode,meta_bg"},
                      std::vector<std::string>{"-t", "ext4", "-O", "orphan_file,fast_commit,stable_inodes,mmp"},
                      std::vector<std::string>{"-t", "ext4", "-O", "verity,sparse_super2,^has_journal"}));

// Bits without a dumpe2fs name print as FEATURE_<kind><bit>; check the
// format against dumpe2fs itself by setting such bits with debugfs.
TEST(FeatureNames, UnknownBitsAsDumpe2fsPrintsThem) {
  TempDir dir;
  const std::string image = dir / "fs.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext2", image, "8M"});
  // One session: once unknown bits are set, debugfs will not reopen the image for writing.
  const std::string script = dir / "set-bits";
  uext::testing::write_file(script,
                            "ssv feature_compat 0x80000080\n"
                            "ssv feature_ro_compat 0x00100084\n"
                            "ssv feature_incompat 0x00000002\n");
  run_ok({"debugfs", "-w", "-f", script, image});
  const Flags f = read_flags(image);
  const std::string ours = joined(feature_names(f.compat, f.ro_compat, f.incompat));
  EXPECT_EQ(ours, "FEATURE_C7 FEATURE_C31 filetype FEATURE_R2 FEATURE_R7 FEATURE_R20");
  EXPECT_EQ(ours, dumpe2fs_features(image));
  // dumpe2fs refuses images with unknown incompat bits, so those follow
  // the same pattern unchecked by it.
  EXPECT_EQ(joined(feature_names(0, 0, 0x80000822)), "filetype FEATURE_I5 FEATURE_I11 FEATURE_I31");
}

TEST(FeatureNames, EveryKnownBit) {
  EXPECT_EQ(joined(feature_names(0x1FFF & ~0x80u, 0, 0)),
            "dir_prealloc imagic_inodes has_journal ext_attr resize_inode dir_index lazy_bg snapshot_bitmap "
            "sparse_super2 fast_commit stable_inodes orphan_file");
  EXPECT_EQ(joined(feature_names(0, 0x1FFFF & ~0x84u, 0)),
            "sparse_super large_file huge_file uninit_bg dir_nlink extra_isize quota bigalloc metadata_csum replica "
            "read-only project shared_blocks verity orphan_present");
  EXPECT_EQ(joined(feature_names(0, 0, 0x3FFFF & ~0x820u)),
            "compression filetype needs_recovery journal_dev meta_bg extent 64bit mmp flex_bg ea_inode dirdata "
            "metadata_csum_seed large_dir inline_data encrypt casefold");
  EXPECT_TRUE(feature_names(0, 0, 0).empty());
}

TEST(CheckFeatures, DefaultExt4IsReadWrite) {
  TempDir dir;
  const std::string image = dir / "fs.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-O", "metadata_csum_seed,large_dir,quota,project", image, "64M"});
  const Flags f = read_flags(image);
  auto v = check_features(f.compat, f.ro_compat, f.incompat);
  ASSERT_TRUE(v.ok()) << v.error().message();
  EXPECT_EQ(v->access, Access::kReadWrite);
  EXPECT_EQ(v->read_only_reason, "");
}

TEST(CheckFeatures, SupportedIncompatSetIsReadWrite) {
  const uint32_t incompat_ok = incompat::kFiletype | incompat::kRecover | incompat::kMetaBg | incompat::kExtents |
                               incompat::k64bit | incompat::kMmp | incompat::kFlexBg | incompat::kCsumSeed |
                               incompat::kLargedir;
  const uint32_t ro_ok = ro_compat::kSparseSuper | ro_compat::kLargeFile | ro_compat::kHugeFile |
                         ro_compat::kGdtCsum | ro_compat::kDirNlink | ro_compat::kExtraIsize |
                         ro_compat::kMetadataCsum | ro_compat::kOrphanPresent | ro_compat::kQuota |
                         ro_compat::kProject;
  auto v = check_features(0xFFFFFFFF, ro_ok, incompat_ok);  // compat never restricts
  ASSERT_TRUE(v.ok()) << v.error().message();
  EXPECT_EQ(v->access, Access::kReadWrite);
}

TEST(CheckFeatures, RefusesUnsupportedIncompatByName) {
  TempDir dir;
  const std::string image = dir / "fs.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-O", "inline_data", image, "64M"});
  const Flags f = read_flags(image);
  auto v = check_features(f.compat, f.ro_compat, f.incompat);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error().code(), ENOTSUP);
  EXPECT_EQ(v.error().message(), "unsupported filesystem feature(s): inline_data");

  struct Case {
    uint32_t bits;
    const char* message;
  };
  for (const Case& c : {Case{incompat::kCompression, "unsupported filesystem feature(s): compression"},
                        Case{incompat::kJournalDev, "unsupported filesystem feature(s): journal_dev"},
                        Case{incompat::kEaInode, "unsupported filesystem feature(s): ea_inode"},
                        Case{incompat::kDirdata, "unsupported filesystem feature(s): dirdata"},
                        Case{incompat::kEncrypt | incompat::kCasefold | incompat::kExtents,
                             "unsupported filesystem feature(s): encrypt, casefold"},
                        Case{0x80000000u | incompat::kFiletype, "unsupported filesystem feature(s): FEATURE_I31"},
                        Case{0x20, "unsupported filesystem feature(s): FEATURE_I5"}}) {
    auto r = check_features(0, 0, c.bits);
    ASSERT_FALSE(r.ok()) << c.message;
    EXPECT_EQ(r.error().code(), ENOTSUP);
    EXPECT_EQ(r.error().message(), c.message);
  }
}

TEST(CheckFeatures, UnhandledRoCompatMeansReadOnly) {
  TempDir dir;
  const std::string image = dir / "fs.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-O", "bigalloc", image, "64M"});
  const Flags f = read_flags(image);
  auto v = check_features(f.compat, f.ro_compat, f.incompat);
  ASSERT_TRUE(v.ok()) << v.error().message();
  EXPECT_EQ(v->access, Access::kReadOnly);
  EXPECT_EQ(v->read_only_reason, "unsupported read-only-compatible feature(s): bigalloc");

  auto many = check_features(0, ro_compat::kVerity | ro_compat::kSharedBlocks | ro_compat::kReadonly |
                                    ro_compat::kReplica | ro_compat::kHasSnapshot | ro_compat::kBtreeDir |
                                    (1u << 20) | ro_compat::kSparseSuper,
                             incompat::kFiletype);
  ASSERT_TRUE(many.ok());
  EXPECT_EQ(many->access, Access::kReadOnly);
  EXPECT_EQ(many->read_only_reason,
            "unsupported read-only-compatible feature(s): FEATURE_R2, FEATURE_R7, replica, read-only, "
            "shared_blocks, verity, FEATURE_R20");
}

TEST(CheckFeatures, RefusalWinsOverReadOnly) {
  auto v = check_features(0, ro_compat::kBigalloc, incompat::kInlineData);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error().code(), ENOTSUP);
}

}  // namespace
}  // namespace uext::disk
