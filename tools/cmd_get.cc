// uext get: copy a file or a tree out of the image, keeping what `cp -a`
// keeps: modes, owners, times, symlinks, hard links, holes, xattrs, special files.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <unordered_set>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "common.h"

namespace uext::cli {
namespace {

struct GetOptions {
  ImageOptions image;
  std::string path;
  std::string dest;
  bool verbose = false;
  bool force = false;
  bool tar = false;  // DEST is an archive to write
};

constexpr size_t kGetChunk = 8u << 20;
constexpr uint32_t kInlineDataFlag = 0x10000000;  // EXT4_INLINE_DATA_FL

// An errno from the host that means "this host will not store that", which
// cp -a also treats as a warning.
bool unsupported_on_host(int e) { return e == EPERM || e == ENOTSUP || e == EOPNOTSUPP; }

class Copier {
 public:
  Copier(Filesystem& fs, const GetOptions& o) : fs_(fs), o_(o), root_(geteuid() == 0) {}

  int run() {
    std::string path = absolute_image_path(o_.path);
    // cp -a does not follow a symlink named on the command line either.
    auto ino = fs_.resolve(path, /*follow_last=*/false);
    if (!ino) {
      report_error(o_.image.image, path, ino.error());
      return kExitFailure;
    }
    std::string target = o_.dest;
    struct stat dst_st;
    if (::stat(o_.dest.c_str(), &dst_st) == 0 && S_ISDIR(dst_st.st_mode)) {
      std::string base = image_basename(path);
      // The root (or "dir/.") fills DEST itself, as `cp -a src/. DEST` would.
      if (base != "/" && base != "." && base != "..") target = join_host_path(o_.dest, base);
    }
    copy(*ino, path, target, /*top=*/true);
    return failed_ ? kExitFailure : kExitOk;
  }

 private:
  void fail_image(const std::string& src, const Error& err) {
    report_error(o_.image.image, src, err);
    failed_ = true;
  }
  void fail_host(const std::string& dst, int err) {
    report({dst, describe_errno(err)});
    failed_ = true;
  }
  void fail_host(const std::string& dst, std::string_view what, int err) {
    report({dst, what, describe_errno(err)});
    failed_ = true;
  }

  // What is already at dst decides whether we may create there.
  enum class Slot { kFree, kMergeDir, kBlocked };
  Slot prepare_slot(const std::string& dst, bool is_dir, bool top) {
    struct stat st;
    // Inside the tree a host symlink must never be followed; only DEST
    // itself (the user's own choice) may be a link to a directory.
    int r = top && is_dir ? ::stat(dst.c_str(), &st) : ::lstat(dst.c_str(), &st);
    if (r != 0) {
      if (errno == ENOENT) return Slot::kFree;
      fail_host(dst, errno);
      return Slot::kBlocked;
    }
    if (is_dir) {
      if (S_ISDIR(st.st_mode)) return Slot::kMergeDir;
      report({dst, "cannot overwrite non-directory with directory"});
      failed_ = true;
      return Slot::kBlocked;
    }
    if (S_ISDIR(st.st_mode)) {
      report({dst, "cannot overwrite directory with non-directory"});
      failed_ = true;
      return Slot::kBlocked;
    }
    if (!o_.force) {
      report({dst, "File exists (use -f to overwrite)"});
      failed_ = true;
      return Slot::kBlocked;
    }
    if (::unlink(dst.c_str()) != 0) {
      fail_host(dst, "cannot remove", errno);
      return Slot::kBlocked;
    }
    return Slot::kFree;
  }

