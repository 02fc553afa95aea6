// uext cat: write files from the image to stdout.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <vector>

#include <CLI/CLI.hpp>

#include "common.h"

namespace uext::cli {
namespace {

struct CatOptions {
  ImageOptions image;
  std::vector<std::string> paths;
};

constexpr size_t kChunk = 1u << 20;

int run_cat(const CatOptions& o) {
  auto fs = open_image(o.image);
  if (!fs) return kExitFailure;
  std::fflush(stdout);  // everything below writes to fd 1 directly

  std::vector<std::byte> buf(kChunk);
  int rc = kExitOk;
  for (const auto& p : o.paths) {
    std::string path = absolute_image_path(p);
    auto ino = fs->resolve(path, true);
    if (!ino) {
      report_error(o.image.image, path, ino.error());
      rc = kExitFailure;
      continue;
    }
    uint64_t off = 0;
    for (;;) {
      auto n = fs->read(*ino, off, buf);
      if (!n) {
        report_error(o.image.image, path, n.error());
        rc = kExitFailure;
        break;
      }
      if (*n == 0) break;
      if (!write_all(STDOUT_FILENO, buf.data(), *n)) {
        // The reader went away or the disk is full: nothing more can be written.
        report({"write error", describe_errno(errno)});
        return kExitFailure;
      }
      off += *n;
    }
  }
  return rc;
}

}  // namespace

Command add_cat_command(CLI::App& parent) {
  auto o = std::make_shared<CatOptions>();
  auto* sub = parent.add_subcommand("cat", "Write files from the image to stdout (like cat)");
  add_image_options(sub, o->image);
  sub->add_option("PATH", o->paths, "Files in the image")->required();
  return {sub, [o] { return run_cat(*o); }};
}

}  // namespace uext::cli
