// The small commands that change an image in place, each named after the
// coreutils command it imitates: mkdir, rm, mv, ln, chmod, chown, truncate.
// Each opens the image read-write, does its work and closes it cleanly.
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <memory>
#include <optional>
#include <unordered_set>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "common.h"

namespace uext::cli {
namespace {

int fail(const std::string& image, const std::string& path, const Error& err) { return fail_with(image, path, err); }

int fail(const std::string& image, const std::string& path, std::string_view why) {
  report({image, path, why});
  return kExitFailure;
}

int usage(const std::string& cmd, const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "uext %s: %s\nTry 'uext %s --help' for more information.\n", cmd.c_str(),
               message.c_str(), cmd.c_str());
  return kExitUsage;
}

uint32_t process_umask() {
  mode_t m = ::umask(0);
  ::umask(m);
  return static_cast<uint32_t>(m) & 0777u;
}

// New inodes belong to whoever runs the command, as the kernel would make
// them; `umask` applies where the directory has no default ACL (the
// library decides, as ext4 does).
Owner caller(uint32_t umask = 0) {
  return Owner{static_cast<uint32_t>(::geteuid()), static_cast<uint32_t>(::getegid()), umask};
}

// Permission bits for new files: `bits` less the process umask, as creat(2) does.
uint32_t less_umask(uint32_t bits) { return bits & ~process_umask(); }

std::optional<uint32_t> parse_octal_mode(const std::string& text) {
  if (text.empty() || text.size() > 5) return std::nullopt;
  uint32_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '7') return std::nullopt;
    v = v * 8 + static_cast<uint32_t>(c - '0');
  }
  if (v > 07777) return std::nullopt;
  return v;
}

// "123", "4K", "10M", "1G", "2T" (powers of 1024; "KiB" etc. too).
std::optional<uint64_t> parse_size(const std::string& text) {
  size_t i = 0;
  uint64_t n = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    uint64_t d = static_cast<uint64_t>(text[i] - '0');
    if (n > (UINT64_MAX - d) / 10) return std::nullopt;
    n = n * 10 + d;
    ++i;
  }
  if (i == 0) return std::nullopt;
  std::string suffix = text.substr(i);
  unsigned shift = 0;
  if (!suffix.empty()) {
    char u = static_cast<char>(std::toupper(static_cast<unsigned char>(suffix[0])));
    std::string rest = suffix.substr(1);
    if (rest != "" && rest != "iB" && rest != "B") return std::nullopt;
    switch (u) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      default: return std::nullopt;
    }
  }
  if (shift && n > (UINT64_MAX >> shift)) return std::nullopt;
  return n << shift;
}

// "UID", "UID:GID", "UID:", ":GID" (numbers only: the image has no passwd).
bool parse_owner(const std::string& text, std::optional<uint32_t>& uid, std::optional<uint32_t>& gid) {
  auto number = [](const std::string& s) -> std::optional<uint32_t> {
    if (s.empty() || s.size() > 10) return std::nullopt;
    uint64_t v = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return std::nullopt;
      v = v * 10 + static_cast<uint64_t>(c - '0');
    }
    if (v > UINT32_MAX) return std::nullopt;
    return static_cast<uint32_t>(v);
  };
  auto colon = text.find(':');
  std::string u = text.substr(0, colon);
  std::string g = colon == std::string::npos ? "" : text.substr(colon + 1);
  if (!u.empty()) {
    uid = number(u);
    if (!uid) return false;
  }
  if (!g.empty()) {
    gid = number(g);
    if (!gid) return false;
  }
  return uid || gid;
}

// ---------------------------------------------------------------- mkdir

struct MkdirOptions {
  std::string image;
  std::vector<std::string> paths;
  bool parents = false;
  std::string mode;
};

