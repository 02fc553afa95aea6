#!/usr/bin/env bash
# The main job (README line 1): installs packages, builds uext, creates a
# default ext4 image (demo.img, made by mke2fs 1.47 with its defaults) and
# shows uext reading it without root, a loop device or a kernel driver.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh build -DCMAKE_BUILD_TYPE=RelWithDebInfo
uext=build/uext
img=${1:-demo.img}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
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
