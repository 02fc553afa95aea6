#include "cache/wb_errseq.h"

#include <mutex>

namespace uext::cache {

void WbErrors::record(uint32_t ino, int code, std::string message) {
  std::lock_guard lock(mu_);
  Seq& s = seqs_[ino];
  ++s.seq;
  s.latest = {code, std::move(message)};
  s.seen = false;
}

uint64_t WbErrors::sample(uint32_t ino) {
  std::lock_guard lock(mu_);
  auto it = seqs_.find(ino);
  if (it == seqs_.end()) return 0;
  // An error nobody has reported yet is still news to a new description.
  return it->second.seen ? it->second.seq : 0;
}

std::optional<WbError> WbErrors::check_locked(Seq& s, uint64_t& since) {
  if (s.seq == since) return std::nullopt;
  since = s.seq;
  s.seen = true;
  return s.latest;
}

std::optional<WbError> WbErrors::check(uint32_t ino, uint64_t& since) {
  std::lock_guard lock(mu_);
  auto it = seqs_.find(ino);
  if (it == seqs_.end()) return std::nullopt;
  return check_locked(it->second, since);
}

std::optional<WbError> WbErrors::check_unsampled(uint32_t ino) {
  std::lock_guard lock(mu_);
  auto it = seqs_.find(ino);
  if (it == seqs_.end()) return std::nullopt;
  return check_locked(it->second, it->second.unsampled_since);
}

void WbErrors::forget(uint32_t ino) {
  std::lock_guard lock(mu_);
  seqs_.erase(ino);
}

uint64_t WbErrors::count(uint32_t ino) {
  std::lock_guard lock(mu_);
  auto it = seqs_.find(ino);
  return it == seqs_.end() ? 0 : it->second.seq;
}

}  // namespace uext::cache
