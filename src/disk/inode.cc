#include "disk/inode.h"

#include <fmt/format.h>

#include <algorithm>

#include "disk/checksum.h"

namespace uext::disk {

Timestamp clamp_timestamp(Timestamp t, bool extra_fields) {
  const int64_t max = extra_fields ? kTimestampMaxExtra : kTimestampMaxNoExtra;
  if (t.sec < kTimestampMin) t = Timestamp{kTimestampMin, 0};
  if (t.sec > max) t = Timestamp{max, 999999999};
  if (!extra_fields) t.nsec = 0;
  if (t.nsec > 999999999) t.nsec = 999999999;
  return t;
}

namespace {

// Byte offsets (e2fsprogs' struct ext2_inode_large, Linux osd fields).
namespace off {
constexpr size_t kMode = 0x00, kUid = 0x02, kSizeLo = 0x04, kAtime = 0x08, kCtime = 0x0C,
                 kMtime = 0x10, kDtime = 0x14, kGid = 0x18, kLinksCount = 0x1A, kBlocksLo = 0x1C,
                 kFlags = 0x20, kVersion = 0x24, kBlock = 0x28, kGeneration = 0x64,
                 kFileAclLo = 0x68, kSizeHigh = 0x6C, kFaddr = 0x70, kBlocksHigh = 0x74,
                 kFileAclHigh = 0x76, kUidHigh = 0x78, kGidHigh = 0x7A, kChecksumLo = 0x7C,
                 kExtraIsize = 0x80, kChecksumHi = 0x82, kCtimeExtra = 0x84, kMtimeExtra = 0x88,
                 kAtimeExtra = 0x8C, kCrtime = 0x90, kCrtimeExtra = 0x94, kVersionHi = 0x98,
                 kProjid = 0x9C;
}  // namespace off

constexpr uint32_t kEpochMask = 3;
constexpr uint16_t kModeTypeMask = 0xF000;
constexpr uint16_t kModeSymlink = 0xA000;

// Whether the 4-byte (or 2-byte) field at `offset` lies inside the
// 128 + extra_isize bytes the inode declares.
bool fits(size_t end_of_inode, size_t offset, size_t width) { return offset + width <= end_of_inode; }

// 128 + i_extra_isize, clamped to the slot (0 extra bytes in 128-byte slots).
size_t declared_end(const Superblock& sb, uint16_t extra_isize) {
  if (sb.inode_size() <= kGoodOldInodeSize) return kGoodOldInodeSize;
  return std::min<size_t>(kGoodOldInodeSize + extra_isize, sb.inode_size());
}

bool checksum_has_hi(const Superblock& sb, uint16_t extra_isize) {
  return fits(declared_end(sb, extra_isize), off::kChecksumHi, 2);
}

Timestamp get_time(Bytes raw, size_t end, size_t base, size_t extra) {
  Timestamp t;
  t.sec = static_cast<int32_t>(le32(raw, base));
  if (fits(end, extra, 4)) {
    const uint32_t e = le32(raw, extra);
    t.sec += static_cast<int64_t>(e & kEpochMask) << 32;
    t.nsec = e >> 2;
  }
  return t;
}

void put_time(MutableBytes raw, size_t end, size_t base, size_t extra, const Timestamp& time) {
  // What the fields cannot hold never reaches them (callers clamp first;
  // this keeps the arithmetic below defined whatever they pass).
  const Timestamp t = clamp_timestamp(time, /*extra_fields=*/true);
  put_le32(raw, base, static_cast<uint32_t>(t.sec));
  if (fits(end, extra, 4)) {
    // The epoch bits carry what the signed 32-bit field cannot.
    const int64_t overflow = t.sec - static_cast<int32_t>(static_cast<uint32_t>(t.sec));
    const uint32_t epoch = static_cast<uint32_t>(overflow >> 32) & kEpochMask;
    put_le32(raw, extra, epoch | (t.nsec << 2));
  }
}

bool base_is_zero(Bytes raw) {
  return std::all_of(raw.begin(), raw.begin() + kGoodOldInodeSize, [](std::byte b) { return b == std::byte{0}; });
}

}  // namespace

std::array<std::byte, kInodeBlockBytes> Inode::i_block_bytes() const {
  std::array<std::byte, kInodeBlockBytes> out{};
  for (size_t i = 0; i < i_block.size(); ++i) put_le32(out, 4 * i, i_block[i]);
  return out;
}

void Inode::set_i_block_bytes(Bytes bytes) {
  std::array<std::byte, kInodeBlockBytes> raw{};
  std::copy_n(bytes.begin(), std::min(bytes.size(), raw.size()), raw.begin());
  for (size_t i = 0; i < i_block.size(); ++i) i_block[i] = le32(raw, 4 * i);
}

uint32_t inode_csum_seed(const Superblock& sb, uint32_t ino, uint32_t generation) {
  return crc32c_le32(crc32c_le32(sb.csum_seed(), ino), generation);
}

uint32_t inode_checksum(const Superblock& sb, uint32_t ino, Bytes raw) {
  const size_t size = sb.inode_size();
  const std::byte zero[2] = {};
  const uint16_t extra_isize = size > kGoodOldInodeSize ? le16(raw, off::kExtraIsize) : 0;
  uint32_t crc = inode_csum_seed(sb, ino, le32(raw, off::kGeneration));
  // The whole slot, with the checksum fields read as zero.
  crc = crc32c(crc, raw.subspan(0, off::kChecksumLo));
  crc = crc32c(crc, zero);
  if (size <= kGoodOldInodeSize) return crc32c(crc, raw.subspan(off::kChecksumLo + 2, size - (off::kChecksumLo + 2)));
  crc = crc32c(crc, raw.subspan(off::kChecksumLo + 2, off::kChecksumHi - (off::kChecksumLo + 2)));
  if (checksum_has_hi(sb, extra_isize)) {
    crc = crc32c(crc, zero);
  } else {
    crc = crc32c(crc, raw.subspan(off::kChecksumHi, 2));
  }
  return crc32c(crc, raw.subspan(off::kChecksumHi + 2, size - (off::kChecksumHi + 2)));
}

InodeUse peek_inode_use(Bytes raw) {
  return InodeUse{le16(raw, off::kMode), le16(raw, off::kLinksCount), le32(raw, off::kDtime)};
}

Result<Inode> decode_inode(const Superblock& sb, uint32_t ino, Bytes raw) {
  const size_t size = sb.inode_size();
  if (raw.size() < size) {
    return Error(kErrCorrupted, fmt::format("inode {}: need {} bytes, got {}", ino, size, raw.size()));
  }
  Inode in;
  if (size > kGoodOldInodeSize) {
    in.i_extra_isize = le16(raw, off::kExtraIsize);
    // The kernel's rule (__ext4_iget): inside the slot and a multiple of 4.
    if (kGoodOldInodeSize + in.i_extra_isize > size || (in.i_extra_isize & 3) != 0) {
      return Error(kErrCorrupted, fmt::format("inode {}: i_extra_isize {} is invalid for {}-byte inodes", ino,
                                              in.i_extra_isize, size));
    }
  }
  const size_t end = declared_end(sb, in.i_extra_isize);
  const bool has_hi = checksum_has_hi(sb, in.i_extra_isize);
  in.i_checksum = le16(raw, off::kChecksumLo);
  if (has_hi) in.i_checksum |= static_cast<uint32_t>(le16(raw, off::kChecksumHi)) << 16;

  // A never-written slot is all zeros and carries no checksum (e2fsprogs
  // accepts it the same way).
  if (sb.has_metadata_csum() && !base_is_zero(raw)) {
    uint32_t want = inode_checksum(sb, ino, raw);
    if (!has_hi) want &= 0xFFFF;
    if (in.i_checksum != want) {
      return Error(kErrBadChecksum, fmt::format("inode {}: checksum 0x{:08x} does not match contents (0x{:08x})",
                                                ino, in.i_checksum, want));
    }
  }

  in.i_mode = le16(raw, off::kMode);
  in.i_uid = le16(raw, off::kUid) | static_cast<uint32_t>(le16(raw, off::kUidHigh)) << 16;
  in.i_gid = le16(raw, off::kGid) | static_cast<uint32_t>(le16(raw, off::kGidHigh)) << 16;
  in.i_size = le32(raw, off::kSizeLo) | static_cast<uint64_t>(le32(raw, off::kSizeHigh)) << 32;
  in.i_atime = get_time(raw, end, off::kAtime, off::kAtimeExtra);
  in.i_ctime = get_time(raw, end, off::kCtime, off::kCtimeExtra);
  in.i_mtime = get_time(raw, end, off::kMtime, off::kMtimeExtra);
  if (fits(end, off::kCrtime, 4)) in.i_crtime = get_time(raw, end, off::kCrtime, off::kCrtimeExtra);
  in.i_dtime = le32(raw, off::kDtime);
  in.i_links_count = le16(raw, off::kLinksCount);
  in.i_blocks = le32(raw, off::kBlocksLo) | static_cast<uint64_t>(le16(raw, off::kBlocksHigh)) << 32;
  in.i_flags = le32(raw, off::kFlags);
  in.i_version = le32(raw, off::kVersion);
  for (size_t i = 0; i < in.i_block.size(); ++i) in.i_block[i] = le32(raw, off::kBlock + 4 * i);
  in.i_generation = le32(raw, off::kGeneration);
  in.i_file_acl = le32(raw, off::kFileAclLo) | static_cast<uint64_t>(le16(raw, off::kFileAclHigh)) << 32;
  in.i_obso_faddr = le32(raw, off::kFaddr);
  if (fits(end, off::kVersionHi, 4)) in.i_version_hi = le32(raw, off::kVersionHi);
  if (fits(end, off::kProjid, 4)) in.i_projid = le32(raw, off::kProjid);
  return in;
}

void encode_inode(const Superblock& sb, uint32_t ino, const Inode& in, MutableBytes raw) {
  const size_t end = declared_end(sb, in.i_extra_isize);
  put_le16(raw, off::kMode, in.i_mode);
  put_le16(raw, off::kUid, static_cast<uint16_t>(in.i_uid));
  put_le16(raw, off::kUidHigh, static_cast<uint16_t>(in.i_uid >> 16));
  put_le16(raw, off::kGid, static_cast<uint16_t>(in.i_gid));
  put_le16(raw, off::kGidHigh, static_cast<uint16_t>(in.i_gid >> 16));
  put_le32(raw, off::kSizeLo, static_cast<uint32_t>(in.i_size));
  put_le32(raw, off::kSizeHigh, static_cast<uint32_t>(in.i_size >> 32));
  put_time(raw, end, off::kAtime, off::kAtimeExtra, in.i_atime);
  put_time(raw, end, off::kCtime, off::kCtimeExtra, in.i_ctime);
  put_time(raw, end, off::kMtime, off::kMtimeExtra, in.i_mtime);
  if (fits(end, off::kCrtime, 4)) put_time(raw, end, off::kCrtime, off::kCrtimeExtra, in.i_crtime);
  put_le32(raw, off::kDtime, in.i_dtime);
  put_le16(raw, off::kLinksCount, in.i_links_count);
  put_le32(raw, off::kBlocksLo, static_cast<uint32_t>(in.i_blocks));
  put_le16(raw, off::kBlocksHigh, static_cast<uint16_t>(in.i_blocks >> 32));
  put_le32(raw, off::kFlags, in.i_flags);
  put_le32(raw, off::kVersion, in.i_version);
  for (size_t i = 0; i < in.i_block.size(); ++i) put_le32(raw, off::kBlock + 4 * i, in.i_block[i]);
  put_le32(raw, off::kGeneration, in.i_generation);
  put_le32(raw, off::kFileAclLo, static_cast<uint32_t>(in.i_file_acl));
  put_le16(raw, off::kFileAclHigh, static_cast<uint16_t>(in.i_file_acl >> 32));
  put_le32(raw, off::kFaddr, in.i_obso_faddr);
  if (sb.inode_size() > kGoodOldInodeSize) put_le16(raw, off::kExtraIsize, in.i_extra_isize);
  if (fits(end, off::kVersionHi, 4)) put_le32(raw, off::kVersionHi, in.i_version_hi);
  if (fits(end, off::kProjid, 4)) put_le32(raw, off::kProjid, in.i_projid);

  const bool has_hi = checksum_has_hi(sb, in.i_extra_isize);
  const uint32_t csum = sb.has_metadata_csum() ? inode_checksum(sb, ino, raw) : in.i_checksum;
  put_le16(raw, off::kChecksumLo, static_cast<uint16_t>(csum));
  if (has_hi) put_le16(raw, off::kChecksumHi, static_cast<uint16_t>(csum >> 16));
}

uint64_t inode_blocks_512(const Superblock& sb, const Inode& inode) {
  // Without huge_file only the low 32 bits count, in 512-byte units.
  if (!sb.has_ro_compat(ro_compat::kHugeFile)) return inode.i_blocks & 0xFFFFFFFFu;
  if (inode.has_flag(inode_flag::kHugeFile)) return inode.i_blocks << (sb.s_log_block_size + 1);
  return inode.i_blocks;
}

DeviceNumber inode_device(const Inode& inode) {
  if (inode.i_block[0] != 0) {
    // Old encoding: 8-bit major, 8-bit minor.
    const uint32_t dev = inode.i_block[0];
    return {(dev >> 8) & 0xFF, dev & 0xFF};
  }
  // New encoding: 12-bit major, 20-bit minor split around it.
  const uint32_t dev = inode.i_block[1];
  return {(dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)};
}

void set_inode_device(Inode& inode, DeviceNumber dev) {
  inode.i_block.fill(0);
  if (dev.major < 256 && dev.minor < 256) {
    inode.i_block[0] = (dev.major << 8) | dev.minor;
  } else {
    inode.i_block[1] = (dev.minor & 0xFF) | ((dev.major & 0xFFF) << 8) | ((dev.minor & ~0xFFu) << 12);
  }
}

bool is_fast_symlink(const Superblock& sb, const Inode& inode) {
  if ((inode.i_mode & kModeTypeMask) != kModeSymlink) return false;
  if (inode.has_flag(inode_flag::kInlineData)) return false;
  if (inode.has_flag(inode_flag::kEaInode)) {
    return inode.i_size != 0 && inode.i_size < kInodeBlockBytes;
  }
  // The kernel's rule: a symlink owning no blocks besides its xattr block
  // keeps the target in i_block.
  const uint64_t ea_sectors = inode.i_file_acl != 0 ? (1024ull << sb.s_log_cluster_size) >> 9 : 0;
  return inode_blocks_512(sb, inode) == ea_sectors;
}

InodeLocation inode_location(const Superblock& sb, uint32_t ino) {
  const uint32_t index = ino - 1;  // inode numbers start at 1
  return {index / sb.s_inodes_per_group,
          static_cast<uint64_t>(index % sb.s_inodes_per_group) * sb.inode_size()};
}

}  // namespace uext::disk
