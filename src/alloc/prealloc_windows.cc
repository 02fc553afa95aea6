#include "alloc/prealloc_windows.h"

#include <mutex>

namespace uext::alloc {

std::optional<Window> PreallocWindows::get(uint32_t ino) const {
  std::lock_guard lock(mu_);
  auto it = windows_.find(ino);
  if (it == windows_.end()) return std::nullopt;
  return Window{ino, it->second.first, it->second.count};
}

void PreallocWindows::set(uint32_t ino, uint64_t first, uint64_t count) {
  std::lock_guard lock(mu_);
  if (count == 0) {
    windows_.erase(ino);
    return;
  }
  windows_[ino] = {first, count, ++clock_};
  if (windows_.size() <= max_) return;
  auto oldest = windows_.begin();
  for (auto it = windows_.begin(); it != windows_.end(); ++it) {
    if (it->second.stamp < oldest->second.stamp) oldest = it;
  }
  windows_.erase(oldest);
}

void PreallocWindows::consume(uint32_t ino, uint64_t new_first) {
  std::lock_guard lock(mu_);
  auto it = windows_.find(ino);
  if (it == windows_.end()) return;
  Entry& e = it->second;
  const uint64_t end = e.first + e.count;
  if (new_first >= end) {
    windows_.erase(it);
  } else if (new_first > e.first) {
    e.count = end - new_first;
    e.first = new_first;
  }
}

void PreallocWindows::drop(uint32_t ino) {
  std::lock_guard lock(mu_);
  windows_.erase(ino);
}

void PreallocWindows::drop_all() {
  std::lock_guard lock(mu_);
  windows_.clear();
}

std::vector<Window> PreallocWindows::overlapping(uint64_t first, uint64_t end, uint32_t except) const {
  std::lock_guard lock(mu_);
  std::vector<Window> out;
  for (const auto& [ino, e] : windows_) {
    if (ino == except || e.first >= end || e.first + e.count <= first) continue;
    out.push_back({ino, e.first, e.count});
  }
  return out;
}

size_t PreallocWindows::size() const {
  std::lock_guard lock(mu_);
  return windows_.size();
}

}  // namespace uext::alloc
