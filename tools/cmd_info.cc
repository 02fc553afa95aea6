// uext info: a superblock summary in the layout of `dumpe2fs -h`.
#include <ctime>
#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "common.h"

namespace uext::cli {
namespace {

// dumpe2fs prints times with ctime(): local time, trailing newline included.
std::string ctime_string(int64_t sec) {
  time_t t = static_cast<time_t>(sec);
  std::tm tm{};
  if (!localtime_r(&t, &tm)) return fmt::format("{}", sec);
  char buf[64];
  if (std::strftime(buf, sizeof buf, "%a %b %e %H:%M:%S %Y", &tm) == 0) return fmt::format("{}", sec);
  return buf;
}

void field(std::string_view label, std::string_view value) {
  // dumpe2fs pads "Label:" to 26 columns.
  fmt::print("{:<26}{}\n", label, value);
}

int run_info(ImageOptions opts) {
  // The superblock as on disk, as dumpe2fs -h shows it.
  opts.no_replay = true;
  auto fs = open_image(opts);
  if (!fs) return kExitFailure;
  VolumeInfo v = fs->info();

  if (!v.read_only_reason.empty()) report({opts.image, "opened read-only: " + v.read_only_reason});
  if (v.needs_recovery) {
    warn({opts.image, "the journal needs recovery; showing the image without replaying it"});
  }

  field("Filesystem volume name:", v.label.empty() ? "<none>" : v.label);
  field("Filesystem UUID:", v.uuid.empty() ? "<none>" : v.uuid);
  std::string features;
  for (const auto& f : v.features) {
    if (!features.empty()) features += ' ';
    features += f;
  }
  field("Filesystem features:", features.empty() ? "(none)" : features);
  field("Filesystem state:", v.state);
  // dumpe2fs's words.
  switch (v.errors_behavior) {
    case 1: field("Errors behavior:", "Continue"); break;
    case 2: field("Errors behavior:", "Remount read-only"); break;
    case 3: field("Errors behavior:", "Panic"); break;
    default: field("Errors behavior:", "Unknown (continue)"); break;
  }
  field("Inode count:", fmt::format("{}", v.inodes_count));
  field("Block count:", fmt::format("{}", v.blocks_count));
  field("Reserved block count:", fmt::format("{}", v.reserved_blocks));
  field("Free blocks:", fmt::format("{}", v.free_blocks));
  field("Free inodes:", fmt::format("{}", v.free_inodes));
  field("Block size:", fmt::format("{}", v.block_size));
  field("Blocks per group:", fmt::format("{}", v.blocks_per_group));
  field("Inodes per group:", fmt::format("{}", v.inodes_per_group));
  // dumpe2fs really does print a tab here; keep its exact bytes.
  fmt::print("Inode size:\t          {}\n", v.inode_size);
  if (v.journal_inum != 0) field("Journal inode:", fmt::format("{}", v.journal_inum));
  if (!v.default_hash.empty()) field("Default directory hash:", v.default_hash);
  if (v.user_quota_inum != 0) field("User quota inode:", fmt::format("{}", v.user_quota_inum));
  if (v.group_quota_inum != 0) field("Group quota inode:", fmt::format("{}", v.group_quota_inum));
  if (v.project_quota_inum != 0) field("Project quota inode:", fmt::format("{}", v.project_quota_inum));
  if (v.mkfs_time != 0) field("Filesystem created:", ctime_string(v.mkfs_time));
  field("Last mount time:", v.mount_time != 0 ? ctime_string(v.mount_time) : "n/a");
  field("Last write time:", ctime_string(v.write_time));
  field("Mount count:", fmt::format("{}", v.mount_count));
  // The error record, as dumpe2fs prints it.
  if (v.error_count != 0) field("FS Error count:", fmt::format("{}", v.error_count));
  auto error_record = [&](const char* which, const VolumeInfo::ErrorRecord& e) {
    if (e.time == 0) return;
    field(fmt::format("{} error time:", which), ctime_string(e.time));
    field(fmt::format("{} error function:", which), e.function);
    field(fmt::format("{} error line #:", which), fmt::format("{}", e.line));
    if (e.ino != 0) field(fmt::format("{} error inode #:", which), fmt::format("{}", e.ino));
    if (e.block != 0) field(fmt::format("{} error block #:", which), fmt::format("{}", e.block));
    if (!e.err.empty()) field(fmt::format("{} error err:", which), e.err);
  };
  error_record("First", v.first_error);
  error_record("Last", v.last_error);
  if (v.journal.present) {
    if (!v.journal.problem.empty()) {
      field("Journal:", "unreadable: " + v.journal.problem);
    } else {
      field("Total journal blocks:", fmt::format("{}", v.journal.blocks));
      field("Journal sequence:", fmt::format("{:#010x}", v.journal.sequence));
      field("Journal start:", fmt::format("{}", v.journal.start));
      if (v.journal.recorded_errno != 0) field("Journal errno:", fmt::format("{}", v.journal.recorded_errno));
    }
  }
  if (v.needs_recovery) {
    if (v.journal.pending_transactions > 0) {
      fmt::print("Journal needs recovery: yes ({} transactions, {} blocks to replay)\n",
                 v.journal.pending_transactions, v.journal.pending_blocks);
    } else {
      fmt::print("Journal needs recovery: yes\n");
    }
  }
  return kExitOk;
}

}  // namespace

Command add_info_command(CLI::App& parent) {
  auto opts = std::make_shared<ImageOptions>();
  auto* sub = parent.add_subcommand("info", "Show a summary of the superblock (like dumpe2fs -h)");
  add_image_options(sub, *opts, /*replay_flag=*/false);
  return {sub, [opts] { return run_info(*opts); }};
}

}  // namespace uext::cli
