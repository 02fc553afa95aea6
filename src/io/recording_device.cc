#include "io/recording_device.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace uext::io {
namespace {

// splitmix64: a tiny generator whose output is the same on every platform
// and standard library, so a seed printed by a failing test reproduces the
// state anywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double unit() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t s_;
};

// Sectors a write of `len` bytes at `offset` touches.
size_t sectors_of(uint64_t offset, size_t len) {
  if (len == 0) return 0;
  return static_cast<size_t>((offset + len - 1) / kSectorSize - offset / kSectorSize + 1);
}

std::string join(const std::vector<size_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  return s;
}

}  // namespace

std::string CrashState::describe(size_t writes_in_epoch) const {
  std::string s = "epoch " + std::to_string(epoch) + ": ";
  if (landed.empty()) {
    s += "clean cut (none of its " + std::to_string(writes_in_epoch) + " writes landed)";
  } else if (landed.size() == writes_in_epoch && torn.empty()) {
    s += "all " + std::to_string(writes_in_epoch) + " writes landed";
  } else {
    s += "writes {" + join(landed) + "} of " + std::to_string(writes_in_epoch) + " landed";
  }
  for (const auto& [index, sectors] : torn) {
    std::vector<size_t> kept;
    for (size_t i = 0; i < sectors.size(); ++i)
      if (sectors[i]) kept.push_back(i);
    s += ", write " + std::to_string(index) + " torn (sectors {" + join(kept) + "} of " +
         std::to_string(sectors.size()) + ")";
  }
  return s;
}

void IoLog::add_write(uint64_t offset, std::span<const std::byte> bytes) {
  writes_.push_back({offset, std::make_shared<const std::vector<std::byte>>(bytes.begin(), bytes.end())});
  bytes_ += bytes.size();
}

void IoLog::add_flush() { epoch_start_.push_back(writes_.size()); }

void IoLog::add_flush_at(size_t position) {
  // A flush that started before a concurrent one already logged a later
  // boundary adds nothing the later one does not cover.
  if (position < epoch_start_.back() || position > writes_.size()) return;
  epoch_start_.push_back(position);
}

size_t IoLog::writes_in_epoch(size_t epoch) const {
  if (epoch >= epochs()) return 0;
  size_t end = epoch + 1 < epochs() ? epoch_start_[epoch + 1] : writes_.size();
  return end - epoch_start_[epoch];
}

const IoLog::Write& IoLog::write(size_t epoch, size_t index) const {
  return writes_.at(epoch_start_.at(epoch) + index);
}

CrashState IoLog::clean_cut(size_t epoch) const {
  CrashState s;
  s.epoch = epoch;
  return s;
}

CrashState IoLog::all_landed(size_t epoch) const {
  CrashState s;
  s.epoch = epoch;
  for (size_t i = 0; i < writes_in_epoch(epoch); ++i) s.landed.push_back(i);
  return s;
}

Result<CrashState> IoLog::subset(size_t epoch, uint64_t mask) const {
  if (epoch >= epochs()) {
    return Error(EINVAL, "epoch " + std::to_string(epoch) + " does not exist (the log has " +
                             std::to_string(epochs()) + ")");
  }
  size_t n = writes_in_epoch(epoch);
  if (n < 64 && (mask >> n) != 0) {
    return Error(EINVAL, "mask names writes past the " + std::to_string(n) + " of epoch " +
                             std::to_string(epoch));
  }
  if (n > 64) {
    return Error(EINVAL, "epoch " + std::to_string(epoch) + " has " + std::to_string(n) +
                             " writes, too many for a 64-bit mask");
  }
  CrashState s;
  s.epoch = epoch;
  for (size_t i = 0; i < n; ++i)
    if (mask >> i & 1) s.landed.push_back(i);
  return s;
}

CrashState IoLog::random_state(size_t epoch, uint64_t seed, const RandomStateOptions& options) const {
  Rng rng(seed ^ (0xA0761D6478BD642Full * (epoch + 1)));
  CrashState s;
  s.epoch = epoch;
  const size_t n = writes_in_epoch(epoch);
  const double p = rng.unit();
  for (size_t i = 0; i < n; ++i) {
    if (rng.unit() >= p) continue;
    s.landed.push_back(i);
    const Write& w = write(epoch, i);
    size_t sectors = sectors_of(w.offset, w.size());
    if (sectors > 1 && options.tear_probability > 0 && rng.unit() < options.tear_probability) {
      std::vector<bool> kept(sectors);
      size_t count = 0;
      for (size_t k = 0; k < sectors; ++k) count += (kept[k] = (rng.next() & 1) != 0);
      // A tear keeps some sectors and loses others; all or none is not one.
      if (count == sectors) kept[static_cast<size_t>(rng.next() % sectors)] = false;
      if (count == 0) kept[static_cast<size_t>(rng.next() % sectors)] = true;
      s.torn[i] = std::move(kept);
    }
  }
  return s;
}

