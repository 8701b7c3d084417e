#!/usr/bin/env bash
# oar predict / perplexity / env / create-model end to end on a tiny random model: PaddleNLP's flags and
# defaults, the JSON-lines output, the benchmark lines, and clear errors for bad flags and data.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null
[ -f "$M/config.json" ] && [ -f "$M/model.safetensors" ] && [ -f "$M/tokenizer.json" ] || die "create-model wrote no model"

# --data_file -> --output_file: one object per line with src, tgt (when given), output, output_ids
printf '%s\n' '{"src": "hello world", "tgt": "hi"}' '{"src": "the cat sat"}' '{"src": ["first turn", "second turn"], "tgt": ["a", "b"]}' > in.json
"$OAR" predict --model_name_or_path "$M" --data_file in.json --output_file out.json --batch_size 2 \
  --max_length 8 --decode_strategy greedy_search >/dev/null
python3 - out.json <<'PY' || die "output_file content"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
assert len(rows) == 3, rows
assert rows[0]["src"] == "hello world" and rows[0]["tgt"] == "hi"
assert "tgt" not in rows[1]
assert rows[2]["tgt"] == ["a", "b"]
for r in rows:
    assert isinstance(r["output"], str) and len(r["output_ids"]) == 8, r
print("ok: output_file has src/tgt/output/output_ids for every line")
PY

# greedy is deterministic and batch-independent; sampling with a seed is reproducible
a=$("$OAR" predict --model_name_or_path "$M" --prompt "hello" --max_length 12 --decode_strategy greedy_search)
b=$(echo "hello" | "$OAR" predict --model_name_or_path "$M" --max_length 12 --decode_strategy greedy_search)
[ "$a" = "$b" ] || die "--prompt and stdin give different greedy output"
s1=$("$OAR" predict --model_name_or_path "$M" --prompt "hello" --max_length 12 --seed 7 --top_p 0.9)
s2=$("$OAR" predict --model_name_or_path "$M" --prompt "hello" --max_length 12 --seed 7 --top_p 0.9)
[ "$s1" = "$s2" ] || die "sampling with the same seed differs"
echo "ok: greedy deterministic, seeded sampling reproducible"

# --benchmark prints PaddleNLP's line, then ours
"$OAR" predict --model_name_or_path "$M" --benchmark --src_length 16 --max_length 4 --batch_size 2 \
  --benchmark_warmup 0 --benchmark_rounds 1 > bench.txt 2>/dev/null
grep -Eq '^Input length is: 16, Output length is: 4, bs is: 2, IPS: [0-9.]+ tokens/s, QPS: [0-9.]+ requests/s\.$' bench.txt \
  || { cat bench.txt; die "benchmark line"; }
grep -q '^Output tokens is:  8$' bench.txt || die "benchmark must decode exactly max_length tokens per request"
for k in "prefill" "decode" "time to first token" "decode roofline" "peak memory"; do
  grep -q "$k" bench.txt || die "benchmark lacks '$k'"
done
# The bandwidth probe's 1 GiB buffer is not the program's memory: a tiny model's peak stays far below it (where
# the kernel lets a process reset its peak, /proc/self/clear_refs; elsewhere oar reports the peak with the probe).
peak=$(sed -n 's/^oar: peak memory \([0-9.]*\) GiB.*/\1/p' bench.txt)
if (echo 5 > /proc/self/clear_refs) 2>/dev/null; then
  python3 -c "import sys; sys.exit(0 if float('$peak') < 0.5 else 1)" || { cat bench.txt; die "peak memory $peak GiB counts the probe"; }
  echo "ok: benchmark lines (peak memory $peak GiB)"
else
  echo "ok: benchmark lines (peak memory $peak GiB; not checked: /proc/self/clear_refs refused here)"
fi

# --quant_type weight_only_int8 quantizes at load: the benchmark names the format, greedy output is produced.
"$OAR" predict --model_name_or_path "$M" --quant_type weight_only_int8 --benchmark --src_length 16 --max_length 4 \
  --benchmark_warmup 0 --benchmark_rounds 1 > bench8.txt 2>/dev/null
