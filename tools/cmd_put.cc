// uext put: copy a host file or tree into the image, keeping what `cp -a`
// keeps: modes, owners, times, symlinks, hard links, holes, xattrs and ACLs,
// fifos, sockets and device nodes. The mirror image of `uext get`.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <memory>
#include <utility>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "common.h"

namespace uext::cli {
namespace {

struct PutOptions {
  std::string image;
  std::string source;
  std::string path;
  bool force = false;
  bool verbose = false;
  bool tar = false;  // SOURCE is an archive to unpack
};

// Big writes: each write() is one journal handle and one extent update.
constexpr size_t kPutChunk = 1u << 20;

// Errors after which going on would only repeat the same failure for every
// file left (the image is full, damaged or unwritable).
bool fatal(int e) { return e == ENOSPC || e == EIO || e == EROFS || e == kErrCorrupted || e == kErrBadChecksum; }

Time to_time(const timespec& ts) { return Time{ts.tv_sec, static_cast<uint32_t>(ts.tv_nsec)}; }

// Closes a host fd when it goes out of scope.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

class Putter {
 public:
  Putter(Filesystem& fs, const PutOptions& o) : fs_(fs), o_(o) {}

  int run() {
    struct stat st;
    if (::lstat(o_.source.c_str(), &st) != 0) {
      report({o_.source, describe_errno(errno)});
      return kExitFailure;
    }
    std::string dst = trim_trailing_slashes(absolute_image_path(o_.path));
    auto existing = fs_.resolve(dst, /*follow_last=*/true);
    if (existing) {
      auto est = fs_.stat(*existing);
      if (!est) return fail_image(dst, est.error()), kExitFailure;
      if (S_ISDIR(est->mode)) {
        std::string base = host_basename(o_.source);
        // "SRC/." (or ".") fills PATH itself, as `cp -a SRC/. PATH` does.
        if (base == "." || base == "/") {
          if (!S_ISDIR(st.st_mode)) {
            report({o_.source, "Not a directory"});
            return kExitFailure;
          }
          copy_directory_into(o_.source, st, *existing, dst);
          return failed_ ? kExitFailure : kExitOk;
        }
        if (base == "..") {
          report({o_.source, "cannot name the copy after \"..\"; give PATH a new name"});
          return kExitFailure;
        }
        copy(o_.source, *existing, base, join_image_path(dst, base), /*parent_fresh=*/false);
        return failed_ ? kExitFailure : kExitOk;
      }
    } else if (existing.error().code() != ENOENT) {
      fail_image(dst, existing.error());
      return kExitFailure;
    }
    auto pn = resolve_parent(fs_, dst);
    if (!pn) {
      fail_image(dst, pn.error());
      return kExitFailure;
    }
    copy(o_.source, pn->dir, pn->name, pn->path, /*parent_fresh=*/false);
    return failed_ ? kExitFailure : kExitOk;
  }

 private:
  static std::string host_basename(const std::string& path) {
    std::string p = path;
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    if (p == "/") return "/";
    auto slash = p.rfind('/');
    return slash == std::string::npos ? p : p.substr(slash + 1);
  }

  void fail_image(const std::string& dst, const Error& err) {
    report_error(o_.image, dst, err);
    failed_ = true;
    if (fatal(err.code())) stop_ = true;
  }
  void fail_host(const std::string& src, std::string_view what, int err) {
    report({src, what, describe_errno(err)});
    failed_ = true;
  }
  void verbose(const std::string& src, const std::string& dst) {
    if (o_.verbose) fmt::print("{} -> {}\n", src, dst);
  }

  // make_room, its refusals and failures reported: nullopt when the copy
  // must not go there.
  std::optional<Ino> prepare_slot(Ino parent, const std::string& name, const std::string& dst, bool is_dir) {
    auto slot = make_room(fs_, parent, name, is_dir, o_.force);
    if (slot) return *slot;
    if (slot.error().code() == EEXIST) {
      report({o_.image, dst, slot.error().message()});
      failed_ = true;
    } else {
      fail_image(dst, slot.error());
    }
    return std::nullopt;
  }

