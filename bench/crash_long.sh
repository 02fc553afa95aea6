#!/usr/bin/env bash
# The crash suite (tests/crash_test.cc) at a larger scale: a longer workload
# and many more crash states than the default test run.
#
#   bench/crash_long.sh                          # 50,000 states, build/ binaries
#   UEXT_CRASH_STATES=200000 bench/crash_long.sh
#
# Environment:
#   UEXT_CRASH_STATES   total states over the four image kinds (default 50000);
#                       the workload grows with it (UEXT_CRASH_OPS x states/5200)
#   UEXT_CRASH_WORKERS  checking threads (default: number of CPUs + 1)
#   UEXT_CRASH_SEED     fixes which random subsets are tried (printed on failure)
#   UEXT_CRASH_WORKLOAD_SEED  a different workload (default 12345)
#   UEXT_CRASH_KEEP     directory that receives the images of failing states
#   UEXT_BUILD          build directory holding uext_system_tests (default build)
#   UEXT_CRASH_FILTER   gtest filter (default 'Images/Crash.*')
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${UEXT_BUILD:-$root/build}
bin=$build/uext_system_tests
[ -x "$bin" ] || { echo "crash_long.sh: $bin not built (ninja -C $build uext_system_tests)" >&2; exit 1; }
export UEXT_CRASH_STATES=${UEXT_CRASH_STATES:-50000}
export UEXT_CRASH_WORKERS=${UEXT_CRASH_WORKERS:-$(( $(nproc) + 1 ))}
export UEXT_CRASH_SECONDS=${UEXT_CRASH_SECONDS:-86400}
start=$(date +%s)
log=$(mktemp)
rc=0
"$bin" --gtest_filter="${UEXT_CRASH_FILTER:-Images/Crash.*}" 2>&1 | tee "$log" || rc=$?
echo
echo "== summary"
grep -E '^[a-z0-9_]+: .*crash states checked' "$log" || true
rm -f "$log"
echo "crash_long.sh: ${UEXT_CRASH_STATES} states requested, $(( $(date +%s) - start )) s, exit $rc"
exit "$rc"
