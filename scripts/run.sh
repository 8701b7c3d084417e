#!/usr/bin/env bash
# The main job, on an embedded default and with no download beyond Debian packages: set up and build, then the
# whole life of a small Llama with PaddleNLP's workflow and argument files (configs/):
#   1. a corpus: Debian's license texts (/usr/share/common-licenses) plus generated lines with digits;
#   2. oar preprocess: JSON lines -> PaddleNLP's .bin/.idx;
#   3. oar pretrain configs/pretrain_demo.json: a 0.9M-parameter Llama from scratch (the loss falls from ~6.2);
#   4. exact match of the pretrained model on held-out "largest of 3 9 1 / smallest of ..." questions;
#   5. oar finetune configs/lora_demo.json: LoRA on that task;
#   6. oar predict --lora_path on the same held-out questions, a few shown, and a summary with the loss curves.
# About a minute on a 2-core machine after the build (61 s measured; more when the machine is shared). OAR_BENCHMARK=1 adds the previous main job, PaddleNLP's
# predictor benchmark on a TinyLlama-1.1B-shaped random model (2.2 GB created once in build/models).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${OAR_SKIP_BUILD:-0}" != 1 ]; then  # OAR_SKIP_BUILD=1 OAR=path/to/oar: reuse a binary
  bash scripts/setup.sh
  bash scripts/build.sh release
fi
OAR="${OAR:-./build/oar}"
J="${OAR_JOB_DIR:-build/job}"  # the configs name build/job; another directory is passed as overrides
PRE_ARGS=() FT_ARGS=()
if [ "$J" != build/job ]; then
  PRE_ARGS=(--tokenizer_name_or_path "$J/tokenizer" --input_dir "$J/data" --output_dir "$J/pretrain")
  FT_ARGS=(--model_name_or_path "$J/pretrain" --dataset_name_or_path "$J/sft" --output_dir "$J/lora")
fi
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.0f}')"; }
stage() { echo; echo "== $*"; }
T0=$(now)
"$OAR" env

stage "1/6 corpus and fine-tuning data"
rm -rf "$J"
mkdir -p "$J/data" "$J/sft"
# The tokenizer: create-model's byte-level BPE of 512 tokens (its random weights are not used).
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$J/tokenizer" --force >/dev/null
python3 - "$J" <<'PY'
import glob, json, random, sys
job = sys.argv[1]
r = random.Random(1)
docs = []
for path in sorted(glob.glob("/usr/share/common-licenses/*")):
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError):
        continue
    docs += [" ".join(p.split()) for p in text.split("\n\n") if len(p.strip()) > 40]
n_text = len(docs)
def digits():
    return " ".join(str(r.randint(0, 9)) for _ in range(r.randint(2, 8)))
def line():
    a, b = digits(), digits()
    return r.choice([f"the numbers {a} appear in section {b}.", f"copy {a} into {b}.", f"a list: {a}. another list: {b}.",
                     f"version {a} replaces version {b}."])
docs += [" ".join(line() for _ in range(r.randint(3, 8))) for _ in range(n_text)]
r.shuffle(docs)
with open(f"{job}/corpus.jsonl", "w") as f:
    for d in docs:
        f.write(json.dumps({"text": d}) + "\n")
# The fine-tuning task: the largest or the smallest of 3 to 7 digits. Never seen in pretraining.
def example():
    d = [r.randint(0, 9) for _ in range(r.randint(3, 7))]
    op = r.choice(["largest", "smallest"])
    return {"src": f"{op} of {' '.join(map(str, d))}", "tgt": str(max(d) if op == "largest" else min(d))}
for name, n in (("train", 6400), ("dev", 200)):
    with open(f"{job}/sft/{name}.json", "w") as f:
        for _ in range(n):
            f.write(json.dumps(example()) + "\n")
print(f"corpus: {len(docs)} documents ({n_text} license paragraphs, {len(docs) - n_text} generated); "
      f"fine-tuning: 6400 train / 200 held-out dev examples, e.g. {example()}")
PY

stage "2/6 oar preprocess"
T1=$(now)
"$OAR" preprocess --model_name_or_path "$J/tokenizer" --input_path "$J/corpus.jsonl" --output_prefix "$J/data/corpus" \
  --append_eos

