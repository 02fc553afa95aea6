#include "disk/xattr.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "disk/checksum.h"

namespace uext::disk {
namespace {

constexpr size_t kEntryHeaderSize = 16;
constexpr size_t kIbodyHeaderSize = 4;    // just the magic
constexpr uint32_t kMaxValueSize = 1u << 24;  // the kernel's EXT4_XATTR_SIZE_MAX
constexpr size_t kChecksumOffset = 16;    // h_checksum in the block header

constexpr uint8_t kIndexAclAccess = 2;
constexpr uint8_t kIndexAclDefault = 3;
constexpr uint8_t kIndexEncryption = 9;

size_t round4(size_t n) { return (n + 3) & ~size_t{3}; }

Error corrupt(const char* where, std::string problem) {
  return Error(kErrCorrupted, fmt::format("{}: {}", where, problem));
}

// Walks the entry table starting at `first` and returns the entries as
// stored; `offsets_out` gets each entry's offset (for error context).
// Value offsets count from `value_base`; everything must lie before
// region.size(). The checks follow the kernel's check_xattrs.
Result<std::vector<XattrEntry>> parse_raw_entries(const char* where, Bytes region, size_t first, size_t value_base,
                                                  std::vector<size_t>* offsets_out) {
  const size_t end = region.size();
  // Pass 1: find the terminator so values can be checked against the names.
  size_t names_end = first;
  for (;;) {
    if (names_end + 4 > end) return corrupt(where, fmt::format("entry table at {} runs off the end", names_end));
    if (le32(region, names_end) == 0) break;
    if (names_end + kEntryHeaderSize > end)
      return corrupt(where, fmt::format("entry at {} runs off the end", names_end));
    size_t next = names_end + round4(kEntryHeaderSize + le8(region, names_end));
    if (next + 4 > end) return corrupt(where, fmt::format("entry at {}: name runs off the end", names_end));
    names_end = next;
  }
  std::vector<XattrEntry> out;
  for (size_t off = first; off < names_end; off += round4(kEntryHeaderSize + le8(region, off))) {
    const uint8_t name_len = le8(region, off);
    const uint8_t index = le8(region, off + 1);
    const uint16_t value_offs = le16(region, off + 2);
    const uint32_t value_inum = le32(region, off + 4);
    const uint32_t value_size = le32(region, off + 8);
    std::string_view suffix(reinterpret_cast<const char*>(region.data()) + off + kEntryHeaderSize, name_len);
    if (suffix.find('\0') != std::string_view::npos)
      return corrupt(where, fmt::format("entry at {}: name contains a NUL byte", off));
    if (value_size > kMaxValueSize)
      return corrupt(where, fmt::format("entry at {}: value size {} is too large", off, value_size));
    if (value_inum != 0 && value_size == 0)
      return corrupt(where, fmt::format("entry at {}: value inode {} with size 0", off, value_inum));
    // Validate the index here so that raw callers refuse what readers refuse.
    auto name = xattr_full_name(index, suffix);
    if (!name.ok()) return std::move(name).error().with_context(fmt::format("{}: entry at {}", where, off));
    XattrEntry x;
    x.name_index = index;
    x.suffix.assign(suffix);
    x.value_inum = value_inum;
    if (value_inum == 0 && value_size != 0) {
      const size_t v = value_base + value_offs;
      if (v > end || v < names_end + 4 || value_size > end - v || round4(value_size) > end - v)
        return corrupt(where, fmt::format("entry at {}: value at {} ({} bytes) overlaps the names or runs off the end",
                                          off, v, value_size));
      x.value.assign(reinterpret_cast<const char*>(region.data()) + v, value_size);
    }
    if (offsets_out) offsets_out->push_back(off);
    out.push_back(std::move(x));
  }
  return out;
}

// The reader's view: full names, ACLs in VFS form.
Result<std::vector<Xattr>> parse_entries(const char* where, Bytes region, size_t first, size_t value_base) {
  std::vector<size_t> offsets;
  UEXT_ASSIGN_OR_RETURN(auto raw, parse_raw_entries(where, region, first, value_base, &offsets));
  std::vector<Xattr> out;
  out.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    XattrEntry& e = raw[i];
    Xattr x;
    x.name = *xattr_full_name(e.name_index, e.suffix);  // checked by the raw parse
    x.value_inum = e.value_inum;
    if (e.value_inum == 0 && !e.value.empty() && (e.name_index == kIndexAclAccess || e.name_index == kIndexAclDefault)) {
      auto acl = acl_from_disk(e.value);
      if (!acl.ok()) return std::move(acl).error().with_context(fmt::format("{}: entry at {}", where, offsets[i]));
      x.value = std::move(*acl);
    } else {
      x.value = std::move(e.value);
    }
    out.push_back(std::move(x));
  }
  return out;
}

}  // namespace

