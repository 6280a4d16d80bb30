"""Task plug-ins. `rlvr.tasks.get(name, **options)` returns a Task (see base.py).

A name is one of rlvr's own tasks (TASKS, ROW_TASKS), a task another package registers under the
entry-point group `rlvr.tasks` (pyproject.toml: `[project.entry-points."rlvr.tasks"] my_task =
"my_pkg.tasks:MyTask"`), or a spec `my_pkg.tasks:MyTask` / `path/to/file.py:MyTask` (docs/byo.md).
Whatever it names is called with the task options and must return an object with every member of
the Task protocol: `check_task` says, in one message, what is missing.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any

from rlvr.errors import RecordError
from rlvr.tasks._imports import SpecError, import_object, is_spec
from rlvr.tasks.base import Example, GenerationOption, Score, Task

# name -> "module:factory"; modules are imported on first use.
TASKS: dict[str, str] = {
    "knights_knaves": "rlvr.tasks.knights_knaves:KnightsKnaves",
    "math": "rlvr.tasks.math:MathTask",
    "countdown": "rlvr.tasks.countdown:Countdown",
}
# Tasks without a generator (rows from data files, rewards from reward functions): not in TASKS,
# whose every entry keeps the generating-task contract of rlvr.tasks.contract.
ROW_TASKS: dict[str, str] = {"generic": "rlvr.tasks.generic:GenericTask",
                             "mixed": "rlvr.tasks.mixed:MixedTask"}
# Tasks on optional packages (not in TASKS: the contract test over TASKS runs without them;
# tests/tasks/test_reasoning_gym.py checks each when its package is installed).
OPTIONAL_TASKS: dict[str, str] = {"reasoning_gym": "rlvr.tasks.reasoning_gym:ReasoningGymTask"}
ENTRY_POINT_GROUP = "rlvr.tasks"
# The Task protocol's members (base.Task): attributes, then methods.
ATTRIBUTES = ("name", "response_prefix")
METHODS = ("examples", "messages", "score", "from_record", "to_record")
SIGNATURES = ("name: str, response_prefix: str, examples(n, seed, **difficulty), messages(example), "
              "score(completion, example), from_record(record), to_record(example)")


class TaskError(ValueError):
    """A task name or spec that gives no usable Task; the message names it and what is wrong."""


def registered() -> dict[str, str]:
    """Every task name -> where it lives: rlvr's own, then the `rlvr.tasks` entry points."""
    table = {**TASKS, **ROW_TASKS, **OPTIONAL_TASKS}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        table.setdefault(point.name, point.value)
    return table


def factory(name: str) -> Any:
    """The class (or function) that builds task `name`: imported, not called."""
    if is_spec(name):
        try:
            return import_object(name, "task", "class or function")
        except SpecError as error:
            raise TaskError(str(error)) from None
    builtin = {**TASKS, **ROW_TASKS, **OPTIONAL_TASKS}
    if name in builtin:
        module_name, attribute = builtin[name].split(":")
        return getattr(importlib.import_module(module_name), attribute)
    points = {p.name: p for p in entry_points(group=ENTRY_POINT_GROUP)}
    if name in points:
        try:
            return points[name].load()
        except Exception as error:  # the other package's import failure, named
            raise TaskError(f"task {name!r} (entry point {points[name].value} of group {ENTRY_POINT_GROUP}) "
                            f"does not load: {type(error).__name__}: {error}") from None
    table = registered()
    close = difflib.get_close_matches(name, table, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise TaskError(f"unknown task {name!r}{hint}; valid tasks: {', '.join(sorted(table))}, or a spec "
                    "'my_pkg.module:MyTask' / 'path/to/file.py:MyTask'")


def check_task(task: Any, name: str) -> None:
    """Raise TaskError naming every Task member `task` lacks (or has of the wrong kind)."""
    missing = [m for m in (*ATTRIBUTES, *METHODS) if not hasattr(task, m)]
    wrong = [f"{m} is not a str" for m in ATTRIBUTES
             if hasattr(task, m) and not isinstance(getattr(task, m), str)]
    wrong += [f"{m} is not callable" for m in METHODS if hasattr(task, m) and not callable(getattr(task, m))]
    if missing or wrong:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + wrong
        raise TaskError(f"task {name!r} ({type(task).__name__}) is not a rlvr Task: {'; '.join(problems)} "
                        f"(a Task has {SIGNATURES}; see docs/byo.md)")


def get(name: str, **options: Any) -> Task:
    """Build the task `name` with its options and check it against the Task protocol.

    An unknown name lists the valid ones; a spec that does not import, or builds an object that is
    not a Task, is a TaskError naming it. A bad option is the factory's own TypeError/ValueError."""
    build = factory(name)
    if not callable(build):
        raise TaskError(f"task {name!r} is a {type(build).__name__}, expected a class or a function "
                        "returning a Task")
    try:
        task = build(**options)
    except ImportError as error:  # a task on an optional package that is not installed
        raise TaskError(f"task {name!r}: {error}") from None
    check_task(task, name)
    return task  # type: ignore[no-any-return]


def class_default(name: str, attribute: str, default: Any) -> Any:
    """A class-level attribute of task `name` (e.g. default_difficulty) without building it."""
    return getattr(factory(name), attribute, default)


__all__ = ["OPTIONAL_TASKS", "ROW_TASKS", "TASKS", "Example", "GenerationOption", "RecordError", "Score",
           "Task", "TaskError", "check_task", "get", "registered"]
