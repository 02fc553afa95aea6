// fio's mmap engine with verification on uext's own mappings: fio runs
// under libuext_preload.so (tools/preload), which serves every call on
// paths under a prefix from an image through uext::Filesystem, so fio's
// mmap() is Filesystem::mmap and its first store to each page is uext's
// page_mkwrite (userfaultfd, or the SIGSEGV fallback). Each case:
//
//   1. fio writes the file(s) through its mmap engine and verifies them
//      (crc32c headers in every block) in the same run; exit 0, no verify
//      error, every byte written and read back;
//   2. the file is in the image (debugfs stat, with fio's size) and the
//      prefix never appeared on the host;
//   3. e2fsck -fn and dumpe2fs -h: the image is clean;
//   4. a second fio process repeats the job with --verify_only through the
//      shim (the cache is gone: the bytes come from the image);
//   5. the kernel's ext4 (a read-only loop mount) reads every block with
//      fio's psync engine and checks each block's header and crc32c;
//   6. the kernel again, read-write on a copy, runs the job's own
//      --verify_only with the psync engine.
//
// Sparse cases first make the file with truncate(1) through the shim (fio
// then skips laying it out), so every first store lands on a hole:
// reservation under delayed allocation, allocation in page_mkwrite for
// ext2 and nodelalloc. Laid-out cases let fio fallocate and write the file
// first, so stores dirty pages over blocks.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support/images.h"
#include "support/process.h"
#include "support/regex.h"

namespace uext::testing {
namespace {

struct FioCase {
  std::string name;
  std::vector<std::string> mkfs;  // mke2fs arguments before the image
  std::string options;            // UEXT_PRELOAD_OPTIONS
  std::string fault_handling;     // what the shim must report using
  std::string rw;                 // fio --rw
  bool sparse = false;            // made sparse with truncate(1) first
  int jobs = 1;                   // threads, each with a file of its own
  int size_mb = 16;               // per job
};

std::ostream& operator<<(std::ostream& os, const FioCase& c) { return os << c.name; }

// LD_PRELOAD for the programs under test. An ASan build's shim needs the
// ASan runtime loaded first (fio and bash are not instrumented): the one
// this test process runs with. Their own leaks are not the shim's.
std::string preload_env() {
  std::string list = UEXT_PRELOAD_PATH;
#if defined(__SANITIZE_ADDRESS__)
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const size_t path = line.find('/');
    if (path != std::string::npos && line.find("/libasan.so", path) != std::string::npos) {
      list = line.substr(path) + ":" + list;
      break;
    }
  }
  return "ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD=" + list;
#else
  return "LD_PRELOAD=" + list;
#endif
}

std::vector<FioCase> cases() {
  const std::vector<std::string> ext4 = {"-t", "ext4"};
  const std::vector<std::string> ext2 = {"-t", "ext2"};
  const std::vector<std::string> ext3 = {"-t", "ext3"};
  return {
      {"Ext4UserfaultfdRandwriteOverHoles", ext4, "fault_handling=userfaultfd", "userfaultfd", "randwrite", true, 1, 32},
      {"Ext4SignalRandwriteOverHoles", ext4, "fault_handling=signal", "signal", "randwrite", true},
      {"Ext4UserfaultfdSeqWriteLaidOut", ext4, "fault_handling=userfaultfd", "userfaultfd", "write", false},
      {"Ext4SignalRandwriteLaidOut", ext4, "fault_handling=signal", "signal", "randwrite", false},
      {"Ext4NodelallocUserfaultfdRandwriteOverHoles", ext4, "nodelalloc,fault_handling=userfaultfd", "userfaultfd",
       "randwrite", true},
      {"Ext4NodelallocSignalSeqWriteOverHoles", ext4, "nodelalloc,fault_handling=signal", "signal", "write", true},
      {"Ext2UserfaultfdRandwriteOverHoles", ext2, "fault_handling=userfaultfd", "userfaultfd", "randwrite", true},
      {"Ext2SignalRandwriteOverHoles", ext2, "fault_handling=signal", "signal", "randwrite", true},
      {"Ext3SignalSeqWriteLaidOut", ext3, "fault_handling=signal", "signal", "write", false},
      {"Ext4UserfaultfdTwoThreadsRandwrite", ext4, "fault_handling=userfaultfd", "userfaultfd", "randwrite", false, 2},
  };
}

// The first number after `key` in fio's JSON output (--group_reporting
// makes one job entry), or -1.
long long json_number(const std::string& json, const std::string& key_regex) {
  RegexMatch m;
  if (!regex_search(json, m, Regex(key_regex + R"(\s*:\s*\{?\s*(?:"io_bytes"\s*:\s*)?(-?\d+))"))) return -1;
  return std::stoll(m[1]);
}

// Problems fio or the shim reported on stderr (the shim's stats line aside).
std::string complaints(const std::string& err) {
  std::string out;
  size_t start = 0;
  while (start < err.size()) {
    size_t end = err.find('\n', start);
    if (end == std::string::npos) end = err.size();
    const std::string line = err.substr(start, end - start);
    start = end + 1;
    if (line.rfind("uext_preload: stats:", 0) == 0) continue;
    // ext2/ext3 files have no extents to preallocate: fio says so and
    // writes the file instead, as it does on the kernel's ext2.
    if (line.find("native_fallocate call failed: Operation not supported") != std::string::npos) continue;
    if (line.empty()) continue;
    out += line + "\n";
  }
  return out;
}

class FioMmap : public ::testing::TestWithParam<FioCase> {
 protected:
  void SetUp() override {
#if defined(__SANITIZE_THREAD__)
    GTEST_SKIP() << "libuext_preload.so is built with TSan here, whose runtime cannot serve the uninstrumented "
                    "fio: this test runs in the optimised and ASan builds";
#endif
    if (run({"fio", "--version"}).exit_code != 0) GTEST_SKIP() << "fio is not installed (apt-get install fio)";
    image_ = dir_ / "img";
    // A prefix that exists nowhere on the host: anything that escaped the
    // shim would fail or show up there.
    prefix_ = fmt::format("/uext-fio-test-{}-{}", getpid(), GetParam().name);
    ASSERT_FALSE(std::filesystem::exists(prefix_));
  }

