#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "uext/block_device.h"

namespace uext {
namespace {

constexpr size_t kImageBytes = 16u << 20;

class ImageFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/uext-image-file-XXXXXX";
    int fd = ::mkstemp(tmpl);
    ASSERT_GE(fd, 0);
    path_ = tmpl;
    ASSERT_EQ(::ftruncate(fd, kImageBytes), 0);
    ::close(fd);
    memfd_ = ::memfd_create("image-file-test", MFD_CLOEXEC);
    ASSERT_GE(memfd_, 0);
    ASSERT_EQ(::ftruncate(memfd_, kImageBytes), 0);
  }
  void TearDown() override {
    if (memfd_ >= 0) ::close(memfd_);
    ::unlink(path_.c_str());
  }

  // Bytes numbered by position and a seed, so misplaced data shows.
  static std::vector<std::byte> pattern(size_t len, uint32_t seed) {
    std::vector<std::byte> v(len);
    for (size_t i = 0; i < len; ++i) v[i] = std::byte((i * 131 + seed * 7 + i / 4096) & 0xff);
    return v;
  }
  void put_in_memfd(uint64_t offset, const std::vector<std::byte>& bytes) {
    ASSERT_EQ(::pwrite(memfd_, bytes.data(), bytes.size(), static_cast<off_t>(offset)),
              static_cast<ssize_t>(bytes.size()));
  }
  std::vector<std::byte> read_image(uint64_t offset, size_t len) {
    std::vector<std::byte> got(len);
    int fd = ::open(path_.c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::pread(fd, got.data(), len, static_cast<off_t>(offset)), static_cast<ssize_t>(len));
    ::close(fd);
    return got;
  }

  std::string path_;
  int memfd_ = -1;
};

// A window of the file (a partition of a disk image): every kind of read
// and write lands `offset` bytes further into the file, the device is only
// as long as the window, and nothing outside it is touched.
TEST_F(ImageFileTest, AWindowOfTheFileIsTheWholeDevice) {
  constexpr uint64_t kOffset = 1u << 20, kLimit = 8u << 20;
  const auto outside = pattern(kImageBytes, 9);
  {
    int fd = ::open(path_.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, outside.data(), outside.size(), 0), static_cast<ssize_t>(outside.size()));
    ::close(fd);
  }
  auto dev = open_image_file(path_, {.read_only = false, .offset = kOffset, .size_limit = kLimit});
  ASSERT_TRUE(dev.ok()) << dev.error().message();
  EXPECT_EQ((*dev)->size(), kLimit);
  std::vector<std::byte> got(4096);
  ASSERT_TRUE((*dev)->read(0, got).ok());
  EXPECT_TRUE(std::equal(got.begin(), got.end(), outside.begin() + kOffset));

  const auto small = pattern(4096, 2), big = pattern(1u << 20, 3), gathered = pattern(8192, 4);
  ASSERT_TRUE((*dev)->write(4096, small).ok());
  put_in_memfd(0, big);
  ASSERT_TRUE((*dev)->write_data_from_file(2u << 20, big, memfd_, 0).ok());  // spliced, O_DIRECT
  ASSERT_TRUE((*dev)->write_data(4u << 20, big).ok());
  const std::span<const std::byte> halves[] = {std::span(gathered).first(4096), std::span(gathered).subspan(4096)};
  ASSERT_TRUE((*dev)->write_gather(kLimit - 8192, halves).ok());
  ASSERT_TRUE((*dev)->flush().ok());
  EXPECT_EQ(read_image(kOffset + 4096, 4096), small);
  EXPECT_EQ(read_image(kOffset + (2u << 20), big.size()), big);
  EXPECT_EQ(read_image(kOffset + (4u << 20), big.size()), big);
  EXPECT_EQ(read_image(kOffset + kLimit - 8192, 8192), gathered);
  // Before and after the window: as they were.
  EXPECT_EQ(read_image(0, kOffset), std::vector<std::byte>(outside.begin(), outside.begin() + kOffset));
  EXPECT_EQ(read_image(kOffset + kLimit, kImageBytes - kOffset - kLimit),
            std::vector<std::byte>(outside.begin() + kOffset + kLimit, outside.end()));
  // The window's end is the device's.
  Status past = (*dev)->write(kLimit, small);
  ASSERT_FALSE(past.ok());
  EXPECT_EQ(past.error().code(), ENOSPC);
  EXPECT_FALSE((*dev)->read(kLimit - 2048, got).ok());

  // Without a limit the window runs to the end of the file.
  auto rest = open_image_file(path_, {.offset = kOffset});
  ASSERT_TRUE(rest.ok());
  EXPECT_EQ((*rest)->size(), kImageBytes - kOffset);
  // What cannot be: a start past the end, O_DIRECT off a 4 KiB boundary.
  auto beyond = open_image_file(path_, {.offset = kImageBytes + 1});
  ASSERT_FALSE(beyond.ok());
  EXPECT_NE(beyond.error().message().find("beyond its end"), std::string::npos) << beyond.error().message();
  auto unaligned = open_image_file(path_, {.direct_io = true, .offset = 512});
  ASSERT_FALSE(unaligned.ok());
  EXPECT_NE(unaligned.error().message().find("multiple of 4096"), std::string::npos);
  // Unaligned without O_DIRECT is fine: its large writes stay buffered.
  auto odd = open_image_file(path_, {.read_only = false, .offset = 512});
  ASSERT_TRUE(odd.ok());
  ASSERT_TRUE((*odd)->write_data_from_file(0, big, memfd_, 0).ok());
  EXPECT_EQ(read_image(512, big.size()), big);
}

