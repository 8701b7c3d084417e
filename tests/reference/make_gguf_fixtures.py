#!/usr/bin/env python3
"""GGUF fixtures for oar's GGUF reader (tests/fixtures/gguf), written by PyPI's `gguf` package, with logits from
tests/reference/numpy_llama.py over gguf's own dequantization of what was written.

    python3 -m venv /tmp/gguf-venv
    /tmp/gguf-venv/bin/pip install -r tests/reference/gguf_requirements.txt
    /tmp/gguf-venv/bin/python tests/reference/make_gguf_fixtures.py

Files written:
  quants.gguf       for each type (F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K, Q4_1, Q5_0, Q5_1) a [4, 512] tensor named
                    after it and "<type>.expected": gguf's dequantization of it in F32. F16, BF16, Q8_0, Q4_0,
                    Q4_1, Q5_0 and Q5_1 are gguf's quantization of random normals; Q4_K and Q6_K (which gguf-py cannot quantize) are random block
                    bytes with finite f16 scales, so every bit pattern of the quants and 6-bit scales occurs.
  mha_<type>.gguf   tests/fixtures/models/mha as llama.cpp's converter writes a Llama: q and k rows permuted to
                    Meta's pair order, llama.* metadata, a 256-token SentencePiece-style vocabulary (<unk>, <s>,
                    </s>, then byte pieces <0x00>..<0xFC>); the embedding, projections and head in <type> (f32, f16,
                    q8_0, q4_0), the norms F32.
  gqa_f16.gguf      tests/fixtures/models/gqa (8 heads, 2 kv heads, intermediate 144) in F16.
  tied_f32.gguf     tests/fixtures/models/tied (tied embeddings: no output.weight) in F32.
  fuzz/corpus/gguf/seed.gguf
                    a small seed for fuzz/fuzz_gguf.cpp: a value of every metadata type (arrays of numbers,
                    strings and arrays), one block of every tensor type oar reads.
  expected.json, expected.safetensors
                    for each model file and prompt, the logits [T, 256] of numpy_llama.forward on the tensors read
                    back with gguf.GGUFReader and dequantized by gguf.quants.dequantize (q and k permuted back).
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import numpy_llama  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
MODELS = os.path.join(REPO, "tests", "fixtures", "models")
OUT = os.path.join(REPO, "tests", "fixtures", "gguf")

LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


def gguf_name(hf):
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    _, _, layer, rest = hf.split(".", 3)
    part, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{LAYER_NAMES[part]}.{kind}"


def to_pairs(w, heads):
    """Hugging Face's rotate-half row order -> Meta's (2i, 2i+1) pairs, per head (llama.cpp's converter)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def from_pairs(w, heads):
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def vocab(size=256):
    """<unk>, <s>, </s>, byte pieces <0x00>.. (as many as fit, up to 256), then filler pieces "\u2581tN"."""
    n_bytes = min(256, size - 3)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(n_bytes)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * n_bytes
    filler = size - len(tokens)
    tokens += [f"\u2581t{k}" for k in range(filler)]
    types += [gguf.TokenType.NORMAL] * filler
    return tokens, [0.0] * 3 + [0.0] * n_bytes + [-float(k) for k in range(filler)], types


def start_model(path, cfg):
    """A GGUFWriter holding a Llama's metadata as llama.cpp's converter writes it, with vocab()'s tokenizer."""
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_rope_dimension_count(cfg["hidden_size"] // heads)
    tokens, scores, types = vocab(cfg["vocab_size"])
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    return w


def convert_tensor(cfg, name, t, qtype):
    """One Hugging Face tensor as the file stores it: (GGUF name, array, raw_dtype for add_tensor)."""
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    t = t.astype(np.float32)
    if name.endswith("q_proj.weight"):
        t = to_pairs(t, heads)
    elif name.endswith("k_proj.weight"):
        t = to_pairs(t, kv)
    if t.ndim == 1 or qtype == Q.F32:
        return gguf_name(name), t, None
    return gguf_name(name), gguf.quants.quantize(t, qtype), qtype


def write_model(path, cfg, weights, qtype):
    """`weights` (Hugging Face names, numpy arrays) as llama.cpp's converter writes a Llama, 2-D tensors in qtype."""
    w = start_model(path, cfg)
    for name, t in weights.items():
        gname, data, raw = convert_tensor(cfg, name, t, qtype)
        w.add_tensor(gname, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_back(path, cfg):
    """The file's tensors under Hugging Face names, dequantized by gguf, q and k in rotate-half order again."""
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    back = {v: k for k, v in LAYER_NAMES.items()}
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        x = x.reshape([int(d) for d in reversed(t.shape)])
        n = t.name
        if n == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif n == "output_norm.weight":
            hf = "model.norm.weight"
        elif n == "output.weight":
            hf = "lm_head.weight"
        else:
            _, layer, part, kind = n.split(".")
            hf = f"model.layers.{layer}.{back[part]}.{kind}"
        if hf.endswith("q_proj.weight"):
            x = from_pairs(x, heads)
        elif hf.endswith("k_proj.weight"):
            x = from_pairs(x, kv)
        out[hf] = x
    return out


def write_quants(path, rng):
    w = gguf.GGUFWriter(path, "llama")
    for qtype in (Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0):
        data = gguf.quants.quantize(rng.standard_normal((4, 512)).astype(np.float32), qtype)
        w.add_tensor(qtype.name, data, raw_dtype=qtype if qtype != Q.F16 else None)
        w.add_tensor(qtype.name + ".expected", gguf.quants.dequantize(data, qtype).reshape(4, 512))
    for qtype, block_bytes, f16_at in ((Q.Q4_K, 144, (0, 2)), (Q.Q6_K, 210, (208,))):
        blocks = rng.integers(0, 256, size=(4 * 2, block_bytes), dtype=np.uint8)
        for at in f16_at:  # finite scales: d and dmin in [-1, 1) as f16
            blocks[:, at:at + 2] = (rng.random(8).astype(np.float16) * 2 - 1).astype(np.float16).view(np.uint8).reshape(8, 2)
        data = blocks.reshape(4, 2 * block_bytes)
        w.add_tensor(qtype.name, data, raw_dtype=qtype)
        w.add_tensor(qtype.name + ".expected", gguf.quants.dequantize(data, qtype).reshape(4, 512))
    for qtype in (Q.Q4_1, Q.Q5_0, Q.Q5_1):  # after the others, so that their random draws stay the same
        data = gguf.quants.quantize(rng.standard_normal((4, 512)).astype(np.float32), qtype)
        w.add_tensor(qtype.name, data, raw_dtype=qtype)
        w.add_tensor(qtype.name + ".expected", gguf.quants.dequantize(data, qtype).reshape(4, 512))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_fuzz_seed(path, rng):
    w = gguf.GGUFWriter(path, "llama")
    V = gguf.GGUFValueType
    for name, vtype, value in (("u8", V.UINT8, 7), ("i8", V.INT8, -7), ("u16", V.UINT16, 700), ("i16", V.INT16, -700),
                               ("u32", V.UINT32, 70000), ("i32", V.INT32, -70000), ("f32", V.FLOAT32, 0.5),
                               ("bool", V.BOOL, True), ("str", V.STRING, "text"), ("u64", V.UINT64, 1 << 40),
                               ("i64", V.INT64, -(1 << 40)), ("f64", V.FLOAT64, 0.25)):
        w.add_key_value("seed." + name, value, vtype)
    w.add_array("seed.numbers", [1, 2, 3])
    w.add_array("seed.strings", ["a", "bc"])
    w.add_array("seed.nested", [[1, 2], [3]])
    for qtype, n in ((Q.F32, 4), (Q.F16, 4), (Q.BF16, 4), (Q.Q8_0, 32), (Q.Q4_0, 32), (Q.Q4_1, 32), (Q.Q5_0, 32),
                     (Q.Q5_1, 32)):
        data = gguf.quants.quantize(rng.standard_normal((1, n)).astype(np.float32), qtype)
        w.add_tensor(qtype.name, data, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
    for qtype, block_bytes in ((Q.Q4_K, 144), (Q.Q6_K, 210)):
        w.add_tensor(qtype.name, np.zeros((1, block_bytes), dtype=np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20261205)
    write_quants(os.path.join(OUT, "quants.gguf"), rng)
    os.makedirs(os.path.join(REPO, "fuzz", "corpus", "gguf"), exist_ok=True)
    write_fuzz_seed(os.path.join(REPO, "fuzz", "corpus", "gguf", "seed.gguf"), np.random.default_rng(7))
    files = [("mha", Q.F32, "mha_f32.gguf"), ("mha", Q.F16, "mha_f16.gguf"), ("mha", Q.Q8_0, "mha_q8_0.gguf"),
             ("mha", Q.Q4_0, "mha_q4_0.gguf"), ("gqa", Q.F16, "gqa_f16.gguf"), ("tied", Q.F32, "tied_f32.gguf")]
    expected, index = {}, {"generated_by": "tests/reference/make_gguf_fixtures.py",
                           "versions": {"gguf": gguf.__version__ if hasattr(gguf, "__version__") else "see requirements",
                                        "numpy": np.__version__},
                           "files": {}}
    for model, qtype, fname in files:
        cfg, weights = numpy_llama.load_model(os.path.join(MODELS, model), dtype=np.float32)
        path = os.path.join(OUT, fname)
        write_model(path, cfg, weights, qtype)
        back = read_back(path, cfg)
        with open(os.path.join(MODELS, model, "expected.json")) as f:
            prompts = [p["ids"] for p in json.load(f)["prompts"]]
        index["files"][fname] = []
        for k, ids in enumerate(prompts):
            key = f"{fname}.{k}"
            expected[key] = numpy_llama.forward(cfg, back, ids).astype(np.float32)
            index["files"][fname].append({"ids": ids, "logits_key": key})
        print(f"{fname}: {os.path.getsize(path)} bytes, {len(prompts)} prompts")
    save_file(expected, os.path.join(OUT, "expected.safetensors"))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
