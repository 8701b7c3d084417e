#!/usr/bin/env sh
# Runs one libFuzzer target for a bounded time: run_fuzzer.sh BINARY WORK_CORPUS SEED_CORPUS [LIBFUZZER_FLAGS...]
# New inputs go to WORK_CORPUS (in the build tree); the committed seeds are only read. -max_len reaches the largest
# seed (the deep-nesting JSON seeds are ~140 KB) and is at least libFuzzer's 4096; extra flags (e.g. a target's
# -max_len, from OAR_FUZZ_ARGS_<target> in CMakeLists.txt) come after it, so they win.
set -eu
bin="$1" work="$2" seeds="$3"
shift 3
mkdir -p "$work"
max_len=4096
for f in "$seeds"/*; do
  [ -f "$f" ] || continue
  n=$(wc -c <"$f")
  [ "$n" -gt "$max_len" ] && max_len=$n
done
exec "$bin" -max_total_time="${OAR_FUZZ_SECONDS:-30}" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 \
  -max_len="$max_len" "$@" "$work" "$seeds"
