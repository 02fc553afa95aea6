// A cache of metadata blocks (extent nodes, indirect blocks, directory
// blocks, xattr blocks, inode table blocks), shared by all threads.
//
// File data never goes through it: reads of data go straight from the
// device into the caller's buffer, so big files cannot evict metadata.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "base/ordered_mutex.h"
#include "uext/block_device.h"
#include "uext/status.h"

namespace uext::buffer {

using BlockData = std::vector<std::byte>;
using BlockRef = std::shared_ptr<const BlockData>;

class BufferCache {
 public:
  BufferCache(BlockDevice& device, uint32_t block_size, size_t capacity_bytes);

  // The block's bytes, from memory or read from the device. Callers may keep
  // the reference as long as they like; eviction only drops the cache's own.
  Result<BlockRef> get(uint64_t block);

 private:
  // Sharded so that readers on different blocks rarely contend.
  static constexpr size_t kShards = 16;
  struct Shard {
    base::OrderedMutex mu{base::LockLevel::kBufferCacheShard};
    std::list<uint64_t> lru;  // front: most recently used
    struct Entry {
      BlockRef data;
      std::list<uint64_t>::iterator lru_pos;
    };
    std::unordered_map<uint64_t, Entry> map;
  };

  BlockDevice& device_;
  uint32_t block_size_;
  size_t blocks_per_shard_;
  Shard shards_[kShards];
};

}  // namespace uext::buffer
