#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 12)
#include "fuse/fuse_daemon.h"

#include <fcntl.h>
#include <malloc.h>
#include <fuse_lowlevel.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <fmt/core.h>

#include "fuse/image_guard.h"
#include "fuse/killpriv.h"
#include "fuse/mountinfo.h"
#include "fuse/request_caller.h"
#include "fuse/request_loop.h"
#include "fuse/uring_transport.h"
#include "uext/filesystem.h"

namespace uext::fuse {
namespace {

// ------------------------------------------------------------------ logging

// Diagnostics go to stderr in the foreground, to syslog as a daemon (whose
// stderr is /dev/null), or to -o logfile.
class Log {
 public:
  void to_stderr() { mode_ = kStderr; }
  void to_syslog() {
    ::openlog("uext", LOG_PID, LOG_DAEMON);
    mode_ = kSyslog;
  }
  bool to_file(const std::string& path) {
    file_ = std::fopen(path.c_str(), "ae");
    if (!file_) return false;
    std::setvbuf(file_, nullptr, _IOLBF, 0);
    mode_ = kFile;
    return true;
  }

  void line(int priority, const std::string& text) {
    std::lock_guard lock(mu_);
    switch (mode_) {
      case kSyslog: ::syslog(priority, "%s", text.c_str()); break;
      case kFile: {
        char stamp[32];
        std::time_t t = std::time(nullptr);
        std::tm tm{};
        ::localtime_r(&t, &tm);
        std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
        std::fprintf(file_, "%s uext[%d]: %s\n", stamp, static_cast<int>(::getpid()), text.c_str());
        break;
      }
      case kStderr: std::fprintf(stderr, "uext: %s\n", text.c_str()); break;
    }
  }
  void info(const std::string& text) { line(LOG_INFO, text); }
  void error(const std::string& text) { line(LOG_ERR, text); }

 private:
  enum Mode { kStderr, kSyslog, kFile };
  std::mutex mu_;
  Mode mode_ = kStderr;
  FILE* file_ = nullptr;
};

// ------------------------------------------------------------------ names

// The last name the kernel learnt for each inode it holds, with its lookup
// count: enough to name a file by path in error messages. Hard links keep
// whichever name was seen last.
class NameTable {
 public:
  void add(Ino ino, Ino parent, std::string_view name) {
    std::lock_guard lock(mu_);
    auto& n = nodes_[ino];
    ++n.lookups;
    n.parent = parent;
    n.name.assign(name);
  }
  void forget(Ino ino, uint64_t count) {
    std::lock_guard lock(mu_);
    auto it = nodes_.find(ino);
    if (it == nodes_.end()) return;
    if (it->second.lookups <= count) nodes_.erase(it);
    else it->second.lookups -= count;
  }
  // After a rename: the inode now known under `name` in `parent`.
  void renamed(Ino ino, Ino parent, std::string_view name) {
    std::lock_guard lock(mu_);
    auto it = nodes_.find(ino);
    if (it == nodes_.end()) return;
    it->second.parent = parent;
    it->second.name.assign(name);
  }
  std::string path(Ino ino) {
    if (ino == kRootIno) return "/";
    std::lock_guard lock(mu_);
    std::string p;
    Ino cur = ino;
    for (int depth = 0; depth < 256 && cur != kRootIno; ++depth) {
      auto it = nodes_.find(cur);
      if (it == nodes_.end()) return fmt::format("inode {}", ino);
      p = "/" + it->second.name + p;
      cur = it->second.parent;
    }
    return cur == kRootIno ? p : fmt::format("inode {}", ino);
  }
  std::string path(Ino parent, std::string_view name) {
    std::string dir = path(parent);
    if (dir.rfind("inode ", 0) == 0) return fmt::format("{}/{}", dir, name);
    return dir == "/" ? "/" + std::string(name) : dir + "/" + std::string(name);
  }

 private:
  struct Node {
    uint64_t lookups = 0;
    Ino parent = 0;
    std::string name;
  };
  std::mutex mu_;
  std::unordered_map<Ino, Node> nodes_;
};

// ------------------------------------------------------------------ capabilities

// The kernel asks for security.capability before every write() (to drop
// file capabilities, as it does for ext4), and FUSE cannot cache the answer,
// so it costs a request per write. Almost no file has one; this remembers
// which inodes have none, so those requests are answered without the
// library. Every change of the attribute comes through this daemon and
// drops the inode first; the generation keeps a lookup that raced with such
// a change from recording a stale "none".
bool is_caps_name(const char* name) { return std::strcmp(name, "security.capability") == 0; }

class NoCapsCache {
 public:
  // Whether `ino` is known to have no capability attribute; else `gen` is
  // what add() needs.
  bool known(Ino ino, uint64_t& gen) {
    std::lock_guard lock(mu_);
    gen = gen_;
    return inodes_.count(ino) != 0;
  }
  void add(Ino ino, uint64_t gen) {
    std::lock_guard lock(mu_);
    if (gen != gen_) return;
    if (inodes_.size() >= kMax) inodes_.clear();  // a bound, not an LRU: refilling is cheap
    inodes_.insert(ino);
  }
  void drop(Ino ino) {
    std::lock_guard lock(mu_);
    ++gen_;
    inodes_.erase(ino);
  }

 private:
  static constexpr size_t kMax = 1u << 20;
  std::mutex mu_;
  uint64_t gen_ = 0;
  std::unordered_set<Ino> inodes_;
};

// ------------------------------------------------------------------ open files

// One open file description (fi->fh of a regular file). Linux keeps a
// writeback-error sample in each struct file, so that every description
// open when writeback failed hears of it from its next fsync, once; the
// library keeps the errors (errseq), each description its sample, taken
// at open. close() reports nothing, as on ext4 (no FLUSH is asked for).
struct OpenFile {
  OpenFile(Ino i, uint64_t sample) : ino(i), wb_err_seen(sample) {}
  Ino ino;
  std::mutex mu;  // one fsync of a description at a time updates the sample
  uint64_t wb_err_seen;
};

// The descriptions the kernel holds. Each goes with its RELEASE, but one
// whose RELEASE was still queued when the session ended (a close() just
// before the unmount: the kernel sends RELEASE in the background) is never
// answered; those go with the daemon.
class OpenFiles {
 public:
  OpenFile* add(Ino ino, uint64_t sample) {
    auto file = std::make_unique<OpenFile>(ino, sample);
    OpenFile* raw = file.get();
    std::lock_guard lock(mu_);
    live_.emplace(raw, std::move(file));
    return raw;
  }
  void remove(OpenFile* file) {
    std::unique_ptr<OpenFile> gone;  // freed outside the lock
    std::lock_guard lock(mu_);
    auto it = live_.find(file);
    if (it == live_.end()) return;
    gone = std::move(it->second);
    live_.erase(it);
  }

 private:
  std::mutex mu_;
  std::unordered_map<OpenFile*, std::unique_ptr<OpenFile>> live_;
};

// ------------------------------------------------------------------ the daemon

Ino to_ext(fuse_ino_t ino) { return ino == FUSE_ROOT_ID ? kRootIno : static_cast<Ino>(ino); }
fuse_ino_t to_fuse(Ino ino) { return ino == kRootIno ? FUSE_ROOT_ID : static_cast<fuse_ino_t>(ino); }

bool serious(int code) { return code == EIO || code == kErrCorrupted || code == kErrBadChecksum || code == ENOMEM; }

class Daemon {
 public:
  Daemon(std::unique_ptr<Filesystem> fs, const MountOptions& opts, Log& log)
      : fs_(std::move(fs)), opts_(opts), log_(log) {
    block_size_ = fs_->info().block_size;
    std::error_code ec;
    auto abs = std::filesystem::absolute(opts_.image, ec);
    image_path_ = ec ? opts_.image : abs.lexically_normal().string();
  }

