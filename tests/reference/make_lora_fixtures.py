#!/usr/bin/env python3
"""Generate the LoRA interop fixtures with Hugging Face PEFT itself.

Run from the repository root, in the venv that tests/reference/peft_venv.sh makes:

    PY=$(tests/reference/peft_venv.sh | tail -n1)
    "$PY" tests/reference/make_lora_fixtures.py              # write tests/fixtures/lora/, then verify
    "$PY" tests/reference/make_lora_fixtures.py --verify-only

tests/fixtures/lora/gqa_peft/ is what `PeftModel.save_pretrained` writes (less its README.md model card) for a LoRA on the committed tiny model
tests/fixtures/models/gqa: r 8, lora_alpha 16 (scaling 2, PaddleNLP's default), all seven projections. PEFT
initialises A Kaiming-uniform and B to zero; B is then redrawn from N(0, B_STD^2) so that the adapter changes
the logits. Beside the adapter:

    expected.safetensors   float32 "logits_<i>" [len_i, 256]: base + adapter (unmerged PeftModel forward, float32,
                           eager attention) for every position of prompt i; int32 "ids_<i>" the prompt
    expected.json          prompts, versions, the LoRA config, how much the adapter moves the logits

tests/fixtures/lora/gqa_paddle/ holds the same adapter in PaddleNLP's layout, written here by hand (no Paddle in
the venv) after PaddleNLP's LoRAConfig.save_pretrained and LoRALinear: lora_config.json (sorted keys, with
"scaling") and peft_model.safetensors (its unified-checkpoint file) with names llama.layers.N.<mod>.lora_A /
.lora_B in Paddle's [in, out] orientation: A [in, r], B [r, out]. Its logits are the same expected.safetensors.

Deterministic: fixed seeds, torch.set_num_threads(1), PYTHONHASHSEED=0 (the script re-executes itself with it).
"""
import argparse
import json
import os
import shutil
import sys

# PEFT keeps target_modules as a set: fix string hashing so adapter_config.json lists them in the same order
# on every run.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, PYTHONHASHSEED="0"))

import torch  # noqa: E402

torch.set_num_threads(1)

import peft  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BASE = "tests/fixtures/models/gqa"  # relative: it ends up in adapter_config.json's base_model_name_or_path
OUT = "tests/fixtures/lora"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 8, 16
SEED = 4242
B_STD = 0.05
PROMPT_LENGTHS = [7, 19]
# PaddleNLP's llm/utils get_lora_target_modules() for Llama.
PADDLE_TARGETS = [".*q_proj.*", ".*v_proj.*", ".*k_proj.*", ".*o_proj.*", ".*gate_proj.*", ".*down_proj.*", ".*up_proj.*"]


def load_base():
    return LlamaForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32, attn_implementation="eager").eval()


def prompts():
    g = torch.Generator().manual_seed(SEED + 1)
    out = []
    for n in PROMPT_LENGTHS:
        ids = torch.randint(3, 256, (n,), generator=g)
        ids[0] = 1  # bos
        out.append(ids.to(torch.int32))
    return out


@torch.no_grad()
def logits_of(model, ids):
    return model(ids.to(torch.int64).unsqueeze(0)).logits[0].to(torch.float32).contiguous()


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def write_paddle(adapter_dir, out_dir):
    """The PEFT adapter re-laid out as PaddleNLP's LoRAModel saves it (unified checkpoint)."""
    os.makedirs(out_dir, exist_ok=True)
    sd = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    paddle = {}
    for k, v in sd.items():
        # base_model.model.model.layers.N.<grp>.<proj>.lora_A.weight -> llama.layers.N.<grp>.<proj>.lora_A, transposed
        name = "llama." + k[len("base_model.model.model."):-len(".weight")]
        paddle[name] = v.t().contiguous()
    save_file(paddle, os.path.join(out_dir, "peft_model.safetensors"), metadata={"format": "np"})
    cfg = dict(
        r=RANK, target_modules=PADDLE_TARGETS, trainable_modules=None, lora_alpha=ALPHA, lora_dropout=0.0,
        merge_weights=False, trainable_bias=None, enable_lora_list=None, tensor_parallel_degree=-1, dtype="float32",
        head_dim=None, do_qat=False, rslora=False, lora_plus_scale=1.0, pissa=False,
        base_model_name_or_path=BASE, use_quick_lora=False, scaling=ALPHA / RANK,
    )
    with open(os.path.join(out_dir, "lora_config.json"), "w") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True))


