// libFuzzer target: the input is a whole ext2/3/4 image.
//
// The image is opened read-only from memory and its tree walked with a
// bounded amount of work (fuzz/walk.h): stat, readdir (with cookies),
// lookup, read of several ranges, readlink, listxattr/getxattr, extents.
//
// Input layout: the bytes are the image itself. Byte 0 lies in the boot
// block, which ext2/3/4 never reads, so it doubles as the option byte:
// bit 0 set = verify_checksums on. Seeds made by mke2fs have it clear.
//
// Padding: an input shorter than the size its superblock claims
// (s_blocks_count << (10 + s_log_block_size)) is padded with zeros up to that
// size, capped at kMaxImage; anything shorter than 64 KiB is padded to 64 KiB.
// So libFuzzer can work on a short prefix of a seed (the metadata lives in
// the first blocks) and the library still sees a device of the right size.
//
// Run: scripts/fuzz.sh, or by hand
//   build-fuzz/image_fuzzer -max_len=1048576 CORPUS_DIR
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "disk/partition_table.h"
#include "walk.h"

namespace {

constexpr size_t kMinImage = 64 << 10;
constexpr size_t kMaxImage = 4 << 20;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const std::byte> input(reinterpret_cast<const std::byte*>(data), size);
  const bool verify = size > 0 && (data[0] & 1) != 0;

  size_t want = kMinImage;
  const uint32_t blocks = uext_fuzz::le32_at(input, 1024 + 4);
  const uint32_t log_block = uext_fuzz::le32_at(input, 1024 + 24);
  if (log_block <= 6) {
    const uint64_t claimed = uint64_t{blocks} << (10 + log_block);
    if (claimed > want) want = static_cast<size_t>(std::min<uint64_t>(claimed, kMaxImage));
  }
  std::vector<std::byte> image(input.begin(), input.end());
  if (image.size() < want) image.resize(want);

  uext_fuzz::open_and_walk(image, verify);

  // The partition tables a refused open reads to name the partitions
  // (src/disk/partition_table.h): the same bytes as a disk's first sectors.
  constexpr size_t kSector = uext::disk::kSectorSize;
  const std::span<const std::byte> all(image);
  uint64_t gpt_lba = 0;
  (void)uext::disk::decode_mbr(all.first(kSector), &gpt_lba);
  uext::disk::GptHeader header;
  if (gpt_lba != 0 && gpt_lba < all.size() / kSector - 1 &&
      uext::disk::decode_gpt_header(all.subspan(gpt_lba * kSector, kSector), header) &&
      header.entries_lba < all.size() / kSector) {
    (void)uext::disk::decode_gpt_entries(all.subspan(header.entries_lba * kSector), header);
  }
  return 0;
}