  Filesystem& fs() { return *fs_; }
  std::unique_ptr<Filesystem> take_fs() { return std::move(fs_); }
  void set_session(fuse_session* se) { se_ = se; }
  bool panicked() const { return panicked_.load(); }
  Log& log() { return log_; }
  const MountOptions& opts() const { return opts_; }

  static Daemon& of(fuse_req_t req) { return *static_cast<Daemon*>(fuse_req_userdata(req)); }
  static const fuse_lowlevel_ops& ops();

  // ---- replies

  struct stat to_stat(const Stat& s) const {
    struct stat st {};
    st.st_ino = s.ino;
    st.st_mode = s.mode;
    st.st_nlink = s.nlink;
    st.st_uid = s.uid;
    st.st_gid = s.gid;
    st.st_rdev = makedev(s.rdev_major, s.rdev_minor);
    st.st_size = static_cast<off_t>(s.size);
    st.st_blocks = static_cast<blkcnt_t>(s.blocks);
    st.st_blksize = block_size_;
    st.st_atim = {static_cast<time_t>(s.atime.sec), static_cast<long>(s.atime.nsec)};
    st.st_mtim = {static_cast<time_t>(s.mtime.sec), static_cast<long>(s.mtime.nsec)};
    st.st_ctim = {static_cast<time_t>(s.ctime.sec), static_cast<long>(s.ctime.nsec)};
    return st;
  }

  fuse_entry_param entry(const Stat& s) const {
    fuse_entry_param e{};
    e.ino = to_fuse(s.ino);
    e.generation = s.generation;
    e.attr = to_stat(s);
    e.attr_timeout = opts_.attr_timeout;
    e.entry_timeout = opts_.entry_timeout;
    return e;
  }

  // An entry the kernel will count: one reference in the library for each
  // lookup, given back by forget.
  void reply_entry(fuse_req_t req, const Stat& s, Ino parent, std::string_view name) {
    fuse_entry_param e = entry(s);
    fs_->retain(s.ino);
    names_.add(s.ino, parent, name);
    if (fuse_reply_entry(req, &e) != 0) forget(s.ino, 1);  // the kernel never saw it
  }

  void forget(Ino ino, uint64_t count) {
    names_.forget(ino, count);
    Status s = fs_->release(ino, count);
    if (!s.ok()) report("forget", ino, s.error());
  }

  // Logs what deserves it and applies errors=. The path that names the
  // inode (a walk up the name table) is built only for an error that is
  // logged: most are plain answers, ENOENT to a LOOKUP or ENODATA to a
  // GETXATTR, one of each per new file.
  void report(const char* op, Ino ino, const Error& err) {
    if (reported(err.code())) log_error(op, names_.path(ino), ino, err);
  }
  void report_at(const char* op, Ino dir, std::string_view name, const Error& err) {
    if (reported(err.code())) log_error(op, names_.path(dir, name), dir, err);
  }
  bool reported(int code) const { return serious(code) || code == ENOSPC || opts_.debug; }
  void log_error(const char* op, const std::string& path, Ino ino, const Error& err) {
    const int code = err.code();
    if (serious(code)) {
      log_.error(fmt::format("{}: {} {} (inode {}): {}", opts_.fsname, op, path, ino, err.message()));
      if (code != ENOMEM) on_failure();
    } else if (code == ENOSPC) {
      // Worth a line, but a full disk under a benchmark must not flood the log.
      auto now = std::chrono::steady_clock::now().time_since_epoch().count();
      auto last = last_enospc_log_.load();
      if (opts_.debug || now - last > std::chrono::nanoseconds(std::chrono::seconds(10)).count()) {
        last_enospc_log_ = now;
        log_.error(fmt::format("{}: {} {}: no space left on the image ({})", opts_.fsname, op, path, err.message()));
      }
    } else if (opts_.debug) {
      log_.info(fmt::format("{} {} (inode {}): {} [{}]", op, path, ino, err.message(), std::strerror(code)));
    }
  }

  static void reply_error(fuse_req_t req, const Error& err) {
    int code = err.code();
    if (code <= 0 || code >= 512) code = EIO;
    fuse_reply_err(req, code);
  }
  void fail(fuse_req_t req, const char* op, Ino ino, const Error& err) {
    report(op, ino, err);
    reply_error(req, err);
  }
  void fail_at(fuse_req_t req, const char* op, Ino dir, std::string_view name, const Error& err) {
    report_at(op, dir, name, err);
    reply_error(req, err);
  }

  // After a read was answered: the atime update the mount's atime options
  // ask for. Its failure cannot fail the read; it is reported (and errors=
  // applied) once, since every later read would fail the same way.
  void accessed(const char* op, Ino ino, AtimeUpdate policy) {
    if (policy == AtimeUpdate::kNever || opts_.read_only || forced_ro_.load() || panicked_.load()) return;
    Status s = fs_->touch_atime(ino, policy);
    if (!s.ok() && !atime_failed_.exchange(true)) report(op, ino, s.error());
  }
  // For READ, which finds out itself whether atime is due (ReadOptions), so
  // that the many reads that are not due cost no second look at the inode.
  ReadOptions read_options() const {
    ReadOptions o;
    if (!opts_.read_only && !forced_ro_.load() && !panicked_.load()) o.atime = opts_.file_atime();
    return o;
  }

  // errors=remount-ro and errors=panic.
  void on_failure() {
    if (opts_.on_error == OnError::kRemountRo && !forced_ro_.exchange(true)) {
      log_.error(fmt::format("{}: errors=remount-ro: refusing every further change", opts_.fsname));
    } else if (opts_.on_error == OnError::kPanic && !panicked_.exchange(true)) {
      log_.error(fmt::format("{}: errors=panic: stopping without writing anything more", opts_.fsname));
      if (se_) fuse_session_exit(se_);
    }
  }

  // Without the writeback cache nothing waits in the kernel or the daemon
  // for a close: write() already reached the library, and ext4's close()
  // reports no writeback errors either. So the kernel need not send FLUSH.
  bool flush_unneeded() const { return !opts_.writeback_cache; }

  // True (having replied EROFS) when changes are refused after an error.
  bool refuse_change(fuse_req_t req) {
    if (!forced_ro_.load() && !panicked_.load()) return false;
    fuse_reply_err(req, EROFS);
    return true;
  }

  // The creator, with its umask: with FUSE_CAP_DONT_MASK the kernel leaves
  // the umask to us, and the library applies it only where the directory
  // has no default ACL, as ext4 does. (Without it the kernel has already
  // applied it; applying it again changes nothing.)
  Owner owner(fuse_req_t req) const {
    const fuse_ctx* ctx = fuse_req_ctx(req);
    return Owner{static_cast<uint32_t>(ctx->uid), static_cast<uint32_t>(ctx->gid),
                 static_cast<uint32_t>(ctx->umask) & 0777u};
  }

  // Whether the caller of `req` is in group `gid` (its fsgid or a
  // supplementary group) or is root: else setting an access ACL also
  // clears the setgid bit, as posix_acl_update_mode does. (The kernel's
  // FUSE_SETXATTR_ACL_KILL_SGID does not reach libfuse's setxattr.)
  bool in_group_or_root(fuse_req_t req, uint32_t gid) const {
    return opts_.fakeroot || fuse_req_ctx(req)->uid == 0 || caller_in_group(req, gid);
  }

  // Clearing setuid/setgid ourselves (fuse/killpriv.h): as a write,
  // truncate or chown by a caller without CAP_FSETID does on ext4. The
  // kernel still holds the old mode, so it is told to forget it.
  Status drop_setid(Ino ino) {
    auto st = fs_->stat(ino);
    if (!st) return st.error();
    const uint32_t perm = st->mode & 07777;
    const uint32_t kept = mode_without_setid(perm);
    if (kept == perm) return {};
    SetAttr a;
    a.mode = kept;
    auto changed = fs_->setattr(ino, a);
    if (!changed) return changed.error();
    if (se_) fuse_lowlevel_notify_inval_inode(se_, to_fuse(ino), -1, 0);
    return {};
  }

