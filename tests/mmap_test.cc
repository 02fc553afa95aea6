// Mappings (Filesystem::mmap) against real oracles: stores through a shared
// mapping reach the image (read back by uext, debugfs and the kernel's
// ext4), holes read as zeros without allocating, accesses past the end of
// the file and stores that cannot get a block raise SIGBUS at the page and
// lose nothing stored before, truncate and punch behave as on Linux, and a
// buffer in a mapping of the very file passes through read() and write()
// without deadlock. Every test runs with userfaultfd and with the signal
// fallback, and ends with e2fsck -fn and dumpe2fs -h on the image.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support/images.h"
#include "support/process.h"
#include "support/sigbus.h"
#include "support/writable.h"
#include "uext/filesystem.h"
#include "uext/mapping.h"

namespace uext::testing {
namespace {

constexpr size_t kPage = 4096;

std::byte pattern(uint64_t page) { return static_cast<std::byte>(page % 251 + 1); }

struct Param {
  FaultHandling handling;
  const char* name;
};

class MmapTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    install_sigbus_handler();
    image_ = tmp_ / "fs.img";
  }
  Options options(bool delalloc = true) const {
    Options o;
    o.fault_handling = GetParam().handling;
    o.delayed_allocation = delalloc;
    return o;
  }
  Ino create(Filesystem& fs, const std::string& name, uint64_t size) {
    auto st = fs.create(kRootIno, name, 0644, {});
    EXPECT_TRUE(st.ok()) << st.error().message();
    if (size) {
      EXPECT_TRUE(fs.truncate(st->ino, size).ok());
    }
    return st->ino;
  }
  std::unique_ptr<Mapping> map(Filesystem& fs, Ino ino, size_t length, int prot = kProtRead | kProtWrite,
                               int flags = kMapShared, uint64_t offset = 0) {
    auto m = fs.mmap(ino, offset, length, prot, flags);
    EXPECT_TRUE(m.ok()) << m.error().message();
    if (!m.ok()) return nullptr;
    EXPECT_EQ((*m)->fault_handling(), GetParam().handling);
    return std::move(*m);
  }
  std::vector<std::byte> read_all(Filesystem& fs, Ino ino, size_t n) {
    std::vector<std::byte> out(n);
    auto got = fs.read(ino, 0, out);
    EXPECT_TRUE(got.ok());
    if (got.ok()) out.resize(*got);
    return out;
  }
  TempDir tmp_;
  std::string image_;
};

TEST_P(MmapTest, SharedStoresAreCoherentAndReachTheImage) {
  make_image(image_, {"-t", "ext4", "-b", "4096"}, "64M");
  constexpr size_t kPages = 10;
  {
    auto fs = open_writable(image_, options());
    ASSERT_TRUE(fs);
    Ino ino = create(*fs, "f", 0);
    std::vector<std::byte> a(3 * kPage, std::byte{'a'});
    ASSERT_TRUE(fs->write(ino, 0, a).ok());
    ASSERT_TRUE(fs->truncate(ino, kPages * kPage).ok());
    auto m = map(*fs, ino, kPages * kPage);
    ASSERT_TRUE(m);
    std::byte* p = m->data();
    // What write() put there, and zeros past it.
    EXPECT_EQ(p[0], std::byte{'a'});
    EXPECT_EQ(p[3 * kPage - 1], std::byte{'a'});
    EXPECT_EQ(p[3 * kPage], std::byte{0});
    for (size_t i = 2; i < kPages; ++i) ASSERT_TRUE(try_fill(p + i * kPage, pattern(i), kPage)) << "page " << i;
    // read() sees the stores at once; the mapping sees write().
    auto seen = read_all(*fs, ino, kPages * kPage);
    ASSERT_EQ(seen.size(), kPages * kPage);
    EXPECT_EQ(seen[5 * kPage + 7], pattern(5));
    std::vector<std::byte> z(100, std::byte{'z'});
    ASSERT_TRUE(fs->write(ino, 5 * kPage + 100, z).ok());
    EXPECT_EQ(p[5 * kPage + 150], std::byte{'z'});
    Status synced = m->sync(kSyncNow);
    ASSERT_TRUE(synced.ok()) << synced.error().message();
    // A store after writeback faults again (page_mkclean) and is kept.
    ASSERT_TRUE(try_fill(p + 9 * kPage, std::byte{'q'}, 10));
    m.reset();
    ASSERT_TRUE(fs->close().ok());
  }
  expect_fsck_clean(image_);
  std::string expected(kPages * kPage, '\0');
  std::memset(expected.data(), 'a', 2 * kPage);
  for (size_t i = 2; i < kPages; ++i) std::memset(expected.data() + i * kPage, static_cast<int>(pattern(i)), kPage);
  std::memset(expected.data() + 5 * kPage + 100, 'z', 100);
  std::memset(expected.data() + 9 * kPage, 'q', 10);
  TempDir out;
  run_ok({"debugfs", "-R", "dump /f " + out / "f", image_});
  EXPECT_TRUE(read_file(out / "f") == expected) << "debugfs reads other bytes than were stored";
  if (can_loop_mount()) {
    TempDir mnt;
    run_ok({"mount", "-o", "loop,ro", image_, mnt.path()});
    const std::string kernel = read_file(mnt / "f");
    run_ok({"umount", mnt.path()});
    EXPECT_TRUE(kernel == expected) << "the kernel reads other bytes than were stored";
  }
}

