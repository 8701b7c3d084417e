#!/usr/bin/env python3
"""Reference checkpoints and logits from real PaddleNLP 2.8.1, and a checker for checkpoints oar writes.

Run it with the venv of tests/reference/paddle_venv.sh (paddlepaddle 3.0.0 CPU + paddlenlp 2.8.1):

  paddle_interop.py make OUT
      A tiny random Llama saved by PaddleNLP in every layout oar reads (one directory per variant under OUT,
      each with paddle_logits.safetensors = {"input_ids": int64 [T], "logits": float32 [T, vocab]}), a LoRA
      in two layouts, and OUT/MANIFEST.json.
  paddle_interop.py check DIR OAR_LOGITS [--lora BASE_DIR]
      PaddleNLP loads DIR (with --lora: DIR is a LoRA directory applied onto BASE_DIR's model), runs forward
      on OAR_LOGITS's "input_ids" and compares with its "logits". Exit 0 within tolerance, 1 over it.

  paddle_interop.py resume CHECKPOINT OAR_FINAL --data DATA.npz --steps N [--lora BASE_DIR] [--lr ...]
      PaddleNLP's Trainer (unified_checkpoint) resumes an oar run from CHECKPOINT (oar's save_format "paddle"),
      trains on to step N on DATA.npz's input_ids/labels rows (every row alike, so the sample order cannot
      matter) and compares its weights (or LoRA adapter) with OAR_FINAL, the same oar run's after step N.

Logits always come from the model's forward in eval mode without a cache: generate() is broken on
paddlepaddle 3.0.0 + paddlenlp 2.8.1.
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
from safetensors.numpy import load_file, save_file

SEED = 20240601
INPUT_IDS = [1, 17, 42, 255, 3, 128, 77, 9, 200, 64, 5, 31]
LOGITS_FILE = "paddle_logits.safetensors"
LORA_TARGETS = [f".*{name}.*" for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")]
F32_RTOL = 1e-4  # of max(1, max|logits|)
BF16_RTOL = 2e-2


def import_paddle():
    """paddle and paddlenlp take ~10 s to import: only the subcommands that need them pay for it."""
    import paddle

    paddle.set_device("cpu")
    from paddlenlp.utils.log import logger

    logger.set_level("WARNING")  # not one INFO line per file saved or loaded

    return paddle


def tiny_config(**overrides):
    from paddlenlp.transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_theta=10000,
        **overrides,
    )


def randomize(model, seed):
    """Overwrite every parameter from a seeded numpy generator. PaddleNLP's init (std 0.02, norms = 1) gives
    near-uniform attention and unit norm weights, which would hide a transposed matrix, a RoPE slip or two swapped
    norms; std 0.15 and norms of 1 +- 0.2 make every weight show in the logits."""
    rng = np.random.RandomState(seed)
    for name, param in model.named_parameters():
        shape = param.shape
        if name.endswith("norm.weight"):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        else:
            value = 0.15 * rng.standard_normal(shape)
        param.set_value(value.astype("float32"))


def build_model(**overrides):
    paddle = import_paddle()
    from paddlenlp.transformers import LlamaForCausalLM

    paddle.seed(SEED)
    model = LlamaForCausalLM(tiny_config(**overrides))
    randomize(model, SEED)
    model.eval()
    return model


def forward_logits(model, input_ids):
    """Float32 logits [T, vocab] of one sequence, full forward in eval mode, no cache."""
    paddle = import_paddle()
    ids = paddle.to_tensor(np.asarray(input_ids, dtype="int64")[None, :])
    with paddle.no_grad():
        out = model(input_ids=ids, use_cache=False, return_dict=True)
    return out.logits.astype("float32").numpy()[0]


def write_logits(out_dir, input_ids, logits):
    save_file(
        {"input_ids": np.asarray(input_ids, dtype="int64"), "logits": np.ascontiguousarray(logits, dtype="float32")},
        os.path.join(out_dir, LOGITS_FILE),
    )


def check_sane(name, logits):
    if logits.shape != (len(INPUT_IDS), 256) or not np.isfinite(logits).all() or float(np.abs(logits).max()) < 1e-3:
        sys.exit(f"error: {name}: implausible logits {logits.shape}, max|x| {np.abs(logits).max():g}")


# ---- make -------------------------------------------------------------------------------------------------------


def fresh_dir(path):
    """An empty directory: a rerun of `make` must not leave an earlier run's shards beside the new ones."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def save_variant(out, name, model, **save_kwargs):
    """model.save_pretrained as a user would call it, plus the logits of that model."""
    path = fresh_dir(os.path.join(out, name))
    model.save_pretrained(path, **save_kwargs)
    logits = forward_logits(model, INPUT_IDS)
    check_sane(name, logits)
    write_logits(path, INPUT_IDS, logits)
    return path, logits


