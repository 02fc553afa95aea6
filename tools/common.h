// Shared helpers for the uext command-line tool: error reporting, opening
// images, path handling and ls/stat-style formatting.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "uext/filesystem.h"
#include "uext/status.h"

struct archive;  // libarchive's handle

namespace uext::cli {

// Exit statuses, as documented in `uext --help`.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Options every image-reading subcommand accepts.
struct ImageOptions {
  std::string image;
  bool no_checksums = false;
  // Show the image as it lies, without replaying in memory a journal that
  // needs recovery (uext info always does: it shows the superblock as on
  // disk, as dumpe2fs -h).
  bool no_replay = false;
};

// The text for an Error: strerror for plain errno errors, the library's
// message for corruption errors (that message names the structure at fault).
std::string describe(const Error& err);
std::string describe_errno(int code);

// Prints "uext: <parts joined by ': '>" on stderr.
void report(std::initializer_list<std::string_view> parts);
void report_error(std::string_view context, const Error& err);
void report_error(std::string_view image, std::string_view path, const Error& err);
// report_error(image, path, err), then kExitFailure: a command's last word.
int fail_with(std::string_view image, std::string_view path, const Error& err);
void warn(std::initializer_list<std::string_view> parts);

// Where the filesystem starts in IMG (--offset, a partition of a disk
// image): one command runs per process, so one value for all of it.
uint64_t& image_offset();
// Or its partition number (--partition), 0 for none.
uint32_t& image_partition();

// Opens the image read-only; reports the failure and returns null on error.
std::unique_ptr<Filesystem> open_image(const ImageOptions& opts);
// Opens the image read-write (replaying its journal if needed), as the
// commands that change an image do; null (reported) on error.
// `options` (read_only aside) for the commands that need more than the defaults.
std::unique_ptr<Filesystem> open_image_rw(const std::string& image, Options options = {});
// Closes a read-write image so that it is clean with nothing to replay.
// Returns `rc`, or kExitFailure (reported) when the close failed.
int close_image(std::unique_ptr<Filesystem> fs, const std::string& image, int rc);

// An image path split into its parent directory (resolved, symlinks
// followed) and the last component. Fails with the parent's resolve error
// (callers name the whole path, as mkdir(1) does), or EINVAL for the root
// and for "." or ".." as the last component.
struct ParentAndName {
  Ino dir = 0;
  std::string name;
  std::string path;  // the normalised absolute path
};
Result<ParentAndName> resolve_parent(Filesystem& fs, std::string_view path);
// The path without trailing slashes ("/" stays).
std::string trim_trailing_slashes(std::string_view path);

// Room for a copy named `name` in image directory `parent` (uext put and
// put --tar): the existing directory to merge into when a directory goes
// over one, 0 when the name is free (what was there unlinked first, with
// `force`). EEXIST, with the words to show, when the copy must not go
// there; any other error is the image's.
Result<Ino> make_room(Filesystem& fs, Ino parent, std::string_view name, bool is_dir, bool force);

// The non-empty items of a `sep`-separated list ("a,,b" -> {"a", "b"}).
std::vector<std::string> split_list(std::string_view text, char sep);

// Image paths are absolute; a relative one is taken from the root.
std::string absolute_image_path(std::string_view path);
// "/a" + "b" = "/a/b", "/" + "b" = "/b".
std::string join_image_path(std::string_view dir, std::string_view name);
// The same for a host path, whose trailing slashes are dropped first.
std::string join_host_path(const std::string& dir, std::string_view name);
// Last component of an image path ("/" for the root).
std::string image_basename(std::string_view path);

// "drwxr-xr-x" etc., like ls -l.
std::string mode_string(uint32_t mode);
// "regular file", "directory", ... like stat %F.
std::string file_type_name(uint32_t mode, uint64_t size);
// UTC "YYYY-MM-DD HH:MM" (ls -l) and "YYYY-MM-DD HH:MM:SS.NNNNNNNNN +0000" (stat).
std::string format_minutes_utc(int64_t sec);
std::string format_full_utc(const Time& t);

// Writes all of `data` to fd, retrying short writes; false with errno set on failure.
bool write_all(int fd, const void* data, size_t size);

}  // namespace uext::cli

namespace CLI {
class App;
}

namespace uext::cli {

// A subcommand: its CLI11 app (owned by the parent) and what to run when
// it was chosen. `run` returns the exit status.
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

// Adds the IMG positional (first), --offset and --no-checksums to a
// subcommand; `replay_flag`: --no-replay too.
void add_image_options(CLI::App* sub, ImageOptions& opts, bool replay_flag = true);
// Adds the IMG positional and --offset: commands that write verify
// checksums always.
void add_image_rw_option(CLI::App* sub, std::string& image);

Command add_info_command(CLI::App& parent);
Command add_ls_command(CLI::App& parent);
Command add_cat_command(CLI::App& parent);
Command add_stat_command(CLI::App& parent);
Command add_get_command(CLI::App& parent);
Command add_put_command(CLI::App& parent);      // cmd_put.cc
// What `uext put IMG SOURCE PATH` does, on an open image (uext mkfs -d).
int put_tree(Filesystem& fs, const std::string& image, const std::string& source, const std::string& path);
// Unpacks tar archive `archive` ("-": standard input; any compression
// libarchive reads) into the existing image directory `path`
// (tar_import.cc).
int put_archive(Filesystem& fs, const std::string& image, const std::string& archive, const std::string& path,
                bool force, bool verbose);
// libarchive's reason for the last failure on `a`, which it may not have
// (tar_import.cc).
std::string archive_error(::archive* a);
// Writes the image tree at `path` as a pax tar archive to `out` ("-":
// standard output; compressed as its name ends: .gz, .xz, .bz2, .zst)
// (tar_export.cc).
int get_archive(Filesystem& fs, const std::string& image, const std::string& path, const std::string& out,
                bool verbose);
// The same from bytes in memory, over existing entries (fuzz/tar_fuzzer.cc).
int put_archive_bytes(Filesystem& fs, const std::string& image, std::span<const std::byte> archive,
                      const std::string& path);
std::vector<Command> add_edit_commands(CLI::App& parent);  // cmd_edit.cc

}  // namespace uext::cli