// `mode` as -m gave it, or nullopt: 0777 less the umask (or as a default ACL masks it).
int mkdir_one(Filesystem& fs, const std::string& image, const std::string& path, std::optional<uint32_t> explicit_mode,
              bool parents) {
  const uint32_t mode = explicit_mode.value_or(0777);
  const Owner owner = caller(explicit_mode ? 0 : process_umask());
  std::string full = trim_trailing_slashes(absolute_image_path(path));
  if (parents) {
    // Each missing ancestor in turn; existing directories (or links to
    // them) are fine, as with mkdir -p.
    size_t pos = 0;
    while (pos != std::string::npos) {
      pos = full.find('/', pos + 1);
      std::string prefix = full.substr(0, pos);
      if (prefix == "/" || prefix.empty()) continue;
      auto ino = fs.resolve(prefix, true);
      if (ino) {
        auto st = fs.stat(*ino);
        if (!st) return fail(image, prefix, st.error());
        if (!S_ISDIR(st->mode)) return fail(image, prefix, Error(ENOTDIR, ""));
        continue;
      }
      if (ino.error().code() != ENOENT) return fail(image, prefix, ino.error());
      auto pn = resolve_parent(fs, prefix);
      if (!pn) return fail(image, prefix, pn.error());
      if (pn->name == "." || pn->name == "..") continue;
      // Ancestors get u+wx whatever -m says, as mkdir -p gives them.
      const bool last = pos == std::string::npos;
      uint32_t m = last ? mode : (less_umask(0777) | 0300);
      auto made = fs.mkdir(pn->dir, pn->name, m, last ? owner : caller());
      if (!made) return fail(image, prefix, made.error());
      // The library takes the mode as given; apply exactly what was asked
      // (mkdir(2) would drop setuid/setgid bits of -m).
      if ((!last || explicit_mode) && (made->mode & 07777) != m) {
        SetAttr a;
        a.mode = m;
        if (auto r = fs.setattr(made->ino, a); !r) return fail(image, prefix, r.error());
      }
    }
    return kExitOk;
  }
  if (full == "/") return fail(image, full, Error(EEXIST, ""));
  auto pn = resolve_parent(fs, full);
  if (!pn) return fail(image, full, pn.error());
  auto made = fs.mkdir(pn->dir, pn->name, mode, owner);
  if (!made) return fail(image, full, made.error());
  return kExitOk;
}

int run_mkdir(const MkdirOptions& o) {
  std::optional<uint32_t> mode;
  if (!o.mode.empty()) {
    auto m = parse_octal_mode(o.mode);
    if (!m) return usage("mkdir", fmt::format("invalid mode '{}' (give octal bits, e.g. 755)", o.mode));
    mode = *m;
  }
  auto fs = open_image_rw(o.image);
  if (!fs) return kExitFailure;
  int rc = kExitOk;
  for (const auto& p : o.paths) {
    if (mkdir_one(*fs, o.image, p, mode, o.parents) != kExitOk) rc = kExitFailure;
  }
  return close_image(std::move(fs), o.image, rc);
}

// ---------------------------------------------------------------- rm

struct RmOptions {
  std::string image;
  std::vector<std::string> paths;
  bool recursive = false;
  bool force = false;
};

class Remover {
 public:
  Remover(Filesystem& fs, const std::string& image) : fs_(fs), image_(image) {}

  // Empties directory `dir` (at `path`), depth first; false after a failure.
  bool empty_dir(Ino dir, const std::string& path) {
    if (!seen_.insert(dir).second) {
      report({image_, path, fmt::format("directory inode {} appears twice in the tree", dir)});
      return false;
    }
    auto entries = fs_.list_directory(dir);
    if (!entries) return fail(image_, path, entries.error()), false;
    bool ok = true;
    for (const auto& e : *entries) {
      if (e.name == "." || e.name == "..") continue;
      std::string child = join_image_path(path, e.name);
      uint32_t type = e.type;
      if (type == 0) {  // no file types in entries (old ext2): ask the inode
        auto st = fs_.stat(e.ino);
        if (!st) {
          fail(image_, child, st.error());
          ok = false;
          continue;
        }
        type = st->mode & S_IFMT;
      }
      if (type == S_IFDIR) {
        if (!empty_dir(e.ino, child)) {
          ok = false;
          continue;
        }
        if (auto r = fs_.rmdir(dir, e.name); !r) ok = (fail(image_, child, r.error()), false);
      } else if (auto r = fs_.unlink(dir, e.name); !r) {
        ok = (fail(image_, child, r.error()), false);
      }
    }
    return ok;
  }

 private:
  Filesystem& fs_;
  const std::string& image_;
  std::unordered_set<Ino> seen_;
};

