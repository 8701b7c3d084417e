#!/usr/bin/env bash
# Broken model directories make `oar predict` fail cleanly: exit code 2, exactly one line on stderr that names the
# offending file (or directory), nothing on stdout and no output file written. The valid models must run (exit 0).
# The cases are made by make_bad_inputs.py (listed in $WORK/models/cases.tsv). Then other bad input the same way:
# huge or deeply nested data lines (with bounded memory), out-of-range flags, a directory or an empty file for a
# text file, a full disk under create-model.
# Environment (set by ctest): OAR = the oar binary, SRC = the repository root, WORK = a scratch directory.
set -u

fail() {
  echo "bad_input.sh: FAIL: $*" >&2
  exit 1
}

[ -n "${OAR:-}" ] && [ -x "$OAR" ] || fail "OAR must name the oar binary (got '${OAR:-}')"
[ -n "${SRC:-}" ] && [ -d "$SRC" ] || fail "SRC must name the repository root (got '${SRC:-}')"
[ -n "${WORK:-}" ] || fail "WORK must name a scratch directory"
if ! command -v python3 >/dev/null; then
  echo "bad_input.sh: python3 not found; skipping"
  exit 77
fi

mkdir -p "$WORK" || fail "cannot create $WORK"
models="$WORK/models"
runs="$WORK/runs"
rm -rf "$runs"
mkdir -p "$runs"
python3 "$SRC/tests/cli/make_bad_inputs.py" --src "$SRC" --out "$models" || fail "make_bad_inputs.py failed"
tokenizer="$SRC/tests/fixtures/tokenizers/spm/tokenizer.model"
[ -f "$tokenizer" ] || fail "$tokenizer is missing (the SentencePiece fixture); the test models have no tokenizer"

count=0
while IFS=$'\t' read -r name want_rc expect; do
  dir="$models/$name"
  cwd="$runs/$name"  # an empty working directory: anything written into it is an output file
  out="$runs/$name.stdout"
  err="$runs/$name.stderr"
  mkdir -p "$cwd"
  (cd "$cwd" && timeout 300 "$OAR" predict --model_name_or_path "$dir" --prompt hello --max_length 2 \
    --decode_strategy greedy_search </dev/null >"$out" 2>"$err")
  rc=$?
  if [ "$want_rc" = 0 ]; then
    [ "$rc" -eq 0 ] || fail "$name: the valid model exited $rc, not 0; stderr: $(head -c 2000 "$err")"
  else
    [ "$rc" -eq "$want_rc" ] || fail "$name: exit code $rc, expected $want_rc; stderr: $(head -c 2000 "$err")"
    lines=$(grep -c '' "$err")
    [ "$lines" -eq 1 ] || fail "$name: expected exactly one line on stderr, got $lines: $(head -c 2000 "$err")"
    [ -n "$(tr -d '[:space:]' <"$err")" ] || fail "$name: the stderr line is empty"
    named=0
    IFS='|' read -ra names <<<"$expect"
    for n in "${names[@]}"; do
      grep -qF -- "$n" "$err" && named=1
    done
    [ "$named" -eq 1 ] || fail "$name: the error does not name any of [$expect]: $(cat "$err")"
    [ ! -s "$out" ] || fail "$name: stdout is not empty: $(head -c 2000 "$out")"
    [ -z "$(ls -A "$cwd")" ] || fail "$name: files were written: $(ls -A "$cwd")"
  fi
  echo "ok   $name (exit $rc) $(head -c 300 "$err")"
  count=$((count + 1))
done <"$models/cases.tsv"

[ "$count" -gt 0 ] || fail "no cases in $models/cases.tsv"
echo "bad_input.sh: all $count model cases passed"

# ---- other bad input: data files, flags, files of the wrong kind, a full disk ----
# expect_err NAME PATTERN CMD...: exit 2, one line on stderr containing PATTERN, nothing on stdout (unless
# LOG_ON_STDOUT is set: training logs its setup on stdout before it reads the data).
other="$runs/other"
mkdir -p "$other"
expect_err() {
  local name="$1" pat="$2"; shift 2
  (cd "$other" && "$@" </dev/null >"$runs/$name.stdout" 2>"$runs/$name.stderr")
  local rc=$?
  local err="$runs/$name.stderr"
  [ "$rc" -eq 2 ] || fail "$name: exit code $rc, expected 2; stderr: $(head -c 2000 "$err")"
  [ "$(grep -c '' "$err")" -eq 1 ] || fail "$name: expected exactly one line on stderr: $(head -c 2000 "$err")"
  grep -qF -- "$pat" "$err" || fail "$name: the error does not contain '$pat': $(head -c 2000 "$err")"
  [ -n "${LOG_ON_STDOUT:-}" ] || [ ! -s "$runs/$name.stdout" ] || fail "$name: stdout is not empty: $(head -c 2000 "$runs/$name.stdout")"
  # values are printed compactly (CLI11's own range check printed DBL_MAX with 309 digits)
  [ "$(wc -c <"$err")" -lt 400 ] || fail "$name: the error line is $(wc -c <"$err") bytes long: $(head -c 600 "$err")"
  echo "ok   $name $(cat "$err")"
}
valid="$models/valid"
pred=("$OAR" predict --model_name_or_path "$valid" --tokenizer_name_or_path "$tokenizer" --max_length 2
      --decode_strategy greedy_search)

