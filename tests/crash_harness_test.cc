// The crash harness must catch ordering, durability and torn-write bugs and
// must pass a correct design: synthetic stores with planted bugs here, and
// the real kernel's ext4 below.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "io/fault_device.h"
#include "io/recording_device.h"
#include "support/crash.h"
#include "support/images.h"
#include "support/process.h"

namespace uext::testing {
namespace {

constexpr uint64_t kBlock = 4096;
constexpr char kMagic[8] = {'T', 'O', 'Y', 'S', 'T', 'O', 'R', 'E'};

uint64_t fnv(std::span<const std::byte> b) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (std::byte x : b) h = (h ^ static_cast<uint8_t>(x)) * 0x100000001b3ull;
  return h;
}

void put64(std::vector<std::byte>& b, size_t off, uint64_t v) { std::memcpy(b.data() + off, &v, 8); }
uint64_t get64(const std::vector<std::byte>& b, size_t off) {
  uint64_t v;
  std::memcpy(&v, b.data() + off, 8);
  return v;
}

std::vector<std::byte> payload(uint64_t gen, size_t size) {
  std::vector<std::byte> p(size);
  uint64_t x = gen * 0x9E3779B97F4A7C15ull + 1;
  for (auto& c : p) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    c = static_cast<std::byte>(x);
  }
  return p;
}

std::string zero_image(const TempDir& dir, uint64_t size) {
  std::string path = dir / "base.img";
  run_ok({"truncate", "-s", std::to_string(size), path});
  return path;
}

std::vector<std::byte> read_image(const std::string& path) {
  auto dev = open_image_file(path, {});
  EXPECT_TRUE(dev.ok());
  std::vector<std::byte> b((*dev)->size());
  EXPECT_TRUE((*dev)->read(0, b).ok());
  return b;
}

// ------------------------------------------------------------ store 1
// A pointer store: generation g's value lives in block 1 + g; block 0 holds
// {magic, generation, block, hash of the value}. A reader trusts block 0.

enum class PointerBug {
  kNone,          // value, flush, pointer, flush, then "fsync returned"
  kNoBarrier,     // value and pointer in the same epoch
  kMarkTooEarly,  // reports the pointer durable before the flush that covers it
};

Status pointer_workload(CrashHarness& h, PointerBug bug, int generations) {
  io::RecordingDevice& dev = h.device();
  for (int g = 1; g <= generations; ++g) {
    UEXT_TRY(dev.write(kBlock * (1 + g), payload(g, kBlock)));
    if (bug != PointerBug::kNoBarrier) UEXT_TRY(dev.flush());
    std::vector<std::byte> sb(kBlock);
    std::memcpy(sb.data(), kMagic, 8);
    put64(sb, 8, g);
    put64(sb, 16, 1 + g);
    put64(sb, 24, fnv(payload(g, kBlock)));
    UEXT_TRY(dev.write(0, sb));
    if (bug == PointerBug::kMarkTooEarly) {
      h.mark_durable("gen " + std::to_string(g));
      UEXT_TRY(dev.flush());
    } else {
      UEXT_TRY(dev.flush());
      h.mark_durable("gen " + std::to_string(g));
    }
  }
  return {};
}

std::vector<std::string> check_pointer_store(const CrashCheckContext& c, int generations) {
  std::vector<std::string> problems;
  std::vector<std::byte> img = read_image(c.image);
  uint64_t gen = 0;
  if (std::memcmp(img.data(), kMagic, 8) == 0) {
    gen = get64(img, 8);
    uint64_t block = get64(img, 16), hash = get64(img, 24);
    if (block >= img.size() / kBlock ||
        fnv(std::span(img).subspan(block * kBlock, kBlock)) != hash) {
      problems.push_back("corrupt: the pointer names generation " + std::to_string(gen) + " in block " +
                         std::to_string(block) + " but that block does not hold it");
    }
  }
  for (int g = 1; g <= generations; ++g) {
    if (c.must_hold("gen " + std::to_string(g)) && gen < static_cast<uint64_t>(g)) {
      problems.push_back("lost: generation " + std::to_string(g) + " was fsynced, the image holds generation " +
                         std::to_string(gen));
    }
  }
  return problems;
}

