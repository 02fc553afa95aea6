// Reading directories: listing in on-disk order and name lookup, through
// the htree index when the directory has one.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "disk/dirent.h"
#include "fs/volume.h"

namespace uext::fs {

struct FoundEntry {
  uint32_t ino = 0;
  uint8_t file_type = 0;
};

// Looks `name` up in directory `dir`. std::nullopt when absent.
Result<std::optional<FoundEntry>> dir_lookup(Volume& vol, const InodeRecord& dir,
                                             std::string_view name);

// Calls `visit` for each live entry at or after byte position `pos` (a
// position is logical block * block size + offset in the block), in on-disk
// order, skipping htree index blocks. `visit` gets the entry and the position
// just after it, and returns false to stop.
using DirentVisitor = std::function<bool(const disk::DirentView& entry, uint64_t next_pos)>;
Status dir_iterate(Volume& vol, const InodeRecord& dir, uint64_t pos, const DirentVisitor& visit);

}  // namespace uext::fs
