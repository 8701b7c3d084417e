#!/usr/bin/env bash
# `oar predict --block_attn` (the serving engine) on a tiny random model: the same greedy output_file as the plain
# path, with mixed prompt lengths, chunked prefill, small blocks and a KV budget small enough to force preemption;
# the int8 KV cache flags; the --benchmark lines; `oar perplexity --cachekv_int8`; clear errors.
# Environment (set by ctest): OAR = the oar binary, WORK = a scratch directory.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null

# mixed lengths (1 to ~60 tokens), a tgt passed through, a multi-turn src
printf '%s\n' '{"src": "hello world", "tgt": "hi"}' \
  '{"src": "the cat sat on the mat and then it sat again on the other mat"}' \
  '{"src": ["first turn", "second turn"], "tgt": ["a", "b"]}' '{"src": "a"}' \
  '{"src": "once upon a time there was a little dog who liked to run in the park every single day of the week"}' > in.json
G=(--model_name_or_path "$M" --data_file in.json --max_length 24 --decode_strategy greedy_search)
"$OAR" predict "${G[@]}" --output_file plain.json --batch_size 2 >/dev/null

# engine, default blocks; then blocks of 4, 16-token steps (chunked prefill); then a budget of 25 blocks of 4
# positions (2 KiB each) for 5 sequences of up to 84 positions: preemption by recompute
"$OAR" predict "${G[@]}" --output_file b1.json --batch_size 2 --block_attn >/dev/null
"$OAR" predict "${G[@]}" --output_file b2.json --batch_size 5 --block_attn --block_size 4 --max_num_batched_tokens 16 >/dev/null
"$OAR" predict "${G[@]}" --output_file b3.json --batch_size 5 --block_attn --block_size 4 --kv_cache_memory_gb 0.00005 >/dev/null 2>b3.err
for f in b1 b2 b3; do cmp -s plain.json $f.json || { diff plain.json $f.json | head; die "--block_attn output ($f) differs from the plain path"; }; done
p=$(sed -n -E 's/.* ([0-9]+) preemptions;.*/\1/p' b3.err)
[ -n "$p" ] && [ "$p" -gt 0 ] || { cat b3.err; die "the small budget should have preempted"; }
echo "ok: --block_attn greedy output_file equals the plain path (default, chunked, preempting: $p preemptions)"

# The same prompt five times: after the first, its full blocks come from the prefix cache (same outputs).
for i in 1 2 3 4 5; do echo '{"src": "once upon a time there was a little dog who liked to run in the park every single day"}'; done > same.json
"$OAR" predict --model_name_or_path "$M" --data_file same.json --max_length 8 --decode_strategy greedy_search \
  --output_file same_out.json --batch_size 1 --block_attn --block_size 4 >/dev/null 2>same.err
grep -qE "prefix cache [1-9][0-9]* of [0-9]+ prompt blocks hit" same.err || { cat same.err; die "no prefix cache hits reported"; }
[ "$(python3 -c "import json; print(len({json.loads(l)['output'] for l in open('same_out.json')}))")" = 1 ] || die "prefix hits changed outputs"
echo "ok: repeated prompts hit the prefix cache: $(grep -oE 'prefix cache [^;]*' same.err)"

# one prompt streams to stdout like the plain path; sampling with a seed matches the plain path at batch size 1
a=$("$OAR" predict --model_name_or_path "$M" --prompt "hello" --max_length 12 --decode_strategy greedy_search)
b=$("$OAR" predict --model_name_or_path "$M" --prompt "hello" --max_length 12 --decode_strategy greedy_search --block_attn true)
[ "$a" = "$b" ] || die "streamed --block_attn output differs"
s1=$("$OAR" predict --model_name_or_path "$M" --prompt "hello" --max_length 12 --seed 7 --top_p 0.9)
s2=$("$OAR" predict --model_name_or_path "$M" --prompt "hello" --max_length 12 --seed 7 --top_p 0.9 --block_attn)
[ "$s1" = "$s2" ] || die "seeded sampling differs between the paths"
echo "ok: streaming and seeded sampling as the plain path"
# stdout and stderr in one file: the streamed text ends its line before the engine's summary line on stderr
"$OAR" predict --model_name_or_path "$M" --prompt "hello" --max_length 12 --decode_strategy greedy_search --block_attn \
  > both.txt 2>&1
grep -q '^oar: engine: ' both.txt || { cat -A both.txt; die "the text and the engine's stderr line run together"; }
echo "ok: the streamed text and the engine's summary are separate lines"

# int8 KV cache: dynamic (bare flag, or --cachekv_int8_type), static from cachekv_scales.json in the model dir
"$OAR" predict "${G[@]}" --output_file i8.json --batch_size 5 --block_attn --cachekv_int8 >/dev/null
"$OAR" predict "${G[@]}" --output_file i8t.json --batch_size 5 --block_attn --cachekv_int8_type dynamic >/dev/null
cmp -s i8.json i8t.json || die "--cachekv_int8 and --cachekv_int8_type dynamic differ"
python3 - "$M/cachekv_scales.json" <<'PY'
import json, sys
s = {}
for l in range(2):  # the tiny preset: 2 layers, 2 kv heads
    s[f"llama.layers.{l}.self_attn.cachek_matmul.activation_quanter"] = [4.0, 4.0]
    s[f"llama.layers.{l}.self_attn.cachev_matmul.activation_quanter"] = [1.0, 1.0]
