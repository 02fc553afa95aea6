// libuext_preload.so: runs an unchanged program on a uext image.
//
//   LD_PRELOAD=libuext_preload.so UEXT_PRELOAD_IMAGE=disk.img UEXT_PRELOAD_PREFIX=/uext
//       fio --thread --ioengine=mmap --filename=/uext/f ...
//
// Paths under the prefix ("/uext/dir/f" is "/dir/f" in the image) are
// served by uext::Filesystem, opened read-write at the first such call and
// closed (written back, journal checkpointed, clean) when the program
// exits. Their descriptors are real numbers -- each holds an O_PATH open of
// /dev/null, so no number is ever handed out twice, and anything that
// reaches the kernel with one (stdio's own write, say) fails with EBADF
// instead of vanishing -- kept in a table of
// uext open file descriptions; mmap of one is Filesystem::mmap, so stores
// go through uext's own page_mkwrite (userfaultfd or the SIGSEGV fallback).
// Everything else goes to the next definition (libc) untouched.
//
// UEXT_PRELOAD_OPTIONS, comma-separated: ro, nodelalloc, delalloc,
// fault_handling=auto|userfaultfd|signal, commit=SECS, page_cache=BYTES,
// dirty_limit=BYTES (K, M, G suffixes), direct_io; stats prints at exit
// "uext_preload: stats: IMG: N opens, M mappings (userfaultfd|signal|none),
// closed clean".
//
// Descriptors uext itself opens while serving a call (the image, memfds,
// userfaultfd) are moved to high numbers, where a program's dup2 onto
// "the next free number" does not close them behind uext's back.
//
// Limits: one process (a forked child's calls on routed paths fail with
// EIO: uext's threads stay in the parent); stdio (fopen), opendir and
// other calls libc makes internally reach the host, not the image;
// mprotect and mremap of a routed mapping are not routed, nor munmap of
// part of one (refused with EINVAL).
#undef _FORTIFY_SOURCE

#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/file.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "uext/filesystem.h"
#include "uext/mapping.h"

#define UEXT_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// ---- the next definitions (libc's) ----

#define UEXT_REAL_LIST(X)                                                                                   \
  X(open) X(open64) X(openat) X(openat64) X(creat) X(creat64) X(close) X(read) X(write) X(pread)          \
  X(pread64) X(pwrite) X(pwrite64) X(readv) X(writev) X(preadv) X(preadv64) X(pwritev) X(pwritev64)       \
  X(preadv2) X(pwritev2) X(preadv64v2) X(pwritev64v2) X(lseek) X(lseek64) X(stat) X(stat64) X(lstat)       \
  X(lstat64) X(fstat) X(fstat64) X(fstatat) X(fstatat64) X(statx) X(statfs) X(statfs64) X(fstatfs)        \
  X(fstatfs64) X(ftruncate) X(ftruncate64) X(truncate) X(truncate64) X(fallocate) X(fallocate64)          \
  X(posix_fallocate) X(posix_fallocate64) X(posix_fadvise) X(posix_fadvise64) X(readahead) X(fsync)       \
  X(fdatasync) X(syncfs) X(sync_file_range) X(unlink) X(unlinkat) X(rmdir) X(mkdir) X(mkdirat) X(rename)  \
  X(renameat) X(renameat2) X(access) X(faccessat) X(readlink) X(readlinkat) X(mmap) X(mmap64) X(munmap)   \
  X(msync) X(madvise) X(posix_madvise) X(fcntl) X(fcntl64) X(ioctl) X(dup) X(dup2) X(dup3) X(flock)       \
  X(fchmod) X(fchown) X(futimens) X(copy_file_range) X(sendfile) X(sendfile64) X(fsetxattr)               \
  X(fgetxattr) X(flistxattr) X(fremovexattr) X(memfd_create) X(eventfd) X(syscall) X(execve) X(execv)    \
  X(execvp) X(execvpe) X(fexecve)

struct RealFunctions {
#define UEXT_SLOT(name) decltype(&::name) name = nullptr;
  UEXT_REAL_LIST(UEXT_SLOT)
#undef UEXT_SLOT
};
RealFunctions g_real;

void resolve_real() {
#define UEXT_RESOLVE(name) \
  if (!g_real.name) g_real.name = reinterpret_cast<decltype(&::name)>(dlsym(RTLD_NEXT, #name));
  UEXT_REAL_LIST(UEXT_RESOLVE)
#undef UEXT_RESOLVE
}

#define REAL(name) (g_real.name ? g_real.name : (resolve_real(), g_real.name))

// ---- state ----

// Nonzero while this thread is inside uext (or the shim's own work): every
// call it makes goes straight to libc.
thread_local int t_inside = 0;
struct Inside {
  Inside() { ++t_inside; }
  ~Inside() { --t_inside; }
  Inside(const Inside&) = delete;
  Inside& operator=(const Inside&) = delete;
};

std::atomic<bool> g_active{false};  // UEXT_PRELOAD_IMAGE is set
int g_high_fd_base = 512;           // where uext's own descriptors are moved
std::atomic<bool> g_child{false};   // this process is a fork child

std::mutex g_open_mu;       // guards opening (and reopening after a failed exec)
bool g_open_failed = false;  // reported once; routed calls fail with EIO
bool g_atexit_registered = false;
std::atomic<uext::Filesystem*> g_fs{nullptr};
int g_lock_fd = -1;
uint32_t g_block_size = 4096;
dev_t g_dev = makedev(0x75, 0x78);  // st_dev of every routed file ('u', 'x')
bool g_stats = false;
std::atomic<uint64_t> g_open_count{0}, g_map_made{0};
std::atomic<int> g_map_mode{-1};  // FaultHandling of the first mapping

// An open file description in the image.
struct OpenFile {
  uext::Ino ino = 0;
  std::string path;  // in the image, for messages and relative *at() calls
  int flags = 0;     // O_ACCMODE, O_APPEND, O_NONBLOCK as F_GETFL shows them
  bool directory = false;
  std::mutex mu;     // guards pos and wb_seen
  uint64_t pos = 0;
  uint64_t wb_seen = 0;
  ~OpenFile();
  bool readable() const { return (flags & O_ACCMODE) != O_WRONLY; }
  bool writable() const { return (flags & O_ACCMODE) != O_RDONLY; }
};

struct MapEntry {
  std::unique_ptr<uext::Mapping> mapping;
  uintptr_t start = 0;
  size_t length = 0;
  std::string path;
  bool shared = false;
};

// Made by the constructor and never destroyed: nothing here may depend on
// the order of static initialisation or destruction.
struct State {
  std::string image;
  std::string prefix;
  // Guards fds and maps. A leaf: never held across a call into uext or one
  // that may block.
  std::mutex mu;
  std::unordered_map<int, std::shared_ptr<OpenFile>> fds;
  std::map<uintptr_t, std::shared_ptr<MapEntry>> maps;
};
State* g_state = nullptr;
// Lock-free first look for the many calls on descriptors that are not ours
// (uext's own pread/pwrite on the image and its memfds among them).
constexpr int kFdHints = 1 << 16;
std::atomic<bool> g_fd_hint[kFdHints];
std::atomic<int> g_high_fds{0};  // routed descriptors >= kFdHints
std::atomic<int> g_map_count{0};

// uext's threads (journal commit timer, writeback, userfaultfd handlers)
// inherit the signal mask of the thread that makes them. Made with every
// asynchronous signal blocked, they never take a signal meant for the
// program -- a shell's SIGCHLD, whose handler and sigprocmask-guarded
// waits assume the program's own threads. Faults (SIGSEGV, SIGBUS, ...)
// stay deliverable: uext's signal fallback serves them.
class AsyncSignalsBlocked {
 public:
  AsyncSignalsBlocked() {
    sigset_t all;
    sigfillset(&all);
    for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS}) sigdelset(&all, s);
    pthread_sigmask(SIG_BLOCK, &all, &old_);
  }
  ~AsyncSignalsBlocked() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  AsyncSignalsBlocked(const AsyncSignalsBlocked&) = delete;
  AsyncSignalsBlocked& operator=(const AsyncSignalsBlocked&) = delete;

 private:
  sigset_t old_;
};

// ---- messages and errors ----

void say(const std::string& line) {
  std::string s = "uext_preload: " + line + "\n";
  (void)!REAL(write)(2, s.data(), s.size());
}

int fail(int e) {
  errno = e;
  return -1;
}

// A descriptor uext opened while serving a call, moved out of the way of
// the program's own numbering.
int relocate(int fd) {
  if (fd < 0 || !t_inside || fd >= g_high_fd_base) return fd;
  const int saved = errno;
  const int high = REAL(fcntl)(fd, F_DUPFD_CLOEXEC, g_high_fd_base);
  if (high >= 0) REAL(close)(fd);
  errno = saved;
  return high >= 0 ? high : fd;
}

// Errors programs meet in ordinary use are left to errno; the others are
// also reported with the library's message, which names the structure.
bool ordinary(int code) {
  switch (code) {
    case ENOENT: case EEXIST: case ENOTDIR: case EISDIR: case ENOTEMPTY: case ENOSPC: case EACCES:
    case EPERM: case EINVAL: case ENAMETOOLONG: case ELOOP: case ENODATA: case EFBIG: case ENXIO:
    case EOPNOTSUPP: case EXDEV: case EBADF: case EROFS: case EMLINK:
      return true;
    default:
      return false;
  }
}

int fail_with(const char* call, const std::string& path, const uext::Error& e) {
  if (!ordinary(e.code())) say(fmt::format("{} {}: {}", call, path, e.message()));
  return fail(e.code());
}

int refuse_in_child(const char* call, const std::string& path) {
  say(fmt::format("{} {}: refused in a forked child (pid {}): the image is served by the parent's threads, "
                  "which fork does not copy",
                  call, path, getpid()));
  return fail(EIO);
}

// ---- opening the image ----

bool parse_bytes(std::string_view v, uint64_t& out) {
  if (v.empty()) return false;
  uint64_t n = 0;
  size_t i = 0;
  for (; i < v.size() && v[i] >= '0' && v[i] <= '9'; ++i) {
    const auto d = static_cast<uint64_t>(v[i] - '0');
    if (n > (UINT64_MAX - d) / 10) return false;  // too large: refused, not wrapped
    n = n * 10 + d;
  }
  if (i == 0) return false;
  std::string_view suffix = v.substr(i);
  unsigned shift = 0;
  if (suffix.empty()) {
  } else if (suffix == "K" || suffix == "k") {
    shift = 10;
  } else if (suffix == "M" || suffix == "m") {
    shift = 20;
  } else if (suffix == "G" || suffix == "g") {
    shift = 30;
  } else {
    return false;
  }
  if (n > (UINT64_MAX >> shift)) return false;
  out = n << shift;
  return true;
}