CrashReport run_pointer_store(PointerBug bug, CrashOptions opts = {}) {
  TempDir dir;
  CrashHarness h(zero_image(dir, 1 << 20), opts);
  EXPECT_TRUE(h.record([&](CrashHarness& hh) -> Status { return pointer_workload(hh, bug, 5); }).ok());
  return h.check([](const CrashCheckContext& c) { return check_pointer_store(c, 5); });
}

TEST(CrashHarness, PlansEveryCutAndEverySubsetOfSmallEpochs) {
  TempDir dir;
  CrashHarness h(zero_image(dir, 1 << 20), {.seed = 7});
  ASSERT_TRUE(h.record([&](CrashHarness& hh) -> Status { return pointer_workload(hh, PointerBug::kNoBarrier, 3); }).ok());
  // Three epochs of two writes each (value + pointer), then an empty one.
  ASSERT_EQ(h.log().epochs(), 4u);
  std::vector<PlannedState> plan = h.plan();
  std::vector<std::string> ids;
  for (const auto& p : plan) ids.push_back(p.id);
  // Cuts 0..3; masks 1 and 2 of each epoch (0 is the cut, 3 the next cut).
  EXPECT_EQ(ids, (std::vector<std::string>{"cut-0", "cut-1", "cut-2", "cut-3", "e0-m1", "e0-m2", "e1-m1",
                                           "e1-m2", "e2-m1", "e2-m2"}));
  ASSERT_EQ(h.marks().size(), 3u);
  EXPECT_EQ(h.marks()[0].epoch, 1u);
  EXPECT_EQ(h.marks()[2].epoch, 3u);
}

TEST(CrashHarness, ACorrectlyOrderedStorePasses) {
  CrashReport r = run_pointer_store(PointerBug::kNone);
  EXPECT_TRUE(r.ok()) << r.summary();
  EXPECT_EQ(r.checked, r.planned);
  EXPECT_GE(r.checked, 11u);  // 11 cuts (flushes) with the empty ones folded
}

TEST(CrashHarness, CatchesAPointerWrittenWithoutABarrier) {
  CrashReport r = run_pointer_store(PointerBug::kNoBarrier);
  ASSERT_FALSE(r.ok());
  std::string s = r.summary();
  EXPECT_NE(s.find("corrupt: the pointer names generation"), std::string::npos) << s;
  EXPECT_NE(s.find("seed "), std::string::npos);
  EXPECT_NE(s.find("UEXT_CRASH_STATE="), std::string::npos);
  // The failing states are exactly "pointer landed, value did not": mask 2.
  for (const auto& f : r.failures) EXPECT_NE(f.state_id.find("-m2"), std::string::npos) << f.state_id;
  EXPECT_EQ(r.failures.size(), 5u) << s;
}

TEST(CrashHarness, CatchesDurabilityClaimedBeforeTheFlush) {
  CrashReport r = run_pointer_store(PointerBug::kMarkTooEarly);
  ASSERT_FALSE(r.ok());
  std::string s = r.summary();
  EXPECT_NE(s.find("lost: generation"), std::string::npos) << s;
  // The clean cuts themselves show it.
  bool cut = false;
  for (const auto& f : r.failures) cut |= f.state_id.rfind("cut-", 0) == 0;
  EXPECT_TRUE(cut) << s;
}

