#include "disk/dir_edit.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "disk/disk_test_image.h"
#include "support/process.h"
#include "uext/filesystem.h"

namespace uext::disk {
namespace {

using testimg::Image;
using uext::testing::TempDir;

struct Live {
  uint32_t ino;
  uint8_t type;
  bool operator==(const Live&) const = default;
};
using Model = std::map<std::string, Live>;

Model live_entries(Bytes block, const DirBlockFormat& f) {
  auto parsed = parse_dir_block(block, f);
  EXPECT_TRUE(parsed.ok()) << parsed.error().message();
  Model m;
  if (!parsed.ok()) return m;
  for (const auto& e : *parsed) {
    if (e.inode == 0) continue;
    EXPECT_TRUE(m.emplace(std::string(e.name), Live{e.inode, e.file_type}).second) << "duplicate " << e.name;
  }
  return m;
}

// ---- synthetic blocks ----

TEST(DirEdit, InitLeafAndDotDotdot) {
  for (uint32_t bs : {1024u, 4096u, 65536u}) {
    for (bool tail : {false, true}) {
      for (bool ft : {false, true}) {
        DirBlockFormat f{bs, ft, tail};
        std::vector<std::byte> b(bs, std::byte{0xAA});
        ASSERT_TRUE(init_leaf_block(b, f).ok());
        auto p = parse_dir_block(b, f);
        ASSERT_TRUE(p.ok()) << p.error().message();
        ASSERT_EQ(p->size(), 1u);
        EXPECT_EQ((*p)[0].inode, 0u);
        EXPECT_EQ((*p)[0].rec_len, bs - (tail ? 12u : 0u));
        EXPECT_EQ(has_dir_block_tail(b), tail);
        EXPECT_EQ(largest_free_slot(b, f), bs - (tail ? 12u : 0u));

        ASSERT_TRUE(init_dir_block_with_dot_dotdot(b, f, 12, 2).ok());
        p = parse_dir_block(b, f);
        ASSERT_TRUE(p.ok()) << p.error().message();
        ASSERT_EQ(p->size(), 2u);
        EXPECT_EQ((*p)[0].name, ".");
        EXPECT_EQ((*p)[0].inode, 12u);
        EXPECT_EQ((*p)[0].rec_len, 12u);
        EXPECT_EQ((*p)[1].name, "..");
        EXPECT_EQ((*p)[1].inode, 2u);
        EXPECT_EQ((*p)[1].rec_len, bs - 12 - (tail ? 12u : 0u));
        EXPECT_EQ((*p)[1].file_type, ft ? ftype::kDirectory : 0);
      }
    }
  }
  std::vector<std::byte> b(1000);
  EXPECT_FALSE(init_leaf_block(b, {1024, true, true}).ok());
}

TEST(DirEdit, InsertSplitsTheFirstEntryWithSlackAsTheKernel) {
  const DirBlockFormat f{1024, true, true};
  std::vector<std::byte> b(1024);
  ASSERT_TRUE(init_dir_block_with_dot_dotdot(b, f, 11, 2).ok());
  auto off = insert_entry(b, f, "abc", 20, ftype::kRegular);
  ASSERT_TRUE(off.ok() && off->has_value());
  EXPECT_EQ(**off, 24u);  // ".." cut to 12, the new entry right after it
  auto p = parse_dir_block(b, f);
  ASSERT_TRUE(p.ok());
  ASSERT_EQ(p->size(), 3u);
  EXPECT_EQ((*p)[1].rec_len, 12u);
  EXPECT_EQ((*p)[2].rec_len, 1024u - 12 - 24);
  EXPECT_EQ((*p)[2].file_type, ftype::kRegular);
  // Second insert cuts "abc" (real size 12).
  off = insert_entry(b, f, "defgh", 21, ftype::kDirectory);
  ASSERT_TRUE(off.ok() && off->has_value());
  EXPECT_EQ(**off, 36u);
  // Duplicates, bad names, inode 0.
  EXPECT_EQ(insert_entry(b, f, "abc", 22, 1).error().code(), EEXIST);
  EXPECT_EQ(insert_entry(b, f, "", 22, 1).error().code(), EINVAL);
  EXPECT_EQ(insert_entry(b, f, std::string(256, 'x'), 22, 1).error().code(), EINVAL);
  EXPECT_EQ(insert_entry(b, f, "a/b", 22, 1).error().code(), EINVAL);
  EXPECT_EQ(insert_entry(b, f, std::string("a\0b", 3), 22, 1).error().code(), EINVAL);
  EXPECT_EQ(insert_entry(b, f, ".", 22, 1).error().code(), EINVAL);
  EXPECT_EQ(insert_entry(b, f, "..", 22, 1).error().code(), EINVAL);
  EXPECT_EQ(insert_entry(b, f, "zz", 0, 1).error().code(), EINVAL);
  EXPECT_TRUE(insert_entry(b, f, std::string(255, 'y'), 23, 1).ok());

  // Removing "abc" (offset 24) merges it into ".."; then the hole is reused
  // by a name that fits, taking the slack after "..".
  ASSERT_TRUE(remove_entry(b, f, "abc").ok());
  p = parse_dir_block(b, f);
  ASSERT_EQ((*p)[1].rec_len, 24u);
  for (size_t i = 24; i < 36; ++i) EXPECT_EQ(b[i], std::byte{0}) << i;  // wiped
  EXPECT_EQ(remove_entry(b, f, "abc").error().code(), ENOENT);
  off = insert_entry(b, f, "q", 30, 1);
  ASSERT_TRUE(off.ok() && off->has_value());
  EXPECT_EQ(**off, 24u);

  // Removing the first entry leaves it in place with inode 0, rec_len kept;
  // a later insert takes the whole unused entry without cutting it.
  ASSERT_TRUE(remove_entry_at(b, f, 0).ok());
  p = parse_dir_block(b, f);
  EXPECT_EQ((*p)[0].inode, 0u);
  EXPECT_EQ((*p)[0].rec_len, 12u);
  EXPECT_TRUE((*p)[0].name.empty());
  EXPECT_EQ(remove_entry_at(b, f, 0).error().code(), ENOENT);
  EXPECT_EQ(remove_entry_at(b, f, 4).error().code(), ENOENT);
  off = insert_entry(b, f, "w", 31, 1);
  ASSERT_TRUE(off.ok() && off->has_value());
  EXPECT_EQ(**off, 0u);
  p = parse_dir_block(b, f);
  EXPECT_EQ((*p)[0].rec_len, 12u);

  ASSERT_TRUE(set_entry_inode(b, f, "..", 99, ftype::kDirectory).ok());
  EXPECT_EQ(live_entries(b, f).at("..").ino, 99u);
  EXPECT_EQ(set_entry_inode(b, f, "nope", 99, 1).error().code(), ENOENT);
}

TEST(DirEdit, FullBlockReportsNoRoomAndStaysUnchanged) {
  for (bool tail : {false, true}) {
    const DirBlockFormat f{1024, true, tail};
    std::vector<std::byte> b(1024);
    ASSERT_TRUE(init_leaf_block(b, f).ok());
    int n = 0;
    for (;; ++n) {
      auto off = insert_entry(b, f, fmt::format("name{:04}", n), 100 + n, 1);  // real size 16
      ASSERT_TRUE(off.ok());
      if (!off->has_value()) break;
    }
    EXPECT_EQ(n, tail ? (1024 - 12) / 16 : 1024 / 16);
    auto before = b;
    auto off = insert_entry(b, f, "x", 5, 1);
    ASSERT_TRUE(off.ok());
    EXPECT_FALSE(off->has_value());
    EXPECT_EQ(b, before);
  }
}

TEST(DirEdit, WithoutFiletypeNameLenIsSixteenBits) {
  const DirBlockFormat f{4096, false, false};
  std::vector<std::byte> b(4096);
  ASSERT_TRUE(init_leaf_block(b, f).ok());
  ASSERT_TRUE(insert_entry(b, f, std::string(200, 'n'), 40, ftype::kRegular).ok());
  EXPECT_EQ(le16(b, 6), 200);  // the type byte stays zero
  auto p = parse_dir_block(b, f);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)[0].file_type, 0);
}

