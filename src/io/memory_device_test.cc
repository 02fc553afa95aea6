#include <gtest/gtest.h>

#include <cstddef>
#include <vector>

#include "uext/block_device.h"

namespace uext {
namespace {

std::vector<std::byte> bytes_of(std::initializer_list<int> values) {
  std::vector<std::byte> out;
  for (int v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

TEST(MemoryDevice, OwnsACopyOfItsContents) {
  std::vector<std::byte> contents = bytes_of({1, 2, 3, 4, 5, 6, 7, 8});
  auto dev = make_memory_device(contents);
  ASSERT_TRUE(dev->write(2, bytes_of({9, 9})).ok());
  std::vector<std::byte> back(8);
  ASSERT_TRUE(dev->read(0, back).ok());
  EXPECT_EQ(back, bytes_of({1, 2, 9, 9, 5, 6, 7, 8}));
  EXPECT_EQ(contents, bytes_of({1, 2, 3, 4, 5, 6, 7, 8}));  // the caller's bytes are untouched
}

TEST(MemoryDevice, OverCallerStorageWritesLandThereAndOutliveTheDevice) {
  std::vector<std::byte> storage = bytes_of({1, 2, 3, 4, 5, 6, 7, 8});
  {
    auto dev = make_memory_device_over(storage);
    EXPECT_EQ(dev->size(), 8u);
    EXPECT_FALSE(dev->read_only());
    ASSERT_TRUE(dev->write(6, bytes_of({7, 7})).ok());
    std::vector<std::byte> back(3);
    ASSERT_TRUE(dev->read(5, back).ok());
    EXPECT_EQ(back, bytes_of({6, 7, 7}));
  }
  EXPECT_EQ(storage, bytes_of({1, 2, 3, 4, 5, 6, 7, 7}));
}

TEST(MemoryDevice, AccessPastTheEndIsAnErrorThatNamesTheRange) {
  std::vector<std::byte> storage(16);
  auto dev = make_memory_device_over(storage);
  std::vector<std::byte> buf(8);
  auto r = dev->read(12, buf);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), EIO);
  EXPECT_NE(r.error().message().find("8 bytes at offset 12"), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("16 bytes"), std::string::npos) << r.error().message();
  auto w = dev->write(UINT64_MAX - 2, buf);  // an offset whose end wraps
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.error().code(), EIO);
  EXPECT_EQ(storage, std::vector<std::byte>(16));
}

}  // namespace
}  // namespace uext