TEST_P(MmapTest, SeveralMappingsInSeveralThreadsShareThePages) {
  make_image(image_, {"-t", "ext4", "-b", "4096"}, "64M");
  auto fs = open_writable(image_, options());
  ASSERT_TRUE(fs);
  Ino ino = create(*fs, "f", 16 * kPage);
  auto whole = map(*fs, ino, 16 * kPage);
  auto tail = map(*fs, ino, 8 * kPage, kProtRead | kProtWrite, kMapShared, 8 * kPage);
  ASSERT_TRUE(whole && tail);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      // Threads 0 and 1 store through one mapping, 2 and 3 through the other.
      for (uint64_t i = 8 + t; i < 16; i += 4) {
        std::byte* p = t < 2 ? whole->data() + i * kPage : tail->data() + (i - 8) * kPage;
        std::memset(p, static_cast<int>(pattern(i)), kPage);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (uint64_t i = 8; i < 16; ++i) {
    EXPECT_EQ(whole->data()[i * kPage + 9], pattern(i));
    EXPECT_EQ(tail->data()[(i - 8) * kPage + 9], pattern(i));
  }
  EXPECT_EQ(read_all(*fs, ino, 16 * kPage)[13 * kPage], pattern(13));
  whole.reset();
  tail.reset();
  ASSERT_TRUE(fs->close().ok());
  expect_fsck_clean(image_);
}

TEST_P(MmapTest, HolesReadAsZerosWithoutAllocating) {
  make_image(image_, {"-t", "ext4", "-b", "4096"}, "64M");
  auto fs = open_writable(image_, options());
  ASSERT_TRUE(fs);
  Ino ino = create(*fs, "sparse", 8 << 20);
  auto before = fs->statfs();
  auto m = map(*fs, ino, 8 << 20, kProtRead);
  ASSERT_TRUE(m);
  uint64_t sum = 0;
  for (size_t i = 0; i < m->size(); i += 512) sum += static_cast<uint8_t>(m->data()[i]);
  EXPECT_EQ(sum, 0u);
  m.reset();
  ASSERT_TRUE(fs->sync().ok());
  auto after = fs->statfs();
  EXPECT_EQ(before->free_blocks, after->free_blocks);
  EXPECT_TRUE(fs->extents(ino)->empty());
  ASSERT_TRUE(fs->close().ok());
  expect_fsck_clean(image_);
}

TEST_P(MmapTest, PastTheEndOfFileRaisesSigbus) {
  make_image(image_, {"-t", "ext4", "-b", "4096"}, "64M");
  auto fs = open_writable(image_, options());
  ASSERT_TRUE(fs);
  Ino ino = create(*fs, "short", 5000);
  auto m = map(*fs, ino, 4 * kPage);
  ASSERT_TRUE(m);
  std::byte b{};
  EXPECT_TRUE(try_read(m->data() + 4999, &b));
  EXPECT_TRUE(try_read(m->data() + 8191, &b));  // the last page's tail, past EOF but in the page
  uintptr_t fault = 0;
  EXPECT_FALSE(try_read(m->data() + 2 * kPage + 5, &b));
  EXPECT_FALSE(try_fill(m->data() + 3 * kPage, std::byte{1}, 1, &fault));
  EXPECT_EQ(fault, reinterpret_cast<uintptr_t>(m->data() + 3 * kPage));
  m.reset();
  ASSERT_TRUE(fs->close().ok());
  expect_fsck_clean(image_);
}

TEST_P(MmapTest, SystemCallsIntoARefusedPageGetEfault) {
  make_image(image_, {"-t", "ext4", "-b", "4096"}, "64M");
  auto fs = open_writable(image_, options());
  ASSERT_TRUE(fs);
  Ino ino = create(*fs, "short", kPage);
  auto m = map(*fs, ino, 3 * kPage);
  ASSERT_TRUE(m);
  // Stored into once, so that the kernel may store into it too (with the
  // signal fallback the kernel's own accesses fault only with EFAULT).
  ASSERT_TRUE(try_fill(m->data() + 10, std::byte{'a'}, 1));
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  auto call = std::async(std::launch::async, [&] {
    // The kernel stores into page 2, past the end of the file.
    EXPECT_EQ(::write(fds[1], "xy", 2), 2);
    errno = 0;
    const ssize_t n = ::read(fds[0], m->data() + 2 * kPage, 1);
    EXPECT_EQ(n, -1);
    EXPECT_EQ(errno, EFAULT);
    // A page inside the file takes the byte the failed read left in the pipe.
    EXPECT_EQ(::read(fds[0], m->data() + 10, 1), 1);
  });
  ASSERT_EQ(call.wait_for(std::chrono::seconds(20)), std::future_status::ready) << "the system call never returned";
  call.get();
  EXPECT_EQ(m->data()[10], std::byte{'x'});
  ::close(fds[0]);
  ::close(fds[1]);
  m.reset();
  ASSERT_TRUE(fs->close().ok());
  expect_fsck_clean(image_);
}

TEST_P(MmapTest, TruncateAndPunchWhileMapped) {
  make_image(image_, {"-t", "ext4", "-b", "4096"}, "64M");
  auto fs = open_writable(image_, options());
  ASSERT_TRUE(fs);
  Ino ino = create(*fs, "f", 8 * kPage);
  auto m = map(*fs, ino, 8 * kPage);
  ASSERT_TRUE(m);
  for (size_t i = 0; i < 8; ++i) ASSERT_TRUE(try_fill(m->data() + i * kPage, pattern(i), kPage));
  ASSERT_TRUE(fs->truncate(ino, 2 * kPage + 10).ok());
  std::byte b{};
  EXPECT_FALSE(try_read(m->data() + 4 * kPage, &b)) << "a page past the new end is still mapped";
  ASSERT_TRUE(try_read(m->data() + kPage, &b));
  EXPECT_EQ(b, pattern(1));
  ASSERT_TRUE(try_read(m->data() + 2 * kPage + 20, &b));
  EXPECT_EQ(b, std::byte{0}) << "the tail of the last page past the new end reads zeros";
  ASSERT_TRUE(fs->truncate(ino, 8 * kPage).ok());
  ASSERT_TRUE(try_read(m->data() + 4 * kPage, &b));
  EXPECT_EQ(b, std::byte{0});
  ASSERT_TRUE(fs->fallocate(ino, kFallocPunchHole | kFallocKeepSize, 0, kPage).ok());
  ASSERT_TRUE(try_read(m->data() + 100, &b));
  EXPECT_EQ(b, std::byte{0}) << "a punched page still shows its old bytes";
  ASSERT_TRUE(try_read(m->data() + kPage + 100, &b));
  EXPECT_EQ(b, pattern(1));
  m.reset();
  ASSERT_TRUE(fs->close().ok());
  expect_fsck_clean(image_);
}

TEST_P(MmapTest, UnlinkedWhileMappedLivesUntilUnmapped) {
  make_image(image_, {"-t", "ext4", "-b", "4096"}, "64M");
  auto fs = open_writable(image_, options());
  ASSERT_TRUE(fs);
  auto before = fs->statfs();
  Ino ino = create(*fs, "doomed", 64 * kPage);
  auto m = map(*fs, ino, 64 * kPage);
  ASSERT_TRUE(m);
  ASSERT_TRUE(try_fill(m->data(), std::byte{'d'}, 64 * kPage));
  ASSERT_TRUE(fs->unlink(kRootIno, "doomed").ok());
  ASSERT_TRUE(m->sync(kSyncNow).ok());
  EXPECT_EQ(m->data()[40 * kPage], std::byte{'d'});
  EXPECT_EQ(read_all(*fs, ino, kPage)[7], std::byte{'d'}) << "the unlinked inode is gone while mapped";
  m.reset();  // the last reference: the inode and its blocks go
  ASSERT_TRUE(fs->sync().ok());
  EXPECT_EQ(fs->statfs()->free_blocks, before->free_blocks);
  ASSERT_TRUE(fs->close().ok());
  expect_fsck_clean(image_);
}

TEST_P(MmapTest, ProtectAndForkFollowTheRules) {
  make_image(image_, {"-t", "ext4", "-b", "4096"}, "64M");
  auto fs = open_writable(image_, options());
  ASSERT_TRUE(fs);
  Ino ino = create(*fs, "f", 4 * kPage);
  auto rw = map(*fs, ino, 4 * kPage);
  auto ro = map(*fs, ino, 4 * kPage, kProtRead);
  ASSERT_TRUE(rw && ro);
  EXPECT_EQ(ro->protect(kProtRead | kProtWrite).error().code(), EACCES);
  EXPECT_EQ(rw->protect(0x8).error().code(), EINVAL);
  ASSERT_TRUE(rw->protect(kProtRead).ok());
  ASSERT_TRUE(rw->protect(kProtRead | kProtWrite).ok());
  ASSERT_TRUE(try_fill(rw->data() + kPage, std::byte{'w'}, kPage));
  EXPECT_EQ(ro->data()[kPage + 1], std::byte{'w'});
  EXPECT_EQ(rw->sync(kSyncNow | kSyncAsync).error().code(), EINVAL);
  // A child does not inherit the mapping (it would store behind uext's back).
  const uintptr_t address = reinterpret_cast<uintptr_t>(rw->data());
  pid_t child = fork();
  if (child == 0) {
    // The range is no mapping in the child: mincore fails with ENOMEM.
    unsigned char vec[4];
    _exit(mincore(reinterpret_cast<void*>(address), 4 * kPage, vec) == -1 && errno == ENOMEM ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the child inherited the mapping";
  rw.reset();
  ro.reset();
  ASSERT_TRUE(fs->close().ok());
  expect_fsck_clean(image_);
}

TEST_P(MmapTest, PrivateMappingsCopyOnWrite) {
  make_image(image_, {"-t", "ext4", "-b", "4096"}, "64M");
  auto fs = open_writable(image_, options());
  ASSERT_TRUE(fs);
  Ino ino = create(*fs, "f", 0);
  std::vector<std::byte> a(2 * kPage, std::byte{'a'});
  ASSERT_TRUE(fs->write(ino, 0, a).ok());
  auto m = map(*fs, ino, 2 * kPage, kProtRead | kProtWrite, kMapPrivate);
  ASSERT_TRUE(m);
  ASSERT_TRUE(try_fill(m->data(), std::byte{'p'}, 10));
  EXPECT_EQ(m->data()[5], std::byte{'p'});
  EXPECT_EQ(read_all(*fs, ino, 10)[5], std::byte{'a'}) << "a private store reached the file";
  m.reset();
  ASSERT_TRUE(fs->close().ok());
  expect_fsck_clean(image_);
}

TEST_P(MmapTest, ReadAndWriteThroughAMappingOfTheSameFile) {
  make_image(image_, {"-t", "ext4", "-b", "4096"}, "64M");
  auto fs = open_writable(image_, options());
  ASSERT_TRUE(fs);
  Ino ino = create(*fs, "f", 4 * kPage);
  auto m = map(*fs, ino, 4 * kPage);
  ASSERT_TRUE(m);
  auto work = std::async(std::launch::async, [&] {
    // write() whose source is the page it writes, then read() into the
    // mapping of the page it reads, and across pages.
    ASSERT_TRUE(try_fill(m->data(), std::byte{'s'}, kPage));
    auto w = fs->write(ino, 0, std::span<const std::byte>(m->data(), kPage));
    ASSERT_TRUE(w.ok()) << w.error().message();
    auto w2 = fs->write(ino, 2 * kPage, std::span<const std::byte>(m->data(), kPage));
    ASSERT_TRUE(w2.ok());
    auto r = fs->read(ino, 2 * kPage, std::span<std::byte>(m->data() + kPage, kPage));
    ASSERT_TRUE(r.ok()) << r.error().message();
    auto r2 = fs->read(ino, 0, std::span<std::byte>(m->data(), 2 * kPage));
    ASSERT_TRUE(r2.ok());
  });
  ASSERT_EQ(work.wait_for(std::chrono::seconds(30)), std::future_status::ready) << "deadlock";
  work.get();
  EXPECT_EQ(m->data()[kPage + 10], std::byte{'s'});
  EXPECT_EQ(read_all(*fs, ino, 4 * kPage)[2 * kPage + 4095], std::byte{'s'});
  m.reset();
  ASSERT_TRUE(fs->close().ok());
  expect_fsck_clean(image_);
}

// Fills the filesystem until about `leave` bytes stay available; returns
// the filler's inode.
Ino fill_until(Filesystem& fs, uint64_t leave) {
  auto st = fs.create(kRootIno, "filler", 0644, {});
  EXPECT_TRUE(st.ok());
  std::vector<std::byte> chunk(1 << 20, std::byte{'f'});
  uint64_t off = 0;
  for (;;) {
    auto s = fs.statfs();
    const uint64_t avail = s->available_blocks * s->block_size;
    if (avail <= leave) break;
    const size_t n = std::min<uint64_t>(chunk.size(), avail - leave);
    auto w = fs.write(st->ino, off, std::span<const std::byte>(chunk.data(), n));
    if (!w.ok()) break;
    off += *w;
    if (*w < n) break;
  }
  EXPECT_TRUE(fs.sync().ok());
  return st->ino;
}

struct EnospcCase {
  const char* name;
  std::vector<std::string> mkfs;
  bool delalloc;
};

void run_enospc(MmapTest& t, const EnospcCase& c, const std::string& image, const Options& o) {
  make_image(image, c.mkfs, "32M");
  uint64_t stored = 0, fault_page = 0;
  uintptr_t fault = 0;
  uint64_t file_pages = 0;
  Ino ino = 0;
  {
    auto fs = open_writable(image, o);
    ASSERT_TRUE(fs);
    fill_until(*fs, 1 << 20);
    auto st = fs->create(kRootIno, "mmap-enospc", 0644, {});
    ASSERT_TRUE(st.ok());
    ino = st->ino;
    file_pages = (8u << 20) / kPage;
    ASSERT_TRUE(fs->truncate(ino, file_pages * kPage).ok());
    auto m = fs->mmap(ino, 0, file_pages * kPage, kProtRead | kProtWrite, kMapShared);
    ASSERT_TRUE(m.ok()) << m.error().message();
    for (; stored < file_pages; ++stored) {
      if (!try_fill((*m)->data() + stored * kPage, pattern(stored), kPage, &fault)) break;
    }
    fault_page = stored;
    ASSERT_LT(stored, file_pages) << c.name << ": every page was accepted on a filesystem with 1 MiB free";
    EXPECT_GT(stored, 0u);
    EXPECT_EQ(fault, reinterpret_cast<uintptr_t>((*m)->data() + fault_page * kPage)) << "si_addr is not the page";
    ASSERT_TRUE((*m)->sync(kSyncNow).ok());
    m->reset();
    ASSERT_TRUE(fs->close().ok());
  }
  expect_fsck_clean(image);
  Options ro;
  auto fs = Filesystem::open(image, ro);
  ASSERT_TRUE(fs.ok());
  std::vector<std::byte> page(kPage);
  uint64_t lost = 0;
  for (uint64_t i = 0; i < stored; ++i) {
    auto got = (*fs)->read(ino, i * kPage, page);
    if (!got.ok() || *got != kPage || page[0] != pattern(i) || page[kPage - 1] != pattern(i)) ++lost;
  }
  EXPECT_EQ(lost, 0u) << c.name << ": stored " << stored << " pages; SIGBUS at page " << fault_page;
}

TEST_P(MmapTest, EnospcRaisesSigbusAtThePageAndLosesNothing) {
  const std::vector<EnospcCase> cases = {
      {"ext4", {"-t", "ext4", "-b", "4096", "-m", "0"}, true},
      {"ext4 nodelalloc", {"-t", "ext4", "-b", "4096", "-m", "0"}, false},
      {"ext2", {"-t", "ext2", "-b", "1024", "-m", "0"}, false},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    run_enospc(*this, c, tmp_ / fmt::format("enospc-{}.img", &c - cases.data()), options(c.delalloc));
  }
}

TEST_P(MmapTest, ThreadsStoringIntoSeventyPercentOfFreeSpaceNeverFault) {
  make_image(image_, {"-t", "ext4", "-b", "4096", "-m", "0"}, "64M");
  constexpr int kThreads = 4;
  std::vector<Ino> inos(kThreads);
  uint64_t per_file = 0;
  {
    auto fs = open_writable(image_, options());
    ASSERT_TRUE(fs);
    auto s = fs->statfs();
    per_file = s->available_blocks * s->block_size * 7 / 10 / kThreads / kPage * kPage;
    for (int t = 0; t < kThreads; ++t) {
      inos[t] = create(*fs, fmt::format("f{}", t), per_file);
      // Half the files are preallocated (unwritten extents), half sparse.
      if (t % 2) {
        ASSERT_TRUE(fs->fallocate(inos[t], 0, 0, per_file).ok());
      }
    }
    std::atomic<int> faults{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        install_sigbus_handler();
        auto m = fs->mmap(inos[t], 0, per_file, kProtRead | kProtWrite, kMapShared);
        ASSERT_TRUE(m.ok());
        for (uint64_t i = 0; i < per_file / kPage; ++i) {
          if (!try_fill((*m)->data() + i * kPage, pattern(i + t), kPage)) ++faults;
        }
        ASSERT_TRUE((*m)->sync(kSyncNow).ok());
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(faults.load(), 0) << "spurious SIGBUS";
    ASSERT_TRUE(fs->close().ok());
  }
  expect_fsck_clean(image_);
  auto fs = Filesystem::open(image_, {});
  ASSERT_TRUE(fs.ok());
  std::vector<std::byte> page(kPage);
  for (int t = 0; t < kThreads; ++t) {
    uint64_t bad = 0;
    for (uint64_t i = 0; i < per_file / kPage; ++i) {
      auto got = (*fs)->read(inos[t], i * kPage, page);
      if (!got.ok() || page[0] != pattern(i + t) || page[kPage - 1] != pattern(i + t)) ++bad;
    }
    EXPECT_EQ(bad, 0u) << "file " << t;
  }
}

TEST_P(MmapTest, OverwritingAllocatedPagesOfAFullFilesystemSucceeds) {
  make_image(image_, {"-t", "ext4", "-b", "4096", "-m", "0"}, "32M");
  Ino ino = 0;
  constexpr uint64_t kPages = 256;
  {
    auto fs = open_writable(image_, options());
    ASSERT_TRUE(fs);
    ino = create(*fs, "f", 0);
    std::vector<std::byte> data(kPages * kPage, std::byte{'o'});
    ASSERT_TRUE(fs->write(ino, 0, data).ok());
    ASSERT_TRUE(fs->sync().ok());
    fill_until(*fs, 0);
    auto m = map(*fs, ino, kPages * kPage);
    ASSERT_TRUE(m);
    for (uint64_t i = 0; i < kPages; ++i) ASSERT_TRUE(try_fill(m->data() + i * kPage, pattern(i), kPage)) << i;
    ASSERT_TRUE(m->sync(kSyncNow).ok());
    m.reset();
    ASSERT_TRUE(fs->close().ok());
  }
  expect_fsck_clean(image_);
  auto fs = Filesystem::open(image_, {});
  ASSERT_TRUE(fs.ok());
  std::vector<std::byte> page(kPage);
  for (uint64_t i = 0; i < kPages; ++i) {
    ASSERT_TRUE((*fs)->read(ino, i * kPage, page).ok());
    ASSERT_EQ(page[100], pattern(i)) << "page " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Faults, MmapTest,
                         ::testing::Values(Param{FaultHandling::kUserfaultfd, "userfaultfd"},
                                           Param{FaultHandling::kSignal, "signal"}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace uext::testing