  // Whether the caller holds CAP_FSETID (in its effective set, as the
  // kernel's capable() looks), for the changes the kernel does not flag
  // (copy_file_range, fallocate). Only asked of files with setuid/setgid.
  bool caller_may_keep_setid(fuse_req_t req) const {
    return opts_.fakeroot || caller_has_capability(req, kCapFsetid);
  }
  // Whether the kernel asked for setuid/setgid to go (a caller without
  // CAP_FSETID); never under fakeroot, whose callers are all root.
  bool kill_setid_requested() const { return !opts_.fakeroot && killpriv::requested(); }

  // Before a change that ext4 treats as a write (file_modified): what the
  // kernel left to us under FUSE_HANDLE_KILLPRIV_V2.
  Status drop_setid_for_modification(fuse_req_t req, Ino ino) {
    if (!killpriv::active()) return {};
    auto st = fs_->stat(ino);
    if (!st) return st.error();
    if (mode_without_setid(st->mode) == st->mode || caller_may_keep_setid(req)) return {};
    return drop_setid(ino);
  }

  // ---- operations

  void init(fuse_conn_info* conn) {
    // The kernel clears setuid/setgid on write, chown and truncate itself.
    conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;
    // O_TRUNC arrives as a setattr (with the kernel's permission checks).
    conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
    if (opts_.writeback_cache) {
      if (conn->capable & FUSE_CAP_WRITEBACK_CACHE) conn->want |= FUSE_CAP_WRITEBACK_CACHE;
      else log_.error("writeback_cache: the kernel does not offer it; writes stay synchronous");
    }
    if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
    if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO;
    // POSIX ACLs as ext4 with `acl`: the kernel reads system.posix_acl_access
    // through getxattr, caches it and checks it (default_permissions is on),
    // and forgets its copy after every setattr and ACL change it sends us,
    // which covers the ACL rewrites chmod makes here. DONT_MASK hands the
    // umask to the library, which applies it only without a default ACL.
    // (The kernel turns its permission checks on with POSIX_ACL: not with
    // fakeroot, whose ACLs are stored but not checked.)
    if (opts_.acl && !opts_.fakeroot) {
      if (conn->capable & FUSE_CAP_POSIX_ACL) {
        conn->want |= FUSE_CAP_POSIX_ACL;
        if (conn->capable & FUSE_CAP_DONT_MASK) conn->want |= FUSE_CAP_DONT_MASK;
        else log_.error("acl: the kernel does not offer DONT_MASK; it applies the umask even under default ACLs");
      } else {
        log_.error("acl: the kernel does not offer POSIX ACLs to FUSE; they are stored but not enforced");
      }
    } else {
      conn->want &= ~(FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK);
    }
    // Symlinks change only through this mount, so the kernel may keep their targets.
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
    conn->max_write = 1u << 20;  // fewer, larger requests for big writes (libfuse sets max_pages from it)
    // The kernel keeps the smaller of this and the mount's readahead, which
    // run_mount raised before this INIT (set_read_ahead).
    if (opts_.read_ahead_kb > 0) conn->max_readahead = opts_.read_ahead_kb * 1024u;
    conn->time_gran = 1;         // nanosecond timestamps, as ext4 with 256-byte inodes
    // Readahead and writeback-cache flushes are background requests; the
    // default of 12 in flight leaves request threads idle.
    conn->max_background = 64;
    conn->congestion_threshold = 48;
  }

  void lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
    const Ino dir = to_ext(parent);
    auto ino = fs_->lookup(dir, name);
    if (!ino) {
      if (ino.error().code() == ENOENT && opts_.negative_timeout > 0) {
        fuse_entry_param e{};
        e.entry_timeout = opts_.negative_timeout;
        fuse_reply_entry(req, &e);
        return;
      }
      return fail_at(req, "lookup", dir, name, ino.error());
    }
    auto st = fs_->stat(*ino);
    if (!st) return fail_at(req, "lookup", dir, name, st.error());
    reply_entry(req, *st, dir, name);
  }

  void getattr(fuse_req_t req, fuse_ino_t fino) {
    const Ino ino = to_ext(fino);
    auto st = fs_->stat(ino);
    if (!st) return fail(req, "getattr", ino, st.error());
    struct stat s = to_stat(*st);
    fuse_reply_attr(req, &s, opts_.attr_timeout);
  }

  void setattr(fuse_req_t req, fuse_ino_t fino, const struct stat* attr, int to_set) {
    ActingFor acting(req);
    const Ino ino = to_ext(fino);
    SetAttr a;
    if (to_set & FUSE_SET_ATTR_MODE) a.mode = attr->st_mode & 07777;
    if (to_set & FUSE_SET_ATTR_UID) a.uid = attr->st_uid;
    if (to_set & FUSE_SET_ATTR_GID) a.gid = attr->st_gid;
    if (to_set & FUSE_SET_ATTR_SIZE) a.size = static_cast<uint64_t>(attr->st_size);
    if (to_set & FUSE_SET_ATTR_ATIME_NOW) a.atime_now = true;
    else if (to_set & FUSE_SET_ATTR_ATIME) a.atime = Time{attr->st_atim.tv_sec, static_cast<uint32_t>(attr->st_atim.tv_nsec)};
    if (to_set & FUSE_SET_ATTR_MTIME_NOW) a.mtime_now = true;
    else if (to_set & FUSE_SET_ATTR_MTIME) a.mtime = Time{attr->st_mtim.tv_sec, static_cast<uint32_t>(attr->st_mtim.tv_nsec)};
    // Every SETATTR is a change the kernel's VFS made, which sets ctime on
    // ext4 even with no attribute to change: chown(f, -1, -1) arrives with
    // none (FUSE forwards ATTR_CTIME only with the writeback cache), and
    // an empty SetAttr sets ctime alone.
    if (refuse_change(req)) return;
    if (kill_setid_requested()) {  // a truncate or chown that clears setuid/setgid
      auto now = fs_->stat(ino);
      if (!now) return fail(req, "setattr", ino, now.error());
      const uint32_t perm = a.mode ? *a.mode : now->mode & 07777;
      if (mode_without_setid(perm) != perm) a.mode = mode_without_setid(perm);
    }
    auto st = fs_->setattr(ino, a);
    if (!st) return fail(req, "setattr", ino, st.error());
    struct stat s = to_stat(*st);
    fuse_reply_attr(req, &s, opts_.attr_timeout);
  }

  void readlink(fuse_req_t req, fuse_ino_t fino) {
    const Ino ino = to_ext(fino);
    auto target = fs_->readlink(ino);
    if (!target) return fail(req, "readlink", ino, target.error());
    fuse_reply_readlink(req, target->c_str());
    accessed("readlink", ino, opts_.file_atime());
  }

  void mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
    ActingFor acting(req);
    const Ino dir = to_ext(parent);
    if (refuse_change(req)) return;
    if ((mode & S_IFMT) == 0) mode |= S_IFREG;
    auto st = fs_->mknod(dir, name, mode, owner(req), major(rdev), minor(rdev));
    if (!st) return fail_at(req, "mknod", dir, name, st.error());
    reply_entry(req, *st, dir, name);
  }

