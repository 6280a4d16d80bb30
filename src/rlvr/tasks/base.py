"""The public face every task shares (see docs/design.md, "Tasks").

A task is a plug-in: generator + solver + prompt + verifier in one module. It is deterministic
per (seed, index) and its scorer is total: `score` never raises, prints or hangs.

Besides the Task protocol's members, a task class may declare what generic tools would otherwise
have to know about it (each optional; the default in brackets):

  difficulty_keys: tuple[str, ...]       metadata keys that name a difficulty: `rlvr data stats`
                                         counts them, evaluation breaks accuracy down by the first
                                         one an example has [every scalar metadata entry / the
                                         generic keys "difficulty", "level"]
  generation_options: tuple[GenerationOption, ...]
                                         difficulty keywords of examples() that `rlvr data gen`
                                         offers as flags, e.g. --people [none: --difficulty k=v]
  record_match(record) -> int            a static method: how surely a data row is this task's
                                         (0 not at all, 1 by common fields such as `problem`, 2 by
                                         fields of the task's own schema); `rlvr data stats` without
                                         --task picks the highest [0: never guessed]
  text_rows: bool                        rows carry their problem as text (a field such as
                                         `problem`); False: only the task's prompt has it (countdown's
                                         nums + target), so `rlvr data dedup` reads benchmark rows
                                         through the task [True]
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


@dataclass(frozen=True)
class GenerationOption:
    """A difficulty keyword of `task.examples` that `rlvr data gen` offers as the flag --NAME.

    name:    the keyword (the flag spells `_` as `-`).
    help:    the flag's help text (say the task's default).
    type:    int, float or str: what each value on the command line is parsed as.
    several: the flag takes one or more values (a list; one value is passed on as a scalar).
    """

    name: str
    help: str
    type: type = int
    several: bool = False


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
