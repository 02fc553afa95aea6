#include "fs/volume.h"

#include "fs/block_map.h"
#include "io/overlay_device.h"

#include <fmt/format.h>

#include <sys/stat.h>

#include <algorithm>

namespace uext::fs {

Volume::Volume(std::unique_ptr<BlockDevice> device, const Options& options,
               const disk::Superblock& sb)
    : device_(std::move(device)), options_(options), sb_(sb), decode_sb_(sb) {
  decode_sb_.s_feature_ro_compat &= ~disk::ro_compat::kMetadataCsum;
  cache_ = std::make_unique<buffer::BufferCache>(*device_, sb_.block_size(), options_.metadata_cache_bytes);
}

Result<std::unique_ptr<Volume>> Volume::load(std::unique_ptr<BlockDevice>& device,
                                             const Options& options) {
  if (device->size() < disk::kSuperblockOffset + disk::kSuperblockSize) {
    return Error(kErrCorrupted, fmt::format("image is too small to hold a superblock ({} bytes)",
                                            device->size()));
  }
  std::vector<std::byte> raw(disk::kSuperblockSize);
  UEXT_TRY(device->read(disk::kSuperblockOffset, raw));
  auto sb = disk::decode_superblock(raw, device->size());
  if (!sb.ok()) {
    // Skip checksum verification only when the caller asked to salvage.
    if (sb.error().code() == kErrBadChecksum && !options.verify_checksums) {
      // decode without the checksum: recompute it into a copy so that decode
      // accepts it, keeping every other validation.
      std::vector<std::byte> fixed = raw;
      disk::put_le32(fixed, 0x3FC, disk::superblock_checksum(fixed));
      sb = disk::decode_superblock(fixed, device->size());
    }
    if (!sb.ok()) return std::move(sb).error();
  }
  UEXT_ASSIGN_OR_RETURN(auto verdict, disk::check_features(sb->s_feature_compat,
                                                           sb->s_feature_ro_compat,
                                                           sb->s_feature_incompat));
  std::unique_ptr<Volume> volume(new Volume(std::move(device), options, *sb));
  volume->features_ = verdict;
  Status loaded = volume->load_group_descriptors();
  if (!loaded.ok()) {
    device = std::move(volume->device_);  // the caller's again
    return std::move(loaded).error();
  }
  return volume;
}

Result<std::unique_ptr<Volume>> Volume::open(std::unique_ptr<BlockDevice> device,
                                             const Options& options) {
  UEXT_ASSIGN_OR_RETURN(auto volume, load(device, options));
  if (options.read_only) {
    if (!options.replay_read_only || !volume->sb_.has_incompat(disk::incompat::kRecover) ||
        !volume->sb_.has_compat(disk::compat::kHasJournal)) {
      return volume;
    }
    return replay_in_memory(std::move(volume), options);
  }
  if (volume->features_.access == disk::Access::kReadOnly) {
    return Error(EROFS, "cannot open read-write: " + volume->features_.read_only_reason);
  }
  if (volume->device_->read_only()) return Error(EROFS, "cannot open read-write: the device is read-only");
  if (volume->sb_.has_incompat(disk::incompat::kRecover)) {
    if (!volume->sb_.has_compat(disk::compat::kHasJournal)) {
      return Error(kErrCorrupted, "superblock: needs_recovery is set but the filesystem has no journal");
    }
    UEXT_ASSIGN_OR_RETURN(auto map, volume->journal_map());
    journal::RecoveryOptions ropts;
    ropts.fs_blocks = volume->sb_.s_blocks_count;
    auto report = journal::recover_journal(*volume->device_, volume->block_size(), map, ropts);
    if (!report.ok()) return std::move(report).error().with_context("journal replay");
    UEXT_TRY(journal::clear_needs_recovery(*volume->device_, report->needs_fsck()));
    // The replay rewrote metadata under the loaded copies: load afresh.
    auto replayed = *report;
    UEXT_ASSIGN_OR_RETURN(volume, load(volume->device_, options));
    volume->recovery_ = replayed;
  }
  UEXT_TRY(volume->open_for_writing());
  return volume;
}

Result<std::unique_ptr<Volume>> Volume::replay_in_memory(std::unique_ptr<Volume> volume, const Options& options) {
  const uint32_t bs = volume->block_size();
  auto map = volume->journal_map();
  auto overlay = std::make_unique<io::OverlayDevice>(std::move(volume->device_), bs);
  io::OverlayDevice& replay = *overlay;  // still ours after `device` takes the overlay
  journal::RecoveryReport report;
  std::string problem;
  if (!map.ok()) {
    problem = map.error().message();
  } else {
    journal::RecoveryOptions ropts;
    ropts.fs_blocks = volume->sb_.s_blocks_count;
    auto replayed = journal::recover_journal(replay, bs, *map, ropts);
    Status cleared = replayed.ok() ? journal::clear_needs_recovery(replay, replayed->needs_fsck())
                                   : Status(replayed.error());
    if (cleared.ok()) {
      report = *replayed;
    } else {
      problem = cleared.error().message();
    }
  }
  // A journal that cannot be replayed does not stop reading: the image is
  // shown as it lies, with the reason. So is one whose replay leaves a
  // filesystem that cannot be loaded.
  if (!problem.empty()) replay.discard();
  std::unique_ptr<BlockDevice> device = std::move(overlay);
  auto reloaded = load(device, options);
  if (!reloaded.ok() && problem.empty()) {
    problem = "the replayed filesystem cannot be loaded: " + reloaded.error().message();
    replay.discard();
    reloaded = load(device, options);
  }
  if (!reloaded.ok()) return std::move(reloaded).error();
  if (problem.empty()) (*reloaded)->recovery_ = report;
  (*reloaded)->replayed_in_memory_ = problem.empty();
  (*reloaded)->replay_problem_ = problem;
  return std::move(*reloaded);
}

Volume::~Volume() {
  if (journal_ && !closed_) (void)close();
}

Result<journal::JournalMap> Volume::journal_map() {
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, read_inode(sb_.s_journal_inum));
  UEXT_ASSIGN_OR_RETURN(auto runs, all_mapped_runs(*this, rec));
  std::vector<journal::JournalExtent> extents;
  extents.reserve(runs.size());
  for (const auto& r : runs) extents.push_back({r.logical, r.physical, r.length});
  return journal::JournalMap(std::move(extents));
}