  void mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
    ActingFor acting(req);
    const Ino dir = to_ext(parent);
    if (refuse_change(req)) return;
    auto st = fs_->mkdir(dir, name, mode & 07777, owner(req));
    if (!st) return fail_at(req, "mkdir", dir, name, st.error());
    reply_entry(req, *st, dir, name);
  }

  void symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
    ActingFor acting(req);
    const Ino dir = to_ext(parent);
    if (refuse_change(req)) return;
    auto st = fs_->symlink(dir, name, target, owner(req));
    if (!st) return fail_at(req, "symlink", dir, name, st.error());
    reply_entry(req, *st, dir, name);
  }

  void link(fuse_req_t req, fuse_ino_t fino, fuse_ino_t new_parent, const char* new_name) {
    ActingFor acting(req);
    const Ino ino = to_ext(fino), dir = to_ext(new_parent);
    if (refuse_change(req)) return;
    auto st = fs_->link(ino, dir, new_name);
    if (!st) return fail_at(req, "link", dir, new_name, st.error());
    reply_entry(req, *st, dir, new_name);
  }

  void unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
    const Ino dir = to_ext(parent);
    if (refuse_change(req)) return;
    Status s = fs_->unlink(dir, name);
    if (!s.ok()) return fail_at(req, "unlink", dir, name, s.error());
    fuse_reply_err(req, 0);
  }

  void rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
    const Ino dir = to_ext(parent);
    if (refuse_change(req)) return;
    Status s = fs_->rmdir(dir, name);
    if (!s.ok()) return fail_at(req, "rmdir", dir, name, s.error());
    fuse_reply_err(req, 0);
  }

  void rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent, const char* new_name,
              unsigned flags) {
    ActingFor acting(req);
    const Ino dir = to_ext(parent), new_dir = to_ext(new_parent);
    if (refuse_change(req)) return;
    // The kernel checked CAP_MKNOD for RENAME_WHITEOUT; the whiteout is the caller's.
    Status s = fs_->rename(dir, name, new_dir, new_name, flags, owner(req));
    if (!s.ok()) return fail_at(req, "rename", dir, name, s.error());
    fuse_reply_err(req, 0);
    // Keep the names for messages right (a lookup in the directory just changed, so cached).
    if (auto moved = fs_->lookup(new_dir, new_name)) names_.renamed(*moved, new_dir, new_name);
    if (flags & kRenameExchange) {
      if (auto other = fs_->lookup(dir, name)) names_.renamed(*other, dir, name);
    }
  }

  void open(fuse_req_t req, fuse_ino_t fino, fuse_file_info* fi) {
    const Ino ino = to_ext(fino);
    if ((fi->flags & O_ACCMODE) != O_RDONLY && refuse_change(req)) return;
    // Every change reaches the image through this mount, so the kernel's
    // cached pages stay true between opens. But a read the kernel serves
    // from them never reaches us: when an open for reading finds that the
    // next read must change atime (relatime: the file changed since it was
    // last read), they go.
    const bool reads = (fi->flags & O_ACCMODE) != O_WRONLY;
    auto due = fs_->atime_due(ino, opts_.read_only || !reads ? AtimeUpdate::kNever : opts_.file_atime());
    fi->keep_cache = !(due.ok() && *due);
    fi->noflush = flush_unneeded();
    OpenFile* file = open_files_.add(ino, fs_->wb_err_sample(ino));
    fi->fh = reinterpret_cast<uint64_t>(file);
    if (fuse_reply_open(req, fi) != 0) open_files_.remove(file);  // the opener was interrupted: no release follows
  }

  void create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
    ActingFor acting(req);
    const Ino dir = to_ext(parent);
    if (refuse_change(req)) return;
    auto st = fs_->create(dir, name, mode, owner(req));
    if (!st && st.error().code() == EEXIST && !(fi->flags & O_EXCL)) {
      // Another creator won the race since the kernel's lookup: open
      // what it made, as open(O_CREAT) without O_EXCL does.
      auto ino = fs_->lookup(dir, name);
      if (ino) {
        st = fs_->stat(*ino);
        if (st && S_ISDIR(st->mode)) return fuse_reply_err(req, EISDIR) , void();
        if (st && (fi->flags & O_TRUNC) && S_ISREG(st->mode)) {
          SetAttr a;
          a.size = 0;
          a.mtime_now = true;
          st = fs_->setattr(*ino, a);
        }
      }
    }
    if (!st) return fail_at(req, "create", dir, name, st.error());
    fuse_entry_param e = entry(*st);
    fi->keep_cache = 1;
    fi->noflush = flush_unneeded();
    OpenFile* file = open_files_.add(st->ino, fs_->wb_err_sample(st->ino));
    fi->fh = reinterpret_cast<uint64_t>(file);
    fs_->retain(st->ino);
    names_.add(st->ino, dir, name);
    if (fuse_reply_create(req, &e, fi) != 0) {
      open_files_.remove(file);
      forget(st->ino, 1);
    }
  }

  void read(fuse_req_t req, fuse_ino_t fino, size_t size, off_t off) {
    const Ino ino = to_ext(fino);
    thread_local std::vector<std::byte> buf;
    if (buf.size() < size) buf.resize(size);
    ReadOptions ro = read_options();
    auto n = fs_->read(ino, static_cast<uint64_t>(off), std::span(buf.data(), size), ro);
    if (!n) return fail(req, "read", ino, n.error());
    fuse_reply_buf(req, reinterpret_cast<const char*>(buf.data()), *n);
    if (ro.atime_due) accessed("read", ino, ro.atime);
  }

  void write(fuse_req_t req, fuse_ino_t fino, const char* data, size_t size, off_t off) {
    ActingFor acting(req);
    const Ino ino = to_ext(fino);
    if (refuse_change(req)) return;
    const std::span bytes(reinterpret_cast<const std::byte*>(data), size);
    WriteOptions wo;
    // The kernel flags a write by a caller without CAP_FSETID; the library
    // clears the bits under the write's own inode lock.
    bool setid_dropped = false;
    wo.drop_setid = kill_setid_requested();
    wo.setid_dropped = [&](uint32_t) { setid_dropped = true; };
    // Answered once the space is reserved, while the library copies the
    // bytes into the page cache: the writer runs again a copy sooner, and
    // on a VM its CPU may not have gone idle yet. The request's buffer is
    // this thread's until the handler returns; not so a ring's entry, which
    // the reply overwrites.
    bool replied = false;
    // Cleared bits: the kernel forgets its copy of the mode before the
    // writer wakes, so its next stat() does not show them.
    auto forget_mode = [&] {
      if (setid_dropped && se_) fuse_lowlevel_notify_inval_inode(se_, to_fuse(ino), -1, 0);
      setid_dropped = false;
    };
    if (!serving_ring_request()) {
      wo.accepted = [&](size_t count) {
        forget_mode();
        fuse_reply_write(req, count);
        replied = true;
      };
    }
    auto n = fs_->write(ino, static_cast<uint64_t>(off), bytes, wo);
    forget_mode();
    if (!n && replied) return report("write", ino, n.error());  // the fsync hears of it
    if (!n) return fail(req, "write", ino, n.error());
    if (!replied) fuse_reply_write(req, *n);
  }

  // `file` is the description's OpenFile, null for a directory (no opendir:
  // each fsyncdir stands for a description of its own).
  void fsync(fuse_req_t req, fuse_ino_t fino, int datasync, OpenFile* file, const char* op) {
    const Ino ino = to_ext(fino);
    if (panicked()) return fuse_reply_err(req, EIO), void();
    if (opts_.read_only) return fuse_reply_err(req, 0), void();  // nothing to make durable
    Status s;
    if (file) {
      std::lock_guard lock(file->mu);
      s = fs_->fsync(ino, datasync != 0, file->wb_err_seen);
    } else {
      s = fs_->fsync(ino, datasync != 0);
    }
    if (!s.ok()) return fail(req, op, ino, s.error());
    fuse_reply_err(req, 0);
  }


  // Shared by readdir and readdirplus: fills one reply buffer from `off`.
  void readdir(fuse_req_t req, fuse_ino_t fino, size_t size, off_t off, bool plus) {
    const Ino dir = to_ext(fino);
    std::vector<char> buf(size);
    size_t used = 0;
    std::vector<Ino> retained;  // given back if the reply never reaches the kernel
    Status s = fs_->readdir(dir, static_cast<uint64_t>(off), [&](const DirEntry& d, uint64_t next) {
      const bool dots = d.name == "." || d.name == "..";
      size_t need;
      if (!plus) {
        struct stat st {};
        st.st_ino = d.ino;
        st.st_mode = d.type;
        need = fuse_add_direntry(req, buf.data() + used, size - used, d.name.c_str(), &st,
                                 static_cast<off_t>(next));
        if (need > size - used) return false;
      } else {
        fuse_entry_param e{};
        e.attr.st_ino = d.ino;
        e.attr.st_mode = d.type;
        Result<Stat> st = Error(ENOENT, "");
        // Nodeid 0 tells the kernel to take the name only: for "." and
        // "..", and for an entry whose inode went away meanwhile.
        if (!dots) st = fs_->stat(d.ino);
        if (st) e = entry(*st);
        need = fuse_add_direntry_plus(req, buf.data() + used, size - used, d.name.c_str(), &e,
                                      static_cast<off_t>(next));
        if (need > size - used) return false;
        if (st) {
          fs_->retain(d.ino);
          names_.add(d.ino, dir, d.name);
          retained.push_back(d.ino);
        }
      }
      used += need;
      return true;
    });
    if (!s.ok()) {
      for (Ino ino : retained) forget(ino, 1);
      return fail(req, plus ? "readdirplus" : "readdir", dir, s.error());
    }
    if (fuse_reply_buf(req, buf.data(), used) != 0) {
      for (Ino ino : retained) forget(ino, 1);
      return;  // the listing never reached the program: no access to record
    }
    // Once a listing, at its start, as the kernel's iterate_dir.
    if (off == 0) accessed(plus ? "readdirplus" : "readdir", dir, opts_.dir_atime());
  }

  void statfs(fuse_req_t req) {
    auto st = fs_->statfs();
    if (!st) return fail(req, "statfs", kRootIno, st.error());
    struct statvfs v {};
    v.f_bsize = st->block_size;
    v.f_frsize = st->block_size;
    v.f_blocks = opts_.minixdf ? st->total_blocks : st->blocks;
    v.f_bfree = st->free_blocks;
    v.f_bavail = st->available_blocks;
    v.f_files = st->files;
    v.f_ffree = st->free_files;
    v.f_favail = st->free_files;
    v.f_namemax = st->name_max;
    fuse_reply_statfs(req, &v);
  }

  void setxattr(fuse_req_t req, fuse_ino_t fino, const char* name, const char* value, size_t size, int flags) {
    ActingFor acting(req);
    const Ino ino = to_ext(fino);
    if (refuse_change(req)) return;
    if (is_caps_name(name)) no_caps_.drop(ino);
    if (opts_.acl && size > 4 && std::strcmp(name, "system.posix_acl_access") == 0) {
      auto st = fs_->stat(ino);
      if (st && (st->mode & S_ISGID) && !in_group_or_root(req, st->gid)) flags |= kXattrAclKillSgid;
    }
    Status s = fs_->setxattr(ino, name, std::string_view(value, size), flags);
    if (!s.ok()) return fail(req, "setxattr", ino, s.error());
    fuse_reply_err(req, 0);
  }

  void getxattr(fuse_req_t req, fuse_ino_t fino, const char* name, size_t size) {
    const Ino ino = to_ext(fino);
    const bool caps = is_caps_name(name);
    uint64_t gen = 0;
    if (caps && no_caps_.known(ino, gen)) return fuse_reply_err(req, ENODATA), void();
    auto v = fs_->getxattr(ino, name);
    if (!v) {
      if (caps && v.error().code() == ENODATA) no_caps_.add(ino, gen);
      return fail(req, "getxattr", ino, v.error());
    }
    if (size == 0) return fuse_reply_xattr(req, v->size()), void();
    if (v->size() > size) return fuse_reply_err(req, ERANGE), void();
    fuse_reply_buf(req, v->data(), v->size());
  }

  void listxattr(fuse_req_t req, fuse_ino_t fino, size_t size) {
    const Ino ino = to_ext(fino);
    auto names = fs_->listxattr(ino);
    if (!names) return fail(req, "listxattr", ino, names.error());
    std::string all;
    for (const auto& n : *names) {
      all += n;
      all += '\0';
    }
    if (size == 0) return fuse_reply_xattr(req, all.size()), void();
    if (all.size() > size) return fuse_reply_err(req, ERANGE), void();
    fuse_reply_buf(req, all.data(), all.size());
  }

  void removexattr(fuse_req_t req, fuse_ino_t fino, const char* name) {
    const Ino ino = to_ext(fino);
    if (refuse_change(req)) return;
    if (is_caps_name(name)) no_caps_.drop(ino);
    Status s = fs_->removexattr(ino, name);
    if (!s.ok()) return fail(req, "removexattr", ino, s.error());
    fuse_reply_err(req, 0);
  }

  // Only `uext umount`'s question, on the root directory.
  void ioctl(fuse_req_t req, fuse_ino_t fino, unsigned int cmd, size_t out_size) {
    if (fino != FUSE_ROOT_ID || cmd != kDaemonInfoIoctl || out_size < sizeof(DaemonInfo)) {
      return fuse_reply_err(req, ENOTTY), void();
    }
    DaemonInfo info;
    info.pid = static_cast<int32_t>(::getpid());
    info.read_only = opts_.read_only ? 1 : 0;
    std::snprintf(info.image, sizeof info.image, "%s", image_path_.c_str());
    fuse_reply_ioctl(req, 0, &info, sizeof info);
  }

  void fallocate(fuse_req_t req, fuse_ino_t fino, int mode, off_t off, off_t len) {
    ActingFor acting(req);
    const Ino ino = to_ext(fino);
    if (refuse_change(req)) return;
    if (off < 0 || len <= 0) return fuse_reply_err(req, EINVAL), void();
    Status s = drop_setid_for_modification(req, ino);
    if (!s.ok()) return fail(req, "fallocate", ino, s.error());
    s = fs_->fallocate(ino, mode, static_cast<uint64_t>(off), static_cast<uint64_t>(len));
    if (!s.ok()) return fail(req, "fallocate", ino, s.error());
    fuse_reply_err(req, 0);
  }

  void lseek(fuse_req_t req, fuse_ino_t fino, off_t off, int whence) {
    const Ino ino = to_ext(fino);
    if (whence != SEEK_DATA && whence != SEEK_HOLE) return fuse_reply_err(req, EINVAL), void();
    if (off < 0) return fuse_reply_err(req, ENXIO), void();
    auto pos = fs_->seek(ino, static_cast<uint64_t>(off), whence);
    if (!pos) return fail(req, "lseek", ino, pos.error());
    fuse_reply_lseek(req, static_cast<off_t>(*pos));
  }

  // No reflinks in ext4: a copy through the library, without the bytes
  // crossing into the kernel twice.
  void copy_file_range(fuse_req_t req, fuse_ino_t in, off_t off_in, fuse_ino_t out, off_t off_out, size_t len) {
    ActingFor acting(req);
    const Ino src = to_ext(in), dst = to_ext(out);
    if (refuse_change(req)) return;
    if (off_in < 0 || off_out < 0) return fuse_reply_err(req, EINVAL), void();
    if (Status s = drop_setid_for_modification(req, dst); !s.ok()) return fail(req, "copy_file_range", dst, s.error());
    constexpr size_t kChunk = 1u << 20;
    std::vector<std::byte> buf(std::min(len, kChunk));
    size_t done = 0;
    while (done < len) {
      const size_t want = std::min(len - done, kChunk);
      auto n = fs_->read(src, static_cast<uint64_t>(off_in) + done, std::span(buf.data(), want));
      if (!n) {
        if (done > 0) break;
        return fail(req, "copy_file_range (read)", src, n.error());
      }
      if (*n == 0) break;
      auto w = fs_->write(dst, static_cast<uint64_t>(off_out) + done, std::span(buf.data(), *n));
      if (!w) {
        if (done > 0) break;  // report what was copied; the next call meets the error
        return fail(req, "copy_file_range (write)", dst, w.error());
      }
      done += *w;
      if (*n < want) break;
    }
    fuse_reply_write(req, done);
    accessed("copy_file_range", src, opts_.file_atime());
  }

 private:
  std::unique_ptr<Filesystem> fs_;
  MountOptions opts_;
  Log& log_;
  uint32_t block_size_ = 4096;
  std::string image_path_;
  NameTable names_;
  OpenFiles open_files_;
  NoCapsCache no_caps_;
  fuse_session* se_ = nullptr;
  std::atomic<bool> forced_ro_{false};
  std::atomic<bool> atime_failed_{false};
  std::atomic<bool> panicked_{false};
  std::atomic<int64_t> last_enospc_log_{0};
};

