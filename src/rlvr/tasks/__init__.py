"""Task plug-ins. `rlvr.tasks.get(name, **options)` returns a Task (see base.py)."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from rlvr.tasks.base import Example, RecordError, Score, Task

# name -> "module:factory"; modules are imported on first use.
TASKS: dict[str, str] = {
    "knights_knaves": "rlvr.tasks.knights_knaves:KnightsKnaves",
    "math": "rlvr.tasks.math:MathTask",
    "countdown": "rlvr.tasks.countdown:Countdown",
}


def get(name: str, **options: Any) -> Task:
    """Build the task `name` with its options; an unknown name lists the valid ones."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; valid tasks: {', '.join(sorted(TASKS))}")
    module_name, factory = TASKS[name].split(":")
    cls = getattr(importlib.import_module(module_name), factory)
    return cls(**options)


__all__ = ["TASKS", "Example", "RecordError", "Score", "Task", "get"]
