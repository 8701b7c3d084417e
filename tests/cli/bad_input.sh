#!/usr/bin/env bash
# Broken model directories make `oar predict` fail cleanly: exit code 2, exactly one line on stderr that names the
# offending file (or directory), nothing on stdout and no output file written. The valid models must run (exit 0).
# The cases are made by make_bad_inputs.py (listed in $WORK/models/cases.tsv).
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
echo "bad_input.sh: all $count cases passed"
