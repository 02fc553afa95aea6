// Writing extended attributes, judged by e2fsck -fn, dumpe2fs, debugfs
// (ea_list, ea_get, stat), uext's read path and the kernel (loop mount).
#include "fs/xattr_writer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <sstream>

#include "alloc/block_allocator.h"
#include "alloc/group_bitmaps.h"
#include "disk/xattr.h"
#include "support/images.h"
#include "support/process.h"
#include "uext/filesystem.h"

namespace uext::fs {
namespace {

using testing::run;
using testing::run_ok;
using Attrs = std::map<std::string, std::string>;

Result<std::unique_ptr<Volume>> open_volume(const std::string& image, bool rw) {
  auto dev = open_image_file(image, {.read_only = !rw});
  if (!dev.ok()) return std::move(dev).error();
  Options o;
  o.read_only = !rw;
  o.commit_interval_ms = 0;
  return Volume::open(std::move(*dev), o);
}

uint64_t free_blocks(const std::string& image) {
  return std::stoull(testing::dumpe2fs_header(image)["Free blocks"]);
}

// A read-write volume with an allocator; set() runs one xattr_set in its own handle.
class Session {
 public:
  explicit Session(const std::string& image) {
    auto v = open_volume(image, true);
    if (!v.ok()) throw std::runtime_error(v.error().message());
    vol = std::move(*v);
    groups = std::make_unique<alloc::GroupBitmaps>(*vol);
    allocator = std::make_unique<alloc::BlockAllocator>(*groups);
  }
  InodeRecord& inode(uint32_t ino) {
    auto it = recs.find(ino);
    if (it == recs.end()) {
      auto r = vol->read_inode(ino);
      if (!r.ok()) throw std::runtime_error(r.error().message());
      it = recs.emplace(ino, *r).first;
    }
    return it->second;
  }
  Status set(uint32_t ino, std::string_view name, std::optional<std::string_view> value, int flags = 0) {
    auto h = vol->start(xattr_set_credits(*vol));
    if (!h.ok()) return std::move(h).error();
    Status s = xattr_set(*vol, *h, inode(ino), name, value, flags, *allocator);
    Status stopped = h->stop();
    if (!s.ok()) return s;
    return stopped;
  }
  Status release(uint32_t ino) {
    auto h = vol->start(xattr_release_credits(*vol));
    if (!h.ok()) return std::move(h).error();
    Status s = xattr_release_block(*vol, *h, inode(ino), *allocator);
    Status stopped = h->stop();
    if (!s.ok()) return s;
    return stopped;
  }
  void close() {
    auto check = allocator->check_counts();
    EXPECT_TRUE(check.ok()) << check.error().message();
    allocator.reset();
    groups.reset();
    auto s = vol->close();
    ASSERT_TRUE(s.ok()) << s.error().message();
    vol.reset();
  }