  // Copies host `src` to `name` in image directory `parent`. A directory
  // this run made is known to be empty, so its children skip the lookup.
  void copy(const std::string& src, Ino parent, const std::string& name, const std::string& dst,
            bool parent_fresh) {
    if (stop_) return;
    struct stat st;
    if (::lstat(src.c_str(), &st) != 0) return fail_host(src, "cannot stat", errno);
    bool is_dir = S_ISDIR(st.st_mode);
    Ino existing_dir = 0;
    if (!parent_fresh) {
      auto slot = prepare_slot(parent, name, dst, is_dir);
      if (!slot) return;
      existing_dir = *slot;
    }

    if (!is_dir && st.st_nlink > 1) {
      auto it = links_.find({st.st_dev, st.st_ino});
      if (it != links_.end()) {
        auto r = fs_.link(it->second, parent, name);
        if (!r) return fail_image(dst, r.error());
        verbose(src, dst);
        return;
      }
    }

    const Owner owner{st.st_uid, st.st_gid};
    Result<Stat> made = Error(EINVAL, "unreachable");
    switch (st.st_mode & S_IFMT) {
      case S_IFDIR:
        if (existing_dir) return copy_directory_into(src, st, existing_dir, dst);
        made = fs_.mkdir(parent, name, st.st_mode & 07777, owner);
        if (!made) return fail_image(dst, made.error());
        verbose(src, dst);
        copy_children(src, made->ino, dst, /*fresh=*/true);
        finish(src, st, made->ino, dst);
        return;
      case S_IFREG:
        made = fs_.mknod(parent, name, st.st_mode & (S_IFMT | 07777), owner);
        if (!made) return fail_image(dst, made.error());
        if (!copy_data(src, st, made->ino, dst)) return;
        break;
      case S_IFLNK: {
        std::string target(static_cast<size_t>(std::max<off_t>(st.st_size, 0)) + 1, '\0');
        ssize_t n = ::readlink(src.c_str(), target.data(), target.size());
        if (n < 0) return fail_host(src, "cannot read symbolic link", errno);
        target.resize(static_cast<size_t>(n));
        made = fs_.symlink(parent, name, target, owner);
        if (!made) return fail_image(dst, made.error());
        break;
      }
      case S_IFCHR:
      case S_IFBLK:
        made = fs_.mknod(parent, name, st.st_mode & (S_IFMT | 07777), owner, major(st.st_rdev),
                         minor(st.st_rdev));
        if (!made) return fail_image(dst, made.error());
        break;
      case S_IFIFO:
      case S_IFSOCK:
        made = fs_.mknod(parent, name, st.st_mode & (S_IFMT | 07777), owner);
        if (!made) return fail_image(dst, made.error());
        break;
      default:
        report({src, fmt::format("unknown file type (mode 0{:o})", st.st_mode)});
        failed_ = true;
        return;
    }
    verbose(src, dst);
    if (st.st_nlink > 1) links_.emplace(std::pair{st.st_dev, st.st_ino}, made->ino);
    finish(src, st, made->ino, dst);
  }

  // Merges host directory `src` into the existing image directory `ino`.
  void copy_directory_into(const std::string& src, const struct stat& st, Ino ino, const std::string& dst) {
    verbose(src, dst);
    copy_children(src, ino, dst, /*fresh=*/false);
    finish(src, st, ino, dst);
  }

  void copy_children(const std::string& src, Ino dir, const std::string& dst, bool fresh) {
    DIR* d = ::opendir(src.c_str());
    if (!d) return fail_host(src, "cannot open directory", errno);
    std::vector<std::string> names;
    errno = 0;
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(std::move(n));
      errno = 0;
    }
    int read_errno = errno;
    ::closedir(d);
    if (read_errno != 0) fail_host(src, "cannot read directory", read_errno);
    // Name order: reproducible images, -v output and error order.
    std::sort(names.begin(), names.end());
    for (const auto& n : names) {
      if (stop_) return;
      copy(join_host_path(src, n), dir, n, join_image_path(dst, n), fresh);
    }
  }

  std::byte* buffer() {
    if (!buf_) buf_ = std::make_unique_for_overwrite<std::byte[]>(kPutChunk);
    return buf_.get();
  }

