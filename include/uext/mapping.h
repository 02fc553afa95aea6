// Memory mappings of files on a uext image: plain memory that any code may
// read and write, backed by the very pages of uext's page cache.
//
//   auto m = fs->mmap(ino, 0, 1 << 20, uext::kProtRead | uext::kProtWrite, uext::kMapShared);
//   std::memcpy((*m)->data(), "hello", 5);   // the first store reserves the page's block
//   (*m)->sync(uext::kSyncNow);              // on disk, as msync(MS_SYNC)
//
// uext learns of the first access to every page and of the first store to
// every clean page (page_mkwrite): a store that needs a block the
// filesystem cannot give (ENOSPC) raises SIGBUS in the storing thread with
// si_addr at the store, and the page stays as it was. Accesses past the end
// of the file raise SIGBUS too. The handler may siglongjmp out. A system
// call that touches such a page fails with EFAULT, as on Linux. With
// FaultHandling::kSignal a system call also gets EFAULT from a page the
// program has not touched yet (the kernel does not raise SIGSEGV for its
// own accesses): touch pages before handing them to the kernel.
//
// Rules, as for mmap(2): unmap (destroy the Mapping) before closing the
// Filesystem (close() writes mapped data back and detaches what is left);
// a fork child does not inherit the mapping (MADV_DONTFORK): it would store
// behind uext's back. Passing mapped memory to uext's own read() and
// write() is allowed, the same file and page too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "uext/status.h"

namespace uext {

// How uext catches the faults of its mappings.
enum class FaultHandling {
  kAuto,         // userfaultfd when the kernel allows it, else kSignal
  kUserfaultfd,  // userfaultfd(2): missing, minor and write-protect faults
  kSignal,       // mprotect(2) and a SIGSEGV handler: works everywhere, costs a VMA per run of pages
};

// Protections and flags (the same values as Linux's PROT_*, MAP_*, MS_*).
inline constexpr int kProtRead = 0x1;
inline constexpr int kProtWrite = 0x2;
inline constexpr int kMapShared = 0x01;
inline constexpr int kMapPrivate = 0x02;
inline constexpr int kSyncAsync = 1;       // MS_ASYNC: start writeback, do not wait
inline constexpr int kSyncInvalidate = 2;  // MS_INVALIDATE: later reads see the file anew
inline constexpr int kSyncNow = 4;         // MS_SYNC: on disk when it returns

class Mapping {
 public:
  virtual ~Mapping() = default;  // munmap: nothing stored is lost (it is written back later)

  virtual std::byte* data() const = 0;
  virtual size_t size() const = 0;
  virtual uint64_t file_offset() const = 0;
  // How faults on this mapping are caught.
  virtual FaultHandling fault_handling() const = 0;

  // msync(2) over [offset, offset + length) of the mapping (length 0: all of it).
  virtual Status sync(int flags, size_t offset = 0, size_t length = 0) = 0;
  // mprotect(2) for the whole mapping: kProtRead, kProtRead | kProtWrite or 0.
  // Write access needs a shared mapping of a file opened read-write.
  virtual Status protect(int prot) = 0;
};

}  // namespace uext
