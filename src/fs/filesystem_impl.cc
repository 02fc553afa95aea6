// The reading half of the Filesystem API: lookups, attributes, file data,
// directories, symlinks and extended attributes. Readers take the inode's
// lock shared, so they never see a change half-made.
#include "fs/filesystem_impl.h"

#include <sys/stat.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <deque>

#include "disk/dirent.h"
#include "disk/jbd2.h"
#include "disk/xattr.h"
#include "fs/block_map.h"
#include "fs/directory.h"
#include "fs/posix_acl.h"
#include "fs/volume.h"
#include "io/partition_reader.h"
#include "journal/recovery.h"
#include "uext/filesystem.h"
#include "vm/registry.h"

namespace uext::fs {
namespace {

constexpr int kMaxSymlinkFollows = 40;
constexpr uint64_t kMaxSymlinkSize = 4095;

Time to_time(const disk::Timestamp& t) { return {t.sec, t.nsec}; }

uint32_t mode_from_ftype(uint8_t ftype) {
  switch (ftype) {
    case disk::ftype::kRegular: return S_IFREG;
    case disk::ftype::kDirectory: return S_IFDIR;
    case disk::ftype::kCharDev: return S_IFCHR;
    case disk::ftype::kBlockDev: return S_IFBLK;
    case disk::ftype::kFifo: return S_IFIFO;
    case disk::ftype::kSocket: return S_IFSOCK;
    case disk::ftype::kSymlink: return S_IFLNK;
    default: return 0;
  }
}

const char* hash_name(uint8_t version) {
  static const char* const names[] = {"legacy", "half_md4", "tea", "legacy_unsigned",
                                      "half_md4_unsigned", "tea_unsigned", "siphash"};
  return version < std::size(names) ? names[version] : "unknown";
}

std::string state_name(uint16_t state) {
  std::string s = (state & disk::kStateValid) ? "clean" : "not clean";
  if (state & disk::kStateErrors) s += " with errors";
  if (state & disk::kStateOrphans) s += " (orphans being recovered)";
  return s;
}

}  // namespace

FilesystemImpl::FilesystemImpl(std::unique_ptr<Volume> volume) : vol_(std::move(volume)) {}


VolumeInfo FilesystemImpl::info() const {
  const disk::Superblock sb = vol_->superblock_snapshot();
  VolumeInfo v;
  v.label = sb.volume_name();
  v.uuid = sb.uuid_string();
  v.block_size = sb.block_size();
  v.blocks_count = sb.s_blocks_count;
  v.free_blocks = sb.s_free_blocks_count;
  v.reserved_blocks = sb.s_r_blocks_count;
  v.inodes_count = sb.s_inodes_count;
  v.free_inodes = sb.s_free_inodes_count;
  v.inode_size = sb.inode_size();
  v.group_count = sb.group_count();
  v.blocks_per_group = sb.s_blocks_per_group;
  v.inodes_per_group = sb.s_inodes_per_group;
  v.features = disk::feature_names(sb.s_feature_compat, sb.s_feature_ro_compat,
                                   sb.s_feature_incompat);
  v.state = state_name(sb.s_state);
  v.errors_behavior = sb.s_errors;
  // A writable volume sets needs_recovery itself while open; only a
  // read-only one can be looking at an unreplayed journal.
  v.needs_recovery = !vol_->writable() && sb.has_incompat(disk::incompat::kRecover);
  v.read_only = !vol_->writable();
  v.replayed_transactions = vol_->recovery().transactions;
  v.replayed_in_memory = vol_->replayed_in_memory();
  v.replay_problem = vol_->replay_problem();
  v.read_only_reason = vol_->features().read_only_reason;
  v.mkfs_time = sb.s_mkfs_time;
  v.mount_time = sb.s_mtime;
  v.write_time = sb.s_wtime;
  v.mount_count = sb.s_mnt_count;
  v.journal_inum = sb.has_compat(disk::compat::kHasJournal) ? sb.s_journal_inum : 0;
  if (sb.has_ro_compat(disk::ro_compat::kQuota)) {
    v.user_quota_inum = sb.s_usr_quota_inum;
    v.group_quota_inum = sb.s_grp_quota_inum;
    v.project_quota_inum = sb.s_prj_quota_inum;
  }
  v.journal = journal_;
  v.default_hash = hash_name(sb.s_def_hash_version);
  v.error_count = sb.s_error_count;
  auto record = [](int64_t time, const std::array<char, 32>& func, uint32_t line, uint32_t ino, uint64_t block,
                   uint8_t code) {
    VolumeInfo::ErrorRecord r;
    r.time = time;
    r.function.assign(func.data(), std::find(func.begin(), func.end(), '\0') - func.begin());
    r.line = line;
    r.ino = ino;
    r.block = block;
    r.err = disk::error_code_name(code);
    return r;
  };
  v.first_error = record(sb.s_first_error_time, sb.s_first_error_func, sb.s_first_error_line, sb.s_first_error_ino,
                         sb.s_first_error_block, sb.s_first_error_errcode);
  v.last_error = record(sb.s_last_error_time, sb.s_last_error_func, sb.s_last_error_line, sb.s_last_error_ino,
                        sb.s_last_error_block, sb.s_last_error_errcode);
  return v;
}

// Reads the journal superblock and scans the log without writing. A
// damaged journal does not stop read-only use; info() reports it.
void FilesystemImpl::load_journal_info() {
  const disk::Superblock& sb = vol_->sb();
  if (!sb.has_compat(disk::compat::kHasJournal) || sb.s_journal_inum == 0) return;
  journal_.present = true;
  auto fail = [&](const Error& e) { journal_.problem = e.message(); };
  auto rec = load_inode(sb.s_journal_inum);
  if (!rec.ok()) return fail(rec.error());
  auto runs = fs::all_mapped_runs(*vol_, *rec);
  if (!runs.ok()) return fail(runs.error());
  std::vector<journal::JournalExtent> extents;
  for (const auto& r : *runs) extents.push_back({r.logical, r.physical, r.length});
  journal::JournalMap map(std::move(extents));
  auto first = map.physical(0);
  if (!first) return fail(Error(kErrCorrupted, "journal inode: block 0 is not mapped"));
  std::vector<std::byte> raw(vol_->block_size());
  Status read = vol_->device().read(*first * vol_->block_size(), raw);
  if (!read.ok()) return fail(read.error());
  auto jsb = disk::decode_journal_superblock(raw, vol_->block_size(), map.mapped_prefix());
  if (!jsb.ok()) return fail(jsb.error());
  journal_.blocks = jsb->s_maxlen;
  journal_.sequence = jsb->s_sequence;
  journal_.start = jsb->s_start;
  journal_.recorded_errno = jsb->s_errno;
  if (jsb->s_start == 0) return;
  journal::RecoveryOptions options;
  options.fs_blocks = sb.s_blocks_count;
  auto report = journal::inspect_journal(vol_->device(), vol_->block_size(), map, options);
  if (!report.ok()) return fail(report.error());
  journal_.pending_transactions = report->transactions;
  journal_.pending_blocks = report->blocks_replayed;
}


Result<Ino> FilesystemImpl::lookup(Ino dir, std::string_view name) {
  auto lock = itable_.lock_shared(dir);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(dir));
  return lookup_in(rec, name);
}

