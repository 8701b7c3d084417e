#!/usr/bin/env bash
# Pipeline parallelism under mpirun (pipeline_parallel_degree, 1F1B): pp2 and pp4 end on the one-process weights
# and moments bit for bit (a stage computes what one process computes for its layers); beside data parallelism
# and sharding they log the one-process losses; the seed's pretraining shape (pp 8, sharding stage1, fp16 O2 with
# loss scaling, adam_beta2 0.95, recompute) runs on 8 ranks to the one-process weights; evaluation and LoRA
# fine-tuning go through the stages; checkpoints are saved whole and resume under another layout; a split the
# model cannot take is a one-line error. Oversubscribed on 2 cores, tiny models.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
source "$SRC/tests/cli/lib/mpi.sh"
rm -rf one* pp* pdl_* cut* dp2_pp2* s?_pp2* seed* re_* ft_* e_* *.log
M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null
make_word_corpus "$M" data/corpus
# Four layers (pp4: one per stage), four micro-batches of 4 rows per step.
cat > pre.json <<EOF
{"model_name_or_path": "$M", "input_dir": "data", "per_device_train_batch_size": 4, "gradient_accumulation_steps": 4,
 "num_hidden_layers": 4, "max_seq_length": 32, "learning_rate": 0.003, "warmup_steps": 3, "logging_steps": 1,
 "save_steps": 10, "max_steps": 20, "do_train": true, "continue_training": false, "disable_tqdm": true,
 "lr_scheduler_type": "cosine", "weight_decay": 0.01, "split": "98,2,0"}
EOF

"$OAR" pretrain pre.json --output_dir one > one.log 2>&1 || { cat one.log; die "one process"; }
for pp in 2 4; do
  mpi_pretrain "pp$pp" "$pp" --pipeline_parallel_degree "$pp"
  cmp one/model.safetensors "pp$pp/model.safetensors" && cmp one/checkpoint-20/optimizer.safetensors "pp$pp/checkpoint-20/optimizer.safetensors" ||
    die "pp$pp ends on other weights or moments than one process"
  same_losses one/metrics.jsonl "pp$pp/metrics.jsonl" 20 0 "pp$pp: the one-process losses, weights and moments" 0.5
done
grep -q 'pipeline stages = 4' pp4.log && grep -q 'Parallel layout: pipe 4 (this rank: pipe 3)' pp4_log/workerlog.3 ||
  die "pp4 does not state its layout"
grep -q '^loss: .*interval_tokens_per_second: ' pp4.log || die "rank 0 does not log the job's tokens/s"
[ "$(grep -c '^loss: ' pp4_log/workerlog.2)" -eq 20 ] || die "stage 2 does not log the step losses"

# Beside data parallelism and sharding (4 ranks, 2 rows per micro-batch on each replica).
mpi_pretrain dp2_pp2 4 --pipeline_parallel_degree 2 --per_device_train_batch_size 2
grep -q 'Parallel layout: data 2 x pipe 2 (this rank: data 1, pipe 0)' dp2_pp2_log/workerlog.2 || die "dp2 x pp2 layout (fleet's order)"
same_losses one/metrics.jsonl dp2_pp2/metrics.jsonl 20 1e-5 "data 2 x pipe 2 logs the one-process losses"
[ "$(stat -c %s dp2_pp2/model.safetensors)" -eq "$(stat -c %s one/model.safetensors)" ] || die "dp2 x pp2 saved a partial model"
mpi_pretrain s2_pp2 4 --pipeline_parallel_degree 2 --sharding stage2 --per_device_train_batch_size 2
grep -q "this rank's share under sharding stage2 over 2 ranks" s2_pp2_log/workerlog.3 || die "pp2 x stage2: no sharding"
same_losses one/metrics.jsonl s2_pp2/metrics.jsonl 20 1e-5 "pipe 2 x sharding 2 stage2 logs the one-process losses"

