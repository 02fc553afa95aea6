#include "journal/recovery.h"

#include <gtest/gtest.h>
#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <thread>

#include "disk/bytes.h"
#include "disk/checksum.h"
#include "disk/features.h"
#include "disk/jbd2.h"
#include "disk/superblock.h"
#include "fs/block_map.h"
#include "fs/volume.h"
#include "support/images.h"
#include "support/process.h"

namespace uext::journal {
namespace {

using uext::testing::run;
using uext::testing::run_ok;
using uext::testing::TempDir;

// A loop mount with mount options; always unmounts and detaches.
class OptionMount {
 public:
  OptionMount(const std::string& image, const std::string& dir, const std::string& options) : dir_(dir) {
    auto r = run({"losetup", "-f", "--show", image});
    for (int i = 0; i < 5 && r.exit_code != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      r = run({"losetup", "-f", "--show", image});
    }
    if (r.exit_code != 0) {
      error_ = "losetup: " + r.err;
      return;
    }
    device_ = r.out.substr(0, r.out.find('\n'));
    r = run({"mount", "-o", options, device_, dir});
    if (r.exit_code != 0) {
      error_ = "mount -o " + options + ": " + r.err;
      return;
    }
    mounted_ = true;
  }
  ~OptionMount() { unmount(); }
  bool ok() const { return mounted_; }
  const std::string& error() const { return error_; }
  void unmount() {
    if (mounted_) {
      for (int i = 0; i < 20 && run({"umount", dir_}).exit_code != 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
      mounted_ = false;
    }
    if (!device_.empty()) {
      for (int i = 0; i < 20 && run({"losetup", "-d", device_}).exit_code != 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
      device_.clear();
    }
  }

 private:
  std::string dir_, device_, error_;
  bool mounted_ = false;
};

struct Variant {
  std::string name;
  std::vector<std::string> mkfs;  // after mke2fs -F -q
  std::string mount_options;
  bool escape_file = false;  // data=journal: a data block that starts with the jbd2 magic
};

// Files, directories, renames, deletes (revoke records) and syncs enough
// to wrap a 1024-block journal several times; then a file fsynced last.
std::string workload(const Variant& v) {
  std::string s = R"(set -e
mkdir keep
for i in $(seq 1 30); do mkdir d$i; for j in $(seq 1 30); do echo "$i-$j" > d$i/f$j; done; done
sync
dd if=/dev/urandom of=big bs=4096 count=300 status=none
sync
for r in $(seq 1 16); do
  for i in $(seq 1 30); do mv d$i/f$r d$i/g$r; mkdir d$i/s$r; done
  touch d$((r % 30 + 1))/*
  for i in $(seq 1 10); do rm -rf d$((i + (r % 3) * 10))/s$r; done
  sync
done
rm -rf d1 d2 d3 d4 d5
truncate -s 5000 big
head -c 20000 /dev/urandom > keep/random
sync keep/random
echo "fsynced content" > keep/fsynced
sync keep/fsynced
)";
  if (v.escape_file)
    s += "printf '\\300\\073\\071\\230escaped block' > keep/escaped\nsync keep/escaped\n";
  // Left in the running transaction: the shutdown's log flush commits it.
  s += "for i in $(seq 1 50); do touch late$i; done\n";
  return s;
}

std::string sha(const std::string& path) {
  return run_ok({"sha256sum", path}).substr(0, 64);
}

struct CrashedImage {
  std::string path;
  std::string random_sha;  // of keep/random, seen through the mount
  std::string error;
};

CrashedImage make_crashed_image(const TempDir& dir, const Variant& v) {
  CrashedImage img;
  img.path = dir / "crashed.img";
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  argv.insert(argv.end(), v.mkfs.begin(), v.mkfs.end());
  argv.insert(argv.end(), {img.path, "256M"});
  auto r = run(argv);
  if (r.exit_code != 0) {
    img.error = "mke2fs: " + r.err;
    return img;
  }
  std::string mnt = dir / "mnt";
  run({"mkdir", "-p", mnt});
  OptionMount m(img.path, mnt, v.mount_options);
  if (!m.ok()) {
    img.error = m.error();
    return img;
  }
  r = run({"/bin/sh", "-c", "cd " + mnt + " && " + workload(v)});
  if (r.exit_code != 0) img.error = "workload: " + r.err;
  img.random_sha = sha(mnt + "/keep/random");
  auto s = run({"xfs_io", "-x", "-c", "shutdown -f", mnt});
  if (s.exit_code != 0 && img.error.empty()) img.error = "xfs_io shutdown: " + s.err + s.out;
  m.unmount();
  return img;
}

uint32_t fs_block_size(const std::string& image) {
  auto h = uext::testing::dumpe2fs_header(image);
  return static_cast<uint32_t>(std::stoul(h["Block size"]));
}

// The journal's map from inode 8, built the way uext will: fs::all_mapped_runs.
JournalMap journal_map(const std::string& image) {
  auto dev = open_image_file(image, {});
  EXPECT_TRUE(dev.ok());
  Options opts;
  auto vol = fs::Volume::open(std::move(dev).value(), opts);
  EXPECT_TRUE(vol.ok()) << vol.error().message();
  if (!vol.ok()) return {};
  uint32_t ino = (*vol)->sb().s_journal_inum;
  auto rec = (*vol)->read_inode(ino);
  EXPECT_TRUE(rec.ok()) << rec.error().message();
  auto runs = fs::all_mapped_runs(**vol, *rec);
  EXPECT_TRUE(runs.ok());
  std::vector<JournalExtent> ext;
  for (const auto& r : *runs) ext.push_back({r.logical, r.physical, r.length});
  return JournalMap(ext);
}

std::unique_ptr<BlockDevice> open_rw(const std::string& image) {
  auto dev = open_image_file(image, {.read_only = false});
  EXPECT_TRUE(dev.ok()) << dev.error().message();
  return std::move(dev).value();
}

// Blocks (of `bs` bytes) where two equally sized files differ.
std::vector<uint64_t> differing_blocks(const std::string& a, const std::string& b, uint32_t bs) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  std::vector<char> ba(1 << 20), bb(1 << 20);
  std::vector<uint64_t> out;
  uint64_t base = 0;
  while (fa && fb) {
    fa.read(ba.data(), ba.size());
    fb.read(bb.data(), bb.size());
    size_t n = static_cast<size_t>(fa.gcount());
    EXPECT_EQ(n, static_cast<size_t>(fb.gcount()));
    for (size_t off = 0; off < n; off += bs)
      if (std::memcmp(ba.data() + off, bb.data() + off, std::min<size_t>(bs, n - off)) != 0)
        out.push_back((base + off) / bs);
    base += n;
  }
  return out;
}

disk::Superblock read_sb(const std::string& image) {
  std::string raw = uext::testing::read_bytes(image, 1024, 1024);
  auto sb = disk::decode_superblock(disk::as_bytes(raw.data(), raw.size()), 0);
  EXPECT_TRUE(sb.ok()) << sb.error().message();
  return sb.ok() ? *sb : disk::Superblock{};
}

// Logged transactions, tags and revoke records as debugfs logdump sees them.
struct Logdump {
  uint32_t start_block = 0;
  std::vector<uint32_t> commits;   // sequence of each commit block
  std::map<uint32_t, uint64_t> tags_per_sequence;
  std::map<uint32_t, uint64_t> revokes_per_sequence;
  bool wrapped = false;  // a log block below the start was used
};

Logdump logdump(const std::string& image) {
  Logdump d;
  std::istringstream in(uext::testing::debugfs(image, "logdump -a"));
  std::string line;
  std::smatch m;
  uint32_t seq = 0;
  static const std::regex start_re("Journal starts at block (\\d+)");
  static const std::regex found_re("Found expected sequence (\\d+), type (\\d+) .* at block (\\d+)");
  while (std::getline(in, line)) {
    if (std::regex_search(line, m, start_re)) d.start_block = static_cast<uint32_t>(std::stoul(m[1]));
    if (std::regex_search(line, m, found_re)) {
      seq = static_cast<uint32_t>(std::stoul(m[1]));
      if (std::stoul(m[3]) < d.start_block) d.wrapped = true;
      if (m[2] == "2") d.commits.push_back(seq);
    }
    if (line.find("logged at journal block") != std::string::npos) ++d.tags_per_sequence[seq];
    if (line.find("Revoke FS block") != std::string::npos) ++d.revokes_per_sequence[seq];
  }
  return d;
}

void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

class KernelJournal : public ::testing::TestWithParam<Variant> {};

// The kernel leaves a journal unreplayed; uext replays copy A, e2fsck
// replays copy B; the two must agree block for block.
TEST_P(KernelJournal, ReplayMatchesE2fsck) {
  if (!uext::testing::can_loop_mount()) GTEST_SKIP() << "needs root and /dev/loop-control";
  const Variant& v = GetParam();
  TempDir dir;
  CrashedImage img = make_crashed_image(dir, v);
  ASSERT_TRUE(img.error.empty()) << img.error;
  auto hdr = uext::testing::dumpe2fs_header(img.path);
  ASSERT_NE(hdr["Filesystem features"].find("needs_recovery"), std::string::npos) << hdr["Filesystem features"];
  const uint32_t bs = fs_block_size(img.path);
  Logdump ld = logdump(img.path);
  std::cout << "[ info ] " << v.name << ": journal features " << hdr["Journal features"] << ", "
            << ld.commits.size() << " committed transactions, log wrapped: " << ld.wrapped << "\n";

  const std::string a = dir / "A.img", b = dir / "B.img";
  uext::testing::copy_file(img.path, a);
  uext::testing::copy_file(img.path, b);
  JournalMap map = journal_map(a);

  // inspect agrees with logdump and writes nothing.
  {
    auto dev = open_image_file(a, {});
    ASSERT_TRUE(dev.ok());
    auto rep = inspect_journal(**dev, bs, map);
    ASSERT_TRUE(rep.ok()) << rep.error().message();
    EXPECT_TRUE(rep->needed);
    EXPECT_EQ(rep->transactions, ld.commits.size());
    uint64_t tags = 0, revokes = 0;
    for (uint32_t s : ld.commits) tags += ld.tags_per_sequence[s], revokes += ld.revokes_per_sequence[s];
    EXPECT_EQ(rep->blocks_replayed + rep->blocks_revoked, tags);
    EXPECT_EQ(rep->revoke_records, revokes);
    EXPECT_EQ(rep->bad_block_checksums, 0u);
    EXPECT_FALSE(rep->failed_commit.has_value());
    EXPECT_TRUE(rep->problems.empty()) << rep->problems.front();
    EXPECT_EQ(sha(a), sha(img.path));
  }

  // A: uext.
  RecoveryReport report;
  {
    auto dev = open_rw(a);
    auto rep = recover_journal(*dev, bs, map);
    ASSERT_TRUE(rep.ok()) << rep.error().message();
    report = *rep;
    ASSERT_TRUE(clear_needs_recovery(*dev, rep->needs_fsck()).ok());
  }
  std::cout << "[ info ] " << v.name << ": replayed " << report.transactions << " transactions ("
            << report.start_transaction << ".." << report.end_transaction - 1 << "), " << report.blocks_replayed
            << " blocks, " << report.blocks_revoked << " revoked by " << report.revoke_records << " records\n";
  EXPECT_GT(report.blocks_replayed, 0u);

  // B: e2fsck. Without -f: with -f, journal_only still runs the full check.
  auto r = run({"e2fsck", "-y", "-E", "journal_only", b});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;

  // Block for block, except the primary superblock's block.
  const uint64_t sb_block = bs == 1024 ? 1 : 0;
  std::vector<uint64_t> diff = differing_blocks(a, b, bs);
  for (uint64_t blk : diff) EXPECT_EQ(blk, sb_block) << "block " << blk << " differs from e2fsck's replay";

  // The superblock: e2fsck adds the bytes it wrote to s_kbytes_written and
  // sets s_wtime when it writes the superblock back (so the checksum
  // differs too); every other field must match.
  disk::Superblock sa = read_sb(a), sbb = read_sb(b);
  EXPECT_EQ(sa.s_feature_incompat, sbb.s_feature_incompat);
  EXPECT_EQ(sa.s_state, sbb.s_state);
  EXPECT_LE(sa.s_kbytes_written, sbb.s_kbytes_written);
  EXPECT_LE(sa.s_wtime, sbb.s_wtime);
  disk::Superblock sa_norm = sa;
  sa_norm.s_kbytes_written = sbb.s_kbytes_written;
  sa_norm.s_wtime = sbb.s_wtime;
  sa_norm.s_checksum = sbb.s_checksum;
  std::string ra = uext::testing::read_bytes(a, 1024, 1024), rb = uext::testing::read_bytes(b, 1024, 1024);
  std::vector<std::byte> na(ra.size());
  std::memcpy(na.data(), ra.data(), ra.size());
  disk::encode_superblock(sa_norm, na);
  std::string offsets;
  for (size_t i = 0; i < 1024; ++i)
    if (na[i] != static_cast<std::byte>(rb[i])) offsets += fmt::format(" {:#x}:{:02x}/{:02x}", i, static_cast<unsigned>(na[i]), static_cast<unsigned char>(rb[i]));
  EXPECT_TRUE(offsets.empty()) << "superblocks differ beyond s_kbytes_written and s_wtime at" << offsets;

  // e2fsck -fn and dumpe2fs on A.
  r = run({"e2fsck", "-fn", a});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  auto ha = uext::testing::dumpe2fs_header(a);
  EXPECT_EQ(ha["Filesystem features"].find("needs_recovery"), std::string::npos);
  EXPECT_EQ(ha["Filesystem state"].find("with errors"), std::string::npos) << ha["Filesystem state"];
  EXPECT_EQ(ha["Journal start"], "0");

  // The kernel reads what was fsynced.
  std::string mnt = dir / "ro";
  run({"mkdir", "-p", mnt});
  uext::testing::LoopMount m(a, mnt, true);
  ASSERT_TRUE(m.ok()) << m.error();
  EXPECT_EQ(uext::testing::read_file(mnt + "/keep/fsynced"), "fsynced content\n");
  EXPECT_EQ(sha(mnt + "/keep/random"), img.random_sha);
  EXPECT_EQ(uext::testing::read_file(mnt + "/d30/f30"), "30-30\n");
  if (v.escape_file) EXPECT_EQ(uext::testing::read_file(mnt + "/keep/escaped"), "\xC0\x3B\x39\x98" "escaped block");
  EXPECT_TRUE(m.unmount()) << m.error();
}

INSTANTIATE_TEST_SUITE_P(
    Images, KernelJournal,
    ::testing::Values(
        Variant{"ext4_4k_csum_v3", {"-t", "ext4", "-J", "size=4"}, "rw", false},
        Variant{"ext4_1k_csum_v3", {"-t", "ext4", "-b", "1024", "-J", "size=1"}, "rw", false},
        Variant{"ext4_nocsum", {"-t", "ext4", "-O", "^metadata_csum", "-J", "size=4"}, "rw", false},
        Variant{"ext3_1k", {"-t", "ext3", "-b", "1024", "-J", "size=1"}, "rw", false},
        Variant{"ext4_datajournal_escape", {"-t", "ext4", "-J", "size=4"}, "data=journal", true},
        Variant{"ext4_v1_async_commit",
                {"-t", "ext4", "-O", "^metadata_csum", "-J", "size=4"},
                "data=journal,journal_checksum,journal_async_commit",
                true}),
    [](const ::testing::TestParamInfo<Variant>& info) { return info.param.name; });

}  // namespace
}  // namespace uext::journal
