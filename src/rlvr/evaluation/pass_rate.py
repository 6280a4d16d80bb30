"""Light-R1's offline difficulty filter behind `rlvr data filter` (Wen et al. 2025).

Sample n answers per problem with a model, keep problems whose pass rate lies in [low, high]
(default 0.2 .. 0.625), write every pass rate next to the output. Problems whose gold answer the
task's own verifier cannot confirm (its oracle completion does not score correct) are reported and
dropped: Light-R1 found most 0%-pass problems were unverifiable answers, not hard problems.

It is the evaluation harness (evaluate) applied to a training file, so it lives here, above
rlvr.data, whose streaming readers and atomic writers it uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from rlvr.data.curation import PathLike, atomic_writer, sidecar
from rlvr.data.io import read_numbered, write_json_atomic
from rlvr.evaluation.evaluate import EvalSampling, evaluate, load_engine
from rlvr.tasks import get
from rlvr.tasks.base import Task


def _dump(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False)


def gold_verifiable(task: Any, example: Any) -> bool | None:
    """Does the task's verifier accept its own gold answer? True / False, or None when the task
    offers no oracle_completion to check with. Never raises."""
    oracle = getattr(task, "oracle_completion", None)
    if oracle is None:
        return None
    try:
        return bool(task.score(oracle(example), example).correct)
    except Exception:  # an answer the task cannot even render is unverifiable, not a crash
        return False


FILTER_SAMPLING = EvalSampling(n=8, temperature=1.0)
"""filter_by_pass_rate's default: 8 completions per problem at temperature 1.0 (top_p 1.0, top_k off),
up to 1024 new tokens each."""

Problem = tuple[str, dict[str, Any], Any]  # (FILE:LINE, the record as read, the task's Example of it)


def filter_by_pass_rate(
    data: PathLike,
    out: PathLike,
    *,
    task: Any,
    engine: Any,
    tokenizer: Any,
    sampling: EvalSampling = FILTER_SAMPLING,
    keep: tuple[float, float] = (0.2, 0.625),
    pass_rates: PathLike | None = None,
    model_path: str | None = None,
) -> dict[str, Any]:
    """Light-R1's offline difficulty filter: keep problems whose pass rate c / n is in keep = [low, high].

    Streams `data` in batches of sampling.prompts_per_batch problems; each problem gets n completions
    from `engine` (rlvr.evaluation.evaluate, the batch read up to record r sampled with seed + r) scored
    by `task`. Kept records are written unchanged to `out`. Every problem gets a line in `pass_rates`
    (default: next to `out`, "<name>.pass_rates.jsonl"): location (FILE:LINE), pass_rate,
    correct, n, kept, reason ("kept" | "too easy" | "too hard" | "unverifiable gold answer" |
    "unreadable record: ..."), mean_tokens and shortest_correct_tokens (for context advice).
    Problems whose gold answer the task's verifier rejects (gold_verifiable is False) and
    records the task cannot read are reported and dropped without sampling.
    Returns a summary: counts, a histogram of correct counts, settings, unverifiable locations.
    """
    if isinstance(task, str):
        task = get(task)
    low, high = keep
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
    rates_path = Path(pass_rates) if pass_rates is not None else sidecar(out, ".pass_rates.jsonl")
    summary: dict[str, Any] = {
        "data": str(data), "out": str(out), "pass_rates": str(rates_path),
        "records_in": 0, "records_out": 0, "too_easy": 0, "too_hard": 0, "unverifiable": [], "unreadable": [],
        "correct_histogram": [0] * (sampling.n + 1), "gold_check": hasattr(task, "oracle_completion"),
    }
    with atomic_writer(out) as kept_handle, atomic_writer(rates_path) as rates_handle:
        for batch in _admitted_batches(data, task, summary, rates_handle, sampling.prompts_per_batch):
            batch_sampling = replace(sampling, seed=sampling.seed + summary["records_in"],
                                     prompts_per_batch=len(batch))
            _filter_batch(batch, kept_handle, rates_handle, summary, task, engine, tokenizer, batch_sampling,
                          keep)
    s = sampling
    summary["settings"] = {"task": task.name, "model": model_path, "n": s.n, "low": low, "high": high,
                           "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
                           "max_new_tokens": s.max_new_tokens, "seed": s.seed,
                           "prompts_per_batch": s.prompts_per_batch}
    return summary


def filter_command(
    data: PathLike,
    out: PathLike,
    task: str | Task,
    model: PathLike,
    *,
    sampling: EvalSampling = FILTER_SAMPLING,
    keep: tuple[float, float] = (0.2, 0.625),
    pass_rates: PathLike | None = None,
    device: str = "auto",
    dtype: str = "float32",
) -> dict[str, Any]:
    """`rlvr data filter`: filter_by_pass_rate with a local model directory sampled by TorchEngine.

    task: a task name or a built Task. Also writes the returned summary next to `out` as
    "<name>.filter.json".
    """
    task_obj = get(task) if isinstance(task, str) else task
    engine, tokenizer = load_engine(str(model), device=device, dtype=dtype)
    summary = filter_by_pass_rate(data, out, task=task_obj, engine=engine, tokenizer=tokenizer,
                                  sampling=sampling, keep=keep, pass_rates=pass_rates, model_path=str(model))
    write_json_atomic(sidecar(out, ".filter.json"), summary)
    return summary


def _admitted_batches(data: PathLike, task: Any, summary: dict[str, Any], rates_handle: IO[str],
                      size: int) -> Iterator[list[Problem]]:
    """The records of `data` to sample, `size` at a time (the last batch may be shorter); the others
    (_admit) get their pass-rates line as they are read. Counts summary["records_in"]."""
    batch: list[Problem] = []
    for line, record in read_numbered(data):
        summary["records_in"] += 1
        location = f"{data}:{line}"
        verdict = _admit(task, record, location, summary)
        if verdict is not None:
            rates_handle.write(_dump(verdict) + "\n")
            continue
        batch.append((location, record, task.from_record(record)))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _admit(task: Any, record: dict[str, Any], location: str,
           summary: dict[str, Any]) -> dict[str, Any] | None:
    """None if the problem should be sampled, else its pass-rates line (dropped unsampled)."""
    try:
        example = task.from_record(record)
    except (ValueError, KeyError, TypeError) as error:
        summary["unreadable"].append(f"{location}: {error}")
        return {"location": location, "pass_rate": None, "kept": False,
                "reason": f"unreadable record: {error}"}
    if gold_verifiable(task, example) is False:
        summary["unverifiable"].append(location)
        return {"location": location, "pass_rate": None, "kept": False, "reason": "unverifiable gold answer"}
    return None


def _filter_batch(
    batch: list[Problem], kept_handle: IO[str], rates_handle: IO[str], summary: dict[str, Any], task: Any,
    engine: Any, tokenizer: Any, sampling: EvalSampling, keep: tuple[float, float],
) -> None:
    """Sample and score one batch of problems; write the kept records and every pass-rates line."""
    result = evaluate(engine, tokenizer, task, [example for _, _, example in batch], sampling)
    n, (low, high) = sampling.n, keep
    per_prompt: list[list[dict[str, Any]]] = [[] for _ in batch]
    for sample in result.samples:
        per_prompt[sample["prompt_index"]].append(sample)
    for (location, record, _), samples in zip(batch, per_prompt, strict=True):
        correct = sum(1 for sample in samples if sample["correct"])
        rate = correct / n
        # A small tolerance: 5/8 = 0.625 must count as inside [0.2, 0.625].
        if rate < low - 1e-9:
            reason = "too hard"
            summary["too_hard"] += 1
        elif rate > high + 1e-9:
            reason = "too easy"
            summary["too_easy"] += 1
        else:
            reason = "kept"
            summary["records_out"] += 1
            kept_handle.write(_dump(record) + "\n")
        summary["correct_histogram"][correct] += 1
        correct_lengths = [sample["n_tokens"] for sample in samples if sample["correct"]]
        rates_handle.write(_dump({
            "location": location, "pass_rate": rate, "correct": correct, "n": n, "kept": reason == "kept",
            "reason": reason, "mean_tokens": sum(sample["n_tokens"] for sample in samples) / n,
            "shortest_correct_tokens": min(correct_lengths) if correct_lengths else None,
        }) + "\n")
