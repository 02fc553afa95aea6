#include "buffer/block_pool.h"

#include <algorithm>
#include <mutex>

namespace uext::buffer {

std::shared_ptr<BlockPool> BlockPool::create(uint32_t block_size, size_t max_spare_bytes) {
  const size_t max_spares = std::max<size_t>(16, max_spare_bytes / block_size);
  return std::shared_ptr<BlockPool>(new BlockPool(block_size, max_spares));
}

std::shared_ptr<BlockData> BlockPool::take() {
  std::unique_ptr<BlockData> data;
  {
    std::lock_guard lock(mu_);
    if (!spares_.empty()) {
      data = std::move(spares_.back());
      spares_.pop_back();
    }
  }
  if (!data) data = std::make_unique<BlockData>(block_size_);
  return std::shared_ptr<BlockData>(data.release(), [pool = shared_from_this()](BlockData* d) { pool->give_back(d); });
}

void BlockPool::give_back(BlockData* data) {
  std::unique_ptr<BlockData> owned(data);
  std::lock_guard lock(mu_);
  if (spares_.size() < max_spares_) spares_.push_back(std::move(owned));
}

size_t BlockPool::spares() const {
  std::lock_guard lock(mu_);
  return spares_.size();
}

}  // namespace uext::buffer
