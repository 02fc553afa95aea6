// The orphan list: inodes whose deletion or truncation is under way, so
// that a crash in the middle finishes the job at the next open instead of
// leaking blocks. On disk (as ext3/ext4 keep it) the superblock's
// s_last_orphan names the first orphan and each orphan's i_dtime names the
// next (0 ends the list). The list is also mirrored in memory, so removing
// an orphan finds its predecessor without reading the chain.
#pragma once

#include <cstdint>
#include <vector>

#include "base/ordered_mutex.h"
#include "fs/volume.h"
#include "journal/journal.h"

namespace uext::fs {

class OrphanList {
 public:
  // Journal credits of add() and remove(): the orphan's inode, and the
  // superblock or the predecessor's inode.
  static constexpr uint32_t kAddCredits = 2;
  static constexpr uint32_t kRemoveCredits = 2;

  // Reads the chain from the image (at open, before any change). A chain
  // that names an inode out of range, or loops, is cut there (EUCLEAN is
  // not useful to someone who only wants the image open; the kernel
  // likewise stops at a bad link) and reported through `problem`.
  Status load(Volume& vol, std::string* problem);

  // Puts `ino` at the head of the list (no-op when it is there already).
  Status add(Volume& vol, journal::Handle& handle, uint32_t ino);
  // Takes `ino` off the list and clears its i_dtime link (no-op when absent).
  Status remove(Volume& vol, journal::Handle& handle, uint32_t ino);
  bool contains(uint32_t ino);
  std::vector<uint32_t> snapshot();

 private:
  base::OrderedMutex mu_{base::LockLevel::kOrphanList};
  std::vector<uint32_t> list_;  // list_[0] is s_last_orphan
};

}  // namespace uext::fs
