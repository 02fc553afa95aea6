#!/usr/bin/env bash
# Write benchmark: `uext put` against the kernel's ext4 (loop mount, cp -a,
# sync) and fuse2fs (cp -a through FUSE), on identical fresh images; and
# making the image with its contents in one command: `uext mkfs -d DIR`
# and `uext mkfs -d ARCHIVE.tar` against `mke2fs -d DIR`. Two workloads:
#   small  20,000 files of 4 KiB (random data) in 200 directories
#   tree   a source tree: a tarball (default: /usr/include tarred up)
#          extracted on the host first
# One run each; prints wall seconds, peak RSS, e2fsck -fn's verdict, a
# diff -r of the result against the source, and the ratios.
#
#   sudo bench/write_bench.sh                  # uses build/uext
#   sudo UEXT=/path/to/uext bench/write_bench.sh
#
# Builds nothing. Needs root (loop mounts, drop_caches, fuse2fs as root).
# Environment:
#   UEXT          the uext binary (default: build/uext under the repository)
#   BENCH_DIR     where the sparse images go (default: build-bench/ under the
#                 repository, on the same disk as the tree)
#   BENCH_STAGE   where the host source trees are generated (default: a
#                 directory in /dev/shm, so reading them costs no disk I/O)
#   BENCH_TARBALL tarball for the "tree" workload (default: /usr/include,
#                 tarred up first)
#   BENCH_IMAGE   image size for mke2fs (default 2G)
#   BENCH_ONLY    "small" or "tree" to run one workload
#
# See bench/README.md for what is measured and the figures from our machine.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
uext=${UEXT:-$root/build/uext}
bench_dir=${BENCH_DIR:-$root/build-bench}
img_size=${BENCH_IMAGE:-2G}
only=${BENCH_ONLY:-}
PATH=$PATH:/sbin:/usr/sbin

die() { echo "write_bench.sh: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  echo "write_bench.sh: needs root: the kernel and fuse2fs rows mount the image" >&2
  echo "(loop device, FUSE) and every row drops the page cache first. Run it with sudo." >&2
  exit 2
fi
[ -x "$uext" ] || die "no uext binary at $uext (build it, or set UEXT=path)"
for tool in mke2fs e2fsck fuse2fs fusermount mount umount mountpoint tar diff /usr/bin/time; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run scripts/install-deps.sh)"
done
[ -e /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse)"

mkdir -p "$bench_dir"
work=$(mktemp -d "$bench_dir/write_bench.XXXXXX")
stage=${BENCH_STAGE:-}
if [ -z "$stage" ]; then
  if [ -w /dev/shm ]; then stage=$(mktemp -d /dev/shm/uext-write-bench.XXXXXX); else stage=$work/stage; fi
fi
mkdir -p "$stage"
img=$work/ext4.img
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then fusermount -u "$mnt" 2>/dev/null || umount "$mnt" || true; fi
  rm -rf "$work"
  [ -n "${BENCH_STAGE:-}" ] || rm -rf "$stage"
}
trap cleanup EXIT

# ---------------------------------------------------------------- sources

echo "== sources in $stage"
if [ -z "$only" ] || [ "$only" = small ]; then
  small=$stage/small
  mkdir -p "$small"
  for d in $(seq -w 0 199); do
    mkdir "$small/d$d"
    # 100 files of 4 KiB each, cut from one stream of random bytes.
    head -c $((100 * 4096)) /dev/urandom | split -b 4096 -d -a 3 - "$small/d$d/f"
  done
  echo "small: $(find "$small" -type f | wc -l) files in $(find "$small" -mindepth 1 -type d | wc -l) directories, $(du -sm "$small" | cut -f1) MiB"
fi
if [ -z "$only" ] || [ "$only" = tree ]; then
  tarball=${BENCH_TARBALL:-}
  if [ -z "$tarball" ]; then
    tarball=$stage/usr-include.tar
    tar -C /usr -cf "$tarball" include
  fi
  tree=$stage/tree
  mkdir -p "$tree"
  tar -C "$tree" -xf "$tarball"
  echo "tree: $(basename "$tarball") extracted: $(find "$tree" | wc -l) entries, $(du -sm "$tree" | cut -f1) MiB"
fi

# ---------------------------------------------------------------- rows

fresh_image() {
  rm -f "$img"
  truncate -s "$img_size" "$img"
  mke2fs -q -F -t ext4 "$img"
  sync
  echo 3 > /proc/sys/vm/drop_caches
}

# Sets $secs, $rss_mib (from /usr/bin/time output in $1) .
read_time() {
  read -r secs rss_kib < "$1"
  rss_mib=$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')
}

# e2fsck -fn, then the result against the source through a read-only mount.
check_image() {
  local src=$1
  if e2fsck -fn "$img" > "$work/fsck.log" 2>&1; then fsck=clean; else fsck="NOT-CLEAN"; cat "$work/fsck.log" >&2; fi
  mount -o ro,loop "$img" "$mnt"
  if diff -r --no-dereference -q "$src" "$mnt/dst" > "$work/diff.log" 2>&1; then same=same; else same=DIFFERENT; head "$work/diff.log" >&2; fi
  umount "$mnt"
}

