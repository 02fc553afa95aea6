#include "support/tree.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <map>
#include <stdexcept>

#include "support/process.h"

namespace uext::testing {

// ---------------------------------------------------------------- Rng

uint64_t Rng::next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void Rng::fill(char* data, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = next();
    std::memcpy(data + i, &v, 8);
  }
  if (i < n) {
    uint64_t v = next();
    std::memcpy(data + i, &v, n - i);
  }
}

std::string Rng::bytes(size_t n) {
  std::string s(n, '\0');
  fill(s.data(), n);
  return s;
}

std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\\') out += "\\\\";
    else if (c < 0x20 || c >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else out += static_cast<char>(c);
  }
  return out;
}

// ---------------------------------------------------------------- builder

namespace {

[[noreturn]] void fail(const std::string& what, const std::string& path) {
  throw std::runtime_error(what + " " + printable(path) + ": " + std::strerror(errno));
}

class Builder {
 public:
  Builder(const std::string& root, const TreeOptions& o) : root_(root), o_(o), rng_(o.seed) {
    m_.root = root;
  }

  std::string abs(const std::string& rel) const { return rel.empty() ? root_ : root_ + "/" + rel; }

  void mkdir_p(const std::string& rel, mode_t mode = 0755) {
    if (::mkdir(abs(rel).c_str(), mode) != 0 && errno != EEXIST) fail("mkdir", rel);
    ::chmod(abs(rel).c_str(), mode);
    if (std::find(m_.directories.begin(), m_.directories.end(), rel) == m_.directories.end())
      m_.directories.push_back(rel);
  }

  // Random content that never has an all-zero 1 KiB block (mke2fs -d would
  // turn such blocks into holes).
  std::string content(size_t n) {
    std::string s = rng_.bytes(n);
    for (size_t i = 0; i < n; i += 512) s[i] = static_cast<char>(0x5a);
    return s;
  }

  void write_whole(const std::string& rel, const std::string& data) {
    int fd = ::open(abs(rel).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) fail("create", rel);
    size_t done = 0;
    while (done < data.size()) {
      ssize_t w = ::write(fd, data.data() + done, data.size() - done);
      if (w <= 0) fail("write", rel);
      done += static_cast<size_t>(w);
    }
    ::close(fd);
  }

  void file(const std::string& rel, size_t size) {
    write_whole(rel, content(size));
    m_.regular_files.push_back(rel);
  }

  // A sparse file: `pieces` are (offset, length) data runs; the rest holes.
  void sparse(const std::string& rel, uint64_t size,
              const std::vector<std::pair<uint64_t, uint64_t>>& pieces) {
    int fd = ::open(abs(rel).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) fail("create", rel);
    for (auto [off, len] : pieces) {
      std::string d = content(len);
      if (::pwrite(fd, d.data(), d.size(), static_cast<off_t>(off)) != static_cast<ssize_t>(len))
        fail("pwrite", rel);
    }
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) fail("truncate", rel);
    ::close(fd);
    m_.regular_files.push_back(rel);
    m_.sparse_files.push_back(rel);
  }

  void symlink(const std::string& target, const std::string& rel) {
    if (::symlink(target.c_str(), abs(rel).c_str()) != 0) fail("symlink", rel);
    m_.symlinks.push_back(rel);
  }

  void hardlink(const std::string& from, const std::string& to) {
    if (::link(abs(from).c_str(), abs(to).c_str()) != 0) fail("link", to);
  }

  void xattr(const std::string& rel, const std::string& name, const std::string& value) {
    if (::lsetxattr(abs(rel).c_str(), name.c_str(), value.data(), value.size(), 0) != 0)
      fail("setxattr " + name, rel);
  }

  void run_checked(const std::vector<std::string>& argv) {
    CommandResult r = run(argv);
    if (r.exit_code != 0) {
      std::string line;
      for (auto& a : argv) line += a + " ";
      throw std::runtime_error("command failed: " + line + ": " + r.err);
    }
  }

  std::string name_of_len(size_t len, const std::string& prefix) {
    static const char alnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_";
    std::string s = prefix;
    while (s.size() < len) s += alnum[rng_.below(sizeof alnum - 1)];
    return s;
  }