// UEXT_PRELOAD_OPTIONS into `o`; an error message, or empty.
std::string parse_options(const char* text, uext::Options& o) {
  std::string_view rest = text ? text : "";
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    std::string_view key = item.substr(0, eq);
    std::string_view value = eq == std::string_view::npos ? std::string_view() : item.substr(eq + 1);
    uint64_t n = 0;
    if (item == "ro") {
      o.read_only = true;
    } else if (item == "rw") {
      o.read_only = false;
    } else if (item == "nodelalloc") {
      o.delayed_allocation = false;
    } else if (item == "delalloc") {
      o.delayed_allocation = true;
    } else if (item == "direct_io") {
      o.direct_io = true;
    } else if (item == "stats") {
      g_stats = true;
    } else if (key == "fault_handling" && value == "auto") {
      o.fault_handling = uext::FaultHandling::kAuto;
    } else if (key == "fault_handling" && value == "userfaultfd") {
      o.fault_handling = uext::FaultHandling::kUserfaultfd;
    } else if (key == "fault_handling" && value == "signal") {
      o.fault_handling = uext::FaultHandling::kSignal;
    } else if (key == "commit" && parse_bytes(value, n) && n <= 86400) {
      o.commit_interval_ms = static_cast<uint32_t>(n * 1000);
    } else if (key == "page_cache" && parse_bytes(value, n)) {
      o.page_cache_bytes = n;
    } else if (key == "dirty_limit" && parse_bytes(value, n)) {
      o.dirty_limit_bytes = n;
    } else if (key == "offset" && parse_bytes(value, n)) {
      o.image_offset = n;
    } else if (key == "sizelimit" && parse_bytes(value, n) && n > 0) {
      o.image_size_limit = n;
    } else if (key == "partition" && parse_bytes(value, n) && n > 0 && n <= 256) {
      o.image_partition = static_cast<uint32_t>(n);
    } else {
      return fmt::format("UEXT_PRELOAD_OPTIONS: bad option '{}' (known: ro, rw, nodelalloc, delalloc, direct_io, stats, "
                         "fault_handling=auto|userfaultfd|signal, commit=SECS, page_cache=BYTES, dirty_limit=BYTES, "
                         "offset=BYTES, sizelimit=BYTES, partition=N)",
                         item);
    }
  }
  return {};
}

void close_filesystem();

