// The on-disk inode: 128 bytes (good old rev 0 size) plus i_extra_isize
// bytes of extra fields, in a slot of s_inode_size bytes in the inode table.
#pragma once

#include <array>
#include <cstdint>

#include "disk/bytes.h"
#include "disk/superblock.h"
#include "uext/status.h"

namespace uext::disk {

inline constexpr uint32_t kRootIno = 2;
inline constexpr uint32_t kUserQuotaIno = 3;   // the quota feature's files
inline constexpr uint32_t kGroupQuotaIno = 4;
inline constexpr uint32_t kResizeIno = 7;
inline constexpr uint32_t kJournalIno = 8;
inline constexpr size_t kGoodOldInodeSize = 128;
inline constexpr size_t kInodeBlockBytes = 60;  // i_block: 15 x 4 bytes

// i_flags
namespace inode_flag {
inline constexpr uint32_t kSecrm = 0x00000001;
inline constexpr uint32_t kUnrm = 0x00000002;
inline constexpr uint32_t kCompr = 0x00000004;
inline constexpr uint32_t kSync = 0x00000008;
inline constexpr uint32_t kImmutable = 0x00000010;
inline constexpr uint32_t kAppend = 0x00000020;
inline constexpr uint32_t kNodump = 0x00000040;
inline constexpr uint32_t kNoatime = 0x00000080;
inline constexpr uint32_t kEncrypt = 0x00000800;
inline constexpr uint32_t kIndex = 0x00001000;  // htree directory
inline constexpr uint32_t kImagic = 0x00002000;
inline constexpr uint32_t kJournalData = 0x00004000;
inline constexpr uint32_t kNotail = 0x00008000;
inline constexpr uint32_t kDirsync = 0x00010000;
inline constexpr uint32_t kTopdir = 0x00020000;
inline constexpr uint32_t kHugeFile = 0x00040000;
inline constexpr uint32_t kExtents = 0x00080000;
inline constexpr uint32_t kVerity = 0x00100000;
inline constexpr uint32_t kEaInode = 0x00200000;
inline constexpr uint32_t kInlineData = 0x10000000;
inline constexpr uint32_t kProjinherit = 0x20000000;
inline constexpr uint32_t kCasefold = 0x40000000;
}  // namespace inode_flag

// A timestamp as ext4 stores it: 32 signed seconds plus, in the extra
// field, 2 epoch bits extending the seconds and 30 bits of nanoseconds.
struct Timestamp {
  int64_t sec = 0;
  uint32_t nsec = 0;
  bool operator==(const Timestamp&) const = default;
};

// The range an inode's times can hold: from 1901-12-13 (a signed 32-bit
// second count) to 2038-01-19 without the extra time fields, to 2446-05-10
// with them (two epoch bits more). Times outside are clamped to it, as the
// kernel clamps to its superblock's s_time_min/s_time_max.
inline constexpr int64_t kTimestampMin = INT32_MIN;
inline constexpr int64_t kTimestampMaxNoExtra = INT32_MAX;
inline constexpr int64_t kTimestampMaxExtra = (int64_t{1} << 34) - 1 + INT32_MIN;
// `t` within that range (nanoseconds under a second; none without the
// extra fields, which are the only place they are kept).
Timestamp clamp_timestamp(Timestamp t, bool extra_fields);

struct Inode {
  uint16_t i_mode = 0;
  uint32_t i_uid = 0;   // with l_i_uid_high
  uint32_t i_gid = 0;   // with l_i_gid_high
  uint64_t i_size = 0;  // with i_size_high
  Timestamp i_atime, i_ctime, i_mtime, i_crtime;  // extra parts only if they fit i_extra_isize
  uint32_t i_dtime = 0;
  uint16_t i_links_count = 0;
  // i_blocks_lo + l_i_blocks_high as stored; see blocks_512() for the meaning.
  uint64_t i_blocks = 0;
  uint32_t i_flags = 0;
  uint32_t i_version = 0;  // osd1 (l_i_version), low half
  std::array<uint32_t, 15> i_block{};  // as 15 little-endian words
  uint32_t i_generation = 0;
  uint64_t i_file_acl = 0;  // with l_i_file_acl_high
  uint32_t i_obso_faddr = 0;
  uint16_t i_extra_isize = 0;
  uint32_t i_checksum = 0;  // lo | hi << 16 (hi only if it fits i_extra_isize)
  uint32_t i_version_hi = 0;
  uint32_t i_projid = 0;

