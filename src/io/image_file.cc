#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/fs.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "uext/block_device.h"

namespace uext {
namespace {

constexpr uint64_t kDirectAlign = 4096;
constexpr uint64_t kDirectDataMin = 256 * 1024;

std::string errno_text(int err) { return std::strerror(err); }

class ImageFile final : public BlockDevice {
 public:
  ImageFile(std::string path, int fd, int direct_fd, bool direct_io, uint64_t base, uint64_t size, bool read_only)
      : path_(std::move(path)),
        fd_(fd),
        direct_fd_(direct_fd),
        direct_io_(direct_io),
        base_(base),
        size_(size),
        read_only_(read_only) {}

  ~ImageFile() override {
    if (direct_fd_ >= 0) ::close(direct_fd_);
    ::close(fd_);
  }

  Status read(uint64_t offset, std::span<std::byte> buf) override {
    if (offset > size_ || buf.size() > size_ - offset) {
      return Error(EIO, path_ + ": read of " + std::to_string(buf.size()) + " bytes at offset " +
                            std::to_string(offset) + " is beyond the end of the image (" +
                            std::to_string(size_) + " bytes)");
    }
    int fd = pick_fd(offset, buf.data(), buf.size());
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::pread(fd, buf.data() + done, buf.size() - done, base_ + offset + done);
      if (n < 0) {
        if (errno == EINTR) continue;
        int err = errno;
        return Error(err, path_ + ": read at offset " + std::to_string(base_ + offset + done) + ": " +
                              errno_text(err));
      }
      if (n == 0) {
        return Error(EIO, path_ + ": unexpected end of file at offset " +
                              std::to_string(base_ + offset + done));
      }
      done += static_cast<size_t>(n);
    }
    return {};
  }

  Status write(uint64_t offset, std::span<const std::byte> buf) override {
    return write_via(pick_fd(offset, buf.data(), buf.size()), offset, buf);
  }

  Status write_gather(uint64_t offset, std::span<const std::span<const std::byte>> pieces) override {
    // With direct_io every aligned write goes O_DIRECT, which the pieces'
    // memory may not suit: joined, as the default does.
    if (direct_io_ && direct_fd_ >= 0) return BlockDevice::write_gather(offset, pieces);
    size_t total = 0;
    for (const auto& p : pieces) total += p.size();
    UEXT_TRY(check_write(offset, total));
    std::vector<iovec> iov;
    iov.reserve(pieces.size());
    for (const auto& p : pieces) {
      if (!p.empty()) iov.push_back({const_cast<std::byte*>(p.data()), p.size()});
    }
    size_t first = 0;  // iov[first] is the next piece, already advanced past what was written
    uint64_t at = base_ + offset;  // in the file
    while (first < iov.size()) {
      const int count = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
      ssize_t n = ::pwritev(fd_, iov.data() + first, count, static_cast<off_t>(at));
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        const int err = n < 0 ? errno : EIO;  // nothing written: never loop on it
        return Error(err, path_ + ": write at offset " + std::to_string(at) + ": " + errno_text(err));
      }
      at += static_cast<uint64_t>(n);
      // Step over what was written, the last piece perhaps in part.
      auto left = static_cast<size_t>(n);
      while (first < iov.size() && left >= iov[first].iov_len) left -= iov[first++].iov_len;
      if (left > 0) {
        iov[first].iov_base = static_cast<std::byte*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
      }
    }
    return {};
  }

  Status write_data(uint64_t offset, std::span<const std::byte> buf) override {
    // Small writes stay buffered: an O_DIRECT write waits for the disk,
    // so scattered pages would each pay a device round trip.
    if (direct_fd_ >= 0 && buf.size() >= kDirectDataMin && aligned(offset, buf.data(), buf.size())) {
      Status s = write_via(direct_fd_, offset, buf);
      // EINVAL: the host refuses this O_DIRECT write (alignment it wants
      // beyond 4096); the buffered path always serves.
      if (s.ok() || s.error().code() != EINVAL) return s;
    }
    return write(offset, buf);  // as any other write (all direct with direct_io)
  }

