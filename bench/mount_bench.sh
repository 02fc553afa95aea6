#!/usr/bin/env bash
# Mounted-filesystem benchmark: the same workloads through the kernel's ext4
# driver (loop mount), fuse2fs and `uext mount`, each on a fresh, identical
# ext4 image, with e2fsck -fn after every unmount:
#
#   seq        one big file: write + fsync (dd bs=1M conv=fsync from a staged
#              random file in /dev/shm), then unmount, drop caches, remount,
#              cold read (dd to /dev/null; three times, the median kept) and
#              compare with the source
#   interleave 4 writer processes appending 64 KiB writes concurrently, each
#              to its own file, fsync; after unmount the extents of the four
#              files are counted with debugfs
#   small      20,000 files of 4 KiB in 200 directories, created by one small
#              C program (the same for all three), unmount included in the
#              time; then drop caches, remount, `ls -lR > /dev/null`
#   fio        fio random 4 KiB writes, psync and mmap, --end_fsync=1
#
# uext runs twice by default: `uext` with the default mount options (every
# write() is a WRITE request, ENOSPC is synchronous) and `uext-wb` with
# `-o writeback_cache` (the kernel buffers writes in its page cache and
# sends them at writeback, so ENOSPC can surface only at fsync or close).
# The goals are judged for each; the README's Mounting section has the
# trade-off.
#
# A further contender, floor (not in the default set), is bench/fuse_floor.c
# (built here with cc against libfuse3): a FUSE daemon that answers from a
# table in memory and stores nothing (a write keeps only the new size, reads
# return zeros). It runs the small files and fio; its times are what FUSE's
# round trips alone cost on this machine, the least any FUSE filesystem
# (uext, fuse2fs) can take with the same mount options.
#
#   sudo bench/mount_bench.sh                       # uses build/uext
#   sudo UEXT=/path/to/uext bench/mount_bench.sh
#   sudo UEXT_BENCH_SEQ_MIB=16 UEXT_BENCH_IL_MIB=4 UEXT_BENCH_FILES=500 \
#        UEXT_BENCH_FIO_MIB=8 bench/mount_bench.sh  # a quick smoke run
#
# Builds nothing but its C helper and, for floor, bench/fuse_floor.c (both
# with cc). Needs root (loop mounts, fuse2fs and uext with allow_other,
# drop_caches).
# Environment:
#   UEXT                 the uext binary (default: build/uext)
#   BENCH_DIR            where the sparse images go (default: build-bench/)
#   BENCH_STAGE          where the source file of the seq workload is staged
#                        (default: a directory in /dev/shm)
#   BENCH_IMAGE          image size for mke2fs (default 3G)
#   UEXT_BENCH_SEQ_MIB   size of the sequential file (default 1024)
#   UEXT_BENCH_IL_MIB    size of each of the 4 interleaved files (default 256)
#   UEXT_BENCH_FILES     number of small files (default 20000)
#   UEXT_BENCH_DIRS      directories they are spread over (default 200)
#   UEXT_BENCH_FIO_MIB   fio file size (default 256)
#   UEXT_BENCH_ONLY      workloads to run, e.g. "seq small" (default: all)
#   UEXT_BENCH_CONTENDERS  e.g. "kernel uext" (default "kernel fuse2fs uext
#                        uext-wb"; add floor for the in-memory FUSE daemon)
#   UEXT_MOUNT_OPTS      extra -o options for uext mount (e.g. writeback_cache)
#   FUSE2FS_OPTS         -o options for fuse2fs (default rw)
#   UEXT_BENCH_TIMEOUT   seconds one workload command may take (default 1800)
#   UEXT_BENCH_LATENCY   1: during the small files' create on FUSE contenders,
#                        record the kernel's fuse tracepoints with perf and
#                        print each request type's count and latency
#
# See bench/README.md for what is measured and the figures from our machine.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
uext=${UEXT:-$root/build/uext}
bench_dir=${BENCH_DIR:-$root/build-bench}
img_size=${BENCH_IMAGE:-3G}
seq_mib=${UEXT_BENCH_SEQ_MIB:-1024}
il_mib=${UEXT_BENCH_IL_MIB:-256}
nfiles=${UEXT_BENCH_FILES:-20000}
ndirs=${UEXT_BENCH_DIRS:-200}
fio_mib=${UEXT_BENCH_FIO_MIB:-256}
only=${UEXT_BENCH_ONLY:-seq interleave small fio}
contenders=${UEXT_BENCH_CONTENDERS:-kernel fuse2fs uext uext-wb}
uext_opts=${UEXT_MOUNT_OPTS:-}
fuse2fs_opts=${FUSE2FS_OPTS:-rw}
tmo=${UEXT_BENCH_TIMEOUT:-1800}
latency=${UEXT_BENCH_LATENCY:-}
PATH=$PATH:/sbin:/usr/sbin

