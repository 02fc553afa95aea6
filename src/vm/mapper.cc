#include "vm/mapper.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "base/ordered_mutex.h"
#include "base/quiet_thread.h"
#include "vm/registry.h"

namespace uext::vm {

namespace {

constexpr uint64_t kPage = cache::kPageSize;
// Threads reading userfaultfd events: a fault that waits (for a lock, or
// for writeback to make room) does not hold up faults of other files.
constexpr int kHandlerThreads = 2;

Error errno_error(const std::string& what) {
  const int e = errno;
  return Error(e, fmt::format("{}: {}", what, std::strerror(e)));
}

int native_prot(int prot) { return ((prot & kProtRead) ? PROT_READ : 0) | ((prot & kProtWrite) ? PROT_WRITE : 0); }

// ---- the signal fallback ----

struct sigaction previous_segv;
std::once_flag segv_installed;

bool fault_was_store(void* context) {
#if defined(__x86_64__)
  // Bit 1 of the page-fault error code: the access was a write.
  return (static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#else
  (void)context;
  return true;  // unknown: treat as a store (page_mkwrite is the safe side)
#endif
}

void chain_segv(int sig, siginfo_t* info, void* context) {
  if (previous_segv.sa_flags & SA_SIGINFO) {
    if (previous_segv.sa_sigaction) previous_segv.sa_sigaction(sig, info, context);
    return;
  }
  if (previous_segv.sa_handler == SIG_IGN) return;
  if (previous_segv.sa_handler == SIG_DFL) {
    // Not ours: die as the program would have (the access faults again).
    signal(SIGSEGV, SIG_DFL);
    return;
  }
  previous_segv.sa_handler(sig);
}

void on_segv(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  const auto address = reinterpret_cast<uintptr_t>(info->si_addr);
  auto m = info->si_code == SEGV_ACCERR ? registry_find(address) : nullptr;
  const bool store = fault_was_store(context);
  // An access the mapping's protection forbids is the program's own fault.
  const bool allowed = m && (m->prot() & (store ? kProtWrite : kProtRead | kProtWrite));
  if (!m || !allowed || m->mapper().mode() != FaultHandling::kSignal || !m->live()) {
    chain_segv(sig, info, context);
    errno = saved_errno;
    return;
  }
  // Resolved here, in the faulting thread: it holds no uext lock (a uext
  // call that touches user memory copies it before locking).
  const pid_t self = static_cast<pid_t>(gettid());
  const bool served = m->mapper().serve(*m, address, store, false, self);
  m.reset();
  // Raised here, with nothing of uext's held or half-built, since the
  // program's handler may siglongjmp away.
  if (!served) send_sigbus(self, address & ~(kPage - 1));
  errno = saved_errno;
}

void install_segv_handler() {
  std::call_once(segv_installed, [] {
    struct sigaction sa{};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous_segv);
  });
}

// A user's handle: munmap when destroyed.
class MappingHandle final : public Mapping {
 public:
  MappingHandle(std::shared_ptr<MapState> state, FaultHandling mode) : state_(std::move(state)), mode_(mode) {}
  ~MappingHandle() override { state_->destroy(); }
  std::byte* data() const override { return state_->base(); }
  size_t size() const override { return state_->length(); }
  uint64_t file_offset() const override { return state_->request().offset; }
  FaultHandling fault_handling() const override { return mode_; }
  Status sync(int flags, size_t offset, size_t length) override {
    if (offset > state_->length() || length > state_->length() - offset) {
      return Error(ENOMEM, fmt::format("msync: range {}+{} is outside the mapping of {} bytes", offset, length,
                                       state_->length()));
    }
    return state_->sync(flags);
  }
  Status protect(int prot) override { return state_->protect(prot); }

