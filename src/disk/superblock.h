// The ext2/3/4 superblock: 1024 bytes at byte offset 1024 of the device
// (and backup copies at the start of some groups).
//
// Decoded fields keep the kernel's names; fields split into _lo/_hi halves
// on disk are combined here (the _hi half counts only with the 64bit feature).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "disk/bytes.h"
#include "disk/features.h"
#include "uext/status.h"

namespace uext::disk {

inline constexpr uint64_t kSuperblockOffset = 1024;
inline constexpr size_t kSuperblockSize = 1024;
inline constexpr uint16_t kSuperblockMagic = 0xEF53;

// s_state
inline constexpr uint16_t kStateValid = 0x0001;   // cleanly unmounted
inline constexpr uint16_t kStateErrors = 0x0002;  // errors detected
inline constexpr uint16_t kStateOrphans = 0x0004; // orphans being recovered

// s_first_error_errcode / s_last_error_errcode: the errno of an error, in
// the superblock's own numbering (dumpe2fs prints it by name).
uint8_t error_code_of(int err);
// The name of such a code ("EIO", "EFSCORRUPTED", "UNKNOWN"); empty for 0
// and for codes it does not know.
std::string error_code_name(uint8_t code);

// s_flags
inline constexpr uint32_t kFlagSignedHash = 0x0001;
inline constexpr uint32_t kFlagUnsignedHash = 0x0002;
inline constexpr uint32_t kFlagTestFs = 0x0004;

// s_checksum_type
inline constexpr uint8_t kChecksumTypeCrc32c = 1;

struct Superblock {
  uint32_t s_inodes_count = 0;
  uint64_t s_blocks_count = 0;
  uint64_t s_r_blocks_count = 0;
  uint64_t s_free_blocks_count = 0;
  uint32_t s_free_inodes_count = 0;
  uint32_t s_first_data_block = 0;
  uint32_t s_log_block_size = 0;
  uint32_t s_log_cluster_size = 0;
  uint32_t s_blocks_per_group = 0;
  uint32_t s_clusters_per_group = 0;
  uint32_t s_inodes_per_group = 0;
  int64_t s_mtime = 0;  // with s_mtime_hi
  int64_t s_wtime = 0;  // with s_wtime_hi
  uint16_t s_mnt_count = 0;
  int16_t s_max_mnt_count = 0;
  uint16_t s_magic = 0;
  uint16_t s_state = 0;
  uint16_t s_errors = 0;
  uint16_t s_minor_rev_level = 0;
  int64_t s_lastcheck = 0;  // with s_lastcheck_hi
  uint32_t s_checkinterval = 0;
  uint32_t s_creator_os = 0;
  uint32_t s_rev_level = 0;
  uint16_t s_def_resuid = 0;
  uint16_t s_def_resgid = 0;
  // Dynamic revision (s_rev_level >= 1) fields; for revision 0 decode()
  // fills in the implied values (first_ino 11, inode_size 128).
  uint32_t s_first_ino = 0;
  uint16_t s_inode_size = 0;
  uint16_t s_block_group_nr = 0;
  uint32_t s_feature_compat = 0;
  uint32_t s_feature_incompat = 0;
  uint32_t s_feature_ro_compat = 0;
  std::array<uint8_t, 16> s_uuid{};
  std::array<char, 16> s_volume_name{};
  std::array<char, 64> s_last_mounted{};
  uint32_t s_algorithm_usage_bitmap = 0;
  uint8_t s_prealloc_blocks = 0;
  uint8_t s_prealloc_dir_blocks = 0;
  uint16_t s_reserved_gdt_blocks = 0;
  std::array<uint8_t, 16> s_journal_uuid{};
  uint32_t s_journal_inum = 0;
  uint32_t s_journal_dev = 0;
  uint32_t s_last_orphan = 0;
  std::array<uint32_t, 4> s_hash_seed{};
  uint8_t s_def_hash_version = 0;
  uint8_t s_jnl_backup_type = 0;
  uint16_t s_desc_size = 0;
  uint32_t s_default_mount_opts = 0;
  uint32_t s_first_meta_bg = 0;
  int64_t s_mkfs_time = 0;  // with s_mkfs_time_hi
  std::array<uint32_t, 17> s_jnl_blocks{};
  uint16_t s_min_extra_isize = 0;
  uint16_t s_want_extra_isize = 0;
  uint32_t s_flags = 0;
  uint16_t s_raid_stride = 0;
  uint16_t s_mmp_interval = 0;
  uint64_t s_mmp_block = 0;
  uint32_t s_raid_stripe_width = 0;
  uint8_t s_log_groups_per_flex = 0;
  uint8_t s_checksum_type = 0;
  uint64_t s_kbytes_written = 0;
  // What ext4_error() records: how many errors, and where the first and the
  // latest happened (operation name, line, inode, block, error_code_of).
  uint32_t s_error_count = 0;
  int64_t s_first_error_time = 0;
  uint32_t s_first_error_ino = 0;
  uint64_t s_first_error_block = 0;
  std::array<char, 32> s_first_error_func{};
  uint32_t s_first_error_line = 0;
  uint8_t s_first_error_errcode = 0;
  int64_t s_last_error_time = 0;
  uint32_t s_last_error_ino = 0;
  uint64_t s_last_error_block = 0;
  std::array<char, 32> s_last_error_func{};
  uint32_t s_last_error_line = 0;
  uint8_t s_last_error_errcode = 0;
  uint32_t s_usr_quota_inum = 0;
  uint32_t s_grp_quota_inum = 0;
  uint32_t s_overhead_clusters = 0;
  std::array<uint32_t, 2> s_backup_bgs{};
  uint32_t s_lpf_ino = 0;
  uint32_t s_prj_quota_inum = 0;
  uint32_t s_checksum_seed = 0;
  uint16_t s_encoding = 0;
  uint16_t s_encoding_flags = 0;
  uint32_t s_orphan_file_inum = 0;
  uint32_t s_checksum = 0;

