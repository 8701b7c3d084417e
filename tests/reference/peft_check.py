#!/usr/bin/env python3
"""Load an adapter that oar wrote with Hugging Face PEFT and compare logits with oar's.

    peft_check.py --base MODEL_DIR --adapter ADAPTER_DIR --oar_logits FILE [--merged MERGED_DIR]

FILE (written by oar_unit_tests' LoraInterop.WritesAdapterAndLogits) holds int32 "ids_<i>" and float32
"logits_<i>" [len, vocab]: oar's logits of base + adapter. Checks, exiting non-zero on the first failure:

1. PeftModel.from_pretrained(base, ADAPTER_DIR) takes r, lora_alpha and target_modules from our
   adapter_config.json, and every LoRA matrix it creates holds exactly the tensor of our file (none left at its
   initial value, none of our tensors unused).
2. Its logits (float32, eager attention) equal oar's within 1e-4 of the largest logit, and the adapter matters
   (they are far from the base model's).
3. With --merged: `oar merge-lora`'s output loads in transformers as a plain LlamaForCausalLM and gives PEFT's
   logits within 1e-5.
"""
import argparse
import json
import os
import sys

import torch

torch.set_num_threads(1)

from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402


def load(path):
    return LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager").eval()


@torch.no_grad()
def logits_of(model, ids):
    return model(ids.to(torch.int64).unsqueeze(0)).logits[0].to(torch.float32)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--oar_logits", required=True)
    ap.add_argument("--merged")
    args = ap.parse_args()

    cfg = json.load(open(os.path.join(args.adapter, "adapter_config.json")))
    pm = PeftModel.from_pretrained(load(args.base), args.adapter).eval()
    pc = pm.peft_config["default"]
    if (pc.r, pc.lora_alpha, sorted(pc.target_modules)) != (cfg["r"], cfg["lora_alpha"], sorted(cfg["target_modules"])):
        sys.exit(f"FAIL: PEFT read r {pc.r}, lora_alpha {pc.lora_alpha}, targets {pc.target_modules}; the file says {cfg}")

    ours = load_file(os.path.join(args.adapter, "adapter_model.safetensors"))
    used = set()
    for name, p in pm.named_parameters():
        if "lora_" not in name:
            continue
        key = name.replace(".default", "")
        if key not in ours:
            sys.exit(f"FAIL: PEFT created {name} but our file has no {key}")
        if not torch.equal(p.detach(), ours[key]):
            sys.exit(f"FAIL: PEFT's {name} differs from our {key}")
        used.add(key)
    if used != set(ours):
        sys.exit(f"FAIL: PEFT did not use {sorted(set(ours) - used)[:3]}")
    print(f"ok: PEFT loaded r {pc.r}, lora_alpha {pc.lora_alpha}, {len(used)} LoRA matrices, all equal to our file's")

    exp = load_file(args.oar_logits)
    merged = load(args.merged) if args.merged else None
    n = 0
    while f"ids_{n}" in exp:
        ids, want = exp[f"ids_{n}"], exp[f"logits_{n}"]
        got = logits_of(pm, ids)
        e = rel(want, got)
        with pm.disable_adapter():
            change = rel(logits_of(pm, ids), got)
        print(f"prompt {n} ({len(ids)} tokens): oar vs PEFT {e:.2e} of max|logit|; the adapter moves the logits by {change:.2f}")
        if e > 1e-4:
            sys.exit(f"FAIL: oar's logits differ from PEFT's by {e:.2e} of max|logit| (prompt {n})")
        if change < 1e-2:
            sys.exit(f"FAIL: the adapter hardly changes PEFT's logits ({change:.2e}): it was not applied")
        if merged is not None:
            m = rel(logits_of(merged, ids), got)
            print(f"prompt {n}: merge-lora checkpoint in transformers vs PEFT {m:.2e}")
            if m > 1e-5:
                sys.exit(f"FAIL: the merged checkpoint's logits differ from PEFT's by {m:.2e} (prompt {n})")
        n += 1
    if n == 0:
        sys.exit(f"FAIL: no ids_0 in {args.oar_logits}")
    print("ok: oar's adapter loads in PEFT and gives oar's logits")


if __name__ == "__main__":
    main()
