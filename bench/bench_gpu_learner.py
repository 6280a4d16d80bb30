"""Learner throughput and MFU: training tokens/s of one optimizer step, packed vs padded micro-batches.

The step is rlvr.distributed.learner.dp_minibatch_step (the RL loss, backward over micro-batches of
--micro-batch-tokens tokens, clip, AdamW) on a random-weight model of Qwen2.5 shape. The baseline,
measured in the same run on the same sequences, is the same step with one right-padded sequence
per row (packed=False); the ratio column is packed / padded.

MFU = achieved model FLOP/s / the device's peak dense bf16 FLOP/s, with the model FLOPs per trained
token = 6 x (parameters in matmuls, lm_head included, embedding lookup excluded)
      + 6 x layers x hidden(attention) x mean attended keys   (QK^T and AV, causal, forward + backward)
counting only real tokens (padding is waste, not work). Completion lengths are drawn uniformly from
[min, max] so the batch has a long tail, as RL rollouts do.

    python bench/bench_gpu_learner.py --shape 1.5B                 # on a GPU (bf16)
    python bench/bench_gpu_learner.py --shape 0.5B --checkpointing
    python bench/bench_gpu_learner.py --shape tiny --device cpu --dtype float32   # check the script on CPU
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rlvr import algorithms
from rlvr.config import RLConfig
from rlvr.distributed.learner import DataParallel, apply_gradient_checkpointing, dp_minibatch_step
from rlvr.distributed.shapes import random_model, shape_config
from rlvr.trainers.rl import Knobs, Learner, RolloutBatch, StepData

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets (SXM parts).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def flops_per_token(cfg: dict, mean_keys: float) -> float:
    h, i, L, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = h // heads
    per_layer = h * (heads * d) + 2 * h * (kv * d) + (heads * d) * h + 3 * h * i
    matmul_params = L * per_layer + h * v
    return 6.0 * matmul_params + 6.0 * L * (heads * d) * mean_keys


def make_batch(vocab: int, groups: int, group_size: int, prompt_len: int, lo: int, hi: int, seed: int):
    rng = np.random.default_rng(seed)
    batch = RolloutBatch()
    for g in range(groups):
        prompt = rng.integers(10, vocab, size=prompt_len).tolist()
        for _ in range(group_size):
            n = int(rng.integers(lo, hi + 1))
            batch.prompt_ids.append(prompt)
            batch.completion_ids.append(rng.integers(10, vocab, size=n).tolist())
            batch.engine_logprobs.append([-1.0] * n)
            batch.rewards.append(float(rng.integers(0, 2)))
            batch.group_ids.append(g)
    return batch


def run_step(model, optimizer, batch, cfg, knobs, device, packed) -> float:
    width = max(len(c) for c in batch.completion_ids)
    lengths = torch.tensor([len(c) for c in batch.completion_ids])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
    adv = algorithms.compute_advantages("grpo", torch.tensor(batch.rewards),
                                        torch.tensor(batch.group_ids), mask)
    index = list(range(len(batch.completion_ids)))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    dp_minibatch_step(Learner(model, optimizer, device, packed), StepData(batch, adv, mask),
                      index, cfg, knobs,
                      dp=DataParallel(0, 1, "replicate"))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="0.5B", help="0.5B, 1.5B, 7B, 32B or tiny (rlvr.distributed.shapes)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--min-new", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=2048)
    ap.add_argument("--micro-batch-tokens", type=int, default=16384)
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing (see learner.py)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak dense FLOP/s of the device, in TFLOP/s")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for GPUs (use --device cpu --shape "
                         "tiny to check it)")
    dtype = getattr(torch, args.dtype)
    cfg_shape = shape_config(args.shape)
    batch = make_batch(cfg_shape["vocab_size"], args.groups, args.group_size,
                       args.prompt_tokens, args.min_new, args.max_new, seed=0)
    real_tokens = sum(len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids))
    mean_keys = float(np.mean([(len(p) + len(c) + 1) / 2
                               for p, c in zip(batch.prompt_ids, batch.completion_ids)]))
    fpt = flops_per_token(cfg_shape, mean_keys)
    peak = peak_flops(device, args.peak_tflops)
    cfg = RLConfig(micro_batch_tokens=args.micro_batch_tokens)
    knobs = Knobs(difficulty={}, max_new_tokens=args.max_new, group_size=args.group_size, temperature=1.0,
                  lr=1e-6, stage=0)
    print(f"shape {args.shape}, {args.dtype} on {device}; {len(batch.rewards)} sequences, "
          f"{real_tokens} tokens per step; micro-batch budget {args.micro_batch_tokens} "
          f"tokens; checkpointing {args.checkpointing}")
    results = {}
    for packed in (False, True):
        model = random_model(args.shape, dtype, str(device))
        if args.checkpointing:
            apply_gradient_checkpointing(model)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.99))
        run_step(model, optimizer, batch, cfg, knobs, device, packed)  # warm-up (allocator, kernels)
        best = min(run_step(model, optimizer, batch, cfg, knobs, device, packed) for _ in range(args.repeats))
        results[packed] = best
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        tps = real_tokens / best
        mfu = f"{100 * tps * fpt / peak:5.1f}%" if peak else "  n/a"
        label = "packed" if packed else "padded (baseline)"
        print(f"  {label:18s} {best:7.3f} s/step  {tps:10.0f} tokens/s  MFU {mfu}  peak mem {mem:.1f} GiB  "
              f"ratio {results[False] / best:4.2f}")
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


if __name__ == "__main__":
    main()
