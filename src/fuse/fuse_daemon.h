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

#include "fuse/mount_options.h"

namespace uext::fuse {

// Mounts opts.image at opts.mountpoint and serves it until unmounted
// (fusermount3 -u, umount) or told to stop (SIGTERM, SIGINT, SIGHUP); then
// closes the image clean. Without opts.foreground it returns in the
// calling process once the mount is up (or failed) while a child serves.
// Returns the exit status: 0, 1 (failure, reported on stderr).
int run_mount(MountOptions opts);

}  // namespace uext::fuse
