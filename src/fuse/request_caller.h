// The process behind a FUSE request, as the library asks about it
// (uext/caller.h), and the capability checks the daemon makes itself.
//
// The kernel sends the caller's uid, gid and pid with each request; its
// supplementary groups and capabilities are read from /proc/PID/status only
// when asked, which for the library is only when an allocation reaches the
// root reserve.
#pragma once

#include <sys/types.h>

#include <cstdint>

#include "uext/caller.h"

struct fuse_req;

namespace uext::fuse {

using Request = fuse_req*;  // libfuse's fuse_req_t

// Linux capability numbers (linux/capability.h).
inline constexpr int kCapFsetid = 4;
inline constexpr int kCapSysResource = 24;

// Whether the process that sent `req` holds capability `cap` in its
// effective set (as the kernel's capable() looks); by its uid (root or not)
// when the process is gone.
bool caller_has_capability(Request req, int cap);

// Whether the process that sent `req` is in group `gid`: its filesystem gid
// or one of its supplementary groups.
bool caller_in_group(Request req, uint32_t gid);

// Takes what it needs from the request when made, so that it may be asked
// after the request was answered (a WRITE answered early).
class RequestCaller final : public Caller {
 public:
  explicit RequestCaller(Request req);
  uint32_t fsuid() const override { return uid_; }
  bool in_group(uint32_t gid) const override;
  bool has_sys_resource() const override;

 private:
  uint32_t uid_ = 0, gid_ = 0;
  pid_t pid_ = 0;
};

// For the handlers of requests that may allocate: names the request's
// process as this thread's caller while the handler runs.
class ActingFor {
 public:
  explicit ActingFor(Request req) : caller_(req), scope_(&caller_) {}

 private:
  RequestCaller caller_;
  CallerScope scope_;
};

}  // namespace uext::fuse
