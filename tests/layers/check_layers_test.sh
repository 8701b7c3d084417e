#!/usr/bin/env bash
# The layer check (scripts/check_layers.cmake) passes on the real tree and fails, naming the file, the include and
# the rule, on each kind of violation planted in a copy: the four upward includes the layering removed, an
# undeclared dependency, a private subfolder, a ".." include and a folder that is no layer.
# Usage: check_layers_test.sh CMAKE REPO_ROOT RULES_FILE WORK_DIR
set -euo pipefail
cmake_bin=$1 repo=$2 rules=$3 work=$4
check() { "$cmake_bin" -DOAR_SRC="$1" -DOAR_LAYER_RULES="$rules" -P "$repo/scripts/check_layers.cmake" 2>&1; }
fail() { echo "FAIL: $*" >&2; exit 1; }

out=$(check "$repo/src") || fail "the real tree fails the check: $out"

# expect_violation FILE INCLUDE EXPECTED_TEXT: a fresh copy of src/ with INCLUDE added to FILE fails with the text.
expect_violation() {
  rm -rf "$work" && mkdir -p "$work" && cp -r "$repo/src" "$work/src"
  mkdir -p "$(dirname "$work/src/$1")"
  echo "#include \"$2\"" >> "$work/src/$1"
  if out=$(check "$work/src"); then fail "src/$1 including \"$2\" passed the check"; fi
  grep -qF -- "$3" <<<"$out" || fail "src/$1 including \"$2\": expected '$3' in: $out"
  echo "ok: src/$1 #include \"$2\" -> $3"
}
expect_violation kernels/kernels.h model/llama.h 'src/kernels/kernels.h: #include "model/llama.h" runs up the layers: model is above kernels'
expect_violation io/llama2c.h model/llama.h 'src/io/llama2c.h: #include "model/llama.h" runs up the layers'
expect_violation data/batching.h train/trainable_llama.h 'src/data/batching.h: #include "train/trainable_llama.h" runs up the layers: train is above data'
expect_violation infer/roofline.cpp kernels/cpu/onednn_gemm.h "src/infer/roofline.cpp: #include \"kernels/cpu/onednn_gemm.h\": kernels's subfolders are private"
expect_violation engine/engine.h data/batching.h 'src/engine/engine.h: #include "data/batching.h": engine does not depend on data'
expect_violation core/tensor.h tokenizer/tokenizer.h 'core may include nothing'
expect_violation model/llama.h ../train/trainer.h 'not with ".."'
expect_violation extras/helper.h core/error.h 'src/extras/helper.h: not in a layer folder'
rm -rf "$work"