 private:
  std::shared_ptr<MapState> state_;
  FaultHandling mode_;
};

}  // namespace

void send_sigbus(pid_t tid, uintptr_t address) {
  // A signal queued from another thread must carry a negative si_code
  // (SI_QUEUE); si_addr still tells the handler where the store was.
  siginfo_t info;
  std::memset(&info, 0, sizeof info);
  info.si_signo = SIGBUS;
  info.si_code = SI_QUEUE;
  info.si_addr = reinterpret_cast<void*>(address);
  syscall(SYS_rt_tgsigqueueinfo, getpid(), tid, SIGBUS, &info);
}

// ---- MapState ----

MapState::MapState(std::shared_ptr<Mapper> mapper, MapRequest request, std::byte* base, size_t length)
    : mapper_(std::move(mapper)), request_(std::move(request)), base_(base), length_(length), prot_(request_.prot) {}

bool MapState::clip(uint64_t& first, uint64_t& end) const {
  first = std::max(first, first_page());
  end = std::min(end, end_page());
  return first < end;
}

Status MapState::write_protect(uint64_t first, uint64_t end) {
  if (!live_ || !shared_writable() || !clip(first, end)) return {};
  const uintptr_t addr = address_of(first);
  const size_t len = (end - first) * kPage;
  if (mapper_->mode() == FaultHandling::kUserfaultfd) return mapper_->uffd().write_protect(addr, len, true, false);
  if (mprotect(reinterpret_cast<void*>(addr), len, native_prot(prot_ & kProtRead)) != 0) {
    return errno_error(fmt::format("write-protecting pages {}..{} of inode {}", first, end, request_.ino));
  }
  return {};
}

void MapState::unmap(uint64_t first, uint64_t end) {
  // With userfaultfd, punching the memfd takes the pages out of every
  // mapping and the next access faults; with signals the mapping would
  // see fresh zero pages instead, so take access away first.
  if (!live_ || mapper_->mode() != FaultHandling::kSignal || !clip(first, end)) return;
  if (mprotect(reinterpret_cast<void*>(address_of(first)), (end - first) * kPage, PROT_NONE) != 0) {
    std::fprintf(stderr, "uext: hiding dropped pages of inode %u from a mapping failed: %s\n", request_.ino,
                 std::strerror(errno));
  }
}

void MapState::grew() {
  if (live_ && mapper_->mode() == FaultHandling::kUserfaultfd) {
    mapper_->clear_poison(reinterpret_cast<uintptr_t>(base_), reinterpret_cast<uintptr_t>(base_) + length_);
  }
}

Status MapState::sync(int flags) {
  if ((flags & kSyncNow) && (flags & kSyncAsync)) return Error(EINVAL, "msync: MS_SYNC and MS_ASYNC together");
  if (flags & ~(kSyncNow | kSyncAsync | kSyncInvalidate)) return Error(EINVAL, fmt::format("msync: flags {:#x}", flags));
  if (!live_) return Error(EIO, "msync: the filesystem was closed under the mapping");
  // Shared mappings are the cache itself, so MS_INVALIDATE has nothing to
  // drop; MS_ASYNC leaves the data to background writeback, as Linux does.
  if (!(flags & kSyncNow) || !(request_.flags & kMapShared)) return {};
  return request_.sync(true);
}

Status MapState::protect(int prot) {
  if (prot & ~(kProtRead | kProtWrite)) return Error(EINVAL, fmt::format("mprotect: prot {:#x}", prot));
  if ((prot & kProtWrite) && (request_.flags & kMapShared) && !(request_.prot & kProtWrite)) {
    return Error(EACCES, "mprotect: the shared mapping was made without write access");
  }
  if (!live_) return Error(EIO, "mprotect: the filesystem was closed under the mapping");
  if (mapper_->mode() == FaultHandling::kSignal) {
    // Every page faults again and is mapped within the new bounds.
    std::lock_guard lock(request_.file->mu);
    prot_ = prot;
    if (mprotect(base_, length_, PROT_NONE) != 0) return errno_error("mprotect");
    return {};
  }
  if (mprotect(base_, length_, native_prot(prot)) != 0) return errno_error("mprotect");
  prot_ = prot;
  return {};
}

void MapState::detach() {
  if (!live_) return;
  if (mapper_->mode() == FaultHandling::kUserfaultfd) (void)mapper_->uffd().unregister_range(base_, length_);
  {
    std::lock_guard lock(request_.file->mu);
    request_.file->remove_mapper(this);
    live_ = false;
  }
  // Reads still see the last data; stores fault loudly instead of being lost.
  mprotect(base_, length_, PROT_READ);
  request_.sync = nullptr;
  request_.unmapped = nullptr;
  request_.file.reset();
}

void MapState::destroy() {
  registry_remove(reinterpret_cast<uintptr_t>(base_));
  bool was_live = false;
  if (live_) {
    std::lock_guard lock(request_.file->mu);
    request_.file->remove_mapper(this);
    was_live = live_.exchange(false);
  }
  munmap(base_, length_);
  mapper_->forget(this);
  if (was_live && request_.unmapped) request_.unmapped();
  request_.file.reset();
}

// ---- Mapper ----

Result<std::shared_ptr<Mapper>> Mapper::create(Pager& pager, FaultHandling wanted) {
  auto mapper = std::make_shared<Mapper>(pager);
  if (wanted != FaultHandling::kSignal) {
    auto uffd = Userfaultfd::open();
    if (uffd.ok()) {
      mapper->uffd_ = std::move(*uffd);
      mapper->mode_ = FaultHandling::kUserfaultfd;
      mapper->stop_fd_ = eventfd(0, EFD_CLOEXEC);
      if (mapper->stop_fd_ < 0) return errno_error("eventfd");
      for (int i = 0; i < kHandlerThreads; ++i) mapper->handlers_.push_back(base::start_quiet_thread([m = mapper.get()] { m->handler_loop(); }));
      return mapper;
    }
    if (wanted == FaultHandling::kUserfaultfd) return std::move(uffd).error().with_context("mmap");
  }
  mapper->mode_ = FaultHandling::kSignal;
  install_segv_handler();
  return mapper;
}

Mapper::~Mapper() {
  detach_all();
  if (stop_fd_ >= 0) ::close(stop_fd_);
}

Result<std::unique_ptr<Mapping>> Mapper::map(MapRequest request) {
  const uint64_t first = request.offset / kPage;
  const size_t length = (request.length + kPage - 1) / kPage * kPage;
  const uint64_t end = first + length / kPage;
  cache::CachedFile& file = *request.file;
  std::unique_lock file_lock(file.mu);
  // The memfd covers the whole mapping, so that pages past the end of the
  // file fault (and get SIGBUS from the pager) rather than the kernel's.
  UEXT_TRY(file.ensure_mappable(end));
  const int prot = mode_ == FaultHandling::kSignal ? PROT_NONE : native_prot(request.prot);
  const int flags = (request.flags & kMapShared) ? MAP_SHARED : MAP_PRIVATE;
  void* base = ::mmap(nullptr, length, prot, flags, file.memfd(), static_cast<off_t>(request.offset));
  if (base == MAP_FAILED) return errno_error(fmt::format("mmap of inode {}", request.ino));
  // A child would store into the pages unseen: it does not inherit them.
  madvise(base, length, MADV_DONTFORK);
  auto state = std::make_shared<MapState>(shared_from_this(), std::move(request), static_cast<std::byte*>(base), length);
  if (mode_ == FaultHandling::kUserfaultfd) {
    Status registered = uffd_.register_range(base, length, state->shared_writable());
    if (!registered.ok()) {
      munmap(base, length);
      return std::move(registered).error().with_context(fmt::format("mmap of inode {}", state->request().ino));
    }
  }
  file.add_mapper(state.get());
  file_lock.unlock();
  {
    std::lock_guard lock(mu_);
    maps_.push_back(state.get());
  }
  registry_add(reinterpret_cast<uintptr_t>(base), length, state);
  return std::unique_ptr<Mapping>(std::make_unique<MappingHandle>(std::move(state), mode_));
}

void Mapper::forget(MapState* m) {
  std::lock_guard lock(mu_);
  std::erase(maps_, m);
}

void Mapper::detach_all() {
  std::vector<std::shared_ptr<MapState>> live;
  {
    std::lock_guard lock(mu_);
    detached_ = true;
    for (MapState* m : maps_) {
      if (auto s = registry_find(reinterpret_cast<uintptr_t>(m->base()))) live.push_back(std::move(s));
    }
  }
  for (auto& m : live) m->detach();
  if (stop_fd_ >= 0) {
    uint64_t one = 1;
    (void)!::write(stop_fd_, &one, sizeof one);
  }
  for (auto& t : handlers_) {
    if (t.joinable()) t.join();
  }
  handlers_.clear();
}

bool Mapper::serve(MapState& m, uintptr_t address, bool store, bool wp_fault, pid_t tid) {
  const uintptr_t page_addr = address & ~(kPage - 1);
  const uint64_t index = m.first_page() + (page_addr - reinterpret_cast<uintptr_t>(m.base())) / kPage;
  int level = 0;
  if (base::lock_order::held_by_thread(tid, &level) > 0) {
    std::fprintf(stderr,
                 "uext: thread %d faulted on a mapping of inode %u (page %llu) while holding a uext lock "
                 "(level %d): it would wait for itself (docs/DESIGN.md, 'Lock order')\n",
                 static_cast<int>(tid), m.request().ino, static_cast<unsigned long long>(index), level);
    std::abort();
  }
  const bool uffd = mode_ == FaultHandling::kUserfaultfd;
  const bool page_store = store && m.shared_writable();
  MapPages map_pages = [&](uint64_t first, uint64_t end, bool writable) -> Status {
    first = std::max(first, m.first_page());
    end = std::min(end, m.end_page());
    if (first >= end) return {};
    const uintptr_t addr = m.address_of(first);
    const size_t len = (end - first) * kPage;
    if (uffd) {
      if (writable && wp_fault) return uffd_.write_protect(addr, len, false, false);
      // Read-only until the first store only where stores are tracked.
      return uffd_.map_present(addr, len, writable || !m.shared_writable());
    }
    int prot = PROT_READ;
    if (writable || ((m.request().flags & kMapPrivate) && store)) prot |= PROT_WRITE;
    if (mprotect(reinterpret_cast<void*>(addr), len, prot) != 0) return errno_error("mprotect");
    return {};
  };
  Status done = m.live() ? pager_.fault(m.request().ino, index, m.first_page(), m.end_page(), page_store, map_pages)
                         : Status(Error(EIO, "the filesystem was closed"));
  if (uffd) {
    if (done.ok()) {
      (void)uffd_.wake(page_addr, kPage);
    } else {
      refuse(page_addr, tid);
    }
  }
  return done.ok();
}

namespace {

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// How long a refused page stays poisoned: long enough for the woken thread
// to run into it; if it comes later, the next fault is refused again.
constexpr int64_t kPoisonMs = 20;

}  // namespace

void Mapper::refuse(uintptr_t page, pid_t tid) {
  if (uffd_.can_poison()) {
    {
      std::lock_guard lock(refusals_mu_);
      poisoned_.emplace_back(page, now_ms() + kPoisonMs);
    }
    // Poison wakes the thread; the kernel raises SIGBUS (BUS_ADRERR, the
    // exact address) for a store of the program's and fails a system
    // call with EFAULT, as for a refused page_mkwrite.
    if (uffd_.poison(page, kPage).ok()) return;
  }
  // Without poison: a queued SIGBUS, then the wake-up, so the thread takes
  // the signal instead of retrying the store. (A system call touching the
  // page would retry; kernels since 6.6 have poison.)
  send_sigbus(tid, page);
  (void)uffd_.wake(page, kPage);
}

void Mapper::clear_poison(uintptr_t start, uintptr_t end) {
  std::vector<uintptr_t> pages;
  {
    std::lock_guard lock(refusals_mu_);
    for (auto it = poisoned_.begin(); it != poisoned_.end();) {
      if (it->first >= start && it->first < end) {
        pages.push_back(it->first);
        it = poisoned_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (uintptr_t page : pages) (void)uffd_.clear(page, kPage);
}

void Mapper::clear_expired_poison() {
  std::vector<uintptr_t> expired;
  {
    std::lock_guard lock(refusals_mu_);
    const int64_t now = now_ms();
    for (auto it = poisoned_.begin(); it != poisoned_.end();) {
      if (it->second <= now) {
        expired.push_back(it->first);
        it = poisoned_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (uintptr_t page : expired) {
    // Only while the page still belongs to a live mapping of this mapper.
    auto m = registry_find(page);
    if (m && &m->mapper() == this && m->live()) (void)uffd_.clear(page, kPage);
  }
}

void Mapper::handler_loop() {
  pollfd fds[2] = {{uffd_.fd(), POLLIN, 0}, {stop_fd_, POLLIN, 0}};
  for (;;) {
    bool poison_pending = false;
    {
      std::lock_guard lock(refusals_mu_);
      poison_pending = !poisoned_.empty();
    }
    if (poison_pending) clear_expired_poison();
    if (poll(fds, 2, poison_pending ? static_cast<int>(kPoisonMs) : -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    FaultEvent event;
    auto got = uffd_.read_event(event);
    if (!got.ok()) return;
    if (!*got) continue;
    auto m = registry_find(event.address);
    if (!m || &m->mapper() != this) {
      (void)uffd_.wake(event.address & ~(kPage - 1), kPage);
      continue;
    }
    serve(*m, event.address, event.write, event.wp, event.tid);
  }
}

}  // namespace uext::vm
