#!/usr/bin/env python3
"""Perplexity of each weight format, oar against llama.cpp on the same weights and the same token ids.

MODEL_DIR is a Hugging Face Llama (float32 safetensors, with its tokenizer): real trained weights, e.g. the main
job's `build/job/pretrain` (after `bash scripts/run.sh`) or `../shared/data/stories260K_hf`. The script
  1. tokenizes TEXT with oar (`oar preprocess`), so that both tools predict exactly the same ids;
  2. writes the weights as an F32 GGUF (bench/hf_to_gguf.py) and has llama.cpp's own quantizer
     (llama_model_quantize) make BF16, Q8_0, Q4_0 and Q4_K_M files of it;
  3. runs `oar perplexity` on the Hugging Face directory in float32, bfloat16, weight_only_int8, a8w8 and
     weight_only_int4 (per channel, and in groups of 64 and 128 where the widths allow), and on every GGUF file;
  4. runs llama.cpp (llama-cpp-python, float32 KV cache as oar's) on every GGUF file over the same
     non-overlapping windows of --ctx tokens as `oar perplexity`: each window evaluated in one batch, every
     position but the last predicting the next.
  5. with --calib (a dataset directory holding PaddleNLP's train.json, or a text file whose last paragraphs become
     one), runs oar's PTQ (`oar quantize`, a8w8, 8 batches of 4) without and with SmoothQuant (all linears,
     piecewise search, as PaddleNLP's ptq_argument.json) and adds their a8w8 rows with static activation steps.
Each line gives the change against the same tool's float32 perplexity, and the tensor types each file holds
(llama.cpp's quantizer falls back to other types for widths its blocks do not divide). The two tools' F32
perplexities must agree to 0.01%, which they cannot if they predicted different ids.

    /work/venv-llamacpp/bin/python bench/accuracy_compare.py MODEL_DIR TEXT_FILE [--ctx 128] [--max_tokens 8192]
        [--calib DIR_OR_TEXT]
    (the venv of bench/llamacpp_compare.py: llama-cpp-python plus tests/reference/gguf_requirements.txt)
"""
import argparse
import ctypes
import json
import os
import re
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# llama.cpp's quantizer types, as llama_cpp names them
GGUF_TYPES = {"bf16": "LLAMA_FTYPE_MOSTLY_BF16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
              "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
# oar's formats on the Hugging Face directory: (label, flags, group size the widths must allow or None)
OAR_FORMATS = [("float32", ["--dtype", "float32"], None),
               ("bfloat16", ["--dtype", "bfloat16"], None),
               ("weight_only_int8", ["--dtype", "float32", "--quant_type", "weight_only_int8"], None),
               ("a8w8 (per-token activation steps)", ["--dtype", "float32", "--quant_type", "a8w8"], None),
               ("weight_only_int4, per channel", ["--dtype", "float32", "--quant_type", "weight_only_int4"], 32),
               ("weight_only_int4, groups of 64", ["--dtype", "float32", "--quant_type", "weight_only_int4",
                                                   "--weightonly_group_size", "64"], 64),
               ("weight_only_int4, groups of 128", ["--dtype", "float32", "--quant_type", "weight_only_int4",
                                                    "--weightonly_group_size", "128"], 128)]


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-400:]}")
    return p.stdout


def oar_ids(a):
    """The ids `oar perplexity` predicts: BOS, then the text as `oar preprocess` tokenizes it. oar's perplexity
    reads a.text, the input without the leading and trailing whitespace that preprocess strips."""
    jsonl, prefix = os.path.join(a.workdir, "text.jsonl"), os.path.join(a.workdir, "text_ids")
    with open(a.input, encoding="utf-8") as f:
        text = f.read().strip()
    with open(a.text, "w", encoding="utf-8") as out:
        out.write(text)
    with open(jsonl, "w", encoding="utf-8") as out:
        out.write(json.dumps({"text": text}) + "\n")
    run([a.oar, "preprocess", "--model_name_or_path", a.model_dir, "--input_path", jsonl, "--output_prefix", prefix,
         "--max_repeated_len", str(len(text) + 1)])  # no collapsing of repeated characters
    with open(prefix + ".idx", "rb") as f:
        head = f.read(18)
    assert head[:9] == b"MMIDIDX\x00\x00", "not an MMIDIDX index"
    dtype = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}[head[17]]
    ids = np.fromfile(prefix + ".bin", dtype=dtype).astype(np.int64)
    with open(os.path.join(a.model_dir, "config.json")) as f:
        bos = json.load(f).get("bos_token_id", 1)
    ids = np.concatenate([[bos], ids])
    return ids[:a.max_tokens] if a.max_tokens else ids


def oar_ppl(a, model, flags):
    out = run([a.oar, "perplexity", "--model_name_or_path", model, "--tokenizer_name_or_path", a.model_dir,
               "--input_file", a.text, "--ctx", str(a.ctx), "--max_tokens", str(a.max_tokens)] + flags)
    m = re.search(r"perplexity: ([0-9.]+) \(mean NLL [0-9.]+ nats over (\d+) predicted", out)
    if not m:
        raise RuntimeError(f"unexpected output of oar perplexity on {model}: {out.strip()[-300:]}")
    return float(m.group(1)), int(m.group(2))


def calibration_dir(a):
    """--calib as a dataset directory: as given, or the text file's last ~200 lines as src/tgt halves."""
    if os.path.isdir(a.calib):
        return a.calib
    lines = [l.strip() for l in open(a.calib, encoding="utf-8") if l.strip()][-200:]
    d = os.path.join(a.workdir, "calib")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "train.json"), "w") as f:
        for i in range(0, len(lines) - 1, 2):
            f.write(json.dumps({"src": lines[i], "tgt": lines[i + 1]}) + "\n")
    return d


