#include "disk/dirent.h"

#include <algorithm>

#include <fmt/format.h>

#include "disk/checksum.h"

namespace uext::disk {
namespace {

constexpr uint32_t kMaxRecLenCode = 65535;  // the kernel's EXT4_MAX_REC_LEN
constexpr uint8_t kTailFileType = 0xDE;     // EXT4_FT_DIR_CSUM
constexpr uint32_t kMinRecLen = 12;         // dirent_size(1)

Error corrupt(uint32_t offset, std::string problem) {
  return Error(kErrCorrupted, fmt::format("directory block: entry at offset {}: {}", offset, problem));
}

}  // namespace

// rec_len is 16 bits; blocks of 64 KiB borrow its two low bits (always zero
// for real lengths, which are multiples of 4) as bits 16-17 of the length,
// and write a whole-block entry as 65535 (or 0, which older code produced).
uint32_t decode_rec_len(uint16_t raw, uint32_t block_size) {
  if (block_size < 65536) return raw;
  if (raw == kMaxRecLenCode || raw == 0) return block_size;
  return (raw & 65532u) | ((raw & 3u) << 16);
}

uint16_t encode_rec_len(uint32_t len, uint32_t block_size) {
  if (len < 65536) return static_cast<uint16_t>(len);
  if (len == block_size) return block_size == 65536 ? static_cast<uint16_t>(kMaxRecLenCode) : 0;
  return static_cast<uint16_t>((len & 65532u) | ((len >> 16) & 3u));
}

bool has_dir_block_tail(Bytes block) {
  if (block.size() < kDirentTailSize) return false;
  const size_t t = block.size() - kDirentTailSize;
  return le32(block, t) == 0 &&
         decode_rec_len(le16(block, t + 4), static_cast<uint32_t>(block.size())) == kDirentTailSize &&
         le8(block, t + 6) == 0 && le8(block, t + 7) == kTailFileType;
}

Result<std::vector<DirentView>> parse_dir_block(Bytes block, const DirBlockFormat& format) {
  const uint32_t block_size = format.block_size;
  if (block_size < kMinRecLen || block.size() != block_size)
    return Error(kErrCorrupted, fmt::format("directory block: {} bytes where a block of {} was expected",
                                            block.size(), block_size));
  uint32_t end = block_size;
  if (format.has_tail) {
    if (!has_dir_block_tail(block))
      return Error(kErrCorrupted, "directory block: checksum tail missing or malformed");
    end -= kDirentTailSize;
  }
  std::vector<DirentView> entries;
  // Room for a block of short names at once: growing the vector entry by
  // entry was most of a lookup's allocations in a directory of small files.
  entries.reserve(std::min<uint32_t>(block_size / 32, 128));
  uint32_t off = 0;
  while (off < end) {
    if (end - off < kDirentHeaderSize) return corrupt(off, fmt::format("only {} bytes left for a header", end - off));
    DirentView d;
    d.offset = off;
    d.inode = le32(block, off);
    d.rec_len = decode_rec_len(le16(block, off + 4), block_size);
    const size_t name_len = format.filetype ? le8(block, off + 6) : le16(block, off + 6);
    d.file_type = format.filetype ? le8(block, off + 7) : 0;
    if (d.rec_len < kMinRecLen) return corrupt(off, fmt::format("rec_len {} is smaller than {}", d.rec_len, kMinRecLen));
    if (d.rec_len % 4 != 0) return corrupt(off, fmt::format("rec_len {} is not a multiple of 4", d.rec_len));
    if (name_len > kNameMax) return corrupt(off, fmt::format("name_len {} exceeds {}", name_len, kNameMax));
    if (d.rec_len < dirent_size(name_len))
      return corrupt(off, fmt::format("rec_len {} is too small for name_len {}", d.rec_len, name_len));
    if (d.rec_len > end - off)
      return corrupt(off, fmt::format("rec_len {} runs past the end of the entries at {}", d.rec_len, end));
    // A gap smaller than the smallest entry cannot be reached or reused.
    if (end - off - d.rec_len != 0 && end - off - d.rec_len < kMinRecLen)
      return corrupt(off, fmt::format("rec_len {} leaves {} bytes, too few for another entry", d.rec_len,
                                      end - off - d.rec_len));
    if (d.inode != 0 && name_len == 0) return corrupt(off, fmt::format("inode {} has an empty name", d.inode));
    d.name = std::string_view(reinterpret_cast<const char*>(block.data()) + off + kDirentHeaderSize, name_len);
    entries.push_back(d);
    off += d.rec_len;
  }
  return entries;
}

Status verify_dir_block_checksum(uint32_t inode_seed, Bytes block) {
  if (!has_dir_block_tail(block))
    return Error(kErrCorrupted, "directory block: no checksum tail (e2fsck -D makes room for one)");
  const size_t t = block.size() - kDirentTailSize;
  uint32_t stored = le32(block, t + 8);
  uint32_t computed = crc32c(inode_seed, block.first(t));
  if (stored != computed)
    return Error(kErrBadChecksum, fmt::format("directory block: checksum {:#010x} does not match computed {:#010x}",
                                              stored, computed));
  return {};
}

void init_dir_block_tail(MutableBytes block) {
  if (block.size() < kDirentTailSize) return;
  const size_t t = block.size() - kDirentTailSize;
  put_le32(block, t, 0);
  put_le16(block, t + 4, encode_rec_len(kDirentTailSize, static_cast<uint32_t>(block.size())));
  put_le8(block, t + 6, 0);
  put_le8(block, t + 7, kTailFileType);
  put_le32(block, t + 8, 0);
}

void set_dir_block_checksum(uint32_t inode_seed, MutableBytes block) {
  // Like the kernel, never carve a tail out of live entries: no tail, no checksum.
  if (!has_dir_block_tail(block)) return;
  const size_t t = block.size() - kDirentTailSize;
  put_le32(block, t + 8, crc32c(inode_seed, Bytes(block).first(t)));
}

}  // namespace uext::disk