TEST(CrashHarness, CatchesALyingDisk) {
  // The store is correct, but the disk drops its flushes: nothing is ever
  // durable, and the harness (recording below the liar) sees no flush.
  TempDir dir;
  CrashHarness h(zero_image(dir, 1 << 20), {});
  io::FaultDevice liar(h.borrow_device());
  liar.set_drop_flushes(true);
  ASSERT_TRUE(h.record([&](CrashHarness& hh) -> Status {
                 for (int g = 1; g <= 3; ++g) {
                   UEXT_TRY(liar.write(kBlock * (1 + g), payload(g, kBlock)));
                   UEXT_TRY(liar.flush());
                   std::vector<std::byte> sb(kBlock);
                   std::memcpy(sb.data(), kMagic, 8);
                   put64(sb, 8, g);
                   put64(sb, 16, 1 + g);
                   put64(sb, 24, fnv(payload(g, kBlock)));
                   UEXT_TRY(liar.write(0, sb));
                   UEXT_TRY(liar.flush());
                   hh.mark_durable("gen " + std::to_string(g));
                 }
                 return Status{};
               }).ok());
  EXPECT_EQ(liar.counts().dropped_flushes, 6u);
  EXPECT_EQ(h.log().flushes(), 0u);
  CrashReport r = h.check([](const CrashCheckContext& c) { return check_pointer_store(c, 3); });
  EXPECT_FALSE(r.ok()) << r.summary();
}

TEST(CrashHarness, TheSameSeedPlansTheSameStatesAndOneStateCanBeRerun) {
  TempDir dir;
  std::string base = zero_image(dir, 1 << 20);
  auto workload = [](CrashHarness& h) -> Status {
    // One epoch of 12 writes: too many for every subset, so random ones.
    for (int i = 0; i < 12; ++i) UEXT_TRY(h.device().write(kBlock * (i + 1), payload(i, kBlock)));
    return h.device().flush();
  };
  CrashHarness a(base, {.seed = 42}), b(base, {.seed = 42}), c(base, {.seed = 43});
  ASSERT_TRUE(a.record(workload).ok());
  ASSERT_TRUE(b.record(workload).ok());
  ASSERT_TRUE(c.record(workload).ok());
  auto pa = a.plan(), pb = b.plan(), pc = c.plan();
  ASSERT_EQ(pa.size(), pb.size());
  bool differs = pa.size() != pc.size();
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].id, pb[i].id);
    EXPECT_EQ(pa[i].state.landed, pb[i].state.landed);
    if (i < pc.size()) differs |= pa[i].state.landed != pc[i].state.landed;
  }
  EXPECT_TRUE(differs);
  // Rerun one state alone: the checker sees that state and only it.
  std::string target = pa.back().id;
  CrashHarness one(base, {.seed = 42, .only_state = target});
  ASSERT_TRUE(one.record(workload).ok());
  std::mutex mu;
  std::vector<std::string> seen;
  CrashReport r = one.check([&](const CrashCheckContext& ctx) {
    std::lock_guard lock(mu);
    seen.push_back(ctx.id);
    EXPECT_EQ(ctx.state->landed, pa.back().state.landed);
    return std::vector<std::string>{};
  });
  EXPECT_TRUE(r.ok()) << r.summary();
  EXPECT_EQ(seen, std::vector<std::string>{target});
}

TEST(CrashHarness, BudgetsCapTheStates) {
  TempDir dir;
  CrashHarness h(zero_image(dir, 1 << 20), {.random_states_per_epoch = 50, .max_states = 10});
  ASSERT_TRUE(h.record([](CrashHarness& hh) -> Status {
                 for (int i = 0; i < 30; ++i) UEXT_TRY(hh.device().write(kBlock * i, payload(i, kBlock)));
                 return Status{};
               }).ok());
  CrashReport r = h.check([](const CrashCheckContext&) { return std::vector<std::string>{}; });
  EXPECT_EQ(r.planned, 10u);
  EXPECT_EQ(r.checked, 10u);
  EXPECT_GT(r.skipped_by_cap, 0u);

  CrashHarness slow(h.base_image(), {.random_states_per_epoch = 50, .time_budget = std::chrono::milliseconds(300)});
  ASSERT_TRUE(slow.record([](CrashHarness& hh) -> Status {
                    for (int i = 0; i < 30; ++i) UEXT_TRY(hh.device().write(kBlock * i, payload(i, kBlock)));
                    return Status{};
                  }).ok());
  CrashReport t = slow.check([](const CrashCheckContext&) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return std::vector<std::string>{};
  });
  EXPECT_TRUE(t.out_of_time);
  EXPECT_LT(t.checked, t.planned);
  EXPECT_LE(t.checked, 10u);
}