me=mount_bench.sh
die() { echo "$me: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  echo "$me: needs root: the kernel rows loop-mount the image, fuse2fs and uext" >&2
  echo "mount it for every user, and cold reads write /proc/sys/vm/drop_caches." >&2
  echo "Run it with sudo." >&2
  exit 2
fi
[ -x "$uext" ] || die "no uext binary at $uext (build it, or set UEXT=path)"
for tool in mke2fs e2fsck debugfs fuse2fs fusermount3 mount umount mountpoint flock \
            timeout dd cmp cc; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run scripts/install-deps.sh)"
done
case " $only " in
  *" fio "*) command -v fio >/dev/null 2>&1 || die "fio not found (scripts/install-deps.sh installs it)";;
esac
[ -e /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse)"
if [ -n "$latency" ]; then
  command -v perf >/dev/null 2>&1 || die "UEXT_BENCH_LATENCY needs perf (scripts/install-deps.sh installs it)"
  # A fresh boot may not have tracefs mounted yet; perf needs it for tracepoints.
  [ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
  [ -d /sys/kernel/tracing/events/fuse/fuse_request_send ] ||
    [ -d /sys/kernel/debug/tracing/events/fuse/fuse_request_send ] ||
    die "UEXT_BENCH_LATENCY needs the kernel's fuse:fuse_request_send/end tracepoints"
fi
[ $((nfiles % ndirs)) -eq 0 ] || die "UEXT_BENCH_FILES must be a multiple of UEXT_BENCH_DIRS"

mkdir -p "$bench_dir"
work=$(mktemp -d "$bench_dir/mount_bench.XXXXXX")
stage=${BENCH_STAGE:-}
if [ -z "$stage" ]; then
  if [ -w /dev/shm ]; then stage=$(mktemp -d /dev/shm/uext-mount-bench.XXXXXX); else stage=$work/stage; fi
fi
mkdir -p "$stage"
img=$work/ext4.img
mnt=$work/mnt
mkdir -p "$mnt"
fuse_pid=
cleanup() {
  if [ -n "${lat_pid:-}" ]; then kill -INT "$lat_pid" 2>/dev/null; wait "$lat_pid" 2>/dev/null; fi
  if mountpoint -q "$mnt" 2>/dev/null; then
    fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null || umount -l "$mnt" || true
  fi
  [ -n "$fuse_pid" ] && wait "$fuse_pid" 2>/dev/null
  [ -e "$img" ] && flock -w 60 "$img" true
  rm -rf "$work"
  [ -n "${BENCH_STAGE:-}" ] || rm -rf "$stage"
}
trap cleanup EXIT

# ---------------------------------------------------------------- helper

# One C program for every contender: "files DIR NDIRS NFILES" creates the
# small files, "append DIR NWRITERS MIB" forks the interleaved writers.
cat > "$work/helper.c" <<'EOF'
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void fill(unsigned char *buf, size_t n, unsigned long long seed) {
  unsigned long long x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i += 8) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    memcpy(buf + i, &x, 8);
  }
}

static int write_all(int fd, const unsigned char *buf, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, buf, n);
    if (w < 0) { if (errno == EINTR) continue; return -1; }
    buf += w; n -= (size_t)w;
  }
  return 0;
}

