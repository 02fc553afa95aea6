// Crash consistency of uext's write path: a workload of creates, renames,
// appends, overwrites, truncates, links, directory growth and allocation
// across groups runs through the public API on a RecordingDevice; every
// flush boundary and many subsets (some torn) of the writes in flight
// between flushes become crash images. Each one is opened read-write by uext
// (journal replay, orphan list), closed, and must then be e2fsck -fn clean
// and hold what the workload's last completed fsync made durable.
//
// The oracle is stronger than "fsynced data is there": metadata must equal
// the model after some prefix of the operations issued between the last
// fsync before the crash and the next one (a journal commits operations in
// order, all of each or none), and every 512-byte sector of every file must
// equal that sector in one of the file's versions from the same window
// (in-place overwrites are not journaled, so they may land in any mix, but
// never as bytes the file never held).
//
// UEXT_CRASH_STATES sets the total number of states (default 5200);
// UEXT_CRASH_WORKERS the checking threads; UEXT_CRASH_SEED, UEXT_CRASH_STATE
// and UEXT_CRASH_KEEP work as in support/crash.h.
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support/crash.h"
#include "support/images.h"
#include "support/process.h"
#include "support/tree.h"
#include "uext/filesystem.h"

namespace uext::testing {
namespace {

uint64_t env_or(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : fallback;
}

// ------------------------------------------------------------ the model

// The tree the workload believes it made. File contents are shared between
// snapshots (one snapshot per operation), so keeping them all is cheap.
struct Model {
  std::set<std::string> dirs = {""};                  // "" is the root
  std::map<std::string, int> files;                   // path -> file id (hard links share one)
  std::map<std::string, std::string> symlinks;        // path -> target
  std::map<int, std::shared_ptr<const std::string>> data;  // file id -> contents
};

std::string parent_of(const std::string& p) {
  auto s = p.rfind('/');
  return s == std::string::npos ? "" : p.substr(0, s);
}
std::string name_of(const std::string& p) {
  auto s = p.rfind('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}
std::string join(const std::string& dir, const std::string& name) { return dir.empty() ? name : dir + "/" + name; }

std::span<const std::byte> bytes_of(const std::string& s) { return std::as_bytes(std::span(s)); }

struct ImageSpec {
  std::string name;
  std::vector<std::string> mkfs;  // mke2fs arguments before the image path
  std::string size;
  bool journaled = true;
  bool extents = true;
  uint32_t block_size = 4096;
  uint64_t big_write = 0;  // bytes of the occasional large append (crosses groups)
  double share = 0.3;      // of UEXT_CRASH_STATES
  // Files and directories get owners and groups from a few dozen ids, and
  // some steps chown: for an image whose quota files must follow.
  bool owners = false;
};

// What the workload recorded: a snapshot after each operation, and for
// each durability mark the snapshot it made durable.
struct History {
  std::vector<Model> snaps;
  std::vector<size_t> mark_snap;  // mark i ("m<i>") -> snapshot index
  std::vector<std::string> ops;   // description of the op that made snaps[i] (i >= 1)
};

class Workload {
 public:
  Workload(Filesystem& fs, CrashHarness& h, const ImageSpec& spec, uint64_t seed)
      : fs_(fs), h_(h), spec_(spec), rng_(seed) {
    hist_.snaps.push_back(m_);
    hist_.ops.push_back("start");
  }

  History take() { return std::move(hist_); }

  // `ops` random operations, an fsync or sync every few.
  Status run(int ops) {
    for (int i = 0; i < ops; ++i) {
      UEXT_TRY(step());
      if (rng_.below(4) == 0) UEXT_TRY(durable_point());
    }
    return durable_point();
  }

  Status durable_point() {
    if (rng_.below(3) == 0 || m_.files.empty()) {
      UEXT_TRY(fs_.sync());
    } else {
      auto it = m_.files.begin();
      std::advance(it, static_cast<long>(rng_.below(m_.files.size())));
      UEXT_ASSIGN_OR_RETURN(Ino ino, ino_of(it->first));
      UEXT_TRY(fs_.fsync(ino, rng_.below(2) == 0));
    }
    mark();
    return {};
  }

  // After close(): everything must be there.
  void mark() {
    h_.mark_durable("m" + std::to_string(hist_.mark_snap.size()));
    hist_.mark_snap.push_back(hist_.snaps.size() - 1);
  }

 private:
  Result<Ino> ino_of(const std::string& path) {
    auto r = fs_.resolve("/" + path, false);
    if (!r.ok()) return Error(r.error().code(), "resolve /" + path + ": " + r.error().message());
    return r;
  }
  void snap(std::string what) {
    hist_.snaps.push_back(m_);
    hist_.ops.push_back(std::move(what));
  }
  template <class C>
  std::string pick(const C& c) {
    auto it = c.begin();
    std::advance(it, static_cast<long>(rng_.below(c.size())));
    if constexpr (requires { it->first; }) {
      return it->first;
    } else {
      return *it;
    }
  }
  std::string random_bytes(size_t n) {
    // Each write gets a fresh tag so every version of a sector differs.
    std::string s = rng_.bytes(n);
    return s;
  }
  uint64_t total_bytes() const {
    uint64_t t = 0;
    for (const auto& [id, d] : m_.data) t += d->size();
    return t;
  }
  bool is_ancestor(const std::string& a, const std::string& d) const {
    return a.empty() || d == a || d.rfind(a + "/", 0) == 0;
  }
  void set_data(int id, std::string s) { m_.data[id] = std::make_shared<const std::string>(std::move(s)); }
  void drop_if_unlinked(int id) {
    for (const auto& [p, i] : m_.files)
      if (i == id) return;
    m_.data.erase(id);
  }

  // Owner{} (root), or one of 40 users in 12 groups for an `owners` image.
  Owner some_owner() {
    Owner o;
    if (!spec_.owners) return o;
    o.uid = 1000 + static_cast<uint32_t>(rng_.below(40)) * 37;
    o.gid = 100 + static_cast<uint32_t>(rng_.below(12));
    return o;
  }

  Status do_create(const std::string& dir) {
    std::string path = join(dir, fmt::format("f{}", next_++));
    UEXT_ASSIGN_OR_RETURN(Ino d, ino_of(dir));
    UEXT_TRY(fs_.create(d, name_of(path), 0644, some_owner()));
    int id = next_id_++;
    m_.files[path] = id;
    set_data(id, "");
    snap("create " + path);
    uint64_t n = rng_.below(3 * spec_.block_size + 1);
    if (n) UEXT_TRY(do_write(path, 0, n));
    return {};
  }

  Status do_write(const std::string& path, uint64_t off, uint64_t n) {
    UEXT_ASSIGN_OR_RETURN(Ino ino, ino_of(path));
    std::string buf = random_bytes(n);
    UEXT_ASSIGN_OR_RETURN(size_t w, fs_.write(ino, off, bytes_of(buf)));
    if (w != n) return Error(EIO, fmt::format("write {}: {} of {} bytes", path, w, n));
    int id = m_.files.at(path);
    std::string d = *m_.data.at(id);
    if (d.size() < off + n) d.resize(off + n, '\0');
    std::memcpy(d.data() + off, buf.data(), n);
    set_data(id, std::move(d));
    snap(fmt::format("write {} [{}, +{})", path, off, n));
    return {};
  }

  Status step() {
    const bool full = total_bytes() > budget();
    const uint64_t bs = spec_.block_size;
    std::vector<std::string> dirs(m_.dirs.begin(), m_.dirs.end());
    std::erase(dirs, "lost+found");
    uint64_t r = rng_.below(100);
    if (m_.files.size() < 3) r = 0;
    if (full && r < 40) r = 60;  // delete or truncate instead of growing
    if (spec_.owners && rng_.below(20) == 0) {  // chown, which moves quota usage
      std::string p = pick(m_.files);
      UEXT_ASSIGN_OR_RETURN(Ino ino, ino_of(p));
      const Owner o = some_owner();
      SetAttr a;
      a.uid = o.uid;
      if (rng_.below(2)) a.gid = o.gid;
      auto changed = fs_.setattr(ino, a);
      if (!changed.ok()) return std::move(changed).error();
      snap("chown " + p);
      return {};
    }
    if (r < 14) return do_create(dirs[rng_.below(dirs.size())]);
    if (r < 30) {  // append
      std::string p = pick(m_.files);
      uint64_t size = m_.data.at(m_.files.at(p))->size();
      uint64_t n = 1 + rng_.below(rng_.below(4) == 0 ? 6 * bs : bs);
      return do_write(p, size, n);
    }
    if (r < 32 && spec_.big_write) {  // a large append: runs across block groups
      std::string p = pick(m_.files);
      uint64_t size = m_.data.at(m_.files.at(p))->size();
      return do_write(p, size, spec_.big_write + rng_.below(bs));
    }
    if (r < 40) {  // overwrite in place (plus maybe a little past the end)
      std::string p = pick(m_.files);
      uint64_t size = m_.data.at(m_.files.at(p))->size();
      if (size == 0) return do_write(p, 0, 1 + rng_.below(bs));
      uint64_t off = rng_.below(size);
      return do_write(p, off, 1 + rng_.below(std::min<uint64_t>(size - off + 100, 3 * bs)));
    }
    if (r < 46) {  // directory growth: a burst of entries in one directory
      std::string dir = dirs[rng_.below(dirs.size())];
      UEXT_ASSIGN_OR_RETURN(Ino d, ino_of(dir));
      int n = 20 + static_cast<int>(rng_.below(60));
      for (int i = 0; i < n; ++i) {
        std::string path = join(dir, fmt::format("entry-with-a-fairly-long-name-to-fill-blocks-{:06}", next_++));
        UEXT_TRY(fs_.create(d, name_of(path), 0644, {}));
        int id = next_id_++;
        m_.files[path] = id;
        set_data(id, "");
        snap("create " + path);
      }
      return {};
    }
    if (r < 55) {  // truncate, down mostly
      std::string p = pick(m_.files);
      int id = m_.files.at(p);
      uint64_t size = m_.data.at(id)->size();
      uint64_t to = rng_.below(4) == 0 ? size + rng_.below(2 * bs) : rng_.below(size + 1);
      UEXT_ASSIGN_OR_RETURN(Ino ino, ino_of(p));
      UEXT_TRY(fs_.truncate(ino, to));
      std::string d = *m_.data.at(id);
      d.resize(to, '\0');
      set_data(id, std::move(d));
      snap(fmt::format("truncate {} {}", p, to));
      return {};
    }
    if (r < 66) {  // rename a file, maybe over another, maybe to another directory
      std::string from = pick(m_.files);
      std::string to;
      if (rng_.below(3) == 0 && m_.files.size() > 1) {
        to = pick(m_.files);
      } else {
        to = join(dirs[rng_.below(dirs.size())], fmt::format("r{}", next_++));
      }
      if (to == from) return {};
      UEXT_ASSIGN_OR_RETURN(Ino fd, ino_of(parent_of(from)));
      UEXT_ASSIGN_OR_RETURN(Ino td, ino_of(parent_of(to)));
      UEXT_TRY(fs_.rename(fd, name_of(from), td, name_of(to), 0));
      int id = m_.files.at(from);
      int old = m_.files.count(to) ? m_.files.at(to) : -1;
      m_.files.erase(from);
      m_.files[to] = id;
      // Renaming one hard link over another of the same inode removes
      // nothing in POSIX... but both names are the same inode: rename(2)
      // then does nothing at all.
      if (old == id) {
        m_.files[from] = id;
      } else if (old >= 0) {
        drop_if_unlinked(old);
      }
      snap("rename " + from + " -> " + to);
      return {};
    }
    if (r < 69 && dirs.size() > 2) {  // move a directory elsewhere
      std::string from = dirs[rng_.below(dirs.size())];
      if (from.empty()) return {};
      std::string dest_dir = dirs[rng_.below(dirs.size())];
      if (is_ancestor(from, dest_dir)) return {};
      std::string to = join(dest_dir, fmt::format("d{}", next_++));
      UEXT_ASSIGN_OR_RETURN(Ino fd, ino_of(parent_of(from)));
      UEXT_ASSIGN_OR_RETURN(Ino td, ino_of(dest_dir));
      UEXT_TRY(fs_.rename(fd, name_of(from), td, name_of(to), 0));
      auto move = [&](const std::string& p) { return to + p.substr(from.size()); };
      Model n = m_;
      n.dirs.clear();
      n.files.clear();
      n.symlinks.clear();
      for (const auto& d : m_.dirs) n.dirs.insert(is_ancestor(from, d) ? move(d) : d);
      for (const auto& [p, id] : m_.files) n.files[is_ancestor(from, p) ? move(p) : p] = id;
      for (const auto& [p, t] : m_.symlinks) n.symlinks[is_ancestor(from, p) ? move(p) : p] = t;
      m_ = std::move(n);
      snap("rename dir " + from + " -> " + to);
      return {};
    }
    if (r < 80) {  // unlink
      std::string p = pick(m_.files);
      UEXT_ASSIGN_OR_RETURN(Ino d, ino_of(parent_of(p)));
      UEXT_TRY(fs_.unlink(d, name_of(p)));
      int id = m_.files.at(p);
      m_.files.erase(p);
      drop_if_unlinked(id);
      snap("unlink " + p);
      return {};
    }
    if (r < 84) {  // hard link
      std::string p = pick(m_.files);
      std::string to = join(dirs[rng_.below(dirs.size())], fmt::format("l{}", next_++));
      UEXT_ASSIGN_OR_RETURN(Ino ino, ino_of(p));
      UEXT_ASSIGN_OR_RETURN(Ino d, ino_of(parent_of(to)));
      UEXT_TRY(fs_.link(ino, d, name_of(to)));
      m_.files[to] = m_.files.at(p);
      snap("link " + p + " " + to);
      return {};
    }
    if (r < 87) {  // symlink, fast or slow
      std::string to = join(dirs[rng_.below(dirs.size())], fmt::format("s{}", next_++));
      std::string target = rng_.below(2) ? "short/target" : std::string(100 + rng_.below(300), 'x');
      UEXT_ASSIGN_OR_RETURN(Ino d, ino_of(parent_of(to)));
      UEXT_TRY(fs_.symlink(d, name_of(to), target, {}));
      m_.symlinks[to] = target;
      snap("symlink " + to);
      return {};
    }
    if (r < 92) {  // mkdir
      std::string to = join(dirs[rng_.below(dirs.size())], fmt::format("d{}", next_++));
      UEXT_ASSIGN_OR_RETURN(Ino d, ino_of(parent_of(to)));
      UEXT_TRY(fs_.mkdir(d, name_of(to), 0755, some_owner()));
      m_.dirs.insert(to);
      snap("mkdir " + to);
      return {};
    }
    if (r < 95) {  // rmdir of an empty directory, emptying it first
      std::string dir = dirs[rng_.below(dirs.size())];
      if (dir.empty() || !with_rmdir()) return {};
      for (const auto& d : m_.dirs)
        if (d != dir && is_ancestor(dir, d)) return {};  // has subdirectories
      std::vector<std::string> inside;
      for (const auto& [p, id] : m_.files)
        if (parent_of(p) == dir) inside.push_back(p);
      for (const auto& [p, t] : m_.symlinks)
        if (parent_of(p) == dir) inside.push_back(p);
      UEXT_ASSIGN_OR_RETURN(Ino d, ino_of(dir));
      for (const auto& p : inside) {
        UEXT_TRY(fs_.unlink(d, name_of(p)));
        if (m_.files.count(p)) {
          int id = m_.files.at(p);
          m_.files.erase(p);
          drop_if_unlinked(id);
        } else {
          m_.symlinks.erase(p);
        }
        snap("unlink " + p);
      }
      UEXT_ASSIGN_OR_RETURN(Ino pd, ino_of(parent_of(dir)));
      UEXT_TRY(fs_.rmdir(pd, name_of(dir)));
      m_.dirs.erase(dir);
      snap("rmdir " + dir);
      return {};
    }
    if (r < 98 && spec_.extents) {  // punch a hole
      std::string p = pick(m_.files);
      int id = m_.files.at(p);
      uint64_t size = m_.data.at(id)->size();
      if (size < 2 * bs) return {};
      uint64_t off = rng_.below(size);
      uint64_t len = 1 + rng_.below(size - off);
      UEXT_ASSIGN_OR_RETURN(Ino ino, ino_of(p));
      UEXT_TRY(fs_.fallocate(ino, kFallocPunchHole | kFallocKeepSize, off, len));
      std::string d = *m_.data.at(id);
      std::memset(d.data() + off, 0, len);
      set_data(id, std::move(d));
      snap(fmt::format("punch {} [{}, +{})", p, off, len));
      return {};
    }
    // Remove a symlink.
    if (m_.symlinks.empty()) return {};
    std::string p = pick(m_.symlinks);
    UEXT_ASSIGN_OR_RETURN(Ino d, ino_of(parent_of(p)));
    UEXT_TRY(fs_.unlink(d, name_of(p)));
    m_.symlinks.erase(p);
    snap("unlink " + p);
    return {};
  }

  uint64_t budget() const { return image_bytes_ / 3; }
  // rmdir frees journaled directory blocks (CrashBugs covers the reuse).
  // UEXT_CRASH_RMDIR=0 leaves it out.
  static bool with_rmdir() { return env_or("UEXT_CRASH_RMDIR", 1) != 0; }

 public:
  uint64_t image_bytes_ = 16u << 20;

 private:
  Filesystem& fs_;
  CrashHarness& h_;
  const ImageSpec& spec_;
  Rng rng_;
  Model m_;
  History hist_;
  int next_ = 0;
  int next_id_ = 0;
};

// ------------------------------------------------------------ the check

struct Seen {
  char type = 0;  // 'd', 'f', 'l'
  Ino ino = 0;
  uint64_t size = 0;
  uint32_t nlink = 0;
  std::string data;  // file contents or symlink target
};

Status walk(Filesystem& fs, Ino dir, const std::string& path, std::map<std::string, Seen>& out) {
  UEXT_ASSIGN_OR_RETURN(auto entries, fs.list_directory(dir));
  for (const auto& e : entries) {
    if (e.name == "." || e.name == "..") continue;
    std::string p = join(path, e.name);
    if (p == "lost+found") continue;
    UEXT_ASSIGN_OR_RETURN(Stat st, fs.stat(e.ino));
    Seen s;
    s.ino = e.ino;
    s.size = st.size;
    s.nlink = st.nlink;
    if (S_ISDIR(st.mode)) {
      s.type = 'd';
      out[p] = s;
      UEXT_TRY(walk(fs, e.ino, p, out));
      continue;
    }
    if (S_ISLNK(st.mode)) {
      s.type = 'l';
      UEXT_ASSIGN_OR_RETURN(s.data, fs.readlink(e.ino));
    } else if (S_ISREG(st.mode)) {
      s.type = 'f';
      s.data.resize(st.size);
      UEXT_ASSIGN_OR_RETURN(size_t n, fs.read(e.ino, 0, std::as_writable_bytes(std::span(s.data))));
      if (n != st.size) return Error(EIO, fmt::format("{}: read {} of {} bytes", p, n, st.size));
    } else {
      return Error(EUCLEAN, fmt::format("{}: unexpected mode {:o}", p, st.mode));
    }
    out[p] = std::move(s);
  }
  return {};
}

// "" when the image's namespace (names, types, sizes, link structure)
// equals the model's. With delayed allocation (`exact_sizes` false) a
// file's data, and with it its size, reaches the disk at writeback, after
// the namespace operations that followed it may have committed: sizes are
// then left to content_difference, which holds them to the file's versions.
std::string namespace_difference(const std::map<std::string, Seen>& seen, const Model& m, bool exact_sizes) {
  size_t expected = (m.dirs.size() - 1) + m.files.size() + m.symlinks.size();
  std::string diff;
  auto note = [&](std::string s) {
    if (diff.size() < 600) diff += s + "; ";
  };
  for (const auto& d : m.dirs)
    if (!d.empty() && (!seen.count(d) || seen.at(d).type != 'd')) note("dir " + d + " missing");
  for (const auto& [p, t] : m.symlinks)
    if (!seen.count(p) || seen.at(p).type != 'l' || seen.at(p).data != t) note("symlink " + p + " missing or wrong");
  std::map<int, Ino> ino_of_id;
  std::map<Ino, int> id_of_ino;
  std::map<int, uint32_t> links;
  for (const auto& [p, id] : m.files) ++links[id];
  for (const auto& [p, id] : m.files) {
    auto it = seen.find(p);
    if (it == seen.end() || it->second.type != 'f') {
      note("file " + p + " missing");
      continue;
    }
    const Seen& s = it->second;
    if (exact_sizes && s.size != m.data.at(id)->size()) {
      note(fmt::format("file {} size {} != {}", p, s.size, m.data.at(id)->size()));
    }
    if (s.nlink != links[id]) note(fmt::format("file {} nlink {} != {}", p, s.nlink, links[id]));
    auto [a, fresh_a] = ino_of_id.emplace(id, s.ino);
    auto [b, fresh_b] = id_of_ino.emplace(s.ino, id);
    if (a->second != s.ino || b->second != id) note("file " + p + ": hard links differ");
  }
  if (seen.size() != expected) {
    for (const auto& [p, s] : seen)
      if (!m.dirs.count(p) && !m.files.count(p) && !m.symlinks.count(p)) note("unexpected " + p);
  }
  return diff;
}

// Every sector of every file equals that sector of some version of the
// file in `versions` (bytes past a version's end count as zeros).
std::string content_difference(const std::map<std::string, Seen>& seen, const Model& m,
                               const std::map<int, std::vector<std::shared_ptr<const std::string>>>& versions) {
  for (const auto& [p, id] : m.files) {
    const std::string& got = seen.at(p).data;
    const auto& vs = versions.at(id);
    size_t largest = 0;
    for (const auto& v : vs) largest = std::max(largest, v->size());
    if ((vs.size() == 1 && got.size() != vs[0]->size()) || got.size() > largest) {
      return fmt::format("file {}: size {} is none its versions since the last fsync allow ({} version(s), largest {})",
                         p, got.size(), vs.size(), largest);
    }
    for (size_t off = 0; off < got.size(); off += 512) {
      size_t n = std::min<size_t>(512, got.size() - off);
      bool ok = false;
      for (const auto& v : vs) {
        bool same = true;
        for (size_t i = 0; i < n && same; ++i) {
          char want = off + i < v->size() ? (*v)[off + i] : '\0';
          same = got[off + i] == want;
        }
        if (same) {
          ok = true;
          break;
        }
      }
      if (!ok) {
        return fmt::format("file {}: bytes [{}, {}) match none of its {} versions since the last fsync{}", p, off,
                           off + n, vs.size(), vs.size() == 1 ? " (it was not changed since: must be exact)" : "");
      }
    }
  }
  return "";
}

struct Counters {
  std::atomic<uint64_t> states{0}, fsck_runs{0}, both_replays{0}, orphan_replays{0}, needed_recovery{0},
      prefix_not_last{0};
};

// Checks one crash state against the history.
std::vector<std::string> check_state(const CrashCheckContext& c, const History& hist, const ImageSpec& spec,
                                     Counters& counters) {
  std::vector<std::string> problems;
  ++counters.states;
  const bool needs = has_needs_recovery(c.image);
  if (needs) ++counters.needed_recovery;
  // On a sample, e2fsck's replay too: it must be clean and agree with
  // uext's block for block.
  if (spec.journaled && needs && std::hash<std::string>{}(c.id) % 8 == 0) {
    const std::string ucopy = c.image + ".uext-replay", ecopy = c.image + ".e2fsck-replay";
    FsckVerdict both = compare_replays(c.image, ucopy, ecopy);
    // e2fsck -E journal_only also finishes the orphan list; uext leaves that
    // to its read-write open, so with orphans the copies differ rightly.
    const bool orphans = !dumpe2fs_header(ucopy)["First orphan inode"].empty();
    if (both.clean) {
      ++counters.both_replays;
    } else if (orphans) {
      ++counters.orphan_replays;
    } else {
      problems.push_back("replays by uext and by e2fsck: " + both.report);
    }
    // What e2fsck's replay left must be clean too.
    FsckVerdict ev = e2fsck_clean(ecopy, {.replay = Replay::kNone});
    ++counters.fsck_runs;
    if (!ev.clean) problems.push_back("after e2fsck's replay: " + ev.report);
    ::unlink(ucopy.c_str());
    ::unlink(ecopy.c_str());
  }
  {
    Options o;
    o.read_only = false;
    o.commit_interval_ms = 0;
    auto fs = Filesystem::open(c.image, o);
    if (!fs.ok()) {
      problems.push_back("uext read-write open (replay): " + fs.error().message());
      return problems;
    }
    Status closed = (*fs)->close();
    if (!closed.ok()) problems.push_back("uext close after replay: " + closed.error().message());
  }
  if (has_needs_recovery(c.image)) problems.push_back("needs_recovery still set after uext open and close");
  FsckVerdict v = e2fsck_clean(c.image, {.replay = Replay::kNone});
  ++counters.fsck_runs;
  if (!v.clean) problems.push_back("after uext's replay and close: " + v.report);

  auto fs = Filesystem::open(c.image, {});
  if (!fs.ok()) {
    problems.push_back("uext read-only open: " + fs.error().message());
    return problems;
  }
  std::map<std::string, Seen> seen;
  Status walked = walk(**fs, kRootIno, "", seen);
  if (!walked.ok()) {
    problems.push_back("walking the tree: " + walked.error().message());
    return problems;
  }

  // The window: from the snapshot the last completed mark made durable to
  // the one the next mark would.
  size_t lo = 0, hi = hist.snaps.size() - 1;
  for (size_t i = 0; i < hist.mark_snap.size(); ++i) {
    if (c.must_hold("m" + std::to_string(i))) {
      lo = hist.mark_snap[i];
    } else {
      hi = hist.mark_snap[i];
      break;
    }
  }
  auto window = [&] {
    std::string w = fmt::format("ops since the last fsync ({}..{}):", lo, hi);
    for (size_t k = lo + 1; k <= hi && w.size() < 1500; ++k) w += " [" + hist.ops[k] + "]";
    return w;
  };
  std::map<int, std::vector<std::shared_ptr<const std::string>>> versions;
  for (size_t k = lo; k <= hi; ++k) {
    for (const auto& [id, d] : hist.snaps[k].data) {
      auto& vs = versions[id];
      if (vs.empty() || *vs.back() != *d) vs.push_back(d);
    }
  }
  std::string first_content;
  for (size_t k = hi + 1; k-- > lo;) {
    if (!namespace_difference(seen, hist.snaps[k], !spec.extents).empty()) continue;
    std::string cd = content_difference(seen, hist.snaps[k], versions);
    if (cd.empty()) {
      if (k != lo && k != hi) ++counters.prefix_not_last;
      if (!problems.empty()) problems.push_back(window());
      return problems;
    }
    if (first_content.empty()) first_content = fmt::format("namespace matches after op {} ({}) but {}", k,
                                                           hist.ops[k], cd);
  }
  if (!problems.empty()) problems.push_back(window());
  if (!first_content.empty()) {
    problems.push_back(first_content);
  } else {
    problems.push_back(fmt::format(
        "the tree matches no prefix of ops {}..{} ({} .. {}); against the durable one: {}", lo, hi, hist.ops[lo],
        hist.ops[hi], namespace_difference(seen, hist.snaps[lo], !spec.extents)));
  }
  return problems;
}

// ------------------------------------------------------------ the suite

std::vector<ImageSpec> specs() {
  return {
      // Default ext4 (metadata_csum, 64bit, flex_bg) with 4 KiB blocks.
      {"ext4_4k", {"-t", "ext4", "-b", "4096"}, "32M", true, true, 4096, 0, 0.48},
      // 1 KiB blocks in 1 MiB groups: 16 groups, so big appends and
      // directories spread across groups.
      {"ext4_1k_groups", {"-t", "ext4", "-b", "1024", "-g", "1024"}, "16M", true, true, 1024, 1300 * 1024, 0.48},
      // ext3: indirect block maps, no metadata checksums.
      {"ext3_1k", {"-t", "ext3", "-b", "1024", "-g", "2048"}, "16M", true, false, 1024, 600 * 1024, 0.32},
      // ext2 has no journal: only states at flush boundaries make sense.
      {"ext2_4k", {"-t", "ext2", "-b", "4096"}, "16M", false, false, 4096, 0, 0.04},
      // Quota files for users, groups and projects, which e2fsck checks
      // against the inodes in every state; files owned by many ids.
      {"ext4_quota",
       {"-t", "ext4", "-b", "1024", "-O", "quota,project", "-E", "quotatype=usrquota:grpquota:prjquota"},
       "16M",
       true,
       true,
       1024,
       0,
       0.16,
       true},
  };
}

void PrintTo(const ImageSpec& s, std::ostream* os) { *os << s.name; }

class Crash : public ::testing::TestWithParam<ImageSpec> {};

TEST_P(Crash, EveryStateIsCleanAndHoldsWhatWasFsynced) {
  const ImageSpec& spec = GetParam();
  const auto started = std::chrono::steady_clock::now();
  TempDir tmp;
  std::string base = tmp / "base.img";
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  argv.insert(argv.end(), spec.mkfs.begin(), spec.mkfs.end());
  argv.push_back(base);
  argv.push_back(spec.size);
  run_ok(argv);

  const uint64_t total = env_or("UEXT_CRASH_STATES", 5200);
  const uint64_t states = std::max<uint64_t>(50, static_cast<uint64_t>(total * spec.share));
  const int ops = static_cast<int>(env_or("UEXT_CRASH_OPS", 220) * std::max<uint64_t>(1, total / 5200));
  CrashOptions opts;
  opts.max_states = states;
  opts.workers = static_cast<int>(env_or("UEXT_CRASH_WORKERS", 3));
  opts.time_budget = std::chrono::seconds(env_or("UEXT_CRASH_SECONDS", 1800));
  if (spec.journaled) {
    opts.exhaustive_writes = 4;
    opts.random_states_per_epoch = 1000;  // the cap decides
    // Torn writes also tear the 1 KiB superblocks written in place (ext4's
    // and jbd2's), which neither uext nor the kernel can mount then; off by
    // default, UEXT_CRASH_TEAR=<probability> turns them on.
    opts.tear_probability = std::getenv("UEXT_CRASH_TEAR") ? std::atof(std::getenv("UEXT_CRASH_TEAR")) : 0.0;
  } else {
    opts.exhaustive_writes = 0;
    opts.random_states_per_epoch = 0;
  }
  CrashHarness h(base, opts);
  History hist;
  Status recorded = h.record([&](CrashHarness& hh) -> Status {
    Options o;
    o.read_only = false;
    o.commit_interval_ms = 0;
    UEXT_ASSIGN_OR_RETURN(auto fs, Filesystem::open(hh.borrow_device(), o));
    Workload w(*fs, hh, spec, env_or("UEXT_CRASH_WORKLOAD_SEED", 12345));
    w.image_bytes_ = hh.device().size();
    Status st = w.run(ops);
    Status closed = fs->close();
    if (st.ok() && closed.ok()) w.mark();
    hist = w.take();
    UEXT_TRY(st);
    return closed;
  });
  ASSERT_TRUE(recorded.ok()) << recorded.error().message();
  const io::IoLog& log = h.log();
  Counters counters;
  CrashReport r = h.check([&](const CrashCheckContext& c) { return check_state(c, hist, spec, counters); });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::string line = fmt::format(
      "{}: {} ops, {} marks, {} writes, {} flushes; {} crash states checked of {} planned ({} more not planned), "
      "{} needed recovery, {} replayed by both uext and e2fsck alike (+{} with orphans), {} e2fsck runs, "
      "{} matched a mid-window prefix; "
      "{:.1f} s",
      spec.name, hist.snaps.size() - 1, hist.mark_snap.size(), log.total_writes(), log.flushes(), r.checked,
      r.planned, r.skipped_by_cap, counters.needed_recovery.load(), counters.both_replays.load(), counters.orphan_replays.load(),
      counters.fsck_runs.load(), counters.prefix_not_last.load(), secs);
  std::printf("%s\n", line.c_str());
  RecordProperty("crash_states", static_cast<int>(r.checked));
  EXPECT_TRUE(r.ok()) << r.summary();
  EXPECT_FALSE(r.out_of_time) << r.summary();
  EXPECT_EQ(r.checked, r.planned) << r.summary();
}

INSTANTIATE_TEST_SUITE_P(Images, Crash, ::testing::ValuesIn(specs()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace uext::testing

namespace uext::testing {
namespace {

// A minimal reproduction of a library bug the crash and concurrency suites
// hit (no crash needed). A directory block is committed, the directory is
// removed (its block freed and revoked) and that commits; a new file then
// gets the same block for its data. At close, the checkpoint still writes
// the directory block's committed version home, over the file's data: the
// file reads back as ". .." directory entries. Freeing a metadata block must
// drop it from the checkpoint list too (jbd2_journal_forget), not only
// revoke it. Enable when fixed.
TEST(CrashBugs, FreedDirectoryBlockIsNotCheckpointedOverReusedData) {
  TempDir tmp;
  std::string image = tmp / "img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", "4096", image, "32M"});
  const std::string data(4096, 'x');
  {
    Options o;
    o.read_only = false;
    o.commit_interval_ms = 0;
    auto fs = Filesystem::open(image, o);
    ASSERT_TRUE(fs.ok());
    ASSERT_TRUE((*fs)->mkdir(kRootIno, "d", 0755, {}).ok());
    ASSERT_TRUE((*fs)->sync().ok());
    ASSERT_TRUE((*fs)->rmdir(kRootIno, "d").ok());
    ASSERT_TRUE((*fs)->sync().ok());
    auto f = (*fs)->create(kRootIno, "f", 0644, {});
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE((*fs)->write(f->ino, 0, bytes_of(data)).ok());
    ASSERT_TRUE((*fs)->close().ok());
  }
  auto fs = Filesystem::open(image, {});
  ASSERT_TRUE(fs.ok());
  auto ino = (*fs)->resolve("/f");
  ASSERT_TRUE(ino.ok());
  std::string got(4096, '\0');
  ASSERT_TRUE((*fs)->read(*ino, 0, std::as_writable_bytes(std::span(got))).ok());
  EXPECT_TRUE(got == data) << "the file holds " << fmt::format("{:?}", got.substr(0, 24));
}

}  // namespace
}  // namespace uext::testing

namespace uext::testing {
namespace {

// Names on a full image (the directory's growth left out of the
// reservation, namespace_ops.cc): creates that fit go in, the one whose
// directory must grow fails with ENOSPC and frees its inode through the
// orphan list. Every crash state of that must open (replay, orphans) and
// close e2fsck-clean, holding the names the last sync made durable.
TEST(CrashFull, NamesOnAFullImage) {
  TempDir tmp;
  const std::string base = tmp / "base.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", "1024", base, "8M"});
  Options o;
  o.read_only = false;
  o.commit_interval_ms = 0;
  {
    // Fill the image for a caller without the root reserve, untimed.
    auto fs = Filesystem::open(base, o);
    ASSERT_TRUE(fs.ok()) << fs.error().message();
    auto big = (*fs)->create(kRootIno, "big", 0644, {});
    ASSERT_TRUE(big.ok());
    const std::string chunk(16 << 10, 'b');
    for (uint64_t at = 0;;) {
      auto n = (*fs)->write(big->ino, at, bytes_of(chunk));
      if (!n.ok()) break;
      at += *n;
    }
    ASSERT_TRUE((*fs)->close().ok());
  }
  CrashOptions opts;
  opts.max_states = static_cast<uint64_t>(env_or("UEXT_CRASH_FULL_STATES", 120));
  opts.workers = static_cast<int>(env_or("UEXT_CRASH_WORKERS", 3));
  opts.exhaustive_writes = 4;
  opts.random_states_per_epoch = 40;
  CrashHarness h(base, opts);
  int made = 0;
  Status recorded = h.record([&](CrashHarness& hh) -> Status {
    UEXT_ASSIGN_OR_RETURN(auto fs, Filesystem::open(hh.borrow_device(), o));
    // 200-byte names: a 1 KiB block holds four; the root directory fills
    // its blocks, then cannot grow.
    for (; made < 400; ++made) {
      auto f = fs->create(kRootIno, fmt::format("{:0>200}", made), 0644, {});
      if (!f.ok()) {
        if (f.error().code() != ENOSPC) return f.error();
        break;
      }
      if (made % 8 == 7) {
        UEXT_TRY(fs->sync());
        hh.mark_durable(std::to_string(made));
      }
    }
    return fs->close();
  });
  ASSERT_TRUE(recorded.ok()) << recorded.error().message();
  ASSERT_GT(made, 8);
  ASSERT_LT(made, 400) << "the directory never ran out of room";
  CrashReport r = h.check([&](const CrashCheckContext& c) {
    std::vector<std::string> problems;
    {
      auto fs = Filesystem::open(c.image, o);
      if (!fs.ok()) return std::vector<std::string>{"uext open: " + fs.error().message()};
      for (const std::string& tag : c.durable_tags()) {
        const std::string name = fmt::format("{:0>200}", std::stoi(tag));
        if (!(*fs)->lookup(kRootIno, name).ok()) problems.push_back("synced name " + tag + " is missing");
      }
      Status closed = (*fs)->close();
      if (!closed.ok()) problems.push_back("uext close: " + closed.error().message());
    }
    FsckVerdict v = e2fsck_clean(c.image);
    if (!v.clean) problems.push_back(v.report);
    return problems;
  });
  std::printf("%d names before ENOSPC; %zu crash states checked of %zu planned\n", made, r.checked, r.planned);
  EXPECT_TRUE(r.ok()) << r.summary();
  EXPECT_GT(r.checked, 20u) << r.summary();
}

// A minimal reproduction of a library bug the crash suite hits on ext3 and
// ext4: a truncate interrupted by a crash after its first handle (new
// i_size + orphan entry) committed, before the blocks past the new size
// were freed. The read-write open must finish the truncate, as the kernel
// and e2fsck do; uext's recover_orphans calls truncate_locked(rec, i_size),
// which sees size >= i_size, takes the "growing" branch and frees nothing,
// then drops the orphan entry: e2fsck then says "i_size is 5398, should be
// 7168". The state is made here with debugfs: a 7-block file whose i_size
// was lowered, on the orphan list. Enable when fixed.
class OrphanTruncate : public ::testing::TestWithParam<std::string> {};

TEST_P(OrphanTruncate, OpenFinishesAnInterruptedTruncate) {
  TempDir tmp;
  std::string image = tmp / "img", data = tmp / "data";
  run_ok({"mke2fs", "-F", "-q", "-t", GetParam(), "-b", "1024", image, "16M"});
  write_file(data, std::string(7168, 'y'));
  run_ok({"debugfs", "-w", "-R", "write " + data + " f", image});
  uint32_t ino = inode_number(image, "/f");
  run_ok({"debugfs", "-w", "-R", "sif <" + std::to_string(ino) + "> size 5398", image});
  run_ok({"debugfs", "-w", "-R", "ssv last_orphan " + std::to_string(ino), image});
  {
    Options o;
    o.read_only = false;
    o.commit_interval_ms = 0;
    auto fs = Filesystem::open(image, o);
    ASSERT_TRUE(fs.ok()) << fs.error().message();
    ASSERT_TRUE((*fs)->close().ok());
  }
  EXPECT_EQ(dumpe2fs_header(image)["First orphan inode"], "");
  FsckVerdict v = e2fsck_clean(image);
  EXPECT_TRUE(v.clean) << v.report;
}

INSTANTIATE_TEST_SUITE_P(Kinds, OrphanTruncate, ::testing::Values("ext3", "ext4"));

}  // namespace
}  // namespace uext::testing
