// libFuzzer target: the input is a tar archive (any dialect or compression
// libarchive reads), unpacked into a fresh image as `uext put --tar` does.
//
// A 4 MiB ext4 image is made once in memory; every input gets a copy, is
// unpacked into its root (over existing entries), and the image closed.
// What is checked is uext's side: names with "..", hard links to what is
// not there, entries over directories, huge offsets and sizes of sparse
// members, odd types and xattrs must end in a refusal, never a crash, a
// leak or undefined behaviour (ASan+UBSan), and the close must succeed
// unless the image filled up.
//
// Run: scripts/fuzz.sh, or by hand
//   build-fuzz/tar_fuzzer -max_len=65536 CORPUS_DIR
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "common.h"
#include "uext/block_device.h"
#include "uext/filesystem.h"
#include "uext/mkfs.h"

namespace {

constexpr uint64_t kImageBytes = 4u << 20;

const std::vector<std::byte>& empty_image() {
  static const std::vector<std::byte> image = [] {
    std::vector<std::byte> bytes(kImageBytes);
    auto dev = uext::make_memory_device_over(bytes);
    uext::MkfsOptions o;
    o.creation_time = 1700000000;
    o.uuid = std::array<uint8_t, 16>{1, 2, 3, 4};
    o.hash_seed = std::array<uint8_t, 16>{5, 6, 7, 8};
    if (!uext::make_filesystem(*dev, o).ok()) std::abort();
    return bytes;
  }();
  return image;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::byte> image = empty_image();
  auto dev = uext::make_memory_device_over(image);
  uext::Options o;
  o.read_only = false;
  o.commit_interval_ms = 0;
  auto fs = uext::Filesystem::open(std::move(dev), o);
  if (!fs.ok()) std::abort();  // a fresh image always opens
  (void)uext::cli::put_archive_bytes(**fs, "fuzz.img", std::span(reinterpret_cast<const std::byte*>(data), size),
                                     "/");
  // Whatever the archive did, what was accepted must reach the image:
  // ENOSPC included, a failure here is found at writeback, which uext's
  // reservations rule out.
  if (!(*fs)->close().ok()) std::abort();
  return 0;
}
