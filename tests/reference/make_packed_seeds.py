#!/usr/bin/env python3
"""Writes the seed corpus of fuzz/fuzz_packed.cpp: small oar export packed files (io/packed_model.h) of the
fuzzer's one-layer model (vocab 8, hidden 32, FFN 32, 2 heads of 16, 1 KV head), one per weight format, in
fuzz/corpus/packed/. Standard library only; deterministic. The tensors are laid out without the page gaps that
oar export leaves (the reader does not need them), so that the seeds stay a few KB."""
import json
import os
import random
import struct

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fuzz", "corpus", "packed")
C, F, V, KV = 32, 32, 8, 16
PROJ = {"self_attn.q_proj": (C, C), "self_attn.k_proj": (KV, C), "self_attn.v_proj": (KV, C),
        "self_attn.o_proj": (C, C), "mlp.gate_proj": (F, C), "mlp.up_proj": (F, C), "mlp.down_proj": (C, F)}


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def write(path, tensors, meta):
    header, blob = {}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    header["__metadata__"] = meta
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob)


def model(fmt, rng):
    t, meta = {}, {"oar_packed_version": "1"}
    t["model.embed_tokens.weight"] = ("F32", (V, C), f32([rng.uniform(-1, 1) for _ in range(V * C)]))
    for n in ["model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
              "model.norm.weight"]:
        t[n] = ("F32", (C,), f32([1.0] * C))
    for p, (o, i) in PROJ.items():
        name = f"model.layers.0.{p}.weight"
        if fmt == "float32":
            t[name] = ("F32", (o, i), f32([rng.uniform(-0.2, 0.2) for _ in range(o * i)]))
            continue
        if fmt == "weight_only_int4":
            t[name] = ("U8", (o, i // 2), bytes(rng.randrange(256) for _ in range(o * i // 2)))
            t[name + ".scales"] = ("F32", (o, i // 32), f32([0.01] * (o * i // 32)))
        else:
            q = [rng.randrange(-127, 128) for _ in range(o * i)]
            t[name] = ("I8", (o, i), struct.pack(f"<{o * i}b", *q))
            t[name + ".scales"] = ("F32", (o,), f32([0.002] * o))
            if fmt == "a8w8":
                sums = [sum(q[r * i:(r + 1) * i]) for r in range(o)]
                t[name + ".row_sums"] = ("I32", (o,), struct.pack(f"<{o}i", *sums))
        group = 32 if fmt == "weight_only_int4" else 0
        step = 0.0123 if p.startswith("mlp") and fmt == "a8w8" else 0
        meta[name] = json.dumps({"format": fmt, "group_size": group, "act_step": step})
    t["lm_head.weight"] = ("F32", (V, C), f32([rng.uniform(-1, 1) for _ in range(V * C)]))
    return t, meta


def main():
    os.makedirs(OUT, exist_ok=True)
    for fmt in ["float32", "weight_only_int8", "weight_only_int4", "a8w8"]:
        t, meta = model(fmt, random.Random(fmt))
        write(os.path.join(OUT, fmt + ".safetensors"), t, meta)


if __name__ == "__main__":
    main()
