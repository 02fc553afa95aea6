#!/usr/bin/env bash
# Builds the libFuzzer targets, makes a seed corpus with mke2fs, replays the
# saved regressions and runs every target for a while.
#
#   scripts/fuzz.sh [SECONDS]      # default 60, the time each target runs
#
# Exit status: 0 when nothing was found, 1 on any crash, leak, sanitizer
# report, timeout (-timeout=10) or out-of-memory (-rss_limit_mb=2048), with
# the reproducer's path printed. The four targets run at the same time, so
# the fuzzing itself takes SECONDS of wall time, plus the build.
#
# Needs clang 14 with libclang-rt-14-dev and e2fsprogs (scripts/install-deps.sh).
# UEXT_FUZZ_OPT sets the optimisation level (default -O1; the test command's
# short run takes -O0, which compiles in half the time and runs slower).
# Build directory: build-fuzz/ (override with UEXT_FUZZ_BUILD_DIR). The
# corpora libFuzzer grows are kept in build-fuzz/corpus/ between runs.
#
# Targets: image_fuzzer (whole images, read-only), metadata_fuzzer (patches
# to the seeds' metadata, read-only) and write_fuzzer (the same patches,
# then read-write: journal replay and a script of changes) and tar_fuzzer
# (tar archives unpacked into a fresh image, as uext put --tar; fuzz/*.cc).
#
# Reproduce a crash:
#   build-fuzz/image_fuzzer CRASH_FILE
#   UEXT_FUZZ_SEEDS=$(cat build-fuzz/seeds/list) build-fuzz/metadata_fuzzer CRASH_FILE
#   UEXT_FUZZ_SEEDS=$(cat build-fuzz/seeds/list) build-fuzz/write_fuzzer CRASH_FILE
#   build-fuzz/tar_fuzzer CRASH_FILE
# A metadata_fuzzer or write_fuzzer crash is also written out as a whole
# image (CRASH_FILE.img), which does not depend on the seeds:
#   build-fuzz/image_fuzzer CRASH_FILE.img
#   UEXT_FUZZ_WHOLE_IMAGE=1 build-fuzz/write_fuzzer CRASH_FILE.img
# Save small reproducers, gzipped, as fuzz/regressions/<what-it-hits>.img.gz
# (image_fuzzer replays them all first) or, for the write path,
# fuzz/regressions/write-<what-it-hits>.img.gz (write_fuzzer replays those).
set -euo pipefail

duration=${1:-60}
if ! [[ "$duration" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 [SECONDS]" >&2
  exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
build=${UEXT_FUZZ_BUILD_DIR:-$root/build-fuzz}
jobs=${UEXT_FUZZ_BUILD_JOBS:-2}
opt=${UEXT_FUZZ_OPT:--O1}
flags="${opt} -gline-tables-only -DNDEBUG"
targets=(image_fuzzer metadata_fuzzer write_fuzzer tar_fuzzer)

die() { echo "fuzz.sh: $*" >&2; exit 1; }

# ---- tools ------------------------------------------------------------------
for tool in clang clang++ cmake mke2fs debugfs e2fsck gzip tar; do
  command -v "$tool" >/dev/null 2>&1 || PATH=$PATH:/sbin:/usr/sbin
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run scripts/install-deps.sh)"
done
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)

# ---- build ------------------------------------------------------------------
# A build directory configured with another compiler cannot be switched to
# clang in place: start it again. One configured at another optimisation
# level is configured again (its corpora stay).
if [ -f "$build/CMakeCache.txt" ] && ! grep -q '^CMAKE_CXX_COMPILER:.*clang' "$build/CMakeCache.txt"; then
  rm -rf "$build"
