#!/usr/bin/env bash
# PaddleNLP's own checkpoints in oar: tests/reference/paddle_interop.py (real paddlepaddle 3.0.0 CPU + paddlenlp
# 2.8.1, in the venv tests/reference/paddle_venv.sh makes on first use: $OAR_PADDLE_VENV or <repo>/.venv-paddle)
# saves a tiny random Llama as safetensors, pdparams, shards of both, fused qkv/gate_up, bfloat16 and tied, plus a
# 2-step LoRA as lora_model_state.pdparams and as a 2-file unified checkpoint, each with PaddleNLP's logits;
# oar_unit_tests PaddleInterop.* loads every one and compares logits; `oar predict` and `oar perplexity` run on
# the pickled checkpoint. Without PyPI (no venv yet) the test is skipped (exit 77).
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
UNIT="$(dirname "$OAR")/oar_unit_tests"
[ -x "$UNIT" ] || die "no oar_unit_tests beside $OAR"

reference_venv paddle_venv.sh "${OAR_PADDLE_VENV:-}"

rm -rf ref
"$PY" "$SRC/tests/reference/paddle_interop.py" make ref > make.log 2>&1 || { cat make.log; die "paddle_interop.py make"; }
OAR_PADDLE_INTEROP_DIR="$WORK/ref" "$UNIT" --gtest_filter='PaddleInterop.*' > unit.log 2>&1 ||
  { cat unit.log; die "oar's logits differ from PaddleNLP's (or a variant did not load)"; }
grep '^paddle_interop ' unit.log
[ "$(grep -c '^paddle_interop ' unit.log)" -eq 9 ] || { cat unit.log; die "expected 9 PaddleNLP variants"; }

# oar convert, both ways. To PaddleNLP's layout: PaddleNLP itself loads what oar wrote and gives the reference
# logits (from the fused, tied and pickled bfloat16 checkpoints), and so does oar. To Hugging Face's: oar reads
# it back.
rm -rf conv && mkdir conv
for v in fused tied bf16_pdparams pdparams_f32; do
  "$OAR" convert --model_name_or_path "ref/$v" --to paddle --output_path "conv/paddle_$v" >/dev/null
  "$PY" "$SRC/tests/reference/paddle_interop.py" check --rtol 1e-5 "conv/paddle_$v" "ref/$v/paddle_logits.safetensors" \
    > "check_$v.log" 2>&1 || { cat "check_$v.log"; die "PaddleNLP does not reproduce its logits from oar convert --to paddle ($v)"; }
  grep "^conv/" "check_$v.log"
  cp "ref/$v/paddle_logits.safetensors" "conv/paddle_$v/"
  "$OAR" convert --model_name_or_path "ref/$v" --to hf --output_path "conv/hf_$v" >/dev/null
  cp "ref/$v/paddle_logits.safetensors" "conv/hf_$v/"
done
grep -q '"llama.layers.0.self_attn.q_proj.weight"' conv/paddle_fused/model.safetensors || die "no Paddle names"
OAR_PADDLE_INTEROP_DIR="$WORK/conv" "$UNIT" --gtest_filter='PaddleInterop.*' > conv.log 2>&1 ||
  { cat conv.log; die "oar convert --to hf changed the logits"; }
[ "$(grep -c '^paddle_interop ' conv.log)" -eq 8 ] || { cat conv.log; die "expected 8 converted variants"; }
grep '^paddle_interop ' conv.log
# Adapters too: PaddleNLP's pickled LoRA as PaddleNLP's unified checkpoint (PaddleNLP loads it) and as PEFT's.
"$OAR" convert --model_name_or_path ref/lora_pdparams --to paddle --output_path conv/lora_paddle >/dev/null
"$PY" "$SRC/tests/reference/paddle_interop.py" check --rtol 1e-5 --lora ref/safetensors_f32 conv/lora_paddle \
  ref/lora_pdparams/paddle_logits.safetensors > check_lora.log 2>&1 ||
  { cat check_lora.log; die "PaddleNLP does not reproduce its logits from oar convert --to paddle (LoRA)"; }
grep "^conv/" check_lora.log
rm -rf lora_conv && mkdir lora_conv
"$OAR" convert --model_name_or_path conv/lora_paddle --to hf --output_path lora_conv/lora_peft >/dev/null
[ -f lora_conv/lora_peft/adapter_config.json ] || die "no PEFT adapter written"
cp ref/lora_pdparams/paddle_logits.safetensors lora_conv/lora_peft/ && echo ../ref/safetensors_f32 > lora_conv/lora_peft/base.txt
OAR_PADDLE_INTEROP_DIR="$WORK/lora_conv" "$UNIT" --gtest_filter='PaddleInterop.*' > lora_conv.log 2>&1 ||
  { cat lora_conv.log; die "the adapter converted to PEFT's layout and back changed the logits"; }
