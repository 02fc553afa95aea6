// Writeback errors as each open file description sees them, the way
// Linux's errseq_t does: per inode, a sequence number bumped by every
// writeback error, the latest error, and whether anyone has reported it.
// A description samples the sequence when it is opened; its fsync reports
// the latest error if the sequence moved since, and then moves its sample
// on, so every description hears of an error once. An error nobody has
// reported yet is reported even to descriptions opened after it (the
// sample of an unseen error is 0), so that it is never lost.
//
// The table is per inode and outlives the inode's cached pages: eviction
// cannot lose an error. Entries go when the inode is deleted (or the
// filesystem closes). Locking: one leaf mutex.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>

#include "base/ordered_mutex.h"

namespace uext::cache {

struct WbError {
  int code = 0;
  std::string message;
};

class WbErrors {
 public:
  void record(uint32_t ino, int code, std::string message);
  // What a description opened now starts from.
  uint64_t sample(uint32_t ino);
  // The latest error if one happened after `since` (then `since` moves to
  // it and the error counts as seen), else nothing.
  std::optional<WbError> check(uint32_t ino, uint64_t& since);
  // check() for callers without a sample of their own (fsync(ino)): one
  // cursor per inode, as a description opened before any error.
  std::optional<WbError> check_unsampled(uint32_t ino);
  void forget(uint32_t ino);
  // Errors recorded for the inode so far (tests).
  uint64_t count(uint32_t ino);

 private:
  struct Seq {
    uint64_t seq = 0;
    WbError latest;
    bool seen = false;
    uint64_t unsampled_since = 0;
  };
  std::optional<WbError> check_locked(Seq& s, uint64_t& since);
  base::OrderedMutex mu_{base::LockLevel::kPageCacheMap};
  std::unordered_map<uint32_t, Seq> seqs_;
};

}  // namespace uext::cache
