// Threads of uext's own (the journal's commit timer, background writeback,
// the mapping fault handlers) with the program's asynchronous signals
// blocked. A handler the program installs (SIGCHLD, SIGINT, SIGTERM) must
// run on one of the program's threads: run on ours it could find uext's
// locks held, and a program that waits for it (sigsuspend, waitpid) would
// miss it. Faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP) stay
// deliverable: they are synchronous and must reach their handler.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <thread>
#include <utility>

namespace uext::base {

template <class Function>
std::thread start_quiet_thread(Function&& body) {
  sigset_t blocked;
  sigset_t old;
  sigfillset(&blocked);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP}) sigdelset(&blocked, sig);
  // A new thread starts with its creator's mask: block, create, restore.
  pthread_sigmask(SIG_BLOCK, &blocked, &old);
  std::thread thread(std::forward<Function>(body));
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return thread;
}

}  // namespace uext::base
