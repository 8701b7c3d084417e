#!/usr/bin/env bash
# max_length against the model's max_position_embeddings. PaddleNLP does not compare them (its own
# lora_argument.json asks max_length 2048 of any model), so oar fine-tunes a 24-position model with max_length 64
# while no example is longer than 24 tokens, and refuses, before writing anything, data with one that is, naming
# the key to change. Pretraining samples are always max_seq_length tokens: a larger one is refused up front.
set -euo pipefail
export OMP_NUM_THREADS=1
mkdir -p "$WORK"; cd "$WORK"
rm -rf out_* short long data
die() { echo "FAIL: $*"; exit 1; }
M="$WORK/tiny24"
"$OAR" create-model --preset tiny --dtype float32 --max_position_embeddings 24 --output_dir "$M" --force >/dev/null

python3 - <<'PY'
import json, os
for name, srcs in (("short", ["a b", "c d", "e f"]), ("long", ["a b", " ".join("abcdefghij" * 4), "e f"])):
    os.makedirs(name, exist_ok=True)
    for split in ("train", "dev"):
        with open(f"{name}/{split}.json", "w") as f:
            for s in srcs: f.write(json.dumps({"src": s, "tgt": "ok"}) + "\n")
PY
cat > ft.json <<JSON
{"model_name_or_path": "$M", "dataset_name_or_path": "short", "output_dir": "out_short",
 "per_device_train_batch_size": 1, "max_steps": 2, "learning_rate": 1e-3, "src_length": 48, "max_length": 64,
 "do_train": true, "do_eval": true, "disable_tqdm": true, "save_strategy": "no"}
JSON

"$OAR" finetune ft.json > short.log 2>&1 || { cat short.log; die "max_length 64 over 24 positions with short data must train"; }
grep -q 'after 2 steps' short.log || { cat short.log; die "did not train 2 steps"; }
echo "ok: max_length 64 > max_position_embeddings 24 trains while every example fits the model"

# One example (line 2 of long/train.json) is longer than the model's 24 positions: one line naming ft.json's
# max_length, the example and the limit; exit 2; no output directory.
set +e; "$OAR" finetune ft.json --dataset_name_or_path long --output_dir out_long > long.out 2> long.err; rc=$?; set -e
[ $rc -eq 2 ] || { cat long.out long.err; die "exit $rc (want 2) for an example longer than the model"; }
[ "$(wc -l < long.err)" -eq 1 ] || { cat long.err; die "not one line on stderr"; }
grep -Eq "^oar: error: ft.json: max_length 64 exceeds the model's max_position_embeddings 24 and the example at long/train.json:2 reaches [0-9]+ tokens; set max_length to at most 24$" long.err \
  || { cat long.err; die "the error does not name ft.json's max_length, the example and the limit"; }
[ ! -e out_long ] || die "out_long written although the run was refused"
# The suggested change works.
"$OAR" finetune ft.json --dataset_name_or_path long --output_dir out_long --max_length 24 --src_length 16 > fixed.log 2>&1 \
  || { cat fixed.log; die "max_length 24 must train on the same data"; }
echo "ok: an example longer than the model's positions is refused up front, naming max_length and the example"

# Pretraining continuing from the model: samples are max_seq_length tokens, so 32 > 24 is refused at once.
mkdir -p data
python3 -c 'import json; print("\n".join(json.dumps({"text": "a b c d e f g h i j " * 4}) for _ in range(20)))' > corpus.jsonl
"$OAR" preprocess --model_name_or_path "$M" --input_path corpus.jsonl --output_prefix data/corpus --append_eos >/dev/null
cat > pre.json <<JSON
{"model_name_or_path": "$M", "input_dir": "data", "output_dir": "out_pre", "continue_training": true,
 "max_seq_length": 32, "max_steps": 1, "do_train": true, "split": "100,0,0", "disable_tqdm": true}
JSON
set +e; "$OAR" pretrain pre.json > pre.out 2> pre.err; rc=$?; set -e
[ $rc -eq 2 ] || { cat pre.out pre.err; die "exit $rc (want 2) for max_seq_length over the model's positions"; }
grep -q "^oar: error: pre.json: max_seq_length 32 exceeds the model's max_position_embeddings 24 .*set max_seq_length to at most 24$" pre.err \
  || { cat pre.err; die "the pretraining error does not name the key to change"; }
[ ! -e out_pre ] || die "out_pre written although the run was refused"
echo "ok: pretraining max_seq_length over the model's positions is refused, naming max_seq_length"