Status Volume::open_for_writing() {
  journal::JournalOptions jopts;
  jopts.commit_interval_ms = options_.commit_interval_ms;
  jopts.use_64bit = sb_.is_64bit();
  jopts.use_csum_v3 = sb_.has_metadata_csum();
  jopts.fs_blocks = sb_.s_blocks_count;
  bool journaled = sb_.has_compat(disk::compat::kHasJournal);
  if (journaled) {
    if (sb_.s_journal_dev != 0 || sb_.s_journal_inum == 0) {
      return Error(ENOTSUP, "cannot open read-write: the journal is on an external device");
    }
    UEXT_ASSIGN_OR_RETURN(auto map, journal_map());
    UEXT_ASSIGN_OR_RETURN(journal_, journal::Journal::open(*device_, *cache_, map, jopts));
  } else {
    journal_ = journal::Journal::open_without_log(*device_, *cache_, jopts);
  }
  // An earlier session's journal aborted (or e2fsck's replay met a failed
  // commit): the image gets a full check next time, as after the kernel.
  const bool journal_recorded_error = journal_->recorded_errno() != 0;
  // Mark the image in use: with a journal, a crash from now on needs a
  // replay; without one, a full check.
  {
    std::lock_guard lock(sb_mu_);
    if (journal_recorded_error) sb_.s_state |= disk::kStateErrors;
    if (journaled) {
      sb_.s_feature_incompat |= disk::incompat::kRecover;
    } else {
      sb_.s_state &= static_cast<uint16_t>(~disk::kStateValid);
    }
    sb_.s_mnt_count++;
    sb_.s_mtime = static_cast<int64_t>(::time(nullptr));
  }
  UEXT_TRY(write_superblock_now());
  UEXT_TRY(device_->flush());
  // The mark is durable: the journal may forget the error.
  if (journal_recorded_error) UEXT_TRY(journal_->clear_recorded_errno());
  return {};
}

