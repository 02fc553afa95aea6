#include "support/crash.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "disk/bytes.h"
#include "disk/features.h"
#include "disk/jbd2.h"
#include "disk/superblock.h"
#include "fs/block_map.h"
#include "fs/volume.h"
#include "support/images.h"
#include "support/process.h"

namespace uext::testing {
namespace {

std::string command_line(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

std::string describe_run(const std::vector<std::string>& argv, const CommandResult& r) {
  std::string s = command_line(argv) + " exited " + std::to_string(r.exit_code);
  if (!r.out.empty()) s += "\n--- stdout\n" + r.out;
  if (!r.err.empty()) s += "\n--- stderr\n" + r.err;
  return s;
}

Result<disk::Superblock> read_superblock(const std::string& image) {
  UEXT_ASSIGN_OR_RETURN(auto dev, open_image_file(image, {}));
  std::vector<std::byte> raw(1024);
  UEXT_TRY(dev->read(1024, raw));
  return disk::decode_superblock(raw, dev->size());
}

// A unique scratch path beside `near` (or in `dir`).
std::string scratch_path(const std::string& near, const std::string& dir, const std::string& suffix) {
  static std::atomic<uint64_t> counter{0};
  std::string base = dir.empty() ? near : dir + "/" + near.substr(near.rfind('/') + 1);
  return base + "." + std::to_string(::getpid()) + "." + std::to_string(counter++) + suffix;
}

struct Scratch {
  std::string path;
  ~Scratch() {
    if (!path.empty()) ::unlink(path.c_str());
  }
};

// e2fsck -fn, and the superblock's state, on an image that needs no
// replay. e2fsck exits 0 on a superblock marked "clean with errors", so the
// error bit is read too (superblock_state: from the bytes, since a dumpe2fs
// process per crash state was a third of the harness's process time).
// With `errors_expected` (the journal recorded that it aborted, which marks
// the image after a replay) the "with errors" state goes to `notes`.
bool check_clean(const std::string& image, std::string& report, bool errors_expected = false,
                 std::vector<std::string>* notes = nullptr) {
  std::vector<std::string> fsck = {"e2fsck", "-fn", image};
  CommandResult r = run(fsck);
  bool clean = true;
  if (r.exit_code != 0) {
    report += describe_run(fsck, r) + "\n";
    clean = false;
  }
  const auto state = superblock_state(image);
  if (!state) {
    report += "cannot read the superblock's state field of " + image + "\n";
    return false;
  }
  if (*state & kSuperblockErrors) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "%#06x", *state);
    std::string said = image + ": the superblock's state says \"with errors\" (s_state " + hex + ")";
    if (errors_expected) {
      if (notes) notes->push_back(said + ", as the journal's recorded abort demands");
      return clean;
    }
    // Rare, so worth a process: what the error record says.
    auto h = dumpe2fs_header(image);
    report += said + "; first error: " + h["First error function"] + ", inode " + h["First error inode #"] + ", " +
              h["First error err"] + "; errors: " + h["FS Error count"] + "\n";
    clean = false;
  }
  return clean;
}

// Filesystem blocks where two images of the same size differ (up to 20).
std::vector<uint64_t> differing_blocks(const std::string& a, const std::string& b, uint32_t bs) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  std::vector<char> ba(1 << 20), bb(1 << 20);
  std::vector<uint64_t> out;
  uint64_t base = 0;
  while (fa && fb && out.size() < 20) {
    fa.read(ba.data(), static_cast<std::streamsize>(ba.size()));
    fb.read(bb.data(), static_cast<std::streamsize>(bb.size()));
    size_t n = static_cast<size_t>(std::min(fa.gcount(), fb.gcount()));
    for (size_t off = 0; off < n && out.size() < 20; off += bs)
      if (std::memcmp(ba.data() + off, bb.data() + off, std::min<size_t>(bs, n - off)) != 0)
        out.push_back((base + off) / bs);
    base += n;
  }
  return out;
}

uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  return std::strtoull(v, nullptr, 0);
}

uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t z = a + 0x9E3779B97F4A7C15ull * (b + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Forwards to a device it does not own.
class Borrowed final : public BlockDevice {
 public:
  explicit Borrowed(BlockDevice& dev) : dev_(dev) {}
  Status read(uint64_t offset, std::span<std::byte> buf) override { return dev_.read(offset, buf); }
  Status write(uint64_t offset, std::span<const std::byte> buf) override { return dev_.write(offset, buf); }
  Status flush() override { return dev_.flush(); }
  uint64_t size() const override { return dev_.size(); }
  bool read_only() const override { return dev_.read_only(); }

 private:
  BlockDevice& dev_;
};

}  // namespace

// ------------------------------------------------------------ e2fsck oracle

bool has_needs_recovery(const std::string& image) {
  auto sb = read_superblock(image);
  return sb.ok() && sb->has_incompat(disk::incompat::kRecover);
}

namespace {

struct JournalLocation {
  journal::JournalMap map;
  uint32_t block_size = 0;
  uint64_t fs_blocks = 0;
};

// The journal inode's blocks, mapped by the read path (fs::all_mapped_runs).
Result<JournalLocation> locate_journal(const std::string& image) {
  UEXT_ASSIGN_OR_RETURN(auto dev, open_image_file(image, {}));
  Options opts;
  UEXT_ASSIGN_OR_RETURN(auto vol, fs::Volume::open(std::move(dev), opts));
  const disk::Superblock& sb = vol->sb();
  if (!sb.has_compat(disk::compat::kHasJournal) || sb.s_journal_inum == 0) {
    return Error(EINVAL, image + ": no internal journal");
  }
  UEXT_ASSIGN_OR_RETURN(auto rec, vol->read_inode(sb.s_journal_inum));
  UEXT_ASSIGN_OR_RETURN(auto runs, fs::all_mapped_runs(*vol, rec));
  std::vector<journal::JournalExtent> extents;
  for (const auto& r : runs) extents.push_back({r.logical, r.physical, r.length});
  return JournalLocation{journal::JournalMap(std::move(extents)), vol->block_size(), sb.s_blocks_count};
}

// Big-endian fields of the jbd2 superblock the comparison needs.
uint32_t be32_at(const std::string& b, size_t off) {
  return static_cast<uint32_t>(static_cast<uint8_t>(b[off])) << 24 |
         static_cast<uint32_t>(static_cast<uint8_t>(b[off + 1])) << 16 |
         static_cast<uint32_t>(static_cast<uint8_t>(b[off + 2])) << 8 | static_cast<uint8_t>(b[off + 3]);
}
constexpr size_t kJsbSequence = 0x18, kJsbStart = 0x1C, kJsbChecksum = 0xFC;

}  // namespace

namespace {

// `loc`: where the image's journal lies (locate_journal), found once by
// callers that need it for several steps of one crash state.
Result<journal::RecoveryReport> replay_located_journal_with_uext(const std::string& image,
                                                                 const JournalLocation& loc) {
  const journal::JournalMap& map = loc.map;
  const uint32_t bs = loc.block_size;
  const uint64_t fs_blocks = loc.fs_blocks;
  UEXT_ASSIGN_OR_RETURN(auto dev, open_image_file(image, {.read_only = false}));
  UEXT_ASSIGN_OR_RETURN(auto report, journal::recover_journal(*dev, bs, map, {.fs_blocks = fs_blocks}));
  UEXT_TRY(journal::clear_needs_recovery(*dev, report.needs_fsck()));
  // As uext's read-write open: a recorded abort marks the image.
  UEXT_TRY(journal::move_journal_errno_to_superblock(*dev, bs, map));
  UEXT_TRY(dev->flush());
  return report;
}

Result<int32_t> located_journal_errno(const std::string& image, const JournalLocation& loc) {
  auto first = loc.map.physical(0);
  if (!first) return Error(kErrCorrupted, image + ": the journal's block 0 is not mapped");
  UEXT_ASSIGN_OR_RETURN(auto dev, open_image_file(image, {}));
  std::vector<std::byte> raw(loc.block_size);
  UEXT_TRY(dev->read(*first * loc.block_size, raw));
  UEXT_ASSIGN_OR_RETURN(auto jsb, disk::decode_journal_superblock(raw, loc.block_size, loc.map.mapped_prefix()));
  return jsb.s_errno;
}

}  // namespace

