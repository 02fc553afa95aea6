#include "disk/features.h"

#include <array>
#include <string_view>

namespace uext::disk {

namespace {

// Names indexed by bit number, as e2fsprogs 1.47 spells them (lib/e2p);
// an empty name means dumpe2fs has none and prints FEATURE_<kind><bit>.
constexpr std::array<std::string_view, 32> kCompatNames = {
    "dir_prealloc", "imagic_inodes", "has_journal",     "ext_attr",      "resize_inode",
    "dir_index",    "lazy_bg",       "",                "snapshot_bitmap", "sparse_super2",
    "fast_commit",  "stable_inodes", "orphan_file",
};
constexpr std::array<std::string_view, 32> kRoCompatNames = {
    "sparse_super", "large_file", "",       "huge_file", "uninit_bg",     "dir_nlink",
    "extra_isize",  "",           "quota",  "bigalloc",  "metadata_csum", "replica",
    "read-only",    "project",    "shared_blocks", "verity", "orphan_present",
};
constexpr std::array<std::string_view, 32> kIncompatNames = {
    "compression", "filetype", "needs_recovery", "journal_dev", "meta_bg",     "",
    "extent",      "64bit",    "mmp",            "flex_bg",     "ea_inode",    "",
    "dirdata",     "metadata_csum_seed", "large_dir", "inline_data", "encrypt", "casefold",
};

std::string bit_name(const std::array<std::string_view, 32>& names, char kind, int bit) {
  if (!names[bit].empty()) return std::string(names[bit]);
  return "FEATURE_" + std::string(1, kind) + std::to_string(bit);
}

void append_names(std::vector<std::string>& out, const std::array<std::string_view, 32>& names,
                  char kind, uint32_t mask) {
  for (int bit = 0; bit < 32; ++bit) {
    if (mask & (1u << bit)) out.push_back(bit_name(names, kind, bit));
  }
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) {
    if (!s.empty()) s += ", ";
    s += n;
  }
  return s;
}

// Incompatible features uext reads and writes. mmp is accepted: uext does
// not run the MMP protocol, but the kernel's own rule is only that the
// feature is understood.
constexpr uint32_t kIncompatSupported = incompat::kFiletype | incompat::kRecover | incompat::kMetaBg |
                                        incompat::kExtents | incompat::k64bit | incompat::kMmp |
                                        incompat::kFlexBg | incompat::kCsumSeed | incompat::kLargedir;

// Read-only-compatible features uext keeps consistent when it writes.
// Anything else (bigalloc, verity, shared_blocks, ...) limits it to reading.
constexpr uint32_t kRoCompatWritable =
    ro_compat::kSparseSuper | ro_compat::kLargeFile | ro_compat::kHugeFile | ro_compat::kGdtCsum |
    ro_compat::kDirNlink | ro_compat::kExtraIsize | ro_compat::kMetadataCsum |
    ro_compat::kOrphanPresent | ro_compat::kQuota | ro_compat::kProject;

}  // namespace

std::vector<std::string> feature_names(uint32_t compat, uint32_t ro_compat, uint32_t incompat) {
  // dumpe2fs lists compat, then incompat, then ro_compat, each in bit order.
  std::vector<std::string> out;
  append_names(out, kCompatNames, 'C', compat);
  append_names(out, kIncompatNames, 'I', incompat);
  append_names(out, kRoCompatNames, 'R', ro_compat);
  return out;
}

Result<FeatureVerdict> check_features(uint32_t compat, uint32_t ro_compat, uint32_t incompat) {
  std::vector<std::string> refused;
  append_names(refused, kIncompatNames, 'I', incompat & ~kIncompatSupported);
  if (!refused.empty()) {
    return Error(ENOTSUP, "unsupported filesystem feature(s): " + join(refused));
  }
  FeatureVerdict verdict;
  std::vector<std::string> read_only;
  append_names(read_only, kRoCompatNames, 'R', ro_compat & ~kRoCompatWritable);
  if (!read_only.empty()) {
    verdict.access = Access::kReadOnly;
    verdict.read_only_reason = "unsupported read-only-compatible feature(s): " + join(read_only);
  }
  return verdict;
}

}  // namespace uext::disk