  std::string env() const {
    return fmt::format("{} UEXT_PRELOAD_IMAGE={} UEXT_PRELOAD_PREFIX={} UEXT_PRELOAD_OPTIONS={},stats",
                       preload_env(), image_, prefix_, GetParam().options);
  }

  // One fio run; `where` is --directory=..., `extra` more options. No disk
  // statistics: fio would look for the block device of the shim's made-up
  // st_dev by walking /sys/block, and print "stat: No such file or
  // directory" when another test's loop device went away under that walk.
  std::string fio_command(const std::string& engine, const std::string& rw, const std::string& where,
                          const std::string& extra) const {
    const FioCase& c = GetParam();
    return fmt::format(
        "timeout -k 10 600 fio --thread --name=uext --ioengine={} --rw={} --bs=4k --size={}M --numjobs={} "
        "--group_reporting --disk_util=0 --verify=crc32c --verify_fatal=1 --verify_state_save=0 --output-format=json {} {}",
        engine, rw, c.size_mb, c.jobs, where, extra);
  }

  // Files fio names uext.<job>.0 in the directory.
  std::vector<std::string> file_names() const {
    std::vector<std::string> names;
    for (int j = 0; j < GetParam().jobs; ++j) names.push_back(fmt::format("uext.{}.0", j));
    return names;
  }