  Status write_data_from_file(uint64_t offset, std::span<const std::byte> buf, int fd, uint64_t fd_offset) override {
    if (direct_fd_ >= 0 && buf.size() >= kDirectDataMin && offset % kDirectAlign == 0 &&
        buf.size() % kDirectAlign == 0 && fd_offset % kDirectAlign == 0 && !read_only_ &&
        offset <= size_ && buf.size() <= size_ - offset) {
      // Through a pipe: the pages go from the memfd to the O_DIRECT write
      // by reference, where a pwrite from the mapping would fault them
      // into it and pin them (a fifth of a streaming writer's CPU time).
      Status s = splice_to(direct_fd_, offset, buf.size(), fd, fd_offset);
      if (s.ok() || s.error().code() != EINVAL) return s;
    }
    if (!direct_io_ && !read_only_ && offset <= size_ && buf.size() <= size_ - offset) {
      // Into the host's page cache through the pipe as well, so that the
      // pages are never mapped (docs/DESIGN.md, "Page cache and delayed
      // allocation", says why).
      Status s = splice_to(fd_, offset, buf.size(), fd, fd_offset);
      if (s.ok() || s.error().code() != EINVAL) return s;
    }
    return write_data(offset, buf);
  }

  Status flush() override {
    if (read_only_) return {};
    if (::fdatasync(fd_) != 0) {
      int err = errno;
      return Error(err, path_ + ": flush: " + errno_text(err));
    }
    return {};
  }

  uint64_t size() const override { return size_; }
  bool read_only() const override { return read_only_; }

 private:
  // O_DIRECT only for requests it can serve; the rest go through the cache.
  // What every write must pass: a writable image, and bytes within it.
  Status check_write(uint64_t offset, uint64_t len) const {
    if (read_only_) return Error(EROFS, path_ + ": image is open read-only");
    if (offset > size_ || len > size_ - offset) {
      return Error(ENOSPC, path_ + ": write of " + std::to_string(len) + " bytes at offset " +
                               std::to_string(offset) + " is beyond the end of the image");
    }
    return {};
  }
  Status write_via(int fd, uint64_t offset, std::span<const std::byte> buf) {
    UEXT_TRY(check_write(offset, buf.size()));
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::pwrite(fd, buf.data() + done, buf.size() - done, base_ + offset + done);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        const int err = n < 0 ? errno : EIO;  // nothing written: never loop on it
        return Error(err, path_ + ": write at offset " + std::to_string(base_ + offset + done) + ": " +
                              errno_text(err));
      }
      done += static_cast<size_t>(n);
    }
    return {};
  }
  // A pipe per thread for splice_to, sized to the largest write (a
  // smaller pipe only means more rounds).
  struct SplicePipe {
    int r = -1, w = -1;
    ~SplicePipe() { reset(); }
    void reset() {
      if (r >= 0) ::close(r);
      if (w >= 0) ::close(w);
      r = w = -1;
    }
    bool ready() {
      if (r >= 0) return true;
      int p[2];
      if (::pipe2(p, O_CLOEXEC) != 0) return false;
      r = p[0];
      w = p[1];
      ::fcntl(w, F_SETPIPE_SZ, 1 << 20);
      return true;
    }
  };

  // EINVAL when splicing cannot serve (no pipe, a host that refuses it):
  // the caller writes from memory instead. On any failure the pipe may hold
  // bytes, so it is thrown away.
  Status splice_to(int out_fd, uint64_t offset, size_t len, int src_fd, uint64_t src_offset) {
    thread_local SplicePipe pipe;
    if (!pipe.ready()) return Error(EINVAL, path_ + ": no pipe for splice");
    loff_t in = static_cast<loff_t>(src_offset);
    loff_t out = static_cast<loff_t>(base_ + offset);
    size_t done = 0;
    while (done < len) {
      ssize_t got = ::splice(src_fd, &in, pipe.w, nullptr, len - done, 0);
      if (got <= 0) {
        const int err = got == 0 ? EIO : errno;
        if (err == EINTR) continue;
        pipe.reset();
        if (done == 0 && (err == EINVAL || err == ENOSYS)) return Error(EINVAL, path_ + ": cannot splice");
        return Error(err, path_ + ": reading the page cache at offset " + std::to_string(src_offset + done) +
                              " for a write at offset " + std::to_string(base_ + offset + done) + ": " +
                              (got == 0 ? "end of file" : errno_text(err)));
      }
      for (ssize_t put = 0; put < got;) {
        ssize_t n = ::splice(pipe.r, nullptr, out_fd, &out, static_cast<size_t>(got - put), 0);
        if (n <= 0) {
          const int err = n == 0 ? EIO : errno;
          if (err == EINTR) continue;
          pipe.reset();
          if (done == 0 && put == 0 && (err == EINVAL || err == ENOSYS)) {
            return Error(EINVAL, path_ + ": cannot splice");
          }
          return Error(err, path_ + ": write at offset " + std::to_string(base_ + offset + done + put) + ": " +
                                errno_text(err));
        }
        put += n;
      }
      done += static_cast<size_t>(got);
    }
    return {};
  }

  static bool aligned(uint64_t offset, const void* buf, size_t len) {
    return offset % kDirectAlign == 0 && len % kDirectAlign == 0 &&
           reinterpret_cast<uintptr_t>(buf) % kDirectAlign == 0;
  }
  int pick_fd(uint64_t offset, const void* buf, size_t len) const {
    if (direct_fd_ < 0 || !direct_io_) return fd_;
    return aligned(offset, buf, len) ? direct_fd_ : fd_;
  }

  std::string path_;
  int fd_;
  int direct_fd_;   // O_DIRECT, or -1
  bool direct_io_;  // every aligned request goes through direct_fd_, not only write_data
  // Where the device starts in the file (a partition of a disk image), a
  // multiple of 4096 whenever direct_fd_ is open, so that a device offset
  // aligned for O_DIRECT is aligned in the file too. Offsets are the
  // device's everywhere but at the system calls and in their messages.
  uint64_t base_;
  uint64_t size_;
  bool read_only_;
};

}  // namespace

