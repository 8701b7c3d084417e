#!/usr/bin/env bash
# oar preprocess end to end: JSON lines -> PREFIX.bin/PREFIX.idx in PaddleNLP's MMIDIDX format (uint16 below
# 65535 tokens of vocabulary, int32 above), read back the way PaddleNLP's reader does (NumPy over the raw
# bytes), the summary line, --append_eos, and one-line errors (exit 2) that leave no output behind.
# Environment (set by ctest): OAR = the oar binary, SRC = the repository root, SHARED = ../shared/data, WORK = scratch.
set -euo pipefail
die() { echo "FAIL: $*"; exit 1; }
mkdir -p "$WORK"; cd "$WORK"
rm -rf corpus out* err.txt
M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null

mkdir -p corpus/sub
printf '%s\n' '{"text": "the quick brown fox"}' '{"text": "   "}' '' '{"text": "jumps over the lazy dog", "id": 2}' > corpus/b.jsonl
printf '%s\n' '{"text": "hello world"}' > corpus/sub/a.jsonl
echo 'ignored' > corpus/readme.txt

out=$("$OAR" preprocess --input_path corpus --json_key text --model_name_or_path "$M" --output_prefix out)
echo "$out"
[ -f out.bin ] && [ -f out.idx ] || die "no output files"
echo "$out" | grep -Eq '^wrote .*out\.bin and .*out\.idx \(uint16\): 3 documents, 3 sequences, [0-9]+ tokens from 2 files' \
  || die "summary line"
tokens=$(echo "$out" | sed -E 's/.* ([0-9]+) tokens.*/\1/')
ls | grep -q 'tmp' && die "temporary files left behind"

out2=$("$OAR" preprocess --input_path corpus --model_name_or_path "$M" --output_prefix out_eos --append_eos)
tokens2=$(echo "$out2" | sed -E 's/.* ([0-9]+) tokens.*/\1/')
[ "$tokens2" -eq $((tokens + 3)) ] || die "--append_eos should add one token per document ($tokens -> $tokens2)"

# Read the files as PaddleNLP's MMapIndexedDataset does: header fields, then sizes/pointers/doc_idx arrays.
if /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
/usr/bin/python3 - out out_eos "$tokens" <<'PY' || die "format check"
import sys, numpy as np
codes = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
         9: np.uint32, 10: np.uint64}
def read(prefix):
    buf = open(prefix + ".idx", "rb").read()
    assert buf[:9] == b"MMIDIDX\x00\x00", buf[:9]
    version = np.frombuffer(buf, "<u8", 1, 9)[0]
    code = buf[17]
    n = int(np.frombuffer(buf, "<u8", 1, 18)[0]); d = int(np.frombuffer(buf, "<u8", 1, 26)[0])
    sizes = np.frombuffer(buf, np.int32, n, 34)
    ptrs = np.frombuffer(buf, np.int64, n, 34 + 4 * n)
    doc_idx = np.frombuffer(buf, np.int64, d, 34 + 12 * n)
    data = np.memmap(prefix + ".bin", mode="r", dtype=codes[code])
    seqs = [data[p // data.itemsize: p // data.itemsize + s].tolist() for p, s in zip(ptrs, sizes)]
    return version, code, doc_idx.tolist(), seqs, len(data)
v, code, doc_idx, seqs, total = read(sys.argv[1])
assert v == 1 and code == 8, (v, code)             # uint16 for a 512-token vocabulary
assert doc_idx == [0, 1, 2, 3], doc_idx
assert total == int(sys.argv[3]), total
assert all(len(s) > 0 for s in seqs)
_, _, _, seqs_eos, _ = read(sys.argv[2])
eos = [s[-1] for s in seqs_eos]
assert len(set(eos)) == 1 and all(a + [eos[0]] == b for a, b in zip(seqs, seqs_eos)), (seqs, seqs_eos)
print("ok: PaddleNLP-style read of out.idx/out.bin:", len(seqs), "sequences")
PY
else
  echo "skip: NumPy not found for the PaddleNLP-style read"
fi

# Llama-3's tokenizer (128256 tokens) -> int32, code 4
if [ -f "$SHARED/llama3_tokenizer/tokenizer.json" ]; then
  "$OAR" preprocess --input_path corpus/sub/a.jsonl --model_name_or_path "$SHARED/llama3_tokenizer" --output_prefix out32 \
    | grep -q '(int32): 1 documents' || die "int32 for a large vocabulary"
  [ "$(od -An -tu1 -j17 -N1 out32.idx | tr -d ' ')" = 4 ] || die "dtype code 4 for int32"
  echo "ok: int32 output for Llama-3's vocabulary"
else
  echo "skip: ../shared/data/llama3_tokenizer not found (optional)"
fi

# Errors: one line on stderr, exit code 2, naming the file (and line); no output written.
expect_err() {  # expect_err PATTERN CMD...
  local pat="$1"; shift
  set +e; "$@" >/dev/null 2>err.txt; rc=$?; set -e
  [ $rc -eq 2 ] || { cat err.txt; die "exit $rc (want 2): $*"; }
  [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt; die "want exactly one error line: $*"; }
  grep -q -- "$pat" err.txt || { cat err.txt; die "error should mention '$pat': $*"; }
}
printf '%s\n' '{"text": "fine"}' '{"txt": "no key"}' > bad.jsonl
expect_err 'bad.jsonl:2: no "text" key' "$OAR" preprocess --input_path bad.jsonl --model_name_or_path "$M" --output_prefix outbad
[ ! -e outbad.bin ] && [ ! -e outbad.idx ] || die "output left after an error"
ls | grep -q 'outbad' && die "temporary files left after an error"
expect_err 'missing.jsonl' "$OAR" preprocess --input_path missing.jsonl --model_name_or_path "$M" --output_prefix outbad
# the output directory is created, and removed again when the run fails
expect_err 'bad.jsonl:2' "$OAR" preprocess --input_path bad.jsonl --model_name_or_path "$M" --output_prefix no/such/dir/x
[ ! -e no ] || die "a failed run left its new output directory behind"
expect_err 'cannot create the directory' "$OAR" preprocess --input_path corpus --model_name_or_path "$M" --output_prefix bad.jsonl/x
rm -rf made
"$OAR" preprocess --input_path corpus --model_name_or_path "$M" --output_prefix made/deeper/corpus >/dev/null \
  || die "preprocess must create its output directory"
[ -s made/deeper/corpus.bin ] && [ -s made/deeper/corpus.idx ] || die "no .bin/.idx in the new output directory"
expect_err 'output_prefix' "$OAR" preprocess --input_path bad.jsonl --model_name_or_path "$M"
expect_err 'data_impl' "$OAR" preprocess --input_path corpus --model_name_or_path "$M" --output_prefix outbad --data_impl lazy
echo "ok: errors"
