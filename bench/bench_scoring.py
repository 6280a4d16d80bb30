"""Scoring throughput of every registered task on one CPU core.

    .venv/bin/python bench/bench_scoring.py [--seconds 2] [--core 0]

For each task in rlvr.tasks.TASKS (a task whose module does not import yet is listed as
skipped): 64 generated examples at the default difficulty; completions are the oracle's
(correct) and another example's oracle completion (usually wrong), alternating. The baseline,
measured in the same run on the same completions, is rlvr.rewards.check_format alone: the
floor every scorer pays. The math task also gets a "math-verify" row whose answers are written
in a form the in-process fast path cannot decide (answer + 0), so every score goes through the
worker process. The process (and so the math-verify worker it starts) is pinned to one core.

Targets (from the task brief): countdown >= 5,000 scores/s, math >= 200 scores/s.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

from rlvr.rewards import check_format
from rlvr.tasks import TASKS, Example, Task, get

TARGETS = {"countdown": 5_000.0, "math": 200.0}
Pairs = Sequence[tuple[str, Example]]


def rate(fn: Callable[[str, Example], object], pairs: Pairs, seconds: float) -> float:
    """Calls per second of fn over `pairs`, cycled for at least `seconds`."""
    for completion, example in pairs:  # warm-up: caches, worker start
        fn(completion, example)
    calls, start = 0, time.perf_counter()
    while True:
        for completion, example in pairs:
            fn(completion, example)
        calls += len(pairs)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls / elapsed


def typical_pairs(task: Task, examples: list[Example]) -> list[tuple[str, Example]]:
    oracle = task.oracle_completion  # type: ignore[attr-defined]
    pairs = []
    for i, example in enumerate(examples):
        pairs.append((oracle(example), example))
        pairs.append((oracle(examples[(i + 1) % len(examples)]), example))
    return pairs


def math_verify_pairs(examples: list[Example]) -> list[tuple[str, Example]]:
    # "answer + 0" equals the answer but not as text or as a plain number: math-verify decides.
    return [(f"<think>\nx\n</think>\n<answer>\n\\boxed{{{e.answer} + 0}}\n</answer>", e) for e in examples]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per row")
    parser.add_argument("--core", type=int, default=None,
                        help="CPU core to pin to (default: the first allowed)")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        core = args.core if args.core is not None else min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        print(f"pinned to core {core} (the math-verify worker inherits it)")
    rows = []
    for name in sorted(TASKS):
        try:
            task = get(name)
        except ImportError as error:
            rows.append((name, "skipped", f"module does not import: {error}"))
            continue
        if not hasattr(task, "oracle_completion"):
            rows.append((name, "skipped", "no oracle_completion"))
            continue
        examples = task.examples(64, seed=0)
        pairs = typical_pairs(task, examples)
        cases = [("typical (half right)", pairs)]
        if name == "math":
            cases.append(("math-verify path", math_verify_pairs(examples)))
        baseline = rate(lambda c, _e, t=task: check_format(c, prefix=t.response_prefix), pairs, args.seconds)
        for case, case_pairs in cases:
            per_second = rate(task.score, case_pairs, args.seconds)
            target = TARGETS.get(name)
            target_text = f"{target:,.0f}/s" if target else "none"
            vs_target = f"{per_second / target:.1f}x" if target else "n/a"
            rows.append((name, case, f"{per_second:>10,.0f}/s  target {target_text:>8}  {vs_target:>6}  "
                         f"{per_second / baseline:.3f}x check_format ({baseline:,.0f}/s)"))
    print(f"{'task':<16}{'case':<22}scores/s, target, ratio to target, ratio to the check_format baseline")
    for name, case, text in rows:
        print(f"{name:<16}{case:<22}{text}")


if __name__ == "__main__":
    main()