# The seed's pretraining shape on 8 ranks: pp 8 (one of 8 layers per stage), sharding stage1 (degree 1 here, as on
# the seed's 8 cards), fp16 O2 with dynamic loss scaling, adam_beta2 0.95, recompute, 8 micro-batches of one row.
SEED=(--num_hidden_layers 8 --gradient_accumulation_steps 8 --per_device_train_batch_size 1 --fp16 true --fp16_opt_level O2
      --scale_loss 32768 --recompute true --adam_beta2 0.95 --sharding stage1)
"$OAR" pretrain pre.json --output_dir seed_one "${SEED[@]}" > seed_one.log 2>&1 || { cat seed_one.log; die "seed shape, one process"; }
mpi_pretrain seed_pp8 8 --pipeline_parallel_degree 8 "${SEED[@]}"
grep -q 'Precision: fp16 O2' seed_pp8.log && grep -q 'Parallel layout: pipe 8 (this rank: pipe 7)' seed_pp8_log/workerlog.7 ||
  die "seed shape: precision or layout not stated"
cmp seed_one/model.safetensors seed_pp8/model.safetensors || die "seed shape: pp8 ends on other weights than one process"
same_losses seed_one/metrics.jsonl seed_pp8/metrics.jsonl 20 0 "the seed's shape (pp8, stage1, fp16 O2, recompute) on 8 ranks" 0.5
# Its checkpoint (fp16 loss scale included) resumed on one process: the same weights at the end.
mkdir -p re_seed && cp -r seed_pp8/checkpoint-10 re_seed/
"$OAR" pretrain pre.json --output_dir re_seed "${SEED[@]}" > re_seed.log 2>&1 || { cat re_seed.log; die "pp8 checkpoint on one process"; }
grep -q "^Resuming from re_seed/checkpoint-10" re_seed.log && cmp seed_one/model.safetensors re_seed/model.safetensors ||
  die "the seed shape's pp8 checkpoint resumed on one process ends elsewhere"

# Checkpoints hold the whole model whatever the layout: pp2's resumes on one process, one process's under
# data 2 x pipe 2.
mkdir -p re_one re_dp2_pp2
cp -r pp2/checkpoint-10 re_one/ && cp -r one/checkpoint-10 one/metrics.jsonl re_dp2_pp2/
"$OAR" pretrain pre.json --output_dir re_one > re_one.log 2>&1 || { cat re_one.log; die "pp2 checkpoint on one process"; }
mpi_pretrain re_dp2_pp2 4 --pipeline_parallel_degree 2 --per_device_train_batch_size 2
for d in re_one re_dp2_pp2; do
  grep -q "^Resuming from $d/checkpoint-10: global_step 10 of 20" "$d.log" || { cat "$d.log"; die "$d did not resume"; }
done
cmp one/model.safetensors re_one/model.safetensors || die "pp2's checkpoint resumed on one process ends elsewhere"
same_losses one/metrics.jsonl re_dp2_pp2/metrics.jsonl 20 1e-5 "one process's checkpoint resumed under data 2 x pipe 2"
echo "ok: checkpoints re-laid out: pp2 -> 1 process, 1 process -> dp2 x pp2"
# SIGKILL of the last stage's rank once step 12 of 60 is logged (checkpoint-10 on disk): the job stops; the rerun
# resumes to the uninterrupted (one-process) run's weights.
"$OAR" pretrain pre.json --output_dir one60 --max_steps 60 > one60.log 2>&1 || { cat one60.log; die "one process, 60 steps"; }
sigkill_rank_at_step cut1.log cut_log 12 1 timeout 300 mpirun -np 2 --oversubscribe "$OAR" pretrain pre.json \
  --output_dir cut --log_dir cut_log --pipeline_parallel_degree 2 --max_steps 60
