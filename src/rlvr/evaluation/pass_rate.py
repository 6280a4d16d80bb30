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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rlvr.data.curation import PathLike, atomic_writer, sidecar
from rlvr.data.io import read_numbered, write_json_atomic
from rlvr.evaluation.evaluate import check_sampling, evaluate, load_engine
from rlvr.tasks import get


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


@dataclass(frozen=True)
class PassRateSettings:
    """How each problem is sampled (n completions at temperature / top_p / top_k) and which pass
    rates c / n are kept ([low, high])."""

    n: int
    low: float
    high: float
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int


def filter_by_pass_rate(
    data: PathLike,
    out: PathLike,
    *,
    task: Any,
    engine: Any,
    tokenizer: Any,
    n: int = 8,
    low: float = 0.2,
    high: float = 0.625,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 1024,
    seed: int = 0,
    prompts_per_batch: int = 64,
    pass_rates: PathLike | None = None,
    model_path: str | None = None,
) -> dict[str, Any]:
    """Light-R1's offline difficulty filter: keep problems whose pass rate c / n is in [low, high].

    Streams `data` in batches of prompts_per_batch problems; each problem gets n completions
    from `engine` (rlvr.evaluation.evaluate, batch b sampled with seed + b) scored by `task`.
    Kept records are written unchanged to `out`. Every problem gets a line in `pass_rates`
    (default: next to `out`, "<name>.pass_rates.jsonl"): location (FILE:LINE), pass_rate,
    correct, n, kept, reason ("kept" | "too easy" | "too hard" | "unverifiable gold answer" |
    "unreadable record: ..."), mean_tokens and shortest_correct_tokens (for context advice).
    Problems whose gold answer the task's verifier rejects (gold_verifiable is False) and
    records the task cannot read are reported and dropped without sampling.
    Returns a summary: counts, a histogram of correct counts, settings, unverifiable locations.
    """
    if isinstance(task, str):
        task = get(task)
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
    check_sampling(n, temperature, (1,))
    settings = PassRateSettings(n, low, high, temperature, top_p, top_k, max_new_tokens)
    rates_path = Path(pass_rates) if pass_rates is not None else sidecar(out, ".pass_rates.jsonl")
    summary: dict[str, Any] = {
        "data": str(data), "out": str(out), "pass_rates": str(rates_path),
        "records_in": 0, "records_out": 0, "too_easy": 0, "too_hard": 0, "unverifiable": [], "unreadable": [],
        "correct_histogram": [0] * (n + 1), "gold_check": hasattr(task, "oracle_completion"),
    }
    with atomic_writer(out) as kept_handle, atomic_writer(rates_path) as rates_handle:
        batch: list[tuple[str, dict[str, Any], Any]] = []
        for line, record in read_numbered(data):
            summary["records_in"] += 1
            location = f"{data}:{line}"
            verdict = _admit(task, record, location, summary)
            if verdict is not None:
                rates_handle.write(_dump(verdict) + "\n")
                continue
            batch.append((location, record, task.from_record(record)))
            if len(batch) == prompts_per_batch:
                _filter_batch(batch, kept_handle, rates_handle, summary, task, engine, tokenizer, settings,
                              seed + summary["records_in"])
                batch = []
        if batch:
            _filter_batch(batch, kept_handle, rates_handle, summary, task, engine, tokenizer, settings,
                          seed + summary["records_in"])
    summary["settings"] = {"task": task.name, "model": model_path, "n": n, "low": low, "high": high,
                           "temperature": temperature, "top_p": top_p, "top_k": top_k,
                           "max_new_tokens": max_new_tokens, "seed": seed, "prompts_per_batch": prompts_per_batch}
    return summary


def filter_command(
    data: PathLike,
    out: PathLike,
    task: str,
    model: PathLike,
    *,
    n: int = 8,
    low: float = 0.2,
    high: float = 0.625,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 1024,
    seed: int = 0,
    prompts_per_batch: int = 64,
    pass_rates: PathLike | None = None,
    device: str = "auto",
    dtype: str = "float32",
    task_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`rlvr data filter`: filter_by_pass_rate with a local model directory sampled by TorchEngine.

    Also writes the returned summary next to `out` as "<name>.filter.json".
    """
    task_obj = get(task, **(task_options or {}))
    engine, tokenizer = load_engine(str(model), device=device, dtype=dtype)
    summary = filter_by_pass_rate(
        data, out, task=task_obj, engine=engine, tokenizer=tokenizer, n=n, low=low, high=high,
        temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed,
        prompts_per_batch=prompts_per_batch, pass_rates=pass_rates, model_path=str(model),
    )
    write_json_atomic(sidecar(out, ".filter.json"), summary)
    return summary


def _admit(task: Any, record: dict[str, Any], location: str, summary: dict[str, Any]) -> dict[str, Any] | None:
    """None if the problem should be sampled, else its pass-rates line (dropped unsampled)."""
    try:
        example = task.from_record(record)
    except (ValueError, KeyError, TypeError) as error:
        summary["unreadable"].append(f"{location}: {error}")
        return {"location": location, "pass_rate": None, "kept": False, "reason": f"unreadable record: {error}"}
    if gold_verifiable(task, example) is False:
        summary["unverifiable"].append(location)
        return {"location": location, "pass_rate": None, "kept": False, "reason": "unverifiable gold answer"}
    return None


def _filter_batch(
    batch: list[tuple[str, dict[str, Any], Any]], kept_handle: IO[str], rates_handle: IO[str],
    summary: dict[str, Any], task: Any, engine: Any, tokenizer: Any, settings: PassRateSettings, seed: int,
) -> None:
    """Sample and score one batch of problems; write the kept records and every pass-rates line."""
    s = settings
    result = evaluate(engine, tokenizer, task, [example for _, _, example in batch], n=s.n,
                      temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_new_tokens=s.max_new_tokens,
                      seed=seed, prompts_per_batch=len(batch))
    per_prompt: list[list[dict[str, Any]]] = [[] for _ in batch]
    for sample in result.samples:
        per_prompt[sample["prompt_index"]].append(sample)
    for (location, record, _), samples in zip(batch, per_prompt):
        correct = sum(1 for sample in samples if sample["correct"])
        rate = correct / s.n
        # A small tolerance: 5/8 = 0.625 must count as inside [0.2, 0.625].
        if rate < s.low - 1e-9:
            reason = "too hard"
            summary["too_hard"] += 1
        elif rate > s.high + 1e-9:
            reason = "too easy"
            summary["too_easy"] += 1
        else:
            reason = "kept"
            summary["records_out"] += 1
            kept_handle.write(_dump(record) + "\n")
        summary["correct_histogram"][correct] += 1
        correct_lengths = [sample["n_tokens"] for sample in samples if sample["correct"]]
        rates_handle.write(_dump({
            "location": location, "pass_rate": rate, "correct": correct, "n": s.n, "kept": reason == "kept",
            "reason": reason, "mean_tokens": sum(sample["n_tokens"] for sample in samples) / s.n,
            "shortest_correct_tokens": min(correct_lengths) if correct_lengths else None,
        }) + "\n")
