// The write path against the real oracles: random workloads run through
// the library and, in step, on a host directory (the model); afterwards
// e2fsck -fn must find the image clean and the kernel, mounting it, must
// show exactly the model's tree. Plus every errno a caller can meet.
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <map>
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

namespace stdfs = std::filesystem;

struct Kind {
  std::string name;
  std::vector<std::string> mkfs;
};

std::vector<Kind> kinds() {
  return {
      {"ext4", {"-t", "ext4"}},
      {"ext4_1k", {"-t", "ext4", "-b", "1024"}},
      {"ext4_nocsum_128", {"-t", "ext4", "-O", "^metadata_csum,^64bit", "-I", "128"}},
      {"ext3", {"-t", "ext3"}},
      {"ext2", {"-t", "ext2"}},
  };
}

std::string make_image(const std::string& dir, const Kind& kind, const std::string& size = "64M") {
  std::string image = dir + "/img";
  std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
  argv.insert(argv.end(), kind.mkfs.begin(), kind.mkfs.end());
  argv.push_back(image);
  argv.push_back(size);
  run_ok(argv);
  return image;
}

std::unique_ptr<Filesystem> open_rw(const std::string& image) {
  Options o;
  o.read_only = false;
  o.commit_interval_ms = 0;
  auto fs = Filesystem::open(image, o);
  EXPECT_TRUE(fs.ok()) << fs.error().message();
  return fs.ok() ? std::move(*fs) : nullptr;
}

std::span<const std::byte> bytes_of(const std::string& s) { return std::as_bytes(std::span(s)); }

// Applies the same operations to the image and to a host directory.
class Mirror {
 public:
  Mirror(Filesystem& fs, std::string host) : fs_(fs), host_(std::move(host)) { dirs_.insert(""); }

  Ino ino(const std::string& rel) {
    auto r = fs_.resolve("/" + rel, false);
    EXPECT_TRUE(r.ok()) << rel << ": " << (r.ok() ? "" : r.error().message());
    return r.ok() ? *r : 0;
  }
  static std::pair<std::string, std::string> split(const std::string& rel) {
    auto slash = rel.rfind('/');
    if (slash == std::string::npos) return {"", rel};
    return {rel.substr(0, slash), rel.substr(slash + 1)};
  }
  std::string host(const std::string& rel) const { return rel.empty() ? host_ : host_ + "/" + rel; }

  void mkdir(const std::string& rel) {
    auto [parent, name] = split(rel);
    auto st = fs_.mkdir(ino(parent), name, 0755, {});
    ASSERT_TRUE(st.ok()) << rel << ": " << st.error().message();
    ASSERT_EQ(::mkdir(host(rel).c_str(), 0755), 0);
    ::chmod(host(rel).c_str(), 0755);
    dirs_.insert(rel);
  }
  void create(const std::string& rel) {
    auto [parent, name] = split(rel);
    auto st = fs_.create(ino(parent), name, 0644, {});
    ASSERT_TRUE(st.ok()) << rel << ": " << st.error().message();
    int fd = ::open(host(rel).c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
    ASSERT_GE(fd, 0);
    ::fchmod(fd, 0644);
    ::close(fd);
    files_.insert(rel);
  }
  void write(const std::string& rel, uint64_t offset, const std::string& data) {
    auto n = fs_.write(ino(rel), offset, bytes_of(data));
    ASSERT_TRUE(n.ok()) << rel << ": " << n.error().message();
    ASSERT_EQ(*n, data.size());
    int fd = ::open(host(rel).c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset)), static_cast<ssize_t>(data.size()));
    ::close(fd);
  }
  void truncate(const std::string& rel, uint64_t size) {
    Status s = fs_.truncate(ino(rel), size);
    ASSERT_TRUE(s.ok()) << rel << ": " << s.error().message();
    ASSERT_EQ(::truncate(host(rel).c_str(), static_cast<off_t>(size)), 0);
  }
  void punch(const std::string& rel, uint64_t offset, uint64_t len) {
    Status s = fs_.fallocate(ino(rel), kFallocPunchHole | kFallocKeepSize, offset, len);
    ASSERT_TRUE(s.ok()) << rel << ": " << s.error().message();
    int fd = ::open(host(rel).c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                          static_cast<off_t>(len)), 0);
    ::close(fd);
  }
  void unlink(const std::string& rel) {
    auto [parent, name] = split(rel);
    Status s = fs_.unlink(ino(parent), name);
    ASSERT_TRUE(s.ok()) << rel << ": " << s.error().message();
    ASSERT_EQ(::unlink(host(rel).c_str()), 0);
    files_.erase(rel);
    links_.erase(rel);
  }
  void rmdir(const std::string& rel) {
    auto [parent, name] = split(rel);
    Status s = fs_.rmdir(ino(parent), name);
    ASSERT_TRUE(s.ok()) << rel << ": " << s.error().message();
    ASSERT_EQ(::rmdir(host(rel).c_str()), 0);
    dirs_.erase(rel);
  }
  void symlink(const std::string& rel, const std::string& target) {
    auto [parent, name] = split(rel);
    auto st = fs_.symlink(ino(parent), name, target, {});
    ASSERT_TRUE(st.ok()) << rel << ": " << st.error().message();
    ASSERT_EQ(::symlink(target.c_str(), host(rel).c_str()), 0);
    links_.insert(rel);
  }
  void link(const std::string& from, const std::string& rel) {
    auto [parent, name] = split(rel);
    auto st = fs_.link(ino(from), ino(parent), name);
    ASSERT_TRUE(st.ok()) << rel << ": " << st.error().message();
    ASSERT_EQ(::link(host(from).c_str(), host(rel).c_str()), 0);
    files_.insert(rel);
  }
  // Renames a file (replacing `to` when it exists).
  void rename(const std::string& from, const std::string& to) {
    auto [fp, fn] = split(from);
    auto [tp, tn] = split(to);
    Status s = fs_.rename(ino(fp), fn, ino(tp), tn, 0);
    ASSERT_TRUE(s.ok()) << from << " -> " << to << ": " << s.error().message();
    ASSERT_EQ(::rename(host(from).c_str(), host(to).c_str()), 0);
  }

  Filesystem& fs_;
  std::string host_;
  std::set<std::string> dirs_, files_, links_;
};