static int files(const char *dir, long ndirs, long nfiles) {
  unsigned char buf[4096];
  char path[4096];
  long per = nfiles / ndirs;
  for (long d = 0; d < ndirs; d++) {
    snprintf(path, sizeof path, "%s/d%03ld", dir, d);
    if (mkdir(path, 0755) != 0) { perror(path); return 1; }
    for (long f = 0; f < per; f++) {
      snprintf(path, sizeof path, "%s/d%03ld/f%05ld", dir, d, f);
      int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
      if (fd < 0) { perror(path); return 1; }
      fill(buf, sizeof buf, (unsigned long long)(d * per + f));
      if (write_all(fd, buf, sizeof buf) != 0 || close(fd) != 0) { perror(path); return 1; }
    }
  }
  return 0;
}

static int append(const char *dir, long nwriters, long mib) {
  for (long i = 0; i < nwriters; i++) {
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) {
      static unsigned char buf[65536];
      char path[4096];
      snprintf(path, sizeof path, "%s/f%ld", dir, i);
      int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd < 0) { perror(path); _exit(1); }
      for (long c = 0; c < mib * 16; c++) {
        fill(buf, 64, (unsigned long long)(i << 32 | c));  /* vary each chunk */
        if (write_all(fd, buf, sizeof buf) != 0) { perror(path); _exit(1); }
      }
      if (fsync(fd) != 0 || close(fd) != 0) { perror(path); _exit(1); }
      _exit(0);
    }
  }
  int rc = 0, st;
  while (wait(&st) > 0)
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) rc = 1;
  return rc;
}

int main(int argc, char **argv) {
  if (argc == 5 && strcmp(argv[1], "files") == 0)
    return files(argv[2], atol(argv[3]), atol(argv[4]));
  if (argc == 5 && strcmp(argv[1], "append") == 0)
    return append(argv[2], atol(argv[3]), atol(argv[4]));
  fprintf(stderr, "usage: helper files DIR NDIRS NFILES | append DIR NWRITERS MIB\n");
  return 2;
}
EOF
cc -O2 -Wall -o "$work/helper" "$work/helper.c" || die "cannot compile the C helper"
helper=$work/helper
case " $contenders " in
  *" floor "*)
    command -v pkg-config >/dev/null 2>&1 && pkg-config --exists fuse3 ||
      die "floor needs libfuse3's headers and pkg-config (scripts/install-deps.sh)"
    # shellcheck disable=SC2046  # pkg-config's flags are words
    cc -O2 -Wall -o "$work/fuse_floor" "$root/bench/fuse_floor.c" $(pkg-config --cflags --libs fuse3) ||
      die "cannot compile bench/fuse_floor.c" ;;
esac

# ---------------------------------------------------------------- mounting

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

fresh_image() {
  rm -f "$img"
  truncate -s "$img_size" "$img"
  mke2fs -q -F -t ext4 "$img"
  drop_caches
}

wait_mounted() {
  local _
  for _ in $(seq 200); do mountpoint -q "$mnt" && return 0; sleep 0.05; done
  return 1
}

# do_mount CONTENDER
do_mount() {
  case $1 in
    kernel) mount -o loop "$img" "$mnt" ;;
    fuse2fs)
      # Foreground in the background, so the daemon's exit can be waited for.
      fuse2fs -f "$img" "$mnt" -o "$fuse2fs_opts" > "$work/fuse2fs.log" 2>&1 &
      fuse_pid=$!
      wait_mounted || { cat "$work/fuse2fs.log" >&2; die "fuse2fs did not mount"; } ;;
    uext|uext-wb)
      local opts=$uext_opts
      [ "$1" = uext-wb ] && opts=writeback_cache${uext_opts:+,$uext_opts}
      "$uext" mount "$img" "$mnt" ${opts:+-o "$opts"} > "$work/uext.log" 2>&1 ||
        { cat "$work/uext.log" >&2; die "$1 mount failed"; }
      wait_mounted || die "$1 did not mount" ;;
    floor)
      "$work/fuse_floor" -f "$mnt" -o allow_other > "$work/floor.log" 2>&1 &
      fuse_pid=$!
      wait_mounted || { cat "$work/floor.log" >&2; die "fuse_floor did not mount"; } ;;
  esac
}

