// The jbd2 journal's running side: handles, transactions, commit and
// checkpoint (ordered mode), compatible with what the kernel and e2fsck
// replay.
//
// A filesystem operation starts a Handle with the number of metadata blocks
// it may change (its credits), changes blocks through it, and stops it. All
// handles started between two commits form one transaction. Commit closes
// the transaction to new handles, waits for its open ones, logs every block
// it changed (the version current when its last handle stopped), then a
// commit block; only after that flush are the changes durable. Checkpoint
// writes committed blocks to their home locations so log space can be reused.
//
// Data blocks are never logged (ordered mode): an operation that allocates
// blocks writes their data before its handle stops, and commit flushes the
// device before writing the commit block, so no committed metadata ever
// points at blocks whose data has not reached the disk.
//
// Without a journal (ext2) the same interface writes changed blocks home on
// commit, in one batch followed by a flush.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "buffer/buffer_cache.h"
#include "disk/jbd2.h"
#include "journal/recovery.h"
#include "uext/block_device.h"
#include "uext/status.h"

namespace uext::journal {

class Journal;

struct JournalOptions {
  // Commit the running transaction this often (0: only on demand).
  uint32_t commit_interval_ms = 5000;
  // Features to turn on in the journal superblock when opening it for
  // writing, as the kernel does at mount: 64-bit block numbers and v3
  // checksums follow the filesystem's 64bit and metadata_csum.
  bool use_64bit = false;
  bool use_csum_v3 = false;
  // Blocks in the filesystem: logged and revoked blocks must lie below it.
  uint64_t fs_blocks = 0;
};

// One operation's share of the running transaction. Move-only; stopping
// (explicitly or by destruction) lets a waiting commit proceed.
class Handle {
 public:
  Handle() = default;
  Handle(Handle&& other) noexcept;
  Handle& operator=(Handle&& other) noexcept;
  ~Handle();

  // Changes metadata block `block`: `edit` gets a private copy of its bytes
  // to change in place; the result becomes the block's current version and
  // joins the transaction. Counts against the handle's credits (once per
  // block). `edit` must not call back into the journal or the cache.
  Status modify(uint64_t block, const buffer::BlockEdit& edit);
  // Like modify(), for a block just allocated as metadata: starts from zeros.
  Status create(uint64_t block, const buffer::BlockEdit& fill);
  // Whether changing `block` fits the credits left (a block this handle
  // already changed costs nothing more).
  bool can_change(uint64_t block) const { return touched_.count(block) != 0 || used_ < credits_; }
  // The block was freed: no replay may write an older logged copy of it
  // over whatever it holds next.
  Status revoke(uint64_t block);

  // Ends the handle. Returns the first error any call on it met.
  Status stop();

  bool active() const { return journal_ != nullptr; }
  uint32_t transaction_id() const { return tid_; }

  // A handle cannot be rolled back: what it changed commits even when the
  // operation around it fails. changed() says whether there is anything;
  // changes() counts it (blocks changed and revoked).
  //
  // After a failure, the code that failed may give a verdict on what the
  // handle holds. An inner step that began at changes() == `before` and
  // put its own changes back vouches only for itself: step_consistent()
  // holds only if nothing was changed before it. The undo of an outer
  // step, which knows the whole handle, says set_consistent(true); a step
  // that could not leave its own changes whole says set_consistent(false).
  // A verdict covers the handle as it stands: any later change or revoke
  // voids it. Volume::finish_handle reads the verdict.
  enum class Verdict : uint8_t { kNone, kConsistent, kBroken };
  bool changed() const { return changes() > 0; }
  uint32_t changes() const { return used_ + revokes_; }
  void step_consistent(uint32_t before) {
    if (before == 0) verdict_ = Verdict::kConsistent;
  }
  void set_consistent(bool consistent) { verdict_ = consistent ? Verdict::kConsistent : Verdict::kBroken; }
  Verdict verdict() const { return verdict_; }