  // Checks one fio run: exit 0, no error, `read`/`write` bytes as given.
  void expect_fio_ok(const CommandResult& r, const std::string& what, long long read_bytes, long long write_bytes) {
    SCOPED_TRACE(what);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_EQ(json_number(r.out, R"("error")"), 0) << r.out;
    EXPECT_EQ(json_number(r.out, R"("read")"), read_bytes) << r.out;
    EXPECT_EQ(json_number(r.out, R"("write")"), write_bytes) << r.out;
    EXPECT_EQ(complaints(r.err), "") << r.err;
    for (const char* bad : {"verify failed", "bad magic", "bad header", "verify: "}) {
      EXPECT_EQ(r.err.find(bad), std::string::npos) << bad << " in\n" << r.err;
    }
  }

  // The shim's stats line: the fault handling it used and how many mappings.
  void expect_stats(const CommandResult& r, bool mapped) {
    static const Regex re(R"(uext_preload: stats: .* (\d+) opens, (\d+) mappings \((\w+)\), closed clean)");
    RegexMatch m;
    ASSERT_TRUE(regex_search(r.err, m, re)) << r.err;
    EXPECT_GT(std::stoi(m[1]), 0) << r.err;
    if (mapped) {
      EXPECT_GE(std::stoi(m[2]), GetParam().jobs) << r.err;
      EXPECT_EQ(m[3].str(), GetParam().fault_handling) << r.err;
    }
  }

  // The files' mtime lines, as debugfs shows them.
  std::string mtimes() const {
    std::string out;
    for (const auto& name : file_names()) {
      const std::string st = debugfs(image_, "stat /" + name);
      const size_t at = st.find("mtime:");
      out += name + " " + (at == std::string::npos ? "no mtime" : st.substr(at, st.find('\n', at) - at)) + "\n";
    }
    return out;
  }

