// Lowers the test process's soft limit on open descriptors, and puts the
// limit it found back when it goes out of scope (an ASSERT that returns
// early included) or at restore().
#pragma once

#include <sys/resource.h>

namespace uext::testing {

class ScopedDescriptorLimit {
 public:
  // Sets the soft limit to `soft`; ok() says whether that worked.
  explicit ScopedDescriptorLimit(rlim_t soft);
  ~ScopedDescriptorLimit() { restore(); }
  ScopedDescriptorLimit(const ScopedDescriptorLimit&) = delete;
  ScopedDescriptorLimit& operator=(const ScopedDescriptorLimit&) = delete;

  // Whether the lowered limit is in force: false if lowering failed, and
  // after restore().
  bool ok() const { return lowered_; }
  // The limits in force before.
  const rlimit& saved() const { return saved_; }
  // Puts the saved limits back now (the destructor then does nothing).
  void restore();

 private:
  rlimit saved_{};
  bool lowered_ = false;
};

}  // namespace uext::testing
