// Memory for block versions, reused.
//
// Every change to a metadata block makes a new version of it (see
// BufferCache::modify) and lets the old one go: a 4 KiB allocation and a
// 4 KiB free for each bitmap, descriptor, inode table and superblock
// change. Through malloc these were slow: a version freed by one thread
// returns to the arena of the thread that allocated it, so each FUSE
// worker's arena kept growing (mprotect, fresh pages faulted in) while the
// others held free chunks. The pool hands the buffers of dead versions to
// whichever thread needs one next.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "base/ordered_mutex.h"

namespace uext::buffer {

using BlockData = std::vector<std::byte>;

class BlockPool : public std::enable_shared_from_this<BlockPool> {
 public:
  // Keeps at most `max_spare_bytes` of spare buffers (at least 16).
  static std::shared_ptr<BlockPool> create(uint32_t block_size, size_t max_spare_bytes);

  // A buffer of block_size bytes whose contents are undefined (the caller
  // fills all of it). When the last reference drops it returns here; the
  // pool lives as long as any buffer it handed out.
  std::shared_ptr<BlockData> take();
  size_t spares() const;

 private:
  BlockPool(uint32_t block_size, size_t max_spares) : block_size_(block_size), max_spares_(max_spares) {}
  void give_back(BlockData* data);
  const uint32_t block_size_;
  const size_t max_spares_;
  // A leaf: a buffer returns wherever its last reference drops, under any
  // other lock.
  mutable base::OrderedMutex mu_{base::LockLevel::kBlockPool};
  std::vector<std::unique_ptr<BlockData>> spares_;
};

}  // namespace uext::buffer