// libfuse calls plain functions; each forwards to the Daemon in userdata.
const fuse_lowlevel_ops& Daemon::ops() {
  static const fuse_lowlevel_ops table = [] {
    fuse_lowlevel_ops o{};
    o.init = [](void* u, fuse_conn_info* c) { static_cast<Daemon*>(u)->init(c); };
    o.lookup = [](fuse_req_t r, fuse_ino_t p, const char* n) { of(r).lookup(r, p, n); };
    o.forget = [](fuse_req_t r, fuse_ino_t i, uint64_t n) {
      of(r).forget(to_ext(i), n);
      fuse_reply_none(r);
    };
    o.forget_multi = [](fuse_req_t r, size_t count, fuse_forget_data* f) {
      for (size_t k = 0; k < count; ++k) of(r).forget(to_ext(f[k].ino), f[k].nlookup);
      fuse_reply_none(r);
    };
    o.getattr = [](fuse_req_t r, fuse_ino_t i, fuse_file_info*) { of(r).getattr(r, i); };
    o.setattr = [](fuse_req_t r, fuse_ino_t i, struct stat* a, int s, fuse_file_info*) { of(r).setattr(r, i, a, s); };
    o.readlink = [](fuse_req_t r, fuse_ino_t i) { of(r).readlink(r, i); };
    o.mknod = [](fuse_req_t r, fuse_ino_t p, const char* n, mode_t m, dev_t d) { of(r).mknod(r, p, n, m, d); };
    o.mkdir = [](fuse_req_t r, fuse_ino_t p, const char* n, mode_t m) { of(r).mkdir(r, p, n, m); };
    o.unlink = [](fuse_req_t r, fuse_ino_t p, const char* n) { of(r).unlink(r, p, n); };
    o.rmdir = [](fuse_req_t r, fuse_ino_t p, const char* n) { of(r).rmdir(r, p, n); };
    o.symlink = [](fuse_req_t r, const char* t, fuse_ino_t p, const char* n) { of(r).symlink(r, t, p, n); };
    o.rename = [](fuse_req_t r, fuse_ino_t p, const char* n, fuse_ino_t np, const char* nn, unsigned f) {
      of(r).rename(r, p, n, np, nn, f);
    };
    o.link = [](fuse_req_t r, fuse_ino_t i, fuse_ino_t np, const char* nn) { of(r).link(r, i, np, nn); };
    o.open = [](fuse_req_t r, fuse_ino_t i, fuse_file_info* fi) { of(r).open(r, i, fi); };
    o.create = [](fuse_req_t r, fuse_ino_t p, const char* n, mode_t m, fuse_file_info* fi) {
      of(r).create(r, p, n, m, fi);
    };
    o.read = [](fuse_req_t r, fuse_ino_t i, size_t s, off_t off, fuse_file_info*) { of(r).read(r, i, s, off); };
    o.write = [](fuse_req_t r, fuse_ino_t i, const char* b, size_t s, off_t off, fuse_file_info*) {
      of(r).write(r, i, b, s, off);
    };
    // Nothing is buffered in the daemon: write() already reached the library.
    // With the writeback cache the kernel writes its dirty pages back at
    // close() by itself and reports their errors; ENOSYS tells it to skip
    // the FLUSH request that would follow.
    o.flush = [](fuse_req_t r, fuse_ino_t, fuse_file_info*) {
      fuse_reply_err(r, of(r).flush_unneeded() ? 0 : ENOSYS);
    };
    o.release = [](fuse_req_t r, fuse_ino_t, fuse_file_info* fi) {
      of(r).open_files_.remove(reinterpret_cast<OpenFile*>(fi->fh));
      fuse_reply_err(r, 0);
    };
    o.fsync = [](fuse_req_t r, fuse_ino_t i, int d, fuse_file_info* fi) {
      of(r).fsync(r, i, d, fi ? reinterpret_cast<OpenFile*>(fi->fh) : nullptr, "fsync");
    };
    o.fsyncdir = [](fuse_req_t r, fuse_ino_t i, int d, fuse_file_info*) { of(r).fsync(r, i, d, nullptr, "fsyncdir"); };
    o.readdir = [](fuse_req_t r, fuse_ino_t i, size_t s, off_t off, fuse_file_info*) {
      of(r).readdir(r, i, s, off, false);
    };
    o.readdirplus = [](fuse_req_t r, fuse_ino_t i, size_t s, off_t off, fuse_file_info*) {
      of(r).readdir(r, i, s, off, true);
    };
    o.statfs = [](fuse_req_t r, fuse_ino_t) { of(r).statfs(r); };
    o.setxattr = [](fuse_req_t r, fuse_ino_t i, const char* n, const char* v, size_t s, int f) {
      of(r).setxattr(r, i, n, v, s, f);
    };
    o.getxattr = [](fuse_req_t r, fuse_ino_t i, const char* n, size_t s) { of(r).getxattr(r, i, n, s); };
    o.listxattr = [](fuse_req_t r, fuse_ino_t i, size_t s) { of(r).listxattr(r, i, s); };
    o.removexattr = [](fuse_req_t r, fuse_ino_t i, const char* n) { of(r).removexattr(r, i, n); };
    o.fallocate = [](fuse_req_t r, fuse_ino_t i, int m, off_t off, off_t len, fuse_file_info*) {
      of(r).fallocate(r, i, m, off, len);
    };
    o.lseek = [](fuse_req_t r, fuse_ino_t i, off_t off, int w, fuse_file_info*) { of(r).lseek(r, i, off, w); };
    o.ioctl = [](fuse_req_t r, fuse_ino_t i, unsigned int cmd, void*, fuse_file_info*, unsigned, const void*, size_t,
                 size_t out_size) { of(r).ioctl(r, i, cmd, out_size); };
    o.copy_file_range = [](fuse_req_t r, fuse_ino_t in, off_t oi, fuse_file_info*, fuse_ino_t out, off_t oo,
                           fuse_file_info*, size_t len, int) { of(r).copy_file_range(r, in, oi, out, oo, len); };
    return o;
  }();
  return table;
}

