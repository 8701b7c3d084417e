#!/usr/bin/env python3
"""How close a8w8 with PTQ's static steps stays to float, without and with SmoothQuant, on a trained model.

Perplexity on held-out text is a poor fidelity measure for small models: on text unlike their training data
quantization noise can lower it. This bench measures on text the float model wrote itself (temperature 1, no
top-k/top-p). Were every sampled token scored in the context it was sampled in, the mean NLL under a model q
would be H(p) + KL(p || q), and the perplexity ratio quantized / float exp(KL) >= 1. Here it is a proxy: the
samples are joined into one text, tokenized again and scored by `oar perplexity` in windows of --ctx that cut
across samples (and score their prompts), so the ratio is not exactly exp(KL), only measured on text of the
model's own distribution.

  1. `oar predict` samples two texts from MODEL_DIR in float32 (--prompts prompts of --tokens tokens each, two
     seeds): one to evaluate on, one to calibrate on;
  2. `oar quantize` runs PTQ (a8w8, 8 batches of 4) on the calibration text: no smoothing; SmoothQuant with
     alpha 0.5; with the piecewise search; with the search over piece counts and the scale factor, as PaddleNLP's
     ptq_argument.json (smooth_all_linears in all three);
  3. `oar perplexity` gives each model's perplexity on the evaluation text, with float32's and a8w8's per-token
     steps (no PTQ) for reference.

    python3 bench/smoothquant_compare.py MODEL_DIR [--oar build/oar] [--prompts 40] [--tokens 256] [--ctx 256]
        [--workdir /tmp/oar_smoothquant]
"""
import argparse
import json
import os
import re
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = ["Once upon a time", "One day", "The little dog", "Tom", "She"]
VARIANTS = [("a8w8, PTQ's static steps, no smoothing", None),
            ("+ SmoothQuant, alpha 0.5", {"smooth_piecewise_search": False}),
            ("+ SmoothQuant, piecewise search (3 pieces)", {"smooth_piecewise_search": True}),
            ("+ SmoothQuant, search over pieces and scale (ptq_argument.json)",
             {"smooth_piecewise_search": True, "smooth_search_piece": True})]


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    return p.stdout


def sample_text(a, seed, path):
    src = os.path.join(a.workdir, f"prompts_{seed}.json")
    with open(src, "w") as f:
        for i in range(a.prompts):
            f.write(json.dumps({"src": PROMPTS[i % len(PROMPTS)]}) + "\n")
    out = os.path.join(a.workdir, f"sampled_{seed}.jsonl")
    run([a.oar, "predict", "--model_name_or_path", a.model, "--dtype", "float32", "--data_file", src, "--output_file",
         out, "--max_length", str(a.tokens), "--decode_strategy", "sampling", "--temperature", "1.0", "--top_p", "1.0",
         "--top_k", "0", "--seed", str(seed), "--batch_size", "8"])
    rows = [json.loads(l) for l in open(out)]
    with open(path, "w") as f:
        f.write("\n".join(r["src"] + r["output"] for r in rows) + "\n")
    return rows


def ppl(a, model, flags):
    out = run([a.oar, "perplexity", "--model_name_or_path", model, "--tokenizer_name_or_path", a.model,
               "--dtype", "float32", "--input_file", a.eval_text, "--ctx", str(a.ctx)] + flags)
    m = re.search(r"perplexity: ([0-9.]+) \(mean NLL [0-9.]+ nats over (\d+) predicted", out)
    return float(m.group(1)), int(m.group(2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--oar", default=os.path.join(HERE, "..", "build", "oar"))
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--workdir", default="/tmp/oar_smoothquant")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    a.eval_text = os.path.join(a.workdir, "eval.txt")
    sample_text(a, 1, a.eval_text)
    calib = os.path.join(a.workdir, "calib")
    os.makedirs(calib, exist_ok=True)
    rows = sample_text(a, 100000, os.path.join(a.workdir, "calib.txt"))
    with open(os.path.join(calib, "train.json"), "w") as f:
        for r in rows:  # PaddleNLP's src/tgt: the prompt and what the model wrote after it
            f.write(json.dumps({"src": r["src"], "tgt": r["output"]}) + "\n")

    base = ppl(a, a.model, [])
    table = [("float32", base), ("a8w8, per-token steps (no PTQ)", ppl(a, a.model, ["--quant_type", "a8w8"]))]
    for label, smooth in VARIANTS:
        out = os.path.join(a.workdir, "ptq")
        cfg = {"model_name_or_path": a.model, "dataset_name_or_path": calib, "output_dir": out,
               "overwrite_output_dir": True, "do_ptq": True, "quant_type": "a8w8", "ptq_step": 8,
               "per_device_train_batch_size": 4, "src_length": 256, "max_length": 512, "smooth": smooth is not None,
               "smooth_all_linears": True, "smooth_k_piece": 3, "smooth_step": 8}
        cfg.update(smooth or {})
        path = os.path.join(a.workdir, "ptq.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        run([a.oar, "quantize", path])
        table.append((label, ppl(a, out, ["--quant_type", "a8w8"])))
    name = os.path.basename(os.path.normpath(a.model))
    print(f"{name}: {base[1]} predicted tokens of text sampled from the float32 model, windows of {a.ctx}")
    print("| weights | perplexity | ratio to float32 (~exp KL) |")
    print("|---|---|---|")
    for label, (p, _) in table:
        print(f"| {label} | {p:.4f} | {p / base[0]:.4f} |")


if __name__ == "__main__":
    main()
