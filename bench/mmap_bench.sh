#!/usr/bin/env bash
# Mapped files: uext's Filesystem::mmap against mmap(2) of the same file on
# the kernel's ext4 (loop mount of the same image), with bench/mmap_bench.cc:
#
#   read-fault   pages/s touching one byte per page of a 256 MiB file whose
#                data is on disk and not cached (caches dropped first)
#   first-write  pages/s storing one byte per page of a sparse 256 MiB file
#   seq-write    MB/s of memset over a 512 MiB shared mapping plus msync
#
# uext runs once per fault handling (userfaultfd, signal), each on the image
# as the previous run left it (each run removes the files it made); the
# kernel runs last. e2fsck -fn after every run. One run each; ratios are
# uext / kernel (above 1: uext is faster).
#
#   cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DUEXT_BUILD_TESTS=OFF
#   cmake --build build-bench --target uext_mmap_bench -j2
#   sudo BUILD=build-bench bench/mmap_bench.sh
#
# Needs root (loop mount, drop_caches). Environment:
#   BUILD                build directory holding uext_mmap_bench (default build-bench)
#   BENCH_DIR            where the sparse image goes (default: the build directory)
#   BENCH_IMAGE          image size for mke2fs -t ext4 (default 2G)
#   UEXT_BENCH_READ_MIB, UEXT_BENCH_WRITE_MIB, UEXT_BENCH_SEQ_MIB   (256, 256, 512)
#   UEXT_BENCH_HANDLINGS fault handlings to run uext with (default "userfaultfd signal")
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build-bench}
case $build in /*) ;; *) build=$root/$build ;; esac
prog=$build/uext_mmap_bench
bench_dir=${BENCH_DIR:-$build}
img_size=${BENCH_IMAGE:-2G}
read_mib=${UEXT_BENCH_READ_MIB:-256}
write_mib=${UEXT_BENCH_WRITE_MIB:-256}
seq_mib=${UEXT_BENCH_SEQ_MIB:-512}
handlings=${UEXT_BENCH_HANDLINGS:-userfaultfd signal}
PATH=$PATH:/sbin:/usr/sbin
me=mmap_bench.sh

if [[ $(id -u) -ne 0 ]]; then
  echo "$me: needs root (loop mount, drop_caches)" >&2
  exit 2
fi
if [[ ! -x $prog ]]; then
  echo "$me: $prog not found; build it: cmake --build $build --target uext_mmap_bench" >&2
  exit 2
fi

mkdir -p "$bench_dir"
img=$bench_dir/mmap-bench.$$.img
mnt=$(mktemp -d /tmp/mmap-bench.XXXXXX)
out=$(mktemp -d /tmp/mmap-bench-out.XXXXXX)
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt"
  rm -rf "$mnt" "$out" "$img"
}
trap cleanup EXIT

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
fsck() {
  if ! e2fsck -fn "$img" > "$out/fsck" 2>&1; then
    echo "$me: e2fsck -fn after $1 is not clean:" >&2
    cat "$out/fsck" >&2
    exit 1
  fi
}
args=(--read-mib "$read_mib" --write-mib "$write_mib" --seq-mib "$seq_mib")

truncate -s "$img_size" "$img"
mke2fs -F -q -t ext4 "$img"
# The file the read faults touch, written by the kernel and on disk.
mount -o loop "$img" "$mnt"
dd if=/dev/urandom of="$mnt/read.dat" bs=1M count="$read_mib" conv=fsync status=none
umount "$mnt"
fsck setup

contenders=()
for h in $handlings; do
  drop_caches
  echo "== uext, $h" >&2
  "$prog" uext "$img" --fault-handling "$h" "${args[@]}" | tee "$out/uext-$h" >&2
  fsck "uext ($h)"
  contenders+=("uext-$h")
done
mount -o loop "$img" "$mnt"
drop_caches
echo "== kernel" >&2
"$prog" kernel "$mnt" "${args[@]}" | tee "$out/kernel" >&2
umount "$mnt"
fsck kernel
contenders+=(kernel)

value() { awk -v n="$2" '$1 == "RESULT" && $2 == n { print $3 }' "$out/$1"; }
# Every contender must have read the same bytes through its mapping.
sums=$(for c in "${contenders[@]}"; do sed -n 's/^# read-fault: .*(sum \([0-9]*\))$/\1/p' "$out/$c"; done | sort -u)
if [[ -z $sums || $(wc -l <<< "$sums") -ne 1 ]]; then
  echo "$me: the contenders read different data from read.dat (byte sums: $(echo $sums))" >&2
  exit 1
fi
echo
echo "image $img_size ext4; read ${read_mib} MiB, first-write ${write_mib} MiB, seq-write ${seq_mib} MiB; $(uname -r), $(nproc) CPUs"
printf '%-18s %-20s %14s %12s\n' workload contender value "vs kernel"
for m in read_fault:pages/s first_write_fault:pages/s seq_write:MB/s; do
  name=${m%%:*} unit=${m#*:}
  k=$(value kernel "$name")
  for c in "${contenders[@]}"; do
    v=$(value "$c" "$name")
    ratio=$(awk -v a="$v" -v b="$k" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    printf '%-18s %-20s %14s %12s\n' "$name" "$c" "$v $unit" "$ratio"
  done
done