  void build() {
    if (::mkdir(root_.c_str(), 0755) != 0 && errno != EEXIST) fail("mkdir", root_);
    ::chmod(root_.c_str(), 0755);
    m_.directories.push_back("");

    sizes();
    sparse_files();
    names();
    links();
    xattrs();
    special();
    modes_and_owners();
    random_subtree();
    if (o_.htree_entries) many();
    if (o_.big_file_size) {
      mkdir_p("big");
      m_.big_file = "big/blob.bin";
      int fd = ::open(abs(m_.big_file).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0) fail("create", m_.big_file);
      std::string chunk(1 << 20, '\0');
      for (uint64_t done = 0; done < o_.big_file_size;) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(chunk.size(), o_.big_file_size - done));
        rng_.fill(chunk.data(), n);
        for (size_t i = 0; i < n; i += 512) chunk[i] = 0x33;
        if (::write(fd, chunk.data(), n) != static_cast<ssize_t>(n)) fail("write", m_.big_file);
        done += n;
      }
      ::close(fd);
      m_.regular_files.push_back(m_.big_file);
    }
    times();
  }

  void sizes() {
    mkdir_p("sizes");
    const uint64_t K = 1024;
    std::vector<uint64_t> s = {0, 1, 59, 60, 61, 511, 512, 513, 1023, 1024, 1025, 2047, 2048,
                               4095, 4096, 4097, 8191, 8192, 12 * K - 1, 12 * K, 12 * K + 1,
                               13 * 4096, 268 * K - 1, 268 * K, 268 * K + 1, 48 * K + 1,
                               1 * K * K + 7, (12 + 1024) * 4096 + 1, 3 * K * K + 333};
    for (uint64_t n : s) file("sizes/f" + std::to_string(n), n);
  }

  void sparse_files() {
    mkdir_p("sparse");
    const uint64_t M = 1 << 20;
    sparse("sparse/hole-start", 705013 + 5000, {{705013, 5000}});
    sparse("sparse/hole-end", 9 * M, {{0, 3333}});
    sparse("sparse/all-hole", 5 * M + 123, {});
    sparse("sparse/odd", 6 * M + 17, {{1000, 2000}, {70000, 1}, {5 * M + 123, 9876}});
    std::vector<std::pair<uint64_t, uint64_t>> pieces;
    for (int i = 0; i < 40; ++i) pieces.push_back({i * 512 * 1024 + rng_.below(100000), rng_.between(1, 20000)});
    sparse("sparse/many-holes", 21 * M, pieces);
    // Data where ext2 with 1 KiB blocks switches to indirect, double and
    // triple indirect blocks.
    sparse("sparse/indirect-edges", 70 * M,
           {{12 * 1024 - 100, 200}, {268 * 1024 - 7, 14}, {(12 + 256 + 65536) * 1024ull - 3, 4000},
            {69 * M, 1234}});
    if (o_.far_sparse) {
      const uint64_t G = 1ull << 30;
      sparse("sparse/far", 5 * G + 20000, {{4 * G - 5, 10}, {5 * G + 77, 10000}});
    }
  }

  void names() {
    mkdir_p("names");
    std::vector<std::string> n = {
        "with space", " leading space", "trailing space ", "new\nline", "tab\there",
        "h\xc3\xa9llo w\xc3\xb6rld \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x8e\x89",
        "\xff\xfe\x80raw-bytes", "-rf", "--help", "-", ".hidden", "..double", "...", "#hash",
        "back\\slash", "quote\"s", "'single'", "*star?", "$(cmd)", "a:b;c|d&e<f>g",
        name_of_len(255, "long-"), "\x01\x02ctl"};
    std::string utf8_long;
    while (utf8_long.size() + 2 <= 254) utf8_long += "\xc3\xa9";
    utf8_long += "a";
    n.push_back(utf8_long);
    for (auto& name : n) file("names/" + name, rng_.below(3000));
    mkdir_p("names/" + name_of_len(255, "dir-"));
    mkdir_p("names/-dir with\nnewline");
    file("names/-dir with\nnewline/inner", 10);
  }

  void links() {
    mkdir_p("links");
    std::vector<size_t> lens = {1, 30, 59, 60, 61, 100, 500, 1000, 1023, 2000, 4095};
    for (size_t len : lens) {
      if (len > o_.max_symlink_len) continue;
      std::string target = "t/";
      while (target.size() < len) target += static_cast<char>('a' + rng_.below(26));
      target.resize(len);
      symlink(target, "links/sym" + std::to_string(len));
    }
    symlink("/etc/passwd", "links/absolute");
    symlink("nowhere/at/all", "links/dangling");
    symlink("../sizes", "links/to-dir");
    symlink("chain-b", "links/chain-a");
    symlink("chain-c", "links/chain-b");
    symlink("../sizes/f4096", "links/chain-c");
    symlink("loop", "links/loop");
    symlink("\xc3\xa9t\xc3\xa9 \xe6\x97\xa5", "links/utf8-target");
    // Hard links, in the same directory and across directories.
    mkdir_p("links/hl");
    mkdir_p("links/other");
    mkdir_p("links/deep");
    mkdir_p("links/deep/a");
    mkdir_p("links/deep/a/b");
    file("links/hl/orig", 5000);
    hardlink("links/hl/orig", "links/hl/same-dir");
    hardlink("links/hl/orig", "links/other/cross");
    hardlink("links/hl/orig", "links/deep/a/b/cross-deep");
    m_.hard_link_groups.push_back(
        {"links/hl/orig", "links/hl/same-dir", "links/other/cross", "links/deep/a/b/cross-deep"});
    file("links/hl/pair", 0);
    hardlink("links/hl/pair", "links/other/pair-empty");
    m_.hard_link_groups.push_back({"links/hl/pair", "links/other/pair-empty"});
    sparse("links/hl/sparse-linked", 3 << 20, {{1 << 20, 777}});
    hardlink("links/hl/sparse-linked", "links/deep/sparse-linked");
    m_.hard_link_groups.push_back({"links/hl/sparse-linked", "links/deep/sparse-linked"});
  }

  void xattrs() {
    mkdir_p("xattrs");
    file("xattrs/small", 100);
    xattr("xattrs/small", "user.a", "1");
    xattr("xattrs/small", "user.b", "thirty bytes of value .......");
    file("xattrs/large", 2000);
    xattr("xattrs/large", "user.big", rng_.bytes(700));
    xattr("xattrs/large", "user.s", "s");
    file("xattrs/many", 10);
    for (int i = 0; i < 12; ++i)
      xattr("xattrs/many", "user.k" + std::to_string(i), name_of_len(20, ""));
    file("xattrs/binary", 10);
    xattr("xattrs/binary", "user.nul", std::string("a\0b\0\xff", 5));
    xattr("xattrs/binary", "user.empty", "");
    file("xattrs/trusted", 10);
    xattr("xattrs/trusted", "trusted.t", "secret");
    mkdir_p("xattrs/dir");
    xattr("xattrs/dir", "user.d", "on a directory");
    file("xattrs/acl-file", 10);
    run_checked({"setfacl", "-m", "u:1234:rw,g:5678:r", abs("xattrs/acl-file")});
    mkdir_p("xattrs/acl-dir");
    run_checked({"setfacl", "-m", "u:1234:rwx", abs("xattrs/acl-dir")});
    run_checked({"setfacl", "-d", "-m", "u:1234:rx,g::r", abs("xattrs/acl-dir")});
    hardlink("xattrs/large", "links/other/xattr-link");
    m_.hard_link_groups.push_back({"xattrs/large", "links/other/xattr-link"});
  }

  void special() {
    mkdir_p("special");
    if (::mkfifo(abs("special/fifo").c_str(), 0644) != 0) fail("mkfifo", "special/fifo");
    if (::mknod(abs("special/null").c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0)
      fail("mknod", "special/null");
    if (::mknod(abs("special/blk").c_str(), S_IFBLK | 0660, makedev(7, 200)) != 0)
      fail("mknod", "special/blk");
    if (::mknod(abs("special/big-dev").c_str(), S_IFCHR | 0600, makedev(300, 70000)) != 0)
      fail("mknod", "special/big-dev");
    int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::string p = abs("special/sock");
    if (p.size() >= sizeof addr.sun_path) throw std::runtime_error("socket path too long: " + p);
    std::memcpy(addr.sun_path, p.c_str(), p.size() + 1);
    if (::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) fail("bind", p);
    ::close(s);
  }

  void chown(const std::string& rel, uid_t u, gid_t g) {
    if (::lchown(abs(rel).c_str(), u, g) != 0) fail("lchown", rel);
  }
  void chmod(const std::string& rel, mode_t m) {
    if (::chmod(abs(rel).c_str(), m) != 0) fail("chmod", rel);
  }

  void modes_and_owners() {
    mkdir_p("modes");
    for (auto [name, mode] : std::vector<std::pair<std::string, mode_t>>{
             {"setuid", 04755}, {"setgid", 02755}, {"all", 07777}, {"none", 0}, {"rwx", 0777},
             {"ro", 0400}, {"setuid-noexec", 04644}}) {
      file("modes/" + name, 10);
      chmod("modes/" + name, mode);
    }
    mkdir_p("modes/sticky", 01777);
    mkdir_p("modes/setgid-dir", 02775);
    mkdir_p("modes/private", 0700);
    file("modes/readonly-dir-file", 5);
    mkdir_p("modes/readonly-dir", 0755);
    file("modes/readonly-dir/inside", 5);
    chmod("modes/readonly-dir", 0555);

    mkdir_p("owners");
    file("owners/odd", 10);
    chown("owners/odd", 1234, 5678);
    mkdir_p("owners/nobody-dir");
    chown("owners/nobody-dir", 65534, 65534);
    file("owners/big-ids", 10);
    chown("owners/big-ids", 100000, 200000);
    file("owners/huge-ids", 10);
    chown("owners/huge-ids", 3000000000u, 3000000001u);
    symlink("odd", "owners/symlink-owned");
    chown("owners/symlink-owned", 0, 1234);
    // chown clears setuid: set it afterwards.
    file("owners/setuid-owned", 10);
    chown("owners/setuid-owned", 1234, 5678);
    chmod("owners/setuid-owned", 06755);
  }

  void random_subtree() {
    mkdir_p("random");
    std::vector<std::string> dirs = {"random"};
    std::vector<std::string> files;
    for (uint32_t i = 0; i < o_.random_files; ++i) {
      uint64_t what = rng_.below(100);
      const std::string& parent = dirs[rng_.below(dirs.size())];
      std::string name = parent + "/" + name_of_len(rng_.between(1, 40), std::to_string(i) + "-");
      if (what < 12 && std::count(parent.begin(), parent.end(), '/') < 4) {
        mkdir_p(name, rng_.below(2) ? 0755 : 0750);
        dirs.push_back(name);
      } else if (what < 20) {
        symlink(name_of_len(rng_.between(1, 200), ""), name);
      } else if (what < 25 && !files.empty()) {
        std::string target = files[rng_.below(files.size())];
        hardlink(target, name);
        bool found = false;
        for (auto& g : m_.hard_link_groups)
          if (g.front() == target) { g.push_back(name); found = true; }
        if (!found) m_.hard_link_groups.push_back({target, name});
      } else {
        // Log-uniform sizes: mostly small, some large.
        uint64_t bits = rng_.below(18);
        uint64_t size = std::min<uint64_t>(o_.random_max_size, rng_.below((1ull << bits) + 1));
        file(name, size);
        files.push_back(name);
      }
    }
  }

  void many() {
    mkdir_p("many");
    m_.htree_dir = "many";
    for (uint32_t i = 0; i < o_.htree_entries; ++i) {
      std::string name = name_of_len(rng_.between(150, 250), std::to_string(i) + "-");
      std::string rel = "many/" + name;
      if (i % 1000 == 7) {
        file(rel, rng_.between(1, 9000));
      } else {
        int fd = ::open(abs(rel).c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0) fail("create", rel);
        ::close(fd);
        m_.regular_files.push_back(rel);
      }
      m_.htree_names.push_back(name);
    }
  }

  // Sets atime/mtime on every entry, children before parents.
  void times() {
    std::map<std::string, std::string> special = {
        {"sizes/f1", "1960-01-01 00:00:00.123456789"},
        {"sizes/f59", "1901-12-14 00:00:00.5"},
        {"sizes/f60", "2100-05-05 12:00:00.987654321"},
        {"sizes/f61", "2038-01-19 03:14:08.000000001"},
        {"sizes/f511", "1970-01-01 00:00:00"},
        {"sizes/f512", "1969-12-31 23:59:59.999999999"},
        {"sizes/f513", "2400-02-29 10:00:00.000000333"},
        {"links/sym30", "1950-06-01 00:00:00.25"},
        {"special/fifo", "2200-01-01 00:00:00.1"},
        {"names", "1965-03-03 03:03:03.333333333"},
    };
    std::function<void(const std::string&)> walk = [&](const std::string& rel) {
      struct stat st;
      if (::lstat(abs(rel).c_str(), &st) != 0) fail("lstat", rel);
      if (S_ISDIR(st.st_mode)) {
        for (auto& child : list(rel)) walk(rel.empty() ? child : rel + "/" + child);
      }
      auto it = special.find(rel);
      if (it != special.end()) {
        run_checked({"touch", "-h", "-d", it->second + " UTC", abs(rel)});
        return;
      }
      timespec ts[2];
      for (auto& t : ts) {
        t.tv_sec = static_cast<time_t>(rng_.between(40000000, 2100000000));
        t.tv_nsec = static_cast<long>(rng_.below(1000000000));
      }
      if (::utimensat(AT_FDCWD, abs(rel).c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0)
        fail("utimensat", rel);
    };
    walk("");
  }

  std::vector<std::string> list(const std::string& rel) {
    std::vector<std::string> out;
    DIR* d = ::opendir(abs(rel).c_str());
    if (!d) fail("opendir", rel);
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") out.push_back(n);
    }
    ::closedir(d);
    std::sort(out.begin(), out.end());
    return out;
  }

  TreeManifest take() { return std::move(m_); }

 private:
  std::string root_;
  TreeOptions o_;
  Rng rng_;
  TreeManifest m_;
};

}  // namespace

