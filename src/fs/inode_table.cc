#include "fs/inode_table.h"

#include <utility>

namespace uext::fs {

InodeTable::Lock& InodeTable::Lock::operator=(Lock&& other) noexcept {
  if (this != &other) {
    unlock();
    table_ = std::exchange(other.table_, nullptr);
    entry_ = std::move(other.entry_);
    other.entry_ = nullptr;
    ino_ = other.ino_;
    shared_ = other.shared_;
  }
  return *this;
}

void InodeTable::Lock::unlock() {
  if (!entry_) return;
  if (shared_) {
    entry_->lock.unlock_shared();
  } else {
    entry_->lock.unlock();
  }
  table_->put(ino_, entry_);
  table_ = nullptr;
}

std::shared_ptr<InodeTable::Entry> InodeTable::get(uint32_t ino) {
  std::lock_guard guard(mu_);
  auto& slot = entries_[ino];
  if (!slot) slot = std::make_shared<Entry>();
  return slot;
}

// Drops one use of an entry, and the entry itself when nobody else holds
// it (copies are only made under mu_, so the count is stable here).
void InodeTable::put(uint32_t ino, std::shared_ptr<Entry>& entry) {
  std::lock_guard guard(mu_);
  entry.reset();
  auto it = entries_.find(ino);
  if (it != entries_.end() && it->second.use_count() == 1 && it->second->refs == 0) entries_.erase(it);
}

InodeTable::Lock InodeTable::lock(uint32_t ino) { return acquire(ino, false); }
InodeTable::Lock InodeTable::lock_shared(uint32_t ino) { return acquire(ino, true); }

InodeTable::Lock InodeTable::try_lock(uint32_t ino) {
  Lock l;
  auto entry = get(ino);
  if (!entry->lock.try_lock()) {
    put(ino, entry);
    return l;
  }
  l.entry_ = std::move(entry);
  l.table_ = this;
  l.ino_ = ino;
  l.shared_ = false;
  return l;
}

InodeTable::Lock InodeTable::acquire(uint32_t ino, bool shared) {
  Lock l;
  l.entry_ = get(ino);
  if (shared) {
    l.entry_->lock.lock_shared();
  } else {
    l.entry_->lock.lock();
  }
  l.table_ = this;
  l.ino_ = ino;
  l.shared_ = shared;
  return l;
}

void InodeTable::retain(uint32_t ino) {
  std::lock_guard guard(mu_);
  auto& slot = entries_[ino];
  if (!slot) slot = std::make_shared<Entry>();
  ++slot->refs;  // keeps the entry after its last lock is dropped
}

uint64_t InodeTable::release(uint32_t ino, uint64_t count) {
  std::lock_guard guard(mu_);
  auto it = entries_.find(ino);
  if (it == entries_.end()) return 0;
  Entry& e = *it->second;
  e.refs = count >= e.refs ? 0 : e.refs - count;
  uint64_t left = e.refs;
  if (left == 0 && it->second.use_count() == 1) entries_.erase(it);
  return left;
}

uint64_t InodeTable::refs(uint32_t ino) {
  std::lock_guard guard(mu_);
  auto it = entries_.find(ino);
  return it == entries_.end() ? 0 : it->second->refs;
}

std::unordered_map<uint32_t, uint64_t> InodeTable::referenced() {
  std::lock_guard guard(mu_);
  std::unordered_map<uint32_t, uint64_t> out;
  for (const auto& [ino, e] : entries_) {
    if (e->refs) out[ino] = e->refs;
  }
  return out;
}

}  // namespace uext::fs
