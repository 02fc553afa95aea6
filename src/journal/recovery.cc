#include "journal/recovery.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <unordered_map>

#include "disk/checksum.h"
#include "disk/features.h"
#include "disk/jbd2.h"
#include "disk/superblock.h"

namespace uext::journal {

using disk::Bytes;
using disk::JournalFormat;
using disk::JournalSuperblock;

JournalMap::JournalMap(std::vector<JournalExtent> extents) : extents_(std::move(extents)) {
  std::erase_if(extents_, [](const JournalExtent& e) { return e.length == 0; });
  std::sort(extents_.begin(), extents_.end(),
            [](const JournalExtent& a, const JournalExtent& b) { return a.logical < b.logical; });
}

JournalMap JournalMap::contiguous(uint64_t first_physical, uint64_t length) {
  return JournalMap({{0, first_physical, length}});
}

std::optional<uint64_t> JournalMap::physical(uint64_t logical) const {
  auto it = std::upper_bound(extents_.begin(), extents_.end(), logical,
                             [](uint64_t l, const JournalExtent& e) { return l < e.logical; });
  if (it == extents_.begin()) return std::nullopt;
  --it;
  if (logical - it->logical >= it->length) return std::nullopt;
  return it->physical + (logical - it->logical);
}

uint64_t JournalMap::mapped_prefix() const {
  uint64_t next = 0;
  for (const JournalExtent& e : extents_) {
    if (e.logical > next) break;
    next = std::max(next, e.logical + e.length);
  }
  return next;
}

namespace {

constexpr int32_t kEinvalOnDisk = -EINVAL;  // what e2fsck records in s_errno after a failed commit

// One logged block: where its copy is in the log and where it goes.
struct LoggedBlock {
  uint32_t log_block = 0;
  uint32_t descriptor = 0;  // log block of the descriptor that tagged it
  size_t tag_index = 0;
  disk::JournalBlockTag tag;
};

struct Transaction {
  uint32_t tid = 0;
  std::vector<LoggedBlock> blocks;
  std::vector<uint64_t> revoked;
  std::string revoke_error;  // a revoke block the kernel would refuse
  bool bad_descriptor = false;
};

struct ScanResult {
  std::vector<Transaction> replay;  // committed transactions before end_transaction, in order
  uint32_t end_transaction = 0;
  std::optional<uint32_t> failed_commit;
  std::vector<std::string> problems;
};

class Log {
 public:
  Log(BlockDevice& dev, uint32_t bs, const JournalMap& map) : dev_(dev), bs_(bs), map_(map) {}

  Status load_superblock() {
    std::vector<std::byte> raw;
    UEXT_ASSIGN_OR_RETURN(raw, read(0));
    auto sb = disk::decode_journal_superblock(raw, bs_, map_.mapped_prefix());
    if (!sb) return Error(sb.error()).with_context("journal");
    sb_ = *sb;
    fmt_ = sb_.format();
    return {};
  }

  const JournalSuperblock& sb() const { return sb_; }
  const JournalFormat& format() const { return fmt_; }
  uint32_t log_length() const { return sb_.log_end() - sb_.s_first; }

  // The log block `n` blocks after `pos`, wrapping at the end of the log.
  uint32_t advance(uint32_t pos, uint64_t n) const {
    return static_cast<uint32_t>(sb_.s_first + (pos - sb_.s_first + n) % log_length());
  }

  Result<std::vector<std::byte>> read(uint64_t logical) const {
    std::optional<uint64_t> phys = map_.physical(logical);
    if (!phys)
      return Error(kErrCorrupted, fmt::format("journal block {} is not mapped to the device", logical));
    std::vector<std::byte> buf(bs_);
    Status st = dev_.read(*phys * bs_, buf);
    if (!st) return Error(st.error()).with_context(fmt::format("journal block {} (device block {})", logical, *phys));
    return buf;
  }