template <class Set>
std::string pick(Rng& rng, const Set& set) {
  auto it = set.begin();
  std::advance(it, static_cast<long>(rng.below(set.size())));
  return *it;
}

// Checks the image with e2fsck and, mounted by the kernel, against `host`.
void expect_image_matches(const std::string& image, const std::string& host, const std::string& scratch) {
  FsckVerdict v = e2fsck_clean(image);
  EXPECT_TRUE(v.clean) << v.report;
  if (!can_loop_mount()) return;
  std::string mnt = scratch + "/mnt";
  stdfs::create_directories(mnt);
  LoopMount m(image, mnt, true);
  ASSERT_TRUE(m.ok()) << m.error();
  CompareOptions c;
  c.mtime = false;
  c.directory_times = false;
  c.xattrs = false;
  c.root_metadata = false;
  c.ignore = {"lost+found"};
  size_t entries = 0;
  for (auto it = stdfs::recursive_directory_iterator(mnt); it != stdfs::recursive_directory_iterator(); ++it) ++entries;
  EXPECT_GT(entries, 100u) << "the workload left too little to compare";
  auto diffs = compare_trees(host, mnt, c);
  EXPECT_TRUE(diffs.empty()) << format_differences(diffs);
}

class WritePath : public ::testing::TestWithParam<Kind> {};

TEST_P(WritePath, RandomWorkloadMatchesHostTree) {
  TempDir tmp;
  std::string image = make_image(tmp.path(), GetParam());
  std::string host = tmp.path() + "/model";
  stdfs::create_directories(host);
  ::chmod(host.c_str(), 0755);
  {
    auto fs = open_rw(image);
    ASSERT_TRUE(fs);
    Mirror m(*fs, host);
    Rng rng(42);
    int next = 0;
    auto fresh_name = [&](const std::string& dir) {
      std::string name = fmt::format("n{}_{}", next++, std::string(rng.below(40), 'x'));
      return dir.empty() ? name : dir + "/" + name;
    };
    for (int step = 0; step < 1200 && !::testing::Test::HasFatalFailure(); ++step) {
      uint64_t op = rng.below(100);
      if (op < 10 || m.files_.empty()) {
        m.mkdir(fresh_name(pick(rng, m.dirs_)));
      } else if (op < 35) {
        std::string f = fresh_name(pick(rng, m.dirs_));
        m.create(f);
        m.write(f, rng.below(3) == 0 ? rng.below(200000) : 0, rng.bytes(rng.below(70000) + 1));
      } else if (op < 50) {
        std::string f = pick(rng, m.files_);
        m.write(f, rng.below(400000), rng.bytes(rng.below(30000) + 1));
      } else if (op < 57) {
        m.truncate(pick(rng, m.files_), rng.below(300000));
      } else if (op < 62) {
        std::string f = pick(rng, m.files_);
        m.punch(f, rng.below(200000), rng.below(100000) + 1);
      } else if (op < 72) {
        m.unlink(pick(rng, m.files_));
      } else if (op < 78) {
        m.symlink(fresh_name(pick(rng, m.dirs_)), std::string(rng.below(200) + 1, 't'));
      } else if (op < 84) {
        m.link(pick(rng, m.files_), fresh_name(pick(rng, m.dirs_)));
      } else if (op < 94) {
        std::string f = pick(rng, m.files_);
        std::string to = rng.below(3) == 0 && m.files_.size() > 1 ? pick(rng, m.files_) : fresh_name(pick(rng, m.dirs_));
        if (to == f) continue;
        // Replacing a hard link of the same inode is a no-op in POSIX;
        // the model follows it either way.
        m.rename(f, to);
        m.files_.erase(f);
        m.files_.insert(to);
      } else {
        // Remove an empty directory, if one is.
        for (const auto& d : m.dirs_) {
          if (d.empty()) continue;
          if (stdfs::is_empty(m.host(d))) {
            m.rmdir(d);
            break;
          }
        }
      }
    }
    ASSERT_FALSE(::testing::Test::HasFailure());
    Status closed = fs->close();
    ASSERT_TRUE(closed.ok()) << closed.error().message();
  }
  expect_image_matches(image, host, tmp.path());
}

INSTANTIATE_TEST_SUITE_P(Kinds, WritePath, ::testing::ValuesIn(kinds()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace uext::testing
