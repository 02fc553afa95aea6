// libFuzzer target: small patches to the metadata of valid images.
//
// Why a second target: image_fuzzer mutates whole images, and a valid ext3
// or ext4 image with a journal is a megabyte or more, mostly zeros and file
// data. libFuzzer's mutations then land mostly where nothing reads. Here the
// valid images stay fixed (loaded once) and the input only says which bytes
// of their metadata to change, so every mutation hits a superblock, group
// descriptor, bitmap, inode, directory, extent or xattr block, and inputs
// stay a few hundred bytes long.
//
// Seed images: UEXT_FUZZ_SEEDS=img1:img2:... (scripts/fuzz.sh makes them
// with mke2fs). "Metadata" is approximated as every 1 KiB chunk of a seed
// that is not all zeros: the seeds hold only small files, so that is the
// superblock, descriptors, bitmaps, used inode-table chunks, directory,
// extent, xattr blocks, the journal superblock, and a few small file blocks.
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
// `path`, which turns a crash found here into a whole-image reproducer for
// image_fuzzer (scripts/fuzz.sh does that for every crash).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <vector>

#include "walk.h"

namespace {

constexpr size_t kChunk = 1024;

struct Seed {
  std::string path;
  std::vector<std::byte> image;
  std::vector<uint32_t> chunks;  // indexes of non-zero 1 KiB chunks
};

std::vector<Seed>& seeds() {
  static std::vector<Seed> s;
  return s;
}

bool load_seed(const std::string& path) {
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

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* env = std::getenv("UEXT_FUZZ_SEEDS");
  if (env == nullptr || *env == '\0') {
    std::fprintf(stderr, "metadata_fuzzer: set UEXT_FUZZ_SEEDS=img1:img2:... (see scripts/fuzz.sh)\n");
    std::exit(2);
  }
  std::string list = env;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(':', start);
    if (end == std::string::npos) end = list.size();
    std::string path = list.substr(start, end - start);
    if (!path.empty() && !load_seed(path)) {
      std::fprintf(stderr, "metadata_fuzzer: cannot use seed image %s\n", path.c_str());
      std::exit(2);
    }
    start = end + 1;
  }
  if (seeds().empty()) {
    std::fprintf(stderr, "metadata_fuzzer: no seed images in UEXT_FUZZ_SEEDS\n");
    std::exit(2);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool verify = (data[0] & 1) != 0;
  const Seed& seed = seeds()[(data[0] >> 1) % seeds().size()];

  // Reused between runs: a fresh 2 MiB allocation per input costs page faults.
  static std::vector<std::byte> image;
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
    std::ofstream f(out, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(image.data()), static_cast<std::streamsize>(image.size()));
    // Keep the option byte meaning the same for image_fuzzer: its bit 0 is
    // verify_checksums too, and byte 0 of the image is in the boot block.
    f.seekp(0);
    const char flag = static_cast<char>((std::to_integer<uint8_t>(image[0]) & ~1) | (verify ? 1 : 0));
    f.write(&flag, 1);
  }

  uext_fuzz::open_and_walk(image, verify);
  return 0;
}
