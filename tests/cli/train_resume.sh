#!/usr/bin/env bash
# oar pretrain killed with SIGKILL mid-training resumes from its newest checkpoint and logs exactly the per-step
# losses of an uninterrupted run, ending with the same weights; the final model loads in oar predict.
set -euo pipefail
# One thread: tiny matrices gain nothing from two, and a loaded machine (ctest -j) makes OpenMP barriers crawl.
export OMP_NUM_THREADS=1
source "$SRC/tests/cli/lib/common.sh"
rm -rf full cut
M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null

# A small corpus: numbered sentences, tokenized into .bin/.idx.
make_word_corpus "$M" data/corpus

cat > pre.json <<EOF
{"model_name_or_path": "$M", "input_dir": "data", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
 "max_seq_length": 32, "learning_rate": 0.003, "warmup_steps": 3, "logging_steps": 1, "save_steps": 5,
 "save_total_limit": 2, "max_steps": 200, "do_train": true, "continue_training": false, "disable_tqdm": true,
 "lr_scheduler_type": "cosine", "weight_decay": 0.01, "split": "98,2,0"}
EOF

"$OAR" pretrain pre.json --output_dir full > full.log 2>&1 || { cat full.log; die "uninterrupted run failed"; }

# The same run, killed with SIGKILL once step 12 has been logged (checkpoint-10 exists by then).
"$OAR" pretrain pre.json --output_dir cut > cut1.log 2>&1 &
pid=$!
for _ in $(seq 1 3000); do
  if [ -f cut/metrics.jsonl ] && grep -q '"step":12,' cut/metrics.jsonl; then break; fi
  kill -0 $pid 2>/dev/null || break
  sleep 0.01
done
kill -9 $pid 2>/dev/null || die "the run finished before it could be killed (make it longer)"
wait $pid 2>/dev/null && die "the killed run exited normally" || true
[ -d cut/checkpoint-10 ] || die "no checkpoint-10 in the killed run"
! grep -q train_end cut/metrics.jsonl || die "the killed run had finished"
echo "ok: killed at step $(grep -c '"event":"train"' cut/metrics.jsonl) with $(ls -d cut/checkpoint-* | xargs -n1 basename | tr '\n' ' ')"

"$OAR" pretrain pre.json --output_dir cut > cut2.log 2>&1 || { cat cut2.log; die "resumed run failed"; }
grep -q "^Resuming from cut/checkpoint-" cut2.log || { cat cut2.log; die "the second run did not resume"; }

python3 - <<'PY' || die "resumed losses differ"
import json
def losses(p):
    return [(e["step"], e["loss"]) for e in map(json.loads, open(p)) if e["event"] == "train"]
a, b = losses("full/metrics.jsonl"), losses("cut/metrics.jsonl")
assert len(a) == 200 and [s for s, _ in a] == list(range(1, 201)), "uninterrupted run: %d steps" % len(a)
assert [s for s, _ in b] == list(range(1, 201)), "resumed run's steps: %s" % [s for s, _ in b][:20]
bad = [(s, x, y) for (s, x), (_, y) in zip(a, b) if x != y]
assert not bad, "first differences: %s" % bad[:5]
print("ok: 200 per-step losses identical after SIGKILL and resume")
PY
cmp -s full/model.safetensors cut/model.safetensors || die "final weights differ"
echo "ok: final weights identical"
ls cut | grep -q '^checkpoint-200$' || die "no final checkpoint"
[ "$(ls -d cut/checkpoint-* | wc -l)" -eq 2 ] || die "save_total_limit 2 not honoured"

# The final model loads in oar predict.
"$OAR" predict --model_name_or_path cut --prompt "the license" --max_length 8 --decode_strategy greedy_search > pred.txt \
  || die "oar predict cannot load the trained model"
[ -s pred.txt ] || die "oar predict printed nothing"
echo "ok: the trained model generates: $(head -c 60 pred.txt)"

# warmup_steps >= max_steps, as Paddle's WarmupDecay schedules run it: the whole run warms up (the lr logged after
# step k is learning_rate * (k + 1) / warmup_steps), and a step past both warmup and decay is min_learning_rate.
for w in 10 4; do
  "$OAR" pretrain pre.json --output_dir warm$w --max_steps 4 --warmup_steps $w --save_steps 100 > warm$w.log 2>&1 \
    || { cat warm$w.log; die "pretrain with warmup_steps $w >= max_steps 4 failed"; }
done
python3 - <<'PY' || die "learning rates with warmup_steps >= max_steps"
import json
def lrs(p):
    return [e["learning_rate"] for e in map(json.loads, open(p)) if e["event"] == "train"]
for w, want in ((10, [0.003 * (k + 1) / 10 for k in range(1, 5)]),
                (4, [0.003 * (k + 1) / 4 for k in range(1, 4)] + [1e-5])):  # PaddleNLP's min_learning_rate 1e-5
    want = [float("%.3e" % x) for x in want]  # PaddleNLP logs the lr with 3 decimals
    got = lrs("warm%d/metrics.jsonl" % w)
    assert len(got) == 4 and all(abs(g - x) <= 1e-12 for g, x in zip(got, want)), (w, got, want)
print("ok: warmup_steps >= max_steps runs with Paddle's learning rates")
PY
