#include "disk/htree.h"

#include <fmt/format.h>

#include "disk/checksum.h"
#include "disk/dirent.h"

namespace uext::disk {
namespace {

constexpr size_t kDxEntrySize = 8;
constexpr size_t kDxTailSize = 8;
constexpr size_t kRootInfoOffset = 24;  // after the "." (12) and ".." (12) headers
constexpr uint8_t kRootInfoLength = 8;
constexpr size_t kRootCountOffset = kRootInfoOffset + kRootInfoLength;
constexpr size_t kNodeCountOffset = 8;  // after the empty fake dirent
// Index entries keep their top four bits for future flags; the kernel masks them.
constexpr uint32_t kDxBlockMask = 0x0fffffff;
constexpr uint8_t kHashFlagIncompat = 1;

Error corrupt(const char* what, std::string problem) {
  return Error(kErrCorrupted, fmt::format("{}: {}", what, problem));
}

uint32_t expected_limit(const DxFormat& format, size_t count_offset) {
  size_t space = format.block_size - count_offset - (format.has_tail ? kDxTailSize : 0);
  return static_cast<uint32_t>(space / kDxEntrySize);
}

// Reads count/limit and the entries that follow them at `count_offset`.
Result<std::vector<DxEntry>> read_entries(const char* what, Bytes block, size_t count_offset, uint32_t want_limit,
                                          uint16_t* limit_out) {
  const uint16_t limit = le16(block, count_offset);
  const uint16_t count = le16(block, count_offset + 2);
  *limit_out = limit;
  if (limit != want_limit) return corrupt(what, fmt::format("limit {} where {} was expected", limit, want_limit));
  if (count == 0) return corrupt(what, "count is 0");
  if (count > limit) return corrupt(what, fmt::format("count {} exceeds limit {}", count, limit));
  std::vector<DxEntry> entries(count);
  for (size_t i = 0; i < count; ++i) {
    size_t off = count_offset + kDxEntrySize * i;
    entries[i].hash = i == 0 ? 0 : le32(block, off);
    entries[i].block = le32(block, off + 4) & kDxBlockMask;
    // Equal neighbours are legal: long runs of colliding names split that way.
    if (i > 1 && entries[i].hash < entries[i - 1].hash)
      return corrupt(what, fmt::format("entry {} hash {:#010x} is below entry {} hash {:#010x}", i, entries[i].hash,
                                       i - 1, entries[i - 1].hash));
  }
  return entries;
}

Status check_block_size(const char* what, Bytes block, const DxFormat& format) {
  if (format.block_size < 1024 || block.size() != format.block_size)
    return corrupt(what, fmt::format("{} bytes where a block of {} was expected", block.size(), format.block_size));
  return {};
}

Status check_fake_dirents(Bytes block, uint32_t block_size) {
  const char* what = "htree root";
  if (decode_rec_len(le16(block, 4), block_size) != 12 || le8(block, 6) != 1 || le8(block, 8) != '.')
    return corrupt(what, "the \".\" entry is malformed");
  if (decode_rec_len(le16(block, 16), block_size) != block_size - 12 || le8(block, 18) != 2 || le8(block, 20) != '.' ||
      le8(block, 21) != '.')
    return corrupt(what, "the \"..\" entry is malformed or does not span the block");
  return {};
}

}  // namespace

Result<DxRoot> parse_dx_root(Bytes block, const DxFormat& format) {
  const char* what = "htree root";
  UEXT_TRY(check_block_size(what, block, format));
  UEXT_TRY(check_fake_dirents(block, format.block_size));
  const size_t info = kRootInfoOffset;
  if (le32(block, info) != 0) return corrupt(what, "reserved_zero is not zero");
  DxRoot root;
  root.hash_version = le8(block, info + 4);
  const uint8_t info_length = le8(block, info + 5);
  root.indirect_levels = le8(block, info + 6);
  const uint8_t flags = le8(block, info + 7);
  if (info_length != kRootInfoLength) return corrupt(what, fmt::format("info_length {} is not 8", info_length));
  // The on-disk version is always a signed one (or siphash); the superblock's
  // unsigned-hash flag selects versions 3..5 at lookup time.
  if (root.hash_version > dx_hash_version::kTea && root.hash_version != dx_hash_version::kSiphash)
    return corrupt(what, fmt::format("unknown hash version {}", root.hash_version));
  if (flags & kHashFlagIncompat) return corrupt(what, fmt::format("unsupported hash flags {:#04x}", flags));
  const unsigned max_levels = format.largedir ? 3 : 2;
  if (root.indirect_levels >= max_levels)
    return corrupt(what, fmt::format("{} indirect levels, at most {} allowed", root.indirect_levels, max_levels - 1));
  UEXT_ASSIGN_OR_RETURN(root.entries, read_entries(what, block, kRootCountOffset,
                                                   expected_limit(format, kRootCountOffset), &root.limit));
  return root;
}

Result<DxNode> parse_dx_node(Bytes block, const DxFormat& format) {
  const char* what = "htree node";
  UEXT_TRY(check_block_size(what, block, format));
  if (le32(block, 0) != 0 || decode_rec_len(le16(block, 4), format.block_size) != format.block_size)
    return corrupt(what, "the empty entry hiding the index is malformed");
  DxNode node;
  UEXT_ASSIGN_OR_RETURN(node.entries, read_entries(what, block, kNodeCountOffset,
                                                   expected_limit(format, kNodeCountOffset), &node.limit));
  return node;
}

namespace {

struct TailPlace {
  size_t covered = 0;  // bytes of header and live entries
  size_t tail = 0;     // offset of dx_tail
};

Result<TailPlace> locate_tail(Bytes block, bool is_root) {
  const char* what = is_root ? "htree root" : "htree node";
  size_t count_offset = kNodeCountOffset;
  if (is_root) {
    if (block.size() < kRootCountOffset) return corrupt(what, "block too small");
    if (le8(block, kRootInfoOffset + 5) != kRootInfoLength) return corrupt(what, "info_length is not 8");
    count_offset = kRootCountOffset;
  }
  if (block.size() < count_offset + 4) return corrupt(what, "block too small");
  const uint16_t limit = le16(block, count_offset);
  const uint16_t count = le16(block, count_offset + 2);
  TailPlace p;
  p.tail = count_offset + kDxEntrySize * limit;
  if (p.tail + kDxTailSize > block.size())
    return corrupt(what, fmt::format("limit {} leaves no room for the checksum tail", limit));
  if (count > limit) return corrupt(what, fmt::format("count {} exceeds limit {}", count, limit));
  p.covered = count_offset + kDxEntrySize * count;
  return p;
}

uint32_t dx_checksum(uint32_t inode_seed, Bytes block, const TailPlace& p) {
  uint32_t crc = crc32c(inode_seed, block.first(p.covered));
  crc = crc32c(crc, block.subspan(p.tail, 4));  // dt_reserved
  return crc32c_le32(crc, 0);                   // dt_checksum counts as zero
}

}  // namespace

Status verify_dx_checksum(uint32_t inode_seed, Bytes block, bool is_root) {
  UEXT_ASSIGN_OR_RETURN(TailPlace p, locate_tail(block, is_root));
  uint32_t stored = le32(block, p.tail + 4);
  uint32_t computed = dx_checksum(inode_seed, block, p);
  if (stored != computed)
    return Error(kErrBadChecksum, fmt::format("{}: checksum {:#010x} does not match computed {:#010x}",
                                              is_root ? "htree root" : "htree node", stored, computed));
  return {};
}

void set_dx_checksum(uint32_t inode_seed, MutableBytes block, bool is_root) {
  auto p = locate_tail(block, is_root);
  if (!p.ok()) return;
  put_le32(block, p->tail + 4, dx_checksum(inode_seed, block, *p));
}

size_t dx_find_entry(const std::vector<DxEntry>& entries, uint32_t hash) {
  // Binary search over entries[1..]: entry 0 has no stored hash.
  size_t lo = 1, hi = entries.size();
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (entries[mid].hash > hash)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo - 1;
}

}  // namespace uext::disk
