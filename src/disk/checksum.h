// The checksums ext4 and jbd2 store on disk.
#pragma once

#include <cstdint>

#include "disk/bytes.h"

namespace uext::disk {

// CRC32C (Castagnoli) without pre- or post-inversion, as the kernel's
// crc32c(): callers pass the seed (~0 for the superblock, the filesystem's
// checksum seed elsewhere) and chain calls to cover several pieces.
uint32_t crc32c(uint32_t seed, Bytes data);
inline uint32_t crc32c_le32(uint32_t seed, uint32_t value) {
  std::byte b[4];
  put_le32(b, 0, value);
  return crc32c(seed, b);
}

// CRC16 (polynomial 0x8005, reflected) used by the gdt_csum feature for
// group descriptors on images without metadata_csum.
uint16_t crc16(uint16_t seed, Bytes data);

// The big-endian CRC32 jbd2 uses for v1 journal checksums (JBD2_FEATURE_COMPAT_CHECKSUM).
uint32_t crc32_be(uint32_t seed, Bytes data);

}  // namespace uext::disk