  Status write_superblock(const JournalSuperblock& sb) {
    std::vector<std::byte> raw;
    UEXT_ASSIGN_OR_RETURN(raw, read(0));
    disk::encode_journal_superblock(sb, raw);
    Status st = dev_.write(*map_.physical(0) * bs_, raw);
    if (!st) return Error(st.error()).with_context("journal superblock");
    return {};
  }

 private:
  BlockDevice& dev_;
  uint32_t bs_;
  const JournalMap& map_;
  JournalSuperblock sb_;
  JournalFormat fmt_;
};

std::string where(uint32_t log_block, const char* what, uint32_t tid) {
  return fmt::format("journal block {} ({}, transaction {})", log_block, what, tid);
}

// The first pass of the kernel's recovery, merged with the second: walks
// the log once, remembering each committed transaction's tags and revoke
// records, until the end of the valid log.
class Scanner {
 public:
  explicit Scanner(const Log& log) : log_(log), fmt_(log.format()) {}

  Result<ScanResult> run() {
    const JournalSuperblock& sb = log_.sb();
    tid_ = sb.s_sequence;
    pos_ = sb.s_start;
    cur_.tid = tid_;
    while (true) {
      UEXT_ASSIGN_OR_RETURN(Step step, next_block());
      if (step == Step::kEnd) break;
    }
    if (!end_set_) result_.end_transaction = tid_;
    for (Transaction& t : committed_)
      if (disk::tid_gt(result_.end_transaction, t.tid)) result_.replay.push_back(std::move(t));
    return std::move(result_);
  }

 private:
  enum class Step { kContinue, kEnd };

  Result<Step> next_block() {
    const uint32_t here = pos_;
    const bool lapped = consumed_ >= log_.log_length();
    UEXT_ASSIGN_OR_RETURN(std::vector<std::byte> block, log_.read(here));
    disk::JournalHeader h = disk::decode_journal_header(block);
    if (h.h_magic != disk::kJbd2Magic || h.h_sequence != tid_) return Step::kEnd;
    // A block that matches after the scan went all the way round the log
    // can only come from sequence numbers that loop: refuse rather than spin.
    if (lapped)
      return Error(kErrCorrupted, where(here, disk::jbd2_block_type_name(h.h_blocktype), tid_) +
                                      ": the log runs past its own start (sequence numbers loop)");
    step(1);
    switch (h.h_blocktype) {
      case disk::kJbd2DescriptorBlock: return descriptor(here, block);
      case disk::kJbd2CommitBlock: return commit(here, block);
      case disk::kJbd2RevokeBlock: return revoke(here, block);
      default: return Step::kEnd;  // an unknown block type ends the log, as in the kernel
    }
  }

  void step(uint64_t n) {
    pos_ = log_.advance(pos_, n);
    consumed_ += n;
  }

  Result<Step> descriptor(uint32_t here, Bytes block) {
    if (!disk::verify_block_tail(block, fmt_)) {
      // Possibly a stale block of an older log; the commit time decides.
      need_check_commit_time_ = true;
      cur_.bad_descriptor = true;
    }
    disk::DescriptorBlock d = disk::decode_descriptor_block(block, fmt_);
    const bool v1_sum = fmt_.csum_v1 && !need_check_commit_time_ && !end_set_;
    if (v1_sum) v1_crc_ = disk::crc32_be(v1_crc_, block);
    for (size_t i = 0; i < d.tags.size(); ++i) {
      cur_.blocks.push_back({pos_, here, i, d.tags[i]});
      if (v1_sum) {
        auto data = log_.read(pos_);
        if (!data) return Step::kEnd;  // the kernel ends the scan on a read error here
        v1_crc_ = disk::crc32_be(v1_crc_, *data);
      }
      step(1);
    }
    return Step::kContinue;
  }

