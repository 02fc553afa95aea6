#include "fs/orphan.h"

#include <fmt/format.h>

#include <algorithm>
#include <mutex>
#include <set>

namespace uext::fs {

Status OrphanList::load(Volume& vol, std::string* problem) {
  std::lock_guard guard(mu_);
  list_.clear();
  std::set<uint32_t> seen;
  uint32_t ino = vol.superblock_snapshot().s_last_orphan;
  while (ino != 0) {
    if (ino > vol.sb().s_inodes_count || ino < vol.sb().s_first_ino || !seen.insert(ino).second) {
      if (problem) *problem = fmt::format("orphan list: bad link to inode {} (list cut there)", ino);
      break;
    }
    auto rec = vol.read_inode(ino);
    if (!rec.ok()) {
      if (problem) *problem = fmt::format("orphan list: inode {}: {}", ino, rec.error().message());
      break;
    }
    list_.push_back(ino);
    ino = rec->inode.i_dtime;
  }
  return {};
}

Status OrphanList::add(Volume& vol, journal::Handle& handle, uint32_t ino) {
  std::lock_guard guard(mu_);
  if (std::find(list_.begin(), list_.end(), ino) != list_.end()) return {};
  uint32_t next = list_.empty() ? 0 : list_.front();
  UEXT_TRY(vol.update_inode(handle, ino, false, [&](disk::Inode& in) { in.i_dtime = next; }));
  UEXT_TRY(vol.update_superblock(handle, [&](disk::Superblock& sb) { sb.s_last_orphan = ino; }));
  list_.insert(list_.begin(), ino);
  return {};
}

Status OrphanList::remove(Volume& vol, journal::Handle& handle, uint32_t ino) {
  std::lock_guard guard(mu_);
  auto it = std::find(list_.begin(), list_.end(), ino);
  if (it == list_.end()) return {};
  uint32_t next = std::next(it) == list_.end() ? 0 : *std::next(it);
  if (it == list_.begin()) {
    UEXT_TRY(vol.update_superblock(handle, [&](disk::Superblock& sb) { sb.s_last_orphan = next; }));
  } else {
    UEXT_TRY(vol.update_inode(handle, *std::prev(it), false, [&](disk::Inode& in) { in.i_dtime = next; }));
  }
  UEXT_TRY(vol.update_inode(handle, ino, false, [&](disk::Inode& in) { in.i_dtime = 0; }));
  list_.erase(it);
  return {};
}

bool OrphanList::contains(uint32_t ino) {
  std::lock_guard guard(mu_);
  return std::find(list_.begin(), list_.end(), ino) != list_.end();
}

std::vector<uint32_t> OrphanList::snapshot() {
  std::lock_guard guard(mu_);
  return list_;
}

}  // namespace uext::fs