// The spliced path: large, aligned, from the memfd; the image must hold the
// memfd's bytes (a hole in the memfd reads as zeros), in the right place.
TEST_F(ImageFileTest, WriteDataFromFileCopiesTheMemfdBytes) {
  auto dev = open_image_file(path_, {.read_only = false});
  ASSERT_TRUE(dev.ok()) << dev.error().message();
  const size_t len = 1u << 20;
  auto bytes = pattern(len, 1);
  std::memset(bytes.data() + 8192, 0, 4096);  // punched out of the memfd below
  put_in_memfd(3u << 20, bytes);
  ASSERT_EQ(::fallocate(memfd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (3 << 20) + 8192, 4096), 0);
  ASSERT_TRUE((*dev)->write_data_from_file(5u << 20, bytes, memfd_, 3u << 20).ok());
  EXPECT_EQ(read_image(5u << 20, len), bytes);
  EXPECT_EQ(read_image((5u << 20) - 4096, 4096), std::vector<std::byte>(4096));
  EXPECT_EQ(read_image(6u << 20, 4096), std::vector<std::byte>(4096));
}

// write_gather lays its pieces one after another, as write() of their
// concatenation: more pieces than one pwritev takes (IOV_MAX), pieces of
// odd and zero sizes; past the end of the image it fails naming the
// offset, writing nothing; direct_io joins them and writes the same bytes.
TEST_F(ImageFileTest, WriteGatherWritesThePiecesInOrder) {
  for (bool direct : {false, true}) {
    SCOPED_TRACE(direct ? "direct_io" : "buffered");
    auto dev = open_image_file(path_, {.read_only = false, .direct_io = direct});
    ASSERT_TRUE(dev.ok()) << dev.error().message();
    const auto all = pattern(3000 * 4096 + 4096, direct ? 9 : 8);
    std::vector<std::span<const std::byte>> pieces;
    size_t at = 0;
    for (size_t i = 0; at < all.size(); ++i) {
      const size_t len = std::min(all.size() - at, i % 7 == 3 ? size_t{0} : i % 5 == 0 ? size_t{8192} : size_t{4096});
      pieces.emplace_back(all.data() + at, len);
      at += len;
    }
    ASSERT_GT(pieces.size(), size_t{IOV_MAX});
    ASSERT_TRUE((*dev)->write_gather(1u << 20, pieces).ok());
    EXPECT_EQ(read_image(1u << 20, all.size()), all);
    Status past = (*dev)->write_gather(kImageBytes - 4096, pieces);
    ASSERT_FALSE(past.ok());
    EXPECT_NE(past.error().message().find(std::to_string(kImageBytes - 4096)), std::string::npos)
        << past.error().message();
    EXPECT_EQ(read_image(kImageBytes - 4096, 4096), std::vector<std::byte>(4096));
  }
}

