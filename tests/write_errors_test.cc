// Device errors under a write through the block map (ext2 and ext3, and
// ext4 without delayed allocation). Such a write goes in chunks of up to
// 8,192 blocks, each allocating, writing and committing its blocks and the
// size that covers them. src/io/fault_device fails the data writes of one
// chunk; the write must then end as write(2) does (the bytes of the chunks
// before, or the error if there were none), and the failed chunk must leave
// no block mapped past the file's end, which e2fsck would call a wrong
// size. Each test closes the image and checks it with e2fsck -fn and
// dumpe2fs -h, and reads back what the write said it wrote.
#include <gtest/gtest.h>

#include <cerrno>
#include <cstdint>
#include <string>

#include "support/faulty_fs.h"
#include "support/process.h"
#include "uext/filesystem.h"

namespace uext::testing {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// Bytes that differ from block to block, so a block written to the wrong
// place or read from a stale one shows.
std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i / 1024 * 7 + i) % 251);
  return s;
}

std::span<const std::byte> as_bytes(const std::string& s) { return std::as_bytes(std::span(s)); }

struct Outcome {
  Result<size_t> written = Error(EINVAL, "not run");
  uint64_t size = 0;
  uint64_t failed_writes = 0;
};

// Writes `data` at offset 0 of a new file on a fresh image (`fs_type`, 1
// KiB blocks), every device write failing with EIO once `fail_after` bytes
// have gone to the device during the write; then closes and checks.
Outcome write_with_eio_after(const std::string& image, const std::string& data, uint64_t fail_after,
                             const std::string& fs_type = "ext3") {
  Outcome out;
  run_ok({"mke2fs", "-F", "-q", "-t", fs_type, "-b", "1024", image, "48M"});
  Options no_delalloc;  // for ext4: extents written through, as ext3's block map is
  no_delalloc.delayed_allocation = false;
  FaultyFs f = open_faulty(image, no_delalloc);
  if (!f.fs) return out;
  auto st = f.fs->create(kRootIno, "f", 0100644, {});
  EXPECT_TRUE(st.ok()) << st.error().message();
  if (!st.ok()) return out;
  EXPECT_TRUE(f.fs->sync().ok());
  uint64_t seen = 0;  // the rule runs under the device's lock, one call at a time
  f.dev->fail_if(io::IoOp::kWrite, [&seen, fail_after](const io::IoCall& call) {
    seen += call.length;
    return seen > fail_after;
  });
  out.written = f.fs->write(st->ino, 0, as_bytes(data));
  out.failed_writes = f.dev->counts().failed_writes;
  f.dev->clear_rules();
  auto now = f.fs->stat(st->ino);
  EXPECT_TRUE(now.ok());
  if (now.ok()) out.size = now->size;
  close_and_check(f, image);
  return out;
}

TEST(WriteErrors, EioInALaterChunkEndsABlockMapWriteShort) {
  TempDir tmp;
  const std::string image = tmp / "later.img";
  const std::string data = pattern(12 * kMiB);
  // The first chunk is 7.5 to 8 MiB of data (a handle maps up to 8,192
  // blocks, fewer where its credits end): its writes pass, a later one's
  // fail.
  Outcome o = write_with_eio_after(image, data, 9 * kMiB);
  EXPECT_GT(o.failed_writes, 0u) << "no device write failed: the test did not test";
  ASSERT_TRUE(o.written.ok()) << "the first chunk went in, so the write must return its count: "
                              << o.written.error().message();
  const size_t n = *o.written;
  EXPECT_GE(n, 7 * kMiB);
  EXPECT_LT(n, data.size());
  EXPECT_EQ(n % 1024, 0u) << "a chunk ends on a block";
  EXPECT_EQ(o.size, n) << "the size must cover what the write returned, and no more";
  EXPECT_TRUE(read_back(image, "/f", data.size()) == data.substr(0, n))
      << "the image must hold exactly the " << n << " bytes the write returned";
}

// The same path serves extent files when delayed allocation is off
// (nodelalloc): e2fsck refuses written extents past the size just as it
// refuses mapped blocks.
TEST(WriteErrors, EioInALaterChunkEndsAnExtentWriteShortWithoutDelalloc) {
  TempDir tmp;
  const std::string image = tmp / "extents.img";
  const std::string data = pattern(12 * kMiB);
  Outcome o = write_with_eio_after(image, data, 9 * kMiB, "ext4");
  EXPECT_GT(o.failed_writes, 0u) << "no device write failed: the test did not test";
  ASSERT_TRUE(o.written.ok()) << o.written.error().message();
  const size_t n = *o.written;
  EXPECT_GT(n, 0u);
  EXPECT_LT(n, data.size());
  EXPECT_EQ(o.size, n);
  EXPECT_TRUE(read_back(image, "/f", data.size()) == data.substr(0, n))
      << "the image must hold exactly the " << n << " bytes the write returned";
}

TEST(WriteErrors, EioInTheFirstChunkFailsTheWrite) {
  TempDir tmp;
  const std::string image = tmp / "first.img";
  const std::string data = pattern(4 * kMiB);
  Outcome o = write_with_eio_after(image, data, 1 * kMiB);
  EXPECT_GT(o.failed_writes, 0u) << "no device write failed: the test did not test";
  ASSERT_FALSE(o.written.ok()) << "nothing went in, so the write must fail; it returned " << *o.written;
  EXPECT_EQ(o.written.error().code(), EIO) << o.written.error().message();
  EXPECT_EQ(o.size, 0u);
  EXPECT_EQ(read_back(image, "/f", data.size()), "");
}

}  // namespace
}  // namespace uext::testing
