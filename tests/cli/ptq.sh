#!/usr/bin/env bash
# PaddleNLP's PTQ for a8w8 (`oar quantize`, and `oar finetune` of a file with do_ptq): the scale files it writes
# are complete and read back by predict and perplexity (static activation steps; a8w8c8's static KV cache);
# SmoothQuant's output is the same float model with smoothed weights; what is not built (Shift, GPTQ, AWQ) and
# bad settings are one clear error, and no output is left behind.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype float32 --output_dir "$M" --force >/dev/null
rm -rf data out out2 bad_out smooth_out smooth_paddle paddle_ck
make_calibration_data data 40
echo '{}' > "$M/optimizer.state.json"  # not a model file: PTQ's output leaves it out
cat > ptq.json <<JSON
{"model_name_or_path": "$M", "dataset_name_or_path": "data", "output_dir": "out", "per_device_train_batch_size": 4,
 "ptq_step": 3, "do_ptq": true, "quant_type": "a8w8c8", "smooth": false, "bf16": true, "learning_rate": 3e-5,
 "src_length": 64, "max_length": 128}
JSON
"$OAR" finetune ptq.json > ptq.out
grep -q "ptq: batch 3/3" ptq.out || { cat ptq.out; die "finetune with do_ptq did not calibrate 3 batches"; }
for f in act_scales.json weight_scales.json cachekv_scales.json config.json model.safetensors tokenizer.json; do
  [ -f "out/$f" ] || die "PTQ output lacks $f"
done
[ ! -e out/optimizer.state.json ] || die "PTQ copied a file that is not the model's"
cmp -s out/model.safetensors "$M/model.safetensors" || die "PTQ changed the weights"
# "do_ptq" as a string, as PaddleNLP's parser also takes it, routes to PTQ as well
python3 -c "import json; d=json.load(open('ptq.json')); d['do_ptq']='true'; d['output_dir']='out2'; json.dump(d, open('ptq2.json','w'))"
"$OAR" finetune ptq2.json > ptq2.out
grep -q "ptq: batch 3/3" ptq2.out || die "do_ptq \"true\" did not run PTQ"
cmp -s out/act_scales.json out2/act_scales.json || die "two PTQ runs on the same data wrote different scales"
python3 - "$M" out <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1] + "/config.json"))
L, G, F, C = cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["hidden_size"]
act = json.load(open(sys.argv[2] + "/act_scales.json"))
assert len(act) == 4 * L and all(v > 0 for v in act.values()), act
for l in range(L):
    for k in ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"]:
        assert f"llama.layers.{l}.{k}.activation_quanter" in act
w = json.load(open(sys.argv[2] + "/weight_scales.json"))
assert len(w) == 7 * L and len(w["llama.layers.0.mlp.gate_proj.weight_quanter"]) == F
assert len(w["llama.layers.0.mlp.down_proj.weight_quanter"]) == C
kv = json.load(open(sys.argv[2] + "/cachekv_scales.json"))
assert len(kv) == 2 * L and all(len(v) == G and min(v) > 0 for v in kv.values())
q = json.load(open(sys.argv[2] + "/config.json"))["quantization_config"]
assert q["quant_type"] == "a8w8c8" and q["smooth"] is False, q
PY
echo "ok: finetune with do_ptq writes complete act, weight and cachekv scales and quantization_config"

# The output runs: a8w8 with the calibrated static steps (the perplexity differs from per-token steps and
# stays near float32's), a8w8c8 with the static int8 cache from cachekv_scales.json.
printf 'the cat sat on a mat while the dog ran past every house in the quiet town. %.0s' $(seq 1 6) > text.txt
"$OAR" perplexity --model_name_or_path "$M" --input_file text.txt --ctx 32 > f32.txt
"$OAR" perplexity --model_name_or_path out --quant_type a8w8 --input_file text.txt --ctx 32 > static.txt
"$OAR" perplexity --model_name_or_path "$M" --quant_type a8w8 --input_file text.txt --ctx 32 > dynamic.txt
python3 - f32.txt static.txt dynamic.txt <<'PY' || die "a8w8 with calibrated scales"
import sys
f, s, d = (float(open(p).read().split()[1]) for p in sys.argv[1:4])
assert s != d and abs(s / f - 1) < 0.05, (f, s, d)
print(f"  perplexity: float32 {f}, a8w8 static {s}, a8w8 per token {d}")
PY
q=$("$OAR" predict --model_name_or_path out --quant_type a8w8c8 --block_attn --prompt "the cat" --max_length 6 \
  --decode_strategy greedy_search)
[ -n "$q" ] || die "a8w8c8 predict on the PTQ output printed nothing"
"$OAR" quantize ptq.json >/dev/null 2>err.txt && die "quantize replaced an existing output_dir" || true
grep -q "out: output_dir already exists" err.txt || { cat err.txt; die "the refusal should name output_dir"; }
echo "ok: the PTQ output runs as a8w8 (static steps) and a8w8c8 (static cache); an existing output_dir is kept"