Result<journal::RecoveryReport> replay_journal_with_uext(const std::string& image) {
  UEXT_ASSIGN_OR_RETURN(JournalLocation loc, locate_journal(image));
  return replay_located_journal_with_uext(image, loc);
}

Result<int32_t> journal_errno(const std::string& image) {
  UEXT_ASSIGN_OR_RETURN(JournalLocation loc, locate_journal(image));
  return located_journal_errno(image, loc);
}

Status replay_journal_with_e2fsck(const std::string& image) {
  // Without -f: with -f, journal_only still runs the whole check.
  std::vector<std::string> argv = {"e2fsck", "-y", "-E", "journal_only", image};
  CommandResult r = run(argv);
  // 0: nothing to fix, 1: the journal was replayed.
  if (r.exit_code != 0 && r.exit_code != 1) return Error(EIO, describe_run(argv, r));
  return {};
}

namespace {

// Where uext's replay `a` and e2fsck's replay `b` of `image` differ, apart
// from the tolerated cases (see e2fsck_clean); "" when they agree.
std::string replay_difference(const std::string& image, const disk::Superblock& sb_in,
                              const Result<JournalLocation>& jloc, const std::string& a_path,
                              const std::string& b_path, const FsckOptions& options, FsckVerdict& v) {
  struct {
    std::string path;
  } a{a_path}, b{b_path};
  const disk::Superblock* sb = &sb_in;
  std::string out;
  uint32_t bs = sb->block_size();
  uint64_t sb_block = bs == 1024 ? 1 : 0;
  std::vector<uint64_t> diff = differing_blocks(a.path, b.path, bs);
  std::erase(diff, sb_block);
  // One known, harmless difference: with needs_recovery set over an empty
  // log (s_start 0), e2fsck still advances s_sequence by one (as the
  // kernel does when it next writes the journal superblock) while uext's
  // recover_journal writes nothing. Either leaves a valid empty journal.
  // 0 when unknown: block 0 holds the boot sector, never the journal's
  // superblock (and a plain integer spares GCC a maybe-uninitialized guess).
  const uint64_t jsb_block = jloc.ok() ? jloc->map.physical(0).value_or(0) : 0;
  if (jsb_block != 0 && std::find(diff.begin(), diff.end(), jsb_block) != diff.end()) {
    std::string orig = read_bytes(image, jsb_block * bs, 1024);
    std::string ja = read_bytes(a.path, jsb_block * bs, 1024), jb = read_bytes(b.path, jsb_block * bs, 1024);
    std::string ma = ja, mb = jb;
    // s_sequence, and s_checksum (v2/v3 checksums cover it).
    for (size_t i = 0; i < 4; ++i) {
      ma[kJsbSequence + i] = mb[kJsbSequence + i] = 0;
      ma[kJsbChecksum + i] = mb[kJsbChecksum + i] = 0;
    }
    if (be32_at(orig, kJsbStart) == 0 && ma == mb && !options.strict_replay_agreement) {
      std::erase(diff, jsb_block);
      v.notes.push_back("empty journal: e2fsck set s_sequence " + std::to_string(be32_at(jb, kJsbSequence)) +
                        ", uext left " + std::to_string(be32_at(ja, kJsbSequence)));
    }
  }
  if (!diff.empty()) {
    out += "uext's and e2fsck's journal replays differ at blocks";
    for (uint64_t blk : diff) out += " " + std::to_string(blk);
    if (jsb_block != 0) out += " (the journal superblock is block " + std::to_string(jsb_block) + ")";
    out += "\n";
  }
  return out;
}

}  // namespace

