// Partition tables at the start of a whole-disk image: the MBR's four
// primary entries and GPT's entry array. uext does not mount partitions by
// number; it reads these only to tell a user who pointed it at a disk image
// where the filesystems start (the offset= to give). Decoding only; no I/O.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "disk/bytes.h"

namespace uext::disk {

inline constexpr uint32_t kSectorSize = 512;

struct Partition {
  uint32_t number = 0;  // 1-based, as fdisk and the kernel name them
  uint64_t offset = 0;  // bytes from the start of the image
  uint64_t size = 0;    // bytes
  std::string type;     // "0x83" for MBR; the type GUID for GPT
};

// Whether sector 0 (`first_sector`, at least 512 bytes) ends with the MBR
// signature 0x55 0xAA.
bool has_mbr_signature(Bytes first_sector);

// The MBR's used primary entries. When one is GPT's protective entry
// (type 0xEE), `gpt_header_lba` is set to where the GPT header lies (1).
std::vector<Partition> decode_mbr(Bytes first_sector, uint64_t* gpt_header_lba);

// GPT: the header sector (checks "EFI PART"; false when it is not one) and
// where its entry array lies.
struct GptHeader {
  uint64_t entries_lba = 0;
  uint32_t entry_count = 0;
  uint32_t entry_size = 0;
};
bool decode_gpt_header(Bytes header_sector, GptHeader& out);
// The used entries of `entries` (entry_count entries of entry_size bytes,
// as many as the buffer holds).
std::vector<Partition> decode_gpt_entries(Bytes entries, const GptHeader& header);

}  // namespace uext::disk
