"""Knights-and-Knaves scoring speed: completions scored per second on one core.

Baseline, measured in the same run: the cost of rlvr.rewards.check_format alone on the same
completions, the floor any <think>/<answer> task pays. The mix is what an RL batch looks like:
right and wrong answers, broken formats, garbage and one long rambling completion per 64.

    .venv/bin/python bench/bench_kk_scoring.py [--n 20000] [--people 3]

Target (from the task brief): >= 5,000 completions/s for 3-person puzzles.
"""

from __future__ import annotations

import argparse
import time

from rlvr.rewards import check_format
from rlvr.tasks import get


def completions_for(task, examples):  # type: ignore[no-untyped-def]
    """A realistic mix: oracle traces, wrong answers, format errors, garbage, a 20 KB ramble."""
    out = []
    for i, example in enumerate(examples):
        oracle = task.oracle_completion(example)
        kind = i % 8
        if kind < 3:
            out.append(oracle)
        elif kind < 5:
            out.append(oracle.replace("knight\n", "knave\n", 1))
        elif kind == 5:
            out.append(oracle.replace("</think>", "", 1))
        elif kind == 6:
            out.append("I think everyone is a knight. <answer>all knights</answer>")
        else:
            out.append(oracle if i % 64 else "<think>" + "hmm, let me see. " * 1200 + oracle)
    return out


def rate(fn, items, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    """Best of `repeats` passes (the machine is shared), in items per second."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(*item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="completions scored per pass")
    parser.add_argument("--people", type=int, default=3)
    args = parser.parse_args()
    for scheme in ("default", "logic_rl"):
        task = get("knights_knaves", reward_scheme=scheme)
        examples = task.examples(args.n, seed=0, people=args.people)
        pairs = list(zip(completions_for(task, examples), examples))
        scored = rate(task.score, pairs)
        baseline = rate(lambda completion, _example: check_format(completion), pairs)
        print(f"{scheme:9s} score: {scored:10,.0f} completions/s   "
              f"check_format alone: {baseline:10,.0f}/s   ratio {scored / baseline:.2f}")


if __name__ == "__main__":
    main()
