#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <vector>

#include "uext/block_device.h"

namespace uext {
namespace {

// Over its own bytes, or over a caller's (`storage`, left empty here).
class MemoryDevice final : public BlockDevice {
 public:
  explicit MemoryDevice(std::vector<std::byte> data) : owned_(std::move(data)), data_(owned_) {}
  explicit MemoryDevice(std::span<std::byte> storage) : data_(storage) {}

  Status read(uint64_t offset, std::span<std::byte> buf) override {
    std::shared_lock lock(mu_);
    UEXT_TRY(check_range(offset, buf.size(), "read"));
    std::memcpy(buf.data(), data_.data() + offset, buf.size());
    return {};
  }

  Status write(uint64_t offset, std::span<const std::byte> buf) override {
    std::unique_lock lock(mu_);
    UEXT_TRY(check_range(offset, buf.size(), "write"));
    std::memcpy(data_.data() + offset, buf.data(), buf.size());
    return {};
  }

  Status flush() override { return {}; }
  uint64_t size() const override { return data_.size(); }
  bool read_only() const override { return false; }

 private:
  Status check_range(uint64_t offset, size_t len, const char* what) const {
    if (offset > data_.size() || len > data_.size() - offset) {
      return Error(EIO, std::string(what) + " of " + std::to_string(len) + " bytes at offset " +
                            std::to_string(offset) + " is beyond the end of the device (" +
                            std::to_string(data_.size()) + " bytes)");
    }
    return {};
  }

  mutable std::shared_mutex mu_;
  std::vector<std::byte> owned_;
  std::span<std::byte> data_;
};

}  // namespace

std::unique_ptr<BlockDevice> make_memory_device_over(std::span<std::byte> storage) {
  return std::make_unique<MemoryDevice>(storage);
}

std::unique_ptr<BlockDevice> make_memory_device(uint64_t size) {
  return std::make_unique<MemoryDevice>(std::vector<std::byte>(size));
}

std::unique_ptr<BlockDevice> make_memory_device(std::span<const std::byte> contents) {
  return std::make_unique<MemoryDevice>(std::vector<std::byte>(contents.begin(), contents.end()));
}

}  // namespace uext
