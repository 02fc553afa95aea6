// A uext::Filesystem over an image file behind src/io/fault_device, for
// tests that make the device fail under the library and then judge the
// image with e2fsck.
#pragma once

#include <memory>
#include <string>

#include "io/fault_device.h"
#include "uext/filesystem.h"

namespace uext::testing {

struct FaultyFs {
  std::unique_ptr<Filesystem> fs;
  io::FaultDevice* dev = nullptr;  // owned by fs
};

// Opens `image` read-write through a FaultDevice, with `extra`'s options
// (delayed allocation unless it turns it off) and commits only when the
// test asks (sync, fsync, close). With `background`, background writeback
// runs at once (every 5 ms, no expiry age); without, writeback happens
// only when the test asks for it. Fails the test (fs null) when the image
// does not open.
FaultyFs open_faulty(const std::string& image, const Options& extra = {}, bool background = false);

// Lifts every fault, closes the filesystem, and expects the image e2fsck
// clean with a clean superblock state.
void close_and_check(FaultyFs& f, const std::string& image);

// The first `n` bytes of `path` on `image`, read by a fresh read-only open.
std::string read_back(const std::string& image, const std::string& path, size_t n);

}  // namespace uext::testing