FsckVerdict e2fsck_clean(const std::string& image, const FsckOptions& options) {
  FsckVerdict v;
  auto sb = read_superblock(image);
  if (!sb.ok()) {
    v.report = image + ": superblock: " + sb.error().message() + "\n";
    // e2fsck may still find a backup; let it say what it thinks.
    check_clean(image, v.report);
    return v;
  }
  v.needed_recovery = sb->has_incompat(disk::incompat::kRecover);
  if (!v.needed_recovery || options.replay == Replay::kNone) {
    v.clean = check_clean(image, v.report);
    if (v.needed_recovery && !v.clean) v.report += "(needs_recovery was set and not replayed)\n";
    return v;
  }
  bool use_uext = options.replay == Replay::kUext || options.replay == Replay::kBoth;
  bool use_e2fsck = options.replay == Replay::kE2fsck || options.replay == Replay::kBoth;
  Scratch a, b;
  v.clean = true;
  // A journal that recorded its abort marks the image "with errors" when
  // replayed (by uext and e2fsck alike): expected, then, not a failure.
  const Result<JournalLocation> jloc = locate_journal(image);
  if (jloc.ok()) {
    if (auto e = located_journal_errno(image, *jloc); e.ok()) v.journal_errno = *e;
  }
  const bool errors_expected = v.journal_errno != 0;
  if (use_uext) {
    a.path = scratch_path(image, options.scratch_dir, ".uext-replay");
    Status copied = io::copy_sparse_file(image, a.path);
    if (copied.ok() && !jloc.ok()) copied = jloc.error();
    // The copy's journal lies where the image's does.
    auto rep = copied.ok() ? replay_located_journal_with_uext(a.path, *jloc)
                           : Result<journal::RecoveryReport>(copied.error());
    if (!rep.ok()) {
      v.clean = false;
      v.report += "uext journal replay: " + rep.error().message() + "\n";
    } else if (!check_clean(a.path, v.report, errors_expected, &v.notes)) {
      v.clean = false;
      v.report += "(after uext's replay of " + std::to_string(rep->transactions) + " transactions)\n";
    }
  }
  if (use_e2fsck) {
    b.path = scratch_path(image, options.scratch_dir, ".e2fsck-replay");
    Status st = io::copy_sparse_file(image, b.path);
    if (st.ok()) st = replay_journal_with_e2fsck(b.path);
    if (!st.ok()) {
      v.clean = false;
      v.report += "e2fsck journal replay: " + st.error().message() + "\n";
    } else if (!check_clean(b.path, v.report, errors_expected, &v.notes)) {
      v.clean = false;
      v.report += "(after e2fsck's replay)\n";
    }
  }
  if (use_uext && use_e2fsck && v.clean) {
    std::string diff = replay_difference(image, *sb, jloc, a.path, b.path, options, v);
    if (!diff.empty()) {
      v.clean = false;
      v.report += diff;
    }
  }
  return v;
}

// ------------------------------------------------------------ harness

bool CrashCheckContext::must_hold(const std::string& tag) const {
  for (const auto& m : *marks)
    if (m.tag == tag && m.epoch <= state->epoch) return true;
  return false;
}

std::vector<std::string> CrashCheckContext::durable_tags() const {
  std::vector<std::string> out;
  for (const auto& m : *marks)
    if (m.epoch <= state->epoch) out.push_back(m.tag);
  return out;
}

std::string CrashCheckContext::describe() const {
  return "[" + id + "] " + state->describe(log->writes_in_epoch(state->epoch));
}

std::string CrashReport::summary() const {
  std::ostringstream s;
  s << "crash states: seed " << seed << ", " << checked << " of " << planned << " checked";
  if (skipped_by_cap) s << " (" << skipped_by_cap << " more cut by max_states)";
  if (out_of_time) s << ", stopped by the time budget";
  s << ", " << failures.size() << " failed\n";
  for (const auto& f : failures) {
    std::string problem = f.problem;
    if (problem.size() > 3000) problem = problem.substr(0, 3000) + "\n... (" + std::to_string(f.problem.size()) + " bytes)";
    s << "  [" << f.state_id << "] " << f.state << "\n    " << problem << "\n";
  }
  if (!failures.empty()) {
    s << "  reproduce one: UEXT_CRASH_SEED=" << seed << " UEXT_CRASH_STATE=" << failures.front().state_id << "\n";
  }
  return s.str();
}

