// Journal recovery: replays the committed transactions of a jbd2 journal
// into the filesystem, as the kernel does at mount and e2fsck does before a
// check (fs/jbd2/recovery.c).
//
// The log runs from s_start (transaction s_sequence) around the circular
// area [s_first, log end). A scan walks it transaction by transaction until
// the first block that is not the expected next one (wrong magic, wrong
// sequence, an unknown block type) or a commit whose checksum fails; the
// transactions committed before that point are replayed, except blocks a
// revoke record of the same or a later replayed transaction cancels. A
// final transaction without a valid commit block was torn by the crash and
// is ignored.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "uext/block_device.h"
#include "uext/status.h"

namespace uext::journal {

// Where the journal's blocks are: journal block `logical` is device block
// (in filesystem block units) `physical`. Built by the caller from inode 8
// (fs::all_mapped_runs) or s_jnl_blocks, so this module needs no src/fs.
struct JournalExtent {
  uint64_t logical = 0;
  uint64_t physical = 0;
  uint64_t length = 0;
};

class JournalMap {
 public:
  JournalMap() = default;
  explicit JournalMap(std::vector<JournalExtent> extents);
  // A journal in one run of device blocks.
  static JournalMap contiguous(uint64_t first_physical, uint64_t length);

  std::optional<uint64_t> physical(uint64_t logical) const;
  // Journal blocks mapped from 0 without a hole.
  uint64_t mapped_prefix() const;
  const std::vector<JournalExtent>& extents() const { return extents_; }

 private:
  std::vector<JournalExtent> extents_;  // sorted by logical
};

struct RecoveryReport {
  bool needed = false;  // s_start != 0: the log holds transactions
  uint32_t start_transaction = 0;  // s_sequence
  uint32_t end_transaction = 0;    // first transaction not replayed
  uint32_t transactions = 0;       // replayed (or to replay)
  uint64_t blocks_replayed = 0;    // block writes into the filesystem
  uint64_t blocks_revoked = 0;     // logged blocks a revoke record cancelled
  uint64_t revoke_records = 0;
  // Logged blocks whose tag checksum failed: not written (as the kernel).
  uint64_t bad_block_checksums = 0;
  // Set when a commit block failed its checksum: the transactions before it
  // were replayed, it and everything after were not.
  std::optional<uint32_t> failed_commit;
  // Human-readable notes on anything skipped (bad checksums, stale blocks).
  std::vector<std::string> problems;
  // True when the filesystem should get a full check afterwards, as e2fsck
  // demands after such a replay.
  bool needs_fsck() const { return failed_commit.has_value() || bad_block_checksums > 0; }
};

struct RecoveryOptions {
  // Blocks in the filesystem; logged blocks at or past it are corruption.
  // 0: the device size decides.
  uint64_t fs_blocks = 0;
};

// Reads the journal and reports what a replay would do; writes nothing.
Result<RecoveryReport> inspect_journal(BlockDevice& dev, uint32_t fs_block_size, const JournalMap& map,
                                       const RecoveryOptions& options = {});

// Replays the journal into `dev`, flushes, then marks the journal empty
// (s_start 0 and s_sequence end_transaction + 1, as e2fsck and the kernel
// leave it, so no stale commit in the log can match again; s_errno -EINVAL
// after a failed commit, as e2fsck records it) and flushes again.
// Corrupt structures a replay would depend on (journal superblock, a tag
// pointing outside the filesystem, a log longer than the journal) are
// errors before anything is written. Journals with fast commit blocks to
// replay are refused (ENOTSUP).
Result<RecoveryReport> recover_journal(BlockDevice& dev, uint32_t fs_block_size, const JournalMap& map,
                                       const RecoveryOptions& options = {});

// Clears needs_recovery (incompat RECOVER) in the primary ext4 superblock
// and rewrites its checksum; with `needs_fsck` also clears the valid state
// bit so the next e2fsck checks fully (e2fsck does the same). Backups are
// left alone, as the kernel and e2fsck leave them.
Status clear_needs_recovery(BlockDevice& dev, bool needs_fsck = false);

// A journal superblock's s_errno says an earlier session's journal aborted
// (jbd2 writes it then) or that e2fsck's replay met a failed commit. As the
// kernel at mount and e2fsck before a check do, this marks the primary
// superblock "with errors" (so the next e2fsck checks the whole image),
// makes that durable, and only then clears s_errno. Returns the errno found
// (negative, as stored; 0 when there was none and nothing was written).
// For a replay that does not go on to open the journal for writing (the
// test harness's, as e2fsck's); a read-write open does the same through
// Journal::recorded_errno without reading the journal superblock twice.
Result<int32_t> move_journal_errno_to_superblock(BlockDevice& dev, uint32_t fs_block_size, const JournalMap& map);

}  // namespace uext::journal
