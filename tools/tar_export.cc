// Writing an image's tree as a tar archive (uext get --tar): the mirror of
// tar_import.cc. Entries carry the image's owners, modes (setuid
// included), times to the nanosecond, device numbers, hard links (one
// copy of the data, later names linking to the first) and extended
// attributes, in the pax format (which GNU tar and libarchive read), so a
// tree is taken out of an image without root and without losing what only
// root could recreate on the host. The archive goes to a file, compressed
// as its name says (.tar.gz, .tar.xz, .tar.zst, ...), or to standard output.
#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/core.h>

#include "common.h"

namespace uext::cli {
namespace {

constexpr size_t kChunk = 1u << 20;

struct WriterCloser {
  void operator()(archive* a) const { archive_write_free(a); }
};
struct EntryFreer {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};

class TarExporter {
 public:
  TarExporter(Filesystem& fs, const std::string& image, const std::string& out, bool verbose)
      : fs_(fs), image_(image), out_(out), verbose_(verbose) {}

  int run(const std::string& path) {
    const std::string top = trim_trailing_slashes(absolute_image_path(path));
    auto ino = fs_.resolve(top, /*follow_last=*/true);
    if (!ino) return report_error(image_, top, ino.error()), kExitFailure;
    auto st = fs_.stat(*ino);
    if (!st) return report_error(image_, top, st.error()), kExitFailure;

    a_.reset(archive_write_new());
    archive_write_set_format_pax_restricted(a_.get());
    // xattrs in the SCHILY.xattr records GNU tar reads, not also in
    // libarchive's own, which GNU tar warns of for every file.
    archive_write_set_format_option(a_.get(), "pax", "xattrheader", "SCHILY");
    // Compressed as the file's name says; standard output stays plain.
    const std::string_view name(out_);
    auto ends = [&](std::string_view suffix) { return name.ends_with(suffix); };
    if (ends(".gz") || ends(".tgz")) archive_write_add_filter_gzip(a_.get());
    else if (ends(".xz") || ends(".txz")) archive_write_add_filter_xz(a_.get());
    else if (ends(".bz2") || ends(".tbz2")) archive_write_add_filter_bzip2(a_.get());
    else if (ends(".zst") || ends(".tzst")) archive_write_add_filter_zstd(a_.get());
    if (archive_write_open_filename(a_.get(), out_ == "-" ? nullptr : out_.c_str()) != ARCHIVE_OK) {
      return report({out_, archive_error(a_.get())}), kExitFailure;
    }
    // A directory gives "./" and its contents, as `tar -C DIR -c .`; a
    // file gives itself under its own name.
    if (S_ISDIR(st->mode)) {
      add(*ino, *st, ".", top);
    } else {
      add(*ino, *st, image_basename(top), top);
    }
    if (!stop_ && archive_write_close(a_.get()) != ARCHIVE_OK) {
      report({out_, archive_error(a_.get())});
      failed_ = true;
    }
    return failed_ ? kExitFailure : kExitOk;
  }

 private:
  void fail_image(const std::string& path, const Error& err) {
    report_error(image_, path, err);
    failed_ = true;
  }
  void fail_archive() {
    report({out_, archive_error(a_.get())});
    failed_ = true;
    stop_ = true;  // the archive is unusable from here
  }