results=()
row() {  # workload contender secs rss fsck same
  results+=("$(printf '%-8s %-9s %9s %9s   %-10s %-9s' "$@")")
  printf '   %-8s %-9s %9ss %9s MiB  %s, %s\n' "$@"
}

run_kernel() {
  local name=$1 src=$2
  fresh_image
  mount -o loop "$img" "$mnt"
  # Unmounting is timed too: uext's time includes its close, which leaves
  # the image checkpointed and clean.
  /usr/bin/time -f '%e %M' -o "$work/time" sh -c 'cp -a "$1" "$2/dst" && sync && umount "$2"' sh "$src" "$mnt"
  read_time "$work/time"
  check_image "$src"
  row "$name" kernel "$secs" "$rss_mib" "$fsck" "$same"
  k_secs=$secs
}

run_fuse2fs() {
  local name=$1 src=$2
  fresh_image
  # The daemon runs under time(1) too, so its peak RSS is the one reported.
  /usr/bin/time -f '%e %M' -o "$work/fuse-time" fuse2fs -f "$img" "$mnt" -o fakeroot > "$work/fuse.log" 2>&1 &
  local daemon=$!
  for _ in $(seq 100); do mountpoint -q "$mnt" && break; sleep 0.1; done
  mountpoint -q "$mnt" || { cat "$work/fuse.log" >&2; die "fuse2fs did not mount"; }
  /usr/bin/time -f '%e %M' -o "$work/time" sh -c 'cp -a "$1" "$2/dst" && sync && fusermount -u "$2"' sh "$src" "$mnt"
  wait "$daemon" || true
  read_time "$work/time"
  local cp_secs=$secs
  read_time "$work/fuse-time"
  secs=$cp_secs
  check_image "$src"
  row "$name" fuse2fs "$secs" "$rss_mib" "$fsck" "$same"
  f_secs=$secs
}

# mkfs -d: the image made and filled in one command. The source goes in
# as /dst (a directory of hard links to it, made once), so check_image
# compares the same path as for the rows above.
run_mkfs() {
  local name=$1 src=$2 contender=$3
  local wrap=$stage/$name-wrap
  if [ ! -d "$wrap" ]; then
    mkdir -p "$wrap"
    cp -al "$src" "$wrap/dst"
    tar -C "$wrap" -cf "$stage/$name.tar" .
  fi
  rm -f "$img"
  truncate -s "$img_size" "$img"
  sync
  echo 3 > /proc/sys/vm/drop_caches
  case $contender in
    mke2fs-d) /usr/bin/time -f '%e %M' -o "$work/time" mke2fs -q -F -t ext4 -d "$wrap" "$img" ;;
    uext-d) /usr/bin/time -f '%e %M' -o "$work/time" "$uext" mkfs -q -F -d "$wrap" "$img" ;;
    uext-tar) /usr/bin/time -f '%e %M' -o "$work/time" "$uext" mkfs -q -F -d "$stage/$name.tar" "$img" ;;
  esac
  read_time "$work/time"
  check_image "$src"
  row "$name" "$contender" "$secs" "$rss_mib" "$fsck" "$same"
}

run_uext() {
  local name=$1 src=$2
  fresh_image
  /usr/bin/time -f '%e %M' -o "$work/time" "$uext" put "$img" "$src" /dst
  read_time "$work/time"
  check_image "$src"
  row "$name" uext "$secs" "$rss_mib" "$fsck" "$same"
  u_secs=$secs
}

ratios=()
bench() {
  local name=$1 src=$2
  echo "== $name: $img_size image, mke2fs -t ext4 defaults, fresh for each row"
  run_kernel "$name" "$src"
  run_fuse2fs "$name" "$src"
  run_uext "$name" "$src"
  run_mkfs "$name" "$src" mke2fs-d
  local m_secs=$secs
  run_mkfs "$name" "$src" uext-d
  local d_secs=$secs
  run_mkfs "$name" "$src" uext-tar
  ratios+=("$(awk -v u="$u_secs" -v k="$k_secs" -v f="$f_secs" -v n="$name" -v m="$m_secs" -v d="$d_secs" -v t="$secs" 'BEGIN {
    printf "%-8s uext/kernel %.2f   uext/fuse2fs %.2f   mkfs -d: uext/mke2fs %.2f, from the tar %.2f", n,
      (k > 0 ? u / k : 0), (f > 0 ? u / f : 0), (m > 0 ? d / m : 0), (m > 0 ? t / m : 0) }')")
}

[ -n "${small:-}" ] && bench small "$small"
[ -n "${tree:-}" ] && bench tree "$tree"

echo
echo "workload contender   seconds   RSS MiB   e2fsck     vs source"
printf '%s\n' "${results[@]}"
echo
echo "time ratios (uext's seconds / the other's; below 1: uext is faster)"
printf '%s\n' "${ratios[@]}"
echo
echo "RSS: kernel = cp's peak (the kernel's own memory is not counted);"
echo "fuse2fs = the daemon's peak; uext = the uext process's peak; mke2fs-d, uext-d, uext-tar:"
echo "the image made and filled by one mke2fs -d / uext mkfs -d DIR / uext mkfs -d ARCHIVE.tar."
