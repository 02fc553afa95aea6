#include "common.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

#include <fmt/core.h>

namespace uext::cli {

std::string describe_errno(int code) {
  const char* s = std::strerror(code);
  return s ? std::string(s) : fmt::format("error {}", code);
}

std::string describe(const Error& err) {
  if ((err.code() == kErrCorrupted || err.code() == kErrBadChecksum) && !err.message().empty()) {
    return err.message();
  }
  return describe_errno(err.code());
}

namespace {
void print_parts(std::string_view prefix, std::initializer_list<std::string_view> parts) {
  // stdout may hold buffered listing text; flush it first so interleaving
  // on a shared terminal matches the order things happened.
  std::fflush(stdout);
  std::string line = "uext: ";
  line += prefix;
  bool first = true;
  for (auto p : parts) {
    if (!first) line += ": ";
    line += p;
    first = false;
  }
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);
}
}  // namespace

void report(std::initializer_list<std::string_view> parts) { print_parts("", parts); }

void warn(std::initializer_list<std::string_view> parts) { print_parts("warning: ", parts); }

void report_error(std::string_view context, const Error& err) {
  report({context, describe(err)});
}

void report_error(std::string_view image, std::string_view path, const Error& err) {
  report({image, path, describe(err)});
}

int fail_with(std::string_view image, std::string_view path, const Error& err) {
  report_error(image, path, err);
  return kExitFailure;
}

namespace {
// Prints why `image` could not be opened: the library's message, else the errno.
void report_open_error(const std::string& image, const Error& err) {
  // Why an image cannot be opened is the library's message (a missing
  // file, a feature uext does not support, a bad superblock), not just its
  // errno; it names the image already, which is said once.
  std::string_view why = err.message();
  const std::string prefix = image + ": ";
  if (why.starts_with(prefix)) why.remove_prefix(prefix.size());
  report({image, why.empty() ? describe_errno(err.code()) : std::string(why)});
}
}  // namespace

Result<Ino> make_room(Filesystem& fs, Ino parent, std::string_view name, bool is_dir, bool force) {
  auto ino = fs.lookup(parent, name);
  if (!ino) {
    if (ino.error().code() == ENOENT) return Ino{0};
    return std::move(ino).error();
  }
  UEXT_ASSIGN_OR_RETURN(Stat st, fs.stat(*ino));
  if (is_dir && S_ISDIR(st.mode)) return *ino;
  if (is_dir) return Error(EEXIST, "cannot overwrite non-directory with directory");
  if (S_ISDIR(st.mode)) return Error(EEXIST, "cannot overwrite directory with non-directory");
  if (!force) return Error(EEXIST, "File exists (use -f to overwrite)");
  UEXT_TRY(fs.unlink(parent, name));
  return Ino{0};
}

std::vector<std::string> split_list(std::string_view text, char sep) {
  std::vector<std::string> items;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(sep, pos);
    if (end == std::string_view::npos) end = text.size();
    if (end > pos) items.emplace_back(text.substr(pos, end - pos));
    pos = end + 1;
  }
  return items;
}

uint64_t& image_offset() {
  static uint64_t offset = 0;
  return offset;
}

uint32_t& image_partition() {
  static uint32_t number = 0;
  return number;
}

std::unique_ptr<Filesystem> open_image(const ImageOptions& opts) {
  Options o;
  o.image_offset = image_offset();
  o.image_partition = image_partition();
  o.read_only = true;
  o.verify_checksums = !opts.no_checksums;
  o.replay_read_only = !opts.no_replay;
  auto fs = Filesystem::open(opts.image, o);
  if (!fs) {
    report_open_error(opts.image, fs.error());
    return nullptr;
  }
  const VolumeInfo v = (*fs)->info();
  if (v.replayed_in_memory && v.replayed_transactions > 0) {
    warn({opts.image, fmt::format("the journal needs recovery: {} transactions replayed in memory, the image "
                                    "left as it is (--no-replay shows it without them)",
                                    v.replayed_transactions)});
  } else if (!v.replay_problem.empty()) {
    warn({opts.image, "the journal needs recovery but cannot be replayed (" + v.replay_problem +
                            "): showing the image as it lies"});
  }
  return std::move(fs).value();
}

std::unique_ptr<Filesystem> open_image_rw(const std::string& image, Options options) {
  options.read_only = false;
  options.image_offset = image_offset();
  options.image_partition = image_partition();
  auto fs = Filesystem::open(image, options);
  if (!fs) {
    report_open_error(image, fs.error());
    return nullptr;
  }
  if ((*fs)->info().read_only) {
    // An ro_compat feature uext cannot write: say which, rather than
    // failing later with a bare EROFS on the first change.
    std::string why = (*fs)->info().read_only_reason;
    report({image, "cannot open read-write", why.empty() ? describe_errno(EROFS) : why});
    return nullptr;
  }
  return std::move(fs).value();
}

int close_image(std::unique_ptr<Filesystem> fs, const std::string& image, int rc) {
  if (!fs) return rc;
  Status st = fs->close();
  if (!st) {
    report({image, "cannot close the image cleanly", describe(st.error())});
    return kExitFailure;
  }
  return rc;
}

std::string trim_trailing_slashes(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  return std::string(path);
}

Result<ParentAndName> resolve_parent(Filesystem& fs, std::string_view path) {
  ParentAndName out;
  out.path = trim_trailing_slashes(absolute_image_path(path));
  if (out.path == "/") return Error(EINVAL, "the root directory has no parent");
  auto slash = out.path.rfind('/');
  out.name = out.path.substr(slash + 1);
  if (out.name == "." || out.name == "..") {
    return Error(EINVAL, "a path may not end in \".\" or \"..\" here");
  }
  std::string parent = slash == 0 ? "/" : out.path.substr(0, slash);
  auto dir = fs.resolve(parent, true);
  if (!dir) return dir.error();
  out.dir = *dir;
  return out;
}

