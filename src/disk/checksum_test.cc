#include "disk/checksum.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace uext::disk {
namespace {

Bytes text(const std::string& s) { return as_bytes(s.data(), s.size()); }

const std::string kCheck = "123456789";

TEST(Crc32c, MatchesTheKernelConventionWithoutInversion) {
  EXPECT_EQ(crc32c(0xFFFFFFFF, text(kCheck)), 0x1CF96D7Cu);
  // The usual published check value is the inverted form.
  EXPECT_EQ(~crc32c(0xFFFFFFFF, text(kCheck)), 0xE3069283u);
  EXPECT_EQ(crc32c(0x12345678, {}), 0x12345678u);
}

TEST(Crc32c, ChainsAcrossPieces) {
  const std::string all = "the quick brown fox jumps over the lazy dog";
  for (size_t cut = 0; cut <= all.size(); ++cut) {
    uint32_t split = crc32c(crc32c(0xABCDEF01, text(all.substr(0, cut))), text(all.substr(cut)));
    EXPECT_EQ(split, crc32c(0xABCDEF01, text(all))) << "cut at " << cut;
  }
}

TEST(Crc32c, Le32HelperHashesLittleEndianBytes) {
  const std::byte le[4] = {std::byte{0x78}, std::byte{0x56}, std::byte{0x34}, std::byte{0x12}};
  EXPECT_EQ(crc32c_le32(~0u, 0x12345678), crc32c(~0u, le));
}

TEST(Crc16, MatchesPublishedCheckValues) {
  // CRC-16/ARC (init 0) and CRC-16/MODBUS (init 0xFFFF): both are the
  // reflected 0x8005 polynomial without output inversion.
  EXPECT_EQ(crc16(0x0000, text(kCheck)), 0xBB3D);
  EXPECT_EQ(crc16(0xFFFF, text(kCheck)), 0x4B37);
  EXPECT_EQ(crc16(0x1234, {}), 0x1234);
}

TEST(Crc16, ChainsAcrossPieces) {
  const std::string all = "block group descriptor";
  for (size_t cut = 0; cut <= all.size(); ++cut) {
    EXPECT_EQ(crc16(crc16(0xFFFF, text(all.substr(0, cut))), text(all.substr(cut))), crc16(0xFFFF, text(all)));
  }
}

TEST(Crc32Be, MatchesPublishedCheckValues) {
  // CRC-32/MPEG-2: polynomial 0x04C11DB7, MSB first, init ~0, no inversion.
  EXPECT_EQ(crc32_be(0xFFFFFFFF, text(kCheck)), 0x0376E6E7u);
  // CRC-32/BZIP2 is the same with the output inverted.
  EXPECT_EQ(~crc32_be(0xFFFFFFFF, text(kCheck)), 0xFC891918u);
  EXPECT_EQ(crc32_be(0xCAFEBABE, {}), 0xCAFEBABEu);
}

TEST(Crc32Be, ChainsAcrossPieces) {
  std::vector<std::byte> data(300);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>(i * 7 + 3);
  Bytes all(data.data(), data.size());
  EXPECT_EQ(crc32_be(crc32_be(1, all.first(100)), all.subspan(100)), crc32_be(1, all));
}

}  // namespace
}  // namespace uext::disk
