#!/usr/bin/env bash
# mpirun -np 2 oar pretrain/finetune: data parallelism across processes (MPI). Two ranks with half the batch each
# log the losses of one process with the whole batch; each rank writes log/workerlog.N and rank 0 alone writes
# output_dir; SIGKILL of one rank stops the job and the rerun resumes to the uninterrupted run's weights; degrees
# that do not fit the world size or are not built are one-line errors (exit 2). Oversubscribed on 2 cores.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
source "$SRC/tests/cli/lib/mpi.sh"
MPIRUN=(mpirun -np 2 --oversubscribe)
rm -rf one two cut log cut_log sft lora_* e_* s1 s1_cut s1_log s2 s2_log dp_* overlapped overlapped_log fp16_*
M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null

make_word_corpus "$M" data/corpus
cat > pre.json <<EOF
{"model_name_or_path": "$M", "input_dir": "data", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
 "max_seq_length": 32, "learning_rate": 0.003, "warmup_steps": 3, "logging_steps": 1, "save_steps": 5,
 "max_steps": 60, "do_train": true, "continue_training": false, "disable_tqdm": true, "lr_scheduler_type": "cosine",
 "weight_decay": 0.01, "split": "98,2,0"}
EOF

# The same global batch (4 rows x 2 accumulated): one process, and two ranks of 2 rows.
"$OAR" pretrain pre.json --output_dir one --per_device_train_batch_size 4 > one.log 2>&1 || { cat one.log; die "one process"; }
"${MPIRUN[@]}" "$OAR" pretrain pre.json --output_dir two > two.log 2>&1 || { cat two.log; die "mpirun -np 2"; }
same_losses one/metrics.jsonl two/metrics.jsonl 60 1e-6 "dp2 logs the one-process losses over 60 steps" 0.5 ||
  die "dp2 losses differ from the one-process run"
for r in 0 1; do
  [ "$(grep -c '^loss: ' "log/workerlog.$r")" -eq 60 ] || die "log/workerlog.$r lacks rank $r's 60 log lines"
done
grep -q '^loss: .*interval_tokens_per_second: ' two.log || die "rank 0 does not log the job's tokens/s"
[ "$(grep -c '^loss: ' two.log)" -eq 60 ] || die "the console shows rank 0's lines once each"
grep -q 'data-parallel ranks = 2, total batch size = 8' two.log || die "the run does not state its layout"
grep -q 'indices built by rank 0 and shared' two.log || die "the GPTDataset indices are not built once and shared"
# On one machine the gradient sums run after the backward (each rank logs their time and the share hidden);
# overlapped with it instead (OAR_GRAD_OVERLAP=1, the default across machines), they give the same weights.
grep -q '"grad_sync_hidden_share":' two/metrics.jsonl || die "no gradient-sum timing in metrics.jsonl"
grep -q 'Gradient sums: after the backward (the data-parallel ranks share one machine)' two.log ||
  die "the sums do not say when they run"
OAR_GRAD_OVERLAP=1 "${MPIRUN[@]}" -x OAR_GRAD_OVERLAP "$OAR" pretrain pre.json --output_dir overlapped --log_dir overlapped_log \
  > overlapped.log 2>&1 || { cat overlapped.log; die "OAR_GRAD_OVERLAP=1"; }
grep -q 'Gradient sums: overlapped with the backward (OAR_GRAD_OVERLAP=1)' overlapped.log || die "OAR_GRAD_OVERLAP=1 ignored"
cmp two/model.safetensors overlapped/model.safetensors || die "overlapped and blocking gradient sums end on other weights"

# sharding stage1: each rank keeps the moments of half the parameters (data parallelism summed after the backward
# splits the update by ranges, so it keeps half too); the weights and the gathered moments of every checkpoint are
# data parallelism's, bit for bit, and a sharded run resumed from a checkpoint ends there too.
"${MPIRUN[@]}" "$OAR" pretrain pre.json --output_dir s1 --log_dir s1_log --sharding stage1 > s1.log 2>&1 || { cat s1.log; die "sharding stage1"; }
python3 - <<'PY' || die "sharding stage1 or data parallelism does not halve the optimizer state"
import re
def mib(path):
    return float(re.search(r"optimizer state ([0-9.]+) MiB", open(path).read()).group(1))
full = mib("one.log")
for layout, log, says in (("sharding stage1", "s1_log", "this rank's share"), ("dp2", "log", "this rank's range")):
    shares = [mib(f"{log}/workerlog.{r}") for r in (0, 1)]
    assert says in open(f"{log}/workerlog.1").read(), layout
    assert abs(sum(shares) - full) <= 0.11 and max(shares) < 0.75 * full, (layout, full, shares)
    print(f"ok: {layout} keeps {shares} MiB of moments on the two ranks, {full} MiB in one process")