grep '^paddle_interop ' lora_conv.log
rc=0; "$OAR" convert --model_name_or_path ref/fused --to onnx --output_path conv/x 2>conv.err || rc=$?
[ $rc -eq 2 ] && grep -q -- "--to" conv.err || die "convert --to onnx: exit $rc"
# --output_path . --force would replace the directory the user stands in (and everything in it): refused.
rc=0; (cd conv && "$OAR" convert --model_name_or_path ../ref/fused --to hf --output_path . --force) 2>dot.err || rc=$?
[ $rc -eq 2 ] && grep -q "current directory" dot.err && [ -d conv/paddle_fused ] ||
  die "convert --output_path . --force: exit $rc, $(cat dot.err)"

# The CLI reads them too, with a llama.c tokenizer.bin of the model's 256 ids (specials, then byte pieces).
tokenizer_bin() {
  python3 - "$1" <<'PY'
import struct, sys
pieces = [b"<unk>", b"<s>", b"</s>"] + [b"<0x%02X>" % b for b in range(253)]
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<i", 6))
    for p in pieces:
        f.write(struct.pack("<fi", 0.0, len(p)) + p)
PY
}
for v in pdparams_f32 sharded_pdparams fused bf16_pdparams; do
  rm -rf "cli_$v" && cp -r "ref/$v" "cli_$v" && tokenizer_bin "cli_$v/tokenizer.bin"
  "$OAR" predict --model_name_or_path "cli_$v" --prompt "hello" --max_length 4 --decode_strategy greedy_search \
    --output_file "out_$v.json" > "predict_$v.log" 2>&1 || { cat "predict_$v.log"; die "oar predict on PaddleNLP's $v"; }
  grep -q '"output_ids"' "out_$v.json" || die "no output from oar predict on $v"
done
# Greedy outputs of the same weights agree whichever file layout held them.
[ "$(grep -o '"output_ids":[^]]*' out_pdparams_f32.json)" = "$(grep -o '"output_ids":[^]]*' out_sharded_pdparams.json)" ] ||
  die "pdparams and sharded pdparams give different greedy outputs"

# A pickle that would run code is refused by name, exit 2, one line, nothing written.
rm -rf cli_evil && cp -r cli_pdparams_f32 cli_evil
cp "$SRC/tests/fixtures/pdparams/evil_global.pdparams" cli_evil/model_state.pdparams
rc=0
"$OAR" predict --model_name_or_path cli_evil --prompt hi --max_length 2 --output_file out_evil.json \
  >evil.out 2>evil.err || rc=$?
[ $rc -eq 2 ] || die "evil pickle: exit $rc, expected 2: $(head -c 500 evil.err)"
[ "$(grep -c '' evil.err)" -eq 1 ] && grep -qF "'posix.system' is not allowed" evil.err ||
  die "evil pickle: expected one line naming posix.system: $(head -c 500 evil.err)"
[ ! -e out_evil.json ] || die "a refused checkpoint still wrote output"
# merge-lora writes Hugging Face files: a PaddleNLP-layout base is refused rather than written unmerged.
rc=0
"$OAR" merge-lora --model_name_or_path ref/safetensors_f32 --lora_path ref/lora_pdparams --output_path merged \
  >merge.out 2>merge.err || rc=$?
[ $rc -eq 2 ] && grep -qF "PaddleNLP's layout" merge.err && [ ! -e merged ] ||
  die "merge-lora on a PaddleNLP base: exit $rc: $(head -c 500 merge.err)"

# save_format "paddle": PaddleNLP's Trainer (unified_checkpoint) resumes oar's checkpoint-2 - model or LoRA
# adapter, AdamW moments and beta powers, scheduler, step - trains to step 4 and lands on oar's own step-4
# weights. Every training row is the same, so the sample order cannot matter; the rows' ids come from oar
# itself (a .bin/.idx for pretraining, `oar preprocess` of the text for fine-tuning).
rm -rf resume && mkdir -p resume/data resume/sft && cp -r ref/safetensors_f32 resume/base && tokenizer_bin resume/base/tokenizer.bin
cd resume
for i in $(seq 40); do echo '{"src": "the largest of 3 9 4", "tgt": "9"}'; done > sft/train.json
printf '%s\n' '{"text": "the largest of 3 9 4"}' '{"text": "9"}' > st.jsonl
"$OAR" preprocess --model_name_or_path base --input_path st.jsonl --output_prefix st >/dev/null
"$PY" - <<'PY'
import struct
import numpy as np
seq = [1, 17, 42, 255, 3, 128, 77, 9, 200, 64, 5, 31, 99, 150, 7, 222]  # pretraining: one 16-token document, 64 times
np.array(seq * 64, np.uint16).tofile("data/rep.bin")
with open("data/rep.idx", "wb") as f:
    f.write(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, 64, 65) + np.full(64, 16, np.int32).tobytes()
            + (np.arange(64, dtype=np.int64) * 32).tobytes() + np.arange(65, dtype=np.int64).tobytes())