Status Volume::write_superblock_now() {
  disk::Superblock sb = superblock_snapshot();
  sb.s_wtime = static_cast<int64_t>(::time(nullptr));
  uint32_t off = superblock_offset_in_block();
  UEXT_ASSIGN_OR_RETURN(BlockRef version, cache_->modify(superblock_block(), false, [&](std::span<std::byte> b) {
    disk::encode_superblock(sb, b.subspan(off, disk::kSuperblockSize));
  }));
  UEXT_TRY(device_->write(superblock_block() * block_size(), *version));
  cache_->unpin(superblock_block(), version);
  return {};
}

Result<journal::Handle> Volume::start(uint32_t credits) {
  if (!journal_) return Error(EROFS, "the filesystem is open read-only");
  if (quota_) credits += quota_->credits();
  return journal_->start(credits);
}

void Volume::set_quota(std::unique_ptr<QuotaFiles> quota) { quota_ = std::move(quota); }

disk::GroupDesc Volume::group_snapshot(uint32_t g) const {
  std::lock_guard lock(sb_mu_);
  return groups_[g];
}

disk::Superblock Volume::superblock_snapshot() const {
  std::lock_guard lock(sb_mu_);
  return sb_;
}

Status Volume::update_group(journal::Handle& handle, uint32_t g,
                            const std::function<void(disk::GroupDesc&)>& change) {
  disk::DescLocation loc = disk::group_desc_location(sb_, g);
  uint32_t desc_size = sb_.desc_size();
  return handle.modify(loc.block, [&](std::span<std::byte> block) {
    std::lock_guard lock(sb_mu_);
    change(groups_[g]);
    disk::encode_group_desc(sb_, g, groups_[g], block.subspan(loc.offset, desc_size));
  });
}

Status Volume::update_superblock(journal::Handle& handle,
                                 const std::function<void(disk::Superblock&)>& change) {
  uint32_t off = superblock_offset_in_block();
  return handle.modify(superblock_block(), [&](std::span<std::byte> block) {
    std::lock_guard lock(sb_mu_);
    change(sb_);
    disk::encode_superblock(sb_, block.subspan(off, disk::kSuperblockSize));
  });
}

Volume::ErrorRecord Volume::make_error_record(std::string_view func, uint32_t ino, uint64_t block, int err) {
  ErrorRecord r;
  r.time = static_cast<int64_t>(::time(nullptr));
  r.ino = ino;
  r.block = block;
  std::copy_n(func.begin(), std::min(func.size(), r.func.size()), r.func.begin());
  r.errcode = disk::error_code_of(err);
  return r;
}

void Volume::stash_error(const ErrorRecord& record) {
  std::lock_guard lock(errors_mu_);
  if (pending_errors_.count++ == 0) pending_errors_.first = record;
  pending_errors_.last = record;
}

Status Volume::record_error(std::string_view op, uint32_t ino, int err) {
  stash_error(make_error_record(op, ino, 0, err));
  return write_pending_errors();
}

Error Volume::found_corrupt(Error err, std::string_view func, uint32_t ino, uint64_t block) {
  if (journal_ && (err.code() == kErrCorrupted || err.code() == kErrBadChecksum)) {
    stash_error(make_error_record(func, ino, block, err.code()));
  }
  return err;
}

