#!/usr/bin/env bash
# Sets up, builds and runs every test: the release build, the same tests under AddressSanitizer +
# UndefinedBehaviorSanitizer, and the libFuzzer targets for a bounded time. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs="${JOBS:-$(nproc)}"
fuzz_seconds="${OAR_FUZZ_SECONDS:-30}"

echo "== release build and tests"
bash scripts/build.sh release
(cd build && ctest --output-on-failure -j "$jobs")

echo "== AddressSanitizer + UndefinedBehaviorSanitizer build and tests"
bash scripts/build.sh asan
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --output-on-failure -j "$jobs")

echo "== fuzzing, ${fuzz_seconds}s per target"
bash scripts/build.sh fuzz
# Each fuzzer runs on one core: as many at once as there are cores.
(cd build-fuzz && OAR_FUZZ_SECONDS="$fuzz_seconds" ctest --output-on-failure -j "$jobs")
echo "all test stages passed"
