#include "fuse/image_guard.h"

#include "fuse/mountinfo.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include <fmt/core.h>

namespace uext::fuse {

ImageGuard::~ImageGuard() {
  if (fd_ >= 0) ::close(fd_);
}

ImageGuard& ImageGuard::operator=(ImageGuard&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

int flock_holder_pid(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  const std::string id = fmt::format("{:02x}:{:02x}:{}", major(st.st_dev), minor(st.st_dev),
                                     static_cast<unsigned long>(st.st_ino));
  std::ifstream locks("/proc/locks");
  std::string line;
  while (std::getline(locks, line)) {
    // "12: FLOCK  ADVISORY  WRITE 4242 fd:01:393218 0 EOF"; waiters carry "->".
    std::istringstream in(line);
    std::string num, kind, adv, rw, pid, dev;
    in >> num >> kind;
    if (kind == "->") in >> kind;
    in >> adv >> rw >> pid >> dev;
    if (kind != "FLOCK" || dev != id) continue;
    if (line.find("->") != std::string::npos) continue;
    return std::atoi(pid.c_str());
  }
  return 0;
}

std::string uext_mountpoint_of(const std::string& fsname) {
  for (const MountInfo& m : read_mountinfo()) {
    if (m.fstype == "fuse.uext" && m.source == fsname) return m.mountpoint;
  }
  return {};
}

Result<ImageGuard> ImageGuard::acquire(const std::string& image, const std::string& fsname, bool read_only,
                                       double wait_seconds) {
  // O_RDONLY is enough for flock and works on read-only image files.
  int fd = ::open(image.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error(errno, fmt::format("{}: {}", image, std::strerror(errno)));
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(wait_seconds * 1000));
  for (;;) {
    if (::flock(fd, (read_only ? LOCK_SH : LOCK_EX) | LOCK_NB) == 0) return ImageGuard(fd);
    int err = errno;
    if (err != EWOULDBLOCK) {
      ::close(fd);
      return Error(err, fmt::format("{}: cannot lock the image: {}", image, std::strerror(err)));
    }
    const int pid = flock_holder_pid(image);
    const std::string where = uext_mountpoint_of(fsname);
    const std::string holder = pid > 0 ? fmt::format("pid {}", pid) : std::string("another process");
    if (!where.empty()) {
      ::close(fd);
      return Error(EBUSY, fmt::format("{} is already mounted by another uext ({}) at {}; unmount it first "
                                      "(fusermount3 -u {})",
                                      image, holder, where, where));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      ::close(fd);
      return Error(EBUSY, fmt::format("{} is in use by another uext or a program holding a lock on it ({}); "
                                      "refusing to mount it twice",
                                      image, holder));
    }
    // Not mounted any more: most likely a daemon still flushing after its
    // unmount. Give it time to finish.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace uext::fuse
