#!/usr/bin/env bash
# Extent counts for interleaved streaming writers (issue 5): 4 threads append
# 64 KiB writes round robin to 4 files of FILE_MIB each, through the library
# (delayed allocation, then delayed_allocation=false) and through the
# kernel's ext4 on a loop mount of an identical fresh image. The total leaf
# extents debugfs finds in the 4 files, wall seconds and the e2fsck verdict
# of each run are printed; uext's count should be no more than the kernel's.
#
#   sudo BUILD=/work/build bench/interleaved_extents.sh
#
# The driver is a C++ program kept below as a here-document, compiled
# against $BUILD/libuext.a. Needs root (loop mount), g++, libfmt, debugfs.
# Environment:
#   BUILD       build directory holding libuext.a (default build)
#   BENCH_DIR   where the sparse images go (default $BUILD)
#   FILE_MIB    size of each file (default 256)
#   BENCH_IMAGE image size for mke2fs (default 2G)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
bench_dir=${BENCH_DIR:-$build}
file_mib=${FILE_MIB:-256}
img_size=${BENCH_IMAGE:-2G}
PATH=$PATH:/sbin:/usr/sbin

die() { echo "interleaved_extents.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root for the kernel's loop mount"
[ -f "$build/libuext.a" ] || die "no $build/libuext.a: build the library first"

work=$(mktemp -d "$bench_dir/ie.XXXXXX")
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/driver.cc" <<'EOF'
// lib IMG MIB [nodelalloc] | posix DIR MIB: 4 threads, 64 KiB appends in turn.
#include <fcntl.h>
#include <unistd.h>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>
#include "uext/filesystem.h"
using namespace uext;
constexpr int kFiles = 4;
constexpr size_t kChunk = 64 * 1024;
static void die(const std::string& m) { std::fprintf(stderr, "%s\n", m.c_str()); std::exit(1); }
int main(int argc, char** argv) {
  if (argc < 4) return 2;
  const std::string mode = argv[1];
  const uint64_t bytes = std::strtoull(argv[3], nullptr, 10) << 20;
  std::vector<char> buf(kChunk);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<char>(i * 131 + 7);
  std::unique_ptr<Filesystem> fs;
  std::vector<Ino> inos;
  std::vector<int> fds;
  if (mode == "lib") {
    Options o;
    o.read_only = false;
    o.delayed_allocation = !(argc > 4 && std::string(argv[4]) == "nodelalloc");
    auto opened = Filesystem::open(argv[2], o);
    if (!opened.ok()) die(opened.error().message());
    fs = std::move(*opened);
    for (int f = 0; f < kFiles; ++f) {
      auto st = fs->create(kRootIno, "f" + std::to_string(f), 0100644, {});
      if (!st.ok()) die(st.error().message());
      inos.push_back(st->ino);
    }
  } else {
    for (int f = 0; f < kFiles; ++f) {
      int fd = ::open((std::string(argv[2]) + "/f" + std::to_string(f)).c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
      if (fd < 0) die("open");
      fds.push_back(fd);
    }
  }
  std::atomic<uint64_t> turn{0};
  std::vector<std::thread> threads;
  for (int f = 0; f < kFiles; ++f) {
    threads.emplace_back([&, f] {
      for (uint64_t off = 0; off < bytes; off += kChunk) {
        while (turn.load() % kFiles != static_cast<uint64_t>(f)) std::this_thread::yield();
        if (fs) {
          auto w = fs->write(inos[f], off, std::as_bytes(std::span(buf)));
          if (!w.ok() || *w != kChunk) die("write failed");
        } else if (::pwrite(fds[f], buf.data(), kChunk, static_cast<off_t>(off)) != static_cast<ssize_t>(kChunk)) {
          die("pwrite failed");
        }
        turn.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  if (fs) {
    auto c = fs->close();
    if (!c.ok()) die(c.error().message());
  } else {
    for (int fd : fds) ::close(fd);
  }
  return 0;
}
EOF
echo "compiling the driver against $build/libuext.a"
isal=$(sed -n 's/^ISAL_LIBRARY:FILEPATH=//p' "$build/CMakeCache.txt" | grep -v NOTFOUND || true)
g++ -std=c++20 -O2 -I"$root/include" "$work/driver.cc" "$build/libuext.a" $isal -lfmt -pthread -o "$work/driver"

fresh_image() { rm -f "$1"; truncate -s "$img_size" "$1"; mke2fs -F -q -t ext4 "$1"; }
fsck_verdict() { if e2fsck -fn "$1" >/dev/null 2>&1; then echo clean; else echo "NOT CLEAN"; fi; }
timed() { /usr/bin/time -f %e -o "$work/t" "$@" >/dev/null; cat "$work/t"; }
# Leaf extents of the 4 files (debugfs "ex" lines whose level equals the depth).
extents() {
  local n=0 f
  for f in 0 1 2 3; do
    n=$((n + $(debugfs -R "ex /f$f" "$1" 2>/dev/null | awk '$1 ~ /^[0-9]+\/$/ { l = $1; sub("/", "", l); if (l == $2) c++ } END { print c + 0 }')))
  done
  echo $n
}

img=$work/img
printf '%-24s %8s %8s %10s\n' writer extents seconds e2fsck
for run in uext uext-nodelalloc kernel; do
  fresh_image "$img"
  sync
  case $run in
    uext) s=$(timed "$work/driver" lib "$img" "$file_mib") ;;
    uext-nodelalloc) s=$(timed "$work/driver" lib "$img" "$file_mib" nodelalloc) ;;
    kernel)
      mount -o loop "$img" "$mnt"
      s=$(timed sh -c "'$work/driver' posix '$mnt' '$file_mib' && umount '$mnt'")
      ;;
  esac
  printf '%-24s %8s %8s %10s\n' "$run" "$(extents "$img")" "$s" "$(fsck_verdict "$img")"
done