def ptq_rows(a):
    """a8w8 with PTQ's static steps, without and with SmoothQuant."""
    rows, data = [], calibration_dir(a)
    for smooth in (False, True):
        out = os.path.join(a.workdir, "ptq_smooth" if smooth else "ptq")
        cfg = {"model_name_or_path": a.model_dir, "dataset_name_or_path": data, "output_dir": out,
               "overwrite_output_dir": True, "do_ptq": True, "quant_type": "a8w8", "ptq_step": 8,
               "per_device_train_batch_size": 4, "src_length": 256, "max_length": 512, "smooth": smooth,
               "smooth_all_linears": True, "smooth_piecewise_search": True, "smooth_k_piece": 3,
               "smooth_search_piece": True, "smooth_step": 8}
        path = os.path.join(a.workdir, "ptq.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        run([a.oar, "quantize", path])
        label = "a8w8, PTQ's static steps" + (" + SmoothQuant" if smooth else "")
        rows.append((f"HF directory, {label}", oar_ppl(a, out, ["--dtype", "float32", "--quant_type", "a8w8"]), None))
    return rows


def llama_ppl(a, path, ids):
    from llama_cpp import Llama
    import llama_cpp
    llm = Llama(model_path=path, n_ctx=a.ctx, n_batch=a.ctx, n_ubatch=a.ctx, logits_all=True,
                n_threads=a.threads, n_threads_batch=a.threads, verbose=False,
                type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    nll, count = 0.0, 0
    for b in range(0, len(ids), a.ctx):
        win = [int(t) for t in ids[b:b + a.ctx]]
        if len(win) < 2:
            break
        llm.reset()
        llm.eval(win)
        logits = np.asarray(llm.scores[:len(win) - 1], dtype=np.float64)
        mx = logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(logits - mx).sum(axis=1)) + mx[:, 0]
        nll += float((lse - logits[np.arange(len(win) - 1), win[1:]]).sum())
        count += len(win) - 1
    llm.close()
    return float(np.exp(nll / count)), count


def tensor_types(path):
    """'Q4_0 x 28, F32 x 11, ...': how many tensors of each type the file holds."""
    import collections
    import gguf
    counts = collections.Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors)
    return ", ".join(f"{k} x {v}" for k, v in counts.most_common())


def quantize(src, dst, ftype_name):
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = os.cpu_count()
    if llama_cpp.llama_model_quantize(src.encode(), (dst + ".tmp").encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {ftype_name}")
    os.replace(dst + ".tmp", dst)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("input", help="UTF-8 text")
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--max_tokens", type=int, default=8192)
    p.add_argument("--oar", default=os.path.join(HERE, "..", "build", "oar"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--workdir", default="/tmp/oar_accuracy")
    p.add_argument("--calib", help="PTQ calibration data: a directory with train.json, or a text file")
    a = p.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    a.text = os.path.join(a.workdir, "text.txt")
    with open(os.path.join(a.model_dir, "config.json")) as f:
        cfg = json.load(f)
    widths = [cfg["hidden_size"], cfg["intermediate_size"]]

    ids = oar_ids(a)
    f32 = os.path.join(a.workdir, "model-f32.gguf")
    run([sys.executable, os.path.join(HERE, "hf_to_gguf.py"), a.model_dir, f32, "F32"])
    files = {"f32": f32}
    for name, ftype in GGUF_TYPES.items():
        files[name] = os.path.join(a.workdir, f"model-{name}.gguf")
        quantize(f32, files[name], ftype)

    rows = []  # (label, oar ppl or error, llama.cpp ppl or None)
    for label, flags, group in OAR_FORMATS:
        if group and any(w % group for w in widths):
            rows.append((f"HF directory, {label}", f"widths {widths} are not multiples of {group}", None))
            continue
        rows.append((f"HF directory, {label}", oar_ppl(a, a.model_dir, flags), None))
    if a.calib:
        rows += ptq_rows(a)
    for name, path in files.items():
        try:
            o = oar_ppl(a, path, ["--dtype", "float32"])
        except RuntimeError as e:
            o = str(e).splitlines()[-1][-160:]
        made_by = "bench/hf_to_gguf.py" if name == "f32" else "llama.cpp's quantizer"
        rows.append((f"GGUF {name.upper()} ({made_by})", o, llama_ppl(a, path, ids)))

    counts = {r[1][1] for r in rows if isinstance(r[1], tuple)} | {r[2][1] for r in rows if r[2]}
    assert len(counts) == 1, f"the tools predicted different numbers of tokens: {counts}"
    base_o, base_l = rows[0][1][0], rows[-len(files)][2][0]
    f32_o = rows[-len(files)][1][0]
    assert abs(f32_o / base_l - 1) < 1e-4, f"oar and llama.cpp disagree on the F32 file: {f32_o} vs {base_l}"
    print(f"{os.path.basename(os.path.normpath(a.model_dir))}: {counts.pop()} predicted tokens, windows of {a.ctx}")
    print("| weights | oar perplexity | change vs oar float32 | llama.cpp perplexity | change vs llama.cpp F32 |")
    print("|---|---|---|---|---|")
    for label, o, l in rows:
        oc = f"{o[0]:.4f} | {100 * (o[0] / base_o - 1):+.2f}%" if isinstance(o, tuple) else f"({o}) | -"
        lc = f"{l[0]:.4f} | {100 * (l[0] / base_l - 1):+.2f}%" if l else "- | -"
        print(f"| {label} | {oc} | {lc} |")
    for name, path in files.items():
        print(f"GGUF {name.upper()}: {tensor_types(path)}")


if __name__ == "__main__":
    main()
