// A block device: the only way uext touches storage.
//
// Offsets and lengths are in bytes so that one interface serves every block
// size; callers keep their I/O block-aligned. Implementations must allow
// concurrent calls from many threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "uext/status.h"

namespace uext {

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  // Reads exactly buf.size() bytes at `offset`. Reading past the end of the
  // device is an error (EIO) naming the offset, never a short read.
  virtual Status read(uint64_t offset, std::span<std::byte> buf) = 0;
  virtual Status write(uint64_t offset, std::span<const std::byte> buf) = 0;
  // Writes file data that the caller keeps in memory of its own (the page
  // cache's writeback): a device may send it past any cache of its own.
  virtual Status write_data(uint64_t offset, std::span<const std::byte> buf) { return write(offset, buf); }
  // The same data, which also lies in the file `fd` at `fd_offset` (the
  // page cache's memfd): a device may move it from there (splice) rather
  // than from `buf`, so the kernel need not map and pin the pages.
  virtual Status write_data_from_file(uint64_t offset, std::span<const std::byte> buf, int fd, uint64_t fd_offset) {
    (void)fd;
    (void)fd_offset;
    return write_data(offset, buf);
  }
  // Writes `pieces` one after another from `offset`, as one write() of
  // their concatenation would (and, by default, is): the journal writes its
  // log and checkpoint from the cached block versions without first copying
  // them together, where a device can take them as they are (pwritev).
  virtual Status write_gather(uint64_t offset, std::span<const std::span<const std::byte>> pieces) {
    size_t total = 0;
    for (const auto& p : pieces) total += p.size();
    std::vector<std::byte> joined;
    joined.reserve(total);
    for (const auto& p : pieces) joined.insert(joined.end(), p.begin(), p.end());
    return write(offset, joined);
  }
  // Makes every completed write durable.
  virtual Status flush() = 0;
  virtual uint64_t size() const = 0;
  virtual bool read_only() const = 0;
};

struct ImageFileOptions {
  bool read_only = true;
  // O_DIRECT: bypasses the host's page cache. Buffers and offsets must then
  // be aligned to 4096; the device falls back to buffered I/O for requests
  // that are not.
  bool direct_io = false;
  // O_DIRECT for large write_data() calls only (file data written back
  // from uext's own page cache, which already holds it): one copy less,
  // and the host's page cache is not filled with what uext caches anyway.
  // Small ones, and hosts without O_DIRECT, keep buffered writes.
  bool direct_data_writes = true;
  // The device starts this many bytes into the file: a filesystem in a
  // partition of a whole-disk image (mount's and fuse2fs's offset=).
  uint64_t offset = 0;
  // At most this many bytes from `offset` (mount's sizelimit=); 0: up to
  // the end of the file.
  uint64_t size_limit = 0;
};

// An image file (or a block device node) accessed with pread/pwrite.
Result<std::unique_ptr<BlockDevice>> open_image_file(const std::string& path,
                                                     const ImageFileOptions& options);

// A device held in memory; tests and fuzzers build images in it.
std::unique_ptr<BlockDevice> make_memory_device(uint64_t size);
std::unique_ptr<BlockDevice> make_memory_device(std::span<const std::byte> contents);
// A device over memory the caller owns: writes land in `storage`, which must
// outlive the device (a fuzzer reopens what the library wrote after close).
std::unique_ptr<BlockDevice> make_memory_device_over(std::span<std::byte> storage);

}  // namespace uext