Status IoLog::validate(const CrashState& state) const {
  if (state.epoch >= epochs()) {
    return Error(EINVAL, "crash state names epoch " + std::to_string(state.epoch) +
                             " but the log has " + std::to_string(epochs()));
  }
  const size_t n = writes_in_epoch(state.epoch);
  for (size_t i = 0; i < state.landed.size(); ++i) {
    if (state.landed[i] >= n || (i > 0 && state.landed[i] <= state.landed[i - 1])) {
      return Error(EINVAL, "crash state: landed writes must be ascending indexes below " +
                               std::to_string(n));
    }
  }
  for (const auto& [index, sectors] : state.torn) {
    if (!std::binary_search(state.landed.begin(), state.landed.end(), index)) {
      return Error(EINVAL, "crash state: torn write " + std::to_string(index) + " did not land");
    }
    const Write& w = write(state.epoch, index);
    if (sectors.size() != sectors_of(w.offset, w.size())) {
      return Error(EINVAL, "crash state: write " + std::to_string(index) + " touches " +
                               std::to_string(sectors_of(w.offset, w.size())) + " sectors, not " +
                               std::to_string(sectors.size()));
    }
  }
  return {};
}

Status IoLog::apply(const CrashState& state, BlockDevice& dev) const {
  UEXT_TRY(validate(state));
  const size_t first = epoch_start_[state.epoch];
  for (size_t i = 0; i < first; ++i) {
    const Write& w = writes_[i];
    Status st = dev.write(w.offset, *w.data);
    if (!st.ok()) return std::move(st).error().with_context("applying write " + std::to_string(i));
  }
  for (size_t index : state.landed) {
    const Write& w = write(state.epoch, index);
    auto torn = state.torn.find(index);
    if (torn == state.torn.end()) {
      UEXT_TRY(dev.write(w.offset, *w.data));
      continue;
    }
    const uint64_t end = w.offset + w.size();
    const uint64_t first_sector = w.offset / kSectorSize;
    for (size_t k = 0; k < torn->second.size(); ++k) {
      if (!torn->second[k]) continue;
      uint64_t from = std::max(w.offset, (first_sector + k) * kSectorSize);
      uint64_t to = std::min(end, (first_sector + k + 1) * kSectorSize);
      UEXT_TRY(dev.write(from, std::span(w.data->data() + (from - w.offset), to - from)));
    }
  }
  return {};
}

Result<std::unique_ptr<BlockDevice>> IoLog::materialize_in_memory(const CrashState& state,
                                                                  std::span<const std::byte> base) const {
  auto dev = make_memory_device(base);
  UEXT_TRY(apply(state, *dev));
  return dev;
}

Status IoLog::materialize_to_file(const CrashState& state, const std::string& base_path,
                                  const std::string& out_path) const {
  UEXT_TRY(validate(state));
  UEXT_TRY(copy_sparse_file(base_path, out_path));
  UEXT_ASSIGN_OR_RETURN(auto dev, open_image_file(out_path, {.read_only = false}));
  UEXT_TRY(apply(state, *dev));
  return dev->flush();
}

RecordingDevice::RecordingDevice(std::unique_ptr<BlockDevice> inner) : inner_(std::move(inner)) {}

Status RecordingDevice::read(uint64_t offset, std::span<std::byte> buf) { return inner_->read(offset, buf); }

Status RecordingDevice::write(uint64_t offset, std::span<const std::byte> buf) {
  UEXT_TRY(inner_->write(offset, buf));
  std::lock_guard lock(mu_);
  log_.add_write(offset, buf);
  return {};
}

Status RecordingDevice::flush() {
  // The epoch boundary is where the flush starts: the writes completed
  // before then are the ones it makes durable. Writes completing while it
  // runs fall after the boundary (not promised durable by it).
  size_t position;
  {
    std::lock_guard lock(mu_);
    position = log_.total_writes();
  }
  UEXT_TRY(inner_->flush());
  std::lock_guard lock(mu_);
  log_.add_flush_at(position);
  return {};
}

IoLog RecordingDevice::log() const {
  std::lock_guard lock(mu_);
  return log_;
}

size_t RecordingDevice::flush_count() const {
  std::lock_guard lock(mu_);
  return log_.flushes();
}

Status copy_sparse_file(const std::string& from, const std::string& to) {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return Error(errno, from + ": " + std::strerror(errno));
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    int err = errno;
    ::close(in);
    return Error(err, to + ": " + std::strerror(err));
  }
  Status result;
  struct stat st {};
  if (::fstat(in, &st) != 0) result = Error(errno, from + ": " + std::strerror(errno));
  off_t pos = 0;
  while (result.ok() && pos < st.st_size) {
    off_t data = ::lseek(in, pos, SEEK_DATA);
    if (data < 0) break;  // ENXIO: only a hole remains
    off_t hole = ::lseek(in, data, SEEK_HOLE);
    if (hole < 0) hole = st.st_size;
    off_t src = data, dst = data;
    while (src < hole) {
      ssize_t n = ::copy_file_range(in, &src, out, &dst, static_cast<size_t>(hole - src), 0);
      if (n <= 0) {
        int err = n < 0 ? errno : EIO;
        result = Error(err, "copying " + from + " to " + to + ": " + std::strerror(err));
        break;
      }
    }
    pos = hole;
  }
  if (result.ok() && ::ftruncate(out, st.st_size) != 0)
    result = Error(errno, to + ": ftruncate: " + std::strerror(errno));
  ::close(in);
  ::close(out);
  return result;
}

}  // namespace uext::io
