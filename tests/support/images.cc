#include "support/images.h"
#include "support/regex.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace uext::testing {

const std::vector<ImageKind>& image_kinds() {
  static const std::vector<ImageKind> kinds = [] {
    std::vector<ImageKind> k;
    auto add = [&](std::string name, std::string type, uint32_t bs, std::vector<std::string> args) {
      ImageKind x;
      x.name = std::move(name);
      x.fs_type = type;
      x.block_size = bs;
      x.mkfs_args = std::move(args);
      x.extents = type == "ext4";
      bool nocsum = false;
      for (auto& a : x.mkfs_args) {
        if (a.find("^metadata_csum") != std::string::npos) nocsum = true;
        if (a == "128") x.small_inodes = true;
      }
      x.metadata_csum = type == "ext4" && !nocsum;
      k.push_back(x);
    };
    add("ext2-1k", "ext2", 1024, {});
    add("ext2-4k", "ext2", 4096, {});
    add("ext3-1k", "ext3", 1024, {});
    add("ext3-4k", "ext3", 4096, {});
    add("ext4-1k", "ext4", 1024, {});
    add("ext4-4k", "ext4", 4096, {});
    add("ext4-4k-nocsum", "ext4", 4096, {"-O", "^metadata_csum"});
    add("ext4-4k-no64bit", "ext4", 4096, {"-O", "^64bit"});
    add("ext4-4k-nocsum-no64bit", "ext4", 4096, {"-O", "^metadata_csum,^64bit"});
    add("ext4-4k-inode128", "ext4", 4096, {"-I", "128"});
    add("ext4-4k-csum-seed", "ext4", 4096, {"-O", "metadata_csum_seed"});
    add("ext4-1k-nocsum-no64bit", "ext4", 1024, {"-O", "^metadata_csum,^64bit"});
    return k;
  }();
  return kinds;
}

const ImageKind& image_kind(const std::string& name) {
  for (auto& k : image_kinds())
    if (k.name == name) return k;
  throw std::runtime_error("no image kind " + name);
}

