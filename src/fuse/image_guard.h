// The "already mounted" guard: a flock on the image file held for the
// daemon's life. Read-write mounts take it exclusively, read-only ones
// shared, so any number of read-only mounts may coexist but never with a
// writer. The kernel drops the lock when the daemon dies (even by
// SIGKILL), so a stale lock can never keep an image from mounting.
#pragma once

#include <string>

#include "uext/status.h"

namespace uext::fuse {

// Who holds a lock on the image, as far as /proc tells.
struct LockHolder {
  int pid = 0;               // 0 when unknown
  std::string mountpoint;    // where a uext mount of this image sits, if found
};

class ImageGuard {
 public:
  ImageGuard() = default;
  ~ImageGuard();
  ImageGuard(ImageGuard&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  ImageGuard& operator=(ImageGuard&& other) noexcept;
  ImageGuard(const ImageGuard&) = delete;
  ImageGuard& operator=(const ImageGuard&) = delete;

  // Locks `image`. When another uext holds it and is still mounted, fails
  // at once with EBUSY and a message naming the holder's pid and mount
  // point. When the holder is no longer mounted (it is flushing after an
  // unmount), waits up to `wait_seconds` for it to finish.
  // `fsname` is the source name a uext mount of this image shows in
  // /proc/self/mountinfo.
  static Result<ImageGuard> acquire(const std::string& image, const std::string& fsname, bool read_only,
                                    double wait_seconds = 15.0);

  bool held() const { return fd_ >= 0; }

 private:
  explicit ImageGuard(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// The pid holding a flock on the file (from /proc/locks), 0 if none found.
int flock_holder_pid(const std::string& path);
// Where a uext (fuse.uext) mount with this source is mounted, "" if none.
std::string uext_mountpoint_of(const std::string& fsname);

}  // namespace uext::fuse