fi
# Only the fuzz targets are built, so fmt comes from libfmt.so (see
# UEXT_FMT_HEADER_ONLY in CMakeLists.txt).
if [ ! -f "$build/CMakeCache.txt" ] ||
  ! grep -qxF "CMAKE_CXX_FLAGS_RELWITHDEBINFO:STRING=${flags}" "$build/CMakeCache.txt" ||
  ! grep -qxF "UEXT_FMT_HEADER_ONLY:BOOL=OFF" "$build/CMakeCache.txt"; then
  CC=clang CXX=clang++ cmake -S "$root" -B "$build" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=${flags}" \
    -DUEXT_BUILD_FUZZERS=ON -DUEXT_BUILD_TESTS=OFF -DUEXT_FMT_HEADER_ONLY=OFF \
    -DUEXT_SANITIZE=address,undefined >"$build.configure.log" 2>&1 ||
    { cat "$build.configure.log" >&2; die "cmake configure failed"; }
  mv "$build.configure.log" "$build/configure.log"
fi
cmake --build "$build" -j "$jobs" --target "${targets[@]}" || die "build failed"

# ---- seed images --------------------------------------------------------------
# Deterministic (fixed time, UUID, hash seed, contents) so that a
# metadata_fuzzer input means the same thing on every machine with the same
# e2fsprogs.
seeds=$build/seeds
rm -rf "$seeds"
mkdir -p "$seeds"
export E2FSPROGS_FAKE_TIME=1700000000
uuid=6f1c3a52-9a0e-4b7d-8c21-5d3e7f9a1b24
hash_seed=0d9b3c4e-1f2a-4b5c-8d6e-7f8091a2b3c4

# The tree every image gets (as much of it as fits).
tree=$seeds/tree
mkdir -p "$tree/dir/sub/deeper" "$tree/htree"
printf 'hello, world\n' >"$tree/hello.txt"
: >"$tree/empty"
# 14 KiB: past the 12 direct blocks of a 1 KiB-block ext2 inode (indirect block).
awk 'BEGIN { for (i = 0; i < 1400; i++) printf "line %07d\n", i }' >"$tree/indirect.txt"
# Sparse: five separated runs of data, so more extents than fit in the inode.
for i in 0 1 2 3 4 5; do
  printf 'run %d\n' "$i" | dd of="$tree/sparse" bs=1 seek=$((i * 24576 + 4096)) conv=notrunc status=none
done
truncate -s 200K "$tree/sparse"
ln -s hello.txt "$tree/link"
ln -s "dir/sub/deeper/$(printf 'long-target-%.0s' 1 2 3 4 5 6)" "$tree/longlink"
ln -s loop2 "$tree/loop1"
ln -s loop1 "$tree/loop2"
ln "$tree/hello.txt" "$tree/dir/hardlink"
printf 'nested\n' >"$tree/dir/sub/deeper/file"
# Enough entries for a multi-block directory; e2fsck -D indexes it (htree).
for i in $(seq 1 90); do printf '%d\n' "$i" >"$tree/htree/entry-with-a-fairly-long-name-$i"; done
find "$tree" -exec touch -h -d @1700000000 {} +

# mkimg NAME SIZE_KIB [mke2fs options...]
mkimg() {
  local name=$1 size=$2
  shift 2
  local img=$seeds/$name.img
  rm -f "$img"
  truncate -s "${size}K" "$img"
  mke2fs -F -q -U "$uuid" -E "hash_seed=$hash_seed,root_owner=0:0" -L "$name" -d "$tree" "$@" "$img" \
    >"$seeds/$name.log" 2>&1 || { cat "$seeds/$name.log" >&2; die "mke2fs failed for $name"; }
  e2fsck -fyD "$img" >>"$seeds/$name.log" 2>&1 || [ $? -le 1 ] ||
    { cat "$seeds/$name.log" >&2; die "e2fsck -D failed for $name"; }
  debugfs -w -f - "$img" >>"$seeds/$name.log" 2>&1 <<EOF
ea_set /hello.txt user.color blue
ea_set /hello.txt trusted.big $(printf 'v%.0s' $(seq 1 300))
ea_set /dir user.empty ""
mknod chardev c 1 3
mknod blockdev b 7 0
mknod fifo p
EOF
  # debugfs leaves quota files as they were: e2fsck counts its changes in.
  case " $* " in *quota*) e2fsck -fy "$img" >>"$seeds/$name.log" 2>&1 || [ $? -le 1 ] ||
    { cat "$seeds/$name.log" >&2; die "e2fsck -fy failed for $name"; } ;; esac
  e2fsck -fn "$img" >>"$seeds/$name.log" 2>&1 || { cat "$seeds/$name.log" >&2; die "$name does not pass e2fsck"; }
  seed_images+=("$img")
}

