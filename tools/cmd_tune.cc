// uext tune: change superblock settings of an image, as tune2fs does: the
// label, the errors behaviour, the blocks kept for root and who may use
// them, and when a check is due.
#include <cmath>
#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "common.h"

namespace uext::cli {
namespace {

struct TuneArgs {
  std::string image;
  std::optional<std::string> label, errors, interval;
  std::optional<double> reserved_percent;
  std::optional<uint64_t> reserved_count;
  std::optional<uint32_t> reserved_uid, reserved_gid;
  std::optional<int> max_mount_count;
};

int usage(const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "uext tune: %s\nTry 'uext tune --help' for more information.\n", message.c_str());
  return kExitUsage;
}

// tune2fs -i: seconds, or a number of days (d, the default), weeks (w) or
// months (m, 30 days).
std::optional<uint32_t> parse_interval(const std::string& text) {
  size_t i = 0;
  uint64_t n = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9' && n < (1ull << 40)) n = n * 10 + (text[i++] - '0');
  if (i == 0) return std::nullopt;
  const std::string unit = text.substr(i);
  uint64_t mult = 86400;
  if (unit == "s") mult = 1;
  else if (unit == "" || unit == "d" || unit == "D") mult = 86400;
  else if (unit == "w" || unit == "W") mult = 7 * 86400;
  else if (unit == "m" || unit == "M") mult = 30 * 86400;
  else return std::nullopt;
  if (n * mult > UINT32_MAX) return std::nullopt;
  return static_cast<uint32_t>(n * mult);
}

int run_tune(const TuneArgs& a) {
  Tune t;
  t.label = a.label;
  if (a.errors) {
    if (*a.errors == "continue") t.errors_behavior = 1;
    else if (*a.errors == "remount-ro") t.errors_behavior = 2;
    else if (*a.errors == "panic") t.errors_behavior = 3;
    else return usage("invalid errors behaviour '" + *a.errors + "' (continue, remount-ro or panic)");
  }
  if (a.interval) {
    t.check_interval = parse_interval(*a.interval);
    if (!t.check_interval) return usage("invalid interval '" + *a.interval + "' (a number with s, d, w or m)");
  }
  if (a.max_mount_count) {
    if (*a.max_mount_count < -1 || *a.max_mount_count > 16000) {
      return usage(fmt::format("invalid maximal mount count {} (-1 to 16000)", *a.max_mount_count));
    }
    t.max_mount_count = static_cast<int16_t>(*a.max_mount_count == 0 ? -1 : *a.max_mount_count);
  }
  t.reserved_uid = a.reserved_uid;
  t.reserved_gid = a.reserved_gid;
  t.reserved_blocks = a.reserved_count;
  if (a.reserved_percent && a.reserved_count) return usage("give -m or -r, not both");
  if (!t.label && !t.errors_behavior && !t.check_interval && !t.max_mount_count && !t.reserved_uid &&
      !t.reserved_gid && !t.reserved_blocks && !a.reserved_percent) {
    return usage("nothing to change (see --help)");
  }

  auto fs = open_image_rw(a.image);
  if (!fs) return kExitFailure;
  if (a.reserved_percent) {
    // tune2fs's arithmetic: the percentage of the block count, rounded down.
    t.reserved_blocks = static_cast<uint64_t>(*a.reserved_percent * static_cast<double>(fs->info().blocks_count) / 100.0);
  }
  int rc = kExitOk;
  if (Status s = fs->tune(t); !s) {
    report({a.image, s.error().message()});  // the library's message names the setting
    rc = kExitFailure;
  }
  return close_image(std::move(fs), a.image, rc);
}

}  // namespace

Command add_tune_command(CLI::App& parent) {
  auto a = std::make_shared<TuneArgs>();
  auto* sub = parent.add_subcommand("tune", "Change superblock settings: label, errors behaviour, reserved blocks, "
                                            "check schedule (like tune2fs)");
  add_image_rw_option(sub, a->image);
  sub->add_option("-L,--label", a->label, "Volume label (at most 16 bytes)");
  sub->add_option("-e,--errors", a->errors, "What the kernel does on an error: continue, remount-ro, panic");
  sub->add_option("-m,--reserved-percent", a->reserved_percent, "Blocks kept for root, in percent of all")
      ->check(CLI::Range(0.0, 50.0));
  sub->add_option("-r,--reserved-blocks", a->reserved_count, "Blocks kept for root, as a count");
  sub->add_option("-u,--reserved-uid", a->reserved_uid, "The user who may use the blocks kept for root");
  sub->add_option("-g,--reserved-gid", a->reserved_gid, "The group whose members may use them");
  sub->add_option("-c,--max-mount-count", a->max_mount_count, "Mounts between checks (0 or -1: never by count)");
  sub->add_option("-i,--interval", a->interval, "Time between checks: a number with s, d (default), w or m; 0: never");
  sub->footer("Exit status: 0 on success, 1 when the change failed, 2 for usage errors.");
  return {sub, [a] { return run_tune(*a); }};
}

}  // namespace uext::cli
