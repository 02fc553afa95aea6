#!/usr/bin/env bash
# Installs every Debian package uext needs to build, test and benchmark.
# Safe to run again: apt-get skips what is already there.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  libisal-dev libcli11-dev libfmt-dev libfuse3-dev fuse3 liburing-dev libabsl-dev libarchive-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev
  e2fsprogs fuse2fs xfsprogs util-linux attr acl
  # sfdisk: disk images with MBR and GPT partition tables (offset= tests)
  fdisk
  # what the FUSE tests drive a mounted image with
  coreutils tar rsync git sqlite3 fio stress-ng
  # bench/mount_bench.sh with UEXT_BENCH_LATENCY (FUSE request latencies)
  linux-perf
)
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
