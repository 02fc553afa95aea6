// Little-endian field access on raw on-disk bytes. Every ext4 and jbd2
// structure is decoded through these (jbd2's big-endian fields use the be*
// variants), so no code ever casts a buffer to a struct.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace uext::disk {

using Bytes = std::span<const std::byte>;
using MutableBytes = std::span<std::byte>;

inline uint8_t le8(Bytes b, size_t off) { return static_cast<uint8_t>(b[off]); }
inline uint16_t le16(Bytes b, size_t off) {
  return static_cast<uint16_t>(le8(b, off) | (le8(b, off + 1) << 8));
}
inline uint32_t le32(Bytes b, size_t off) {
  return static_cast<uint32_t>(le16(b, off)) | (static_cast<uint32_t>(le16(b, off + 2)) << 16);
}
inline uint64_t le64(Bytes b, size_t off) {
  return static_cast<uint64_t>(le32(b, off)) | (static_cast<uint64_t>(le32(b, off + 4)) << 32);
}
inline uint32_t be32(Bytes b, size_t off) {
  return (static_cast<uint32_t>(le8(b, off)) << 24) | (static_cast<uint32_t>(le8(b, off + 1)) << 16) |
         (static_cast<uint32_t>(le8(b, off + 2)) << 8) | le8(b, off + 3);
}
inline uint64_t be64(Bytes b, size_t off) {
  return (static_cast<uint64_t>(be32(b, off)) << 32) | be32(b, off + 4);
}
inline uint16_t be16(Bytes b, size_t off) {
  return static_cast<uint16_t>((le8(b, off) << 8) | le8(b, off + 1));
}

inline void put_le8(MutableBytes b, size_t off, uint8_t v) { b[off] = static_cast<std::byte>(v); }
inline void put_le16(MutableBytes b, size_t off, uint16_t v) {
  put_le8(b, off, static_cast<uint8_t>(v));
  put_le8(b, off + 1, static_cast<uint8_t>(v >> 8));
}
inline void put_le32(MutableBytes b, size_t off, uint32_t v) {
  put_le16(b, off, static_cast<uint16_t>(v));
  put_le16(b, off + 2, static_cast<uint16_t>(v >> 16));
}
inline void put_le64(MutableBytes b, size_t off, uint64_t v) {
  put_le32(b, off, static_cast<uint32_t>(v));
  put_le32(b, off + 4, static_cast<uint32_t>(v >> 32));
}
inline void put_be16(MutableBytes b, size_t off, uint16_t v) {
  put_le8(b, off, static_cast<uint8_t>(v >> 8));
  put_le8(b, off + 1, static_cast<uint8_t>(v));
}
inline void put_be32(MutableBytes b, size_t off, uint32_t v) {
  put_be16(b, off, static_cast<uint16_t>(v >> 16));
  put_be16(b, off + 2, static_cast<uint16_t>(v));
}
inline void put_be64(MutableBytes b, size_t off, uint64_t v) {
  put_be32(b, off, static_cast<uint32_t>(v >> 32));
  put_be32(b, off + 4, static_cast<uint32_t>(v));
}

inline Bytes as_bytes(const void* p, size_t n) { return {static_cast<const std::byte*>(p), n}; }

}  // namespace uext::disk
