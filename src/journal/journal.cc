#include "journal/journal.h"

#include <algorithm>
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <deque>

#include "base/quiet_thread.h"

namespace uext::journal {

// ---- Handle ---------------------------------------------------------------

Handle::Handle(Handle&& other) noexcept { *this = std::move(other); }

Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    if (journal_) (void)stop();
    journal_ = std::exchange(other.journal_, nullptr);
    tid_ = other.tid_;
    credits_ = other.credits_;
    used_ = other.used_;
    revokes_ = other.revokes_;
    verdict_ = other.verdict_;
    touched_ = std::move(other.touched_);
  }
  return *this;
}

Handle::~Handle() {
  if (journal_) (void)stop();
}

Status Handle::modify(uint64_t block, const buffer::BlockEdit& edit) { return change(block, false, edit); }
Status Handle::create(uint64_t block, const buffer::BlockEdit& fill) { return change(block, true, fill); }

Status Handle::change(uint64_t block, bool fresh, const buffer::BlockEdit& edit) {
  if (!journal_) return Error(EINVAL, "journal handle used after it stopped");
  verdict_ = Verdict::kNone;  // a verdict covers the handle only as it was
  return journal_->record_change(*this, block, fresh, edit);
}

Status Handle::revoke(uint64_t block) {
  if (!journal_) return Error(EINVAL, "journal handle used after it stopped");
  verdict_ = Verdict::kNone;
  return journal_->record_revoke(*this, block);
}

Status Handle::stop() {
  if (!journal_) return {};
  Journal* j = std::exchange(journal_, nullptr);
  j->stop_handle(*this);
  return {};
}

// ---- Journal: opening -----------------------------------------------------

Journal::Journal(BlockDevice& device, buffer::BufferCache& cache, const JournalOptions& options)
    : device_(device), cache_(cache), options_(options), block_size_(cache.block_size()) {}

Journal::~Journal() {
  {
    std::lock_guard lock(mu_);
    stop_timer_ = true;
  }
  changed_.notify_all();
  timer_cv_.notify_all();
  if (timer_.joinable()) timer_.join();
}

std::unique_ptr<Journal> Journal::open_without_log(BlockDevice& device, buffer::BufferCache& cache,
                                                   const JournalOptions& options) {
  std::unique_ptr<Journal> j(new Journal(device, cache, options));
  j->max_transaction_ = UINT32_MAX;
  j->last_committed_ = j->next_tid_ - 1;  // nothing committed yet
  if (options.commit_interval_ms > 0) j->timer_ = base::start_quiet_thread([p = j.get()] { p->commit_timer(); });
  return j;
}

Result<std::unique_ptr<Journal>> Journal::open(BlockDevice& device, buffer::BufferCache& cache,
                                               const JournalMap& map, const JournalOptions& options) {
  std::unique_ptr<Journal> j(new Journal(device, cache, options));
  j->has_log_ = true;
  j->map_ = map;
  auto first = map.physical(0);
  if (!first) return Error(kErrCorrupted, "journal: block 0 (its superblock) is not mapped");
  std::vector<std::byte>& raw = j->jsb_block_;
  raw.resize(j->block_size_);
  UEXT_TRY(device.read(*first * j->block_size_, raw));
  UEXT_ASSIGN_OR_RETURN(j->jsb_, disk::decode_journal_superblock(raw, j->block_size_, map.mapped_prefix()));
  disk::JournalSuperblock& jsb = j->jsb_;
  j->errno_at_open_ = jsb.s_errno;
  if (jsb.s_start != 0) {
    return Error(EINVAL, "journal: the log holds transactions; replay it before writing");
  }
  if (jsb.version() < 2) {
    return Error(ENOTSUP, "journal: version 1 superblock cannot record the features uext needs");
  }
  if (jsb.has_incompat(disk::jbd2_incompat::kFastCommit)) {
    return Error(ENOTSUP, "journal: fast commit is not supported for writing");
  }
  // Turn on what this filesystem needs, as the kernel does at mount.
  jsb.s_feature_incompat |= disk::jbd2_incompat::kRevoke;
  if (options.use_64bit) jsb.s_feature_incompat |= disk::jbd2_incompat::k64bit;
  if (options.use_csum_v3) {
    jsb.s_feature_incompat &= ~disk::jbd2_incompat::kCsumV2;
    jsb.s_feature_incompat |= disk::jbd2_incompat::kCsumV3;
    jsb.s_feature_compat &= ~disk::jbd2_compat::kChecksum;
    jsb.s_checksum_type = disk::kJbd2ChecksumCrc32c;
  }
  j->format_ = jsb.format();
  uint32_t capacity = jsb.log_end() - jsb.s_first;
  j->max_transaction_ = capacity / 4;
  j->head_ = jsb.s_first;
  j->next_tid_ = jsb.s_sequence;
  j->last_committed_ = jsb.s_sequence - 1;
  UEXT_TRY(j->write_journal_superblock(0, jsb.s_sequence));
  UEXT_TRY(device.flush());
  if (options.commit_interval_ms > 0) j->timer_ = base::start_quiet_thread([p = j.get()] { p->commit_timer(); });
  return j;
}

