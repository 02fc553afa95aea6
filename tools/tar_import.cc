// Unpacking a tar archive straight into an image (uext put --tar, uext mkfs
// -d ARCHIVE): the entries' owners, modes (setuid included), times, device
// numbers, hard and symbolic links, holes of sparse members and extended
// attributes go into the image as recorded, so an image of a root
// filesystem is made from its archive without root and without unpacking
// it on the host first. libarchive reads the archive: every tar dialect
// (ustar, pax, GNU with its sparse members) and every compression it knows
// (gzip, xz, zstd, bzip2, ...), from a file or from standard input.
#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <fmt/core.h>

#include "common.h"

namespace uext::cli {
namespace {

// Errors after which going on would only repeat the same failure.
bool fatal(int e) { return e == ENOSPC || e == EIO || e == EROFS || e == kErrCorrupted || e == kErrBadChecksum; }

struct ArchiveCloser {
  void operator()(archive* a) const { archive_read_free(a); }
};

class TarImporter {
 public:
  TarImporter(Filesystem& fs, const std::string& image, const std::string& archive_name, bool force, bool verbose)
      : fs_(fs), image_(image), name_(archive_name), force_(force), verbose_(verbose) {}

  // `open` starts reading the archive on `a` (a file, standard input, memory).
  template <typename Open>
  int run(const std::string& dest, Open open) {
    const std::string root_path = trim_trailing_slashes(absolute_image_path(dest));
    auto root = fs_.resolve(root_path, /*follow_last=*/true);
    if (!root) return report_error(image_, root_path, root.error()), kExitFailure;
    auto st = fs_.stat(*root);
    if (!st) return report_error(image_, root_path, st.error()), kExitFailure;
    if (!S_ISDIR(st->mode)) return report({image_, root_path, "Not a directory"}), kExitFailure;
    root_ = *root;
    root_path_ = root_path;

    std::unique_ptr<archive, ArchiveCloser> a(archive_read_new());
    archive_read_support_filter_all(a.get());
    archive_read_support_format_all(a.get());
    if (open(a.get()) != ARCHIVE_OK) {
      return report({name_, archive_error(a.get())}), kExitFailure;
    }
    archive_entry* entry = nullptr;
    for (;;) {
      const int r = archive_read_next_header(a.get(), &entry);
      if (r == ARCHIVE_EOF) break;
      if (r < ARCHIVE_WARN) {
        report({name_, archive_error(a.get())});
        failed_ = true;
        break;
      }
      unpack(a.get(), entry);
      if (stop_) break;
    }
    // Directories' times last: every entry made in one moved its mtime.
    for (const auto& [ino, times] : dir_times_) {
      SetAttr t;
      t.atime = times.first;
      t.mtime = times.second;
      if (auto s = fs_.setattr(ino, t); !s) fail_image(root_path_, s.error());
    }
    return failed_ ? kExitFailure : kExitOk;
  }

 private:
  void fail_image(const std::string& path, const Error& err) {
    report_error(image_, path, err);
    failed_ = true;
    if (fatal(err.code())) stop_ = true;
  }
  void fail_entry(const std::string& entry_path, std::string_view why) {
    report({name_, entry_path, why});
    failed_ = true;
  }

  // The entry's path as components under the destination; empty for the
  // destination itself ("." or "./"); nullopt (reported) for a path that
  // would leave it.
  std::optional<std::vector<std::string>> components(const std::string& raw) {
    std::vector<std::string> parts;
    for (std::string& c : split_list(raw, '/')) {
      if (c == ".") continue;
      if (c == "..") {
        fail_entry(raw, "a path with \"..\" would leave the destination; not unpacked");
        return std::nullopt;
      }
      parts.push_back(std::move(c));
    }
    return parts;
  }

  std::string image_path_of(const std::vector<std::string>& parts, size_t n) const {
    std::string p = root_path_;
    for (size_t k = 0; k < n; ++k) p = join_image_path(p, parts[k]);
    return p;
  }