json.dump(s, open(sys.argv[1], "w"))
PY
"$OAR" predict "${G[@]}" --output_file s8.json --batch_size 5 --block_attn --cachekv_int8_type static >/dev/null
python3 - plain.json i8.json s8.json <<'PY' || die "int8 output_file"
import json, sys
rows = [[json.loads(l) for l in open(f, encoding="utf-8")] for f in sys.argv[1:]]
for r in rows[1:]:
    assert len(r) == len(rows[0])
    for a, b in zip(rows[0], r):
        assert a["src"] == b["src"] and len(b["output_ids"]) == len(a["output_ids"])
PY
echo "ok: int8 KV cache, dynamic and static"

# --benchmark: PaddleNLP's lines, then throughput, TTFT and TPOT percentiles
"$OAR" predict --model_name_or_path "$M" --benchmark --src_length 16 --max_length 4 --batch_size 3 \
  --benchmark_warmup 0 --benchmark_rounds 2 --block_attn --block_size 8 > bench.txt 2>/dev/null
grep -Eq '^Input length is: 16, Output length is: 4, bs is: 3, IPS: [0-9.]+ tokens/s, QPS: [0-9.]+ requests/s\.$' bench.txt \
  || { cat bench.txt; die "benchmark line"; }
grep -q '^Output tokens is:  24$' bench.txt || { cat bench.txt; die "every request must decode max_length tokens"; }
grep -Eq '^oar: block_attn: total throughput [0-9.]+ tok/s' bench.txt || die "throughput line"
grep -Eq '^oar: time to first token p50 [0-9.]+ s, p99 [0-9.]+ s$' bench.txt || die "TTFT line"
grep -Eq '^oar: time per output token p50 [0-9.]+ s, p99 [0-9.]+ s$' bench.txt || die "TPOT line"
echo "ok: --block_attn benchmark lines"

# perplexity through an int8 KV cache: within 1% of the float32 cache's on this text
printf 'the quick brown fox jumps over the lazy dog. %.0s' $(seq 1 20) > text.txt
p32=$("$OAR" perplexity --model_name_or_path "$M" --input_file text.txt --ctx 64 | sed -E 's/^perplexity: ([0-9.]+) .*/\1/')
"$OAR" perplexity --model_name_or_path "$M" --input_file text.txt --ctx 64 --cachekv_int8 > int8.txt
p8=$(sed -n -E 's/^perplexity: ([0-9.]+) .*/\1/p' int8.txt)
# It also reports the float32 cache's perplexity (the same number as the plain run) and the memory per token.
pref=$(sed -n -E 's/^float32 KV cache: perplexity ([0-9.]+); int8 dynamic changes it by .*/\1/p' int8.txt)
python3 -c "import sys; sys.exit(0 if abs(float('$pref') / float('$p32') - 1) < 1e-4 else 1)" \
  || { cat int8.txt; die "int8 run's float32 reference $pref differs from the plain perplexity $p32"; }
grep -qE "^KV cache memory: int8 [0-9]+ bytes per token vs float32 [0-9]+ \(0\.[0-9]+x; 0\.[0-9]+x of a 16-bit cache\)" int8.txt \
  || { cat int8.txt; die "KV memory line"; }
"$OAR" perplexity --model_name_or_path "$M" --input_file text.txt --ctx 64 --cachekv_int8 static | grep -q "int8 static KV cache" \
  || die "static int8 perplexity"
python3 -c "import sys; a, b = float('$p32'), float('$p8'); sys.exit(0 if abs(b / a - 1) < 0.01 else 1)" \
  || die "int8 KV perplexity $p8 vs float32 $p32"
echo "ok: perplexity with int8 KV $p8 vs float32 $p32"

expect_err() {  # expect_err PATTERN CMD...
  local pat="$1"; shift
  set +e; "$@" >/dev/null 2>err.txt; rc=$?; set -e
  [ $rc -eq 2 ] || { cat err.txt; die "exit $rc (want 2): $*"; }
  [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt; die "want exactly one error line: $*"; }
  grep -q -- "$pat" err.txt || { cat err.txt; die "error should mention '$pat': $*"; }
}
rm "$M/cachekv_scales.json"
expect_err "cachekv_scales.json" "$OAR" predict --model_name_or_path "$M" --prompt hi --block_attn --cachekv_int8_type static
expect_err "--cachekv_int8_type" "$OAR" predict --model_name_or_path "$M" --prompt hi --block_attn --cachekv_int8_type int4
expect_err "--block_attn" "$OAR" predict --model_name_or_path "$M" --prompt hi --cachekv_int8
expect_err "--kv_cache_memory_gb" "$OAR" predict --model_name_or_path "$M" --prompt hi --block_attn --kv_cache_memory_gb 0.000001
expect_err "--block_attn" "$OAR" predict --model_name_or_path "$M" --prompt hi --block_attn maybe
echo "ok: errors are one line with exit code 2"
