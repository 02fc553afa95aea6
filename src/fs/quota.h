// Quota usage, kept in the image's quota files (the quota feature) as ext4
// keeps it: every inode that counts charges its owner, group and project
// its space (i_blocks) and one inode, and each change of an inode moves
// that charge inside the handle that changes the inode, so every commit
// holds usage that matches its inodes (what e2fsck checks). Limits and
// grace times are kept as found; limits are not enforced (ext4 itself
// only accounts unless mounted with usrquota, grpquota or prjquota).
//
// What counts is e2fsck's rule: the root and the inodes from s_first_ino
// on, but for the project quota file and the orphan file. An inode counts
// from its allocation until it is freed, as on ext4: an unlinked inode
// still open (an orphan) keeps its charge until it goes, which is also what
// e2fsck takes away when it frees the orphans of a crashed image.
//
// Entries are made before they are needed: an operation that will make an
// inode, or give one a new owner or group, first calls prepare() for the
// ids, which inserts missing entries in a handle of its own (growing the
// file if need be). The changes themselves then only rewrite entries,
// within the credits every handle gets for them (credits()). Usage that
// could not be written in its handle (no entry yet, credits used up) stays
// pending and goes out at the next flush() (sync, close).
//
// Locking: insert_mu_ (LockLevel::kQuotaInsert) serialises changes of the
// files' trees, block lists and sizes, and is held across the allocation
// of new blocks; mu_ (LockLevel::kQuota) guards the usage in memory and
// each file's block map (changed under both), and is held while an entry
// is rewritten through the handle.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/ordered_mutex.h"
#include "disk/inode.h"
#include "disk/quota.h"
#include "journal/journal.h"
#include "uext/status.h"

namespace uext::fs {

class Volume;

// What one inode is charged, for each kind of quota.
struct QuotaCharge {
  bool counted = false;
  std::array<uint32_t, disk::quota::kTypes> id{};
  uint64_t space = 0;  // bytes
};

class QuotaFiles {
 public:
  // Maps a new block into quota inode `ino` at logical block `logical`
  // (allocating it) and returns its number; the block's bytes are the
  // caller's to fill. Supplied by whoever owns the allocator.
  using GrowFn = std::function<Result<uint64_t>(journal::Handle&, uint32_t ino, uint64_t logical)>;

  // Reads every enabled quota file (a nonzero quota inode in the
  // superblock). Null when the image has no quota feature.
  static Result<std::unique_ptr<QuotaFiles>> load(Volume& vol);

  void set_grow(GrowFn grow) { grow_ = std::move(grow); }

  QuotaCharge charge_of(uint32_t ino, const disk::Inode& inode) const;

  // Moves usage from `before` to `after` (an inode's charge before and
  // after a change made in `handle`) and rewrites the entries concerned.
  void transfer(journal::Handle& handle, const QuotaCharge& before, const QuotaCharge& after);

  // Takes away what inode `ino` (as it is now) is charged: it is being
  // freed in `handle`.
  void discharge(journal::Handle& handle, uint32_t ino, const disk::Inode& inode);

  // Makes sure each enabled kind has an entry for the given id (nullopt:
  // nothing for that kind). Starts and stops a handle only when an entry
  // is missing. Call with no handle open and no page locked.
  Status prepare(const std::array<std::optional<uint32_t>, disk::quota::kTypes>& ids);

  // Credits each handle adds for entry rewrites.
  uint32_t credits() const;

  // Writes usage left pending (see above), entries made first.
  Status flush();

 private:
  struct IdState {
    disk::quota::Usage usage;
    uint32_t block = 0;  // quota block holding the entry (0: none yet)
    uint32_t slot = 0;
    bool pending = false;
  };
  struct File {
    disk::quota::Type type{};
    uint32_t ino = 0;
    disk::quota::Info info;
    std::vector<uint64_t> map;  // filesystem block of each block of the file (0: hole)
    uint64_t size = 0;          // i_size
    std::unordered_map<uint32_t, IdState> ids;
  };

  explicit QuotaFiles(Volume& vol) : vol_(vol) {}
  Status load_file(File& f);
  Status scan_tree(File& f, uint32_t block, int depth, std::vector<bool>& seen);
  // The filesystem block and offset of quota block `qblock`.
  Result<std::pair<uint64_t, uint32_t>> locate(const File& f, uint32_t qblock) const;
  Result<std::vector<std::byte>> read_qblock(const File& f, uint32_t qblock);
  Status edit_qblock(journal::Handle& h, const File& f, uint32_t qblock,
                     const std::function<void(std::span<std::byte>)>& edit);
  Status zero_qblock(journal::Handle& h, const File& f, uint32_t qblock);
  // Under insert_mu_: a block for a new tree or data block (free list
  // first, else past the end, growing the file).
  Result<uint32_t> take_block(journal::Handle& h, File& f);
  Status insert(journal::Handle& h, File& f, uint32_t id);
  Status insert_entry(journal::Handle& h, File& f, uint32_t id);
  // Under mu_: rewrites the entry of `id` if it has one and the handle
  // has room; else leaves it pending.
  void write_entry(journal::Handle& h, File& f, uint32_t id, IdState& st);

  Volume& vol_;
  GrowFn grow_;
  std::array<std::optional<File>, disk::quota::kTypes> files_;
  uint32_t first_ino_ = 11;
  uint32_t skip_ino_[2] = {0, 0};  // the project quota file and the orphan file
  uint32_t block_size_ = 4096;
  bool huge_file_ = false;
  mutable base::OrderedMutex insert_mu_{base::LockLevel::kQuotaInsert};
  mutable base::OrderedMutex mu_{base::LockLevel::kQuota};
};

}  // namespace uext::fs