Result<std::unique_ptr<BlockDevice>> open_image_file(const std::string& path,
                                                     const ImageFileOptions& options) {
  int flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  int fd = ::open(path.c_str(), flags);
  if (fd < 0) {
    int err = errno;
    return Error(err, path + ": " + errno_text(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return Error(err, path + ": " + errno_text(err));
  }
  uint64_t size = 0;  // of the whole file or device, then of the window
  if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    if (::ioctl(fd, BLKGETSIZE64, &size) != 0) {
      int err = errno;
      ::close(fd);
      return Error(err, path + ": cannot read the device size: " + errno_text(err));
    }
  } else {
    ::close(fd);
    return Error(S_ISDIR(st.st_mode) ? EISDIR : EINVAL,
                 path + ": not a regular file or block device");
  }
  if (options.offset > size) {
    ::close(fd);
    return Error(EINVAL, path + ": offset " + std::to_string(options.offset) + " is beyond its end (" +
                             std::to_string(size) + " bytes)");
  }
  size -= options.offset;
  if (options.size_limit != 0) size = std::min(size, options.size_limit);
  // O_DIRECT wants file offsets aligned as the device's are.
  const bool direct_possible = options.offset % kDirectAlign == 0;
  if (options.direct_io && !direct_possible) {
    ::close(fd);
    return Error(EINVAL, path + ": direct I/O needs an offset that is a multiple of " + std::to_string(kDirectAlign) +
                             " (offset " + std::to_string(options.offset) + ")");
  }
  int direct_fd = -1;
  if (options.direct_io) {
    direct_fd = ::open(path.c_str(), flags | O_DIRECT);
    if (direct_fd < 0) {
      int err = errno;
      ::close(fd);
      return Error(err, path + ": cannot open with O_DIRECT: " + errno_text(err));
    }
  } else if (options.direct_data_writes && !options.read_only && S_ISREG(st.st_mode) && direct_possible) {
    // Best effort: a host filesystem without O_DIRECT keeps buffered writes.
    direct_fd = ::open(path.c_str(), flags | O_DIRECT);
  }
  return std::unique_ptr<BlockDevice>(
      std::make_unique<ImageFile>(path, fd, direct_fd, options.direct_io, options.offset, size, options.read_only));
}

}  // namespace uext
