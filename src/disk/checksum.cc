#include "disk/checksum.h"

#include <isa-l/crc.h>

#include <array>

namespace uext::disk {

uint32_t crc32c(uint32_t seed, Bytes data) {
  // isa-l's crc32_iscsi applies no inversion of its own, so it chains
  // exactly like the kernel's crc32c(seed, buf, len).
  // Its length is an int, so feed huge buffers in pieces.
  auto* p = reinterpret_cast<unsigned char*>(const_cast<std::byte*>(data.data()));
  size_t left = data.size();
  uint32_t crc = seed;
  while (left > 0) {
    size_t n = left < (1u << 30) ? left : (1u << 30);
    crc = crc32_iscsi(p, static_cast<int>(n), crc);
    p += n;
    left -= n;
  }
  return crc;
}

namespace {

// Reflected CRC16 table for polynomial 0x8005 (0xA001 when bit-reversed).
constexpr std::array<uint16_t, 256> make_crc16_table() {
  std::array<uint16_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint16_t c = static_cast<uint16_t>(i);
    for (int bit = 0; bit < 8; ++bit) c = (c & 1) ? static_cast<uint16_t>((c >> 1) ^ 0xA001) : (c >> 1);
    table[i] = c;
  }
  return table;
}
constexpr auto kCrc16Table = make_crc16_table();

// MSB-first CRC32 table for polynomial 0x04C11DB7.
constexpr std::array<uint32_t, 256> make_crc32_be_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i << 24;
    for (int bit = 0; bit < 8; ++bit) c = (c & 0x80000000u) ? (c << 1) ^ 0x04C11DB7u : (c << 1);
    table[i] = c;
  }
  return table;
}
constexpr auto kCrc32BeTable = make_crc32_be_table();

}  // namespace

uint16_t crc16(uint16_t seed, Bytes data) {
  uint16_t crc = seed;
  for (std::byte b : data) {
    crc = static_cast<uint16_t>((crc >> 8) ^ kCrc16Table[(crc ^ static_cast<uint8_t>(b)) & 0xFF]);
  }
  return crc;
}

uint32_t crc32_be(uint32_t seed, Bytes data) {
  uint32_t crc = seed;
  for (std::byte b : data) {
    crc = (crc << 8) ^ kCrc32BeTable[((crc >> 24) ^ static_cast<uint8_t>(b)) & 0xFF];
  }
  return crc;
}

}  // namespace uext::disk
