#include "support/descriptor_limit.h"

namespace uext::testing {

ScopedDescriptorLimit::ScopedDescriptorLimit(rlim_t soft) {
  if (::getrlimit(RLIMIT_NOFILE, &saved_) != 0) return;
  rlimit low = saved_;
  low.rlim_cur = soft;
  lowered_ = ::setrlimit(RLIMIT_NOFILE, &low) == 0;
}

void ScopedDescriptorLimit::restore() {
  if (lowered_) ::setrlimit(RLIMIT_NOFILE, &saved_);
  lowered_ = false;
}

}  // namespace uext::testing