int rm_one(Filesystem& fs, const RmOptions& o, const std::string& path) {
  std::string full = trim_trailing_slashes(absolute_image_path(path));
  if (full == "/") return fail(o.image, full, "refusing to remove the root directory");
  auto pn = resolve_parent(fs, full);
  if (!pn) {
    if (o.force && pn.error().code() == ENOENT) return kExitOk;
    if (pn.error().code() == EINVAL) return fail(o.image, full, "refusing to remove '.' or '..'");
    return fail(o.image, full, pn.error());
  }
  auto ino = fs.lookup(pn->dir, pn->name);
  if (!ino) {
    if (o.force && ino.error().code() == ENOENT) return kExitOk;
    return fail(o.image, full, ino.error());
  }
  auto st = fs.stat(*ino);
  if (!st) return fail(o.image, full, st.error());
  if (!S_ISDIR(st->mode)) {
    if (auto r = fs.unlink(pn->dir, pn->name); !r) return fail(o.image, full, r.error());
    return kExitOk;
  }
  // Without -r a directory goes only when empty (as rm -d does).
  if (o.recursive) {
    Remover rem(fs, o.image);
    if (!rem.empty_dir(*ino, full)) return kExitFailure;
  }
  if (auto r = fs.rmdir(pn->dir, pn->name); !r) {
    if (r.error().code() == ENOTEMPTY && !o.recursive) {
      return fail(o.image, full, "Directory not empty (use -r to remove its contents)");
    }
    return fail(o.image, full, r.error());
  }
  return kExitOk;
}

int run_rm(const RmOptions& o) {
  auto fs = open_image_rw(o.image);
  if (!fs) return kExitFailure;
  int rc = kExitOk;
  for (const auto& p : o.paths) {
    if (rm_one(*fs, o, p) != kExitOk) rc = kExitFailure;
  }
  return close_image(std::move(fs), o.image, rc);
}

// ---------------------------------------------------------------- mv

struct MvOptions {
  std::string image;
  std::string from, to;
  bool no_clobber = false;
  bool exchange = false;
  bool no_target_dir = false;
};

int run_mv(const MvOptions& o) {
  if (o.no_clobber && o.exchange) return usage("mv", "--no-clobber and --exchange exclude each other");
  auto fs = open_image_rw(o.image);
  if (!fs) return kExitFailure;
  auto work = [&]() -> int {
    auto from = resolve_parent(*fs, o.from);
    if (!from) return fail(o.image, absolute_image_path(o.from), from.error());
    if (auto src = fs->lookup(from->dir, from->name); !src) return fail(o.image, from->path, src.error());
    std::string to_path = trim_trailing_slashes(absolute_image_path(o.to));
    // TO naming an existing directory means "into it", as with mv(1);
    // an exchange always swaps the two names given.
    if (!o.exchange && !o.no_target_dir) {
      if (auto t = fs->resolve(to_path, true)) {
        auto st = fs->stat(*t);
        if (!st) return fail(o.image, to_path, st.error());
        if (S_ISDIR(st->mode)) to_path = join_image_path(to_path, from->name);
      }
    }
    auto to = resolve_parent(*fs, to_path);
    if (!to) return fail(o.image, to_path, to.error());
    unsigned flags = o.no_clobber ? kRenameNoReplace : o.exchange ? kRenameExchange : 0;
    if (auto r = fs->rename(from->dir, from->name, to->dir, to->name, flags); !r) {
      return fail(o.image, fmt::format("cannot move {} to {}", from->path, to->path), r.error());
    }
    return kExitOk;
  };
  int rc = work();
  return close_image(std::move(fs), o.image, rc);
}

// ---------------------------------------------------------------- ln

struct LnOptions {
  std::string image;
  std::string target, link;
  bool symbolic = false;
  bool force = false;
};

