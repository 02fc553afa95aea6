#!/usr/bin/env bash
# Write throughput through the library (delayed allocation) against the
# kernel's ext4 on a loop mount of an identical fresh image:
#   seq   1 GiB in 1 MiB writes to a new file, then close (uext) /
#         dd bs=1M conv=fsync (kernel)
#   rand  N random 4 KiB writes (4 KiB aligned) over a 256 MiB file written
#         beforehand (untimed), then fsync + close (uext) /
#         fio --rw=randwrite --bs=4k --number_ios=N --end_fsync=1 (kernel)
# One run each, wall time from /usr/bin/time, e2fsck -fn after each run,
# ratios printed (uext/kernel < 1: uext is faster).
#
#   sudo BUILD=build-dal bench/write_throughput.sh
#
# The driver is a small C++ program kept below as a here-document and
# compiled against $BUILD/libuext.a (build that first: ninja -C $BUILD uext).
# Needs root (loop mount), fio, g++, libfmt.
# Environment:
#   BUILD       build directory holding libuext.a (default build-dal)
#   BENCH_DIR   where the sparse images go (default $BUILD; same disk as the tree)
#   BENCH_IMAGE image size for mke2fs (default 2G)
#   RAND_IOS    random writes (default 32768)
#   RUNS        rounds of both workloads on both sides (default 1); with more
#               than one, the median of the rounds' ratios is printed too
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build-dal}
case $build in /*) ;; *) build=$root/$build ;; esac
bench_dir=${BENCH_DIR:-$build}
img_size=${BENCH_IMAGE:-2G}
rand_ios=${RAND_IOS:-32768}
runs=${RUNS:-1}
PATH=$PATH:/sbin:/usr/sbin

die() { echo "write_throughput.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root for the kernel's loop mount"
[ -f "$build/libuext.a" ] || die "no $build/libuext.a: build the library first"
command -v fio >/dev/null || die "needs fio"

work=$(mktemp -d "$bench_dir/wt.XXXXXX")
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------- driver
cat >"$work/driver.cc" <<'EOF'
// seq IMG MIB | rand-setup IMG MIB | rand IMG MIB COUNT
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include "uext/filesystem.h"
using namespace uext;
static void check(bool ok, const char* what, const std::string& msg) {
  if (!ok) { std::fprintf(stderr, "%s: %s\n", what, msg.c_str()); std::exit(1); }
}
int main(int argc, char** argv) {
  if (argc < 4) return 2;
  std::string mode = argv[1];
  uint64_t mib = std::strtoull(argv[3], nullptr, 10);
  Options o;
  o.read_only = false;
  auto fs = Filesystem::open(argv[2], o);
  check(fs.ok(), "open", fs.ok() ? "" : fs.error().message());
  auto& f = **fs;
  std::vector<std::byte> buf(1 << 20);
  uint64_t x = 0x2545F4914F6CDD1Dull;
  for (auto& b : buf) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; b = std::byte(x); }
  if (mode == "seq" || mode == "rand-setup") {
    auto st = f.create(kRootIno, "big", 0100644, {});
    check(st.ok(), "create", st.ok() ? "" : st.error().message());
    for (uint64_t i = 0; i < mib; ++i) {
      auto w = f.write(st->ino, i << 20, buf);
      check(w.ok() && *w == buf.size(), "write", w.ok() ? "short" : w.error().message());
    }
  } else if (mode == "rand") {
    uint64_t count = std::strtoull(argv[4], nullptr, 10);
    auto ino = f.resolve("/big");
    check(ino.ok(), "resolve", ino.ok() ? "" : ino.error().message());
    const uint64_t pages = (mib << 20) / 4096;
    for (uint64_t i = 0; i < count; ++i) {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      auto w = f.write(*ino, (x % pages) * 4096, std::span(buf).subspan((i % 256) * 4096, 4096));
      check(w.ok() && *w == 4096, "pwrite", w.ok() ? "short" : w.error().message());
    }
    auto s = f.fsync(*ino);
    check(s.ok(), "fsync", s.ok() ? "" : s.error().message());
  } else {
    return 2;
  }
  auto c = f.close();
  check(c.ok(), "close", c.ok() ? "" : c.error().message());
  return 0;
}
EOF
echo "compiling the driver against $build/libuext.a"
isal=$(sed -n 's/^ISAL_LIBRARY:FILEPATH=//p' "$build/CMakeCache.txt" | grep -v NOTFOUND || true)
g++ -std=c++20 -O2 -I"$root/include" "$work/driver.cc" "$build/libuext.a" $isal -lfmt -pthread \
  -o "$work/driver"

fresh_image() { rm -f "$1"; truncate -s "$img_size" "$1"; mke2fs -F -q -t ext4 "$1"; }
fsck_verdict() { if e2fsck -fn "$1" >/dev/null 2>&1; then echo clean; else echo "NOT CLEAN"; fi; }
# Wall seconds of a command (/usr/bin/time -f %e).
timed() { /usr/bin/time -f %e -o "$work/t" "$@" >/dev/null; cat "$work/t"; }

img=$work/img
declare -A secs verdict

# One round: each workload on uext, then on the kernel, fresh images.
run_round() {
  local r=$1
  # seq: uext
  fresh_image "$img"
  sync
  secs[seq_uext_$r]=$(timed "$work/driver" seq "$img" 1024)
  verdict[seq_uext_$r]=$(fsck_verdict "$img")
  # seq: kernel
  fresh_image "$img"
  mount -o loop "$img" "$mnt"
  sync
  secs[seq_kernel_$r]=$(timed dd if=/dev/zero of="$mnt/big" bs=1M count=1024 conv=fsync status=none)
  umount "$mnt"
  verdict[seq_kernel_$r]=$(fsck_verdict "$img")

  # rand: uext (file written beforehand, untimed)
  fresh_image "$img"
  "$work/driver" rand-setup "$img" 256
  sync
  secs[rand_uext_$r]=$(timed "$work/driver" rand "$img" 256 "$rand_ios")
  verdict[rand_uext_$r]=$(fsck_verdict "$img")
  # rand: kernel
  fresh_image "$img"
  mount -o loop "$img" "$mnt"
  dd if=/dev/urandom of="$mnt/big" bs=1M count=256 conv=fsync status=none
  sync; echo 1 >/proc/sys/vm/drop_caches
  secs[rand_kernel_$r]=$(timed fio --name=rand --filename="$mnt/big" --size=256M --rw=randwrite \
    --bs=4k --ioengine=psync --number_ios="$rand_ios" --end_fsync=1 --randrepeat=0 --output=/dev/null)
  umount "$mnt"
  verdict[rand_kernel_$r]=$(fsck_verdict "$img")
}

for ((r = 1; r <= runs; r++)); do run_round "$r"; done

mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? b / s / 1e6 : 0) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
seq_bytes=$((1024 << 20))
rand_bytes=$((rand_ios * 4096))
printf '%-6s %-4s %-7s %9s %8s %12s  %s\n' workload run writer seconds MB/s e2fsck "uext/kernel time"
for w in seq rand; do
  b=$seq_bytes; [ $w = rand ] && b=$rand_bytes
  ratios=()
  for ((r = 1; r <= runs; r++)); do
    for who in uext kernel; do
      k=${w}_${who}_$r
      x=""
      if [ $who = uext ]; then
        x=$(ratio "${secs[$k]}" "${secs[${w}_kernel_$r]}")
        ratios+=("$x")
      fi
      printf '%-6s %-4s %-7s %9s %8s %12s  %s\n' $w "$r" $who "${secs[$k]}" "$(mbps $b "${secs[$k]}")" \
        "${verdict[$k]}" "$x"
    done
  done
  # Each round's uext and kernel ran back to back: the median of the
  # rounds' ratios holds better than one round when the machine is shared.
  [ "$runs" -gt 1 ] && printf '%-6s median of %d rounds' $w "$runs" &&
    printf '%34s  %s\n' "" "$(median "${ratios[@]}")"
done
