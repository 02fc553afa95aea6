// Mapped-file costs, the same three workloads through uext's
// Filesystem::mmap or through mmap(2) of a file on a mounted filesystem:
//
//   read-fault   touch one byte per page of an existing file whose data is
//                on disk and not yet cached (the caller drops caches)
//   first-write  store one byte per page of a new sparse file (each store is
//                a first write: page_mkwrite reserves or allocates)
//   seq-write    memset a new sparse shared mapping, then msync(MS_SYNC)
//
//   mmap_bench uext IMG [--fault-handling auto|userfaultfd|signal]
//   mmap_bench kernel DIR
//
// IMG (or DIR) must hold read.dat of at least --read-mib MiB; the program
// creates fw.dat and seq.dat and removes them. One line per figure on
// stdout: "RESULT <name> <value> <unit>"; everything else is commentary.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include <fmt/core.h>

#include "uext/filesystem.h"

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMiB = 1ull << 20;

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

[[noreturn]] void die(const std::string& what) {
  fmt::print(stderr, "mmap_bench: {}\n", what);
  std::exit(1);
}

void result(const char* name, double value, const char* unit) {
  fmt::print("RESULT {} {:.1f} {}\n", name, value, unit);
  std::fflush(stdout);
}

// One byte read per page; the sum keeps the loads from being dropped.
uint64_t touch_read(const std::byte* p, uint64_t pages) {
  uint64_t sum = 0;
  for (uint64_t i = 0; i < pages; ++i) sum += static_cast<uint8_t>(*reinterpret_cast<const volatile std::byte*>(p + i * kPage));
  return sum;
}

void touch_write(std::byte* p, uint64_t pages) {
  for (uint64_t i = 0; i < pages; ++i) *reinterpret_cast<volatile uint8_t*>(p + i * kPage) = static_cast<uint8_t>(i | 1);
}

// The two sides differ only in how a file is found, mapped and synced.
class Side {
 public:
  virtual ~Side() = default;
  virtual std::byte* map_existing(const char* name, uint64_t bytes) = 0;  // read-only
  virtual std::byte* map_new(const char* name, uint64_t bytes) = 0;       // sparse, shared read-write
  virtual void sync() = 0;    // msync(MS_SYNC) of the current mapping
  virtual void unmap() = 0;   // and remove the file if it was new
  virtual std::string describe() = 0;
};

class KernelSide final : public Side {
 public:
  explicit KernelSide(std::string dir) : dir_(std::move(dir)) {}
  std::byte* map_existing(const char* name, uint64_t bytes) override { return map(name, bytes, false); }
  std::byte* map_new(const char* name, uint64_t bytes) override { return map(name, bytes, true); }
  void sync() override {
    if (::msync(base_, bytes_, MS_SYNC) != 0) die(fmt::format("msync: {}", std::strerror(errno)));
  }
  void unmap() override {
    ::munmap(base_, bytes_);
    ::close(fd_);
    if (created_) ::unlink(path_.c_str());
  }
  std::string describe() override { return "mmap(2) on " + dir_; }

 private:
  std::byte* map(const char* name, uint64_t bytes, bool create) {
    path_ = dir_ + "/" + name;
    created_ = create;
    bytes_ = bytes;
    fd_ = create ? ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644) : ::open(path_.c_str(), O_RDONLY);
    if (fd_ < 0) die(fmt::format("{}: {}", path_, std::strerror(errno)));
    if (create && ::ftruncate(fd_, static_cast<off_t>(bytes)) != 0) die(fmt::format("ftruncate {}: {}", path_, std::strerror(errno)));
    void* p = ::mmap(nullptr, bytes, create ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) die(fmt::format("mmap {}: {}", path_, std::strerror(errno)));
    base_ = static_cast<std::byte*>(p);
    return base_;
  }
  std::string dir_, path_;
  int fd_ = -1;
  bool created_ = false;
  std::byte* base_ = nullptr;
  uint64_t bytes_ = 0;
};

