// The cache of metadata blocks (inode table blocks, extent nodes, indirect
// blocks, directory blocks, xattr blocks, bitmaps, descriptors), shared by
// all threads.
//
// A cached block is an immutable version: readers hold a BlockRef and see
// consistent bytes however long they keep it. A change makes a new version
// (see modify()) and installs it; the journal keeps the versions it logs.
// A version whose change has not reached its home location yet is pinned:
// eviction skips it, so the cache never re-reads stale bytes from disk.
//
// File data never goes through this cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <unordered_map>
#include <span>
#include <vector>

#include "base/ordered_mutex.h"
#include "buffer/block_pool.h"
#include "uext/block_device.h"
#include "uext/status.h"

namespace uext::buffer {

using BlockRef = std::shared_ptr<const BlockData>;
using BlockEdit = std::function<void(std::span<std::byte>)>;

class BufferCache {
 public:
  BufferCache(BlockDevice& device, uint32_t block_size, size_t capacity_bytes);

  uint32_t block_size() const { return block_size_; }

  // The block's current version, from memory or read from the device.
  Result<BlockRef> get(uint64_t block);

  // Makes a new version of `block`: a copy of the current one (zeros when
  // `fresh`, for a block just allocated whose old bytes do not matter),
  // changed by `edit`, installed pinned. Changes of one block are
  // serialised, so concurrent edits never lose one another. `edit` runs
  // under a block lock: it must not call back into the cache.
  Result<BlockRef> modify(uint64_t block, bool fresh, const BlockEdit& edit);

  // Allows eviction of `block` again once `version` is on disk at its home
  // location, unless a newer version has replaced it meanwhile.
  void unpin(uint64_t block, const BlockRef& version);

  // Drops the cached copy (a freed block that will be reused as data).
  void forget(uint64_t block);

  size_t pinned_count() const;

 private:
  // Sharded so that readers on different blocks rarely contend.
  static constexpr size_t kShards = 16;
  static constexpr size_t kEditLocks = 256;
  struct Entry {
    BlockRef data;
    bool pinned = false;
    std::list<uint64_t>::iterator lru_pos;  // valid only when not pinned
  };
  struct Shard {
    base::OrderedMutex mu{base::LockLevel::kBufferCacheShard};
    std::list<uint64_t> lru;  // unpinned entries; front: most recently used
    std::unordered_map<uint64_t, Entry> map;
    size_t pinned = 0;
    uint64_t generation = 0;  // bumped by every install and forget
  };

  Shard& shard_of(uint64_t block) { return shards_[(block * 0x9E3779B97F4A7C15ull) >> 60]; }
  void install(uint64_t block, BlockRef version);
  void evict_if_needed(Shard& shard);

  BlockDevice& device_;
  uint32_t block_size_;
  std::shared_ptr<BlockPool> pool_;
  size_t blocks_per_shard_;
  Shard shards_[kShards];
  std::vector<std::unique_ptr<base::OrderedMutex>> edit_locks_;
};

}  // namespace uext::buffer
