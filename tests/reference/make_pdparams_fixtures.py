#!/usr/bin/env python3
"""Fixtures for oar's restricted .pdparams reader (src/io/pdparams.cpp), with Python's pickle and NumPy only.

paddle.save(state_dict) pickles a dict {name: numpy array} (protocol 4 by default; bfloat16 tensors as uint16
arrays). These files are pickled here the same way, with the arrays also written to a safetensors file by a
separate, hand-written path, so the test compares the two readers:
  state_p4.pdparams      protocol 4 dict: float32, float16, uint16 (Paddle's bfloat16), int64 and int8 arrays, an
                         empty array, and a non-array entry (Paddle's "StructuredToParameterName@@" table)
  state_p2.pdparams      the same arrays as a protocol 2 OrderedDict (array bytes through _codecs.encode)
  tuple_form.pdparams    {key: (name, array)}, as older paddle.save writes a Tensor
  state.safetensors      the same arrays, as safetensors
  evil_global.pdparams   a pickle that would call posix.system: must be refused, never run
Usage: python3 tests/reference/make_pdparams_fixtures.py [--out tests/fixtures/pdparams]
"""
import argparse
import collections
import json
import os
import pickle
import struct

import numpy as np

SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "uint16": "BF16", "int64": "I64", "int8": "I8"}


def arrays():
    rng = np.random.RandomState(7)
    return collections.OrderedDict([
        ("llama.embed_tokens.weight", rng.standard_normal((5, 3)).astype(np.float32)),
        ("llama.norm.weight", rng.standard_normal(7).astype(np.float16)),
        ("lm_head.weight", rng.randint(0, 65535, size=(2, 4)).astype(np.uint16)),
        ("step", np.array([3, -4], dtype=np.int64)),
        ("mask", np.array([[1, -2], [3, 127]], dtype=np.int8)),
        ("empty", np.zeros((0, 4), dtype=np.float32)),
    ])


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": SAFETENSORS_DTYPES[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures", "pdparams"))
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    t = arrays()
    state = dict(t)
    state["StructuredToParameterName@@"] = {"llama.norm.weight": "create_parameter_0.w_0"}
    with open(os.path.join(out, "state_p4.pdparams"), "wb") as f:
        pickle.dump(state, f, protocol=4)
    with open(os.path.join(out, "state_p2.pdparams"), "wb") as f:
        pickle.dump(collections.OrderedDict(t), f, protocol=2)
    with open(os.path.join(out, "tuple_form.pdparams"), "wb") as f:
        pickle.dump({k: ("param_%d" % i, v) for i, (k, v) in enumerate(t.items())}, f, protocol=4)
    write_safetensors(os.path.join(out, "state.safetensors"), t)
    with open(os.path.join(out, "evil_global.pdparams"), "wb") as f:
        f.write(b"\x80\x02cposix\nsystem\nX\x07\x00\x00\x00echo hi\x85R.")


if __name__ == "__main__":
    main()