  Result<Step> commit(uint32_t here, Bytes block) {
    disk::CommitBlock c = disk::decode_commit_block(block);
    if (need_check_commit_time_) {
      // A descriptor or revoke block of this transaction failed its checksum.
      // A commit time that does not go back means it belongs to this log.
      if (c.h_commit_sec >= last_commit_time_)
        return Error(kErrBadChecksum,
                     where(here, "commit", tid_) + ": a descriptor or revoke block of the transaction has a bad checksum");
      result_.problems.push_back(where(here, "commit", tid_) + ": stale transaction (bad checksum, older commit time) ends the log");
      return Step::kEnd;
    }
    bool bad = false;
    if (fmt_.csum_v1) {
      if (end_set_) {
        result_.failed_commit = result_.end_transaction;
        return Step::kEnd;
      }
      bool match = (c.h_chksum[0] == v1_crc_ && c.h_chksum_type == disk::kJbd2ChecksumCrc32 &&
                    c.h_chksum_size == disk::kJbd2Crc32ChecksumSize) ||
                   (c.h_chksum_type == 0 && c.h_chksum_size == 0 && c.h_chksum[0] == 0);
      bad = !match;
      v1_crc_ = ~0u;
    }
    if (!bad && !disk::verify_commit_block(block, fmt_)) bad = true;
    if (bad) {
      if (c.h_commit_sec < last_commit_time_) {
        result_.problems.push_back(where(here, "commit", tid_) + ": bad checksum and older commit time: stale, ends the log");
        return Step::kEnd;
      }
      result_.problems.push_back(where(here, "commit", tid_) + ": bad checksum; replay stops before this transaction");
      result_.end_transaction = tid_;
      end_set_ = true;
      if (!log_.sb().has_incompat(disk::jbd2_incompat::kAsyncCommit)) {
        result_.failed_commit = tid_;
        return Step::kEnd;
      }
    }
    last_commit_time_ = c.h_commit_sec;
    committed_.push_back(std::move(cur_));
    ++tid_;
    cur_ = Transaction{};
    cur_.tid = tid_;
    return Step::kContinue;
  }

  Result<Step> revoke(uint32_t here, Bytes block) {
    if (!disk::verify_block_tail(block, fmt_)) need_check_commit_time_ = true;
    auto r = disk::decode_revoke_block(block, fmt_);
    if (!r) {
      if (cur_.revoke_error.empty()) cur_.revoke_error = where(here, "revoke", tid_) + ": " + r.error().message();
      return Step::kContinue;
    }
    cur_.revoked.insert(cur_.revoked.end(), r->blocks.begin(), r->blocks.end());
    return Step::kContinue;
  }

  const Log& log_;
  const JournalFormat fmt_;
  ScanResult result_;
  std::vector<Transaction> committed_;
  Transaction cur_;
  uint32_t tid_ = 0;
  uint32_t pos_ = 0;
  uint64_t consumed_ = 0;
  bool end_set_ = false;
  bool need_check_commit_time_ = false;
  uint64_t last_commit_time_ = 0;
  uint32_t v1_crc_ = ~0u;
};

// The ext4 fast commit area follows the log; its first block starts with
// a HEAD tag (tag 9) naming the transaction it extends.
Status refuse_fast_commits(const Log& log, uint32_t end_transaction) {
  const JournalSuperblock& sb = log.sb();
  if (!sb.has_incompat(disk::jbd2_incompat::kFastCommit)) return {};
  const uint32_t fc_first = sb.log_end() + 1;
  if (fc_first >= sb.s_maxlen) return {};
  UEXT_ASSIGN_OR_RETURN(std::vector<std::byte> block, log.read(fc_first));
  constexpr uint16_t kFcTagHead = 9;
  uint16_t tag = disk::le16(block, 0);
  uint32_t fc_tid = disk::le32(block, 8);
  if (tag == kFcTagHead && disk::tid_geq(fc_tid, end_transaction))
    return Error(ENOTSUP, fmt::format("journal block {} (fast commit, transaction {}): replaying fast commit "
                                      "blocks (journal feature fast_commit) is not supported",
                                      fc_first, fc_tid));
  return {};
}

class Replayer {
 public:
  Replayer(BlockDevice& dev, const Log& log, uint32_t bs, uint64_t fs_blocks, bool write)
      : dev_(dev), log_(log), fmt_(log.format()), bs_(bs), fs_blocks_(fs_blocks), write_(write) {}