// ---- Handles --------------------------------------------------------------

Result<Handle> Journal::start(uint32_t credits) {
  if (credits == 0) credits = 1;
  std::unique_lock lock(mu_);
  if (credits > max_transaction_) {
    return Error(EINVAL, fmt::format("journal: a handle of {} blocks exceeds the largest "
                                     "transaction ({} blocks)", credits, max_transaction_));
  }
  for (;;) {
    if (!sticky_error_.ok()) return sticky_error_.error();
    if (closed_) return Error(EROFS, "journal: closed");
    if (committing_) {
      changed_.wait(lock);
      continue;
    }
    // A transaction with nothing in it takes any handle start() accepts:
    // a quarter of the log leaves room for its descriptors and revokes.
    if (running_ && has_log_ &&
        (running_->open_handles > 0 || !running_->blocks.empty() || !running_->revoked.empty()) &&
        worst_case_blocks(*running_, credits) > max_transaction_) {
      UEXT_TRY(commit_locked(lock));
      continue;
    }
    break;
  }
  if (!running_) {
    running_ = std::make_unique<Transaction>();
    running_->tid = next_tid_++;
  }
  running_->open_handles++;
  running_->reserved += credits;
  running_->revoke_reserved += credits;
  return Handle(this, running_->tid, credits);
}

uint64_t Journal::log_blocks_for(uint64_t n, uint64_t r) const {
  size_t tag = format_.tag_bytes();
  size_t usable = format_.usable_bytes() - disk::kJbd2HeaderSize;
  // The first tag of each descriptor carries the 16-byte UUID.
  uint64_t per_descriptor = 1 + (usable - tag - 16) / tag;
  uint64_t descriptors = (n + per_descriptor - 1) / per_descriptor;
  uint64_t per_revoke = disk::revoke_records_per_block(format_);
  uint64_t revokes = (r + per_revoke - 1) / per_revoke;
  return n + descriptors + revokes + 1;
}

uint64_t Journal::worst_case_blocks(const Transaction& tx, uint32_t credits) const {
  return log_blocks_for(tx.blocks.size() + tx.reserved + credits,
                        tx.revoked.size() + tx.revoke_reserved + credits);
}

uint64_t Journal::running_worst_case() const {
  std::lock_guard lock(mu_);
  if (!running_ || !has_log_) return 0;
  return worst_case_blocks(*running_, 0);
}

Journal::Transaction* Journal::transaction_of(uint32_t tid) {
  if (running_ && running_->tid == tid) return running_.get();
  if (committing_tx_ && committing_tx_->tid == tid) return committing_tx_;
  return nullptr;
}

Status Journal::record_change(Handle& h, uint64_t block, bool fresh, const buffer::BlockEdit& edit) {
  if (options_.fs_blocks != 0 && block >= options_.fs_blocks) {
    return Error(EINVAL, fmt::format("journal: block {} lies outside the filesystem", block));
  }
  if (!h.touched_.count(block)) {
    if (h.used_ >= h.credits_) {
      return Error(EINVAL, fmt::format("journal: handle ran out of its {} credits changing block {}",
                                       h.credits_, block));
    }
  }
  UEXT_TRY(cache_.modify(block, fresh, edit));
  std::lock_guard lock(mu_);
  Transaction* tx = transaction_of(h.tid_);
  if (!tx) return Error(EINVAL, "journal: handle outlived its transaction");
  if (h.touched_.insert(block).second) {
    // One credit less that this handle may still use. A block the
    // transaction already holds costs its log nothing more; a block
    // revoked and changed again by the same handle is counted again by
    // blocks.size() only after the revoke took it out.
    h.used_++;
    tx->reserved--;
  }
  tx->blocks.insert(block);
  // A revoke hides every logged copy up to its own transaction, this one's
  // included: a block freed and reused as metadata within one transaction
  // must drop the revoke, or replay would skip its new contents (jbd2's
  // cancel_revoke). Older copies are harmless: replay writes this one last.
  tx->revoked.erase(block);
  return {};
}

