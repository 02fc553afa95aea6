// The Filesystem API over a Volume. Reading lives in filesystem_impl.cc,
// namespace changes (create, link, unlink, rename, ...) in
// namespace_ops.cc, file contents and attributes (write, truncate,
// fallocate, setattr, xattrs) in file_ops.cc, inode life and death
// (new inodes, deletion, orphans) in inode_life.cc.
//
// Every change runs as: check, lock the inodes involved (order in
// inode_table.h), reserve the blocks it may need (so it cannot meet ENOSPC
// half-way), start one journal handle with worst-case credits, change,
// stop. Changes that cannot fit one handle (truncating or deleting a large
// file) put the inode on the orphan list first, so a crash in between is
// finished at the next open.
#pragma once

#include <deque>
#include <condition_variable>
#include <memory>
#include <thread>
#include <optional>
#include <string>
#include <string_view>

#include "alloc/block_allocator.h"
#include "alloc/group_bitmaps.h"
#include "alloc/inode_allocator.h"
#include "base/ordered_mutex.h"
#include "cache/page_cache.h"
#include "disk/xattr.h"
#include "fs/block_map.h"
#include "fs/inode_table.h"
#include "fs/orphan.h"
#include "fs/volume.h"
#include "uext/filesystem.h"
#include "vm/pager.h"

namespace uext::vm {
class Mapper;
}

namespace uext::fs {

class FilesystemImpl final : public Filesystem, public vm::Pager {
 public:
  explicit FilesystemImpl(std::unique_ptr<Volume> volume);
  ~FilesystemImpl() override;

  // Read-write opens: sets up the allocators and finishes what the orphan
  // list says a crash interrupted.
  Status start_writing();
  // Read-only opens: reads the journal superblock and scans the log.
  void load_journal_info();
  // The page cache (read-write opens, and read-only ones for mappings).
  void make_page_cache();

  VolumeInfo info() const override;
  Status sync() override;
  Status close() override;
  Result<Ino> lookup(Ino dir, std::string_view name) override;
  Result<Ino> resolve(std::string_view path, bool follow_last) override;
  Result<Stat> stat(Ino ino) override;
  Result<size_t> read(Ino ino, uint64_t offset, std::span<std::byte> buf) override;
  Result<size_t> read(Ino ino, uint64_t offset, std::span<std::byte> buf, ReadOptions& options) override;
  Status readdir(Ino dir, uint64_t cookie, const DirVisitor& visit) override;
  Result<std::string> readlink(Ino ino) override;
  Result<std::vector<std::string>> listxattr(Ino ino) override;
  Result<std::string> getxattr(Ino ino, std::string_view name) override;
  Result<std::vector<FileExtent>> extents(Ino ino) override;

  // namespace_ops.cc
  Result<Stat> mknod(Ino dir, std::string_view name, uint32_t mode, const Owner& owner, uint32_t rdev_major,
                     uint32_t rdev_minor) override;
  Result<Stat> mkdir(Ino dir, std::string_view name, uint32_t mode, const Owner& owner) override;
  Result<Stat> symlink(Ino dir, std::string_view name, std::string_view target, const Owner& owner) override;
  Result<Stat> link(Ino ino, Ino new_dir, std::string_view new_name) override;
  Status unlink(Ino dir, std::string_view name) override;
  Status rmdir(Ino dir, std::string_view name) override;
  Status rename(Ino old_dir, std::string_view old_name, Ino new_dir, std::string_view new_name,
                unsigned flags, const Owner& whiteout_owner) override;

  // file_ops.cc
  Result<Stat> setattr(Ino ino, const SetAttr& attr) override;
  Status touch_atime(Ino ino, AtimeUpdate policy) override;
  Result<bool> atime_due(Ino ino, AtimeUpdate policy) override;
  Result<size_t> write(Ino ino, uint64_t offset, std::span<const std::byte> buf) override;
  Result<size_t> write(Ino ino, uint64_t offset, std::span<const std::byte> buf,
                       const WriteOptions& options) override;
  Status fallocate(Ino ino, int mode, uint64_t offset, uint64_t length) override;
  Result<uint64_t> seek(Ino ino, uint64_t offset, int whence) override;
  Status fsync(Ino ino, bool datasync) override;
  uint64_t wb_err_sample(Ino ino) override;
  Status fsync(Ino ino, bool datasync, uint64_t& wb_err_seen) override;
  Result<FsStats> statfs() override;
  Status tune(const Tune& settings) override;
  Status setxattr(Ino ino, std::string_view name, std::string_view value, int flags) override;
  Status removexattr(Ino ino, std::string_view name) override;

