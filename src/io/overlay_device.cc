#include "io/overlay_device.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace uext::io {

Status OverlayDevice::check(uint64_t offset, size_t len, const char* what) const {
  const uint64_t size = base_->size();
  if (offset > size || len > size - offset) {
    return Error(EIO, std::string("overlay: ") + what + " of " + std::to_string(len) + " bytes at offset " +
                          std::to_string(offset) + " is past the end of the device");
  }
  return {};
}

OverlayDevice::Piece OverlayDevice::piece(uint64_t at, size_t left) const {
  const size_t in_block = static_cast<size_t>(at % block_size_);
  return {at / block_size_, in_block, std::min<size_t>(left, block_size_ - in_block)};
}

Status OverlayDevice::read(uint64_t offset, std::span<std::byte> buf) {
  UEXT_TRY(check(offset, buf.size(), "read"));
  // Runs of blocks the overlay does not hold are read from the base in one
  // request each.
  size_t done = 0;
  while (done < buf.size()) {
    const Piece p = piece(offset + done, buf.size() - done);
    auto it = blocks_.find(p.block);
    if (it != blocks_.end()) {
      std::memcpy(buf.data() + done, it->second.data() + p.in_block, p.len);
      done += p.len;
      continue;
    }
    size_t run = p.len;
    while (done + run < buf.size() && !blocks_.contains((offset + done + run) / block_size_)) {
      run += std::min<size_t>(buf.size() - done - run, block_size_);
    }
    UEXT_TRY(base_->read(offset + done, buf.subspan(done, run)));
    done += run;
  }
  return {};
}

Status OverlayDevice::write(uint64_t offset, std::span<const std::byte> buf) {
  UEXT_TRY(check(offset, buf.size(), "write"));
  size_t done = 0;
  while (done < buf.size()) {
    const Piece p = piece(offset + done, buf.size() - done);
    auto it = blocks_.find(p.block);
    if (it == blocks_.end()) {
      std::vector<std::byte> copy(block_size_);
      // A block written in part keeps the rest of what the base holds (up to
      // the device's end, should its size not be a whole number of blocks).
      if (p.len < block_size_) {
        const uint64_t start = p.block * block_size_;
        const size_t have = static_cast<size_t>(std::min<uint64_t>(block_size_, base_->size() - start));
        UEXT_TRY(base_->read(start, std::span(copy).first(have)));
      }
      it = blocks_.emplace(p.block, std::move(copy)).first;
    }
    std::memcpy(it->second.data() + p.in_block, buf.data() + done, p.len);
    done += p.len;
  }
  return {};
}

}  // namespace uext::io
