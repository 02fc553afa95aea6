// libFuzzer target: the write path on damaged images.
//
// The input patches a seed image's metadata (fuzz/seeds.h); the patched
// image is opened read-write from memory, so a journal that claims to need
// recovery is replayed, and a fixed script of changes runs on it: new
// files, directories, links and symlinks, writes that grow block and
// extent maps (and ext2's indirect blocks), truncates, hole punches and
// preallocation, xattrs in the inode and in a block, names added to and
// removed from the hashed directory, renames (a directory across parents
// included), an unlinked file still open, fsync, sync and close with its
// writeback, commit and checkpoint. The result is opened again read-only
// and walked (fuzz/walk.h).
//
// Any error a call returns is fine: a damaged image should be refused or
// reported, not trusted. What counts as a bug is a crash, a hang, a leak,
// a sanitizer report or a broken promise of the API (check()).
//
// Seed images: UEXT_FUZZ_SEEDS=img1:img2:... (scripts/fuzz.sh makes them).
// With UEXT_FUZZ_WHOLE_IMAGE=1 the input is a whole image instead of a
// patch list (byte 0, in the boot block, is the option byte as for
// image_fuzzer): how scripts/fuzz.sh replays saved reproducers. With
// UEXT_FUZZ_KEEP_RESULT=path the image as the changes left it is written
// there (scripts/fuzz.sh runs e2fsck on what the script made of each
// valid seed).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "seeds.h"
#include "walk.h"

namespace {

using uext::Ino;

bool whole_image_inputs() {
  static const bool whole = [] {
    const char* e = std::getenv("UEXT_FUZZ_WHOLE_IMAGE");
    return e != nullptr && *e == '1';
  }();
  return whole;
}

std::vector<std::byte> pattern(size_t n, uint8_t salt) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<uint8_t>(i * 31 + salt));
  return v;
}

class Script {
 public:
  explicit Script(uext::Filesystem& fs) : fs_(fs) {}

  void run() {
    (void)fs_.statfs();
    new_files();
    change_old_files();
    hashed_directory();
    renames_and_links();
    open_unlinked_file();
    removals();
    (void)fs_.sync();
  }

 private:
  Ino resolve(const char* path) {
    auto ino = fs_.resolve(path, false);
    return ino ? *ino : 0;
  }

  // A write that succeeded is read back the same while the image is open:
  // it comes from the page cache, whatever the image says.
  void write_and_check(Ino ino, uint64_t offset, size_t length, uint8_t salt) {
    if (ino == 0) return;
    const auto data = pattern(length, salt);
    auto n = fs_.write(ino, offset, data);
    if (!n) return;
    uext_fuzz::check(*n <= length, "write returned more bytes than given");
    std::vector<std::byte> back(*n);
    auto r = fs_.read(ino, offset, back);
    if (!r) return;
    uext_fuzz::check(*r == *n, "a read of what was just written came back short");
    uext_fuzz::check(std::memcmp(back.data(), data.data(), *n) == 0,
                     "a read of what was just written returned other bytes");
  }

  void new_files() {
    auto a = fs_.create(uext::kRootIno, "new-a", S_IFREG | 0644, owner_);
    if (a) {
      write_and_check(a->ino, 0, 10000, 1);
      write_and_check(a->ino, 70000, 3000, 2);  // a hole, then a second extent
      (void)fs_.fsync(a->ino);
      (void)fs_.fallocate(a->ino, 0, 200000, 8192);
      (void)fs_.fallocate(a->ino, uext::kFallocKeepSize | uext::kFallocPunchHole, 4096, 4096);
      (void)fs_.seek(a->ino, 0, 4);  // SEEK_HOLE
    }
    auto d = fs_.mkdir(uext::kRootIno, "new-dir", 0755, owner_);
    if (d) {
      for (int i = 0; i < 6; ++i) {
        auto f = fs_.create(d->ino, "f" + std::to_string(i), S_IFREG | 0600, owner_);
        if (f) write_and_check(f->ino, 0, 1500 * (i + 1), static_cast<uint8_t>(10 + i));
      }
      (void)fs_.symlink(d->ino, "short", "f0", owner_);
      (void)fs_.symlink(d->ino, "long", std::string(300, 'l'), owner_);
      (void)fs_.mknod(d->ino, "fifo", S_IFIFO | 0644, owner_);
      (void)fs_.mkdir(d->ino, "sub", 0700, owner_);
    }
  }

  void change_old_files() {
    Ino hello = resolve("/hello.txt");
    write_and_check(hello, 0, 5, 20);
    if (hello != 0) {
      (void)fs_.setxattr(hello, "user.new", std::string(100, 'x'));
      (void)fs_.setxattr(hello, "user.color", "red", 0);
      (void)fs_.removexattr(hello, "trusted.big");
      (void)fs_.setxattr(hello, "trusted.bigger", std::string(600, 'y'));
    }
    Ino indirect = resolve("/indirect.txt");
    write_and_check(indirect, 14000, 20000, 21);  // past the direct blocks
    (void)fs_.truncate(indirect, 3000);
    Ino sparse = resolve("/sparse");
    write_and_check(sparse, 50000, 9000, 22);  // into a hole between extents
    (void)fs_.truncate(sparse, 60000);
    write_and_check(sparse, 300000, 100, 23);
    Ino empty = resolve("/empty");
    write_and_check(empty, 0, 1, 24);
    if (empty != 0) {
      uext::SetAttr attr;
      attr.mode = 0600;
      attr.uid = 1000;
      (void)fs_.setattr(empty, attr);
    }
    Ino dir = resolve("/dir");
    if (dir != 0) (void)fs_.setxattr(dir, "user.empty", "now set");
  }

