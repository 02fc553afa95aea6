// `uext mount`: serves a uext::Filesystem to the kernel through libfuse's
// low-level API.
//
// The daemon is a thin translation layer: FUSE inode numbers are the
// image's own (FUSE's root, 1, is ext4's root, 2), each request calls the
// matching Filesystem method from one of several libfuse threads (the
// library does its own per-inode locking), and the kernel checks
// permissions (default_permissions), exactly as it does for ext4.
// Lookup counts become Filesystem::retain/release, so a file unlinked
// while open stays readable until the kernel forgets it.
#pragma once

#include <sys/ioctl.h>

#include <cstdint>
#include <string>

#include "fuse/mount_options.h"

namespace uext::fuse {

// What the daemon tells `uext umount` through an ioctl on the mount's root
// directory: fusermount3 -u returns before the daemon has flushed and
// closed the image, and only the daemon knows which process and image to
// wait for (the mount's source may be any fsname=).
struct DaemonInfo {
  int32_t pid = 0;
  uint32_t read_only = 0;
  char image[4088] = {};  // absolute path, NUL-terminated
};
static_assert(sizeof(DaemonInfo) == 4096);
// A restricted (size-encoded) ioctl, so the kernel copies the reply itself.
inline constexpr unsigned int kDaemonInfoIoctl = _IOR('U', 0x75, DaemonInfo);

// The daemon lifts its soft descriptor limit towards the hard one and
// presizes its descriptor table, both up to this many (512 KiB of table).
inline constexpr uint64_t kMaxDescriptors = uint64_t{1} << 16;

// Unmounts a uext mount and waits until its daemon has closed the image.
// Returns the exit status (0, 1) having reported failures on stderr.
int run_umount(const std::string& mountpoint);

// Mounts opts.image at opts.mountpoint and serves it until unmounted
// (fusermount3 -u, umount) or told to stop (SIGTERM, SIGINT, SIGHUP); then
// closes the image clean. Without opts.foreground it returns in the
// calling process once the mount is up (or failed) while a child serves.
// Returns the exit status: 0, 1 (failure, reported on stderr).
int run_mount(MountOptions opts);

}  // namespace uext::fuse
