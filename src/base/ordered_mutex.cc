#include "base/ordered_mutex.h"

#ifdef UEXT_DEBUG_CHECKS
#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <mutex>
#include <unordered_map>

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

// A thread's held levels. Trivially destructible on purpose: the main
// thread's thread_local objects are destroyed at exit() before the exit
// handlers run, and a handler may still close a filesystem (the preload
// shim does) and so take locks. The table entry goes with the thread
// (Unregister); the record itself stays usable to the end.
constexpr int kMaxHeld = 64;
struct ThreadLocks {
  LockLevel levels[kMaxHeld];
  int count = 0;
  bool registered = false;
  Published published;
  void publish() {
    published.innermost.store(count == 0 ? 0 : static_cast<int>(levels[count - 1]));
    published.count.store(count);
  }
};
thread_local ThreadLocks thread_locks;

struct Unregister {
  int tid;
  ~Unregister() {
    std::lock_guard lock(table_mu);
    table().erase(tid);
  }
};

ThreadLocks& mine() {
  ThreadLocks& t = thread_locks;
  if (!t.registered) {
    t.registered = true;
    const int tid = static_cast<int>(gettid());
    {
      std::lock_guard lock(table_mu);
      table()[tid] = &t.published;
    }
    thread_local Unregister unregister{tid};
  }
  return t;
}

}  // namespace

int held_by_thread(int tid, int* innermost_level) {
  std::lock_guard lock(table_mu);
  auto it = table().find(tid);
  if (it == table().end()) return 0;
  if (innermost_level) *innermost_level = it->second->innermost.load();
  return it->second->count.load();
}

void acquire(LockLevel level, bool same_level_ok) {
  ThreadLocks& t = mine();
  for (int i = 0; i < t.count; ++i) {
    const LockLevel h = t.levels[i];
    if (h > level || (h == level && !same_level_ok)) {
      std::fprintf(stderr,
                   "uext: lock order violation: taking a level-%d lock while holding level %d "
                   "(see docs/DESIGN.md, 'Lock order')\n",
                   static_cast<int>(level), static_cast<int>(h));
      std::abort();
    }
  }
  note_held(level);
}

void note_held(LockLevel level) {
  ThreadLocks& t = mine();
  if (t.count == kMaxHeld) {
    std::fprintf(stderr, "uext: a thread holds more than %d uext locks at once\n", kMaxHeld);
    std::abort();
  }
  t.levels[t.count++] = level;
  t.publish();
}

void release(LockLevel level) {
  ThreadLocks& t = mine();
  int i = t.count - 1;
  while (i >= 0 && t.levels[i] != level) --i;
  if (i < 0) {
    std::fprintf(stderr, "uext: releasing a level-%d lock this thread does not hold\n",
                 static_cast<int>(level));
    std::abort();
  }
  for (; i + 1 < t.count; ++i) t.levels[i] = t.levels[i + 1];
  --t.count;
  t.publish();
}

}  // namespace uext::base::lock_order
#endif
