// Directory name hashes for htree directories (fs/ext4/hash.c semantics).
#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "disk/htree.h"

namespace uext::disk {
namespace {

// The largest major hash the kernel's 32-bit htree code reserves as its
// end-of-directory marker (EXT4_HTREE_EOF_32BIT).
constexpr uint32_t kHtreeEof32 = 0x7fffffff;

constexpr uint32_t rotl(uint32_t x, int s) { return (x << s) | (x >> (32 - s)); }

// Name bytes widen either as signed char (the historic behaviour of x86
// kernels, kept as versions 0..2) or as unsigned char (versions 3..5).
int name_byte(std::string_view name, size_t i, bool is_unsigned) {
  auto b = static_cast<unsigned char>(name[i]);
  return is_unsigned ? static_cast<int>(b) : static_cast<int>(static_cast<signed char>(b));
}

uint32_t legacy_hash(std::string_view name, bool is_unsigned) {
  uint32_t h0 = 0x12a3fe2d, h1 = 0x37abe8f9;
  for (size_t i = 0; i < name.size(); ++i) {
    uint32_t c = static_cast<uint32_t>(name_byte(name, i, is_unsigned));
    uint32_t h = h1 + (h0 ^ (c * 7152373u));
    if (h & 0x80000000u) h -= 0x7fffffffu;
    h1 = h0;
    h0 = h;
  }
  return h0 << 1;
}

// Packs up to 4*words bytes of `chunk` big-end-first into `words` words,
// padding with a pattern built from the length of the rest of the name.
void pack_words(std::string_view rest, uint32_t* out, size_t words, bool is_unsigned) {
  uint32_t pad = static_cast<uint32_t>(rest.size()) | (static_cast<uint32_t>(rest.size()) << 8);
  pad |= pad << 16;
  const size_t n = std::min(rest.size(), words * 4);
  uint32_t val = pad;
  size_t w = 0;
  for (size_t i = 0; i < n; ++i) {
    val = static_cast<uint32_t>(name_byte(rest, i, is_unsigned)) + (val << 8);
    if (i % 4 == 3) {
      out[w++] = val;
      val = pad;
    }
  }
  if (w < words) out[w++] = val;
  while (w < words) out[w++] = pad;
}

void half_md4_transform(uint32_t buf[4], const uint32_t in[8]) {
  uint32_t a = buf[0], b = buf[1], c = buf[2], d = buf[3];
  auto f = [](uint32_t x, uint32_t y, uint32_t z) { return z ^ (x & (y ^ z)); };
  auto g = [](uint32_t x, uint32_t y, uint32_t z) { return (x & y) + ((x ^ y) & z); };
  auto h = [](uint32_t x, uint32_t y, uint32_t z) { return x ^ y ^ z; };
  constexpr uint32_t k2 = 0x5A827999, k3 = 0x6ED9EBA1;
  auto step = [](auto fn, uint32_t& w, uint32_t x, uint32_t y, uint32_t z, uint32_t m, int s) {
    w = rotl(w + fn(x, y, z) + m, s);
  };
  // Round 1: words in order, shifts 3 7 11 19.
  for (int i = 0; i < 8; i += 4) {
    step(f, a, b, c, d, in[i + 0], 3);
    step(f, d, a, b, c, in[i + 1], 7);
    step(f, c, d, a, b, in[i + 2], 11);
    step(f, b, c, d, a, in[i + 3], 19);
  }
  // Round 2: odd words then even words, shifts 3 5 9 13.
  static constexpr int r2[8] = {1, 3, 5, 7, 0, 2, 4, 6};
  for (int i = 0; i < 8; i += 4) {
    step(g, a, b, c, d, in[r2[i + 0]] + k2, 3);
    step(g, d, a, b, c, in[r2[i + 1]] + k2, 5);
    step(g, c, d, a, b, in[r2[i + 2]] + k2, 9);
    step(g, b, c, d, a, in[r2[i + 3]] + k2, 13);
  }
  // Round 3, shifts 3 9 11 15.
  static constexpr int r3[8] = {3, 7, 2, 6, 1, 5, 0, 4};
  for (int i = 0; i < 8; i += 4) {
    step(h, a, b, c, d, in[r3[i + 0]] + k3, 3);
    step(h, d, a, b, c, in[r3[i + 1]] + k3, 9);
    step(h, c, d, a, b, in[r3[i + 2]] + k3, 11);
    step(h, b, c, d, a, in[r3[i + 3]] + k3, 15);
  }
  buf[0] += a;
  buf[1] += b;
  buf[2] += c;
  buf[3] += d;
}

void tea_transform(uint32_t buf[4], const uint32_t in[4]) {
  constexpr uint32_t kDelta = 0x9E3779B9;
  uint32_t sum = 0, b0 = buf[0], b1 = buf[1];
  for (int round = 0; round < 16; ++round) {
    sum += kDelta;
    b0 += ((b1 << 4) + in[0]) ^ (b1 + sum) ^ ((b1 >> 5) + in[1]);
    b1 += ((b0 << 4) + in[2]) ^ (b0 + sum) ^ ((b0 >> 5) + in[3]);
  }
  buf[0] += b0;
  buf[1] += b1;
}

}  // namespace

Result<DxHash> dx_hash(std::string_view name, uint8_t version, const uint32_t seed[4]) {
  // MD4's initial state doubles as the default seed.
  uint32_t buf[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
  if (seed && (seed[0] | seed[1] | seed[2] | seed[3])) std::memcpy(buf, seed, sizeof buf);

  const bool is_unsigned = version >= dx_hash_version::kLegacyUnsigned && version <= dx_hash_version::kTeaUnsigned;
  DxHash out;
  switch (version) {
    case dx_hash_version::kLegacy:
    case dx_hash_version::kLegacyUnsigned:
      out.major = legacy_hash(name, is_unsigned);
      break;
    case dx_hash_version::kHalfMd4:
    case dx_hash_version::kHalfMd4Unsigned: {
      uint32_t in[8];
      for (size_t off = 0; off < name.size(); off += 32) {
        pack_words(name.substr(off), in, 8, is_unsigned);
        half_md4_transform(buf, in);
      }
      out.major = buf[1];
      out.minor = buf[2];
      break;
    }
    case dx_hash_version::kTea:
    case dx_hash_version::kTeaUnsigned: {
      uint32_t in[4];
      for (size_t off = 0; off < name.size(); off += 16) {
        pack_words(name.substr(off), in, 4, is_unsigned);
        tea_transform(buf, in);
      }
      out.major = buf[0];
      out.minor = buf[1];
      break;
    }
    case dx_hash_version::kSiphash:
      return Error(ENOTSUP, "directory hash: siphash (casefolded encrypted directories) is not supported");
    default:
      return Error(kErrCorrupted, fmt::format("directory hash: unknown hash version {}", version));
  }
  // The low bit marks hash-collision continuations in index entries, and the
  // top value is the readdir end marker, so real names never hash to either.
  out.major &= ~1u;
  if (out.major == (kHtreeEof32 << 1)) out.major = (kHtreeEof32 - 1) << 1;
  return out;
}

}  // namespace uext::disk