# do_umount CONTENDER: returns when the image is closed and consistent.
do_umount() {
  case $1 in
    kernel) umount "$mnt" ;;
    fuse2fs|floor)
      # A program's last close can still be on its way (EBUSY): try again.
      local _
      for _ in 1 2 3 4 5 6 7 8 9 10; do fusermount3 -u "$mnt" 2> /dev/null && break; sleep 0.2; done
      mountpoint -q "$mnt" && { fusermount3 -u "$mnt"; die "$1: cannot unmount $mnt"; }
      wait "$fuse_pid" || echo "$me: $1 exited with status $?" >&2
      fuse_pid= ;;
    uext|uext-wb)
      # Returns once the daemon has written everything back and closed the image.
      timeout 300 "$uext" umount "$mnt" || die "uext umount $mnt failed or took over 300 s" ;;
  esac
}

fsck_image() {  # prints clean or NOT-CLEAN; keeps the log
  if e2fsck -fn "$img" > "$work/fsck.log" 2>&1; then
    echo clean
  else
    echo "NOT-CLEAN"
    cp "$work/fsck.log" "$bench_dir/mount_bench-fsck-$(date +%H%M%S)-$$.log"
    sed 's/^/    e2fsck: /' "$work/fsck.log" | head -n 20 >&2
  fi
}

# timed CMD...: runs CMD (under timeout); sets $secs (or FAIL/TIMEOUT).
# With umount_after=CONTENDER in its environment, the unmount is timed too.
timed() {
  local t0 t1 rc=0
  t0=$EPOCHREALTIME
  timeout "$tmo" "$@" > "$work/cmd.out" 2> "$work/cmd.err" || rc=$?
  [ -n "${umount_after:-}" ] && do_umount "$umount_after"
  t1=$EPOCHREALTIME
  if [ "$rc" -eq 0 ]; then
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  else
    if [ "$rc" -eq 124 ]; then secs=TIMEOUT; else secs=FAIL; fi
    echo "$me: [$rc] $*" >&2
    sed 's/^/    /' "$work/cmd.err" | tail -n 5 >&2
  fi
}

# ---------------------------------------------------------------- results

# Per row: val[ROW,CONTENDER], fsck[ROW,CONTENDER], unit[ROW], rows in order.
declare -A val fsck unit
rows=()
record() {  # ROW UNIT CONTENDER VALUE FSCK
  local r=$1
  if [ -z "${unit[$r]:-}" ]; then unit[$r]=$2; rows+=("$r"); fi
  val[$r,$3]=$4
  fsck[$r,$3]=$5
  printf '   %-28s %-8s %12s %s  e2fsck %s\n' "$r" "$3" "$4" "$2" "$5"
}

# ---------------------------------------------------------------- workloads

# median A B C: the middle one of three numbers (or the first word that is
# not a number: FAIL, TIMEOUT, WRONG).
median() {
  local x
  for x in "$@"; do case $x in *[!0-9.]*|"") echo "$x"; return ;; esac; done
  printf '%s\n' "$@" | sort -g | sed -n 2p
}

wl_seq() {
  local c=$1 s1 f1 s2 f2 i reads=()
  fresh_image
  do_mount "$c"
  timed dd if="$stage/seq" of="$mnt/big" bs=1M conv=fsync status=none
  s1=$secs
  do_umount "$c"
  f1=$(fsck_image)
  # The cold read three times, each after drop_caches and a fresh mount,
  # and the median kept: how much of the image the host still caches
  # moved single reads by 2x and more on our VMs.
  for i in 1 2 3; do
    drop_caches
    do_mount "$c"
    timed dd if="$mnt/big" of=/dev/null bs=1M status=none
    reads+=("$secs")
    if [ "$i" = 1 ] && ! cmp -s "$stage/seq" "$mnt/big"; then
      echo "$me: $c: $mnt/big differs from what was written" >&2
      reads[0]=WRONG
    fi
    do_umount "$c"
  done
  s2=$(median "${reads[@]}")
  echo "   cold reads on $c: ${reads[*]} s (median $s2)"
  f2=$(fsck_image)
  record "seq write ${seq_mib} MiB+fsync" s "$c" "$s1" "$f1"
  record "cold read ${seq_mib} MiB" s "$c" "$s2" "$f2"
}