int run_ln(const LnOptions& o) {
  auto fs = open_image_rw(o.image);
  if (!fs) return kExitFailure;
  auto work = [&]() -> int {
    std::optional<Ino> target;
    if (!o.symbolic) {
      // A hard link to the target itself, not what a symlink points at (ln -P).
      auto t = fs->resolve(absolute_image_path(o.target), false);
      if (!t) return fail(o.image, absolute_image_path(o.target), t.error());
      target = *t;
    }
    std::string link_path = trim_trailing_slashes(absolute_image_path(o.link));
    if (auto d = fs->resolve(link_path, true)) {
      auto st = fs->stat(*d);
      if (!st) return fail(o.image, link_path, st.error());
      // An existing directory: the link goes inside it, named as the target.
      if (S_ISDIR(st->mode)) link_path = join_image_path(link_path, image_basename(o.target));
    }
    auto pn = resolve_parent(*fs, link_path);
    if (!pn) return fail(o.image, link_path, pn.error());
    if (o.force) {
      if (auto old = fs->lookup(pn->dir, pn->name)) {
        if (target && *old == *target) return fail(o.image, link_path, "is the same file as the target");
        auto st = fs->stat(*old);
        if (!st) return fail(o.image, link_path, st.error());
        if (S_ISDIR(st->mode)) return fail(o.image, link_path, "cannot overwrite a directory");
        if (auto r = fs->unlink(pn->dir, pn->name); !r) return fail(o.image, link_path, r.error());
      }
    }
    Result<Stat> made = o.symbolic ? fs->symlink(pn->dir, pn->name, o.target, caller())
                                   : fs->link(*target, pn->dir, pn->name);
    if (!made) {
      std::string what = fmt::format("cannot {} {} to {}", o.symbolic ? "make symbolic link" : "link", link_path,
                                     o.symbolic ? o.target : absolute_image_path(o.target));
      return fail(o.image, what, made.error());
    }
    return kExitOk;
  };
  int rc = work();
  return close_image(std::move(fs), o.image, rc);
}

// ---------------------------------------------------------------- chmod, chown

struct AttrOptions {
  std::string image;
  std::string value;  // the mode or the owner
  std::vector<std::string> paths;
  bool no_dereference = false;
};

int set_attr_on_paths(const AttrOptions& o, const SetAttr& attr, bool follow) {
  auto fs = open_image_rw(o.image);
  if (!fs) return kExitFailure;
  int rc = kExitOk;
  for (const auto& p : o.paths) {
    std::string path = absolute_image_path(p);
    auto ino = fs->resolve(path, follow);
    if (!ino) {
      rc = fail(o.image, path, ino.error());
      continue;
    }
    if (auto r = fs->setattr(*ino, attr); !r) rc = fail(o.image, path, r.error());
  }
  return close_image(std::move(fs), o.image, rc);
}

int run_chmod(const AttrOptions& o) {
  auto m = parse_octal_mode(o.value);
  if (!m) return usage("chmod", fmt::format("invalid mode '{}' (give octal bits, e.g. 644)", o.value));
  SetAttr a;
  a.mode = *m;
  return set_attr_on_paths(o, a, /*follow=*/true);
}

int run_chown(const AttrOptions& o) {
  SetAttr a;
  if (!parse_owner(o.value, a.uid, a.gid)) {
    return usage("chown", fmt::format("invalid owner '{}' (give UID, UID:GID or :GID, numbers)", o.value));
  }
  return set_attr_on_paths(o, a, /*follow=*/!o.no_dereference);
}

// ---------------------------------------------------------------- truncate

struct TruncateOptions {
  std::string image;
  std::string size;
  std::vector<std::string> paths;
  bool no_create = false;
};

int run_truncate(const TruncateOptions& o) {
  auto size = parse_size(o.size);
  if (!size) return usage("truncate", fmt::format("invalid size '{}' (bytes, or with K, M, G, T)", o.size));
  auto fs = open_image_rw(o.image);
  if (!fs) return kExitFailure;
  int rc = kExitOk;
  for (const auto& p : o.paths) {
    std::string path = absolute_image_path(p);
    auto ino = fs->resolve(path, true);
    if (!ino && ino.error().code() == ENOENT && !o.no_create) {
      // Like truncate(1): a missing file is created, then sized.
      auto pn = resolve_parent(*fs, path);
      if (!pn) {
        rc = fail(o.image, path, pn.error());
        continue;
      }
      auto made = fs->create(pn->dir, pn->name, 0666, caller(process_umask()));
      if (!made) {
        rc = fail(o.image, path, made.error());
        continue;
      }
      ino = made->ino;
    }
    if (!ino) {
      if (!(o.no_create && ino.error().code() == ENOENT)) rc = fail(o.image, path, ino.error());
      continue;
    }
    if (auto r = fs->truncate(*ino, *size); !r) rc = fail(o.image, path, r.error());
  }
  return close_image(std::move(fs), o.image, rc);
}

}  // namespace