  Status run(const ScanResult& scan, RecoveryReport& report) {
    UEXT_TRY(collect_revokes(scan, report));
    UEXT_TRY(check_targets(scan));
    for (const Transaction& t : scan.replay) {
      for (const LoggedBlock& b : t.blocks) UEXT_TRY(replay_one(t, b, report));
    }
    report.transactions = static_cast<uint32_t>(scan.replay.size());
    return {};
  }

 private:
  Status collect_revokes(const ScanResult& scan, RecoveryReport& report) {
    for (const Transaction& t : scan.replay) {
      if (!t.revoke_error.empty()) return Error(kErrCorrupted, t.revoke_error);
      if (t.bad_descriptor)
        return Error(kErrBadChecksum, fmt::format("journal transaction {}: descriptor block with a bad checksum", t.tid));
      for (uint64_t blk : t.revoked) {
        auto [it, inserted] = revoked_.try_emplace(blk, t.tid);
        if (!inserted && disk::tid_gt(t.tid, it->second)) it->second = t.tid;
        ++report.revoke_records;
      }
    }
    return {};
  }

  // Every target is checked before the first write, so a corrupt tag
  // leaves the filesystem untouched.
  Status check_targets(const ScanResult& scan) const {
    for (const Transaction& t : scan.replay) {
      for (const LoggedBlock& b : t.blocks) {
        if (b.tag.t_blocknr >= fs_blocks_)
          return Error(kErrCorrupted,
                       where(b.descriptor, "descriptor", t.tid) +
                           fmt::format(": tag {} points to block {} outside the filesystem ({} blocks)", b.tag_index,
                                       b.tag.t_blocknr, fs_blocks_));
      }
    }
    return {};
  }

  bool is_revoked(uint64_t blk, uint32_t tid) const {
    auto it = revoked_.find(blk);
    return it != revoked_.end() && !disk::tid_gt(tid, it->second);
  }

  Status replay_one(const Transaction& t, const LoggedBlock& b, RecoveryReport& report) {
    if (is_revoked(b.tag.t_blocknr, t.tid)) {
      ++report.blocks_revoked;
      return {};
    }
    UEXT_ASSIGN_OR_RETURN(std::vector<std::byte> data, log_.read(b.log_block));
    if (!disk::verify_tag_checksum(fmt_, b.tag, t.tid, data)) {
      // The kernel skips such a block, replays the rest and fails the recovery.
      ++report.bad_block_checksums;
      report.problems.push_back(fmt::format("journal block {} (data for block {}, transaction {}): bad checksum, not replayed",
                                            b.log_block, b.tag.t_blocknr, t.tid));
      return {};
    }
    if (b.tag.t_flags & disk::kJbd2FlagEscape) disk::put_be32(data, 0, disk::kJbd2Magic);
    if (write_) {
      Status st = dev_.write(b.tag.t_blocknr * bs_, data);
      if (!st) return Error(st.error()).with_context(fmt::format("replaying block {} (transaction {})", b.tag.t_blocknr, t.tid));
    }
    ++report.blocks_replayed;
    return {};
  }

