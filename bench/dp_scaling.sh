#!/usr/bin/env bash
# Data parallelism on this machine, on the 110M Llama (llama-110m preset, float32), `oar pretrain --benchmark`:
#  1. scaling: 2 MPI ranks x 1 thread against 1 process x 2 threads, the same global batch, alternating which runs
#     first; each run's Effective_Tokens_per_second (every rank's tokens over the run) and the ratio dp2 / one
#     process, median over rounds. The issue's target: >= 0.9.
#  2. pipeline parallelism: pp2 (2 ranks x 1 thread, 1F1B over PP_MICRO micro-batches of the whole batch) against
#     1 process x 2 threads on the same micro-batches; 1F1B's bubble bounds the ratio by PP_MICRO / (PP_MICRO + 1),
#     and the stages are unequal (the last also holds the LM head). With root, the bytes stage 0 sends across the
#     namespaces per step against theory (PP_MICRO x rows x seq x hidden float32 activations).
#  3. overlap over a 10 Gbit/s link (root only): the two ranks in two network namespaces joined by a veth pair
#     shaped with tc (tbf, 10 Gbit/s each way), the gradient sums summed after the backward (OAR_GRAD_OVERLAP=0)
#     and overlapped with it. From rank 0's metrics.jsonl (steps after the first): the step time, the time of the
#     sums, and the share of the blocking sums' time that the overlapped run hides. The issue's target: >= 70%.
#     Then the bytes rank 0 sends per step against theory for each layout: data parallelism, sharding stage1 and
#     stage2, pp2, tp2. ONLY=bytes runs this last part alone; ONLY=scaling runs part 1 alone.
#  4. memory (ONLY=memory, alone): each rank's peak resident memory (the trainer's "Peak memory" line) for data
#     parallelism, sharding stage1 and stage2 on 2 ranks, PP_MICRO micro-batches a step, against what each layout
#     keeps per rank in theory (weights 4P bytes, gradients 4P, AdamW moments 8P; data parallelism summed after the
#     backward splits the update by ranges and keeps half the moments, as stage1 does by whole parameters; stage2
#     also halves the gradients).
# Run it on a quiet machine, from the repository root, after `bash scripts/build.sh release`.
#
#   bench/dp_scaling.sh [ROUNDS=3] [STEPS=6] [SEQ=256] [BATCH_PER_RANK=2] [PP_MICRO=4]
set -euo pipefail
rounds="${1:-3}" steps="${2:-6}" seq="${3:-256}" per_rank="${4:-2}" pp_micro="${5:-4}"
OAR="$(pwd)/build/oar"
NETNS_LIB="$(pwd)/tests/cli/lib/netns.sh"
[ -x "$OAR" ] || { echo "$0: build/oar is missing (bash scripts/build.sh release)" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "$0: mpirun is missing (bash scripts/setup.sh)" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work="$(mktemp -d)"
trap 'delete_netns_pair 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"

"$OAR" create-model --preset llama-110m --dtype float32 --output_dir model --force >/dev/null
python3 - <<'PY'
import json, random
r = random.Random(5)
words = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no will more can said").split()
with open("corpus.jsonl", "w") as f:
    for _ in range(4000):
        f.write(json.dumps({"text": " ".join(r.choice(words) for _ in range(r.randint(50, 400)))}) + "\n")
PY
mkdir -p data
"$OAR" preprocess --model_name_or_path model --input_path corpus.jsonl --output_prefix data/corpus --append_eos >/dev/null
cat > cfg.json <<EOF
{"model_name_or_path": "model", "input_dir": "data", "max_seq_length": $seq, "learning_rate": 1e-4,
 "warmup_steps": 1, "logging_steps": 1, "max_steps": $steps, "do_train": true, "continue_training": true,
 "disable_tqdm": true, "benchmark": true, "split": "100,0,0", "output_dir": "out"}
EOF

if [ "${ONLY:-}" = memory ]; then
  echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; $(date -u +%F)"
  echo "llama-110m float32, 2 ranks x 1 thread, $per_rank rows x seq $seq a micro-batch, $pp_micro micro-batches, 3 steps"
  for layout in data stage1 stage2; do
    extra=(); [ $layout != data ] && extra=(--sharding $layout)
    mpirun -np 2 --oversubscribe -x OMP_NUM_THREADS=1 "$OAR" pretrain cfg.json --max_steps 3 --per_device_train_batch_size \
      "$per_rank" --gradient_accumulation_steps "$pp_micro" --log_dir "mem_$layout" "${extra[@]}" > "mem_$layout.log" 2>&1 ||
      { cat "mem_$layout.log"; exit 1; }
  done
  python3 - <<'PY'
import re
def peak(layout, r):
    return float(re.search(r"Peak memory of this process: ([0-9.]+) MiB", open(f"mem_{layout}/workerlog.{r}").read()).group(1))
params = int(re.search(r"Trainable parameters = (\d+)", open("mem_data.log").read()).group(1))
mib = params * 4 / 2**20
base = max(peak("data", r) for r in (0, 1))
print(f"P = {params} parameters: 4P = {mib:.0f} MiB")
for layout, theory in (("data", 0), ("stage1", 0), ("stage2", 0.5 * mib)):
    peaks = [peak(layout, r) for r in (0, 1)]
    saved = base - max(peaks)
    print(f"  {layout:<7} peak per rank {peaks[0]:7.0f} / {peaks[1]:7.0f} MiB; saved against data parallelism "
          f"{saved:6.0f} MiB (theory {theory:.0f} MiB" + (f": {saved / theory:.2f})" if theory else ")"))
PY
  exit 0
fi

tokens_per_second() { grep -o 'Effective_Tokens_per_second: [0-9.]*' "$1" | tail -n1 | awk '{print $2}'; }
one() {
  OMP_NUM_THREADS=2 "$OAR" pretrain cfg.json --per_device_train_batch_size $((2 * per_rank)) > one.log 2>&1 ||
    { cat one.log; exit 1; }
  tokens_per_second one.log
}
two() {
  mpirun -np 2 --oversubscribe -x OMP_NUM_THREADS=1 "$OAR" pretrain cfg.json --per_device_train_batch_size "$per_rank" \
    --log_dir dp_log > two.log 2>&1 || { cat two.log; exit 1; }
  tokens_per_second two.log
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; $(date -u +%F)"
echo "llama-110m float32, seq $seq, global batch $((2 * per_rank)) x $steps steps (first step included)"
PP_ARGS=(--per_device_train_batch_size $((2 * per_rank)) --gradient_accumulation_steps "$pp_micro")
if [ "${ONLY:-}" != bytes ]; then
# rounds_of LABEL BASELINE CANDIDATE: each round runs both (alternating which goes first) and prints their tokens/s and
# the ratio candidate / baseline; then the median ratio.
rounds_of() {
  local label=$1 base=$2 cand=$3 a b ratio ratios=()
  printf '%-6s %16s %16s %8s\n' round "1x2 threads" "$label" ratio
  for r in $(seq "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then a=$($base); b=$($cand); else b=$($cand); a=$($base); fi
    ratio=$(python3 -c "print(f'{$b / $a:.3f}')")
    ratios+=("$ratio")
    printf '%-6s %16s %16s %8s\n' "$r" "$a" "$b" "$ratio"
  done
  python3 -c "import statistics, sys; print(f'median ratio ({sys.argv[1]} / 1 process):', statistics.median(map(float, sys.argv[2:])))" \
    "$label" "${ratios[@]}"
}
rounds_of "2 ranks x 1" one two

[ "${ONLY:-}" = scaling ] && exit 0
# 2. The pipeline on this machine: the same micro-batches through 2 stages against one process.
one_micro() {
  OMP_NUM_THREADS=2 "$OAR" pretrain cfg.json "${PP_ARGS[@]}" > one_micro.log 2>&1 || { cat one_micro.log; exit 1; }
  tokens_per_second one_micro.log
}
pp2() {
  mpirun -np 2 --oversubscribe -x OMP_NUM_THREADS=1 "$OAR" pretrain cfg.json "${PP_ARGS[@]}" --pipeline_parallel_degree 2 \
    --log_dir pp_log > pp2.log 2>&1 || { cat pp2.log; exit 1; }
  tokens_per_second pp2.log
}
echo
echo "pipeline: $pp_micro micro-batches of $((2 * per_rank)) rows a step; bound from the bubble $pp_micro/$((pp_micro + 1))"
rounds_of "pp2 x 1 thread" one_micro pp2
fi

# 3. Overlap across two network namespaces over a shaped 10 Gbit/s link.
source "$NETNS_LIB"
if ! make_netns_pair $$ > netns.txt; then
  echo "overlap over 10 Gbit/s: skipped ($(cat netns.txt))"
  exit 0
fi
ip netns exec "$NS0" tc qdisc add dev "$DEV0" root tbf rate 10gbit burst 2mb latency 20ms
ip netns exec "$NS1" tc qdisc add dev "$DEV1" root tbf rate 10gbit burst 2mb latency 20ms
tx_bytes() { ip -n "$NS0" -s -j link show dev "$DEV0" | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['stats64']['tx']['bytes'])"; }
across() {  # OAR_GRAD_OVERLAP value, output dir, more arguments; writes the bytes rank 0 sent to the other rank in DIR.bytes
  local before ov=$1 out=$2; shift 2; before=$(tx_bytes)
  ip netns exec "$NS0" mpirun "${NETNS_MPIRUN_ARGS[@]}" -x OMP_NUM_THREADS=1 -x OAR_GRAD_OVERLAP="$ov" \
    -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM "$OAR" pretrain cfg.json \
    --per_device_train_batch_size "$per_rank" --output_dir "$out" --log_dir "${out}_log" "$@" > "$out.log" 2>&1 ||
    { cat "$out.log"; exit 1; }
  echo $(( $(tx_bytes) - before )) > "$out.bytes"
}
# Bytes rank 0 sends per step, net of the start's broadcast of the weights (one copy), in copies of the gradients;
# and the step time (steps after the first).
per_step() {  # output dir
  python3 - "$1" <<'PY'
import json, re, sys
d = sys.argv[1]
params = int(re.search(r"Trainable parameters = (\d+)", open(f"{d}.log").read()).group(1))
ev = [e for e in map(json.loads, open(f"{d}/metrics.jsonl")) if e.get("event") == "train"]
copies = (int(open(f"{d}.bytes").read()) - 4 * params) / len(ev) / (4 * params)
step = sum(e["interval_runtime"] for e in ev[1:]) / (len(ev) - 1)
# Rank 0's share of the parameters under sharding (its moments' MiB over all of them): what it broadcasts.
share = re.search(r"optimizer state ([0-9.]+) MiB \(float32 moments, this rank's share", open(f"{d}.log").read())
owned = f", rank 0 owns {float(share.group(1)) * 2**20 / (8 * params):.3f} of the parameters" if share else ""
print(f"{copies:.3f} copies ({copies * 4 * params / 1e6:.1f} MB) a step, step {step:.3f} s{owned}")
PY
}
echo
echo "overlap: 2 ranks in two network namespaces, tc tbf 10 Gbit/s each way, TCP; steps 2..$steps"
printf '%-11s %10s %10s %12s\n' mode "step (s)" "sums (s)" "exposed (s)"
shares=()
[ "${ONLY:-}" = bytes ] && rounds_link=1 || rounds_link=$rounds
for r in $(seq "$rounds_link"); do
  across 0 blocking
  across 1 overlapped
  share=$(python3 - <<'PY'
import json
def steps(d):
    ev = [e for e in map(json.loads, open(f"{d}/metrics.jsonl")) if e.get("event") == "train"][1:]
    n = len(ev)
    step = sum(e["interval_runtime"] for e in ev) / n
    sums = sum(e["grad_sync_seconds"] for e in ev) / n
    exposed = sum(e["grad_sync_seconds"] * (1 - e["grad_sync_hidden_share"]) for e in ev) / n
    return step, sums, exposed
b, o = steps("blocking"), steps("overlapped")
share = 1 - o[2] / b[1]
import sys
for name, (st, su, ex) in (("blocking", b), ("overlapped", o)):
    print(f"{name:<11} {st:10.3f} {su:10.3f} {ex:12.3f}", file=sys.stderr)
print(f"{share:.3f}")
PY
)
  shares+=("$share")
  echo "round $r: hidden share of the blocking sums: $share"
done
python3 -c "import statistics, sys; print('median hidden share:', statistics.median(map(float, sys.argv[1:])))" "${shares[@]}"
# Bytes per step against theory, rank 0's side, per layout (2 ranks): data parallelism's all-reduce sends 1 copy of
# the gradients; sharding stage1 adds the broadcast of rank 0's updated share f (1 + f); stage2 reduces each
# gradient to its owner instead (1 - f) and broadcasts (f): 1.
echo "bytes on the link, rank 0 (theory: data 1.0, stage1 1 + f, stage2 1.0 copies of the gradients a step):"
echo "  data parallel (blocking): $(per_step blocking)"
echo "  data parallel (overlapped): $(per_step overlapped)"
for stage in stage1 stage2; do
  across 1 "$stage" --sharding "$stage"
  echo "  sharding $stage (overlapped): $(per_step "$stage")"
done
# Pipeline: stage 0 sends each micro-batch's activations (rows x seq x hidden float32) to stage 1; the gradients
# come back the other way.
across 1 pp_link "${PP_ARGS[@]}" --pipeline_parallel_degree 2
python3 - "$pp_micro" "$((2 * per_rank))" "$seq" <<'PY'
import json, sys
micro, rows, seq = map(int, sys.argv[1:])
hidden = json.load(open("model/config.json"))["hidden_size"]
steps = sum(1 for e in map(json.loads, open("pp_link/metrics.jsonl")) if e.get("event") == "train")
got, theory = int(open("pp_link.bytes").read()) / steps, micro * rows * seq * hidden * 4
print(f"  pipeline pp2, stage 0: {got / 1e6:.2f} MB a step against {theory / 1e6:.2f} MB of activations ({got / theory:.3f}x)")
PY
# Tensor parallelism: in each micro-batch a rank sends its part of every sum over the group, [rows x seq, hidden]
# float32 each: per layer two in the forward (o_proj, down_proj) and two in the backward (the input gradients of
# q/k/v and of gate/up), and two more (the embedding; the LM head's input gradient), plus the cross-entropy's
# row statistics (4 floats a row).
across 1 tp_link --per_device_train_batch_size $((2 * per_rank)) --tensor_parallel_degree 2
python3 - "$((2 * per_rank))" "$seq" <<'PY'
import json, sys
rows, seq = map(int, sys.argv[1:])
cfg = json.load(open("model/config.json"))
steps = sum(1 for e in map(json.loads, open("tp_link/metrics.jsonl")) if e.get("event") == "train")
tokens = rows * seq
theory = (4 * cfg["num_hidden_layers"] + 2) * tokens * cfg["hidden_size"] * 4 + 4 * tokens * 4
got = int(open("tp_link.bytes").read()) / steps
print(f"  tensor tp2, rank 0: {got / 1e6:.2f} MB a step against {theory / 1e6:.2f} MB of partial sums ({got / theory:.3f}x)")
PY
