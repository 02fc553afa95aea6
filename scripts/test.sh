#!/usr/bin/env bash
# The project's test command (README line 2; .ci/run calls it):
# installs the Debian packages, builds uext three ways and runs every test:
#   1. optimised build: the system tests (and a few unit tests);
#   2. ASan+UBSan build: the unit tests, the system tests that feed uext
#      bad input (corrupt images, crash states), where sanitizers earn their
#      keep, and the FUSE daemon's tests;
#   3. TSan build: the tests that run threads, the FUSE daemon's among them;
#   4. the fuzz targets for a short while, plus their regression inputs.
# A test that fails is run once more on its own; one that passes then is
# named as flaky at the end (and counted as passed), one that fails again
# fails the run. The last lines name every failed and flaky test.
# Set UEXT_FUZZ_SECONDS to change the fuzzing time (0 skips fuzzing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# Test builds carry line tables only (-g1): enough for every backtrace a
# failing test or a sanitizer prints, and a third less compile time at -O2
# than full debug information.

passed=0
failed=0
failures=""
flaky=""
# ctest's count line ("100% tests passed, 0 tests failed out of 57") and
# its list of failed tests, from a log.
count_of() { grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$1" | tail -n 1 || true; }
failed_of() { sed -n '/The following tests FAILED:/,/^[^ \t]/{/^[ \t]/p}' "$1"; }
# Just the names ("Suite.Test/param") of the failed tests.
failed_names_of() { failed_of "$1" | sed -E 's/^[[:space:]]*[0-9]+ - (.*) \([^)]*\)$/\1/'; }
run_ctest() {
  local dir=$1
  shift
  local log
  log=$(mktemp)
  local rc=0
  # Three at a time on two CPUs: many tests wait on mke2fs, e2fsck, mounts
  # and the disk rather than compute.
  ctest --test-dir "$dir" --output-on-failure --no-tests=error -j3 "$@" 2>&1 | tee "$log" || rc=$?
  local line total bad
  line=$(count_of "$log")
  if [ -z "$line" ]; then
    [ "$rc" -ne 0 ] && failed=$((failed + 1))
    rm -f "$log"
    return 0
  fi
  total=$(sed -E 's/.*out of ([0-9]+).*/\1/' <<<"$line")
  bad=$(sed -E 's/.*passed, ([0-9]+) tests? failed.*/\1/' <<<"$line")
  if [ "$bad" -gt 0 ]; then
    # Once more, alone, what failed: many tests drive the kernel, FUSE and
    # e2fsprogs on a loaded machine. A test that passes then still counts
    # as passed but is named below as flaky, to be looked at; one that
    # fails again is a failure.
    local first=$log
    log=$(mktemp)
    echo "== running the ${bad} failed test(s) of $dir again"
    # By name: ctest numbers the tests after filtering, and --rerun-failed
    # takes the numbers from the unfiltered list, so with -L, -R or -E it
    # ran other tests.
    local names
    names=$(failed_names_of "$first" | sed -E 's/  # GetParam\(\).*//; s/[].[*^$+?(){}|\\]/\\&/g' | paste -sd'|')
    ctest --test-dir "$dir" --output-on-failure -j1 -R "^(${names})( |\$)" 2>&1 | tee "$log" || true
    line=$(count_of "$log")
    local again=$bad
    [ -n "$line" ] && again=$(sed -E 's/.*passed, ([0-9]+) tests? failed.*/\1/' <<<"$line")
    flaky+=$(failed_names_of "$first" | grep -vxF -f <(failed_names_of "$log"; echo '(none)') |
      sed "s|^|  [$dir] |")$'\n'
    rm -f "$first"
    bad=$again
  fi
  passed=$((passed + total - bad))
  failed=$((failed + bad))
  # The names of what failed, for the summary at the very end, where a
  # truncated CI log still shows them.
  [ "$bad" -gt 0 ] && failures+=$(failed_of "$log" | sed "s|^|  [$dir] |")$'\n'
  rm -f "$log"
  return 0
}

echo "== optimised build (at ${SECONDS}s)"
# Every test runs once, in the build where it can find the most (the FUSE
# daemon's tests run in all three: optimised timing, memory errors, races).
# This one builds what users run, and runs the system tests, which drive it
# through the CLI, the FUSE daemon and the kernel. The unit tests run in the
# ASan+UBSan build below, with the debug checks on, but for some that run
# here (only their files are compiled among the unit tests): three bulk
# directory workloads (20,000+ names), a minute each under ASan, and the
# library's read path over the shared images, whose reads the corruption
# tests run under ASan through `uext get`.
# Whole names end in $, so that a new test named like one of them still
# runs under ASan; every Images/ReadPath test runs here.
opt_unit='DirWriter\.(LargedirThreeLevels|IndexFullWithoutLargedir)$|DxEditImage\.LargedirThreeLevels$|Images/ReadPath\.'
bash scripts/build.sh build -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG" \
  "-DUEXT_UNIT_TEST_SOURCES=src/fs/dir_writer_test.cc;src/disk/dx_edit_test.cc;src/fs/filesystem_test.cc"
# The corruption and device-error tests run in the ASan+UBSan build, all
# but the random bit flips, which run here (the regex spares the one
# Corruption test that starts with "Ra"), half their full count
# (UEXT_BITFLIP_PERCENT; 115 images). The crash suite checks 1,000 states,
# not its default 5,200 (UEXT_CRASH_STATES). Both keep CI within its 30
# minutes on a slower day of this machine kind (runs took 1,667-1,699 s; a day
# later, with every test a fifth slower, one was on course for 1,850 s).
UEXT_CRASH_STATES=1000 UEXT_BITFLIP_PERCENT=50 run_ctest build -L system -E '^(Corruption\.([^R]|R[^a])|WriteErrors)'
run_ctest build -L unit -R "^(${opt_unit})"

echo "== ASan+UBSan build (at ${SECONDS}s)"
# Of the system tests it runs those that feed uext bad input (corrupt
# images, failing devices, hostile and broken tar archives), whose error
# paths are where memory errors hide; only the files that hold them are
# compiled (found with the pattern run below).
bad_input='Corruption|Crash|WriteErrors|CliTar'
bad_input_files=$(grep -lE "^TEST(_F|_P)?\((${bad_input})" $(find tests -maxdepth 1 -name '*_test.cc' | sort) | paste -sd';')
# The FUSE daemon's system tests run under both sanitizers too: the daemon
# is the busiest threaded code (request threads, the writeback thread, the
# commit timer) and the one most users run. Its processes are the daemon
# under test, whose stderr goes to a log the test may not print, so their
# sanitizer reports go to files (sanitizer_reports, below).
fuse_files=$(grep -lE '^TEST(_F|_P)?\(Fuse' $(find tests -maxdepth 1 -name '*_test.cc' | sort) | paste -sd';')
# sanitizer_reports DIR: names every report file a sanitizer left in DIR and
# prints its start; a report counts as one failure, whatever the tests said.
sanitizer_reports() {
  local f
  for f in "$1"/*; do
    [ -e "$f" ] || continue
    echo "== sanitizer report $f:"
    head -n 60 "$f"
    failed=$((failed + 1))
    failures+="  [sanitizer] $f"$'\n'
  done
}
# The library at -Og (register allocation, simple inlining): the
# corruption tests a fifth faster and the unit tests an eighth, for 16%
# more compile time when everything was -Og; the test bodies and the CLI
# stay at -O0 (CMakeLists.txt), where that cost was. The debug checks stay
# on.
bash scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-g1 -Og" -DUEXT_SANITIZE=address,undefined \
  "-DUEXT_SYSTEM_TEST_SOURCES=${bad_input_files};${fuse_files}"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# What ran in the optimised build is left out (the smaller DirWriter and
# DxEdit tests cover the bulk workloads' code paths here), and so are the
# namespace operations from many threads, which TSan runs.
run_ctest build-asan -L unit -E "^(${opt_unit}|Images/Concurrency\.)"
# The random bit-flip test runs a tenth of its cases here (each is a CLI
# process, several times slower under the sanitizers); the optimised build
# ran them all.
UEXT_BITFLIP_PERCENT=10 run_ctest build-asan -R "^(${bad_input})"
rm -rf build-asan/sanitizer-reports && mkdir -p build-asan/sanitizer-reports
ASAN_OPTIONS=$ASAN_OPTIONS:log_path=$PWD/build-asan/sanitizer-reports/asan \
  UBSAN_OPTIONS=$UBSAN_OPTIONS:log_path=$PWD/build-asan/sanitizer-reports/ubsan \
  run_ctest build-asan -L system -R '^Fuse'
sanitizer_reports build-asan/sanitizer-reports
unset ASAN_OPTIONS UBSAN_OPTIONS

echo "== TSan build (threaded tests) (at ${SECONDS}s)"
# Only the files that hold such tests are compiled (found with the same
# pattern the run selects by).
threaded='Concurren|Thread|Parallel|MmapFsx'
threaded_files=$(grep -lE "^TEST(_F|_P)?\(.*(${threaded})" $(find src -name '*_test.cc' | sort) | paste -sd';')
UEXT_TARGETS="uext_unit_tests uext_cli uext_system_tests" bash scripts/build.sh build-tsan -DCMAKE_BUILD_TYPE=Debug \
  "-DCMAKE_CXX_FLAGS_DEBUG=-g1" -DUEXT_SANITIZE=thread \
  "-DUEXT_UNIT_TEST_SOURCES=${threaded_files}" "-DUEXT_SYSTEM_TEST_SOURCES=${fuse_files}"
# report_signal_unsafe=0: the signal fallback of mappings serves a fault
# inside the faulting thread's SIGSEGV handler on purpose (allocating, taking
# locks): the fault is synchronous, at a store of the program's, never inside
# the allocator or a uext lock (docs/DESIGN.md, "Mappings"). Races are still
# reported.
# tests/tsan.supp: the inode locks' tree order, which TSan's lock graph
# cannot follow as directories move (the file says why).
tsan_options=halt_on_error=1:report_signal_unsafe=0:suppressions=$PWD/tests/tsan.supp
TSAN_OPTIONS=$tsan_options run_ctest build-tsan -L unit -R "$threaded"
rm -rf build-tsan/sanitizer-reports && mkdir -p build-tsan/sanitizer-reports
TSAN_OPTIONS=$tsan_options:log_path=$PWD/build-tsan/sanitizer-reports/tsan \
  run_ctest build-tsan -L system -R '^Fuse'
sanitizer_reports build-tsan/sanitizer-reports

fuzz_seconds=${UEXT_FUZZ_SECONDS:-20}
if [ "$fuzz_seconds" -gt 0 ] && [ -x scripts/fuzz.sh ]; then
  echo "== fuzzing (${fuzz_seconds}s a target) (at ${SECONDS}s)"
  # At -O0: the build takes half the time of -O1, and a short run needs
  # the fuzzers' coverage more than their speed.
  if UEXT_FUZZ_OPT=-O0 bash scripts/fuzz.sh "$fuzz_seconds"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+="  [fuzz] scripts/fuzz.sh"$'\n'
  fi
fi

echo
if [ -n "${flaky//[[:space:]]/}" ]; then
  echo "tests that failed once and passed when run again (flaky: look at them):"
  grep -v '^$' <<<"$flaky"
fi
if [ -n "${failures//[[:space:]]/}" ]; then
  echo "failed tests:"
  grep -v '^$' <<<"$failures"
fi
echo "uext: ${passed} passed, ${failed} failed in ${SECONDS}s"
[ "$failed" -eq 0 ]
