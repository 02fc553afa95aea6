// CallerScope: the process behind this thread's calls (uext/caller.h).
#include "uext/caller.h"

namespace uext {

namespace {
thread_local const Caller* current_caller = nullptr;
}  // namespace

CallerScope::CallerScope(const Caller* caller) : previous_(current_caller) { current_caller = caller; }

CallerScope::~CallerScope() { current_caller = previous_; }

const Caller* CallerScope::current() { return current_caller; }

}  // namespace uext
