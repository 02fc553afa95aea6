// Editing linear directory blocks in memory: adding and removing entries the
// way the kernel's fs/ext4/namei.c does, and building fresh blocks. Pure
// functions on one block's bytes; the caller reads, journals and writes.
//
// Leaf blocks only: the bytes of an htree root or index node may parse as
// ordinary entries without a checksum tail, so the caller, who knows the
// block's role, must not pass them here.
//
// Checksums: no function here computes one. Blocks built here get an empty
// checksum tail when the format has one; after any edit the caller, who
// knows the directory inode's seed, calls set_dir_block_checksum(seed, block)
// once before the block is dirtied.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "disk/bytes.h"
#include "disk/dirent.h"
#include "uext/status.h"

namespace uext::disk {

// A name a directory entry may hold: 1..255 bytes, no '/' and no NUL.
// "." and ".." are valid here; insert_entry refuses them separately.
Status check_entry_name(std::string_view name);

// Adds (name -> ino, file_type) to a leaf block, in the first entry with
// enough slack, as ext4_find_dest_de and ext4_insert_dentry do: an unused
// entry (inode 0) large enough is taken over whole, keeping its rec_len; a
// live entry is cut to its real size and the new entry takes the rest.
// Without the filetype feature file_type is not stored (the byte is the high
// half of name_len).
// Returns the offset of the new entry, or std::nullopt (block unchanged) when
// no entry has room. Errors (block unchanged): EINVAL for a bad name, ".",
// "..", or inode 0; EEXIST when a live entry already has the name; the
// parser's error when the block is corrupt.
Result<std::optional<uint32_t>> insert_entry(MutableBytes block, const DirBlockFormat& format,
                                             std::string_view name, uint32_t ino, uint8_t file_type);

// Removes an entry as ext4_generic_delete_entry does: its rec_len is merged
// into the previous entry and its bytes are wiped; the first entry of the
// block cannot merge, so its inode becomes 0 and all but its rec_len is
// wiped. ENOENT when no live entry has the name (or starts at the offset).
Status remove_entry(MutableBytes block, const DirBlockFormat& format, std::string_view name);
Status remove_entry_at(MutableBytes block, const DirBlockFormat& format, uint32_t offset);

// Points an existing live entry at another inode (rename over an existing
// name, or ".." when a directory moves). ENOENT when absent.
Status set_entry_inode(MutableBytes block, const DirBlockFormat& format, std::string_view name, uint32_t ino,
                       uint8_t file_type);

// The largest slack of any entry: a new entry fits when dirent_size of its
// name is at most this (0 when the block is corrupt).
uint32_t largest_free_slot(Bytes block, const DirBlockFormat& format);

// A new empty leaf: zeroed, one unused entry spanning the block up to the
// checksum tail, and the (empty) tail when format.has_tail. What the kernel
// writes into a block appended to a linear directory.
Status init_leaf_block(MutableBytes block, const DirBlockFormat& format);

// Block 0 of a new directory, as ext4_init_dot_dotdot: "." (rec_len 12) ->
// ino, ".." -> parent spanning the rest up to the tail, both of type
// directory when format.filetype.
Status init_dir_block_with_dot_dotdot(MutableBytes block, const DirBlockFormat& format, uint32_t ino,
                                      uint32_t parent);

}  // namespace uext::disk