Result<std::string> xattr_full_name(uint8_t name_index, std::string_view suffix) {
  const char* prefix = nullptr;
  switch (name_index) {
    case 1: prefix = "user."; break;
    case 2: prefix = "system.posix_acl_access"; break;
    case 3: prefix = "system.posix_acl_default"; break;
    case 4: prefix = "trusted."; break;
    case 5: prefix = "lustre."; break;
    case 6: prefix = "security."; break;
    case 7: prefix = "system."; break;
    case 8: prefix = "system.richacl"; break;
    case 10: prefix = "gnu."; break;
    case kIndexEncryption:
      // Encryption contexts have no VFS name; files using them are not readable here anyway.
      return Error(ENOTSUP, "xattr: encryption context (name index 9) is not supported");
    default:
      return Error(kErrCorrupted, fmt::format("xattr: unknown name index {}", name_index));
  }
  return std::string(prefix).append(suffix);
}

Result<std::vector<Xattr>> parse_inode_xattrs(Bytes area) {
  if (area.size() < kIbodyHeaderSize || le32(area, 0) != kXattrMagic) return std::vector<Xattr>{};
  return parse_entries("in-inode xattrs", area, kIbodyHeaderSize, kIbodyHeaderSize);
}

Result<std::vector<Xattr>> parse_xattr_block(Bytes block, XattrBlockHeader* header_out) {
  const char* where = "xattr block";
  if (block.size() < kXattrBlockHeaderSize + 4)
    return corrupt(where, fmt::format("{} bytes is too small", block.size()));
  XattrBlockHeader h;
  h.h_magic = le32(block, 0);
  h.h_refcount = le32(block, 4);
  h.h_blocks = le32(block, 8);
  h.h_hash = le32(block, 12);
  h.h_checksum = le32(block, 16);
  if (h.h_magic != kXattrMagic) return corrupt(where, fmt::format("bad magic {:#010x}", h.h_magic));
  if (h.h_blocks != 1) return corrupt(where, fmt::format("h_blocks is {}, not 1", h.h_blocks));
  if (header_out) *header_out = h;
  return parse_entries(where, block, kXattrBlockHeaderSize, 0);
}

uint32_t xattr_block_checksum(uint32_t csum_seed, uint64_t block_nr, Bytes block) {
  std::byte nr[8];
  put_le64(nr, 0, block_nr);
  uint32_t crc = crc32c(csum_seed, nr);
  if (block.size() < kChecksumOffset + 4) return crc32c(crc, block);
  crc = crc32c(crc, block.first(kChecksumOffset));
  crc = crc32c_le32(crc, 0);  // h_checksum counts as zero
  return crc32c(crc, block.subspan(kChecksumOffset + 4));
}

Status verify_xattr_block_checksum(uint32_t csum_seed, uint64_t block_nr, Bytes block) {
  if (block.size() < kXattrBlockHeaderSize)
    return corrupt("xattr block", fmt::format("{} bytes is too small", block.size()));
  uint32_t stored = le32(block, kChecksumOffset);
  uint32_t computed = xattr_block_checksum(csum_seed, block_nr, block);
  if (stored != computed)
    return Error(kErrBadChecksum, fmt::format("xattr block {}: checksum {:#010x} does not match computed {:#010x}",
                                              block_nr, stored, computed));
  return {};
}

void set_xattr_block_checksum(uint32_t csum_seed, uint64_t block_nr, MutableBytes block) {
  if (block.size() < kXattrBlockHeaderSize) return;
  put_le32(block, kChecksumOffset, xattr_block_checksum(csum_seed, block_nr, block));
}