void open_filesystem() {
  Inside in;
  uext::Options o;
  o.read_only = false;
  std::string problem = parse_options(std::getenv("UEXT_PRELOAD_OPTIONS"), o);
  if (problem.empty()) {
    // The lock uext mount takes too: no second writer on the image.
    g_lock_fd = relocate(REAL(open)(g_state->image.c_str(), O_RDONLY | O_CLOEXEC));
    if (g_lock_fd < 0) {
      problem = fmt::format("cannot open image {}: {}", g_state->image, std::strerror(errno));
    } else if (::flock(g_lock_fd, (o.read_only ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
      problem = fmt::format("image {} is in use: another process (uext mount or a program under this shim) "
                            "holds its lock",
                            g_state->image);
    }
  }
  if (problem.empty()) {
    AsyncSignalsBlocked quiet;  // for the threads open starts
    auto fs = uext::Filesystem::open(g_state->image, o);
    if (!fs.ok()) {
      problem = fmt::format("cannot open image {}: {}", g_state->image, fs.error().message());
    } else {
      g_block_size = (*fs)->info().block_size;
      g_fs.store(fs->release());
      // Registered after everything uext set up at load, so it runs first.
      if (!g_atexit_registered) std::atexit(close_filesystem);
      g_atexit_registered = true;
      return;
    }
  }
  if (g_lock_fd >= 0) REAL(close)(g_lock_fd);
  g_lock_fd = -1;
  g_open_failed = true;
  say(problem + "; calls under " + g_state->prefix + " fail with EIO");
}

uext::Filesystem* filesystem() {
  if (uext::Filesystem* fs = g_fs.load()) return fs;
  std::lock_guard lock(g_open_mu);
  if (!g_fs.load() && !g_open_failed) open_filesystem();
  return g_fs.load();
}

OpenFile::~OpenFile() {
  if (g_child.load() || ino == 0) return;
  if (uext::Filesystem* fs = g_fs.load()) {
    Inside in;
    (void)fs->release(ino);
  }
}

// At exit: unmap what the program left mapped, drop every description,
// then close, so the image is left clean with nothing to replay.
void close_filesystem_here() {
  uext::Filesystem* fs = g_fs.load();
  if (!fs) return;
  Inside in;
  // New calls no longer find it. The object itself is never freed: a
  // thread still inside one of its calls gets EIO from the closed
  // filesystem instead of touching freed memory (exec may follow at once).
  g_fs.store(nullptr);
  std::map<uintptr_t, std::shared_ptr<MapEntry>> maps;
  std::unordered_map<int, std::shared_ptr<OpenFile>> fds;
  {
    std::lock_guard lock(g_state->mu);
    maps.swap(g_state->maps);
    fds.swap(g_state->fds);
    g_map_count = 0;
    for (auto& [fd, f] : fds) {
      if (fd < kFdHints) g_fd_hint[fd] = false;
    }
    g_high_fds = 0;
  }
  // Descriptions release their inodes through the filesystem they came from.
  for (auto& [start, e] : maps) e->mapping.reset();
  maps.clear();
  for (auto& [fd, f] : fds) {
    if (f->ino == 0) continue;  // a description behind several numbers: once
    (void)fs->release(f->ino);
    f->ino = 0;
  }
  fds.clear();
  uext::Status closed = fs->close();
  if (!closed.ok()) {
    say(fmt::format("closing image {}: {}", g_state->image, closed.error().message()));
  } else if (g_stats) {
    const int mode = g_map_mode.load();
    say(fmt::format("stats: {}: {} opens, {} mappings ({}), closed clean", g_state->image, g_open_count.load(),
                    g_map_made.load(),
                    mode < 0 ? "none" : mode == static_cast<int>(uext::FaultHandling::kUserfaultfd) ? "userfaultfd"
                                                                                                  : "signal"));
  }
  if (g_lock_fd >= 0) REAL(close)(g_lock_fd);
  g_lock_fd = -1;
}

// From a thread of its own: at exit glibc has already destroyed the exiting
// thread's thread_local objects (before atexit handlers run), and uext's
// debug builds keep their lock-order records in one.
void close_filesystem() {
  if (g_child.load() || !g_fs.load()) return;
  try {
    AsyncSignalsBlocked quiet;
    std::thread closer(close_filesystem_here);
    closer.join();
  } catch (const std::system_error&) {
    close_filesystem_here();  // no thread to be had: close from here
  }
}

__attribute__((constructor)) void preload_init() {
  resolve_real();
  const char* image = std::getenv("UEXT_PRELOAD_IMAGE");
  if (!image || !*image) return;
  std::string prefix = std::getenv("UEXT_PRELOAD_PREFIX") ? std::getenv("UEXT_PRELOAD_PREFIX") : "/uext";
  while (prefix.size() > 1 && prefix.back() == '/') prefix.pop_back();
  if (prefix.empty() || prefix[0] != '/' || prefix == "/") {
    say(fmt::format("UEXT_PRELOAD_PREFIX '{}' must be an absolute path other than /; nothing is routed", prefix));
    return;
  }
  g_state = new State;
  g_state->image = image;
  g_state->prefix = prefix;
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY) {
    // High, but not so high that the kernel's descriptor table must grow
    // to millions of slots for the first one.
    g_high_fd_base = static_cast<int>(std::clamp<rlim_t>(nofile.rlim_cur / 2, 64, 4096));
  }
  // The child gets the table unlocked (no thread of the parent holds it
  // across fork) and refuses routed calls from then on.
  pthread_atfork([] { g_state->mu.lock(); }, [] { g_state->mu.unlock(); },
                 [] {
                   g_child = true;
                   g_state->mu.unlock();
                 });
  g_active = true;
}

__attribute__((destructor)) void preload_fini() { close_filesystem(); }

// ---- paths ----

// Lexically normalised absolute image path ("/a/b"), "/" for the root.
std::string normalize(std::string_view p) {
  std::vector<std::string_view> parts;
  while (!p.empty()) {
    const size_t slash = p.find('/');
    std::string_view c = p.substr(0, slash);
    p = slash == std::string_view::npos ? std::string_view() : p.substr(slash + 1);
    if (c.empty() || c == ".") continue;
    if (c == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(c);
  }
  std::string out;
  for (auto c : parts) {
    out += '/';
    out += c;
  }
  return out.empty() ? "/" : out;
}

// A path the shim routes: its image path in `out`. A trailing slash asks
// for a directory.
struct Routed {
  std::string path;
  bool want_dir = false;
};

bool route_path(const char* path, Routed& out) {
  if (!path || t_inside || !g_active.load(std::memory_order_relaxed)) return false;
  const size_t n = g_state->prefix.size();
  if (std::strncmp(path, g_state->prefix.c_str(), n) != 0 || (path[n] != '\0' && path[n] != '/')) return false;
  std::string_view rest(path + n);
  out.want_dir = !rest.empty() && rest.back() == '/';
  out.path = normalize(rest);
  return true;
}

std::shared_ptr<OpenFile> routed_fd(int fd) {
  if (t_inside || fd < 0) return nullptr;
  if (fd < kFdHints) {
    if (!g_fd_hint[fd].load(std::memory_order_acquire)) return nullptr;
  } else if (g_high_fds.load() == 0) {
    return nullptr;
  }
  std::lock_guard lock(g_state->mu);
  auto it = g_state->fds.find(fd);
  return it == g_state->fds.end() ? nullptr : it->second;
}

// For *at() calls: the image path of (dirfd, path) when it is routed.
bool route_at(int dirfd, const char* path, Routed& out) {
  if (!path || t_inside) return false;
  if (path[0] == '/' || dirfd == AT_FDCWD) return route_path(path, out);
  auto dir = routed_fd(dirfd);
  if (!dir || path[0] == '\0') return false;  // "" without AT_EMPTY_PATH: ENOENT from the kernel
  out.want_dir = path[0] != '\0' && path[std::strlen(path) - 1] == '/';
  out.path = normalize(dir->path + "/" + path);
  return true;
}

void install_fd(int fd, std::shared_ptr<OpenFile> f) {
  std::lock_guard lock(g_state->mu);
  g_state->fds[fd] = std::move(f);
  if (fd < kFdHints) {
    g_fd_hint[fd].store(true, std::memory_order_release);
  } else {
    ++g_high_fds;
  }
}

std::shared_ptr<OpenFile> remove_fd(int fd) {
  std::lock_guard lock(g_state->mu);
  auto it = g_state->fds.find(fd);
  if (it == g_state->fds.end()) return nullptr;
  auto f = std::move(it->second);
  g_state->fds.erase(it);
  if (fd < kFdHints) {
    g_fd_hint[fd].store(false, std::memory_order_release);
  } else {
    --g_high_fds;
  }
  return f;
}

// The filesystem for a routed call, or null with errno set (EIO).
uext::Filesystem* fs_for(const char* call, const std::string& path) {
  if (g_child.load()) {
    refuse_in_child(call, path);
    return nullptr;
  }
  uext::Filesystem* fs = filesystem();
  if (!fs) errno = EIO;
  return fs;
}

std::pair<std::string, std::string> split(const std::string& path) {
  const size_t slash = path.rfind('/');
  return {slash == 0 ? "/" : path.substr(0, slash), path.substr(slash + 1)};
}

mode_t current_umask() {
  // umask(2) cannot be read without changing it (racy with other threads).
  int fd = REAL(open)("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 022;
  char buf[4096];
  ssize_t n = REAL(read)(fd, buf, sizeof buf - 1);
  REAL(close)(fd);
  if (n <= 0) return 022;
  buf[n] = '\0';
  const char* u = std::strstr(buf, "Umask:");
  return u ? static_cast<mode_t>(std::strtoul(u + 6, nullptr, 8)) : 022;
}

// ---- stat ----

timespec ts(const uext::Time& t) { return timespec{static_cast<time_t>(t.sec), static_cast<long>(t.nsec)}; }

template <class StatT>
void fill_stat(const uext::Stat& s, StatT* out) {
  std::memset(out, 0, sizeof *out);
  out->st_dev = g_dev;
  out->st_ino = s.ino;
  out->st_mode = s.mode;
  out->st_nlink = s.nlink;
  out->st_uid = s.uid;
  out->st_gid = s.gid;
  out->st_rdev = makedev(s.rdev_major, s.rdev_minor);
  out->st_size = static_cast<off_t>(s.size);
  out->st_blksize = g_block_size;
  out->st_blocks = static_cast<blkcnt_t>(s.blocks);
  out->st_atim = ts(s.atime);
  out->st_mtim = ts(s.mtime);
  out->st_ctim = ts(s.ctime);
}

void fill_statx(const uext::Stat& s, struct statx* out) {
  std::memset(out, 0, sizeof *out);
  out->stx_mask = STATX_BASIC_STATS | STATX_BTIME;
  out->stx_blksize = g_block_size;
  out->stx_nlink = s.nlink;
  out->stx_uid = s.uid;
  out->stx_gid = s.gid;
  out->stx_mode = static_cast<uint16_t>(s.mode);
  out->stx_ino = s.ino;
  out->stx_size = s.size;
  out->stx_blocks = s.blocks;
  auto t = [](const uext::Time& x) { return statx_timestamp{x.sec, x.nsec, 0}; };
  out->stx_atime = t(s.atime);
  out->stx_btime = t(s.crtime);
  out->stx_ctime = t(s.ctime);
  out->stx_mtime = t(s.mtime);
  out->stx_rdev_major = s.rdev_major;
  out->stx_rdev_minor = s.rdev_minor;
  out->stx_dev_major = major(g_dev);
  out->stx_dev_minor = minor(g_dev);
}

// Resolves a routed path (following the last symlink or not) and stats it.
uext::Result<uext::Stat> stat_path(uext::Filesystem& fs, const Routed& r, bool follow) {
  auto ino = fs.resolve(r.path, follow);
  if (!ino.ok()) return std::move(ino).error();
  auto st = fs.stat(*ino);
  if (st.ok() && r.want_dir && !S_ISDIR(st->mode)) return uext::Error(ENOTDIR, r.path + ": not a directory");
  return st;
}

template <class StatT>
int routed_stat(const char* call, const Routed& r, bool follow, StatT* buf) {
  uext::Filesystem* fs = fs_for(call, r.path);
  if (!fs) return -1;
  Inside in;
  auto st = stat_path(*fs, r, follow);
  if (!st.ok()) return fail_with(call, r.path, st.error());
  fill_stat(*st, buf);
  return 0;
}

template <class StatT>
int routed_fstat(const char* call, OpenFile& f, StatT* buf) {
  uext::Filesystem* fs = fs_for(call, f.path);
  if (!fs) return -1;
  Inside in;
  auto st = fs->stat(f.ino);
  if (!st.ok()) return fail_with(call, f.path, st.error());
  fill_stat(*st, buf);
  return 0;
}

template <class StatT>
int stat_at(const char* call, int dirfd, const char* path, StatT* buf, int flags, bool& handled) {
  handled = true;
  if (path && path[0] == '\0' && (flags & AT_EMPTY_PATH)) {
    if (auto f = routed_fd(dirfd)) return routed_fstat(call, *f, buf);
    handled = false;
    return 0;
  }
  Routed r;
  if (route_at(dirfd, path, r)) return routed_stat(call, r, !(flags & AT_SYMLINK_NOFOLLOW), buf);
  handled = false;
  return 0;
}

template <class StatfsT>
int routed_statfs(const char* call, const std::string& path, StatfsT* out) {
  uext::Filesystem* fs = fs_for(call, path);
  if (!fs) return -1;
  Inside in;
  auto s = fs->statfs();
  if (!s.ok()) return fail_with(call, path, s.error());
  std::memset(out, 0, sizeof *out);
  out->f_type = 0xEF53;  // EXT4_SUPER_MAGIC
  out->f_bsize = s->block_size;
  out->f_frsize = s->block_size;
  out->f_blocks = s->blocks;
  out->f_bfree = s->free_blocks;
  out->f_bavail = s->available_blocks;
  out->f_files = s->files;
  out->f_ffree = s->free_files;
  out->f_namelen = s->name_max;
  return 0;
}

// ---- open and close ----

int routed_open(const Routed& r, int flags, mode_t mode) {
  uext::Filesystem* fs = fs_for("open", r.path);
  if (!fs) return -1;
  if ((flags & __O_TMPFILE) == __O_TMPFILE) {  // (O_DIRECTORY alone is not it)
    say(fmt::format("open {}: O_TMPFILE is not supported in the image", r.path));
    return fail(EOPNOTSUPP);
  }
  const int acc = flags & O_ACCMODE;
  const bool wants_write = acc != O_RDONLY || (flags & O_TRUNC);
  Inside in;
  auto ino = fs->resolve(r.path, !(flags & O_NOFOLLOW));
  if (ino.ok()) {
    if ((flags & O_CREAT) && (flags & O_EXCL)) return fail(EEXIST);
  } else if (ino.error().code() == ENOENT && (flags & O_CREAT) && r.path != "/" && !r.want_dir) {
    auto [parent, name] = split(r.path);
    auto dir = fs->resolve(parent, true);
    if (!dir.ok()) return fail_with("open", r.path, dir.error());
    // The umask goes with the owner: uext applies it unless the directory
    // has a default ACL, as ext4 does.
    auto made = fs->create(*dir, name, S_IFREG | (mode & 07777), uext::Owner{geteuid(), getegid(), current_umask()});
    if (made.ok()) {
      ino = made->ino;
    } else if (made.error().code() == EEXIST && !(flags & O_EXCL)) {
      ino = fs->resolve(r.path, !(flags & O_NOFOLLOW));  // another thread made it first
      if (!ino.ok()) return fail_with("open", r.path, ino.error());
    } else {
      return fail_with("open", r.path, made.error());
    }
  } else {
    return fail_with("open", r.path, ino.error());
  }
  auto st = fs->stat(*ino);
  if (!st.ok()) return fail_with("open", r.path, st.error());
  const bool dir = S_ISDIR(st->mode);
  if (S_ISLNK(st->mode)) return fail(ELOOP);  // O_NOFOLLOW on a symlink
  if (dir && wants_write) return fail(EISDIR);
  if (!dir && ((flags & O_DIRECTORY) || r.want_dir)) return fail(ENOTDIR);
  if (!dir && !S_ISREG(st->mode)) {
    say(fmt::format("open {}: only regular files and directories in the image can be opened", r.path));
    return fail(EOPNOTSUPP);
  }
  if ((flags & O_TRUNC) && acc != O_RDONLY && st->size > 0) {
    uext::Status t = fs->truncate(*ino, 0);
    if (!t.ok()) return fail_with("open", r.path, t.error());
  }
  // The number: a real descriptor, so that nothing else gets it.
  const int fd = REAL(open)("/dev/null", O_PATH | O_CLOEXEC);
  if (fd < 0) return -1;
  auto f = std::make_shared<OpenFile>();
  f->ino = *ino;
  f->path = r.path;
  f->flags = flags & (O_ACCMODE | O_APPEND | O_NONBLOCK | O_DIRECT | O_NOATIME | O_SYNC | O_DSYNC);
  f->directory = dir;
  fs->retain(*ino);
  f->wb_seen = fs->wb_err_sample(*ino);
  install_fd(fd, std::move(f));
  ++g_open_count;
  return fd;
}

int close_routed(int fd, std::shared_ptr<OpenFile> f) {
  // Out of the table before the number is free again.
  remove_fd(fd);
  const int r = REAL(close)(fd);
  Inside in;
  f.reset();  // the last reference releases the inode
  return r;
}

// ---- data ----

ssize_t routed_read(const char* call, OpenFile& f, void* buf, size_t n, int64_t offset) {
  uext::Filesystem* fs = fs_for(call, f.path);
  if (!fs) return -1;
  if (!f.readable()) return fail(EBADF);
  if (f.directory) return fail(EISDIR);
  n = std::min<size_t>(n, 0x7ffff000);
  Inside in;
  std::unique_lock lock(f.mu, std::defer_lock);
  if (offset < 0) lock.lock();
  const uint64_t at = offset < 0 ? f.pos : static_cast<uint64_t>(offset);
  auto got = fs->read(f.ino, at, std::span<std::byte>(static_cast<std::byte*>(buf), n));
  if (!got.ok()) return fail_with(call, f.path, got.error());
  if (offset < 0) f.pos = at + *got;
  return static_cast<ssize_t>(*got);
}

ssize_t routed_write(const char* call, OpenFile& f, const void* buf, size_t n, int64_t offset, bool append) {
  uext::Filesystem* fs = fs_for(call, f.path);
  if (!fs) return -1;
  if (!f.writable()) return fail(EBADF);
  n = std::min<size_t>(n, 0x7ffff000);
  Inside in;
  std::unique_lock lock(f.mu, std::defer_lock);
  if (offset < 0 || append) lock.lock();
  uint64_t at = offset < 0 ? f.pos : static_cast<uint64_t>(offset);
  if (append) {
    auto st = fs->stat(f.ino);
    if (!st.ok()) return fail_with(call, f.path, st.error());
    at = st->size;
  }
  auto put = fs->write(f.ino, at, std::span<const std::byte>(static_cast<const std::byte*>(buf), n));
  if (!put.ok()) return fail_with(call, f.path, put.error());
  if (offset < 0) f.pos = at + *put;
  if (f.flags & (O_SYNC | O_DSYNC)) {
    if (!lock.owns_lock()) lock.lock();  // wb_seen is the description's
    uext::Status s = fs->fsync(f.ino, !(f.flags & O_SYNC & ~O_DSYNC), f.wb_seen);
    if (!s.ok()) return fail_with(call, f.path, s.error());
  }
  return static_cast<ssize_t>(*put);
}

ssize_t routed_rw_vec(const char* call, OpenFile& f, const iovec* iov, int count, int64_t offset, bool write,
                      bool append) {
  if (count < 0 || count > IOV_MAX) return fail(EINVAL);
  ssize_t total = 0;
  for (int i = 0; i < count; ++i) {
    if (iov[i].iov_len == 0) continue;
    const int64_t at = offset < 0 ? -1 : offset + total;
    ssize_t n = write ? routed_write(call, f, iov[i].iov_base, iov[i].iov_len, at, append)
                      : routed_read(call, f, iov[i].iov_base, iov[i].iov_len, at);
    if (n < 0) return total > 0 ? total : -1;
    total += n;
    if (static_cast<size_t>(n) < iov[i].iov_len) break;
  }
  return total;
}

off64_t routed_lseek(OpenFile& f, off64_t offset, int whence) {
  uext::Filesystem* fs = fs_for("lseek", f.path);
  if (!fs) return -1;
  Inside in;
  std::lock_guard lock(f.mu);
  int64_t base = 0;
  switch (whence) {
    case SEEK_SET:
      break;
    case SEEK_CUR:
      base = static_cast<int64_t>(f.pos);
      break;
    case SEEK_END: {
      auto st = fs->stat(f.ino);
      if (!st.ok()) return fail_with("lseek", f.path, st.error());
      base = static_cast<int64_t>(st->size);
      break;
    }
    case SEEK_DATA:
    case SEEK_HOLE: {
      if (offset < 0) return fail(ENXIO);
      auto at = fs->seek(f.ino, static_cast<uint64_t>(offset), whence);
      if (!at.ok()) return fail_with("lseek", f.path, at.error());
      f.pos = *at;
      return static_cast<off64_t>(*at);
    }
    default:
      return fail(EINVAL);
  }
  const int64_t pos = base + offset;
  if (pos < 0) return fail(EINVAL);
  f.pos = static_cast<uint64_t>(pos);
  return pos;
}

int routed_truncate(const char* call, uext::Filesystem& fs, uext::Ino ino, const std::string& path, int64_t size) {
  if (size < 0) return fail(EINVAL);
  Inside in;
  uext::Status s = fs.truncate(ino, static_cast<uint64_t>(size));
  return s.ok() ? 0 : fail_with(call, path, s.error());
}

int routed_fallocate(OpenFile& f, int mode, int64_t offset, int64_t len) {
  uext::Filesystem* fs = fs_for("fallocate", f.path);
  if (!fs) return -1;
  if (offset < 0 || len <= 0) return fail(EINVAL);
  if (!f.writable()) return fail(EBADF);
  Inside in;
  uext::Status s = fs->fallocate(f.ino, mode, static_cast<uint64_t>(offset), static_cast<uint64_t>(len));
  return s.ok() ? 0 : fail_with("fallocate", f.path, s.error());
}

// posix_fallocate: fallocate, or (files without extents) zeros written into
// every hole of the range and past the end, as glibc's fallback does.
int routed_posix_fallocate(OpenFile& f, int64_t offset, int64_t len) {
  uext::Filesystem* fs = fs_for("posix_fallocate", f.path);
  if (!fs) return EIO;
  if (offset < 0 || len <= 0) return EINVAL;
  if (!f.writable()) return EBADF;
  Inside in;
  uext::Status s = fs->fallocate(f.ino, 0, static_cast<uint64_t>(offset), static_cast<uint64_t>(len));
  if (s.ok()) return 0;
  if (s.error().code() != EOPNOTSUPP) {
    fail_with("posix_fallocate", f.path, s.error());
    return s.error().code();
  }
  auto st = fs->stat(f.ino);
  if (!st.ok()) return fail_with("posix_fallocate", f.path, st.error()), st.error().code();
  const uint64_t end = static_cast<uint64_t>(offset) + static_cast<uint64_t>(len);
  std::vector<std::byte> zeros(1 << 20);
  auto zero = [&](uint64_t from, uint64_t to) -> int {
    while (from < to) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(zeros.size(), to - from));
      auto put = fs->write(f.ino, from, std::span<const std::byte>(zeros.data(), n));
      if (!put.ok()) return fail_with("posix_fallocate", f.path, put.error()), put.error().code();
      from += *put;
    }
    return 0;
  };
  uint64_t at = static_cast<uint64_t>(offset);
  const uint64_t inside_end = std::min(end, st->size);
  while (at < inside_end) {
    auto hole = fs->seek(f.ino, at, SEEK_HOLE);
    if (!hole.ok() || *hole >= inside_end) break;
    auto data = fs->seek(f.ino, *hole, SEEK_DATA);
    const uint64_t hole_end = data.ok() ? std::min(*data, inside_end) : inside_end;
    if (int e = zero(*hole, hole_end)) return e;
    at = hole_end;
  }
  if (end > st->size) {
    if (int e = zero(std::max<uint64_t>(st->size, static_cast<uint64_t>(offset)), end)) return e;
    if (static_cast<uint64_t>(offset) > st->size) {
      uext::Status t = fs->truncate(f.ino, end);  // a hole before the range, as on Linux
      (void)t;
    }
  }
  return 0;
}

int routed_fsync(const char* call, OpenFile& f, bool datasync) {
  uext::Filesystem* fs = fs_for(call, f.path);
  if (!fs) return -1;
  Inside in;
  std::lock_guard lock(f.mu);
  uext::Status s = fs->fsync(f.ino, datasync, f.wb_seen);
  return s.ok() ? 0 : fail_with(call, f.path, s.error());
}

// ---- mappings ----

void* map_fail(int e) {
  errno = e;
  return MAP_FAILED;
}

void* routed_mmap(OpenFile& f, void* addr, size_t length, int prot, int flags, off64_t offset) {
  uext::Filesystem* fs = fs_for("mmap", f.path);
  if (!fs) return MAP_FAILED;
  const int type = flags & MAP_TYPE;
  const bool shared = type == MAP_SHARED || type == MAP_SHARED_VALIDATE;
  if (!shared && type != MAP_PRIVATE) return map_fail(EINVAL);
  if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
    say(fmt::format("mmap {}: MAP_FIXED is not supported for files in the image", f.path));
    return map_fail(EINVAL);
  }
  if (flags & MAP_HUGETLB) return map_fail(EINVAL);
  constexpr int kKnown = MAP_TYPE | MAP_POPULATE | MAP_NORESERVE | MAP_NONBLOCK | MAP_LOCKED | MAP_FILE;
  if (type == MAP_SHARED_VALIDATE && (flags & ~kKnown)) return map_fail(EOPNOTSUPP);
  if (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)) return map_fail(EINVAL);
  if (prot & PROT_EXEC) {
    say(fmt::format("mmap {}: PROT_EXEC is not supported for files in the image", f.path));
    return map_fail(EPERM);
  }
  if (f.directory) return map_fail(ENODEV);
  if (!f.readable()) return map_fail(EACCES);
  if (shared && (prot & PROT_WRITE) && (!f.writable() || (f.flags & O_APPEND))) return map_fail(EACCES);
  if (length == 0 || offset < 0 || offset % 4096 != 0) return map_fail(EINVAL);
  Inside in;
  const int uprot = (prot & PROT_READ ? uext::kProtRead : 0) | (prot & PROT_WRITE ? uext::kProtWrite : 0);
  AsyncSignalsBlocked quiet;  // the first mapping starts the fault handler threads
  auto m = fs->mmap(f.ino, static_cast<uint64_t>(offset), length, uprot ? uprot : uext::kProtRead,
                    shared ? uext::kMapShared : uext::kMapPrivate);
  if (!m.ok()) {
    fail_with("mmap", f.path, m.error());
    return MAP_FAILED;
  }
  if (uprot == 0) {
    uext::Status s = (*m)->protect(0);
    if (!s.ok()) {
      fail_with("mmap", f.path, s.error());
      return MAP_FAILED;
    }
  }
  auto e = std::make_shared<MapEntry>();
  e->start = reinterpret_cast<uintptr_t>((*m)->data());
  e->length = (*m)->size();
  e->path = f.path;
  e->shared = shared;
  e->mapping = std::move(*m);
  int none = -1;
  g_map_mode.compare_exchange_strong(none, static_cast<int>(e->mapping->fault_handling()));
  ++g_map_made;
  void* base = (*e->mapping).data();
  {
    std::lock_guard lock(g_state->mu);
    g_state->maps[e->start] = std::move(e);
    ++g_map_count;
  }
  return base;
}

