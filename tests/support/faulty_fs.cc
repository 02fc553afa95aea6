#include "support/faulty_fs.h"

#include <gtest/gtest.h>

#include "support/images.h"

namespace uext::testing {

FaultyFs open_faulty(const std::string& image, const Options& extra, bool background) {
  FaultyFs f;
  auto inner = open_image_file(image, {.read_only = false});
  EXPECT_TRUE(inner.ok()) << inner.error().message();
  if (!inner.ok()) return f;
  auto dev = std::make_unique<io::FaultDevice>(std::move(*inner));
  f.dev = dev.get();
  Options o = extra;
  o.read_only = false;
  o.dirty_expire_ms = background ? 0 : 600000;
  o.writeback_interval_ms = background ? 5 : 600000;
  o.commit_interval_ms = 0;  // commits only when the test asks too
  auto fs = Filesystem::open(std::move(dev), o);
  EXPECT_TRUE(fs.ok()) << fs.error().message();
  if (fs.ok()) f.fs = std::move(*fs);
  return f;
}

void close_and_check(FaultyFs& f, const std::string& image) {
  f.dev->clear_rules();
  Status st = f.fs->close();
  EXPECT_TRUE(st.ok()) << st.error().message();
  f.fs.reset();
  EXPECT_TRUE(image_is_clean(image));
}

std::string read_back(const std::string& image, const std::string& path, size_t n) {
  auto fs = Filesystem::open(image, {});
  EXPECT_TRUE(fs.ok()) << (fs.ok() ? "" : fs.error().message());
  if (!fs.ok()) return {};
  auto ino = (*fs)->resolve(path);
  EXPECT_TRUE(ino.ok()) << (ino.ok() ? "" : ino.error().message());
  if (!ino.ok()) return {};
  std::string out(n, '\0');
  auto r = (*fs)->read(*ino, 0, std::as_writable_bytes(std::span(out)));
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message());
  out.resize(r.ok() ? *r : 0);
  return out;
}

}  // namespace uext::testing
