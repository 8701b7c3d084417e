#!/usr/bin/env bash
# save_format "paddle" on oar's side: checkpoints and the final model in PaddleNLP's unified-checkpoint layout
# (cli_paddle_interop has PaddleNLP itself resume them), a run resumed from one ends bit for bit where an
# uninterrupted run ends (LoRA in float32; full fine-tuning in bf16 with fp16_opt_level O2, whose float32 master
# weights sit beside the bfloat16 model), the output loads in oar predict, and one-line refusals (exit 2).
set -euo pipefail
export OMP_NUM_THREADS=1
source "$SRC/tests/cli/lib/common.sh"
rm -rf out_* sft
M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null

write_digit_sft sft 1 48
cat > run.json <<EOF
{"model_name_or_path": "$M", "dataset_name_or_path": "sft", "per_device_train_batch_size": 4, "learning_rate": 3e-03,
 "warmup_steps": 1, "logging_steps": 1, "save_steps": 2, "src_length": 32, "max_length": 48, "do_train": true,
 "disable_tqdm": true, "weight_decay": 0.01, "lora": true, "lora_rank": 4, "save_format": "paddle"}
EOF

# name OUT_PREFIX FINAL_FILE EXTRA_FLAGS...: 3 steps then resumed to 6, against 6 straight.
resume_matches() {
  local name=$1 file=$2; shift 2
  "$OAR" finetune run.json --output_dir "out_${name}_cut" --max_steps 3 "$@" > "$name.1.log" 2>&1 || { cat "$name.1.log"; die "$name: first part"; }
  "$OAR" finetune run.json --output_dir "out_${name}_cut" --max_steps 6 "$@" > "$name.2.log" 2>&1 || { cat "$name.2.log"; die "$name: resumed part"; }
  grep -q "^Resuming from out_${name}_cut/checkpoint-2: global_step 2 of 6" "$name.2.log" || { cat "$name.2.log"; die "$name: did not resume"; }
  "$OAR" finetune run.json --output_dir "out_${name}_straight" --max_steps 6 "$@" > "$name.3.log" 2>&1 || { cat "$name.3.log"; die "$name: straight run"; }
  cmp "out_${name}_cut/$file" "out_${name}_straight/$file" || die "$name: the resumed run ends elsewhere than the straight one"
  echo "ok: $name resumed from a PaddleNLP-layout checkpoint ends bit for bit where the straight run ends"
}

resume_matches lora peft_model-00001-of-00001.safetensors
for f in lora_config.json peft_model.safetensors.index.json optimizer-00001-of-00001.safetensors \
         optimizer.safetensors.index.json scheduler.pdparams trainer_state.json oar_trainer_state.json; do
  [ -f "out_lora_cut/checkpoint-2/$f" ] || die "checkpoint-2/$f missing"
done
[ ! -e out_lora_cut/checkpoint-2/adapter_model.safetensors ] || die "a PEFT adapter written beside PaddleNLP's"
# PaddleNLP's TrainerState(**json) refuses unknown keys: trainer_state.json holds its fields only.
python3 - <<'PY' || die "trainer_state.json is not PaddleNLP's"
import json
s = json.load(open("out_lora_cut/checkpoint-2/trainer_state.json"))
fields = {"epoch", "global_step", "max_steps", "num_train_epochs", "total_flos", "log_history", "best_metric",
          "best_model_checkpoint", "is_local_process_zero", "is_world_process_zero", "trial_name", "trial_params"}
assert set(s) <= fields, set(s) - fields
assert s["global_step"] == 2, s
print("ok: trainer_state.json has PaddleNLP's fields only")
PY
# scheduler.pdparams is Paddle's LambdaDecay state (a pickle): Python's own unpickler reads oar's, and last_lr is
# the learning rate logged after step 2.
python3 - <<'PY' || die "scheduler.pdparams"
import json, pickle
s = pickle.load(open("out_lora_cut/checkpoint-2/scheduler.pdparams", "rb"))
logged = [e for e in map(json.loads, open("out_lora_cut/metrics.jsonl")) if e["event"] == "train" and e["step"] == 2]
assert set(s) == {"last_epoch", "last_lr"} and s["last_epoch"] == 2, s
assert abs(s["last_lr"] - logged[0]["learning_rate"]) <= 1e-3 * logged[0]["learning_rate"], (s, logged)
print("ok: scheduler.pdparams", s)
PY

