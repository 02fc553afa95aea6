#include "disk/extent.h"

#include <algorithm>
#include <string>

#include <fmt/format.h>

#include "disk/checksum.h"

namespace uext::disk {
namespace {

constexpr size_t kHeaderSize = 12;
constexpr size_t kEntrySize = 12;
constexpr size_t kTailSize = 4;

Error corrupt(std::string message) { return Error(kErrCorrupted, "extent node: " + std::move(message)); }

ExtentHeader read_header(Bytes raw) {
  ExtentHeader h;
  h.eh_magic = le16(raw, 0);
  h.eh_entries = le16(raw, 2);
  h.eh_max = le16(raw, 4);
  h.eh_depth = le16(raw, 6);
  h.eh_generation = le32(raw, 8);
  return h;
}

Status check_header(const ExtentHeader& h, size_t raw_size, int expected_depth) {
  if (h.eh_magic != kExtentMagic) return corrupt(fmt::format("bad magic {:#06x}", h.eh_magic));
  if (h.eh_depth > kExtentMaxDepth)
    return corrupt(fmt::format("depth {} exceeds the maximum {}", h.eh_depth, kExtentMaxDepth));
  if (expected_depth >= 0 && h.eh_depth != expected_depth)
    return corrupt(fmt::format("depth {} where {} was expected", h.eh_depth, expected_depth));
  if (h.eh_max == 0) return corrupt("eh_max is 0");
  if (kHeaderSize + kEntrySize * h.eh_max > raw_size)
    return corrupt(fmt::format("eh_max {} does not fit in {} bytes", h.eh_max, raw_size));
  if (h.eh_entries > h.eh_max)
    return corrupt(fmt::format("eh_entries {} exceeds eh_max {}", h.eh_entries, h.eh_max));
  // An index node with no children points nowhere; the kernel refuses it too.
  if (h.eh_depth > 0 && h.eh_entries == 0) return corrupt("index node has no entries");
  return {};
}

// blocks_count == 0 means the caller has no bound to offer.
bool physical_in_range(uint64_t start, uint64_t len, const ExtentLimits& limits) {
  if (start < limits.first_data_block) return false;
  if (limits.blocks_count == 0) return true;
  return start < limits.blocks_count && len <= limits.blocks_count - start;
}

Result<Extent> read_extent(Bytes raw, size_t i, const ExtentLimits& limits) {
  size_t off = kHeaderSize + kEntrySize * i;
  Extent e;
  e.logical = le32(raw, off);
  uint16_t len = le16(raw, off + 4);
  e.physical = (static_cast<uint64_t>(le16(raw, off + 6)) << 32) | le32(raw, off + 8);
  e.uninit = len > kExtentInitMaxLen;
  e.length = static_cast<uint16_t>(e.uninit ? len - kExtentInitMaxLen : len);
  if (e.length == 0) return corrupt(fmt::format("extent {} has length 0", i));
  if (static_cast<uint64_t>(e.logical) + e.length - 1 > UINT32_MAX)
    return corrupt(fmt::format("extent {} (logical {}, {} blocks) runs past the last logical block", i,
                               e.logical, e.length));
  if (!physical_in_range(e.physical, e.length, limits))
    return corrupt(fmt::format("extent {} maps blocks {}..{} outside the filesystem", i, e.physical,
                               e.physical + e.length - 1));
  return e;
}

Result<ExtentIndex> read_index(Bytes raw, size_t i, const ExtentLimits& limits) {
  size_t off = kHeaderSize + kEntrySize * i;
  ExtentIndex x;
  x.logical = le32(raw, off);
  x.leaf = (static_cast<uint64_t>(le16(raw, off + 8)) << 32) | le32(raw, off + 4);
  if (!physical_in_range(x.leaf, 1, limits))
    return corrupt(fmt::format("index {} points at block {} outside the filesystem", i, x.leaf));
  return x;
}

}  // namespace

Result<ExtentNode> decode_extent_node(Bytes raw, int expected_depth, const ExtentLimits& limits) {
  if (raw.size() < kHeaderSize) return corrupt(fmt::format("{} bytes is too small for a header", raw.size()));
  ExtentNode node;
  node.header = read_header(raw);
  UEXT_TRY(check_header(node.header, raw.size(), expected_depth));
  const size_t n = node.header.eh_entries;
  if (node.header.eh_depth == 0) {
    node.extents.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      UEXT_ASSIGN_OR_RETURN(Extent e, read_extent(raw, i, limits));
      if (i > 0) {
        const Extent& prev = node.extents.back();
        uint64_t prev_end = static_cast<uint64_t>(prev.logical) + prev.length;
        if (e.logical < prev_end)
          return corrupt(fmt::format("extent {} (logical {}) overlaps or precedes extent {} (ending at {})", i,
                                     e.logical, i - 1, prev_end - 1));
      }
      node.extents.push_back(e);
    }
  } else {
    node.indexes.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      UEXT_ASSIGN_OR_RETURN(ExtentIndex x, read_index(raw, i, limits));
      if (i > 0 && x.logical <= node.indexes.back().logical)
        return corrupt(fmt::format("index {} (logical {}) is not above index {} (logical {})", i, x.logical, i - 1,
                                   node.indexes.back().logical));
      node.indexes.push_back(x);
    }
  }
  return node;
}