Status Journal::record_revoke(Handle& h, uint64_t block) {
  std::lock_guard lock(mu_);
  Transaction* tx = transaction_of(h.tid_);
  if (!tx) return Error(EINVAL, "journal: handle outlived its transaction");
  // The block's changes in this transaction are moot: it will not be
  // written home. A version an earlier transaction committed stays due for
  // its checkpoint until this one commits (then commit_locked drops it):
  // a checkpoint before that, which this transaction's own commit may need
  // to make room, must still write it, since a crash before this commit
  // leaves the block in use, holding what it held then.
  tx->blocks.erase(block);
  cache_.forget(block);
  if (has_log_ && tx->revoked.insert(block).second) {
    // Revokes beyond the handle's credits are still recorded (a freed
    // block must never be replayed over), and counted by revoked.size():
    // the next start() sees them. Each record takes 4 or 8 bytes, so the
    // three quarters of the log above max_transaction_blocks() hold
    // hundreds of thousands of such excess records.
    if (h.revokes_ < h.credits_) tx->revoke_reserved--;
    h.revokes_++;
  }
  return {};
}

void Journal::stop_handle(Handle& h) {
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    if (Transaction* tx = transaction_of(h.tid_)) {
      tx->open_handles--;
      // Credits the handle did not use go back, as jbd2 does: what stays
      // counted is the blocks in the transaction, so worst-case estimates
      // do not fill a transaction with a few operations.
      tx->reserved -= h.credits_ - h.used_;
      tx->revoke_reserved -= h.credits_ - std::min(h.revokes_, h.credits_);
    }
    // Only a commit waits for handles to stop.
    wake = committing_;
  }
  if (wake) changed_.notify_all();
}

// ---- Commit ---------------------------------------------------------------

Status Journal::commit() {
  std::unique_lock lock(mu_);
  return commit_locked(lock);
}

Status Journal::commit_locked(std::unique_lock<base::OrderedMutex>& lock) {
  while (committing_) changed_.wait(lock);
  if (!sticky_error_.ok()) return sticky_error_.error();
  if (!running_) return {};
  committing_ = true;
  std::unique_ptr<Transaction> tx = std::move(running_);
  committing_tx_ = tx.get();
  while (tx->open_handles > 0) changed_.wait(lock);

  Status result;
  // Aborted while its handles ran: it never reaches the log.
  if (!sticky_error_.ok()) result = sticky_error_.error();
  if (result.ok() && (!tx->blocks.empty() || !tx->revoked.empty())) {
    // Versions are stable now: every handle of tx has stopped and new
    // handles wait for committing_ to clear.
    std::vector<buffer::BlockRef> versions;
    versions.reserve(tx->blocks.size());
    for (uint64_t b : tx->blocks) {
      auto v = cache_.get(b);
      if (!v.ok()) {
        result = std::move(v).error();
        break;
      }
      versions.push_back(std::move(*v));
    }
    if (result.ok()) {
      lock.unlock();
      if (has_log_) {
        uint32_t needed = log_blocks_needed(*tx);
        if (needed > jsb_.log_end() - jsb_.s_first) {
          // start() keeps transactions far below this; writing it would
          // wrap over its own beginning.
          result = Error(kErrCorrupted, fmt::format("journal: transaction {} needs {} log blocks, "
                                                    "more than the log's {}", tx->tid, needed,
                                                    jsb_.log_end() - jsb_.s_first));
        } else if (needed > log_free()) {
          result = checkpoint_locked();
        }
        if (result.ok()) result = write_transaction(*tx, versions);
      } else {
        std::map<uint64_t, buffer::BlockRef> home;
        size_t i = 0;
        for (uint64_t b : tx->blocks) home.emplace(b, versions[i++]);
        result = write_home(home);
        if (result.ok()) result = device_.flush();
        if (result.ok()) {
          for (auto& [b, v] : home) cache_.unpin(b, v);
        }
      }
      lock.lock();
      if (result.ok() && has_log_) {
        // The frees are durable: what older transactions logged of the
        // blocks they revoked need not go home (and must not, once the
        // blocks hold new data). A block revoked and then changed again by
        // this transaction is in blocks, not revoked.
        for (uint64_t b : tx->revoked) checkpoint_.erase(b);
        size_t i = 0;
        for (uint64_t b : tx->blocks) checkpoint_[b] = versions[i++];
      }
      if (result.ok()) stats_.commits++;
    }
  }
  if (result.ok() && tx->blocks.empty() && tx->revoked.empty()) {
    // Nothing was logged (its handles changed nothing): the transaction
    // leaves no trace, and its tid goes to the next one. The log's
    // sequence must have no gap, for replay stops at the first tid it
    // does not find; a commit after a skipped tid was lost at the next
    // crash, with every commit after it until a checkpoint.
    if (next_tid_ == tx->tid + 1) next_tid_ = tx->tid;
  } else if (result.ok()) {
    last_committed_.store(tx->tid, std::memory_order_release);
  }
  if (!result.ok() && sticky_error_.ok()) {
    // Like jbd2's abort: later handles fail, the image stays as the last
    // successful commit left it.
    sticky_error_ = Error(result.error().code(), "journal aborted: " + result.error().message());
    record_abort(result.error().code());
  }
  committing_tx_ = nullptr;
  committing_ = false;
  changed_.notify_all();
  return result;
}