  TempDir dir_;
  std::string image_, prefix_;
};

TEST_P(FioMmap, VerifiesThroughUextMappingsAndTheKernelReadsTheSameBytes) {
  const FioCase& c = GetParam();
  std::vector<std::string> mkfs = {"mke2fs", "-F", "-q"};
  mkfs.insert(mkfs.end(), c.mkfs.begin(), c.mkfs.end());
  mkfs.push_back(image_);
  mkfs.push_back(fmt::format("{}M", c.jobs * c.size_mb * 2 + 64));
  run_ok(mkfs);
  const long long bytes = static_cast<long long>(c.size_mb) << 20;
  const long long total = bytes * c.jobs;

  if (c.sparse) {
    // truncate(1) through the shim: open(O_CREAT), fstat, ftruncate, close.
    for (const auto& name : file_names()) {
      CommandResult t = run_shell(fmt::format("{} truncate -s {}M {}/{}", env(), c.size_mb, prefix_, name));
      ASSERT_EQ(t.exit_code, 0) << t.out << t.err;
      expect_stats(t, false);
    }
  }

  // 1. Write and verify through uext's mappings.
  CommandResult w = run_shell(env() + " " + fio_command("mmap", c.rw, "--directory=" + prefix_, "--do_verify=1"));
  expect_fio_ok(w, "fio mmap write + verify through the shim", total, total);
  expect_stats(w, true);

  // 2. Routed: in the image, with the size fio gave it; nothing on the host.
  EXPECT_FALSE(std::filesystem::exists(prefix_)) << prefix_ << " appeared on the host";
  for (const auto& name : file_names()) {
    const std::string st = debugfs(image_, "stat /" + name);
    RegexMatch m;
    ASSERT_TRUE(regex_search(st, m, Regex(R"(Type: regular[\s\S]*?Size: (\d+))"))) << name << ":\n" << st;
    EXPECT_EQ(std::stoll(m[1]), bytes) << name;
  }

  // 3. The image is clean.
  ASSERT_TRUE(image_is_clean(image_));

  // 4. A fresh process verifies what the image holds, through the shim.
  // fio counts the writes it skips, so both directions show the total;
  // that it stored nothing shows in the unchanged mtime.
  const std::string before = mtimes();
  CommandResult v = run_shell(env() + " " + fio_command("mmap", c.rw, "--directory=" + prefix_, "--verify_only"));
  expect_fio_ok(v, "fio mmap --verify_only through the shim", total, total);
  expect_stats(v, true);
  EXPECT_EQ(mtimes(), before);
  ASSERT_TRUE(image_is_clean(image_));

  // 5. The kernel reads the same bytes. --verify_only would open the file
  // for writing (EROFS on a read-only mount); a read job verifies every
  // block by its header instead (magic, offset, length, crc32c).
  if (!can_loop_mount()) GTEST_SKIP() << "the kernel's check needs root and loop devices";
  std::filesystem::create_directories(dir_ / "mnt");
  std::filesystem::create_directories(dir_ / "mnt-rw");
  LoopMount mount(image_, dir_ / "mnt", /*read_only=*/true);
  ASSERT_TRUE(mount.ok()) << mount.error();
  CommandResult k = run_shell(fio_command("psync", "read", "--directory=" + mount.dir(), ""));
  expect_fio_ok(k, "fio psync read-verify on the kernel's read-only loop mount", total, 0);
  ASSERT_TRUE(mount.unmount()) << mount.error();
  ASSERT_TRUE(image_is_clean(image_));

  // 6. And fio's own --verify_only with the psync engine (same job, same
  // seeds) through the kernel, read-write on a copy of the image.
  const std::string copy = dir_ / "copy";
  run_ok({"cp", "--sparse=always", image_, copy});
  LoopMount rw(copy, dir_ / "mnt-rw", /*read_only=*/false);
  ASSERT_TRUE(rw.ok()) << rw.error();
  CommandResult kv = run_shell(fio_command("psync", c.rw, "--directory=" + rw.dir(), "--verify_only"));
  expect_fio_ok(kv, "fio psync --verify_only on the kernel's loop mount of a copy", total, total);
  ASSERT_TRUE(rw.unmount()) << rw.error();
}

// A fresh 32 MiB ext4 image and the environment that routes `prefix`
// to it through the shim.
struct ShimImage {
  TempDir dir;
  std::string image = dir / "img";
  std::string prefix = fmt::format("/uext-shim-test-{}", getpid());
  std::string env;
  ShimImage() {
    run_ok({"mke2fs", "-F", "-q", "-t", "ext4", image, "32M"});
    env = fmt::format("{} UEXT_PRELOAD_IMAGE={} UEXT_PRELOAD_PREFIX={}", preload_env(), image, prefix);
  }
};

// The shim's refusals: a forked child's routed call fails with EIO and a
// message (uext's threads stay in the parent), a second process is kept
// off the image by its lock, and the parent goes on unharmed; the image
// stays clean. bash does the forking; cp and truncate are the programs
// (a redirection of bash's would be made in the forked child, and refused).
TEST(PreloadShim, ForkedChildAndSecondProcessAreRefused) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "libuext_preload.so is built with TSan here, whose runtime cannot serve the uninstrumented bash";
#endif
  ShimImage shim;
  const std::string &image = shim.image, &prefix = shim.prefix, &env = shim.env;
  const std::string script = fmt::format(
      "cp {1} {0}/f; echo \"cp:$?\"\n"
      "exec 3<{0}/f\n"
      "( read -r x <&3; echo \"child:$?\" )\n"
      "truncate -s 1 {0}/g; echo \"second:$?\"\n"
      "read -r y <&3; echo \"parent:$?:$y\"\n",
      prefix, shim.dir / "hello");
  write_file(shim.dir / "hello", "hello\n");
  CommandResult r = run({"/bin/sh", "-c", env + " bash -c '" + script + "'"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.out, "cp:0\nchild:1\nsecond:1\nparent:0:hello\n") << r.err;
  EXPECT_NE(r.err.find("refused in a forked child"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("is in use"), std::string::npos) << r.err;
  // And nothing else from the shim (cp's calls all served).
  for (size_t at = r.err.find("uext_preload:"); at != std::string::npos; at = r.err.find("uext_preload:", at + 1)) {
    const std::string line = r.err.substr(at, r.err.find('\n', at) - at);
    EXPECT_TRUE(line.find("refused in a forked child") != std::string::npos || line.find("is in use") != std::string::npos)
        << line;
  }
  EXPECT_FALSE(std::filesystem::exists(prefix));
  ASSERT_TRUE(image_is_clean(image));
  EXPECT_EQ(debugfs(image, "cat /f"), "hello\n");
  CommandResult g = run({"debugfs", "-R", "stat /g", image});
  EXPECT_NE(g.err.find("File not found"), std::string::npos) << g.out << g.err;
}

// A filesystem in a partition of a disk image, through the shim
// (offset=, sizelimit= in UEXT_PRELOAD_OPTIONS): cp writes into it, the
// bytes before and after it stay as they were.
TEST(PreloadShim, APartitionOfADiskImage) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "libuext_preload.so is built with TSan here, whose runtime cannot serve the uninstrumented cp";
#endif
  TempDir dir;
  const std::string disk = dir / "disk.img";
  const std::string prefix = fmt::format("/uext-shim-part-{}", getpid());
  run_ok({"truncate", "-s", "40M", disk});
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-E", "offset=1048576", disk, "32M"});
  run_ok({"sh", "-c", "printf head | dd of=" + disk + " conv=notrunc status=none; printf tail | dd of=" + disk +
                          " bs=1M seek=33 conv=notrunc status=none"});
  write_file(dir / "hello", "hello\n");
  const std::string env = fmt::format("{} UEXT_PRELOAD_IMAGE={} UEXT_PRELOAD_PREFIX={} UEXT_PRELOAD_OPTIONS={}",
                                      preload_env(), disk, prefix, "offset=1M,sizelimit=32M");
  CommandResult r = run_shell(env + " cp " + dir / "hello" + " " + prefix + "/f");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.err.find("uext_preload:"), std::string::npos) << r.err;
  const std::string partition = disk + "?offset=1048576";
  EXPECT_EQ(run({"e2fsck", "-fn", partition}).exit_code, 0);
  EXPECT_EQ(debugfs(partition, "cat /f"), "hello\n");
  EXPECT_EQ(run_ok({"sh", "-c", "head -c 4 " + disk + "; tail -c +" + std::to_string((33 << 20) + 1) + " " + disk +
                                    " | head -c 4"}),
            "headtail");
  r = run_shell(fmt::format("{} UEXT_PRELOAD_IMAGE={} UEXT_PRELOAD_PREFIX={} UEXT_PRELOAD_OPTIONS=offset=1Q cat {}/f",
                            preload_env(), disk, prefix, prefix));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("bad option 'offset=1Q'"), std::string::npos) << r.err;
}