void encode_extent_node(const ExtentNode& node, MutableBytes raw) {
  const ExtentHeader& h = node.header;
  const bool leaf = h.eh_depth == 0;
  const size_t n = leaf ? node.extents.size() : node.indexes.size();
  put_le16(raw, 0, h.eh_magic);
  put_le16(raw, 2, static_cast<uint16_t>(n));
  put_le16(raw, 4, h.eh_max);
  put_le16(raw, 6, h.eh_depth);
  put_le32(raw, 8, h.eh_generation);
  for (size_t i = 0; i < n; ++i) {
    size_t off = kHeaderSize + kEntrySize * i;
    if (leaf) {
      const Extent& e = node.extents[i];
      put_le32(raw, off, e.logical);
      put_le16(raw, off + 4, static_cast<uint16_t>(e.uninit ? e.length + kExtentInitMaxLen : e.length));
      put_le16(raw, off + 6, static_cast<uint16_t>(e.physical >> 32));
      put_le32(raw, off + 8, static_cast<uint32_t>(e.physical));
    } else {
      const ExtentIndex& x = node.indexes[i];
      put_le32(raw, off, x.logical);
      put_le32(raw, off + 4, static_cast<uint32_t>(x.leaf));
      put_le16(raw, off + 8, static_cast<uint16_t>(x.leaf >> 32));
      put_le16(raw, off + 10, 0);
    }
  }
}

namespace {

// Offset of the checksum tail, or an error when the block cannot hold it.
Result<size_t> tail_offset(Bytes raw) {
  if (raw.size() < kHeaderSize) return corrupt(fmt::format("{} bytes is too small for a header", raw.size()));
  size_t off = kHeaderSize + kEntrySize * le16(raw, 4);
  if (off + kTailSize > raw.size())
    return corrupt(fmt::format("eh_max {} leaves no room for the checksum in {} bytes", le16(raw, 4), raw.size()));
  return off;
}

}  // namespace

uint32_t extent_block_checksum(uint32_t inode_seed, Bytes raw) {
  if (raw.size() < kHeaderSize) return crc32c(inode_seed, raw);
  size_t covered = std::min(raw.size(), kHeaderSize + kEntrySize * le16(raw, 4));
  return crc32c(inode_seed, raw.first(covered));
}

Status verify_extent_block_checksum(uint32_t inode_seed, Bytes raw) {
  UEXT_ASSIGN_OR_RETURN(size_t off, tail_offset(raw));
  uint32_t stored = le32(raw, off);
  uint32_t computed = crc32c(inode_seed, raw.first(off));
  if (stored != computed)
    return Error(kErrBadChecksum,
                 fmt::format("extent block: checksum {:#010x} does not match computed {:#010x}", stored, computed));
  return {};
}

void set_extent_block_checksum(uint32_t inode_seed, MutableBytes raw) {
  auto off = tail_offset(raw);
  if (!off.ok()) return;  // no room: nothing sensible to write
  put_le32(raw, *off, crc32c(inode_seed, Bytes(raw).first(*off)));
}

}  // namespace uext::disk
