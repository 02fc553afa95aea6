#!/usr/bin/env bash
# The main job (README line 1): installs packages, builds uext, creates a
# default ext4 image (demo.img, made by mke2fs 1.47 with its defaults),
# shows uext reading it without root, a loop device or a kernel driver, then
# mounts it with `uext mount` (FUSE), lets ordinary programs read and write
# it, unmounts it and has e2fsck check it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh build -DCMAKE_BUILD_TYPE=RelWithDebInfo
uext=build/uext
img=${1:-demo.img}

work=$(mktemp -d)
# Unmount first, and never descend into a mount: rm -rf must not empty the image.
trap 'fusermount3 -u "$work/mnt" 2>/dev/null || true; rm -rf --one-file-system "$work"' EXIT
tree=$work/tree
if [ ! -f "$img" ]; then
  mkdir -p "$tree/docs" "$tree/many"
  echo "Hello from an ext4 image, read by uext." > "$tree/hello.txt"
  head -c 3000000 /dev/urandom > "$tree/random.bin"
  truncate -s 10M "$tree/sparse.bin"
  echo "data in the middle of a hole" | dd of="$tree/sparse.bin" bs=1 seek=5000000 conv=notrunc status=none
  ln -s hello.txt "$tree/link-to-hello"
  for i in $(seq 1 3000); do echo "file $i" > "$tree/many/file-$i"; done
  cp README.md "$tree/docs/" 2>/dev/null || true
  mke2fs -F -q -t ext4 -L uext-demo -d "$tree" "$img" 512M
  echo "created $img (ext4, 512 MiB, sparse) from a sample tree"
else
  echo "using existing $img"
fi

set -x
"$uext" info "$img"
"$uext" ls -l "$img" /
"$uext" cat "$img" /hello.txt
"$uext" stat "$img" /sparse.bin
"$uext" get "$img" / "$work/copy"
set +x
if [ -d "$tree" ]; then
  diff -r "$tree" "$work/copy" --exclude=lost+found && echo "uext get reproduced the tree exactly"
fi

# Mappings: the seed scenario of page_mkwrite, on a small image of its own
# (it fills the filesystem): stores into a mapped sparse file until the
# first page that cannot get a block raises SIGBUS; nothing before it lost.
mke2fs -F -q -t ext4 "$work/mmap.img" 32M
set -x
"$uext" demo mmap-enospc "$work/mmap.img"
set +x
e2fsck -fn "$work/mmap.img" >/dev/null && echo "e2fsck: mmap.img is clean"

# uext mount: the image as a filesystem, through FUSE.
if [ ! -w /dev/fuse ] || ! command -v fusermount3 >/dev/null; then
  echo "skipping the uext mount demo: /dev/fuse or fusermount3 is missing"
  exit 0
fi
mnt=$work/mnt
mkdir -p "$mnt"
set -x
"$uext" mount "$img" "$mnt"
df -h "$mnt"
ls -l "$mnt"
cat "$mnt/hello.txt"
rm -rf "$mnt/through-fuse"
mkdir "$mnt/through-fuse"
cp -a tools "$mnt/through-fuse/"
tar -C "$mnt/through-fuse" -cf - tools | tar -tf - | wc -l
echo "written through uext mount" > "$mnt/through-fuse/note.txt"
sha256sum "$mnt/random.bin" "$mnt/through-fuse/note.txt"
fusermount3 -u "$mnt"
flock "$img" true   # the daemon holds this lock until it has closed the image
e2fsck -fn "$img"
"$uext" cat "$img" /through-fuse/note.txt
