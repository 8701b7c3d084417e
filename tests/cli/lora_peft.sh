#!/usr/bin/env bash
# oar's LoRA adapter in Hugging Face PEFT: oar_unit_tests writes an adapter (random A and B, r 4, alpha 8) and
# oar's logits of base + adapter; `oar merge-lora` merges it; tests/reference/peft_check.py loads the adapter
# with PeftModel.from_pretrained onto transformers' LlamaForCausalLM and compares logits with oar's, and loads
# the merged checkpoint in transformers. The venv (torch from Debian, pinned transformers and peft) is made by
# tests/reference/peft_venv.sh on first use, in $OAR_PEFT_VENV or <repo>/.venv-peft; without PyPI the test
# is skipped (exit 77).
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
BASE="$SRC/tests/fixtures/models/gqa"
UNIT="$(dirname "$OAR")/oar_unit_tests"
[ -x "$UNIT" ] || die "no oar_unit_tests beside $OAR"

reference_venv peft_venv.sh "${OAR_PEFT_VENV:-}"

rm -rf ours merged
OAR_LORA_INTEROP_DIR="$WORK/ours" OAR_LORA_INTEROP_BASE="$BASE" "$UNIT" --gtest_filter='LoraInterop.WritesAdapterAndLogits' \
  > unit.log 2>&1 || { cat unit.log; die "oar_unit_tests could not write the adapter"; }
[ -f ours/adapter/adapter_config.json ] && [ -f ours/oar_logits.safetensors ] || die "no adapter or logits written"
"$OAR" merge-lora --model_name_or_path "$BASE" --lora_path ours/adapter --output_path merged >/dev/null
"$PY" "$SRC/tests/reference/peft_check.py" --base "$BASE" --adapter ours/adapter \
  --oar_logits ours/oar_logits.safetensors --merged merged 2>peft.err || { cat peft.err; die "peft_check.py"; }
