// In-memory state of inodes in use: their locks and the references open
// files hold. Entries exist only while someone locks or references the
// inode, so memory follows the working set, not the image.
//
// Lock order (docs/DESIGN.md): a directory before the inodes it names; two
// directories (a rename) ancestor first, else by inode number, under the
// filesystem's rename lock; two non-directories by inode number.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "base/ordered_mutex.h"

namespace uext::fs {

class InodeTable {
  struct Entry {
    base::OrderedSharedMutex lock{base::LockLevel::kInode, /*same_level_ok=*/true};
    uint64_t refs = 0;  // retain() minus release(), under the table mutex
  };

 public:
  // A held inode lock. Move-only; unlocks when destroyed.
  class Lock {
   public:
    Lock() = default;
    Lock(Lock&& other) noexcept { *this = std::move(other); }
    Lock& operator=(Lock&& other) noexcept;
    ~Lock() { unlock(); }
    void unlock();
    bool held() const { return entry_ != nullptr; }
    uint32_t ino() const { return ino_; }

   private:
    friend class InodeTable;
    InodeTable* table_ = nullptr;
    std::shared_ptr<Entry> entry_;
    uint32_t ino_ = 0;
    bool shared_ = false;
  };

  Lock lock(uint32_t ino);         // exclusive: the inode changes
  Lock lock_shared(uint32_t ino);  // shared: the inode is read
  // Exclusive, or an empty Lock when someone holds the inode (background
  // work that must never wait behind a lock holder).
  Lock try_lock(uint32_t ino);

  // Open-file references. release() returns the references left.
  void retain(uint32_t ino);
  uint64_t release(uint32_t ino, uint64_t count);
  uint64_t refs(uint32_t ino);
  // Every inode with references (for close).
  std::unordered_map<uint32_t, uint64_t> referenced();

 private:
  Lock acquire(uint32_t ino, bool shared);
  std::shared_ptr<Entry> get(uint32_t ino);
  void put(uint32_t ino, std::shared_ptr<Entry>& entry);

  base::OrderedMutex mu_{base::LockLevel::kInodeTable};
  std::unordered_map<uint32_t, std::shared_ptr<Entry>> entries_;
};

}  // namespace uext::fs