// ------------------------------------------------------------ store 2
// A record store: each generation rewrites one 4 KiB record (header in the
// first sector, value after it) and fsyncs. With one slot, a torn write
// mixes old and new sectors; with two slots and a checksum, the reader
// falls back to the other slot.

constexpr size_t kValueOffset = 512;

std::vector<std::byte> record(uint64_t gen) {
  std::vector<std::byte> r(kBlock);
  std::memcpy(r.data(), kMagic, 8);
  put64(r, 8, gen);
  auto v = payload(gen, kBlock - kValueOffset);
  std::memcpy(r.data() + kValueOffset, v.data(), v.size());
  put64(r, 16, fnv(std::span(r).subspan(kValueOffset)));
  return r;
}

// Generation of a valid record in slot `slot`; 0 when empty; nullopt when damaged.
std::optional<uint64_t> read_slot(const std::vector<std::byte>& img, size_t slot) {
  std::vector<std::byte> r(img.begin() + static_cast<long>(slot * kBlock),
                           img.begin() + static_cast<long>((slot + 1) * kBlock));
  if (std::memcmp(r.data(), kMagic, 8) != 0) return 0;
  if (fnv(std::span(r).subspan(kValueOffset)) != get64(r, 16)) return std::nullopt;
  return get64(r, 8);
}

CrashReport run_record_store(size_t slots, double tear) {
  TempDir dir;
  CrashHarness h(zero_image(dir, 1 << 20), {.random_states_per_epoch = 16, .tear_probability = tear});
  EXPECT_TRUE(h.record([&](CrashHarness& hh) -> Status {
                 for (uint64_t g = 1; g <= 6; ++g) {
                   UEXT_TRY(hh.device().write((g % slots) * kBlock, record(g)));
                   UEXT_TRY(hh.device().flush());
                   hh.mark_durable("gen " + std::to_string(g));
                 }
                 return Status{};
               }).ok());
  return h.check([slots](const CrashCheckContext& c) {
    std::vector<std::string> problems;
    std::vector<std::byte> img = read_image(c.image);
    uint64_t best = 0;
    size_t valid = 0;
    for (size_t s = 0; s < slots; ++s) {
      auto g = read_slot(img, s);
      if (g) best = std::max(best, *g), ++valid;
    }
    if (valid == 0) problems.push_back("corrupt: no slot holds a whole record");
    for (uint64_t g = 1; g <= 6; ++g)
      if (c.must_hold("gen " + std::to_string(g)) && best < g)
        problems.push_back("lost: generation " + std::to_string(g) + " was fsynced, the best record is " +
                           std::to_string(best));
    return problems;
  });
}

TEST(CrashHarness, OneSlotPassesWhenWritesAreAtomic) {
  CrashReport r = run_record_store(1, 0.0);
  EXPECT_TRUE(r.ok()) << r.summary();
}

TEST(CrashHarness, TornWritesBreakOneSlot) {
  CrashReport r = run_record_store(1, 0.5);
  ASSERT_FALSE(r.ok());
  bool torn = false;
  for (const auto& f : r.failures) torn |= f.state.find("torn") != std::string::npos;
  EXPECT_TRUE(torn) << r.summary();
}

TEST(CrashHarness, TwoChecksummedSlotsSurviveTornWrites) {
  CrashReport r = run_record_store(2, 0.5);
  EXPECT_TRUE(r.ok()) << r.summary();
  EXPECT_GT(r.checked, 20u);
}

// ------------------------------------------------------------ e2fsck oracle

std::string mkfs(const TempDir& dir, const std::string& name, const std::vector<std::string>& args,
                 const std::string& size = "8M") {
  std::string path = dir / name;
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.insert(argv.end(), {path, size});
  run_ok(argv);
  return path;
}

