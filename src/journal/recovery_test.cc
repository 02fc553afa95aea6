#include "journal/recovery.h"

#include <gtest/gtest.h>
#include <fmt/format.h>

#include <chrono>
#include <functional>
#include <fstream>
#include <map>
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
#include "support/regex.h"

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
  testing::RegexMatch m;
  uint32_t seq = 0;
  static const testing::Regex start_re("Journal starts at block (\\d+)");
  static const testing::Regex found_re("Found expected sequence (\\d+), type (\\d+) .* at block (\\d+)");
  while (std::getline(in, line)) {
    if (regex_search(line, m, start_re)) d.start_block = static_cast<uint32_t>(std::stoul(m[1]));
    if (regex_search(line, m, found_re)) {
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
  const std::string a = dir / "A.img", b = dir / "B.img";
  uext::testing::copy_file(img.path, a);
  uext::testing::copy_file(img.path, b);
  // The oracle reads the very bytes uext inspects: once, read from the
  // crashed image before the copies, logdump found no commit where the
  // copy then held four.
  Logdump ld = logdump(a);
  std::cout << "[ info ] " << v.name << ": journal features " << hdr["Journal features"] << ", "
            << ld.commits.size() << " committed transactions, log wrapped: " << ld.wrapped << "\n";
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
  if (v.escape_file) {
    EXPECT_EQ(uext::testing::read_file(mnt + "/keep/escaped"), "\xC0\x3B\x39\x98" "escaped block");
  }
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

// ---------------------------------------------------------------- synthetic journals

// A journal built with the codecs in a memory device: 1 KiB blocks, the
// journal's 1024 blocks in two extents so lookups cross a boundary.
class Synth {
 public:
  static constexpr uint32_t kBs = 1024;
  static constexpr uint64_t kDevBlocks = 2400;

  explicit Synth(bool v3 = true, uint32_t start = 1, uint32_t sequence = 10, uint32_t fc_blocks = 0)
      : dev_(make_memory_device(kDevBlocks * kBs)),
        map_({{0, 1100, 500}, {500, 1700, 524 + fc_blocks}}) {
    sb_.s_header = {disk::kJbd2Magic, disk::kJbd2SuperblockV2, 0};
    sb_.s_blocksize = kBs;
    sb_.s_maxlen = 1024 + fc_blocks;
    sb_.s_first = 1;
    sb_.s_sequence = sequence;
    sb_.s_start = start;
    sb_.s_feature_incompat = disk::jbd2_incompat::kRevoke | disk::jbd2_incompat::k64bit |
                             (v3 ? disk::jbd2_incompat::kCsumV3 : 0) |
                             (fc_blocks ? disk::jbd2_incompat::kFastCommit : 0);
    sb_.s_num_fc_blks = fc_blocks;
    sb_.s_checksum_type = v3 ? disk::kJbd2ChecksumCrc32c : 0;
    for (int i = 0; i < 16; ++i) sb_.s_uuid[i] = static_cast<uint8_t>(0x40 + i);
    sb_.s_nr_users = 1;
    fmt_ = sb_.format();
    pos_ = start;
    tid_ = sequence;
    write_sb();
  }

  void write_sb() {
    std::vector<std::byte> raw(kBs);
    disk::encode_journal_superblock(sb_, raw);
    write_log(0, raw);
  }
  void write_log(uint32_t logical, const std::vector<std::byte>& b) {
    ASSERT_TRUE(dev_->write(*map_.physical(logical) * kBs, b).ok());
  }
  std::vector<std::byte> read_log(uint32_t logical) {
    std::vector<std::byte> b(kBs);
    EXPECT_TRUE(dev_->read(*map_.physical(logical) * kBs, b).ok());
    return b;
  }
  std::vector<std::byte> fs_block(uint64_t nr) {
    std::vector<std::byte> b(kBs);
    EXPECT_TRUE(dev_->read(nr * kBs, b).ok());
    return b;
  }
  uint32_t next() {
    uint32_t p = pos_;
    pos_ = pos_ + 1 >= sb_.log_end() ? sb_.s_first : pos_ + 1;
    return p;
  }
  static std::vector<std::byte> filled(uint8_t v) { return std::vector<std::byte>(kBs, static_cast<std::byte>(v)); }

  // One transaction: a revoke block (when `revokes`), a descriptor tagging
  // `blocks`, their data, and a commit (when `commit`). Returns the commit's log block.
  uint32_t txn(const std::vector<std::pair<uint64_t, std::vector<std::byte>>>& blocks,
               const std::vector<uint64_t>& revokes = {}, bool commit = true) {
    if (!revokes.empty()) {
      std::vector<std::byte> rb(kBs);
      disk::RevokeBlock r;
      r.header = {disk::kJbd2Magic, disk::kJbd2RevokeBlock, tid_};
      r.blocks = revokes;
      EXPECT_TRUE(disk::encode_revoke_block(r, fmt_, rb).ok());
      write_log(next(), rb);
    }
    disk::DescriptorBlock d;
    d.header = {disk::kJbd2Magic, disk::kJbd2DescriptorBlock, tid_};
    std::vector<std::vector<std::byte>> logged;
    for (size_t i = 0; i < blocks.size(); ++i) {
      disk::JournalBlockTag t;
      t.t_blocknr = blocks[i].first;
      std::vector<std::byte> data = blocks[i].second;
      if (disk::be32(data, 0) == disk::kJbd2Magic) {  // escape, as the kernel does
        disk::put_be32(data, 0, 0);
        t.t_flags |= disk::kJbd2FlagEscape;
      }
      if (i > 0) t.t_flags |= disk::kJbd2FlagSameUuid; else t.uuid = sb_.s_uuid;
      if (i + 1 == blocks.size()) t.t_flags |= disk::kJbd2FlagLastTag;
      t.t_checksum = disk::tag_checksum(fmt_, tid_, data);
      d.tags.push_back(t);
      logged.push_back(data);
    }
    std::vector<std::byte> db(kBs);
    EXPECT_TRUE(disk::encode_descriptor_block(d, fmt_, db).ok());
    write_log(next(), db);
    for (auto& data : logged) write_log(next(), data);
    if (!commit) return 0;
    disk::CommitBlock c;
    c.header = {disk::kJbd2Magic, disk::kJbd2CommitBlock, tid_};
    c.h_commit_sec = 1700000000 + tid_;
    std::vector<std::byte> cb(kBs);
    disk::encode_commit_block(c, fmt_, cb);
    uint32_t at = next();
    write_log(at, cb);
    ++tid_;
    return at;
  }

  Result<RecoveryReport> recover() { return recover_journal(*dev_, kBs, map_); }
  Result<RecoveryReport> inspect() { return inspect_journal(*dev_, kBs, map_); }
  disk::JournalSuperblock journal_sb() {
    auto raw = read_log(0);
    auto sb = disk::decode_journal_superblock(raw, kBs, 0);
    EXPECT_TRUE(sb.ok()) << sb.error().message();
    return sb.ok() ? *sb : disk::JournalSuperblock{};
  }

  std::unique_ptr<BlockDevice> dev_;
  JournalMap map_;
  disk::JournalSuperblock sb_;
  disk::JournalFormat fmt_;
  uint32_t pos_ = 0, tid_ = 0;
};

std::vector<std::byte> magic_block() {
  auto b = Synth::filled(0x5A);
  disk::put_be32(b, 0, disk::kJbd2Magic);
  return b;
}

void replays_revokes_escapes_and_ignores_torn(bool v3, uint32_t start) {
  Synth j(v3, start);
  j.txn({{100, Synth::filled(0xA1)}, {101, Synth::filled(0xB1)}});
  j.txn({{102, Synth::filled(0xC1)}}, {100});
  j.txn({{100, Synth::filled(0xA3)}, {103, magic_block()}});
  j.txn({{104, Synth::filled(0xD4)}}, {}, /*commit=*/false);  // torn by the crash
  auto insp = j.inspect();
  ASSERT_TRUE(insp.ok()) << insp.error().message();
  EXPECT_EQ(insp->transactions, 3u);
  EXPECT_EQ(j.fs_block(100), Synth::filled(0));  // inspect writes nothing
  auto rep = j.recover();
  ASSERT_TRUE(rep.ok()) << rep.error().message();
  EXPECT_EQ(rep->transactions, 3u);
  EXPECT_EQ(rep->start_transaction, 10u);
  EXPECT_EQ(rep->end_transaction, 13u);
  EXPECT_EQ(rep->blocks_replayed, 4u);
  EXPECT_EQ(rep->blocks_revoked, 1u);
  EXPECT_EQ(rep->revoke_records, 1u);
  EXPECT_FALSE(rep->needs_fsck());
  EXPECT_EQ(j.fs_block(100), Synth::filled(0xA3));
  EXPECT_EQ(j.fs_block(101), Synth::filled(0xB1));
  EXPECT_EQ(j.fs_block(102), Synth::filled(0xC1));
  EXPECT_EQ(j.fs_block(103), magic_block());
  EXPECT_EQ(j.fs_block(104), Synth::filled(0));
  auto sb = j.journal_sb();
  EXPECT_EQ(sb.s_start, 0u);
  EXPECT_EQ(sb.s_sequence, 14u);
  EXPECT_EQ(sb.s_errno, 0);
  // A second run finds nothing to do.
  auto again = j.recover();
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->needed);
}

TEST(SyntheticJournal, ReplaysRevokesEscapesAndIgnoresTornTransaction) {
  replays_revokes_escapes_and_ignores_torn(true, 1);
}
TEST(SyntheticJournal, WithoutChecksums) { replays_revokes_escapes_and_ignores_torn(false, 1); }
TEST(SyntheticJournal, LogWrapsAroundTheEnd) { replays_revokes_escapes_and_ignores_torn(true, 1018); }

TEST(SyntheticJournal, RevokeInTheSameTransactionCancelsTheBlock) {
  Synth j;
  j.txn({{100, Synth::filled(0xA1)}}, {100});
  auto rep = j.recover();
  ASSERT_TRUE(rep.ok());
  EXPECT_EQ(rep->blocks_revoked, 1u);
  EXPECT_EQ(j.fs_block(100), Synth::filled(0));
}

TEST(SyntheticJournal, BadCommitChecksumStopsReplayBeforeIt) {
  Synth j;
  j.txn({{100, Synth::filled(0xA1)}});
  uint32_t bad = j.txn({{101, Synth::filled(0xB1)}});
  j.txn({{102, Synth::filled(0xC1)}});
  auto cb = j.read_log(bad);
  cb[0x40] ^= std::byte{1};
  j.write_log(bad, cb);
  auto rep = j.recover();
  ASSERT_TRUE(rep.ok()) << rep.error().message();
  EXPECT_EQ(rep->transactions, 1u);
  ASSERT_TRUE(rep->failed_commit.has_value());
  EXPECT_EQ(*rep->failed_commit, 11u);
  EXPECT_TRUE(rep->needs_fsck());
  EXPECT_EQ(j.fs_block(100), Synth::filled(0xA1));
  EXPECT_EQ(j.fs_block(101), Synth::filled(0));
  EXPECT_EQ(j.fs_block(102), Synth::filled(0));
  auto sb = j.journal_sb();
  EXPECT_EQ(sb.s_start, 0u);
  EXPECT_EQ(sb.s_sequence, 12u);
  EXPECT_EQ(sb.s_errno, -EINVAL);
}

TEST(SyntheticJournal, BadDataChecksumSkipsOnlyThatBlock) {
  Synth j;
  j.txn({{100, Synth::filled(0xA1)}, {101, Synth::filled(0xB1)}});
  auto data = j.read_log(3);  // descriptor at 1, data at 2 and 3
  data[7] ^= std::byte{0x80};
  j.write_log(3, data);
  auto rep = j.recover();
  ASSERT_TRUE(rep.ok()) << rep.error().message();
  EXPECT_EQ(rep->bad_block_checksums, 1u);
  EXPECT_TRUE(rep->needs_fsck());
  EXPECT_EQ(j.fs_block(100), Synth::filled(0xA1));
  EXPECT_EQ(j.fs_block(101), Synth::filled(0));
}

TEST(SyntheticJournal, TagOutsideTheFilesystemIsAnErrorBeforeAnyWrite) {
  Synth j;
  j.txn({{100, Synth::filled(0xA1)}});
  j.txn({{100, Synth::filled(0xA2)}, {Synth::kDevBlocks + 5, Synth::filled(0xB1)}});
  auto rep = j.recover();
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.error().code(), kErrCorrupted);
  EXPECT_NE(rep.error().message().find("journal block 4 (descriptor, transaction 11): tag 1 points to block 2405 "
                                       "outside the filesystem"),
            std::string::npos)
      << rep.error().message();
  EXPECT_EQ(j.fs_block(100), Synth::filled(0));
  EXPECT_NE(j.journal_sb().s_start, 0u);
}

