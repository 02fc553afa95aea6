// Per-inode preallocation windows: for a file being written as a stream,
// the free run right after its last allocation is set aside for its next
// writeback, so that interleaved writers do not take each other's next
// blocks (ext4's inode preallocations in mballoc do this job).
//
// Unlike ext4's, a window is soft: it is never marked in a bitmap or taken
// from a free counter, so it cannot leak, costs statfs nothing and leaves a
// crash image e2fsck-clean. Other allocations avoid windows while they find
// space elsewhere; when space is short the allocator drops them all and
// takes what it needs. The owner checks the bitmap when it uses its window.
//
// Locking: one mutex (LockLevel::kPreallocWindows), a leaf: it is never held
// while any other lock is taken.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "base/ordered_mutex.h"

namespace uext::alloc {

struct Window {
  uint32_t ino = 0;
  uint64_t first = 0;
  uint64_t count = 0;
  uint64_t end() const { return first + count; }
  bool contains(uint64_t block) const { return block >= first && block < end(); }
};

class PreallocWindows {
 public:
  // Windows beyond this many go, oldest first (a writer that never closes
  // its files must not make every other allocation search around them).
  explicit PreallocWindows(size_t max_windows = 64) : max_(max_windows) {}

  std::optional<Window> get(uint32_t ino) const;
  // Sets (replaces) the inode's window; count 0 drops it.
  void set(uint32_t ino, uint64_t first, uint64_t count);
  // The owner used blocks up to `new_first`: the window starts there.
  void consume(uint32_t ino, uint64_t new_first);
  void drop(uint32_t ino);
  void drop_all();
  // Windows overlapping [first, end), other than `except`'s.
  std::vector<Window> overlapping(uint64_t first, uint64_t end, uint32_t except) const;
  size_t size() const;
  bool empty() const { return size() == 0; }

 private:
  struct Entry {
    uint64_t first;
    uint64_t count;
    uint64_t stamp;  // when set, for dropping the oldest
  };
  mutable base::OrderedMutex mu_{base::LockLevel::kPreallocWindows};
  std::unordered_map<uint32_t, Entry> windows_;
  uint64_t clock_ = 0;
  size_t max_;
};

}  // namespace uext::alloc