TEST(CrashHarnessFsck, CleanAndDamagedImages) {
  TempDir dir;
  std::string img = mkfs(dir, "a.img", {"-t", "ext4"});
  FsckVerdict v = e2fsck_clean(img);
  EXPECT_TRUE(v.clean) << v.report;
  EXPECT_FALSE(v.needed_recovery);

  // "with errors" in the superblock state fails even if e2fsck -n is content.
  std::string errs = dir / "errors.img";
  copy_file(img, errs);
  run_ok({"debugfs", "-w", "-R", "ssv state 3", errs});
  v = e2fsck_clean(errs);
  EXPECT_FALSE(v.clean);
  EXPECT_NE(v.report.find("with errors"), std::string::npos) << v.report;

  // A root directory whose inode is cleared.
  std::string broken = dir / "broken.img";
  copy_file(img, broken);
  run_ok({"debugfs", "-w", "-R", "clri <2>", broken});
  v = e2fsck_clean(broken);
  EXPECT_FALSE(v.clean);
  EXPECT_NE(v.report.find("e2fsck -fn"), std::string::npos) << v.report;
  // The oracle never touches the image it checks.
  EXPECT_FALSE(e2fsck_clean(broken).clean);
}

// The kernel leaves a journal to replay (shut down with xfs_io): every
// replay option must bring it to a clean state, and the two replays agree.
TEST(CrashHarnessFsck, ReplaysAJournalBeforeChecking) {
  if (!can_loop_mount()) GTEST_SKIP() << "needs root and /dev/loop-control to let the kernel write a journal";
  TempDir dir;
  std::string img = mkfs(dir, "j.img", {"-t", "ext4", "-J", "size=4"}, "64M");
  std::string mnt = dir / "mnt";
  run_ok({"mkdir", "-p", mnt});
  {
    LoopMount m(img, mnt, false);
    ASSERT_TRUE(m.ok()) << m.error();
    CommandResult r = run_shell("cd " + mnt +
                                " && mkdir -p a/b && for i in $(seq 1 40); do echo $i > a/b/f$i; done && sync"
                                " && for i in $(seq 1 40); do mv a/b/f$i a/g$i; done && touch a/late");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = run({"xfs_io", "-x", "-c", "shutdown -f", mnt});
    ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
    ASSERT_TRUE(m.unmount()) << m.error();
  }
  ASSERT_TRUE(has_needs_recovery(img));
  for (Replay replay : {Replay::kUext, Replay::kE2fsck, Replay::kBoth}) {
    FsckVerdict v = e2fsck_clean(img, {.replay = replay});
    EXPECT_TRUE(v.needed_recovery);
    EXPECT_TRUE(v.clean) << "replay " << static_cast<int>(replay) << ":\n" << v.report;
  }
  EXPECT_TRUE(has_needs_recovery(img)) << "e2fsck_clean must work on copies";
}

// Writing the blocks that turn image A into image B (a directory and files
// made with debugfs), no journal, no order: e2fsck passes both ends and
// catches the torn middle states.
TEST(CrashHarnessFsck, UnorderedMetadataUpdatesAreCaughtByE2fsck) {
  TempDir dir;
  std::string a = mkfs(dir, "a.img", {"-t", "ext4", "-O", "^has_journal", "-b", "1024"});
  std::string b = dir / "b.img";
  copy_file(a, b);
  write_file(dir / "data", std::string(3000, 'x'));
  run_ok({"debugfs", "-w", "-R", "mkdir d", b});
  run_ok({"debugfs", "-w", "-R", "write " + (dir / "data") + " d/f", b});
  ASSERT_TRUE(e2fsck_clean(b).clean);
  std::vector<std::byte> ia = read_image(a), ib = read_image(b);
  ASSERT_EQ(ia.size(), ib.size());

  CrashHarness h(a, {.seed = 5, .exhaustive_writes = 0, .random_states_per_epoch = 24});
  size_t changed = 0;
  ASSERT_TRUE(h.record([&](CrashHarness& hh) -> Status {
                 for (size_t off = 0; off < ia.size(); off += 1024) {
                   if (std::memcmp(ia.data() + off, ib.data() + off, 1024) == 0) continue;
                   ++changed;
                   UEXT_TRY(hh.device().write(off, std::span(ib).subspan(off, 1024)));
                 }
                 UEXT_TRY(hh.device().flush());
                 hh.mark_durable("d/f");
                 return Status{};
               }).ok());
  std::cout << "[ info ] " << changed << " blocks differ between the images\n";
  ASSERT_GE(changed, 5u);
  CrashReport r = h.check([](const CrashCheckContext& c) {
    FsckVerdict v = e2fsck_clean(c.image);
    return v.clean ? std::vector<std::string>{} : std::vector<std::string>{v.report};
  });
  ASSERT_FALSE(r.ok()) << r.summary();
  for (const auto& f : r.failures) EXPECT_EQ(f.state_id.rfind("cut-", 0), std::string::npos) << f.state_id;
  EXPECT_LT(r.failures.size(), r.checked);
}

}  // namespace
}  // namespace uext::testing

