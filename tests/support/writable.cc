#include "support/writable.h"

#include <gtest/gtest.h>

#include "support/crash.h"
#include "support/process.h"

namespace uext::testing {

void make_image(const std::string& image, const std::vector<std::string>& options, const std::string& size) {
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  argv.insert(argv.end(), options.begin(), options.end());
  argv.push_back(image);
  argv.push_back(size);
  run_ok(argv);
}

std::unique_ptr<Filesystem> open_writable(const std::string& image, Options options) {
  options.read_only = false;
  auto fs = Filesystem::open(image, options);
  EXPECT_TRUE(fs.ok()) << image << ": " << fs.error().message();
  return fs.ok() ? std::move(*fs) : nullptr;
}

void expect_fsck_clean(const std::string& image) {
  FsckVerdict v = e2fsck_clean(image);
  EXPECT_TRUE(v.clean) << v.report;
}

}  // namespace uext::testing
