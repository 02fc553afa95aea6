// Extended attributes: in the inode after i_extra_isize (4-byte magic, then
// entries, values at the end of the slot) and in one xattr block per inode
// (32-byte header, entries from the front, values from the back).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "disk/bytes.h"
#include "uext/status.h"

namespace uext::disk {

inline constexpr uint32_t kXattrMagic = 0xEA020000;
inline constexpr size_t kXattrBlockHeaderSize = 32;

struct Xattr {
  std::string name;   // full name with prefix, e.g. "user.mime_type"
  std::string value;  // as the VFS sees it (POSIX ACLs converted from ext4's compact form)
  uint32_t value_inum = 0;  // ea_inode: value lives in this inode (value empty then)
};

// Name prefixes by e_name_index: 1 "user.", 2 "system.posix_acl_access",
// 3 "system.posix_acl_default", 4 "trusted.", 6 "security.", 7 "system.",
// 8 "system.richacl" (and 5 "lustre.", 10 "gnu." as e2fsprogs knows them).
// Index 9 (encryption context) is ENOTSUP; other indexes are a corruption error.
Result<std::string> xattr_full_name(uint8_t name_index, std::string_view suffix);

// Parses the in-inode area: `area` is the bytes from 128 + i_extra_isize to
// the end of the inode slot. Returns no attributes when the magic is absent.
// Checks every entry and value lies inside the area.
Result<std::vector<Xattr>> parse_inode_xattrs(Bytes area);

// Parses an xattr block: magic, h_blocks == 1, entries and values inside the block.
struct XattrBlockHeader {
  uint32_t h_magic = 0;
  uint32_t h_refcount = 0;
  uint32_t h_blocks = 0;
  uint32_t h_hash = 0;
  uint32_t h_checksum = 0;
};
Result<std::vector<Xattr>> parse_xattr_block(Bytes block, XattrBlockHeader* header_out = nullptr);

// Block checksum (metadata_csum): crc32c(csum_seed, le64 block number,
// then the block with h_checksum as zero).
uint32_t xattr_block_checksum(uint32_t csum_seed, uint64_t block_nr, Bytes block);
Status verify_xattr_block_checksum(uint32_t csum_seed, uint64_t block_nr, Bytes block);
void set_xattr_block_checksum(uint32_t csum_seed, uint64_t block_nr, MutableBytes block);

// The entry hash ext4 stores in e_hash (name bytes as unsigned char, as
// kernels since 6.2 and e2fsprogs 1.47 write it).
uint32_t xattr_entry_hash(std::string_view name_suffix, std::string_view value);
// The same with name bytes as signed char: what older x86 kernels wrote for
// names with bytes >= 0x80. Readers accept either.
uint32_t xattr_entry_hash_signed(std::string_view name_suffix, std::string_view value);
// The block hash for h_hash, from the entries' e_hash values (0 when any is 0).
uint32_t xattr_block_hash(Bytes block);

// ---- Writing ----

// An attribute as stored on disk: name index and suffix, value in disk
// form (POSIX ACLs in ext4's compact form), for re-encoding unchanged.
struct XattrEntry {
  uint8_t name_index = 0;
  std::string suffix;
  std::string value;
  uint32_t value_inum = 0;  // ea_inode (never written here; kept to refuse it)
  bool operator==(const XattrEntry&) const = default;
};

// The same parsers, returning entries as stored (no ACL conversion).
Result<std::vector<XattrEntry>> parse_inode_xattr_entries(Bytes area);
Result<std::vector<XattrEntry>> parse_xattr_block_entries(Bytes block, XattrBlockHeader* header_out = nullptr);

// Splits a VFS name into the name index and suffix the kernel's ext4
// handlers accept: "user.", "trusted.", "security." (suffix not empty:
// EINVAL) and exactly "system.posix_acl_access" / "system.posix_acl_default"
// (empty suffix). Any other prefix is EOPNOTSUPP; a suffix over 255 bytes is
// ERANGE.
Result<XattrEntry> xattr_split_name(std::string_view full_name);

// The order the kernel keeps block entries in (name index, name length,
// name bytes), which its lookup relies on: it stops at the first entry not
// below the name it looks for.
bool xattr_entry_less(const XattrEntry& a, const XattrEntry& b);

// Bytes an entry takes: its header and name padded to 4, plus its value
// padded to 4.
size_t xattr_entry_space(const XattrEntry& e);
// Room for entries in an in-inode area / a block: everything but the magic
// or header and the 4-byte terminator.
size_t inode_xattr_room(size_t area_size);
size_t xattr_block_room(size_t block_size);

// Writes `entries` into the in-inode area (the bytes from 128 +
// i_extra_isize to the end of the slot): magic, entries in the given
// order with e_hash 0 (as the kernel writes in-inode entries), terminator,
// values packed from the end. No entries: the area becomes zeros (no
// magic), as the kernel leaves it. ENOSPC when they do not fit (the area
// is then unchanged); EINVAL for an ea_inode entry.
Status encode_inode_xattrs(MutableBytes area, const std::vector<XattrEntry>& entries);

// Writes a whole xattr block: header (magic, refcount, h_blocks 1, h_hash
// over the entry hashes), entries sorted by xattr_entry_less with their
// e_hash, terminator, values packed from the end of the block, zeros in
// between. h_checksum is left 0: the caller seals it with
// set_xattr_block_checksum, which needs the block number. ENOSPC when the
// entries do not fit (block unchanged).
Status encode_xattr_block(MutableBytes block, const std::vector<XattrEntry>& entries, uint32_t refcount);

// POSIX ACLs: ext4 keeps them in a compact form (version 1 header, short
// entries for USER_OBJ/GROUP_OBJ/MASK/OTHER); the VFS form
// (system.posix_acl_*) has version 2 and 8-byte entries.
Result<std::string> acl_from_disk(std::string_view disk_value);
Result<std::string> acl_to_disk(std::string_view vfs_value);

}  // namespace uext::disk