// Small and unaligned writes come from the memfd too (into the host's
// cache rather than O_DIRECT). The buffer given holds other bytes, which
// shows where the written ones came from.
TEST_F(ImageFileTest, SmallAndUnalignedWritesComeFromTheMemfd) {
  auto dev = open_image_file(path_, {.read_only = false});
  ASSERT_TRUE(dev.ok()) << dev.error().message();
  auto small = pattern(8192, 2);
  put_in_memfd(4096, small);
  ASSERT_TRUE((*dev)->write_data_from_file(1u << 20, pattern(8192, 20), memfd_, 4096).ok());
  EXPECT_EQ(read_image(1u << 20, small.size()), small);
  auto odd = pattern(300 * 1024 + 512, 3);
  put_in_memfd(1u << 20, odd);
  ASSERT_TRUE((*dev)->write_data_from_file((2u << 20) + 512, pattern(odd.size(), 30), memfd_, 1u << 20).ok());
  EXPECT_EQ(read_image((2u << 20) + 512, odd.size()), odd);
}

// A source that cannot be spliced from (an eventfd here) leaves the write
// to the buffer, small or large.
TEST_F(ImageFileTest, WriteDataFromFileFallsBackToTheBuffer) {
  auto dev = open_image_file(path_, {.read_only = false});
  ASSERT_TRUE(dev.ok()) << dev.error().message();
  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  ASSERT_GE(efd, 0);
  auto small = pattern(8192, 2);
  Status s = (*dev)->write_data_from_file(1u << 20, small, efd, 0);
  EXPECT_TRUE(s.ok()) << s.error().message();
  EXPECT_EQ(read_image(1u << 20, small.size()), small);
  auto large = pattern(1u << 20, 6);
  s = (*dev)->write_data_from_file(4u << 20, large, efd, 0);
  EXPECT_TRUE(s.ok()) << s.error().message();
  EXPECT_EQ(read_image(4u << 20, large.size()), large);
  ::close(efd);
}

TEST_F(ImageFileTest, WriteDataFromFilePastTheEndNamesTheOffset) {
  auto dev = open_image_file(path_, {.read_only = false});
  ASSERT_TRUE(dev.ok()) << dev.error().message();
  auto bytes = pattern(1u << 20, 4);
  put_in_memfd(0, bytes);
  Status s = (*dev)->write_data_from_file(kImageBytes - 4096, bytes, memfd_, 0);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), ENOSPC);
  EXPECT_NE(s.error().message().find(std::to_string(kImageBytes - 4096)), std::string::npos) << s.error().message();
}

// A source that splice refuses (no descriptor) fails the write with an
// error naming the offset; the next write on the thread, with a fresh
// pipe, is whole.
TEST_F(ImageFileTest, WriteDataFromFileAfterAFailedSpliceIsWhole) {
  auto dev = open_image_file(path_, {.read_only = false});
  ASSERT_TRUE(dev.ok()) << dev.error().message();
  auto bytes = pattern(1u << 20, 5);
  Status s = (*dev)->write_data_from_file(0, bytes, -1, 0);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code(), EBADF) << s.error().message();
  put_in_memfd(1u << 20, bytes);
  ASSERT_TRUE((*dev)->write_data_from_file(2u << 20, bytes, memfd_, 1u << 20).ok());
  EXPECT_EQ(read_image(2u << 20, bytes.size()), bytes);
}

// Threads splicing at once each use a pipe of their own.
TEST_F(ImageFileTest, WriteDataFromFileFromManyThreads) {
  auto dev = open_image_file(path_, {.read_only = false});
  ASSERT_TRUE(dev.ok()) << dev.error().message();
  constexpr int kThreads = 4;
  constexpr size_t kPiece = 512 * 1024;
  std::vector<std::vector<std::byte>> pieces;
  for (int t = 0; t < kThreads; ++t) {
    pieces.push_back(pattern(kPiece, 10 + t));
    put_in_memfd(t * kPiece, pieces.back());
  }
  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 8; ++round) {
        const uint64_t at = (static_cast<uint64_t>(t) * 8 + round) * kPiece;
        if (!(*dev)->write_data_from_file(at, pieces[t], memfd_, t * kPiece).ok()) ++failures[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(failures[t], 0);
    for (int round = 0; round < 8; ++round) {
      EXPECT_EQ(read_image((static_cast<uint64_t>(t) * 8 + round) * kPiece, kPiece), pieces[t]) << t << " " << round;
    }
  }
}

}  // namespace
}  // namespace uext