// ------------------------------------------------------------------ main

// Daemon mode forks before anything is opened, so the image lock and the
// mount belong to the serving process from the start (and /proc/locks
// names it). The parent waits on a pipe for "mounted" or "failed" and
// exits with that status; until then the child's errors reach the
// terminal.
// A failure reported after stdio is detached (io_uring=on refused after
// INIT) travels as text after the status byte, for the parent to print.
struct Background {
  int notify_fd = -1;
  std::mutex mu;
  void done(int status, const std::string& message = {}) {
    std::lock_guard lock(mu);
    if (notify_fd < 0) return;
    std::string msg(1, static_cast<char>(static_cast<unsigned char>(status)));
    msg += message;
    ssize_t ignored = ::write(notify_fd, msg.data(), msg.size());
    (void)ignored;
    ::close(notify_fd);
    notify_fd = -1;
  }
};

// The page cache keeps a memfd open for every file it caches and bounds
// their number by a quarter of the soft descriptor limit, which shells
// often leave at 1,024 under a hard limit of 512 Ki or more: new small
// files would then be written back and their memfds closed every 256
// files. The daemon lifts the soft limit to the hard one (at most
// kMaxDescriptors). Nothing in it uses select(), so descriptors past 1,024
// are safe.
void raise_descriptor_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  const rlim_t want = std::min<rlim_t>(limit.rlim_max, kMaxDescriptors);
  if (limit.rlim_cur >= want) return;
  limit.rlim_cur = want;
  ::setrlimit(RLIMIT_NOFILE, &limit);  // best effort: the cache adapts to what it finds
}

