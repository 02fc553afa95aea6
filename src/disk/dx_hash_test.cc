#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "disk/bytes.h"
#include "disk/htree.h"
#include "support/process.h"

namespace uext::disk {
namespace {

using uext::testing::TempDir;

// debugfs takes the seed as a UUID whose bytes are the four seed words in
// little-endian order, as s_hash_seed lies on disk.
std::string seed_uuid(const uint32_t seed[4]) {
  uint8_t b[16];
  for (int i = 0; i < 16; ++i) b[i] = static_cast<uint8_t>(seed[i / 4] >> (8 * (i % 4)));
  char s[40];
  std::snprintf(s, sizeof s, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
                b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return s;
}

// Names debugfs's command parser passes through untouched: no whitespace,
// no quotes, no NUL; plenty of bytes >= 0x80 to tell signed from unsigned.
std::vector<std::string> random_names(size_t count, uint32_t rng_seed) {
  std::mt19937 rng(rng_seed);
  std::vector<std::string> names;
  const size_t lengths[] = {1, 2, 3, 4, 5, 15, 16, 17, 31, 32, 33, 64, 100, 255};
  for (size_t i = 0; i < count; ++i) {
    size_t len = i < std::size(lengths) ? lengths[i] : 1 + rng() % 80;
    std::string name;
    while (name.size() < len) {
      unsigned c = 0x21 + rng() % (0x100 - 0x21);
      if (c == '"' || c == '\\' || c == 0x7f) continue;
      // First byte '#' or '-' would read as a comment or an option.
      if (name.empty() && (c == '#' || c == '-')) continue;
      name.push_back(static_cast<char>(c));
    }
    names.push_back(name);
  }
  names.push_back("hello");
  names.push_back("lost+found");
  return names;
}

struct Expected {
  uint32_t major = 0, minor = 0;
};

// Runs every (name, version, seed) through one debugfs process.
std::vector<Expected> debugfs_hashes(const std::vector<std::string>& names, const std::vector<int>& versions,
                                     const uint32_t seed[4]) {
  TempDir dir;
  std::string cmds;
  for (int v : versions)
    for (const auto& n : names) cmds += "dx_hash -h " + std::to_string(v) + " -s " + seed_uuid(seed) + " " + n + "\n";
  uext::testing::write_file(dir / "cmds", cmds);
  auto r = uext::testing::run({"debugfs", "-f", dir / "cmds"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<Expected> out;
  // Each answer reads "Hash of NAME is 0x... (minor 0x...)".
  std::string line;
  for (size_t start = 0; start < r.out.size();) {
    size_t end = r.out.find('\n', start);
    if (end == std::string::npos) end = r.out.size();
    line = r.out.substr(start, end - start);
    start = end + 1;
    if (line.rfind("Hash of ", 0) != 0) continue;
    size_t is = line.rfind(" is 0x");
    if (is == std::string::npos) continue;
    Expected e;
    if (std::sscanf(line.c_str() + is, " is 0x%x (minor 0x%x)", &e.major, &e.minor) == 2) out.push_back(e);
  }
  return out;
}

void check_against_debugfs(const uint32_t seed[4], uint32_t rng_seed) {
  auto names = random_names(150, rng_seed);
  std::vector<int> versions = {0, 1, 2, 3, 4, 5};
  auto expected = debugfs_hashes(names, versions, seed);
  ASSERT_EQ(expected.size(), names.size() * versions.size());
  size_t i = 0, signed_differs = 0;
  for (int v : versions) {
    for (const auto& n : names) {
      auto got = dx_hash(n, static_cast<uint8_t>(v), seed);
      ASSERT_TRUE(got.ok()) << got.error().message();
      // e2fsprogs does not remap the kernel's end-of-directory value; no
      // random name lands on it, so the two agree everywhere else.
      EXPECT_EQ(got->major, expected[i].major) << "version " << v << " name #" << (i % names.size());
      EXPECT_EQ(got->minor, expected[i].minor) << "version " << v << " name #" << (i % names.size());
      if (v < 3) {
        auto unsigned_hash = dx_hash(n, static_cast<uint8_t>(v + 3), seed);
        if (unsigned_hash->major != got->major) ++signed_differs;
      }
      ++i;
    }
  }
  // The names carry high bytes, so the signed and unsigned variants must
  // actually have diverged (otherwise this test would prove nothing).
  EXPECT_GT(signed_differs, names.size());
}

TEST(DxHash, MatchesDebugfsWithDefaultSeed) {
  const uint32_t zero[4] = {0, 0, 0, 0};
  check_against_debugfs(zero, 1);
}

TEST(DxHash, MatchesDebugfsWithRandomSeed) {
  const uint32_t seed[4] = {0x744970ff, 0x0a4c8289, 0xd64e64bf, 0x2d7c1325};
  check_against_debugfs(seed, 2);
}

TEST(DxHash, MatchesDebugfsWithSparseSeed) {
  // Only one word set: still a real seed, not the default.
  const uint32_t seed[4] = {0, 0, 1, 0};
  check_against_debugfs(seed, 3);
}

TEST(DxHash, ZeroSeedMeansDefaultSeed) {
  const uint32_t zero[4] = {0, 0, 0, 0};
  const uint32_t dflt[4] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476};
  for (uint8_t v : {1, 2, 4, 5}) {
    auto a = dx_hash("some-name", v, zero);
    auto b = dx_hash("some-name", v, dflt);
    auto c = dx_hash("some-name", v, nullptr);
    ASSERT_TRUE(a.ok() && b.ok() && c.ok());
    EXPECT_EQ(a->major, b->major);
    EXPECT_EQ(a->minor, b->minor);
    EXPECT_EQ(a->major, c->major);
  }
}

TEST(DxHash, KnownValues) {
  // Cross-checked with debugfs 1.47.0 ("dx_hash -h half_md4 -s ... hello").
  const uint32_t zero[4] = {0, 0, 0, 0};
  EXPECT_EQ(dx_hash("hello", dx_hash_version::kHalfMd4, zero)->major, 0x1746da32u);
  EXPECT_EQ(dx_hash("hello", dx_hash_version::kHalfMd4, zero)->minor, 0x420013b5u);
  EXPECT_EQ(dx_hash("hello", dx_hash_version::kLegacy, zero)->major, 0x32252546u);
  EXPECT_EQ(dx_hash("hello", dx_hash_version::kLegacy, zero)->minor, 0u);
}

TEST(DxHash, LowBitAlwaysClear) {
  std::mt19937 rng(7);
  const uint32_t zero[4] = {0, 0, 0, 0};
  for (int i = 0; i < 2000; ++i) {
    std::string n = std::to_string(rng());
    for (uint8_t v = 0; v <= 5; ++v) {
      auto h = dx_hash(n, v, zero);
      ASSERT_TRUE(h.ok());
      EXPECT_EQ(h->major & 1, 0u);
      EXPECT_NE(h->major, 0xFFFFFFFEu);  // reserved for end of directory
    }
  }
}

TEST(DxHash, EmptyNameHashesTheSeed) {
  const uint32_t seed[4] = {0x11111111, 0x22222223, 0x33333333, 0x44444444};
  auto h = dx_hash("", dx_hash_version::kHalfMd4, seed);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->major, 0x22222222u);  // buf[1] untouched, low bit cleared
  EXPECT_EQ(h->minor, 0x33333333u);
}

TEST(DxHash, SiphashIsNotSupported) {
  const uint32_t zero[4] = {0, 0, 0, 0};
  auto h = dx_hash("x", dx_hash_version::kSiphash, zero);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.error().code(), ENOTSUP);
}

TEST(DxHash, UnknownVersionIsAnError) {
  const uint32_t zero[4] = {0, 0, 0, 0};
  for (int v : {7, 8, 255}) {
    auto h = dx_hash("x", static_cast<uint8_t>(v), zero);
    ASSERT_FALSE(h.ok());
    EXPECT_EQ(h.error().code(), kErrCorrupted);
  }
}

}  // namespace
}  // namespace uext::disk