// Our mappings that overlap [start, start + len), and the parts of the
// range they leave (gaps), in address order.
struct Overlap {
  std::vector<std::shared_ptr<MapEntry>> maps;
  std::vector<std::pair<uintptr_t, size_t>> gaps;
};

bool find_overlap(const void* addr, size_t len, Overlap& out) {
  if (t_inside || g_map_count.load() == 0 || len == 0) return false;
  const uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  const uintptr_t end = start + len;
  std::lock_guard lock(g_state->mu);
  auto it = g_state->maps.upper_bound(start);
  if (it != g_state->maps.begin()) --it;
  uintptr_t at = start;
  for (; it != g_state->maps.end() && it->first < end; ++it) {
    const MapEntry& e = *it->second;
    if (e.start + e.length <= start) continue;
    if (e.start > at) out.gaps.emplace_back(at, e.start - at);
    out.maps.push_back(it->second);
    at = std::max(at, e.start + e.length);
  }
  if (out.maps.empty()) return false;
  if (at < end) out.gaps.emplace_back(at, end - at);
  return true;
}

// ---- errno from a Status for the *at() family ----

int status_result(const char* call, const std::string& path, const uext::Status& s) {
  return s.ok() ? 0 : fail_with(call, path, s.error());
}

int routed_unlink(const Routed& r, bool dir) {
  const char* call = dir ? "rmdir" : "unlink";
  uext::Filesystem* fs = fs_for(call, r.path);
  if (!fs) return -1;
  if (r.path == "/") return fail(dir ? EBUSY : EISDIR);
  Inside in;
  auto [parent, name] = split(r.path);
  auto p = fs->resolve(parent, true);
  if (!p.ok()) return fail_with(call, r.path, p.error());
  if (!dir && r.want_dir) return fail(ENOTDIR);
  return status_result(call, r.path, dir ? fs->rmdir(*p, name) : fs->unlink(*p, name));
}

