#include "base/ordered_mutex.h"

#ifdef UEXT_DEBUG_CHECKS
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace uext::base::lock_order {
namespace {
thread_local std::vector<LockLevel> held;
}  // namespace

void acquire(LockLevel level, bool same_level_ok) {
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
}

void note_held(LockLevel level) { held.push_back(level); }

void release(LockLevel level) {
  auto it = std::find(held.rbegin(), held.rend(), level);
  if (it == held.rend()) {
    std::fprintf(stderr, "uext: releasing a level-%d lock this thread does not hold\n",
                 static_cast<int>(level));
    std::abort();
  }
  held.erase(std::next(it).base());
}

}  // namespace uext::base::lock_order
#endif