  // The directory that holds parts[0..n), made (0755, root's) where the
  // archive did not list it before its contents, as tar does.
  std::optional<Ino> parent_dir(const std::vector<std::string>& parts, size_t n) {
    Ino dir = root_;
    for (size_t k = 0; k < n; ++k) {
      const std::string path = image_path_of(parts, k + 1);
      if (auto it = dirs_.find(path); it != dirs_.end()) {
        dir = it->second;
        continue;
      }
      auto found = fs_.lookup(dir, parts[k]);
      if (found) {
        auto st = fs_.stat(*found);
        if (!st) return fail_image(path, st.error()), std::nullopt;
        if (!S_ISDIR(st->mode)) {
          report({image_, path, "Not a directory"});
          failed_ = true;
          return std::nullopt;
        }
        dir = *found;
      } else if (found.error().code() == ENOENT) {
        auto made = fs_.mkdir(dir, parts[k], 0755, Owner{});
        if (!made) return fail_image(path, made.error()), std::nullopt;
        dir = made->ino;
      } else {
        return fail_image(path, found.error()), std::nullopt;
      }
      dirs_[path] = dir;
    }
    return dir;
  }

  // make_room, its refusals and failures reported: nullopt when the entry
  // must not go there.
  std::optional<Ino> prepare_slot(Ino parent, const std::string& name, const std::string& path, bool is_dir) {
    auto slot = make_room(fs_, parent, name, is_dir, force_);
    if (slot) return *slot;
    if (slot.error().code() == EEXIST) {
      report({image_, path, slot.error().message()});
      failed_ = true;
    } else {
      fail_image(path, slot.error());
    }
    return std::nullopt;
  }

  void unpack(archive* a, archive_entry* e) {
    const char* raw_name = archive_entry_pathname(e);
    const std::string raw = raw_name ? raw_name : "";
    auto parts = components(raw);
    if (!parts) return;
    const mode_t type = archive_entry_filetype(e);
    const char* hardlink = archive_entry_hardlink(e);

    // The destination itself ("./"): its attributes, as cp -a DIR/. gives them.
    if (parts->empty()) {
      if (type == AE_IFDIR) finish(e, root_, root_path_, /*is_dir=*/true);
      return;
    }
    auto parent = parent_dir(*parts, parts->size() - 1);
    if (!parent) return;
    const std::string& name = parts->back();
    const std::string path = image_path_of(*parts, parts->size());
    auto slot = prepare_slot(*parent, name, path, type == AE_IFDIR && !hardlink);
    if (!slot) return;
    if (verbose_) fmt::print("{} -> {}\n", raw, path);

    if (hardlink) {
      auto target_parts = components(hardlink);
      if (!target_parts) return;
      auto target = fs_.resolve(image_path_of(*target_parts, target_parts->size()), /*follow_last=*/false);
      if (!target) return fail_image(image_path_of(*target_parts, target_parts->size()), target.error());
      if (auto r = fs_.link(*target, *parent, name); !r) fail_image(path, r.error());
      return;
    }

    const Owner owner{static_cast<uint32_t>(archive_entry_uid(e)), static_cast<uint32_t>(archive_entry_gid(e))};
    const uint32_t perm = archive_entry_perm(e) & 07777;
    Result<Stat> made = Error(EINVAL, "unreachable");
    switch (type) {
      case AE_IFDIR:
        if (*slot != 0) {  // merged into an existing directory
          dirs_[path] = *slot;
          finish(e, *slot, path, /*is_dir=*/true);
          return;
        }
        made = fs_.mkdir(*parent, name, perm, owner);
        if (made) dirs_[path] = made->ino;
        break;
      case AE_IFREG:
        made = fs_.mknod(*parent, name, S_IFREG | perm, owner);
        if (made && !copy_data(a, e, made->ino, path)) return;
        break;
      case AE_IFLNK: {
        const char* target = archive_entry_symlink(e);
        made = fs_.symlink(*parent, name, target ? target : "", owner);
        break;
      }
      case AE_IFCHR:
      case AE_IFBLK:
        made = fs_.mknod(*parent, name, type | perm, owner, static_cast<uint32_t>(archive_entry_rdevmajor(e)),
                         static_cast<uint32_t>(archive_entry_rdevminor(e)));
        break;
      case AE_IFIFO:
      case AE_IFSOCK:
        made = fs_.mknod(*parent, name, type | perm, owner);
        break;
      default:
        fail_entry(raw, fmt::format("unknown entry type (0{:o}); not unpacked", type));
        return;
    }
    if (!made) return fail_image(path, made.error());
    finish(e, made->ino, path, type == AE_IFDIR);
  }