// munmap takes the length mmap was given, which need not be a whole number
// of pages: fsx maps 0xefd6 bytes and unmaps 0xefd6, and the shim refused
// that (EINVAL, "munmap of part of a mapping") since its mapping is 0xf000
// long. xfs_io unmaps with the length it mapped, 5000 bytes here.
TEST(PreloadShim, MunmapOfTheLengthMappedUnmapsTheWholeLastPage) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "libuext_preload.so is built with TSan here, whose runtime cannot serve the uninstrumented xfs_io";
#endif
  ShimImage shim;
  const std::string &image = shim.image, &prefix = shim.prefix, &env = shim.env;
  CommandResult r = run_shell(env + " xfs_io -f -c 'truncate 5000' -c 'mmap -rw 0 5000' -c 'mwrite -S 0x61 0 5000' " +
                              "-c munmap -c 'mmap -r 0 5000' -c munmap " + prefix + "/f");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.err.find("uext_preload:"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(prefix));
  ASSERT_TRUE(image_is_clean(image));
  EXPECT_EQ(debugfs(image, "cat /f"), std::string(5000, 'a'));
}

// copy_file_range between two files of the image is served by the shim
// (a read and a write through uext), also when made with syscall(2), as
// xfs_io and fsx do: that reached the kernel with the shim's placeholder
// descriptors and failed with EBADF. A copy out to a host file is EXDEV.
TEST(PreloadShim, CopyFileRangeWithinTheImage) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "libuext_preload.so is built with TSan here, whose runtime cannot serve the uninstrumented xfs_io";
#endif
  ShimImage shim;
  const std::string &image = shim.image, &prefix = shim.prefix, &env = shim.env;
  const std::string host = shim.dir / "host";
  write_file(host, "");
  CommandResult r = run_shell(env + " xfs_io -f -c 'pwrite -S 0x62 0 3000' -c 'pwrite -S 0x63 3000 3000' " +
                              "-c 'copy_range -s 3000 -d 10000 -l 2000 " + prefix + "/a' " + prefix + "/a && " +
                              env + " xfs_io -f -c 'copy_range -s 0 -d 0 -l 6000 " + prefix + "/a' " + prefix + "/b && " +
                              env + " xfs_io -c 'copy_range -s 0 -d 0 -l 10 " + prefix + "/a' " + host);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.err.find("Invalid cross-device link"), std::string::npos) << r.out << r.err;
  EXPECT_EQ(r.err.find("uext_preload:"), std::string::npos) << r.err;
  ASSERT_TRUE(image_is_clean(image));
  EXPECT_EQ(debugfs(image, "cat /a"),
            std::string(3000, 'b') + std::string(3000, 'c') + std::string(4000, '\0') + std::string(2000, 'c'));
  EXPECT_EQ(debugfs(image, "cat /b"), std::string(3000, 'b') + std::string(3000, 'c'));
}

