#!/usr/bin/env bash
# oar export (PaddleNLP's export_model.py): each format's export runs as the checkpoint does with the same flags
# (same perplexity, same greedy tokens), through `predict --mode static` and the other commands; its weights are
# on whole pages; flags that do not match the export, and exports that cannot be made or read, are one clear
# error with exit 2 and nothing written.
set -euo pipefail
source "$SRC/tests/cli/lib/common.sh"
M="$WORK/tiny"
"$OAR" create-model --preset tiny --dtype bfloat16 --output_dir "$M" --force >/dev/null
rm -rf ptq data e_* bad_*
make_calibration_data data 24
cat > ptq.json <<JSON
{"model_name_or_path": "$M", "dataset_name_or_path": "data", "output_dir": "ptq", "per_device_train_batch_size": 4,
 "ptq_step": 2, "do_ptq": true, "quant_type": "a8w8c8", "smooth": false, "src_length": 64, "max_length": 128}
JSON
"$OAR" quantize ptq.json >/dev/null
printf 'the cat sat on a mat while the dog ran past every house in the quiet town. %.0s' $(seq 1 6) > text.txt

# same_as_checkpoint NAME MODEL "FLAGS": exports MODEL with FLAGS to e_NAME, then compares perplexity (both KV
# caches: float32, and the engine's with --block_attn) and greedy predict ids with the checkpoint run with FLAGS.
same_as_checkpoint() {
  local name=$1 model=$2 flags=$3
  # shellcheck disable=SC2086
  "$OAR" export --model_name_or_path "$model" --output_path "e_$name" --inference_model --block_attn $flags > export.out
  grep -q "written to e_$name" export.out || { cat export.out; die "export $name printed no summary"; }
  local ppl_flags=${flags//--block_attn/}
  # shellcheck disable=SC2086
  "$OAR" perplexity --model_name_or_path "$model" $ppl_flags --input_file text.txt --ctx 32 > ck.ppl
  "$OAR" perplexity --model_name_or_path "e_$name" --input_file text.txt --ctx 32 > ex.ppl
  sed -i 's/, [0-9.]* tok\/s//' ck.ppl ex.ppl  # all but the speed
  cmp -s ck.ppl ex.ppl || { cat ck.ppl ex.ppl; die "$name: the export's perplexity differs from the checkpoint's"; }
  # shellcheck disable=SC2086
  "$OAR" predict --model_name_or_path "$model" $flags --block_attn --prompt "the cat sat" --max_length 12 \
    --decode_strategy greedy_search --output_file ck.jsonl 2>/dev/null
  # shellcheck disable=SC2086
  "$OAR" predict --model_name_or_path "e_$name" --mode static --inference_model --block_attn $flags --prompt "the cat sat" \
    --max_length 12 --decode_strategy greedy_search --output_file ex.jsonl 2>/dev/null
  cmp -s ck.jsonl ex.jsonl || { cat ck.jsonl ex.jsonl; die "$name: predict --mode static differs from the checkpoint"; }
  echo "  $name: $(cut -c1-60 ex.ppl | head -1)"
}
same_as_checkpoint bf16 "$M" ""
same_as_checkpoint f32 "$M" "--dtype float32"
same_as_checkpoint int8 "$M" "--quant_type weight_only_int8"
same_as_checkpoint a8w8 ptq "--quant_type a8w8"
same_as_checkpoint a8w8c8 ptq "--quant_type a8w8c8"
same_as_checkpoint kv_dynamic "$M" "--cachekv_int8_type dynamic"
M110="$WORK/m110"
"$OAR" create-model --preset llama-110m --dtype float32 --vocab_size 512 --output_dir "$M110" --force >/dev/null
same_as_checkpoint int4 "$M110" "--quant_type weight_only_int4 --weightonly_group_size 64"
echo "ok: every format's export gives the checkpoint's perplexity and greedy tokens with the same flags"

python3 - e_a8w8c8 e_int4 <<'PY' || die "the export's files"
import json, struct, sys
for d in sys.argv[1:]:
    raw = open(d + "/model.packed.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    h = json.loads(raw[8:8 + n])
    meta = h.pop("__metadata__")
    assert (8 + n) % 4096 == 0, "data section not on a page"
    assert all(v["data_offsets"][0] % 4096 == 0 for v in h.values()), "a tensor not on a page"
    assert meta["oar_packed_version"] == "1"
    c = json.load(open(d + "/config.json"))
    for k in ["infer_model_block_size", "infer_model_max_seq_len", "infer_model_cachekv_int8_type", "infer_model_dtype"]:
        assert k in c, k
    # PaddleNLP's total_max_length: src_length + max_length (1024 + 1024), at most the model's context
    assert c["infer_model_block_size"] == 64, c
    assert c["infer_model_max_seq_len"] == min(2048, c["max_position_embeddings"]), c
print("  a8w8c8:", {k: v for k, v in json.load(open("e_a8w8c8/config.json")).items() if k.startswith("infer_model")})
PY
for f in tokenizer.json cachekv_scales.json; do [ -f "e_a8w8c8/$f" ] || die "the a8w8c8 export lacks $f"; done
grep -q '"infer_model_cachekv_int8_type": "static"' e_a8w8c8/config.json || die "a8w8c8's export records no static cache"
grep -q '"infer_model_quant_type": "weight_only_int4"' e_int4/config.json || die "int4's export records no quant type"
echo "ok: packed tensors on whole pages; config.json has PaddleNLP's infer_model_* keys; tokenizer and scales copied"

# errors: exit 2, one line, naming what is wrong; a failed export writes nothing
expect_err() {  # expect_err PATTERN COMMAND...
  local pat=$1; shift
  set +e; "$@" >/dev/null 2>err.txt; local rc=$?; set -e
  [ $rc -eq 2 ] && [ "$(wc -l < err.txt)" -eq 1 ] && grep -q -- "$pat" err.txt \
    || { cat err.txt; die "$* : want exit 2 and one line with '$pat' (got $rc)"; }
}
expect_err "e_a8w8 was exported with --quant_type a8w8, not weight_only_int8" \
  "$OAR" predict --model_name_or_path e_a8w8 --mode static --quant_type weight_only_int8 --prompt hi
expect_err "exported with --dtype bfloat16, not float32" "$OAR" perplexity --model_name_or_path e_bf16 --dtype float32 --input_file text.txt
expect_err "exported with --cachekv_int8_type static, not dynamic" \
  "$OAR" predict --model_name_or_path e_a8w8c8 --block_attn --cachekv_int8_type dynamic --prompt hi
expect_err "exported with --block_size 64, not 32" "$OAR" predict --model_name_or_path e_bf16 --block_attn --block_size 32 --prompt hi
expect_err "exported with --weightonly_group_size 64, not 128" \
  "$OAR" predict --model_name_or_path e_int4 --weightonly_group_size 128 --prompt hi
expect_err "tiny: --mode static runs an oar export" "$OAR" predict --model_name_or_path "$M" --mode static --prompt hi
expect_err "merge the LoRA adapter when exporting" "$OAR" predict --model_name_or_path e_bf16 --lora_path "$M" --prompt hi
expect_err "e_bf16: already exists (pass --force" "$OAR" export --model_name_or_path "$M" --output_path e_bf16
expect_err "e_bf16: is already an export" "$OAR" export --model_name_or_path e_bf16 --output_path bad_out
expect_err "cachekv_scales.json: the static int8 KV cache needs this file" \
  "$OAR" export --model_name_or_path "$M" --output_path bad_out --quant_type a8w8c8
expect_err "oar export takes a checkpoint directory" "$OAR" export --model_name_or_path text.txt --output_path bad_out
[ ! -e bad_out ] || die "a failed export left bad_out behind"
"$OAR" export --model_name_or_path "$M" --output_path e_bf16 --force --dtype float32 > /dev/null
grep -q '"infer_model_dtype": "float32"' e_bf16/config.json || die "--force did not replace the export"
# A packed file cut short, or with metadata that lies, is named in the error.
cp -r e_int8 bad_trunc && head -c 20000 e_int8/model.packed.safetensors > bad_trunc/model.packed.safetensors
expect_err "bad_trunc/model.packed.safetensors: " "$OAR" predict --model_name_or_path bad_trunc --prompt hi
cp -r e_int8 bad_meta
python3 - bad_meta/model.packed.safetensors <<'PY'
import struct, sys
p = sys.argv[1]
raw = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
head = raw[8:8 + n].decode()
bad = head.replace('weight_only_int8', 'weight_only_int4', 1)   # int8 bytes claimed as int4: parts mismatch
assert bad != head and len(bad) == n
raw[8:8 + n] = bad.encode()
open(p, "wb").write(raw)
PY
expect_err "bad_meta/model.packed.safetensors: tensor 'model.layers.0.[a-z_.]*' is stored as 'weight_only_int4'" \
  "$OAR" perplexity --model_name_or_path bad_meta --input_file text.txt
echo "ok: mismatched flags, a checkpoint run as static, bad exports and lying files are one clear error each"