std::vector<Command> add_edit_commands(CLI::App& parent) {
  std::vector<Command> out;
  {
    auto o = std::make_shared<MkdirOptions>();
    auto* sub = parent.add_subcommand("mkdir", "Create directories in the image (like mkdir)");
    add_image_rw_option(sub, o->image);
    sub->add_option("PATH", o->paths, "Directories to create")->required();
    sub->add_flag("-p,--parents", o->parents, "Make missing parents; no error if the directory exists");
    sub->add_option("-m,--mode", o->mode, "Permission bits in octal (default 0777 less the umask)");
    out.push_back({sub, [o] { return run_mkdir(*o); }});
  }
  {
    auto o = std::make_shared<RmOptions>();
    auto* sub = parent.add_subcommand(
        "rm", "Remove files from the image (like rm; an empty directory too, a full one with -r)");
    add_image_rw_option(sub, o->image);
    sub->add_option("PATH", o->paths, "Files or directories to remove")->required();
    sub->add_flag("-r,-R,--recursive", o->recursive, "Remove directories and their contents");
    sub->add_flag("-f,--force", o->force, "Ignore missing files");
    out.push_back({sub, [o] { return run_rm(*o); }});
  }
  {
    auto o = std::make_shared<MvOptions>();
    auto* sub = parent.add_subcommand("mv", "Rename or move a file within the image (like mv)");
    add_image_rw_option(sub, o->image);
    sub->add_option("FROM", o->from, "Existing path")->required();
    sub->add_option("TO", o->to, "New path, or an existing directory to move into")->required();
    sub->add_flag("-n,--no-clobber", o->no_clobber, "Fail instead of replacing an existing TO");
    sub->add_flag("--exchange", o->exchange, "Swap FROM and TO, which must both exist");
    sub->add_flag("-T,--no-target-directory", o->no_target_dir,
                  "Treat TO as a name even when it is a directory (replacing it if empty)");
    out.push_back({sub, [o] { return run_mv(*o); }});
  }
  {
    auto o = std::make_shared<LnOptions>();
    auto* sub = parent.add_subcommand("ln", "Make a hard or symbolic link in the image (like ln)");
    add_image_rw_option(sub, o->image);
    sub->add_option("TARGET", o->target, "Existing file (or, with -s, any link text)")->required();
    sub->add_option("LINKPATH", o->link, "The new link, or an existing directory to put it in")->required();
    sub->add_flag("-s,--symbolic", o->symbolic, "Make a symbolic link");
    sub->add_flag("-f,--force", o->force, "Replace an existing LINKPATH");
    out.push_back({sub, [o] { return run_ln(*o); }});
  }
  {
    auto o = std::make_shared<AttrOptions>();
    auto* sub = parent.add_subcommand("chmod", "Change permission bits (like chmod, octal modes only)");
    add_image_rw_option(sub, o->image);
    sub->add_option("MODE", o->value, "Octal mode, e.g. 644 or 4755")->required();
    sub->add_option("PATH", o->paths, "Files to change (symlinks are followed)")->required();
    out.push_back({sub, [o] { return run_chmod(*o); }});
  }
  {
    auto o = std::make_shared<AttrOptions>();
    auto* sub = parent.add_subcommand("chown", "Change owner and group (like chown, numeric ids only)");
    add_image_rw_option(sub, o->image);
    sub->add_option("OWNER", o->value, "UID, UID:GID, UID: or :GID")->required();
    sub->add_option("PATH", o->paths, "Files to change")->required();
    sub->add_flag("--no-dereference", o->no_dereference,
                  "Change a symlink itself, not its target (chown -h; -h is --help here)");
    out.push_back({sub, [o] { return run_chown(*o); }});
  }
  {
    auto o = std::make_shared<TruncateOptions>();
    auto* sub = parent.add_subcommand("truncate", "Set a file's size (like truncate; holes when growing)");
    add_image_rw_option(sub, o->image);
    sub->add_option("SIZE", o->size, "New size in bytes, or with a K, M, G or T suffix (powers of 1024)")
        ->required();
    sub->add_option("PATH", o->paths, "Files (created when missing, unless -c)")->required();
    sub->add_flag("-c,--no-create", o->no_create, "Do not create missing files");
    out.push_back({sub, [o] { return run_truncate(*o); }});
  }
  return out;
}

}  // namespace uext::cli
