"""The public face every task shares (see docs/design.md, "Tasks").

A task is a plug-in: generator + solver + prompt + verifier in one module. It is deterministic
per (seed, index) and its scorer is total: `score` never raises, prints or hangs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Example:
    """One problem.

    prompt:   the problem text shown to the model (the user message's content).
    answer:   the gold answer in the task's own form (JSON-serialisable).
    metadata: difficulty and provenance, e.g. {"people": 3, "source": "generated", "index": 7}.
    """

    prompt: str
    answer: Any
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """The verdict on one completion.

    reward:    the scalar the RL step uses, by the task's reward scheme.
    correct:   the answer alone is right (format ignored).
    format_ok: the format alone holds (answer ignored).
    parts:     named components of the reward (e.g. {"answer": 2.0, "format": 1.0}), for metrics.
    """

    reward: float
    correct: bool
    format_ok: bool
    parts: dict[str, float] = field(default_factory=dict)
    extracted: str | None = None  # the answer text the verifier judged (for samples files)


@runtime_checkable
class Task(Protocol):
    name: str
    # Text the prompt already supplies at the start of the assistant turn (e.g. "<think>\n" for
    # Logic-RL's pre-filled template). Completions are scored as the text that follows it.
    response_prefix: str

    def examples(self, n: int, seed: int, **difficulty: Any) -> list[Example]: ...

    def messages(self, example: Example) -> list[dict[str, str]]: ...

    def score(self, completion: str, example: Example) -> Score: ...

    def from_record(self, record: dict[str, Any]) -> Example: ...

    def to_record(self, example: Example) -> dict[str, Any]: ...