Result<Ino> FilesystemImpl::resolve(std::string_view path, bool follow_last) {
  if (path.empty() || path[0] != '/') {
    return Error(EINVAL, fmt::format("{}: path must be absolute", path));
  }
  std::deque<std::string> pending = split(path);
  Ino current = kRootIno;
  int follows = 0;
  while (!pending.empty()) {
    std::string name = std::move(pending.front());
    pending.pop_front();
    if (name.size() > disk::kNameMax) return Error(ENAMETOOLONG, fmt::format("{}: File name too long", name));
    UEXT_ASSIGN_OR_RETURN(InodeRecord dir, load_inode(current));
    UEXT_ASSIGN_OR_RETURN(Ino next, lookup_in(dir, name));
    UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(next));
    bool last = pending.empty();
    if (S_ISLNK(rec.inode.i_mode) && (!last || follow_last)) {
      if (++follows > kMaxSymlinkFollows) {
        return Error(ELOOP, fmt::format("{}: Too many levels of symbolic links", path));
      }
      UEXT_ASSIGN_OR_RETURN(std::string target, read_symlink(rec));
      if (target.empty()) return Error(ENOENT, fmt::format("{}: empty symbolic link", path));
      std::deque<std::string> parts = split(target);
      pending.insert(pending.begin(), parts.begin(), parts.end());
      if (target[0] == '/') current = kRootIno;
      continue;
    }
    current = next;
  }
  return current;
}

