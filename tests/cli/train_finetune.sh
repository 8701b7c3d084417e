#!/usr/bin/env bash
# oar finetune end to end on a tiny model: PaddleNLP's DCU-style config with its quirky keys, LoRA and full SFT,
# zero padding, bf16, what lands in output_dir (PEFT adapter, checkpoints, metrics.jsonl, loss curve), the model
# loading in oar predict, and one-line errors (exit 2) for contradictory or unsupported settings.
set -euo pipefail
export OMP_NUM_THREADS=1  # tiny matrices; and robust on a loaded machine
mkdir -p "$WORK"; cd "$WORK"
rm -rf out_* sft
die() { echo "FAIL: $*"; exit 1; }
M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null

python3 - <<'PY'
import json, os, random
r = random.Random(0)
os.makedirs("sft", exist_ok=True)
def ex():
    d = [r.randint(0, 9) for _ in range(r.randint(3, 6))]
    return {"src": "largest of " + " ".join(map(str, d)), "tgt": str(max(d))}
for name, n in (("train", 96), ("dev", 8)):
    with open(f"sft/{name}.json", "w") as f:
        for _ in range(n): f.write(json.dumps(ex()) + "\n")
PY

# The DCU sft_argument.json's keys (eval_step/save_step/intokens spellings, generation and parallel keys), LoRA on.
cat > lora.json <<EOF
{"model_name_or_path": "$M", "dataset_name_or_path": "sft", "output_dir": "out_lora",
 "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "per_device_eval_batch_size": 4,
 "eval_accumulation_steps": 2, "num_train_epochs": 1, "learning_rate": 3e-03, "warmup_steps": 1, "logging_steps": 1,
 "evaluation_strategy": "steps", "save_strategy": "steps", "eval_step": 3, "save_step": 3, "src_length": 32,
 "max_length": 48, "do_train": true, "do_eval": true, "disable_tqdm": true, "load_best_model_at_end": true,
 "metric_for_best_model": "accuracy", "recompute": false, "save_total_limit": 1, "tensor_parallel_degree": 1,
 "pipeline_parallel_degree": 1, "intokens": false, "zero_padding": false, "use_flash_attention": false,
 "lora": true, "lora_rank": 4, "unified_checkpoint": true, "a_key_nobody_knows": 1}
EOF
"$OAR" finetune lora.json > lora.log 2> lora.err || { cat lora.log lora.err; die "LoRA finetune failed"; }
[ "$(grep -c 'ignored (no effect on one CPU process)' lora.log)" -eq 1 ] || die "ignored keys not listed once"
grep 'ignored (no effect' lora.log | grep -q 'use_flash_attention' || die "use_flash_attention not listed as ignored"
grep -q "unknown key 'a_key_nobody_knows'" lora.err || die "no warning for an unknown key"
grep -Eq '^loss: [0-9.e-]+, learning_rate: [0-9.e-]+, global_step: 1, interval_runtime: [0-9.e-]+, .*interval_tokens_per_second_per_device: [0-9.e+-]+, interval_hardware_tflops_per_device: [0-9.e+-]+, grad_norm: [0-9.e-]+, loss_scale: 1.0, progress_or_epoch: [0-9.]+$' lora.log \
  || { cat lora.log; die "no PaddleNLP-shaped log line"; }
grep -q '^\*\*\*\*\* Evaluate result before train' lora.log || die "no evaluation before training"
grep -q '^\*\*\*\*\* Evaluate result after train' lora.log || die "no evaluation after training"
for f in adapter_config.json adapter_model.safetensors tokenizer.json metrics.jsonl loss_curve.svg trainer_state.json; do
  [ -f "out_lora/$f" ] || die "out_lora/$f missing"
done
[ "$(ls -d out_lora/checkpoint-* | wc -l)" -ge 1 ] || die "no checkpoint"
python3 - <<'PY' || die "metrics.jsonl"
import json
ev = [json.loads(l) for l in open("out_lora/metrics.jsonl")]
train = [e for e in ev if e["event"] == "train"]
evals = [e for e in ev if e["event"] == "eval"]
assert len(train) == 6, len(train)  # 96 examples / 8 per batch / 2 accumulated = 6 steps
assert [e["step"] for e in evals] == [0, 3, 6, 6], [e["step"] for e in evals]
for e in evals:
    assert {"eval_loss", "eval_ppl", "eval_accuracy"} <= e.keys(), e
assert "eval loss" in open("out_lora/loss_curve.svg").read()
print("ok: 6 logged steps, evaluations at 0/3/6 and after, loss curve written")
PY
"$OAR" predict --model_name_or_path "$M" --lora_path out_lora --data_file sft/dev.json --output_file pred.json \
  --decode_strategy greedy_search --max_length 4 >/dev/null || die "oar predict --lora_path cannot use the adapter"