  // inode_life.cc
  void retain(Ino ino) override;
  Status release(Ino ino, uint64_t count) override;

  // Runs `body` inside `handle` and stops the handle: Volume::finish_handle,
  // which records an error if the body failed half-way.
  template <class Body>
  Status in_handle(journal::Handle& handle, std::string_view op, Ino ino, Body&& body,
                   Volume::Changes changes = Volume::Changes::kAllOrNothing) {
    return vol_->finish_handle(handle, op, static_cast<uint32_t>(ino), body(), changes);
  }

  // Reservation accounting (writeback.cc): the allocator's counter of
  // reserved blocks, what the outstanding reservations hold one by one, and
  // the part of it the cached files hold. counter == held always; with no
  // operation running, files == held too. Debug builds check this after
  // writepages, at sync and at close; tests read it in every build.
  struct ReservationAudit {
    uint64_t counter = 0;
    uint64_t held = 0;
    uint64_t holders = 0;
    uint64_t files = 0;
  };
  ReservationAudit audit_reservations();

  // page_fault.cc: mappings (Filesystem::mmap) and their faults.
  Result<std::unique_ptr<Mapping>> map_file(Ino ino, uint64_t offset, size_t length, int prot, int flags);
  Result<std::shared_ptr<vm::Mapper>> mapper() const;
  Status fault(uint32_t ino, uint64_t index, uint64_t lo, uint64_t hi, bool store,
               const vm::MapPages& map) override;

 private:
  // ---- shared helpers ----
  // Reads an inode in use, or an orphan (unlinked but still referenced).
  Result<InodeRecord> load_inode(Ino ino) { return vol_->read_inode(ino, orphans_.contains(ino)); }
  Status check_writable() const;
  static disk::Timestamp now();
  static Stat to_stat(const disk::Superblock& sb, const InodeRecord& rec);
  // Sets aside `blocks` blocks for the operation about to run, committing
  // the journal once when freed-but-busy blocks are all that is missing.
  // `unlikely` of them (a directory's worst-case growth) may be left out
  // when the whole does not fit: the operation then fails with ENOSPC if
  // it does need them (alloc::Reservation::allow_short).
  Result<alloc::Reservation> reserve(uint64_t blocks, uint64_t unlikely = 0);
  // Grows `r` by `blocks`, taking the root reserve too when the space
  // outside it falls short and may_use_root_reserve(); `options` then says
  // whether it did, for any retry on the same terms.
  Status grow_reservation(alloc::Reservation& r, uint64_t blocks, alloc::AllocOptions& options);
  // Whether this thread's allocations may take the root reserve: by the
  // options, or by the caller a server names (uext/caller.h), asked only
  // when the space outside the reserve falls short.
  bool may_use_root_reserve() const;
  // Worst-case tree or indirect blocks that mapping `data_blocks` new
  // blocks may add.
  uint64_t map_overhead(uint64_t data_blocks) const;
  Result<journal::Handle> start(uint32_t credits);

  // ---- reading (filesystem_impl.cc) ----
  static std::deque<std::string> split(std::string_view path);
  Result<Ino> lookup_in(const InodeRecord& dir, std::string_view name);
  bool has_block_map(const InodeRecord& rec) const;
  Result<size_t> read_data(const InodeRecord& rec, uint64_t offset, std::span<std::byte> buf);
  Result<std::string> read_symlink(const InodeRecord& rec);
  Result<std::vector<disk::Xattr>> read_xattrs(const InodeRecord& rec);

