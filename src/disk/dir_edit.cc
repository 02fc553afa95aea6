#include "disk/dir_edit.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace uext::disk {
namespace {

Status check_block(MutableBytes block, const DirBlockFormat& format) {
  if (format.block_size < 1024 || block.size() != format.block_size)
    return Error(EINVAL, fmt::format("directory block: {} bytes where a block of {} was expected", block.size(),
                                     format.block_size));
  return {};
}

// Offset just past the last entry byte: the checksum tail, or the block end.
uint32_t entries_end(const DirBlockFormat& format) {
  return format.block_size - (format.has_tail ? static_cast<uint32_t>(kDirentTailSize) : 0);
}

void write_header(MutableBytes block, const DirBlockFormat& format, uint32_t off, uint32_t ino, uint32_t rec_len,
                  size_t name_len, uint8_t file_type) {
  put_le32(block, off, ino);
  put_le16(block, off + 4, encode_rec_len(rec_len, format.block_size));
  if (format.filetype) {
    put_le8(block, off + 6, static_cast<uint8_t>(name_len));
    put_le8(block, off + 7, file_type);
  } else {
    put_le16(block, off + 6, static_cast<uint16_t>(name_len));
  }
}

void write_entry(MutableBytes block, const DirBlockFormat& format, uint32_t off, uint32_t ino, uint32_t rec_len,
                 std::string_view name, uint8_t file_type) {
  write_header(block, format, off, ino, rec_len, name.size(), file_type);
  std::memcpy(block.data() + off + kDirentHeaderSize, name.data(), name.size());
  // Zero the padding up to the real size so stale name bytes do not linger.
  const uint32_t real = dirent_size(name.size());
  std::memset(block.data() + off + kDirentHeaderSize + name.size(), 0, real - kDirentHeaderSize - name.size());
}

// The slack of an entry: all of an unused one, past the real size of a live one.
uint32_t slack(const DirentView& e) { return e.inode == 0 ? e.rec_len : e.rec_len - dirent_size(e.name.size()); }

Status remove_parsed(MutableBytes block, const DirBlockFormat& format, const std::vector<DirentView>& entries,
                     size_t i) {
  const DirentView& victim = entries[i];
  if (i > 0) {
    const DirentView& prev = entries[i - 1];
    put_le16(block, prev.offset + 4, encode_rec_len(prev.rec_len + victim.rec_len, format.block_size));
    std::memset(block.data() + victim.offset, 0, victim.rec_len);
  } else {
    // Keep rec_len (bytes 4..5); wipe the inode, name_len, file_type and name.
    put_le32(block, victim.offset, 0);
    std::memset(block.data() + victim.offset + 6, 0, victim.rec_len - 6);
  }
  return {};
}

}  // namespace

Status check_entry_name(std::string_view name) {
  if (name.empty() || name.size() > kNameMax)
    return Error(EINVAL, fmt::format("directory entry name of {} bytes (1..{} allowed)", name.size(), kNameMax));
  if (name.find('/') != std::string_view::npos || name.find('\0') != std::string_view::npos)
    return Error(EINVAL, "directory entry name contains '/' or NUL");
  return {};
}

Result<std::optional<uint32_t>> insert_entry(MutableBytes block, const DirBlockFormat& format,
                                             std::string_view name, uint32_t ino, uint8_t file_type) {
  UEXT_TRY(check_block(block, format));
  UEXT_TRY(check_entry_name(name));
  if (name == "." || name == "..") return Error(EINVAL, "\".\" and \"..\" are made with the directory");
  if (ino == 0) return Error(EINVAL, "directory entry for inode 0");
  UEXT_ASSIGN_OR_RETURN(auto entries, parse_dir_block(block, format));
  const uint32_t need = dirent_size(name.size());
  const DirentView* slot = nullptr;
  for (const DirentView& e : entries) {
    if (e.inode != 0 && e.name == name)
      return Error(EEXIST, fmt::format("directory entry \"{}\" already exists at offset {}", name, e.offset));
    if (!slot && slack(e) >= need) slot = &e;
  }
  if (!slot) return std::optional<uint32_t>();
  if (!format.filetype) file_type = 0;
  uint32_t off = slot->offset;
  uint32_t rec_len = slot->rec_len;
  if (slot->inode != 0) {
    // Cut the live entry to its real size; the new one gets the remainder.
    const uint32_t keep = dirent_size(slot->name.size());
    put_le16(block, off + 4, encode_rec_len(keep, format.block_size));
    off += keep;
    rec_len -= keep;
  }
  write_entry(block, format, off, ino, rec_len, name, file_type);
  return std::optional<uint32_t>(off);
}

Status remove_entry(MutableBytes block, const DirBlockFormat& format, std::string_view name) {
  UEXT_TRY(check_block(block, format));
  UEXT_ASSIGN_OR_RETURN(auto entries, parse_dir_block(block, format));
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].inode != 0 && entries[i].name == name) return remove_parsed(block, format, entries, i);
  }
  return Error(ENOENT, fmt::format("no directory entry \"{}\" in the block", name));
}

Status remove_entry_at(MutableBytes block, const DirBlockFormat& format, uint32_t offset) {
  UEXT_TRY(check_block(block, format));
  UEXT_ASSIGN_OR_RETURN(auto entries, parse_dir_block(block, format));
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].offset == offset && entries[i].inode != 0) return remove_parsed(block, format, entries, i);
  }
  return Error(ENOENT, fmt::format("no live directory entry starts at offset {}", offset));
}

Status set_entry_inode(MutableBytes block, const DirBlockFormat& format, std::string_view name, uint32_t ino,
                       uint8_t file_type) {
  UEXT_TRY(check_block(block, format));
  if (ino == 0) return Error(EINVAL, "directory entry for inode 0");
  UEXT_ASSIGN_OR_RETURN(auto entries, parse_dir_block(block, format));
  for (const DirentView& e : entries) {
    if (e.inode == 0 || e.name != name) continue;
    put_le32(block, e.offset, ino);
    if (format.filetype) put_le8(block, e.offset + 7, file_type);
    return {};
  }
  return Error(ENOENT, fmt::format("no directory entry \"{}\" in the block", name));
}

uint32_t largest_free_slot(Bytes block, const DirBlockFormat& format) {
  auto entries = parse_dir_block(block, format);
  if (!entries.ok()) return 0;
  uint32_t best = 0;
  for (const DirentView& e : *entries) best = std::max(best, slack(e));
  return best;
}

Status init_leaf_block(MutableBytes block, const DirBlockFormat& format) {
  UEXT_TRY(check_block(block, format));
  std::memset(block.data(), 0, block.size());
  write_header(block, format, 0, 0, entries_end(format), 0, 0);
  if (format.has_tail) init_dir_block_tail(block);
  return {};
}

Status init_dir_block_with_dot_dotdot(MutableBytes block, const DirBlockFormat& format, uint32_t ino,
                                      uint32_t parent) {
  UEXT_TRY(check_block(block, format));
  if (ino == 0 || parent == 0) return Error(EINVAL, "\".\" or \"..\" for inode 0");
  std::memset(block.data(), 0, block.size());
  const uint8_t type = format.filetype ? ftype::kDirectory : 0;
  const uint32_t dot = dirent_size(1);
  write_entry(block, format, 0, ino, dot, ".", type);
  write_entry(block, format, dot, parent, entries_end(format) - dot, "..", type);
  if (format.has_tail) init_dir_block_tail(block);
  return {};
}

}  // namespace uext::disk
