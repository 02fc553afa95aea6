#include "alloc/prealloc_windows.h"

#include <gtest/gtest.h>

namespace uext::alloc {
namespace {

TEST(PreallocWindows, SetConsumeDrop) {
  PreallocWindows w;
  EXPECT_FALSE(w.get(12));
  w.set(12, 1000, 100);
  ASSERT_TRUE(w.get(12));
  EXPECT_EQ(w.get(12)->first, 1000u);
  EXPECT_TRUE(w.get(12)->contains(1099));
  EXPECT_FALSE(w.get(12)->contains(1100));

  // Using the front moves the start; using it all removes it.
  w.consume(12, 1040);
  EXPECT_EQ(w.get(12)->first, 1040u);
  EXPECT_EQ(w.get(12)->count, 60u);
  w.consume(12, 1100);
  EXPECT_FALSE(w.get(12));

  // A new window replaces the old one; count 0 drops it.
  w.set(13, 5000, 10);
  w.set(13, 7000, 20);
  EXPECT_EQ(w.get(13)->first, 7000u);
  EXPECT_EQ(w.size(), 1u);
  w.set(13, 9000, 0);
  EXPECT_TRUE(w.empty());
}

TEST(PreallocWindows, OverlappingLeavesTheOwnerOut) {
  PreallocWindows w;
  w.set(1, 100, 50);   // [100, 150)
  w.set(2, 200, 50);   // [200, 250)
  w.set(3, 1000, 10);  // [1000, 1010)
  auto hit = w.overlapping(149, 201, 0);
  EXPECT_EQ(hit.size(), 2u);
  hit = w.overlapping(149, 201, 2);
  ASSERT_EQ(hit.size(), 1u);
  EXPECT_EQ(hit[0].ino, 1u);
  EXPECT_TRUE(w.overlapping(150, 200, 0).empty());
  w.drop(1);
  w.drop_all();
  EXPECT_TRUE(w.empty());
}

TEST(PreallocWindows, OldestGoPastTheBound) {
  PreallocWindows w(3);
  for (uint32_t ino = 1; ino <= 5; ++ino) w.set(ino, ino * 100, 10);
  EXPECT_EQ(w.size(), 3u);
  EXPECT_FALSE(w.get(1));
  EXPECT_FALSE(w.get(2));
  EXPECT_TRUE(w.get(5));
}

}  // namespace
}  // namespace uext::alloc
