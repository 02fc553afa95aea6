// /proc/self/mountinfo, parsed once for every reader in the daemon and the
// CLI (the image guard, `uext umount`, the readahead knob, the cgroup CPU
// quota).
#pragma once

#include <string>
#include <vector>

namespace uext::fuse {

// One line of mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS
// [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS". Paths have their octal
// escapes undone.
struct MountInfo {
  std::string device;      // MAJ:MIN
  std::string root;        // the mount's root within its filesystem
  std::string mountpoint;
  std::string fstype;
  std::string source;
  std::string super_options;
};

// Every mount, in the kernel's order: of two on one mount point, the later
// is on top. Empty if the file cannot be read; malformed lines are skipped.
std::vector<MountInfo> read_mountinfo();

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_mount_field(const std::string& s);

}  // namespace uext::fuse