TreeManifest build_tree(const std::string& root, const TreeOptions& options) {
  Builder b(root, options);
  b.build();
  return b.take();
}

// ---------------------------------------------------------------- comparer

std::vector<std::pair<uint64_t, uint64_t>> data_ranges(const std::string& path,
                                                       uint64_t granularity) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  int fd = ::open(path.c_str(), O_RDONLY | O_NOATIME);
  if (fd < 0) fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return out;
  struct stat st;
  ::fstat(fd, &st);
  off_t end = st.st_size, pos = 0;
  while (pos < end) {
    off_t data = ::lseek(fd, pos, SEEK_DATA);
    if (data < 0) break;
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) hole = end;
    uint64_t s = static_cast<uint64_t>(data) / granularity * granularity;
    uint64_t e = (static_cast<uint64_t>(hole) + granularity - 1) / granularity * granularity;
    e = std::min<uint64_t>(e, (static_cast<uint64_t>(end) + granularity - 1) / granularity * granularity);
    if (!out.empty() && out.back().second >= s) out.back().second = std::max(out.back().second, e);
    else out.push_back({s, e});
    pos = hole;
  }
  ::close(fd);
  return out;
}

namespace {

struct Entry {
  struct stat st {};
  std::string target;
  std::map<std::string, std::string> xattrs;
  bool xattr_error = false;
};

using Tree = std::map<std::string, Entry>;

void read_xattrs(const std::string& path, Entry& e) {
  ssize_t n = ::llistxattr(path.c_str(), nullptr, 0);
  if (n < 0) { e.xattr_error = errno != ENOTSUP; return; }
  std::string names(static_cast<size_t>(n), '\0');
  n = ::llistxattr(path.c_str(), names.data(), names.size());
  if (n < 0) { e.xattr_error = true; return; }
  names.resize(static_cast<size_t>(n));
  for (size_t i = 0; i < names.size();) {
    std::string name = names.c_str() + i;
    i += name.size() + 1;
    if (name.empty()) continue;
    ssize_t vn = ::lgetxattr(path.c_str(), name.c_str(), nullptr, 0);
    std::string v(vn > 0 ? static_cast<size_t>(vn) : 0, '\0');
    if (vn > 0) vn = ::lgetxattr(path.c_str(), name.c_str(), v.data(), v.size());
    if (vn < 0) { e.xattr_error = true; continue; }
    v.resize(static_cast<size_t>(vn));
    e.xattrs[name] = v;
  }
}

// lstat is taken before anything else touches the entry, so atimes are
// seen as they were; directories and files are opened O_NOATIME.
void scan(const std::string& root, const std::string& rel, const CompareOptions& o, Tree& tree,
          std::vector<std::string>& errors) {
  std::string path = rel.empty() ? root : root + "/" + rel;
  Entry e;
  if (::lstat(path.c_str(), &e.st) != 0) {
    errors.push_back(printable(path) + ": lstat: " + std::strerror(errno));
    return;
  }
  std::vector<std::string> children;
  if (S_ISDIR(e.st.st_mode)) {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOATIME);
    if (fd < 0) fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY);
    DIR* d = fd >= 0 ? ::fdopendir(fd) : nullptr;
    if (!d) {
      errors.push_back(printable(path) + ": opendir: " + std::strerror(errno));
    } else {
      while (dirent* de = ::readdir(d)) {
        std::string n = de->d_name;
        if (n != "." && n != "..") children.push_back(n);
      }
      ::closedir(d);
    }
  } else if (S_ISLNK(e.st.st_mode)) {
    std::string buf(8192, '\0');
    ssize_t n = ::readlink(path.c_str(), buf.data(), buf.size());
    if (n < 0) errors.push_back(printable(path) + ": readlink: " + std::strerror(errno));
    else e.target.assign(buf.data(), static_cast<size_t>(n));
  }
  if (o.xattrs) read_xattrs(path, e);
  tree[rel] = std::move(e);
  std::sort(children.begin(), children.end());
  for (auto& c : children) {
    std::string crel = rel.empty() ? c : rel + "/" + c;
    if (o.ignore.count(crel)) continue;
    scan(root, crel, o, tree, errors);
  }
}