  // Writes the host file's data regions only, so holes stay holes; then
  // sets the size, which covers a hole at the end.
  bool copy_data(const std::string& src, const struct stat& st, Ino ino, const std::string& dst) {
    if (st.st_size == 0) return true;
    int fd = ::open(src.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
    if (fd < 0 && errno == EPERM) fd = ::open(src.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      fail_host(src, "cannot open", errno);
      return false;
    }
    Fd guard(fd);
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    std::byte* buf = buffer();
    uint64_t written_end = 0;
    uint64_t pos = 0;
    while (pos < size) {
      off_t data = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) break;  // only a hole is left
        if (errno != EINVAL) {
          fail_host(src, "cannot seek", errno);
          return false;
        }
        data = static_cast<off_t>(pos);  // no SEEK_DATA here: all of it is data
      }
      off_t hole = ::lseek(fd, data, SEEK_HOLE);
      if (hole < 0) hole = static_cast<off_t>(size);
      uint64_t end = std::min<uint64_t>(static_cast<uint64_t>(hole), size);
      uint64_t off = static_cast<uint64_t>(data);
      while (off < end) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(kPutChunk, end - off));
        ssize_t n = ::pread(fd, buf, want, static_cast<off_t>(off));
        if (n < 0) {
          if (errno == EINTR) continue;
          fail_host(src, "read error", errno);
          return false;
        }
        if (n == 0) {  // the file shrank while we copied it
          end = off;
          break;
        }
        auto w = fs_.write(ino, off, std::span<const std::byte>(buf, static_cast<size_t>(n)));
        if (!w) {
          fail_image(dst, w.error());
          return false;
        }
        off += static_cast<uint64_t>(n);
      }
      written_end = std::max(written_end, off);
      if (end <= static_cast<uint64_t>(data)) break;
      pos = end;
    }
    if (written_end < size) {
      if (auto r = fs_.truncate(ino, size); !r) {
        fail_image(dst, r.error());
        return false;
      }
    }
    return true;
  }

  // xattrs (ACLs included), then owner and mode, then the times: last,
  // because every change before it moves mtime or ctime.
  void finish(const std::string& src, const struct stat& st, Ino ino, const std::string& dst) {
    std::set<std::string> copied = copy_xattrs(src, ino, dst);
    // ACLs the new inode inherited from a default ACL in the image that the
    // source does not have go, as cp -a leaves only the source's.
    if (!S_ISLNK(st.st_mode)) {
      for (const char* acl : {"system.posix_acl_access", "system.posix_acl_default"}) {
        if (copied.count(acl) || (!S_ISDIR(st.st_mode) && std::string_view(acl).ends_with("default"))) continue;
        if (auto r = fs_.removexattr(ino, acl); !r && r.error().code() != ENODATA && r.error().code() != EOPNOTSUPP) {
          report({o_.image, dst, fmt::format("cannot remove inherited {}", acl), describe(r.error())});
          failed_ = true;
        }
      }
    }
    SetAttr a;
    if (!S_ISLNK(st.st_mode)) a.mode = st.st_mode & 07777;
    a.uid = st.st_uid;
    a.gid = st.st_gid;
    a.atime = to_time(st.st_atim);
    a.mtime = to_time(st.st_mtim);
    if (auto r = fs_.setattr(ino, a); !r) fail_image(dst, r.error());
  }

  // Returns the names it copied.
  std::set<std::string> copy_xattrs(const std::string& src, Ino ino, const std::string& dst) {
    std::set<std::string> copied;
    const char* p = src.c_str();
    ssize_t len = ::llistxattr(p, nullptr, 0);
    if (len < 0) {
      if (errno != ENOTSUP && errno != EOPNOTSUPP) fail_host(src, "cannot list extended attributes", errno);
      return copied;
    }
    if (len == 0) return copied;
    std::string names(static_cast<size_t>(len), '\0');
    len = ::llistxattr(p, names.data(), names.size());
    if (len < 0) {
      fail_host(src, "cannot list extended attributes", errno);
      return copied;
    }
    names.resize(static_cast<size_t>(len));
    for (size_t i = 0; i < names.size();) {
      std::string name(names.c_str() + i);
      i += name.size() + 1;
      if (name.empty()) continue;
      std::string value;
      ssize_t n = ::lgetxattr(p, name.c_str(), nullptr, 0);
      if (n > 0) {
        value.resize(static_cast<size_t>(n));
        n = ::lgetxattr(p, name.c_str(), value.data(), value.size());
      }
      if (n < 0) {
        if (errno == ENODATA) continue;  // removed meanwhile
        fail_host(src, fmt::format("cannot read extended attribute {}", name), errno);
        continue;
      }
      value.resize(static_cast<size_t>(n));
      if (auto r = fs_.setxattr(ino, name, value); !r) {
        report({o_.image, dst, fmt::format("cannot set extended attribute {}", name), describe(r.error())});
        failed_ = true;
        if (fatal(r.error().code())) stop_ = true;
      } else {
        copied.insert(name);
      }
    }
    return copied;
  }

  Filesystem& fs_;
  const PutOptions& o_;
  bool failed_ = false;
  bool stop_ = false;
  std::unique_ptr<std::byte[]> buf_;
  // Host (device, inode) of each multiply-linked file already copied.
  std::map<std::pair<dev_t, ino_t>, Ino> links_;
};

int run_put(const PutOptions& o) {
  auto fs = open_image_rw(o.image);
  if (!fs) return kExitFailure;
  if (o.tar) {
    const int rc = put_archive(*fs, o.image, o.source, o.path, o.force, o.verbose);
    return close_image(std::move(fs), o.image, rc);
  }
  Putter p(*fs, o);
  int rc = p.run();
  return close_image(std::move(fs), o.image, rc);
}

}  // namespace

int put_tree(Filesystem& fs, const std::string& image, const std::string& source, const std::string& path) {
  PutOptions o;
  o.image = image;
  o.source = source;
  o.path = path;
  Putter p(fs, o);
  return p.run();
}

Command add_put_command(CLI::App& parent) {
  auto o = std::make_shared<PutOptions>();
  auto* sub = parent.add_subcommand(
      "put", "Copy a host file or directory tree into the image, keeping metadata (like cp -a)");
  add_image_rw_option(sub, o->image);
  sub->add_option("SRC", o->source, "Host file or directory")->required();
  sub->add_option("PATH", o->path,
                  "Image path: the copy, or an existing directory to copy into (SRC/. fills it)")
      ->required();
  sub->add_flag("-f,--force", o->force, "Replace existing non-directory files");
  sub->add_flag("-v,--verbose", o->verbose, "Print each path copied");
  sub->add_flag("--tar", o->tar,
                "SRC is a tar archive ('-': standard input; gzip, xz, zstd, bzip2... read as they come) whose entries "
                "are unpacked into PATH, an existing directory: owners, modes, times, links, devices, sparse "
                "members and xattrs as recorded");
  return {sub, [o] { return run_put(*o); }};
}

}  // namespace uext::cli