  bool has_flag(uint32_t f) const { return (i_flags & f) != 0; }
  // i_block as the raw 60 bytes (extent root, inline symlink target, ...).
  std::array<std::byte, kInodeBlockBytes> i_block_bytes() const;
  // Sets i_block from up to 60 raw bytes (a fast symlink's target), the
  // rest zero.
  void set_i_block_bytes(Bytes bytes);
};

// Decodes the inode slot `raw` (s_inode_size bytes) of inode number `ino`.
// With metadata_csum verifies the checksum (EBADMSG, "inode N: checksum ...").
// Checks i_extra_isize fits the slot. An all-zero, never-used slot decodes
// fine (its mode is 0); callers judge whether the inode is in use.
Result<Inode> decode_inode(const Superblock& sb, uint32_t ino, Bytes raw);

// The fields that say whether an inode is in use, read from its slot
// without decoding or checking the rest (see inode_in_use).
struct InodeUse {
  uint16_t mode = 0;
  uint16_t links = 0;
  uint32_t dtime = 0;
};
InodeUse peek_inode_use(Bytes raw);
// Whether an inode with these fields is in use: it has a mode, and links
// unless it is unlinked but still open (an orphan, `allow_unlinked`, whose
// i_dtime links the orphan list). A freed inode keeps its mode and gets
// no links and a dtime.
inline bool inode_in_use(const InodeUse& u, bool allow_unlinked) {
  return u.mode != 0 && !(u.links == 0 && u.dtime != 0 && !allow_unlinked);
}

// Writes `inode` into `raw` (s_inode_size bytes), leaving unknown bytes,
// and recomputes the checksum with metadata_csum.
void encode_inode(const Superblock& sb, uint32_t ino, const Inode& inode, MutableBytes raw);

// The per-inode checksum seed used by extent blocks, directory blocks and
// the inode itself: crc32c(crc32c(csum_seed, le32 ino), le32 generation).
uint32_t inode_csum_seed(const Superblock& sb, uint32_t ino, uint32_t generation);

// The checksum `raw` should carry (full 32 bits; the caller stores what fits).
uint32_t inode_checksum(const Superblock& sb, uint32_t ino, Bytes raw);

// Space the inode occupies in 512-byte sectors, as stat's st_blocks:
// honours huge_file (i_blocks in filesystem blocks when the inode has the
// HUGE_FILE flag).
uint64_t inode_blocks_512(const Superblock& sb, const Inode& inode);

// Device number of a character/block device inode (old 16-bit encoding in
// i_block[0], new 32-bit one in i_block[1]), as major/minor.
struct DeviceNumber {
  uint32_t major = 0;
  uint32_t minor = 0;
};
DeviceNumber inode_device(const Inode& inode);
// Stores a device number as the kernel does: the old 8:8 encoding in
// i_block[0] when both parts fit, else the new one in i_block[1].
void set_inode_device(Inode& inode, DeviceNumber dev);

// Whether a symlink keeps its target inside i_block (a "fast" symlink).
bool is_fast_symlink(const Superblock& sb, const Inode& inode);

// Where inode `ino` lives: group, and byte offset within that group's inode table.
struct InodeLocation {
  uint32_t group;
  uint64_t table_offset;
};
InodeLocation inode_location(const Superblock& sb, uint32_t ino);

}  // namespace uext::disk
