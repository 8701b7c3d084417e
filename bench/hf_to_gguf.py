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
import numpy_llama  # noqa: E402

def lazy_tensors(model_dir):
    """[(name, shape, load)] over all of the model's safetensors files."""
    return [t for fn in numpy_llama.safetensors_files(model_dir)
            for t in numpy_llama.lazy_safetensors(os.path.join(model_dir, fn))]


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