namespace {

std::string join(const std::vector<std::string>& argv) {
  std::string s;
  for (auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

std::string failed(const std::vector<std::string>& argv, const CommandResult& r) {
  return "`" + join(argv) + "` exited " + std::to_string(r.exit_code) + "\nstdout:\n" +
         r.out.substr(0, 4000) + "\nstderr:\n" + r.err.substr(0, 4000);
}

// Bytes and entries in a host tree, to size the image.
void measure(const std::string& path, uint64_t& bytes, uint64_t& entries) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return;
  ++entries;
  bytes += static_cast<uint64_t>(st.st_blocks) * 512 + 1024;
  if (!S_ISDIR(st.st_mode)) return;
  DIR* d = ::opendir(path.c_str());
  if (!d) return;
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  ::closedir(d);
  for (auto& n : names) measure(path + "/" + n, bytes, entries);
}

std::string write_all(int fd, const std::string& data, off_t off) {
  if (::pwrite(fd, data.data(), data.size(), off) != static_cast<ssize_t>(data.size()))
    return std::string("pwrite: ") + std::strerror(errno);
  return {};
}

// Files only the kernel can make: deep extent trees, unwritten extents,
// punched holes.
std::string kernel_write_files(const std::string& mnt, const ImageKind& kind) {
  std::string dir = mnt + "/" + kKernelDir;
  if (::mkdir(dir.c_str(), 0755) != 0) return "mkdir " + dir + ": " + std::strerror(errno);
  Rng rng(0xfeed);
  auto open_new = [&](const char* rel) { return ::open((mnt + "/" + rel).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644); };
  std::string err;

  // Every other 4 KiB block: thousands of discontiguous extents.
  int fd = open_new(KernelFiles::deep);
  if (fd < 0) return std::string("create deep: ") + std::strerror(errno);
  std::string chunk(4096, '\0');
  for (int i = 0; i < 4000 && err.empty(); ++i) {
    rng.fill(chunk.data(), chunk.size());
    chunk[0] = 1;
    err = write_all(fd, chunk, static_cast<off_t>(i) * 8192);
  }
  // An odd tail past the last block.
  if (err.empty()) err = write_all(fd, "tail", 4000ll * 8192 + 1234);
  ::fsync(fd);
  ::close(fd);
  if (!err.empty()) return "deep: " + err;

  fd = open_new(KernelFiles::small);
  err = write_all(fd, "written by the kernel\n", 0);
  ::close(fd);
  if (!err.empty()) return "small: " + err;

  if (!kind.extents) return {};  // fallocate needs extents

  const off_t M = 1 << 20;
  fd = open_new(KernelFiles::prealloc);
  if (::fallocate(fd, 0, 0, 8 * M) != 0) err = std::string("fallocate: ") + std::strerror(errno);
  if (err.empty()) err = write_all(fd, rng.bytes(50000), M + 100);
  if (err.empty()) err = write_all(fd, "0123456789", 7 * M - 3);
  ::fsync(fd);
  ::close(fd);
  if (!err.empty()) return "prealloc: " + err;

  fd = open_new(KernelFiles::prealloc_keep_size);
  err = write_all(fd, rng.bytes(5000), 0);
  if (err.empty() && ::fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 4 * M) != 0)
    err = std::string("fallocate keep size: ") + std::strerror(errno);
  ::fsync(fd);
  ::close(fd);
  if (!err.empty()) return "prealloc-keep-size: " + err;

  fd = open_new(KernelFiles::prealloc_only);
  if (::fallocate(fd, 0, 0, 3 * M + 5) != 0) err = std::string("fallocate: ") + std::strerror(errno);
  ::close(fd);
  if (!err.empty()) return "prealloc-only: " + err;

  fd = open_new(KernelFiles::punched);
  std::string data = rng.bytes(static_cast<size_t>(M));
  for (size_t i = 0; i < data.size(); i += 512) data[i] = 7;
  err = write_all(fd, data, 0);
  ::fsync(fd);
  if (err.empty() && ::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100000, 300000) != 0)
    err = std::string("punch: ") + std::strerror(errno);
  ::close(fd);
  if (!err.empty()) return "punched: " + err;
  return {};
}

