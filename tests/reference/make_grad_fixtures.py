#!/usr/bin/env python3
"""Gradient fixtures for oar's training backward: Hugging Face transformers' LlamaForCausalLM and torch autograd
on the committed tiny models of tests/fixtures/models (mha, gqa, tied; not regenerated here).

    /work/venv-ref/bin/python tests/reference/make_grad_fixtures.py            # write + verify
    /work/venv-ref/bin/python tests/reference/make_grad_fixtures.py --verify-only
    /work/venv-ref/bin/python tests/reference/make_grad_fixtures.py --lora --python-peft .venv-peft/bin/python

For each model it writes tests/fixtures/grads/<model>.safetensors (float32: "loss" [1] and "grad.<parameter name>"
for every parameter) and <model>.json (the batch, versions, the largest |gradient| of each parameter).

The batch is 2 rows x 12 tokens, float32, attn_implementation="eager", torch.set_num_threads(1):
  row 0 packs two examples (5 + 7 tokens): positions restart at the second, and a 4-D attention mask keeps each
        example from seeing the other (Hugging Face takes a 4-D float mask as is: 0 = visible, finfo.min = hidden);
        the last label of each example is -100 (no next token inside the example).
  row 1 is one example whose first 4 labels are -100 (an SFT prompt) and whose last label is -100.
oar's TrainBatch labels are already shifted (label[t] is the token after t); Hugging Face shifts inside the loss
(logits[:, t] against labels[:, t + 1]), so it is fed labels_hf[:, 1:] = ours[:, :-1], labels_hf[:, 0] = -100, and
every row's last label of ours is -100. Both losses are then the mean cross-entropy over the same counted tokens.

--lora adds <model>_lora.* for gqa through PEFT (LoraConfig r 4, alpha 8, all seven projections, lora_B filled with
noise so that every adapter gradient is non-zero): the PEFT-named A/B values and their gradients; run with a
python that has peft (tests/reference/peft_venv.sh makes one).
"""
import argparse
import json
import os
import sys

import torch

torch.set_num_threads(1)

import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "models")
OUT_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "grads")
MODELS = ["mha", "gqa", "tied"]
B, L = 2, 12
SEGMENTS = [[5, 7], [12]]  # example lengths per row
PROMPT_LEN = 4  # row 1: labels of the first tokens are -100


def make_batch(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, L), generator=g)
    positions, segments, labels = [], [], []
    for r, lens in enumerate(SEGMENTS):
        pos, seg, lab = [], [], []
        start = 0
        for s, n in enumerate(lens):
            for i in range(n):
                pos.append(i)
                seg.append(s)
                lab.append(int(ids[r, start + i + 1]) if i + 1 < n else -100)
            start += n
        if r == 1:
            lab[:PROMPT_LEN] = [-100] * PROMPT_LEN
        positions.append(pos)
        segments.append(seg)
        labels.append(lab)
    return ids, torch.tensor(positions), torch.tensor(segments), torch.tensor(labels)


def hf_inputs(ids, positions, segments, labels):
    """The 4-D mask (causal within a segment) and Hugging Face's unshifted labels."""
    n = ids.shape[1]
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    same = segments[:, :, None] == segments[:, None, :]
    visible = causal[None] & same
    mask = torch.zeros(ids.shape[0], 1, n, n, dtype=torch.float32)
    mask.masked_fill_(~visible[:, None], torch.finfo(torch.float32).min)
    hf_labels = torch.full_like(labels, -100)
    hf_labels[:, 1:] = labels[:, :-1]
    assert (labels[:, -1] == -100).all()
    return mask, hf_labels


def run(model, ids, positions, segments, labels):
    mask, hf_labels = hf_inputs(ids, positions, segments, labels)
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, labels=hf_labels, use_cache=False)
    out.loss.backward()
    return out.loss.detach()


def load_model(name):
    model = LlamaForCausalLM.from_pretrained(os.path.join(MODELS_DIR, name), torch_dtype=torch.float32,
                                             attn_implementation="eager")
    model.train()  # dropout is 0 in these configs; train() only so nothing differs from a training step
    return model


def grads_of(model, loss, prefix=""):
    tensors = {"loss": loss.reshape(1).float().contiguous()}
    maxabs = {}
    for pname, p in model.named_parameters():
        if p.grad is None:
            continue
        n = pname[len(prefix):] if prefix and pname.startswith(prefix) else pname
        tensors["grad." + n] = p.grad.detach().float().contiguous()
        maxabs[n] = float(p.grad.abs().max())
    return tensors, maxabs