  // Derived values.
  bool has_compat(uint32_t f) const { return (s_feature_compat & f) != 0; }
  bool has_ro_compat(uint32_t f) const { return (s_feature_ro_compat & f) != 0; }
  bool has_incompat(uint32_t f) const { return (s_feature_incompat & f) != 0; }
  bool has_metadata_csum() const { return has_ro_compat(ro_compat::kMetadataCsum); }
  bool is_64bit() const { return has_incompat(incompat::k64bit); }
  uint32_t block_size() const { return 1024u << s_log_block_size; }
  uint32_t group_count() const;
  // Group descriptor size in bytes: s_desc_size with 64bit, else 32.
  uint32_t desc_size() const;
  uint32_t inode_size() const { return s_inode_size; }
  // The seed of every metadata checksum but the superblock's own:
  // s_checksum_seed with metadata_csum_seed, else crc32c(~0, s_uuid).
  uint32_t csum_seed() const;
  std::string volume_name() const;  // up to the first NUL
  std::string uuid_string() const;  // "xxxxxxxx-xxxx-..."
};

// Decodes and validates 1024 superblock bytes: magic, the geometry a reader
// relies on (block size 1 KiB..64 KiB, nonzero and consistent per-group
// counts, inode size a power of two between 128 and the block size, desc
// size, group count that fits the block count), and with metadata_csum the
// checksum. Errors are EUCLEAN / EBADMSG with a message naming the field.
// `device_size` (bytes) bounds s_blocks_count; pass 0 to skip that check.
Result<Superblock> decode_superblock(Bytes raw, uint64_t device_size);

// Writes every field of `sb` into `raw` (1024 bytes), leaving bytes uext
// does not know untouched, and recomputes s_checksum when metadata_csum is on.
void encode_superblock(const Superblock& sb, MutableBytes raw);

// crc32c(~0, raw[0..0x3FC)).
uint32_t superblock_checksum(Bytes raw);

}  // namespace uext::disk
