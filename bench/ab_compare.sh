#!/usr/bin/env bash
# A/B of two builds' benchmarks in one run: each round runs both binaries on the same workloads (old first in
# odd rounds, new first in even ones, so neither always runs on a machine the other just warmed or fragmented),
# and the table gives the median over rounds of each metric and new/old. Run it on a quiet machine (pause other
# work) with both builds in Release.
#
#   [AB_BENCHES="llama engine train"] [AB_LLAMA_ARGS="--prompt 32 --decode 16"] bench/ab_compare.sh OLD_BUILD_DIR NEW_BUILD_DIR [ROUNDS=3]
#
# Workloads (small enough for a 2-core machine, ~4 minutes a round):
#   bench_llama  --prompt 32 --decode 16 --dtypes f32          TinyLlama-1.1B shape: prefill and decode tok/s
#   bench_engine --streams 1,4 --dtype f32 --prompt 16 --decode 16 --repeats 1   engine decode tok/s, 1 and 4 streams
#   bench_train  --layers 2 --seq 256 --batch 2 --steps 2 --modes f32+lora --pytorch off   training tok/s
set -euo pipefail
old="${1:?usage: $0 OLD_BUILD_DIR NEW_BUILD_DIR [ROUNDS]}"
new="${2:?usage: $0 OLD_BUILD_DIR NEW_BUILD_DIR [ROUNDS]}"
rounds="${3:-3}"
benches="${AB_BENCHES:-llama engine train}"
for d in "$old" "$new"; do
  for b in bench_llama bench_engine bench_train; do
    [[ -x "$d/$b" ]] || { echo "$0: $d/$b is missing (build the benchmarks there first)" >&2; exit 2; }
  done
done
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# One run of each benchmark with build $1, metrics appended to $out/$2 as "name value" lines.
run_once() {
  local dir="$1" tag="$2" log
  if [[ " $benches " == *" llama "* ]]; then
    # shellcheck disable=SC2086  # AB_LLAMA_ARGS is a list of flags
    log="$("$dir/bench_llama" ${AB_LLAMA_ARGS:---prompt 32 --decode 16} --dtypes f32 2>&1)"
    sed -n 's/^f32 prefill: \([0-9.]*\) tok\/s.*/llama_prefill_tok_s \1/p; s/^f32 decode : \([0-9.]*\) tok\/s.*/llama_decode_tok_s \1/p' \
      <<<"$log" >>"$out/$tag"
    # The decode runs' median share of the memory bandwidth measured just before each: robust to the guest's
    # bandwidth drifting between rounds.
    sed -n 's/^f32 decode : .*median of the runs: \([0-9.]*\)% of the read bandwidth roofline.*/llama_decode_roofline_pct \1/p' \
      <<<"$log" >>"$out/$tag"
  fi
  if [[ " $benches " == *" engine "* ]]; then
    log="$("$dir/bench_engine" --streams 1,4 --dtype f32 --prompt 16 --decode 16 --repeats 1 2>&1)"
    sed -n 's/^ *\([0-9]*\) streams\{0,1\} *: decode *\([0-9.]*\) tok\/s aggregate.*/engine_\1_streams_tok_s \2/p' \
      <<<"$log" >>"$out/$tag"
  fi
  if [[ " $benches " == *" train "* ]]; then
    log="$("$dir/bench_train" --layers 2 --seq 256 --batch 2 --steps 2 --modes f32+lora --pytorch off 2>&1)"
    sed -n 's/^\(f32\|lora\) *\([0-9.]*\) .*/train_\1_tok_s \2/p' <<<"$log" >>"$out/$tag"
  fi
  if [[ -n "${AB_KEEP:-}" ]]; then cp "$out/$tag" "$AB_KEEP.$tag"; fi  # AB_KEEP=prefix: keep the raw numbers
}

for ((r = 1; r <= rounds; r++)); do
  echo "round $r of $rounds" >&2
  if ((r % 2)); then
    run_once "$old" old
    run_once "$new" new
  else
    run_once "$new" new
    run_once "$old" old
  fi
done

python3 - "$out/old" "$out/new" <<'PY'
import statistics, sys
def load(p):
    d = {}
    for line in open(p):
        k, v = line.split()
        d.setdefault(k, []).append(float(v))
    return d
old, new = load(sys.argv[1]), load(sys.argv[2])
print(f"| metric | old (median) | new (median) | new/old | runs |")
print(f"|---|---|---|---|---|")
for k in old:
    if k not in new: continue
    o, n = statistics.median(old[k]), statistics.median(new[k])
    print(f"| {k} | {o:.2f} | {n:.2f} | {n / o:.3f} | {len(old[k])} + {len(new[k])} |")
PY
