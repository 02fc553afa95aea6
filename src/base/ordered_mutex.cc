#include "base/ordered_mutex.h"

#ifdef UEXT_DEBUG_CHECKS
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <unistd.h>

namespace uext::base::lock_order {
namespace {

// What another thread may ask about this one: its count of held locks and
// innermost level, published in a table keyed by thread id.
struct Published {
  std::atomic<int> count{0};
  std::atomic<int> innermost{0};
};
std::mutex table_mu;
std::unordered_map<int, Published*>& table() {
  static auto* t = new std::unordered_map<int, Published*>;
  return *t;
}

struct ThreadLocks {
  std::vector<LockLevel> levels;
  Published published;
  int tid = static_cast<int>(gettid());
  ThreadLocks() {
    std::lock_guard lock(table_mu);
    table()[tid] = &published;
  }
  ~ThreadLocks() {
    std::lock_guard lock(table_mu);
    table().erase(tid);
  }
  void publish() {
    published.innermost.store(levels.empty() ? 0 : static_cast<int>(levels.back()));
    published.count.store(static_cast<int>(levels.size()));
  }
};
thread_local ThreadLocks thread_locks;

}  // namespace

int held_by_thread(int tid, int* innermost_level) {
  std::lock_guard lock(table_mu);
  auto it = table().find(tid);
  if (it == table().end()) return 0;
  if (innermost_level) *innermost_level = it->second->innermost.load();
  return it->second->count.load();
}

void acquire(LockLevel level, bool same_level_ok) {
  auto& held = thread_locks.levels;
  for (LockLevel h : held) {
    if (h > level || (h == level && !same_level_ok)) {
      std::fprintf(stderr,
                   "uext: lock order violation: taking a level-%d lock while holding level %d "
                   "(see docs/DESIGN.md, 'Lock order')\n",
                   static_cast<int>(level), static_cast<int>(h));
      std::abort();
    }
  }
  held.push_back(level);
  thread_locks.publish();
}

void note_held(LockLevel level) {
  auto& held = thread_locks.levels;
  held.push_back(level);
  thread_locks.publish();
}

void release(LockLevel level) {
  auto& held = thread_locks.levels;
  auto it = std::find(held.rbegin(), held.rend(), level);
  if (it == held.rend()) {
    std::fprintf(stderr, "uext: releasing a level-%d lock this thread does not hold\n",
                 static_cast<int>(level));
    std::abort();
  }
  held.erase(std::next(it).base());
  thread_locks.publish();
}

}  // namespace uext::base::lock_order
#endif