CrashHarness::CrashHarness(std::string base_image, CrashOptions options)
    : base_image_(std::move(base_image)), options_(std::move(options)) {
  seed_ = options_.seed;
  seed_ = env_u64("UEXT_CRASH_SEED", seed_);
  if (seed_ == 0) {
    seed_ = mix(static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()),
                static_cast<uint64_t>(::getpid()));
  }
  if (const char* s = std::getenv("UEXT_CRASH_STATE"); s && *s) options_.only_state = s;
  if (const char* s = std::getenv("UEXT_CRASH_KEEP"); s && *s) options_.keep_failures_dir = s;
  std::vector<std::byte> bytes;
  auto file = open_image_file(base_image_, {});
  if (file.ok()) {
    bytes.resize((*file)->size());
    if (!(*file)->read(0, bytes).ok()) bytes.clear();
  }
  if (!file.ok()) ADD_FAILURE() << "crash harness: base image: " << file.error().message();
  device_ = std::make_unique<io::RecordingDevice>(make_memory_device(bytes));
}

CrashHarness::~CrashHarness() = default;

std::unique_ptr<BlockDevice> CrashHarness::borrow_device() { return std::make_unique<Borrowed>(*device_); }

void CrashHarness::mark_durable(const std::string& tag) {
  std::lock_guard lock(marks_mu_);
  marks_.push_back({tag, device_->flush_count()});
}

Status CrashHarness::record(const std::function<Status(CrashHarness&)>& workload) {
  Status st = workload(*this);
  log_ = device_->log();
  return st;
}

void CrashHarness::adopt(io::IoLog log, std::vector<DurableMark> marks) {
  log_ = std::move(log);
  marks_ = std::move(marks);
}

std::vector<PlannedState> CrashHarness::plan() const {
  std::vector<PlannedState> cuts, subsets, random;
  std::set<std::tuple<size_t, std::vector<size_t>, std::map<size_t, std::vector<bool>>>> seen;
  auto add = [&](std::vector<PlannedState>& to, std::string id, io::CrashState s) {
    // Skip states with the same bytes as a cut: nothing of the epoch landed
    // (its own cut), or all of it landed untorn and a flush closed it (the
    // next cut).
    const bool is_cut = &to == &cuts;
    const size_t n = log_.writes_in_epoch(s.epoch);
    if (!is_cut && s.torn.empty() && s.landed.empty()) return;
    if (!is_cut && s.torn.empty() && s.landed.size() == n && s.epoch + 1 < log_.epochs()) return;
    if (!seen.insert({s.epoch, s.landed, s.torn}).second) return;
    to.push_back({std::move(id), std::move(s)});
  };
  const size_t epochs = log_.epochs();
  for (size_t e = 0; e < epochs; ++e) {
    // The cut at flush e equals the one before when epoch e - 1 wrote nothing.
    if (e == 0 || log_.writes_in_epoch(e - 1) > 0) add(cuts, "cut-" + std::to_string(e), log_.clean_cut(e));
  }
  if (log_.writes_in_epoch(epochs - 1) > 0) add(cuts, "all", log_.all_landed(epochs - 1));
  for (size_t e = 0; e < epochs; ++e) {
    size_t n = log_.writes_in_epoch(e);
    if (n < 2 || n > options_.exhaustive_writes || n > 20) continue;
    for (uint64_t mask = 1; mask + 1 < (uint64_t{1} << n); ++mask)
      add(subsets, "e" + std::to_string(e) + "-m" + std::to_string(mask), *log_.subset(e, mask));
  }
  io::RandomStateOptions ropts{.tear_probability = options_.tear_probability};
  for (size_t round = 0; round < options_.random_states_per_epoch; ++round) {
    for (size_t e = 0; e < epochs; ++e) {
      size_t n = log_.writes_in_epoch(e);
      bool small = n <= options_.exhaustive_writes;
      if (n == 0 || (small && options_.tear_probability <= 0)) continue;
      add(random, "e" + std::to_string(e) + "-r" + std::to_string(round),
          log_.random_state(e, mix(seed_, round), ropts));
    }
  }
  std::vector<PlannedState> all = std::move(cuts);
  for (auto* v : {&subsets, &random})
    for (auto& p : *v) all.push_back(std::move(p));
  return all;
}

