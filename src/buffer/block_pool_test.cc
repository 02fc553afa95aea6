#include "buffer/block_pool.h"

#include <gtest/gtest.h>

namespace uext::buffer {
namespace {

TEST(BlockPool, ABufferLetGoIsHandedOutAgain) {
  auto pool = BlockPool::create(4096, 1 << 20);
  auto a = pool->take();
  ASSERT_EQ(a->size(), 4096u);
  const std::byte* first = a->data();
  a.reset();
  EXPECT_EQ(pool->spares(), 1u);
  auto b = pool->take();
  EXPECT_EQ(b->data(), first);
  EXPECT_EQ(pool->spares(), 0u);
}

TEST(BlockPool, KeepsNoMoreSparesThanItsBound) {
  auto pool = BlockPool::create(4096, 16 * 4096);
  std::vector<std::shared_ptr<BlockData>> held;
  for (int i = 0; i < 40; ++i) held.push_back(pool->take());
  held.clear();
  EXPECT_EQ(pool->spares(), 16u);
}

TEST(BlockPool, ABufferOutlivesTheLastOtherReferenceToItsPool) {
  auto pool = BlockPool::create(1024, 1 << 20);
  auto data = pool->take();
  std::weak_ptr<BlockPool> watch = pool;
  pool.reset();
  EXPECT_FALSE(watch.expired());  // the buffer keeps it
  (*data)[1023] = std::byte{7};
  data.reset();
  EXPECT_TRUE(watch.expired());
}

}  // namespace
}  // namespace uext::buffer