int routed_mkdir(const Routed& r, mode_t mode) {
  uext::Filesystem* fs = fs_for("mkdir", r.path);
  if (!fs) return -1;
  if (r.path == "/") return fail(EEXIST);
  Inside in;
  auto [parent, name] = split(r.path);
  auto p = fs->resolve(parent, true);
  if (!p.ok()) return fail_with("mkdir", r.path, p.error());
  auto made = fs->mkdir(*p, name, mode & 07777, uext::Owner{geteuid(), getegid(), current_umask()});
  return made.ok() ? 0 : fail_with("mkdir", r.path, made.error());
}

int routed_rename(const Routed& from, const Routed& to, unsigned flags) {
  uext::Filesystem* fs = fs_for("rename", from.path);
  if (!fs) return -1;
  if (from.path == "/" || to.path == "/") return fail(EBUSY);
  Inside in;
  auto [fp, fn] = split(from.path);
  auto [tp, tn] = split(to.path);
  auto a = fs->resolve(fp, true);
  if (!a.ok()) return fail_with("rename", from.path, a.error());
  auto b = fs->resolve(tp, true);
  if (!b.ok()) return fail_with("rename", to.path, b.error());
  return status_result("rename", from.path, fs->rename(*a, fn, *b, tn, flags));
}

int routed_access(const Routed& r, int mode, bool effective) {
  uext::Filesystem* fs = fs_for("access", r.path);
  if (!fs) return -1;
  if (mode & ~(R_OK | W_OK | X_OK)) return fail(EINVAL);
  Inside in;
  auto st = stat_path(*fs, r, true);
  if (!st.ok()) return fail_with("access", r.path, st.error());
  if (mode == F_OK) return 0;
  if ((mode & W_OK) && fs->info().read_only) return fail(EROFS);
  const uid_t uid = effective ? geteuid() : getuid();
  const gid_t gid = effective ? getegid() : getgid();
  if (uid == 0) {
    // root: all but execution of a file no one may execute
    if ((mode & X_OK) && !S_ISDIR(st->mode) && !(st->mode & 0111)) return fail(EACCES);
    return 0;
  }
  int shift = 0;
  if (st->uid == uid) {
    shift = 6;
  } else if (st->gid == gid) {
    shift = 3;
  }
  const int granted = static_cast<int>(st->mode >> shift) & 7;
  return (granted & mode) == mode ? 0 : fail(EACCES);
}

ssize_t routed_readlink(const Routed& r, char* buf, size_t size) {
  uext::Filesystem* fs = fs_for("readlink", r.path);
  if (!fs) return -1;
  Inside in;
  auto ino = fs->resolve(r.path, false);
  if (!ino.ok()) return fail_with("readlink", r.path, ino.error());
  auto target = fs->readlink(*ino);
  if (!target.ok()) return fail_with("readlink", r.path, target.error());
  const size_t n = std::min(size, target->size());
  std::memcpy(buf, target->data(), n);
  return static_cast<ssize_t>(n);
}

int routed_setattr(const char* call, OpenFile& f, const uext::SetAttr& attr) {
  uext::Filesystem* fs = fs_for(call, f.path);
  if (!fs) return -1;
  Inside in;
  auto st = fs->setattr(f.ino, attr);
  return st.ok() ? 0 : fail_with(call, f.path, st.error());
}

int routed_fcntl(int fd, OpenFile& f, int cmd, void* arg) {
  switch (cmd) {
    case F_DUPFD:
    case F_DUPFD_CLOEXEC: {
      if (g_child.load()) return refuse_in_child("fcntl", f.path);
      const int nfd = REAL(fcntl)(fd, cmd, arg);
      if (nfd < 0) return -1;
      install_fd(nfd, routed_fd(fd));
      return nfd;
    }
    case F_GETFD:
    case F_SETFD:
      return REAL(fcntl)(fd, cmd, arg);
    case F_GETFL:
      return f.flags | O_LARGEFILE;
    case F_SETFL: {
      constexpr int kChangeable = O_APPEND | O_NONBLOCK | O_DIRECT | O_NOATIME;
      const int v = static_cast<int>(reinterpret_cast<intptr_t>(arg));
      std::lock_guard lock(f.mu);
      f.flags = (f.flags & ~kChangeable) | (v & kChangeable);
      return 0;
    }
    case F_GETLK:
    case F_OFD_GETLK: {
      // One process serves the image: no other holder of a lock can exist.
      auto* lk = static_cast<struct flock*>(arg);
      if (!lk) return fail(EFAULT);
      lk->l_type = F_UNLCK;
      return 0;
    }
    case F_SETLK:
    case F_SETLKW:
    case F_OFD_SETLK:
    case F_OFD_SETLKW:
      return arg ? 0 : fail(EFAULT);
    default:
      say(fmt::format("fcntl {}: command {} is not supported for files in the image", f.path, cmd));
      return fail(EINVAL);
  }
}

int routed_dup_to(int oldfd, int newfd, int flags, bool dup3) {
  // Whatever newfd was, it is closed by dup2 (ours: out of the table first).
  if (auto old_target = routed_fd(newfd)) {
    remove_fd(newfd);
  }
  const int r = dup3 ? REAL(dup3)(oldfd, newfd, flags) : REAL(dup2)(oldfd, newfd);
  if (r < 0) return -1;
  if (auto f = routed_fd(oldfd)) install_fd(r, std::move(f));
  return r;
}

}  // namespace

// ===================== the interposed functions =====================

extern "C" {

namespace {
mode_t mode_arg(int flags, va_list ap) {
  return (flags & O_CREAT) || (flags & __O_TMPFILE) == __O_TMPFILE ? static_cast<mode_t>(va_arg(ap, int)) : 0;
}
}  // namespace

UEXT_EXPORT int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  Routed r;
  if (route_path(path, r)) return routed_open(r, flags, mode);
  return relocate(REAL(open)(path, flags, mode));
}

UEXT_EXPORT int open64(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  Routed r;
  if (route_path(path, r)) return routed_open(r, flags, mode);
  return relocate(REAL(open64)(path, flags, mode));
}

UEXT_EXPORT int __open_2(const char* path, int flags) { return open(path, flags); }
UEXT_EXPORT int __open64_2(const char* path, int flags) { return open64(path, flags); }

UEXT_EXPORT int openat(int dirfd, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  Routed r;
  if (route_at(dirfd, path, r)) return routed_open(r, flags, mode);
  return relocate(REAL(openat)(dirfd, path, flags, mode));
}

UEXT_EXPORT int openat64(int dirfd, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = mode_arg(flags, ap);
  va_end(ap);
  Routed r;
  if (route_at(dirfd, path, r)) return routed_open(r, flags, mode);
  return relocate(REAL(openat64)(dirfd, path, flags, mode));
}

UEXT_EXPORT int __openat_2(int dirfd, const char* path, int flags) { return openat(dirfd, path, flags); }
UEXT_EXPORT int __openat64_2(int dirfd, const char* path, int flags) { return openat64(dirfd, path, flags); }

UEXT_EXPORT int creat(const char* path, mode_t mode) {
  return open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}
