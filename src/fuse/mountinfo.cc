#include "fuse/mountinfo.h"

#include <fstream>
#include <sstream>

namespace uext::fuse {

std::string unescape_mount_field(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      bool octal = true;
      int v = 0;
      for (size_t k = 1; k <= 3; ++k) {
        if (s[i + k] < '0' || s[i + k] > '7') octal = false;
        v = v * 8 + (s[i + k] - '0');
      }
      if (octal) {
        out += static_cast<char>(v);
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

std::vector<MountInfo> read_mountinfo() {
  std::vector<MountInfo> mounts;
  std::ifstream info("/proc/self/mountinfo");
  std::string line;
  while (std::getline(info, line)) {
    std::istringstream in(line);
    std::vector<std::string> f;
    for (std::string w; in >> w;) f.push_back(w);
    // The optional fields end at a lone "-", after the sixth field.
    size_t dash = 0;
    for (size_t i = 6; i < f.size(); ++i) {
      if (f[i] == "-") {
        dash = i;
        break;
      }
    }
    if (dash == 0 || dash + 2 >= f.size()) continue;
    MountInfo m;
    m.device = f[2];
    m.root = unescape_mount_field(f[3]);
    m.mountpoint = unescape_mount_field(f[4]);
    m.fstype = f[dash + 1];
    m.source = unescape_mount_field(f[dash + 2]);
    if (dash + 3 < f.size()) m.super_options = f[dash + 3];
    mounts.push_back(std::move(m));
  }
  return mounts;
}

}  // namespace uext::fuse
