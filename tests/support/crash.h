// Crash testing: record a workload's writes and flushes, rebuild the states
// a power cut could leave on a disk with a volatile write cache, and check
// each one (e2fsck clean, every fsynced byte present).
//
//   CrashHarness h(base_image);
//   h.record([&](CrashHarness& h) {
//     ... write through h.device() ...; fsync ...;
//     h.mark_durable("file a");      // right after the fsync returned
//     return Status{};
//   });
//   CrashReport r = h.check([](const CrashCheckContext& c) {
//     std::vector<std::string> problems;
//     FsckVerdict v = e2fsck_clean(c.image);
//     if (!v.clean) problems.push_back(v.report);
//     if (c.must_hold("file a") && ...) problems.push_back("file a lost");
//     return problems;
//   });
//   EXPECT_TRUE(r.ok()) << r.summary();
//
// The states (see src/io/recording_device.h for the disk model): the clean
// cut at every flush, every subset of an epoch's in-flight writes when the
// epoch is small, seeded random subsets otherwise, optionally with torn
// writes. The seed comes from Options or UEXT_CRASH_SEED and is printed in
// every summary; UEXT_CRASH_STATE=<id> then rechecks one state alone, and
// UEXT_CRASH_KEEP=<dir> keeps the images of failing states.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "io/recording_device.h"
#include "journal/recovery.h"
#include "uext/block_device.h"
#include "uext/status.h"

namespace uext::testing {

// ------------------------------------------------------------ e2fsck oracle

// How a state with needs_recovery is brought to what a mount would see.
enum class Replay {
  // Check as is. e2fsck -fn then skips the journal ("skipping journal
  // recovery because doing a read-only filesystem check") and checks the
  // stale home blocks: its verdict means little for a journaled state.
  kNone,
  // uext's own recovery (journal::recover_journal + clear_needs_recovery,
  // the journal mapped from inode 8 with fs::all_mapped_runs), the replay
  // uext's write path will run on open.
  kUext,
  // e2fsck -y -E journal_only.
  kE2fsck,
  // Both, on two copies: each must check clean, and the two replays must
  // agree block for block (the primary superblock aside, where e2fsck
  // updates s_kbytes_written and s_wtime).
  kBoth,
};

struct FsckOptions {
  Replay replay = Replay::kUext;
  // Scratch copies go here (default: beside the image).
  std::string scratch_dir{};
  // kBoth: also fail on the one difference otherwise tolerated (and noted):
  // over an empty log with needs_recovery set, e2fsck advances the journal
  // superblock's s_sequence by one and uext's replay leaves it.
  bool strict_replay_agreement = false;
};

struct FsckVerdict {
  bool clean = false;
  bool needed_recovery = false;
  std::string report;  // why not clean: commands and their output
  // Tolerated differences between the two replays (kBoth), and a "with
  // errors" state after the replay of a journal that recorded its abort.
  std::vector<std::string> notes;
  // The journal superblock's s_errno before the replay (0: none).
  int32_t journal_errno = 0;
};

// Is `image` what e2fsck -fn calls clean, after replaying its journal when
// needs_recovery is set? Also fails when the superblock's state is "with
// errors", unless the journal recorded an abort (s_errno), whose replay
// marks it so. Works on a scratch copy; `image` is never modified.
// Thread-safe (each call uses its own scratch files).
FsckVerdict e2fsck_clean(const std::string& image, const FsckOptions& options = {});

// Replays `image`'s journal by uext (recover_journal) into `uext_copy` and by
// e2fsck (-E journal_only) into `e2fsck_copy`, and compares the two copies
// block for block as Replay::kBoth does, but without running e2fsck -fn on
// them: after a replay a state may still hold an orphan list, which
// e2fsck -E journal_only finishes and uext leaves to its read-write open,
// so the copies then differ for a good reason (the caller can tell by the
// uext copy's s_last_orphan). clean = the replays agree. The copies are
// left for the caller.
FsckVerdict compare_replays(const std::string& image, const std::string& uext_copy, const std::string& e2fsck_copy,
                            const FsckOptions& options = {});

bool has_needs_recovery(const std::string& image);
// Replays in place with uext; clears needs_recovery (and the valid bit when
// the replay says a full check is due, as e2fsck does).
Result<journal::RecoveryReport> replay_journal_with_uext(const std::string& image);
// The journal superblock's s_errno: an abort the journal recorded.
Result<int32_t> journal_errno(const std::string& image);
// Replays in place with e2fsck -y -E journal_only.
Status replay_journal_with_e2fsck(const std::string& image);

// ------------------------------------------------------------ harness

// A tag the workload declared durable: present in every state whose epoch
// is at least `epoch` (the flushes completed when it was marked).
struct DurableMark {
  std::string tag;
  size_t epoch = 0;
};

struct CrashCheckContext {
  // The state as an image file, private to this check: the checker may
  // modify it (replay a journal, mount it).
  std::string image;
  std::string id;  // "cut-3", "e3-r7", ...
  const io::CrashState* state = nullptr;
  const io::IoLog* log = nullptr;
  const std::vector<DurableMark>* marks = nullptr;