CrashReport CrashHarness::check(const CrashChecker& checker) const {
  CrashReport report;
  report.seed = seed_;
  std::vector<PlannedState> states = plan();
  if (!options_.only_state.empty()) {
    std::erase_if(states, [&](const PlannedState& p) { return p.id != options_.only_state; });
    if (states.empty()) {
      report.failures.push_back({options_.only_state, "", "no such state in the plan for this seed"});
      return report;
    }
  }
  if (states.size() > options_.max_states) {
    report.skipped_by_cap = states.size() - options_.max_states;
    states.resize(options_.max_states);
  }
  report.planned = states.size();

  TempDir dir;
  const auto deadline = std::chrono::steady_clock::now() + options_.time_budget;
  std::atomic<size_t> next{0}, checked{0}, failed{0};
  std::atomic<bool> out_of_time{false};
  std::mutex mu;
  std::vector<std::pair<size_t, CrashFailure>> failures;

  auto worker = [&](int w) {
    const std::string path = dir / ("state-" + std::to_string(w) + ".img");
    for (;;) {
      if (failed.load() >= options_.max_failures) return;
      if (std::chrono::steady_clock::now() > deadline) {
        out_of_time = true;
        return;
      }
      size_t i = next++;
      if (i >= states.size()) return;
      const PlannedState& p = states[i];
      std::string described = p.state.describe(log_.writes_in_epoch(p.state.epoch));
      std::vector<std::string> problems;
      Status st = log_.materialize_to_file(p.state, base_image_, path);
      if (!st.ok()) {
        problems.push_back("materializing the state: " + st.error().message());
      } else {
        CrashCheckContext ctx{path, p.id, &p.state, &log_, &marks_};
        problems = checker(ctx);
      }
      ++checked;
      if (problems.empty()) continue;
      ++failed;
      std::string text;
      for (const auto& pr : problems) text += (text.empty() ? "" : "\n    ") + pr;
      if (!options_.keep_failures_dir.empty()) {
        // Rebuild: the checker may have changed the file.
        (void)log_.materialize_to_file(p.state, base_image_, options_.keep_failures_dir + "/" + p.id + ".img");
      }
      std::lock_guard lock(mu);
      failures.push_back({i, {p.id, described, text}});
    }
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < std::max(1, options_.workers); ++w) threads.emplace_back(worker, w);
  for (auto& t : threads) t.join();

  std::sort(failures.begin(), failures.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& f : failures) report.failures.push_back(std::move(f.second));
  report.checked = checked;
  report.out_of_time = out_of_time && checked < states.size();
  return report;
}

// ------------------------------------------------------------ FuseBlockFile

// A minimal FUSE server speaking the kernel protocol on /dev/fuse directly:
// a root directory (node 1) holding one regular file "disk" (node 2) whose
// bytes are the device's.
struct FuseBlockFile::Impl {
  BlockDevice& dev;
  std::string mount_dir;
  int fd = -1;
  bool mounted = false;
  std::atomic<bool> stopping{false};
  std::atomic<uint64_t> requests{0}, io_errors{0};
  std::thread thread;

  explicit Impl(BlockDevice& d) : dev(d) {}

  static constexpr uint64_t kFileNode = 2;
  static constexpr uint32_t kMaxWrite = 128 * 1024;

  void fill_attr(uint64_t node, fuse_attr& a) const {
    std::memset(&a, 0, sizeof a);
    a.ino = node;
    if (node == FUSE_ROOT_ID) {
      a.mode = S_IFDIR | 0755;
      a.nlink = 2;
    } else {
      a.mode = S_IFREG | 0600;
      a.nlink = 1;
      a.size = dev.size();
      a.blocks = (dev.size() + 511) / 512;
    }
    a.blksize = 4096;
  }

