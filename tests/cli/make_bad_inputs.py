#!/usr/bin/env python3
"""Writes a tiny valid Hugging Face Llama model directory and broken variants of it, for tests/cli/bad_input.sh.

    python3 make_bad_inputs.py --src REPO_ROOT --out DIR

Standard library only (struct + json), so it runs wherever python3 does. Every case is a directory DIR/<case>/
(config.json, weights, tokenizer.model copied from REPO_ROOT/tests/fixtures/tokenizers/spm/ when that fixture
exists; when it does not, no tokenizer is written and the valid cases fail in bad_input.sh, loudly).

DIR/cases.tsv lists one case per line: name, expected exit code, and "|"-separated names of which at least one
must appear in the error line (the offending file, or the directory when no file is to blame).
"""
import argparse
import json
import os
import random
import shutil
import struct

HIDDEN, HEADS, KV_HEADS, INTER, LAYERS = 16, 2, 1, 32, 1
HEAD_DIM = HIDDEN // HEADS
TOKENIZER = os.path.join("tests", "fixtures", "tokenizers", "spm", "tokenizer.model")


def sentencepiece_vocab_size(path):
    """Counts the pieces of a SentencePiece ModelProto (repeated field 1) by walking the protobuf wire format."""
    data = open(path, "rb").read()
    pos, count = 0, 0

    def varint():
        nonlocal pos
        shift, value = 0, 0
        while True:
            b = data[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    while pos < len(data):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length = varint()  # (not "pos += varint()": that would read pos before the call moves it)
            pos += length
            count += field == 1
        elif wire == 5:
            pos += 4
        else:
            raise ValueError("%s: unexpected protobuf wire type %d" % (path, wire))
    return count


def config(vocab, **overrides):
    c = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    c.update(overrides)
    return c


def weights(vocab, rng):
    """name -> (dtype, shape, raw little-endian bytes), float32 N(0, 0.05^2); norms near 1."""
    shapes = {"model.embed_tokens.weight": [vocab, HIDDEN], "model.norm.weight": [HIDDEN]}
    for i in range(LAYERS):
        p = "model.layers.%d." % i
        shapes.update({
            p + "input_layernorm.weight": [HIDDEN],
            p + "post_attention_layernorm.weight": [HIDDEN],
            p + "self_attn.q_proj.weight": [HEADS * HEAD_DIM, HIDDEN],
            p + "self_attn.k_proj.weight": [KV_HEADS * HEAD_DIM, HIDDEN],
            p + "self_attn.v_proj.weight": [KV_HEADS * HEAD_DIM, HIDDEN],
            p + "self_attn.o_proj.weight": [HIDDEN, HEADS * HEAD_DIM],
            p + "mlp.gate_proj.weight": [INTER, HIDDEN],
            p + "mlp.up_proj.weight": [INTER, HIDDEN],
            p + "mlp.down_proj.weight": [HIDDEN, INTER],
        })
    out = {}
    for name, shape in sorted(shapes.items()):
        n = 1
        for d in shape:
            n *= d
        mean = 1.0 if name.endswith("norm.weight") else 0.0
        out[name] = ("F32", shape, struct.pack("<%df" % n, *(rng.gauss(mean, 0.05) for _ in range(n))))
    return out


def safetensors_bytes(tensors, edit_header=None):
    """The safetensors layout: u64 header length, JSON header padded with spaces to 8 bytes, then the data."""
    header, data, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (dtype, shape, raw) in sorted(tensors.items()):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data.append(raw)
        offset += len(raw)
    if edit_header:
        edit_header(header, offset)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(data)


DIRECTORY = object()  # a Cases.add file value: a directory where the file should be

# JSON nested far past oar's depth limit: a tokenizer.json like this one (its "model" object is copied while
# loading, one stack frame per level) made oar predict segfault
DEEP = 200000


def deep_json(depth=DEEP):
    return b'{"model": {"a": ' + b"[" * depth + b"]" * depth + b"}}"


class Cases:
    def __init__(self, out, tokenizer, vocab):
        self.out, self.tokenizer, self.vocab, self.lines = out, tokenizer, vocab, []

    def add(self, name, exit_code, expect, files):
        """files: file name -> bytes, a dict (written as JSON), or DIRECTORY (an empty directory in its place)."""
        d = os.path.join(self.out, name)
        os.makedirs(d)
        if self.tokenizer:
            shutil.copyfile(self.tokenizer, os.path.join(d, "tokenizer.model"))
        for fname, content in files.items():
            if content is DIRECTORY:
                os.makedirs(os.path.join(d, fname))
                continue
            if isinstance(content, dict):
                content = (json.dumps(content, indent=2) + "\n").encode()
            with open(os.path.join(d, fname), "wb") as f:
                f.write(content)
        self.lines.append("%s\t%d\t%s\n" % (name, exit_code, "|".join(expect)))

    def write_manifest(self):
        with open(os.path.join(self.out, "cases.tsv"), "w") as f:
            f.writelines(self.lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, help="repository root (for the tokenizer fixture)")
    ap.add_argument("--out", required=True, help="directory to create the cases in (emptied first)")
    args = ap.parse_args()

    tokenizer = os.path.join(args.src, TOKENIZER)
    if not os.path.isfile(tokenizer):
        print("make_bad_inputs.py: warning: %s is missing; the model directories get no tokenizer" % tokenizer)
        tokenizer = None
    vocab = sentencepiece_vocab_size(tokenizer) if tokenizer else 32000

    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    cases = Cases(args.out, tokenizer, vocab)
    rng = random.Random(20240601)
    w = weights(vocab, rng)
    cfg = config(vocab)
    good = safetensors_bytes(w)
    ST, CFG, INDEX = "model.safetensors", "config.json", "model.safetensors.index.json"
    SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"

    # --- valid models: must load and run ---
    cases.add("valid", 0, [], {CFG: cfg, ST: good})
    first = {k: v for k, v in w.items() if k.startswith("model.layers.")}
    second = {k: v for k, v in w.items() if not k.startswith("model.layers.")}
    index = {"metadata": {"total_size": sum(len(v[2]) for v in w.values())},
             "weight_map": {**{k: SHARD1 for k in first}, **{k: SHARD2 for k in second}}}
    cases.add("valid_sharded", 0, [], {CFG: cfg, INDEX: index, SHARD1: safetensors_bytes(first),
                                       SHARD2: safetensors_bytes(second)})

    # --- broken safetensors ---
    cases.add("truncated", 2, [ST], {CFG: cfg, ST: good[: len(good) * 2 // 3]})
    past_eof = struct.pack("<Q", len(good) + 1000) + good[8:]
    cases.add("header_past_eof", 2, [ST], {CFG: cfg, ST: past_eof})
    header_len = struct.unpack("<Q", good[:8])[0]
    not_json = good[:8] + b"{" + b"#" * (header_len - 1) + good[8 + header_len:]
    cases.add("header_not_json", 2, [ST], {CFG: cfg, ST: not_json})

    def shift_out_of_range(h, data_len):
        b, e = h["model.norm.weight"]["data_offsets"]
        h["model.norm.weight"]["data_offsets"] = [b + data_len, e + data_len]
    cases.add("offsets_out_of_range", 2, [ST], {CFG: cfg, ST: safetensors_bytes(w, shift_out_of_range)})

    def overlap(h, data_len):
        h["model.layers.0.post_attention_layernorm.weight"]["data_offsets"] = \
            list(h["model.layers.0.input_layernorm.weight"]["data_offsets"])
    cases.add("overlapping_offsets", 2, [ST], {CFG: cfg, ST: safetensors_bytes(w, overlap)})

    # --- valid safetensors whose contents disagree with the model ---
    as_i32 = dict(w)
    dt, shape, raw = w["model.layers.0.self_attn.q_proj.weight"]
    as_i32["model.layers.0.self_attn.q_proj.weight"] = ("I32", shape, raw)
    cases.add("dtype_int32_weight", 2, [ST], {CFG: cfg, ST: safetensors_bytes(as_i32)})

    as_f8 = dict(w)
    as_f8["model.norm.weight"] = ("F8_E4M3", [HIDDEN * 4], w["model.norm.weight"][2])
    cases.add("dtype_f8", 2, [ST], {CFG: cfg, ST: safetensors_bytes(as_f8)})

    wrong_shape = dict(w)
    rows = INTER + 8
    wrong_shape["model.layers.0.mlp.gate_proj.weight"] = (
        "F32", [rows, HIDDEN], struct.pack("<%df" % (rows * HIDDEN), *([0.01] * (rows * HIDDEN))))
    cases.add("shape_vs_config", 2, [ST, CFG], {CFG: cfg, ST: safetensors_bytes(wrong_shape)})

    missing = {k: v for k, v in w.items() if k != "model.norm.weight"}
    cases.add("missing_tensor", 2, [ST], {CFG: cfg, ST: safetensors_bytes(missing)})

    # --- broken config.json ---
    cfg_text = json.dumps(cfg, indent=2).encode()
    cases.add("config_invalid_json", 2, [CFG], {CFG: cfg_text[: len(cfg_text) // 2], ST: good})
    cases.add("unknown_architecture", 2, [CFG],
              {CFG: config(vocab, architectures=["GPT2LMHeadModel"], model_type="gpt2"), ST: good})

    # --- broken sharded checkpoints ---
    bad_index = {"weight_map": dict(index["weight_map"])}
    cases.add("index_missing_shard", 2, [SHARD2, INDEX],
              {CFG: cfg, INDEX: bad_index, SHARD1: safetensors_bytes(first)})
    ghost_index = {"weight_map": dict(index["weight_map"], **{"model.layers.0.ghost.weight": SHARD1})}
    cases.add("index_tensor_not_in_shard", 2, [SHARD1, INDEX],
              {CFG: cfg, INDEX: ghost_index, SHARD1: safetensors_bytes(first), SHARD2: safetensors_bytes(second)})

    # --- JSON nested 200,000 deep, in every JSON file a model directory has ---
    def deep_header_bytes():
        text = deep_json()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text
    cases.add("config_deep", 2, [CFG], {CFG: deep_json(), ST: good})
    cases.add("header_deep", 2, [ST], {CFG: cfg, ST: deep_header_bytes()})
    cases.add("index_deep", 2, [INDEX], {CFG: cfg, INDEX: deep_json(), SHARD1: safetensors_bytes(first),
                                         SHARD2: safetensors_bytes(second)})
    for fname in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        cases.add(fname.split(".")[0] + "_deep", 2, [fname], {CFG: cfg, ST: good, fname: deep_json()})

    # --- a directory where a file should be ---
    cases.add("safetensors_is_dir", 2, [ST], {CFG: cfg, ST: DIRECTORY})
    cases.add("config_is_dir", 2, [CFG], {CFG: DIRECTORY, ST: good})

    # --- no weights at all: the directory is to blame ---
    cases.add("no_weights", 2, [os.path.join(args.out, "no_weights")], {CFG: cfg})

    cases.write_manifest()


if __name__ == "__main__":
    main()