mpi_pretrain cut 2 --pipeline_parallel_degree 2 --max_steps 60
grep -Eq '^Resuming from cut/checkpoint-([1-5]0): global_step \1 of 60' cut.log && cmp one60/model.safetensors cut/model.safetensors ||
  die "pp2 killed at step 12 and resumed ends on other weights than one process"
# PaddleNLP's layout (save_format paddle: its optimizer file holds every stage's moments) from pp2, resumed on one
# process.
mpi_pretrain pdl_pp2 2 --pipeline_parallel_degree 2 --save_format paddle
mkdir -p re_pdl && cp -r pdl_pp2/checkpoint-10 re_pdl/
"$OAR" pretrain pre.json --output_dir re_pdl > re_pdl.log 2>&1 || { cat re_pdl.log; die "pp2's PaddleNLP checkpoint on one process"; }
grep -q "^Resuming from re_pdl/checkpoint-10" re_pdl.log && cmp one/model.safetensors re_pdl/model.safetensors ||
  die "pp2's PaddleNLP-layout checkpoint resumed on one process ends elsewhere"

# Fine-tuning through the stages: LoRA with evaluation (examples of several lengths per step), the adapter and the
# eval losses of one process.
write_digit_sft sft 0 32
cp sft/train.json sft/dev.json
cat > ft.json <<EOF
{"model_name_or_path": "$M", "dataset_name_or_path": "sft", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
 "learning_rate": 3e-03, "logging_steps": 1, "max_steps": 6, "src_length": 32, "max_length": 48, "do_train": true,
 "do_eval": true, "evaluation_strategy": "steps", "eval_steps": 3, "disable_tqdm": true, "lora": true, "lora_rank": 4}
EOF
"$OAR" finetune ft.json --output_dir ft_one > ft_one.log 2>&1 || { cat ft_one.log; die "LoRA, one process"; }
timeout 300 mpirun -np 2 --oversubscribe "$OAR" finetune ft.json --output_dir ft_pp2 --log_dir ft_pp2_log \
  --pipeline_parallel_degree 2 --save_steps 3 > ft_pp2.log 2>&1 || { cat ft_pp2.log; die "LoRA, pp2"; }
cmp ft_one/adapter_model.safetensors ft_pp2/adapter_model.safetensors || die "LoRA pp2: another adapter than one process"
# Resumed from its checkpoint, each stage takes its layers' adapters: the same adapter at the end.
mkdir -p ft_re && cp -r ft_pp2/checkpoint-3 ft_re/
timeout 300 mpirun -np 2 --oversubscribe "$OAR" finetune ft.json --output_dir ft_re --log_dir ft_re_log \
  --pipeline_parallel_degree 2 > ft_re.log 2>&1 || { cat ft_re.log; die "LoRA, pp2, resumed"; }
grep -q '^Resuming from ft_re/checkpoint-3' ft_re.log && cmp ft_one/adapter_model.safetensors ft_re/adapter_model.safetensors ||
  die "LoRA pp2 resumed from its checkpoint ends on another adapter"
python3 - <<'PY' || die "LoRA pp2: other eval losses"
import json
def ev(p): return [e["eval_loss"] for e in map(json.loads, open(p)) if e["event"] == "eval"]
a, b = ev("ft_one/metrics.jsonl"), ev("ft_pp2/metrics.jsonl")
assert len(a) == len(b) == 4 and a == b, (a, b)
print(f"ok: LoRA fine-tuning on pp2: the one-process adapter and eval losses {b}")
PY

# Splits the model cannot take: one line naming the keys, exit 2, nothing written.
expect_mpi_error layers "pipeline_parallel_degree 2 does not divide num_hidden_layers 3" 2 --pipeline_parallel_degree 2 --num_hidden_layers 3
expect_mpi_error vpp "virtual_pp_degree 2: the interleaved pipeline is not built yet" 2 --pipeline_parallel_degree 2 --virtual_pp_degree 2
echo "train_mpi_pipeline: ok"