UEXT_EXPORT int creat64(const char* path, mode_t mode) {
  return open64(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}

UEXT_EXPORT int close(int fd) {
  if (auto f = routed_fd(fd)) return close_routed(fd, std::move(f));
  return REAL(close)(fd);
}

UEXT_EXPORT ssize_t read(int fd, void* buf, size_t n) {
  if (auto f = routed_fd(fd)) return routed_read("read", *f, buf, n, -1);
  return REAL(read)(fd, buf, n);
}

UEXT_EXPORT ssize_t __read_chk(int fd, void* buf, size_t n, size_t buflen) {
  if (n > buflen) std::abort();
  return read(fd, buf, n);
}

UEXT_EXPORT ssize_t write(int fd, const void* buf, size_t n) {
  if (auto f = routed_fd(fd)) return routed_write("write", *f, buf, n, -1, f->flags & O_APPEND);
  return REAL(write)(fd, buf, n);
}

UEXT_EXPORT ssize_t pread(int fd, void* buf, size_t n, off_t offset) {
  if (auto f = routed_fd(fd)) return offset < 0 ? fail(EINVAL) : routed_read("pread", *f, buf, n, offset);
  return REAL(pread)(fd, buf, n, offset);
}

UEXT_EXPORT ssize_t pread64(int fd, void* buf, size_t n, off64_t offset) {
  if (auto f = routed_fd(fd)) return offset < 0 ? fail(EINVAL) : routed_read("pread", *f, buf, n, offset);
  return REAL(pread64)(fd, buf, n, offset);
}

UEXT_EXPORT ssize_t __pread_chk(int fd, void* buf, size_t n, off_t offset, size_t buflen) {
  if (n > buflen) std::abort();
  return pread(fd, buf, n, offset);
}
UEXT_EXPORT ssize_t __pread64_chk(int fd, void* buf, size_t n, off64_t offset, size_t buflen) {
  if (n > buflen) std::abort();
  return pread64(fd, buf, n, offset);
}

UEXT_EXPORT ssize_t pwrite(int fd, const void* buf, size_t n, off_t offset) {
  if (auto f = routed_fd(fd)) return offset < 0 ? fail(EINVAL) : routed_write("pwrite", *f, buf, n, offset, false);
  return REAL(pwrite)(fd, buf, n, offset);
}

UEXT_EXPORT ssize_t pwrite64(int fd, const void* buf, size_t n, off64_t offset) {
  if (auto f = routed_fd(fd)) return offset < 0 ? fail(EINVAL) : routed_write("pwrite", *f, buf, n, offset, false);
  return REAL(pwrite64)(fd, buf, n, offset);
}

UEXT_EXPORT ssize_t readv(int fd, const struct iovec* iov, int count) {
  if (auto f = routed_fd(fd)) return routed_rw_vec("readv", *f, iov, count, -1, false, false);
  return REAL(readv)(fd, iov, count);
}

UEXT_EXPORT ssize_t writev(int fd, const struct iovec* iov, int count) {
  if (auto f = routed_fd(fd)) return routed_rw_vec("writev", *f, iov, count, -1, true, f->flags & O_APPEND);
  return REAL(writev)(fd, iov, count);
}

UEXT_EXPORT ssize_t preadv(int fd, const struct iovec* iov, int count, off_t offset) {
  if (auto f = routed_fd(fd)) return offset < 0 ? fail(EINVAL) : routed_rw_vec("preadv", *f, iov, count, offset, false, false);
  return REAL(preadv)(fd, iov, count, offset);
}

UEXT_EXPORT ssize_t preadv64(int fd, const struct iovec* iov, int count, off64_t offset) {
  if (auto f = routed_fd(fd)) return offset < 0 ? fail(EINVAL) : routed_rw_vec("preadv", *f, iov, count, offset, false, false);
  return REAL(preadv64)(fd, iov, count, offset);
}

UEXT_EXPORT ssize_t pwritev(int fd, const struct iovec* iov, int count, off_t offset) {
  if (auto f = routed_fd(fd)) return offset < 0 ? fail(EINVAL) : routed_rw_vec("pwritev", *f, iov, count, offset, true, false);
  return REAL(pwritev)(fd, iov, count, offset);
}

UEXT_EXPORT ssize_t pwritev64(int fd, const struct iovec* iov, int count, off64_t offset) {
  if (auto f = routed_fd(fd)) return offset < 0 ? fail(EINVAL) : routed_rw_vec("pwritev", *f, iov, count, offset, true, false);
  return REAL(pwritev64)(fd, iov, count, offset);
}

UEXT_EXPORT ssize_t preadv2(int fd, const struct iovec* iov, int count, off_t offset, int flags) {
  if (auto f = routed_fd(fd)) return routed_rw_vec("preadv2", *f, iov, count, offset < 0 ? -1 : offset, false, false);
  return REAL(preadv2)(fd, iov, count, offset, flags);
}

UEXT_EXPORT ssize_t preadv64v2(int fd, const struct iovec* iov, int count, off64_t offset, int flags) {
  if (auto f = routed_fd(fd)) return routed_rw_vec("preadv2", *f, iov, count, offset < 0 ? -1 : offset, false, false);
  return REAL(preadv64v2)(fd, iov, count, offset, flags);
}

UEXT_EXPORT ssize_t pwritev2(int fd, const struct iovec* iov, int count, off_t offset, int flags) {
  if (auto f = routed_fd(fd)) {
    const bool append = (flags & RWF_APPEND) || (offset < 0 && (f->flags & O_APPEND));
    return routed_rw_vec("pwritev2", *f, iov, count, offset < 0 || append ? -1 : offset, true, append);
  }
  return REAL(pwritev2)(fd, iov, count, offset, flags);
}

UEXT_EXPORT ssize_t pwritev64v2(int fd, const struct iovec* iov, int count, off64_t offset, int flags) {
  if (auto f = routed_fd(fd)) {
    const bool append = (flags & RWF_APPEND) || (offset < 0 && (f->flags & O_APPEND));
    return routed_rw_vec("pwritev2", *f, iov, count, offset < 0 || append ? -1 : offset, true, append);
  }
  return REAL(pwritev64v2)(fd, iov, count, offset, flags);
}

UEXT_EXPORT off_t lseek(int fd, off_t offset, int whence) noexcept {
  if (auto f = routed_fd(fd)) return routed_lseek(*f, offset, whence);
  return REAL(lseek)(fd, offset, whence);
}

UEXT_EXPORT off64_t lseek64(int fd, off64_t offset, int whence) noexcept {
  if (auto f = routed_fd(fd)) return routed_lseek(*f, offset, whence);
  return REAL(lseek64)(fd, offset, whence);
}

// ---- stat ----

UEXT_EXPORT int stat(const char* path, struct stat* buf) noexcept {
  Routed r;
  if (route_path(path, r)) return routed_stat("stat", r, true, buf);
  return REAL(stat)(path, buf);
}

UEXT_EXPORT int stat64(const char* path, struct stat64* buf) noexcept {
  Routed r;
  if (route_path(path, r)) return routed_stat("stat", r, true, buf);
  return REAL(stat64)(path, buf);
}

UEXT_EXPORT int lstat(const char* path, struct stat* buf) noexcept {
  Routed r;
  if (route_path(path, r)) return routed_stat("lstat", r, false, buf);
  return REAL(lstat)(path, buf);
}

UEXT_EXPORT int lstat64(const char* path, struct stat64* buf) noexcept {
  Routed r;
  if (route_path(path, r)) return routed_stat("lstat", r, false, buf);
  return REAL(lstat64)(path, buf);
}

UEXT_EXPORT int fstat(int fd, struct stat* buf) noexcept {
  if (auto f = routed_fd(fd)) return routed_fstat("fstat", *f, buf);
  return REAL(fstat)(fd, buf);
}

UEXT_EXPORT int fstat64(int fd, struct stat64* buf) noexcept {
  if (auto f = routed_fd(fd)) return routed_fstat("fstat", *f, buf);
  return REAL(fstat64)(fd, buf);
}

UEXT_EXPORT int fstatat(int dirfd, const char* path, struct stat* buf, int flags) noexcept {
  bool handled = false;
  const int r = stat_at("fstatat", dirfd, path, buf, flags, handled);
  return handled ? r : REAL(fstatat)(dirfd, path, buf, flags);
}

UEXT_EXPORT int fstatat64(int dirfd, const char* path, struct stat64* buf, int flags) noexcept {
  bool handled = false;
  const int r = stat_at("fstatat", dirfd, path, buf, flags, handled);
  return handled ? r : REAL(fstatat64)(dirfd, path, buf, flags);
}

UEXT_EXPORT int statx(int dirfd, const char* path, int flags, unsigned int mask, struct statx* buf) noexcept {
  std::shared_ptr<OpenFile> f;
  Routed r;
  if (path[0] == '\0' && (flags & AT_EMPTY_PATH)) {
    f = routed_fd(dirfd);
    if (f) r.path = f->path;
  }
  if (f || route_at(dirfd, path, r)) {
    uext::Filesystem* fs = fs_for("statx", r.path);
    if (!fs) return -1;
    Inside in;
    auto st = f ? fs->stat(f->ino) : stat_path(*fs, r, !(flags & AT_SYMLINK_NOFOLLOW));
    if (!st.ok()) return fail_with("statx", r.path, st.error());
    fill_statx(*st, buf);
    return 0;
  }
  return REAL(statx)(dirfd, path, flags, mask, buf);
}

UEXT_EXPORT int statfs(const char* path, struct statfs* buf) noexcept {
  Routed r;
  if (route_path(path, r)) return routed_statfs("statfs", r.path, buf);
  return REAL(statfs)(path, buf);
}

UEXT_EXPORT int statfs64(const char* path, struct statfs64* buf) noexcept {
  Routed r;
  if (route_path(path, r)) return routed_statfs("statfs", r.path, buf);
  return REAL(statfs64)(path, buf);
}

UEXT_EXPORT int fstatfs(int fd, struct statfs* buf) noexcept {
  if (auto f = routed_fd(fd)) return routed_statfs("fstatfs", f->path, buf);
  return REAL(fstatfs)(fd, buf);
}

UEXT_EXPORT int fstatfs64(int fd, struct statfs64* buf) noexcept {
  if (auto f = routed_fd(fd)) return routed_statfs("fstatfs", f->path, buf);
  return REAL(fstatfs64)(fd, buf);
}

// ---- size and space ----

UEXT_EXPORT int ftruncate(int fd, off_t length) noexcept {
  if (auto f = routed_fd(fd)) {
    uext::Filesystem* fs = fs_for("ftruncate", f->path);
    if (!fs) return -1;
    if (!f->writable() || f->directory) return fail(EINVAL);
    return routed_truncate("ftruncate", *fs, f->ino, f->path, length);
  }
  return REAL(ftruncate)(fd, length);
}

UEXT_EXPORT int ftruncate64(int fd, off64_t length) noexcept { return ftruncate(fd, length); }

UEXT_EXPORT int truncate(const char* path, off_t length) noexcept {
  Routed r;
  if (route_path(path, r)) {
    uext::Filesystem* fs = fs_for("truncate", r.path);
    if (!fs) return -1;
    Inside in;
    auto ino = fs->resolve(r.path, true);
    if (!ino.ok()) return fail_with("truncate", r.path, ino.error());
    return routed_truncate("truncate", *fs, *ino, r.path, length);
  }
  return REAL(truncate)(path, length);
}

UEXT_EXPORT int truncate64(const char* path, off64_t length) noexcept { return truncate(path, length); }

UEXT_EXPORT int fallocate(int fd, int mode, off_t offset, off_t len) {
  if (auto f = routed_fd(fd)) return routed_fallocate(*f, mode, offset, len);
  return REAL(fallocate)(fd, mode, offset, len);
}

UEXT_EXPORT int fallocate64(int fd, int mode, off64_t offset, off64_t len) {
  if (auto f = routed_fd(fd)) return routed_fallocate(*f, mode, offset, len);
  return REAL(fallocate64)(fd, mode, offset, len);
}

UEXT_EXPORT int posix_fallocate(int fd, off_t offset, off_t len) {
  if (auto f = routed_fd(fd)) return routed_posix_fallocate(*f, offset, len);
  return REAL(posix_fallocate)(fd, offset, len);
}

UEXT_EXPORT int posix_fallocate64(int fd, off64_t offset, off64_t len) {
  if (auto f = routed_fd(fd)) return routed_posix_fallocate(*f, offset, len);
  return REAL(posix_fallocate64)(fd, offset, len);
}

// Advice is accepted: uext's cache decides for itself.
UEXT_EXPORT int posix_fadvise(int fd, off_t offset, off_t len, int advice) noexcept {
  if (routed_fd(fd)) return advice < POSIX_FADV_NORMAL || advice > POSIX_FADV_NOREUSE || len < 0 ? EINVAL : 0;
  return REAL(posix_fadvise)(fd, offset, len, advice);
}

UEXT_EXPORT int posix_fadvise64(int fd, off64_t offset, off64_t len, int advice) noexcept {
  if (routed_fd(fd)) return advice < POSIX_FADV_NORMAL || advice > POSIX_FADV_NOREUSE || len < 0 ? EINVAL : 0;
  return REAL(posix_fadvise64)(fd, offset, len, advice);
}

UEXT_EXPORT ssize_t readahead(int fd, off64_t offset, size_t count) noexcept {
  if (routed_fd(fd)) return 0;
  return REAL(readahead)(fd, offset, count);
}

// ---- durability ----

UEXT_EXPORT int fsync(int fd) {
  if (auto f = routed_fd(fd)) return routed_fsync("fsync", *f, false);
  return REAL(fsync)(fd);
}

UEXT_EXPORT int fdatasync(int fd) {
  if (auto f = routed_fd(fd)) return routed_fsync("fdatasync", *f, true);
  return REAL(fdatasync)(fd);
}

UEXT_EXPORT int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
  if (auto f = routed_fd(fd)) {
    if (offset < 0 || nbytes < 0) return fail(EINVAL);
    // Starting writeback alone is left to uext's background writeback.
    return (flags & SYNC_FILE_RANGE_WAIT_AFTER) ? routed_fsync("sync_file_range", *f, true) : 0;
  }
  return REAL(sync_file_range)(fd, offset, nbytes, flags);
}

