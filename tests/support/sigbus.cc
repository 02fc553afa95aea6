#include "support/sigbus.h"

#include <setjmp.h>
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace uext::testing {

namespace {

thread_local sigjmp_buf* bus_jump = nullptr;
thread_local uintptr_t bus_address = 0;

void on_sigbus(int, siginfo_t* info, void*) {
  bus_address = reinterpret_cast<uintptr_t>(info->si_addr);
  if (bus_jump) siglongjmp(*bus_jump, 1);
  std::abort();
}

}  // namespace

void install_sigbus_handler() {
  struct sigaction sa{};
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, nullptr);
}

bool try_fill(std::byte* p, std::byte value, size_t n, uintptr_t* fault) {
  sigjmp_buf jump;
  if (sigsetjmp(jump, 1) != 0) {
    bus_jump = nullptr;
    if (fault) *fault = bus_address;
    return false;
  }
  bus_jump = &jump;
  // The handler must see bus_jump set before the access faults.
  std::atomic_signal_fence(std::memory_order_seq_cst);
  std::memset(p, static_cast<int>(value), n);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  bus_jump = nullptr;
  return true;
}

bool try_read(const std::byte* p, std::byte* out) {
  sigjmp_buf jump;
  if (sigsetjmp(jump, 1) != 0) {
    bus_jump = nullptr;
    return false;
  }
  bus_jump = &jump;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  *out = *static_cast<const volatile std::byte*>(p);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  bus_jump = nullptr;
  return true;
}

}  // namespace uext::testing
