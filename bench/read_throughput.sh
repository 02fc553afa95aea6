#!/usr/bin/env bash
# Sequential read throughput of one 1 GiB file: uext against the kernel's
# ext4 driver (loop mount) and debugfs, cold and warm page cache.
#
#   sudo bench/read_throughput.sh            # uses build/uext
#   sudo UEXT=/path/to/uext bench/read_throughput.sh
#
# Builds nothing. Needs root: cold runs drop the page cache
# (/proc/sys/vm/drop_caches) and the kernel runs loop-mount the image.
# Environment:
#   UEXT           the uext binary (default: build/uext under the repository)
#   BENCH_DIR      where the ~1 GiB sparse image goes (default: build-bench/
#                  under the repository, so on the same disk as the tree)
#   BENCH_RUNS     runs per measurement, the median is reported (default 3)
#   BENCH_SIZE_MIB size of the test file (default 1024)
#
# See bench/README.md for what is measured and the figures from our machine.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
uext=${UEXT:-$root/build/uext}
runs=${BENCH_RUNS:-3}
size_mib=${BENCH_SIZE_MIB:-1024}
bench_dir=${BENCH_DIR:-$root/build-bench}
PATH=$PATH:/sbin:/usr/sbin

die() { echo "read_throughput.sh: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  echo "read_throughput.sh: needs root: cold-cache runs write /proc/sys/vm/drop_caches" >&2
  echo "and the kernel comparison loop-mounts the image. Run it with sudo." >&2
  exit 2
fi
[ -x "$uext" ] || die "no uext binary at $uext (build it, or set UEXT=path)"
for tool in mke2fs debugfs mount umount sha256sum /usr/bin/time; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run scripts/install-deps.sh)"
done

mkdir -p "$bench_dir"
work=$(mktemp -d "$bench_dir/read_throughput.XXXXXX")
img=$work/ext4.img
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT

bytes=$((size_mib * 1024 * 1024))
img_mib=$((size_mib + size_mib / 2))

echo "== setup: ${img_mib} MiB sparse image, mke2fs defaults (ext4), ${size_mib} MiB random file /big"
truncate -s "${img_mib}M" "$img"
mke2fs -q -F -t ext4 "$img"
mount -o loop "$img" "$mnt"
want=$(head -c "$bytes" /dev/urandom | tee "$mnt/big" | sha256sum | cut -d' ' -f1)
umount "$mnt"
sync

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# measure NAME COLD(1|0) CMD...: runs CMD (stdout to /dev/null) BENCH_RUNS
# times; prints "seconds max_rss_kib" of the median run.
measure() {
  local cold=$1
  shift
  local i tfile=$work/time.out results=()
  if [ "$cold" -eq 0 ]; then "$@" >/dev/null 2>>"$work/stderr.log"; fi  # warm the cache
  for ((i = 0; i < runs; i++)); do
    [ "$cold" -eq 1 ] && drop_caches
    local t0 t1
    t0=$(date +%s%N)
    /usr/bin/time -f '%M' -o "$tfile" "$@" >/dev/null 2>>"$work/stderr.log" || die "failed: $* (stderr: $(tail -n 3 "$work/stderr.log"))"
    t1=$(date +%s%N)
    results+=("$(((t1 - t0) / 1000)) $(tail -n 1 "$tfile")")
  done
  # median by time (odd counts: the middle one; even: the lower middle)
  printf '%s\n' "${results[@]}" | sort -n | sed -n "$(((runs + 1) / 2))p" |
    awk '{ printf "%.3f %d\n", $1 / 1e6, $2 }'
}

methods=(uext kernel debugfs)
declare -A cmd
cmd[uext]="$uext cat $img /big"
cmd[kernel]="cat $mnt/big"
cmd[debugfs]="debugfs -R 'cat /big' $img"
if "$uext" cat --help 2>&1 | grep -q -- '--direct'; then
  methods=(uext uext-direct kernel debugfs)
  cmd[uext-direct]="$uext cat --direct $img /big"
fi

run_method() {  # run_method METHOD COLD
  local m=$1 cold=$2
  case $m in
    uext) measure "$cold" "$uext" cat "$img" /big ;;
    uext-direct) measure "$cold" "$uext" cat --direct "$img" /big ;;
    kernel) measure "$cold" cat "$mnt/big" ;;
    debugfs) measure "$cold" debugfs -R "cat /big" "$img" ;;
  esac
}

echo "== content check (sha256 of /big through each reader)"
mount -o loop,ro "$img" "$mnt"
for m in "${methods[@]}"; do
  case $m in
    uext) got=$("$uext" cat "$img" /big | sha256sum | cut -d' ' -f1) ;;
    uext-direct) got=$("$uext" cat --direct "$img" /big | sha256sum | cut -d' ' -f1) ;;
    kernel) got=$(sha256sum <"$mnt/big" | cut -d' ' -f1) ;;
    debugfs) got=$(debugfs -R "cat /big" "$img" 2>/dev/null | sha256sum | cut -d' ' -f1) ;;
  esac
  if [ "$got" = "$want" ]; then
    echo "   $m: ok"
  else
    die "$m read different bytes: sha256 $got, want $want"
  fi
done

declare -A secs rss
for cold in 1 0; do
  for m in "${methods[@]}"; do
    label=$([ "$cold" -eq 1 ] && echo cold || echo warm)
    echo "== $label: $m: ${cmd[$m]} (x$runs)"
    read -r s r < <(run_method "$m" "$cold")
    secs[$m,$label]=$s
    rss[$m,$label]=$r
  done
done
umount "$mnt"

echo
echo "Sequential read of a ${size_mib} MiB file, median of $runs runs; MB/s = 10^6 bytes/s."
echo "Cold: page cache dropped before each run. Warm: after one unmeasured read."
printf '%-12s %-5s %10s %9s %12s %20s\n' reader cache MB/s seconds "max RSS MiB" "vs kernel"
for label in cold warm; do
  k=${secs[kernel,$label]}
  for m in "${methods[@]}"; do
    s=${secs[$m,$label]}
    awk -v m="$m" -v c="$label" -v b="$bytes" -v s="$s" -v r="${rss[$m,$label]}" -v k="$k" 'BEGIN {
      printf "%-12s %-5s %10.0f %9.3f %12.1f %20s\n", m, c, b / s / 1e6, s, r / 1024,
        (m == "kernel" ? "1.00" : sprintf("%s/kernel %.2f", m, k / s))
    }'
  done
done
echo
echo "Machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r), $(date -u +%Y-%m-%d)"
