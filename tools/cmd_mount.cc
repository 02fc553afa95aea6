// uext mount IMG MOUNTPOINT [-o OPTIONS]: the FUSE daemon (src/fuse);
// uext umount MOUNTPOINT: unmount and wait for the daemon to close the image.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "common.h"
#include "fuse/fuse_daemon.h"
#include "fuse/mount_options.h"

namespace uext::cli {
namespace {

struct MountArgs {
  std::string image, mountpoint;
  std::vector<std::string> option_lists;
  bool foreground = false;
  bool debug = false;
  bool read_only = false;
};

int run_mount_command(const MountArgs& args) {
  fuse::MountOptions opts;
  opts.image = args.image;
  opts.mountpoint = args.mountpoint;
  for (const auto& list : args.option_lists) {
    Status s = fuse::parse_mount_option_list(list, opts);
    if (!s.ok()) {
      std::fprintf(stderr, "uext mount: %s\nTry 'uext mount --help' for more information.\n",
                   s.error().message().c_str());
      return kExitUsage;
    }
  }
  if (args.foreground) opts.foreground = true;
  if (args.debug) opts.debug = true;
  if (args.read_only) opts.read_only = true;
  return fuse::run_mount(std::move(opts));
}

}  // namespace

Command add_mount_command(CLI::App& parent) {
  auto args = std::make_shared<MountArgs>();
  auto* sub = parent.add_subcommand(
      "mount",
      "Mount an image with FUSE (read-write unless -o ro), until fusermount3 -u, umount, SIGTERM or SIGINT; "
      "it is then left clean with nothing to replay");
  sub->add_option("IMG", args->image, "Image file or block device holding the filesystem")->required();
  sub->add_option("MOUNTPOINT", args->mountpoint, "An existing directory to mount on")->required();
  sub->add_option("-o", args->option_lists, "Mount options, comma-separated (listed below)")
      ->type_name("OPTIONS")
      ->allow_extra_args(false);
  sub->add_flag("-f,--foreground", args->foreground, "Serve in the foreground instead of as a daemon");
  sub->add_flag("-d,--debug", args->debug, "Trace every request on stderr (implies -f)");
  sub->add_flag("-r,--read-only", args->read_only, "Same as -o ro");
  sub->footer(fuse::mount_options_help() +
              "\nPermissions are checked by the kernel (default_permissions), as for ext4; new files belong to\n"
              "the calling process's uid and gid (or the setgid directory's group).\n"
              "Unmount with 'fusermount3 -u MOUNTPOINT' (or umount as root); the daemon then flushes and\n"
              "exits, and its lock on IMG goes: 'uext umount MOUNTPOINT' unmounts and waits for that. A second\n"
              "mount of the same image file is refused while one is running (with offset=, of any partition\n"
              "of it).\n");
  return {sub, [args] { return run_mount_command(*args); }};
}

Command add_umount_command(CLI::App& parent) {
  auto mountpoint = std::make_shared<std::string>();
  auto* sub = parent.add_subcommand(
      "umount",
      "Unmount a uext mount and wait until its daemon has written everything back and closed the image "
      "(fusermount3 -u returns before that)");
  sub->add_option("MOUNTPOINT", *mountpoint, "Where the image is mounted")->required();
  sub->footer("When it returns 0 the image is clean and may be checked, copied or mounted again at once.\n"
              "Fails (status 1) for a path that is not a uext mount, or when the mount is busy.\n"
              "Run as root it unmounts with umount(2), else with fusermount3 -u.\n");
  return {sub, [mountpoint] { return fuse::run_umount(*mountpoint); }};
}

}  // namespace uext::cli