TEST(DirEdit, SixtyFourKiBRecLenCoding) {
  const DirBlockFormat f{65536, true, false};
  std::vector<std::byte> b(65536);
  ASSERT_TRUE(init_leaf_block(b, f).ok());
  EXPECT_EQ(le16(b, 4), 65535);
  ASSERT_TRUE(insert_entry(b, f, "a", 12, 1).ok());  // takes the unused entry whole
  EXPECT_EQ(le16(b, 4), 65535);
  ASSERT_TRUE(insert_entry(b, f, "b", 13, 1).ok());
  auto p = parse_dir_block(b, f);
  ASSERT_TRUE(p.ok());
  ASSERT_EQ(p->size(), 2u);
  EXPECT_EQ((*p)[1].rec_len, 65536u - 12);
  ASSERT_TRUE(remove_entry(b, f, "b").ok());
  EXPECT_EQ(le16(b, 4), 65535);
  EXPECT_EQ(parse_dir_block(b, f)->size(), 1u);
}

TEST(DirEdit, CorruptBlocksAreRefusedUntouched) {
  const DirBlockFormat f{1024, true, true};
  std::vector<std::byte> b(1024);
  ASSERT_TRUE(init_leaf_block(b, f).ok());
  put_le16(b, 4, 1000);  // rec_len not reaching the tail
  auto before = b;
  EXPECT_EQ(insert_entry(b, f, "a", 5, 1).error().code(), kErrCorrupted);
  EXPECT_EQ(remove_entry(b, f, "a").error().code(), kErrCorrupted);
  EXPECT_EQ(largest_free_slot(b, f), 0u);
  EXPECT_EQ(b, before);
}

