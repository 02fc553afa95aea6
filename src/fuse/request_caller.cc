#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 12)
#include "fuse/request_caller.h"

#include <fuse_lowlevel.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace uext::fuse {

namespace {

// The value of line `key` ("CapEff:", "Groups:") of /proc/PID/status, or
// false when the process is gone.
bool status_line(pid_t pid, const char* key, std::string* value) {
  if (pid <= 0) return false;
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key, 0) == 0) {
      *value = line.substr(std::char_traits<char>::length(key));
      return true;
    }
  }
  return false;
}

bool process_has_capability(pid_t pid, uint32_t uid, int cap) {
  std::string caps;
  if (!status_line(pid, "CapEff:", &caps)) return uid == 0;
  return (std::strtoull(caps.c_str(), nullptr, 16) >> cap) & 1;
}

bool process_in_group(pid_t pid, uint32_t fsgid, uint32_t gid) {
  if (fsgid == gid) return true;
  std::string groups;
  if (!status_line(pid, "Groups:", &groups)) return false;
  std::istringstream in(groups);
  for (unsigned long g = 0; in >> g;) {
    if (g == gid) return true;
  }
  return false;
}

}  // namespace

bool caller_has_capability(Request req, int cap) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  return process_has_capability(ctx->pid, static_cast<uint32_t>(ctx->uid), cap);
}

bool caller_in_group(Request req, uint32_t gid) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  return process_in_group(ctx->pid, static_cast<uint32_t>(ctx->gid), gid);
}

RequestCaller::RequestCaller(Request req) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  uid_ = static_cast<uint32_t>(ctx->uid);
  gid_ = static_cast<uint32_t>(ctx->gid);
  pid_ = ctx->pid;
}

bool RequestCaller::in_group(uint32_t gid) const { return process_in_group(pid_, gid_, gid); }

bool RequestCaller::has_sys_resource() const { return process_has_capability(pid_, uid_, kCapSysResource); }

}  // namespace uext::fuse
