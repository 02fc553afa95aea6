// uext mkfs: create an ext2/ext3/ext4 filesystem, like mke2fs.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "common.h"
#include "disk/bytes.h"
#include "disk/features.h"
#include "disk/superblock.h"
#include "uext/block_device.h"
#include "uext/mkfs.h"

namespace uext::cli {
namespace {

struct MkfsArgs {
  std::string image;
  std::string size;
  std::string type = "ext4";
  uint32_t block_size = 0;
  uint32_t inode_size = 0;
  std::string bytes_per_inode;
  uint32_t inodes = 0;
  double reserved = 5.0;
  std::vector<std::string> features;
  std::string label;
  std::string uuid;
  std::vector<std::string> journal;
  std::vector<std::string> extended;
  bool force = false;
  bool quiet = false;
  std::string root_directory;  // -d: copied in, as mke2fs -d
  std::string usage_type;      // -T
  std::string errors;          // -e
  bool add_journal = false;    // -j
  bool dry_run = false;        // -n
};

int usage(const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "uext mkfs: %s\nTry 'uext mkfs --help' for more information.\n", message.c_str());
  return kExitUsage;
}

int failure(const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "uext mkfs: %s\n", message.c_str());
  return kExitFailure;
}

// "64M", "1G", "512K", "2T", "100000" (blocks: of -b, else KiB, as mke2fs).
bool parse_size(const std::string& text, uint32_t block_size, uint64_t& bytes) {
  if (text.empty()) return false;
  size_t i = 0;
  uint64_t n = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    uint64_t d = static_cast<uint64_t>(text[i] - '0');
    if (n > (UINT64_MAX - d) / 10) return false;
    n = n * 10 + d;
    i++;
  }
  if (i == 0) return false;
  std::string suffix = text.substr(i);
  uint64_t mult;
  if (suffix.empty()) {
    mult = block_size ? block_size : 1024;
  } else if (suffix == "K" || suffix == "k") {
    mult = 1ull << 10;
  } else if (suffix == "M" || suffix == "m") {
    mult = 1ull << 20;
  } else if (suffix == "G" || suffix == "g") {
    mult = 1ull << 30;
  } else if (suffix == "T" || suffix == "t") {
    mult = 1ull << 40;
  } else if (suffix == "s") {
    mult = 512;
  } else {
    return false;
  }
  if (n > UINT64_MAX / mult) return false;
  bytes = n * mult;
  return true;
}

bool parse_u32(const std::string& text, uint32_t& out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(text.c_str(), &end, 0);
  if (errno || *end || v > UINT32_MAX || text[0] == '-') return false;
  out = static_cast<uint32_t>(v);
  return true;
}

// What an existing ext2/3/4 superblock at byte 1024 calls itself, or "".
std::string existing_filesystem(const std::string& path, uint64_t offset) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::vector<std::byte> raw(disk::kSuperblockSize);
  ssize_t n = ::pread(fd, raw.data(), raw.size(), static_cast<off_t>(offset + disk::kSuperblockOffset));
  ::close(fd);
  if (n != static_cast<ssize_t>(raw.size())) return {};
  if (disk::le16(raw, 0x38) != disk::kSuperblockMagic) return {};
  uint32_t compat = disk::le32(raw, 0x5C), incompat = disk::le32(raw, 0x60), ro = disk::le32(raw, 0x64);
  const char* kind = "ext2";
  const uint32_t ext4_incompat = disk::incompat::kExtents | disk::incompat::k64bit | disk::incompat::kFlexBg |
                                 disk::incompat::kMmp | disk::incompat::kInlineData | disk::incompat::kCsumSeed;
  const uint32_t ext4_ro = disk::ro_compat::kHugeFile | disk::ro_compat::kGdtCsum | disk::ro_compat::kDirNlink |
                           disk::ro_compat::kExtraIsize | disk::ro_compat::kMetadataCsum |
                           disk::ro_compat::kBigalloc;
  if ((incompat & ext4_incompat) || (ro & ext4_ro)) {
    kind = "ext4";
  } else if (compat & disk::compat::kHasJournal) {
    kind = "ext3";
  }
  std::string label(reinterpret_cast<const char*>(raw.data()) + 0x78, 16);
  label = label.substr(0, label.find('\0'));
  std::string uuid;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) uuid += '-';
    uuid += fmt::format("{:02x}", disk::le8(raw, 0x68 + i));
  }
  std::string what = fmt::format("an {} filesystem (UUID {}", kind, uuid);
  if (!label.empty()) what += ", label '" + label + "'";
  return what + ")";
}