// Copies atime/mtime (ns) of every source entry onto the mounted image,
// and the root's mode and owner.
std::string apply_times(const std::string& src, const std::string& mnt) {
  std::string err;
  std::function<void(const std::string&)> walk = [&](const std::string& rel) {
    std::string s = rel.empty() ? src : src + "/" + rel;
    std::string d = rel.empty() ? mnt : mnt + "/" + rel;
    struct stat st;
    if (::lstat(s.c_str(), &st) != 0) {
      err = "lstat " + s;
      return;
    }
    if (S_ISDIR(st.st_mode)) {
      DIR* dir = ::opendir(s.c_str());
      std::vector<std::string> names;
      while (dir && (true)) {
        dirent* e = ::readdir(dir);
        if (!e) break;
        std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(n);
      }
      if (dir) ::closedir(dir);
      for (auto& n : names) walk(rel.empty() ? n : rel + "/" + n);
    }
    if (rel.empty()) {
      if (::lchown(d.c_str(), st.st_uid, st.st_gid) != 0 || ::chmod(d.c_str(), st.st_mode & 07777) != 0)
        err = "root owner/mode: " + std::string(std::strerror(errno));
    }
    timespec ts[2] = {st.st_atim, st.st_mtim};
    if (::utimensat(AT_FDCWD, d.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0 && err.empty())
      err = "utimensat " + printable(d) + ": " + std::strerror(errno);
  };
  walk("");
  return err;
}

// A copy of `src` made of hard links (cheap), with the contents of the
// directories in `skip` left out: mke2fs -d adds directory entries in
// quadratic time, so the kernel fills those directories instead.
std::string make_shadow(const std::string& src, const std::string& dst, const std::set<std::string>& skip,
                        const std::string& rel = "") {
  std::string s = rel.empty() ? src : src + "/" + rel;
  std::string d = rel.empty() ? dst : dst + "/" + rel;
  struct stat st;
  if (::lstat(s.c_str(), &st) != 0) return "lstat " + s;
  if (!S_ISDIR(st.st_mode)) {
    if (::link(s.c_str(), d.c_str()) != 0) return "link " + printable(d) + ": " + std::strerror(errno);
    return {};
  }
  if (::mkdir(d.c_str(), 0700) != 0) return "mkdir " + printable(d) + ": " + std::strerror(errno);
  if (!skip.count(rel)) {
    DIR* dir = ::opendir(s.c_str());
    std::vector<std::string> names;
    while (dirent* e = dir ? ::readdir(dir) : nullptr) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    if (dir) ::closedir(dir);
    for (auto& n : names) {
      std::string err = make_shadow(src, dst, skip, rel.empty() ? n : rel + "/" + n);
      if (!err.empty()) return err;
    }
  }
  if (::lchown(d.c_str(), st.st_uid, st.st_gid) != 0 || ::chmod(d.c_str(), st.st_mode & 07777) != 0)
    return "chown/chmod " + printable(d);
  // Directory xattrs (and ACLs) after chmod, which would rewrite the ACL.
  std::string names(65536, '\0');
  ssize_t n = ::llistxattr(s.c_str(), names.data(), names.size());
  for (ssize_t i = 0; n > 0 && i < n;) {
    std::string name = names.c_str() + i;
    i += static_cast<ssize_t>(name.size()) + 1;
    std::string v(65536, '\0');
    ssize_t vn = ::lgetxattr(s.c_str(), name.c_str(), v.data(), v.size());
    if (vn < 0 || ::lsetxattr(d.c_str(), name.c_str(), v.data(), static_cast<size_t>(vn), 0) != 0)
      return "copy xattr " + name + " to " + printable(d) + ": " + std::strerror(errno);
  }
  return {};
}

}  // namespace

std::optional<uint16_t> superblock_state(const std::string& image) {
  constexpr off_t kStateOffset = 1024 + 58;
  unsigned char state[2];
  int fd = ::open(image.c_str(), O_RDONLY | O_CLOEXEC);
  ssize_t got = fd >= 0 ? ::pread(fd, state, sizeof state, kStateOffset) : -1;
  if (fd >= 0) ::close(fd);
  if (got != static_cast<ssize_t>(sizeof state)) return std::nullopt;
  return static_cast<uint16_t>(state[0] | state[1] << 8u);
}

