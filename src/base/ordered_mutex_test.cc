#include "base/ordered_mutex.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
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

// The preload shim closes its filesystem from an exit handler, which runs
// after the main thread's thread_local objects are destroyed: the debug
// lock records must still serve it (under ASan a destroyed record is a
// use after free).
TEST(OrderedMutexDeathTest, LocksWorkInExitHandlers) {
  EXPECT_EXIT(
      {
        {
          OrderedMutex early(LockLevel::kInode);
          std::lock_guard g(early);  // this thread's records exist before exit
        }
        std::atexit([] {
          OrderedMutex outer(LockLevel::kInode);
          OrderedMutex inner(LockLevel::kPage);
          std::lock_guard a(outer);
          std::lock_guard b(inner);
          std::fputs("the exit handler took its locks\n", stderr);
        });
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "the exit handler took its locks");
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
