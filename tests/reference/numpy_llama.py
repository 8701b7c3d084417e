#!/usr/bin/env python3
"""Standalone NumPy reference forward pass for Llama-family checkpoints (numpy only: no torch, no
transformers).  It documents, in ~150 lines, the math oar's C++ forward pass implements, and is a second
reference next to tests/fixtures/models/*/expected.safetensors (produced by transformers'
LlamaForCausalLM, see make_model_fixtures.py).

    python3 tests/reference/numpy_llama.py                      # check every fixture dir
    python3 tests/reference/numpy_llama.py tests/fixtures/models/gqa --tol 1e-5

Weights are read with the `safetensors.numpy` API when it is installed; numpy has no bfloat16, so BF16
tensors (and everything, if the safetensors package is missing) go through the ~15-line parser below,
which is also a description of the file format: u64 little-endian header size N, N bytes of JSON
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the raw little-endian
tensor bytes, offsets relative to the end of the header.

Math (transformers 4.46.3 LlamaForCausalLM, eager attention), x: [T, hidden]:
    x = embed[ids]
    per layer:
        h = rmsnorm(x, input_layernorm)           rmsnorm(x, w) = w * x / sqrt(mean(x^2) + eps)
        q, k, v = h Wq^T (+bq), h Wk^T (+bk), h Wv^T (+bv)       [T, heads*hd], [T, kv_heads*hd] x2
        q, k = rope(q), rope(k)                   rotate-half: x*cos + cat(-x2, x1)*sin, per head,
                                                  angle[t, i] = t * inv_freq[i mod hd/2]
        head h attends with kv head h // (heads / kv_heads); scores = q k^T / sqrt(hd), causal mask,
        softmax, times v
        x = x + attn Wo^T (+bo)                   attention_bias=true => q, k, v AND o biases
        h = rmsnorm(x, post_attention_layernorm)
        x = x + (silu(h Wg^T) * (h Wu^T)) Wd^T    (mlp_bias=true would add biases to all three)
    logits = rmsnorm(x, norm) Whead^T             Whead = lm_head.weight, or embed_tokens.weight if tied
"""
import argparse
import glob
import json
import math
import os
import struct
import sys

import numpy as np

try:
    import safetensors.numpy as st_numpy
except ImportError:  # pragma: no cover - numpy-only environments
    st_numpy = None

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures", "models")

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bf16",
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8}


def lazy_safetensors(path):
    """[(name, shape, load)] for a safetensors file's tensors, in file order; load() reads that tensor alone
    (BF16, which numpy lacks, as float32)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dt = _ST_DTYPES[info["dtype"]]

        def load(off=8 + n + b, size=e - b, dt=dt, shape=info["shape"]):
            raw = np.fromfile(path, dtype=np.uint8, count=size, offset=off)
            if dt == "bf16":  # bfloat16 = upper 16 bits of an IEEE float32
                arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                arr = raw.view(np.dtype(dt).newbyteorder("<"))
            return arr.reshape(shape)
        out.append((name, info["shape"], load))
    return out


def _parse_safetensors(path):
    """Minimal safetensors reader (supports BF16, which numpy itself lacks): returns float32 for BF16."""
    return {name: load() for name, _, load in lazy_safetensors(path)}


def load_safetensors(path):
    if st_numpy is not None:
        try:
            return st_numpy.load_file(path)
        except TypeError:  # "data type 'bfloat16' not understood"
            pass
    return _parse_safetensors(path)


def safetensors_files(model_dir):
    """The model's safetensors files: the shards model.safetensors.index.json lists, else model.safetensors."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    return ["model.safetensors"]


def load_model(model_dir, dtype=np.float64):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    w = {}
    for fn in safetensors_files(model_dir):
        for k, v in load_safetensors(os.path.join(model_dir, fn)).items():
            w[k] = v.astype(np.float32).astype(dtype)  # f16/bf16/f32 -> f32 is exact
    return cfg, w


