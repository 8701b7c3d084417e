#!/usr/bin/env bash
# The API semantics of `oar serve` end to end against Hugging Face `tokenizers` (tests/reference/serve_api_check.py):
# completion text = decode(prompt + generated) - decode(prompt) streamed and not (SentencePiece's leading space,
# characters split across tokens), echo/logprobs/max_tokens 0 returning the prompt's own tokens as HF encodes the
# text (special-token text included), n > 1, and `oar predict` on the same prompt. Runs once with the SentencePiece
# fixture tokenizer (its HF conversion spm_hf/tokenizer.json as the reference) and once with the byte-level BPE one,
# each over a tiny random model of the tokenizer's vocabulary size. `tokenizers` comes from PyPI, pinned, in a venv
# kept in the build tree; skipped (77) only when PyPI cannot be reached.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
VENV="$WORK/venv-tokenizers"
PY="$VENV/bin/python"
pip_venv "$VENV" tokenizers tokenizers==0.20.3

TOK="$SRC/tests/fixtures/tokenizers"
PROMPT='<s>Once upon</s> a <|eot_id|> time'

# run KIND VOCAB REFERENCE_TOKENIZER_JSON FILES...: a model with that tokenizer, served and checked.
run() {
  local kind=$1 vocab=$2 ref=$3; shift 3
  local M="$WORK/model_$kind"
  "$OAR" create-model --preset tiny --vocab_size "$vocab" --dtype float32 --output_dir "$M" --force >/dev/null
  rm -f "$M/tokenizer.json" "$M/tokenizer_config.json"
  cp "$@" "$M/"
  "$OAR" predict --model_name_or_path "$M" --prompt "$PROMPT" --decode_strategy greedy_search --max_length 8 \
    --output_file "predict_$kind.json" >/dev/null 2>predict_$kind.err || { cat predict_$kind.err; die "oar predict ($kind)"; }
  start_server "serve_$kind" --model_name_or_path "$M" --served_model_name tiny
  "$PY" "$SRC/tests/reference/serve_api_check.py" "$URL" tiny "$ref" "predict_$kind.json" "$PROMPT" 8 ||
    { tail -5 "serve_$kind.err"; die "API checks ($kind)"; }
  stop_server "serve_$kind"
}

run spm 700 "$TOK/spm_hf/tokenizer.json" "$TOK/spm/tokenizer.model"
run bpe 1000 "$TOK/bpe/tokenizer.json" "$TOK/bpe/tokenizer.json" "$TOK/bpe/tokenizer_config.json" "$TOK/bpe/special_tokens_map.json"
echo "serve_api: OK"