  BlockDevice& dev_;
  const Log& log_;
  const JournalFormat fmt_;
  uint32_t bs_;
  uint64_t fs_blocks_;
  bool write_;
  std::unordered_map<uint64_t, uint32_t> revoked_;  // block -> latest revoking transaction
};

Result<RecoveryReport> recover(BlockDevice& dev, uint32_t bs, const JournalMap& map, const RecoveryOptions& options,
                               bool write) {
  if (bs < 1024 || bs > 65536 || (bs & (bs - 1)))
    return Error(EINVAL, fmt::format("journal: bad filesystem block size {}", bs));
  Log log(dev, bs, map);
  UEXT_TRY(log.load_superblock());
  const JournalSuperblock& sb = log.sb();
  RecoveryReport report;
  report.start_transaction = sb.s_sequence;
  report.end_transaction = sb.s_sequence;
  report.needed = sb.s_start != 0;
  if (!report.needed) {
    // Nothing to replay; still move the sequence on, as e2fsck and the
    // kernel do, so that no transaction number of the last session can be
    // taken for a new one.
    if (write) {
      JournalSuperblock bumped = sb;
      bumped.s_sequence = sb.s_sequence + 1;
      UEXT_TRY(log.write_superblock(bumped));
      UEXT_TRY(dev.flush());
      report.end_transaction = bumped.s_sequence;
    }
    return report;
  }

  UEXT_ASSIGN_OR_RETURN(ScanResult scan, Scanner(log).run());
  report.end_transaction = scan.end_transaction;
  report.failed_commit = scan.failed_commit;
  report.problems = scan.problems;
  UEXT_TRY(refuse_fast_commits(log, scan.end_transaction));

  uint64_t fs_blocks = options.fs_blocks ? options.fs_blocks : dev.size() / bs;
  Replayer replayer(dev, log, bs, fs_blocks, write);
  UEXT_TRY(replayer.run(scan, report));
  if (!write) return report;

  // Replayed blocks must be durable before the journal forgets them.
  UEXT_TRY(dev.flush());
  JournalSuperblock empty = sb;
  empty.s_start = 0;
  empty.s_sequence = scan.end_transaction + 1;
  if (scan.failed_commit) empty.s_errno = kEinvalOnDisk;
  UEXT_TRY(log.write_superblock(empty));
  UEXT_TRY(dev.flush());
  return report;
}

}  // namespace

Result<RecoveryReport> inspect_journal(BlockDevice& dev, uint32_t fs_block_size, const JournalMap& map,
                                       const RecoveryOptions& options) {
  return recover(dev, fs_block_size, map, options, false);
}

Result<RecoveryReport> recover_journal(BlockDevice& dev, uint32_t fs_block_size, const JournalMap& map,
                                       const RecoveryOptions& options) {
  if (dev.read_only()) return Error(EROFS, "journal recovery: the device is read-only");
  return recover(dev, fs_block_size, map, options, true);
}

namespace {

// Reads the primary ext4 superblock, applies `change`, rewrites it (with
// its checksum) and flushes.
Status edit_primary_superblock(BlockDevice& dev, const char* what,
                               const std::function<void(disk::Superblock&)>& change) {
  std::vector<std::byte> raw(disk::kSuperblockSize);
  UEXT_TRY(dev.read(disk::kSuperblockOffset, raw));
  auto sb = disk::decode_superblock(raw, dev.size());
  if (!sb) return Error(sb.error()).with_context(what);
  change(*sb);
  disk::encode_superblock(*sb, raw);
  UEXT_TRY(dev.write(disk::kSuperblockOffset, raw));
  return dev.flush();
}

}  // namespace

Status clear_needs_recovery(BlockDevice& dev, bool needs_fsck) {
  return edit_primary_superblock(dev, "clearing needs_recovery", [&](disk::Superblock& sb) {
    sb.s_feature_incompat &= ~disk::incompat::kRecover;
    if (needs_fsck) sb.s_state &= static_cast<uint16_t>(~disk::kStateValid);
  });
}

Result<int32_t> move_journal_errno_to_superblock(BlockDevice& dev, uint32_t fs_block_size, const JournalMap& map) {
  Log log(dev, fs_block_size, map);
  UEXT_TRY(log.load_superblock());
  const int32_t recorded = log.sb().s_errno;
  if (recorded == 0) return 0;
  // The mark first: cleared before it is durable, the error would be lost.
  UEXT_TRY(edit_primary_superblock(dev, "recording the journal's error",
                                   [](disk::Superblock& sb) { sb.s_state |= disk::kStateErrors; }));
  JournalSuperblock cleared = log.sb();
  cleared.s_errno = 0;
  UEXT_TRY(log.write_superblock(cleared));
  UEXT_TRY(dev.flush());
  return recorded;
}

}  // namespace uext::journal
