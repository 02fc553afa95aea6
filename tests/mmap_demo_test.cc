// `uext demo mmap-enospc` through the CLI on fresh images of every type:
// the demo's own verdict (exit 0, "stored N pages; SIGBUS at page K; lost L
// pages" with K == N > 0 and L == 0) is checked against the oracles, not
// trusted: e2fsck -fn and dumpe2fs -h must find the image clean, and
// debugfs and the kernel's ext4 (a loop mount) must read every page before
// K with its pattern and page K as zeros.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support/crash.h"
#include "support/images.h"
#include "support/process.h"
#include "support/regex.h"

namespace uext::testing {
namespace {

constexpr size_t kPage = 4096;

struct DemoCase {
  std::string name;
  std::vector<std::string> mkfs;       // mke2fs arguments before the image
  std::vector<std::string> demo_args;  // after IMG
};

std::ostream& operator<<(std::ostream& os, const DemoCase& c) { return os << c.name; }

// The byte the demo stores into page i.
char pattern(uint64_t page) { return static_cast<char>(page % 251 + 1); }

// Pages [0, k) must hold their pattern and page k zeros; returns what is not so.
std::string check_contents(const std::string& data, uint64_t k, uint64_t pages) {
  if (data.size() != pages * kPage) return fmt::format("size {} is not {} pages", data.size(), pages);
  std::vector<uint64_t> bad;
  for (uint64_t i = 0; i <= k && i < pages; ++i) {
    const char want = i < k ? pattern(i) : '\0';
    if (data.compare(i * kPage, kPage, std::string(kPage, want)) != 0) bad.push_back(i);
  }
  if (bad.empty()) return {};
  std::string s = fmt::format("{} pages differ:", bad.size());
  for (size_t j = 0; j < bad.size() && j < 10; ++j) s += fmt::format(" {}", bad[j]);
  return s;
}

class MmapDemo : public ::testing::TestWithParam<DemoCase> {};

TEST_P(MmapDemo, SigbusAtTheFirstPageWithoutSpaceAndNothingLost) {
  const DemoCase& c = GetParam();
  TempDir dir;
  const std::string image = dir / "img";
  std::vector<std::string> mkfs = {"mke2fs", "-F", "-q"};
  mkfs.insert(mkfs.end(), c.mkfs.begin(), c.mkfs.end());
  mkfs.push_back(image);
  mkfs.push_back("32M");
  run_ok(mkfs);

  std::vector<std::string> args = {"demo", "mmap-enospc", image};
  args.insert(args.end(), c.demo_args.begin(), c.demo_args.end());
  GuardedResult r = run_uext(args, 60);
  ASSERT_EQ(r.exit_code, 0) << r.describe();

  // The last line, and the file's size in pages from the progress lines.
  static const Regex last_re(R"(stored (\d+) pages; SIGBUS at page (\d+); lost (\d+) pages\n$)");
  static const Regex size_re(R"(file /mmap-enospc: .* sparse \((\d+) pages\))");
  RegexMatch m;
  ASSERT_TRUE(regex_search(r.out, m, last_re)) << r.out;
  const uint64_t n = std::stoull(m[1]), k = std::stoull(m[2]), lost = std::stoull(m[3]);
  ASSERT_TRUE(regex_search(r.out, m, size_re)) << r.out;
  const uint64_t pages = std::stoull(m[1]);
  EXPECT_GT(n, 0u) << r.out;
  EXPECT_EQ(k, n) << r.out;
  EXPECT_EQ(lost, 0u) << r.out;
  EXPECT_LT(k, pages) << r.out;
  if (c.name.find("signal") != std::string::npos) {
    EXPECT_NE(r.out.find("fault handling: signal"), std::string::npos) << r.out;
  }

  FsckVerdict v = e2fsck_clean(image);
  EXPECT_TRUE(v.clean) << v.report;

  // e2fsprogs' reading of the file.
  const std::string dumped = dir / "dumped";
  run_ok({"debugfs", "-R", "dump /mmap-enospc " + dumped, image});
  std::string problem = check_contents(read_file(dumped), k, pages);
  EXPECT_TRUE(problem.empty()) << "debugfs: " << problem;

  // The kernel's.
  if (!can_loop_mount()) {
    GTEST_SKIP() << "the kernel's reading needs root and loop devices";
  }
  const std::string mnt = dir / "mnt";
  ASSERT_EQ(::mkdir(mnt.c_str(), 0755), 0);
  LoopMount mount(image, mnt, true);
  ASSERT_TRUE(mount.ok()) << mount.error();
  problem = check_contents(read_file(mnt + "/mmap-enospc"), k, pages);
  EXPECT_TRUE(problem.empty()) << "kernel: " << problem;
}

INSTANTIATE_TEST_SUITE_P(
    Images, MmapDemo,
    ::testing::Values(DemoCase{"ext4", {"-t", "ext4", "-b", "4096"}, {}},
                      DemoCase{"ext4_nodelalloc", {"-t", "ext4", "-b", "4096"}, {"--nodelalloc"}},
                      DemoCase{"ext4_1k", {"-t", "ext4"}, {}},
                      DemoCase{"ext2", {"-t", "ext2"}, {}},
                      DemoCase{"ext3", {"-t", "ext3"}, {}},
                      DemoCase{"ext4_signal", {"-t", "ext4", "-b", "4096"}, {"--fault-handling", "signal"}}),
    [](const ::testing::TestParamInfo<DemoCase>& info) { return info.param.name; });

// Clear errors, before the image is touched.
TEST(MmapDemoUsage, BadImageAndOptions) {
  TempDir dir;
  GuardedResult r = run_uext({"demo", "mmap-enospc", dir / "missing.img"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("missing.img"), std::string::npos) << r.err;

  r = run_uext({"demo", "mmap-enospc", dir / "missing.img", "--fault-handling", "magic"});
  EXPECT_EQ(r.exit_code, 2) << r.describe();
  EXPECT_NE(r.err.find("magic"), std::string::npos) << r.err;

  r = run_uext({"demo", "no-such-demo"});
  EXPECT_EQ(r.exit_code, 2) << r.describe();
}

}  // namespace
}  // namespace uext::testing
