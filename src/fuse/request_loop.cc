#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 12)
#include "fuse/request_loop.h"

#include "fuse/mountinfo.h"

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <time.h>

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace uext::fuse {
namespace {

using Clock = std::chrono::steady_clock;

// How long one request may keep the reading thread (blocked: an fsync, a
// cold read) before another thread starts reading beside it; also how
// often the watchdog looks while requests flow. Not shorter: each look is
// a timer and a wakeup, and at 1 ms those cost a VM a third of its
// requests per second.
constexpr auto kStall = std::chrono::milliseconds(10);
// A request that keeps a CPU busy this long (a long copy_file_range, a huge
// directory) gets a reader beside it anyway, so other programs do not wait
// for it on a machine with CPUs to spare.
constexpr auto kBusy = std::chrono::milliseconds(50);
// Without a request for this long the watchdog sleeps until the next one.
constexpr auto kIdle = std::chrono::seconds(1);

// Sent to threads blocked in read() on /dev/fuse when the loop ends; the
// handler does nothing, the point is the EINTR.
int wake_signal() { return SIGRTMIN + 1; }
void on_wake_signal(int) {}

struct Loop {
  fuse_session* se = nullptr;
  unsigned max_threads = 1;
  // How long the reader polls the (then non-blocking) device before it
  // sleeps in poll(); zero: it sleeps in read() at once.
  Clock::duration busy_poll{};
  std::atomic<bool> stopping{false};  // exiting, readable without mu

  std::mutex mu;
  std::condition_variable followers;  // threads with no role
  std::condition_variable watch;      // the watchdog's wait
  sem_t finish;                       // posted when the session ends

  bool exiting = false;
  int error = 0;
  int readers = 0;                      // threads in (or entering) receive
  bool watchdog = false;                // some follower watches for stalls
  bool watchdog_idle = false;           // ... and sleeps until a request comes
  int waiting_followers = 0;
  Clock::time_point taken = Clock::now();  // when a reader last took a request
  pid_t taker = 0;                         // ... and which thread
  std::vector<pthread_t> threads;
  std::vector<pthread_t> reading;

  void stop(int err) {  // mu held
    if (err < 0 && error == 0) error = err;
    if (!exiting) {
      exiting = true;
      stopping = true;
      followers.notify_all();
      watch.notify_all();
      sem_post(&finish);
    }
  }
};

void* worker(void* arg);

// Reads the next request into `buf` (libfuse's return convention). With
// busy polling the device is non-blocking: empty reads repeat until the
// poll time is up, then the thread sleeps in poll() until a request (or
// the end of the session, or the wake signal) comes.
int receive(Loop& l, fuse_buf& buf) {
  if (l.busy_poll == Clock::duration::zero()) return fuse_session_receive_buf(l.se, &buf);
  for (;;) {
    const auto until = Clock::now() + l.busy_poll;
    do {
      const int res = fuse_session_receive_buf(l.se, &buf);
      if (res != -EAGAIN) return res;
      if (l.stopping.load(std::memory_order_relaxed)) return -EINTR;
    } while (Clock::now() < until);
    // Woken by a request, or an error (unmounted) that the next read reports.
    pollfd p{fuse_session_fd(l.se), POLLIN, 0};
    if (::poll(&p, 1, -1) < 0 && errno == EINTR) return -EINTR;
  }
}

// The CPU time per second a cgroup directory and its ancestors (up to
// `top`) allow, in CPUs; a large number when none sets a quota. cgroup v2
// keeps "QUOTA PERIOD" (or "max PERIOD") in cpu.max, v1 the two numbers
// in cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us.
double cgroup_quota(std::string dir, const std::string& top, bool v2) {
  double cpus = 1e9;
  for (;;) {
    double quota = -1, period = 0;
    if (v2) {
      std::ifstream in(dir + "/cpu.max");
      std::string q;
      if (in >> q >> period && q != "max") quota = std::strtod(q.c_str(), nullptr);
    } else {
      std::ifstream q(dir + "/cpu.cfs_quota_us"), p(dir + "/cpu.cfs_period_us");
      if (!(q >> quota) || !(p >> period)) quota = -1;
    }
    if (quota > 0 && period > 0) cpus = std::min(cpus, quota / period);
    if (dir.size() <= top.size()) return cpus;
    dir.erase(dir.rfind('/'));
  }
}

// CPUs this process may keep busy at once: its affinity, lowered by a CPU
// quota of its cgroup (a container started with --cpus=1 on a larger host
// sees every CPU in its affinity, but only one CPU-second a second).
double usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  double cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
  // Where the cpu controller is mounted.
  std::string v1_root, v1_mount, v2_root, v2_mount;
  for (const MountInfo& m : read_mountinfo()) {
    if (m.fstype == "cgroup2" && v2_mount.empty()) {
      v2_root = m.root;
      v2_mount = m.mountpoint;
    } else if (m.fstype == "cgroup" && ("," + m.super_options + ",").find(",cpu,") != std::string::npos) {
      v1_root = m.root;
      v1_mount = m.mountpoint;
    }
  }
  // /proc/self/cgroup: "ID:CONTROLLERS:PATH", v2's with no controllers.
  std::ifstream groups("/proc/self/cgroup");
  for (std::string line; std::getline(groups, line);) {
    const size_t a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    const bool v2 = controllers.empty();
    if (!v2 && ("," + controllers + ",").find(",cpu,") == std::string::npos) continue;
    const std::string& root = v2 ? v2_root : v1_root;
    const std::string& mount = v2 ? v2_mount : v1_mount;
    if (mount.empty()) continue;
    if (root != "/" && path.rfind(root, 0) == 0) path.erase(0, root.size());
    if (path == "/") path.clear();
    cpus = std::min(cpus, cgroup_quota(mount + path, mount, v2));
  }
  return cpus;
}

// Whether a thread is running or waiting for a CPU ('R' in its stat) rather
// than blocked. A reader that is only waiting for a CPU gains nothing from
// a second reader (there is no CPU for it either), and on a busy machine
// that wait often passes kStall.
bool runnable(pid_t tid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%d/stat", static_cast<int>(tid));
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[256];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  // "tid (comm) S ...": comm may hold spaces and parentheses; the state follows the last ')'.
  const char* close_paren = std::strrchr(buf, ')');
  return close_paren && close_paren[1] == ' ' && close_paren[2] == 'R';
}

bool spawn(Loop& l) {  // mu held
  pthread_t t;
  if (pthread_create(&t, nullptr, worker, &l) != 0) return false;
  l.threads.push_back(t);
  return true;
}

// Waits (mu held) until this thread may read /dev/fuse: at once when it
// just served a request and nobody reads; as a follower only when the
// reader has been stuck with one request for kStall. False when the loop ends.
bool become_reader(Loop& l, std::unique_lock<std::mutex>& lock, bool just_served) {
  bool is_watchdog = false;
  for (;;) {
    if (l.exiting) {
      if (is_watchdog) l.watchdog = false;
      return false;
    }
    if (just_served) {
      if (l.readers == 0) break;
      just_served = false;  // another thread took over meanwhile: follow
      continue;
    }
    if (!is_watchdog && !l.watchdog) {
      l.watchdog = true;
      is_watchdog = true;
    }
    if (!is_watchdog) {
      ++l.waiting_followers;
      l.followers.wait(lock);
      --l.waiting_followers;
      continue;
    }
    // The watchdog looks every kStall while requests flow, and sleeps
    // once the mount has been quiet for kIdle (the next request wakes it).
    const auto held = Clock::now() - l.taken;
    if (l.readers == 0 && (held >= kBusy || (held >= kStall && !runnable(l.taker)))) {
      // The reader is stuck: read beside it, and hand the watch on.
      l.watchdog = false;
      if (l.waiting_followers > 0) l.followers.notify_one();
      else if (l.threads.size() < l.max_threads) spawn(l);
      break;
    }
    if (l.readers > 0 && held >= kIdle) {
      l.watchdog_idle = true;
      l.watch.wait(lock);
      l.watchdog_idle = false;
    } else {
      l.watch.wait_for(lock, kStall);
    }
  }
  ++l.readers;
  l.reading.push_back(pthread_self());
  return true;
}

void* worker(void* arg) {
  Loop& l = *static_cast<Loop*>(arg);
  fuse_buf buf{};
  std::unique_lock lock(l.mu);
  bool just_served = true;  // a new thread reads at once if nobody does
  while (become_reader(l, lock, just_served)) {
    lock.unlock();
    const int res = receive(l, buf);
    lock.lock();
    --l.readers;
    for (size_t i = 0; i < l.reading.size(); ++i) {
      if (pthread_equal(l.reading[i], pthread_self())) {
        l.reading.erase(l.reading.begin() + static_cast<long>(i));
        break;
      }
    }
    just_served = true;
    if (res == -EINTR || res == -EAGAIN) continue;
    if (res <= 0 || fuse_session_exited(l.se)) {
      l.stop(res == -ENODEV ? 0 : res);
      break;
    }
    l.taken = Clock::now();
    // gettid() is a system call each time (about a microsecond here, on
    // every request): ask once per thread.
    thread_local const pid_t self = static_cast<pid_t>(::gettid());
    l.taker = self;
    if (l.watchdog_idle) l.watch.notify_one();
    lock.unlock();
    fuse_session_process_buf(l.se, &buf);
    lock.lock();
    if (fuse_session_exited(l.se)) {
      l.stop(0);
      break;
    }
  }
  lock.unlock();
  std::free(buf.mem);
  return nullptr;
}

}  // namespace

