"""Task plug-ins. `rlvr.tasks.get(name, **options)` returns a Task (see base.py)."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from rlvr.errors import RecordError
from rlvr.tasks.base import Example, Score, Task

# name -> "module:factory"; modules are imported on first use.
TASKS: dict[str, str] = {
    "knights_knaves": "rlvr.tasks.knights_knaves:KnightsKnaves",
    "math": "rlvr.tasks.math:MathTask",
    "countdown": "rlvr.tasks.countdown:Countdown",
}
# Tasks without a generator (rows from data files, rewards from reward functions): not in TASKS,
# whose every entry keeps the generating-task contract of tests/tasks/test_contract.py.
ROW_TASKS: dict[str, str] = {"generic": "rlvr.tasks.generic:GenericTask"}


def get(name: str, **options: Any) -> Task:
    """Build the task `name` with its options; an unknown name lists the valid ones."""
    table = {**TASKS, **ROW_TASKS}
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; valid tasks: {', '.join(sorted(table))}")
    module_name, factory = table[name].split(":")
    cls = getattr(importlib.import_module(module_name), factory)
    return cls(**options)


__all__ = ["ROW_TASKS", "TASKS", "Example", "RecordError", "Score", "Task", "get"]
