// A read-only device seen through writes kept in memory.
//
// A read-only open of an image whose journal needs recovery replays the
// journal into an overlay: the replay's writes stay here, the image is
// never written, and reads see the filesystem as its last commit left it,
// as the kernel's read-only mount does (it writes the replay to the disk;
// uext may not write a read-only image).
//
// Writes land in whole blocks of `block_size` kept in memory (a block
// written in part is first read from the base). They are meant for the
// replay while the volume opens, on one thread (the volume on it is then
// opened read-only): afterwards the overlay is only read, by any number
// of threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "uext/block_device.h"
#include "uext/status.h"

namespace uext::io {

class OverlayDevice : public BlockDevice {
 public:
  OverlayDevice(std::unique_ptr<BlockDevice> base, uint32_t block_size)
      : base_(std::move(base)), block_size_(block_size) {}

  Status read(uint64_t offset, std::span<std::byte> buf) override;
  Status write(uint64_t offset, std::span<const std::byte> buf) override;
  Status flush() override { return {}; }
  uint64_t size() const override { return base_->size(); }
  bool read_only() const override { return false; }  // it takes writes, into memory

  // Blocks held in memory.
  size_t blocks() const { return blocks_.size(); }
  // Forgets every write: the overlay shows the base as it is.
  void discard() { blocks_.clear(); }

 private:
  Status check(uint64_t offset, size_t len, const char* what) const;
  // The part of a request at byte `at`, `left` bytes long, inside one block.
  struct Piece {
    uint64_t block;
    size_t in_block;
    size_t len;
  };
  Piece piece(uint64_t at, size_t left) const;
  std::unique_ptr<BlockDevice> base_;
  const uint32_t block_size_;
  std::unordered_map<uint64_t, std::vector<std::byte>> blocks_;
};

}  // namespace uext::io