class UextSide final : public Side {
 public:
  UextSide(const std::string& image, uext::FaultHandling h) : image_(image) {
    uext::Options o;
    o.read_only = false;
    o.fault_handling = h;
    auto fs = uext::Filesystem::open(image, o);
    if (!fs) die(fmt::format("{}: {}", image, fs.error().message()));
    fs_ = std::move(fs).value();
  }
  ~UextSide() override {
    auto st = fs_->close();
    if (!st) die(fmt::format("close {}: {}", image_, st.error().message()));
  }
  std::byte* map_existing(const char* name, uint64_t bytes) override {
    auto ino = fs_->resolve(std::string("/") + name);
    if (!ino) die(fmt::format("{}: /{}: {}", image_, name, ino.error().message()));
    name_.clear();
    return map(*ino, bytes, uext::kProtRead);
  }
  std::byte* map_new(const char* name, uint64_t bytes) override {
    auto st = fs_->create(uext::kRootIno, name, S_IFREG | 0644, uext::Owner{});
    if (!st) die(fmt::format("{}: create /{}: {}", image_, name, st.error().message()));
    if (auto t = fs_->truncate(st->ino, bytes); !t) die(fmt::format("truncate: {}", t.error().message()));
    name_ = name;
    return map(st->ino, bytes, uext::kProtRead | uext::kProtWrite);
  }
  void sync() override {
    if (auto st = map_->sync(uext::kSyncNow); !st) die(fmt::format("msync: {}", st.error().message()));
  }
  void unmap() override {
    map_.reset();
    if (!name_.empty()) {
      if (auto st = fs_->unlink(uext::kRootIno, name_); !st) die(fmt::format("unlink: {}", st.error().message()));
    }
  }
  std::string describe() override {
    return fmt::format("uext on {}, fault handling {}", image_,
                       fs_->fault_handling() == uext::FaultHandling::kUserfaultfd ? "userfaultfd" : "signal");
  }

 private:
  std::byte* map(uext::Ino ino, uint64_t bytes, int prot) {
    auto m = fs_->mmap(ino, 0, bytes, prot, uext::kMapShared);
    if (!m) die(fmt::format("mmap: {}", m.error().message()));
    map_ = std::move(m).value();
    return map_->data();
  }
  std::string image_, name_;
  std::unique_ptr<uext::Filesystem> fs_;
  std::unique_ptr<uext::Mapping> map_;
};

int usage() {
  std::fputs(
      "usage: mmap_bench uext IMG [--fault-handling auto|userfaultfd|signal] [--read-mib N] [--write-mib N] [--seq-mib N]\n"
      "       mmap_bench kernel DIR [--read-mib N] [--write-mib N] [--seq-mib N]\n",
      stderr);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  const std::string kind = argv[1], where = argv[2];
  uext::FaultHandling handling = uext::FaultHandling::kAuto;
  uint64_t read_mib = 256, write_mib = 256, seq_mib = 512;
  for (int i = 3; i < argc; i += 2) {
    if (i + 1 >= argc) return usage();
    std::string opt = argv[i], val = argv[i + 1];
    if (opt == "--fault-handling") {
      if (val == "userfaultfd") handling = uext::FaultHandling::kUserfaultfd;
      else if (val == "signal") handling = uext::FaultHandling::kSignal;
      else if (val != "auto") return usage();
    } else if (opt == "--read-mib") {
      read_mib = std::strtoull(val.c_str(), nullptr, 10);
    } else if (opt == "--write-mib") {
      write_mib = std::strtoull(val.c_str(), nullptr, 10);
    } else if (opt == "--seq-mib") {
      seq_mib = std::strtoull(val.c_str(), nullptr, 10);
    } else {
      return usage();
    }
  }
  std::unique_ptr<Side> side;
  if (kind == "uext") side = std::make_unique<UextSide>(where, handling);
  else if (kind == "kernel") side = std::make_unique<KernelSide>(where);
  else return usage();
  fmt::print("# {}\n", side->describe());

  {
    const uint64_t pages = read_mib * kMiB / kPage;
    std::byte* p = side->map_existing("read.dat", pages * kPage);
    auto t = Clock::now();
    uint64_t sum = touch_read(p, pages);
    double s = seconds_since(t);
    fmt::print("# read-fault: {} pages in {:.3f} s (sum {})\n", pages, s, sum);
    result("read_fault", pages / s, "pages/s");
    side->unmap();
  }
  {
    const uint64_t pages = write_mib * kMiB / kPage;
    std::byte* p = side->map_new("fw.dat", pages * kPage);
    auto t = Clock::now();
    touch_write(p, pages);
    double s = seconds_since(t);
    auto t2 = Clock::now();
    side->sync();
    double s2 = seconds_since(t2);
    fmt::print("# first-write: {} pages in {:.3f} s, then msync {:.3f} s\n", pages, s, s2);
    result("first_write_fault", pages / s, "pages/s");
    side->unmap();
  }
  {
    const uint64_t bytes = seq_mib * kMiB;
    std::byte* p = side->map_new("seq.dat", bytes);
    auto t = Clock::now();
    std::memset(p, 0x5a, bytes);
    double s1 = seconds_since(t);
    side->sync();
    double s = seconds_since(t);
    fmt::print("# seq-write: {} MiB: memset {:.3f} s, with msync {:.3f} s\n", seq_mib, s1, s);
    result("seq_write", bytes / s / 1e6, "MB/s");
    side->unmap();
  }
  side.reset();
  return 0;
}
