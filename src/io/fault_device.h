// A device that fails on purpose: I/O errors on a schedule or a predicate,
// ENOSPC after a byte budget, torn writes, and flushes a lying disk drops.
// Tests of error propagation (every fsync must report every writeback error
// since the caller last looked, errseq-style) stand on it.
//
// Kept in src/io, not include/uext, for the reason recording_device.h gives:
// it is test machinery whose interface follows uext's own tests.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "uext/block_device.h"
#include "uext/status.h"

namespace uext::io {

enum class IoOp : uint8_t { kRead = 1, kWrite = 2, kFlush = 4 };

// A set of IoOps: IoOp::kRead | IoOp::kWrite.
struct IoOps {
  uint8_t bits = 0;
  constexpr IoOps() = default;
  constexpr IoOps(IoOp op) : bits(static_cast<uint8_t>(op)) {}
  constexpr bool has(IoOp op) const { return (bits & static_cast<uint8_t>(op)) != 0; }
  static constexpr IoOps all() {
    IoOps o;
    o.bits = 7;
    return o;
  }
};
constexpr IoOps operator|(IoOps a, IoOps b) {
  IoOps o;
  o.bits = static_cast<uint8_t>(a.bits | b.bits);
  return o;
}
constexpr IoOps operator|(IoOp a, IoOp b) { return IoOps(a) | IoOps(b); }

// One call as a rule sees it.
struct IoCall {
  IoOp op = IoOp::kRead;
  uint64_t offset = 0;  // 0 for flushes
  uint64_t length = 0;  // 0 for flushes
  // 1-based number of this call among all calls of its kind on the device.
  uint64_t index = 0;
};

// When a call fails. Every condition that is set must hold for a call to
// match; the rule then lets `skip` matches through and fails the next
// `times` ones.
struct FaultRule {
  IoOps ops = IoOps::all();
  // Calls overlapping bytes [range_offset, range_offset + range_length).
  // Flushes touch no bytes and never match a range.
  std::optional<uint64_t> range_offset;
  uint64_t range_length = 0;
  // Runs under the device's lock: it must not call back into the device.
  std::function<bool(const IoCall&)> predicate;
  uint64_t skip = 0;
  uint64_t times = UINT64_MAX;
  int error = EIO;
  // Writes only: the first `torn_bytes` bytes reach the device beneath
  // before the call fails (a write torn by the failure).
  std::optional<uint64_t> torn_bytes;
};

struct FaultCounts {
  uint64_t reads = 0, writes = 0, flushes = 0;  // calls made, failed or not
  uint64_t failed_reads = 0, failed_writes = 0, failed_flushes = 0;
  uint64_t dropped_flushes = 0;    // acknowledged without flushing
  uint64_t bytes_read = 0, bytes_written = 0;  // that reached the device beneath
};

// Forwards to the device beneath unless a rule says otherwise. Thread-safe:
// the decision for each call is made under a lock (so "the 3rd write" is
// well defined even with many writers); the I/O itself runs outside it.
class FaultDevice final : public BlockDevice {
 public:
  explicit FaultDevice(std::unique_ptr<BlockDevice> inner);

  Status read(uint64_t offset, std::span<std::byte> buf) override;
  Status write(uint64_t offset, std::span<const std::byte> buf) override;
  Status flush() override;
  uint64_t size() const override { return inner_->size(); }
  bool read_only() const override { return inner_->read_only(); }

  // Returns an id for remove_rule. Rules are checked in the order added;
  // the first that fires decides.
  int add_rule(FaultRule rule);
  void remove_rule(int id);
  void clear_rules();

  // Shorthands. `n` is 1-based and counts calls of that kind made from now.
  int fail_nth(IoOp op, uint64_t n, int error = EIO);
  // Every read or write touching the range, until removed.
  int fail_range(IoOps ops, uint64_t offset, uint64_t length, int error = EIO);
  int fail_if(IoOps ops, std::function<bool(const IoCall&)> predicate, int error = EIO);
  // The nth write from now writes its first `keep` bytes, then fails.
  int tear_nth_write(uint64_t n, uint64_t keep, int error = EIO);

  // Writes fail with ENOSPC (writing nothing) once the bytes written
  // through this device would exceed `bytes`; nullopt lifts the limit.
  void set_space_limit(std::optional<uint64_t> bytes);
  // A lying disk: flush() reports success without flushing.
  void set_drop_flushes(bool drop);

  FaultCounts counts() const;
  BlockDevice& inner() { return *inner_; }

 private:
  struct Decision {
    std::optional<int> error;
    std::optional<uint64_t> torn_bytes;
  };
  Decision decide(IoOp op, uint64_t offset, uint64_t length);

  std::unique_ptr<BlockDevice> inner_;
  mutable std::mutex mu_;
  struct Entry {
    int id;
    FaultRule rule;
    uint64_t matched = 0;
  };
  std::vector<Entry> rules_;
  int next_id_ = 1;
  std::optional<uint64_t> space_limit_;
  uint64_t space_used_ = 0;
  bool drop_flushes_ = false;
  FaultCounts counts_;
};

}  // namespace uext::io
