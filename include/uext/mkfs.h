// Creating ext2/ext3/ext4 filesystems, as mke2fs 1.47 does.
//
//   uext::MkfsOptions opts;            // ext4 with mke2fs's defaults
//   opts.label = "data";
//   auto dev = uext::open_image_file("disk.img", {.read_only = false});
//   auto st = uext::make_filesystem(**dev, opts);
//
// The defaults are those of Debian 12's mke2fs 1.47.0 and its
// /etc/mke2fs.conf, hard-coded: base features sparse_super, large_file,
// filetype, resize_inode, dir_index, ext_attr; ext3 adds has_journal; ext4
// adds has_journal, extent, huge_file, flex_bg, metadata_csum, 64bit,
// dir_nlink, extra_isize. The size class picks block size and inode ratio
// (floppy < 3 MiB: 1024/8192, small < 512 MiB: 1024/4096, default 4096/16384,
// big >= 4 TiB: 32768, huge >= 16 TiB: 65536). The layout (flex_bg packing,
// reserved GDT blocks, backups, where the root directory, lost+found, the
// resize inode and the journal land) follows libext2fs's allocator, so an
// image equals mke2fs's made with the same UUID, hash seed and time, except
// s_kbytes_written (each counts its own writes).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "uext/block_device.h"
#include "uext/status.h"

namespace uext {

enum class FsType { kExt2, kExt3, kExt4 };

inline constexpr uint32_t kQuotaUser = 1, kQuotaGroup = 2, kQuotaProject = 4;

struct MkfsOptions {
  FsType type = FsType::kExt4;
  uint32_t block_size = 0;       // 0: by size class (1024 below 512 MiB, else 4096)
  uint32_t inode_size = 0;       // 0: 256
  uint32_t bytes_per_inode = 0;  // inode ratio; 0: by size class
  uint32_t inode_count = 0;      // 0: from the inode ratio
  double reserved_percent = 5.0;
  // Feature edits applied after the type's defaults, as mke2fs -O:
  // "^metadata_csum,64bit", "meta_bg,^resize_inode", "none" clears all.
  std::string features;
  std::string label;  // at most 16 bytes
  // Filesystem UUID; random (getrandom) when absent.
  std::optional<std::array<uint8_t, 16>> uuid;
  // Directory hash seed; random when absent.
  std::optional<std::array<uint8_t, 16>> hash_seed;
  // Journal size in MiB as mke2fs -J size=; 0: by filesystem size
  // (ext2fs_default_journal_size). Asking for one on ext2 adds has_journal.
  uint32_t journal_size_mib = 0;
  // Seconds since the epoch for every timestamp; absent: now.
  std::optional<int64_t> creation_time;
  uint32_t root_uid = 0;
  uint32_t root_gid = 0;
  // Which quota files the quota feature gets, as mke2fs -E quotatype=
  // (kQuotaUser | kQuotaGroup | kQuotaProject); 0: user and group, and
  // project with the project feature. Asking for project quota turns the
  // project feature on.
  uint32_t quota_types = 0;
  // mke2fs -T: the usage type whose block size and inode ratio apply in
  // place of the size class's ("small", "floppy", "big", "huge", "news",
  // "largefile", "largefile4"); empty: by size.
  std::string usage_type;
  // mke2fs -e: what the kernel does on an error (s_errors): 1 continue
  // (mke2fs's default), 2 remount read-only, 3 panic.
  uint16_t errors_behavior = 1;
  // The device already reads as zeros (a freshly created sparse file):
  // skip zeroing inode tables, the journal and reserved GDT backups.
  bool assume_zeroed = false;
  // Filesystem size in bytes; 0: the whole device.
  uint64_t size_bytes = 0;
};

// Parses "ext2" / "ext3" / "ext4".
Result<FsType> parse_fs_type(const std::string& name);
// Parses a UUID "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".
Result<std::array<uint8_t, 16>> parse_uuid(const std::string& text);

// Where one group's metadata lies and what its descriptor says.
struct MkfsGroup {
  uint64_t first_block = 0;
  uint64_t last_block = 0;
  bool has_super = false;         // primary or backup superblock at first_block
  uint64_t gdt_block = 0;         // first descriptor block (0: none)
  uint32_t gdt_blocks = 0;        // descriptor blocks there (with meta_bg: 1)
  uint32_t reserved_gdt_blocks = 0;
  uint64_t block_bitmap = 0;
  uint64_t inode_bitmap = 0;
  uint64_t inode_table = 0;
  uint32_t free_blocks = 0;
  uint32_t free_inodes = 0;
  uint32_t used_dirs = 0;
  uint16_t flags = 0;  // kBgInodeUninit | kBgBlockUninit | kBgInodeZeroed
  uint32_t itable_unused = 0;
};

// The geometry mkfs chose and every group's layout: what make_filesystem
// writes, computed without touching a device.
struct MkfsLayout {
  uint32_t block_size = 0;
  uint64_t blocks_count = 0;
  uint64_t reserved_blocks = 0;
  uint64_t free_blocks = 0;
  uint32_t first_data_block = 0;
  uint32_t blocks_per_group = 0;
  uint32_t group_count = 0;
  uint32_t inodes_count = 0;
  uint32_t free_inodes = 0;
  uint32_t inodes_per_group = 0;
  uint32_t inode_size = 0;
  uint32_t inode_blocks_per_group = 0;
  uint32_t desc_size = 0;
  uint32_t desc_blocks = 0;
  uint32_t reserved_gdt_blocks = 0;
  uint32_t feature_compat = 0, feature_ro_compat = 0, feature_incompat = 0;
  std::vector<std::string> features;  // dumpe2fs names
  uint32_t log_groups_per_flex = 0;
  uint32_t journal_blocks = 0;  // 0: no journal
  uint64_t journal_first_block = 0;
  uint64_t overhead_clusters = 0;
  uint64_t root_dir_block = 0;
  std::vector<uint64_t> lost_found_blocks;
  std::vector<MkfsGroup> groups;
};

// Checks the options that do not depend on the device: block and inode
// sizes, reserved percent, label length, inode ratio, feature names and
// their combinations. EINVAL with a message naming the bad value.
Status validate_mkfs_options(const MkfsOptions& options);

// Validates the options against a device of `device_bytes` and computes the
// layout. EINVAL with a message for impossible requests (too small, bad
// block or inode size, too many inodes, unknown feature...).
Result<MkfsLayout> compute_mkfs_layout(uint64_t device_bytes, const MkfsOptions& options);

// Writes a new filesystem over `device` (everything mkfs owns is
// rewritten; data blocks are left alone), then flushes.
Status make_filesystem(BlockDevice& device, const MkfsOptions& options);

}  // namespace uext