  // Whether the workload's fsync of `tag` had returned before this state's
  // cut, so the data must be in it.
  bool must_hold(const std::string& tag) const;
  // Tags that must hold, in the order they were marked.
  std::vector<std::string> durable_tags() const;
  std::string describe() const;
};

// Returns the problems found in one state; empty means it passed. Called
// from several threads at once.
using CrashChecker = std::function<std::vector<std::string>(const CrashCheckContext&)>;

struct CrashFailure {
  std::string state_id;
  std::string state;    // CrashState::describe
  std::string problem;
};

struct CrashReport {
  uint64_t seed = 0;
  size_t planned = 0;   // states in the plan (after max_states)
  size_t skipped_by_cap = 0;  // states max_states cut from the plan
  size_t checked = 0;
  bool out_of_time = false;
  std::vector<CrashFailure> failures;  // in plan order

  bool ok() const { return failures.empty(); }
  // Seed, counts, each failure with its state, and how to reproduce one.
  std::string summary() const;
};

struct CrashOptions {
  // 0: take UEXT_CRASH_SEED if set, else a time-based seed.
  uint64_t seed = 0;
  // Epochs of at most this many writes get every subset of their writes.
  size_t exhaustive_writes = 4;
  // Random subsets tried in each larger epoch (and in every non-empty epoch
  // when tearing).
  size_t random_states_per_epoch = 8;
  // Probability that a landed multi-sector write is torn; 0 disables tears.
  double tear_probability = 0.0;
  size_t max_states = 2000;
  std::chrono::milliseconds time_budget{60000};
  int workers = 2;
  // Stop starting new states after this many failures.
  size_t max_failures = 25;
  // Check only this state id (UEXT_CRASH_STATE overrides).
  std::string only_state{};
  // When set, the image of every failing state is kept here as <id>.img
  // (UEXT_CRASH_KEEP overrides).
  std::string keep_failures_dir{};
};

struct PlannedState {
  std::string id;
  io::CrashState state;
};

class CrashHarness {
 public:
  // `base_image`: the image file before the workload. The workload writes
  // to a RecordingDevice over an in-memory copy of it.
  explicit CrashHarness(std::string base_image, CrashOptions options = {});
  ~CrashHarness();

  // The device the workload writes through.
  io::RecordingDevice& device() { return *device_; }
  // A BlockDevice forwarding to device() for APIs that take ownership
  // (fs::Volume::open); it must not outlive the harness.
  std::unique_ptr<BlockDevice> borrow_device();

  // Call right after an fsync (or anything that ends in a flush) returned:
  // `tag` names what it made durable.
  void mark_durable(const std::string& tag);

  // Runs the workload, then snapshots the log.
  Status record(const std::function<Status(CrashHarness&)>& workload);
  // Uses a log recorded elsewhere (the kernel's writes) instead.
  void adopt(io::IoLog log, std::vector<DurableMark> marks = {});

  const io::IoLog& log() const { return log_; }
  const std::vector<DurableMark>& marks() const { return marks_; }
  uint64_t seed() const { return seed_; }
  const std::string& base_image() const { return base_image_; }

  // The states check() would visit, in order, before the max_states cap.
  std::vector<PlannedState> plan() const;
  // Materializes each planned state to a temp image and runs `checker` on
  // it, in options.workers threads, within the budgets.
  CrashReport check(const CrashChecker& checker) const;

 private:
  std::string base_image_;
  CrashOptions options_;
  uint64_t seed_ = 0;
  std::unique_ptr<io::RecordingDevice> device_;
  io::IoLog log_;
  std::vector<DurableMark> marks_;
  std::mutex marks_mu_;
};

// ------------------------------------------------------------ the kernel's writes

// Lets the Linux kernel write to a BlockDevice, so a RecordingDevice sees
// the kernel's own ext4 I/O (what dm-log-writes records in the kernel; this
// host has no device mapper). The device is served as a one-file FUSE
// filesystem by a thread of this process; a loop device on that file is
// then a block device whose writes arrive here as FUSE_WRITE (the file is
// opened with direct I/O, so no page cache sits between) and whose flushes
// arrive as FUSE_FSYNC. Loop devices take no FUA (queue/fua is 0), so the
// block layer turns the jbd2 commit's FUA into a flush after the write,
// which the recording sees: exactly the no-FUA model of the crash states.
// Needs root and /dev/fuse.
class FuseBlockFile {
 public:
  // Mounts at `mount_dir` (an empty directory); the file is mount_dir/disk.
  static Result<std::unique_ptr<FuseBlockFile>> start(BlockDevice& device, const std::string& mount_dir);
  ~FuseBlockFile();
  FuseBlockFile(const FuseBlockFile&) = delete;
  FuseBlockFile& operator=(const FuseBlockFile&) = delete;

  const std::string& path() const { return file_; }
  // Unmounts (lazily if busy) and stops the serving thread.
  void stop();
  // Requests served and I/O errors returned to the kernel.
  uint64_t requests() const;
  uint64_t io_errors() const;

  struct Impl;

 private:
  explicit FuseBlockFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::string file_;
};

}  // namespace uext::testing