int serve_requests(fuse_session* se, unsigned max_threads, uint32_t busy_poll_us) {
  Loop l;
  l.se = se;
  // Polling keeps a CPU busy while requests come: not when that CPU is the
  // program's own, or more than the process's share.
  if (busy_poll_us > 0 && usable_cpus() >= 2) {
    const int fd = fuse_session_fd(se);
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0) {
      l.busy_poll = std::chrono::microseconds(busy_poll_us);
    }
  }
  l.max_threads = max_threads < 2 ? 2 : max_threads;  // a reader and a watchdog at least
  sem_init(&l.finish, 0, 0);

  struct sigaction sa {};
  sa.sa_handler = on_wake_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: read() must fail with EINTR
  struct sigaction old_sa {};
  sigaction(wake_signal(), &sa, &old_sa);

  // Workers keep the stop signals blocked so that they reach this thread,
  // whose sem_wait they interrupt.
  sigset_t stop_signals, old_mask;
  sigemptyset(&stop_signals);
  for (int s : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&stop_signals, s);
  pthread_sigmask(SIG_BLOCK, &stop_signals, &old_mask);
  {
    std::lock_guard lock(l.mu);
    // A reader and a watchdog from the start.
    if (!spawn(l) || !spawn(l)) l.stop(-EAGAIN);
  }
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);

  while (!fuse_session_exited(se)) {
    {
      std::lock_guard lock(l.mu);
      if (l.exiting) break;
    }
    // EINTR after a stop signal's handler; the timeout covers a signal
    // that some other thread of the process (the library's) handled.
    timespec until {};
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1;
    sem_timedwait(&l.finish, &until);
  }

  std::vector<pthread_t> threads;
  {
    std::unique_lock lock(l.mu);
    l.stop(0);
    // Threads blocked in read() learn of the end from an EINTR; a signal
    // that arrives just before a thread enters read() is lost, so repeat.
    while (l.readers > 0) {
      for (pthread_t t : l.reading) pthread_kill(t, wake_signal());
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      lock.lock();
    }
    threads = l.threads;
  }
  for (pthread_t t : threads) pthread_join(t, nullptr);

  sigaction(wake_signal(), &old_sa, nullptr);
  sem_destroy(&l.finish);
  return l.error;
}

}  // namespace uext::fuse
