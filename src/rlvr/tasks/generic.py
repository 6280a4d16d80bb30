"""`data.task: generic` and reward functions added to any task (docs/byo.md).

GenericTask reads rows as given (no generator): `prompt` is a string or a chat list (used as given),
the gold answer is `ground_truth`, `answer`, `solution` or verl's `reward_model.ground_truth`; every
other column stays in the metadata (it reaches TRL functions as columns, verl's as extra_info).
`WithRewardFunctions(base, [(function, weight), ...])` scores base.score (zero for GenericTask) plus
the weighted function rewards; parts hold each function's reward and the per-completion counts
`reward_errors` / `reward_timeouts`. With no base task, `correct` means a positive total reward.
`reward_failures(task)` sums the failed calls of every function inside a task (the trainer logs the
step's increase as reward/errors and reward/timeouts).
"""

from __future__ import annotations

from typing import Any

from rlvr.errors import RecordError
from rlvr.tasks.base import Example, Score
from rlvr.tasks.reward_functions import RewardFunction

_ANSWER_KEYS = ("ground_truth", "answer", "solution")


class GenericTask:
    name = "generic"

    def __init__(self, response_prefix: str = "") -> None:
        self.response_prefix = response_prefix

    def examples(self, n: int, seed: int, **difficulty: Any) -> list[Example]:  # noqa: ARG002 - the protocol's
        raise RecordError("task generic has no generator: set data.train_file and data.eval_file")

    def messages(self, example: Example) -> list[dict[str, str]]:
        chat = example.metadata.get("prompt_messages")
        return list(chat) if chat else [{"role": "user", "content": example.prompt}]

    def score(self, completion: str, example: Example) -> Score:  # noqa: ARG002 - the protocol's signature
        return Score(0.0, False, True)  # rows are scored by reward functions alone (WithRewardFunctions)

    def from_record(self, record: dict[str, Any]) -> Example:
        prompt = record.get("prompt")
        metadata = {k: v for k, v in record.items() if k not in ("prompt", *_ANSWER_KEYS, "reward_model")}
        chat = chat_prompt(record)
        if chat is not None:
            metadata["prompt_messages"] = chat
            text = "\n".join(m["content"] for m in chat if m["role"] == "user")
        elif isinstance(prompt, str) and prompt:
            text = prompt
        else:
            raise RecordError("field 'prompt': expected a non-empty string or a chat list")
        answer = next((record[k] for k in _ANSWER_KEYS if k in record), None)
        if answer is None and isinstance(record.get("reward_model"), dict):
            answer = record["reward_model"].get("ground_truth")
        return Example(text, answer, metadata)

    def to_record(self, example: Example) -> dict[str, Any]:
        meta = dict(example.metadata)
        chat = meta.pop("prompt_messages", None)
        return {"prompt": chat or example.prompt, "ground_truth": example.answer, **meta}


CHAT_MARKERS = ("<|im_start|>", "<|start_header_id|>", "[INST]")


def chat_prompt(record: dict[str, Any]) -> list[dict[str, str]] | None:
    """A row's `prompt` when it is a chat list (verl's parquet rows), checked; None otherwise."""
    prompt = record.get("prompt")
    if not isinstance(prompt, list):
        return None
    if not prompt or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in prompt):
        raise RecordError("field 'prompt': a chat list needs {role, content} messages")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


class RowPrompts:
    """A task whose rows keep their own chat prompt (data.row_prompt: keep, the default).

    A row whose `prompt` is a chat list is prompted with it as given; other rows, and generated
    problems, with the task's messages(). Scoring, answers and everything else are the task's.
    A chat list whose text already holds a chat template's markers (Logic-RL's rows: the whole
    templated prompt in one user message) would be templated twice: such a row is refused, naming
    data.row_prompt=task, which lets the task render the question in its own prompt.
    """

    def __init__(self, base: Any) -> None:
        self.base = base
        self.name, self.response_prefix = base.name, base.response_prefix

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.base, attribute)

    def reward_failures(self) -> dict[str, int]:
        return reward_failures(self.base)

    def from_record(self, record: dict[str, Any]) -> Example:
        example = self.base.from_record(record)
        chat = chat_prompt(record)
        if chat is None:
            return example  # type: ignore[no-any-return]
        marker = next((m for m in CHAT_MARKERS if any(m in turn["content"] for turn in chat)), None)
        if marker is not None:
            raise RecordError(f"field 'prompt': the chat list's text already holds chat-template markers "
                              f"({marker!r}); rlvr would template it twice. Set data.row_prompt=task to "
                              "prompt with the task's own messages (the question is read from the row)")
        return Example(example.prompt, example.answer, {**example.metadata, "prompt_messages": chat})

    def messages(self, example: Example) -> list[dict[str, str]]:
        chat = example.metadata.get("prompt_messages")
        return list(chat) if chat else list(self.base.messages(example))

    def score(self, completion: str, example: Example) -> Score:
        return self.base.score(completion, example)  # type: ignore[no-any-return]

    def to_record(self, example: Example) -> dict[str, Any]:
        meta = {k: v for k, v in example.metadata.items() if k != "prompt_messages"}
        record = self.base.to_record(Example(example.prompt, example.answer, meta))
        chat = example.metadata.get("prompt_messages")
        return {**record, "prompt": chat} if chat else record  # type: ignore[no-any-return]


class WithRewardFunctions:
    def __init__(self, base: Any, functions: list[tuple[RewardFunction, float]]) -> None:
        self.base, self.functions = base, functions
        self.name, self.response_prefix = base.name, base.response_prefix

    def __getattr__(self, attribute: str) -> Any:  # examples, messages, from_record, oracle_completion...
        return getattr(self.base, attribute)

    def reward_failures(self) -> dict[str, int]:
        """Failed calls so far, over this wrapper's functions and those inside its base task."""
        inner = reward_failures(self.base)
        return {"errors": inner.get("errors", 0) + sum(f.errors for f, _ in self.functions),
                "timeouts": inner.get("timeouts", 0) + sum(f.timeouts for f, _ in self.functions)}

    def score(self, completion: str, example: Example) -> Score:
        base = self.base.score(completion, example)
        generic = isinstance(self.base, GenericTask)
        total, parts = base.reward, dict(base.parts)
        errors = timeouts = 0
        for i, (function, weight) in enumerate(self.functions):
            call = function(example.prompt, completion, example.answer,
                            str(example.metadata.get("data_source", "")), dict(example.metadata))
            errors += call.status == "error"
            timeouts += call.status == "timeout"
            if call.reward is not None:
                total += weight * call.reward
                parts[f"fn{i}"] = call.reward
            parts.update({f"fn{i}/{k}": v for k, v in call.parts.items()})
        parts["reward_errors"], parts["reward_timeouts"] = float(errors), float(timeouts)
        correct = total > 0 if generic else base.correct
        return Score(total, correct, base.format_ok, parts, base.extracted)


def reward_failures(task: Any) -> dict[str, int]:
    """{"errors": n, "timeouts": n}: the failed reward-function calls inside `task` so far ({} when
    it holds no reward function)."""
    counts = getattr(type(task), "reward_failures", None)
    return counts(task) if callable(counts) else {}


def failure_metrics(task: Any, before: dict[str, int]) -> dict[str, float]:
    """reward/errors and reward/timeouts: the calls that failed since `before` = reward_failures(task)."""
    now = reward_failures(task)
    return {f"reward/{kind}": float(count - before.get(kind, 0)) for kind, count in now.items()}
