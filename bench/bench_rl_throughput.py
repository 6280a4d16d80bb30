"""RL samples per second of the kk-tiny RL stage: a baseline contender against the recipe, interleaved.

Each round runs `--steps` RL steps of the recipe (its own batch: prompts_per_step x group_size,
mini-batches and update settings) for every contender, in alternating order, each from the same
starting weights with a fresh optimizer and the same step indices (so the same prompts), the way
train_rl runs a step (collect, then update_policy on the engine's own module). A contender is the
recipe plus its overrides; the default baseline is the engine and update as they were before
2026-12-03 (`model.engine_workers=1 rl.update_workers=1`: one decoding batch, and one micro-batch
after another, on torch's intra-op threads). The machine is shared,
so each round's ratio pairs runs made back to back, and the median over rounds is the figure.

    PYTHONPATH=src python bench/bench_rl_throughput.py --model-dir runs/kk-tiny/checkpoints/sft/step_000500
    PYTHONPATH=src python bench/bench_rl_throughput.py --model-dir DIR --rounds 5 --steps 1 \\
        --baseline model.engine_workers=1 --new model.engine_workers=2

samples/s counts the step's rollouts over its wall time (generation + update); cpu/s is process
CPU time per wall second (how many cores the step kept busy: well under the thread count means
other jobs held the cores, and wall-time ratios then say little about a quiet machine). Threads: the recipe's `threads`
unless --threads is given.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402


def run_contender(name: str, overrides: list[str], args: argparse.Namespace, start: dict, first_step: int) -> dict:
    """`args.steps` RL steps of the recipe with `overrides`, from weights `start`; timings and counts."""
    from rlvr import tasks
    from rlvr.config import load_config
    from rlvr.models import eos_token_ids
    from rlvr.rollout.torch_engine import TorchEngine
    from rlvr.trainers.pipeline import (
        engine_dtype,
        engine_workers,
        load_policy,
        prompt_tokens,
        training_source,
    )
    from rlvr.trainers.rl import (
        Learner,
        ProblemPool,
        Sampler,
        collect,
        knobs_at,
        new_optimizer,
        update_policy,
    )

    config = load_config(args.recipe, [f"model.path={args.model_dir}", *overrides])
    threads = args.threads or config.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    cfg = config.rl
    device = torch.device("cpu")
    policy = load_policy(config.model.path, config.model.impl, config.model.dtype, device)
    policy.model.load_state_dict(start)
    task = tasks.get(config.data.task, **config.data.task_options)
    eos = eos_token_ids(policy.tokenizer)
    engine = TorchEngine(policy.model, eos_token_ids=eos, pad_token_id=policy.tokenizer.pad_token_id or 0,
                         dtype=engine_dtype(config, policy), workers=engine_workers(config))
    pool = ProblemPool(training_source(config, task, set()), seed=config.seed)
    prompt_cache, _ = prompt_tokens(policy.tokenizer, task, 0)  # the pipeline's cached prompt ids

    learner = Learner(policy.model, new_optimizer(policy.model, cfg), device, policy.packed)
    sampler = Sampler(engine, policy.tokenizer, task, pool, prompt_cache, eos)
    out = {"gen_s": 0.0, "update_s": 0.0, "cpu_s": 0.0, "samples": 0, "tokens": 0}
    for step in range(first_step, first_step + args.steps):
        knobs = knobs_at(cfg, step, config.data.difficulty)
        policy.model.eval()
        c0, t0 = time.process_time(), time.perf_counter()
        batch, _ = collect(sampler, knobs, cfg, config.seed, step)
        t1 = time.perf_counter()
        policy.model.train()
        update_policy(learner, batch, cfg, knobs, step, config.seed, engine_shares_weights=True)
        t2 = time.perf_counter()
        out["cpu_s"] += time.process_time() - c0
        out["gen_s"] += t1 - t0
        out["update_s"] += t2 - t1
        out["samples"] += len(batch)
        out["tokens"] += sum(len(c) for c in batch.completion_ids)
    out["threads"] = threads
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="HF checkpoint directory (an SFT checkpoint of the recipe)")
    ap.add_argument("--recipe", default="recipes/kk-tiny.yaml")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each runs every contender once)")
    ap.add_argument("--steps", type=int, default=2, help="RL steps per contender per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: the recipe's)")
    ap.add_argument("--baseline", nargs="*", default=["model.engine_workers=1", "rl.update_workers=1"],
                    help="overrides of the baseline contender (default: the engine before 2026-12-03)")
    ap.add_argument("--new", nargs="*", default=[], help="overrides of the new contender (default: the recipe)")
    args = ap.parse_args()

    from rlvr.models.native import NativeCausalLM

    start = copy.deepcopy(NativeCausalLM.from_pretrained(args.model_dir).state_dict())
    contenders = {"baseline": args.baseline, "new": args.new}
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    for rnd in range(args.rounds):
        order = list(contenders) if rnd % 2 == 0 else list(reversed(contenders))
        for name in order:
            r = run_contender(name, contenders[name], args, start, first_step=rnd * args.steps)
            results[name].append(r)
            wall = r["gen_s"] + r["update_s"]
            print(f"round {rnd} {name:8s}: {r['samples'] / wall:6.2f} samples/s (gen {r['gen_s']:.2f}s, update "
                  f"{r['update_s']:.2f}s, {r['tokens'] / r['samples']:.0f} tokens/sample, "
                  f"cpu/s {r['cpu_s'] / wall:.2f}, threads {r['threads']})", flush=True)
    print()
    for name, overrides in contenders.items():
        rs = results[name]
        rate = statistics.median(r["samples"] / (r["gen_s"] + r["update_s"]) for r in rs)
        gen = statistics.median(r["gen_s"] / r["samples"] for r in rs) * 1e3
        upd = statistics.median(r["update_s"] / r["samples"] for r in rs) * 1e3
        cpu = statistics.median(r["cpu_s"] / r["samples"] for r in rs) * 1e3
        print(f"{name:8s} {' '.join(overrides) or '(the recipe)'}: median {rate:.2f} RL samples/s "
              f"(per sample: gen {gen:.1f} ms, update {upd:.1f} ms wall; {cpu:.1f} ms of process CPU time)")
    ratios = [(n["samples"] / (n["gen_s"] + n["update_s"])) / (b["samples"] / (b["gen_s"] + b["update_s"]))
              for n, b in zip(results["new"], results["baseline"])]
    gen_ratios = [(b["gen_s"] / b["samples"]) / (n["gen_s"] / n["samples"])
                  for n, b in zip(results["new"], results["baseline"])]
    print(f"ratio new / baseline, RL samples/s: median {statistics.median(ratios):.2f} "
          f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}); generation alone {statistics.median(gen_ratios):.2f}")


if __name__ == "__main__":
    main()