count_extents() {  # total leaf extents of $mnt/il/f0..3, from debugfs on $img
  local i n total=0
  for i in 0 1 2 3; do
    n=$(debugfs -R "ex /il/f$i" "$img" 2>/dev/null |
        awk 'NR > 1 && $1 ~ /\/$/ { l = $1; sub("/", "", l); if (l + 0 == $2 + 0) n++ } END { print n + 0 }')
    total=$((total + n))
  done
  echo "$total"
}

wl_interleave() {
  local c=$1 s f ext
  fresh_image
  do_mount "$c"
  mkdir "$mnt/il"
  timed "$helper" append "$mnt/il" 4 "$il_mib"
  s=$secs
  do_umount "$c"
  f=$(fsck_image)
  ext=$(count_extents)
  record "4 writers 4x${il_mib} MiB" s "$c" "$s" "$f"
  record "  extents (debugfs, total)" extents "$c" "$ext" "$f"
}

wl_small() {
  local c=$1 s1 f1 s2 f2
  if [ "$c" = floor ]; then wl_small_floor; return; fi
  fresh_image
  do_mount "$c"
  mkdir "$mnt/small"
  # The unmount is timed too: until it returns (and for uext, until the
  # daemon has closed the image) the files need not be on the image.
  [ "$c" = kernel ] || latency_start
  umount_after=$c timed "$helper" files "$mnt/small" "$ndirs" "$nfiles"
  s1=$secs
  [ "$c" = kernel ] || latency_stop "$c"
  f1=$(fsck_image)
  drop_caches
  do_mount "$c"
  # shellcheck disable=SC2016  # $1 is expanded by the inner sh
  timed sh -c 'ls -lR "$1" > /dev/null' sh "$mnt"
  s2=$secs
  do_umount "$c"
  f2=$(fsck_image)
  record "create ${nfiles} x 4 KiB+umount" s "$c" "$s1" "$f1"
  record "ls -lR cold ($nfiles files)" s "$c" "$s2" "$f2"
}

# The floor forgets everything at unmount: the create is timed as for the
# others (unmount included), then a second mount creates the same tree
# untimed, and ls -lR runs after drop_caches without an unmount between.
wl_small_floor() {
  local s1 s2
  do_mount floor
  mkdir "$mnt/small"
  latency_start
  umount_after=floor timed "$helper" files "$mnt/small" "$ndirs" "$nfiles"
  s1=$secs
  latency_stop floor
  do_mount floor
  mkdir "$mnt/small"
  "$helper" files "$mnt/small" "$ndirs" "$nfiles" || die "floor: the untimed create failed"
  drop_caches
  # shellcheck disable=SC2016  # $1 is expanded by the inner sh
  timed sh -c 'ls -lR "$1" > /dev/null' sh "$mnt"
  s2=$secs
  do_umount floor
  record "create ${nfiles} x 4 KiB+umount" s floor "$s1" -
  record "ls -lR cold ($nfiles files)" s floor "$s2" -
}