# One huge data line: an error naming the file and line once it passes the limit (4 MiB by default), with
# memory bounded by the limit, not by the line (a 200 MB line used to take oar finetune to 23 GB).
python3 - "$other" <<'PY' || fail "writing the data files failed"
import json, os, sys
d = sys.argv[1]
big = json.dumps({"src": "x" * (5 << 20), "tgt": "y"})  # just past the 4 MiB default
os.makedirs(os.path.join(d, "sft"), exist_ok=True)
with open(os.path.join(d, "sft", "train.json"), "w") as f:
    f.write(json.dumps({"src": "a", "tgt": "b"}) + "\n" + big + "\n")
with open(os.path.join(d, "sft", "dev.json"), "w") as f:
    f.write(json.dumps({"src": "a", "tgt": "b"}) + "\n")
with open(os.path.join(d, "data.json"), "w") as f:
    f.write(json.dumps({"src": "a"}) + "\n" + big + "\n")
with open(os.path.join(d, "corpus.jsonl"), "w") as f:
    f.write(json.dumps({"text": "a b"}) + "\n" + json.dumps({"text": "x" * (5 << 20)}) + "\n")
with open(os.path.join(d, "deep.json"), "w") as f:
    f.write('{"src": ' + "[" * 70000 + "]" * 70000 + "}\n")
PY
have_time=0
/usr/bin/time -v true >/dev/null 2>&1 && have_time=1
[ "$have_time" -eq 1 ] || echo "note: no GNU time (/usr/bin/time -v): peak memory not checked"
timed() {  # timed NAME CMD...: CMD under GNU time -v when available (its report goes to $runs/NAME.time)
  local name="$1"; shift
  if [ "$have_time" -eq 1 ]; then /usr/bin/time -v -o "$runs/$name.time" "$@"; else "$@"; fi
}
check_peak() {  # check_peak NAME: peak RSS under 300 MiB (the line is 5 MiB; whole-line handling took GBs)
  [ "$have_time" -eq 1 ] || return 0
  local kib
  kib=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): //p' "$runs/$1.time")
  [ -n "$kib" ] && [ "$kib" -lt 307200 ] || fail "$1: peak memory ${kib:-?} KiB, expected under 300 MiB"
  echo "     $1: peak memory $((kib / 1024)) MiB"
}
expect_err predict_huge_line "data.json:2: line is longer than 4 MiB" \
  timed predict_huge_line "${pred[@]}" --data_file data.json
check_peak predict_huge_line
expect_err predict_deep_line "deep.json:1: invalid JSON: nested deeper than" "${pred[@]}" --data_file deep.json
expect_err preprocess_huge_line "corpus.jsonl:2: line is longer than 4 MiB" timed preprocess_huge_line \
  "$OAR" preprocess --model_name_or_path "$tokenizer" --input_path corpus.jsonl --output_prefix pre/corpus
check_peak preprocess_huge_line
[ ! -e "$other/pre" ] || fail "preprocess_huge_line: left $other/pre behind"
cat >"$other/ft.json" <<EOF
{"model_name_or_path": "$valid", "tokenizer_name_or_path": "$tokenizer", "dataset_name_or_path": "sft",
 "output_dir": "ft_out", "src_length": 8, "max_length": 16, "max_steps": 1, "do_train": true, "do_eval": false}
EOF
LOG_ON_STDOUT=1 expect_err finetune_huge_line "train.json:2: line is longer than 4 MiB" timed finetune_huge_line "$OAR" finetune ft.json
check_peak finetune_huge_line
# ...and OAR_MAX_LINE_BYTES sets the limit.
expect_err predict_line_limit_env "data.json:2: line is longer than 1000 bytes" \
  env OAR_MAX_LINE_BYTES=1000 "${pred[@]}" --data_file data.json

# Integer flags: overflow and range errors name the flag; bounds are printed compactly.
expect_err max_length_overflow "--max_length" "${pred[@]}" --prompt hi --max_length 99999999999999999999
expect_err batch_size_zero "--batch_size" "${pred[@]}" --prompt hi --batch_size 0
expect_err top_k_negative "--top_k" "${pred[@]}" --prompt hi --top_k -1
expect_err ctx_not_integer "--ctx" "$OAR" perplexity --model_name_or_path "$valid" --input_file data.json --ctx 1e3
expect_err pretrain_max_steps_overflow "--max_steps" "$OAR" pretrain --max_steps 99999999999999999999
expect_err serve_max_num_seqs_overflow "--max_num_seqs" "$OAR" serve --model_name_or_path "$valid" --max_num_seqs 99999999999999999999
expect_err serve_port_range "--port" "$OAR" serve --model_name_or_path "$valid" --port 70000
expect_err serve_kv_memory_zero "--kv_cache_memory_gb" "$OAR" serve --model_name_or_path "$valid" --kv_cache_memory_gb 0
expect_err src_length_past_context "--src_length" "${pred[@]}" --prompt hi --src_length 100000

# A directory or an empty file where a text file should be.
: >"$other/empty.txt"
expect_err perplexity_dir "$other: is a directory" "$OAR" perplexity --model_name_or_path "$valid" \
  --tokenizer_name_or_path "$tokenizer" --input_file "$other" --ctx 32
expect_err perplexity_empty "empty.txt: is empty" "$OAR" perplexity --model_name_or_path "$valid" \
  --tokenizer_name_or_path "$tokenizer" --input_file empty.txt --ctx 32

# A full disk (simulated by a file-size limit: writes fail with EFBIG) while create-model writes: one line,
# and neither the temporary directory nor the output is left behind.
expect_err create_model_full_disk "model.safetensors" bash -c 'ulimit -f 64 && exec "$@"' limited \
  "$OAR" create-model --preset tiny --dtype float32 --output_dir made
[ -z "$(ls -A "$other" | grep made)" ] || fail "create_model_full_disk: left $(ls -A "$other" | grep made)"

echo "bad_input.sh: all cases passed"