grep -q "weights weight_only_int8" bench8.txt || { cat bench8.txt; die "int8 benchmark does not name its weights"; }
q=$("$OAR" predict --model_name_or_path "$M" --quant_type weight_only_int8 --prompt "hello" --max_length 6 --decode_strategy greedy_search)
[ -n "$q" ] || die "weight_only_int8 predict printed nothing"
echo "the quick brown fox jumps over the lazy dog" > q8.txt
"$OAR" perplexity --model_name_or_path "$M" --quant_type weight_only_int8 --input_file q8.txt --ctx 16 \
  | grep -Eq '^perplexity: [0-9.]+ ' || die "weight_only_int8 perplexity"
echo "ok: --quant_type weight_only_int8 in predict and perplexity"
# PaddleNLP's predictor flags of a quantized run are accepted: --inference_model (bare or valued), --mode dynamic
q2=$("$OAR" predict --model_name_or_path "$M" --inference_model --mode dynamic --quant_type weight_only_int8 \
  --prompt "hello" --max_length 6 --decode_strategy greedy_search)
[ "$q2" = "$q" ] || die "--inference_model --mode dynamic changed the output"
"$OAR" predict --model_name_or_path "$M" --inference_model false --prompt hi --max_length 2 >/dev/null \
  || die "--inference_model false"
# a8w8 (integer products with per-token activation steps) through predict and perplexity; a8w8c8 adds the
# static int8 KV cache, so it needs the engine and a cachekv_scales.json (a clear error without).
"$OAR" predict --model_name_or_path "$M" --quant_type a8w8 --benchmark --src_length 16 --max_length 4 \
  --benchmark_warmup 0 --benchmark_rounds 1 > bench_a8.txt 2>/dev/null
