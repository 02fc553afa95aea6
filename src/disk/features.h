// Feature flags of the superblock (s_feature_compat / _ro_compat / _incompat)
// and the rules the kernel applies to them when mounting.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "uext/status.h"

namespace uext::disk {

namespace compat {
inline constexpr uint32_t kDirPrealloc = 0x0001;
inline constexpr uint32_t kImagicInodes = 0x0002;
inline constexpr uint32_t kHasJournal = 0x0004;
inline constexpr uint32_t kExtAttr = 0x0008;
inline constexpr uint32_t kResizeInode = 0x0010;
inline constexpr uint32_t kDirIndex = 0x0020;
inline constexpr uint32_t kLazyBg = 0x0040;
inline constexpr uint32_t kExcludeBitmap = 0x0100;
inline constexpr uint32_t kSparseSuper2 = 0x0200;
inline constexpr uint32_t kFastCommit = 0x0400;
inline constexpr uint32_t kStableInodes = 0x0800;
inline constexpr uint32_t kOrphanFile = 0x1000;
}  // namespace compat

namespace ro_compat {
inline constexpr uint32_t kSparseSuper = 0x0001;
inline constexpr uint32_t kLargeFile = 0x0002;
inline constexpr uint32_t kBtreeDir = 0x0004;
inline constexpr uint32_t kHugeFile = 0x0008;
inline constexpr uint32_t kGdtCsum = 0x0010;
inline constexpr uint32_t kDirNlink = 0x0020;
inline constexpr uint32_t kExtraIsize = 0x0040;
inline constexpr uint32_t kHasSnapshot = 0x0080;
inline constexpr uint32_t kQuota = 0x0100;
inline constexpr uint32_t kBigalloc = 0x0200;
inline constexpr uint32_t kMetadataCsum = 0x0400;
inline constexpr uint32_t kReplica = 0x0800;
inline constexpr uint32_t kReadonly = 0x1000;
inline constexpr uint32_t kProject = 0x2000;
inline constexpr uint32_t kSharedBlocks = 0x4000;
inline constexpr uint32_t kVerity = 0x8000;
inline constexpr uint32_t kOrphanPresent = 0x10000;
}  // namespace ro_compat

namespace incompat {
inline constexpr uint32_t kCompression = 0x0001;
inline constexpr uint32_t kFiletype = 0x0002;
inline constexpr uint32_t kRecover = 0x0004;
inline constexpr uint32_t kJournalDev = 0x0008;
inline constexpr uint32_t kMetaBg = 0x0010;
inline constexpr uint32_t kExtents = 0x0040;
inline constexpr uint32_t k64bit = 0x0080;
inline constexpr uint32_t kMmp = 0x0100;
inline constexpr uint32_t kFlexBg = 0x0200;
inline constexpr uint32_t kEaInode = 0x0400;
inline constexpr uint32_t kDirdata = 0x1000;
inline constexpr uint32_t kCsumSeed = 0x2000;
inline constexpr uint32_t kLargedir = 0x4000;
inline constexpr uint32_t kInlineData = 0x8000;
inline constexpr uint32_t kEncrypt = 0x10000;
inline constexpr uint32_t kCasefold = 0x20000;
}  // namespace incompat

// Names as dumpe2fs prints them ("has_journal", "metadata_csum", ...), in
// bit order; unknown bits print as "FEATURE_C12" / "FEATURE_R20" / "FEATURE_I31".
std::vector<std::string> feature_names(uint32_t compat, uint32_t ro_compat, uint32_t incompat);

// What uext may do with an image carrying these flags.
enum class Access { kReadWrite, kReadOnly };

struct FeatureVerdict {
  Access access = Access::kReadWrite;
  // Why access is limited to read-only (empty when read-write), e.g.
  // "unsupported read-only-compatible feature: FEATURE_R20".
  std::string read_only_reason;
};

// Applies the kernel's rule: an incompat feature uext does not implement
// refuses the open (ENOTSUP, message names the feature); an unknown
// ro_compat feature allows read-only access only.
Result<FeatureVerdict> check_features(uint32_t compat, uint32_t ro_compat, uint32_t incompat);

}  // namespace uext::disk