seed_images=()
mkimg ext2-256k 256 -t ext2 -b 1024 -N 160 -m 0 -I 128
# Journals go at the end (the files first), so that image_fuzzer inputs cut
# at -max_len still hold the directories and files.
mkimg ext3-2m 2048 -t ext3 -b 1024 -N 160 -m 0 -J location=1000
mkimg ext4-1m 1024 -t ext4 -b 1024 -N 160 -m 0 -O ^has_journal
mkimg ext4-2m-journal 2048 -t ext4 -b 1024 -N 160 -m 0 -J location=1000
mkimg ext4-inline 1024 -t ext4 -b 1024 -N 160 -m 0 -O ^has_journal,inline_data
mkimg ext4-4k 1024 -t ext4 -b 4096 -N 160 -m 0 -O ^has_journal
mkimg ext4-nocsum 1024 -t ext4 -b 1024 -N 160 -m 0 -O ^has_journal,^metadata_csum,^64bit
# Quota files (user, group, project) that every change of write_fuzzer's
# script moves, and that a damaged tree must not lead astray.
mkimg ext4-quota 1024 -t ext4 -b 1024 -N 160 -m 0 -O ^has_journal,quota,project
# A journal that needs recovery, written by debugfs: one committed
# transaction rewrites hello.txt's block and the root directory's (with
# its own bytes), a second revokes the block after hello.txt's. The
# targets replay it: in memory (read-only) or on the image (write_fuzzer).
mkimg ext4-2m-pending 2048 -t ext4 -b 1024 -N 160 -m 0 -J location=1000
pending=$seeds/ext4-2m-pending.img
hello_block=$(debugfs -R "bmap /hello.txt 0" "$pending" 2>/dev/null)
root_block=$(debugfs -R "bmap / 0" "$pending" 2>/dev/null)
[[ "$hello_block" =~ ^[0-9]+$ && "$root_block" =~ ^[0-9]+$ ]] ||
  die "cannot find the blocks of ext4-2m-pending's hello.txt and root directory"
{ printf 'replayed data\n' | dd bs=1024 conv=sync status=none
  dd if="$pending" bs=1024 skip="$root_block" count=1 status=none; } >"$seeds/pending.blocks"
debugfs -w -f - "$pending" >>"$seeds/ext4-2m-pending.log" 2>&1 <<EOF
jo -c
jw -b $hello_block,$root_block $seeds/pending.blocks
jw -r $((hello_block + 1)) /dev/null
jc
EOF
dumpe2fs -h "$pending" 2>/dev/null | grep -q needs_recovery ||
  die "debugfs left no transaction to recover in ext4-2m-pending (see $seeds/ext4-2m-pending.log)"
(IFS=:; echo "${seed_images[*]}") >"$seeds/list"
export UEXT_FUZZ_SEEDS
UEXT_FUZZ_SEEDS=$(cat "$seeds/list")

# image_fuzzer seeds: the images themselves (byte 0 is the option byte,
# zero from mke2fs = checksums not verified) and a copy with checksums on.
img_seeds=$build/corpus-seeds/image
meta_seeds=$build/corpus-seeds/metadata
rm -rf "$build/corpus-seeds"
mkdir -p "$img_seeds" "$meta_seeds"
n=0
for img in "${seed_images[@]}"; do
  base=$(basename "$img" .img)
  cp "$img" "$img_seeds/$base"
  { printf '\001'; tail -c +2 "$img"; } >"$img_seeds/$base-verify"
  # metadata_fuzzer: an empty patch list for each seed, both option values.
  printf "\\$(printf '%03o' $((n * 2)))" >"$meta_seeds/$base"
  printf "\\$(printf '%03o' $((n * 2 + 1)))" >"$meta_seeds/$base-verify"
  n=$((n + 1))