uint32_t Journal::log_blocks_needed(const Transaction& tx) const {
  return static_cast<uint32_t>(log_blocks_for(tx.blocks.size(), tx.revoked.size()));
}

uint32_t Journal::log_free() const {
  uint32_t capacity = jsb_.log_end() - jsb_.s_first;
  return capacity - log_used_;
}

Status Journal::write_transaction(const Transaction& tx, const std::vector<buffer::BlockRef>& versions) {
  const uint32_t bs = block_size_;
  const uint32_t tid = tx.tid;
  // The log's blocks in order: descriptors, revoke blocks and escaped
  // copies live in `owned` (a deque: its elements never move); the data
  // blocks are the cached versions themselves, written without a copy.
  std::deque<std::vector<std::byte>> owned;
  std::vector<std::span<const std::byte>> log;
  size_t tag = format_.tag_bytes();
  size_t usable = format_.usable_bytes();

  auto blocks_it = tx.blocks.begin();
  size_t index = 0;
  while (index < versions.size()) {
    // One descriptor, then the data blocks its tags name.
    disk::DescriptorBlock desc;
    desc.header = {disk::kJbd2Magic, disk::kJbd2DescriptorBlock, tid};
    size_t used = disk::kJbd2HeaderSize;
    std::vector<std::span<const std::byte>> data;
    while (index < versions.size()) {
      size_t need = tag + (desc.tags.empty() ? 16 : 0);
      if (used + need > usable) break;
      std::span<const std::byte> block(*versions[index]);
      disk::JournalBlockTag t;
      t.t_blocknr = *blocks_it;
      // A block that starts with the journal magic would read as a journal
      // block on replay: log a copy with the magic zeroed, flagged as escaped.
      if (disk::be32(block, 0) == disk::kJbd2Magic) {
        std::vector<std::byte>& copy = owned.emplace_back(block.begin(), block.end());
        disk::put_be32(copy, 0, 0);
        block = copy;
        t.t_flags |= disk::kJbd2FlagEscape;
      }
      if (desc.tags.empty()) {
        t.uuid = jsb_.s_uuid;
      } else {
        t.t_flags |= disk::kJbd2FlagSameUuid;
      }
      t.t_checksum = disk::tag_checksum(format_, tid, block);
      desc.tags.push_back(t);
      data.push_back(block);
      used += need;
      ++index;
      ++blocks_it;
    }
    desc.tags.back().t_flags |= disk::kJbd2FlagLastTag;
    std::vector<std::byte>& descriptor = owned.emplace_back(bs);
    UEXT_TRY(disk::encode_descriptor_block(desc, format_, descriptor));
    log.push_back(descriptor);
    log.insert(log.end(), data.begin(), data.end());
  }
  if (!tx.revoked.empty()) {
    std::vector<uint64_t> all(tx.revoked.begin(), tx.revoked.end());
    size_t per = disk::revoke_records_per_block(format_);
    for (size_t i = 0; i < all.size(); i += per) {
      disk::RevokeBlock r;
      r.header = {disk::kJbd2Magic, disk::kJbd2RevokeBlock, tid};
      r.blocks.assign(all.begin() + i, all.begin() + std::min(all.size(), i + per));
      std::vector<std::byte>& revoke = owned.emplace_back(bs);
      UEXT_TRY(disk::encode_revoke_block(r, format_, revoke));
      log.push_back(revoke);
    }
  }

  uint32_t start = head_;
  // The first transaction after an empty log tells the superblock where the
  // log now begins; it becomes durable with the flush below, before the
  // commit block exists.
  if (log_used_ == 0) UEXT_TRY(write_journal_superblock(start, tid));
  UEXT_TRY(write_log_blocks(start, log));
  UEXT_TRY(device_.flush());  // data of ordered writes, log blocks, superblock

  std::vector<std::byte> commit(bs);
  disk::CommitBlock c;
  c.header = {disk::kJbd2Magic, disk::kJbd2CommitBlock, tid};
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  c.h_commit_sec = static_cast<uint64_t>(now.tv_sec);
  c.h_commit_nsec = static_cast<uint32_t>(now.tv_nsec);
  if (format_.csum_v2or3()) {
    c.h_chksum_type = disk::kJbd2ChecksumCrc32c;
    c.h_chksum_size = 4;
  }
  disk::encode_commit_block(c, format_, commit);
  uint32_t log_blocks = static_cast<uint32_t>(log.size());
  uint32_t commit_at = start;
  for (uint32_t i = 0; i < log_blocks; ++i) {
    if (++commit_at == jsb_.log_end()) commit_at = jsb_.s_first;
  }
  const std::span<const std::byte> commit_block(commit);
  UEXT_TRY(write_log_blocks(commit_at, std::span(&commit_block, 1)));
  UEXT_TRY(device_.flush());

  head_ = commit_at + 1 == jsb_.log_end() ? jsb_.s_first : commit_at + 1;
  log_used_ += log_blocks + 1;
  std::lock_guard lock(mu_);
  stats_.blocks_logged += tx.blocks.size();
  stats_.revokes_logged += tx.revoked.size();
  stats_.largest_commit_blocks = std::max<uint64_t>(stats_.largest_commit_blocks, log_blocks + 1);
  return {};
}