TEST(SyntheticJournal, DamagedJournalSuperblock) {
  struct Case {
    const char* name;
    std::function<void(disk::JournalSuperblock&)> damage;
    int code;
    const char* text;
  };
  std::vector<Case> cases = {
      {"magic", [](auto& sb) { sb.s_header.h_magic = 0x12345678; }, kErrCorrupted, "bad magic"},
      {"blocktype", [](auto& sb) { sb.s_header.h_blocktype = disk::kJbd2CommitBlock; }, kErrCorrupted, "blocktype 2"},
      {"blocksize", [](auto& sb) { sb.s_blocksize = 4096; }, kErrCorrupted, "s_blocksize 4096"},
      {"maxlen", [](auto& sb) { sb.s_maxlen = 5000; }, kErrCorrupted, "s_maxlen 5000"},
      {"first", [](auto& sb) { sb.s_first = 0; }, kErrCorrupted, "s_first 0"},
      {"start", [](auto& sb) { sb.s_start = 1024; }, kErrCorrupted, "s_start 1024"},
      {"feature", [](auto& sb) { sb.s_feature_incompat |= 0x100; }, ENOTSUP, "unknown incompat"},
      {"v2+v3", [](auto& sb) { sb.s_feature_incompat |= disk::jbd2_incompat::kCsumV2; }, kErrCorrupted, "both"},
      {"csum type", [](auto& sb) { sb.s_checksum_type = 1; }, kErrCorrupted, "s_checksum_type 1"},
  };
  for (const Case& c : cases) {
    Synth j;
    j.txn({{100, Synth::filled(0xA1)}});
    c.damage(j.sb_);
    j.write_sb();
    auto rep = j.recover();
    ASSERT_FALSE(rep.ok()) << c.name;
    EXPECT_EQ(rep.error().code(), c.code) << c.name << ": " << rep.error().message();
    EXPECT_NE(rep.error().message().find("journal superblock"), std::string::npos) << rep.error().message();
    EXPECT_NE(rep.error().message().find(c.text), std::string::npos) << c.name << ": " << rep.error().message();
    EXPECT_EQ(j.fs_block(100), Synth::filled(0)) << c.name;
  }
  // A bit flip under the checksum.
  Synth j;
  auto raw = j.read_log(0);
  raw[0x60] ^= std::byte{4};
  j.write_log(0, raw);
  auto rep = j.recover();
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.error().code(), kErrBadChecksum) << rep.error().message();
}