  void copy(Ino ino, const std::string& src, const std::string& dst, bool top) {
    auto st_r = fs_.stat(ino);
    if (!st_r) return fail_image(src, st_r.error());
    const Stat& st = *st_r;
    uint32_t type = st.mode & S_IFMT;
    bool is_dir = type == S_IFDIR;

    Slot slot = prepare_slot(dst, is_dir, top);
    if (slot == Slot::kBlocked) return;

    if (!is_dir && st.nlink > 1) {
      auto it = links_.find(ino);
      if (it != links_.end()) {
        if (::link(it->second.c_str(), dst.c_str()) != 0) return fail_host(dst, "cannot link", errno);
        verbose(src, dst);
        return;
      }
    }

    bool made = false;
    switch (type) {
      case S_IFREG: made = copy_regular(ino, st, src, dst); break;
      case S_IFDIR: copy_directory(ino, st, src, dst, slot == Slot::kMergeDir); return;
      case S_IFLNK: made = copy_symlink(ino, src, dst); break;
      case S_IFCHR:
      case S_IFBLK:
        if (!root_) {
          warn({dst, "skipping device node (creating one needs root)"});
          return;
        }
        made = make_node(src, dst, type, makedev(st.rdev_major, st.rdev_minor));
        break;
      case S_IFIFO:
      case S_IFSOCK: made = make_node(src, dst, type, 0); break;
      default:
        report({o_.image.image, src, fmt::format("unknown file type (mode 0{:o})", st.mode)});
        failed_ = true;
        return;
    }
    if (!made) return;
    if (type != S_IFREG) set_metadata_by_path(ino, st, src, dst);
    if (st.nlink > 1) links_.emplace(ino, dst);
  }

  void verbose(const std::string& src, const std::string& dst) {
    if (o_.verbose) fmt::print("{} -> {}\n", src, dst);
  }

  bool make_node(const std::string& src, const std::string& dst, uint32_t type, dev_t dev) {
    if (::mknod(dst.c_str(), type | 0600, dev) != 0) {
      // Root without CAP_MKNOD (containers) is treated like a non-root user.
      if (errno == EPERM && (type == S_IFCHR || type == S_IFBLK)) {
        warn({dst, "skipping device node", describe_errno(errno)});
      } else {
        fail_host(dst, "cannot create", errno);
      }
      return false;
    }
    verbose(src, dst);
    return true;
  }

  bool copy_symlink(Ino ino, const std::string& src, const std::string& dst) {
    auto target = fs_.readlink(ino);
    if (!target) {
      fail_image(src, target.error());
      return false;
    }
    if (target->find('\0') != std::string::npos) {
      report({o_.image.image, src, "symlink target contains a NUL byte"});
      failed_ = true;
      return false;
    }
    if (::symlink(target->c_str(), dst.c_str()) != 0) {
      fail_host(dst, "cannot create symlink", errno);
      return false;
    }
    verbose(src, dst);
    return true;
  }

  std::byte* buffer() {
    if (!buf_) buf_ = std::make_unique_for_overwrite<std::byte[]>(kGetChunk);
    return buf_.get();
  }

  // The byte ranges worth reading: written extents clipped to the size.
  // Everything else stays a hole in the copy.
  bool data_ranges(Ino ino, const Stat& st, const std::string& src,
                   std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
    if (st.size == 0) return true;
    if (st.flags & kInlineDataFlag) {
      ranges.emplace_back(0, st.size);  // data lives in the inode; no extents
      return true;
    }
    auto ext = fs_.extents(ino);
    if (!ext) {
      fail_image(src, ext.error());
      return false;
    }
    for (const auto& e : *ext) {
      if (e.unwritten || e.length == 0 || e.logical >= st.size) continue;
      uint64_t end = std::min(st.size, e.logical + std::min(e.length, st.size - e.logical));
      // Merge runs that touch, so a fragmented file is still read in big chunks.
      if (!ranges.empty() && ranges.back().second == e.logical) {
        ranges.back().second = end;
      } else {
        ranges.emplace_back(e.logical, end);
      }
    }
    return true;
  }

