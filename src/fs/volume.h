// A mounted image: the device, its superblock and group descriptors, and
// the metadata cache. Everything above it (block maps, directories, the
// Filesystem API) reads the image only through a Volume.
#pragma once

#include <array>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "disk/group_desc.h"
#include "disk/inode.h"
#include "disk/superblock.h"
#include "fs/quota.h"
#include "journal/journal.h"
#include "journal/recovery.h"
#include "buffer/buffer_cache.h"
#include "uext/block_device.h"
#include "uext/filesystem.h"

namespace uext::fs {

using buffer::BlockRef;

// An inode as read from the table: decoded fields plus the raw slot, which
// the in-inode xattr area lives in.
struct InodeRecord {
  uint32_t ino = 0;
  disk::Inode inode;
  std::vector<std::byte> raw;
  // Seed for the checksums of this inode's extent, directory and htree blocks.
  uint32_t csum_seed = 0;
};

class Volume {
 public:
  // Reads and validates the superblock and every group descriptor.
  // Read-write (options.read_only false): first replays a journal that
  // needs recovery, then opens the journal for writing and marks the image
  // in use (needs_recovery with a journal, not-clean without), as the
  // kernel does at mount.
  static Result<std::unique_ptr<Volume>> open(std::unique_ptr<BlockDevice> device,
                                              const Options& options);
  ~Volume();

  bool writable() const { return journal_ != nullptr; }
  // The journal of a read-write volume (null when read-only).
  journal::Journal* journal() { return journal_.get(); }
  // What the replay at open did (needed == false when nothing was replayed).
  const journal::RecoveryReport& recovery() const { return recovery_; }
  // Read-only opens: whether the replay above went to memory only, or why
  // it could not be made.
  bool replayed_in_memory() const { return replayed_in_memory_; }
  const std::string& replay_problem() const { return replay_problem_; }

  // Starts a journal handle (read-write volumes only).
  Result<journal::Handle> start(uint32_t credits);
  // Changes group descriptor `g` in memory and in its descriptor block,
  // checksum included, under the group's lock.
  Status update_group(journal::Handle& handle, uint32_t g,
                      const std::function<void(disk::GroupDesc&)>& change);
  // Changes the superblock (counters, orphan list head, ...) in memory and
  // in its block.
  Status update_superblock(journal::Handle& handle,
                           const std::function<void(disk::Superblock&)>& change);
  // ext4_error: marks the superblock "with errors", so that e2fsck checks
  // the whole image at its next run, and records the error (count, first
  // and latest: operation, inode, errno; uext records no block or line).
  // Journaled in a handle of its own; if the journal has failed it stays in
  // memory, and the replay of the log brings back an image without the
  // half-made change.
  Status record_error(std::string_view op, uint32_t ino, int err);
  // ext4_error for corruption found while reading: when `err` says a
  // structure on the image is corrupt (EUCLEAN: it does not parse or breaks
  // a rule; EBADMSG: its checksum fails), records it as record_error does,
  // naming function `func`, inode `ino` and block `block` (0: unknown).
  // The record waits in memory for write_pending_errors (run by the
  // background writeback), sync or close, since the read may hold locks a
  // handle must come before; it takes only a lock of its own, innermost of
  // all. A read-only volume records nothing. I/O errors are not recorded.
  // Returns `err`, for `return vol.found_corrupt(...)`.
  Error found_corrupt(Error err, std::string_view func, uint32_t ino, uint64_t block);
  // Journals the errors found_corrupt recorded, in a handle of its own
  // (none when there are none). The caller holds no page lock.
  Status write_pending_errors();
  // How the changes an operation makes in one handle hold together.
  enum class Changes {
    // All or nothing (a name and its inode, a rename's two names): a
    // failure after a change leaves it half made.
    kAllOrNothing,
    // A series of map edits, each whole once done (writes, writeback,
    // punching): a failure between them leaves a smaller change.
    kEachStepWhole,
  };
  // Stops `handle` after an operation's body that returned `done`; the
  // first error wins. A handle cannot be rolled back, so a body that failed
  // after changing blocks may leave its change half made on the image:
  // when the handle's verdict (journal::Handle::set_consistent) says so,
  // or, without one, when the operation is all or nothing. Then the error
  // is recorded (record_error, as ext4_std_error does), naming operation
  // `op` on inode `ino`, so that the next e2fsck repairs what it left.
  Status finish_handle(journal::Handle& handle, std::string_view op, uint32_t ino, Status done,
                       Changes changes = Changes::kAllOrNothing);
  // Copies that are consistent while updates run.
  disk::GroupDesc group_snapshot(uint32_t g) const;
  disk::Superblock superblock_snapshot() const;
  // Changes inode `ino` in its inode table block (one credit): `change`
  // edits the decoded inode; encoding recomputes its checksum and keeps the
  // bytes uext does not know (in-inode xattrs among them). `fresh` starts
  // from a zeroed slot, for an inode just allocated. Returns the new record.
  Result<InodeRecord> update_inode(journal::Handle& handle, uint32_t ino, bool fresh,
                                   const std::function<void(disk::Inode&)>& change);
  // Like update_inode, also handing `change` the raw slot (inode_size
  // bytes): it may edit the bytes past the fixed fields (the in-inode xattr
  // area, from 128 + i_extra_isize on); the decoded fields and the checksum
  // are encoded over the slot afterwards. An error from `change` leaves the
  // block unchanged.
  using InodeSlotEdit = std::function<Status(disk::Inode&, std::span<std::byte> slot)>;
  Result<InodeRecord> update_inode_slot(journal::Handle& handle, uint32_t ino, bool fresh,
                                        const InodeSlotEdit& change);
  // The quota files, when the image keeps usage (set once, before the first
  // change): every inode update then moves the inode's charge in its own
  // handle, and every handle gets the credits for that.
  void set_quota(std::unique_ptr<QuotaFiles> quota);
  QuotaFiles* quota() { return quota_.get(); }
  // Makes every change so far durable (a journal commit).
  Status sync();
  // Commits, checkpoints, empties the log and marks the image clean.
  Status close();
  // The journal map of inode 8 (for recovery and for opening the journal).
  Result<journal::JournalMap> journal_map();