TEST(SyntheticJournal, LoopingLogIsRefusedNotSpun) {
  // Every log block a one-tag descriptor of transaction 10: the scan would
  // walk the circle forever without the lap check.
  Synth j;
  disk::DescriptorBlock d;
  d.header = {disk::kJbd2Magic, disk::kJbd2DescriptorBlock, 10};
  disk::JournalBlockTag t;
  t.t_blocknr = 100;
  t.t_flags = disk::kJbd2FlagLastTag | disk::kJbd2FlagSameUuid;
  d.tags.push_back(t);
  std::vector<std::byte> db(Synth::kBs);
  ASSERT_TRUE(disk::encode_descriptor_block(d, j.fmt_, db).ok());
  for (uint32_t b = 1; b < 1024; ++b) j.write_log(b, db);
  auto rep = j.recover();
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.error().code(), kErrCorrupted);
  EXPECT_NE(rep.error().message().find("sequence numbers loop"), std::string::npos) << rep.error().message();
}

TEST(SyntheticJournal, FastCommitBlocksAreRefused) {
  Synth j(true, 1, 10, 16);
  j.txn({{100, Synth::filled(0xA1)}});
  auto fc = Synth::filled(0);
  disk::put_le16(fc, 0, 9);  // EXT4_FC_TAG_HEAD
  disk::put_le16(fc, 2, 8);
  disk::put_le32(fc, 8, 11);  // extends the transaction after the last commit
  j.write_log(1025, fc);  // the first fast commit block: log end (1024) + 1
  auto rep = j.recover();
  ASSERT_FALSE(rep.ok());
  EXPECT_EQ(rep.error().code(), ENOTSUP);
  EXPECT_NE(rep.error().message().find("fast commit"), std::string::npos) << rep.error().message();
  EXPECT_EQ(j.fs_block(100), Synth::filled(0));
}