// Random inserts and removes against a std::map model, parsing after every
// step; each insert must land where a first-fit scan of the parsed block
// says it should.
TEST(DirEdit, RandomSequencesMatchAModel) {
  std::mt19937 rng(42);
  const DirBlockFormat formats[] = {{1024, true, true}, {1024, false, false}, {4096, true, true},
                                    {4096, true, false}, {65536, true, true}};
  for (const DirBlockFormat& f : formats) {
    std::vector<std::byte> b(f.block_size);
    ASSERT_TRUE(init_dir_block_with_dot_dotdot(b, f, 50, 2).ok());
    Model model = live_entries(b, f);
    int steps = f.block_size == 65536 ? 600 : 1200;
    for (int step = 0; step < steps; ++step) {
      bool insert = model.size() < 3 || rng() % 100 < 55;
      if (insert) {
        size_t len = 1 + (rng() % 4 == 0 ? rng() % 255 : rng() % 24);
        std::string name;
        for (size_t i = 0; i < len; ++i) name.push_back(static_cast<char>(rng() % 3 ? 'a' + rng() % 26 : 0x80 + rng() % 128));
        uint32_t ino = 11 + rng() % 100000;
        uint8_t type = static_cast<uint8_t>(1 + rng() % 7);
        // The expected slot: first entry with enough slack.
        auto parsed = parse_dir_block(b, f);
        ASSERT_TRUE(parsed.ok());
        std::optional<uint32_t> want;
        for (const auto& e : *parsed) {
          uint32_t s = e.inode ? e.rec_len - dirent_size(e.name.size()) : e.rec_len;
          if (s >= dirent_size(len)) {
            want = e.inode ? e.offset + dirent_size(e.name.size()) : e.offset;
            break;
          }
        }
        auto r = insert_entry(b, f, name, ino, type);
        if (model.count(name)) {
          ASSERT_FALSE(r.ok());
          EXPECT_EQ(r.error().code(), EEXIST);
          continue;
        }
        ASSERT_TRUE(r.ok()) << r.error().message();
        ASSERT_EQ(*r, want) << "step " << step;
        if (r->has_value()) model[name] = {ino, f.filetype ? type : uint8_t{0}};
      } else {
        auto it = model.begin();
        std::advance(it, rng() % model.size());
        if (it->first == "." || it->first == "..") continue;
        ASSERT_TRUE(remove_entry(b, f, it->first).ok());
        model.erase(it);
      }
      ASSERT_EQ(live_entries(b, f), model) << "step " << step << " bs " << f.block_size;
      ASSERT_EQ(has_dir_block_tail(b), f.has_tail);
    }
  }
}

