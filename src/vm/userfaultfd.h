// A thin owner of a userfaultfd(2): open with the features page_mkwrite
// needs (missing, minor and write-protect faults on shmem, the faulting
// thread's id), register ranges, and resolve faults. The facts this
// relies on are in docs/DESIGN.md, "Mappings".
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

#include "uext/status.h"

namespace uext::vm {

struct FaultEvent {
  uintptr_t address = 0;
  bool write = false;   // the access was a store
  bool wp = false;      // a store to a write-protected, mapped page
  bool minor = false;   // the page is in the memfd, not mapped here yet
  pid_t tid = 0;        // the faulting thread
};

class Userfaultfd {
 public:
  // Opens a userfaultfd with the features mappings need; an error names
  // what the kernel refused (EPERM without privilege, EINVAL on old kernels).
  static Result<Userfaultfd> open();
  Userfaultfd() = default;
  Userfaultfd(Userfaultfd&& o) noexcept
      : fd_(o.fd_), user_mode_only_(o.user_mode_only_), can_poison_(o.can_poison_) {
    o.fd_ = -1;
  }
  Userfaultfd& operator=(Userfaultfd&& o) noexcept;
  ~Userfaultfd();

  int fd() const { return fd_; }
  // Faults taken inside system calls are not reported (they get EFAULT).
  bool user_mode_only() const { return user_mode_only_; }

  // Registers [addr, addr + len) for missing and minor faults, and for
  // write-protect faults when `track_stores` (shared writable mappings).
  Status register_range(void* addr, size_t len, bool track_stores);
  Status unregister_range(void* addr, size_t len);
  // Maps pages already in the memfd (UFFDIO_CONTINUE), read-only unless
  // `writable`, without waking; pages already mapped are skipped.
  Status map_present(uintptr_t addr, size_t len, bool writable);
  // Write-protects (or un-protects) mapped pages of the range.
  Status write_protect(uintptr_t addr, size_t len, bool protect, bool wake);
  Status wake(uintptr_t addr, size_t len);
  // Whether the kernel can poison pages (UFFDIO_POISON, Linux 6.6).
  bool can_poison() const { return can_poison_; }
  // Refuses a page the way the kernel refuses one: later accesses get
  // SIGBUS (BUS_ADRERR) in user code and EFAULT inside system calls. The
  // page's mapping entry is dropped first; clear() undoes the poison.
  Status poison(uintptr_t addr, size_t len);
  // Drops the mapping's entries for the range (the memfd keeps the data):
  // the next access faults again.
  Status clear(uintptr_t addr, size_t len);
  // Reads one event; false when there is none (the fd is non-blocking).
  Result<bool> read_event(FaultEvent& event);

 private:
  static Result<Userfaultfd> open_with(bool poison);
  int fd_ = -1;
  bool user_mode_only_ = false;
  bool can_poison_ = false;
};

}  // namespace uext::vm
