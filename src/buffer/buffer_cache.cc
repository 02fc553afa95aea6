#include "buffer/buffer_cache.h"

#include <algorithm>
#include <cstring>
#include <mutex>

namespace uext::buffer {

BufferCache::BufferCache(BlockDevice& device, uint32_t block_size, size_t capacity_bytes)
    : device_(device),
      block_size_(block_size),
      // Spares for a burst of changes; beyond that memory goes back to malloc.
      pool_(BlockPool::create(block_size, 4u << 20)),
      blocks_per_shard_(std::max<size_t>(4, capacity_bytes / block_size / kShards)) {
  edit_locks_.reserve(kEditLocks);
  for (size_t i = 0; i < kEditLocks; ++i) {
    edit_locks_.push_back(std::make_unique<base::OrderedMutex>(base::LockLevel::kBufferEdit));
  }
}

Result<BlockRef> BufferCache::get(uint64_t block) {
  Shard& shard = shard_of(block);
  for (;;) {
    uint64_t generation;
    {
      std::lock_guard lock(shard.mu);
      auto it = shard.map.find(block);
      if (it != shard.map.end()) {
        if (!it->second.pinned) shard.lru.splice(shard.lru.begin(), shard.lru, it->second.lru_pos);
        return it->second.data;
      }
      generation = shard.generation;
    }
    // Read outside the lock. If a writer installed or dropped a version of
    // any block of this shard meanwhile, the bytes read may predate it:
    // read again rather than cache them.
    std::shared_ptr<BlockData> data = pool_->take();
    UEXT_TRY(device_.read(block * block_size_, *data));
    std::lock_guard lock(shard.mu);
    auto [it, inserted] = shard.map.try_emplace(block);
    if (!inserted) return it->second.data;
    if (shard.generation != generation) {
      shard.map.erase(it);
      continue;
    }
    shard.lru.push_front(block);
    it->second.data = data;
    it->second.lru_pos = shard.lru.begin();
    evict_if_needed(shard);
    return BlockRef(data);
  }
}

Result<BlockRef> BufferCache::modify(uint64_t block, bool fresh, const BlockEdit& edit) {
  std::lock_guard edit_lock(*edit_locks_[block % kEditLocks]);
  std::shared_ptr<BlockData> copy = pool_->take();
  if (fresh) {
    std::memset(copy->data(), 0, block_size_);
  } else {
    UEXT_ASSIGN_OR_RETURN(BlockRef current, get(block));
    std::memcpy(copy->data(), current->data(), block_size_);
  }
  edit(*copy);
  BlockRef version = std::move(copy);
  install(block, version);
  return version;
}

void BufferCache::install(uint64_t block, BlockRef version) {
  Shard& shard = shard_of(block);
  std::lock_guard lock(shard.mu);
  ++shard.generation;
  Entry& e = shard.map[block];
  if (e.data && !e.pinned) shard.lru.erase(e.lru_pos);
  if (!e.pinned) ++shard.pinned;
  e.data = std::move(version);
  e.pinned = true;
}

void BufferCache::unpin(uint64_t block, const BlockRef& version) {
  Shard& shard = shard_of(block);
  std::lock_guard lock(shard.mu);
  auto it = shard.map.find(block);
  if (it == shard.map.end() || !it->second.pinned || it->second.data != version) return;
  it->second.pinned = false;
  --shard.pinned;
  shard.lru.push_front(block);
  it->second.lru_pos = shard.lru.begin();
  evict_if_needed(shard);
}

void BufferCache::forget(uint64_t block) {
  Shard& shard = shard_of(block);
  std::lock_guard lock(shard.mu);
  ++shard.generation;
  auto it = shard.map.find(block);
  if (it == shard.map.end()) return;
  if (it->second.pinned) {
    --shard.pinned;
  } else {
    shard.lru.erase(it->second.lru_pos);
  }
  shard.map.erase(it);
}

size_t BufferCache::pinned_count() const {
  size_t n = 0;
  for (auto& shard : shards_) {
    std::lock_guard lock(const_cast<base::OrderedMutex&>(shard.mu));
    n += shard.pinned;
  }
  return n;
}

void BufferCache::evict_if_needed(Shard& shard) {
  while (shard.lru.size() > blocks_per_shard_) {
    shard.map.erase(shard.lru.back());
    shard.lru.pop_back();
  }
}

}  // namespace uext::buffer