// The page cache keeps a memfd open for every file it caches, so creating
// thousands of small files opens thousands of descriptors. The kernel grows
// a process's descriptor table by doubling, and in a process with several
// threads each doubling waits for an RCU grace period: 5-16 ms each on the
// development VM, inside whichever WRITE request opened descriptor 256,
// 512, ... 4,096. It never shrinks the table, so growing it once to the
// descriptor limit (at most kMaxDescriptors) while this process
// still has a single thread costs nothing later. (A fork does not keep an
// empty large table: run after fork_into_background.)
void presize_descriptor_table() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  const rlim_t want = std::min<rlim_t>(limit.rlim_cur, kMaxDescriptors);
  if (want <= 256) return;
  const int base = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (base < 0) return;
  const int high = ::fcntl(base, F_DUPFD_CLOEXEC, static_cast<int>(want - 1));
  if (high >= 0) ::close(high);
  ::close(base);
}

// Every change to a metadata block makes a new 4 KiB version of it (the
// buffer cache keeps old versions for readers and the commit), so the
// daemon's threads free and allocate block-sized buffers by the thousand.
// glibc's per-thread arenas give memory back as soon as 128 KiB lie free
// at their top and grow again with an mprotect and page faults: a tenth of
// a create went there. A daemon keeps what it used (up to 64 MiB free per
// arena) and takes buffers below 4 MiB from the heap.
void tune_malloc() {
  ::mallopt(M_TRIM_THRESHOLD, 64 << 20);
  ::mallopt(M_MMAP_THRESHOLD, 4 << 20);
}

// Sets the readahead window of the mount at `mount_path` (resolved before
// mounting: resolving it now would send this very daemon a request that
// no thread serves yet). The mount's backing device, "MAJ:MIN" of its FUSE
// connection, comes from /proc/self/mountinfo, the newest mount there. The
// kernel gives a FUSE mount 128 KiB, so a sequential reader's 1 MiB reads
// arrive as eight READs; sysfs lets only root change it.
void set_read_ahead(const std::string& mount_path, uint32_t kb, bool debug, Log& log) {
  if (kb == 0 || mount_path.empty()) return;
  std::string device;
  for (const MountInfo& m : read_mountinfo()) {
    if (m.mountpoint == mount_path) device = m.device;
  }
  if (device.empty()) return;
  const std::string knob = "/sys/class/bdi/" + device + "/read_ahead_kb";
  std::FILE* out = std::fopen(knob.c_str(), "we");
  bool ok = out && std::fprintf(out, "%u\n", kb) > 0;
  if (out && std::fclose(out) != 0) ok = false;
  if (!ok && debug) log.info(fmt::format("{}: readahead left at the kernel's: {}", knob, std::strerror(errno)));
}

// Returns -1 in the child (go on), or the exit status in the parent.
int fork_into_background(Background& bg) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    std::fprintf(stderr, "uext: mount: pipe: %s\n", std::strerror(errno));
    return 1;
  }
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) {
    std::fprintf(stderr, "uext: mount: fork: %s\n", std::strerror(errno));
    return 1;
  }
  if (pid > 0) {
    ::close(fds[1]);
    unsigned char b = 1;
    ssize_t n;
    do n = ::read(fds[0], &b, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1) {  // the child died before saying anything
      int st = 0;
      ::waitpid(pid, &st, 0);
      return 1;
    }
    std::string message;
    char more[512];
    while ((n = ::read(fds[0], more, sizeof more)) > 0 || (n < 0 && errno == EINTR)) {
      if (n > 0) message.append(more, static_cast<size_t>(n));
    }
    if (!message.empty()) std::fprintf(stderr, "uext: mount: %s\n", message.c_str());
    return b;
  }
  ::close(fds[0]);
  ::setsid();
  bg.notify_fd = fds[1];
  return -1;
}

void detach_stdio() {
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0) return;
  ::dup2(null, 0);
  ::dup2(null, 1);
  ::dup2(null, 2);
  if (null > 2) ::close(null);
  if (::chdir("/") != 0) {
  }
}

}  // namespace

