// POSIX access control lists: the rules the kernel's fs/posix_acl.c applies
// on ext4 (mounted with its default `acl` option), as pure functions over
// the VFS form of system.posix_acl_access / system.posix_acl_default (a
// le32 version 2, then 8-byte entries: le16 tag, le16 permissions, le32
// uid or gid). The on-disk conversion is disk/xattr.h's.
//
// Who uses them: a new inode in a directory with a default ACL gets an
// access ACL derived from it and masked by the requested mode, and a new
// directory the default ACL too, with no umask (posix_acl_create); chmod
// rewrites an access ACL's owner, group-or-mask and other entries
// (posix_acl_chmod); setting an access ACL sets the mode from it, and one
// that says no more than a mode is kept as that mode alone
// (posix_acl_update_mode).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "uext/status.h"

namespace uext::fs {

inline constexpr std::string_view kAclAccessName = "system.posix_acl_access";
inline constexpr std::string_view kAclDefaultName = "system.posix_acl_default";

// Entry tags (<linux/posix_acl.h>).
namespace acl_tag {
inline constexpr uint16_t kUserObj = 0x01;
inline constexpr uint16_t kUser = 0x02;
inline constexpr uint16_t kGroupObj = 0x04;
inline constexpr uint16_t kGroup = 0x08;
inline constexpr uint16_t kMask = 0x10;
inline constexpr uint16_t kOther = 0x20;
}  // namespace acl_tag
inline constexpr uint32_t kAclUndefinedId = 0xFFFFFFFF;

struct AclEntry {
  uint16_t tag = 0;
  uint16_t perm = 0;  // r 4, w 2, x 1
  uint32_t id = kAclUndefinedId;  // uid or gid for kUser / kGroup; undefined otherwise
  bool operator==(const AclEntry&) const = default;
};
using Acl = std::vector<AclEntry>;

// Decodes the VFS form. A value of only the header decodes to no entries,
// which the kernel takes as "no ACL" (removal). EINVAL, naming the problem,
// for a short or ragged value, a version other than 2, an unknown tag, a
// uid/gid of -1, or an ACL that fails acl_check. Never reads past `value`.
Result<Acl> acl_parse(std::string_view value);

// The kernel's posix_acl_valid: permissions within rwx; one owner entry,
// then named users, one owning-group entry, named groups, a mask (required
// when there are named entries), one other entry, in that order. EINVAL
// naming the first entry that breaks a rule.
Status acl_check(const Acl& acl);

// The VFS form of `acl` (ids of entries without a qualifier written as -1,
// as the kernel's posix_acl_to_xattr does).
std::string acl_format(const Acl& acl);

// posix_acl_equiv_mode: the permission bits the ACL grants the owner, the
// group class (the mask when there is one) and others, and whether the ACL
// says no more than those bits (only the three base entries).
struct AclModeBits {
  uint32_t bits = 0;  // 0777 part of a mode
  bool equivalent = false;
};
AclModeBits acl_mode_bits(const Acl& acl);

// posix_acl_chmod_masq: an access ACL after chmod to `mode`: the owner and
// other entries take its bits, and the mask (or, without one, the owning
// group) its group bits; named entries stay.
void acl_chmod(Acl& acl, uint32_t mode);

// posix_acl_create_masq: masks a copy of a default ACL by the requested
// mode's permission bits and those bits by it (`mode` changes). Returns
// whether the ACL says more than the resulting mode (then it is stored).
// EINVAL for an ACL without an owning-group entry (acl_check refuses those).
Result<bool> acl_create_masq(Acl& acl, uint32_t& mode);

// What a new inode gets (posix_acl_create): with the parent's default ACL
// (its VFS value, or nullopt when it has none) the mode masked by it and
// no umask, an access ACL when that says more than the mode, and for a
// directory the default ACL itself; without one, the mode less the umask.
// Symlinks take neither. A malformed parent value is an error naming it.
struct NewInodeAcls {
  uint32_t mode = 0;                       // type, special bits and permission bits
  std::optional<std::string> access;       // VFS value for system.posix_acl_access
  std::optional<std::string> default_acl;  // VFS value for system.posix_acl_default
};
Result<NewInodeAcls> acl_for_new_inode(const std::optional<std::string>& parent_default, uint32_t mode,
                                       uint32_t umask);

}  // namespace uext::fs
