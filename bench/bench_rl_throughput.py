"""RL samples per second of the kk-tiny RL stage: a baseline contender against the recipe, interleaved.

Each round runs `--steps` RL steps of the recipe (its own batch: prompts_per_step x group_size,
mini-batches and update settings) for every contender, in alternating order, each from the same
starting weights with a fresh optimizer and the same step indices (so the same prompts), the way
train_rl runs a step (collect, then update_policy on the engine's own module). A contender is the
recipe plus its overrides, where `engine.NAME=VALUE` sets a TorchEngine option instead of a recipe
key; the default baseline is the engine of 88636d5 (`engine.share_prompt=false`: each sample decodes
from its own copy of the prompt's K/V). Earlier baselines stay runnable, e.g. the engine and update
before 2026-12-03: `--baseline engine.share_prompt=false model.engine_workers=1 rl.update_workers=1`.
The machine is shared, so each round's ratio pairs runs made back to back, and the median over
rounds is the figure.

    PYTHONPATH=src python bench/bench_rl_throughput.py --model-dir runs/kk-tiny/checkpoints/sft/step_000500
    PYTHONPATH=src python bench/bench_rl_throughput.py --model-dir DIR --rounds 5 --steps 1 \\
        --baseline engine.share_prompt=false --new model.engine_workers=1

samples/s counts the step's rollouts over its wall time (generation + update); cpu/s is process
CPU time per wall second (how many cores the step kept busy: well under the thread count means
other jobs held the cores, and wall-time ratios then say little about a quiet machine). Threads: the
recipe's `threads` unless --threads is given. `active` counts the rows with an advantage (the update
skips the others): a checkpoint whose groups all score the same times generation alone.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (in the functions)


def run_contender(overrides: list[str], args: argparse.Namespace, start: dict, first_step: int) -> dict:
    """`args.steps` RL steps of the recipe with `overrides`, from weights `start`; timings and counts."""

    from rl_setup import active_rows, build_stage
    from rlvr.trainers.rl import collect, knobs_at, update_policy

    engine_options = {k.removeprefix("engine."): engine_option(k.removeprefix("engine."), v)
                      for k, v in (o.split("=", 1) for o in overrides) if k.startswith("engine.")}
    overrides = [o for o in overrides if not o.startswith("engine.")]
    stage = build_stage(args.recipe, args.model_dir, overrides, engine_options, start, args.threads)
    config, policy, learner, sampler = stage.config, stage.policy, stage.learner, stage.sampler
    cfg = config.rl
    out = {"gen_s": 0.0, "update_s": 0.0, "cpu_s": 0.0, "samples": 0, "tokens": 0, "active": 0}
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
        out["active"] += len(active_rows(batch, cfg))  # the rows with a gradient
    out["threads"] = stage.threads
    return out


def engine_option(name: str, value: str) -> bool | int:
    """A TorchEngine option from the command line: share_prompt=true|false, max_batch_size=N."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value.isdigit():
        return int(value)
    raise SystemExit(f"engine.{name}={value}: expected true, false or an integer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True,
                    help="HF checkpoint directory (an SFT checkpoint of the recipe)")
    ap.add_argument("--recipe", default="recipes/kk-tiny.yaml")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds (each runs every contender once)")
    ap.add_argument("--steps", type=int, default=2, help="RL steps per contender per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: the recipe's)")
    ap.add_argument("--baseline", nargs="*", default=["engine.share_prompt=false"],
                    help="overrides of the baseline contender (default: the engine of 88636d5, replicated "
                         "prompt K/V)")
    ap.add_argument("--new", nargs="*", default=[],
                    help="overrides of the new contender (default: the recipe)")
    args = ap.parse_args()

    from rlvr.models.native import NativeCausalLM

    start = copy.deepcopy(NativeCausalLM.from_pretrained(args.model_dir).state_dict())
    contenders = {"baseline": args.baseline, "new": args.new}
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    for rnd in range(args.rounds):
        order = list(contenders) if rnd % 2 == 0 else list(reversed(contenders))
        for name in order:
            r = run_contender(contenders[name], args, start, first_step=rnd * args.steps)
            results[name].append(r)
            wall = r["gen_s"] + r["update_s"]
            print(f"round {rnd} {name:8s}: {r['samples'] / wall:6.2f} samples/s (gen {r['gen_s']:.2f}s, "
                  f"update {r['update_s']:.2f}s, {r['tokens'] / r['samples']:.0f} tokens/sample, active "
                  f"{r['active']}/{r['samples']}, cpu/s {r['cpu_s'] / wall:.2f}, cpu per sample "
                  f"{1e3 * r['cpu_s'] / r['samples']:.1f} ms, threads {r['threads']})", flush=True)
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
    cpu_ratios = [(b["cpu_s"] / b["samples"]) / (n["cpu_s"] / n["samples"])
                  for n, b in zip(results["new"], results["baseline"])]
    print(f"ratio new / baseline, RL samples/s: median {statistics.median(ratios):.2f} "
          f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}); generation alone "
          f"{statistics.median(gen_ratios):.2f}; process CPU per sample {statistics.median(cpu_ratios):.2f}")


if __name__ == "__main__":
    main()