  // ---- inode life (inode_life.cc) ----
  // Allocates and writes a new inode of `mode` in directory `parent`
  // inside `handle`: owner and setgid inheritance, flags inherited from
  // the parent, times, generation. Credits: kNewInodeCredits.
  static constexpr uint32_t kNewInodeCredits = alloc::InodeAllocator::kAllocateCredits + 1;
  Result<InodeRecord> new_inode(journal::Handle& handle, const InodeRecord& parent, uint32_t mode,
                                const Owner& owner);
  // The group and project a new inode under `parent` gets.
  static uint32_t new_inode_gid(const InodeRecord& parent, const Owner& owner);
  uint32_t new_inode_projid(const InodeRecord& parent) const;
  // Quota entries for ids about to be charged (QuotaFiles::prepare); a
  // no-op without quota files. Before the operation's handle starts.
  Status prepare_quota(std::optional<uint32_t> uid, std::optional<uint32_t> gid, std::optional<uint32_t> projid);
  // Called with the inode's lock held after its link count reached zero
  // (it is on the orphan list): frees it now unless it is still retained.
  Status maybe_delete(InodeRecord& rec);
  // Frees an unlinked inode's blocks, xattr block and the inode itself, in
  // as many handles as it takes; the inode is on the orphan list.
  Status delete_inode(InodeRecord& rec);
  // Finishes what the orphan list records (at a read-write open).
  Status recover_orphans();
  // Truncates `rec` to `size` (shrinking uses the orphan list).
  Status truncate_locked(InodeRecord& rec, uint64_t size);
  // The second half of a shrinking truncate, for an inode already on the
  // orphan list: frees every block past `size` and takes the inode off the
  // list (unless it is unlinked). Also used after a failed write that
  // allocated past the end of the file.
  Status finish_truncate(InodeRecord& rec, uint64_t size);

  // Sets (value) or removes (nullopt) one attribute.
  Status change_xattr(Ino ino, std::string_view name, std::optional<std::string_view> value, int flags);
  // The same for system.posix_acl_access (`access`) or _default, with the
  // kernel's ACL rules (posix_acl.h): validation, the mode kept in step.
  Status change_acl(Ino ino, bool access, std::optional<std::string_view> value, int flags);
  // One attribute's value (VFS form), nullopt when absent.
  Result<std::optional<std::string>> find_xattr(const InodeRecord& rec, std::string_view name);

  // ---- delayed allocation and writeback (writeback.cc) ----
  bool uses_delalloc(const InodeRecord& rec) const;
  uint64_t delalloc_meta(const InodeRecord& rec, uint64_t blocks) const;
  // Reserves what `new_pages` more delayed pages need: their data blocks
  // and the growth of the file's worst-case tree blocks. Page lock held.
  Status reserve_delayed(const InodeRecord& rec, cache::CachedFile& file, uint64_t new_pages);
  // Gives back what the file's reservation holds beyond the data and
  // worst-case tree blocks of its delayed pages (after some went). Page
  // lock held.
  void trim_reservation(const InodeRecord& rec, cache::CachedFile& file);
  // The preallocation window writeback asks for, for a file of this size.
  uint32_t prealloc_window(uint64_t size_blocks) const;
  // write() past its argument checks, for both forms.
  Result<size_t> write_locked_or_cached(Ino ino, uint64_t offset, std::span<const std::byte> buf,
                                        const std::function<void(size_t)>* accepted,
                                        const WriteOptions* options);
  // atime_due() for an inode the caller holds locked, at time `t`, once
  // atime_due() has ruled out kNever and a read-only volume.
  bool atime_due_locked(const InodeRecord& rec, AtimeUpdate policy, const disk::Timestamp& t);
  // The rule itself, for the times of `st` (the cache's view applied).
  static bool atime_due_for(const Stat& st, AtimeUpdate policy, const disk::Timestamp& t);
  // setattr() under the inode lock the caller holds; `rec` is updated.
  Status setattr_locked(InodeRecord& rec, const SetAttr& attr);
  // WriteOptions::drop_setid, under the inode lock the caller holds.
  Status drop_setid_locked(InodeRecord& rec, const WriteOptions& options);
  // write() of a delayed-allocation file: reserve, then copy into the
  // cache. May write less than asked (ENOSPC part-way). Inode lock held.
  // `accepted`, when given, is called between the two (Filesystem::write).
  Result<size_t> cached_write(InodeRecord& rec, uint64_t offset, std::span<const std::byte> buf,
                              const std::function<void(size_t)>* accepted = nullptr);
  // Writes back every dirty page of `file` (inode lock held); a failure is
  // recorded for the file's descriptions.
  Status writepages(InodeRecord& rec, cache::CachedFile& file);
  Status write_dirty_runs(InodeRecord& rec, cache::CachedFile& file);
  // One writeback step: blocks [pos, pos + blocks) of a dirty run, in a
  // file of `size` bytes.
  struct WritebackChunk {
    uint64_t pos = 0;
    uint64_t blocks = 0;
    uint64_t size = 0;
    uint32_t max_new_extents = 1;
    uint32_t prealloc = 0;
  };
  uint32_t writeback_credits(const InodeRecord& rec, const WritebackChunk& c);
  Result<std::vector<BlockRun>> map_for_writeback(journal::Handle& h, InodeRecord& rec, cache::CachedFile& file,
                                                  const WritebackChunk& c);
  Status write_mapped_runs(const cache::CachedFile::Source& pages, const std::vector<BlockRun>& runs);
  // A data write into blocks a handle has just mapped failed: with
  // Options::data_err_abort the journal aborts before that handle stops.
  // Returns `failure`.
  Status data_write_failed(Status failure);
  void settle_reservation(const InodeRecord& rec, cache::CachedFile& file);
  Result<bool> writeback_chunk_async(cache::CachedFile& file);
  Status balance_dirty(Ino ino);
  // Too many cached files hold a memfd (PageCache::too_many_files).
  Status limit_open_memfds();
  void notify_writeback_progress();
  bool wb_stopping();
  Status writeback_inode(uint32_t ino);
  // Writes back other files: with `except` set (a writer holding that
  // inode's lock) only files whose lock is free; with 0, all of them.
  Status flush_others(uint32_t except);
  Status writeback_all();
  void writeback_loop();
  void stop_writeback();
  Status flush_and_drop(InodeRecord& rec, uint64_t offset, uint64_t end);
  // The latest writeback error of `ino` if one happened after `*since`
  // (which moves on), or, with no sample, after the last fsync(ino).
  Status check_wb_error(Ino ino, uint64_t* since);
  Status fsync_impl(Ino ino, bool datasync, uint64_t* since);
  // Applies the cache's view (size, times, delayed blocks) to a stat of `rec`.
  void overlay_cached(Stat& st);
  // The same, for a cached file whose page mutex the caller holds.
  static void overlay_locked(Stat& st, const cache::CachedFile& file);
  uint32_t extents_per_handle(const InodeRecord& rec);
  // Debug builds: aborts, naming both numbers, when the reservations do not
  // add up to the counter (and, when `idle`, when the cached files' do not).
  void check_reservations(const char* where, bool idle);