  bool copy_regular(Ino ino, const Stat& st, const std::string& src, const std::string& dst) {
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    if (!data_ranges(ino, st, src, ranges)) return false;

    int fd = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      fail_host(dst, "cannot create", errno);
      return false;
    }
    bool ok = true;
    std::byte* buf = buffer();
    for (auto [start, end] : ranges) {
      uint64_t off = start;
      while (ok && off < end) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(kGetChunk, end - off));
        auto n = fs_.read(ino, off, std::span<std::byte>(buf, want));
        if (!n) {
          fail_image(src, n.error());
          ok = false;
          break;
        }
        if (*n == 0) break;  // the file ended early; ftruncate fills the rest
        if (!pwrite_all(fd, buf, *n, off)) {
          fail_host(dst, "write error", errno);
          ok = false;
          break;
        }
        off += *n;
      }
      if (!ok) break;
    }
    if (ok && ::ftruncate(fd, static_cast<off_t>(st.size)) != 0) {
      fail_host(dst, "cannot set size", errno);
      ok = false;
    }
    if (ok) {
      verbose(src, dst);
      set_metadata_by_fd(ino, st, src, dst, fd);
    }
    if (::close(fd) != 0 && ok) {
      fail_host(dst, "write error", errno);
      ok = false;
    }
    return ok;
  }

  static bool pwrite_all(int fd, const std::byte* p, size_t n, uint64_t off) {
    while (n > 0) {
      ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
      if (w < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      p += w;
      n -= static_cast<size_t>(w);
      off += static_cast<uint64_t>(w);
    }
    return true;
  }

  static bool valid_name(const std::string& name) {
    return !name.empty() && name != "." && name != ".." &&
           name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
  }

  void copy_directory(Ino ino, const Stat& st, const std::string& src, const std::string& dst,
                      bool exists) {
    // Directories cannot be hard linked, so meeting one twice means the
    // image's tree has a loop; stop instead of recursing forever.
    if (!dirs_seen_.insert(ino).second) {
      report({o_.image.image, src, fmt::format("directory inode {} appears twice in the tree", ino)});
      failed_ = true;
      return;
    }
    if (!exists && ::mkdir(dst.c_str(), 0700) != 0) return fail_host(dst, "cannot create directory", errno);
    verbose(src, dst);

    auto entries = fs_.list_directory(ino);
    if (!entries) {
      fail_image(src, entries.error());
    } else {
      // Name order makes -v output and error order reproducible.
      std::sort(entries->begin(), entries->end(),
                [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
      for (const auto& e : *entries) {
        if (e.name == "." || e.name == "..") continue;
        if (!valid_name(e.name)) {
          report({o_.image.image, src, "skipping an entry with an invalid name"});
          failed_ = true;
          continue;
        }
        copy(e.ino, join_image_path(src, e.name), join_host_path(dst, e.name), false);
      }
    }
    // After the children: creating them changed this directory's mtime.
    set_metadata_by_path(ino, st, src, dst);
  }

  // Copies every xattr; `set` applies one to the host file.
  template <class SetFn>
  void copy_xattrs(Ino ino, const std::string& src, const std::string& dst, SetFn set) {
    auto names = fs_.listxattr(ino);
    if (!names) return fail_image(src, names.error());
    for (const auto& name : *names) {
      // ext4 keeps inline file data under this name; it is not an attribute.
      if (name == "system.data") continue;
      auto value = fs_.getxattr(ino, name);
      if (!value) {
        if (value.error().code() == ENODATA) continue;
        report({o_.image.image, src, name, describe(value.error())});
        failed_ = true;
        continue;
      }
      std::string v = *value;
      if (set(name, v) != 0) {
        int e = errno;
        if (unsupported_on_host(e)) {
          warn({dst, fmt::format("cannot set extended attribute {}", name), describe_errno(e)});
        } else {
          fail_host(dst, fmt::format("cannot set extended attribute {}", name), e);
        }
      }
    }
  }

  static timespec to_timespec(const Time& t) {
    timespec ts;
    ts.tv_sec = static_cast<time_t>(t.sec);
    ts.tv_nsec = std::min<long>(t.nsec, 999999999L);  // a corrupt nsec must not be EINVAL
    return ts;
  }

  void chown_warn(const std::string& dst, int e) {
    // Unmapped ids in a user namespace give EINVAL; cp -a only warns too.
    warn({dst, "cannot set owner", describe_errno(e)});
  }

  void set_metadata_by_fd(Ino ino, const Stat& st, const std::string& src, const std::string& dst,
                          int fd) {
    // Order matters: chown clears setuid bits and file capabilities, so it
    // goes first; xattrs (ACLs, capabilities) next; then the exact mode.
    if (root_ && ::fchown(fd, st.uid, st.gid) != 0) chown_warn(dst, errno);
    copy_xattrs(ino, src, dst, [fd](const std::string& n, const std::string& v) {
      return ::fsetxattr(fd, n.c_str(), v.data(), v.size(), 0);
    });
    if (::fchmod(fd, st.mode & 07777) != 0) fail_host(dst, "cannot set mode", errno);
    timespec ts[2] = {to_timespec(st.atime), to_timespec(st.mtime)};
    if (::futimens(fd, ts) != 0) fail_host(dst, "cannot set times", errno);
  }

  void set_metadata_by_path(Ino ino, const Stat& st, const std::string& src,
                            const std::string& dst) {
    const char* p = dst.c_str();
    bool link = S_ISLNK(st.mode);
    if (root_ && ::lchown(p, st.uid, st.gid) != 0) chown_warn(dst, errno);
    copy_xattrs(ino, src, dst, [p](const std::string& n, const std::string& v) {
      return ::lsetxattr(p, n.c_str(), v.data(), v.size(), 0);
    });
    // A symlink's own mode is meaningless on Linux and cannot be changed.
    if (!link && ::chmod(p, st.mode & 07777) != 0) fail_host(dst, "cannot set mode", errno);
    timespec ts[2] = {to_timespec(st.atime), to_timespec(st.mtime)};
    if (::utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW) != 0) fail_host(dst, "cannot set times", errno);
  }

  Filesystem& fs_;
  const GetOptions& o_;
  bool root_;
  bool failed_ = false;
  std::unique_ptr<std::byte[]> buf_;
  std::unordered_map<Ino, std::string> links_;  // first copy of each multiply-linked inode
  std::unordered_set<Ino> dirs_seen_;
};

int run_get(const GetOptions& o) {
  if (o.tar && o.dest != "-" && !o.force && ::access(o.dest.c_str(), F_OK) == 0) {
    report({o.dest, "File exists (use -f to overwrite)"});
    return kExitFailure;
  }
  auto fs = open_image(o.image);
  if (!fs) return kExitFailure;
  if (o.tar) return get_archive(*fs, o.image.image, o.path, o.dest, o.verbose);
  Copier c(*fs, o);
  return c.run();
}

}  // namespace

Command add_get_command(CLI::App& parent) {
  auto o = std::make_shared<GetOptions>();
  auto* sub = parent.add_subcommand(
      "get", "Copy a file or directory tree out of the image, keeping metadata (like cp -a)");
  add_image_options(sub, o->image);
  sub->add_option("PATH", o->path, "File or directory in the image")->required();
  sub->add_option("DEST", o->dest, "Host path: the copy, or an existing directory to copy into")
      ->required();
  sub->add_flag("-v,--verbose", o->verbose, "Print each path copied");
  sub->add_flag("-f,--force", o->force, "Overwrite existing non-directory files");
  sub->add_flag("--tar", o->tar,
                "DEST is a tar archive to write ('-': standard output; .gz, .xz, .bz2, .zst compress): PATH's "
                "tree with owners, modes, times, links, devices and xattrs, as 'uext put --tar' reads it back");
  return {sub, [o] { return run_get(*o); }};
}

}  // namespace uext::cli
