#!/usr/bin/env python3
"""Expected step time and MFU of Llama-2-13B pretraining in the seed's layout: pipeline_parallel_degree 8 (1F1B,
micro-batches = gradient_accumulation_steps 1024, micro-batch 1 x 4096 tokens), sharding stage1 over a sharding
degree of 1 (8 cards = pp 8, so no gradient sums between cards), fp16 O2, on 8 accelerators.

The inputs measured by oar on this machine, passed on the command line:
  --mfu       the fraction of the GEMM peak oar's training step reaches (bench_train's f32 MFU: the kernels'
              efficiency on the model's own shapes), assumed to carry over to an accelerator backend;
  --p2p-gbs   the link's achieved bandwidth for the activations between stages (GB/s, one direction);
  --hidden    the share of communication hidden behind computation (bench/dp_scaling.sh's overlap).
The accelerator's dense fp16 peak is --peak-tflops (A100: 312). Everything else is arithmetic on the model.

  python3 bench/pp_extrapolate.py --mfu 0.62 --p2p-gbs 200 --hidden 0.84
"""
import argparse

H, LAYERS, FFN, VOCAB, SEQ = 5120, 40, 13824, 32000, 4096
PP, MICRO = 8, 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mfu", type=float, required=True)
    ap.add_argument("--p2p-gbs", type=float, required=True)
    ap.add_argument("--hidden", type=float, required=True)
    ap.add_argument("--peak-tflops", type=float, default=312.0)
    a = ap.parse_args()

    # FLOPs per token, forward + backward: 6 x matrix parameters, plus causal attention (QK^T and PV over the
    # visible half of the sequence: 2 x 2 x SEQ/2 x H forward per layer, x3 with the backward).
    layer_params = 4 * H * H + 3 * H * FFN
    layer_flops = 6 * layer_params + 3 * 2 * SEQ * H
    head_flops = 6 * H * VOCAB
    model_flops = LAYERS * layer_flops + head_flops
    # 1F1B: 5 layers a stage; the last stage also runs the LM head and the loss, and sets the pace.
    slowest = (LAYERS // PP) * layer_flops + head_flops
    t_compute = slowest * SEQ / (a.peak_tflops * 1e12 * a.mfu)  # one micro-batch, forward + backward, slowest stage
    act_bytes = SEQ * H * 2  # fp16 activations (forward) and their gradients (backward) per micro-batch
    t_p2p = 2 * act_bytes / (a.p2p_gbs * 1e9)
    t_slot = t_compute + (1 - a.hidden) * t_p2p
    step = (MICRO + PP - 1) * t_slot  # the pipeline fills and drains once per step
    tokens = MICRO * SEQ
    mfu = model_flops * tokens / (step * PP * a.peak_tflops * 1e12)
    print(f"model FLOPs per token {model_flops / 1e9:.2f} G (matrices {6 * (LAYERS * layer_params + H * VOCAB) / 1e9:.2f} G, "
          f"attention {LAYERS * 3 * 2 * SEQ * H / 1e9:.2f} G)")
    print(f"slowest stage (5 layers + LM head) per micro-batch: {slowest * SEQ / 1e12:.1f} TFLOP, {t_compute * 1e3:.1f} ms "
          f"at {a.mfu:.2f} of {a.peak_tflops:.0f} TFLOP/s")
    print(f"activations between stages: {act_bytes / 1e6:.1f} MB each way per micro-batch, {t_p2p * 1e3:.2f} ms at "
          f"{a.p2p_gbs:.0f} GB/s, {(1 - a.hidden) * t_p2p * 1e3:.2f} ms exposed")
    print(f"bubble (p-1)/(m+p-1) = {(PP - 1) / (MICRO + PP - 1):.4f}; stage balance {model_flops / PP / slowest:.3f}")
    print(f"step ({tokens / 1e6:.2f} M tokens): {step:.1f} s; {tokens / step / PP:.0f} tokens/s per card; MFU {mfu:.3f}")


if __name__ == "__main__":
    main()
