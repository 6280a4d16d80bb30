"""`data.task: generic` and reward functions added to any task (issue 15; not yet wired into the config).

GenericTask reads rows as given (no generator): `prompt` is a string or a chat list (used as given),
the gold answer is `ground_truth`, `answer`, `solution` or verl's `reward_model.ground_truth`; every
other column stays in the metadata (it reaches TRL functions as columns, verl's as extra_info).
`WithRewardFunctions(base, [(function, weight), ...])` scores base.score (zero for GenericTask) plus
the weighted function rewards; parts hold each function's reward and the per-completion counts
`reward_errors` / `reward_timeouts`. With no base task, `correct` means a positive total reward.
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

    def examples(self, n: int, seed: int, **difficulty: Any) -> list[Example]:
        raise RecordError("task generic has no generator: set data.train_file and data.eval_file")

    def messages(self, example: Example) -> list[dict[str, str]]:
        chat = example.metadata.get("prompt_messages")
        return list(chat) if chat else [{"role": "user", "content": example.prompt}]

    def score(self, completion: str, example: Example) -> Score:
        return Score(0.0, False, True)

    def from_record(self, record: dict[str, Any]) -> Example:
        prompt = record.get("prompt")
        metadata = {k: v for k, v in record.items() if k not in ("prompt", *_ANSWER_KEYS, "reward_model")}
        if isinstance(prompt, list):
            if not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in prompt):
                raise RecordError("field 'prompt': a chat list needs {role, content} messages")
            metadata["prompt_messages"] = prompt
            text = "\n".join(str(m["content"]) for m in prompt if m["role"] == "user")
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


class WithRewardFunctions:
    def __init__(self, base: Any, functions: list[tuple[RewardFunction, float]]) -> None:
        self.base, self.functions = base, functions
        self.name, self.response_prefix = base.name, base.response_prefix

    def __getattr__(self, attribute: str) -> Any:  # examples, messages, from_record, oracle_completion...
        return getattr(self.base, attribute)

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
