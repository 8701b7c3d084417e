#!/usr/bin/env bash
# --cachekv_int8 / --cachekv_int8_type mean the same to predict, perplexity and serve (one parser,
# cli/model_loading.h): "static" is accepted by all three (they then look for cachekv_scales.json), bad values
# and contradictions are one error line naming the flag, exit 2, before any model loads.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null
rm -f "$M/cachekv_scales.json"
echo "some text to score for perplexity, long enough for a window or two of tokens" > text.txt

# run_cmd KIND ARGS...: one of the three commands with its required arguments, then ARGS.
run_cmd() {
  local kind="$1"; shift
  case "$kind" in
    predict) "$OAR" predict --model_name_or_path "$M" --prompt hi --max_length 4 --block_attn "$@" ;;
    perplexity) "$OAR" perplexity --model_name_or_path "$M" --input_file text.txt --ctx 16 "$@" ;;
    serve) "$OAR" serve --model_name_or_path "$M" --port 0 "$@" ;;
  esac
}
# expect_err KIND PATTERN ARGS...: exit 2, one line on stderr, containing PATTERN.
expect_err() {
  local kind="$1" pat="$2"; shift 2
  set +e; timeout 60 bash -c "$(declare -f run_cmd); OAR='$OAR' M='$M' run_cmd $kind $*" >out.txt 2>err.txt; local rc=$?; set -e
  [ $rc -eq 2 ] && [ "$(wc -l < err.txt)" -eq 1 ] && grep -qF -- "$pat" err.txt \
    || { cat err.txt; die "$kind $*: want exit 2 and one line with '$pat' (got $rc)"; }
}
# "static" (and the other spellings of it) reaches the scales lookup in every command.
for kind in predict perplexity serve; do
  expect_err $kind "cachekv_scales.json" --cachekv_int8 static
  expect_err $kind "cachekv_scales.json" --cachekv_int8 --cachekv_int8_type static
  expect_err $kind "cachekv_scales.json" --cachekv_int8_type static
done
for kind in predict perplexity serve; do
  expect_err $kind "--cachekv_int8: 'int4'" --cachekv_int8 int4
  expect_err $kind "--cachekv_int8_type: 'int4' is not supported" --cachekv_int8_type int4
  expect_err $kind "--cachekv_int8 static contradicts --cachekv_int8_type dynamic" --cachekv_int8 static --cachekv_int8_type dynamic
  echo "ok: $kind parses --cachekv_int8 like the others"
done
echo "cachekv_flags: all checks passed"