done

# tar_fuzzer seeds: small archives of a tree with what a root filesystem's
# archive holds (links, a device, a fifo, a sparse member, an xattr), in
# the pax, GNU and v7 dialects and gzip'd.
tar_seeds=$build/corpus-seeds/tar
mkdir -p "$tar_seeds"
tar_tree=$build/corpus-seeds/tar-tree
rm -rf "$tar_tree"
mkdir -p "$tar_tree/d/e"
echo hello >"$tar_tree/d/f"
ln "$tar_tree/d/f" "$tar_tree/d/hard"
ln -s ../d/f "$tar_tree/d/e/link"
mkfifo "$tar_tree/fifo"
truncate -s 100000 "$tar_tree/sparse"
echo mid | dd of="$tar_tree/sparse" bs=1 seek=50000 conv=notrunc status=none
setfattr -n user.seed -v 1 "$tar_tree/d/f" 2>/dev/null || true
[ "$(id -u)" -eq 0 ] && mknod "$tar_tree/d/null" c 1 3
for format in pax gnu v7; do
  tar --format=$format --sparse --xattrs -C "$tar_tree" -cf "$tar_seeds/$format.tar" . 2>/dev/null ||
    tar --format=$format -C "$tar_tree" -cf "$tar_seeds/$format.tar" .
done
gzip -c "$tar_seeds/pax.tar" >"$tar_seeds/pax.tar.gz"

# ---- regressions --------------------------------------------------------------
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

