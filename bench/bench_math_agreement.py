"""Math grading agreement: rlvr's math grader and plain math-verify against a fixture of verdicts.

    PYTHONPATH=src .venv/bin/python bench/bench_math_agreement.py [--misses] [--fixture PATH]

The fixture (tests/fixtures/math_grading_cases.jsonl) holds (gold, prediction, expected verdict,
source project, category) rows written for rlvr after the kinds of pairs the public graders' test
suites judge (Math-Verify, NeMo-Skills, lm-evaluation-harness, hendrycks MATH, rllm), plus
adversarial negatives that must stay wrong. Rows are split "dev" (written while the grader was
being changed) and "held_out" (written after, measured once, not tuned on). Each prediction is
scored as a whole completion by MathTask(reward_scheme="answer_only"); plain math-verify is
`verify(parse(gold), parse(prediction))` with its default extraction configs (gold wrapped in
$...$ when it has neither $ nor \\boxed), run in this process. Prints agreement (share of rows
where the verdict equals the expected one), false positives (scored correct, expected wrong)
and false negatives, overall and per category; with --misses, every disagreeing row.
Not a speed benchmark: nothing is timed.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from rlvr.tasks.base import Example
from rlvr.tasks.math import MathTask

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "math_grading_cases.jsonl"


def load(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plain_math_verify() -> Callable[[str, str], bool]:
    from math_verify import parse, verify

    logging.disable(logging.CRITICAL)

    def judge(gold: str, prediction: str) -> bool:
        gold_text = gold if ("$" in gold or "\\boxed" in gold) else f"${gold}$"
        try:
            return bool(verify(parse(gold_text), parse(prediction)))
        except Exception:  # a grader error is a "wrong" verdict, as in rlvr
            return False

    return judge


def rlvr_grader() -> Callable[[str, str], bool]:
    task = MathTask(reward_scheme="answer_only")
    return lambda gold, prediction: task.score(prediction, Example(prompt="", answer=gold)).correct


def tally(cases: list[dict[str, object]],
          judge: Callable[[str, str], bool]) -> list[tuple[dict[str, object], bool]]:
    return [(case, judge(str(case["gold"]), str(case["prediction"]))) for case in cases]


def summary(results: list[tuple[dict[str, object], bool]]) -> tuple[float, int, int]:
    """(agreement, false positives, false negatives)."""
    agree = sum(verdict == case["expected"] for case, verdict in results)
    false_pos = sum(verdict and not case["expected"] for case, verdict in results)
    false_neg = sum(case["expected"] and not verdict for case, verdict in results)
    return agree / max(len(results), 1), false_pos, false_neg


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fixture", type=Path, default=FIXTURE, help="JSONL of verdict cases")
    parser.add_argument("--misses", action="store_true", help="print every row a grader gets wrong")
    args = parser.parse_args(argv)
    cases = load(args.fixture)
    graders = {"rlvr": tally(cases, rlvr_grader()), "math-verify": tally(cases, plain_math_verify())}
    print(f"{len(cases)} cases from {args.fixture.name}")
    print(f"{'grader':<14}{'agreement':>10}{'false+':>8}{'false-':>8}")
    splits = sorted({str(case.get("split", "dev")) for case in cases})
    for name, results in graders.items():
        agreement, false_pos, false_neg = summary(results)
        print(f"{name:<14}{agreement:>10.3f}{false_pos:>8}{false_neg:>8}   all {len(cases)} rows")
        for split in splits:
            rows = [r for r in results if r[0].get("split", "dev") == split]
            agreement, false_pos, false_neg = summary(rows)
            print(f"{'':<14}{agreement:>10.3f}{false_pos:>8}{false_neg:>8}   {split} ({len(rows)} rows)")
    by_category: dict[str, list[int]] = defaultdict(list)
    for index, case in enumerate(cases):
        by_category[str(case["category"])].append(index)
    print(f"\n{'category':<22}{'n':>4}" + "".join(f"{name:>14}" for name in graders))
    for category, indices in sorted(by_category.items()):
        shares = [summary([results[i] for i in indices])[0] for results in graders.values()]
        print(f"{category:<22}{len(indices):>4}" + "".join(f"{share:>14.3f}" for share in shares))
    if args.misses:
        for name, results in graders.items():
            print(f"\n{name} misses:")
            for case, verdict in results:
                if verdict != case["expected"]:
                    kind = "FALSE POSITIVE" if verdict else "false negative"
                    print(f"  {kind:<15} [{case.get('split', 'dev')}/{case['category']}] "
                          f"gold={case['gold']!r} pred={case['prediction']!r}")


if __name__ == "__main__":
    main()
