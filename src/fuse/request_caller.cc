#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 12)
#include "fuse/request_caller.h"

#include <fuse_lowlevel.h>

#include <sys/types.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace uext::fuse {

bool caller_has_capability(Request req, int cap) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  if (ctx->pid > 0) {
    std::ifstream status("/proc/" + std::to_string(ctx->pid) + "/status");
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind("CapEff:", 0) == 0) return (std::strtoull(line.c_str() + 7, nullptr, 16) >> cap) & 1;
    }
  }
  return ctx->uid == 0;
}

bool caller_in_group(Request req, uint32_t gid) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  if (static_cast<uint32_t>(ctx->gid) == gid) return true;
  std::vector<gid_t> groups(64);
  int n = fuse_req_getgroups(req, static_cast<int>(groups.size()), groups.data());
  if (n > static_cast<int>(groups.size())) {
    groups.resize(static_cast<size_t>(n));
    n = fuse_req_getgroups(req, static_cast<int>(groups.size()), groups.data());
  }
  for (int i = 0; i < n && i < static_cast<int>(groups.size()); ++i) {
    if (static_cast<uint32_t>(groups[static_cast<size_t>(i)]) == gid) return true;
  }
  return false;
}

uint32_t RequestCaller::fsuid() const { return static_cast<uint32_t>(fuse_req_ctx(req_)->uid); }

}  // namespace uext::fuse
