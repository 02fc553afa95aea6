// Changing directories through journal handles: adding, removing and
// re-pointing entries, and the first block of a new directory. The block
// edits themselves are disk/dir_edit and disk/dx_edit; this layer reads the
// blocks through the directory's map, verifies their checksums, allocates
// new blocks, seals every changed block with its metadata_csum checksum and
// journals it.
//
// Growth follows the kernel's ext4_add_entry and ext4_dx_add_entry:
//  - a linear directory takes the name into the first block with room;
//  - a full one-block directory becomes an htree when the filesystem has
//    dir_index (block 0 turns into the dx root over two new leaves, blocks
//    1 and 2, and the inode gets the INDEX flag);
//  - otherwise a block is appended (logical block i_size / block size);
//  - an indexed directory probes the index to the leaf for the name's hash;
//    a full leaf splits by hash, a full index node splits, a full root
//    pushes its entries into a new node one level down. Each of those steps
//    appends one block and leaves a complete, valid tree, after which the
//    index is probed again. Past two index levels (three with largedir) the
//    directory is full: ENOSPC.
// New blocks are always appended (the map may be extents or indirect, via
// map_or_allocate), and every step allocates before it changes any block,
// so ENOSPC leaves the directory as the last completed step left it.
// Blocks are never freed, as in the kernel.
//
// Damage: a block that fails its checksum is EBADMSG and a malformed block
// EUCLEAN, both naming the inode and the block. An indexed directory whose
// root or index nodes are malformed is not edited at all (EUCLEAN; e2fsck
// -fD rebuilds the index): the kernel would fall back to linear and write
// the name into the root block's ".." span, which under metadata_csum
// leaves a block that is neither a valid root nor a valid leaf. Finding a
// name (remove, set) does fall back to a linear scan of the leaves, as
// lookup does, so every name lookup finds can be removed. A directory that
// carries the INDEX flag on a filesystem without dir_index is linear, as
// for the kernel and the read side; the flag is left as found.
//
// Concurrency: the caller holds the directory's inode lock exclusively
// (nobody else reads-then-changes its blocks); nothing here takes locks of
// its own beyond what the journal, allocator and cache take.
#pragma once

#include <cstdint>
#include <string_view>

#include "alloc/block_allocator.h"
#include "fs/volume.h"
#include "journal/journal.h"

namespace uext::fs {

// Worst-case journal credits for one dir_add_entry on `dir`.
//
// With dir_index, s = L + 1 steps at most, L the index levels allowed (2,
// or 3 with largedir): a new level, L - 1 node splits, a leaf split. Each
// step changes at most three directory blocks (two existing, one new) and
// allocates one block; building the first index (3 blocks, 2 allocations)
// fits inside that. So 3 s + map_credits(dir, s) + punch_credits(dir, 1)
// (giving back the first of the index's two blocks when the second cannot
// be had) + 1 (the inode's size and flags).
// Without dir_index: one block changed or appended, one allocation:
// 1 + map_credits(dir, 1) + 1.
uint32_t dir_add_credits(const Volume& vol, const InodeRecord& dir);
// dir_remove_entry and dir_set_entry change the one block holding the
// entry: 1.
uint32_t dir_change_credits(const Volume& vol, const InodeRecord& dir);
// dir_init: one allocation (map_credits(dir, 1)), the new block, and the
// inode's size: map_credits(dir, 1) + 2.
uint32_t dir_init_credits(const Volume& vol, const InodeRecord& dir);

// Adds name -> ino (file_type: a disk::ftype value, dropped without the
// filetype feature) to directory `dir`, inside `handle` (dir_add_credits).
// `dir` is the caller's working copy of the inode: i_size, i_flags,
// i_block and i_blocks are updated and written back through update_inode.
// The caller has checked that the name is absent; the leaf's EEXIST is
// passed through all the same. EINVAL for a bad name ("." and ".."
// included) or inode 0; ENOSPC when no block can be allocated or the index
// is full; EUCLEAN/EBADMSG for damaged blocks.
Status dir_add_entry(Volume& vol, journal::Handle& handle, InodeRecord& dir, std::string_view name,
                     uint32_t ino, uint8_t file_type, alloc::BlockAllocator& allocator);

// Removes the live entry `name` (ENOENT when absent; EINVAL for "." and
// ".."). Indexed directories find the leaf through the index; nothing is
// freed and the index is left alone (a leaf may become empty).
Status dir_remove_entry(Volume& vol, journal::Handle& handle, const InodeRecord& dir, std::string_view name);

// Points the live entry `name` at inode `ino` with type `file_type` (a
// rename over an existing name). `name` may be "..", which lives in block
// 0: in an indexed directory that is the dx root, whose fake ".." entry is
// changed in place and the root's checksum resealed. ENOENT when absent,
// EINVAL for ".".
Status dir_set_entry(Volume& vol, journal::Handle& handle, const InodeRecord& dir, std::string_view name,
                     uint32_t ino, uint8_t file_type);

// Writes block 0 of a brand-new directory: `dir` is allocated and written
// with mode S_IFDIR, i_size 0 and an empty map (for extent inodes an empty
// extent root). Allocates one block near the inode (the map writer's goal
// for a first block is BlockAllocator::goal_for_inode), fills "." -> dir
// and ".." -> parent, and sets i_size to the block size. Link counts are
// the caller's. Credits: dir_init_credits.
Status dir_init(Volume& vol, journal::Handle& handle, InodeRecord& dir, uint32_t parent,
                alloc::BlockAllocator& allocator);

// True when the directory holds no live entry but "." and "..".
Result<bool> dir_is_empty(Volume& vol, const InodeRecord& dir);

}  // namespace uext::fs
