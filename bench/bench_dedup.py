"""Dedup speed and recall on 100,000 problems (the issue's scale target: "finishes in minutes").

    .venv/bin/python bench/bench_dedup.py [--n 100000] [--out bench/out/dedup]

Data: n problems, half Knights-and-Knaves puzzles (3-6 people) and half word problems made from
templates with random numbers and names, then 2% exact copies, 1% copies with spacing and case
changed, and 3% near copies (one word of a 40+ word problem replaced) inserted at random places;
plus a 500-item "benchmark" file, 100 of whose items are planted (exactly or edited) in the data.
Rows timed, each on the same file in the same run:
  baseline  exact + normalised only (method="none": hashing, no MinHash): the floor of any dedup;
  minhash   the default (word 3-grams, 128 permutations, threshold 0.8, LSH);
  minhash + --against the benchmark file (contamination).
Printed: seconds, records per second, ratio to the baseline, peak resident memory, and recall
of the planted copies (a planted near copy may legitimately match another planted copy).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from pathlib import Path

from rlvr.data.curation import dedup
from rlvr.tasks import get

NAMES = ("Ava", "Ben", "Cleo", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena")
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "coins", "shells")
TEMPLATES = (
    "{a} has {x} {item} and buys {y} more at the market on {day}, then gives {z} of them to {b} "
    "who already had {w} {item}. After that {b} loses {v} {item} on the way home from school. "
    "How many {item} does {b} have now, and how many more {item} does {a} need to have {u} in total?",
    "A train leaves the station at {x} kilometres per hour and a second train leaves {y} minutes later "
    "at {z} kilometres per hour on a parallel track. {a} is on the first train and {b} on the second. "
    "After how many minutes does {b} pass {a}, if the first train stops for {w} minutes at a town {v} "
    "kilometres away?",
    "In a class of {x} students, {y} play football, {z} play chess and {w} play both. {a} says that "
    "the number who play neither is {v}, while {b} says it is {u}. Who is right, and how many students "
    "play exactly one of the two games?",
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def word_problem(rng: random.Random) -> str:
    names = rng.sample(NAMES, 2)
    values = {k: rng.randint(2, 999) for k in "xyzwvu"}
    return rng.choice(TEMPLATES).format(a=names[0], b=names[1], item=rng.choice(ITEMS), day=rng.choice(DAYS),
                                        **values)


def edit_one_word(text: str, rng: random.Random) -> str:
    words = text.split()
    i = rng.randrange(len(words))
    words[i] = rng.choice(("seven", "blue", "quickly", "twelve", "river"))
    return " ".join(words)


def build(n: int, directory: Path, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    kk = get("knights_knaves")
    half = n // 2
    problems = [e.prompt for e in kk.examples(half, seed=seed, people=[3, 4, 5, 6])]
    problems += [word_problem(rng) for _ in range(n - half)]
    bench = ([word_problem(rng) for _ in range(250)]
             + [e.prompt for e in kk.examples(250, seed=seed + 1, people=4)])
    planted = []
    for _ in range(int(0.02 * n)):
        planted.append(rng.choice(problems))
    for _ in range(int(0.01 * n)):
        planted.append(rng.choice(problems).upper().replace(" ", "  "))
    for _ in range(int(0.03 * n)):
        planted.append(edit_one_word(rng.choice(problems), rng))
    for item in rng.sample(bench, 100):
        planted.append(item if rng.random() < 0.5 else edit_one_word(item, rng))
    for text in planted:
        problems.insert(rng.randrange(len(problems) + 1), text)
    directory.mkdir(parents=True, exist_ok=True)
    data, bench_path = directory / "problems.jsonl", directory / "benchmark.jsonl"
    data.write_text("".join(json.dumps({"problem": p, "answer": "0"}) + "\n" for p in problems))
    bench_path.write_text("".join(json.dumps({"problem": p, "answer": "0"}) + "\n" for p in bench))
    return data, bench_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="distinct problems before planting copies")
    parser.add_argument("--out", default="bench/out/dedup")
    args = parser.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()
    data, bench = build(args.n, out)
    size_mb = data.stat().st_size / 2**20
    records = sum(1 for _ in open(data))
    print(f"data: {records} records, {size_mb:.1f} MiB, built in {time.perf_counter() - t0:.1f} s")
    planted = records - args.n
    copies = int(0.02 * args.n) + int(0.01 * args.n)
    expected = {"baseline (exact + normalised)": copies, "minhash": copies + int(0.03 * args.n),
                "minhash + contamination": copies + int(0.03 * args.n) + 100}
    rows = []
    for label, kwargs in (("baseline (exact + normalised)", {"method": "none"}),
                          ("minhash", {}),
                          ("minhash + contamination", {"against": [bench]})):
        start = time.perf_counter()
        summary = dedup(data, out / "clean.jsonl", **kwargs)
        seconds = time.perf_counter() - start
        removed = summary["records_in"] - summary["records_out"]
        rows.append((label, seconds, summary, removed))
    base = rows[0][1]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{planted} planted copies: {copies} exact or normalised, {int(0.03 * args.n)} near, "
          "100 from the benchmark (found only with --against)")
    print(f"{'row':30s} {'seconds':>8s} {'records/s':>10s} {'x baseline':>10s} {'removed':>8s} "
          f"{'expected':>8s}")
    for label, seconds, summary, removed in rows:
        print(f"{label:30s} {seconds:8.1f} {summary['records_in'] / seconds:10.0f} {seconds / base:10.2f} "
              f"{removed:8d} {expected[label]:8d}  {json.dumps(summary['duplicates'])} "
              f"contaminated {summary['contaminated']}")
    print(f"peak resident memory of this process: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
