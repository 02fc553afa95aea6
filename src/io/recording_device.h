// Recording writes and flushes so that crash tests can rebuild every state a
// disk with a volatile write cache could be left in by a power cut.
//
// These declarations stay in src/io rather than include/uext: they exist to
// test uext's own write path, their shape will follow what those tests need,
// and the public headers promise embedders an interface that does not move
// under them. An embedder who wants crash testing can build against src/io
// the way uext's tests do; the classes only depend on the public BlockDevice.
//
// The disk model (no FUA): a write is durable only once a later flush has
// completed. Between two flushes, the writes issued may reach the platter in
// any order, each one or not at all, and a write longer than one 512-byte
// sector may land in part (some of its sectors), since disks only promise
// sector atomicity. So the log is cut into epochs by the flushes:
//
//   epoch 0: writes before flush 1
//   epoch k: writes after flush k and before flush k+1
//   epoch F: writes after the last flush F (never made durable)
//
// and a crash state is "every write of epochs 0..k-1 (everything that flush
// k made durable), plus a chosen subset of epoch k's writes, some of them
// possibly torn". State (k, {}) is the clean cut at flush k; state (0, {})
// is the base image itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "uext/block_device.h"
#include "uext/status.h"

namespace uext::io {

inline constexpr uint64_t kSectorSize = 512;

// One crash state: see the model above.
struct CrashState {
  size_t epoch = 0;
  // Indexes (within the epoch, in issue order) of the writes that landed,
  // ascending. They are applied in issue order, so a later write to the same
  // sector wins, as it would in the disk's cache.
  std::vector<size_t> landed;
  // For a landed write that was torn: which of the 512-byte sectors it
  // touches reached the disk (one flag a sector, counted from the sector
  // holding its first byte). A write missing here landed whole.
  std::map<size_t, std::vector<bool>> torn;

  // "epoch 3: writes {0,2} of 5 landed, write 2 torn (sectors 0,3 of 8)".
  // `writes_in_epoch` is only used for the "of N".
  std::string describe(size_t writes_in_epoch) const;
};

struct RandomStateOptions {
  // Probability that a landed write longer than one sector is torn.
  double tear_probability = 0.0;
};

// The recorded history: writes (offset + bytes) and flushes, in order.
// Immutable once taken from a RecordingDevice; safe to share between threads
// for reading. Write data is shared, not copied, between snapshots.
class IoLog {
 public:
  struct Write {
    uint64_t offset = 0;
    std::shared_ptr<const std::vector<std::byte>> data;
    size_t size() const { return data->size(); }
  };

  void add_write(uint64_t offset, std::span<const std::byte> bytes);
  void add_flush();
  // A flush that started when `position` writes had completed and finished
  // now: writes logged since then fall after it. Ignored when a flush that
  // started later is already logged (that one covers these writes).
  void add_flush_at(size_t position);

  size_t flushes() const { return epoch_start_.size() - 1; }
  // flushes() + 1: the last epoch holds the writes after the last flush.
  size_t epochs() const { return epoch_start_.size(); }
  size_t writes_in_epoch(size_t epoch) const;
  const Write& write(size_t epoch, size_t index) const;
  size_t total_writes() const { return writes_.size(); }
  uint64_t bytes_written() const { return bytes_; }

  // States of `epoch` (0 <= epoch < epochs()).
  CrashState clean_cut(size_t epoch) const;
  // Every write of the epoch landed whole: the same bytes as the clean cut
  // at epoch + 1 when there is a later flush.
  CrashState all_landed(size_t epoch) const;
  // Bit i of `mask` set: write i landed (epochs of at most 64 writes;
  // EINVAL otherwise or when the mask names writes the epoch lacks).
  Result<CrashState> subset(size_t epoch, uint64_t mask) const;
  // A reproducible random subset: the same (epoch, seed, options) always
  // gives the same state. Each write lands with a probability drawn per
  // state, so both sparse and nearly complete subsets come up.
  CrashState random_state(size_t epoch, uint64_t seed, const RandomStateOptions& options = {}) const;

  // Checks that `state` fits this log (epoch and write indexes in range,
  // tear masks the right length).
  Status validate(const CrashState& state) const;

  // Writes the state onto `dev`, which must hold a copy of the base image
  // (the device the recorded writes went to, as it was before them).
  Status apply(const CrashState& state, BlockDevice& dev) const;
  // A memory device holding `base` with the state applied.
  Result<std::unique_ptr<BlockDevice>> materialize_in_memory(const CrashState& state,
                                                             std::span<const std::byte> base) const;
  // Copies the image file `base_path` to `out_path` (holes stay holes),
  // applies the state and flushes.
  Status materialize_to_file(const CrashState& state, const std::string& base_path,
                             const std::string& out_path) const;

 private:
  std::vector<Write> writes_;                  // issue order
  std::vector<size_t> epoch_start_ = {0};      // first write of each epoch
  uint64_t bytes_ = 0;
};

// Forwards every call to the device beneath and records each successful
// write and flush, in completion order. Thread-safe.
//
// A write is logged when it completes and a flush when it is called, so a
// write that finished before a flush started is always in an earlier epoch,
// and one that races with the flush lands in the later one (not promised
// durable by it), which is the conservative choice. A failed write is not
// logged (its bytes are not in the device beneath either); a failed flush
// is not logged, so nothing becomes durable by it.
class RecordingDevice final : public BlockDevice {
 public:
  explicit RecordingDevice(std::unique_ptr<BlockDevice> inner);

  Status read(uint64_t offset, std::span<std::byte> buf) override;
  Status write(uint64_t offset, std::span<const std::byte> buf) override;
  Status flush() override;
  uint64_t size() const override { return inner_->size(); }
  bool read_only() const override { return inner_->read_only(); }

  // A snapshot of the history so far.
  IoLog log() const;
  // Completed flushes so far: a caller that has just seen an fsync return
  // knows its data is durable in every state of this epoch or later.
  size_t flush_count() const;
  BlockDevice& inner() { return *inner_; }

 private:
  std::unique_ptr<BlockDevice> inner_;
  mutable std::mutex mu_;
  IoLog log_;
};

// Copies a file keeping its holes (SEEK_DATA/SEEK_HOLE + copy_file_range).
Status copy_sparse_file(const std::string& from, const std::string& to);

}  // namespace uext::io
