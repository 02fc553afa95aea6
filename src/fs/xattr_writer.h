// Writing extended attributes: in the inode slot after i_extra_isize when
// they fit there, else in the inode's xattr block (i_file_acl), as the
// kernel places them. Blocks shared by several inodes (h_refcount > 1) are
// copied on write; a block left empty is freed.
//
// Each call works inside a journal handle the caller started with the
// credits below, holding the inode's lock. `rec` is the caller's working
// copy of the inode: the call changes its i_file_acl, i_blocks and in-inode
// area and writes them back (Volume::update_inode_slot); other fields are
// left as they are on disk.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "alloc/block_allocator.h"
#include "fs/volume.h"
#include "journal/journal.h"

namespace uext::fs {

// setxattr flags (the values of <sys/xattr.h>).
inline constexpr int kXattrCreate = 1;   // XATTR_CREATE: EEXIST when present
inline constexpr int kXattrReplace = 2;  // XATTR_REPLACE: ENODATA when absent

// Worst case of one xattr_set: the inode, the old block, a new block and
// its allocation (bitmap, descriptor, superblock), and freeing a block
// (bitmap, descriptor, superblock): 1 + 1 + 1 + 3 + 3 = 9.
uint32_t xattr_set_credits(const Volume& vol);

// Sets attribute `name` (the VFS name: "user.x", "trusted.x", "security.x",
// "system.posix_acl_access", "system.posix_acl_default"; ACL values in the
// VFS form getxattr returns) to `value`, or removes it when value is
// nullopt.
//
// Errors: EOPNOTSUPP for other prefixes or an image without ext_attr;
// ERANGE for a name over 255 bytes (the VFS limit on the whole name;
// ext4's own is 255 after the prefix); E2BIG for a value over
// 64 KiB (the VFS limit); EEXIST / ENODATA for kXattrCreate /
// kXattrReplace, ENODATA for removing an absent attribute; ENOSPC when the
// value fits neither in the inode nor in a block (values in their own
// inodes, ea_inode, are not supported), or when no block can be allocated.
// On error nothing has changed.
Status xattr_set(Volume& vol, journal::Handle& handle, InodeRecord& rec, std::string_view name,
                 std::optional<std::string_view> value, int flags, alloc::BlockAllocator& allocator);

// For an inode being deleted: drops its xattr block (h_refcount - 1, or
// frees and revokes it when this inode was the last user), sets
// i_file_acl 0 and lowers i_blocks, and writes the inode back. Nothing to
// do when it has no block.
Status xattr_release_block(Volume& vol, journal::Handle& handle, InodeRecord& rec,
                           alloc::BlockAllocator& allocator);
// The old block, freeing it (bitmap, descriptor, superblock) and the inode: 5.
uint32_t xattr_release_credits(const Volume& vol);

}  // namespace uext::fs