Result<Stat> FilesystemImpl::stat(Ino ino) {
  auto lock = itable_.lock_shared(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  Stat st = to_stat(vol_->sb(), rec);
  overlay_cached(st);
  return st;
}

Stat FilesystemImpl::to_stat(const disk::Superblock& sb, const InodeRecord& rec) {
  const disk::Inode& in = rec.inode;
  Stat st;
  st.ino = rec.ino;
  st.mode = in.i_mode;
  st.nlink = in.i_links_count;
  st.uid = in.i_uid;
  st.gid = in.i_gid;
  st.size = in.i_size;
  st.blocks = disk::inode_blocks_512(sb, in);
  if (S_ISCHR(in.i_mode) || S_ISBLK(in.i_mode)) {
    disk::DeviceNumber dev = disk::inode_device(in);
    st.rdev_major = dev.major;
    st.rdev_minor = dev.minor;
  }
  st.atime = to_time(in.i_atime);
  st.mtime = to_time(in.i_mtime);
  st.ctime = to_time(in.i_ctime);
  st.crtime = to_time(in.i_crtime);
  st.flags = in.i_flags;
  st.generation = in.i_generation;
  return st;
}

Result<size_t> FilesystemImpl::read(Ino ino, uint64_t offset, std::span<std::byte> buf) {
  ReadOptions options;
  return read(ino, offset, buf, options);
}

Result<size_t> FilesystemImpl::read(Ino ino, uint64_t offset, std::span<std::byte> buf, ReadOptions& options) {
  options.atime_due = false;
  if (vm::in_mapping(buf.data(), buf.size())) return bounce_read(ino, offset, buf, options);
  auto lock = itable_.lock_shared(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  if (S_ISDIR(rec.inode.i_mode)) return Error(EISDIR, fmt::format("inode {}: Is a directory", ino));
  if (!S_ISREG(rec.inode.i_mode)) {
    return Error(EINVAL, fmt::format("inode {}: not a regular file", ino));
  }
  // Whether the read is due to change atime is found out here, under the
  // locks the read takes anyway, so that the many reads that are not due
  // cost nothing more (touch_atime would take them again).
  const bool check_atime = options.atime != AtimeUpdate::kNever && vol_->writable();
  auto file = cache_ ? cache_->get(ino, false) : nullptr;
  if (!file) {
    UEXT_ASSIGN_OR_RETURN(size_t n, read_data(rec, offset, buf));
    if (check_atime) options.atime_due = atime_due_for(to_stat(vol_->sb(), rec), options.atime, now());
    return n;
  }
  // The cache is newer than the disk: read the disk, then lay the cached
  // pages over it, all under the file's page mutex so writeback cannot
  // move data between the two meanwhile.
  std::lock_guard page_lock(file->mu);
  if (check_atime) {
    Stat st = to_stat(vol_->sb(), rec);
    overlay_locked(st, *file);
    options.atime_due = atime_due_for(st, options.atime, now());
  }
  if (file->size_known) rec.inode.i_size = file->size;
  const uint64_t size = rec.inode.i_size;
  if (offset >= size || buf.empty()) return size_t{0};
  const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - offset));
  const uint64_t end = offset + n;
  // Cached pages are whole and newer than the disk: they are copied, and
  // only the stretches between them are read from the disk (a page fault
  // through FUSE reads one page that is nearly always cached).
  // A run of cached pages is copied with one pread from the memfd.
  uint64_t pos = offset;  // bytes before pos are filled
  auto fill_from_disk = [&](uint64_t until) -> Status {
    if (until <= pos) return {};
    UEXT_TRY(read_data(rec, pos, buf.subspan(pos - offset, until - pos)));
    pos = until;
    return {};
  };
  uint64_t run_from = 0, run_to = 0;  // cached bytes [run_from, run_to) not yet copied
  auto copy_run = [&]() -> Status {
    if (run_to <= run_from) return {};
    UEXT_TRY(file->copy_out(run_from, buf.subspan(run_from - offset, run_to - run_from)));
    pos = run_to;
    run_from = run_to = 0;
    return {};
  };
  for (auto it = file->pages().lower_bound(offset / cache::kPageSize);
       it != file->pages().end() && it->first * cache::kPageSize < end; ++it) {
    const uint64_t page_start = it->first * cache::kPageSize;
    const uint64_t from = std::max(offset, page_start);
    const uint64_t to = std::min(end, page_start + cache::kPageSize);
    if (run_to != from) {
      UEXT_TRY(copy_run());
      UEXT_TRY(fill_from_disk(from));
      run_from = from;
    }
    run_to = to;
  }
  UEXT_TRY(copy_run());
  UEXT_TRY(fill_from_disk(end));
  file->last_used_ms = cache::PageCache::now_ms();
  return n;
}

