#!/usr/bin/env python3
"""oar against llama.cpp on the same GGUF files, in the same run: decode (batch 1) and prefill tok/s.

A random model of a preset's shape (default TinyLlama-1.1B) is made once with `oar create-model`, written as GGUF
files by bench/hf_to_gguf.py (F16, BF16, Q8_0, Q4_0 by default), and each file is run by both:
  - oar:       `oar predict --model_name_or_path FILE.gguf --benchmark`: F16 with --dtype float16, BF16 as stored,
               Q8_0 with --quant_type weight_only_int8, Q4_0 as stored (weight_only_int4 in groups of 32); format
               a8w8 runs the Q8_0 file with --quant_type a8w8 (against llama.cpp's Q8_0);
  - llama.cpp: llama-cpp-python's Llama on the same file, same thread count: the prompt evaluated in one batch,
               then one token at a time.
Rounds alternate which runs first; the table gives medians and oar/llama.cpp, and each tool's peak resident
memory (the largest of the rounds: oar's `peak memory` line, llama.cpp's process maximum).

    python3 -m venv /work/venv-llamacpp
    CMAKE_ARGS="-DGGML_NATIVE=ON" /work/venv-llamacpp/bin/pip install llama-cpp-python \\
        -r tests/reference/gguf_requirements.txt
    /work/venv-llamacpp/bin/python bench/llamacpp_compare.py [--oar build/oar] [--rounds 3] [--formats f16,bf16,q8_0,q4_0,a8w8]
"""
import argparse
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OAR_FLAGS = {"f16": ["--dtype", "float16"], "bf16": [], "f32": [], "q8_0": ["--quant_type", "weight_only_int8"], "q4_0": [],
             "a8w8": ["--quant_type", "a8w8"]}
# Formats that run another format's file: oar's a8w8 (int8 weights and activations) against llama.cpp's Q8_0.
FILE_FORMAT = {"a8w8": "q8_0"}


def make_files(a):
    hf = os.path.join(a.workdir, a.preset)
    if not os.path.exists(os.path.join(hf, "config.json")):  # written last, sharded or not
        subprocess.run([a.oar, "create-model", "--preset", a.preset, "--dtype", a.model_dtype, "--output_dir", hf,
                        "--force"], check=True, stdout=subprocess.DEVNULL)
    files = {}
    for fmt in a.formats:
        stored = FILE_FORMAT.get(fmt, fmt)
        path = os.path.join(a.workdir, f"{a.preset}-{stored}.gguf")
        if not os.path.exists(path):
            print(f"writing {path}", file=sys.stderr)
            subprocess.run([sys.executable, os.path.join(HERE, "hf_to_gguf.py"), hf, path, stored], check=True)
        files[fmt] = path
    return files


def run_oar(a, fmt, path):
    # greedy: llama.cpp's eval samples nothing, and an argmax is the nearest oar has (its default top-p sampling
    # sorts the 32,000 logits every step)
    cmd = [a.oar, "predict", "--model_name_or_path", path, "--benchmark", "--src_length", str(a.prompt),
           "--max_length", str(a.decode), "--batch_size", "1", "--benchmark_warmup", "1", "--benchmark_rounds", "1",
           "--decode_strategy", "greedy_search"]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    out = subprocess.run(cmd + OAR_FLAGS[fmt], check=True, capture_output=True, text=True, env=env).stdout
    prefill = float(re.search(r"^oar: prefill ([0-9.]+) tok/s", out, re.M).group(1))
    decode = float(re.search(r"^oar: decode ([0-9.]+) tok/s", out, re.M).group(1))
    peak = float(re.search(r"^oar: peak memory ([0-9.]+) GiB", out, re.M).group(1))
    return prefill, decode, peak


def run_llamacpp(a, path):
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=a.prompt + a.decode + 16, n_batch=a.prompt, n_threads=a.threads,
                n_threads_batch=a.threads, verbose=False)
    rng = random.Random(1)
    llm.eval([rng.randrange(3, 1000) for _ in range(a.prompt)])  # warm-up: a whole prompt, as oar's warm-up round
    llm.eval([rng.randrange(3, 1000)])
    llm.reset()
    prompt = [rng.randrange(3, 1000) for _ in range(a.prompt)]
    t0 = time.perf_counter()
    llm.eval(prompt)
    prefill = a.prompt / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(a.decode):
        llm.eval([rng.randrange(3, 1000)])
    decode = a.decode / (time.perf_counter() - t0)
    del llm
    # the process's peak resident memory (Linux reports KiB), as oar's "peak memory" line
    return prefill, decode, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_llamacpp_isolated(a, path):
    """In its own process, so its threads and memory are gone before oar runs."""
    code = ("import sys; sys.path.insert(0, %r); import llamacpp_compare as m, argparse; "
            "a = argparse.Namespace(prompt=%d, decode=%d, threads=%d); print(*m.run_llamacpp(a, %r))"
            % (HERE, a.prompt, a.decode, a.threads, path))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return tuple(float(x) for x in out.split()[-3:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--oar", default=os.path.join(HERE, "..", "build", "oar"))
    p.add_argument("--preset", default="tinyllama-1.1b")
    p.add_argument("--model_dtype", default="float32",
                   help="of the created model the GGUF files are made from (bfloat16 halves a 13B's 52 GB)")
    p.add_argument("--formats", default="f16,bf16,q8_0,q4_0")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--decode", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--workdir", default="/tmp/oar_vs_llamacpp")
    a = p.parse_args()
    a.formats = a.formats.split(",")
    os.makedirs(a.workdir, exist_ok=True)
    files = make_files(a)
    res = {(fmt, who): [] for fmt in a.formats for who in ("oar", "llama.cpp")}
    for r in range(a.rounds):
        for fmt in a.formats:
            order = [("oar", lambda: run_oar(a, fmt, files[fmt])), ("llama.cpp", lambda: run_llamacpp_isolated(a, files[fmt]))]
            for who, fn in order if r % 2 == 0 else order[::-1]:
                res[(fmt, who)].append(fn())
                p_, d_, m_ = res[(fmt, who)][-1]
                print(f"round {r + 1} {fmt} {who}: prefill {p_:.1f}, decode {d_:.2f} tok/s, peak memory {m_:.2f} GiB",
                      file=sys.stderr)
    print(f"| format | oar decode | llama.cpp decode | ratio | oar prefill {a.prompt} | llama.cpp prefill | ratio "
          "| oar peak GiB | llama.cpp peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fmt in a.formats:
        o, l = res[(fmt, "oar")], res[(fmt, "llama.cpp")]
        od, ld = statistics.median(x[1] for x in o), statistics.median(x[1] for x in l)
        op, lp = statistics.median(x[0] for x in o), statistics.median(x[0] for x in l)
        om, lm = max(x[2] for x in o), max(x[2] for x in l)
        print(f"| {fmt} | {od:.2f} | {ld:.2f} | {od / ld:.3f} | {op:.1f} | {lp:.1f} | {op / lp:.3f} | {om:.2f} | {lm:.2f} |")


if __name__ == "__main__":
    main()