// ------------------------------------------------------------ the kernel

namespace uext::testing {
namespace {

bool can_serve_fuse() { return can_loop_mount() && ::access("/dev/fuse", R_OK | W_OK) == 0; }

// What the harness records when the kernel's ext4 is the filesystem: every
// crash state must replay to an image e2fsck calls clean (uext's replay and
// e2fsck's must agree), and every file fsynced before the state's cut must
// read back whole. This validates the harness against a known-good
// filesystem: a false alarm here would be a bug in the recorder or the
// state builder, not in ext4.
struct KernelVariant {
  std::string name;
  std::vector<std::string> mkfs;
  std::string mount_options;
};

class KernelCrashStates : public ::testing::TestWithParam<KernelVariant> {};

TEST_P(KernelCrashStates, EveryStateReplaysCleanAndKeepsWhatWasFsynced) {
  if (!can_serve_fuse()) GTEST_SKIP() << "needs root, /dev/loop-control and /dev/fuse to record the kernel's writes";
  const KernelVariant& v = GetParam();
  TempDir dir;
  std::string base = dir / "base.img";
  std::vector<std::string> argv = {"mke2fs", "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard"};
  argv.insert(argv.end(), v.mkfs.begin(), v.mkfs.end());
  argv.insert(argv.end(), {base, "32M"});
  run_ok(argv);

  CrashHarness h(base, {.random_states_per_epoch = 3, .max_states = 90, .time_budget = std::chrono::seconds(40)});
  std::string fuse_dir = dir / "fuse", mnt = dir / "mnt";
  run_ok({"mkdir", "-p", fuse_dir, mnt});
  auto file = FuseBlockFile::start(h.device(), fuse_dir);
  ASSERT_TRUE(file.ok()) << file.error().message();

  // Host copies of what the workload fsyncs.
  std::map<std::string, std::string> fsynced;  // path in the image -> content
  std::string big(300 * 1024, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 7919) >> 5);
  write_file(dir / "big", big);