std::string octal(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", v);
  return buf;
}

const char* type_name(mode_t m) {
  switch (m & S_IFMT) {
    case S_IFREG: return "regular file";
    case S_IFDIR: return "directory";
    case S_IFLNK: return "symlink";
    case S_IFCHR: return "char device";
    case S_IFBLK: return "block device";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "socket";
  }
  return "unknown type";
}

std::string time_str(int64_t s, long ns) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%lld.%09ld", static_cast<long long>(s), ns);
  return buf;
}

void expect_time(const std::string& what, timespec exp, timespec act, const CompareOptions& o,
                 const std::string& name, std::vector<std::string>& diffs) {
  int64_t es = exp.tv_sec;
  long ens = exp.tv_nsec;
  if (o.times_32bit) {
    es = std::clamp<int64_t>(es, INT32_MIN, INT32_MAX);
    ens = 0;
  }
  if (es != act.tv_sec || ens != act.tv_nsec)
    diffs.push_back(name + ": " + what + " " + time_str(es, ens) + " != " +
                    time_str(act.tv_sec, act.tv_nsec));
}

// Compares two files' bytes, reading only where either has data.
void compare_content(const std::string& ep, const std::string& ap, uint64_t size,
                     const std::vector<std::pair<uint64_t, uint64_t>>& ranges_e,
                     const std::vector<std::pair<uint64_t, uint64_t>>& ranges_a,
                     const std::string& name, std::vector<std::string>& diffs) {
  int ef = ::open(ep.c_str(), O_RDONLY | O_NOATIME);
  int af = ::open(ap.c_str(), O_RDONLY | O_NOATIME);
  if (ef < 0 || af < 0) {
    diffs.push_back(name + ": cannot open for comparison: " + std::strerror(errno));
    if (ef >= 0) ::close(ef);
    if (af >= 0) ::close(af);
    return;
  }
  std::vector<std::pair<uint64_t, uint64_t>> all = ranges_e;
  all.insert(all.end(), ranges_a.begin(), ranges_a.end());
  std::sort(all.begin(), all.end());
  std::vector<std::pair<uint64_t, uint64_t>> merged;
  for (auto r : all) {
    if (!merged.empty() && merged.back().second >= r.first)
      merged.back().second = std::max(merged.back().second, r.second);
    else merged.push_back(r);
  }
  // Kept across calls and no larger than the file: a fresh 1 MiB buffer
  // per file is an mmap, 256 page faults and an munmap, which made the
  // comparison of a 20,000-file tree seconds slower on a shadow-paged VM.
  thread_local std::vector<char> b1, b2;
  const size_t want = static_cast<size_t>(std::clamp<uint64_t>(size, 1, 1 << 20));
  if (b1.size() < want) {
    b1.resize(want);
    b2.resize(want);
  }
  for (auto [s, e] : merged) {
    e = std::min<uint64_t>(e, size);
    for (uint64_t pos = s; pos < e;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(b1.size(), e - pos));
      ssize_t r1 = ::pread(ef, b1.data(), n, static_cast<off_t>(pos));
      ssize_t r2 = ::pread(af, b2.data(), n, static_cast<off_t>(pos));
      if (r1 != static_cast<ssize_t>(n) || r2 != static_cast<ssize_t>(n)) {
        diffs.push_back(name + ": short read at " + std::to_string(pos) + " (expected " +
                        std::to_string(r1) + ", actual " + std::to_string(r2) + ")");
        ::close(ef);
        ::close(af);
        return;
      }
      if (std::memcmp(b1.data(), b2.data(), n) != 0) {
        size_t i = 0;
        while (b1[i] == b2[i]) ++i;
        diffs.push_back(name + ": content differs at byte " + std::to_string(pos + i));
        ::close(ef);
        ::close(af);
        return;
      }
      pos += n;
    }
  }
  ::close(ef);
  ::close(af);
}