int run_mkfs(const MkfsArgs& a) {
  MkfsOptions o;
  {
    auto t = parse_fs_type(a.type);
    if (!t) return usage(t.error().message());
    o.type = *t;
  }
  o.block_size = a.block_size;
  o.inode_size = a.inode_size;
  if (!a.bytes_per_inode.empty()) {
    uint64_t bytes = 0;
    if (!parse_size(a.bytes_per_inode, 1, bytes) || bytes > UINT32_MAX) {
      return usage("invalid inode ratio '" + a.bytes_per_inode + "'");
    }
    o.bytes_per_inode = static_cast<uint32_t>(bytes);
  }
  o.inode_count = a.inodes;
  o.reserved_percent = a.reserved;
  if (a.add_journal) o.features = "has_journal";  // -j: as -O has_journal, before the -O edits
  for (const auto& f : a.features) {
    if (!o.features.empty()) o.features += ',';
    o.features += f;
  }
  o.usage_type = a.usage_type;
  if (!a.errors.empty()) {
    if (a.errors == "continue") o.errors_behavior = 1;
    else if (a.errors == "remount-ro") o.errors_behavior = 2;
    else if (a.errors == "panic") o.errors_behavior = 3;
    else return usage("invalid errors behaviour '" + a.errors + "' (continue, remount-ro or panic)");
  }
  o.label = a.label;
  if (!a.uuid.empty()) {
    if (a.uuid == "random") {
      // default
    } else if (a.uuid == "null" || a.uuid == "clear") {
      o.uuid = std::array<uint8_t, 16>{};
    } else {
      auto u = parse_uuid(a.uuid);
      if (!u) return usage(u.error().message());
      o.uuid = *u;
    }
  }
  for (const auto& j : a.journal) {
    for (const std::string& item : split_list(j, ',')) {
      uint32_t mib = 0;
      if (item.rfind("size=", 0) == 0 && parse_u32(item.substr(5), mib) && mib > 0) {
        o.journal_size_mib = mib;
      } else {
        return usage("invalid journal option '" + item + "' (supported: size=MiB)");
      }
    }
  }
  uint64_t offset = 0;  // -E offset=: where the filesystem starts in IMG
  for (const auto& e : a.extended) {
    for (const std::string& item : split_list(e, ',')) {
      if (item.rfind("root_owner", 0) == 0) {
        if (item == "root_owner") {
          o.root_uid = static_cast<uint32_t>(::getuid());
          o.root_gid = static_cast<uint32_t>(::getgid());
          continue;
        }
        std::string v = item.substr(item.find('=') + 1);
        size_t colon = v.find(':');
        if (item[10] != '=' || colon == std::string::npos || !parse_u32(v.substr(0, colon), o.root_uid) ||
            !parse_u32(v.substr(colon + 1), o.root_gid)) {
          return usage("invalid root_owner '" + item + "' (want root_owner=UID:GID)");
        }
      } else if (item.rfind("hash_seed=", 0) == 0) {
        auto u = parse_uuid(item.substr(10));
        if (!u) return usage("invalid hash_seed: " + u.error().message());
        o.hash_seed = *u;
      } else if (item.rfind("offset=", 0) == 0) {
        if (!parse_size(item.substr(7), 1, offset)) {
          return usage("invalid offset '" + item.substr(7) + "' (bytes, with K, M, G or T)");
        }
      } else if (item.rfind("quotatype=", 0) == 0) {
        // Colon-separated, as mke2fs: usr[quota], grp[quota], prj[quota].
        o.quota_types = 0;
        for (const std::string& name : split_list(std::string_view(item).substr(10), ':')) {
          if (name == "usr" || name == "usrquota") o.quota_types |= kQuotaUser;
          else if (name == "grp" || name == "grpquota") o.quota_types |= kQuotaGroup;
          else if (name == "prj" || name == "prjquota") o.quota_types |= kQuotaProject;
          else return usage("invalid quota type '" + name + "' in '" + item + "' (want usrquota, grpquota, prjquota, joined by ':')");
        }
      } else {
        return usage("invalid extended option '" + item +
                     "' (supported: root_owner=UID:GID, hash_seed=UUID, quotatype=usrquota:grpquota:prjquota, offset=BYTES)");
      }
    }
  }
  if (const char* t = std::getenv("E2FSPROGS_FAKE_TIME")) {
    char* end = nullptr;
    long long v = std::strtoll(t, &end, 0);
    if (end != t && *end == '\0') o.creation_time = v;
  }

  uint64_t size = 0;
  if (!a.size.empty() && (!parse_size(a.size, o.block_size, size) || size == 0)) {
    return usage("invalid size '" + a.size + "' (a number with K, M, G or T, or a block count)");
  }
  if (size) o.size_bytes = size;
  if (Status st = validate_mkfs_options(o); !st) return usage(st.error().message());

  // What is made, as mke2fs prints it (fewer lines).
  auto print_summary = [&](const MkfsLayout& l) {
    std::string bs = l.block_size % 1024 == 0 ? fmt::format("{}k", l.block_size / 1024) : fmt::format("{}", l.block_size);
    fmt::print("Creating filesystem with {} {} blocks and {} inodes\n", l.blocks_count, bs, l.inodes_count);
    std::string backups;
    for (uint32_t i = 1; i < l.group_count; i++) {
      if (!l.groups[i].has_super) continue;
      if (!backups.empty()) backups += ", ";
      backups += fmt::format("{}", l.groups[i].first_block);
    }
    if (!backups.empty()) fmt::print("Superblock backups stored on blocks: {}\n", backups);
    std::string feats;
    for (const auto& f : l.features) feats += (feats.empty() ? "" : " ") + f;
    fmt::print("Features: {}\n", feats);
    if (l.journal_blocks) fmt::print("Journal: {} blocks\n", l.journal_blocks);
  };

  if (a.dry_run) {
    // -n: the layout for the size given, or of the image as it is; nothing
    // created or written.
    uint64_t device = size;
    if (!device) {
      struct stat st {};
      if (::stat(a.image.c_str(), &st) != 0) return failure(a.image + ": " + describe_errno(errno));
      auto dev = open_image_file(a.image, ImageFileOptions{.offset = offset});
      if (!dev) return failure(a.image + ": " + dev.error().message());
      device = (*dev)->size();
    }
    auto layout = compute_mkfs_layout(device, o);
    if (!layout) return failure(a.image + ": " + layout.error().message());
    if (!a.quiet) print_summary(*layout);
    return kExitOk;
  }

  // The image: created sparse when missing, grown to SIZE when shorter.
  struct stat st {};
  bool created = false;
  if (::stat(a.image.c_str(), &st) != 0) {
    if (errno != ENOENT) return failure(a.image + ": " + describe_errno(errno));
    if (!size) return failure(a.image + ": the file does not exist and no size was given");
    int fd = ::open(a.image.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) return failure(a.image + ": cannot create: " + describe_errno(errno));
    int rc = ::ftruncate(fd, static_cast<off_t>(offset + size));
    int err = errno;
    ::close(fd);
    if (rc != 0) {
      ::unlink(a.image.c_str());
      return failure(a.image + ": cannot set its size: " + describe_errno(err));
    }
    created = true;
  } else {
    if (!a.force) {
      std::string fs = existing_filesystem(a.image, offset);
      if (!fs.empty()) {
        return failure(a.image + " already contains " + fs + "; use -F to overwrite it");
      }
    }
    if (S_ISREG(st.st_mode) && size && offset + size > static_cast<uint64_t>(st.st_size)) {
      if (::truncate(a.image.c_str(), static_cast<off_t>(offset + size)) != 0) {
        return failure(a.image + ": cannot grow it to " + std::to_string(offset + size) + " bytes: " +
                       describe_errno(errno));
      }
    }
  }
  o.assume_zeroed = created;

  // With a size, the device ends there: nothing past the partition is
  // read or written.
  auto dev = open_image_file(a.image, ImageFileOptions{.read_only = false, .offset = offset, .size_limit = size});
  if (!dev) return failure(a.image + ": " + dev.error().message());
  auto layout = compute_mkfs_layout((*dev)->size(), o);
  if (!layout) {
    if (created) ::unlink(a.image.c_str());
    return failure(a.image + ": " + layout.error().message());
  }
  if (Status s = make_filesystem(**dev, o); !s) {
    return failure(a.image + ": " + s.error().message());
  }
  dev->reset();  // written and flushed: the copy below opens the image anew
  if (!a.quiet) {
    print_summary(*layout);
    fmt::print("Filesystem: {}\n", existing_filesystem(a.image, offset).substr(3));
  }
  if (!a.root_directory.empty()) {
    // The directory's contents become the root's, as `uext put IMG DIR/. /`.
    image_offset() = offset;
    auto fs = open_image_rw(a.image);
    if (!fs) return kExitFailure;
    // A regular file (or "-") is a tar archive, as for mke2fs 1.47.1.
    struct stat src {};
    const bool archive = a.root_directory == "-" ||
                         (::stat(a.root_directory.c_str(), &src) == 0 && S_ISREG(src.st_mode));
    int rc = archive ? put_archive(*fs, a.image, a.root_directory, "/", /*force=*/false, /*verbose=*/false)
                     : put_tree(*fs, a.image, a.root_directory + "/.", "/");
    return close_image(std::move(fs), a.image, rc);
  }
  return kExitOk;
}

}  // namespace

