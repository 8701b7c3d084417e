#!/usr/bin/env bash
# Soak test of `oar serve`: does its memory plateau under sustained load?
# Starts `oar serve` on a small model (by default a fresh `oar create-model --preset tiny`), drives it with
# `oar bench-serve` in rounds (a new connection per request, streaming, random prompts) for --minutes, samples
# the server's resident memory (VmRSS from /proc) every --sample_s seconds, prints the series and whether it
# plateaus: RSS growth over the second half of the run below --max_growth_pct percent of the RSS at half time.
# Exit 0: plateau; 1: still growing; 2: bad usage or the server failed.
#
#   bench/soak_serve.sh [--oar build/oar] [--minutes 30] [--model DIR] [--concurrency 16] [--max_tokens 8]
#                       [--prompt_len 24] [--round_requests 2000] [--sample_s 5] [--max_growth_pct 2]
#                       [--serve_args "--max_num_seqs 16"] [--csv FILE]
set -euo pipefail
OAR=build/oar MINUTES=30 MODEL="" CONC=16 MAX_TOKENS=8 PROMPT_LEN=24 ROUND=2000 SAMPLE=5 MAX_GROWTH=2
SERVE_ARGS="" CSV=""
while [ $# -gt 0 ]; do
  case "$1" in
    --oar) OAR="$2" ;; --minutes) MINUTES="$2" ;; --model) MODEL="$2" ;; --concurrency) CONC="$2" ;;
    --max_tokens) MAX_TOKENS="$2" ;; --prompt_len) PROMPT_LEN="$2" ;; --round_requests) ROUND="$2" ;;
    --sample_s) SAMPLE="$2" ;; --max_growth_pct) MAX_GROWTH="$2" ;; --serve_args) SERVE_ARGS="$2" ;; --csv) CSV="$2" ;;
    *) echo "soak_serve.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift 2
done
[ -x "$OAR" ] || { echo "soak_serve.sh: --oar $OAR: not an executable" >&2; exit 2; }
TMP=$(mktemp -d /tmp/oar-soak.XXXXXX)
SERVER=""; SAMPLER=""
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null || true
  if [ -n "$SERVER" ]; then kill -9 "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

if [ -z "$MODEL" ]; then
  MODEL="$TMP/tiny"
  "$OAR" create-model --preset tiny --dtype float32 --output_dir "$MODEL" --force >/dev/null
fi
# shellcheck disable=SC2086
"$OAR" serve --model_name_or_path "$MODEL" --host 127.0.0.1 --port 0 $SERVE_ARGS >"$TMP/serve.out" 2>"$TMP/serve.err" &
SERVER=$!
URL=""
for _ in $(seq 1 600); do
  URL=$(grep -o 'http://127.0.0.1:[0-9]*' "$TMP/serve.out" 2>/dev/null || true)
  [ -n "$URL" ] && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$TMP/serve.err" >&2; echo "soak_serve.sh: oar serve exited" >&2; exit 2; }
  sleep 0.1
done
[ -n "$URL" ] || { echo "soak_serve.sh: oar serve did not start" >&2; exit 2; }

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER/status" 2>/dev/null || echo 0; }
START=$(date +%s)
echo "$(date +%s) $(rss_kb) 0" > "$TMP/rss"
(
  while kill -0 "$SERVER" 2>/dev/null; do
    sleep "$SAMPLE"
    echo "$(date +%s) $(rss_kb) $(cat "$TMP/done" 2>/dev/null || echo 0)" >> "$TMP/rss"
  done
) &
SAMPLER=$!

END=$((START + MINUTES * 60))
DONE=0 FAILED=0 ROUNDS=0
while [ "$(date +%s)" -lt "$END" ]; do
  left=$((END - $(date +%s)))
  "$OAR" bench-serve --url "$URL" --concurrency "$CONC" --requests "$ROUND" --max_tokens "$MAX_TOKENS" \
    --prompt_len "$PROMPT_LEN" --duration_s "$left" --seed "$ROUNDS" --json > "$TMP/round.json" \
    || { echo "soak_serve.sh: bench-serve failed" >&2; cat "$TMP/serve.err" >&2; exit 2; }
  ok=$(grep -o '"requests_ok": *[0-9]*' "$TMP/round.json" | grep -o '[0-9]*$')
  bad=$(grep -o '"requests_failed": *[0-9]*' "$TMP/round.json" | grep -o '[0-9]*$')
  DONE=$((DONE + ${ok:-0})); FAILED=$((FAILED + ${bad:-0})); ROUNDS=$((ROUNDS + 1))
  echo "$DONE" > "$TMP/done"
  kill -0 "$SERVER" 2>/dev/null || { cat "$TMP/serve.err" >&2; echo "soak_serve.sh: oar serve died" >&2; exit 2; }
done
sleep "$SAMPLE"  # one more sample after the load
kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=""
echo "$(date +%s) $(rss_kb) $DONE" >> "$TMP/rss"
[ -n "$CSV" ] && awk -v s="$START" 'BEGIN {print "seconds,rss_mb,requests"} {printf "%d,%.1f,%d\n", $1 - s, $2 / 1024, $3}' "$TMP/rss" > "$CSV"

echo "oar soak: $MINUTES min, $DONE requests ok, $FAILED failed, $ROUNDS rounds of bench-serve (concurrency $CONC)"
echo "oar soak: RSS series (seconds MB requests):"
awk -v s="$START" '{printf "  %5d %7.1f %7d\n", $1 - s, $2 / 1024, $3}' "$TMP/rss"
awk -v s="$START" -v max="$MAX_GROWTH" -v failed="$FAILED" '
  { t[NR] = $1 - s; r[NR] = $2 / 1024 }
  END {
    half = t[NR] / 2; h = 1
    for (i = 1; i <= NR; i++) if (t[i] <= half) h = i
    growth = r[NR] - r[h]; pct = r[h] > 0 ? 100 * growth / r[h] : 0
    printf "oar soak: RSS %.1f MB at start, %.1f MB at %d s (half), %.1f MB at the end: %+.1f MB (%+.1f%%) over the second half\n",
           r[1], r[h], t[h], r[NR], growth, pct
    if (pct < max && failed == 0) { printf "oar soak: PLATEAU (second-half growth below %s%%)\n", max; exit 0 }
    printf "oar soak: GROWING or failing (second-half growth %+.1f%%, limit %s%%; %d failed requests)\n", pct, max, failed
    exit 1
  }' "$TMP/rss"