  std::unique_ptr<Volume> vol;
  std::unique_ptr<alloc::GroupBitmaps> groups;
  std::unique_ptr<alloc::BlockAllocator> allocator;
  std::map<uint32_t, InodeRecord> recs;
};

// The names debugfs ea_list shows ("  name (size)" or "  name = \"v\" (size)").
std::vector<std::string> debugfs_names(const std::string& image, const std::string& path) {
  std::istringstream in(testing::debugfs(image, "ea_list " + path));
  std::vector<std::string> names;
  std::string line;
  bool inside = false;
  while (std::getline(in, line)) {
    if (line.starts_with("Extended attributes:")) {
      inside = true;
      continue;
    }
    if (!inside || line.size() < 3 || line.substr(0, 2) != "  ") continue;
    std::string rest = line.substr(2);
    size_t end = std::min(rest.find(" = "), rest.find(" ("));
    names.push_back(rest.substr(0, end));
  }
  std::sort(names.begin(), names.end());
  return names;
}

// Every attribute's value as debugfs ea_get reads it (ACLs in VFS form), in one run.
Attrs debugfs_values(const std::string& image, const std::string& path, const std::vector<std::string>& names,
                     const testing::TempDir& dir) {
  std::string cmds;
  for (size_t i = 0; i < names.size(); ++i)
    cmds += "ea_get -f " + dir / ("v" + std::to_string(i)) + " " + path + " " + names[i] + "\n";
  testing::write_file(dir / "cmds", cmds);
  run({"debugfs", "-f", dir / "cmds", image});
  Attrs out;
  for (size_t i = 0; i < names.size(); ++i) {
    std::string f = dir / ("v" + std::to_string(i));
    std::string v = std::filesystem::exists(f) ? testing::read_file(f) : "<ea_get failed>";
    // e2fsprogs writes id 0 where the kernel (and uext) write ACL_UNDEFINED_ID
    // for the entries without one.
    if (names[i].starts_with("system.posix_acl_")) {
      for (size_t off = 4; off + 8 <= v.size(); off += 8) {
        uint8_t tag = static_cast<uint8_t>(v[off]);
        if (tag != 0x02 && tag != 0x08) v.replace(off + 4, 4, "\xff\xff\xff\xff");
      }
    }
    out[names[i]] = v;
    std::filesystem::remove(f);
  }
  return out;
}

Attrs uext_values(const std::string& image, const std::string& path) {
  Options o;
  o.read_only = true;
  auto fs = Filesystem::open(image, o);
  if (!fs.ok()) return {{"<open>", fs.error().message()}};
  auto ino = (*fs)->resolve(path);
  if (!ino.ok()) return {{"<resolve>", ino.error().message()}};
  auto names = (*fs)->listxattr(*ino);
  if (!names.ok()) return {{"<listxattr>", names.error().message()}};
  Attrs out;
  for (const auto& n : *names) {
    auto v = (*fs)->getxattr(*ino, n);
    out[n] = v.ok() ? *v : "<getxattr: " + v.error().message() + ">";
  }
  return out;
}

std::string hex_decode(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

// What the kernel reads, per path; nullopt when loop mounts are unavailable.
std::optional<std::map<std::string, Attrs>> kernel_values(const std::string& image,
                                                          const std::vector<std::string>& paths,
                                                          const testing::TempDir& dir) {
  if (!testing::can_loop_mount()) return std::nullopt;
  std::string mnt = dir / "mnt";
  run({"mkdir", "-p", mnt});
  testing::LoopMount m(image, mnt, true);
  if (!m.ok()) {
    ADD_FAILURE() << m.error();
    return std::nullopt;
  }
  std::map<std::string, Attrs> all;
  for (const auto& p : paths) {
    auto r = run({"getfattr", "--absolute-names", "-d", "-m", "-", "-e", "hex", mnt + p});
    Attrs a;
    std::istringstream in(r.out);
    std::string line;
    while (std::getline(in, line)) {
      size_t eq = line.find("=0x");
      if (line.empty() || line[0] == '#') continue;
      if (eq == std::string::npos) {
        size_t e2 = line.find('=');
        a[line.substr(0, e2)] = "";  // empty values print as name=""
        continue;
      }
      a[line.substr(0, eq)] = hex_decode(line.substr(eq + 3));
    }
    a.erase("security.selinux");
    all[p] = a;
  }
  m.unmount();
  return all;
}

std::vector<std::string> keys(const Attrs& a) {
  std::vector<std::string> k;
  for (const auto& [n, v] : a) k.push_back(n);
  return k;
}

// The oracles agree with `expected` for each path.
void check_image(const std::string& image, const std::map<std::string, Attrs>& expected, const testing::TempDir& dir,
                 bool kernel = false) {
  EXPECT_TRUE(testing::image_is_clean(image));
  for (const auto& [path, attrs] : expected) {
    EXPECT_EQ(debugfs_names(image, path), keys(attrs)) << path;
    EXPECT_EQ(debugfs_values(image, path, keys(attrs), dir), attrs) << path << " (debugfs ea_get)";
    EXPECT_EQ(uext_values(image, path), attrs) << path << " (uext)";
  }
  if (kernel) {
    std::vector<std::string> paths;
    for (const auto& [p, a] : expected) paths.push_back(p);
    if (auto k = kernel_values(image, paths, dir)) {
      for (const auto& [p, a] : expected) {
        EXPECT_EQ(keys((*k)[p]), keys(a)) << p << " (kernel getfattr names)";
        EXPECT_TRUE((*k)[p] == a) << p << " (kernel getfattr values differ)";
      }
    }
  }
}

// A VFS-form ACL: user::rw-, user:1000:r--, group::r--, mask::r--, other::---.
std::string vfs_acl(uint32_t uid, uint16_t user_perm) {
  std::string s;
  auto le = [&](uint32_t v, int n) {
    for (int i = 0; i < n; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
  };
  auto entry = [&](uint16_t tag, uint16_t perm, uint32_t id) {
    le(tag, 2);
    le(perm, 2);
    le(id, 4);
  };
  le(2, 4);
  entry(0x01, 6, 0xFFFFFFFF);
  entry(0x02, user_perm, uid);
  entry(0x04, 4, 0xFFFFFFFF);
  entry(0x10, 4, 0xFFFFFFFF);
  entry(0x20, 0, 0xFFFFFFFF);
  return s;
}

// A value of `n` bytes that differs by seed.
std::string value_of(size_t n, int seed) {
  std::string v(n, '\0');
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<char>('A' + (i * 7 + seed * 13) % 53);
  return v;
}

uint64_t file_acl_of(const std::string& image, const std::string& path) {
  std::string out = testing::debugfs(image, "stat " + path);
  size_t at = out.find("File ACL: ");
  if (at == std::string::npos) return 0;
  return std::stoull(out.substr(at + 10));
}

// Full names of the attributes in the inode slot (not the block).
std::vector<std::string> in_inode_names(const InodeRecord& rec) {
  std::vector<std::string> out;
  size_t start = disk::kGoodOldInodeSize + rec.inode.i_extra_isize;
  if (rec.raw.size() <= start) return out;
  auto parsed = disk::parse_inode_xattr_entries(disk::Bytes(rec.raw).subspan(start));
  if (!parsed.ok()) return {"<" + parsed.error().message() + ">"};
  for (const auto& e : *parsed) out.push_back(*disk::xattr_full_name(e.name_index, e.suffix));
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

struct Kind {
  const char* name;
  std::vector<std::string> mkfs;  // after "mke2fs -F -q"
};

class XattrWriter : public ::testing::TestWithParam<Kind> {
 protected:
  // An image with /f and /d (made by mke2fs -d: /f already has an
  // e2fsprogs-written attribute), returning their inode numbers.
  std::string make_image(const Attrs& initial_f) {
    std::string src = dir / "src";
    std::filesystem::create_directories(src + "/d");
    testing::write_file(src + "/f", "data");
    for (const auto& [n, v] : initial_f) run_ok({"setfattr", "-n", n, "-v", v, src + "/f"});
    std::string img = dir / "fs.img";
    std::vector<std::string> argv = {"mke2fs", "-F", "-q"};
    argv.insert(argv.end(), GetParam().mkfs.begin(), GetParam().mkfs.end());
    argv.insert(argv.end(), {"-d", src, img, "8M"});
    run_ok(argv);
    return img;
  }
  testing::TempDir dir;
};

// Many attributes of many sizes: in the inode while they fit, then the
// block; replaced bigger and smaller (moving between the two), ACLs,
// removed one by one; every step judged by the oracles; at the end no
// block is left and the free count is back.
TEST_P(XattrWriter, SetReplaceMoveAndRemove) {
  Attrs f0 = {{"user.from_mke2fs", "made by e2fsprogs"}};
  std::string img = make_image(f0);
  const uint32_t f = testing::inode_number(img, "f");
  const uint32_t d = testing::inode_number(img, "d");
  const uint64_t free0 = free_blocks(img);
  const bool had_block = file_acl_of(img, "f") != 0;  // mke2fs -d put the first one in a block
  std::map<std::string, Attrs> expected = {{"/f", f0}, {"/d", {}}};
  auto& ef = expected["/f"];
  auto& ed = expected["/d"];
  {
    Session s(img);
    auto set = [&](uint32_t ino, Attrs& model, const std::string& n, const std::string& v, int flags = 0) {
      Status st = s.set(ino, n, v, flags);
      ASSERT_TRUE(st.ok()) << n << ": " << st.error().message();
      model[n] = v;
    };
    set(f, ef, "user.a", "1");
    set(f, ef, "user.empty", "");
    set(f, ef, "trusted.t", value_of(20, 1));
    set(f, ef, "security.test", value_of(9, 2));
    const bool large_inode = s.vol->sb().inode_size() > 128;
    // A 256-byte inode has 88 bytes of room: mke2fs's attribute and user.a
    // fit, the rest went to the block, as the kernel places them.
    const std::vector<std::string> want_in_inode =
        large_inode ? std::vector<std::string>{"user.from_mke2fs", "user.a"} : std::vector<std::string>{};
    EXPECT_EQ(in_inode_names(s.inode(f)), want_in_inode);
    const uint32_t bs = s.vol->block_size();
    // Sizes scale with the block so that the same steps spill over on 1 KiB blocks too.
    auto sized = [&](size_t n4k) { return std::max<size_t>(1, bs >= 4096 ? n4k : n4k * bs / 8192); };
    for (int i = 0; i < 12; ++i) set(f, ef, "user.m" + std::to_string(i), value_of(sized(30 + 25 * i), i));
    set(f, ef, "system.posix_acl_access", vfs_acl(1000, 4));
    set(d, ed, "system.posix_acl_default", vfs_acl(1234, 7));
    set(d, ed, "user.dir", "x");
    // Replace: small ones grow (into the block), big ones shrink (into the inode when room).
    set(f, ef, "user.a", value_of(sized(700), 3), kXattrReplace);
    // user.a left the inode for the block.
    EXPECT_FALSE(contains(in_inode_names(s.inode(f)), "user.a"));
    set(f, ef, "user.m11", "tiny", kXattrReplace);
    // The shrunk one moved into the room user.a left.
    if (large_inode) {
      EXPECT_TRUE(contains(in_inode_names(s.inode(f)), "user.m11"));
    }
    set(f, ef, "user.from_mke2fs", value_of(1, 4));
    set(f, ef, "system.posix_acl_access", vfs_acl(2000, 6));
    // Flag and limit errors change nothing.
    EXPECT_EQ(s.set(f, "user.a", "x", kXattrCreate).error().code(), EEXIST);
    EXPECT_EQ(s.set(f, "user.nope", "x", kXattrReplace).error().code(), ENODATA);
    EXPECT_EQ(s.set(f, "user.nope", std::nullopt).error().code(), ENODATA);
    EXPECT_EQ(s.set(f, "os2.x", "x").error().code(), EOPNOTSUPP);
    EXPECT_EQ(s.set(f, "system.data", "x").error().code(), EOPNOTSUPP);
    EXPECT_EQ(s.set(f, "user." + std::string(256, 'n'), "x").error().code(), ERANGE);
    EXPECT_EQ(s.set(f, "user." + std::string(251, 'n'), "x").error().code(), ERANGE);  // 256 in all
    EXPECT_EQ(s.set(f, "user.huge", std::string(70000, 'h')).error().code(), E2BIG);
    Status nospc = s.set(f, "user.huge", std::string(s.vol->block_size(), 'h'));
    ASSERT_FALSE(nospc.ok());
    EXPECT_EQ(nospc.error().code(), ENOSPC);
    EXPECT_NE(nospc.error().message().find("ea_inode"), std::string::npos) << nospc.error().message();
    EXPECT_EQ(s.set(f, "system.posix_acl_access", "not an acl").error().code(), EINVAL);
    // The longest name there is.
    if (bs >= 4096) set(f, ef, "user." + std::string(250, 'L'), "long name");
    s.close();
  }
  check_image(img, expected, dir, /*kernel=*/true);
  {
    // The block is in use, and accounted for in i_blocks.
    auto v = open_volume(img, false);
    ASSERT_TRUE(v.ok());
    auto r = (*v)->read_inode(f);
    ASSERT_TRUE(r.ok());
    EXPECT_NE(r->inode.i_file_acl, 0u);
  }

  // Remove everything, alternating ends so both places shrink.
  {
    Session s(img);
    for (auto* model : {&ef, &ed}) {
      uint32_t ino = model == &ef ? f : d;
      bool front = true;
      while (!model->empty()) {
        auto it = front ? model->begin() : std::prev(model->end());
        Status st = s.set(ino, it->first, std::nullopt);
        ASSERT_TRUE(st.ok()) << it->first << ": " << st.error().message();
        model->erase(it);
        front = !front;
      }
      EXPECT_EQ(s.inode(ino).inode.i_file_acl, 0u);
    }
    s.close();
  }
  check_image(img, expected, dir);
  EXPECT_EQ(free_blocks(img), free0 + (had_block ? 1 : 0));
}

// A long deterministic random sequence of sets and removes on two files,
// checked every few hundred operations.
TEST_P(XattrWriter, RandomOperationsStayConsistent) {
  std::string img = make_image({});
  const uint32_t f = testing::inode_number(img, "f");
  const uint32_t d = testing::inode_number(img, "d");
  std::map<std::string, Attrs> expected = {{"/f", {}}, {"/d", {}}};
  uint64_t state = 12345;
  auto rnd = [&](uint64_t n) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (state >> 33) % n;
  };
  const char* prefixes[] = {"user.", "trusted.", "security."};
  for (int round = 0; round < 3; ++round) {
    {
      Session s(img);
      uint32_t bs = s.vol->block_size();
      for (int op = 0; op < 150; ++op) {
        bool on_f = rnd(2) == 0;
        uint32_t ino = on_f ? f : d;
        Attrs& model = expected[on_f ? "/f" : "/d"];
        std::string name = std::string(prefixes[rnd(3)]) + "k" + std::to_string(rnd(14));
        if (rnd(4) == 0) {
          Status st = s.set(ino, name, std::nullopt);
          if (model.count(name)) {
            ASSERT_TRUE(st.ok()) << name << ": " << st.error().message();
            model.erase(name);
          } else {
            ASSERT_EQ(st.error().code(), ENODATA) << name;
          }
          continue;
        }
        size_t size = rnd(4) == 0 ? rnd(bs / 2) : rnd(60);
        std::string v = value_of(size, op);
        Status st = s.set(ino, name, v);
        if (st.ok()) {
          model[name] = v;
        } else {
          ASSERT_EQ(st.error().code(), ENOSPC) << name << ": " << st.error().message();
          // A failed set leaves the old value in place.
        }
      }
      s.close();
    }
    check_image(img, expected, dir);
  }
}

INSTANTIATE_TEST_SUITE_P(XattrKinds, XattrWriter,
                         ::testing::Values(Kind{"ext4", {"-t", "ext4", "-b", "4096"}},
                                           Kind{"ext4_128", {"-t", "ext4", "-b", "4096", "-I", "128"}},
                                           Kind{"ext4_1k_nocsum", {"-t", "ext4", "-b", "1024", "-O", "^metadata_csum"}},
                                           Kind{"ext3", {"-t", "ext3", "-b", "4096"}}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(XattrWriterExt2, WithoutExtAttrIsRefused) {
  testing::TempDir dir;
  std::string img = dir / "fs.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext2", "-O", "^ext_attr", img, "4M"});
  run_ok({"debugfs", "-w", "-R", "write /dev/null f", img});
  uint32_t f = testing::inode_number(img, "f");
  {
    Session s(img);
    Status st = s.set(f, "user.x", "v");
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.error().code(), EOPNOTSUPP);
    s.close();
  }
  EXPECT_TRUE(testing::image_is_clean(img));
}

// The kernel shares identical xattr blocks between inodes (mbcache): the
// copy-on-write and the release paths must leave the other inode its block.
TEST(XattrWriterShared, CopyOnWriteAndRelease) {
  if (!testing::can_loop_mount()) GTEST_SKIP() << "needs loop mounts to let the kernel share a block";
  testing::TempDir dir;
  std::string img = dir / "fs.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-I", "128", img, "8M"});
  std::string mnt = dir / "mnt";
  run({"mkdir", "-p", mnt});
  const std::string shared_value(300, 'Q');
  {
    testing::LoopMount m(img, mnt, false);
    if (!m.ok()) GTEST_SKIP() << "mount failed: " << m.error();
    for (const char* n : {"a", "b", "c"}) {
      testing::write_file(mnt + "/" + n, "x");
      run_ok({"setfattr", "-n", "user.big", "-v", shared_value, mnt + "/" + n});
    }
    ASSERT_TRUE(m.unmount()) << m.error();
  }
  uint64_t block = file_acl_of(img, "a");
  ASSERT_NE(block, 0u);
  if (file_acl_of(img, "b") != block || file_acl_of(img, "c") != block)
    GTEST_SKIP() << "the kernel did not share the block";
  const uint64_t free0 = free_blocks(img);
  uint32_t a = testing::inode_number(img, "a");
  uint32_t b = testing::inode_number(img, "b");
  uint32_t c = testing::inode_number(img, "c");
  std::map<std::string, Attrs> expected = {{"/a", {{"user.big", shared_value}}},
                                           {"/b", {{"user.big", shared_value}}},
                                           {"/c", {{"user.big", shared_value}}}};
  {
    Session s(img);
    ASSERT_TRUE(s.set(a, "user.more", "a's own").ok());
    // c leaves the block entirely: refcount drops, nothing is freed.
    ASSERT_TRUE(s.set(c, "user.big", std::nullopt).ok());
    s.close();
  }
  expected["/a"]["user.more"] = "a's own";
  expected["/c"].clear();
  check_image(img, expected, dir);
  EXPECT_NE(file_acl_of(img, "a"), block);
  EXPECT_EQ(file_acl_of(img, "b"), block);
  EXPECT_EQ(file_acl_of(img, "c"), 0u);
  EXPECT_EQ(free_blocks(img), free0 - 1);  // a's copy
  {
    // b now owns the block alone: its change is made in place.
    Session s(img);
    ASSERT_TRUE(s.set(b, "user.big", "smaller").ok());
    s.close();
  }
  expected["/b"]["user.big"] = "smaller";
  check_image(img, expected, dir);
  EXPECT_EQ(file_acl_of(img, "b"), block);