PY
cmp two/model.safetensors s1/model.safetensors || die "sharding stage1 ends on other weights than data parallelism"
cmp two/checkpoint-60/optimizer.safetensors s1/checkpoint-60/optimizer.safetensors || die "sharding stage1's gathered moments differ"
mkdir -p s1_cut && cp -r two/checkpoint-30 s1_cut/  # each rank takes its parameters' moments from the whole set
"${MPIRUN[@]}" "$OAR" pretrain pre.json --output_dir s1_cut --log_dir s1_log --sharding stage1 > s1r.log 2>&1 || die "stage1 resumed"
grep -q '^Resuming from s1_cut/checkpoint-30' s1r.log || { cat s1r.log; die "stage1 did not resume"; }
cmp two/model.safetensors s1_cut/model.safetensors || die "a resumed sharding stage1 run ends elsewhere"
echo "ok: sharding stage1 on two ranks: data parallelism's weights and moments, and it resumes"

# sharding stage2 on the two ranks (each gradient reduced to its owner only), then stage1 and stage2 beside data
# parallelism on four ranks (data 2 x sharding 2, one row each): the one-process losses.
"${MPIRUN[@]}" "$OAR" pretrain pre.json --output_dir s2 --log_dir s2_log --sharding stage2 > s2.log 2>&1 || { cat s2.log; die "sharding stage2"; }
grep -q "this rank's share under sharding stage2 over 2 ranks" s2_log/workerlog.1 || die "stage2 does not shard over the two ranks"
same_losses one/metrics.jsonl s2/metrics.jsonl 60 1e-5 "sharding stage2 on 2 ranks logs the one-process losses"
for stage in stage1 stage2; do
  mpirun -np 4 --oversubscribe "$OAR" pretrain pre.json --output_dir "dp_$stage" --log_dir "dp_${stage}_log" \
    --sharding "$stage" --sharding_parallel_degree 2 --per_device_train_batch_size 1 > "dp_$stage.log" 2>&1 ||
    { cat "dp_$stage.log"; die "data 2 x sharding 2 $stage"; }
  grep -q "data-parallel ranks = 4, total batch size = 8" "dp_$stage.log" &&
    grep -q "this rank's share under sharding $stage over 2 ranks" "dp_${stage}_log/workerlog.3" &&
    grep -q "Parallel layout: data 2 x sharding 2 (this rank: data 0, sharding 1)" "dp_${stage}_log/workerlog.1" &&
    grep -q "Parallel layout: data 2 x sharding 2 (this rank: data 1, sharding 0)" "dp_${stage}_log/workerlog.2" ||
    die "dp2 x $stage layout (fleet's order: sharding groups of adjacent ranks)"
  same_losses one/metrics.jsonl "dp_$stage/metrics.jsonl" 60 1e-5 "data 2 x sharding 2 $stage (4 ranks) logs the one-process losses"
done
# fp16 with a loss scale that overflows at first: stage2's finite check (each rank sees its shard, the group
# combines them) skips the same steps as data parallelism, and the losses after are the same.
for layout in dp stage2; do
  extra=(); [ $layout = stage2 ] && extra=(--sharding stage2)
  "${MPIRUN[@]}" "$OAR" pretrain pre.json --output_dir "fp16_$layout" --log_dir "fp16_${layout}_log" --max_steps 20 \
    --fp16 true --scale_loss 1e8 "${extra[@]}" > "fp16_$layout.log" 2>&1 || { cat "fp16_$layout.log"; die "fp16 $layout"; }
done
skips=$(grep -c 'update skipped' fp16_dp.log || true)
[ "$skips" -gt 0 ] && [ "$skips" -lt 20 ] && [ "$(grep -c 'update skipped' fp16_stage2.log || true)" -eq "$skips" ] ||
  die "fp16: stage2 skips other steps than data parallelism ($skips skipped there)"
same_losses fp16_dp/metrics.jsonl fp16_stage2/metrics.jsonl 20 1e-6 "fp16 stage2 skips the $skips steps data parallelism skips"
# stage2's reduces overlap the backward even on one machine (each gradient's memory is freed once it is reduced):
# summed after it instead (OAR_GRAD_OVERLAP=0), the same weights.
grep -q 'Gradient sums: overlapped with the backward (sharding stage2 frees each gradient as it is reduced)' dp_stage2.log ||
  die "stage2's reduces do not overlap the backward"
OAR_GRAD_OVERLAP=0 mpirun -np 4 --oversubscribe -x OAR_GRAD_OVERLAP "$OAR" pretrain pre.json --output_dir dp_stage2_blocking \
  --log_dir dp_stage2_blocking_log --sharding stage2 --sharding_parallel_degree 2 --per_device_train_batch_size 1 \
  > dp_stage2_blocking.log 2>&1 || { cat dp_stage2_blocking.log; die "stage2, blocking sums"; }
