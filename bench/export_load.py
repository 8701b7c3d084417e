#!/usr/bin/env python3
"""Load-to-first-token: a checkpoint loaded with PaddleNLP's inference flags against its `oar export`.

A random model of a preset's shape (default TinyLlama-1.1B, bfloat16) is made once with `oar create-model`; for
each format it is exported (`oar export ... --quant_type Q`) and both are run as a user starts a prediction:
  - checkpoint: `oar predict --model_name_or_path CKPT [--quant_type Q] --prompt P --max_length 1`
                (the weights are read from safetensors and converted or quantized as they load);
  - export:     `oar predict --model_name_or_path EXPORT --mode static --prompt P --max_length 1`
                (the packed file is mapped; nothing is converted).
Each is timed from process start to exit, which is loading the tokenizer and the model, one prefill and one
token. Rounds alternate which runs first; the page cache is warm for both (one untimed run each first), as on a
machine that serves the model again. The page cache's state matters: a file just written sits in small pages
and maps with ~5x the page faults of one read back from disk (large folios), so where it can (root) the bench
empties the page cache and reads both files back before each format's rounds, and also times each cold (right
after emptying it). The table gives medians, the ratio checkpoint/export, and each run's peak resident memory.

    python3 bench/export_load.py [--oar build/oar] [--preset tinyllama-1.1b] [--rounds 5]
        [--formats bfloat16,weight_only_int8,weight_only_int4,a8w8] [--work /tmp/oar_export_bench] [--keep]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import time


def run(cmd):
    """Wall seconds and peak RSS (GiB) of one process, which must succeed."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    err = p.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return dt, usage.ru_maxrss / (1 << 20)


def drop_caches():
    """Empties the page cache; False where this process may not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def read_back(*dirs):
    for d in dirs:
        for name in os.listdir(d):
            with open(os.path.join(d, name), "rb") as f:
                while f.read(1 << 24):
                    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--oar", default=os.path.join(os.path.dirname(__file__), "..", "build", "oar"))
    ap.add_argument("--preset", default="tinyllama-1.1b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--formats", default="bfloat16,weight_only_int8,weight_only_int4,a8w8")
    ap.add_argument("--work", default="/tmp/oar_export_bench")
    ap.add_argument("--keep", action="store_true", help="keep the model and the exports")
    a = ap.parse_args()
    oar = os.path.abspath(a.oar)
    os.makedirs(a.work, exist_ok=True)
    ck = os.path.join(a.work, "model")
    if not os.path.exists(os.path.join(ck, "config.json")):
        subprocess.run([oar, "create-model", "--preset", a.preset, "--dtype", "bfloat16", "--output_dir", ck,
                        "--force"], check=True, stdout=subprocess.DEVNULL)
    prompt = ["--prompt", "Once upon a time", "--max_length", "1", "--decode_strategy", "greedy_search"]
    print(f"| format | checkpoint load-to-first-token (s) | export (s) | checkpoint/export | peak GiB checkpoint"
          f" | peak GiB export | export time (s) |")
    print("|---|---|---|---|---|---|---|")
    for fmt in a.formats.split(","):
        q = [] if fmt in ("bfloat16", "") else ["--quant_type", fmt]
        ex = os.path.join(a.work, "export_" + fmt)
        t0 = time.perf_counter()
        subprocess.run([oar, "export", "--model_name_or_path", ck, "--output_path", ex, "--force", "--inference_model",
                        "--block_attn"] + q, check=True, stdout=subprocess.DEVNULL)
        export_s = time.perf_counter() - t0
        cmds = {"checkpoint": [oar, "predict", "--model_name_or_path", ck] + q + prompt,
                "export": [oar, "predict", "--model_name_or_path", ex, "--mode", "static"] + prompt}
        times = {k: [] for k in cmds}
        rss = {k: 0.0 for k in cmds}
        cold = {}
        for k, c in cmds.items():
            if drop_caches():
                cold[k] = run(c)[0]
        if drop_caches():
            read_back(ck, ex)  # both files in the page cache as read from disk
        else:
            print(f"(not root: the page cache could not be emptied; the just-written export maps with more page "
                  f"faults than the checkpoint, which favours the checkpoint)", flush=True)
        for k, c in cmds.items():
            run(c)  # warm
        for r in range(a.rounds):
            for k in (list(cmds) if r % 2 == 0 else list(reversed(list(cmds)))):
                dt, peak = run(cmds[k])
                times[k].append(dt)
                rss[k] = max(rss[k], peak)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {fmt} | {med['checkpoint']:.3f} | {med['export']:.3f} | {med['checkpoint'] / med['export']:.2f}x "
              f"| {rss['checkpoint']:.2f} | {rss['export']:.2f} | {export_s:.1f} |", flush=True)
        if cold:
            print(f"| {fmt}, cold page cache (one run) | {cold['checkpoint']:.3f} | {cold['export']:.3f} | "
                  f"{cold['checkpoint'] / cold['export']:.2f}x | | | |", flush=True)
        shutil.rmtree(ex) if not a.keep else None
    if not a.keep:
        shutil.rmtree(ck)


if __name__ == "__main__":
    main()
