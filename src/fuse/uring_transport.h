// FUSE over io_uring for `uext mount` (Linux 6.14+ with the fuse module's
// enable_uring=Y).
//
// The kernel keeps one request queue per possible CPU (the queue of the CPU
// the requesting task runs on) and hands each request to a ring entry that
// the server registered for that queue: the request arrives as a completion
// in the io_uring of the thread that owns the entry, and that thread's
// COMMIT_AND_FETCH carries the reply and waits for the next request. Here
// every queue gets a few threads pinned to its CPU, each with its own ring
// and one entry, so a request is answered on the CPU that made it without
// waking a thread on the other CPU (tens of microseconds on a VM), and one
// request that blocks (an fsync, a cold read) leaves the others of its CPU
// to the queue's other threads.
//
// /dev/fuse stays in use beside the rings: INIT and every request sent
// before all queues are registered arrive there, and so do FORGETs and
// INTERRUPTs, so the ordinary request loop keeps running. The transport
// sits under libfuse as its custom I/O (fuse_session_custom_io, installed
// after fuse_session_mount and before INIT): reads pass through (noting
// INIT), and a reply goes to the ring entry the calling thread is serving
// when its unique matches that entry's request, else to /dev/fuse.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "fuse/mount_options.h"

struct fuse_session;

namespace uext::fuse {

// Whether the running kernel has FUSE over io_uring switched on: "Y" in
// /sys/module/fuse/parameters/enable_uring. Empty when it is, else why not.
std::string uring_unavailable_reason();

// Whether the calling thread is serving a request that came through a
// ring. Its reply lands in the entry that holds the request, over the
// request's data: the handler must be done with the data before it replies.
bool serving_ring_request();

class UringTransport {
 public:
  struct Config {
    IoUringMode mode = IoUringMode::kAuto;
    unsigned threads_per_queue = 2;
    // Diagnostics, from any thread.
    std::function<void(const std::string&)> info;
    std::function<void(const std::string&)> error;
    // Called once, from the thread that sends INIT's reply, right after
    // it: true when every queue's threads registered their entries (the
    // kernel then routes requests through the rings); false with the reason
    // when they did not (the kernel keeps using /dev/fuse; with mode kOn
    // the caller should end the mount).
    std::function<void(bool, const std::string&)> ready;
  };

  // Creates the per-queue threads and their rings and installs the custom
  // I/O on `se` (already mounted, INIT not yet answered). Returns nullptr
  // and sets `why` when io_uring cannot be used (the kernel switch is off,
  // a ring cannot be set up); `se` is then left as it was, to serve over
  // /dev/fuse, or to fail with `why` when the mode is kOn.
  static std::unique_ptr<UringTransport> install(fuse_session* se, Config config, std::string& why);

  // Stops and joins the ring threads and closes their rings. Call once the
  // request loop has ended and before fuse_session_unmount/destroy.
  void stop();

  ~UringTransport();
  UringTransport(const UringTransport&) = delete;
  UringTransport& operator=(const UringTransport&) = delete;

  struct Impl;

 private:
  explicit UringTransport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace uext::fuse