cmp dp_stage2/model.safetensors dp_stage2_blocking/model.safetensors || die "stage2: overlapped and blocking sums differ"

# SIGKILL of one rank once step 12 is logged (checkpoint-10 is on disk): the job stops; the rerun resumes from
# the newest checkpoint and ends on the uninterrupted run's weights.
sigkill_rank_at_step cut1.log cut_log 12 1 "${MPIRUN[@]}" "$OAR" pretrain pre.json --output_dir cut --log_dir cut_log
"${MPIRUN[@]}" "$OAR" pretrain pre.json --output_dir cut --log_dir cut_log > cut2.log 2>&1 || { cat cut2.log; die "resumed job"; }
grep -Eq '^Resuming from cut/checkpoint-([1-5][05]): global_step \1 of 60' cut2.log || { cat cut2.log; die "did not resume"; }
cmp two/model.safetensors cut/model.safetensors || die "the resumed job ends on other weights than the uninterrupted one"
echo "ok: a rank killed with SIGKILL stops the job; the rerun resumes to the same weights"

# Fine-tuning with LoRA on two ranks runs and writes its adapter once.
write_digit_sft sft 0 32
cat > ft.json <<EOF
{"model_name_or_path": "$M", "dataset_name_or_path": "sft", "output_dir": "lora_two", "per_device_train_batch_size": 4,
 "learning_rate": 3e-03, "logging_steps": 1, "max_steps": 4, "src_length": 32, "max_length": 48, "do_train": true,
 "disable_tqdm": true, "lora": true, "lora_rank": 4, "log_dir": "lora_log"}
EOF
"${MPIRUN[@]}" "$OAR" finetune ft.json > ft.log 2>&1 || { cat ft.log; die "mpirun -np 2 oar finetune (LoRA)"; }
[ -f lora_two/adapter_model.safetensors ] && [ -f lora_log/workerlog.1 ] || die "LoRA dp2: adapter or worker log missing"
echo "ok: LoRA fine-tuning on two ranks"

# Degrees against the world size: one line naming the keys and values, exit 2, nothing written.
expect_mpi_error sep "sep_parallel_degree 2: not built yet" 2 --sep_parallel_degree 2
expect_mpi_error stage3 "sharding_parallel_degree 2: sharding stage3 is not built yet" 2 --sharding stage3
expect_mpi_error nostage "sharding_parallel_degree 2: needs a sharding stage" 2 --sharding_parallel_degree 2
expect_mpi_error odd "tensor_parallel_degree 2 x pipeline_parallel_degree 2 = 4 processes, which do not divide the world size 3" 3 \
  --tensor_parallel_degree 2 --pipeline_parallel_degree 2
# A setup error on every rank: rank 0 reports it in one line and every rank exits 2 (no MPI_Abort).
rc=0; "${MPIRUN[@]}" "$OAR" pretrain missing.json > e_missing.out 2> e_missing.err || rc=$?
[ $rc -eq 2 ] && head -n1 e_missing.err | grep -q '^oar: error: missing.json: no such config file' &&
  ! grep -q MPI_ABORT e_missing.err || die "missing config under mpirun: exit $rc: $(cat e_missing.err)"
# One rank alone failing its setup (its own data path, through mpirun's MPMD form) meets the others at the next
# agreement: no hang, rank 0 prints that rank's error, exit 2.
rc=0
timeout 120 mpirun --oversubscribe -np 1 "$OAR" pretrain pre.json --output_dir e_r1 --log_dir e_r1.log : \
  -np 1 "$OAR" pretrain pre.json --output_dir e_r1 --log_dir e_r1.log --input_dir nowhere > e_r1.out 2> e_r1.err || rc=$?
[ $rc -eq 2 ] && head -n1 e_r1.err | grep -q '^oar: error: rank 1: .*nowhere' && ! grep -q MPI_ABORT e_r1.err ||
  die "rank 1 failing alone: exit $rc: $(cat e_r1.err)"
# The same for fine-tuning, where rank 1 fails alone later (its dataset, after the model is built): met before the
# ranks split into their groups.
rc=0
timeout 120 mpirun --oversubscribe -np 1 "$OAR" finetune ft.json --output_dir e_ft1 --log_dir e_ft1.log : \
  -np 1 "$OAR" finetune ft.json --output_dir e_ft1 --log_dir e_ft1.log --dataset_name_or_path nowhere > e_ft1.out 2> e_ft1.err || rc=$?
[ $rc -eq 2 ] && head -n1 e_ft1.err | grep -q '^oar: error: rank 1: .*nowhere' && ! grep -q MPI_ABORT e_ft1.err ||
  die "fine-tuning, rank 1 failing alone: exit $rc: $(cat e_ft1.err)"
echo "train_mpi: ok"
