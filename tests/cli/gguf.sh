#!/usr/bin/env bash
# GGUF files (llama.cpp's format) end to end: predict with the tokenizer embedded in the file, Q4_0 kept 4-bit,
# float16 kept with --dtype float16, a quantized GGUF quantized again at load with --quant_type, and a truncated
# or lying file refused with exit 2 and no output file. The logits themselves are checked in the unit tests (Gguf.*).
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
F="$SRC/tests/fixtures/gguf"

echo '{"src": "hello"}' > in.json
for f in mha_q8_0 mha_f32; do
  "$OAR" predict --model_name_or_path "$F/$f.gguf" --data_file in.json --output_file "$f.json" --max_length 6 \
    --decode_strategy greedy_search >/dev/null
  python3 - "$f.json" <<'PY' || die "$f.gguf: output"
import json, sys
row = json.loads(open(sys.argv[1]).read())
assert row["src"] == "hello" and len(row["output_ids"]) == 6, row
PY
done
echo "ok: predict reads Q8_0 and F32 GGUF files with their embedded tokenizer"

# Q4_0 stays 4-bit: oar's weight_only_int4 in groups of 32, as stored.
"$OAR" predict --model_name_or_path "$F/mha_q4_0.gguf" --benchmark --src_length 8 --max_length 4 --batch_size 1 \
  --benchmark_warmup 0 --benchmark_rounds 1 > bench.txt 2>/dev/null
grep -q '^oar: dtype bfloat16, weights weight_only_int4,' bench.txt || { cat bench.txt; die "Q4_0 GGUF: weights not kept as int4"; }
echo "ok: a Q4_0 GGUF keeps its 4-bit weights (bfloat16 compute by default)"
"$OAR" predict --model_name_or_path "$F/mha_q4_0.gguf" --quant_type weight_only_int8 --benchmark --src_length 8 \
  --max_length 4 --batch_size 1 --benchmark_warmup 0 --benchmark_rounds 1 > bench.txt 2>/dev/null
grep -q '^oar: dtype bfloat16, weights weight_only_int8,' bench.txt || { cat bench.txt; die "Q4_0 GGUF: --quant_type ignored"; }
echo "ok: --quant_type weight_only_int8 quantizes a Q4_0 GGUF's projections again"

# PaddleNLP's --dtype float16: the weights stay float16 (zero-copy from an F16 file).
"$OAR" predict --model_name_or_path "$F/mha_f16.gguf" --dtype float16 --benchmark --src_length 16 --max_length 4 \
  --batch_size 1 --benchmark_warmup 0 --benchmark_rounds 1 > bench.txt 2>/dev/null
grep -q '^oar: dtype float16, weights float16,' bench.txt || { cat bench.txt; die "--dtype float16"; }
echo "ok: --dtype float16 keeps float16 weights"

# A truncated file: exit 2, one line naming it, no output file.
head -c 3000 "$F/mha_q4_0.gguf" > cut.gguf
rm -f out.json
rc=0
"$OAR" predict --model_name_or_path cut.gguf --data_file in.json --output_file out.json 2> err.txt >/dev/null || rc=$?
[ "$rc" = 2 ] || die "truncated GGUF: exit $rc, expected 2"
grep -q '^oar: error: cut.gguf: ' err.txt || { cat err.txt; die "truncated GGUF: message"; }
[ ! -e out.json ] || die "truncated GGUF: an output file was written"
# A file that claims 2^40 metadata entries.
printf 'GGUF\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00' > lie.gguf
rc=0
"$OAR" predict --model_name_or_path lie.gguf --prompt hi 2> err.txt >/dev/null || rc=$?
[ "$rc" = 2 ] && grep -q 'lie.gguf: .*cannot fit' err.txt || { cat err.txt; die "lying GGUF: exit $rc"; }
echo "ok: truncated and lying GGUF files exit 2 naming the file, no output"

# The shared Llama-2-vocabulary GGUF (F16, random weights): its 32,000-token tokenizer and its shapes load.
if [ -f "$SHARED/tiny_random_llama2_gguf/llama-2-tiny-random.gguf" ]; then
  out=$("$OAR" predict --model_name_or_path "$SHARED/tiny_random_llama2_gguf/llama-2-tiny-random.gguf" \
    --prompt "Once upon a time" --max_length 4 --decode_strategy greedy_search)
  [ -n "$out" ] || die "shared GGUF: no output"
  echo "ok: the shared Llama-2 GGUF runs"
else
  echo "skip: $SHARED/tiny_random_llama2_gguf is absent (the ../shared/data directory next to the repository)"
fi
