#!/usr/bin/env sh
# Runs one libFuzzer target for a bounded time: run_fuzzer.sh BINARY WORK_CORPUS SEED_CORPUS
# New inputs go to WORK_CORPUS (in the build tree); the committed seeds are only read.
set -eu
mkdir -p "$2"
exec "$1" -max_total_time="${OAR_FUZZ_SECONDS:-30}" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 "$2" "$3"
