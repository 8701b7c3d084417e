#!/usr/bin/env python3
"""PyTorch baseline for bench/bench_train.cpp: the same Llama, batch and training step in plain PyTorch.

Run with Debian's python3-torch (1.13) on 2 threads, as bench_train does in the same run:

    /usr/bin/python3 bench/pytorch_train_reference.py --mode f32  [--batch 4 --seq 512 --steps 3]
    /usr/bin/python3 bench/pytorch_train_reference.py --mode bf16     # torch.autocast("cpu", bfloat16)
    /usr/bin/python3 bench/pytorch_train_reference.py --mode lora     # frozen base, rank 8 on all 7 projections

A step is forward + backward + AdamW update (torch.optim.AdamW, fp32 weights and moments), as in bench_train.
The model is written with torch.nn primitives, the way Hugging Face's eager LlamaForCausalLM computes it
(RMSNorm in float32, rotate-half RoPE, causal softmax attention through matmul, SwiGLU, untied LM head, mean
cross-entropy), without transformers' Python overhead, so the comparison is against PyTorch itself.
The last line is machine-readable: "RESULT mode=<mode> tokens_per_s=<x> step_s=<y> loss=<z>".
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class LoraLinear(nn.Module):
    """y = x W^T + scaling * (x A^T) B^T with W frozen (PEFT's LoRA layer)."""

    def __init__(self, base: nn.Linear, rank, alpha):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Block(nn.Module):
    def __init__(self, C, H, F_, eps):
        super().__init__()
        self.H, self.D = H, C // H
        self.input_layernorm = RMSNorm(C, eps)
        self.q_proj = nn.Linear(C, C, bias=False)
        self.k_proj = nn.Linear(C, C, bias=False)
        self.v_proj = nn.Linear(C, C, bias=False)
        self.o_proj = nn.Linear(C, C, bias=False)
        self.post_attention_layernorm = RMSNorm(C, eps)
        self.gate_proj = nn.Linear(C, F_, bias=False)
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.down_proj = nn.Linear(F_, C, bias=False)

    def forward(self, x, cos, sin, mask):
        B, L, C = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, L, self.H, self.D).transpose(1, 2)
        k = self.k_proj(h).view(B, L, self.H, self.D).transpose(1, 2)
        v = self.v_proj(h).view(B, L, self.H, self.D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        s = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.D) + mask
        p = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
        a = torch.matmul(p, v).transpose(1, 2).reshape(B, L, C)
        x = x + self.o_proj(a)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, V, C, layers, H, F_, eps=1e-5, theta=10000.0, max_pos=1024):
        super().__init__()
        self.embed_tokens = nn.Embedding(V, C)
        self.layers = nn.ModuleList([Block(C, H, F_, eps) for _ in range(layers)])
        self.norm = RMSNorm(C, eps)
        self.lm_head = nn.Linear(C, V, bias=False)
        D = C // H
        inv = 1.0 / (theta ** (torch.arange(0, D, 2).float() / D))
        ang = torch.outer(torch.arange(max_pos).float(), inv)
        emb = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, ids, labels):
        B, L = ids.shape
        x = self.embed_tokens(ids)
        cos, sin = self.cos[:L].to(x.dtype), self.sin[:L].to(x.dtype)
        mask = torch.full((L, L), float("-inf")).triu(1)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        logits = self.lm_head(self.norm(x)).float()
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["f32", "bf16", "lora"], default="f32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = Llama(args.vocab, args.hidden, args.layers, args.heads, args.ffn)
    if args.mode == "lora":
        for p in model.parameters():
            p.requires_grad_(False)
        for blk in model.layers:
            for name in ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]:
                setattr(blk, name, LoraLinear(getattr(blk, name), 8, 16.0))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = -100

    def step():
        opt.zero_grad(set_to_none=True)
        if args.mode == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(ids, labels)
        else:
            loss = model(ids, labels)
        loss.backward()
        opt.step()
        return loss.item()

    step()  # warm-up (allocations, oneDNN primitive creation)
    times = []
    loss = 0.0
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    best = min(times)
    tokens = args.batch * args.seq
    n_params = sum(p.numel() for p in model.parameters())
    print(f"pytorch {torch.__version__} mode {args.mode}: {n_params / 1e6:.1f}M parameters, {tokens} tokens/step, "
          f"step times {', '.join(f'{t:.2f}' for t in times)} s")
    print(f"RESULT mode={args.mode} tokens_per_s={tokens / best:.1f} step_s={best:.3f} loss={loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