def batch_json(ids, positions, segments, labels):
    return {"B": B, "L": L, "input_ids": ids.reshape(-1).tolist(), "position_ids": positions.reshape(-1).tolist(),
            "segment_ids": segments.reshape(-1).tolist(), "labels": labels.reshape(-1).tolist()}


def write_model(name, seed):
    model = load_model(name)
    ids, positions, segments, labels = make_batch(model.config.vocab_size, seed)
    loss = run(model, ids, positions, segments, labels)
    tensors, maxabs = grads_of(model, loss)
    save_file(tensors, os.path.join(OUT_DIR, f"{name}.safetensors"), metadata={"format": "pt"})
    meta = {
        "model": name,
        "model_dir": f"tests/fixtures/models/{name}",
        "generated_by": "tests/reference/make_grad_fixtures.py",
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        "compute": {"dtype": "float32", "attn_implementation": "eager", "torch_num_threads": 1},
        "batch": batch_json(ids, positions, segments, labels),
        "batch_notes": "labels already shifted (oar's TrainBatch); row 0 packs examples of 5 and 7 tokens",
        "loss": float(loss),
        "grad_max_abs": maxabs,
    }
    with open(os.path.join(OUT_DIR, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{name}: loss {float(loss):.6f}, {len(maxabs)} gradients", flush=True)


def write_lora(name, seed):
    from peft import LoraConfig, get_peft_model  # only this path needs peft

    torch.manual_seed(seed)
    model = load_model(name)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape) * 0.05)  # PEFT starts B at 0; noise makes every gradient non-zero
    ids, positions, segments, labels = make_batch(model.config.vocab_size, seed)
    loss = run(pm, ids, positions, segments, labels)
    tensors = {"loss": loss.reshape(1).float().contiguous()}
    maxabs = {}
    for n, p in pm.named_parameters():
        if "lora_" not in n:
            continue
        key = n.replace("base_model.model.", "", 1).replace(".default", "")  # oar's in-model names
        tensors["value." + key] = p.detach().float().contiguous()
        tensors["grad." + key] = p.grad.detach().float().contiguous()
        maxabs[key] = float(p.grad.abs().max())
    save_file(tensors, os.path.join(OUT_DIR, f"{name}_lora.safetensors"), metadata={"format": "pt"})
    import peft
    meta = {
        "model": name, "model_dir": f"tests/fixtures/models/{name}",
        "generated_by": "tests/reference/make_grad_fixtures.py --lora",
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__, "peft": peft.__version__},
        "lora": {"r": 4, "lora_alpha": 8, "scaling": 2.0, "targets": "all seven projections",
                 "values": "value.<name> holds A and B as used (B filled with N(0, 0.05^2))"},
        "batch": batch_json(ids, positions, segments, labels),
        "loss": float(loss),
        "grad_max_abs": maxabs,
    }
    with open(os.path.join(OUT_DIR, f"{name}_lora.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{name}_lora: loss {float(loss):.6f}, {len(maxabs)} adapter gradients", flush=True)


def verify(name):
    """Recompute and require bit-identical loss and gradients."""
    with open(os.path.join(OUT_DIR, f"{name}.json")) as f:
        meta = json.load(f)
    ref = load_file(os.path.join(OUT_DIR, f"{name}.safetensors"))
    model = load_model(name)
    bt = meta["batch"]
    shape = (bt["B"], bt["L"])
    t = [torch.tensor(bt[k]).reshape(shape) for k in ("input_ids", "position_ids", "segment_ids", "labels")]
    loss = run(model, *t)
    got, _ = grads_of(model, loss)
    assert set(got) == set(ref), f"{name}: tensor names differ"
    for k in ref:
        assert torch.equal(got[k], ref[k]), f"{name}/{k}: not bit-identical on recompute"
    print(f"verify {name}: bit-identical", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verify-only", action="store_true")
    ap.add_argument("--lora", action="store_true", help="write the PEFT LoRA fixture (needs peft)")
    args = ap.parse_args()
    if transformers.__version__ != "4.46.3":
        print(f"warning: fixtures were made with transformers 4.46.3, running {transformers.__version__}", file=sys.stderr)
    os.makedirs(OUT_DIR, exist_ok=True)
    seeds = {"mha": 11, "gqa": 22, "tied": 33}
    if args.lora:
        write_lora("gqa", 44)
        return
    if not args.verify_only:
        for n in MODELS:
            write_model(n, seeds[n])
    for n in MODELS:
        verify(n)


if __name__ == "__main__":
    main()