int run_mount(MountOptions opts) {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page_size = ::sysconf(_SC_PAGESIZE);
  finish_mount_options(opts, ::geteuid() == 0,
                       pages > 0 && page_size > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size) : 0);
  auto usage_fail = [&](const std::string& msg) {
    std::fprintf(stderr, "uext: mount: %s\n", msg.c_str());
    return 1;
  };
  struct stat mp {};
  if (::stat(opts.mountpoint.c_str(), &mp) != 0) {
    return usage_fail(fmt::format("{}: {}", opts.mountpoint, std::strerror(errno)));
  }
  if (!S_ISDIR(mp.st_mode)) return usage_fail(fmt::format("{}: not a directory", opts.mountpoint));
  // Absolute from here on: a daemon changes to / (detach_stdio), and
  // libfuse unmounts the path it was given.
  {
    std::error_code ec;
    std::string absolute = std::filesystem::canonical(opts.mountpoint, ec).string();
    if (!ec) opts.mountpoint = absolute;
  }
  if (!opts.verify_checksums && !opts.read_only) {
    return usage_fail("nochecksums is for salvaging data and needs ro");
  }

  Background bg;
  if (!opts.foreground) {
    int status = fork_into_background(bg);
    if (status >= 0) return status;
  }
  auto failed = [&](const std::string& msg) {
    std::fprintf(stderr, "uext: mount: %s\n", msg.c_str());
    bg.done(1);
    return 1;
  };

  raise_descriptor_limit();
  presize_descriptor_table();  // before the library starts its threads
  tune_malloc();
  auto guard = ImageGuard::acquire(opts.image, opts.fsname, opts.read_only);
  if (!guard) return failed(guard.error().message());

  Options fo;
  fo.read_only = opts.read_only;
  fo.replay_read_only = !opts.no_recovery;
  fo.verify_checksums = opts.verify_checksums;
  fo.direct_io = opts.direct_io;
  fo.image_offset = opts.offset;
  fo.image_size_limit = opts.size_limit;
  fo.image_partition = opts.partition;
  fo.metadata_cache_bytes = opts.cache_bytes;
  fo.page_cache_bytes = opts.page_cache_bytes;
  fo.dirty_limit_bytes = opts.dirty_limit_bytes;
  fo.commit_interval_ms = opts.commit_seconds * 1000;
  fo.use_root_reserve = opts.use_root_reserve;
  fo.reserved_uid = opts.reserved_uid;
  fo.reserved_gid = opts.reserved_gid;
  fo.data_err_abort = opts.data_err_abort;
  fo.posix_acl = opts.acl;
  auto opened = Filesystem::open(opts.image, fo);
  if (!opened) {
    // The library's message usually names the image already.
    const std::string& why = opened.error().message();
    return failed(why.rfind(opts.image, 0) == 0 ? why : fmt::format("{}: {}", opts.image, why));
  }

  Log log;
  if (!opts.logfile.empty()) {
    if (!log.to_file(opts.logfile)) return failed(fmt::format("{}: {}", opts.logfile, std::strerror(errno)));
  }

  const VolumeInfo info = (*opened)->info();
  std::vector<std::string> notes;
  if (!opts.on_error_set) {
    // The image's own choice (tune2fs -e), as the kernel's mount takes it.
    if (info.errors_behavior == 2) opts.on_error = OnError::kRemountRo;
    else if (info.errors_behavior == 3) opts.on_error = OnError::kPanic;
  }
  if (!opts.read_only && info.read_only) {
    notes.push_back(fmt::format("{}: mounted read-only: {}", opts.image, info.read_only_reason));
    opts.read_only = true;
  }
  if (info.replayed_transactions > 0 && info.replayed_in_memory) {
    notes.push_back(fmt::format("{}: replayed {} journal transactions in memory; the image is left as it is and "
                                "still needs recovery (a read-write mount or e2fsck replays it)",
                                opts.image, info.replayed_transactions));
  } else if (info.replayed_transactions > 0) {
    notes.push_back(fmt::format("{}: replayed {} journal transactions", opts.image, info.replayed_transactions));
  }
  if (!info.replay_problem.empty()) {
    notes.push_back(fmt::format("{}: the journal needs recovery but cannot be replayed ({}); showing the image as "
                                "it lies, without its newest changes",
                                opts.image, info.replay_problem));
  }
  if (info.state.find("with errors") != std::string::npos) {
    std::string first;
    if (info.first_error.time != 0) {
      first = fmt::format(" (the first: {}, inode {}{}{})", info.first_error.function, info.first_error.ino,
                          info.first_error.err.empty() ? "" : ", ", info.first_error.err);
    }
    notes.push_back(fmt::format("{}: the image records filesystem errors{}; running e2fsck -f on it is recommended",
                                opts.image, first));
  }

  Daemon daemon(std::move(*opened), opts, log);
  std::vector<std::string> args = fuse_arguments(opts);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  fuse_args fargs = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  // libfuse may copy the arguments to add its own (a leak LeakSanitizer
  // reported at every unmount); freed on every return, after the session.
  struct FreeArgs {
    fuse_args* args;
    ~FreeArgs() { fuse_opt_free_args(args); }
  } free_args{&fargs};
  fuse_session* se = fuse_session_new(&fargs, &Daemon::ops(), sizeof(fuse_lowlevel_ops), &daemon);
  if (!se) return failed("cannot start a FUSE session (the options above were refused by libfuse)");
  daemon.set_session(se);
  if (fuse_set_signal_handlers(se) != 0) {
    fuse_session_destroy(se);
    return failed("cannot install signal handlers");
  }
  if (fuse_session_mount(se, opts.mountpoint.c_str()) != 0) {
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    return failed(fmt::format("cannot mount on {} (is /dev/fuse there, and fusermount3 installed?)",
                              opts.mountpoint));
  }

  if (::geteuid() == 0) set_read_ahead(opts.mountpoint, opts.read_ahead_kb, opts.debug, log);

  // FUSE over io_uring: set up before INIT, which the request loop answers.
  std::unique_ptr<UringTransport> uring;
  const bool uring_required = opts.io_uring == IoUringMode::kOn;
  // io_uring=on, and registration failed after INIT: why, for the parent
  // once the mount is gone.
  std::atomic<bool> uring_refused{false};
  std::string uring_refusal;
  if (opts.io_uring != IoUringMode::kOff) {
    UringTransport::Config uc;
    uc.mode = opts.io_uring;
    const unsigned cpus = std::max(1u, static_cast<unsigned>(std::thread::hardware_concurrency()));
    uc.threads_per_queue = std::clamp(opts.max_threads / cpus, 2u, 8u);
    uc.info = [&log, debug = opts.debug](const std::string& m) {
      if (debug) log.info(m);
    };
    uc.error = [&log](const std::string& m) { log.error(m); };
    uc.ready = [&log, &bg, &uring_refused, &uring_refusal, se, uring_required, debug = opts.debug](
                   bool ok, const std::string& m) {
      if (ok) {
        if (debug) log.info(m);
        bg.done(0);
        return;
      }
      if (!uring_required) {
        if (debug) log.info(m + "; serving through /dev/fuse");
        return;
      }
      uring_refusal = fmt::format("io_uring=on: {}", m);
      if (bg.notify_fd < 0) log.error(uring_refusal);  // else the parent prints it
      uring_refused = true;
      fuse_session_exit(se);
    };
    std::string why;
    uring = UringTransport::install(se, std::move(uc), why);
    if (!uring) {
      if (uring_required) {
        fuse_session_unmount(se);
        fuse_remove_signal_handlers(se);
        fuse_session_destroy(se);
        return failed(fmt::format("io_uring=on: {}", why));
      }
      if (opts.debug) log.info(fmt::format("io_uring not used: {}; serving through /dev/fuse", why));
    }
  }

  // The /dev/fuse transport reads and writes through killpriv's hooks, so
  // that the kernel leaves setuid/setgid to us and stops asking for
  // security.capability before every write. Not with clone_fd: libfuse's
  // own loop reads the cloned descriptors, and a request whose flags went
  // unseen would keep bits it must lose.
  if (!uring && !opts.clone_fd && !killpriv::install_device_io(se)) {
    log.error(fmt::format("fuse_session_custom_io failed ({}); the kernel keeps clearing setuid/setgid itself",
                          std::strerror(errno)));
  }

  if (!opts.foreground) {
    if (opts.logfile.empty()) log.to_syslog();
    detach_stdio();
  }
  for (const auto& n : notes) log.info(n);
  if (opts.debug || !opts.foreground || !opts.logfile.empty()) {
    log.info(fmt::format("mounted {} on {} ({}, {} of {} blocks free, {} threads{})", opts.image, opts.mountpoint,
                         opts.read_only ? "read-only" : "read-write", info.free_blocks, info.blocks_count,
                         opts.max_threads, opts.writeback_cache ? ", writeback cache" : ""));
  }
  // With io_uring=on the parent learns the outcome once the rings are
  // registered (after INIT), from the transport's ready callback.
  if (!(uring && uring_required)) bg.done(0);

  int loop;
  if (opts.clone_fd) {
    // libfuse's own loop, the only one that can give each thread its own descriptor.
    fuse_loop_config* cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(cfg, opts.max_threads);
    fuse_loop_cfg_set_idle_threads(cfg, std::min(opts.max_threads, 4u));
    fuse_loop_cfg_set_clone_fd(cfg, 1);
    loop = fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);
  } else {
    loop = serve_requests(se, opts.max_threads, opts.busy_poll_us);
  }

  // The ring threads stop before the unmount; closing their rings gives the
  // kernel back their entries.
  if (uring) uring->stop();
  fuse_session_unmount(se);
  // With io_uring=on the parent is still waiting (unless the rings came up).
  bg.done(1, uring_refused ? uring_refusal : "the FUSE session ended before the kernel's INIT");
  fuse_remove_signal_handlers(se);
  int rc = 0;
  if (loop != 0 && loop != -EINTR && !daemon.panicked()) {
    log.error(fmt::format("{}: the FUSE session ended with an error: {}", opts.image, std::strerror(loop < 0 ? -loop : loop)));
  }
  if (daemon.panicked()) {
    // errors=panic: write nothing more; the journal replays on the next mount.
    (void)daemon.take_fs().release();
    rc = 1;
  } else {
    std::unique_ptr<Filesystem> fs = daemon.take_fs();
    Status closed = fs->close();
    if (!closed.ok()) {
      log.error(fmt::format("{}: closing failed: {}; the journal replays on the next mount", opts.image,
                            closed.error().message()));
      rc = 1;
    } else if (opts.debug || !opts.logfile.empty()) {
      log.info(fmt::format("unmounted {}: closed clean", opts.image));
    }
  }
  fuse_session_destroy(se);
  uring.reset();  // after the session: libfuse calls its custom I/O until then
  return uring_refused ? 1 : rc;
}

}  // namespace uext::fuse