# SmoothQuant as PaddleNLP's ptq_argument.json sets it: the smoothed model is the same model in float (its
# perplexity unchanged to float32's rounding), each group's sampled a8w8 error does not grow, and the output
# records smooth and runs as a8w8.
python3 -c "import json; d=json.load(open('ptq.json')); d.update({'output_dir': 'smooth_out', 'quant_type': 'a8w8', 'smooth': True, 'smooth_all_linears': True, 'smooth_piecewise_search': True, 'smooth_k_piece': 3, 'smooth_search_piece': True, 'smooth_step': 2}); json.dump(d, open('smooth.json', 'w'))"
"$OAR" finetune smooth.json > smooth.out
[ "$(grep -c "ptq: smooth model.layers" smooth.out)" -eq 8 ] || { cat smooth.out; die "smoothing did not report 4 groups per layer"; }
python3 - smooth.out <<'PY' || die "smoothing made a group's a8w8 error worse"
import re, sys
for m in re.finditer(r"error on sampled rows ([0-9.e+-]+) -> ([0-9.e+-]+)", open(sys.argv[1]).read()):
    assert float(m.group(2)) <= float(m.group(1)), m.group(0)
PY
grep -q '"smooth": true' smooth_out/config.json || die "the smoothed output's quantization_config does not say smooth"
cmp -s smooth_out/model.safetensors "$M/model.safetensors" && die "smoothing left the weights as they were"
"$OAR" perplexity --model_name_or_path smooth_out --input_file text.txt --ctx 32 > smooth_f32.txt
"$OAR" perplexity --model_name_or_path smooth_out --quant_type a8w8 --input_file text.txt --ctx 32 > smooth_a8.txt
python3 - f32.txt smooth_f32.txt smooth_a8.txt <<'PY' || die "the smoothed model"
import sys
f, s, q = (float(open(p).read().split()[1]) for p in sys.argv[1:4])
assert abs(s / f - 1) < 1e-4 and abs(q / f - 1) < 0.05, (f, s, q)
print(f"  perplexity: float32 {f}, smoothed float32 {s}, smoothed a8w8 static {q}")
PY
echo "ok: SmoothQuant (all linears, piecewise search) keeps the float model, lowers no group's error, runs as a8w8"

# A PaddleNLP checkpoint whose config says tied while it keeps its own lm_head (as PaddleNLP 2.8.1 saves them):
# the smoothed output, in Hugging Face names, must still use that head.
"$OAR" convert --model_name_or_path "$M" --to paddle --output_path paddle_ck --force >/dev/null
python3 -c "import json; p='paddle_ck/config.json'; c=json.load(open(p)); c['tie_word_embeddings']=True; json.dump(c, open(p,'w'))"
python3 -c "import json; d=json.load(open('smooth.json')); d.update({'model_name_or_path': 'paddle_ck', 'output_dir': 'smooth_paddle', 'quant_type': 'a8w8c8'}); json.dump(d, open('smooth_paddle.json', 'w'))"
"$OAR" quantize smooth_paddle.json > smooth_paddle.out
# with a8w8c8 o_proj is not smoothed (it would rescale the int8 V cache's channels): 3 groups per layer
[ "$(grep -c "ptq: smooth model.layers" smooth_paddle.out)" -eq 6 ] && ! grep -q "smooth model.layers.0.self_attn.o_proj" smooth_paddle.out \
  || { cat smooth_paddle.out; die "a8w8c8 smoothed o_proj"; }
"$OAR" perplexity --model_name_or_path smooth_paddle --input_file text.txt --ctx 32 > smooth_paddle.txt
python3 - f32.txt smooth_paddle.txt <<'PY' || die "the smoothed PaddleNLP checkpoint lost its own lm_head"
import sys
f, s = (float(open(p).read().split()[1]) for p in sys.argv[1:3])
assert abs(s / f - 1) < 1e-4, (f, s)
PY
echo "ok: a PaddleNLP checkpoint with its own lm_head keeps it through smoothing; a8w8c8 leaves o_proj's input"

# errors: exit 2, one line naming the file, nothing written
expect_ptq_err() {  # expect_ptq_err PATTERN JSON_EDIT
  python3 -c "import json,sys; d=json.load(open('ptq.json')); d['output_dir']='bad_out'; d.update(json.loads(sys.argv[1])); json.dump(d, open('bad.json','w'))" "$2"
  set +e; "$OAR" quantize bad.json >/dev/null 2>err.txt; local rc=$?; set -e
  [ $rc -eq 2 ] && [ "$(wc -l < err.txt)" -eq 1 ] && grep -q -- "$1" err.txt && grep -q "bad.json\|data" err.txt \
    || { cat err.txt; die "quantize with $2: want exit 2 mentioning '$1' (got $rc)"; }
  [ ! -e bad_out ] || die "a failed PTQ left bad_out behind"
}
expect_ptq_err "'shift': true is not built yet" '{"shift": true}'
expect_ptq_err "'search_alpha_min' and 'search_alpha_max'" '{"smooth": true, "search_alpha_max": 1.5}'
expect_ptq_err "smooth_sampler 'ema'" '{"smooth": true, "smooth_sampler": "ema"}'
expect_ptq_err "quant_type 'weight_only_int8'" '{"quant_type": "weight_only_int8"}'
expect_ptq_err "act_quant_method 'hist'" '{"act_quant_method": "hist"}'
expect_ptq_err "'ptq_step' must be a positive integer" '{"ptq_step": 0}'
expect_ptq_err "'do_train' and 'do_ptq' are both true" '{"do_train": true}'
expect_ptq_err "'output_dir' must name a directory" '{"output_dir": ""}'
expect_ptq_err "no_such_data: dataset_name_or_path is not a directory" '{"dataset_name_or_path": "no_such_data"}'
echo "ok: PTQ errors are one line with exit 2 and leave no output"
