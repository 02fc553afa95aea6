#include "vm/registry.h"

#include <atomic>
#include <map>
#include <mutex>
#include <shared_mutex>

namespace uext::vm {

namespace {

struct Entry {
  size_t length;
  std::shared_ptr<MapState> state;
};

// Never destroyed: mappings may outlive static destruction order.
std::shared_mutex& registry_mu() {
  static auto* mu = new std::shared_mutex;
  return *mu;
}
std::map<uintptr_t, Entry>& entries() {
  static auto* m = new std::map<uintptr_t, Entry>;
  return *m;
}
std::atomic<size_t> entry_count{0};

}  // namespace

void registry_add(uintptr_t start, size_t length, std::shared_ptr<MapState> state) {
  std::unique_lock lock(registry_mu());
  entries()[start] = Entry{length, std::move(state)};
  entry_count = entries().size();
}

void registry_remove(uintptr_t start) {
  std::unique_lock lock(registry_mu());
  entries().erase(start);
  entry_count = entries().size();
}

std::shared_ptr<MapState> registry_find(uintptr_t address) {
  std::shared_lock lock(registry_mu());
  auto& m = entries();
  auto it = m.upper_bound(address);
  if (it == m.begin()) return nullptr;
  --it;
  if (address >= it->first + it->second.length) return nullptr;
  return it->second.state;
}

bool in_mapping(const void* p, size_t length) {
  // The common case, no mappings at all, costs one load.
  if (entry_count.load(std::memory_order_relaxed) == 0 || length == 0) return false;
  const auto start = reinterpret_cast<uintptr_t>(p);
  std::shared_lock lock(registry_mu());
  auto& m = entries();
  auto it = m.upper_bound(start + length - 1);
  if (it == m.begin()) return false;
  --it;
  return start < it->first + it->second.length;
}

}  // namespace uext::vm
