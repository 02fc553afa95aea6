#include "disk/partition_table.h"

#include <fmt/format.h>

namespace uext::disk {
namespace {

constexpr size_t kMbrEntries = 446;  // four entries of 16 bytes
constexpr uint8_t kProtectiveGpt = 0xEE;

// A GUID as text: the first three fields little-endian, the rest as stored.
std::string guid_text(Bytes g) {
  return fmt::format("{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}", le32(g, 0), le16(g, 4),
                     le16(g, 6), le8(g, 8), le8(g, 9), le8(g, 10), le8(g, 11), le8(g, 12), le8(g, 13), le8(g, 14),
                     le8(g, 15));
}

}  // namespace

bool has_mbr_signature(Bytes first_sector) {
  return first_sector.size() >= kSectorSize && le8(first_sector, 510) == 0x55 && le8(first_sector, 511) == 0xAA;
}

std::vector<Partition> decode_mbr(Bytes first_sector, uint64_t* gpt_header_lba) {
  std::vector<Partition> out;
  if (gpt_header_lba) *gpt_header_lba = 0;
  if (!has_mbr_signature(first_sector)) return out;
  for (uint32_t i = 0; i < 4; i++) {
    const size_t e = kMbrEntries + i * 16;
    const uint8_t type = le8(first_sector, e + 4);
    const uint32_t start = le32(first_sector, e + 8), sectors = le32(first_sector, e + 12);
    if (type == 0 || sectors == 0) continue;
    if (type == kProtectiveGpt) {
      if (gpt_header_lba) *gpt_header_lba = start;
      continue;
    }
    out.push_back({i + 1, uint64_t{start} * kSectorSize, uint64_t{sectors} * kSectorSize, fmt::format("{:#04x}", type)});
  }
  return out;
}

bool decode_gpt_header(Bytes header_sector, GptHeader& out) {
  if (header_sector.size() < 92) return false;
  static constexpr char kSignature[] = "EFI PART";
  for (int i = 0; i < 8; i++) {
    if (le8(header_sector, i) != static_cast<uint8_t>(kSignature[i])) return false;
  }
  out.entries_lba = le64(header_sector, 72);
  out.entry_count = le32(header_sector, 80);
  out.entry_size = le32(header_sector, 84);
  // 128 bytes in every GPT written; anything smaller cannot hold an entry.
  return out.entry_size >= 128 && out.entry_count > 0;
}

std::vector<Partition> decode_gpt_entries(Bytes entries, const GptHeader& header) {
  std::vector<Partition> out;
  if (header.entry_size < 128) return out;
  for (uint32_t i = 0; i < header.entry_count; i++) {
    const size_t off = size_t{i} * header.entry_size;
    if (off + 128 > entries.size()) break;
    Bytes e = entries.subspan(off, 128);
    bool used = false;
    for (int b = 0; b < 16; b++) used |= le8(e, b) != 0;  // a zero type GUID: unused
    const uint64_t first = le64(e, 32), last = le64(e, 40);
    if (!used || last < first) continue;
    out.push_back({i + 1, first * kSectorSize, (last - first + 1) * kSectorSize, guid_text(e.first(16))});
  }
  return out;
}

}  // namespace uext::disk