namespace {

constexpr int kNameShift = 5;
constexpr int kValueShift = 16;
constexpr int kBlockShift = 16;

uint32_t mix(uint32_t h, int shift, uint32_t v) { return (h << shift) ^ (h >> (32 - shift)) ^ v; }

uint32_t hash_value(uint32_t h, std::string_view value) {
  // The value is hashed as little-endian words, zero-padded to a multiple of 4.
  for (size_t i = 0; i < value.size(); i += 4) {
    std::byte w[4] = {};
    std::memcpy(w, value.data() + i, std::min<size_t>(4, value.size() - i));
    h = mix(h, kValueShift, le32(w, 0));
  }
  return h;
}

}  // namespace

uint32_t xattr_entry_hash(std::string_view name_suffix, std::string_view value) {
  uint32_t h = 0;
  for (char c : name_suffix) h = mix(h, kNameShift, static_cast<unsigned char>(c));
  return hash_value(h, value);
}

uint32_t xattr_entry_hash_signed(std::string_view name_suffix, std::string_view value) {
  uint32_t h = 0;
  for (char c : name_suffix) h = mix(h, kNameShift, static_cast<uint32_t>(static_cast<int>(static_cast<signed char>(c))));
  return hash_value(h, value);
}

uint32_t xattr_block_hash(Bytes block) {
  uint32_t h = 0;
  for (size_t off = kXattrBlockHeaderSize; off + kEntryHeaderSize <= block.size() && le32(block, off) != 0;
       off += round4(kEntryHeaderSize + le8(block, off))) {
    uint32_t e_hash = le32(block, off + 12);
    // One unhashed entry marks the block as not shareable.
    if (e_hash == 0) return 0;
    h = mix(h, kBlockShift, e_hash);
  }
  return h;
}

