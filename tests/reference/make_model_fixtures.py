#!/usr/bin/env python3
"""Generate tiny Llama reference fixtures with Hugging Face transformers' own
LlamaForCausalLM (the implementation oar's C++ forward pass is checked against).

Run (from the repository root):

    /work/venv-ref/bin/python tests/reference/make_model_fixtures.py            # write + verify
    /work/venv-ref/bin/python tests/reference/make_model_fixtures.py --verify-only
    /work/venv-ref/bin/python tests/reference/make_model_fixtures.py --out /tmp/x   # elsewhere

(scripts/ref_venv.sh creates a suitable venv.)  For every model in MODELS it
writes tests/fixtures/models/<name>/:

    config.json, generation_config.json          (save_pretrained)
    model.safetensors  or  model-0000k-of-0000n.safetensors + model.safetensors.index.json
    expected.safetensors   float32 "logits_<i>" [len_i, vocab] for every position of prompt i
    expected.json          prompts, greedy continuations, top-2 margins, versions, config

Everything is deterministic: one torch.manual_seed per model, prompts from a
seeded torch.Generator, torch.set_num_threads(1) so CPU reductions do not
depend on the machine's core count.  Reference logits are always computed in
float32 with attn_implementation="eager"; for the float16/bfloat16 checkpoints
they are computed from the *rounded* (stored) weights upcast to float32.
"""
import argparse
import copy
import hashlib
import json
import os
import re
import shutil
import sys

import numpy as np
import torch

torch.set_num_threads(1)

import safetensors  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "fixtures", "models")

MAX_NEW_TOKENS = 16
# every greedy step (of every prompt) must have top1 - top2 > MARGIN_REL * max|logit over the step|
MARGIN_REL = 1e-3
NORM_WEIGHT_NOISE = 0.1  # RMSNorm weights are 1 + N(0, 0.1^2) so that a C++ forward ignoring them fails
DEFAULT_PROMPT_LENGTHS = [1, 5, 17, 33]

BASE_CONFIG = dict(
    vocab_size=256,
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=128,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
    attention_bias=False,
    mlp_bias=False,
    use_cache=True,
)