// copy_file_range with NULL offsets moves the source's file position by
// the bytes copied. The shim moved it by the bytes it read, so a short
// write (the image full) left the position past bytes never copied, and a
// caller that went on from there skipped them.
TEST(PreloadShim, CopyFileRangeAtThePositionsMovesTheSourceByTheBytesCopied) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "libuext_preload.so is built with TSan here, whose runtime cannot serve the uninstrumented dd";
#endif
  ShimImage shim;
  const std::string &image = shim.image, &prefix = shim.prefix, &env = shim.env;
  // A 1 MiB source, then the image filled (dd stops at ENOSPC) and 256 KiB
  // of it freed again: the copy's write gets some of its bytes, not all.
  CommandResult fill = run_shell(env + " xfs_io -f -c 'pwrite -S 0x61 0 1m' " + prefix + "/src >/dev/null && " + env +
                                 " dd if=/dev/zero of=" + prefix + "/fill bs=64k 2>/dev/null; " + env +
                                 " truncate -s -256K " + prefix + "/fill");
  ASSERT_EQ(fill.exit_code, 0) << fill.out << fill.err;
  CommandResult r = run_shell(env + " " + UEXT_COPY_RANGE_HELPER + " " + prefix + "/src " + prefix + "/dst 1048576");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  RegexMatch m;
  ASSERT_TRUE(regex_search(r.out, m, Regex(R"(copied=(\d+) src_pos=(\d+) dst_pos=(\d+))"))) << r.out << r.err;
  const long long copied = std::stoll(m[1]);
  EXPECT_GT(copied, 0) << r.out;
  EXPECT_LT(copied, 1 << 20) << r.out << " (the write was to be short)";
  EXPECT_EQ(std::stoll(m[2]), copied) << r.out;
  EXPECT_EQ(std::stoll(m[3]), copied) << r.out;
  EXPECT_FALSE(std::filesystem::exists(prefix));
  ASSERT_TRUE(image_is_clean(image));
  EXPECT_EQ(debugfs(image, "cat /dst"), std::string(static_cast<size_t>(copied), 'a'));
}

INSTANTIATE_TEST_SUITE_P(Cases, FioMmap, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<FioCase>& info) { return info.param.name; });

}  // namespace
}  // namespace uext::testing