// ---- against e2fsck and debugfs on real images ----

struct Listed {
  uint32_t ino;
  uint32_t mode;
};

// "ls -p" prints /inode/mode/uid/gid/name/size/ for each live entry.
std::map<std::string, Listed> debugfs_ls(const Image& img, const std::string& dir) {
  std::istringstream in(img.debugfs("ls -p " + dir));
  std::map<std::string, Listed> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() < 2 || line[0] != '/') continue;
    std::vector<std::string> f;
    std::stringstream ss(line.substr(1));
    std::string part;
    while (std::getline(ss, part, '/')) f.push_back(part);
    if (f.size() < 5) continue;
    out[f[4]] = {static_cast<uint32_t>(std::stoul(f[0])), static_cast<uint32_t>(std::stoul(f[1], nullptr, 8))};
  }
  return out;
}

void write_block(const Image& img, uint64_t nr, Bytes data) {
  int fd = ::open(img.path().c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, data.data(), data.size(), static_cast<off_t>(nr * data.size())),
            static_cast<ssize_t>(data.size()));
  ::close(fd);
}

void debugfs_write_script(const Image& img, const TempDir& dir, const std::vector<std::string>& cmds) {
  if (cmds.empty()) return;
  std::string script;
  for (const auto& c : cmds) script += c + "\n";
  uext::testing::write_file(dir / "cmds", script);
  auto r = uext::testing::run({"debugfs", "-w", "-f", dir / "cmds", img.path()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

void expect_fsck_clean(const Image& img) {
  auto r = uext::testing::run({"e2fsck", "-fn", img.path()});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
}

struct OracleCase {
  const char* label;
  uint32_t block_size;
  std::vector<std::string> mkfs;
};

// /d holds a few files; /pool holds files whose inodes the edits link into
// /d. At the end every inode is referenced exactly as often as its link
// count says, with no link-count edits: a pool file linked into /d loses its
// /pool name (debugfs unlink, which leaves counts alone), and a file removed
// from /d gets a /pool name instead (debugfs ln, likewise).
void run_oracle_case(const OracleCase& c, uint32_t seed, int steps) {
  SCOPED_TRACE(c.label);
  TempDir dir;
  std::filesystem::create_directories(dir / "src/d");
  std::filesystem::create_directories(dir / "src/pool");
  for (int i = 0; i < 12; ++i) std::ofstream(dir / fmt::format("src/d/orig_{:02}", i)).put('o');
  for (int i = 0; i < 120; ++i) std::ofstream(dir / fmt::format("src/pool/p{:03}", i)).put('p');
  Image img(dir / "img", dir / "src", c.block_size, "16M", c.mkfs);
  const bool filetype = img.incompat() & 0x2;
  const DirBlockFormat f{img.block_size(), filetype, img.metadata_csum()};
  auto blocks = img.data_blocks("/d");
  ASSERT_EQ(blocks.size(), 1u);
  auto block = img.block_copy(blocks[0]);
  auto pool = debugfs_ls(img, "/pool");
  auto orig = debugfs_ls(img, "/d");
  ASSERT_EQ(live_entries(block, f).size(), orig.size());

  std::mt19937 rng(seed);
  Model model = live_entries(block, f);
  std::map<std::string, std::string> pool_name_of;  // inserted name -> pool name
  auto next_pool = pool.begin();
  while (next_pool != pool.end() && next_pool->first[0] != 'p') ++next_pool;
  int inserted = 0, removed = 0, no_room = 0;
  for (int step = 0; step < steps && next_pool != pool.end(); ++step) {
    if (model.size() > 2 && rng() % 100 < 40) {
      auto it = model.begin();
      std::advance(it, rng() % model.size());
      if (it->first == "." || it->first == "..") continue;
      ASSERT_TRUE(remove_entry(block, f, it->first).ok());
      model.erase(it);
      ++removed;
    } else {
      size_t len = 1 + (rng() % 5 == 0 ? rng() % 255 : rng() % 30);
      std::string name = fmt::format("n{}_", step);
      while (name.size() < len) name.push_back(static_cast<char>('a' + rng() % 26));
      name.resize(len);
      if (model.count(name) || name == "." || name == "..") continue;
      auto r = insert_entry(block, f, name, next_pool->second.ino, ftype::kRegular);
      ASSERT_TRUE(r.ok()) << r.error().message();
      if (!r->has_value()) {
        ++no_room;
        continue;
      }
      model[name] = {next_pool->second.ino, filetype ? ftype::kRegular : uint8_t{0}};
      pool_name_of[name] = next_pool->first;
      ++next_pool;
      ++inserted;
    }
    ASSERT_EQ(live_entries(block, f), model);
  }
  EXPECT_GT(inserted, 10);
  EXPECT_GT(removed, 3);
  if (f.has_tail) set_dir_block_checksum(img.inode_csum_seed("/d"), block);
  write_block(img, blocks[0], block);

  std::vector<std::string> cmds;
  for (const auto& [name, pname] : pool_name_of)
    if (model.count(name)) cmds.push_back("unlink /pool/" + pname);
  for (const auto& [name, l] : orig)
    if (name != "." && name != ".." && !model.count(name)) cmds.push_back(fmt::format("ln <{}> /pool/{}", l.ino, name));
  debugfs_write_script(img, dir, cmds);
  expect_fsck_clean(img);

  auto listed = debugfs_ls(img, "/d");
  std::map<std::string, uint32_t> want, got;
  for (const auto& [name, l] : model) want[name] = l.ino;
  for (const auto& [name, l] : listed) got[name] = l.ino;
  EXPECT_EQ(got, want);

  // uext's own lookup finds every name.
  auto fs = Filesystem::open(img.path(), {});
  ASSERT_TRUE(fs.ok()) << fs.error().message();
  for (const auto& [name, l] : model) {
    if (name == "." || name == "..") continue;
    auto ino = (*fs)->resolve("/d/" + name);
    ASSERT_TRUE(ino.ok()) << name << ": " << ino.error().message();
    EXPECT_EQ(*ino, l.ino) << name;
  }
  std::cerr << c.label << ": " << inserted << " inserted, " << removed << " removed, " << no_room
            << " refused for room\n";
}

TEST(DirEditImage, Ext4FourKiBWithChecksums) { run_oracle_case({"ext4 4k csum", 4096, {}}, 1, 300); }
TEST(DirEditImage, Ext4OneKiB) { run_oracle_case({"ext4 1k csum", 1024, {}}, 2, 300); }
TEST(DirEditImage, Ext4WithoutMetadataCsum) {
  run_oracle_case({"ext4 4k ^metadata_csum", 4096, {"-O", "^metadata_csum"}}, 3, 300);
}
TEST(DirEditImage, Ext2WithoutFiletype) {
  run_oracle_case({"ext2 ^filetype", 1024, {"-t", "ext2", "-O", "^filetype"}}, 4, 300);
}

// A new directory block made here for mkdir, on a real image: the directory
// debugfs made gets our block 0 instead of its own.
TEST(DirEditImage, MkdirBlockMatchesWhatE2fsckExpects) {
  for (bool csum : {true, false}) {
    TempDir dir;
    std::filesystem::create_directories(dir / "src/sub/empty");
    Image img(dir / "img", dir / "src", 1024, "8M", csum ? std::vector<std::string>{} : std::vector<std::string>{"-O", "^metadata_csum"});
    const DirBlockFormat f{img.block_size(), true, img.metadata_csum()};
    auto blocks = img.data_blocks("/sub/empty");
    ASSERT_EQ(blocks.size(), 1u);
    std::vector<std::byte> b(f.block_size);
    ASSERT_TRUE(init_dir_block_with_dot_dotdot(b, f, img.inode_number("/sub/empty"), img.inode_number("/sub")).ok());
    if (f.has_tail) set_dir_block_checksum(img.inode_csum_seed("/sub/empty"), b);
    write_block(img, blocks[0], b);
    expect_fsck_clean(img);
  }
}

}  // namespace
}  // namespace uext::disk
