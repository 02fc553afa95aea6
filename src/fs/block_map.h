// Logical-to-physical block mapping of an inode: extent trees (ext4) and
// direct/indirect block maps (ext2/ext3).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "fs/volume.h"

namespace uext::fs {

// A run of logical blocks. physical == 0 marks a hole.
struct BlockRun {
  uint64_t logical = 0;
  uint64_t physical = 0;
  uint64_t length = 0;
  bool unwritten = false;  // preallocated: reads as zeros
};

// Appends `run` to `out`, merging it into the last run when it continues
// it: logically, physically (holes merge with holes) and in kind (unwritten
// or not).
void append_run(std::vector<BlockRun>& out, const BlockRun& run);

// Maps logical blocks [first, first + count) of `rec`: returns runs that
// cover the range exactly, in order, holes included. Every physical block
// returned has been checked to lie inside the filesystem.
Result<std::vector<BlockRun>> map_blocks(Volume& vol, const InodeRecord& rec, uint64_t first,
                                         uint64_t count);

// Every mapped run of the inode, in logical order (no holes), merged where
// both logical and physical blocks are contiguous.
Result<std::vector<BlockRun>> all_mapped_runs(Volume& vol, const InodeRecord& rec);

// Logical blocks a file of `rec`'s kind can address at most (2^32 for
// extents; 12 + p + p^2 + p^3 for indirect maps with p pointers a block).
// The largest size in bytes a file of `rec`'s kind may have (format limits).
uint64_t max_file_bytes(const Volume& vol, const InodeRecord& rec);
uint64_t max_logical_blocks(const Volume& vol, const InodeRecord& rec);

}  // namespace uext::fs