  // ---- mappings (page_fault.cc) ----
  Status fault_in(uint32_t ino, cache::CachedFile& file, uint64_t index, uint64_t lo, uint64_t hi,
                  const vm::MapPages& map);
  Status page_mkwrite(uint32_t ino, cache::CachedFile& file, uint64_t index, const vm::MapPages& map);
  Status allocate_for_store(uint32_t ino, cache::CachedFile& file, uint64_t index, const vm::MapPages& map);
  Status fill_pages(const InodeRecord& rec, cache::CachedFile& file, uint64_t first, uint64_t end);
  static void note_store(cache::CachedFile& file);
  // read()/write() with a buffer inside a uext mapping: through a copy.
  Result<size_t> bounce_write(Ino ino, uint64_t offset, std::span<const std::byte> buf);
  Result<size_t> bounce_read(Ino ino, uint64_t offset, std::span<std::byte> buf, ReadOptions& options);

  // ---- namespace helpers (namespace_ops.cc) ----
  Result<Stat> make_node(Ino dir, std::string_view name, uint32_t mode, const Owner& owner,
                         std::string_view symlink_target, uint32_t rdev_major, uint32_t rdev_minor);
  Status remove_name(Ino dir, std::string_view name, bool want_dir);
  Status check_not_ancestor(Ino moving_dir, Ino new_parent);

  std::unique_ptr<Volume> vol_;
  JournalInfo journal_;
  std::unique_ptr<alloc::GroupBitmaps> groups_;
  std::unique_ptr<alloc::BlockAllocator> blocks_;
  std::unique_ptr<alloc::InodeAllocator> inodes_;
  InodeTable itable_;
  OrphanList orphans_;
  // Renames between two directories: keeps ancestry stable while they run
  // (the kernel's s_vfs_rename_mutex).
  base::OrderedMutex rename_mu_{base::LockLevel::kFilesystem};
  bool closed_ = false;
  std::unique_ptr<cache::PageCache> cache_;
  mutable std::mutex mapper_mu_;
  mutable std::shared_ptr<vm::Mapper> mapper_;
  std::thread writeback_thread_;
  std::mutex wb_mu_;
  std::condition_variable wb_cv_;
  bool wb_stop_ = false;
  // Writers past the dirty limit wake the writeback thread (wb_kick_) and
  // wait on wb_progress_cv_ (all under wb_mu_).
  bool wb_kick_ = false;
  std::condition_variable wb_progress_cv_;
};

}  // namespace uext::fs
