#include "vm/userfaultfd.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

// Debian 12's headers come from Linux 6.1; these arrived later.
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP ((__u64)1 << 1)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
struct uffdio_poison {
  struct uffdio_range range;
  __u64 mode;
  __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, 0x08, struct uffdio_poison)
#endif

namespace uext::vm {

namespace {

Error ioctl_error(const char* what, uintptr_t addr, size_t len) {
  const int e = errno;
  return Error(e, fmt::format("userfaultfd {} of {:#x}+{:#x}: {}", what, addr, len, std::strerror(e)));
}

}  // namespace

Result<Userfaultfd> Userfaultfd::open() {
  // Poisoning is wanted but optional: a kernel without it refuses the
  // whole feature set, so ask again without it (a fresh fd: the API
  // handshake happens once).
  auto u = open_with(true);
  if (!u.ok() && u.error().code() == EINVAL) return open_with(false);
  return u;
}

Result<Userfaultfd> Userfaultfd::open_with(bool poison) {
  Userfaultfd u;
  u.fd_ = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (u.fd_ < 0 && errno == EPERM) {
    // Unprivileged: faults from user code only, which is what stores are.
    u.fd_ = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
    u.user_mode_only_ = u.fd_ >= 0;
  }
  if (u.fd_ < 0) {
    const int e = errno;
    return Error(e, fmt::format("userfaultfd: {}", std::strerror(e)));
  }
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM |
                 UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_PAGEFAULT_FLAG_WP;
  if (poison) api.features |= UFFD_FEATURE_POISON;
  if (ioctl(u.fd_, UFFDIO_API, &api) != 0) {
    const int e = errno;
    return Error(e, fmt::format("userfaultfd: the kernel lacks minor or write-protect faults on shared memory: {}",
                                std::strerror(e)));
  }
  u.can_poison_ = poison;
  return u;
}

Userfaultfd& Userfaultfd::operator=(Userfaultfd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    user_mode_only_ = o.user_mode_only_;
    can_poison_ = o.can_poison_;
    o.fd_ = -1;
  }
  return *this;
}

Userfaultfd::~Userfaultfd() {
  if (fd_ >= 0) ::close(fd_);
}

Status Userfaultfd::register_range(void* addr, size_t len, bool track_stores) {
  uffdio_register reg{};
  reg.range.start = reinterpret_cast<uintptr_t>(addr);
  reg.range.len = len;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR;
  if (track_stores) reg.mode |= UFFDIO_REGISTER_MODE_WP;
  if (ioctl(fd_, UFFDIO_REGISTER, &reg) != 0) return ioctl_error("register", reg.range.start, len);
  return {};
}

Status Userfaultfd::unregister_range(void* addr, size_t len) {
  uffdio_range range{reinterpret_cast<uintptr_t>(addr), len};
  if (ioctl(fd_, UFFDIO_UNREGISTER, &range) != 0) return ioctl_error("unregister", range.start, len);
  return {};
}

Status Userfaultfd::map_present(uintptr_t addr, size_t len, bool writable) {
  const uintptr_t end = addr + len;
  while (addr < end) {
    uffdio_continue c{};
    c.range.start = addr;
    c.range.len = end - addr;
    c.mode = UFFDIO_CONTINUE_MODE_DONTWAKE | (writable ? 0 : UFFDIO_CONTINUE_MODE_WP);
    if (ioctl(fd_, UFFDIO_CONTINUE, &c) == 0) return {};
    if (errno == EEXIST) {
      // Stopped at a page mapped already (another fault got there): skip it.
      addr += (c.mapped > 0 ? static_cast<uintptr_t>(c.mapped) : 0) + 4096;
      continue;
    }
    if (errno == EAGAIN) {
      if (c.mapped > 0) addr += static_cast<uintptr_t>(c.mapped);
      continue;
    }
    return ioctl_error("continue", addr, end - addr);
  }
  return {};
}

Status Userfaultfd::write_protect(uintptr_t addr, size_t len, bool protect, bool wake) {
  uffdio_writeprotect wp{};
  wp.range.start = addr;
  wp.range.len = len;
  // Protecting never wakes anyone, and the kernel refuses DONTWAKE with it.
  wp.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : (wake ? 0 : UFFDIO_WRITEPROTECT_MODE_DONTWAKE);
  while (ioctl(fd_, UFFDIO_WRITEPROTECT, &wp) != 0) {
    if (errno != EAGAIN) return ioctl_error("write-protect", addr, len);
  }
  return {};
}

Status Userfaultfd::wake(uintptr_t addr, size_t len) {
  uffdio_range range{addr, len};
  if (ioctl(fd_, UFFDIO_WAKE, &range) != 0) return ioctl_error("wake", addr, len);
  return {};
}

Status Userfaultfd::poison(uintptr_t addr, size_t len) {
  // A write-protected entry would leave a marker behind when dropped, and
  // poison needs an empty slot: un-protect, drop, then poison.
  (void)write_protect(addr, len, false, false);  // fails harmlessly where stores are not tracked
  UEXT_TRY(clear(addr, len));
  uffdio_poison p{};
  p.range.start = addr;
  p.range.len = len;
  while (ioctl(fd_, UFFDIO_POISON, &p) != 0) {
    if (errno != EAGAIN) return ioctl_error("poison", addr, len);
  }
  return {};
}

Status Userfaultfd::clear(uintptr_t addr, size_t len) {
  if (madvise(reinterpret_cast<void*>(addr), len, MADV_DONTNEED) != 0) return ioctl_error("drop", addr, len);
  return {};
}

Result<bool> Userfaultfd::read_event(FaultEvent& event) {
  uffd_msg msg{};
  ssize_t n = ::read(fd_, &msg, sizeof msg);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return false;
    const int e = errno;
    return Error(e, fmt::format("userfaultfd read: {}", std::strerror(e)));
  }
  if (n != sizeof msg || msg.event != UFFD_EVENT_PAGEFAULT) return false;
  event.address = static_cast<uintptr_t>(msg.arg.pagefault.address);
  event.write = msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE;
  event.wp = msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP;
  event.minor = msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR;
  event.tid = static_cast<pid_t>(msg.arg.pagefault.feat.ptid);
  return true;
}

}  // namespace uext::vm
