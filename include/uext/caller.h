// The process a server acts for.
//
// ext4 makes one check against the calling process rather than the file:
// whether an allocation may dip into the blocks the superblock keeps for
// root (s_r_blocks_count). It may when the process holds CAP_SYS_RESOURCE,
// has the image's reserved uid as its filesystem uid (s_def_resuid, 0 by
// default) or belongs to its reserved group (s_def_resgid, when not 0).
//
// A library user writes as itself: Options::use_root_reserve says what it
// may. A server acting for many processes (the FUSE daemon) instead names,
// on the thread that serves each request, the process behind it:
//
//   RequestCaller who(req);          // a Caller
//   uext::CallerScope scope(&who);
//   fs->write(ino, offset, bytes);   // may use the reserve if `who` may
//
// The library asks the caller only when an allocation would otherwise fail
// for want of the reserve, so a check that costs (reading a process's
// capabilities) is paid only then.
#pragma once

#include <cstdint>

namespace uext {

class Caller {
 public:
  virtual ~Caller() = default;
  // The filesystem uid the process acts with.
  virtual uint32_t fsuid() const = 0;
  // Whether the process is in group `gid` (its filesystem gid or a
  // supplementary group).
  virtual bool in_group(uint32_t gid) const = 0;
  // Whether the process holds CAP_SYS_RESOURCE.
  virtual bool has_sys_resource() const = 0;
};

// Names `caller` as the process behind this thread's calls into any
// Filesystem until the scope ends (scopes nest). The caller must outlive
// the scope.
class CallerScope {
 public:
  explicit CallerScope(const Caller* caller);
  ~CallerScope();
  CallerScope(const CallerScope&) = delete;
  CallerScope& operator=(const CallerScope&) = delete;

  // This thread's caller, or null when none is named.
  static const Caller* current();

 private:
  const Caller* previous_;
};

}  // namespace uext