grep -q "weights a8w8" bench_a8.txt || { cat bench_a8.txt; die "a8w8 benchmark does not name its weights"; }
# (windows of 32 tokens: past the GEMV's 16 rows, through the integer GEMM)
printf 'the quick brown fox jumps over the lazy dog. %.0s' $(seq 1 8) > q8.txt
"$OAR" perplexity --model_name_or_path "$M" --quant_type a8w8 --input_file q8.txt --ctx 32 > ppl_a8.txt
"$OAR" perplexity --model_name_or_path "$M" --input_file q8.txt --ctx 32 > ppl_f32.txt
python3 - ppl_a8.txt ppl_f32.txt <<'PY' || die "a8w8 perplexity is not close to float32's"
import sys
a, f = (float(open(p).read().split()[1]) for p in sys.argv[1:3])
assert a != f and abs(a / f - 1) < 0.05, (a, f)  # quantized, and close
PY
# PaddleNLP's act_scales.json beside the model: static activation steps instead of per-token ones
MS="$WORK/tiny_static"; mkdir -p "$MS"; ln -sf "$M"/* "$MS"/
python3 - "$MS" <<'PY'
import json, sys
n = json.load(open(sys.argv[1] + "/config.json"))["num_hidden_layers"]
keys = ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"]
json.dump({f"llama.layers.{l}.{k}.activation_quanter": 6.0 for l in range(n) for k in keys},
          open(sys.argv[1] + "/act_scales.json", "w"))
PY
"$OAR" perplexity --model_name_or_path "$MS" --quant_type a8w8 --input_file q8.txt --ctx 32 > ppl_static.txt
python3 - ppl_static.txt ppl_a8.txt <<'PY' || die "a8w8 with act_scales.json gave the dynamic result"
import sys, math
s, d = (float(open(p).read().split()[1]) for p in sys.argv[1:3])
assert math.isfinite(s) and s != d, (s, d)
PY
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d.pop('llama.layers.0.mlp.down_proj.activation_quanter'); json.dump(d, open(sys.argv[1],'w'))" "$MS/act_scales.json"
set +e; "$OAR" perplexity --model_name_or_path "$MS" --quant_type a8w8 --input_file q8.txt --ctx 16 >/dev/null 2>err.txt; rc=$?; set -e
[ $rc -eq 2 ] && grep -q "act_scales.json: no activation scale for layer 0's mlp.down_proj" err.txt \
  || { cat err.txt; die "a8w8: a layer missing from act_scales.json (exit $rc)"; }
echo "ok: a8w8 reads PaddleNLP's act_scales.json (perplexity $(cut -d' ' -f2 ppl_static.txt) with static steps) and names a missing scale"
expect_a8c8_err() {  # expect_a8c8_err PATTERN ARGS...
  local pat="$1"; shift
  set +e; "$OAR" predict --model_name_or_path "$M" --quant_type a8w8c8 --prompt hi --max_length 4 "$@" >/dev/null 2>err.txt
  local rc=$?; set -e
  [ $rc -eq 2 ] && grep -q -- "$pat" err.txt || { cat err.txt; die "a8w8c8 $*: want exit 2 mentioning $pat (got $rc)"; }
}
expect_a8c8_err "a8w8c8 needs --block_attn"
expect_a8c8_err "cachekv_scales.json" --block_attn
expect_a8c8_err "contradicts --quant_type a8w8c8" --block_attn --cachekv_int8 false
q=$("$OAR" predict --model_name_or_path "$M" --quant_type a8w8c8 --cachekv_int8_type dynamic --block_attn --prompt hello \
  --max_length 6 --decode_strategy greedy_search)
[ -n "$q" ] || die "a8w8c8 with a dynamic int8 cache printed nothing"
echo "ok: --quant_type a8w8 in predict and perplexity (perplexity $(cut -d' ' -f2 ppl_a8.txt) against $(cut -d' ' -f2 ppl_f32.txt)); a8w8c8's cache"
# weight_only_int4 in groups: the tiny model's FFN width (172) is no whole number of groups; a model whose is runs
expect_q4_err() {
  set +e; "$OAR" predict --model_name_or_path "$M" --quant_type weight_only_int4 --weightonly_group_size 64 --prompt hi \
    --max_length 4 >/dev/null 2>err.txt; local rc=$?; set -e
  [ $rc -eq 2 ] && [ "$(wc -l < err.txt)" -eq 1 ] && grep -q "mlp.down_proj.weight: weight_only_int4: .*groups of 64" err.txt \
    || { cat err.txt; die "int4 on a width of 172: want exit 2 naming the tensor (got $rc)"; }
}
expect_q4_err
M110="$WORK/m110"
"$OAR" create-model --preset llama-110m --dtype float32 --vocab_size 512 --output_dir "$M110" --force >/dev/null
"$OAR" predict --model_name_or_path "$M110" --quant_type weight_only_int4 --weightonly_group_size 128 --benchmark \
  --src_length 16 --max_length 4 --benchmark_warmup 0 --benchmark_rounds 1 > bench4.txt 2>/dev/null
grep -q "weights weight_only_int4" bench4.txt || { cat bench4.txt; die "int4 benchmark does not name its weights"; }
rm -rf "$M110"
echo "ok: weight_only_int4 runs in groups of 128 and names the tensor it cannot group"

# perplexity of a text file; env
printf 'the quick brown fox jumps over the lazy dog. %.0s' $(seq 1 20) > text.txt
"$OAR" perplexity --model_name_or_path "$M" --input_file text.txt --ctx 32 | grep -Eq '^perplexity: [0-9.]+ ' || die "perplexity"
"$OAR" env | grep -q "ISA" || die "env"
echo "ok: perplexity and env"

# errors: one line on stderr, exit code 2, naming the file or flag
expect_err() {  # expect_err PATTERN CMD...
  local pat="$1"; shift
  set +e; "$@" >/dev/null 2>err.txt; rc=$?; set -e
  [ $rc -eq 2 ] || { cat err.txt; die "exit $rc (want 2): $*"; }
  [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt; die "want exactly one error line: $*"; }
  grep -q -- "$pat" err.txt || { cat err.txt; die "error should mention '$pat': $*"; }
}
echo '{"src": "ok"}' > bad.json; echo '{"src": ' >> bad.json
expect_err "bad.json:2" "$OAR" predict --model_name_or_path "$M" --data_file bad.json --output_file o2.json
[ ! -e o2.json ] || die "no output file may be left after an error"
expect_err "no_such_dir" "$OAR" predict --model_name_or_path no_such_dir --prompt hi
expect_err "--top_p" "$OAR" predict --model_name_or_path "$M" --prompt hi --top_p 1.5
expect_err "--decode_strategy" "$OAR" predict --model_name_or_path "$M" --prompt hi --decode_strategy beam
expect_err "--dtype" "$OAR" predict --model_name_or_path "$M" --prompt hi --dtype int4
expect_err "--weightonly_group_size 64: a8w8 is per channel" "$OAR" predict --model_name_or_path "$M" --prompt hi --quant_type a8w8 --weightonly_group_size 64
expect_err "--mode static runs an oar export" "$OAR" predict --model_name_or_path "$M" --prompt hi --mode static
expect_err "--mode fast: expected dynamic or static" "$OAR" predict --model_name_or_path "$M" --prompt hi --mode fast
expect_err "--inference_model: expected true or false" "$OAR" predict --model_name_or_path "$M" --prompt hi --inference_model maybe
expect_err "--quant_type: 'int3'" "$OAR" perplexity --model_name_or_path "$M" --input_file text.txt --quant_type int3
expect_err "context" "$OAR" predict --model_name_or_path "$M" --prompt "$(printf 'word %.0s' $(seq 1 600))" --src_length 4000 --max_length 10
expect_err "ctx" "$OAR" perplexity --model_name_or_path "$M" --input_file text.txt --ctx 100000
expect_err "no_such_flag" "$OAR" predict --model_name_or_path "$M" --no_such_flag 1
echo "ok: errors are one line with exit code 2"

# A prompt longer than --src_length (here the default 1024, on a 512-position model) keeps its end: two prompts
# with different starts and the same long end give the same greedy tokens, and at least one token is generated.
tail_words=$(for i in $(seq 1 300); do printf 'w%d ' "$i"; done)
printf '{"src": "%s"}\n{"src": "%s"}\n' "alpha beta gamma delta $tail_words" "zeta eta theta $tail_words" > long.json
"$OAR" predict --model_name_or_path "$M" --data_file long.json --output_file long_out.json --max_length 3 \
  --decode_strategy greedy_search 2>long.err || { cat long.err; die "a prompt longer than the context must keep its end"; }
python3 - long_out.json <<'PY' || die "long prompts: same end, same output"
import json, sys
a, b = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
assert a["output_ids"] == b["output_ids"] and len(a["output_ids"]) >= 1, (a["output_ids"], b["output_ids"])
print("ok: prompts past --src_length and the context keep their end (%d tokens generated)" % len(a["output_ids"]))
PY
# an explicit --src_length shorter than the prompt: the same
"$OAR" predict --model_name_or_path "$M" --data_file long.json --output_file long16.json --max_length 3 --src_length 16 \
  --decode_strategy greedy_search 2>/dev/null || die "--src_length 16 with long prompts"
python3 -c 'import json,sys; a,b=[json.loads(l) for l in open("long16.json")]; assert a["output_ids"]==b["output_ids"]' \
  || die "--src_length 16 must keep the prompts' (identical) ends"

# create-model prints the parameter count in sensible units; the help lists only commands that exist.
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$WORK/tiny2" --force > created.txt
grep -Eq ', [0-9.]+K parameters,' created.txt || { cat created.txt; die "tiny's parameter count should be in K"; }
"$OAR" --help > help.txt
grep -q "^ *quantize " help.txt || { cat help.txt; die "the help does not list quantize"; }
"$OAR" quantize --help > qhelp.txt
grep -q "ptq_argument.json" qhelp.txt || die "oar quantize --help"
echo "ok: create-model's parameter count in K/M/B; the help lists quantize, which exists"