Status Journal::write_log_blocks(uint32_t first_log_block, std::span<const std::span<const std::byte>> blocks) {
  const uint32_t bs = block_size_;
  size_t count = blocks.size();
  size_t i = 0;
  uint32_t log_block = first_log_block;
  while (i < count) {
    // Gather the longest run that is contiguous both in the log (no wrap)
    // and on the device, and write it at once.
    auto phys = map_.physical(log_block);
    if (!phys) return Error(kErrCorrupted, fmt::format("journal: log block {} is not mapped", log_block));
    size_t run = 1;
    while (i + run < count && log_block + run < jsb_.log_end()) {
      auto next = map_.physical(log_block + run);
      if (!next || *next != *phys + run) break;
      ++run;
    }
    UEXT_TRY(device_.write_gather(*phys * bs, blocks.subspan(i, run)));
    i += run;
    log_block += static_cast<uint32_t>(run);
    if (log_block >= jsb_.log_end()) log_block = jsb_.s_first;
  }
  return {};
}

Status Journal::write_journal_superblock(uint32_t start, uint32_t sequence) {
  return rewrite_journal_superblock([&](disk::JournalSuperblock& jsb) {
    jsb.s_start = start;
    jsb.s_sequence = sequence;
  });
}

Status Journal::rewrite_journal_superblock(const std::function<void(disk::JournalSuperblock&)>& change) {
  // The commit path writes it with mu_ released, an abort under mu_: the
  // fields and the block are guarded by a lock of their own.
  std::lock_guard lock(jsb_mu_);
  change(jsb_);
  // The block as read at open, with the fields uext keeps laid over it
  // (the bytes it does not decode stay as they were): no read per write.
  disk::encode_journal_superblock(jsb_, jsb_block_);
  return device_.write(*map_.physical(0) * block_size_, jsb_block_);
}