Status Volume::write_pending_errors() {
  PendingErrors taken;
  {
    std::lock_guard lock(errors_mu_);
    if (pending_errors_.count == 0) return {};
    taken = pending_errors_;
    pending_errors_ = {};
  }
  auto put = [](const ErrorRecord& r, int64_t& time, uint32_t& ino, uint64_t& block, std::array<char, 32>& func,
                uint32_t& line, uint8_t& errcode) {
    time = r.time;
    ino = r.ino;
    block = r.block;
    func = r.func;
    line = 0;
    errcode = r.errcode;
  };
  bool applied = false;
  auto apply = [&](disk::Superblock& sb) {
    applied = true;
    sb.s_state |= disk::kStateErrors;
    if (sb.s_error_count == 0) {
      put(taken.first, sb.s_first_error_time, sb.s_first_error_ino, sb.s_first_error_block, sb.s_first_error_func,
          sb.s_first_error_line, sb.s_first_error_errcode);
    }
    sb.s_error_count += taken.count;
    put(taken.last, sb.s_last_error_time, sb.s_last_error_ino, sb.s_last_error_block, sb.s_last_error_func,
        sb.s_last_error_line, sb.s_last_error_errcode);
  };
  auto h = start(1);
  Status written = h.ok() ? update_superblock(*h, apply) : Status(h.error());
  Status stopped = h.ok() ? h->stop() : Status();
  if (!applied) {
    // No handle (the journal has failed) or no block: the record stays in
    // the in-memory superblock; the journal's own record of its abort
    // marks the image at the next open.
    std::lock_guard lock(sb_mu_);
    apply(sb_);
  }
  UEXT_TRY(written);
  return stopped;
}

Status Volume::finish_handle(journal::Handle& handle, std::string_view op, uint32_t ino, Status done,
                             Changes changes) {
  Status stopped = handle.stop();
  if (done.ok()) return stopped;
  using Verdict = journal::Handle::Verdict;
  const bool half_made = handle.verdict() == Verdict::kBroken ||
                         (handle.verdict() == Verdict::kNone && changes == Changes::kAllOrNothing);
  if (handle.changed() && half_made) {
    // Recording fails only when no handle can start: the journal has
    // failed, every later change fails too, and the replay of its log at
    // the next open brings back an image without the half-made change.
    (void)record_error(op, ino, done.error().code());
  }
  return done;
}

Result<InodeRecord> Volume::update_inode(journal::Handle& handle, uint32_t ino, bool fresh,
                                         const std::function<void(disk::Inode&)>& change) {
  return update_inode_slot(handle, ino, fresh, [&](disk::Inode& inode, std::span<std::byte>) {
    change(inode);
    return Status();
  });
}

Result<InodeRecord> Volume::update_inode_slot(journal::Handle& handle, uint32_t ino, bool fresh,
                                              const InodeSlotEdit& change) {
  if (ino == 0 || ino > sb_.s_inodes_count) {
    return Error(EINVAL, fmt::format("inode {} is out of range", ino));
  }
  disk::InodeLocation loc = disk::inode_location(sb_, ino);
  uint32_t bs = block_size();
  uint64_t block = loaded_groups_[loc.group].bg_inode_table + loc.table_offset / bs;
  uint32_t in_block = static_cast<uint32_t>(loc.table_offset % bs);
  uint32_t size = sb_.inode_size();
  InodeRecord rec;
  rec.ino = ino;
  Status failure;
  QuotaCharge charged_before;  // a fresh slot held a free inode, charged nothing
  UEXT_TRY(handle.modify(block, [&](std::span<std::byte> data) {
    auto slot = data.subspan(in_block, size);
    // Work on a copy so that a failing `change` leaves the block as it was.
    std::vector<std::byte> work(slot.begin(), slot.end());
    if (fresh) std::fill(work.begin(), work.end(), std::byte{0});
    disk::Inode inode;
    if (!fresh) {
      // Decode without judging the checksum: we are about to rewrite it.
      auto decoded = disk::decode_inode(decode_sb_, ino, slot);
      if (!decoded.ok()) {
        failure = std::move(decoded).error();
        return;
      }
      inode = *decoded;
      if (quota_) charged_before = quota_->charge_of(ino, inode);
    } else if (size > disk::kGoodOldInodeSize) {
      // New inodes get the extra fields the filesystem asks for.
      inode.i_extra_isize = std::max<uint16_t>(sb_.s_want_extra_isize, 32);
    }
    Status changed = change(inode, work);
    if (!changed.ok()) {
      failure = std::move(changed).error();
      return;
    }
    disk::encode_inode(sb_, ino, inode, work);
    std::copy(work.begin(), work.end(), slot.begin());
    rec.inode = inode;
    rec.raw = std::move(work);
  }));
  if (!failure.ok()) return std::move(failure).error().with_context(fmt::format("inode {}", ino));
  if (sb_.has_metadata_csum()) rec.csum_seed = disk::inode_csum_seed(sb_, ino, rec.inode.i_generation);
  if (quota_) quota_->transfer(handle, charged_before, quota_->charge_of(ino, rec.inode));
  return rec;
}