  void reply(uint64_t unique, int error, const void* body = nullptr, size_t len = 0) {
    fuse_out_header h{};
    h.unique = unique;
    h.error = error;
    h.len = static_cast<uint32_t>(sizeof h + (error ? 0 : len));
    std::vector<char> out(h.len);
    std::memcpy(out.data(), &h, sizeof h);
    if (!error && len) std::memcpy(out.data() + sizeof h, body, len);
    // ENOENT: the request was interrupted and is gone; nothing to do.
    (void)::write(fd, out.data(), out.size());
  }

  void handle(const char* msg, size_t n) {
    const auto* in = reinterpret_cast<const fuse_in_header*>(msg);
    const char* arg = msg + sizeof(fuse_in_header);
    ++requests;
    switch (in->opcode) {
      case FUSE_INIT: {
        const auto* init = reinterpret_cast<const fuse_init_in*>(arg);
        fuse_init_out out{};
        out.major = FUSE_KERNEL_VERSION;
        out.minor = std::min<uint32_t>(init->minor, FUSE_KERNEL_MINOR_VERSION);
        out.max_readahead = init->max_readahead;
        out.flags = FUSE_MAX_PAGES & init->flags;
        out.max_background = 16;
        out.congestion_threshold = 12;
        out.max_write = kMaxWrite;
        out.time_gran = 1;
        out.max_pages = kMaxWrite / 4096;
        return reply(in->unique, 0, &out, sizeof out);
      }
      case FUSE_LOOKUP: {
        if (in->nodeid != FUSE_ROOT_ID || std::strcmp(arg, "disk") != 0) return reply(in->unique, -ENOENT);
        fuse_entry_out out{};
        out.nodeid = kFileNode;
        out.generation = 1;
        out.entry_valid = 3600;
        out.attr_valid = 3600;
        fill_attr(kFileNode, out.attr);
        return reply(in->unique, 0, &out, sizeof out);
      }
      case FUSE_GETATTR:
      case FUSE_SETATTR: {
        fuse_attr_out out{};
        out.attr_valid = 3600;
        fill_attr(in->nodeid, out.attr);
        return reply(in->unique, 0, &out, sizeof out);
      }
      case FUSE_OPEN: {
        fuse_open_out out{};
        out.open_flags = FOPEN_DIRECT_IO;  // every read and write reaches us
        return reply(in->unique, 0, &out, sizeof out);
      }
      case FUSE_READ: {
        const auto* r = reinterpret_cast<const fuse_read_in*>(arg);
        uint64_t size = dev.size();
        uint64_t len = r->offset >= size ? 0 : std::min<uint64_t>(r->size, size - r->offset);
        std::vector<std::byte> buf(len);
        if (len && !dev.read(r->offset, buf).ok()) {
          ++io_errors;
          return reply(in->unique, -EIO);
        }
        return reply(in->unique, 0, buf.data(), buf.size());
      }
      case FUSE_WRITE: {
        const auto* w = reinterpret_cast<const fuse_write_in*>(arg);
        const auto* data = reinterpret_cast<const std::byte*>(arg + sizeof(fuse_write_in));
        if (sizeof(fuse_in_header) + sizeof(fuse_write_in) + w->size > n) return reply(in->unique, -EINVAL);
        if (!dev.write(w->offset, std::span(data, w->size)).ok()) {
          ++io_errors;
          return reply(in->unique, -EIO);
        }
        fuse_write_out out{};
        out.size = w->size;
        return reply(in->unique, 0, &out, sizeof out);
      }
      case FUSE_FSYNC: {
        if (!dev.flush().ok()) {
          ++io_errors;
          return reply(in->unique, -EIO);
        }
        return reply(in->unique, 0);
      }
      case FUSE_FLUSH:  // close(), not a durability point
      case FUSE_RELEASE:
      case FUSE_RELEASEDIR:
        return reply(in->unique, 0);
      case FUSE_OPENDIR: {
        fuse_open_out out{};
        return reply(in->unique, 0, &out, sizeof out);
      }
      case FUSE_FORGET:
      case FUSE_BATCH_FORGET:
      case FUSE_INTERRUPT:
        return;  // no reply
      case FUSE_DESTROY:
        stopping = true;
        return reply(in->unique, 0);
      default:
        // fallocate (discard), statfs, xattrs, ...: the kernel falls back.
        return reply(in->unique, -ENOSYS);
    }
  }

