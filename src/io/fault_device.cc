#include "io/fault_device.h"

#include <cstring>
#include <string>

namespace uext::io {
namespace {

const char* op_name(IoOp op) {
  switch (op) {
    case IoOp::kRead: return "read";
    case IoOp::kWrite: return "write";
    case IoOp::kFlush: return "flush";
  }
  return "?";
}

Error injected(IoOp op, uint64_t offset, uint64_t length, int error) {
  std::string what = op == IoOp::kFlush ? std::string("flush")
                                        : std::string(op_name(op)) + " of " + std::to_string(length) +
                                              " bytes at offset " + std::to_string(offset);
  return Error(error, what + ": injected failure: " + std::strerror(error));
}

}  // namespace

FaultDevice::FaultDevice(std::unique_ptr<BlockDevice> inner) : inner_(std::move(inner)) {}

FaultDevice::Decision FaultDevice::decide(IoOp op, uint64_t offset, uint64_t length) {
  // Caller holds mu_.
  IoCall call{op, offset, length, 0};
  switch (op) {
    case IoOp::kRead: call.index = ++counts_.reads; break;
    case IoOp::kWrite: call.index = ++counts_.writes; break;
    case IoOp::kFlush: call.index = ++counts_.flushes; break;
  }
  Decision d;
  for (Entry& e : rules_) {
    const FaultRule& r = e.rule;
    if (!r.ops.has(op)) continue;
    if (r.range_offset) {
      if (op == IoOp::kFlush || length == 0) continue;
      uint64_t lo = *r.range_offset, hi = lo + r.range_length;
      if (offset >= hi || offset + length <= lo) continue;
    }
    if (r.predicate && !r.predicate(call)) continue;
    uint64_t n = e.matched++;
    if (n < r.skip || n - r.skip >= r.times) continue;
    d.error = r.error;
    if (op == IoOp::kWrite && r.torn_bytes) d.torn_bytes = std::min(*r.torn_bytes, length);
    return d;
  }
  return d;
}

Status FaultDevice::read(uint64_t offset, std::span<std::byte> buf) {
  {
    std::lock_guard lock(mu_);
    Decision d = decide(IoOp::kRead, offset, buf.size());
    if (d.error) {
      ++counts_.failed_reads;
      return injected(IoOp::kRead, offset, buf.size(), *d.error);
    }
  }
  Status st = inner_->read(offset, buf);
  std::lock_guard lock(mu_);
  if (st.ok()) counts_.bytes_read += buf.size(); else ++counts_.failed_reads;
  return st;
}

Status FaultDevice::write(uint64_t offset, std::span<const std::byte> buf) {
  Decision d;
  uint64_t reserved = 0;
  {
    std::lock_guard lock(mu_);
    d = decide(IoOp::kWrite, offset, buf.size());
    reserved = d.error ? d.torn_bytes.value_or(0) : buf.size();
    if (space_limit_ && space_used_ + reserved > *space_limit_) {
      ++counts_.failed_writes;
      return Error(ENOSPC, "write of " + std::to_string(buf.size()) + " bytes at offset " +
                               std::to_string(offset) + ": injected ENOSPC (" +
                               std::to_string(space_used_) + " of " + std::to_string(*space_limit_) +
                               " bytes used)");
    }
    space_used_ += reserved;
  }
  Status st;
  if (reserved > 0) st = inner_->write(offset, buf.first(static_cast<size_t>(reserved)));
  std::lock_guard lock(mu_);
  if (!st.ok()) {
    space_used_ -= reserved;
    ++counts_.failed_writes;
    return st;
  }
  counts_.bytes_written += reserved;
  if (d.error) {
    ++counts_.failed_writes;
    Error e = injected(IoOp::kWrite, offset, buf.size(), *d.error);
    if (d.torn_bytes) {
      return std::move(e).with_context("torn after " + std::to_string(*d.torn_bytes) + " bytes");
    }
    return e;
  }
  return {};
}

Status FaultDevice::flush() {
  bool drop;
  {
    std::lock_guard lock(mu_);
    Decision d = decide(IoOp::kFlush, 0, 0);
    if (d.error) {
      ++counts_.failed_flushes;
      return injected(IoOp::kFlush, 0, 0, *d.error);
    }
    drop = drop_flushes_;
    if (drop) ++counts_.dropped_flushes;
  }
  if (drop) return {};
  Status st = inner_->flush();
  if (!st.ok()) {
    std::lock_guard lock(mu_);
    ++counts_.failed_flushes;
  }
  return st;
}

int FaultDevice::add_rule(FaultRule rule) {
  std::lock_guard lock(mu_);
  int id = next_id_++;
  rules_.push_back({id, std::move(rule), 0});
  return id;
}

void FaultDevice::remove_rule(int id) {
  std::lock_guard lock(mu_);
  std::erase_if(rules_, [id](const Entry& e) { return e.id == id; });
}

void FaultDevice::clear_rules() {
  std::lock_guard lock(mu_);
  rules_.clear();
}

int FaultDevice::fail_nth(IoOp op, uint64_t n, int error) {
  FaultRule r;
  r.ops = op;
  r.skip = n > 0 ? n - 1 : 0;
  r.times = 1;
  r.error = error;
  return add_rule(std::move(r));
}

int FaultDevice::fail_range(IoOps ops, uint64_t offset, uint64_t length, int error) {
  FaultRule r;
  r.ops = ops;
  r.range_offset = offset;
  r.range_length = length;
  r.error = error;
  return add_rule(std::move(r));
}

int FaultDevice::fail_if(IoOps ops, std::function<bool(const IoCall&)> predicate, int error) {
  FaultRule r;
  r.ops = ops;
  r.predicate = std::move(predicate);
  r.error = error;
  return add_rule(std::move(r));
}

int FaultDevice::tear_nth_write(uint64_t n, uint64_t keep, int error) {
  FaultRule r;
  r.ops = IoOp::kWrite;
  r.skip = n > 0 ? n - 1 : 0;
  r.times = 1;
  r.error = error;
  r.torn_bytes = keep;
  return add_rule(std::move(r));
}

void FaultDevice::set_space_limit(std::optional<uint64_t> bytes) {
  std::lock_guard lock(mu_);
  space_limit_ = bytes;
}

void FaultDevice::set_drop_flushes(bool drop) {
  std::lock_guard lock(mu_);
  drop_flushes_ = drop;
}

FaultCounts FaultDevice::counts() const {
  std::lock_guard lock(mu_);
  return counts_;
}

}  // namespace uext::io