# name -> spec.  "config": overrides of BASE_CONFIG.
MODELS = {
    "mha": dict(
        description="Plain multi-head attention (4 heads, 4 kv heads, head_dim 16), untied lm_head, "
        "rms_norm_eps 1e-5, rope_theta 1e4, float32 weights, single model.safetensors.",
        seed=1001,
        config=dict(num_attention_heads=4, num_key_value_heads=4, initializer_range=0.15),
    ),
    "gqa": dict(
        description="Grouped-query attention 8 heads / 2 kv heads (group 4, head_dim 8), rope_theta 5e5, "
        "intermediate 144 (not a power of two), float32 weights.",
        seed=2002,
        config=dict(
            num_attention_heads=8, num_key_value_heads=2, rope_theta=500000.0, intermediate_size=144,
            initializer_range=0.15,
        ),
    ),
    "tied": dict(
        description="tie_word_embeddings=true (no lm_head.weight in the checkpoint: the head is "
        "model.embed_tokens.weight), GQA 4 heads / 2 kv heads, float32 weights.",
        seed=3003,
        config=dict(
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, initializer_range=0.2,
            rms_norm_eps=1e-6,
        ),
    ),
    "llama3_rope": dict(
        description="Llama-3.1 RoPE scaling (rope_type llama3, factor 8, low 1, high 4, original_max 32), "
        "rope_theta 5e5, 2 heads / 1 kv head (MQA, head_dim 32) so that the 16 rotary frequencies fall in "
        "all three llama3 bands (kept / smoothed / divided by factor); prompts up to 60 tokens "
        "(+16 generated = 76 positions, well past original_max 32).",
        seed=4004,
        config=dict(
            num_attention_heads=2, num_key_value_heads=1, rope_theta=500000.0, initializer_range=0.15,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
        prompt_lengths=[1, 6, 24, 60],
    ),
    "attn_bias": dict(
        description="attention_bias=true: q_proj, k_proj, v_proj AND o_proj carry a bias (transformers "
        "4.46.3 LlamaAttention), filled with N(0, 0.15^2) noise (HF zero-inits them). "
        "GQA 4 heads / 2 kv heads so k/v biases have the kv width. mlp_bias stays false.",
        seed=5005,
        config=dict(num_attention_heads=4, num_key_value_heads=2, attention_bias=True, initializer_range=0.15),
        bias_noise=0.15,
    ),
    "sharded_bf16": dict(
        description="Same shapes as gqa but stored as bfloat16 and sharded (max_shard_size 100KB) into "
        "several model-0000k-of-0000n.safetensors + model.safetensors.index.json. Expected logits are "
        "computed in float32 from the bf16-rounded weights.",
        seed=6006,
        config=dict(
            num_attention_heads=8, num_key_value_heads=2, rope_theta=500000.0, intermediate_size=144,
            initializer_range=0.15,
        ),
        save_dtype=torch.bfloat16,
        max_shard_size="100KB",
    ),
    "f16": dict(
        description="Same shapes as mha, stored as float16. Expected logits computed in float32 from "
        "the f16-rounded weights.",
        seed=7007,
        config=dict(num_attention_heads=4, num_key_value_heads=4, initializer_range=0.15),
        save_dtype=torch.float16,
    ),
}


def dtype_name(dt):
    return str(dt).split(".")[-1]


def build_model(spec, seed):
    """Random tiny LlamaForCausalLM in float32 (eager attention), weights possibly rounded to save_dtype."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(**{**BASE_CONFIG, **spec["config"]})
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        # HF initialises RMSNorm weights to 1 and biases to 0: add noise so both are actually exercised.
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.add_(torch.randn(p.shape) * NORM_WEIGHT_NOISE)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape) * spec.get("bias_noise", cfg.initializer_range))
    model.eval()
    save_dtype = spec.get("save_dtype")
    if save_dtype is not None:
        # Round the *parameters* only.  (model.to(bf16).float() would also round the non-persistent rotary
        # inv_freq buffer, which from_pretrained(torch_dtype=float32) recomputes in float32.)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(save_dtype).float())
        stored = copy.deepcopy(model).to(save_dtype)
        # reference `model` = stored weights upcast to float32 (exactly what a f32 engine reading them sees)
    else:
        stored = model
    model.eval()
    stored.eval()
    return cfg, model, stored


@torch.no_grad()
def logits_of(model, ids):
    out = model(torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float().contiguous()


def gen_config():
    # eos disabled, so generation runs exactly MAX_NEW_TOKENS greedy steps with plain argmax
    # (no min_new_tokens processor that would mask the eos logit).
    return GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=None, pad_token_id=0,
        bos_token_id=1, temperature=None, top_p=None, top_k=None,
    )


@torch.no_grad()
def greedy(model, ids):
    """generate() (KV-cache path) + a no-cache full-sequence recompute; returns tokens and per-step top-2."""
    inp = torch.tensor([ids], dtype=torch.long)
    # generate() falls back to model.generation_config for every field left at its default in the config
    # passed in (eos_token_id=None is the default, so eos 2 from config.json would come back): override the
    # model's own generation config instead.
    saved_gc = model.generation_config
    model.generation_config = gen_config()
    # synced_gpus=False: otherwise generate() imports torch.distributed.fsdp, which is broken in Debian's
    # torch 1.13 under Python 3.11 (dataclass "mutable default" ValueError); irrelevant on one CPU anyway.
    out = model.generate(inp, attention_mask=torch.ones_like(inp), generation_config=gen_config(),
                         synced_gpus=False)
    model.generation_config = saved_gc
    seq = out[0].tolist()
    new = seq[len(ids):]
    assert len(new) == MAX_NEW_TOKENS, (len(new), new)
    # no-cache recompute of all positions: row len(ids)-1+t predicts new[t]
    full = logits_of(model, seq[:-1])
    steps = full[len(ids) - 1:]
    assert steps.shape[0] == MAX_NEW_TOKENS
    top2 = torch.topk(steps, 2, dim=-1)
    assert top2.indices[:, 0].tolist() == new, "generate() (cache) disagrees with no-cache argmax"
    vals = top2.values  # float32
    margins = f32_list(vals[:, 0] - vals[:, 1])
    max_abs = f32_list(steps.abs().max(dim=-1).values)
    return new, margins, [f32_list(v) for v in vals], max_abs


def f32_list(t):
    """float32 tensor -> python floats printed with the shortest decimal that round-trips in float32."""
    return [float(str(x)) for x in t.detach().reshape(-1).numpy().astype(np.float32)]


def make_prompt(length, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    rest = torch.randint(0, vocab, (length - 1,), generator=g).tolist()
    return [BASE_CONFIG["bos_token_id"]] + rest


def margins_ok(margins, max_abs):
    return all(m > MARGIN_REL * a for m, a in zip(margins, max_abs))


def build_fixture(name, spec, max_model_tries=20, max_prompt_tries=50):
    lengths = spec.get("prompt_lengths", DEFAULT_PROMPT_LENGTHS)
    for model_try in range(max_model_tries):
        seed = spec["seed"] + 100000 * model_try
        cfg, model, stored = build_model(spec, seed)
        prompts = []
        for i, n in enumerate(lengths):
            for redraw in range(max_prompt_tries if n > 1 else 1):
                ids = make_prompt(n, cfg.vocab_size, seed * 1000 + 10 * i + 100 * redraw + 7)
                new, margins, top2, max_abs = greedy(model, ids)
                if margins_ok(margins, max_abs):
                    break
            else:
                break  # this prompt length never worked: new model seed
            prompts.append(dict(ids=ids, redraws=redraw, new=new, margins=margins, top2=top2, max_abs=max_abs))
        if len(prompts) == len(lengths):
            return seed, model_try, cfg, model, stored, prompts
        print(f"  {name}: model seed {seed} rejected (greedy margins too small), retrying", flush=True)
    raise RuntimeError(f"{name}: could not find a model/prompts with clear greedy margins")


def write_fixture(out_root, name, spec):
    d = os.path.join(out_root, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    seed, model_try, cfg, model, stored, prompts = build_fixture(name, spec)

    save_kwargs = dict(safe_serialization=True)
    if "max_shard_size" in spec:
        save_kwargs["max_shard_size"] = spec["max_shard_size"]
    stored.save_pretrained(d, **save_kwargs)

    tensors = {}
    for i, p in enumerate(prompts):
        tensors[f"logits_{i}"] = logits_of(model, p["ids"])
    save_file(tensors, os.path.join(d, "expected.safetensors"), metadata={"format": "pt"})

    with open(os.path.join(d, "config.json")) as f:
        saved_config = json.load(f)
    weight_files = sorted(x for x in os.listdir(d) if x.startswith("model") and x.endswith(".safetensors"))
    expected = {
        "model": name,
        "description": spec["description"],
        "generated_by": "tests/reference/make_model_fixtures.py",
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
        },
        "seed": seed,
        "model_redraws": model_try,
        "weights": {
            "storage_dtype": dtype_name(spec.get("save_dtype", torch.float32)),
            "files": weight_files,
            "index": "model.safetensors.index.json" if "model.safetensors.index.json" in os.listdir(d) else None,
            "initializer_range": cfg.initializer_range,
            "rmsnorm_weight": f"1 + N(0, {NORM_WEIGHT_NOISE}^2)",
            "bias": (f"N(0, {spec.get('bias_noise', cfg.initializer_range)}^2) on q_proj, k_proj, v_proj, o_proj"
                     if cfg.attention_bias else None),
        },
        "reference_compute": {
            "dtype": "float32",
            "attn_implementation": "eager",
            "weights": "stored weights upcast to float32" if "save_dtype" in spec else "float32 as stored",
            "torch_num_threads": 1,
        },
        "config": saved_config,
        "logits": {
            "file": "expected.safetensors",
            "keys": [f"logits_{i}" for i in range(len(prompts))],
            "shape": "[prompt_len, vocab_size] float32, row t = logits after reading prompt[0..t] "
                     "(positions 0..t, no padding, batch 1)",
        },
        "greedy": {
            "max_new_tokens": MAX_NEW_TOKENS,
            "eos_token_id": None,
            "do_sample": False,
            "margin_rule": f"every step: top1 - top2 > {MARGIN_REL} * max|logit| of that step",
        },
        "prompts": [
            {
                "logits_key": f"logits_{i}",
                "length": len(p["ids"]),
                "ids": p["ids"],
                "prompt_redraws": p["redraws"],
                "greedy_new_tokens": p["new"],
                "greedy_top2_logits": p["top2"],
                "greedy_margins": p["margins"],
                "greedy_step_max_abs_logit": p["max_abs"],
                "min_margin": min(p["margins"]),
                "min_margin_rel": float("%.4g" % min(m / a for m, a in zip(p["margins"], p["max_abs"]))),
                "prompt_max_abs_logit": f32_list(tensors[f"logits_{i}"].abs().max())[0],
            }
            for i, p in enumerate(prompts)
        ],
    }
    with open(os.path.join(d, "expected.json"), "w") as f:
        f.write(dump_json(expected))
    mins = [round(x["min_margin_rel"], 4) for x in expected["prompts"]]
    print(f"{name}: seed {seed}, files {weight_files}, min rel margins per prompt {mins}", flush=True)


@torch.no_grad()
def verify_fixture(out_root, name):
    """Reload with LlamaForCausalLM.from_pretrained (float32, eager) and require bit-identical logits and
    identical greedy tokens."""
    d = os.path.join(out_root, name)
    model = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with open(os.path.join(d, "expected.json")) as f:
        exp = json.load(f)
    ref = load_file(os.path.join(d, "expected.safetensors"))
    for p in exp["prompts"]:
        got = logits_of(model, p["ids"])
        want = ref[p["logits_key"]]
        if got.shape != want.shape or not torch.equal(got, want):
            diff = (got - want).abs().max().item() if got.shape == want.shape else "shape"
            raise AssertionError(f"{name}/{p['logits_key']}: reload not bit-identical (max diff {diff})")
        new, margins, _, max_abs = greedy(model, p["ids"])
        assert new == p["greedy_new_tokens"], f"{name}: greedy tokens differ after reload"
        assert margins_ok(margins, max_abs)
    print(f"verify {name}: reload bit-identical, greedy identical", flush=True)


def dump_json(obj):
    """json with indent, but arrays of scalars kept on one line (keeps expected.json small and diffable)."""
    text = json.dumps(obj, indent=1)
    scalar = r'(?:-?[0-9][0-9.eE+-]*|null|true|false|"[^"\n]*")'
    pat = re.compile(r"\[\s*(" + scalar + r"(?:,\s*" + scalar + r")*)\s*\]")
    text = pat.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    assert json.loads(text) == obj
    return text + "\n"


def md5_tree(root):
    res = {}
    for dp, _, fs in os.walk(root):
        for fn in sorted(fs):
            pth = os.path.join(dp, fn)
            with open(pth, "rb") as f:
                res[os.path.relpath(pth, root)] = hashlib.md5(f.read()).hexdigest()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="output root (default tests/fixtures/models)")
    ap.add_argument("--only", nargs="*", help="subset of model names")
    ap.add_argument("--verify-only", action="store_true", help="only reload and check existing fixtures")
    ap.add_argument("--md5", action="store_true", help="print md5 of every file under --out at the end")
    args = ap.parse_args()
    if transformers.__version__ != "4.46.3":
        print(f"warning: fixtures were designed for transformers 4.46.3, running {transformers.__version__}",
              file=sys.stderr)
    names = args.only or list(MODELS)
    for n in names:
        if n not in MODELS:
            sys.exit(f"unknown model {n}; known: {', '.join(MODELS)}")
    os.makedirs(args.out, exist_ok=True)
    if not args.verify_only:
        for n in names:
            write_fixture(args.out, n, MODELS[n])
    for n in names:
        verify_fixture(args.out, n)
    if args.md5:
        for k, v in sorted(md5_tree(args.out).items()):
            print(v, k)


if __name__ == "__main__":
    main()
