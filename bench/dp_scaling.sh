#!/usr/bin/env bash
# Data-parallel scaling on this machine: `oar pretrain --benchmark` on the 110M Llama (llama-110m preset, float32)
# as 2 MPI ranks x 1 thread against 1 process x 2 threads, the same global batch, alternating which runs first.
# Prints each run's Effective_Tokens_per_second (every rank's tokens over the run) and the ratio dp2 / one process,
# median over rounds. The issue's target: >= 0.9. Run it on a quiet machine, from the repository root, after
# `bash scripts/build.sh release`.
#
#   bench/dp_scaling.sh [ROUNDS=3] [STEPS=6] [SEQ=256] [BATCH_PER_RANK=2]
set -euo pipefail
rounds="${1:-3}" steps="${2:-6}" seq="${3:-256}" per_rank="${4:-2}"
OAR="$(pwd)/build/oar"
[ -x "$OAR" ] || { echo "$0: build/oar is missing (bash scripts/build.sh release)" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "$0: mpirun is missing (bash scripts/setup.sh)" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
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
printf '%-6s %16s %16s %8s\n' round "1x2 threads" "2 ranks x 1" ratio
ratios=()
for r in $(seq "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then a=$(one); b=$(two); else b=$(two); a=$(one); fi
  ratio=$(python3 -c "print(f'{$b / $a:.3f}')")
  ratios+=("$ratio")
  printf '%-6s %16s %16s %8s\n' "$r" "$a" "$b" "$ratio"
done
python3 -c "import statistics, sys; print('median ratio (2 ranks / 1 process):', statistics.median(map(float, sys.argv[1:])))" "${ratios[@]}"