def train_lora(base_dir):
    """A LoRA on every projection of base_dir's model, two AdamW steps on random ids so lora_B is non-zero."""
    paddle = import_paddle()
    from paddlenlp.peft import LoRAConfig, LoRAModel
    from paddlenlp.transformers import LlamaForCausalLM

    paddle.seed(SEED + 1)
    model = LlamaForCausalLM.from_pretrained(base_dir)
    # merge_weights=False: eval() leaves the base weights alone, so the saved state is the adapter only.
    config = LoRAConfig(target_modules=LORA_TARGETS, r=4, lora_alpha=8, merge_weights=False, dtype="float32")
    lora = LoRAModel(model, config)
    lora.mark_only_lora_as_trainable()
    trainable = [p for p in lora.parameters() if not p.stop_gradient]
    optimizer = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=trainable)
    rng = np.random.RandomState(SEED + 2)
    lora.train()
    for _ in range(2):
        ids = paddle.to_tensor(rng.randint(0, 256, size=(2, 16)).astype("int64"))
        loss = lora(input_ids=ids, labels=ids, use_cache=False, return_dict=True).loss
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    lora.eval()
    return lora


def split_unified_lora(single_dir, out_dir, ranks=2):
    """Re-lay PaddleNLP's single-card unified LoRA checkpoint as a `ranks`-way one.

    PaddleNLP 2.8.1 writes peft_model-0000k-of-0000n.safetensors with n > 1 only from a multi-process run
    (unified_checkpoint.py: one file per tensor-parallel / pipeline rank, named by get_sharded_file_name, keys
    split by filter_params, index merged by gather_sharded_object/get_sharded_index), which cannot run here on
    one CPU. So the tensors, dtypes, lora_config.json and config.json are PaddleNLP's own single-card output
    (save_single_card_checkpoint), and only the split into n files is reproduced: filter_params' balancing rule,
    the file names, and the index JSON as save_unified_checkpoint dumps it ({"metadata": {"total_size"},
    "weight_map", "type": "lora"}, indent 4). LoRAModel.from_pretrained loads it (checked by `make`).
    """
    from safetensors import safe_open

    with open(os.path.join(single_dir, "peft_model.safetensors.index.json")) as f:
        single_index = json.load(f)
    (single_file,) = sorted(set(single_index["weight_map"].values()))
    tensors = load_file(os.path.join(single_dir, single_file))
    with safe_open(os.path.join(single_dir, single_file), "np") as f:
        metadata = f.metadata()
    keys = list(single_index["weight_map"].keys())  # state_dict order, as filter_params walks it

    sizes = {k: tensors[k].nbytes for k in keys}
    max_shard = (sum(sizes.values()) + ranks - 1) // ranks
    blocks, block, total = [], [], 0
    for i, key in enumerate(keys):
        if total + sizes[key] > max_shard * (len(blocks) + 1) or len(keys) - i < ranks - len(blocks):
            if block:
                blocks.append(block)
            block = []
        block.append(key)
        total += sizes[key]
    blocks.append(block)
    assert len(blocks) == ranks, blocks

    os.makedirs(out_dir, exist_ok=True)
    weight_map = {}
    for rank, block in enumerate(blocks):
        shard = f"peft_model-{rank + 1:05d}-of-{ranks:05d}.safetensors"
        save_file({k: tensors[k] for k in block}, os.path.join(out_dir, shard), metadata=metadata)
        weight_map.update({k: shard for k in block})
    index = {"metadata": {"total_size": single_index["metadata"]["total_size"]}, "weight_map": weight_map}
    index["type"] = single_index["type"]
    with open(os.path.join(out_dir, "peft_model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=4)
    for name in os.listdir(single_dir):
        if name.endswith(".json") and name != "peft_model.safetensors.index.json":
            shutil.copy(os.path.join(single_dir, name), out_dir)


def make_lora_variants(out, base_name, base_logits):
    import tempfile

    from paddlenlp.trainer.plugins.unified_checkpoint import save_single_card_checkpoint

    lora = train_lora(os.path.join(out, base_name))
    logits = forward_logits(lora, INPUT_IDS)
    check_sane("lora", logits)
    delta = float(np.abs(logits - base_logits).max())
    print(f"lora: max |logits(base+adapter) - logits(base)| = {delta:.4g}")
    if delta < 1e-3:
        sys.exit("error: the adapter does not change the logits (lora_B still zero?)")

    pd_dir = fresh_dir(os.path.join(out, "lora_pdparams"))
    lora.save_pretrained(pd_dir)  # lora_config.json + lora_model_state.pdparams (+ the base's config.json)
    write_logits(pd_dir, INPUT_IDS, logits)

    unified_dir = fresh_dir(os.path.join(out, "lora_unified"))
    with tempfile.TemporaryDirectory() as single_dir:
        # args is unused on one card; this is what Trainer(unified_checkpoint=True) calls there.
        save_single_card_checkpoint(None, lora, single_dir)
        split_unified_lora(single_dir, unified_dir)
    write_logits(unified_dir, INPUT_IDS, logits)
    for path in (pd_dir, unified_dir):
        with open(os.path.join(path, "base.txt"), "w") as f:
            f.write(base_name + "\n")


def make(out):
    start = time.time()
    paddle = import_paddle()
    import paddlenlp

    os.makedirs(out, exist_ok=True)
    variants = {}

    def record(name, logits, **info):
        files = sorted(os.listdir(os.path.join(out, name)))
        variants[name] = {"files": files, "max_abs_logit": round(float(np.abs(logits).max()), 4), **info}

    model = build_model()
    _, base_logits = save_variant(out, "safetensors_f32", model, safe_serialization=True)
    record("safetensors_f32", base_logits, dtype="float32")
    _, logits = save_variant(out, "pdparams_f32", model, safe_serialization=False)
    record("pdparams_f32", logits, dtype="float32")
    # ~410 kB of float32 weights: 150 kB shards give 3 files.
    _, logits = save_variant(out, "sharded_safetensors", model, safe_serialization=True, max_shard_size="150KB")
    record("sharded_safetensors", logits, dtype="float32")
    _, logits = save_variant(out, "sharded_pdparams", model, safe_serialization=False, max_shard_size="150KB")
    record("sharded_pdparams", logits, dtype="float32")

    fused = build_model(fuse_attention_qkv=True, fuse_attention_ffn=True)
    _, logits = save_variant(out, "fused", fused, safe_serialization=True)
    record("fused", logits, dtype="float32")

    # The same random weights rounded to bfloat16. Paddle 3.0.0 has no bfloat16 matmul on CPU, so the logits are
    # those of the bfloat16 weights widened to float32 (forward in float32).
    bf16 = build_model()
    bf16.to(dtype="bfloat16")
    bf16_dir = fresh_dir(os.path.join(out, "bf16_pdparams"))
    bf16.save_pretrained(bf16_dir, safe_serialization=False)
    widened = build_model()
    for param in widened.parameters():
        param.set_value(param.astype("bfloat16").astype("float32"))
    logits = forward_logits(widened, INPUT_IDS)
    check_sane("bf16_pdparams", logits)
    write_logits(bf16_dir, INPUT_IDS, logits)
    record("bf16_pdparams", logits, dtype="bfloat16", logits_computed_in="float32")

    tied = build_model(tie_word_embeddings=True)
    _, logits = save_variant(out, "tied", tied, safe_serialization=True)
    saved = load_file(os.path.join(out, "tied", "model.safetensors"))
    lm_head_saved = "lm_head.weight" in saved
    print(f"tied: lm_head.weight saved: {lm_head_saved}; lm_head shares the embedding: "
          f"{tied.lm_head.weight is tied.llama.embed_tokens.weight}")
    record("tied", logits, dtype="float32", lm_head_saved=lm_head_saved)

    make_lora_variants(out, "safetensors_f32", base_logits)
    for name in ("lora_pdparams", "lora_unified"):
        record(name, np.asarray(load_file(os.path.join(out, name, LOGITS_FILE))["logits"]), dtype="float32",
               lora=True, base="safetensors_f32")

    manifest = {
        "paddlepaddle": paddle.__version__,
        "paddlenlp": paddlenlp.__version__,
        "input_ids": INPUT_IDS,
        "logits_file": LOGITS_FILE,
        "variants": variants,
    }
    with open(os.path.join(out, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"make: {len(variants)} variants in {out} ({time.time() - start:.1f} s)")


# ---- check ------------------------------------------------------------------------------------------------------


def checkpoint_dtype(model_dir):
    """The dtype config.json records (save_pretrained writes the parameters' dtype there); float32 if none."""
    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            return json.load(f).get("dtype") or "float32"
    except (OSError, ValueError):
        return "float32"


def load_for_check(model_dir, lora_base):
    """PaddleNLP's own loading path: from_pretrained, or LoRAModel.from_pretrained onto the base model.

    Paddle 3.0.0 has no bfloat16/float16 matmul on CPU, so such checkpoints load widened to float32
    (from_pretrained's dtype=), the way `make` computes their logits."""
    import_paddle()
    from paddlenlp.peft import LoRAModel
    from paddlenlp.transformers import LlamaForCausalLM

    base_dir = lora_base or model_dir
    model = LlamaForCausalLM.from_pretrained(base_dir, dtype="float32")
    if lora_base is not None:
        model = LoRAModel.from_pretrained(model, model_dir)
    model.eval()
    return model, checkpoint_dtype(base_dir)


def check(model_dir, oar_logits_path, lora_base, rtol):
    for path in [model_dir, oar_logits_path] + ([lora_base] if lora_base else []):
        if not os.path.exists(path):
            sys.exit(f"error: {path}: no such file or directory")
    reference = load_file(oar_logits_path)
    if "input_ids" not in reference or "logits" not in reference:
        sys.exit(f"error: {oar_logits_path}: needs tensors 'input_ids' and 'logits'")
    input_ids = reference["input_ids"].astype("int64").reshape(-1)
    theirs = reference["logits"].astype("float32")

    model, dtype = load_for_check(model_dir, lora_base)
    ours = forward_logits(model, input_ids)
    if ours.shape != theirs.shape:
        print(f"FAIL: logits shape {list(theirs.shape)} in {oar_logits_path}, PaddleNLP gives {list(ours.shape)}")
        return 1
    if rtol is None:
        rtol = BF16_RTOL if dtype in ("bfloat16", "float16") else F32_RTOL
    tol = rtol * max(1.0, float(np.abs(ours).max()))
    diff = float(np.abs(ours - theirs).max())
    print(f"{model_dir}: PaddleNLP ({dtype} checkpoint) vs {oar_logits_path}: max abs diff {diff:.3g}, "
          f"tolerance {tol:.3g} ({rtol:g} * max(1, max|logits| {np.abs(ours).max():.3g}))")
    if not diff <= tol:
        print(f"FAIL: max abs logits diff {diff:.3g} > tolerance {tol:.3g}")
        return 1
    return 0


# ---- resume -----------------------------------------------------------------------------------------------------


def resume(ckpt, oar_final, data_path, steps, a):
    """PaddleNLP resumes oar's checkpoint: model or LoRA adapter, AdamW moments and beta powers, LR scheduler,
    global step."""
    paddle = import_paddle()
    from paddlenlp.peft import LoRAModel
    from paddlenlp.trainer import Trainer, TrainingArguments
    from paddlenlp.transformers import LlamaForCausalLM

    data = np.load(data_path)
    samples = [{"input_ids": x, "labels": y} for x, y in zip(data["input_ids"].astype("int64"), data["labels"].astype("int64"))]

    def collate(features):
        return {k: paddle.to_tensor(np.stack([f[k] for f in features])) for k in ("input_ids", "labels")}

    out = os.path.join(os.path.dirname(os.path.abspath(oar_final)), "paddle_resumed")
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=a.batch_size, max_steps=steps,
                             learning_rate=a.lr, lr_scheduler_type=a.scheduler, warmup_steps=a.warmup_steps,
                             weight_decay=a.weight_decay, logging_steps=1, save_strategy="no",
                             unified_checkpoint=True, disable_tqdm=True, seed=42, report_to=[])
    # PaddleNLP predicts from the checkpoint as it is: from_pretrained, and LoRAModel.from_pretrained for an adapter.
    if a.lora:
        model = LoRAModel.from_pretrained(LlamaForCausalLM.from_pretrained(a.lora, dtype="float32"), ckpt)
        shard = "peft_model-00001-of-00001.safetensors"
    else:
        model = LlamaForCausalLM.from_pretrained(ckpt, dtype="float32")
        shard = "model-00001-of-00001.safetensors"
    trainer = Trainer(model=model, args=args, train_dataset=samples, data_collator=collate)
    trainer.train(resume_from_checkpoint=ckpt)
    if trainer.state.global_step != steps:
        print(f"FAIL: PaddleNLP ended at global_step {trainer.state.global_step}, not {steps}")
        return 1
    ours = load_file(oar_final)
    state = trainer.model.get_trainable_state_dict() if a.lora else trainer.model.state_dict()
    theirs = {k: state[k].numpy() for k in ours if k in state}
    before = load_file(os.path.join(ckpt, shard))
    if set(ours) != set(theirs) or set(before) != set(ours):
        print(f"FAIL: tensor names differ: {sorted(set(ours) ^ set(theirs))[:5]}")
        return 1
    diff = max(float(np.abs(theirs[k] - ours[k]).max()) for k in ours)
    moved = max(float(np.abs(ours[k] - before[k]).max()) for k in ours)
    print(f"PaddleNLP resumed {ckpt} and trained to step {steps}: max |PaddleNLP - oar| {diff:.3g} over {len(ours)} "
          f"tensors; the weights moved up to {moved:.3g} since the checkpoint")
    # 1% of the update: Adam amplifies float32 rounding where a gradient is near zero (one LoRA element of 28 tensors
    # differs by 0.3% of the update, the rest by 1e-5); a state restored wrong (beta powers one step off, the
    # scheduler one step off) moves every tensor by about half the update.
    if not diff <= moved * 1e-2:
        print(f"FAIL: PaddleNLP's weights differ from oar's by {diff:.3g}, over 1% of the update {moved:.3g}")
        return 1
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_make = sub.add_parser("make", help="write PaddleNLP reference checkpoints and logits under OUT")
    p_make.add_argument("out")
    p_check = sub.add_parser("check", help="load DIR in PaddleNLP and compare its logits with OAR_LOGITS")
    p_check.add_argument("dir")
    p_check.add_argument("oar_logits")
    p_check.add_argument("--lora", metavar="BASE_DIR", help="DIR is a LoRA directory; BASE_DIR holds its base model")
    p_check.add_argument("--rtol", type=float, help=f"tolerance relative to max(1, max|logits|); "
                         f"default {F32_RTOL:g} (float32 weights), {BF16_RTOL:g} (bfloat16/float16)")
    p_res = sub.add_parser("resume", help="PaddleNLP resumes oar's checkpoint and trains on")
    p_res.add_argument("checkpoint")
    p_res.add_argument("oar_final")
    p_res.add_argument("--data", required=True, help=".npz of int arrays input_ids and labels [N, L] (-100: no loss)")
    p_res.add_argument("--lora", metavar="BASE_DIR", help="CHECKPOINT holds a LoRA adapter of BASE_DIR's model")
    p_res.add_argument("--steps", type=int, required=True)
    p_res.add_argument("--batch_size", type=int, default=2)
    p_res.add_argument("--lr", type=float, default=0.01)
    p_res.add_argument("--scheduler", default="polynomial")
    p_res.add_argument("--warmup_steps", type=int, default=1)
    p_res.add_argument("--weight_decay", type=float, default=0.01)
    args = parser.parse_args()
    if args.command == "resume":
        return resume(args.checkpoint, args.oar_final, args.data, args.steps, args)
    if args.command == "make":
        make(args.out)
        return 0
    return check(args.dir, args.oar_logits, args.lora, args.rtol)


if __name__ == "__main__":
    sys.exit(main())
