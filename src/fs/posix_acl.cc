#include "fs/posix_acl.h"

#include <sys/stat.h>

#include <fmt/format.h>

namespace uext::fs {
namespace {

constexpr uint32_t kVfsVersion = 2;
constexpr size_t kHeaderSize = 4;
constexpr size_t kEntrySize = 8;

uint32_t get_le(std::string_view s, size_t off, int n) {
  uint32_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint32_t>(static_cast<unsigned char>(s[off + i])) << (8 * i);
  return v;
}

void put_le(std::string& out, uint32_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

const char* tag_name(uint16_t tag) {
  switch (tag) {
    case acl_tag::kUserObj: return "user::";
    case acl_tag::kUser: return "user:ID";
    case acl_tag::kGroupObj: return "group::";
    case acl_tag::kGroup: return "group:ID";
    case acl_tag::kMask: return "mask::";
    case acl_tag::kOther: return "other::";
    default: return "unknown";
  }
}

Error invalid(size_t index, const AclEntry& e, std::string_view why) {
  return Error(EINVAL, fmt::format("ACL entry {} ({}, tag {:#x}): {}", index, tag_name(e.tag), e.tag, why));
}

}  // namespace

Result<Acl> acl_parse(std::string_view value) {
  if (value.size() < kHeaderSize)
    return Error(EINVAL, fmt::format("ACL: {} bytes is too small for the 4-byte header", value.size()));
  const uint32_t version = get_le(value, 0, 4);
  if (version != kVfsVersion) return Error(EINVAL, fmt::format("ACL: version {} is not 2", version));
  if ((value.size() - kHeaderSize) % kEntrySize != 0) {
    return Error(EINVAL, fmt::format("ACL: {} bytes after the header is not a whole number of 8-byte entries",
                                     value.size() - kHeaderSize));
  }
  Acl acl;
  acl.reserve((value.size() - kHeaderSize) / kEntrySize);
  for (size_t off = kHeaderSize; off < value.size(); off += kEntrySize) {
    AclEntry e;
    e.tag = static_cast<uint16_t>(get_le(value, off, 2));
    e.perm = static_cast<uint16_t>(get_le(value, off + 2, 2));
    const uint32_t id = get_le(value, off + 4, 4);
    switch (e.tag) {
      case acl_tag::kUserObj:
      case acl_tag::kGroupObj:
      case acl_tag::kMask:
      case acl_tag::kOther:
        e.id = kAclUndefinedId;  // ignored, as the kernel ignores it
        break;
      case acl_tag::kUser:
      case acl_tag::kGroup:
        if (id == kAclUndefinedId) return invalid(acl.size(), e, "a named entry with id -1");
        e.id = id;
        break;
      default:
        return invalid(acl.size(), e, "unknown tag");
    }
    acl.push_back(e);
  }
  if (acl.empty()) return acl;
  UEXT_TRY(acl_check(acl));
  return acl;
}

Status acl_check(const Acl& acl) {
  // The states of the kernel's posix_acl_valid: what may come next.
  enum State { kWantUserObj, kInUsers, kInGroups, kWantOther, kDone };
  State state = kWantUserObj;
  bool needs_mask = false;
  for (size_t i = 0; i < acl.size(); ++i) {
    const AclEntry& e = acl[i];
    if (e.perm & ~7u) return invalid(i, e, fmt::format("permissions {:#o} beyond rwx", e.perm));
    switch (e.tag) {
      case acl_tag::kUserObj:
        if (state != kWantUserObj) return invalid(i, e, "a second owner entry, or one out of order");
        state = kInUsers;
        break;
      case acl_tag::kUser:
        if (state != kInUsers) return invalid(i, e, "a named user after the group entries");
        needs_mask = true;
        break;
      case acl_tag::kGroupObj:
        if (state != kInUsers) return invalid(i, e, "a second owning-group entry, or one before the owner");
        state = kInGroups;
        break;
      case acl_tag::kGroup:
        if (state != kInGroups) return invalid(i, e, "a named group outside the group entries");
        needs_mask = true;
        break;
      case acl_tag::kMask:
        if (state != kInGroups) return invalid(i, e, "a mask out of order, or a second one");
        state = kWantOther;
        break;
      case acl_tag::kOther:
        if (state == kWantOther || (state == kInGroups && !needs_mask)) {
          state = kDone;
          break;
        }
        if (state == kInGroups) return invalid(i, e, "named entries but no mask entry");
        return invalid(i, e, "the other entry out of order, or a second one");
      default:
        return invalid(i, e, "unknown tag");
    }
    if (state == kDone && i + 1 != acl.size()) return invalid(i + 1, acl[i + 1], "an entry after the other entry");
  }
  if (state != kDone) {
    const char* missing = state == kWantUserObj ? "owner (user::)"
                          : state == kInUsers   ? "owning-group (group::)"
                                                : "other (other::)";
    return Error(EINVAL, fmt::format("ACL of {} entries has no {} entry", acl.size(), missing));
  }
  return {};
}

std::string acl_format(const Acl& acl) {
  std::string out;
  out.reserve(kHeaderSize + kEntrySize * acl.size());
  put_le(out, kVfsVersion, 4);
  for (const AclEntry& e : acl) {
    put_le(out, e.tag, 2);
    put_le(out, e.perm, 2);
    const bool named = e.tag == acl_tag::kUser || e.tag == acl_tag::kGroup;
    put_le(out, named ? e.id : kAclUndefinedId, 4);
  }
  return out;
}

AclModeBits acl_mode_bits(const Acl& acl) {
  AclModeBits r;
  r.equivalent = true;
  for (const AclEntry& e : acl) {
    switch (e.tag) {
      case acl_tag::kUserObj: r.bits |= (e.perm & 7u) << 6; break;
      case acl_tag::kGroupObj: r.bits |= (e.perm & 7u) << 3; break;
      case acl_tag::kOther: r.bits |= e.perm & 7u; break;
      case acl_tag::kMask:
        // Checked ACLs have it after every group entry: it replaces the group class.
        r.bits = (r.bits & ~0070u) | ((e.perm & 7u) << 3);
        r.equivalent = false;
        break;
      default: r.equivalent = false; break;
    }
  }
  return r;
}

void acl_chmod(Acl& acl, uint32_t mode) {
  AclEntry* group_obj = nullptr;
  AclEntry* mask = nullptr;
  for (AclEntry& e : acl) {
    switch (e.tag) {
      case acl_tag::kUserObj: e.perm = static_cast<uint16_t>((mode >> 6) & 7u); break;
      case acl_tag::kOther: e.perm = static_cast<uint16_t>(mode & 7u); break;
      case acl_tag::kGroupObj: group_obj = &e; break;
      case acl_tag::kMask: mask = &e; break;
      default: break;
    }
  }
  if (AclEntry* g = mask ? mask : group_obj) g->perm = static_cast<uint16_t>((mode >> 3) & 7u);
}

Result<bool> acl_create_masq(Acl& acl, uint32_t& mode) {
  uint32_t bits = mode & 0777;
  bool not_equivalent = false;
  AclEntry* group_obj = nullptr;
  AclEntry* mask = nullptr;
  for (AclEntry& e : acl) {
    switch (e.tag) {
      case acl_tag::kUserObj:
        e.perm &= static_cast<uint16_t>((bits >> 6) & 7u);
        bits &= (static_cast<uint32_t>(e.perm) << 6) | ~0700u;
        break;
      case acl_tag::kUser:
      case acl_tag::kGroup: not_equivalent = true; break;
      case acl_tag::kGroupObj: group_obj = &e; break;
      case acl_tag::kOther:
        e.perm &= static_cast<uint16_t>(bits & 7u);
        bits &= static_cast<uint32_t>(e.perm) | ~0007u;
        break;
      case acl_tag::kMask:
        mask = &e;
        not_equivalent = true;
        break;
      default: return Error(EINVAL, fmt::format("ACL: unknown tag {:#x}", e.tag));
    }
  }
  AclEntry* g = mask ? mask : group_obj;
  if (!g) return Error(EINVAL, "ACL has neither a mask nor an owning-group entry");
  g->perm &= static_cast<uint16_t>((bits >> 3) & 7u);
  bits &= (static_cast<uint32_t>(g->perm) << 3) | ~0070u;
  mode = (mode & ~0777u) | (bits & 0777u);
  return not_equivalent;
}

Result<NewInodeAcls> acl_for_new_inode(const std::optional<std::string>& parent_default, uint32_t mode,
                                       uint32_t umask) {
  NewInodeAcls out;
  out.mode = mode;
  if (S_ISLNK(mode)) return out;
  Acl acl;
  if (parent_default) {
    auto parsed = acl_parse(*parent_default);
    if (!parsed.ok()) return std::move(parsed).error().with_context("the directory's default ACL");
    acl = std::move(*parsed);
  }
  if (acl.empty()) {
    out.mode &= ~(umask & 0777u);
    return out;
  }
  if (S_ISDIR(mode)) out.default_acl = acl_format(acl);
  UEXT_ASSIGN_OR_RETURN(bool needs_acl, acl_create_masq(acl, out.mode));
  if (needs_acl) out.access = acl_format(acl);
  return out;
}

}  // namespace uext::fs
