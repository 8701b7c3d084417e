#!/usr/bin/env bash
# LoRA on the command line: `oar predict --lora_path` and `oar perplexity --lora_path` merge an adapter in memory
# (as PaddleNLP's predictor does) and give exactly what the checkpoint written by `oar merge-lora` gives; the
# merged directory is complete (tokenizer copied) and written atomically; bad adapters are one-line errors.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
UNIT="$(dirname "$OAR")/oar_unit_tests"
[ -x "$UNIT" ] || die "no oar_unit_tests beside $OAR"
rm -rf tiny ours merged
"$OAR" create-model --preset tiny --dtype float32 --output_dir tiny >/dev/null
# A random adapter (r 4, alpha 8, all seven projections) for this model, written by lora_io.
OAR_LORA_INTEROP_DIR="$WORK/ours" OAR_LORA_INTEROP_BASE="$WORK/tiny" "$UNIT" --gtest_filter='LoraInterop.WritesAdapterAndLogits' \
  > unit.log 2>&1 || { cat unit.log; die "oar_unit_tests could not write the adapter"; }
A="$WORK/ours/adapter"

"$OAR" merge-lora --model_name_or_path tiny --lora_path "$A" --output_path merged | grep -q "r 4, alpha 8, scaling 2, 14 weights" \
  || die "merge-lora summary"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
  [ -f "merged/$f" ] || die "merged checkpoint lacks $f"
done
cmp -s tiny/config.json merged/config.json || die "config.json must be the base's"
[ -z "$(ls -d merged.tmp* 2>/dev/null)" ] || die "a temporary directory was left behind"
echo "ok: merge-lora wrote a complete Hugging Face directory"

ppl() { "$OAR" perplexity "$@" --input_file text.txt --ctx 32 | sed -E 's/^perplexity: ([0-9.]+) .*/\1/'; }
printf 'the quick brown fox jumps over the lazy dog. %.0s' $(seq 1 8) > text.txt
p_base=$(ppl --model_name_or_path tiny)
p_lora=$(ppl --model_name_or_path tiny --lora_path "$A")
p_merged=$(ppl --model_name_or_path merged)
[ "$p_lora" = "$p_merged" ] || die "perplexity with --lora_path ($p_lora) differs from the merged checkpoint's ($p_merged)"
[ "$p_lora" != "$p_base" ] || die "--lora_path did not change the perplexity ($p_base)"
echo "ok: perplexity --lora_path $p_lora = merged $p_merged (base $p_base)"

printf '%s\n' '{"src": "hello world"}' '{"src": "the cat sat"}' > in.json
gen() { "$OAR" predict "$@" --data_file in.json --max_length 12 --decode_strategy greedy_search >/dev/null; }
gen --model_name_or_path tiny --lora_path "$A" --output_file out_lora.json
gen --model_name_or_path merged --output_file out_merged.json
cmp -s out_lora.json out_merged.json || die "predict --lora_path differs from predict on the merged checkpoint"
echo "ok: predict --lora_path = predict on the merged checkpoint"

# errors: one line on stderr, exit code 2, naming the file
expect_err() {  # expect_err PATTERN CMD...
  local pat="$1"; shift
  set +e; "$@" >/dev/null 2>err.txt; rc=$?; set -e
  [ $rc -eq 2 ] || { cat err.txt; die "exit $rc (want 2): $*"; }
  [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt; die "want exactly one error line: $*"; }
  grep -q -- "$pat" err.txt || { cat err.txt; die "error should mention '$pat': $*"; }
}
expect_err "$WORK/nope" "$OAR" predict --model_name_or_path tiny --lora_path "$WORK/nope" --prompt hi --max_length 2
expect_err "lora/gqa_peft/adapter_model.safetensors" \
  "$OAR" predict --model_name_or_path tiny --lora_path "$SRC/tests/fixtures/lora/gqa_peft" --prompt hi --max_length 2
expect_err "no adapter_config.json" "$OAR" perplexity --model_name_or_path tiny --lora_path tiny --input_file text.txt
expect_err "already exists" "$OAR" merge-lora --model_name_or_path tiny --lora_path "$A" --output_path merged
expect_err "lora_path" "$OAR" merge-lora --model_name_or_path tiny --output_path merged2
"$OAR" merge-lora --model_name_or_path tiny --lora_path "$A" --output_path merged --force >/dev/null || die "--force"
echo "ok: errors"