TEST(SyntheticJournal, ReadOnlyDeviceIsRefused) {
  Synth j;
  j.txn({{100, Synth::filled(0xA1)}});
  std::vector<std::byte> all(Synth::kDevBlocks * Synth::kBs);
  ASSERT_TRUE(j.dev_->read(0, all).ok());
  TempDir dir;
  uext::testing::write_file(dir / "j.img", std::string(reinterpret_cast<const char*>(all.data()), all.size()));
  auto ro = open_image_file(dir / "j.img", {});
  ASSERT_TRUE(ro.ok());
  EXPECT_EQ(recover_journal(**ro, Synth::kBs, j.map_).error().code(), EROFS);
}

// Random damage to the log: errors or partial replays, never a crash or hang.
TEST(SyntheticJournal, RandomDamageNeverCrashes) {
  uint64_t state = 0x9E3779B97F4A7C15ull;
  auto rnd = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  for (int iter = 0; iter < 300; ++iter) {
    Synth j(iter % 2 == 0, 1 + static_cast<uint32_t>(rnd() % 1020));
    for (int t = 0; t < 4; ++t)
      j.txn({{100 + rnd() % 50, Synth::filled(static_cast<uint8_t>(t))}, {200 + rnd() % 50, magic_block()}},
            {100 + rnd() % 50});
    for (int k = 0; k < 1 + static_cast<int>(rnd() % 4); ++k) {
      uint32_t blk = static_cast<uint32_t>(rnd() % 1024);
      auto b = j.read_log(blk);
      b[rnd() % (blk == 0 ? 256 : Synth::kBs)] ^= static_cast<std::byte>(1u << (rnd() % 8));
      j.write_log(blk, b);
    }
    auto rep = j.recover();
    if (rep.ok()) EXPECT_LE(rep->transactions, 4u);
    else EXPECT_FALSE(rep.error().message().empty());
  }
}

TEST(ClearNeedsRecovery, ClearsTheFlagAndKeepsTheChecksumValid) {
  TempDir dir;
  const std::string img = dir / "fs.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", img, "32M"});
  run_ok({"debugfs", "-w", "-R", "feature needs_recovery", img});
  ASSERT_NE(uext::testing::dumpe2fs_header(img)["Filesystem features"].find("needs_recovery"), std::string::npos);
  {
    auto dev = open_rw(img);
    ASSERT_TRUE(clear_needs_recovery(*dev).ok());
  }
  auto h = uext::testing::dumpe2fs_header(img);
  EXPECT_EQ(h["Filesystem features"].find("needs_recovery"), std::string::npos);
  EXPECT_EQ(h["Filesystem state"], "clean");
  auto r = run({"e2fsck", "-fn", img});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  // The journal of a fresh image needs nothing.
  auto dev = open_image_file(img, {});
  ASSERT_TRUE(dev.ok());
  auto rep = inspect_journal(**dev, fs_block_size(img), journal_map(img));
  ASSERT_TRUE(rep.ok()) << rep.error().message();
  EXPECT_FALSE(rep->needed);
}

}  // namespace
}  // namespace uext::journal
