"""Where an RL step of the kk-tiny recipe goes, as a share of this machine's matmul throughput.

Runs `--steps` RL steps of the recipe (its own batch: prompts_per_step x group_size, mini-batches,
update settings) from a checkpoint, the way train_rl does (collect, then update_policy), and
times generation and the update. Each phase's model FLOPs are counted from the model's shape
(2 x weights x tokens for a forward, 3x that for forward + backward, plus attention over the
context) and divided by the peak that a large torch.matmul reaches in the same process (fp32 and
bf16), measured before and after the steps (the machine is shared: the lower peak is printed too).

    PYTHONPATH=src python bench/bench_rl_step.py --model-dir runs/kk-tiny/checkpoints/sft/step_000500
    PYTHONPATH=src python bench/bench_rl_step.py --model-dir DIR --threads 1 --steps 3 key=value ...

Threads: 1 by default (a shared 2-core host; ratios only make sense on the same thread count).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (in the functions)


def matmul_peak(dtype_name: str, n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n torch.matmul in torch.<dtype_name> (best of `repeats`)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def forward_flops(config: object, tokens: int, context: float) -> float:
    """Model FLOPs of a forward over `tokens` tokens that attend to `context` positions on average."""
    h, L = config.hidden_size, config.num_hidden_layers  # type: ignore[attr-defined]
    heads, kv = config.num_attention_heads, config.num_key_value_heads  # type: ignore[attr-defined]
    head_dim = h // heads
    inter, vocab = config.intermediate_size, config.vocab_size  # type: ignore[attr-defined]
    per_token = L * (h * head_dim * (2 * heads + 2 * kv) + 3 * h * inter) + h * vocab  # weight MACs
    attention = L * 2 * heads * head_dim * context  # q.k and p.v MACs
    return 2.0 * tokens * (per_token + attention)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True,
                    help="HF checkpoint directory (an SFT checkpoint of the recipe)")
    ap.add_argument("--recipe", default="recipes/kk-tiny.yaml")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from rl_setup import active_rows, build_stage
    from rlvr.trainers.rl import collect, knobs_at, update_policy

    stage = build_stage(args.recipe, args.model_dir, args.overrides, threads=args.threads)
    config, policy, learner, sampler = stage.config, stage.policy, stage.learner, stage.sampler
    cfg = config.rl
    peaks = {"fp32": [matmul_peak("float32")], "bf16": [matmul_peak("bfloat16")]}
    mc = policy.model.config
    rows = []
    for step in range(args.steps):
        knobs = knobs_at(cfg, step, config.data.difficulty)
        policy.model.eval()
        t0 = time.perf_counter()
        batch, _ = collect(sampler, knobs, cfg, config.seed, step)
        t_gen = time.perf_counter() - t0
        policy.model.train()
        t0 = time.perf_counter()
        update_policy(learner, batch, cfg, knobs, step, config.seed, engine_shares_weights=True)
        t_upd = time.perf_counter() - t0
        prompts = [len(p) for p in batch.prompt_ids]
        comps = [len(c) for c in batch.completion_ids]
        distinct = {tuple(p) for p in batch.prompt_ids}
        # generation: each distinct prompt prefilled once, every completion token decoded once
        gen = sum(forward_flops(mc, len(p), len(p) / 2) for p in distinct)
        gen += sum(forward_flops(mc, c, p + c / 2) for p, c in zip(prompts, comps))
        # update: forward + backward (3x) of the rows with an advantage, each group's prompt once
        active = active_rows(batch, cfg)
        upd = 3 * sum(forward_flops(mc, comps[i], prompts[i] + comps[i] / 2) for i in active)
        prompt_passes = len({tuple(batch.prompt_ids[i]) for i in active})
        upd += 3 * prompt_passes * forward_flops(mc, max(prompts), max(prompts) / 2)
        rows.append((t_gen, t_upd, gen, upd, sum(comps), len(active), len(batch)))
        print(f"step {step}: gen {t_gen:.2f}s ({sum(comps) / t_gen:,.0f} tok/s, "
              f"{gen / t_gen / 1e9:.2f} GFLOP/s), "
              f"update {t_upd:.2f}s ({len(active)}/{len(batch)} rows with an advantage, "
              f"{upd / max(t_upd, 1e-9) / 1e9:.2f} GFLOP/s), {len(batch) / (t_gen + t_upd):.1f} samples/s",
              flush=True)
    peaks["fp32"].append(matmul_peak("float32"))
    peaks["bf16"].append(matmul_peak("bfloat16"))
    fp32, bf16 = max(peaks["fp32"]), max(peaks["bf16"])
    print(f"\nthreads {torch.get_num_threads()}; matmul peak (1024^3, best of the runs before/after): fp32 "
          f"{fp32 / 1e9:.1f} GFLOP/s (lower run {min(peaks['fp32']) / 1e9:.1f}), "
          f"bf16 {bf16 / 1e9:.1f} GFLOP/s "
          f"(lower run {min(peaks['bf16']) / 1e9:.1f})")
    g = statistics.median(r[2] / r[0] for r in rows)
    u = statistics.median(r[3] / max(r[1], 1e-9) for r in rows)
    dec = "bf16" if config.model.engine_dtype == "bfloat16" else "fp32"
    upd_peak = bf16 if cfg.autocast == "bfloat16" else fp32
    gen_peak = bf16 if dec == "bf16" else fp32
    print(f"generation: {g / 1e9:.2f} GFLOP/s = {100 * g / gen_peak:.1f}% of the {dec} peak")
    print(f"update:     {u / 1e9:.2f} GFLOP/s = {100 * u / upd_peak:.1f}% of the "
          f"{'bf16' if cfg.autocast == 'bfloat16' else 'fp32'} peak")
    samples = sum(r[6] for r in rows)
    seconds = sum(r[0] + r[1] for r in rows)
    print(f"RL samples/s: {samples / seconds:.1f} ({samples} samples in {seconds:.1f}s; generation "
          f"{100 * sum(r[0] for r in rows) / seconds:.0f}% of the time)")


if __name__ == "__main__":
    main()