std::string ranges_str(const std::vector<std::pair<uint64_t, uint64_t>>& r) {
  std::string s;
  for (size_t i = 0; i < r.size() && i < 6; ++i)
    s += "[" + std::to_string(r[i].first) + "," + std::to_string(r[i].second) + ")";
  if (r.size() > 6) s += "... (" + std::to_string(r.size()) + " ranges)";
  return s.empty() ? "(all hole)" : s;
}

}  // namespace

std::vector<std::string> compare_trees(const std::string& expected, const std::string& actual,
                                       const CompareOptions& o) {
  std::vector<std::string> diffs;
  Tree te, ta;
  scan(expected, "", o, te, diffs);
  scan(actual, "", o, ta, diffs);

  for (auto& [rel, e] : te)
    if (!ta.count(rel)) diffs.push_back(printable(rel) + ": missing (" + type_name(e.st.st_mode) + ")");
  for (auto& [rel, a] : ta)
    if (!te.count(rel)) diffs.push_back(printable(rel) + ": unexpected (" + type_name(a.st.st_mode) + ")");

  // Hard-link groups: paths sharing an inode, per tree.
  auto groups = [](const Tree& t) {
    std::map<std::pair<dev_t, ino_t>, std::vector<std::string>> by_ino;
    for (auto& [rel, e] : t)
      if (!S_ISDIR(e.st.st_mode)) by_ino[{e.st.st_dev, e.st.st_ino}].push_back(rel);
    std::map<std::string, std::vector<std::string>> of;
    for (auto& [k, v] : by_ino)
      for (auto& p : v) of[p] = v;
    return of;
  };
  auto ge = groups(te), ga = groups(ta);
  std::set<std::string> reported;

  for (auto& [rel, e] : te) {
    auto it = ta.find(rel);
    if (it == ta.end()) continue;
    const Entry& a = it->second;
    std::string name = rel.empty() ? "(root)" : printable(rel);
    bool is_root = rel.empty();
    if ((e.st.st_mode & S_IFMT) != (a.st.st_mode & S_IFMT)) {
      diffs.push_back(name + ": type " + type_name(e.st.st_mode) + " != " + type_name(a.st.st_mode));
      continue;
    }
    if (is_root && !o.root_metadata) continue;
    bool lnk = S_ISLNK(e.st.st_mode);
    if (!lnk && (e.st.st_mode & 07777) != (a.st.st_mode & 07777))
      diffs.push_back(name + ": mode " + octal(e.st.st_mode & 07777) + " != " + octal(a.st.st_mode & 07777));
    if (o.owners && (e.st.st_uid != a.st.st_uid || e.st.st_gid != a.st.st_gid))
      diffs.push_back(name + ": owner " + std::to_string(e.st.st_uid) + ":" + std::to_string(e.st.st_gid) +
                      " != " + std::to_string(a.st.st_uid) + ":" + std::to_string(a.st.st_gid));
    bool dir = S_ISDIR(e.st.st_mode);
    if (!dir || o.directory_times) {
      if (o.mtime) expect_time("mtime", e.st.st_mtim, a.st.st_mtim, o, name, diffs);
      if (o.atime) expect_time("atime", e.st.st_atim, a.st.st_atim, o, name, diffs);
    }
    if ((S_ISCHR(e.st.st_mode) || S_ISBLK(e.st.st_mode)) && e.st.st_rdev != a.st.st_rdev)
      diffs.push_back(name + ": rdev " + std::to_string(major(e.st.st_rdev)) + "," +
                      std::to_string(minor(e.st.st_rdev)) + " != " + std::to_string(major(a.st.st_rdev)) +
                      "," + std::to_string(minor(a.st.st_rdev)));
    if (lnk && e.target != a.target)
      diffs.push_back(name + ": symlink target \"" + printable(e.target.substr(0, 80)) + "\" (" +
                      std::to_string(e.target.size()) + " bytes) != \"" + printable(a.target.substr(0, 80)) +
                      "\" (" + std::to_string(a.target.size()) + " bytes)");
    if (o.xattrs) {
      if (e.xattr_error || a.xattr_error) diffs.push_back(name + ": cannot read xattrs");
      for (auto& [k, v] : e.xattrs) {
        auto x = a.xattrs.find(k);
        if (x == a.xattrs.end()) diffs.push_back(name + ": xattr " + k + " missing");
        else if (x->second != v)
          diffs.push_back(name + ": xattr " + k + " value differs (" + std::to_string(v.size()) +
                          " bytes != " + std::to_string(x->second.size()) + " bytes)");
      }
      for (auto& [k, v] : a.xattrs)
        if (!e.xattrs.count(k)) diffs.push_back(name + ": unexpected xattr " + k);
    }
    if (!dir) {
      auto g1 = ge[rel], g2 = ga[rel];
      if (g1 != g2 && !reported.count(rel)) {
        std::string s1, s2;
        for (auto& p : g1) { s1 += printable(p) + " "; reported.insert(p); }
        for (auto& p : g2) s2 += printable(p) + " ";
        diffs.push_back(name + ": hard-link group {" + s1 + "} != {" + s2 + "}");
      }
    }
    if (S_ISREG(e.st.st_mode)) {
      if (e.st.st_size != a.st.st_size) {
        diffs.push_back(name + ": size " + std::to_string(e.st.st_size) + " != " + std::to_string(a.st.st_size));
        continue;
      }
      std::string ep = expected + "/" + rel, ap = actual + "/" + rel;
      auto re = data_ranges(ep, o.hole_granularity);
      auto ra = data_ranges(ap, o.hole_granularity);
      if (o.sparseness && re != ra)
        diffs.push_back(name + ": data/hole map " + ranges_str(re) + " != " + ranges_str(ra));
      compare_content(ep, ap, static_cast<uint64_t>(e.st.st_size), re, ra, name, diffs);
    }
  }
  return diffs;
}

std::string format_differences(const std::vector<std::string>& differences, size_t max) {
  std::string s;
  for (size_t i = 0; i < differences.size() && i < max; ++i) s += "  " + differences[i] + "\n";
  if (differences.size() > max)
    s += "  ... and " + std::to_string(differences.size() - max) + " more\n";
  return s;
}

}  // namespace uext::testing
