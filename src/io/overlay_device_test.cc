#include "io/overlay_device.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <vector>

namespace uext::io {
namespace {

constexpr uint32_t kBlock = 1024;

// A base of 8 blocks, block k filled with the byte k + 1; the overlay
// keeps a pointer to it for checking that it is never written.
struct Stack {
  BlockDevice* base = nullptr;
  std::unique_ptr<OverlayDevice> overlay;
  Stack() {
    std::vector<std::byte> contents(8 * kBlock);
    for (size_t i = 0; i < contents.size(); ++i) contents[i] = static_cast<std::byte>(i / kBlock + 1);
    auto dev = make_memory_device(contents);
    base = dev.get();
    overlay = std::make_unique<OverlayDevice>(std::move(dev), kBlock);
  }
  std::vector<std::byte> read(BlockDevice& d, uint64_t off, size_t n) {
    std::vector<std::byte> out(n);
    Status s = d.read(off, out);
    EXPECT_TRUE(s.ok()) << s.error().message();
    return out;
  }
};

std::vector<std::byte> bytes(size_t n, uint8_t v) { return std::vector<std::byte>(n, std::byte{v}); }

TEST(OverlayDevice, WritesStayInMemoryAndReadsMergeThem) {
  Stack s;
  // A whole block, and a piece of another that straddles nothing.
  ASSERT_TRUE(s.overlay->write(2 * kBlock, bytes(kBlock, 0xaa)).ok());
  ASSERT_TRUE(s.overlay->write(5 * kBlock + 100, bytes(10, 0xbb)).ok());
  EXPECT_EQ(s.overlay->blocks(), 2u);
  // A read across blocks 1..5: base, overlay, base, base, overlay piece.
  auto got = s.read(*s.overlay, kBlock, 5 * kBlock);
  for (size_t i = 0; i < got.size(); ++i) {
    const uint64_t at = kBlock + i;
    uint8_t want = static_cast<uint8_t>(at / kBlock + 1);
    if (at / kBlock == 2) want = 0xaa;
    if (at >= 5 * kBlock + 100 && at < 5 * kBlock + 110) want = 0xbb;
    ASSERT_EQ(got[i], std::byte{want}) << "byte " << at;
  }
  // The base is untouched.
  EXPECT_EQ(s.read(*s.base, 2 * kBlock, kBlock), bytes(kBlock, 3));
  EXPECT_EQ(s.read(*s.base, 5 * kBlock, kBlock), bytes(kBlock, 6));
  // A write across a block boundary lands in both blocks.
  ASSERT_TRUE(s.overlay->write(7 * kBlock - 4, bytes(8, 0xcc)).ok());
  auto edge = s.read(*s.overlay, 7 * kBlock - 6, 12);
  EXPECT_EQ(edge, (std::vector<std::byte>{std::byte{7}, std::byte{7}, std::byte{0xcc}, std::byte{0xcc},
                                         std::byte{0xcc}, std::byte{0xcc}, std::byte{0xcc}, std::byte{0xcc},
                                         std::byte{0xcc}, std::byte{0xcc}, std::byte{8}, std::byte{8}}));
  EXPECT_FALSE(s.overlay->read_only());
  EXPECT_EQ(s.overlay->size(), 8u * kBlock);
  s.overlay->discard();
  EXPECT_EQ(s.read(*s.overlay, 2 * kBlock, kBlock), bytes(kBlock, 3));
}

TEST(OverlayDevice, PastTheEndIsAnErrorNamingTheOffset) {
  Stack s;
  std::vector<std::byte> buf(16);
  Status r = s.overlay->read(8 * kBlock - 8, buf);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), EIO);
  EXPECT_NE(r.error().message().find(std::to_string(8 * kBlock - 8)), std::string::npos) << r.error().message();
  Status w = s.overlay->write(8 * kBlock, bytes(1, 1));
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(s.overlay->blocks(), 0u);
}

}  // namespace
}  // namespace uext::io
