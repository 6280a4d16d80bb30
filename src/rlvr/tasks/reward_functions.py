"""Reward functions from outside the package (`reward.function(s)`, docs/byo.md).

A spec is `path/to/file.py:name` or `package.module:name`. Two signatures are accepted:
  verl: compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | dict
        (a dict's "score" is the reward; its other numeric keys are returned as parts)
  TRL:  f(prompts, completions, **columns) -> list[float | None]   (None: not applicable)
`load_reward_function` imports the function in this process and detects its signature, so a file
that does not import, or a function with neither signature, fails before any work with one message
naming the spec. `RewardFunction.__call__` runs it in the killable worker pool of
rlvr.tasks._timeout with a per-call deadline; a raise, a hang or a non-number gives `error_reward`
and is counted in `errors` / `timeouts`. The first error and the first timeout each keep their
input in `first_failures` and are reported once through `report` (the run's console log), with an
excerpt of the prompt and the completion; the run goes on.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlvr.tasks._imports import SpecError, import_object
from rlvr.tasks._timeout import shared_pool

_HANDLER = "rlvr.tasks.reward_functions:_serve_request"
VERL, TRL = "verl", "trl"


class RewardFunctionError(ValueError):
    """A reward function spec that cannot be used; the message names the spec."""


def _import(spec: str) -> Callable[..., Any]:
    try:
        function = import_object(spec, "reward function", "function")
    except SpecError as error:
        raise RewardFunctionError(str(error)) from None
    if not callable(function):
        location, _, name = spec.rpartition(":")
        raise RewardFunctionError(f"reward function {spec!r}: {location} has no function {name!r}")
    return function  # type: ignore[no-any-return]


def signature_kind(function: Callable[..., Any], spec: str) -> str:
    """"verl" or "trl", by parameter names; anything else is a RewardFunctionError naming the spec."""
    try:
        names = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        names = []
    if names[:3] == ["data_source", "solution_str", "ground_truth"]:
        return VERL
    if names[:2] == ["prompts", "completions"]:
        return TRL
    raise RewardFunctionError(
        f"reward function {spec!r} has parameters {names}; expected verl's compute_score(data_source, "
        "solution_str, ground_truth, extra_info=None) or TRL's f(prompts, completions, **columns)")


@dataclass(frozen=True)
class Call:
    """One scored completion: reward (None: not applicable, TRL), parts, status ok|error|timeout."""

    reward: float | None
    parts: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    detail: str = ""


EXCERPT_CHARS = 300


def excerpt(text: Any, limit: int = EXCERPT_CHARS) -> str:
    """`text` (as a string) cut to its first and last limit/2 characters, for one log line."""
    text = str(text)
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} [... {len(text) - 2 * half} characters ...] {text[-half:]}"


@dataclass
class RewardFunction:
    """A loaded reward function; calling it scores one completion within `timeout_seconds`.

    errors / timeouts count the failed calls since loading; first_failures holds, per status
    ("error", "timeout"), the first failing call's input and reason; report(message) is called once
    per status, at its first occurrence (None: not reported).
    """

    spec: str
    timeout_seconds: float = 10.0
    error_reward: float = 0.0
    workers: int = 2
    kind: str = ""
    errors: int = 0
    timeouts: int = 0
    first_failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: Callable[[str], None] | None = None

    def __call__(self, prompt: str, completion: str, ground_truth: Any, data_source: str = "",
                 extra_info: dict[str, Any] | None = None) -> Call:
        request = {"spec": self.spec, "kind": self.kind, "prompt": prompt, "completion": completion,
                   "ground_truth": ground_truth, "data_source": data_source, "extra_info": extra_info or {}}
        outcome = shared_pool(_HANDLER, self.workers).call(request, self.timeout_seconds)
        if outcome.status == "ok" and outcome.value is not None and "error" not in outcome.value:
            value = outcome.value
            return Call(value["reward"], {k: float(v) for k, v in value.get("parts", {}).items()})
        status = "timeout" if outcome.status == "timeout" else "error"
        detail = outcome.detail if outcome.status != "ok" else str((outcome.value or {}).get("error"))
        if status == "timeout":
            self.timeouts += 1
        else:
            self.errors += 1
        if status not in self.first_failures:
            self.first_failures[status] = {"status": status, "detail": detail, "input": request}
            if self.report is not None:
                self.report(self.describe_failure(status))
        return Call(self.error_reward, {}, status, detail)

    def describe_failure(self, status: str) -> str:
        """One log line about the first call that ended in `status`, with excerpts of its input."""
        failure = self.first_failures[status]
        request = failure["input"]
        what = (f"missed its {self.timeout_seconds:g}s deadline" if status == "timeout"
                else f"failed ({failure['detail']})")
        return (f"reward function {self.spec} {what}; such calls get reward {self.error_reward:g} "
                f"(reward.error_reward), are counted in reward/{status}s and the run goes on. First input: "
                f"data_source={request['data_source']!r} prompt={excerpt(request['prompt'])!r} "
                f"completion={excerpt(request['completion'])!r}")


def load_reward_function(spec: str, timeout_seconds: float = 10.0, error_reward: float = 0.0,
                         report: Callable[[str], None] | None = None) -> RewardFunction:
    """Import `spec` here (errors now, naming it) and return a bounded-time caller."""
    location, _, name = spec.rpartition(":")
    if location.endswith(".py"):
        spec = f"{os.path.abspath(location)}:{name}"  # the worker's cwd need not be ours
    kind = signature_kind(_import(spec), spec)
    return RewardFunction(spec, timeout_seconds, error_reward, kind=kind, report=report)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"reward function returned {value!r}, expected a finite number")
    return float(value)


def _serve_request(request: dict[str, Any]) -> dict[str, Any]:
    """Worker side: call the function once; raises become {"error": ...} replies (see _timeout)."""
    function = _import(request["spec"])
    parts: dict[str, float] = {}
    if request["kind"] == VERL:
        value = function(request["data_source"], request["completion"], request["ground_truth"],
                         request["extra_info"])
        if isinstance(value, dict):
            parts = {k: float(v) for k, v in value.items() if k != "score" and isinstance(v, int | float)}
            value = value.get("score")
        return {"reward": _number(value), "parts": parts}
    columns = {key: [val] for key, val in request["extra_info"].items()}
    columns.setdefault("ground_truth", [request["ground_truth"]])
    values = function([request["prompt"]], [request["completion"]], **columns)
    if not isinstance(values, list | tuple) or len(values) != 1:
        raise TypeError(f"reward function returned {values!r}, expected a list of one value per completion")
    return {"reward": None if values[0] is None else _number(values[0]), "parts": parts}