replay=$build/replay
rm -rf "$replay"
mkdir -p "$replay"
shopt -s nullglob
for f in "$root"/fuzz/regressions/*; do
  case "$f" in
    *.gz) gzip -dc "$f" >"$replay/$(basename "$f" .gz)" ;;
    *.md|*.txt) ;;
    *) cp "$f" "$replay/" ;;
  esac
done
replay_inputs=("$replay"/* "$img_seeds"/*)
# Archives: their own regressions and seeds, through tar_fuzzer.
tar_inputs=("$replay"/tar-* "$tar_seeds"/*)
if ! "$build/tar_fuzzer" -timeout=10 -rss_limit_mb=2048 "${tar_inputs[@]}" >"$build/replay-tar.log" 2>&1; then
  tail -n 60 "$build/replay-tar.log" >&2
  echo "fuzz.sh: FAILED: a tar regression input or seed crashes (full log: $build/replay-tar.log)" >&2
  exit 1
fi
echo "fuzz.sh: replaying ${#replay_inputs[@]} regression and seed inputs"
if ! "$build/image_fuzzer" -timeout=10 -rss_limit_mb=2048 "${replay_inputs[@]}" >"$build/replay.log" 2>&1; then
  tail -n 60 "$build/replay.log" >&2
  echo "fuzz.sh: FAILED: a regression input or seed image crashes (full log: $build/replay.log)" >&2
  exit 1
fi
# The write path: its own regressions, then every seed image, changed whole.
write_regressions=("$replay"/write-*)
if [ ${#write_regressions[@]} -gt 0 ] &&
  ! UEXT_FUZZ_WHOLE_IMAGE=1 "$build/write_fuzzer" -timeout=10 -rss_limit_mb=2048 "${write_regressions[@]}" \
    >"$build/replay-write.log" 2>&1; then
  tail -n 60 "$build/replay-write.log" >&2
  echo "fuzz.sh: FAILED: a write-path regression input crashes (full log: $build/replay-write.log)" >&2
  exit 1
fi
# What the script makes of a valid image must be valid too: e2fsck, a
# superblock that records no error, and no journal left to recover (the
# pending seed's is replayed at the open, the rest checkpointed at close).
for img in "${seed_images[@]}"; do
  result=$replay/result-$(basename "$img")
  if ! UEXT_FUZZ_WHOLE_IMAGE=1 UEXT_FUZZ_KEEP_RESULT=$result "$build/write_fuzzer" -timeout=10 \
    -rss_limit_mb=2048 "$img" >"$result.log" 2>&1; then
    tail -n 60 "$result.log" >&2
    die "write_fuzzer fails on the seed $img (full log: $result.log)"
  fi
  e2fsck -fn "$result" >"$result.fsck" 2>&1 ||
    { cat "$result.fsck" >&2; die "e2fsck -fn finds errors in what write_fuzzer made of $img: $result"; }
  header=$(dumpe2fs -h "$result" 2>/dev/null)
  grep -q '^Filesystem state: *clean$' <<<"$header" ||
    die "what write_fuzzer made of $img is not in the clean state: $result"
  ! grep -q 'needs_recovery' <<<"$header" ||
    die "what write_fuzzer made of $img still has a journal to recover: $result"
done
echo "fuzz.sh: the write script leaves every seed image e2fsck-clean"

# ---- fuzz -----------------------------------------------------------------------
[ "$duration" -eq 0 ] && { echo "fuzz.sh: regressions pass; no fuzzing (SECONDS=0)"; exit 0; }

declare -A max_len=([image_fuzzer]=1048576 [metadata_fuzzer]=512 [write_fuzzer]=512 [tar_fuzzer]=65536)
# Patch lists: let them grow to max_len at once (libFuzzer would otherwise
# start at a few bytes, one patch, and widen the limit only slowly).
declare -A len_control=([image_fuzzer]= [metadata_fuzzer]=-len_control=0 [write_fuzzer]=-len_control=0 [tar_fuzzer]=)
declare -A seed_dir=([image_fuzzer]=$img_seeds [metadata_fuzzer]=$meta_seeds [write_fuzzer]=$meta_seeds
  [tar_fuzzer]=$tar_seeds)
pids=()
for t in "${targets[@]}"; do
  corpus=$build/corpus/$t
  artifacts=$build/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  rm -f "$artifacts"/*
  echo "fuzz.sh: running $t for ${duration}s (log: $build/$t.log)"
  "$build/$t" -max_len="${max_len[$t]}" -timeout=10 -rss_limit_mb=2048 \
    -max_total_time="$duration" -print_final_stats=1 ${len_control[$t]} \
    -artifact_prefix="$artifacts/" "$corpus" "${seed_dir[$t]}" >"$build/$t.log" 2>&1 &
  pids+=($!)
done

failed=0
for i in "${!targets[@]}"; do
  t=${targets[$i]}
  if wait "${pids[$i]}"; then status=0; else status=$?; fi
  artifacts=("$build/artifacts/$t"/*)
  stats=$(grep -E '^stat::(number_of_executed_units|new_units_added):' "$build/$t.log" | tr '\n' ' ' || true)
  echo "fuzz.sh: $t finished (exit $status) $stats"
  if [ "$status" -ne 0 ] || [ ${#artifacts[@]} -gt 0 ]; then
    failed=1
    grep -E 'ERROR: |SUMMARY: |runtime error|#[0-9]+ 0x' "$build/$t.log" | head -n 40 >&2 || true
    for a in "${artifacts[@]}"; do
      echo "fuzz.sh: FAILED: $t reproducer: $a" >&2
      if [ "$t" = metadata_fuzzer ] || [ "$t" = write_fuzzer ]; then
        UEXT_FUZZ_WRITE_IMAGE=$a.img "$build/$t" "$a" >/dev/null 2>&1 || true
        [ -s "$a.img" ] && echo "fuzz.sh:   as a whole image: $a.img (save it as fuzz/regressions/${t%_fuzzer}-WHAT.img.gz)" >&2
      fi
    done
    [ ${#artifacts[@]} -eq 0 ] && echo "fuzz.sh: FAILED: $t exited with $status; see $build/$t.log" >&2
  fi
done
exit $failed