UEXT_EXPORT int syncfs(int fd) noexcept {
  if (auto f = routed_fd(fd)) {
    uext::Filesystem* fs = fs_for("syncfs", f->path);
    if (!fs) return -1;
    Inside in;
    return status_result("syncfs", f->path, fs->sync());
  }
  return REAL(syncfs)(fd);
}

// ---- names ----

UEXT_EXPORT int unlink(const char* path) noexcept {
  Routed r;
  if (route_path(path, r)) return routed_unlink(r, false);
  return REAL(unlink)(path);
}

UEXT_EXPORT int unlinkat(int dirfd, const char* path, int flags) noexcept {
  Routed r;
  if (route_at(dirfd, path, r)) return routed_unlink(r, flags & AT_REMOVEDIR);
  return REAL(unlinkat)(dirfd, path, flags);
}

UEXT_EXPORT int rmdir(const char* path) noexcept {
  Routed r;
  if (route_path(path, r)) return routed_unlink(r, true);
  return REAL(rmdir)(path);
}

UEXT_EXPORT int mkdir(const char* path, mode_t mode) noexcept {
  Routed r;
  if (route_path(path, r)) return routed_mkdir(r, mode);
  return REAL(mkdir)(path, mode);
}

UEXT_EXPORT int mkdirat(int dirfd, const char* path, mode_t mode) noexcept {
  Routed r;
  if (route_at(dirfd, path, r)) return routed_mkdir(r, mode);
  return REAL(mkdirat)(dirfd, path, mode);
}

UEXT_EXPORT int renameat2(int olddirfd, const char* oldpath, int newdirfd, const char* newpath,
                          unsigned int flags) noexcept {
  Routed a, b;
  const bool ra = route_at(olddirfd, oldpath, a);
  const bool rb = route_at(newdirfd, newpath, b);
  if (ra && rb) return routed_rename(a, b, flags);
  if (ra || rb) return fail(EXDEV);
  return REAL(renameat2)(olddirfd, oldpath, newdirfd, newpath, flags);
}

UEXT_EXPORT int renameat(int olddirfd, const char* oldpath, int newdirfd, const char* newpath) noexcept {
  Routed a, b;
  const bool ra = route_at(olddirfd, oldpath, a);
  const bool rb = route_at(newdirfd, newpath, b);
  if (ra && rb) return routed_rename(a, b, 0);
  if (ra || rb) return fail(EXDEV);
  return REAL(renameat)(olddirfd, oldpath, newdirfd, newpath);
}

UEXT_EXPORT int rename(const char* oldpath, const char* newpath) noexcept {
  Routed a, b;
  const bool ra = route_path(oldpath, a);
  const bool rb = route_path(newpath, b);
  if (ra && rb) return routed_rename(a, b, 0);
  if (ra || rb) return fail(EXDEV);
  return REAL(rename)(oldpath, newpath);
}

UEXT_EXPORT int access(const char* path, int mode) noexcept {
  Routed r;
  if (route_path(path, r)) return routed_access(r, mode, false);
  return REAL(access)(path, mode);
}

UEXT_EXPORT int faccessat(int dirfd, const char* path, int mode, int flags) noexcept {
  Routed r;
  if (route_at(dirfd, path, r)) return routed_access(r, mode, flags & AT_EACCESS);
  return REAL(faccessat)(dirfd, path, mode, flags);
}

UEXT_EXPORT ssize_t readlink(const char* path, char* buf, size_t size) noexcept {
  Routed r;
  if (route_path(path, r)) return routed_readlink(r, buf, size);
  return REAL(readlink)(path, buf, size);
}

UEXT_EXPORT ssize_t readlinkat(int dirfd, const char* path, char* buf, size_t size) noexcept {
  Routed r;
  if (route_at(dirfd, path, r)) return routed_readlink(r, buf, size);
  return REAL(readlinkat)(dirfd, path, buf, size);
}

// ---- attributes of open files ----
// (Left to the kernel, these would change /dev/null, which holds the number.)

UEXT_EXPORT int fchmod(int fd, mode_t mode) noexcept {
  if (auto f = routed_fd(fd)) {
    uext::SetAttr a;
    a.mode = mode & 07777;
    return routed_setattr("fchmod", *f, a);
  }
  return REAL(fchmod)(fd, mode);
}

UEXT_EXPORT int fchown(int fd, uid_t uid, gid_t gid) noexcept {
  if (auto f = routed_fd(fd)) {
    uext::SetAttr a;
    if (uid != static_cast<uid_t>(-1)) a.uid = uid;
    if (gid != static_cast<gid_t>(-1)) a.gid = gid;
    return routed_setattr("fchown", *f, a);
  }
  return REAL(fchown)(fd, uid, gid);
}

UEXT_EXPORT int futimens(int fd, const struct timespec times[2]) noexcept {
  if (auto f = routed_fd(fd)) {
    uext::SetAttr a;
    auto set = [](const timespec& t, std::optional<uext::Time>& field, bool& now) {
      if (t.tv_nsec == UTIME_OMIT) return;
      if (t.tv_nsec == UTIME_NOW) {
        now = true;
        return;
      }
      field = uext::Time{t.tv_sec, static_cast<uint32_t>(t.tv_nsec)};
    };
    if (!times) {
      a.atime_now = a.mtime_now = true;
    } else {
      set(times[0], a.atime, a.atime_now);
      set(times[1], a.mtime, a.mtime_now);
    }
    return routed_setattr("futimens", *f, a);
  }
  return REAL(futimens)(fd, times);
}

UEXT_EXPORT int fsetxattr(int fd, const char* name, const void* value, size_t size, int flags) noexcept {
  if (auto f = routed_fd(fd)) {
    uext::Filesystem* fs = fs_for("fsetxattr", f->path);
    if (!fs) return -1;
    Inside in;
    return status_result("fsetxattr", f->path,
                         fs->setxattr(f->ino, name, std::string_view(static_cast<const char*>(value), size), flags));
  }
  return REAL(fsetxattr)(fd, name, value, size, flags);
}

UEXT_EXPORT ssize_t fgetxattr(int fd, const char* name, void* value, size_t size) noexcept {
  if (auto f = routed_fd(fd)) {
    uext::Filesystem* fs = fs_for("fgetxattr", f->path);
    if (!fs) return -1;
    Inside in;
    auto v = fs->getxattr(f->ino, name);
    if (!v.ok()) return fail_with("fgetxattr", f->path, v.error());
    if (size == 0) return static_cast<ssize_t>(v->size());
    if (v->size() > size) return fail(ERANGE);
    std::memcpy(value, v->data(), v->size());
    return static_cast<ssize_t>(v->size());
  }
  return REAL(fgetxattr)(fd, name, value, size);
}

UEXT_EXPORT ssize_t flistxattr(int fd, char* list, size_t size) noexcept {
  if (auto f = routed_fd(fd)) {
    uext::Filesystem* fs = fs_for("flistxattr", f->path);
    if (!fs) return -1;
    Inside in;
    auto names = fs->listxattr(f->ino);
    if (!names.ok()) return fail_with("flistxattr", f->path, names.error());
    std::string all;
    for (const auto& n : *names) all.append(n).push_back('\0');
    if (size == 0) return static_cast<ssize_t>(all.size());
    if (all.size() > size) return fail(ERANGE);
    std::memcpy(list, all.data(), all.size());
    return static_cast<ssize_t>(all.size());
  }
  return REAL(flistxattr)(fd, list, size);
}

UEXT_EXPORT int fremovexattr(int fd, const char* name) noexcept {
  if (auto f = routed_fd(fd)) {
    uext::Filesystem* fs = fs_for("fremovexattr", f->path);
    if (!fs) return -1;
    Inside in;
    return status_result("fremovexattr", f->path, fs->removexattr(f->ino, name));
  }
  return REAL(fremovexattr)(fd, name);
}

// A copy between two files of the image is a read and a write through
// uext, in 1 MiB steps (a partial copy returns what was done, as the
// kernel's does). A copy between the image and a host file would be the
// kernel's, which cannot see the image: EXDEV, and callers fall back to
// read and write.
ssize_t routed_copy(OpenFile& in, off64_t* in_off, OpenFile& out, off64_t* out_off, size_t len, unsigned flags) {
  if (flags != 0 || (in_off && *in_off < 0) || (out_off && *out_off < 0)) return fail(EINVAL);
  if (out.flags & O_APPEND) return fail(EBADF);
  len = std::min<size_t>(len, 0x7ffff000);
  if (in.ino == out.ino && in_off && out_off) {
    const uint64_t a = static_cast<uint64_t>(*in_off), b = static_cast<uint64_t>(*out_off);
    if (a < b + len && b < a + len) return fail(EINVAL);  // overlapping ranges of one file, as Linux
  }
  // Without in_off the copy reads at the file position and then moves it
  // by the bytes copied, not by those read: after a short write the rest
  // has not been copied and must be read again by the next call.
  off64_t in_pos = 0;
  if (!in_off) {
    std::lock_guard lock(in.mu);
    in_pos = static_cast<off64_t>(in.pos);
  }
  const off64_t in_from = in_off ? *in_off : in_pos;
  std::vector<std::byte> buf(std::min<size_t>(len, size_t{1} << 20));
  size_t done = 0;
  while (done < len) {
    const size_t n = std::min(buf.size(), len - done);
    const ssize_t got = routed_read("copy_file_range", in, buf.data(), n, in_from + static_cast<off64_t>(done));
    if (got <= 0) {
      if (got < 0 && done == 0) return -1;
      break;
    }
    const ssize_t put =
        routed_write("copy_file_range", out, buf.data(), static_cast<size_t>(got), out_off ? *out_off + done : -1, false);
    if (put <= 0) {
      if (put < 0 && done == 0) return -1;
      break;
    }
    done += static_cast<size_t>(put);
    if (put < got || static_cast<size_t>(got) < n) break;
  }
  if (in_off) {
    *in_off += static_cast<off64_t>(done);
  } else {
    std::lock_guard lock(in.mu);
    in.pos = static_cast<uint64_t>(in_from) + done;
  }
  if (out_off) *out_off += static_cast<off64_t>(done);
  return static_cast<ssize_t>(done);
}

UEXT_EXPORT ssize_t copy_file_range(int in_fd, off64_t* in_off, int out_fd, off64_t* out_off, size_t len,
                                    unsigned int flags) {
  auto in = routed_fd(in_fd);
  auto out = routed_fd(out_fd);
  if (in && out) return routed_copy(*in, in_off, *out, out_off, len, flags);
  if (in || out) return fail(EXDEV);
  return REAL(copy_file_range)(in_fd, in_off, out_fd, out_off, len, flags);
}