::testing::AssertionResult image_is_clean(const std::string& image) {
  std::vector<std::string> fsck = {"e2fsck", "-fn", image};
  CommandResult r = run(fsck);
  if (r.exit_code != 0) return ::testing::AssertionFailure() << "image not clean: " << failed(fsck, r);
  const auto state = superblock_state(image);
  if (!state) return ::testing::AssertionFailure() << image << ": cannot read the superblock's state";
  if (*state != kSuperblockValid) {
    return ::testing::AssertionFailure() << image << ": the superblock's state is " << *state << ", not clean (1)";
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult build_image(const ImageKind& kind, const std::string& source,
                                       const std::string& image, const BuildOptions& options) {
  auto t0 = std::chrono::steady_clock::now();
  auto lap = [&](const char* what) {
    if (std::getenv("UEXT_TEST_TIMING"))
      std::fprintf(stderr, "[timing] %s %s: %.1fs\n", kind.name.c_str(), what,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  };
  uint64_t bytes = 0, entries = 0;
  measure(source, bytes, entries);
  uint64_t size = bytes * 3 / 2 + (64ull << 20);
  if (kind.block_size == 1024) size += bytes / 4;
  size = (size + (1 << 20) - 1) / (1 << 20) * (1 << 20);
  uint64_t inodes = entries + entries / 4 + 2048;

  {
    std::ofstream f(image, std::ios::binary | std::ios::trunc);
    if (!f) return ::testing::AssertionFailure() << "cannot create " << image;
  }
  if (::truncate(image.c_str(), static_cast<off_t>(size)) != 0)
    return ::testing::AssertionFailure() << "truncate " << image << ": " << std::strerror(errno);

  std::vector<std::string> mkfs = {"mke2fs", "-F", "-q", "-t", kind.fs_type,
                                   "-b", std::to_string(kind.block_size), "-N", std::to_string(inodes)};
  if (!kind.small_inodes) {
    mkfs.push_back("-I");
    mkfs.push_back("256");
  }
  mkfs.insert(mkfs.end(), kind.mkfs_args.begin(), kind.mkfs_args.end());
  std::set<std::string> kernel_dirs;
  for (auto& d : options.kernel_copied_dirs) {
    struct stat st;
    if (::stat((source + "/" + d).c_str(), &st) == 0) kernel_dirs.insert(d);
  }
  if (!kernel_dirs.empty() && !can_loop_mount())
    return ::testing::AssertionFailure() << "copying big directories needs root and loop devices";
  std::string shadow = image + ".shadow";
  run({"rm", "-rf", shadow});
  std::string serr = make_shadow(source, shadow, kernel_dirs);
  if (!serr.empty()) return ::testing::AssertionFailure() << "shadow tree: " << serr;
  mkfs.insert(mkfs.end(), {"-L", "uext-" + kind.name, "-d", shadow, image});
  CommandResult r = run(mkfs);
  run({"rm", "-rf", shadow});
  if (r.exit_code != 0) return ::testing::AssertionFailure() << failed(mkfs, r);
  lap("mke2fs -d");

  if (options.index_directories) {
    std::vector<std::string> fsck = {"e2fsck", "-fyD", image};
    r = run(fsck);
    if (r.exit_code > 1) return ::testing::AssertionFailure() << failed(fsck, r);
    lap("e2fsck -fyD");
  }

  if (options.kernel_files || options.apply_source_times || !kernel_dirs.empty()) {
    if (!can_loop_mount())
      return ::testing::AssertionFailure() << "kernel steps need root and loop devices";
    std::string mnt = image + ".mnt";
    ::mkdir(mnt.c_str(), 0755);
    LoopMount m(image, mnt, false);
    if (!m.ok()) return ::testing::AssertionFailure() << m.error();
    std::string err;
    for (auto& d : kernel_dirs) {
      if (!err.empty()) break;
      std::vector<std::string> cp = {"cp", "-a", source + "/" + d + "/.", mnt + "/" + d + "/"};
      CommandResult c = run(cp);
      if (c.exit_code != 0) err = failed(cp, c);
    }
    if (err.empty() && options.kernel_files) err = kernel_write_files(mnt, kind);
    if (err.empty() && options.apply_source_times) err = apply_times(source, mnt);
    ::sync();
    if (!m.unmount()) return ::testing::AssertionFailure() << m.error();
    ::rmdir(mnt.c_str());
    if (!err.empty()) return ::testing::AssertionFailure() << "kernel step on " << kind.name << ": " << err;
    lap("kernel writes");
  }
  auto clean = image_is_clean(image);
  lap("e2fsck -fn");
  return clean;
}

// ---------------------------------------------------------------- LoopMount

LoopMount::LoopMount(const std::string& image, const std::string& dir, bool read_only, const std::string& options)
    : image_(image), dir_(dir) {
  std::vector<std::string> losetup = {"losetup", "-f", "--show"};
  if (read_only) losetup.push_back("-r");
  losetup.push_back(image);
  // losetup -f can race with other engineers' tests; retry a few times.
  CommandResult r;
  for (int attempt = 0; attempt < 5; ++attempt) {
    r = run(losetup);
    if (r.exit_code == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (r.exit_code != 0) {
    error_ = failed(losetup, r);
    return;
  }
  device_ = r.out.substr(0, r.out.find('\n'));
  std::string how = read_only ? "ro,noatime" : "rw";
  if (!options.empty()) how += "," + options;
  std::vector<std::string> mount = {"mount", "-o", how, device_, dir};
  r = run(mount);
  if (r.exit_code != 0) {
    error_ = failed(mount, r);
    run({"losetup", "-d", device_});
    device_.clear();
    return;
  }
  mounted_ = true;
}

bool LoopMount::unmount() {
  bool ok = true;
  if (mounted_) {
    CommandResult r;
    for (int attempt = 0; attempt < 20; ++attempt) {
      r = run({"umount", dir_});
      if (r.exit_code == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    if (r.exit_code != 0) {
      error_ = "umount " + dir_ + " failed: " + r.err;
      run({"umount", "-l", dir_});
      ok = false;
    }
    mounted_ = false;
  }
  if (!device_.empty()) {
    CommandResult r;
    for (int attempt = 0; attempt < 20; ++attempt) {
      r = run({"losetup", "-d", device_});
      if (r.exit_code == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    if (r.exit_code != 0) {
      error_ += "losetup -d " + device_ + " failed: " + r.err;
      ok = false;
    }
    device_.clear();
  }
  return ok;
}

LoopMount::~LoopMount() { unmount(); }

// ---------------------------------------------------------------- oracles

std::string debugfs(const std::string& image, const std::string& command) {
  return run({"debugfs", "-R", command, image}).out;
}

std::map<std::string, std::string> dumpe2fs_header(const std::string& image) {
  std::map<std::string, std::string> m;
  std::istringstream in(run({"dumpe2fs", "-h", image}).out);
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    std::string value = line.substr(colon + 1);
    size_t b = value.find_first_not_of(" \t");
    value = b == std::string::npos ? "" : value.substr(b);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.pop_back();
    if (!m.count(key)) m[key] = value;
  }
  return m;
}

std::map<std::string, std::string> expect_dumpe2fs_shows(const std::string& image,
                                                         const std::map<std::string, std::string>& want) {
  auto header = dumpe2fs_header(image);
  for (const auto& [label, value] : want) {
    auto it = header.find(label);
    if (it == header.end()) {
      ADD_FAILURE() << "dumpe2fs -h " << image << " shows no \"" << label << "\" (expected \"" << value << "\")";
    } else {
      EXPECT_EQ(it->second, value) << "dumpe2fs -h " << image << ": \"" << label << "\"";
    }
  }
  return header;
}

int extent_depth(const std::string& image, const std::string& path) {
  std::string out = debugfs(image, "ex \"" + path + "\"");
  Regex re(R"(^\s*\d+/\s*(\d+)\s)");
  std::istringstream in(out);
  std::string line;
  int depth = -1;
  while (std::getline(in, line)) {
    RegexMatch m;
    if (regex_search(line, m, re)) depth = std::max(depth, std::stoi(m[1]));
  }
  return depth;
}

int htree_levels(const std::string& image, const std::string& path) {
  std::string out = debugfs(image, "htree \"" + path + "\"");
  RegexMatch m;
  Regex re(R"(Indirect levels:\s*(\d+))");
  if (regex_search(out, m, re)) return std::stoi(m[1]);
  return -1;
}

uint64_t inode_offset(const std::string& image, const std::string& path) {
  std::string out = debugfs(image, "imap \"" + path + "\"");
  RegexMatch m;
  Regex re(R"(located at block (\d+), offset 0x([0-9a-fA-F]+))");
  if (!regex_search(out, m, re)) throw std::runtime_error("debugfs imap " + path + ": " + out);
  uint64_t bs = std::stoull(dumpe2fs_header(image)["Block size"]);
  return std::stoull(m[1]) * bs + std::stoull(m[2], nullptr, 16);
}

uint32_t inode_number(const std::string& image, const std::string& path) {
  std::string out = debugfs(image, "imap \"" + path + "\"");
  RegexMatch m;
  Regex re(R"(Inode (\d+) is part)");
  if (!regex_search(out, m, re)) throw std::runtime_error("debugfs imap " + path + ": " + out);
  return static_cast<uint32_t>(std::stoul(m[1]));
}

std::string read_bytes(const std::string& image, uint64_t offset, size_t n) {
  int fd = ::open(image.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error("open " + image);
  std::string s(n, '\0');
  ssize_t r = ::pread(fd, s.data(), n, static_cast<off_t>(offset));
  ::close(fd);
  if (r != static_cast<ssize_t>(n)) throw std::runtime_error("short read from " + image);
  return s;
}

void write_bytes(const std::string& image, uint64_t offset, const std::string& data) {
  int fd = ::open(image.c_str(), O_WRONLY);
  if (fd < 0) throw std::runtime_error("open " + image);
  ssize_t r = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset));
  ::close(fd);
  if (r != static_cast<ssize_t>(data.size())) throw std::runtime_error("short write to " + image);
}

void flip_bit(const std::string& image, uint64_t offset, unsigned bit) {
  std::string b = read_bytes(image, offset, 1);
  b[0] = static_cast<char>(b[0] ^ (1u << (bit & 7)));
  write_bytes(image, offset, b);
}

void copy_file(const std::string& from, const std::string& to) {
  // Only the data runs are copied (in the kernel); holes stay holes.
  int in = ::open(from.c_str(), O_RDONLY);
  if (in < 0) throw std::runtime_error("open " + from + ": " + std::strerror(errno));
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (out < 0) {
    ::close(in);
    throw std::runtime_error("create " + to + ": " + std::strerror(errno));
  }
  struct stat st;
  ::fstat(in, &st);
  std::string err;
  off_t pos = 0;
  while (pos < st.st_size && err.empty()) {
    off_t data = ::lseek(in, pos, SEEK_DATA);
    if (data < 0) break;
    off_t hole = ::lseek(in, data, SEEK_HOLE);
    if (hole < 0) hole = st.st_size;
    off_t src = data, dst = data;
    while (src < hole) {
      ssize_t n = ::copy_file_range(in, &src, out, &dst, static_cast<size_t>(hole - src), 0);
      if (n <= 0) {
        err = std::string("copy_file_range: ") + std::strerror(errno);
        break;
      }
    }
    pos = hole;
  }
  if (err.empty() && ::ftruncate(out, st.st_size) != 0) err = std::string("ftruncate: ") + std::strerror(errno);
  ::close(in);
  ::close(out);
  if (!err.empty()) throw std::runtime_error("copy " + from + " to " + to + ": " + err);
}

// ---------------------------------------------------------------- shared

namespace {
std::mutex shared_mutex;
TempDir& shared_dir() {
  static TempDir* dir = new TempDir();  // removed by the atexit hook below
  static bool hooked = [] {
    std::atexit([] {
      std::error_code ec;
      run({"rm", "-rf", shared_dir().path()});
    });
    return true;
  }();
  (void)hooked;
  return *dir;
}
}  // namespace

const TreeManifest& shared_tree(uint32_t block_size, bool full) {
  std::lock_guard lock(shared_mutex);
  static std::map<std::pair<uint32_t, bool>, std::unique_ptr<TreeManifest>> trees;
  auto& slot = trees[{block_size, full}];
  if (!slot) {
    TreeOptions o;
    o.seed = 0x5eed0000 + block_size + (full ? 1 : 0);
    o.max_symlink_len = block_size - 1;
    if (full) {
      o.htree_entries = 20000;
      o.big_file_size = block_size == 1024 ? (100ull << 20) + 12345 : 0;
    } else {
      o.htree_entries = 2000;
      o.far_sparse = false;
      o.random_files = 40;
    }
    std::string root = shared_dir() / ("tree-" + std::to_string(block_size) + (full ? "-full" : "-small"));
    auto t0 = std::chrono::steady_clock::now();
    slot = std::make_unique<TreeManifest>(build_tree(root, o));
    if (std::getenv("UEXT_TEST_TIMING"))
      std::fprintf(stderr, "[timing] tree %s: %.1fs\n", root.c_str(),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return *slot;
}

const SharedImage& shared_image(const std::string& kind_name, bool full) {
  const ImageKind& kind = image_kind(kind_name);
  const TreeManifest& tree = shared_tree(kind.block_size, full);
  std::lock_guard lock(shared_mutex);
  static std::map<std::pair<std::string, bool>, std::unique_ptr<SharedImage>> images;
  auto& slot = images[{kind_name, full}];
  if (!slot) {
    slot = std::make_unique<SharedImage>();
    slot->kind = kind;
    slot->source = tree.root;
    slot->path = shared_dir() / (kind_name + (full ? "-full" : "-small") + ".img");
    slot->kernel_files = can_loop_mount();
    BuildOptions o;
    o.kernel_files = o.apply_source_times = slot->kernel_files;
    auto r = build_image(kind, tree.root, slot->path, o);
    if (!r) slot->error = r.message();
  }
  return *slot;
}

// ---------------------------------------------------------------- scratch

ScratchDir::ScratchDir() {
  char tmpl[] = "/dev/shm/uext-test-XXXXXX";
  if (::access("/dev/shm", W_OK) == 0 && ::mkdtemp(tmpl)) {
    path_ = tmpl;
  } else {
    fallback_ = std::make_unique<TempDir>();
    path_ = fallback_->path();
  }
}

ScratchDir::~ScratchDir() {
  if (!fallback_) run({"rm", "-rf", path_});
}

// ---------------------------------------------------------------- guarded uext

std::string GuardedResult::describe() const {
  std::string s = "exit " + std::to_string(exit_code);
  if (timed_out) s += " (TIMED OUT)";
  if (crashed) s += " (KILLED BY SIGNAL " + std::to_string(exit_code - 128) + ")";
  if (sanitizer) s += " (SANITIZER REPORT)";
  s += "\nstderr:\n" + err.substr(0, 3000) + "\nstdout (start):\n" + out.substr(0, 1000);
  return s;
}

GuardedResult run_uext(const std::vector<std::string>& args, int timeout_seconds) {
  auto env_opt = [](const char* name, const std::string& extra) {
    const char* cur = std::getenv(name);
    std::string v = cur && *cur ? std::string(cur) + ":" : "";
    return std::string(name) + "=" + v + extra;
  };
  std::vector<std::string> argv = {
      "env", env_opt("ASAN_OPTIONS", "exitcode=86"),
      env_opt("UBSAN_OPTIONS", "halt_on_error=1:exitcode=87:print_stacktrace=1"),
      "timeout", "-k", "5", std::to_string(timeout_seconds), uext_cli()};
  argv.insert(argv.end(), args.begin(), args.end());
  CommandResult r = run(argv);
  GuardedResult g;
  g.exit_code = r.exit_code;
  g.out = std::move(r.out);
  g.err = std::move(r.err);
  g.timed_out = r.exit_code == 124 || r.exit_code == 137;
  g.crashed = r.exit_code > 128 && !g.timed_out;
  g.sanitizer = r.exit_code == 86 || r.exit_code == 87 ||
                g.err.find("AddressSanitizer") != std::string::npos ||
                g.err.find("runtime error:") != std::string::npos ||
                g.err.find("LeakSanitizer") != std::string::npos;
  return g;
}

}  // namespace uext::testing