# latency_start / latency_stop CONTENDER: with UEXT_BENCH_LATENCY, record
# every FUSE request's send and end in between (system-wide: nothing else
# should use FUSE meanwhile) and print, per request type, how many, the
# median and 90th percentile latency, and the sum of all latencies.
lat_pid=
latency_start() {
  [ -n "$latency" ] || return 0
  perf record -q -e fuse:fuse_request_send,fuse:fuse_request_end -a -o "$work/lat.data" > /dev/null 2>&1 &
  lat_pid=$!
  sleep 1  # perf needs a moment before it records
}
latency_stop() {
  [ -n "$lat_pid" ] || return 0
  kill -INT "$lat_pid"; wait "$lat_pid" || true
  lat_pid=
  echo "   FUSE requests during the create on $1 (send to end):"
  perf script -i "$work/lat.data" -F time,event,trace 2>/dev/null | python3 -c '
import collections, re, sys
sent, lat = {}, collections.defaultdict(list)
pat = re.compile(r"\s*([\d.]+):\s+fuse:fuse_request_(send|end):\s+connection \d+ req (\d+)(?: opcode \d+ \((\w+)\))?")
for line in sys.stdin:
    m = pat.match(line)
    if not m:
        continue
    t, kind, req = float(m.group(1)), m.group(2), m.group(3)
    if kind == "send":
        sent[req] = (t, m.group(4))
    elif req in sent:
        t0, op = sent.pop(req)
        lat[op].append((t - t0) * 1e6)
total = 0.0
for op, v in sorted(lat.items(), key=lambda kv: -sum(kv[1])):
    v.sort()
    total += sum(v)
    print("     %-16s %7d  median %6.1f us  p90 %6.1f us  sum %7.3f s" % (op, len(v), v[len(v) // 2], v[int(len(v) * 0.9)], sum(v) / 1e6))
print("     all requests: sum %.3f s" % (total / 1e6))
'
  rm -f "$work/lat.data"
}

fio_iops() {  # from fio's JSON output
  python3 -c 'import json,sys; print("%.0f" % json.load(open(sys.argv[1]))["jobs"][0]["write"]["iops"])' \
    "$work/fio.json" 2>/dev/null || echo "?"
}

wl_fio() {
  local c=$1 engine s f iops
  for engine in psync mmap; do
    [ "$c" = floor ] || fresh_image
    do_mount "$c"
    timed fio --name=r --directory="$mnt" --rw=randwrite --bs=4k --size="${fio_mib}M" \
      --ioengine="$engine" --direct=0 --end_fsync=1 --randrepeat=1 \
      --output-format=json --output="$work/fio.json"
    s=$secs
    if [ "$s" = FAIL ] || [ "$s" = TIMEOUT ]; then iops=$s; else iops=$(fio_iops); fi
    do_umount "$c"
    if [ "$c" = floor ]; then f=-; else f=$(fsck_image); fi
    record "fio randwrite 4k $engine" s "$c" "$s" "$f"
    record "  fio $engine IOPS" IOPS "$c" "$iops" "$f"
  done
}

# ---------------------------------------------------------------- run

echo "== $me: image $img_size (mke2fs -t ext4 defaults), fresh for every contender and workload"
echo "   uext: $uext ${uext_opts:+-o $uext_opts} (uext-wb: -o writeback_cache${uext_opts:+,$uext_opts}); fuse2fs -o $fuse2fs_opts; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
case " $only " in
  *" seq "*)
    echo "== staging ${seq_mib} MiB of random data in $stage"
    head -c $((seq_mib * 1024 * 1024)) /dev/urandom > "$stage/seq" ;;
esac

start=$EPOCHREALTIME
for w in $only; do
  case $w in seq|interleave|small|fio) ;; *) die "unknown workload $w (seq interleave small fio)";; esac
  echo "== $w"
  for c in $contenders; do
    case $c in kernel|fuse2fs|uext|uext-wb|floor) ;; *) die "unknown contender $c";; esac
    # The floor stores nothing: the big files' rows would time nothing but
    # the kernel's page cache and FUSE's WRITEs of it.
    [ "$c" = floor ] && { [ "$w" = seq ] || [ "$w" = interleave ]; } && continue
    "wl_$w" "$c"
  done
done
total=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')

# ratio ROW OTHER [WHO]: >1 means WHO (default uext) is better (faster,
# more IOPS, fewer extents)
ratio() {
  local u=${val[$1,${3:-uext}]:-} o=${val[$1,$2]:-}
  awk -v u="$u" -v o="$o" -v unit="${unit[$1]}" 'BEGIN {
    if (u !~ /^[0-9.]+$/ || o !~ /^[0-9.]+$/ || u + 0 == 0 || o + 0 == 0) { print "-"; exit }
    if (unit == "IOPS") printf "%.2f", u / o; else printf "%.2f", o / u }'
}

