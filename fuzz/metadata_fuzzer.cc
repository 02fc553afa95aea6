// libFuzzer target: small patches to the metadata of valid images (the
// input format and why: fuzz/seeds.h), each patched image opened
// read-only and walked (fuzz/walk.h).
//
// Seed images: UEXT_FUZZ_SEEDS=img1:img2:... (scripts/fuzz.sh makes them
// with mke2fs).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "seeds.h"
#include "walk.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  uext_fuzz::load_seeds_from_env("metadata_fuzzer");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static std::vector<std::byte> image;
  const bool verify = uext_fuzz::patched_image(data, size, image);
  uext_fuzz::open_and_walk(image, verify);
  return 0;
}