  // The member's data blocks where the archive puts them: a sparse
  // member's holes stay holes, and the size covers a hole at the end.
  bool copy_data(archive* a, archive_entry* e, Ino ino, const std::string& path) {
    uint64_t written_end = 0;
    for (;;) {
      const void* buf = nullptr;
      size_t len = 0;
      la_int64_t offset = 0;
      const int r = archive_read_data_block(a, &buf, &len, &offset);
      if (r == ARCHIVE_EOF) break;
      if (r < ARCHIVE_WARN) {
        const char* member = archive_entry_pathname(e);
        report({name_, member ? member : "(unnamed member)", archive_error(a)});
        failed_ = true;
        stop_ = true;  // the archive's stream is lost from here
        return false;
      }
      if (len == 0) continue;
      auto w = fs_.write(ino, static_cast<uint64_t>(offset), std::span(static_cast<const std::byte*>(buf), len));
      if (!w) return fail_image(path, w.error()), false;
      written_end = std::max(written_end, static_cast<uint64_t>(offset) + len);
    }
    const auto size = static_cast<uint64_t>(std::max<la_int64_t>(archive_entry_size(e), 0));
    if (written_end < size) {
      if (auto r = fs_.truncate(ino, size); !r) return fail_image(path, r.error()), false;
    }
    return true;
  }

  // Extended attributes, then owner and mode (setuid after the chown that
  // would clear it), then the times; a directory's times wait for the end.
  void finish(archive_entry* e, Ino ino, const std::string& path, bool is_dir) {
    const char* xname = nullptr;
    const void* xvalue = nullptr;
    size_t xsize = 0;
    archive_entry_xattr_reset(e);
    while (archive_entry_xattr_next(e, &xname, &xvalue, &xsize) == ARCHIVE_OK) {
      if (!xname) continue;
      std::string_view value(static_cast<const char*>(xvalue), xsize);
      if (auto r = fs_.setxattr(ino, xname, value); !r) {
        report({image_, path, fmt::format("cannot set extended attribute {}", xname), describe(r.error())});
        failed_ = true;
      }
    }
    SetAttr a;
    if (archive_entry_filetype(e) != AE_IFLNK) a.mode = archive_entry_perm(e) & 07777;
    a.uid = static_cast<uint32_t>(archive_entry_uid(e));
    a.gid = static_cast<uint32_t>(archive_entry_gid(e));
    const Time mtime{archive_entry_mtime(e), static_cast<uint32_t>(archive_entry_mtime_nsec(e))};
    const Time atime = archive_entry_atime_is_set(e)
                           ? Time{archive_entry_atime(e), static_cast<uint32_t>(archive_entry_atime_nsec(e))}
                           : mtime;
    if (is_dir) {
      dir_times_[ino] = {atime, mtime};
    } else {
      a.atime = atime;
      a.mtime = mtime;
    }
    if (auto r = fs_.setattr(ino, a); !r) fail_image(path, r.error());
  }

  Filesystem& fs_;
  const std::string image_, name_;
  const bool force_, verbose_;
  Ino root_ = 0;
  std::string root_path_;
  bool failed_ = false;
  bool stop_ = false;
  std::map<std::string, Ino> dirs_;                   // image path -> directory made or met
  std::map<Ino, std::pair<Time, Time>> dir_times_;  // atime, mtime
};

}  // namespace

std::string archive_error(archive* a) {
  const char* why = archive_error_string(a);
  return why ? why : "the archive library gave no reason";
}

int put_archive(Filesystem& fs, const std::string& image, const std::string& archive_name, const std::string& path,
                bool force, bool verbose) {
  TarImporter t(fs, image, archive_name, force, verbose);
  return t.run(path, [&](archive* a) {
    const char* file = archive_name == "-" ? nullptr : archive_name.c_str();  // null: standard input
    return archive_read_open_filename(a, file, 1 << 20);
  });
}

int put_archive_bytes(Filesystem& fs, const std::string& image, std::span<const std::byte> archive_bytes,
                      const std::string& path) {
  TarImporter t(fs, image, "(archive in memory)", /*force=*/true, /*verbose=*/false);
  return t.run(path, [&](archive* a) {
    return archive_read_open_memory(a, archive_bytes.data(), archive_bytes.size());
  });
}

}  // namespace uext::cli