[ "$(wc -l < pred.json)" -eq 8 ] || die "predictions"
echo "ok: LoRA run with the DCU keys; the adapter loads in oar predict --lora_path"

# Asking for more steps resumes the LoRA run from its newest checkpoint (adapter, moments, schedule).
"$OAR" finetune lora.json --max_steps 8 > resume.log 2>&1 || { cat resume.log; die "LoRA resume failed"; }
grep -q '^Resuming from out_lora/checkpoint-6: global_step 6 of 8' resume.log || { cat resume.log; die "did not resume from checkpoint-6"; }
python3 - <<'PY' || die "resumed metrics"
import json
steps = [e["step"] for e in map(json.loads, open("out_lora/metrics.jsonl")) if e["event"] == "train"]
assert steps == list(range(1, 9)), steps
PY
echo "ok: the LoRA run resumes from checkpoint-6 and continues to step 8"

# Full fine-tuning, bf16, zero padding (packing), a cosine schedule: runs and the model loads in predict.
"$OAR" finetune lora.json --lora false --output_dir out_full --bf16 true --zero_padding true \
  --lr_scheduler_type cosine --load_best_model_at_end false --max_steps 4 > full.log 2>&1 || { cat full.log; die "full SFT failed"; }
grep -q 'packs' full.log || die "zero_padding did not pack"
grep -q '^  Precision: bf16 ' full.log || { cat full.log; die "a bf16 run must say so in its log"; }
grep -q '^  Precision: float32$' lora.log || die "a float32 run must say so in its log"
"$OAR" predict --model_name_or_path out_full --prompt "largest of 1 2 3" --max_length 4 --decode_strategy greedy_search \
  >/dev/null || die "oar predict cannot load the fine-tuned model"
echo "ok: full SFT with bf16 and zero padding; the model loads in oar predict"

# On a terminal (a pseudo-terminal from util-linux's `script`), disable_tqdm false draws a progress bar with the
# elapsed time, the ETA and the rate, as PaddleNLP's tqdm bar does; without a terminal nothing is drawn.
if command -v script >/dev/null 2>&1; then
  script -qec "'$OAR' finetune lora.json --lora false --output_dir out_tty --max_steps 3 --save_steps 100 --load_best_model_at_end false --disable_tqdm false" \
    /dev/null > tty.log 2>&1 || { cat tty.log; die "finetune on a terminal failed"; }
  grep -aqE '100%\|#+\| 3/3 \[[0-9hms]+<[0-9hms]+, [0-9.]+(it/s|s/it)' tty.log || { cat -v tty.log | tail -5; die "no progress bar with ETA on a terminal"; }
  ! grep -aq '|#' full.log || die "a progress bar was drawn without a terminal"
  echo "ok: progress bar with ETA on a terminal, none in a log file"
else
  echo "note: no 'script' command (util-linux), progress bar on a terminal not checked"
fi

# Every checkpoint is a loadable Hugging Face directory with the tokenizer beside the weights.
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
  ls out_full/checkpoint-*/"$f" >/dev/null 2>&1 || { ls -R out_full; die "checkpoint lacks $f"; }
done
echo "ok: checkpoints hold config, weights and tokenizer files"

# Errors: one line on stderr, exit code 2.
expect_error() {  # expected-substring, then arguments
  local want="$1"; shift
  set +e; "$OAR" finetune "$@" > err.out 2> err.txt; local rc=$?; set -e
  [ $rc -eq 2 ] || { cat err.out err.txt; die "exit $rc (want 2) for: $*"; }
  [ "$(grep -c 'oar: error' err.txt)" -eq 1 ] || { cat err.txt; die "not one error line for: $*"; }
  grep -q -- "$want" err.txt || { cat err.txt; die "'$want' not in the error for: $*"; }
}
expect_error "fp16 and bf16 cannot both be true" lora.json --fp16 true --bf16 true
expect_error "O2 needs fp16 or bf16" lora.json --fp16_opt_level O2
expect_error "needs lora true" lora.json --lora false --lora_path out_lora
expect_error "mpirun -np" lora.json --tensor_parallel_degree 2
expect_error "sharding_parallel_degree 4 = 4 processes" lora.json --sharding stage1 --sharding_parallel_degree 4
expect_error "QLoRA" lora.json --weight_quantize_algo nf4
expect_error "nosuch" lora.json --dataset_name_or_path nosuch
expect_error "no such config file" missing.json
expect_error "expected an integer" lora.json --max_steps many
echo "ok: contradictions and unsupported settings exit 2 with one line"
