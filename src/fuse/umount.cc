// `uext umount MOUNTPOINT`: unmount, then wait for the daemon to finish.
//
// The kernel lets go of a FUSE mount as soon as it is unmounted; the
// daemon then writes back, commits, checkpoints and closes the image. Until
// it exits the image is not clean, so a script that runs e2fsck or mounts
// the image elsewhere right after `fusermount3 -u` races the daemon. This
// asks the daemon for its pid first (an ioctl on the root directory), holds
// a pidfd on it, unmounts, and returns when that process has exited.
#include <fcntl.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/core.h>

#include "fuse/fuse_daemon.h"
#include "fuse/image_guard.h"
#include "fuse/mountinfo.h"

namespace uext::fuse {
namespace {

struct MountEntry {
  std::string mountpoint, fstype, source;
};

// The topmost mount on `path` (the last one listed), if any.
bool find_mount(const std::string& path, MountEntry& found) {
  bool any = false;
  for (const MountInfo& m : read_mountinfo()) {
    if (m.mountpoint != path) continue;
    found = {path, m.fstype, m.source};
    any = true;
  }
  return any;
}

// The mount point as mountinfo spells it: absolute, symlinks resolved. A
// mount whose daemon died cannot be resolved (ENOTCONN), so the parent is
// resolved and the last component kept.
std::string canonical_mountpoint(const std::string& arg) {
  char buf[PATH_MAX];
  if (::realpath(arg.c_str(), buf)) return buf;
  std::string a = arg;
  while (a.size() > 1 && a.back() == '/') a.pop_back();
  const size_t slash = a.rfind('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : a.substr(0, slash));
  std::string base = slash == std::string::npos ? a : a.substr(slash + 1);
  if (!::realpath(dir.c_str(), buf)) return a;
  std::string d = buf;
  return d == "/" ? "/" + base : d + "/" + base;
}

int fail(const std::string& msg) {
  std::fprintf(stderr, "uext umount: %s\n", msg.c_str());
  return 1;
}

// umount2 as root; fusermount3 (setuid) for the user who mounted.
int detach(const std::string& mp) {
  if (::geteuid() == 0) {
    if (::umount2(mp.c_str(), 0) == 0) return 0;
    const int err = errno;
    if (err == EBUSY) return fail(fmt::format("{}: target is busy (a program has a file or directory open in it)", mp));
    return fail(fmt::format("{}: {}", mp, std::strerror(err)));
  }
  pid_t child = ::fork();
  if (child < 0) return fail(fmt::format("fork: {}", std::strerror(errno)));
  if (child == 0) {
    ::execlp("fusermount3", "fusermount3", "-u", "--", mp.c_str(), static_cast<char*>(nullptr));
    std::fprintf(stderr, "uext umount: fusermount3: %s\n", std::strerror(errno));
    ::_exit(127);
  }
  int st = 0;
  while (::waitpid(child, &st, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 0;
  return 1;  // fusermount3 said why
}

}  // namespace

int run_umount(const std::string& arg) {
  const std::string mp = canonical_mountpoint(arg);
  MountEntry m;
  if (!find_mount(mp, m)) return fail(fmt::format("{}: not a mount point", arg));
  if (m.fstype != "fuse.uext") {
    return fail(fmt::format("{}: not a uext mount ({} from {}); use umount", arg, m.fstype, m.source));
  }

  // Ask the daemon who it is before the mount (the way to reach it) goes.
  DaemonInfo info;
  int pidfd = -1;
  int dir = ::open(mp.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    if (::ioctl(dir, kDaemonInfoIoctl, &info) == 0 && info.pid > 0) {
      pidfd = static_cast<int>(::syscall(SYS_pidfd_open, info.pid, 0));
    }
    ::close(dir);
  }
  // Without an answer (the daemon died: ENOTCONN) there is nothing to wait for.

  if (int rc = detach(mp); rc != 0) {
    if (pidfd >= 0) ::close(pidfd);
    return rc;
  }
  if (pidfd < 0) return 0;
  // Readable once the process has exited, whoever reaps it.
  pollfd p{pidfd, POLLIN, 0};
  while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
  }
  ::close(pidfd);
  return 0;
}

}  // namespace uext::fuse
