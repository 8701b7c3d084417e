#!/usr/bin/env python3
"""Writes a Hugging Face Llama directory (float32 or bfloat16 safetensors, e.g. from `oar create-model`) as a GGUF
file the way llama.cpp's converter writes a Llama, with every 2-D tensor in one type (F32, F16, BF16, Q8_0 or
Q4_0, quantized by gguf-py in numpy) and a synthetic "llama" vocabulary of the model's size (<unk>, <s>, </s>,
256 byte pieces, filler pieces): for benchmarks, which feed token ids, not text.

    python bench/hf_to_gguf.py MODEL_DIR OUT.gguf TYPE      (needs numpy and gguf: tests/reference/gguf_requirements.txt)
"""
import os
import sys

from gguf import GGMLQuantizationType

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import make_gguf_fixtures  # noqa: E402
import numpy_llama  # noqa: E402
import numpy as np  # noqa: E402


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    model_dir, out, qtype = sys.argv[1], sys.argv[2], GGMLQuantizationType[sys.argv[3].upper()]
    cfg, weights = numpy_llama.load_model(model_dir, dtype=np.float32)
    tmp = out + ".tmp"
    make_gguf_fixtures.write_model(tmp, cfg, weights, qtype)
    os.replace(tmp, out)  # a half-written file never has the final name


if __name__ == "__main__":
    main()
