#include "buffer/buffer_cache.h"

#include <algorithm>

namespace uext::buffer {

BufferCache::BufferCache(BlockDevice& device, uint32_t block_size, size_t capacity_bytes)
    : device_(device),
      block_size_(block_size),
      blocks_per_shard_(std::max<size_t>(4, capacity_bytes / block_size / kShards)) {}

Result<BlockRef> BufferCache::get(uint64_t block) {
  Shard& shard = shards_[(block * 0x9E3779B97F4A7C15ull) >> 60];
  {
    std::lock_guard lock(shard.mu);
    auto it = shard.map.find(block);
    if (it != shard.map.end()) {
      shard.lru.splice(shard.lru.begin(), shard.lru, it->second.lru_pos);
      return it->second.data;
    }
  }
  // Read outside the lock: two threads may both read a block that was not
  // cached; the second insert simply finds the first one's copy.
  auto data = std::make_shared<BlockData>(block_size_);
  UEXT_TRY(device_.read(block * block_size_, *data));
  std::lock_guard lock(shard.mu);
  auto [it, inserted] = shard.map.try_emplace(block);
  if (!inserted) {
    shard.lru.splice(shard.lru.begin(), shard.lru, it->second.lru_pos);
    return it->second.data;
  }
  shard.lru.push_front(block);
  it->second = {data, shard.lru.begin()};
  if (shard.map.size() > blocks_per_shard_) {
    shard.map.erase(shard.lru.back());
    shard.lru.pop_back();
  }
  return BlockRef(data);
}

}  // namespace uext::buffer