Status Volume::sync() {
  if (!journal_) return {};
  (void)write_pending_errors();  // a failure here is the commit's too
  return journal_->commit();
}

Status Volume::close() {
  if (!journal_ || closed_) return {};
  closed_ = true;
  (void)write_pending_errors();  // else the superblock write below carries them
  UEXT_TRY(journal_->close());
  {
    std::lock_guard lock(sb_mu_);
    sb_.s_feature_incompat &= ~disk::incompat::kRecover;
    if (!sb_.has_compat(disk::compat::kHasJournal)) sb_.s_state |= disk::kStateValid;
  }
  UEXT_TRY(write_superblock_now());
  return device_->flush();
}

Status Volume::load_group_descriptors() {
  uint32_t count = sb_.group_count();
  uint32_t desc_size = sb_.desc_size();
  groups_.reserve(count);
  for (uint32_t g = 0; g < count; ++g) {
    disk::DescLocation loc = disk::group_desc_location(sb_, g);
    UEXT_ASSIGN_OR_RETURN(BlockRef block, read_meta_block(loc.block, "group descriptor table"));
    disk::Bytes raw = disk::Bytes(*block).subspan(loc.offset, desc_size);
    auto gd = disk::decode_group_desc(sb_, g, raw);
    if (!gd.ok() && gd.error().code() == kErrBadChecksum && !verify_checksums()) {
      std::vector<std::byte> fixed(raw.begin(), raw.end());
      uint16_t csum = disk::group_desc_checksum(sb_, g, fixed);
      disk::put_le16(fixed, 0x1E, csum);
      gd = disk::decode_group_desc(sb_, g, fixed);
    }
    if (!gd.ok()) return std::move(gd).error();
    groups_.push_back(*gd);
  }
  loaded_groups_ = groups_;
  return {};
}

Status Volume::check_block_range(uint64_t first, uint64_t count, const std::string& what) const {
  uint64_t end = first + count;
  if (first < sb_.s_first_data_block || end < first || end > sb_.s_blocks_count) {
    return Error(kErrCorrupted,
                 fmt::format("{}: blocks {}..{} lie outside the filesystem (blocks {}..{})", what,
                             first, end - 1, sb_.s_first_data_block, sb_.s_blocks_count - 1));
  }
  return {};
}

Result<BlockRef> Volume::read_meta_block(uint64_t block, const char* what) {
  UEXT_TRY(check_block_range(block, 1, what));
  return cache_->get(block);
}

Result<Volume::InodeSlot> Volume::inode_slot(uint32_t ino) const {
  if (ino == 0 || ino > sb_.s_inodes_count) {
    return Error(kErrCorrupted, fmt::format("inode {} is out of range (the filesystem has {} inodes)",
                                            ino, sb_.s_inodes_count));
  }
  disk::InodeLocation loc = disk::inode_location(sb_, ino);
  const disk::GroupDesc& gd = loaded_groups_[loc.group];
  uint16_t bg_flags;
  uint32_t itable_unused;
  {
    // The allocator changes these as it hands out inodes.
    std::lock_guard lock(sb_mu_);
    bg_flags = groups_[loc.group].bg_flags;
    itable_unused = groups_[loc.group].bg_itable_unused;
  }
  bool csum_groups = sb_.has_metadata_csum() || sb_.has_ro_compat(disk::ro_compat::kGdtCsum);
  uint32_t index_in_group = (ino - 1) % sb_.s_inodes_per_group;
  InodeSlot slot;
  slot.group = loc.group;
  slot.initialised = !(csum_groups && ((bg_flags & disk::kBgInodeUninit) ||
                                       index_in_group >= sb_.s_inodes_per_group - itable_unused));
  slot.block = gd.bg_inode_table + loc.table_offset / block_size();
  slot.offset = static_cast<uint32_t>(loc.table_offset % block_size());
  return slot;
}