void FilesystemImpl::overlay_cached(Stat& st) {
  auto file = cache_ ? cache_->get(st.ino, false) : nullptr;
  if (!file) return;
  std::lock_guard page_lock(file->mu);
  overlay_locked(st, *file);
}

void FilesystemImpl::overlay_locked(Stat& st, const cache::CachedFile& file) {
  if (file.size_known) st.size = file.size;
  if (file.times_pending) {
    // The write's time is the mtime; ctime is whichever change came last
    // (a chmod after the write moves it on).
    const Time w{file.mtime_sec, file.mtime_nsec};
    st.mtime = w;
    if (w.sec > st.ctime.sec || (w.sec == st.ctime.sec && w.nsec > st.ctime.nsec)) st.ctime = w;
  }
  // Delayed blocks count in st_blocks already, as the kernel reports them.
  st.blocks += file.delayed_pages() * (cache::kPageSize / 512);
}

Status FilesystemImpl::readdir(Ino dir, uint64_t cookie, const DirVisitor& visit) {
  // Entries are gathered in batches under the directory's lock and handed
  // to `visit` without it, so that the visitor may call back into the
  // filesystem (stat each entry, as readdirplus does).
  constexpr size_t kBatch = 256;
  std::vector<std::pair<DirEntry, uint64_t>> batch;
  for (;;) {
    batch.clear();
    bool more = false;
    {
      auto lock = itable_.lock_shared(dir);
      UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(dir));
      if (!S_ISDIR(rec.inode.i_mode)) return Error(ENOTDIR, fmt::format("inode {}: Not a directory", dir));
      UEXT_TRY(fs::dir_iterate(*vol_, rec, cookie, [&](const disk::DirentView& e, uint64_t next) {
        if (batch.size() == kBatch) {
          more = true;
          return false;
        }
        DirEntry entry;
        entry.ino = e.inode;
        entry.type = mode_from_ftype(e.file_type);
        entry.name.assign(e.name);
        batch.emplace_back(std::move(entry), next);
        return true;
      }));
    }
    for (const auto& [entry, next] : batch) {
      if (!visit(entry, next)) return {};
    }
    if (!more) return {};
    cookie = batch.back().second;
  }
}

