#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 12)
#include "fuse/killpriv.h"

#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <vector>

namespace uext::fuse::killpriv {
namespace {

std::atomic<bool> g_offered{false};
std::atomic<bool> g_active{false};
std::atomic<uint64_t> g_init_unique{0};
std::atomic<bool> g_init_answered{false};
thread_local bool t_requested = false;

// The request's first argument, when the request holds all of it.
template <typename Arg>
const Arg* first_arg(const void* mem, size_t len) {
  if (len < sizeof(fuse_in_header) + sizeof(Arg)) return nullptr;
  return reinterpret_cast<const Arg*>(static_cast<const char*>(mem) + sizeof(fuse_in_header));
}

ssize_t device_read(int fd, void* buf, size_t len, void*) {
  const ssize_t n = ::read(fd, buf, len);
  if (n > 0) note_request(buf, static_cast<size_t>(n));
  return n;
}

ssize_t device_writev(int fd, iovec* iov, int count, void*) {
  const uint64_t init = g_init_unique.load(std::memory_order_relaxed);
  if (init != 0 && count > 0 && iov[0].iov_len >= sizeof(fuse_out_header) &&
      static_cast<const fuse_out_header*>(iov[0].iov_base)->unique == init && !g_init_answered.exchange(true)) {
    return write_init_reply(fd, iov, count);
  }
  return ::writev(fd, iov, count);
}

}  // namespace

void note_request(const void* mem, size_t len) {
  t_requested = false;
  if (len < sizeof(fuse_in_header)) return;
  fuse_in_header in;
  std::memcpy(&in, mem, sizeof in);
  switch (in.opcode) {
    case FUSE_INIT:
      if (const auto* arg = first_arg<fuse_init_in>(mem, len)) {
        g_offered.store((arg->flags & FUSE_HANDLE_KILLPRIV_V2) != 0);
        g_init_unique.store(in.unique);
      }
      break;
    case FUSE_WRITE:
      if (const auto* arg = first_arg<fuse_write_in>(mem, len)) {
        t_requested = (arg->write_flags & FUSE_WRITE_KILL_SUIDGID) != 0;
      }
      break;
    case FUSE_SETATTR:
      if (const auto* arg = first_arg<fuse_setattr_in>(mem, len)) {
        t_requested = (arg->valid & FATTR_KILL_SUIDGID) != 0;
      }
      break;
    default:
      break;
  }
}

bool requested() { return t_requested; }

bool active() { return g_active.load(std::memory_order_relaxed); }

void add_to_init_reply(fuse_init_out& out) {
  if (!g_offered.load()) return;
  out.flags |= FUSE_HANDLE_KILLPRIV_V2;
  g_active.store(true);
}

ssize_t write_init_reply(int fd, const iovec* iov, int count) {
  const auto* out = static_cast<const fuse_out_header*>(iov[0].iov_base);
  if (out->error != 0 || count != 2 || iov[1].iov_len < sizeof(fuse_init_out)) return ::writev(fd, iov, count);
  // A copy: libfuse's reply is const to us, and may be followed by more
  // than this header knows.
  std::vector<char> arg(static_cast<const char*>(iov[1].iov_base),
                        static_cast<const char*>(iov[1].iov_base) + iov[1].iov_len);
  fuse_init_out head;
  std::memcpy(&head, arg.data(), sizeof head);
  add_to_init_reply(head);
  std::memcpy(arg.data(), &head, sizeof head);
  iovec patched[2] = {iov[0], {arg.data(), arg.size()}};
  return ::writev(fd, patched, 2);
}

bool install_device_io(fuse_session* se) {
  fuse_custom_io io{};
  io.read = device_read;
  io.writev = device_writev;
  return fuse_session_custom_io(se, &io, fuse_session_fd(se)) == 0;
}

}  // namespace uext::fuse::killpriv