Status Journal::clear_recorded_errno() {
  if (errno_at_open_ == 0) return {};
  std::lock_guard lock(mu_);
  // A later abort's errno is this session's to keep.
  if (!sticky_error_.ok()) return {};
  UEXT_TRY(rewrite_journal_superblock([](disk::JournalSuperblock& jsb) { jsb.s_errno = 0; }));
  UEXT_TRY(device_.flush());
  errno_at_open_ = 0;
  return {};
}

void Journal::abort(int code, const std::string& why) {
  std::lock_guard lock(mu_);
  if (!sticky_error_.ok()) return;
  sticky_error_ = Error(code, "journal aborted: " + why);
  record_abort(code);
}

void Journal::record_abort(int code) {
  if (!has_log_) return;
  // Best effort: the device has just failed. s_start and s_sequence stay as
  // last written, so the next open replays what committed before.
  const int32_t recorded = -(code > 0 ? code : EIO);
  if (rewrite_journal_superblock([&](disk::JournalSuperblock& jsb) { jsb.s_errno = recorded; }).ok()) {
    (void)device_.flush();
  }
}

// ---- Checkpoint -----------------------------------------------------------

Status Journal::write_home(const std::map<uint64_t, buffer::BlockRef>& blocks) {
  const uint32_t bs = block_size_;
  // Blocks are sorted: neighbours go in one write, from the versions
  // themselves.
  auto it = blocks.begin();
  std::vector<std::span<const std::byte>> run;
  while (it != blocks.end()) {
    uint64_t first = it->first;
    run.assign(1, *it->second);
    auto next = std::next(it);
    while (next != blocks.end() && next->first == first + run.size()) {
      run.push_back(*next->second);
      ++next;
    }
    UEXT_TRY(device_.write_gather(first * bs, run));
    it = next;
  }
  return {};
}

Status Journal::checkpoint_locked() {
  // Runs with committing_ set (no handle can start) and mu_ released.
  if (log_used_ == 0) return {};
  std::map<uint64_t, buffer::BlockRef> home;
  {
    std::lock_guard lock(mu_);
    home = checkpoint_;
  }
  UEXT_TRY(write_home(home));
  UEXT_TRY(device_.flush());
  // Home locations are durable: the log may be forgotten.
  uint32_t next_tid;
  {
    std::lock_guard lock(mu_);
    next_tid = committing_tx_ ? committing_tx_->tid : next_tid_;
  }
  UEXT_TRY(write_journal_superblock(0, next_tid));
  UEXT_TRY(device_.flush());
  log_used_ = 0;
  std::lock_guard lock(mu_);
  for (auto& [b, v] : home) {
    cache_.unpin(b, v);
    auto it = checkpoint_.find(b);
    if (it != checkpoint_.end() && it->second == v) checkpoint_.erase(it);
  }
  stats_.checkpoints++;
  return {};
}

Status Journal::checkpoint() {
  std::unique_lock lock(mu_);
  UEXT_TRY(commit_locked(lock));
  if (!has_log_) return {};
  while (committing_) changed_.wait(lock);
  committing_ = true;
  lock.unlock();
  Status s = checkpoint_locked();
  lock.lock();
  committing_ = false;
  changed_.notify_all();
  return s;
}

Status Journal::close() {
  UEXT_TRY(checkpoint());
  std::lock_guard lock(mu_);
  closed_ = true;
  stop_timer_ = true;
  changed_.notify_all();
  timer_cv_.notify_all();
  return {};
}

bool Journal::aborted() const {
  std::lock_guard lock(mu_);
  return !sticky_error_.ok();
}

JournalStats Journal::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void Journal::commit_timer() {
  std::unique_lock lock(mu_);
  auto interval = std::chrono::milliseconds(options_.commit_interval_ms);
  auto deadline = std::chrono::steady_clock::now() + interval;
  while (!stop_timer_) {
    // A condition of its own: waking on every handle's stop would cost two
    // context switches an operation.
    timer_cv_.wait_until(lock, deadline);
    if (stop_timer_) break;
    if (std::chrono::steady_clock::now() < deadline) continue;
    if (running_ && (!running_->blocks.empty() || !running_->revoked.empty())) {
      (void)commit_locked(lock);
    }
    deadline = std::chrono::steady_clock::now() + interval;
  }
}

}  // namespace uext::journal
