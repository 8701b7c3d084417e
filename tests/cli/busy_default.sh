#!/usr/bin/env bash
# oar's own OpenMP default keeps a busy machine usable: `oar env` reports the wait policy in effect (oar's default
# unless the user set one), and with 2 busy-loop processes competing, training a tiny model under oar's default
# burns far less CPU per step than under libgomp's default, whose idle threads spin 300,000 times at every barrier
# and so spend their time slices waiting for descheduled peers (users saw 1.6-3.3 s per step instead of
# milliseconds). CPU time is the robust measure here: wall time on a loaded 2-core machine swings too much to
# assert on (bench/busy_machine.py measures it, quiet and loaded, for BENCHMARKS.md).
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
clean_env=(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT)

"${clean_env[@]}" "$OAR" env > env.txt
grep -Eq "OpenMP waiting +: .*(OMP_WAIT_POLICY=passive|GOMP_SPINCOUNT)" env.txt || { cat env.txt; die "oar env must show oar's default wait policy"; }
env -u GOMP_SPINCOUNT OMP_WAIT_POLICY=active "$OAR" env | grep -q "OMP_WAIT_POLICY=active" || die "a user's OMP_WAIT_POLICY must be kept"
echo "ok: oar env shows the wait policy; a user's own setting is kept"

"$OAR" create-model --preset tiny --dtype float32 --output_dir tiny --force >/dev/null
python3 - <<'PY'
import json, random
r = random.Random(0)
words = "the of and to in a is that for it as was with be by on not this are or from at".split()
with open("corpus.jsonl", "w") as f:
    for _ in range(400):
        f.write(json.dumps({"text": " ".join(r.choice(words) for _ in range(120))}) + "\n")
json.dump({"model_name_or_path": "tiny", "tokenizer_name_or_path": "tiny", "input_dir": "data", "output_dir": "out",
           "continue_training": False, "split": "100,0,0", "max_seq_length": 128, "per_device_train_batch_size": 8,
           "learning_rate": 1e-4, "warmup_steps": 0, "max_steps": 6, "logging_steps": 1, "save_steps": 100000,
           "do_train": True, "do_eval": False, "seed": 1, "disable_tqdm": True}, open("pretrain.json", "w"))
PY
mkdir -p data
"$OAR" preprocess --model_name_or_path tiny --input_path corpus.jsonl --output_prefix data/corpus --append_eos >/dev/null

cpu_ms_per_step() {  # CPU time (user + system, ms) of a 6-step run per step, and its median wall step (ms)
  rm -rf out
  python3 - "$@" "$OAR" pretrain pretrain.json <<'PY'
import json, resource, statistics, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
t = [e["interval_runtime"] for e in map(json.loads, open("out/metrics.jsonl")) if e.get("event") == "train"]
print(round((ru.ru_utime + ru.ru_stime) * 1e3 / len(t), 1), round(statistics.median(t[1:]) * 1e3, 1))
PY
}
busy=()
for _ in 1 2; do (while :; do :; done) & busy+=($!); done
trap 'kill "${busy[@]}" 2>/dev/null || true' EXIT
# Other tests share the machine under ctest -j, so one measurement can be unlucky (CI once saw 1.77x): take the
# best of up to three. A default that spun like libgomp's would give about 1x every time.
for attempt in 1 2 3; do
  read -r ours ours_wall < <(cpu_ms_per_step "${clean_env[@]}")
  read -r theirs theirs_wall < <(cpu_ms_per_step "${clean_env[@]}" GOMP_SPINCOUNT=300000)
  echo "attempt $attempt, with 2 busy loops: oar's default $ours ms of CPU per step ($ours_wall ms wall);" \
       "libgomp's default $theirs ms of CPU ($theirs_wall ms wall)"
  if python3 -c "import sys; sys.exit(0 if 1.5 * $ours < $theirs else 1)"; then
    echo "ok: on a busy machine oar's threads give their cores back instead of spinning"
    exit 0
  fi
done
die "oar's default ($ours ms of CPU per step) must waste far less than spinning threads ($theirs ms)"