UEXT_EXPORT ssize_t sendfile(int out_fd, int in_fd, off_t* offset, size_t count) noexcept {
  if (routed_fd(in_fd) || routed_fd(out_fd)) return fail(EINVAL);
  return REAL(sendfile)(out_fd, in_fd, offset, count);
}

UEXT_EXPORT ssize_t sendfile64(int out_fd, int in_fd, off64_t* offset, size_t count) noexcept {
  if (routed_fd(in_fd) || routed_fd(out_fd)) return fail(EINVAL);
  return REAL(sendfile64)(out_fd, in_fd, offset, count);
}

// ---- descriptors ----

UEXT_EXPORT int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  if (auto f = routed_fd(fd)) return routed_fcntl(fd, *f, cmd, arg);
  return REAL(fcntl)(fd, cmd, arg);
}

UEXT_EXPORT int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  if (auto f = routed_fd(fd)) return routed_fcntl(fd, *f, cmd, arg);
  return REAL(fcntl64)(fd, cmd, arg);
}

UEXT_EXPORT int ioctl(int fd, unsigned long request, ...) noexcept {
  va_list ap;
  va_start(ap, request);
  void* arg = va_arg(ap, void*);
  va_end(ap);
  if (routed_fd(fd)) return fail(ENOTTY);
  return REAL(ioctl)(fd, request, arg);
}

UEXT_EXPORT int flock(int fd, int operation) noexcept {
  if (routed_fd(fd)) return 0;  // one process serves the image
  return REAL(flock)(fd, operation);
}

UEXT_EXPORT int dup(int fd) noexcept {
  if (auto f = routed_fd(fd)) {
    if (g_child.load()) return refuse_in_child("dup", f->path);
    const int nfd = REAL(dup)(fd);
    if (nfd >= 0) install_fd(nfd, std::move(f));
    return nfd;
  }
  return REAL(dup)(fd);
}

UEXT_EXPORT int dup2(int oldfd, int newfd) noexcept {
  if (oldfd != newfd && (routed_fd(oldfd) || routed_fd(newfd))) return routed_dup_to(oldfd, newfd, 0, false);
  return REAL(dup2)(oldfd, newfd);
}

UEXT_EXPORT int dup3(int oldfd, int newfd, int flags) noexcept {
  if (oldfd != newfd && (routed_fd(oldfd) || routed_fd(newfd))) return routed_dup_to(oldfd, newfd, flags, true);
  return REAL(dup3)(oldfd, newfd, flags);
}

// ---- mappings ----

UEXT_EXPORT void* mmap(void* addr, size_t length, int prot, int flags, int fd, off_t offset) noexcept {
  if (!(flags & MAP_ANONYMOUS)) {
    if (auto f = routed_fd(fd)) return routed_mmap(*f, addr, length, prot, flags, offset);
  }
  return REAL(mmap)(addr, length, prot, flags, fd, offset);
}

UEXT_EXPORT void* mmap64(void* addr, size_t length, int prot, int flags, int fd, off64_t offset) noexcept {
  if (!(flags & MAP_ANONYMOUS)) {
    if (auto f = routed_fd(fd)) return routed_mmap(*f, addr, length, prot, flags, offset);
  }
  return REAL(mmap64)(addr, length, prot, flags, fd, offset);
}

UEXT_EXPORT int munmap(void* addr, size_t length) noexcept {
  Overlap o;
  if (!find_overlap(addr, length, o)) return REAL(munmap)(addr, length);
  const uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  if (start % 4096 != 0) return fail(EINVAL);
  // As Linux, the length counts in whole pages: a mapping of 0xefd6 bytes
  // is unmapped with the same 0xefd6 (fsx does), though it covers 0xf000.
  const uintptr_t end = start + (length + 4095) / 4096 * 4096;
  for (const auto& e : o.maps) {
    if (e->start < start || e->start + e->length > end) {
      say(fmt::format("munmap of part of a mapping of {} ({} bytes at {:#x}) is not supported; unmap all of it",
                      e->path, e->length, e->start));
      return fail(EINVAL);
    }
  }
  for (const auto& [gap, n] : o.gaps) {
    if (REAL(munmap)(reinterpret_cast<void*>(gap), n) != 0) return -1;
  }
  {
    std::lock_guard lock(g_state->mu);
    for (const auto& e : o.maps) {
      if (g_state->maps.erase(e->start)) --g_map_count;
    }
  }
  Inside in;
  for (auto& e : o.maps) e->mapping.reset();  // munmap; what was stored stays in uext's cache
  return 0;
}

UEXT_EXPORT int msync(void* addr, size_t length, int flags) {
  Overlap o;
  if (!find_overlap(addr, length, o)) return REAL(msync)(addr, length, flags);
  const uintptr_t start = reinterpret_cast<uintptr_t>(addr);
  if (start % 4096 != 0) return fail(EINVAL);
  if (!o.gaps.empty()) return fail(ENOMEM);  // as Linux: part of the range is not mapped
  const int uflags = (flags & MS_ASYNC ? uext::kSyncAsync : 0) | (flags & MS_SYNC ? uext::kSyncNow : 0) |
                     (flags & MS_INVALIDATE ? uext::kSyncInvalidate : 0);
  if (flags & ~(MS_ASYNC | MS_SYNC | MS_INVALIDATE)) return fail(EINVAL);
  Inside in;
  for (const auto& e : o.maps) {
    const uintptr_t lo = std::max(start, e->start);
    const uintptr_t hi = std::min(start + length, e->start + e->length);
    uext::Status s = e->mapping->sync(uflags, lo - e->start, hi - lo);
    if (!s.ok()) return fail_with("msync", e->path, s.error());
  }
  return 0;
}

UEXT_EXPORT int madvise(void* addr, size_t length, int advice) noexcept {
  Overlap o;
  if (!find_overlap(addr, length, o)) return REAL(madvise)(addr, length, advice);
  if (reinterpret_cast<uintptr_t>(addr) % 4096 != 0) return fail(EINVAL);
  for (const auto& e : o.maps) {
    switch (advice) {
      case MADV_NORMAL: case MADV_RANDOM: case MADV_SEQUENTIAL: case MADV_WILLNEED: case MADV_DONTFORK:
      case MADV_DODUMP: case MADV_DONTDUMP: case MADV_HUGEPAGE: case MADV_NOHUGEPAGE: case MADV_COLD:
      case MADV_PAGEOUT: case MADV_MERGEABLE: case MADV_UNMERGEABLE:
        break;  // hints: uext's cache decides
      case MADV_DONTNEED:
      case MADV_FREE:
        // Shared: the pages are the cache's and stay as they are, as after
        // Linux drops and refaults them. Private: copies would be lost.
        if (e->shared && advice == MADV_DONTNEED) break;
        [[fallthrough]];
      default:
        say(fmt::format("madvise {} on a mapping of {} is not supported", advice, e->path));
        return fail(EINVAL);
    }
  }
  for (const auto& [gap, n] : o.gaps) {
    if (REAL(madvise)(reinterpret_cast<void*>(gap), n, advice) != 0) return -1;
  }
  return 0;
}

UEXT_EXPORT int posix_madvise(void* addr, size_t length, int advice) noexcept {
  Overlap o;
  if (!find_overlap(addr, length, o)) return REAL(posix_madvise)(addr, length, advice);
  if (advice < POSIX_MADV_NORMAL || advice > POSIX_MADV_DONTNEED) return EINVAL;
  for (const auto& [gap, n] : o.gaps) {
    if (int e = REAL(posix_madvise)(reinterpret_cast<void*>(gap), n, advice)) return e;
  }
  return 0;  // advice only
}

// ---- exec ----
// The new program does not inherit uext: the image is closed first (clean,
// nothing lost). Routed descriptors do not survive it either way; if exec
// fails, the next routed call opens the image again.

namespace {
void before_exec() {
  if (g_child.load()) return;  // fork then exec: the parent still has it
  std::lock_guard lock(g_open_mu);
  close_filesystem();
}

std::vector<char*> collect_args(const char* first, va_list ap, char*** envp) {
  std::vector<char*> args{const_cast<char*>(first)};
  while (char* a = va_arg(ap, char*)) args.push_back(a);
  args.push_back(nullptr);
  if (envp) *envp = va_arg(ap, char**);
  return args;
}
}  // namespace

UEXT_EXPORT int execve(const char* path, char* const argv[], char* const envp[]) {
  before_exec();
  return REAL(execve)(path, argv, envp);
}

UEXT_EXPORT int execv(const char* path, char* const argv[]) {
  before_exec();
  return REAL(execv)(path, argv);
}

UEXT_EXPORT int execvp(const char* file, char* const argv[]) {
  before_exec();
  return REAL(execvp)(file, argv);
}

UEXT_EXPORT int execvpe(const char* file, char* const argv[], char* const envp[]) {
  before_exec();
  return REAL(execvpe)(file, argv, envp);
}

UEXT_EXPORT int fexecve(int fd, char* const argv[], char* const envp[]) {
  before_exec();
  return REAL(fexecve)(fd, argv, envp);
}

UEXT_EXPORT int execl(const char* path, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  auto args = collect_args(arg, ap, nullptr);
  va_end(ap);
  return execv(path, args.data());
}

UEXT_EXPORT int execlp(const char* file, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  auto args = collect_args(arg, ap, nullptr);
  va_end(ap);
  return execvp(file, args.data());
}

UEXT_EXPORT int execle(const char* path, const char* arg, ...) {
  va_list ap;
  va_start(ap, arg);
  char** envp = nullptr;
  auto args = collect_args(arg, ap, &envp);
  va_end(ap);
  return execve(path, args.data(), envp);
}

// ---- descriptors uext makes ----

UEXT_EXPORT int memfd_create(const char* name, unsigned int flags) noexcept {
  return relocate(REAL(memfd_create)(name, flags));
}

UEXT_EXPORT int eventfd(unsigned int count, int flags) noexcept {
  return relocate(REAL(eventfd)(count, flags));
}

UEXT_EXPORT long syscall(long number, ...) noexcept {
  va_list ap;
  va_start(ap, number);
  long a[6];
  for (long& x : a) x = va_arg(ap, long);
  va_end(ap);
  // Programs that call copy_file_range through syscall(2) (xfs_io, fsx)
  // would otherwise hand the kernel a routed number (an O_PATH /dev/null):
  // EBADF.
  if (number == SYS_copy_file_range) {
    return copy_file_range(static_cast<int>(a[0]), reinterpret_cast<off64_t*>(a[1]), static_cast<int>(a[2]),
                           reinterpret_cast<off64_t*>(a[3]), static_cast<size_t>(a[4]), static_cast<unsigned>(a[5]));
  }
  const long r = REAL(syscall)(number, a[0], a[1], a[2], a[3], a[4], a[5]);
  return number == SYS_userfaultfd && r >= 0 ? relocate(static_cast<int>(r)) : r;
}

}  // extern "C"
