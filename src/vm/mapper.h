// Mappings of cached files into the address space, and the catching of
// their faults: userfaultfd (handler threads that resolve missing, minor
// and write-protect faults) or, where that is not allowed, mprotect and a
// SIGSEGV handler that resolves the fault in the faulting thread. Either
// way the filesystem's Pager decides (fault-in, page_mkwrite) and the
// mapping only makes its decision visible: map the page read-only, map it
// writable, or raise SIGBUS in the faulting thread.
//
// The cache calls back (cache::PageMapper) to write-protect pages before
// writeback (page_mkclean) and to hide pages it drops.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cache/page_cache.h"
#include "uext/mapping.h"
#include "vm/pager.h"
#include "vm/userfaultfd.h"

namespace uext::vm {

struct MapRequest {
  uint32_t ino = 0;
  std::shared_ptr<cache::CachedFile> file;
  uint64_t offset = 0;  // a multiple of the page size
  size_t length = 0;
  int prot = 0;
  int flags = 0;
  std::function<Status(bool wait)> sync;  // msync: write the file back (and wait)
  std::function<void()> unmapped;         // the mapping is gone (release the inode)
};

class Mapper;

// One mapping. Shared by the user's handle, the registry and handlers at
// work; its pages' state is guarded by the file's page mutex.
class MapState final : public cache::PageMapper {
 public:
  MapState(std::shared_ptr<Mapper> mapper, MapRequest request, std::byte* base, size_t length);
  Status write_protect(uint64_t first, uint64_t end) override;
  void unmap(uint64_t first, uint64_t end) override;
  void grew() override;

  // The user's handle is gone (munmap), or the filesystem is closing (detach).
  void destroy();
  void detach();

  std::byte* base() const { return base_; }
  size_t length() const { return length_; }
  uint64_t first_page() const { return request_.offset / cache::kPageSize; }
  uint64_t end_page() const { return first_page() + length_ / cache::kPageSize; }
  bool shared_writable() const { return (request_.flags & kMapShared) && (prot_ & kProtWrite); }
  const MapRequest& request() const { return request_; }
  int prot() const { return prot_.load(); }
  Status sync(int flags);
  Status protect(int prot);
  // Address of page `index` of the file in this mapping.
  uintptr_t address_of(uint64_t index) const {
    return reinterpret_cast<uintptr_t>(base_) + (index - first_page()) * cache::kPageSize;
  }
  Mapper& mapper() { return *mapper_; }
  bool live() const { return live_.load(); }

 private:
  // The part of [first, end) this mapping covers, as addresses.
  bool clip(uint64_t& first, uint64_t& end) const;
  std::shared_ptr<Mapper> mapper_;
  MapRequest request_;
  std::byte* base_;
  size_t length_;
  std::atomic<int> prot_;
  std::atomic<bool> live_{true};
};

class Mapper : public std::enable_shared_from_this<Mapper> {
 public:
  // kAuto tries userfaultfd and falls back to signals; kUserfaultfd fails
  // with the kernel's reason when it is not allowed.
  static Result<std::shared_ptr<Mapper>> create(Pager& pager, FaultHandling wanted);
  explicit Mapper(Pager& pager) : pager_(pager) {}
  ~Mapper();

  FaultHandling mode() const { return mode_; }
  Result<std::unique_ptr<Mapping>> map(MapRequest request);
  // At close: no more faults are served; every mapping left turns
  // read-only (stores fault loudly instead of being lost).
  void detach_all();

  // Serves one fault; false when it was refused (with userfaultfd the
  // thread has been sent SIGBUS; with signals the caller sends it).
  bool serve(MapState& m, uintptr_t address, bool store, bool wp_fault, pid_t tid);
  Userfaultfd& uffd() { return uffd_; }
  void forget(MapState* m);

 private:
  void handler_loop();
  // A refused fault: the page is poisoned for a moment (the kernel then
  // gives the thread SIGBUS, or EFAULT to a system call), or, on kernels
  // without poison, SIGBUS is queued to the thread.
  void refuse(uintptr_t page, pid_t tid);
  void clear_expired_poison();
 public:
  // Clears at once the poison of refused pages in [start, end).
  void clear_poison(uintptr_t start, uintptr_t end);

 private:
  Pager& pager_;
  FaultHandling mode_ = FaultHandling::kSignal;
  Userfaultfd uffd_;
  int stop_fd_ = -1;
  std::vector<std::thread> handlers_;
  std::mutex mu_;  // guards maps_ and detached_ (a leaf lock)
  std::vector<MapState*> maps_;
  bool detached_ = false;
  std::mutex refusals_mu_;  // guards poisoned_ (a leaf lock)
  std::vector<std::pair<uintptr_t, int64_t>> poisoned_;  // page, clear after (ms)
};

// Sends SIGBUS (si_addr = `address`) to thread `tid` of this process.
void send_sigbus(pid_t tid, uintptr_t address);

}  // namespace uext::vm