Command add_mkfs_command(CLI::App& parent) {
  auto a = std::make_shared<MkfsArgs>();
  auto* sub = parent.add_subcommand("mkfs", "Create an ext2/ext3/ext4 filesystem (like mke2fs)");
  sub->add_option("IMG", a->image, "Image file (created sparse if missing) or block device")->required();
  sub->add_option("SIZE", a->size,
                  "Filesystem size: bytes with a K/M/G/T suffix (1024-based), or a block count "
                  "(of -b, else 1 KiB) as mke2fs; default: the whole file");
  sub->add_option("-t,--type", a->type, "ext2, ext3 or ext4 (default ext4)");
  sub->add_option("-b,--block-size", a->block_size,
                  "Block size in bytes: 1024, 2048, 4096 (up to 65536); default by size");
  sub->add_option("-I,--inode-size", a->inode_size, "Inode size in bytes, a power of two >= 128 (default 256)");
  sub->add_option("-i,--bytes-per-inode", a->bytes_per_inode,
                  "One inode per this many bytes (default by size: 4096 below 512 MiB, else 16384)");
  sub->add_option("-N,--inodes", a->inodes, "Number of inodes (overrides -i)");
  sub->add_option("-m,--reserved-percent", a->reserved, "Blocks reserved for root, in percent (default 5)")
      ->check(CLI::Range(0.0, 50.0));
  // One value per -O, -J and -E, repeatable (as mke2fs): IMG and SIZE may follow.
  sub->add_option("-O,--features", a->features,
                  "Feature edits, e.g. ^metadata_csum,^64bit or meta_bg,^resize_inode")
      ->allow_extra_args(false);
  sub->add_option("-L,--label", a->label, "Volume label (at most 16 bytes)");
  sub->add_option("-U,--uuid", a->uuid, "Filesystem UUID (default random; 'null' for all zeros)");
  sub->add_option("-J,--journal", a->journal, "Journal options: size=MiB")->allow_extra_args(false);
  sub->add_option("-E,--extended", a->extended, "Extended options: root_owner=UID:GID, hash_seed=UUID, quotatype=usrquota:grpquota:prjquota (which quota files -O quota makes; default user and group, and project with -O project), offset=BYTES (the filesystem starts this far into IMG: a partition of a disk image; SIZE is then the partition's)")
      ->allow_extra_args(false);
  sub->add_flag("-F,--force", a->force, "Overwrite an existing filesystem");
  sub->add_flag("-q,--quiet", a->quiet, "Print nothing on success");
  sub->add_option("-T,--usage-type", a->usage_type,
                  "Usage type instead of the size class, for block size and inode ratio (as mke2fs.conf): small, "
                  "floppy, big, huge, news, largefile, largefile4");
  sub->add_option("-e,--errors", a->errors, "What the kernel does on an error: continue (default), remount-ro, panic");
  sub->add_flag("-j", a->add_journal, "Add a journal (as -O has_journal; ext2 becomes ext3)");
  sub->add_flag("-n,--dry-run", a->dry_run, "Print what would be made; write nothing");
  sub->add_option("-d,--root-directory", a->root_directory,
                  "Copy this host directory's contents into the new filesystem's root (as mke2fs -d; as 'uext put IMG "
                  "DIR/. /' after it: owners, modes, times, links, holes, xattrs, devices); a regular file or '-' is "
                  "a tar archive to unpack there (as 'uext put --tar')");
  sub->footer(
      "Defaults are mke2fs 1.47's (Debian 12 mke2fs.conf). E2FSPROGS_FAKE_TIME=SECONDS fixes\n"
      "every timestamp, as for mke2fs. Exit status: 0 on success, 1 when creating failed,\n"
      "2 for usage errors.");
  return {sub, [a] { return run_mkfs(*a); }};
}

}  // namespace uext::cli
