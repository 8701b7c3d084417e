#!/usr/bin/env sh
# Runs one libFuzzer target for a bounded time: run_fuzzer.sh BINARY WORK_CORPUS SEED_CORPUS
# New inputs go to WORK_CORPUS (in the build tree); the committed seeds are only read.
# -max_len reaches the largest seed (the deep-nesting JSON seeds are ~140 KB), and is at least libFuzzer's 4096.
set -eu
mkdir -p "$2"
max_len=4096
for f in "$3"/*; do
  [ -f "$f" ] || continue
  n=$(wc -c <"$f")
  [ "$n" -gt "$max_len" ] && max_len=$n
done
exec "$1" -max_total_time="${OAR_FUZZ_SECONDS:-30}" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 \
  -max_len="$max_len" "$2" "$3"
