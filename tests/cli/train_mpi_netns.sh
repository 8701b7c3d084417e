#!/usr/bin/env bash
# Two "machines" on this one: two network namespaces joined by a veth pair, and mpirun with a hostfile trains
# across them over TCP (OpenMPI's remote launcher is a script that enters the other namespace, where a real
# cluster would use ssh). The two ranks log the losses of one process with the global batch: data parallelism,
# sharding stage2, a pipeline of 2 stages and tensor parallelism over 2 ranks. Needs root (CI has
# it) and iproute2; skipped (exit 77) when namespaces cannot be made.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
source "$SRC/tests/cli/lib/netns.sh"
trap 'delete_netns_pair; stop_all_servers' EXIT
rc=0; make_netns_pair $$ || rc=$?
[ $rc -eq 0 ] || exit $rc

rm -rf one two two_log s2 s2_log pipeline pipeline_log tensor tensor_log
M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null
make_word_corpus "$M" data/corpus
cat > pre.json <<EOF2
{"model_name_or_path": "$M", "input_dir": "data", "per_device_train_batch_size": 2, "max_seq_length": 32,
 "learning_rate": 0.003, "warmup_steps": 2, "logging_steps": 1, "save_steps": 10, "max_steps": 10, "do_train": true,
 "continue_training": false, "disable_tqdm": true, "split": "98,2,0"}
EOF2
"$OAR" pretrain pre.json --output_dir one --per_device_train_batch_size 4 > one.log 2>&1 || { cat one.log; die "one process"; }
timeout 300 ip netns exec "$NS0" mpirun "${NETNS_MPIRUN_ARGS[@]}" "$OAR" pretrain pre.json --output_dir two --log_dir two_log \
  > two.log 2>&1 || { cat two.log; die "mpirun across the namespaces"; }
grep -q "$DEV1" <(ip netns exec "$NS1" ip -br addr) || die "the second namespace lost its link"
same_losses one/metrics.jsonl two/metrics.jsonl 10 1e-5 \
  "two ranks in two network namespaces over TCP log the one-process losses" ||
  die "the two-machine run's losses differ from one process's"
[ -f two_log/workerlog.1 ] || die "no worker log of the rank on the second machine"
grep -q 'Gradient sums: overlapped with the backward (the data-parallel ranks span machines)' two.log ||
  die "across the namespaces the gradient sums do not overlap the backward"
# sharding stage2 across them: each gradient reduced to its owner (non-blocking, during the backward) over TCP.
timeout 300 ip netns exec "$NS0" mpirun "${NETNS_MPIRUN_ARGS[@]}" "$OAR" pretrain pre.json --output_dir s2 --log_dir s2_log \
  --sharding stage2 > s2.log 2>&1 || { cat s2.log; die "stage2 across the namespaces"; }
same_losses one/metrics.jsonl s2/metrics.jsonl 10 1e-5 "sharding stage2 across the two namespaces logs the one-process losses"
# A pipeline and tensor parallelism across them: the stages' activations and gradients, and the tensor group's
# sums, over TCP (the one-process run's batch of 4 rows in one micro-batch, on each rank).
for layout in pipeline tensor; do
  timeout 300 ip netns exec "$NS0" mpirun "${NETNS_MPIRUN_ARGS[@]}" "$OAR" pretrain pre.json --output_dir "$layout" \
    --log_dir "${layout}_log" --per_device_train_batch_size 4 --${layout}_parallel_degree 2 > "$layout.log" 2>&1 ||
    { cat "$layout.log"; die "$layout parallelism across the namespaces"; }
  same_losses one/metrics.jsonl "$layout/metrics.jsonl" 10 1e-5 "$layout parallelism across the two namespaces logs the one-process losses"
done
echo "train_mpi_netns: ok"
