// Changing an inode's block map: allocating blocks into holes, converting
// unwritten extents, removing ranges (punch, truncate). Extent trees (ext4)
// and direct/indirect maps (ext2/ext3) alike.
//
// Every function works inside a journal handle the caller started with
// enough credits (see the *_credits functions). The caller's InodeRecord is
// the working copy of the inode: the functions change its i_block and
// i_blocks and write both back through Volume::update_inode before they
// return (also when they fail half-way, so that the inode always matches
// the tree blocks changed so far in the same handle). They never change
// i_size: that is the caller's (truncate_blocks below does it).
//
// Large operations work in steps that each fit one handle: map_or_allocate
// stops after `max_new_extents` new extents, punch_step after `max_units`
// removals; the caller stops the handle, starts another and calls again.
// Each step leaves a consistent map (a removal proceeds from the end of
// the range towards its start), so a crash between handles leaves a file
// whose tail is partly removed, never a broken tree. truncate_blocks and
// punch_range do that loop themselves.
//
// Checks: every block number written into a map is checked to lie inside
// the filesystem, and a logical block that is already mapped is never
// mapped again (an attempt is EUCLEAN).
#pragma once

#include <cstdint>
#include <vector>

#include "alloc/block_allocator.h"
#include "fs/block_map.h"
#include "fs/volume.h"
#include "journal/journal.h"

namespace uext::fs {

struct MapOptions {
  // New blocks become unwritten extents (fallocate); they read as zeros
  // until convert_unwritten(). Extent-mapped inodes only (EINVAL else).
  bool unwritten = false;
  // Stop after creating this many new extents (indirect maps: this many
  // allocated runs, each inside one indirect block) and return what is
  // mapped so far; 0: no limit (then the caller must have reserved credits
  // for the worst case of the whole range).
  uint32_t max_new_extents = 0;
  alloc::AllocOptions alloc;
};

// Maps logical blocks [first, first + count) of `rec`, allocating blocks for
// the holes. Returns runs covering [first, first + n) for some n <= count
// (n < count only when options.max_new_extents stopped it), in order:
// existing runs as they are (unwritten ones included: convert them with
// convert_unwritten once their data is written) and new ones. New blocks
// are contiguous where the allocator gives them so; the goal for each is
// right after the physical end of the mapping before it, else near the
// inode's group. A new extent merges with its neighbour when both logical
// and physical blocks continue it (at most 32768 blocks, 32767 unwritten).
//
// Credits: map_credits(vol, rec, k) where k is options.max_new_extents
// (or, without a limit, the number of blocks in the range).
Result<std::vector<BlockRun>> map_or_allocate(Volume& vol, journal::Handle& handle, InodeRecord& rec,
                                              uint64_t first, uint64_t count,
                                              alloc::BlockAllocator& allocator,
                                              const MapOptions& options = {});

// Marks the unwritten blocks of [first, first + count) written, splitting
// an unwritten extent into up to three. Holes and written blocks in the
// range are left alone. Credits: convert_credits(vol, rec, n) for a range
// touching n unwritten extents. Extent-mapped inodes only.
Status convert_unwritten(Volume& vol, journal::Handle& handle, InodeRecord& rec, uint64_t first,
                         uint64_t count, alloc::BlockAllocator& allocator);

// Removes logical blocks [first, first + count): frees the data blocks
// (not revoked) and every tree or indirect block left empty (revoked),
// splits an extent that the hole cuts in two, and makes the tree shallower
// when its entries fit in fewer levels. Works from the end of the range
// backwards and stops after `max_units` removals (an extent removed or
// trimmed; for indirect maps one indirect block's worth of pointers).
// Returns where the still-mapped part of the range ends: blocks in
// [result, first + count) are gone; result == first means done.
// Credits: punch_credits(vol, rec, max_units).
Result<uint64_t> punch_step(Volume& vol, journal::Handle& handle, InodeRecord& rec, uint64_t first,
                            uint64_t count, alloc::BlockAllocator& allocator, uint32_t max_units);

// punch_step in as many handles as it takes. The inode's i_size is left
// alone.
Status punch_range(Volume& vol, InodeRecord& rec, uint64_t first, uint64_t count,
                   alloc::BlockAllocator& allocator);

// Sets i_size to `new_size` and removes every block past it, in as many
// handles as it takes. Crash safety without the orphan list: each handle
// lowers i_size only to the end of what is still mapped (never below
// new_size), so every committed state has no block past i_size and is
// e2fsck-clean; a crash leaves a file longer than asked (its old data up
// to the size of that moment) that the caller must truncate again. The
// orphan list will record the pending truncate instead. Zeroes the tail of
// a partial last block on the device, as the kernel does.
Status truncate_blocks(Volume& vol, InodeRecord& rec, uint64_t new_size,
                       alloc::BlockAllocator& allocator);

// Adds `fs_blocks` (negative: removes) to i_blocks, which counts 512-byte
// sectors, or filesystem blocks for a HUGE_FILE inode on a huge_file
// filesystem (the reverse of disk::inode_blocks_512).
void add_blocks(const Volume& vol, disk::Inode& in, int64_t fs_blocks);

// Worst-case journal credits.
//
// Extent trees, with d = min(5, depth + 1 + k/3) the deepest the tree can
// get during the call: each new extent may allocate data (bitmap +
// descriptor block: 2), change every node on its path (d), and split or
// grow up to d + 1 nodes, each a new block plus its bitmap and descriptor
// (3 (d + 1)); plus the inode and the superblock: 2 + k (4d + 5).
// Indirect maps: each run may allocate data (2), up to three indirect
// blocks (3 each) and change up to three existing ones: 2 + 14 k.
uint32_t map_credits(const Volume& vol, const InodeRecord& rec, uint32_t new_extents);
// Converting n unwritten extents inserts up to two extents each.
uint32_t convert_credits(const Volume& vol, const InodeRecord& rec, uint32_t extents);
// Each removal frees data spanning up to g groups (2 g: bitmaps and
// descriptor blocks), changes its path (d) and may free d tree blocks
// (2 d); one split insert (4 d + 5) and shrinking the tree (2 d) at most
// once per step; plus inode, superblock and slack (3). Indirect: a unit
// frees up to min(pointers per block, groups) runs' groups and three
// indirect blocks.
uint32_t punch_credits(const Volume& vol, const InodeRecord& rec, uint32_t units);

}  // namespace uext::fs
