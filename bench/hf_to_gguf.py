#!/usr/bin/env python3
"""Writes a Hugging Face Llama directory (float32 or bfloat16 safetensors, e.g. from `oar create-model`) as a GGUF
file the way llama.cpp's converter writes a Llama, with every 2-D tensor in one type (F32, F16, BF16, Q8_0 or
Q4_0, quantized by gguf-py in numpy) and a synthetic "llama" vocabulary of the model's size (<unk>, <s>, </s>,
256 byte pieces, filler pieces): for benchmarks, which feed token ids, not text.

One tensor is in memory at a time (read from the mapped safetensors, converted, written), so a 13B model
converts in a few GB.

    python bench/hf_to_gguf.py MODEL_DIR OUT.gguf TYPE      (needs numpy and gguf: tests/reference/gguf_requirements.txt)
"""
import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGML_QUANT_SIZES

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import make_gguf_fixtures  # noqa: E402

ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def lazy_tensors(model_dir):
    """[(name, shape, loader)] over the model's safetensors files, in file order; loader() gives float32."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    out = []
    for fn in files:
        path = os.path.join(model_dir, fn)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            dt = ST_DTYPES[info["dtype"]]

            def load(path=path, off=8 + n + b, count=(e - b) // np.dtype(dt).itemsize, dt=dt, shape=info["shape"],
                     bf16=info["dtype"] == "BF16"):
                raw = np.fromfile(path, dtype=dt, count=count, offset=off)
                x = (raw.astype(np.uint32) << 16).view(np.float32) if bf16 else raw.astype(np.float32)
                return x.reshape(shape)
            out.append((name, info["shape"], load))
    return out


def stored_bytes(shape, qtype):
    """Bytes of a tensor of this shape as the writer stores it (1-D tensors stay F32)."""
    numel = int(np.prod(shape))
    if len(shape) == 1 or qtype == GGMLQuantizationType.F32:
        return numel * 4
    block, size = GGML_QUANT_SIZES[qtype]
    return numel // block * size


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    model_dir, out, qtype = sys.argv[1], sys.argv[2], GGMLQuantizationType[sys.argv[3].upper()]
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    tensors = lazy_tensors(model_dir)
    tmp = out + ".tmp"
    w = make_gguf_fixtures.start_model(tmp, cfg)
    for name, shape, _ in tensors:  # the tensor table first (names, shapes, types, sizes), then the data
        gname = make_gguf_fixtures.gguf_name(name)
        q = qtype if len(shape) > 1 and qtype != GGMLQuantizationType.F32 else None
        # the logical shape: any dtype but uint8 (which gguf-py reads as a shape in bytes) keeps it
        w.add_tensor_info(gname, shape, np.dtype(np.float32), stored_bytes(shape, qtype), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for i, (name, _, load) in enumerate(tensors):
        _, data, _ = make_gguf_fixtures.convert_tensor(cfg, name, load(), qtype)
        w.write_tensor_data(data)
        print(f"\r{i + 1}/{len(tensors)} tensors", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    w.close()
    os.replace(tmp, out)  # a half-written file never has the final name


if __name__ == "__main__":
    main()