std::string absolute_image_path(std::string_view path) {
  if (!path.empty() && path.front() == '/') return std::string(path);
  return "/" + std::string(path);
}

std::string join_image_path(std::string_view dir, std::string_view name) {
  std::string out(dir);
  if (out.empty() || out.back() != '/') out += '/';
  out += name;
  return out;
}

std::string join_host_path(const std::string& dir, std::string_view name) {
  std::string out = dir;
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  if (out.empty() || out.back() != '/') out += '/';
  out += name;
  return out;
}

std::string image_basename(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  if (path == "/" || path.empty()) return "/";
  auto slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

std::string mode_string(uint32_t mode) {
  std::string s(10, '-');
  switch (mode & S_IFMT) {
    case S_IFREG: s[0] = '-'; break;
    case S_IFDIR: s[0] = 'd'; break;
    case S_IFLNK: s[0] = 'l'; break;
    case S_IFCHR: s[0] = 'c'; break;
    case S_IFBLK: s[0] = 'b'; break;
    case S_IFIFO: s[0] = 'p'; break;
    case S_IFSOCK: s[0] = 's'; break;
    default: s[0] = '?'; break;
  }
  static constexpr char kRwx[] = "rwxrwxrwx";
  for (int i = 0; i < 9; ++i) {
    if (mode & (0400u >> i)) s[1 + i] = kRwx[i];
  }
  // Special bits replace the execute letter: lowercase when execute is set too.
  if (mode & S_ISUID) s[3] = (mode & S_IXUSR) ? 's' : 'S';
  if (mode & S_ISGID) s[6] = (mode & S_IXGRP) ? 's' : 'S';
  if (mode & S_ISVTX) s[9] = (mode & S_IXOTH) ? 't' : 'T';
  return s;
}

std::string file_type_name(uint32_t mode, uint64_t size) {
  switch (mode & S_IFMT) {
    case S_IFREG: return size == 0 ? "regular empty file" : "regular file";
    case S_IFDIR: return "directory";
    case S_IFLNK: return "symbolic link";
    case S_IFCHR: return "character special file";
    case S_IFBLK: return "block special file";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "socket";
    default: return "weird file";
  }
}

namespace {
bool utc_tm(int64_t sec, std::tm* out) {
  time_t t = static_cast<time_t>(sec);
  return gmtime_r(&t, out) != nullptr;
}
}  // namespace

std::string format_minutes_utc(int64_t sec) {
  std::tm tm{};
  if (!utc_tm(sec, &tm)) return fmt::format("{}", sec);
  return fmt::format("{:04}-{:02}-{:02} {:02}:{:02}", tm.tm_year + 1900LL, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min);
}

std::string format_full_utc(const Time& t) {
  std::tm tm{};
  if (!utc_tm(t.sec, &tm)) return fmt::format("{}.{:09}", t.sec, t.nsec);
  return fmt::format("{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:09} +0000", tm.tm_year + 1900LL,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, t.nsec);
}

bool write_all(int fd, const void* data, size_t size) {
  auto p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace uext::cli

#include <CLI/CLI.hpp>

namespace uext::cli {

namespace {
void add_offset_option(CLI::App* sub) {
  sub->add_option_function<std::string>(
         "--offset",
         [](const std::string& text) {
           // Bytes, or with a 1024-based K/M/G/T suffix.
           size_t i = 0;
           uint64_t n = 0;
           while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
             const auto d = static_cast<uint64_t>(text[i] - '0');
             if (n > (UINT64_MAX - d) / 10) throw CLI::ValidationError("--offset", "'" + text + "' is too large");
             n = n * 10 + d;
             ++i;
           }
           const std::string suffix = text.substr(i);
           unsigned shift = 0;
           if (suffix == "K" || suffix == "k") shift = 10;
           else if (suffix == "M" || suffix == "m") shift = 20;
           else if (suffix == "G" || suffix == "g") shift = 30;
           else if (suffix == "T" || suffix == "t") shift = 40;
           else if (!suffix.empty() || i == 0) {
             throw CLI::ValidationError("--offset", "'" + text + "' is not a byte count (digits, then K, M, G or T)");
           }
           if (shift && n > (UINT64_MAX >> shift)) throw CLI::ValidationError("--offset", "'" + text + "' is too large");
           image_offset() = n << shift;
         },
         "Where the filesystem starts in IMG, in bytes (K, M, G, T: 1024-based): a partition of a disk image")
      ->type_name("BYTES");
  sub->add_option_function<uint32_t>(
         "--partition", [](const uint32_t& n) { image_partition() = n; },
         "The filesystem is partition N of IMG's MBR or GPT (its offset and length from the table)")
      ->type_name("N")
      ->check(CLI::Range(1u, 256u));
}
}  // namespace

void add_image_options(CLI::App* sub, ImageOptions& opts, bool replay_flag) {
  sub->add_option("IMG", opts.image, "Image file or block device holding the filesystem")
      ->required();
  add_offset_option(sub);
  sub->add_flag("--no-checksums", opts.no_checksums,
                "Do not verify metadata checksums (to salvage data from a damaged image)");
  if (replay_flag) {
    sub->add_flag("--no-replay", opts.no_replay,
                  "Show the image as it lies on disk, without replaying in memory a journal that needs recovery");
  }
}

void add_image_rw_option(CLI::App* sub, std::string& image) {
  sub->add_option("IMG", image, "Image file or block device holding the filesystem (opened read-write)")
      ->required();
  add_offset_option(sub);
}

}  // namespace uext::cli