  // One entry, then a directory's children in name order.
  void add(Ino ino, const Stat& st, const std::string& name, const std::string& path) {
    if (stop_) return;
    std::unique_ptr<archive_entry, EntryFreer> e(archive_entry_new());
    archive_entry_set_pathname(e.get(), name.c_str());
    archive_entry_set_uid(e.get(), st.uid);
    archive_entry_set_gid(e.get(), st.gid);
    archive_entry_set_perm(e.get(), st.mode & 07777);
    archive_entry_set_filetype(e.get(), st.mode & S_IFMT);
    archive_entry_set_mtime(e.get(), st.mtime.sec, st.mtime.nsec);
    archive_entry_set_atime(e.get(), st.atime.sec, st.atime.nsec);
    archive_entry_set_ctime(e.get(), st.ctime.sec, st.ctime.nsec);
    const bool regular = S_ISREG(st.mode);
    bool with_data = regular;
    if (regular && st.nlink > 1) {
      auto [it, first] = links_.emplace(ino, name);
      if (!first) {  // a later name: a link to the first, no data
        archive_entry_set_hardlink(e.get(), it->second.c_str());
        with_data = false;
      }
    }
    if (with_data) {
      archive_entry_set_size(e.get(), static_cast<la_int64_t>(st.size));
      // Fewer blocks than bytes: name the data regions, and the archive
      // keeps the holes (a GNU sparse member, which GNU tar and libarchive
      // restore as holes).
      if (st.blocks * 512 < st.size && !add_sparse_map(ino, st.size, e.get(), path)) return;
    }
    if (S_ISLNK(st.mode)) {
      auto target = fs_.readlink(ino);
      if (!target) return fail_image(path, target.error());
      archive_entry_set_symlink(e.get(), target->c_str());
    }
    if (S_ISCHR(st.mode) || S_ISBLK(st.mode)) {
      archive_entry_set_rdevmajor(e.get(), st.rdev_major);
      archive_entry_set_rdevminor(e.get(), st.rdev_minor);
    }
    if (auto names = fs_.listxattr(ino)) {
      for (const auto& n : *names) {
        auto value = fs_.getxattr(ino, n);
        if (!value) {
          fail_image(path, value.error());
          continue;
        }
        archive_entry_xattr_add_entry(e.get(), n.c_str(), value->data(), value->size());
      }
    } else {
      fail_image(path, names.error());
    }
    if (verbose_) fmt::print(stderr, "{} -> {}\n", path, name);
    if (archive_write_header(a_.get(), e.get()) < ARCHIVE_WARN) return fail_archive();
    if (with_data && !write_data(ino, st.size, path)) return;

    if (S_ISDIR(st.mode)) {
      auto entries = fs_.list_directory(ino);
      if (!entries) return fail_image(path, entries.error());
      std::vector<DirEntry> children;
      for (auto& c : *entries) {
        if (c.name != "." && c.name != "..") children.push_back(std::move(c));
      }
      std::sort(children.begin(), children.end(), [](const DirEntry& x, const DirEntry& y) { return x.name < y.name; });
      for (const auto& c : children) {
        if (stop_) return;
        const std::string child_path = join_image_path(path, c.name);
        auto cst = fs_.stat(c.ino);
        if (!cst) {
          fail_image(child_path, cst.error());
          continue;
        }
        add(c.ino, *cst, name == "." ? "./" + c.name : name + "/" + c.name, child_path);
      }
    }
  }

  bool add_sparse_map(Ino ino, uint64_t size, archive_entry* e, const std::string& path) {
    uint64_t pos = 0;
    while (pos < size) {
      auto data = fs_.seek(ino, pos, SEEK_DATA);
      if (!data) {
        if (data.error().code() == ENXIO) break;  // only a hole is left
        return fail_image(path, data.error()), false;
      }
      auto hole = fs_.seek(ino, *data, SEEK_HOLE);
      if (!hole) return fail_image(path, hole.error()), false;
      const uint64_t end = std::min(*hole, size);
      if (end > *data) {
        archive_entry_sparse_add_entry(e, static_cast<la_int64_t>(*data), static_cast<la_int64_t>(end - *data));
      }
      if (end <= pos) break;
      pos = end;
    }
    // All hole: one empty region at the end keeps it a sparse member.
    if (archive_entry_sparse_count(e) == 0) archive_entry_sparse_add_entry(e, static_cast<la_int64_t>(size), 0);
    return true;
  }

  // The file's bytes; the writer leaves out those in a sparse member's holes.
  bool write_data(Ino ino, uint64_t size, const std::string& path) {
    if (!buf_) buf_ = std::make_unique_for_overwrite<std::byte[]>(kChunk);
    uint64_t off = 0;
    while (off < size) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(kChunk, size - off));
      auto n = fs_.read(ino, off, std::span(buf_.get(), want));
      if (!n) return fail_image(path, n.error()), false;
      if (*n == 0) {
        // Shorter than its size said: pad, so the archive stays well formed.
        std::fill(buf_.get(), buf_.get() + want, std::byte{0});
        *n = want;
      }
      if (archive_write_data(a_.get(), buf_.get(), *n) < 0) return fail_archive(), false;
      off += *n;
    }
    return true;
  }

  Filesystem& fs_;
  const std::string image_, out_;
  const bool verbose_;
  std::unique_ptr<archive, WriterCloser> a_;
  std::unique_ptr<std::byte[]> buf_;
  std::map<Ino, std::string> links_;  // multiply-linked inode -> its first name in the archive
  bool failed_ = false;
  bool stop_ = false;
};

}  // namespace

int get_archive(Filesystem& fs, const std::string& image, const std::string& path, const std::string& out,
                bool verbose) {
  TarExporter t(fs, image, out, verbose);
  return t.run(path);
}

}  // namespace uext::cli
