// uext ls: list a directory in the image, like coreutils ls in the C locale.
#include <sys/stat.h>

#include <algorithm>
#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "common.h"

namespace uext::cli {
namespace {

struct LsOptions {
  ImageOptions image;
  std::string path = "/";
  bool long_format = false;
  bool all = false;
  bool inode = false;
};

struct Row {
  Ino ino = 0;
  std::string name;
  // Long format only:
  bool have_stat = false;
  Stat st;
  std::string target;  // symlink target
};

std::string size_column(const Row& r) {
  uint32_t type = r.st.mode & S_IFMT;
  if (type == S_IFCHR || type == S_IFBLK) return fmt::format("{}, {}", r.st.rdev_major, r.st.rdev_minor);
  return fmt::format("{}", r.st.size);
}

void print_rows(const LsOptions& o, const std::vector<Row>& rows) {
  // ls aligns every column to its widest value.
  size_t w_ino = 0, w_nlink = 0, w_uid = 0, w_gid = 0, w_size = 0;
  for (const auto& r : rows) {
    w_ino = std::max(w_ino, fmt::formatted_size("{}", r.ino));
    if (!o.long_format || !r.have_stat) continue;
    w_nlink = std::max(w_nlink, fmt::formatted_size("{}", r.st.nlink));
    w_uid = std::max(w_uid, fmt::formatted_size("{}", r.st.uid));
    w_gid = std::max(w_gid, fmt::formatted_size("{}", r.st.gid));
    w_size = std::max(w_size, size_column(r).size());
  }
  std::string out;
  for (const auto& r : rows) {
    if (o.inode) out += fmt::format("{:>{}} ", r.ino, w_ino);
    if (o.long_format) {
      if (r.have_stat) {
        out += fmt::format("{} {:>{}} {:>{}} {:>{}} {:>{}} {} ", mode_string(r.st.mode), r.st.nlink,
                           w_nlink, r.st.uid, w_uid, r.st.gid, w_gid, size_column(r), w_size,
                           format_minutes_utc(r.st.mtime.sec));
      } else {
        // Like ls on an entry it cannot stat: placeholders, name still shown.
        out += fmt::format("?????????? {:>{}} {:>{}} {:>{}} {:>{}} {:>16} ", "?", w_nlink, "?", w_uid,
                           "?", w_gid, "?", w_size, "?");
      }
    }
    out += r.name;
    if (o.long_format && r.have_stat && S_ISLNK(r.st.mode)) out += " -> " + r.target;
    out += '\n';
  }
  fmt::print("{}", out);
}

// Fills in stat and link target for -l; reports failures and returns false.
bool fill_long(Filesystem& fs, const LsOptions& o, const std::string& path, Row& r) {
  auto st = fs.stat(r.ino);
  if (!st) {
    report_error(o.image.image, path, st.error());
    return false;
  }
  r.st = *st;
  r.have_stat = true;
  if (S_ISLNK(r.st.mode)) {
    auto t = fs.readlink(r.ino);
    if (!t) {
      report_error(o.image.image, path, t.error());
      return false;
    }
    r.target = std::move(t).value();
  }
  return true;
}

int run_ls(const LsOptions& o) {
  auto fs = open_image(o.image);
  if (!fs) return kExitFailure;
  std::string path = absolute_image_path(o.path);

  // ls follows a symlink operand to a directory except with -l.
  auto ino = fs->resolve(path, /*follow_last=*/!o.long_format);
  if (!ino && !o.long_format && (ino.error().code() == ENOENT || ino.error().code() == ELOOP)) {
    // A dangling link operand is listed as itself.
    auto self = fs->resolve(path, false);
    if (self) ino = self;
  }
  if (!ino) {
    report_error(o.image.image, path, ino.error());
    return kExitFailure;
  }
  auto st = fs->stat(*ino);
  if (!st) {
    report_error(o.image.image, path, st.error());
    return kExitFailure;
  }

  int rc = kExitOk;
  std::vector<Row> rows;
  if (!S_ISDIR(st->mode)) {
    Row r;
    r.ino = *ino;
    r.name = o.path;  // ls echoes a file operand as given
    if (o.long_format && !fill_long(*fs, o, path, r)) rc = kExitFailure;
    rows.push_back(std::move(r));
    print_rows(o, rows);
    return rc;
  }

  auto entries = fs->list_directory(*ino);
  if (!entries) {
    report_error(o.image.image, path, entries.error());
    return kExitFailure;
  }
  for (auto& e : *entries) {
    if (!o.all && !e.name.empty() && e.name.front() == '.') continue;
    Row r;
    r.ino = e.ino;
    r.name = std::move(e.name);
    rows.push_back(std::move(r));
  }
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.name < b.name; });
  if (o.long_format) {
    for (auto& r : rows) {
      if (!fill_long(*fs, o, join_image_path(path, r.name), r)) rc = kExitFailure;
    }
  }
  print_rows(o, rows);
  return rc;
}

}  // namespace

Command add_ls_command(CLI::App& parent) {
  auto o = std::make_shared<LsOptions>();
  auto* sub = parent.add_subcommand("ls", "List a directory in the image (like ls)");
  add_image_options(sub, o->image);
  sub->add_option("PATH", o->path, "Directory or file in the image (default /)");
  sub->add_flag("-l", o->long_format, "Long listing: mode, links, uid, gid, size, mtime (UTC)");
  sub->add_flag("-a", o->all, "Show entries starting with '.', including . and ..");
  sub->add_flag("-i", o->inode, "Print each entry's inode number");
  return {sub, [o] { return run_ls(*o); }};
}

}  // namespace uext::cli
