// Mutexes that know their place in the lock order of docs/DESIGN.md.
//
// In debug builds (UEXT_DEBUG_CHECKS) each thread records the levels it
// holds; taking a lock whose level is not above every level already held is
// an inversion and aborts at once with both levels named, as lockdep does.
// Release builds compile down to a plain std::mutex.
#pragma once

#include <mutex>
#include <shared_mutex>

namespace uext::base {

// Levels, outermost first. Keep in sync with docs/DESIGN.md.
enum class LockLevel : int {
  kFilesystem = 10,
  kInode = 20,
  kJournalHandle = 30,
  kPage = 40,
  kOrphanList = 45,
  kQuotaInsert = 47,
  kAllocatorGroup = 50,
  kQuota = 52,
  kBufferEdit = 55,
  kVolumeState = 57,
  kJournalState = 58,
  kJournalSuperblock = 59,
  kBufferCacheShard = 60,
  kInodeTable = 65,
  kPageCacheMap = 66,
  kPreallocWindows = 67,
  kReservations = 68,
  kMemfdPool = 69,
  kBlockPool = 70,
};

namespace lock_order {
#ifdef UEXT_DEBUG_CHECKS
// Records that the calling thread takes / drops a lock of `level`.
// `same_level_ok` allows several locks of one level (taken in a documented
// order such as inode number, which the caller checks).
void acquire(LockLevel level, bool same_level_ok);
// Records a lock taken by a try (which never waits, so needs no check).
void note_held(LockLevel level);
void release(LockLevel level);
// How many uext locks thread `tid` holds now, and the innermost level:
// a fault on a uext mapping taken by a thread that holds one could wait
// for itself (docs/DESIGN.md, "Lock order").
int held_by_thread(int tid, int* innermost_level);
#else
inline void acquire(LockLevel, bool) {}
inline void note_held(LockLevel) {}
inline void release(LockLevel) {}
inline int held_by_thread(int, int*) { return 0; }
#endif
}  // namespace lock_order

// A mutex (`Base` = std::mutex) or reader-writer lock (std::shared_mutex)
// with a place in the lock order; shared holders are checked like
// exclusive ones.
template <class Base>
class BasicOrderedMutex {
 public:
  explicit BasicOrderedMutex(LockLevel level, bool same_level_ok = false)
      : level_(level), same_level_ok_(same_level_ok) {}

  void lock() {
    lock_order::acquire(level_, same_level_ok_);
    mu_.lock();
  }
  void unlock() {
    mu_.unlock();
    lock_order::release(level_);
  }
  bool try_lock() {
    // A try never waits, so it cannot deadlock: no order check.
    if (!mu_.try_lock()) return false;
    lock_order::note_held(level_);
    return true;
  }
  void lock_shared()
    requires requires(Base& b) { b.lock_shared(); }
  {
    lock_order::acquire(level_, same_level_ok_);
    mu_.lock_shared();
  }
  void unlock_shared()
    requires requires(Base& b) { b.unlock_shared(); }
  {
    mu_.unlock_shared();
    lock_order::release(level_);
  }

 private:
  Base mu_;
  LockLevel level_;
  bool same_level_ok_;
};

using OrderedMutex = BasicOrderedMutex<std::mutex>;
using OrderedSharedMutex = BasicOrderedMutex<std::shared_mutex>;

}  // namespace uext::base
