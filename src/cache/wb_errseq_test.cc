#include "cache/wb_errseq.h"

#include <gtest/gtest.h>

namespace uext::cache {
namespace {

TEST(WbErrors, EachDescriptionHearsOfAnErrorOnce) {
  WbErrors e;
  uint64_t a = e.sample(12), b = e.sample(12);
  EXPECT_FALSE(e.check(12, a));
  e.record(12, 5, "first");
  auto got = e.check(12, a);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->code, 5);
  EXPECT_EQ(got->message, "first");
  EXPECT_FALSE(e.check(12, a)) << "reported once";
  ASSERT_TRUE(e.check(12, b)) << "the other description hears of it too";
  EXPECT_FALSE(e.check(12, b));
  // Seen: a description opened now does not get it.
  uint64_t c = e.sample(12);
  EXPECT_FALSE(e.check(12, c));
  // A second error reaches everybody again, the latest one.
  e.record(12, 28, "second");
  EXPECT_EQ(e.check(12, a)->code, 28);
  EXPECT_EQ(e.check(12, c)->code, 28);
  EXPECT_EQ(e.count(12), 2u);
}

TEST(WbErrors, UnseenErrorsReachDescriptionsOpenedAfterThem) {
  WbErrors e;
  e.record(7, 5, "nobody looked");
  uint64_t late = e.sample(7);
  ASSERT_TRUE(e.check(7, late));
  uint64_t later = e.sample(7);
  EXPECT_FALSE(e.check(7, later));
}

TEST(WbErrors, UnsampledCallersHaveOneCursorPerInode) {
  WbErrors e;
  uint64_t d = e.sample(3);
  e.record(3, 5, "x");
  ASSERT_TRUE(e.check_unsampled(3));
  EXPECT_FALSE(e.check_unsampled(3));
  // The description still hears of it: the unsampled cursor is its own.
  EXPECT_TRUE(e.check(3, d));
  EXPECT_FALSE(e.check_unsampled(99));
  e.forget(3);
  EXPECT_EQ(e.count(3), 0u);
}

}  // namespace
}  // namespace uext::cache
