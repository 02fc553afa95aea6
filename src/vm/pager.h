// What the fault handlers of src/vm ask of the filesystem: the vm layer's
// view of ext4's vm_operations (fault, page_mkwrite). The filesystem
// implements it (src/fs/page_fault.cc).
#pragma once

#include <cstdint>
#include <functional>

#include "uext/status.h"

namespace uext::vm {

// Makes pages [first, end) of the file visible in the faulting mapping,
// read-only or writable. The pager calls it with the file's page lock
// held, after the pages are in the cache, so that nothing evicts or
// changes them in between.
using MapPages = std::function<Status(uint64_t first, uint64_t end, bool writable)>;

class Pager {
 public:
  virtual ~Pager() = default;
  // A fault at page `index` of inode `ino`. A read brings the page into the
  // cache (a hole as zeros, nothing allocated), and may bring neighbours
  // within [lo, hi) as well; a store (`store`) is page_mkwrite: the page's
  // block is reserved (delayed allocation) or allocated, the page becomes
  // dirty, and only then is it mapped writable. An error (ENOSPC, EIO, a
  // page past the end of the file) becomes SIGBUS for the faulting thread.
  virtual Status fault(uint32_t ino, uint64_t index, uint64_t lo, uint64_t hi, bool store,
                       const MapPages& map) = 0;
};

}  // namespace uext::vm