  void hashed_directory() {
    Ino h = resolve("/htree");
    if (h == 0) return;
    for (int i = 1; i <= 90; i += 7) (void)fs_.unlink(h, "entry-with-a-fairly-long-name-" + std::to_string(i));
    for (int i = 0; i < 40; ++i) {
      auto f = fs_.create(h, "another-entry-with-a-long-name-" + std::to_string(i), S_IFREG | 0644, owner_);
      if (f && i % 8 == 0) write_and_check(f->ino, 0, 100, static_cast<uint8_t>(30 + i));
    }
    (void)fs_.lookup(h, "another-entry-with-a-long-name-39");
    (void)fs_.lookup(h, "entry-with-a-fairly-long-name-2");
  }

  void renames_and_links() {
    Ino dir = resolve("/dir");
    Ino sub = resolve("/dir/sub");
    Ino new_dir = resolve("/new-dir");
    if (dir != 0 && new_dir != 0) {
      (void)fs_.rename(dir, "sub", new_dir, "moved-sub");  // a directory changes parent
      (void)fs_.rename(new_dir, "f1", uext::kRootIno, "hello.txt");  // over an existing file
      (void)fs_.rename(new_dir, "f2", new_dir, "f3", uext::kRenameExchange);
      (void)fs_.rename(new_dir, "f4", dir, "hardlink", uext::kRenameNoReplace);
    }
    if (sub != 0) (void)fs_.rename(sub, "deeper", uext::kRootIno, "deeper-moved");
    Ino sparse = resolve("/sparse");
    if (sparse != 0 && dir != 0) (void)fs_.link(sparse, dir, "sparse-link");
  }

  void open_unlinked_file() {
    Ino indirect = resolve("/indirect.txt");
    if (indirect == 0) return;
    fs_.retain(indirect);
    (void)fs_.unlink(uext::kRootIno, "indirect.txt");
    write_and_check(indirect, 100, 5000, 40);
    (void)fs_.fsync(indirect);
    (void)fs_.release(indirect);
  }

  void removals() {
    Ino deeper = resolve("/deeper-moved");
    if (deeper != 0) (void)fs_.unlink(deeper, "file");
    (void)fs_.rmdir(uext::kRootIno, "deeper-moved");
    (void)fs_.unlink(uext::kRootIno, "sparse");  // still linked from /dir
    (void)fs_.unlink(uext::kRootIno, "longlink");
    (void)fs_.rmdir(uext::kRootIno, "lost+found");  // not empty on some images: ENOTEMPTY
    Ino new_dir = resolve("/new-dir");
    if (new_dir != 0) (void)fs_.unlink(new_dir, "f5");
  }

  uext::Filesystem& fs_;
  uext::Owner owner_{1000, 1000, 022};
};

void change_and_walk(std::vector<std::byte>& image, bool verify) {
  uext::Options options;
  options.read_only = false;
  options.verify_checksums = verify;
  options.metadata_cache_bytes = 1u << 20;
  options.commit_interval_ms = 0;  // commits at fsync, sync and close only: no timer thread at work
  options.page_cache_bytes = 1u << 20;
  options.dirty_limit_bytes = 256u << 10;
  bool opened = false;
  {
    // In the fuzzer's own buffer, so that what the library wrote can be
    // opened again after close.
    auto fs = uext::Filesystem::open(uext::make_memory_device_over(image), options);
    if (fs) {
      opened = true;
      Script(**fs).run();
      (void)(*fs)->close();
    }
  }
  if (const char* out = std::getenv("UEXT_FUZZ_KEEP_RESULT"); out != nullptr && *out != '\0') {
    uext_fuzz::write_image(out, image);
  }
  if (!opened) return;  // refused (a feature uext does not write, a bad superblock): nothing changed
  // Whatever the changes left, reading it back must not go wrong either.
  uext_fuzz::Budget budget;
  budget.work = 800;
  uext_fuzz::open_and_walk(image, verify, budget);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (!whole_image_inputs()) uext_fuzz::load_seeds_from_env("write_fuzzer");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static std::vector<std::byte> image;
  bool verify = false;
  if (whole_image_inputs()) {
    if (size < 64 << 10 || size > 8 << 20) return 0;
    image.assign(reinterpret_cast<const std::byte*>(data), reinterpret_cast<const std::byte*>(data) + size);
    verify = (data[0] & 1) != 0;
  } else {
    verify = uext_fuzz::patched_image(data, size, image);
  }
  change_and_walk(image, verify);
  return 0;
}