namespace {

constexpr uint16_t kAclUserObj = 0x01;
constexpr uint16_t kAclUser = 0x02;
constexpr uint16_t kAclGroupObj = 0x04;
constexpr uint16_t kAclGroup = 0x08;
constexpr uint16_t kAclMask = 0x10;
constexpr uint16_t kAclOther = 0x20;
constexpr uint32_t kAclDiskVersion = 1;
constexpr uint32_t kAclVfsVersion = 2;
constexpr uint32_t kAclUndefinedId = 0xFFFFFFFF;

bool has_id(uint16_t tag) { return tag == kAclUser || tag == kAclGroup; }
bool is_known_tag(uint16_t tag) {
  return tag == kAclUserObj || tag == kAclUser || tag == kAclGroupObj || tag == kAclGroup || tag == kAclMask ||
         tag == kAclOther;
}

Bytes bytes_of(std::string_view s) { return as_bytes(s.data(), s.size()); }

void append_le(std::string& out, uint32_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

}  // namespace

Result<std::string> acl_from_disk(std::string_view disk_value) {
  Bytes in = bytes_of(disk_value);
  if (in.size() < 4) return Error(kErrCorrupted, fmt::format("ACL: {} bytes is too small for a header", in.size()));
  if (le32(in, 0) != kAclDiskVersion)
    return Error(kErrCorrupted, fmt::format("ACL: disk version {} is not 1", le32(in, 0)));
  std::string out;
  append_le(out, kAclVfsVersion, 4);
  size_t off = 4;
  while (off < in.size()) {
    if (in.size() - off < 4) return Error(kErrCorrupted, fmt::format("ACL: entry at {} is truncated", off));
    const uint16_t tag = le16(in, off);
    const uint16_t perm = le16(in, off + 2);
    if (!is_known_tag(tag)) return Error(kErrCorrupted, fmt::format("ACL: entry at {} has unknown tag {:#x}", off, tag));
    uint32_t id = kAclUndefinedId;
    if (has_id(tag)) {
      if (in.size() - off < 8) return Error(kErrCorrupted, fmt::format("ACL: entry at {} is truncated", off));
      id = le32(in, off + 4);
      off += 8;
    } else {
      off += 4;
    }
    append_le(out, tag, 2);
    append_le(out, perm, 2);
    append_le(out, id, 4);
  }
  return out;
}

Result<std::string> acl_to_disk(std::string_view vfs_value) {
  Bytes in = bytes_of(vfs_value);
  if (in.size() < 4) return Error(EINVAL, fmt::format("ACL: {} bytes is too small for a header", in.size()));
  if (le32(in, 0) != kAclVfsVersion) return Error(EINVAL, fmt::format("ACL: version {} is not 2", le32(in, 0)));
  if ((in.size() - 4) % 8 != 0)
    return Error(EINVAL, fmt::format("ACL: {} bytes of entries is not a multiple of 8", in.size() - 4));
  std::string out;
  append_le(out, kAclDiskVersion, 4);
  for (size_t off = 4; off < in.size(); off += 8) {
    const uint16_t tag = le16(in, off);
    if (!is_known_tag(tag)) return Error(EINVAL, fmt::format("ACL: entry at {} has unknown tag {:#x}", off, tag));
    append_le(out, tag, 2);
    append_le(out, le16(in, off + 2), 2);
    if (has_id(tag)) append_le(out, le32(in, off + 4), 4);
  }
  return out;
}

// ---- Writing ----

Result<std::vector<XattrEntry>> parse_inode_xattr_entries(Bytes area) {
  if (area.size() < kIbodyHeaderSize || le32(area, 0) != kXattrMagic) return std::vector<XattrEntry>{};
  return parse_raw_entries("in-inode xattrs", area, kIbodyHeaderSize, kIbodyHeaderSize, nullptr);
}

Result<std::vector<XattrEntry>> parse_xattr_block_entries(Bytes block, XattrBlockHeader* header_out) {
  // The header checks are parse_xattr_block's; run them on the header alone.
  XattrBlockHeader h;
  if (block.size() < kXattrBlockHeaderSize + 4)
    return corrupt("xattr block", fmt::format("{} bytes is too small", block.size()));
  h.h_magic = le32(block, 0);
  h.h_refcount = le32(block, 4);
  h.h_blocks = le32(block, 8);
  h.h_hash = le32(block, 12);
  h.h_checksum = le32(block, 16);
  if (h.h_magic != kXattrMagic) return corrupt("xattr block", fmt::format("bad magic {:#010x}", h.h_magic));
  if (h.h_blocks != 1) return corrupt("xattr block", fmt::format("h_blocks is {}, not 1", h.h_blocks));
  if (header_out) *header_out = h;
  return parse_raw_entries("xattr block", block, kXattrBlockHeaderSize, 0, nullptr);
}

Result<XattrEntry> xattr_split_name(std::string_view full_name) {
  struct Prefix {
    std::string_view text;
    uint8_t index;
    bool exact;  // the whole name, no suffix (ACLs)
  };
  // Only the handlers ext4 registers; "system." names other than the ACLs
  // (system.data of inline_data, system.richacl) are not settable.
  static constexpr Prefix kPrefixes[] = {
      {"user.", 1, false},
      {"trusted.", 4, false},
      {"security.", 6, false},
      {"system.posix_acl_access", kIndexAclAccess, true},
      {"system.posix_acl_default", kIndexAclDefault, true},
  };
  for (const Prefix& p : kPrefixes) {
    if (p.exact) {
      if (full_name != p.text) continue;
    } else if (!full_name.starts_with(p.text)) {
      continue;
    }
    XattrEntry e;
    e.name_index = p.index;
    e.suffix.assign(full_name.substr(p.text.size()));
    if (!p.exact && e.suffix.empty())
      return Error(EINVAL, fmt::format("xattr name \"{}\" has nothing after its prefix", full_name));
    if (e.suffix.size() > 255)
      return Error(ERANGE, fmt::format("xattr name \"{}...\": {} bytes after the prefix is more than 255",
                                       full_name.substr(0, 32), e.suffix.size()));
    if (e.suffix.find('\0') != std::string::npos)
      return Error(EINVAL, "xattr name contains a NUL byte");
    return e;
  }
  return Error(EOPNOTSUPP, fmt::format("xattr name \"{}\": prefix not supported by ext4", full_name));
}

bool xattr_entry_less(const XattrEntry& a, const XattrEntry& b) {
  if (a.name_index != b.name_index) return a.name_index < b.name_index;
  if (a.suffix.size() != b.suffix.size()) return a.suffix.size() < b.suffix.size();
  return std::memcmp(a.suffix.data(), b.suffix.data(), a.suffix.size()) < 0;
}

size_t xattr_entry_space(const XattrEntry& e) {
  return round4(kEntryHeaderSize + e.suffix.size()) + round4(e.value.size());
}

size_t inode_xattr_room(size_t area_size) {
  return area_size < kIbodyHeaderSize + 4 ? 0 : area_size - kIbodyHeaderSize - 4;
}

size_t xattr_block_room(size_t block_size) {
  return block_size < kXattrBlockHeaderSize + 4 ? 0 : block_size - kXattrBlockHeaderSize - 4;
}

namespace {

// Checks entries are writable and fit `room` bytes.
Status check_fits(const char* where, const std::vector<XattrEntry>& entries, size_t room) {
  size_t need = 0;
  for (const XattrEntry& e : entries) {
    if (e.value_inum != 0) return Error(EINVAL, fmt::format("{}: cannot write an ea_inode entry", where));
    if (e.suffix.size() > 255) return Error(ERANGE, fmt::format("{}: name of {} bytes", where, e.suffix.size()));
    need += xattr_entry_space(e);
  }
  if (need > room)
    return Error(ENOSPC, fmt::format("{}: {} bytes of attributes do not fit in {}", where, need, room));
  return {};
}

// Writes entries from `first`, values packed downwards from the end of
// `region`; value offsets count from `value_base`. The caller checked the
// fit and zeroed the region.
void lay_out(MutableBytes region, size_t first, size_t value_base, const std::vector<XattrEntry>& entries,
             bool with_hash) {
  size_t off = first;
  size_t value_end = region.size();
  for (const XattrEntry& e : entries) {
    uint16_t offs = 0;  // an empty value has no place, offset 0 as the kernel writes it
    if (!e.value.empty()) {
      value_end -= round4(e.value.size());
      std::memcpy(region.data() + value_end, e.value.data(), e.value.size());
      offs = static_cast<uint16_t>(value_end - value_base);
    }
    put_le8(region, off, static_cast<uint8_t>(e.suffix.size()));
    put_le8(region, off + 1, e.name_index);
    put_le16(region, off + 2, offs);
    put_le32(region, off + 4, 0);
    put_le32(region, off + 8, static_cast<uint32_t>(e.value.size()));
    put_le32(region, off + 12, with_hash ? xattr_entry_hash(e.suffix, e.value) : 0);
    std::memcpy(region.data() + off + kEntryHeaderSize, e.suffix.data(), e.suffix.size());
    off += round4(kEntryHeaderSize + e.suffix.size());
  }
  // The terminator is the 4 zero bytes at `off`, already zero.
}

}  // namespace

Status encode_inode_xattrs(MutableBytes area, const std::vector<XattrEntry>& entries) {
  if (entries.empty()) {
    std::fill(area.begin(), area.end(), std::byte{0});
    return {};
  }
  // Values must be addressable by a 16-bit offset: true of any slot (<= 64 KiB).
  UEXT_TRY(check_fits("in-inode xattrs", entries, inode_xattr_room(area.size())));
  std::fill(area.begin(), area.end(), std::byte{0});
  put_le32(area, 0, kXattrMagic);
  // In-inode entries carry e_hash 0: the kernel hashes only block entries.
  lay_out(area, kIbodyHeaderSize, kIbodyHeaderSize, entries, false);
  return {};
}

Status encode_xattr_block(MutableBytes block, const std::vector<XattrEntry>& entries, uint32_t refcount) {
  if (block.size() > 65536) return Error(EINVAL, "xattr block larger than 64 KiB: value offsets are 16-bit");
  UEXT_TRY(check_fits("xattr block", entries, xattr_block_room(block.size())));
  std::vector<XattrEntry> sorted = entries;
  std::stable_sort(sorted.begin(), sorted.end(), xattr_entry_less);
  std::fill(block.begin(), block.end(), std::byte{0});
  put_le32(block, 0, kXattrMagic);
  put_le32(block, 4, refcount);
  put_le32(block, 8, 1);
  lay_out(block, kXattrBlockHeaderSize, 0, sorted, true);
  put_le32(block, 12, xattr_block_hash(block));
  return {};
}

}  // namespace uext::disk
