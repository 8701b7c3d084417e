#!/usr/bin/env python3
"""Checks what lm-evaluation-harness got from `oar serve` (tests/cli/lm_eval.sh) against an independent reference:
the NumPy forward pass (tests/reference/numpy_llama.py) of the same model, on the token ids lm-eval's
local-completions sends (its _encode_pair rule with the model's Hugging Face tokenizer, no BOS).

    lm_eval_check.py MODEL_DIR OUTPUT_DIR

  oar_mc  (multiple_choice -> loglikelihood): every choice's loglikelihood and is_greedy equal the reference's,
          and the accuracy lm-eval reports equals the accuracy of the reference's argmax.
  oar_gen (generate_until): every response is the reference's greedy continuation, as text, cut at the task's
          stop strings.
"""
import glob
import json
import os
import sys

import numpy as np
from transformers import AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy_llama  # noqa: E402

MODEL, OUT = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(MODEL)
cfg, w = numpy_llama.load_model(MODEL)


def encode(text):
    return tok(text, add_special_tokens=False)["input_ids"]


def encode_pair(context, continuation):  # lm_eval.api.model.TemplateLM._encode_pair (causal)
    n = len(context) - len(context.rstrip())
    if n > 0:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole = encode(context + continuation)
    ctx = encode(context)
    return ctx, whole[len(ctx):]


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def reference_loglikelihood(context, continuation):
    ctx, cont = encode_pair(context, continuation)
    lp = log_softmax(numpy_llama.forward(cfg, w, ctx + cont))
    rows = lp[len(ctx) - 1:len(ctx) - 1 + len(cont)]
    greedy = all(int(np.argmax(r)) == t for r, t in zip(rows, cont))
    return float(sum(r[t] for r, t in zip(rows, cont))), greedy


def samples(task):
    files = glob.glob(os.path.join(OUT, "**", f"samples_{task}_*.jsonl"), recursive=True)
    assert len(files) == 1, files
    with open(files[0], encoding="utf-8") as f:
        return [json.loads(line) for line in f]


results_files = glob.glob(os.path.join(OUT, "**", "results_*.json"), recursive=True)
assert len(results_files) == 1, results_files
with open(results_files[0], encoding="utf-8") as f:
    results = json.load(f)["results"]

# Multiple choice.
correct = 0
mc = samples("oar_mc")
assert len(mc) == 8, len(mc)
worst = 0.0
for s in mc:
    doc = s["doc"]
    got = [r[0] for r in s["resps"]]  # [[loglikelihood, is_greedy]] per choice (logged as strings)
    args = [s["arguments"][f"gen_args_{i}"] for i in range(len(got))]
    assert len(got) == 4
    ref = []
    for a, resp in zip(args, got):
        context, continuation = a["arg_0"], a["arg_1"]
        ll, greedy = reference_loglikelihood(context, continuation)
        worst = max(worst, abs(float(resp[0]) - ll))
        assert abs(float(resp[0]) - ll) < 1e-3, (doc, continuation, resp, ll)
        assert (resp[1] in (True, "True")) == greedy, (doc, continuation, resp, greedy)
        ref.append(ll)
    correct += int(np.argmax(ref)) == doc["answer"]
acc = results["oar_mc"]["acc,none"]
assert abs(acc - correct / len(mc)) < 1e-9, (acc, correct)

# generate_until: greedy text, cut at the stop strings.
gen = samples("oar_gen")
assert len(gen) == 4, len(gen)
for s in gen:
    context, kwargs = s["arguments"]["gen_args_0"]["arg_0"], s["arguments"]["gen_args_0"]["arg_1"]
    ctx = encode(context)
    out = numpy_llama.greedy(cfg, w, ctx, kwargs["max_gen_toks"])
    full, p = tok.decode(ctx + out, skip_special_tokens=True), tok.decode(ctx, skip_special_tokens=True)
    want = full[len(p):]
    for stop in kwargs["until"]:
        want = want.split(stop)[0]
    assert s["resps"][0][0] == want, (context, s["resps"][0][0], want)
print(f"lm_eval_check: OK (acc {acc:.3f} = reference; loglikelihoods within {worst:.2e}; "
      f"{len(gen)} greedy generations equal)")
