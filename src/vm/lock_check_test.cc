// The debug-build guard of docs/DESIGN.md's rule that no uext lock is held
// while touching memory that could fault back into uext: a fault from a
// thread holding a uext lock aborts, naming it, instead of deadlocking.
#include <gtest/gtest.h>

#include <cstring>

#include "base/ordered_mutex.h"
#include "support/process.h"
#include "support/writable.h"
#include "uext/filesystem.h"
#include "uext/mapping.h"

namespace uext {
namespace {

[[maybe_unused]] void touch_mapping_holding_a_lock(FaultHandling handling) {  // debug builds only
  testing::TempDir tmp;
  const std::string image = tmp / "fs.img";
  testing::make_image(image, {"-t", "ext4", "-b", "4096"}, "16M");
  Options o;
  o.fault_handling = handling;
  auto fs = testing::open_writable(image, o);
  auto st = fs->create(kRootIno, "f", 0644, {});
  (void)fs->truncate(st->ino, 4096);
  auto m = fs->mmap(st->ino, 0, 4096, kProtRead | kProtWrite, kMapShared);
  base::OrderedMutex mu{base::LockLevel::kPage};
  std::lock_guard lock(mu);
  std::memset(m.value()->data(), 1, 16);  // faults with a level-40 lock held
}

#ifdef UEXT_DEBUG_CHECKS
TEST(MappingLockCheckDeathTest, FaultWhileHoldingALockAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(touch_mapping_holding_a_lock(FaultHandling::kUserfaultfd), "while holding a uext lock \\(level 40\\)");
  EXPECT_DEATH(touch_mapping_holding_a_lock(FaultHandling::kSignal), "while holding a uext lock \\(level 40\\)");
}
#else
TEST(MappingLockCheckDeathTest, FaultWhileHoldingALockAborts) {
  GTEST_SKIP() << "the lock checks are compiled into debug builds only";
}
#endif

}  // namespace
}  // namespace uext