  void serve() {
    std::vector<char> buf(kMaxWrite + 64 * 1024);
    while (!stopping) {
      pollfd p{fd, POLLIN, 0};
      int r = ::poll(&p, 1, 200);
      if (r <= 0) continue;
      ssize_t n = ::read(fd, buf.data(), buf.size());
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
        return;  // ENODEV: unmounted
      }
      if (static_cast<size_t>(n) < sizeof(fuse_in_header)) continue;
      handle(buf.data(), static_cast<size_t>(n));
    }
  }
};

FuseBlockFile::FuseBlockFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
  file_ = impl_->mount_dir + "/disk";
}

Result<std::unique_ptr<FuseBlockFile>> FuseBlockFile::start(BlockDevice& device, const std::string& mount_dir) {
  auto impl = std::make_unique<Impl>(device);
  impl->mount_dir = mount_dir;
  impl->fd = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (impl->fd < 0) return Error(errno, std::string("/dev/fuse: ") + std::strerror(errno));
  std::string opts = "fd=" + std::to_string(impl->fd) + ",rootmode=40000,user_id=0,group_id=0,allow_other";
  if (::mount("uext-crash", mount_dir.c_str(), "fuse", MS_NOSUID | MS_NODEV, opts.c_str()) != 0) {
    int err = errno;
    ::close(impl->fd);
    impl->fd = -1;
    return Error(err, "mount -t fuse " + mount_dir + ": " + std::strerror(err));
  }
  impl->mounted = true;
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->serve(); });
  return std::unique_ptr<FuseBlockFile>(new FuseBlockFile(std::move(impl)));
}

void FuseBlockFile::stop() {
  if (!impl_) return;
  if (impl_->mounted) {
    // A loop device lets go of its file a moment after losetup -d.
    bool done = false;
    for (int attempt = 0; attempt < 40 && !done; ++attempt) {
      done = ::umount2(impl_->mount_dir.c_str(), 0) == 0;
      if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!done) ::umount2(impl_->mount_dir.c_str(), MNT_DETACH);
    impl_->mounted = false;
  }
  impl_->stopping = true;
  if (impl_->thread.joinable()) impl_->thread.join();
  if (impl_->fd >= 0) ::close(impl_->fd);
  impl_->fd = -1;
}

FuseBlockFile::~FuseBlockFile() { stop(); }

uint64_t FuseBlockFile::requests() const { return impl_->requests; }
uint64_t FuseBlockFile::io_errors() const { return impl_->io_errors; }

}  // namespace uext::testing

namespace uext::testing {

FsckVerdict compare_replays(const std::string& image, const std::string& uext_copy, const std::string& e2fsck_copy,
                            const FsckOptions& options) {
  FsckVerdict v;
  auto sb = read_superblock(image);
  if (!sb.ok()) {
    v.report = image + ": superblock: " + sb.error().message() + "\n";
    return v;
  }
  v.needed_recovery = sb->has_incompat(disk::incompat::kRecover);
  const Result<JournalLocation> jloc = locate_journal(image);
  Status st = io::copy_sparse_file(image, uext_copy);
  if (st.ok() && !jloc.ok()) st = jloc.error();
  if (st.ok()) {
    auto rep = replay_located_journal_with_uext(uext_copy, *jloc);
    if (!rep.ok()) st = rep.error();
  }
  if (!st.ok()) {
    v.report += "uext journal replay: " + st.error().message() + "\n";
    return v;
  }
  st = io::copy_sparse_file(image, e2fsck_copy);
  if (st.ok()) st = replay_journal_with_e2fsck(e2fsck_copy);
  if (!st.ok()) {
    v.report += "e2fsck journal replay: " + st.error().message() + "\n";
    return v;
  }
  v.report = replay_difference(image, *sb, jloc, uext_copy, e2fsck_copy, options, v);
  v.clean = v.report.empty();
  return v;
}

}  // namespace uext::testing