  // Release (inode deletion) of a block: freed, i_file_acl 0.
  {
    Session s(img);
    ASSERT_TRUE(s.release(a).ok());
    ASSERT_TRUE(s.release(b).ok());
    ASSERT_TRUE(s.release(c).ok());  // no block: nothing to do
    EXPECT_EQ(s.inode(a).inode.i_file_acl, 0u);
    s.close();
  }
  expected["/a"].clear();
  expected["/b"].clear();
  check_image(img, expected, dir);
  EXPECT_EQ(free_blocks(img), free0 + 1);
}

// The kernel changes what uext wrote (in the inode and in the block) and
// e2fsck still finds the image clean.
TEST(XattrWriterKernel, EditsWhatUextWrote) {
  if (!testing::can_loop_mount()) GTEST_SKIP() << "needs loop mounts";
  testing::TempDir dir;
  std::string img = dir / "fs.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-b", "4096", img, "8M"});
  run_ok({"debugfs", "-w", "-R", "write /dev/null f", img});
  uint32_t f = testing::inode_number(img, "f");
  Attrs model;
  {
    Session s(img);
    for (int i = 0; i < 10; ++i) {
      std::string n = "user.k" + std::to_string(i);
      std::string v = value_of(10 + 60 * i, i);
      ASSERT_TRUE(s.set(f, n, v).ok());
      model[n] = v;
    }
    s.close();
  }
  check_image(img, {{"/f", model}}, dir);
  std::string mnt = dir / "mnt";
  run({"mkdir", "-p", mnt});
  {
    testing::LoopMount m(img, mnt, false);
    if (!m.ok()) GTEST_SKIP() << "mount failed: " << m.error();
    run_ok({"setfattr", "-x", "user.k0", mnt + "/f"});  // in the inode
    run_ok({"setfattr", "-x", "user.k9", mnt + "/f"});  // in the block
    run_ok({"setfattr", "-n", "user.k5", "-v", "changed", mnt + "/f"});
    run_ok({"setfattr", "-n", "user.new", "-v", "kernel", mnt + "/f"});
    ASSERT_TRUE(m.unmount()) << m.error();
  }
  model.erase("user.k0");
  model.erase("user.k9");
  model["user.k5"] = "changed";
  model["user.new"] = "kernel";
  check_image(img, {{"/f", model}}, dir);
}