def rope_inv_freq(cfg):
    """Rotary inverse frequencies, computed in float32 exactly like transformers does."""
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    dim = int(hd * cfg.get("partial_rotary_factor", 1.0))
    exps = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv = (np.float32(1.0) / np.power(np.float32(cfg.get("rope_theta", 10000.0)), exps)).astype(np.float32)
    rs = cfg.get("rope_scaling") or {}
    rtype = rs.get("rope_type", rs.get("type", "default"))
    if rtype == "default":
        return inv
    if rtype == "linear":
        return (inv / np.float32(rs["factor"])).astype(np.float32)
    if rtype == "llama3":
        factor = np.float32(rs["factor"])
        lo, hi = rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        low_freq_wavelen, high_freq_wavelen = old / lo, old / hi
        wavelen = (np.float32(2 * math.pi) / inv).astype(np.float32)
        # long wavelengths (low frequencies): divide by factor; short ones: keep
        inv_l = np.where(wavelen > low_freq_wavelen, inv / factor, inv).astype(np.float32)
        # in between: interpolate  (1 - s) * f / factor + s * f,  s = (old / wavelen - lo) / (hi - lo)
        smooth = ((np.float32(old) / wavelen - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)
        smoothed = ((1 - smooth) * inv_l / factor + smooth * inv_l).astype(np.float32)
        medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
        return np.where(medium, smoothed, inv_l).astype(np.float32)
    raise NotImplementedError(f"rope_type {rtype}")


def rope_cos_sin(cfg, positions, dtype):
    inv = rope_inv_freq(cfg)
    ang = positions.astype(np.float32)[:, None] * inv[None, :]  # float32 product, as in transformers
    emb = np.concatenate([ang, ang], axis=-1).astype(dtype)  # [T, hd]: frequency i used at i and i+hd/2
    return np.cos(emb), np.sin(emb)


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rmsnorm(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def linear(x, w, name, weights):
    y = x @ weights[name + ".weight"].T
    b = weights.get(name + ".bias")
    return y if b is None else y + b


def forward(cfg, w, ids, dtype=np.float64):
    """Logits [T, vocab] for token ids (positions 0..T-1, batch 1, no cache)."""
    ids = np.asarray(ids, dtype=np.int64)
    T = len(ids)
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    eps = cfg["rms_norm_eps"]
    assert cfg.get("hidden_act", "silu") == "silu"
    cos, sin = rope_cos_sin(cfg, np.arange(T), dtype)
    mask = np.triu(np.full((T, T), -np.inf, dtype=dtype), 1)
    x = w["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
        q = linear(h, w, p + "self_attn.q_proj", w).reshape(T, nh, hd).transpose(1, 0, 2)
        k = linear(h, w, p + "self_attn.k_proj", w).reshape(T, nkv, hd).transpose(1, 0, 2)
        v = linear(h, w, p + "self_attn.v_proj", w).reshape(T, nkv, hd).transpose(1, 0, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = np.repeat(k, nh // nkv, axis=0)  # query head j uses kv head j // (nh // nkv)
        v = np.repeat(v, nh // nkv, axis=0)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        a = (s / s.sum(axis=-1, keepdims=True)) @ v  # [nh, T, hd]
        x = x + linear(a.transpose(1, 0, 2).reshape(T, nh * hd), w, p + "self_attn.o_proj", w)
        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = linear(h, w, p + "mlp.gate_proj", w)
        u = linear(h, w, p + "mlp.up_proj", w)
        x = x + linear(g / (1 + np.exp(-g)) * u, w, p + "mlp.down_proj", w)
    x = rmsnorm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight")
    if head is None:
        assert cfg.get("tie_word_embeddings", True), "lm_head.weight missing but embeddings are not tied"
        head = w["model.embed_tokens.weight"]
    return x @ head.T


def greedy(cfg, w, ids, n):
    seq = list(ids)
    for _ in range(n):
        seq.append(int(np.argmax(forward(cfg, w, seq)[-1])))
    return seq[len(ids):]


def check_dir(d, tol):
    cfg, w = load_model(d)
    exp_t = load_safetensors(os.path.join(d, "expected.safetensors"))
    with open(os.path.join(d, "expected.json")) as f:
        exp = json.load(f)
    worst_rel, worst_abs, greedy_ok = 0.0, 0.0, True
    for p in exp["prompts"]:
        want = exp_t[p["logits_key"]].astype(np.float64)
        got = forward(cfg, w, p["ids"])
        err = np.abs(got - want).max()
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / np.abs(want).max())
        greedy_ok &= greedy(cfg, w, p["ids"], exp["greedy"]["max_new_tokens"]) == p["greedy_new_tokens"]
    ok = worst_rel <= tol and greedy_ok
    print(f"{os.path.basename(os.path.normpath(d)):14s} max rel err {worst_rel:.3e}  max abs err {worst_abs:.3e}  "
          f"greedy {'identical' if greedy_ok else 'DIFFERENT'}  {'ok' if ok else 'FAIL'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", help="fixture dirs (default: all of tests/fixtures/models/*)")
    ap.add_argument("--tol", type=float, default=1e-5, help="max |numpy - torch| / max|torch| per model")
    args = ap.parse_args()
    dirs = args.dirs or sorted(os.path.dirname(p) for p in glob.glob(os.path.join(FIXTURES, "*", "expected.json")))
    if not dirs:
        sys.exit(f"no fixtures under {FIXTURES}")
    ok = all([check_dir(d, args.tol) for d in dirs])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