Result<std::string> FilesystemImpl::readlink(Ino ino) {
  auto lock = itable_.lock_shared(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  if (!S_ISLNK(rec.inode.i_mode)) return Error(EINVAL, fmt::format("inode {}: not a symbolic link", ino));
  return read_symlink(rec);
}

Result<std::vector<std::string>> FilesystemImpl::listxattr(Ino ino) {
  auto lock = itable_.lock_shared(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  UEXT_ASSIGN_OR_RETURN(auto attrs, read_xattrs(rec));
  std::vector<std::string> names;
  names.reserve(attrs.size());
  const bool acls = vol_->options().posix_acl;
  for (auto& a : attrs) {
    // noacl hides ACLs, as ext4's handlers do without SB_POSIXACL.
    if (!acls && (a.name == kAclAccessName || a.name == kAclDefaultName)) continue;
    names.push_back(std::move(a.name));
  }
  return names;
}

Result<std::string> FilesystemImpl::getxattr(Ino ino, std::string_view name) {
  if (!vol_->options().posix_acl && (name == kAclAccessName || name == kAclDefaultName)) {
    return Error(EOPNOTSUPP, fmt::format("inode {}: {}: POSIX ACLs are off (noacl)", ino, name));
  }
  auto lock = itable_.lock_shared(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  UEXT_ASSIGN_OR_RETURN(auto attrs, read_xattrs(rec));
  for (auto& a : attrs) {
    if (a.name == name) return std::move(a.value);
  }
  return Error(ENODATA, fmt::format("inode {}: no attribute {}", ino, name));
}

Result<std::vector<FileExtent>> FilesystemImpl::extents(Ino ino) {
  // Delayed pages have no extents yet: write them back first.
  auto lock = itable_.lock(ino);
  UEXT_TRY(writeback_inode(ino));
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  std::vector<FileExtent> out;
  if (!has_block_map(rec)) return out;
  UEXT_ASSIGN_OR_RETURN(auto runs, fs::all_mapped_runs(*vol_, rec));
  uint64_t bs = vol_->block_size();
  out.reserve(runs.size());
  for (const auto& r : runs) {
    out.push_back({r.logical * bs, r.physical * bs, r.length * bs, r.unwritten});
  }
  return out;
}

std::deque<std::string> FilesystemImpl::split(std::string_view path) {
  std::deque<std::string> parts;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    if (j > i) parts.emplace_back(path.substr(i, j - i));
    i = j + 1;
  }
  return parts;
}

Result<Ino> FilesystemImpl::lookup_in(const InodeRecord& dir, std::string_view name) {
  if (!S_ISDIR(dir.inode.i_mode)) {
    return Error(ENOTDIR, fmt::format("inode {}: Not a directory", dir.ino));
  }
  if (name.size() > disk::kNameMax) return Error(ENAMETOOLONG, fmt::format("{}: File name too long", name));
  UEXT_ASSIGN_OR_RETURN(auto found, fs::dir_lookup(*vol_, dir, name));
  if (!found) return Error(ENOENT, fmt::format("{}: No such file or directory", name));
  // An entry may name the root, the journal, the resize inode or an
  // ordinary inode (ext4_valid_inum); anything else is a damaged entry,
  // recorded as ext4's lookup records it.
  const disk::Superblock& sb = vol_->sb();
  const uint32_t ino = found->ino;
  if (ino != disk::kRootIno && ino != disk::kJournalIno && ino != disk::kResizeIno &&
      (ino < sb.s_first_ino || ino > sb.s_inodes_count)) {
    return vol_->found_corrupt(Error(kErrCorrupted, fmt::format("directory inode {}: entry \"{}\" names inode {}, "
                                                                "which no entry may name (first {}, last {})",
                                                                dir.ino, name, ino, sb.s_first_ino,
                                                                sb.s_inodes_count)),
                               "lookup", dir.ino, 0);
  }
  // An entry naming a free inode is the directory's damage (ext4_lookup's
  // "deleted inode referenced"); the inode's own damage is found when it is
  // read, so this check records nothing else.
  UEXT_ASSIGN_OR_RETURN(bool in_use, vol_->inode_in_use(ino, orphans_.contains(ino)));
  if (!in_use) {
    return vol_->found_corrupt(Error(kErrCorrupted, fmt::format("directory inode {}: entry \"{}\" names inode {}, "
                                                                "which is not in use (deleted inode referenced)",
                                                                dir.ino, name, ino)),
                               "lookup", dir.ino, 0);
  }
  return ino;
}

// Whether i_block holds a block map (devices, fifos, sockets and fast
// symlinks keep other things there).
bool FilesystemImpl::has_block_map(const InodeRecord& rec) const {
  uint16_t mode = rec.inode.i_mode;
  if (S_ISREG(mode) || S_ISDIR(mode)) return true;
  return S_ISLNK(mode) && !disk::is_fast_symlink(vol_->sb(), rec.inode);
}

Result<size_t> FilesystemImpl::read_data(const InodeRecord& rec, uint64_t offset, std::span<std::byte> buf) {
  uint64_t size = rec.inode.i_size;
  if (offset >= size || buf.empty()) return size_t{0};
  uint64_t len = std::min<uint64_t>(buf.size(), size - offset);
  uint64_t bs = vol_->block_size();
  uint64_t first = offset / bs;
  uint64_t last = (offset + len - 1) / bs;
  uint64_t max_blocks = fs::max_logical_blocks(*vol_, rec);
  if (first >= max_blocks) {
    std::memset(buf.data(), 0, len);
    return static_cast<size_t>(len);
  }
  last = std::min(last, max_blocks - 1);
  UEXT_ASSIGN_OR_RETURN(auto runs, fs::map_blocks(*vol_, rec, first, last - first + 1));
  uint64_t done = 0;
  for (const auto& run : runs) {
    uint64_t run_start = std::max(run.logical * bs, offset);
    uint64_t run_end = std::min((run.logical + run.length) * bs, offset + len);
    if (run_start >= run_end) continue;
    std::span<std::byte> dst = buf.subspan(run_start - offset, run_end - run_start);
    if (run.physical == 0 || run.unwritten) {
      std::memset(dst.data(), 0, dst.size());
    } else {
      uint64_t device_offset = run.physical * bs + (run_start - run.logical * bs);
      UEXT_TRY(vol_->device().read(device_offset, dst));
    }
    done = run_end - offset;
  }
  // Blocks past the addressable range (only on corrupt sizes) read as zeros.
  if (done < len) std::memset(buf.data() + done, 0, len - done);
  return static_cast<size_t>(len);
}

Result<std::string> FilesystemImpl::read_symlink(const InodeRecord& rec) {
  uint64_t size = rec.inode.i_size;
  if (disk::is_fast_symlink(vol_->sb(), rec.inode)) {
    auto bytes = rec.inode.i_block_bytes();
    if (size > bytes.size()) {
      return vol_->found_corrupt(Error(kErrCorrupted, fmt::format("inode {}: fast symlink of size {} exceeds i_block",
                                                                rec.ino, size)),
                                 "read_symlink", rec.ino, 0);
    }
    return std::string(reinterpret_cast<const char*>(bytes.data()), size);
  }
  if (size > kMaxSymlinkSize || size > vol_->block_size()) {
    return vol_->found_corrupt(Error(kErrCorrupted, fmt::format("inode {}: symlink size {} is larger than a block",
                                                              rec.ino, size)),
                               "read_symlink", rec.ino, 0);
  }
  std::string target(size, '\0');
  UEXT_TRY(read_data(rec, 0, std::as_writable_bytes(std::span(target))));
  return target;
}

Result<std::vector<disk::Xattr>> FilesystemImpl::read_xattrs(const InodeRecord& rec) {
  std::vector<disk::Xattr> attrs;
  size_t in_inode_start = disk::kGoodOldInodeSize + rec.inode.i_extra_isize;
  if (rec.raw.size() > disk::kGoodOldInodeSize && in_inode_start < rec.raw.size()) {
    disk::Bytes area = disk::Bytes(rec.raw).subspan(in_inode_start);
    auto parsed = disk::parse_inode_xattrs(area);
    if (!parsed.ok()) {
      return vol_->found_corrupt(
          std::move(parsed).error().with_context(fmt::format("inode {}: in-inode xattrs", rec.ino)), "read_xattrs",
          rec.ino, 0);
    }
    attrs = std::move(*parsed);
  }
  if (rec.inode.i_file_acl != 0) {
    uint64_t block = rec.inode.i_file_acl;
    std::string where = fmt::format("inode {}: xattr block {}", rec.ino, block);
    auto bad = [&](Error err) { return vol_->found_corrupt(std::move(err).with_context(where), "read_xattrs", rec.ino, block); };
    auto data = vol_->read_meta_block(block, "xattr block");
    if (!data.ok()) return bad(std::move(data).error());
    if (vol_->verify_checksums()) {
      Status ok = disk::verify_xattr_block_checksum(vol_->sb().csum_seed(), block, **data);
      if (!ok.ok()) return bad(std::move(ok).error());
    }
    auto parsed = disk::parse_xattr_block(**data);
    if (!parsed.ok()) return bad(std::move(parsed).error());
    for (auto& a : *parsed) attrs.push_back(std::move(a));
  }
  for (const auto& a : attrs) {
    if (a.value_inum != 0) {
      return Error(ENOTSUP, fmt::format("inode {}: xattr {} keeps its value in inode {} "
                                        "(ea_inode is not supported)", rec.ino, a.name, a.value_inum));
    }
  }
  return attrs;
}

}  // namespace uext::fs

namespace uext {

using fs::FilesystemImpl;

namespace {

// When an image that is no filesystem at its start holds a partition
// table, the partitions and their offsets: what to tell a user who gave a
// whole-disk image. Empty when there is none.
std::string partition_hint(const std::string& image_path) {
  const io::PartitionTable table = io::read_partition_table(image_path);
  if (table.kind.empty()) return {};
  return fmt::format("; the image starts with {} partition table, not a filesystem: partition {}; give the "
                     "partition (uext mount -o partition=N, or --partition N) or its offset",
                     table.kind == "GPT" ? "a GPT" : "an MBR", io::describe_partitions(table));
}

}  // namespace


Result<std::unique_ptr<Filesystem>> Filesystem::open(const std::string& image_path,
                                                     const Options& options) {
  ImageFileOptions io;
  io.read_only = options.read_only;
  io.direct_io = options.direct_io;
  io.offset = options.image_offset;
  io.size_limit = options.image_size_limit;
  if (options.image_partition != 0) {
    // A partition by number: its start and length from the table.
    if (options.image_offset != 0 || options.image_size_limit != 0) {
      return Error(EINVAL, image_path + ": give a partition or an offset, not both");
    }
    const io::PartitionTable table = io::read_partition_table(image_path);
    if (table.kind.empty()) return Error(EINVAL, image_path + ": no MBR or GPT partition table at its start");
    auto it = std::find_if(table.partitions.begin(), table.partitions.end(),
                           [&](const disk::Partition& p) { return p.number == options.image_partition; });
    if (it == table.partitions.end()) {
      return Error(EINVAL, fmt::format("{}: no partition {} in its {} partition table (partition {})", image_path,
                                       options.image_partition, table.kind, io::describe_partitions(table)));
    }
    io.offset = it->offset;
    io.size_limit = it->size;
  }
  UEXT_ASSIGN_OR_RETURN(auto device, open_image_file(image_path, io));
  auto fs = open(std::move(device), options);
  if (!fs.ok()) {
    Error err = std::move(fs).error();
    if (options.image_offset == 0 && options.image_partition == 0) {
      if (std::string hint = partition_hint(image_path); !hint.empty()) {
        err = Error(err.code(), err.message() + hint);
      }
    }
    if (options.image_partition != 0) {
      return std::move(err).with_context(fmt::format("partition {}", options.image_partition)).with_context(image_path);
    }
    return std::move(err).with_context(image_path);
  }
  return fs;
}

Result<std::unique_ptr<Filesystem>> Filesystem::open(std::unique_ptr<BlockDevice> device,
                                                     const Options& options) {
  UEXT_ASSIGN_OR_RETURN(auto volume, fs::Volume::open(std::move(device), options));
  auto fs = std::make_unique<FilesystemImpl>(std::move(volume));
  if (options.read_only) {
    fs->load_journal_info();
    fs->make_page_cache();  // for mappings
  } else {
    UEXT_TRY(fs->start_writing());
  }
  return std::unique_ptr<Filesystem>(std::move(fs));
}

Result<Stat> Filesystem::create(Ino dir, std::string_view name, uint32_t mode, const Owner& owner) {
  return mknod(dir, name, (mode & 07777) | S_IFREG, owner);
}

Status Filesystem::truncate(Ino ino, uint64_t size) {
  SetAttr attr;
  attr.size = size;
  auto st = setattr(ino, attr);
  if (!st.ok()) return std::move(st).error();
  return {};
}

Result<std::vector<DirEntry>> Filesystem::list_directory(Ino dir) {
  std::vector<DirEntry> entries;
  UEXT_TRY(readdir(dir, 0, [&](const DirEntry& e, uint64_t) {
    entries.push_back(e);
    return true;
  }));
  return entries;
}

}  // namespace uext