// Release of a block still shared only lowers its refcount.
TEST(XattrWriterShared, ReleaseOfASharedBlockKeepsIt) {
  if (!testing::can_loop_mount()) GTEST_SKIP() << "needs loop mounts to let the kernel share a block";
  testing::TempDir dir;
  std::string img = dir / "fs.img";
  run_ok({"mke2fs", "-F", "-q", "-t", "ext4", "-I", "128", img, "8M"});
  std::string mnt = dir / "mnt";
  run({"mkdir", "-p", mnt});
  {
    testing::LoopMount m(img, mnt, false);
    if (!m.ok()) GTEST_SKIP() << "mount failed: " << m.error();
    for (const char* n : {"a", "b"}) {
      testing::write_file(mnt + "/" + n, "x");
      run_ok({"setfattr", "-n", "user.v", "-v", "shared", mnt + "/" + n});
    }
    ASSERT_TRUE(m.unmount()) << m.error();
  }
  uint64_t block = file_acl_of(img, "a");
  if (block == 0 || file_acl_of(img, "b") != block) GTEST_SKIP() << "the kernel did not share the block";
  const uint64_t free0 = free_blocks(img);
  {
    Session s(img);
    ASSERT_TRUE(s.release(testing::inode_number(img, "a")).ok());
    s.close();
  }
  check_image(img, {{"/a", {}}, {"/b", {{"user.v", "shared"}}}}, dir);
  EXPECT_EQ(free_blocks(img), free0);
  EXPECT_EQ(file_acl_of(img, "b"), block);
}

}  // namespace
}  // namespace uext::fs