 private:
  friend class Journal;
  Handle(Journal* journal, uint32_t tid, uint32_t credits)
      : journal_(journal), tid_(tid), credits_(credits) {}
  Status change(uint64_t block, bool fresh, const buffer::BlockEdit& edit);

  Journal* journal_ = nullptr;
  uint32_t tid_ = 0;
  uint32_t credits_ = 0;
  uint32_t used_ = 0;      // distinct blocks changed (at most credits_)
  uint32_t revokes_ = 0;   // revoke records added to the transaction
  Verdict verdict_ = Verdict::kNone;
  std::set<uint64_t> touched_;
};

struct JournalStats {
  uint64_t commits = 0;
  uint64_t checkpoints = 0;
  uint64_t blocks_logged = 0;
  uint64_t revokes_logged = 0;
  // The most log blocks one commit wrote (descriptors, blocks, revoke
  // blocks and the commit block).
  uint64_t largest_commit_blocks = 0;
};

class Journal {
 public:
  // Opens a journal for writing. The log must be empty (replay it first
  // with recover_journal). Turns on the features of `options` in the
  // journal superblock and writes it; an s_errno found there stays until
  // clear_recorded_errno.
  static Result<std::unique_ptr<Journal>> open(BlockDevice& device, buffer::BufferCache& cache,
                                               const JournalMap& map,
                                               const JournalOptions& options);
  // No journal (ext2): handles change blocks in the cache; commit writes
  // them home.
  static std::unique_ptr<Journal> open_without_log(BlockDevice& device,
                                                   buffer::BufferCache& cache,
                                                   const JournalOptions& options);
  ~Journal();

  // Starts a handle that may change up to `credits` blocks (and revoke as
  // many). Waits while a commit runs; commits first when the running
  // transaction, with every open handle using all its credits and this one
  // joining, could need more than max_transaction_blocks() of log. A
  // stopped handle's unused credits go back, so a transaction closes on
  // the blocks its handles really changed (each counted once however many
  // handles change it), not on their worst-case estimates.
  Result<Handle> start(uint32_t credits);

  // Commits the running transaction (if it holds changes) and waits until
  // it is durable. What fsync and sync come down to.
  Status commit();
  // Commits, then writes every committed block home and empties the log.
  Status checkpoint();
  // Checkpoints and marks the log empty; the journal accepts no more handles.
  Status close();
  // Aborts the journal as a failed commit does (ext4's data_err=abort):
  // every later handle and commit fails with `code`, and s_errno records
  // it. Call with a handle of the running transaction still open, so that
  // transaction never commits (and no commit is writing meanwhile).
  void abort(int code, const std::string& why);
  // Whether a failed commit or abort() has poisoned the journal.
  bool aborted() const;

  bool has_log() const { return has_log_; }
  // The s_errno the journal superblock held at open (negative, as jbd2
  // stores it; 0 for none): an earlier session's journal aborted, or
  // e2fsck's replay met a failed commit. The caller marks the filesystem
  // superblock "with errors", makes that durable, and only then calls
  // clear_recorded_errno, so the error is never lost in between (the
  // order of the kernel's ext4_clear_journal_err).
  int32_t recorded_errno() const { return errno_at_open_; }
  Status clear_recorded_errno();
  // The newest transaction known durable. A block freed by transaction T
  // may be reused once tid_geq(last_committed_tid(), T): before that, a
  // crash could bring back the metadata that still points at it.
  uint32_t last_committed_tid() const { return last_committed_.load(std::memory_order_acquire); }
  uint32_t max_transaction_blocks() const { return max_transaction_; }
  JournalStats stats() const;
  // The running transaction's worst-case log blocks (0 without one or
  // without a log): what a commit now could need at most. For tests.
  uint64_t running_worst_case() const;

