// uext stat: one inode's metadata in the layout of GNU stat's default output.
#include <pwd.h>
#include <grp.h>
#include <sys/stat.h>

#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "common.h"

namespace uext::cli {
namespace {

struct StatOptions {
  ImageOptions image;
  std::string path;
  bool dereference = false;
};

// GNU stat names owners from the host's user database, as it would for a
// mounted image; "UNKNOWN" when the host has no such id.
std::string user_name(uint32_t uid) {
  struct passwd pw, *res = nullptr;
  char buf[4096];
  if (getpwuid_r(uid, &pw, buf, sizeof buf, &res) == 0 && res) return res->pw_name;
  return "UNKNOWN";
}

std::string group_name(uint32_t gid) {
  struct group gr, *res = nullptr;
  char buf[4096];
  if (getgrgid_r(gid, &gr, buf, sizeof buf, &res) == 0 && res) return res->gr_name;
  return "UNKNOWN";
}

int run_stat(const StatOptions& o) {
  auto fs = open_image(o.image);
  if (!fs) return kExitFailure;
  std::string path = absolute_image_path(o.path);
  auto ino = fs->resolve(path, o.dereference);
  if (!ino) {
    report_error(o.image.image, path, ino.error());
    return kExitFailure;
  }
  auto st = fs->stat(*ino);
  if (!st) {
    report_error(o.image.image, path, st.error());
    return kExitFailure;
  }

  std::string name = o.path;
  if (S_ISLNK(st->mode)) {
    auto target = fs->readlink(*ino);
    if (!target) {
      report_error(o.image.image, path, target.error());
      return kExitFailure;
    }
    name += " -> " + *target;
  }
  bool device = S_ISCHR(st->mode) || S_ISBLK(st->mode);
  uint32_t io_block = fs->info().block_size;

  std::string out;
  out += fmt::format("  File: {}\n", name);
  out += fmt::format("  Size: {:<10}\tBlocks: {:<10} IO Block: {:<6} {}\n", st->size, st->blocks,
                     io_block, file_type_name(st->mode, st->size));
  if (device) {
    out += fmt::format("Inode: {:<10}  Links: {:<5} Device type: {},{}\n", st->ino, st->nlink,
                       st->rdev_major, st->rdev_minor);
  } else {
    out += fmt::format("Inode: {:<10}  Links: {}\n", st->ino, st->nlink);
  }
  out += fmt::format("Access: ({:04o}/{})  Uid: ({:>5}/{:>8})   Gid: ({:>5}/{:>8})\n",
                     st->mode & 07777, mode_string(st->mode), st->uid, user_name(st->uid), st->gid,
                     group_name(st->gid));
  out += fmt::format("Access: {}\n", format_full_utc(st->atime));
  out += fmt::format("Modify: {}\n", format_full_utc(st->mtime));
  out += fmt::format("Change: {}\n", format_full_utc(st->ctime));
  // Inodes too small for a creation time (128-byte ext2/3 inodes) have none.
  bool has_birth = st->crtime.sec != 0 || st->crtime.nsec != 0;
  out += fmt::format(" Birth: {}\n", has_birth ? format_full_utc(st->crtime) : "-");
  out += fmt::format(" Flags: 0x{:x}\n", st->flags);
  out += fmt::format("Generation: {}\n", st->generation);
  fmt::print("{}", out);
  return kExitOk;
}

}  // namespace

Command add_stat_command(CLI::App& parent) {
  auto o = std::make_shared<StatOptions>();
  auto* sub = parent.add_subcommand("stat", "Show an inode's metadata (like GNU stat)");
  add_image_options(sub, o->image);
  sub->add_option("PATH", o->path, "File in the image")->required();
  sub->add_flag("-L,--dereference", o->dereference, "Follow a final symlink");
  return {sub, [o] { return run_stat(*o); }};
}

}  // namespace uext::cli