Result<bool> Volume::inode_in_use(uint32_t ino, bool allow_unlinked) {
  UEXT_ASSIGN_OR_RETURN(InodeSlot where, inode_slot(ino));
  if (!where.initialised) return false;
  UEXT_ASSIGN_OR_RETURN(BlockRef data, read_meta_block(where.block, "inode table"));
  auto use = disk::peek_inode_use(disk::Bytes(*data).subspan(where.offset, sb_.inode_size()));
  return disk::inode_in_use(use, allow_unlinked);
}

Result<InodeRecord> Volume::read_inode(uint32_t ino, bool allow_unlinked) {
  UEXT_ASSIGN_OR_RETURN(InodeSlot where, inode_slot(ino));
  if (!where.initialised) {
    // The table slot was never initialised: the inode cannot be in use.
    return Error(kErrCorrupted, fmt::format("inode {} is not in use (group {} has not initialised it)",
                                            ino, where.group));
  }
  const uint64_t block = where.block;
  UEXT_ASSIGN_OR_RETURN(BlockRef data, read_meta_block(block, "inode table"));
  disk::Bytes slot = disk::Bytes(*data).subspan(where.offset, sb_.inode_size());

  InodeRecord rec;
  rec.ino = ino;
  rec.raw.assign(slot.begin(), slot.end());
  auto inode = disk::decode_inode(sb_, ino, slot);
  if (!inode.ok() && inode.error().code() == kErrBadChecksum && !verify_checksums()) {
    // Salvage mode: decode what is there without the checksum check.
    disk::Superblock no_csum = sb_;
    no_csum.s_feature_ro_compat &= ~disk::ro_compat::kMetadataCsum;
    inode = disk::decode_inode(no_csum, ino, slot);
  }
  if (!inode.ok()) return found_corrupt(std::move(inode).error(), "read_inode", ino, block);
  rec.inode = *inode;
  if (!disk::inode_in_use({rec.inode.i_mode, rec.inode.i_links_count, rec.inode.i_dtime}, allow_unlinked)) {
    return Error(kErrCorrupted, fmt::format("inode {} is not in use (mode {:o}, links {}, dtime {})",
                                            ino, rec.inode.i_mode, rec.inode.i_links_count,
                                            rec.inode.i_dtime));
  }
  // The kernel's iget refuses these too: nothing above may trust them.
  switch (rec.inode.i_mode & S_IFMT) {
    case S_IFREG: case S_IFDIR: case S_IFLNK: case S_IFCHR: case S_IFBLK: case S_IFIFO: case S_IFSOCK:
      break;
    default:
      return found_corrupt(Error(kErrCorrupted, fmt::format("inode {}: invalid file type in mode {:o}", ino,
                                                            rec.inode.i_mode)),
                           "read_inode", ino, block);
  }
  if (rec.inode.i_size > static_cast<uint64_t>(INT64_MAX)) {
    return found_corrupt(Error(kErrCorrupted, fmt::format("inode {}: bad size {} (negative as a signed file size)",
                                                          ino, rec.inode.i_size)),
                         "read_inode", ino, block);
  }
  if (sb_.has_metadata_csum()) {
    rec.csum_seed = disk::inode_csum_seed(sb_, ino, rec.inode.i_generation);
  }
  return rec;
}

}  // namespace uext::fs