echo
echo "Results ($(date -u '+%Y-%m-%d %H:%M UTC'), ${total} s in all). Ratios: >1 means uext is better"
echo "(for seconds: the other's time / uext's; for IOPS: uext's / the other's; for extents: the other's / uext's)."
echo
printf '%-32s %-7s %9s %9s %9s %9s %12s %13s %11s %9s %13s  %s\n' workload unit kernel fuse2fs floor uext \
  uext/kernel uext/fuse2fs uext/floor uext-wb wb/fuse2fs "e2fsck kernel/fuse2fs/uext/uext-wb"
for r in "${rows[@]}"; do
  printf '%-32s %-7s %9s %9s %9s %9s %12s %13s %11s %9s %13s  %s/%s/%s/%s\n' "$r" "${unit[$r]}" \
    "${val[$r,kernel]:--}" "${val[$r,fuse2fs]:--}" "${val[$r,floor]:--}" "${val[$r,uext]:--}" \
    "$(ratio "$r" kernel)" "$(ratio "$r" fuse2fs)" "$(ratio "$r" floor)" \
    "${val[$r,uext-wb]:--}" "$(ratio "$r" fuse2fs uext-wb)" \
    "${fsck[$r,kernel]:--}" "${fsck[$r,fuse2fs]:--}" "${fsck[$r,uext]:--}" "${fsck[$r,uext-wb]:--}"
done
# What the floor allows: fuse2fs's time over the floor's is the most any
# FUSE filesystem could reach against fuse2fs on that row.
for r in "${rows[@]}"; do
  f=${val[$r,floor]:-} o=${val[$r,fuse2fs]:-}
  case $f$o in *[!0-9.]*|"") continue ;; esac
  awk -v f="$f" -v o="$o" -v n="$r" -v unit="${unit[$r]}" 'BEGIN { if (f + 0 > 0 && o + 0 > 0)
    printf "   %-40s the floor is %.2fx fuse2fs: the most a FUSE filesystem can reach here\n", n,
      (unit == "IOPS" ? f / o : o / f) }'
done

# The issue's goals.
echo
goal() {  # ROW OTHER MIN [WHO]: WHO (default uext) against OTHER
  local r who=${4:-uext}
  r=$(ratio "$1" "$2" "$who")
  if [ "$r" = - ]; then
    # uext-wb is optional: say nothing when it did not run.
    [ "$who" = uext ] && printf '   %-40s %-8s vs %-7s >= %-4s  not measured\n' "$1" "$who" "$2" "$3"
    return
  fi
  awk -v r="$r" -v m="$3" -v n="$1" -v o="$2" -v w="$who" 'BEGIN {
    printf "   %-40s %-8s vs %-7s >= %-4s  %5.2f  %s\n", n, w, o, m, r, (r + 0 >= m + 0 ? "met" : "NOT MET") }'
}
echo "Goals:"
for r in "${rows[@]}"; do
  case $r in
    "seq write"*|"cold read"*) goal "$r" kernel 0.8; goal "$r" kernel 0.8 uext-wb ;;
    create*|"ls -lR"*|"fio randwrite"*) goal "$r" fuse2fs 5; goal "$r" fuse2fs 5 uext-wb ;;
  esac
done
for c in $contenders; do
  [ "$c" = floor ] && continue  # no image to check
  bad=()
  for r in "${rows[@]}"; do
    case ${fsck[$r,$c]:-clean} in clean) ;; *) bad+=("$r") ;; esac
  done
  if [ "${#bad[@]}" -eq 0 ]; then
    printf '   %-40s e2fsck -fn clean after every row: yes\n' "$c"
  else
    printf '   %-40s e2fsck -fn NOT CLEAN after: %s\n' "$c" "$(printf '%s; ' "${bad[@]}")"
  fi
done