stage "3/6 oar pretrain configs/pretrain_demo.json"
T2=$(now)
"$OAR" pretrain configs/pretrain_demo.json ${PRE_ARGS[@]+"${PRE_ARGS[@]}"}
T3=$(now)

predict_dev() {  # output file, then extra flags
  local out="$1"; shift
  "$OAR" predict --model_name_or_path "$J/pretrain" --data_file "$J/sft/dev.json" --output_file "$out" \
    --decode_strategy greedy_search --src_length 32 --max_length 4 --batch_size 16 "$@" >/dev/null
}
stage "4/6 oar predict: held-out exact match before fine-tuning"
predict_dev "$J/dev_before.json"

stage "5/6 oar finetune configs/lora_demo.json"
T4=$(now)
"$OAR" finetune configs/lora_demo.json ${FT_ARGS[@]+"${FT_ARGS[@]}"}
T5=$(now)

stage "6/6 oar predict --lora_path: the same held-out questions"
predict_dev "$J/dev_after.json" --lora_path "$J/lora"
T6=$(now)

stage "summary"
python3 - "$J" "$(secs "$T1" "$T2")" "$(secs "$T2" "$T3")" "$(secs "$T4" "$T5")" "$(secs "$T5" "$T6")" "$(secs "$T0" "$T6")" <<'PY'
import json, sys
job, t_pre, t_train, t_ft, t_pred, t_all = sys.argv[1:]
def events(path):
    return [json.loads(l) for l in open(path)]
def story(path):
    ev = events(path)
    tr = [e for e in ev if e["event"] == "train"]
    evs = [e for e in ev if e["event"] == "eval"]
    return tr, evs
def em(path):
    rows = [json.loads(l) for l in open(path)]
    return sum(r["output"].strip() == r["tgt"] for r in rows), len(rows), rows
tr, ev = story(f"{job}/pretrain/metrics.jsonl")
print(f"pretrain ({len(tr) and tr[-1]['global_step']} steps, {t_train} s): train loss {tr[0]['loss']:.3f} -> {tr[-1]['loss']:.3f}, "
      f"eval loss {ev[0]['eval_loss']:.3f} -> {ev[-1]['eval_loss']:.3f} (perplexity {ev[0]['eval_ppl']:.0f} -> {ev[-1]['eval_ppl']:.2f})")
tr, ev = story(f"{job}/lora/metrics.jsonl")
print(f"LoRA fine-tuning ({tr[-1]['global_step']} steps, {t_ft} s): eval loss {ev[0]['eval_loss']:.3f} -> {ev[-1]['eval_loss']:.3f}, "
      f"token accuracy {ev[0]['eval_accuracy']:.1%} -> {ev[-1]['eval_accuracy']:.1%}")
b, n, before = em(f"{job}/dev_before.json")
a, _, after = em(f"{job}/dev_after.json")
print(f"held-out exact match ({n} questions): {b / n:.1%} before -> {a / n:.1%} after LoRA")
print("a few held-out prompts (oar predict, greedy):")
for x, y in list(zip(before, after))[:6]:
    print(f"  {x['src']!r:28} want {x['tgt']}   before {x['output'].strip()[:24]!r:28} after {y['output'].strip()!r}")
print(f"loss curves: {job}/pretrain/loss_curve.svg  {job}/lora/loss_curve.svg")
print(f"models: {job}/pretrain (Hugging Face layout), {job}/lora (PEFT adapter; oar merge-lora makes a merged model)")
print(f"time: preprocess+pretrain {int(t_pre) + int(t_train)} s, LoRA {t_ft} s, predictions {t_pred} s; whole job {t_all} s")
PY

if [ "${OAR_BENCHMARK:-0}" = 1 ]; then
  stage "inference benchmark: TinyLlama-1.1B-shaped random bf16 model, PaddleNLP's predictor flags"
  model=build/models/tinyllama-1.1b-random-bf16
  if [ ! -f "$model/model.safetensors" ]; then
    "$OAR" create-model --preset tinyllama-1.1b --dtype bfloat16 --output_dir "$model"
  fi
  "$OAR" predict --model_name_or_path "$model" --dtype bfloat16 --decode_strategy greedy_search \
    --src_length 512 --max_length 64 --batch_size 1 --benchmark
else
  echo "(OAR_BENCHMARK=1 bash scripts/run.sh adds the inference benchmark on a TinyLlama-1.1B-shaped model)"
fi
