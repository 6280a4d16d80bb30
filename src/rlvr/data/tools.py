"""Data tools behind `rlvr data gen` and `rlvr data stats`.

generate: a task's generator -> its public record schema -> a .jsonl or .parquet file (atomic).
stats:    count, prompt lengths (characters and whitespace-separated words) and counts per
          difficulty value of a data file, as a JSON-ready dict.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rlvr import tasks
from rlvr.data.io import iter_examples, read_records, write_records_atomic
from rlvr.tasks import get

# Metadata keys that never describe difficulty (provenance and identity).
_NOT_DIFFICULTY = frozenset({"index", "seed", "source", "id", "split", "statements"})
_MAX_DISTINCT = 50  # a metadata key with more distinct values than this is not a difficulty level
PERCENTILES = (50, 90, 95, 99)


def generate(
    task_name: str,
    n: int,
    seed: int,
    out: str | os.PathLike[str],
    *,
    task_options: dict[str, Any] | None = None,
    **difficulty: Any,
) -> Path:
    """Write n generated examples of `task_name` (built with task_options) as records; returns the path.

    difficulty goes to task.examples (e.g. people=[3, 4] for knights_knaves). The file type
    follows the suffix: .jsonl / .json (JSON lines) or .parquet.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    task = get(task_name, **(task_options or {}))
    examples = task.examples(n, seed, **difficulty)
    write_records_atomic(out, (task.to_record(example) for example in examples))
    return Path(out)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """mean, min, max and nearest-rank percentiles p50 / p90 / p95 / p99 of `values` ({} when empty)."""
    if not values:
        return {}
    ordered = sorted(values)
    result = {"mean": sum(ordered) / len(ordered), "min": ordered[0], "max": ordered[-1]}
    for p in PERCENTILES:
        rank = max(1, math.ceil(p / 100 * len(ordered)))  # nearest-rank definition
        result[f"p{p}"] = ordered[rank - 1]
    return result


def stats(path: str | os.PathLike[str], task_name: str | None = None, *,
          task_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Statistics of a data file, read through a task's from_record (so bad records are reported).

    task_name None: guessed from the first record's fields (guess_task: the tasks' record_match);
    with no guess, raw records are measured, the prompt taken from the first of quiz / problem /
    question / prompt.
    Returns {"path", "task", "count", "prompt_chars", "prompt_words", "difficulty"} where the
    length entries are summarize() dicts and difficulty maps a key to {value: count}.
    """
    if task_name is None:
        first = next(read_records(path), None)
        task_name = guess_task(first) if first is not None else None
    prompts: Iterable[tuple[str, dict[str, Any]]]
    if task_name is None:
        prompts = ((_raw_prompt(record), {}) for record in read_records(path))
    else:
        task = get(task_name, **(task_options or {}))
        prompts = ((e.prompt, _difficulty(task, e.metadata)) for e in iter_examples(task, path))
    chars: list[int] = []
    words: list[int] = []
    levels: dict[str, Counter[str]] = {}
    for prompt, difficulty in prompts:
        chars.append(len(prompt))
        words.append(len(prompt.split()))
        for key, value in difficulty.items():
            levels.setdefault(key, Counter())[str(value)] += 1
    difficulty_counts = {
        key: dict(sorted(counter.items(), key=lambda item: _sort_key(item[0])))
        for key, counter in levels.items()
        if len(counter) <= _MAX_DISTINCT
    }
    return {
        "path": str(path),
        "task": task_name,
        "count": len(chars),
        "prompt_chars": summarize(chars),
        "prompt_words": summarize(words),
        "difficulty": difficulty_counts,
    }


def guess_task(record: dict[str, Any]) -> str | None:
    """The registered task whose record_match(record) is highest (ties: the first registered), or
    None when none matches. Row tasks (generic, mixed) are never guessed; a task whose module does
    not load (an entry point of a broken package) is passed over."""
    best, best_score = None, 0
    for name in tasks.registered():
        if name in tasks.ROW_TASKS:
            continue
        try:
            match = tasks.class_default(name, "record_match", None)
        except Exception:  # another package's import failure must not stop `data stats`
            continue
        score = int(match(record)) if callable(match) else 0
        if score > best_score:
            best, best_score = name, score
    return best


def _difficulty(task: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """The difficulty entries of an example's metadata: the task's difficulty_keys when it names
    them, else every scalar entry that is not provenance."""
    keys = getattr(task, "difficulty_keys", None)
    if keys is not None:
        return {key: metadata[key] for key in keys if key in metadata}
    return {key: value for key, value in metadata.items()
            if key not in _NOT_DIFFICULTY and isinstance(value, (int, str, bool))}


def _raw_prompt(record: dict[str, Any]) -> str:
    for key in ("quiz", "problem", "question", "prompt"):
        value = record.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):  # chat messages, as in verl's parquet files
            return "\n".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    return ""


def _sort_key(value: str) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)