# A run resumes from a checkpoint of the other layout, and its final model replaces the other layout's files.
"$OAR" finetune run.json --output_dir out_mixed --max_steps 3 --save_format hf > mixed.1.log 2>&1 || { cat mixed.1.log; die "hf part"; }
[ -f out_mixed/adapter_model.safetensors ] || die "no PEFT adapter from the hf part"
"$OAR" finetune run.json --output_dir out_mixed --max_steps 6 > mixed.2.log 2>&1 || { cat mixed.2.log; die "paddle part"; }
grep -q '^Resuming from out_mixed/checkpoint-2' mixed.2.log || die "the paddle run did not resume the hf checkpoint"
cmp out_mixed/peft_model-00001-of-00001.safetensors out_lora_straight/peft_model-00001-of-00001.safetensors ||
  die "resumed across layouts, the run ends elsewhere"
[ ! -e out_mixed/adapter_model.safetensors ] && [ ! -e out_mixed/adapter_config.json ] || die "stale PEFT files left"
echo "ok: a paddle-format run resumes an hf checkpoint and leaves one layout in output_dir"

resume_matches bf16 master_weights-00001-of-00001.safetensors --lora false --bf16 true --fp16_opt_level O2
python3 - <<'PY' || die "bf16 O2 model files"
import json, struct
def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))
model = header("out_bf16_straight/model-00001-of-00001.safetensors")
master = header("out_bf16_straight/master_weights-00001-of-00001.safetensors")
q = "llama.layers.0.self_attn.q_proj.weight"
assert model[q]["dtype"] == "U16" and master[q]["dtype"] == "F32", (model[q], master[q])
assert "lm_head.weight" in model and "model.embed_tokens.weight" not in model
assert json.load(open("out_bf16_straight/checkpoint-6/optimizer.safetensors.index.json"))["master_weights"] is True
print("ok: bf16 O2 keeps the bfloat16 model (as U16) and float32 master weights, PaddleNLP's names")
PY
"$OAR" predict --model_name_or_path out_bf16_straight --prompt "largest of 1 2" --max_length 3 \
  --decode_strategy greedy_search --output_file pred.json >/dev/null || die "oar predict on the PaddleNLP-layout model"
"$OAR" predict --model_name_or_path "$M" --lora_path out_lora_straight --prompt "largest of 1 2" --max_length 3 \
  --decode_strategy greedy_search --output_file pred_lora.json >/dev/null || die "oar predict on the PaddleNLP-layout LoRA"

expect_refusal() {  # what-to-grep FLAGS...
  local want=$1; shift
  local rc=0
  "$OAR" finetune run.json --output_dir out_refused --max_steps 1 "$@" > refused.out 2> refused.err || rc=$?
  [ $rc -eq 2 ] && [ "$(grep -c '' refused.err)" -eq 1 ] && grep -q "$want" refused.err ||
    die "expected exit 2 and one line naming '$want', got exit $rc: $(cat refused.err)"
  [ ! -e out_refused ] || die "a refused run wrote output"
}
expect_refusal save_format --save_format pdparams
# A tied model: PaddleNLP's Llama trains its own lm_head, so the run could not be resumed there.
python3 - "$M/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["tie_word_embeddings"] = True
json.dump(c, open("tied_config.json", "w"))
PY
rm -rf tied && cp -r "$M" tied && cp tied_config.json tied/config.json
expect_refusal "ties lm_head" --model_name_or_path tied --lora false
echo "train_save_paddle: ok"