  Status recorded = h.record([&](CrashHarness& hh) -> Status {
    std::string opts = "-o" + v.mount_options;
    std::string loopdev;
    {
      CommandResult r = run({"losetup", "-f", "--show", (*file)->path()});
      if (r.exit_code != 0) return Error(EIO, "losetup: " + r.err);
      loopdev = r.out.substr(0, r.out.find('\n'));
    }
    CommandResult r = run({"mount", opts, loopdev, mnt});
    if (r.exit_code != 0) {
      run({"losetup", "-d", loopdev});
      return Error(EIO, "mount: " + r.err);
    }
    auto sh = [&](const std::string& script) {
      CommandResult c = run_shell("cd " + mnt + " && " + script);
      EXPECT_EQ(c.exit_code, 0) << script << "\n" << c.err;
    };
    sh("mkdir -p d/e && for i in $(seq 1 24); do echo file $i > d/f$i; done");
    sh("cp " + dir / "big" + " big && sync big");
    fsynced["/big"] = big;
    hh.mark_durable("/big");
    sh("for i in $(seq 1 24); do mv d/f$i d/e/g$i; done && rm d/e/g3 d/e/g4 && mkdir d/x");
    sh("printf 'fsynced note\\n' > d/note && sync d/note");
    fsynced["/d/note"] = "fsynced note\n";
    hh.mark_durable("/d/note");
    sh("cp big big2 && truncate -s 5000 big2 && for i in $(seq 1 30); do touch late$i; done && rm -r d/x");
    sh("head -c 70000 big2 > d/head && sync d/head");
    fsynced["/d/head"] = big.substr(0, 5000);
    hh.mark_durable("/d/head");
    sh("for i in $(seq 1 10); do echo $i >> d/e/g1; done; ln -s big link");
    run({"umount", mnt});
    for (int i = 0; i < 20 && run({"losetup", "-d", loopdev}).exit_code != 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    return {};
  });
  (*file)->stop();
  ASSERT_TRUE(recorded.ok()) << recorded.error().message();
  EXPECT_EQ((*file)->io_errors(), 0u);
  const io::IoLog& log = h.log();
  std::cout << "[ info ] " << v.name << ": the kernel wrote " << log.total_writes() << " times ("
            << log.bytes_written() / 1024 << " KiB) and flushed " << log.flushes() << " times\n";
  ASSERT_GE(log.flushes(), 3u) << "each fsync must reach the recording as a flush";
  ASSERT_EQ(h.marks().size(), 3u);
  for (size_t i = 1; i < h.marks().size(); ++i) EXPECT_GT(h.marks()[i].epoch, h.marks()[i - 1].epoch);

  // The final state is the unmounted filesystem: clean without a replay.
  {
    std::string final_state = dir / "final.img";
    ASSERT_TRUE(log.materialize_to_file(log.all_landed(log.epochs() - 1), base, final_state).ok());
    FsckVerdict fv = e2fsck_clean(final_state, {.replay = Replay::kNone});
    EXPECT_TRUE(fv.clean) << fv.report;
    EXPECT_FALSE(fv.needed_recovery);
  }

  std::atomic<size_t> replayed{0}, tolerated{0};
  CrashReport report = h.check([&](const CrashCheckContext& c) {
    std::vector<std::string> problems;
    FsckVerdict fv = e2fsck_clean(c.image, {.replay = Replay::kBoth});
    if (fv.needed_recovery) ++replayed;
    tolerated += fv.notes.size();
    if (!fv.clean) problems.push_back(fv.report);
    if (fv.needed_recovery) {
      auto rep = replay_journal_with_uext(c.image);
      if (!rep.ok()) return std::vector<std::string>{"replay: " + rep.error().message()};
    }
    for (const std::string& tag : c.durable_tags()) {
      CommandResult cat = run({"debugfs", "-R", "cat " + tag, c.image});
      if (cat.out != fsynced.at(tag)) {
        problems.push_back(tag + " was fsynced but reads back as " + std::to_string(cat.out.size()) +
                           " bytes that differ (" + cat.err.substr(0, 200) + ")");
      }
    }
    return problems;
  });
  std::cout << "[ info ] " << v.name << ": " << report.checked << " crash states checked, " << replayed.load()
            << " needed a journal replay (" << tolerated.load()
            << " over an empty log, where e2fsck advances s_sequence and uext does not); seed " << report.seed
            << "\n";
  EXPECT_TRUE(report.ok()) << report.summary();
  EXPECT_GE(report.checked, std::min<size_t>(report.planned, 30));
  EXPECT_GT(replayed.load(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Kernel, KernelCrashStates,
                         ::testing::Values(KernelVariant{"ext4_ordered", {"-t", "ext4", "-J", "size=4"}, "rw"},
                                           KernelVariant{"ext3_1k_journal_data",
                                                         {"-t", "ext3", "-b", "1024", "-J", "size=2"},
                                                         "rw,data=journal"}),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace uext::testing