 private:
  struct Transaction {
    uint32_t tid = 0;
    uint32_t open_handles = 0;
    // What its open handles may still add: blocks (credits not yet used)
    // and revoke records (each handle may revoke as many blocks as it has
    // credits). With blocks.size() and revoked.size() this bounds the log
    // space the transaction can come to need (worst_case_blocks).
    uint64_t reserved = 0;
    uint64_t revoke_reserved = 0;
    // Blocks changed. Commit logs their current versions: no handle can
    // change them between the last handle's stop and the commit, because
    // new handles wait while a commit runs.
    std::set<uint64_t> blocks;
    std::set<uint64_t> revoked;
  };

  Journal(BlockDevice& device, buffer::BufferCache& cache, const JournalOptions& options);
  friend class Handle;
  Status record_change(Handle& h, uint64_t block, bool fresh, const buffer::BlockEdit& edit);
  Status record_revoke(Handle& h, uint64_t block);
  void stop_handle(Handle& h);

  // Commits the running transaction; the caller holds `lock`.
  Status commit_locked(std::unique_lock<base::OrderedMutex>& lock);
  Transaction* transaction_of(uint32_t tid);
  Status write_transaction(const Transaction& tx, const std::vector<buffer::BlockRef>& versions);
  Status write_home(const std::map<uint64_t, buffer::BlockRef>& blocks);
  Status checkpoint_locked();
  Status write_journal_superblock(uint32_t start, uint32_t sequence);
  // Applies `change` to the journal superblock and writes it (not flushed).
  Status rewrite_journal_superblock(const std::function<void(disk::JournalSuperblock&)>& change);
  // After a failed commit, as jbd2's abort: records -code in the journal
  // superblock's s_errno, which survives the replay; the next read-write
  // open turns it into the superblock's "with errors" state
  // (recorded_errno).
  void record_abort(int code);
  // Writes log blocks (block_size bytes each) from `first_log_block` on,
  // wrapping at the log's end.
  Status write_log_blocks(uint32_t first_log_block, std::span<const std::span<const std::byte>> blocks);
  uint32_t log_blocks_needed(const Transaction& tx) const;
  // Log blocks for n logged blocks and r revoke records: descriptors, the
  // blocks, revoke blocks and the commit block.
  uint64_t log_blocks_for(uint64_t n, uint64_t r) const;
  // The most log space `tx` can need once its open handles have used all
  // their credits, plus `credits` for a handle about to join.
  uint64_t worst_case_blocks(const Transaction& tx, uint32_t credits) const;
  uint32_t log_free() const;
  void commit_timer();

  BlockDevice& device_;
  buffer::BufferCache& cache_;
  JournalOptions options_;
  bool has_log_ = false;
  int32_t errno_at_open_ = 0;
  JournalMap map_;
  // The journal superblock: its fields that change (s_start, s_sequence,
  // s_errno) and its block as read at open, rewritten in place.
  base::OrderedMutex jsb_mu_{base::LockLevel::kJournalSuperblock};
  disk::JournalSuperblock jsb_;
  std::vector<std::byte> jsb_block_;
  disk::JournalFormat format_;
  uint32_t block_size_ = 0;
  uint32_t max_transaction_ = 0;

  mutable base::OrderedMutex mu_{base::LockLevel::kJournalState};
  std::condition_variable_any changed_;
  std::condition_variable_any timer_cv_;  // the commit timer's own
  std::unique_ptr<Transaction> running_;
  bool committing_ = false;
  bool closed_ = false;
  Status sticky_error_;  // a failed commit poisons the journal, as jbd2 aborts
  // Log position: the next free log block, and where the oldest
  // uncheckpointed transaction starts (0: the log is empty).
  uint32_t head_ = 0;
  uint32_t log_used_ = 0;  // blocks between the oldest uncheckpointed transaction and head_
  uint32_t next_tid_ = 0;
  std::atomic<uint32_t> last_committed_{0};
  // Committed but not yet written home: block -> its latest committed
  // version. A block leaves it when written home or when the transaction
  // that revoked it commits, not before (record_revoke says why).
  std::map<uint64_t, buffer::BlockRef> checkpoint_;
  Transaction* committing_tx_ = nullptr;
  JournalStats stats_;

  std::thread timer_;
  bool stop_timer_ = false;
};

}  // namespace uext::journal
