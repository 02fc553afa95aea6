// Clearing setuid and setgid in the daemon (FUSE_HANDLE_KILLPRIV_V2).
//
// Without it the kernel clears the bits itself, and to know whether a
// write must also drop security.capability it asks for that attribute
// (GETXATTR) before every write: a second round trip for each write(),
// which doubled the cost of small writes. With it the kernel marks the
// superblock SB_NOSEC, asks once per inode, and leaves setuid/setgid to
// us, flagging each WRITE and SETATTR (truncate, chown) that must clear
// them. (OPEN carries the flag only with atomic O_TRUNC, which the daemon
// does not take: O_TRUNC arrives as a SETATTR. Capabilities the kernel
// still removes itself, through REMOVEXATTR, and it forgets its per-inode
// mark whenever one is set.)
//
// libfuse 3.14 neither asks for the feature nor passes those flags on. So
// the daemon reads /dev/fuse through libfuse's custom I/O: the INIT reply
// gains the flag when the kernel offered it, and each request is looked at
// as it is read, in the thread that then serves it, which keeps the flag in
// a thread-local the handlers consult. Every transport must call
// note_request() for each request before libfuse parses it.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

struct fuse_session;
struct fuse_init_out;

namespace uext::fuse::killpriv {

// Looks at one request as read from the kernel (fuse_in_header first):
// remembers INIT's offer, and whether this request asks for setuid/setgid
// to be cleared (the answer for the calling thread until its next request).
void note_request(const void* mem, size_t len);

// Whether the request this thread is serving asks for setuid and setgid to
// be cleared (a WRITE, a truncate or a chown by a caller without
// CAP_FSETID).
bool requested();

// Whether the kernel took the feature (after INIT's reply).
bool active();

// For INIT's reply: when the kernel offered the feature, asks for it.
void add_to_init_reply(fuse_init_out& out);
// Writes INIT's reply as libfuse made it (`iov`), through add_to_init_reply
// when it is a success.
ssize_t write_init_reply(int fd, const iovec* iov, int count);

// Installs libfuse custom I/O on `se` (already mounted) that does the above
// for the /dev/fuse transport. False (errno) if libfuse refused it.
bool install_device_io(fuse_session* se);

}  // namespace uext::fuse::killpriv
