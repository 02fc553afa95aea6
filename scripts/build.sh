#!/usr/bin/env bash
# Configures and builds one build directory:
#   scripts/build.sh DIR [cmake options...]
# UEXT_TARGETS="a b" builds only those targets (default: everything).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1
shift
cmake -S . -B "$dir" -G Ninja "$@" >/dev/null
# shellcheck disable=SC2086
ninja -C "$dir" -j"$(nproc)" ${UEXT_TARGETS:-}
