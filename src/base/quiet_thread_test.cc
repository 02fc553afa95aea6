#include "base/quiet_thread.h"

#include <signal.h>

#include <gtest/gtest.h>

namespace uext::base {
namespace {

TEST(QuietThread, BlocksTheProgramsSignalsButNotFaults) {
  sigset_t before;
  pthread_sigmask(SIG_SETMASK, nullptr, &before);
  sigset_t inside;
  sigemptyset(&inside);
  std::thread t = start_quiet_thread([&] { pthread_sigmask(SIG_SETMASK, nullptr, &inside); });
  t.join();
  for (int sig : {SIGINT, SIGTERM, SIGCHLD, SIGUSR1, SIGALRM, SIGRTMIN}) EXPECT_EQ(sigismember(&inside, sig), 1) << sig;
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP}) EXPECT_EQ(sigismember(&inside, sig), 0) << sig;
  // The creator's own mask is as it was.
  sigset_t after;
  pthread_sigmask(SIG_SETMASK, nullptr, &after);
  for (int sig = 1; sig < SIGRTMAX; ++sig) EXPECT_EQ(sigismember(&after, sig), sigismember(&before, sig)) << sig;
}

}  // namespace
}  // namespace uext::base
