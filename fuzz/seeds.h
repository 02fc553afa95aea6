// Shared by the fuzz targets whose input is a patch list over fixed seed
// images (metadata_fuzzer, write_fuzzer): loading the seeds named by
// UEXT_FUZZ_SEEDS and applying an input's patches to a copy of one.
//
// Why patches: a valid ext3 or ext4 image with a journal is a megabyte or
// more, mostly zeros and file data, and libFuzzer's mutations of a whole
// image land mostly where nothing reads. Here the seeds stay fixed (loaded
// once) and the input only says which bytes of their metadata to change,
// so every mutation hits a superblock, group descriptor, bitmap, inode,
// directory, extent, xattr or journal block, and inputs stay a few hundred
// bytes long. "Metadata" is approximated as every 1 KiB chunk of a seed
// that is not all zeros: the seeds hold only small files.
//
// Input layout:
//   byte 0:        bit 0 = verify_checksums; bits 1..7 pick the seed image
//   then records of 5 bytes:
//     u16 LE chunk selector (modulo the number of non-zero chunks)
//     u16 LE: bits 0..9 byte offset in the chunk, bit 10 = xor instead of set
//     u8  value
// A trailing partial record is ignored.
//
// With UEXT_FUZZ_WRITE_IMAGE=path the patched image is also written to
// `path`, which turns a crash into a whole-image reproducer (image_fuzzer
// replays it read-only; scripts/fuzz.sh writes one for every crash).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <vector>

namespace uext_fuzz {

struct Seed {
  std::string path;
  std::vector<std::byte> image;
  std::vector<uint32_t> chunks;  // indexes of non-zero 1 KiB chunks
};

inline constexpr size_t kChunk = 1024;

// Writes `image` to `path` (reproducers, results to check).
inline void write_image(const char* path, std::span<const std::byte> image) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(image.data()), static_cast<std::streamsize>(image.size()));
}

inline std::vector<Seed>& seeds() {
  static std::vector<Seed> s;
  return s;
}

inline bool load_seed(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  Seed seed;
  seed.path = path;
  std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  seed.image.resize(raw.size());
  std::memcpy(seed.image.data(), raw.data(), raw.size());
  seed.image.resize((seed.image.size() + kChunk - 1) / kChunk * kChunk);
  for (size_t c = 0; c < seed.image.size() / kChunk; ++c) {
    const std::byte* p = seed.image.data() + c * kChunk;
    for (size_t i = 0; i < kChunk; ++i) {
      if (p[i] != std::byte{0}) {
        seed.chunks.push_back(static_cast<uint32_t>(c));
        break;
      }
    }
  }
  if (seed.chunks.empty()) return false;
  seeds().push_back(std::move(seed));
  return true;
}

// Loads UEXT_FUZZ_SEEDS (img1:img2:...) or exits naming what is wrong.
inline void load_seeds_from_env(const char* target) {
  const char* env = std::getenv("UEXT_FUZZ_SEEDS");
  if (env == nullptr || *env == '\0') {
    std::fprintf(stderr, "%s: set UEXT_FUZZ_SEEDS=img1:img2:... (see scripts/fuzz.sh)\n", target);
    std::exit(2);
  }
  std::string list = env;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(':', start);
    if (end == std::string::npos) end = list.size();
    std::string path = list.substr(start, end - start);
    if (!path.empty() && !load_seed(path)) {
      std::fprintf(stderr, "%s: cannot use seed image %s\n", target, path.c_str());
      std::exit(2);
    }
    start = end + 1;
  }
  if (seeds().empty()) {
    std::fprintf(stderr, "%s: no seed images in UEXT_FUZZ_SEEDS\n", target);
    std::exit(2);
  }
}

// The seed an input picks, patched as it says, into `image` (reused between
// runs: a fresh 2 MiB allocation per input costs page faults). Returns
// verify_checksums. `size` must be at least 1.
inline bool patched_image(const uint8_t* data, size_t size, std::vector<std::byte>& image) {
  const bool verify = (data[0] & 1) != 0;
  const Seed& seed = seeds()[(data[0] >> 1) % seeds().size()];
  image.assign(seed.image.begin(), seed.image.end());
  for (size_t i = 1; i + 5 <= size; i += 5) {
    const uint16_t sel = static_cast<uint16_t>(data[i] | data[i + 1] << 8);
    const uint16_t where = static_cast<uint16_t>(data[i + 2] | data[i + 3] << 8);
    const std::byte value{data[i + 4]};
    const size_t off = size_t{seed.chunks[sel % seed.chunks.size()]} * kChunk + (where & 0x3FF);
    if (where & 0x400)
      image[off] ^= value;
    else
      image[off] = value;
  }

  if (const char* out = std::getenv("UEXT_FUZZ_WRITE_IMAGE"); out != nullptr && *out != '\0') {
    // Keep the option byte meaning the same for image_fuzzer: its bit 0 is
    // verify_checksums too, and byte 0 of the image is in the boot block.
    std::vector<std::byte> copy = image;
    copy[0] = (copy[0] & ~std::byte{1}) | std::byte{verify ? uint8_t{1} : uint8_t{0}};
    write_image(out, copy);
  }
  return verify;
}

}  // namespace uext_fuzz