rows = np.array([seq + seq[:1]] * 64)  # max_seq_length 16: every sample is the document and the next one's start
np.savez("pre.npz", input_ids=rows[:, :-1], labels=rows[:, 1:])
# Fine-tuning (PaddleNLP's rule): BOS + source, target, EOS; loss on the target and EOS, shifted in the data.
ids = np.fromfile("st.bin", np.uint16).tolist()
sizes = np.fromfile("st.idx", np.int32, count=2, offset=9 + 8 + 1 + 8 + 8).tolist()
src, tgt = [1] + ids[:sizes[0]], ids[sizes[0]:]
full, labels = src + tgt + [2], [-100] * len(src) + tgt + [2]
np.savez("sft.npz", input_ids=np.array([full[:-1]] * 40), labels=np.array([labels[1:]] * 40))
PY
common='"per_device_train_batch_size": 2, "learning_rate": 0.01, "warmup_steps": 1, "lr_scheduler_type": "polynomial",
 "logging_steps": 1, "save_steps": 2, "max_steps": 4, "do_train": true, "disable_tqdm": true, "weight_decay": 0.01,
 "save_format": "paddle", "model_name_or_path": "base"'
echo "{$common, \"input_dir\": \"data\", \"max_seq_length\": 16, \"split\": \"100,0,0\", \"output_dir\": \"pre\"}" > pre.json
echo "{$common, \"dataset_name_or_path\": \"sft\", \"src_length\": 64, \"max_length\": 96, \"lora\": true, \"lora_rank\": 4,
 \"output_dir\": \"lora\"}" > lora.json
"$OAR" pretrain pre.json > pre.log 2>&1 || { cat pre.log; die "oar pretrain with save_format paddle"; }
"$OAR" finetune lora.json > lora.log 2>&1 || { cat lora.log; die "oar finetune (LoRA) with save_format paddle"; }
for f in model-00001-of-00001.safetensors model.safetensors.index.json optimizer.safetensors.index.json \
         scheduler.pdparams trainer_state.json oar_trainer_state.json config.json; do
  [ -f "pre/checkpoint-2/$f" ] || die "pre/checkpoint-2/$f missing"
done
"$PY" "$SRC/tests/reference/paddle_interop.py" resume pre/checkpoint-2 pre/model-00001-of-00001.safetensors \
  --data pre.npz --steps 4 > resume_pre.log 2>&1 || { cat resume_pre.log; die "PaddleNLP did not resume oar's pretraining checkpoint"; }
grep '^PaddleNLP resumed' resume_pre.log
"$PY" "$SRC/tests/reference/paddle_interop.py" resume lora/checkpoint-2 lora/peft_model-00001-of-00001.safetensors \
  --lora base --data sft.npz --steps 4 > resume_lora.log 2>&1 || { cat resume_lora.log; die "PaddleNLP did not resume oar's LoRA checkpoint"; }
grep '^PaddleNLP resumed' resume_lora.log
# A negative control: the same checkpoint with its beta powers one step off must fail the comparison.
rm -rf lora_bad && cp -r lora/checkpoint-2 lora_bad
"$PY" - <<'PY'
import numpy as np
from safetensors.numpy import load_file, save_file
path = "lora_bad/optimizer-00001-of-00001.safetensors"
state = load_file(path)
for k in state:
    if k.endswith("_pow_acc_0"):
        state[k] = state[k] / np.float32(0.9 if "beta1" in k else 0.999)
save_file(state, path, metadata={"format": "np"})
PY
if "$PY" "$SRC/tests/reference/paddle_interop.py" resume lora_bad lora/peft_model-00001-of-00001.safetensors \
  --lora base --data sft.npz --steps 4 > resume_bad.log 2>&1; then
  cat resume_bad.log; die "the resume check passes a checkpoint whose optimizer state is wrong"
fi
grep -q '^FAIL' resume_bad.log || { cat resume_bad.log; die "the negative control failed for another reason"; }
cd ..
echo "paddle_interop: ok"
