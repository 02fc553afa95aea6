#include "base/ordered_mutex.h"

#include <gtest/gtest.h>

#include <mutex>

namespace uext::base {
namespace {

TEST(OrderedMutex, NestsInOrder) {
  OrderedMutex outer(LockLevel::kInode);
  OrderedMutex inner(LockLevel::kBufferCacheShard);
  std::lock_guard a(outer);
  std::lock_guard b(inner);
  SUCCEED();
}

#ifdef UEXT_DEBUG_CHECKS
TEST(OrderedMutexDeathTest, InversionAborts) {
  OrderedMutex outer(LockLevel::kInode);
  OrderedMutex inner(LockLevel::kBufferCacheShard);
  EXPECT_DEATH(
      {
        std::lock_guard b(inner);
        std::lock_guard a(outer);
      },
      "lock order violation");
}

TEST(OrderedMutexDeathTest, SameLevelNeedsPermission) {
  OrderedMutex first(LockLevel::kPage);
  OrderedMutex second(LockLevel::kPage);
  EXPECT_DEATH(
      {
        std::lock_guard a(first);
        std::lock_guard b(second);
      },
      "lock order violation");
  OrderedMutex x(LockLevel::kPage, true), y(LockLevel::kPage, true);
  std::lock_guard a(x);
  std::lock_guard b(y);
}
#endif

}  // namespace
}  // namespace uext::base