  const disk::Superblock& sb() const { return sb_; }
  const Options& options() const { return options_; }
  BlockDevice& device() { return *device_; }
  uint32_t block_size() const { return sb_.block_size(); }
  // The descriptor as loaded; fields allocation changes (free counts,
  // flags, itable_unused) are current only through group_snapshot().
  const disk::GroupDesc& group(uint32_t g) const { return loaded_groups_[g]; }
  bool verify_checksums() const { return options_.verify_checksums && sb_.has_metadata_csum(); }
  const disk::FeatureVerdict& features() const { return features_; }

  // A metadata block through the cache. EUCLEAN when `block` lies outside
  // the filesystem; `what` names the structure for that message.
  Result<BlockRef> read_meta_block(uint64_t block, const char* what);

  // Validates that blocks [first, first + count) lie inside the filesystem.
  Status check_block_range(uint64_t first, uint64_t count, const std::string& what) const;

  // Reads an in-use inode. ENOENT-like misuse (ino 0 or past s_inodes_count)
  // is EUCLEAN, as it can only come from a corrupt reference; an inode that
  // is not in use (never initialised, or freed) is EUCLEAN too.
  // `allow_unlinked` accepts an inode with no links whose i_dtime is set:
  // an orphan, whose i_dtime links the orphan list.
  Result<InodeRecord> read_inode(uint32_t ino, bool allow_unlinked = false);
  // Whether inode `ino` is in use, by the same rule as read_inode, without
  // decoding or verifying it and without recording anything: for a
  // directory entry's check of what it names (whose damage is the
  // entry's), before the inode itself is read and judged.
  Result<bool> inode_in_use(uint32_t ino, bool allow_unlinked = false);

 private:
  Volume(std::unique_ptr<BlockDevice> device, const Options& options, const disk::Superblock& sb);
  // Where inode `ino`'s table slot is, and whether its group initialised
  // it (uninit_bg/metadata_csum); EUCLEAN past s_inodes_count.
  struct InodeSlot {
    uint32_t group = 0;
    bool initialised = true;
    uint64_t block = 0;
    uint32_t offset = 0;
  };
  Result<InodeSlot> inode_slot(uint32_t ino) const;
  // Read-only opens: the journal replayed into an overlay of the device
  // (io/overlay_device.h), the volume loaded again on it.
  static Result<std::unique_ptr<Volume>> replay_in_memory(std::unique_ptr<Volume> volume, const Options& options);
  // Takes `device` on success; on failure it stays the caller's.
  static Result<std::unique_ptr<Volume>> load(std::unique_ptr<BlockDevice>& device, const Options& options);
  Status load_group_descriptors();
  Status open_for_writing();
  // Writes the in-memory superblock to its home location at once, outside
  // the journal (for the needs_recovery and state flags, as the kernel's
  // commit_super); only while no transaction holds the superblock block.
  Status write_superblock_now();
  uint64_t superblock_block() const { return block_size() == 1024 ? 1 : 0; }
  uint32_t superblock_offset_in_block() const { return block_size() == 1024 ? 0 : 1024; }

  std::unique_ptr<BlockDevice> device_;
  Options options_;
  disk::Superblock sb_;
  // sb_ without metadata_csum, for decoding an inode about to be rewritten
  // (its checksum is not judged). Made once at open: copying sb_ later would
  // race with the counters the allocators change.
  disk::Superblock decode_sb_;
  disk::FeatureVerdict features_;
  std::vector<disk::GroupDesc> groups_;         // current; under sb_mu_
  std::vector<disk::GroupDesc> loaded_groups_;  // as loaded, never changed: read without a lock
  std::unique_ptr<buffer::BufferCache> cache_;
  std::unique_ptr<journal::Journal> journal_;
  std::unique_ptr<QuotaFiles> quota_;
  journal::RecoveryReport recovery_;
  bool replayed_in_memory_ = false;
  std::string replay_problem_;
  bool closed_ = false;
  // Guards the allocation-time fields of groups_ and the counters of sb_.
  mutable base::OrderedMutex sb_mu_{base::LockLevel::kVolumeState};

  // One error for the superblock's record (s_first_error_*, s_last_error_*).
  struct ErrorRecord {
    int64_t time = 0;
    uint32_t ino = 0;
    uint64_t block = 0;
    std::array<char, 32> func{};
    uint8_t errcode = 0;
  };
  // Errors recorded and not yet in sb_ (the kernel's stashed error info).
  struct PendingErrors {
    uint32_t count = 0;
    ErrorRecord first;  // the earliest since the last write
    ErrorRecord last;
  };
  static ErrorRecord make_error_record(std::string_view func, uint32_t ino, uint64_t block, int err);
  void stash_error(const ErrorRecord& record);
  // A plain mutex below every ordered lock: held for a few stores, never
  // around a call, so any thread may record under any lock.
  std::mutex errors_mu_;
  PendingErrors pending_errors_;  // under errors_mu_
};

}  // namespace uext::fs
