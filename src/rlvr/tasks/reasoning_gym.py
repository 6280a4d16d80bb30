"""reasoning-gym's procedural datasets as an rlvr task (optional: `pip install reasoning-gym`).

    data:
      task: reasoning_gym
      task_options: {dataset: basic_arithmetic, config: {max_terms: 3}}
      difficulty: {max_digits: 2}          # more of the dataset's config keys, per stage

Any dataset of `reasoning_gym.factory.DATASETS` by name; `config` and the difficulty keywords are
its own config fields (passed through to reasoning_gym.create_dataset). Example i of
examples(n, seed) is item i of the dataset built with (seed, size n): reasoning-gym draws item i
from its own RNG seeded with seed + i, so it is a pure function of (seed, index) as rlvr's tasks are.

Scoring: the answer is the last <answer>...</answer> block (rlvr.rewards.last_answer_block) and the
dataset's own score_answer(answer, entry) judges it (a float in [0, 1]; correct means 1.0). It runs
in a worker process with a deadline (rlvr.tasks._timeout), since a dataset's scorer may not be
total; a miss or an exception scores 0 with parts["timeout"] / parts["grader_error"]. Reward
schemes: "default" = the dataset score if the format (<think>, <answer>, each once, in order) holds,
else 0; "answer_only" = the dataset score of the answer block (or of the whole completion when it
has none), format reported only.

Rows of reasoning-gym's own exports ({question, answer, metadata}) load with from_record.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from rlvr.errors import RecordError
from rlvr.rewards import check_format, last_answer_block
from rlvr.tasks._timeout import shared_pool
from rlvr.tasks.base import Example, Score

INSTALL = "pip install reasoning-gym (or pip install 'rlvr[reasoning-gym]')"
REWARD_SCHEMES = ("default", "answer_only")
SYSTEM_PROMPT = ("Think about the problem inside <think> </think> tags, then give only the final answer "
                 "inside <answer> </answer> tags.")
_HANDLER = "rlvr.tasks.reasoning_gym:score_request"
_WARMUP = "rlvr.tasks.reasoning_gym:warm_up"


def _module() -> Any:
    try:
        import reasoning_gym
    except ImportError:
        raise ImportError(f"task reasoning_gym needs the reasoning-gym package: {INSTALL}") from None
    return reasoning_gym


def dataset_names() -> list[str]:
    _module()
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def _create(name: str, seed: int, size: int, config: dict[str, Any]) -> Any:
    return _module().create_dataset(name, seed=seed, size=size, **config)


class ReasoningGymTask:
    name = "reasoning_gym"
    default_difficulty: dict[str, Any] = {}
    corpus_levels: tuple[dict[str, Any], ...] = ({},)
    reward_range = (0.0, 1.0)

    def __init__(self, dataset: str = "", config: dict[str, Any] | None = None, response_prefix: str = "",
                 reward_scheme: str = "default", system_prompt: str | None = None,
                 timeout_seconds: float = 5.0, grader_workers: int = 2) -> None:
        names = dataset_names()
        if dataset not in names:
            close = difflib.get_close_matches(dataset, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"reasoning_gym dataset {dataset!r} is not one of reasoning-gym's {len(names)} "
                             f"datasets{hint}; set task_options.dataset, e.g. basic_arithmetic")
        if reward_scheme not in REWARD_SCHEMES:
            raise ValueError(f"unknown reward_scheme {reward_scheme!r}; valid: {', '.join(REWARD_SCHEMES)}")
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds}")
        self.dataset, self.config = dataset, dict(config or {})
        self.response_prefix, self.reward_scheme = response_prefix, reward_scheme
        self.system_prompt = SYSTEM_PROMPT if system_prompt is None else system_prompt
        self.timeout_seconds, self.grader_workers = float(timeout_seconds), grader_workers
        _create(dataset, 0, 1, self.config)  # a bad config field fails here, with reasoning-gym's message

    def examples(self, n: int, seed: int, **difficulty: Any) -> list[Example]:
        if n <= 0:
            return []
        data = _create(self.dataset, seed, n, {**self.config, **difficulty})
        return [self._example(data[i], seed, i, difficulty) for i in range(n)]

    def _example(self, entry: dict[str, Any], seed: int, index: int, difficulty: dict[str, Any]) -> Example:
        metadata = {"dataset": self.dataset, "index": index, "seed": seed, "source": "generated",
                    "rg_metadata": json.loads(json.dumps(entry.get("metadata", {}), default=str)),
                    **difficulty}
        return Example(str(entry["question"]), str(entry["answer"]), metadata)

    def messages(self, example: Example) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": example.prompt}]

    def oracle_completion(self, example: Example) -> str:
        full = f"<think>\nThe answer is {example.answer}.\n</think>\n<answer>{example.answer}</answer>"
        prefix = self.response_prefix
        return full[len(prefix):] if prefix and full.startswith(prefix) else full

    def score(self, completion: str, example: Example) -> Score:
        form = check_format(completion, prefix=self.response_prefix)
        answer = last_answer_block(self.response_prefix + completion)
        if answer is None and self.reward_scheme == "answer_only":
            answer = completion.strip()
        parts = {"format": float(form.ok), "timeout": 0.0, "grader_error": 0.0}
        value = 0.0
        if answer:
            value, status = self._grade(answer, example)
            parts["timeout"], parts["grader_error"] = float(status == "timeout"), float(status == "error")
        parts["answer"] = value
        reward = value if (form.ok or self.reward_scheme == "answer_only") else 0.0
        return Score(float(reward), value == 1.0, form.ok, parts, answer)

    def _grade(self, answer: str, example: Example) -> tuple[float, str]:
        entry = {"question": example.prompt, "answer": example.answer,
                 "metadata": example.metadata.get("rg_metadata", {})}
        request = {"dataset": example.metadata.get("dataset", self.dataset), "config": self.config,
                   "answer": answer[:20_000], "entry": entry}
        outcome = shared_pool(_HANDLER, self.grader_workers, _WARMUP).call(request, self.timeout_seconds)
        if outcome.status != "ok" or outcome.value is None:
            return 0.0, outcome.status
        return float(outcome.value["score"]), "ok"

    def from_record(self, record: dict[str, Any]) -> Example:
        """A row of reasoning-gym's export ({question, answer, metadata}) or of to_record."""
        if not isinstance(record, dict):
            raise RecordError(f"a reasoning_gym record must be a JSON object, got {type(record).__name__}")
        for key in ("question", "answer"):
            if not isinstance(record.get(key), str | int | float) or isinstance(record.get(key), bool):
                raise RecordError(f"reasoning_gym record: field {key!r} missing or not a string")
        rg_metadata = record.get("metadata") or {}
        if not isinstance(rg_metadata, dict):
            raise RecordError("reasoning_gym record: field 'metadata' is not an object")
        dataset = str(record.get("dataset") or rg_metadata.get("source_dataset") or self.dataset)
        extra = {k: v for k, v in record.items() if k not in ("question", "answer", "metadata", "dataset")}
        metadata = {"source": record.get("source") or record.get("data_source") or "record", **extra,
                    "dataset": dataset, "rg_metadata": rg_metadata}
        return Example(str(record["question"]), str(record["answer"]), metadata)

    def to_record(self, example: Example) -> dict[str, Any]:
        meta = {k: v for k, v in example.metadata.items() if k != "rg_metadata"}
        return {"question": example.prompt, "answer": example.answer,
                "metadata": example.metadata.get("rg_metadata", {}), **meta}


_DATASETS: dict[str, Any] = {}


def score_request(request: dict[str, Any]) -> dict[str, Any]:
    """Worker side: the dataset's score_answer on one answer (the dataset built once per config)."""
    key = json.dumps([request["dataset"], request["config"]], sort_keys=True)
    if key not in _DATASETS:
        _DATASETS[key] = _create(request["dataset"], 0, 1, request["config"])
    value = _DATASETS[key].score_answer(request["answer"], request["entry"])
    score = float(value) if value is not None else 0.0
    return {"score": min(1.0, max(0.0, score)) if score == score else 0.0}


def warm_up() -> None:
    _module()