def generate():
    torch.manual_seed(SEED)
    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, bias="none",
                     task_type="CAUSAL_LM")
    pm = get_peft_model(load_base(), cfg).eval()
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, B_STD)
    adapter_dir = os.path.join(OUT, "gqa_peft")
    shutil.rmtree(adapter_dir, ignore_errors=True)
    pm.save_pretrained(adapter_dir)
    os.remove(os.path.join(adapter_dir, "README.md"))  # PEFT's empty model-card template: nothing to test in it

    tensors, meta = {}, []
    for i, ids in enumerate(prompts()):
        lg = logits_of(pm, ids)
        with pm.disable_adapter():
            base = logits_of(pm, ids)
        tensors[f"logits_{i}"] = lg
        tensors[f"ids_{i}"] = ids
        meta.append(dict(logits_key=f"logits_{i}", ids_key=f"ids_{i}", length=len(ids), ids=ids.tolist(),
                         max_abs_logit=float(lg.abs().max()), adapter_change_rel=rel(lg, base)))
    save_file(tensors, os.path.join(adapter_dir, "expected.safetensors"))
    info = dict(
        description="PEFT LoRA adapter for tests/fixtures/models/gqa; logits of base + adapter.",
        generated_by="tests/reference/make_lora_fixtures.py",
        versions=dict(peft=peft.__version__, transformers=transformers.__version__, torch=torch.__version__,
                      safetensors=safetensors.__version__),
        seed=SEED, base=BASE,
        lora=dict(r=RANK, lora_alpha=ALPHA, scaling=ALPHA / RANK, target_modules=TARGETS,
                  init="A: PEFT's Kaiming-uniform(a=sqrt(5)); B: N(0, %g^2) (PEFT's zeros redrawn)" % B_STD),
        reference_compute=dict(dtype="float32", attn_implementation="eager", path="PeftModel forward (unmerged)",
                               torch_num_threads=1),
        prompts=meta,
    )
    with open(os.path.join(adapter_dir, "expected.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    paddle_dir = os.path.join(OUT, "gqa_paddle")
    shutil.rmtree(paddle_dir, ignore_errors=True)
    write_paddle(adapter_dir, paddle_dir)
    for m in meta:
        print(f"{m['logits_key']}: {m['length']} tokens, max|logit| {m['max_abs_logit']:.3f}, "
              f"the adapter moves the logits by {100 * m['adapter_change_rel']:.0f}% of max|logit|")


def verify():
    adapter_dir = os.path.join(OUT, "gqa_peft")
    exp = load_file(os.path.join(adapter_dir, "expected.safetensors"))
    pm = PeftModel.from_pretrained(load_base(), adapter_dir).eval()
    merged = PeftModel.from_pretrained(load_base(), adapter_dir).merge_and_unload().eval()
    worst = 0.0
    for i in range(len(PROMPT_LENGTHS)):
        ids, want = exp[f"ids_{i}"], exp[f"logits_{i}"]
        got = logits_of(pm, ids)
        if not torch.equal(got, want):
            sys.exit(f"verify: reloaded adapter's logits_{i} differ from the fixture (max {rel(got, want):.2e})")
        worst = max(worst, rel(logits_of(merged, ids), want))
    if worst > 1e-5:
        sys.exit(f"verify: merge_and_unload differs from the unmerged forward by {worst:.2e}")
    # The PaddleNLP copy holds the same numbers, transposed.
    sd = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    pd = load_file(os.path.join(OUT, "gqa_paddle", "peft_model.safetensors"))
    assert len(sd) == len(pd) == 2 * 2 * len(TARGETS)
    for k, v in sd.items():
        assert torch.equal(pd["llama." + k[len("base_model.model.model."):-len(".weight")]].t(), v), k
    print(f"verify: ok (reload bit-identical, merged vs unmerged {worst:.1e} of max|logit|, Paddle copy identical)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verify-only", action="store_true")
    args = ap.parse_args()
    os.chdir(REPO_ROOT)
    if not args.verify_only:
        generate()
    verify()


if __name__ == "__main__":
    main()
