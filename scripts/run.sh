#!/usr/bin/env bash
# The main job on an embedded default, with no download: set up, build, describe the machine, create a
# TinyLlama-1.1B-shaped model with random bf16 weights, and benchmark generation on it with PaddleNLP's
# predictor flags (prompt 512 tokens, 64 new tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh release
./build/oar env
model=build/models/tinyllama-1.1b-random-bf16
if [ ! -f "$model/model.safetensors" ]; then
  ./build/oar create-model --preset tinyllama-1.1b --dtype bfloat16 --output_dir "$model"
fi
./build/oar predict --model_name_or_path "$model" --dtype bfloat16 --decode_strategy greedy_search \
  --src_length 512 --max_length 64 --batch_size 1 --benchmark
