#include "disk/superblock.h"

#include <fmt/format.h>

#include <limits>

#include "disk/checksum.h"

namespace uext::disk {

namespace {

// Byte offsets of the superblock fields (e2fsprogs' struct ext2_super_block).
namespace off {
constexpr size_t kInodesCount = 0x00, kBlocksCountLo = 0x04, kRBlocksCountLo = 0x08,
                 kFreeBlocksCountLo = 0x0C, kFreeInodesCount = 0x10, kFirstDataBlock = 0x14,
                 kLogBlockSize = 0x18, kLogClusterSize = 0x1C, kBlocksPerGroup = 0x20,
                 kClustersPerGroup = 0x24, kInodesPerGroup = 0x28, kMtime = 0x2C, kWtime = 0x30,
                 kMntCount = 0x34, kMaxMntCount = 0x36, kMagic = 0x38, kState = 0x3A,
                 kErrors = 0x3C, kMinorRevLevel = 0x3E, kLastcheck = 0x40, kCheckinterval = 0x44,
                 kCreatorOs = 0x48, kRevLevel = 0x4C, kDefResuid = 0x50, kDefResgid = 0x52,
                 kFirstIno = 0x54, kInodeSize = 0x58, kBlockGroupNr = 0x5A, kFeatureCompat = 0x5C,
                 kFeatureIncompat = 0x60, kFeatureRoCompat = 0x64, kUuid = 0x68,
                 kVolumeName = 0x78, kLastMounted = 0x88, kAlgorithmUsageBitmap = 0xC8,
                 kPreallocBlocks = 0xCC, kPreallocDirBlocks = 0xCD, kReservedGdtBlocks = 0xCE,
                 kJournalUuid = 0xD0, kJournalInum = 0xE0, kJournalDev = 0xE4, kLastOrphan = 0xE8,
                 kHashSeed = 0xEC, kDefHashVersion = 0xFC, kJnlBackupType = 0xFD, kDescSize = 0xFE,
                 kDefaultMountOpts = 0x100, kFirstMetaBg = 0x104, kMkfsTime = 0x108,
                 kJnlBlocks = 0x10C, kBlocksCountHi = 0x150, kRBlocksCountHi = 0x154,
                 kFreeBlocksHi = 0x158, kMinExtraIsize = 0x15C, kWantExtraIsize = 0x15E,
                 kFlags = 0x160, kRaidStride = 0x164, kMmpInterval = 0x166, kMmpBlock = 0x168,
                 kRaidStripeWidth = 0x170, kLogGroupsPerFlex = 0x174, kChecksumType = 0x175,
                 kKbytesWritten = 0x178, kErrorCount = 0x194, kFirstErrorTime = 0x198,
                 kFirstErrorIno = 0x19C, kFirstErrorBlock = 0x1A0, kLastErrorTime = 0x1CC,
                 kLastErrorIno = 0x1D0, kLastErrorBlock = 0x1D8, kFirstErrorFunc = 0x1A8,
                 kFirstErrorLine = 0x1C8, kLastErrorLine = 0x1D4, kLastErrorFunc = 0x1E0,
                 kFirstErrorErrcode = 0x27A, kLastErrorErrcode = 0x27B, kUsrQuotaInum = 0x240,
                 kGrpQuotaInum = 0x244, kOverheadClusters = 0x248, kBackupBgs = 0x24C,
                 kLpfIno = 0x268, kPrjQuotaInum = 0x26C, kChecksumSeed = 0x270, kWtimeHi = 0x274,
                 kMtimeHi = 0x275, kMkfsTimeHi = 0x276, kLastcheckHi = 0x277,
                 kFirstErrorTimeHi = 0x278, kLastErrorTimeHi = 0x279, kEncoding = 0x27C,
                 kEncodingFlags = 0x27E, kOrphanFileInum = 0x280, kChecksum = 0x3FC;
}  // namespace off

constexpr uint32_t kMaxLogBlockSize = 6;     // 64 KiB blocks
constexpr uint32_t kMaxLogClusterSize = 19;  // 512 MiB clusters (e2fsprogs' limit)
constexpr uint32_t kGoodOldFirstIno = 11;
constexpr uint16_t kGoodOldInodeSize = 128;
constexpr uint32_t kMinDescSize64 = 64;
constexpr uint32_t kMaxDescSize = 1024;

// Superblock times: 32 unsigned bits plus an 8-bit high part (the kernel's
// ext4_get_tstamp), so they run until 2446 without sign trouble.
int64_t get_time(Bytes raw, size_t lo, size_t hi) {
  return static_cast<int64_t>(le32(raw, lo)) + (static_cast<int64_t>(le8(raw, hi)) << 32);
}
void put_time(MutableBytes raw, size_t lo, size_t hi, int64_t t) {
  put_le32(raw, lo, static_cast<uint32_t>(t));
  put_le8(raw, hi, static_cast<uint8_t>(static_cast<uint64_t>(t) >> 32));
}

template <size_t N>
void get_array(Bytes raw, size_t at, std::array<uint8_t, N>& out) {
  for (size_t i = 0; i < N; ++i) out[i] = le8(raw, at + i);
}
template <size_t N>
void get_array(Bytes raw, size_t at, std::array<char, N>& out) {
  for (size_t i = 0; i < N; ++i) out[i] = static_cast<char>(le8(raw, at + i));
}
template <size_t N>
void get_words(Bytes raw, size_t at, std::array<uint32_t, N>& out) {
  for (size_t i = 0; i < N; ++i) out[i] = le32(raw, at + 4 * i);
}
template <class T, size_t N>
void put_array(MutableBytes raw, size_t at, const std::array<T, N>& in) {
  for (size_t i = 0; i < N; ++i) put_le8(raw, at + i, static_cast<uint8_t>(in[i]));
}
template <size_t N>
void put_words(MutableBytes raw, size_t at, const std::array<uint32_t, N>& in) {
  for (size_t i = 0; i < N; ++i) put_le32(raw, at + 4 * i, in[i]);
}

Error corrupt(const std::string& what) { return Error(kErrCorrupted, "superblock: " + what); }

bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

Superblock decode_fields(Bytes raw) {
  Superblock sb;
  sb.s_inodes_count = le32(raw, off::kInodesCount);
  sb.s_free_inodes_count = le32(raw, off::kFreeInodesCount);
  sb.s_first_data_block = le32(raw, off::kFirstDataBlock);
  sb.s_log_block_size = le32(raw, off::kLogBlockSize);
  sb.s_log_cluster_size = le32(raw, off::kLogClusterSize);
  sb.s_blocks_per_group = le32(raw, off::kBlocksPerGroup);
  sb.s_clusters_per_group = le32(raw, off::kClustersPerGroup);
  sb.s_inodes_per_group = le32(raw, off::kInodesPerGroup);
  sb.s_mtime = get_time(raw, off::kMtime, off::kMtimeHi);
  sb.s_wtime = get_time(raw, off::kWtime, off::kWtimeHi);
  sb.s_mnt_count = le16(raw, off::kMntCount);
  sb.s_max_mnt_count = static_cast<int16_t>(le16(raw, off::kMaxMntCount));
  sb.s_magic = le16(raw, off::kMagic);
  sb.s_state = le16(raw, off::kState);
  sb.s_errors = le16(raw, off::kErrors);
  sb.s_minor_rev_level = le16(raw, off::kMinorRevLevel);
  sb.s_lastcheck = get_time(raw, off::kLastcheck, off::kLastcheckHi);
  sb.s_checkinterval = le32(raw, off::kCheckinterval);
  sb.s_creator_os = le32(raw, off::kCreatorOs);
  sb.s_rev_level = le32(raw, off::kRevLevel);
  sb.s_def_resuid = le16(raw, off::kDefResuid);
  sb.s_def_resgid = le16(raw, off::kDefResgid);
  if (sb.s_rev_level == 0) {
    // Revision 0 predates these fields; their values are implied.
    sb.s_first_ino = kGoodOldFirstIno;
    sb.s_inode_size = kGoodOldInodeSize;
  } else {
    sb.s_first_ino = le32(raw, off::kFirstIno);
    sb.s_inode_size = le16(raw, off::kInodeSize);
  }
  sb.s_block_group_nr = le16(raw, off::kBlockGroupNr);
  sb.s_feature_compat = le32(raw, off::kFeatureCompat);
  sb.s_feature_incompat = le32(raw, off::kFeatureIncompat);
  sb.s_feature_ro_compat = le32(raw, off::kFeatureRoCompat);
  get_array(raw, off::kUuid, sb.s_uuid);
  get_array(raw, off::kVolumeName, sb.s_volume_name);
  get_array(raw, off::kLastMounted, sb.s_last_mounted);
  sb.s_algorithm_usage_bitmap = le32(raw, off::kAlgorithmUsageBitmap);
  sb.s_prealloc_blocks = le8(raw, off::kPreallocBlocks);
  sb.s_prealloc_dir_blocks = le8(raw, off::kPreallocDirBlocks);
  sb.s_reserved_gdt_blocks = le16(raw, off::kReservedGdtBlocks);
  get_array(raw, off::kJournalUuid, sb.s_journal_uuid);
  sb.s_journal_inum = le32(raw, off::kJournalInum);
  sb.s_journal_dev = le32(raw, off::kJournalDev);
  sb.s_last_orphan = le32(raw, off::kLastOrphan);
  get_words(raw, off::kHashSeed, sb.s_hash_seed);
  sb.s_def_hash_version = le8(raw, off::kDefHashVersion);
  sb.s_jnl_backup_type = le8(raw, off::kJnlBackupType);
  sb.s_desc_size = le16(raw, off::kDescSize);
  sb.s_default_mount_opts = le32(raw, off::kDefaultMountOpts);
  sb.s_first_meta_bg = le32(raw, off::kFirstMetaBg);
  sb.s_mkfs_time = get_time(raw, off::kMkfsTime, off::kMkfsTimeHi);
  get_words(raw, off::kJnlBlocks, sb.s_jnl_blocks);

  // The high halves of the block counts mean something only with 64bit;
  // without it they are left alone (and encode leaves them alone too).
  sb.s_blocks_count = le32(raw, off::kBlocksCountLo);
  sb.s_r_blocks_count = le32(raw, off::kRBlocksCountLo);
  sb.s_free_blocks_count = le32(raw, off::kFreeBlocksCountLo);
  if (sb.is_64bit()) {
    sb.s_blocks_count |= static_cast<uint64_t>(le32(raw, off::kBlocksCountHi)) << 32;
    sb.s_r_blocks_count |= static_cast<uint64_t>(le32(raw, off::kRBlocksCountHi)) << 32;
    sb.s_free_blocks_count |= static_cast<uint64_t>(le32(raw, off::kFreeBlocksHi)) << 32;
  }

  sb.s_min_extra_isize = le16(raw, off::kMinExtraIsize);
  sb.s_want_extra_isize = le16(raw, off::kWantExtraIsize);
  sb.s_flags = le32(raw, off::kFlags);
  sb.s_raid_stride = le16(raw, off::kRaidStride);
  sb.s_mmp_interval = le16(raw, off::kMmpInterval);
  sb.s_mmp_block = le64(raw, off::kMmpBlock);
  sb.s_raid_stripe_width = le32(raw, off::kRaidStripeWidth);
  sb.s_log_groups_per_flex = le8(raw, off::kLogGroupsPerFlex);
  sb.s_checksum_type = le8(raw, off::kChecksumType);
  sb.s_kbytes_written = le64(raw, off::kKbytesWritten);
  sb.s_error_count = le32(raw, off::kErrorCount);
  sb.s_first_error_time = get_time(raw, off::kFirstErrorTime, off::kFirstErrorTimeHi);
  sb.s_first_error_ino = le32(raw, off::kFirstErrorIno);
  sb.s_first_error_block = le64(raw, off::kFirstErrorBlock);
  sb.s_last_error_time = get_time(raw, off::kLastErrorTime, off::kLastErrorTimeHi);
  sb.s_last_error_ino = le32(raw, off::kLastErrorIno);
  sb.s_last_error_block = le64(raw, off::kLastErrorBlock);
  get_array(raw, off::kFirstErrorFunc, sb.s_first_error_func);
  sb.s_first_error_line = le32(raw, off::kFirstErrorLine);
  sb.s_first_error_errcode = le8(raw, off::kFirstErrorErrcode);
  get_array(raw, off::kLastErrorFunc, sb.s_last_error_func);
  sb.s_last_error_line = le32(raw, off::kLastErrorLine);
  sb.s_last_error_errcode = le8(raw, off::kLastErrorErrcode);
  sb.s_usr_quota_inum = le32(raw, off::kUsrQuotaInum);
  sb.s_grp_quota_inum = le32(raw, off::kGrpQuotaInum);
  sb.s_overhead_clusters = le32(raw, off::kOverheadClusters);
  get_words(raw, off::kBackupBgs, sb.s_backup_bgs);
  sb.s_lpf_ino = le32(raw, off::kLpfIno);
  sb.s_prj_quota_inum = le32(raw, off::kPrjQuotaInum);
  sb.s_checksum_seed = le32(raw, off::kChecksumSeed);
  sb.s_encoding = le16(raw, off::kEncoding);
  sb.s_encoding_flags = le16(raw, off::kEncodingFlags);
  sb.s_orphan_file_inum = le32(raw, off::kOrphanFileInum);
  sb.s_checksum = le32(raw, off::kChecksum);
  return sb;
}

// Block size, cluster size and the per-group counts: everything a bitmap
// or a division downstream depends on.
Status check_group_geometry(const Superblock& sb) {
  if (sb.s_log_block_size > kMaxLogBlockSize) {
    return corrupt(fmt::format("s_log_block_size {} is out of range (block size must be 1 KiB..64 KiB)",
                               sb.s_log_block_size));
  }
  const uint64_t block_size = sb.block_size();
  const uint64_t bitmap_bits = 8 * block_size;
  uint32_t cluster_shift = 0;
  if (sb.has_ro_compat(ro_compat::kBigalloc)) {
    if (sb.s_log_cluster_size < sb.s_log_block_size || sb.s_log_cluster_size > kMaxLogClusterSize) {
      return corrupt(fmt::format("s_log_cluster_size {} is out of range for s_log_block_size {}",
                                 sb.s_log_cluster_size, sb.s_log_block_size));
    }
    cluster_shift = sb.s_log_cluster_size - sb.s_log_block_size;
  } else if (sb.s_log_cluster_size != sb.s_log_block_size) {
    return corrupt(fmt::format("s_log_cluster_size {} differs from s_log_block_size {} without bigalloc",
                               sb.s_log_cluster_size, sb.s_log_block_size));
  }
  if (sb.s_clusters_per_group == 0 || sb.s_clusters_per_group % 8 != 0 ||
      sb.s_clusters_per_group > bitmap_bits) {
    return corrupt(fmt::format("s_clusters_per_group {} is invalid (must be a nonzero multiple of 8, at most {})",
                               sb.s_clusters_per_group, bitmap_bits));
  }
  if (sb.s_blocks_per_group == 0 ||
      static_cast<uint64_t>(sb.s_clusters_per_group) << cluster_shift != sb.s_blocks_per_group) {
    return corrupt(fmt::format("s_blocks_per_group {} is invalid (s_clusters_per_group {}, {} blocks per cluster)",
                               sb.s_blocks_per_group, sb.s_clusters_per_group, 1u << cluster_shift));
  }
  if (sb.s_inode_size < kGoodOldInodeSize || !is_power_of_two(sb.s_inode_size) ||
      sb.s_inode_size > block_size) {
    return corrupt(fmt::format("s_inode_size {} is invalid (must be a power of two from 128 to the block size {})",
                               sb.s_inode_size, block_size));
  }
  const uint64_t inodes_per_block = block_size / sb.s_inode_size;
  if (sb.s_inodes_per_group < inodes_per_block || sb.s_inodes_per_group > bitmap_bits) {
    return corrupt(fmt::format("s_inodes_per_group {} is out of range ({}..{})", sb.s_inodes_per_group,
                               inodes_per_block, bitmap_bits));
  }
  return {};
}

// Block counts, group count, inode counts.
Status check_counts(const Superblock& sb, uint64_t device_size) {
  const uint64_t block_size = sb.block_size();
  // Byte offsets of any block must fit in 64 bits.
  if (sb.s_blocks_count > std::numeric_limits<uint64_t>::max() / block_size) {
    return corrupt(fmt::format("s_blocks_count {} is too large for {}-byte blocks", sb.s_blocks_count, block_size));
  }
  if (device_size != 0 && sb.s_blocks_count > device_size / block_size) {
    return corrupt(fmt::format("s_blocks_count {} exceeds the device ({} bytes, {} blocks)", sb.s_blocks_count,
                               device_size, device_size / block_size));
  }
  // e2fsck's rule: block 1 with 1 KiB blocks (and no bigalloc), else block 0.
  const uint32_t want_first =
      (sb.s_log_block_size == 0 && sb.s_log_cluster_size == sb.s_log_block_size) ? 1 : 0;
  if (sb.s_first_data_block != want_first) {
    return corrupt(fmt::format("s_first_data_block {} should be {}", sb.s_first_data_block, want_first));
  }
  if (sb.s_blocks_count <= sb.s_first_data_block) {
    return corrupt(fmt::format("s_blocks_count {} leaves no room after s_first_data_block {}", sb.s_blocks_count,
                               sb.s_first_data_block));
  }
  const uint64_t data_blocks = sb.s_blocks_count - sb.s_first_data_block;
  const uint64_t groups =
      data_blocks / sb.s_blocks_per_group + (data_blocks % sb.s_blocks_per_group != 0 ? 1 : 0);
  // s_inodes_count is 32 bits and every group has inodes, so this also
  // bounds the group count (and keeps the product below from overflowing).
  if (groups > std::numeric_limits<uint32_t>::max() ||
      groups * sb.s_inodes_per_group != sb.s_inodes_count) {
    return corrupt(fmt::format("s_inodes_count {} is not s_inodes_per_group {} x {} groups", sb.s_inodes_count,
                               sb.s_inodes_per_group, groups));
  }
  if (sb.s_r_blocks_count > sb.s_blocks_count) {
    return corrupt(fmt::format("s_r_blocks_count {} exceeds s_blocks_count {}", sb.s_r_blocks_count,
                               sb.s_blocks_count));
  }
  if (sb.s_free_blocks_count > sb.s_blocks_count) {
    return corrupt(fmt::format("s_free_blocks_count {} exceeds s_blocks_count {}", sb.s_free_blocks_count,
                               sb.s_blocks_count));
  }
  if (sb.s_free_inodes_count > sb.s_inodes_count) {
    return corrupt(fmt::format("s_free_inodes_count {} exceeds s_inodes_count {}", sb.s_free_inodes_count,
                               sb.s_inodes_count));
  }
  if (sb.s_first_ino < kGoodOldFirstIno || sb.s_first_ino > sb.s_inodes_count) {
    return corrupt(fmt::format("s_first_ino {} is out of range (11..{})", sb.s_first_ino, sb.s_inodes_count));
  }
  return {};
}

// Descriptor table shape and the other layout fields code indexes with.
Status check_layout(const Superblock& sb) {
  const uint32_t block_size = sb.block_size();
  if (sb.is_64bit() && (sb.s_desc_size < kMinDescSize64 || sb.s_desc_size > kMaxDescSize ||
                        !is_power_of_two(sb.s_desc_size))) {
    return corrupt(fmt::format("s_desc_size {} is invalid (64bit needs a power of two from 64 to 1024)",
                               sb.s_desc_size));
  }
  const uint64_t descs_per_block = block_size / sb.desc_size();
  const uint64_t desc_blocks = (sb.group_count() + descs_per_block - 1) / descs_per_block;
  if (sb.has_incompat(incompat::kMetaBg) && sb.s_first_meta_bg > desc_blocks) {
    return corrupt(fmt::format("s_first_meta_bg {} exceeds the {} group descriptor blocks", sb.s_first_meta_bg,
                               desc_blocks));
  }
  if (sb.s_reserved_gdt_blocks > block_size / 4) {
    return corrupt(fmt::format("s_reserved_gdt_blocks {} exceeds {}", sb.s_reserved_gdt_blocks, block_size / 4));
  }
  if (sb.s_log_groups_per_flex > 31) {
    return corrupt(fmt::format("s_log_groups_per_flex {} is out of range (at most 31)", sb.s_log_groups_per_flex));
  }
  const uint32_t extra_room = sb.s_inode_size - kGoodOldInodeSize;
  if (sb.s_min_extra_isize > extra_room || sb.s_want_extra_isize > extra_room) {
    return corrupt(fmt::format("s_min_extra_isize {} / s_want_extra_isize {} exceed the {} bytes an inode of {} has",
                               sb.s_min_extra_isize, sb.s_want_extra_isize, extra_room, sb.s_inode_size));
  }
  return {};
}

// The superblock's numbering of errnos: 1 means "unknown", then these in
// turn from 2.
struct NumberedErrno {
  int err;
  const char* name;
};
constexpr NumberedErrno kNumberedErrnos[] = {
    {EIO, "EIO"},         {ENOMEM, "ENOMEM"},       {kErrBadChecksum, "EFSBADCRC"}, {kErrCorrupted, "EFSCORRUPTED"},
    {ENOSPC, "ENOSPC"},   {ENOKEY, "ENOKEY"},       {EROFS, "EROFS"},               {EFBIG, "EFBIG"},
    {EEXIST, "EEXIST"},   {ERANGE, "ERANGE"},       {EOVERFLOW, "EOVERFLOW"},       {EBUSY, "EBUSY"},
    {ENOTDIR, "ENOTDIR"}, {ENOTEMPTY, "ENOTEMPTY"}, {ESHUTDOWN, "ESHUTDOWN"},       {EFAULT, "EFAULT"},
};
}  // namespace

uint8_t error_code_of(int err) {
  for (size_t i = 0; i < std::size(kNumberedErrnos); ++i) {
    if (kNumberedErrnos[i].err == err) return static_cast<uint8_t>(i + 2);
  }
  return 1;
}

std::string error_code_name(uint8_t code) {
  if (code == 1) return "UNKNOWN";
  if (code < 2 || code - 2u >= std::size(kNumberedErrnos)) return {};
  return kNumberedErrnos[code - 2].name;
}

uint32_t Superblock::group_count() const {
  if (s_blocks_per_group == 0 || s_blocks_count <= s_first_data_block) return 0;
  const uint64_t data_blocks = s_blocks_count - s_first_data_block;
  const uint64_t groups = data_blocks / s_blocks_per_group + (data_blocks % s_blocks_per_group != 0 ? 1 : 0);
  // decode_superblock guarantees groups * inodes_per_group fits 32 bits.
  return groups > std::numeric_limits<uint32_t>::max() ? std::numeric_limits<uint32_t>::max()
                                                      : static_cast<uint32_t>(groups);
}

uint32_t Superblock::desc_size() const { return is_64bit() ? s_desc_size : 32; }

uint32_t Superblock::csum_seed() const {
  if (has_incompat(incompat::kCsumSeed)) return s_checksum_seed;
  return crc32c(~0u, as_bytes(s_uuid.data(), s_uuid.size()));
}

std::string Superblock::volume_name() const {
  size_t n = 0;
  while (n < s_volume_name.size() && s_volume_name[n] != '\0') ++n;
  return std::string(s_volume_name.data(), n);
}

std::string Superblock::uuid_string() const {
  std::string s;
  for (size_t i = 0; i < s_uuid.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += fmt::format("{:02x}", s_uuid[i]);
  }
  return s;
}

uint32_t superblock_checksum(Bytes raw) { return crc32c(~0u, raw.first(off::kChecksum)); }

Result<Superblock> decode_superblock(Bytes raw, uint64_t device_size) {
  if (raw.size() < kSuperblockSize) {
    return corrupt(fmt::format("need {} bytes, got {}", kSuperblockSize, raw.size()));
  }
  raw = raw.first(kSuperblockSize);
  Superblock sb = decode_fields(raw);
  if (sb.s_magic != kSuperblockMagic) {
    return corrupt(fmt::format("bad magic 0x{:04x} (expected 0x{:04x})", sb.s_magic, kSuperblockMagic));
  }
  if (sb.s_rev_level > 1) {
    return corrupt(fmt::format("s_rev_level {} is newer than the dynamic revision 1", sb.s_rev_level));
  }
  // Check the checksum first so that a damaged block reports as such
  // rather than as whichever field the damage happened to hit.
  if (sb.has_metadata_csum()) {
    if (sb.s_checksum_type != kChecksumTypeCrc32c) {
      return corrupt(fmt::format("s_checksum_type {} is unknown (only crc32c, 1, exists)", sb.s_checksum_type));
    }
    const uint32_t want = superblock_checksum(raw);
    if (sb.s_checksum != want) {
      return Error(kErrBadChecksum,
                   fmt::format("superblock: checksum 0x{:08x} does not match contents (0x{:08x})", sb.s_checksum,
                               want));
    }
  }
  UEXT_TRY(check_group_geometry(sb));
  UEXT_TRY(check_counts(sb, device_size));
  UEXT_TRY(check_layout(sb));
  return sb;
}

void encode_superblock(const Superblock& sb, MutableBytes raw) {
  put_le32(raw, off::kInodesCount, sb.s_inodes_count);
  put_le32(raw, off::kBlocksCountLo, static_cast<uint32_t>(sb.s_blocks_count));
  put_le32(raw, off::kRBlocksCountLo, static_cast<uint32_t>(sb.s_r_blocks_count));
  put_le32(raw, off::kFreeBlocksCountLo, static_cast<uint32_t>(sb.s_free_blocks_count));
  if (sb.is_64bit()) {
    put_le32(raw, off::kBlocksCountHi, static_cast<uint32_t>(sb.s_blocks_count >> 32));
    put_le32(raw, off::kRBlocksCountHi, static_cast<uint32_t>(sb.s_r_blocks_count >> 32));
    put_le32(raw, off::kFreeBlocksHi, static_cast<uint32_t>(sb.s_free_blocks_count >> 32));
  }
  put_le32(raw, off::kFreeInodesCount, sb.s_free_inodes_count);
  put_le32(raw, off::kFirstDataBlock, sb.s_first_data_block);
  put_le32(raw, off::kLogBlockSize, sb.s_log_block_size);
  put_le32(raw, off::kLogClusterSize, sb.s_log_cluster_size);
  put_le32(raw, off::kBlocksPerGroup, sb.s_blocks_per_group);
  put_le32(raw, off::kClustersPerGroup, sb.s_clusters_per_group);
  put_le32(raw, off::kInodesPerGroup, sb.s_inodes_per_group);
  put_time(raw, off::kMtime, off::kMtimeHi, sb.s_mtime);
  put_time(raw, off::kWtime, off::kWtimeHi, sb.s_wtime);
  put_le16(raw, off::kMntCount, sb.s_mnt_count);
  put_le16(raw, off::kMaxMntCount, static_cast<uint16_t>(sb.s_max_mnt_count));
  put_le16(raw, off::kMagic, sb.s_magic);
  put_le16(raw, off::kState, sb.s_state);
  put_le16(raw, off::kErrors, sb.s_errors);
  put_le16(raw, off::kMinorRevLevel, sb.s_minor_rev_level);
  put_time(raw, off::kLastcheck, off::kLastcheckHi, sb.s_lastcheck);
  put_le32(raw, off::kCheckinterval, sb.s_checkinterval);
  put_le32(raw, off::kCreatorOs, sb.s_creator_os);
  put_le32(raw, off::kRevLevel, sb.s_rev_level);
  put_le16(raw, off::kDefResuid, sb.s_def_resuid);
  put_le16(raw, off::kDefResgid, sb.s_def_resgid);
  // Revision 0 has no place for these; decode only implied their values.
  if (sb.s_rev_level != 0) {
    put_le32(raw, off::kFirstIno, sb.s_first_ino);
    put_le16(raw, off::kInodeSize, sb.s_inode_size);
  }
  put_le16(raw, off::kBlockGroupNr, sb.s_block_group_nr);
  put_le32(raw, off::kFeatureCompat, sb.s_feature_compat);
  put_le32(raw, off::kFeatureIncompat, sb.s_feature_incompat);
  put_le32(raw, off::kFeatureRoCompat, sb.s_feature_ro_compat);
  put_array(raw, off::kUuid, sb.s_uuid);
  put_array(raw, off::kVolumeName, sb.s_volume_name);
  put_array(raw, off::kLastMounted, sb.s_last_mounted);
  put_le32(raw, off::kAlgorithmUsageBitmap, sb.s_algorithm_usage_bitmap);
  put_le8(raw, off::kPreallocBlocks, sb.s_prealloc_blocks);
  put_le8(raw, off::kPreallocDirBlocks, sb.s_prealloc_dir_blocks);
  put_le16(raw, off::kReservedGdtBlocks, sb.s_reserved_gdt_blocks);
  put_array(raw, off::kJournalUuid, sb.s_journal_uuid);
  put_le32(raw, off::kJournalInum, sb.s_journal_inum);
  put_le32(raw, off::kJournalDev, sb.s_journal_dev);
  put_le32(raw, off::kLastOrphan, sb.s_last_orphan);
  put_words(raw, off::kHashSeed, sb.s_hash_seed);
  put_le8(raw, off::kDefHashVersion, sb.s_def_hash_version);
  put_le8(raw, off::kJnlBackupType, sb.s_jnl_backup_type);
  put_le16(raw, off::kDescSize, sb.s_desc_size);
  put_le32(raw, off::kDefaultMountOpts, sb.s_default_mount_opts);
  put_le32(raw, off::kFirstMetaBg, sb.s_first_meta_bg);
  put_time(raw, off::kMkfsTime, off::kMkfsTimeHi, sb.s_mkfs_time);
  put_words(raw, off::kJnlBlocks, sb.s_jnl_blocks);
  put_le16(raw, off::kMinExtraIsize, sb.s_min_extra_isize);
  put_le16(raw, off::kWantExtraIsize, sb.s_want_extra_isize);
  put_le32(raw, off::kFlags, sb.s_flags);
  put_le16(raw, off::kRaidStride, sb.s_raid_stride);
  put_le16(raw, off::kMmpInterval, sb.s_mmp_interval);
  put_le64(raw, off::kMmpBlock, sb.s_mmp_block);
  put_le32(raw, off::kRaidStripeWidth, sb.s_raid_stripe_width);
  put_le8(raw, off::kLogGroupsPerFlex, sb.s_log_groups_per_flex);
  put_le8(raw, off::kChecksumType, sb.s_checksum_type);
  put_le64(raw, off::kKbytesWritten, sb.s_kbytes_written);
  put_le32(raw, off::kErrorCount, sb.s_error_count);
  put_time(raw, off::kFirstErrorTime, off::kFirstErrorTimeHi, sb.s_first_error_time);
  put_le32(raw, off::kFirstErrorIno, sb.s_first_error_ino);
  put_le64(raw, off::kFirstErrorBlock, sb.s_first_error_block);
  put_time(raw, off::kLastErrorTime, off::kLastErrorTimeHi, sb.s_last_error_time);
  put_le32(raw, off::kLastErrorIno, sb.s_last_error_ino);
  put_le64(raw, off::kLastErrorBlock, sb.s_last_error_block);
  put_array(raw, off::kFirstErrorFunc, sb.s_first_error_func);
  put_le32(raw, off::kFirstErrorLine, sb.s_first_error_line);
  put_le8(raw, off::kFirstErrorErrcode, sb.s_first_error_errcode);
  put_array(raw, off::kLastErrorFunc, sb.s_last_error_func);
  put_le32(raw, off::kLastErrorLine, sb.s_last_error_line);
  put_le8(raw, off::kLastErrorErrcode, sb.s_last_error_errcode);
  put_le32(raw, off::kUsrQuotaInum, sb.s_usr_quota_inum);
  put_le32(raw, off::kGrpQuotaInum, sb.s_grp_quota_inum);
  put_le32(raw, off::kOverheadClusters, sb.s_overhead_clusters);
  put_words(raw, off::kBackupBgs, sb.s_backup_bgs);
  put_le32(raw, off::kLpfIno, sb.s_lpf_ino);
  put_le32(raw, off::kPrjQuotaInum, sb.s_prj_quota_inum);
  put_le32(raw, off::kChecksumSeed, sb.s_checksum_seed);
  put_le16(raw, off::kEncoding, sb.s_encoding);
  put_le16(raw, off::kEncodingFlags, sb.s_encoding_flags);
  put_le32(raw, off::kOrphanFileInum, sb.s_orphan_file_inum);
  put_le32(raw, off::kChecksum,
           sb.has_metadata_csum() ? superblock_checksum(Bytes(raw.data(), kSuperblockSize)) : sb.s_checksum);
}

}  // namespace uext::disk
