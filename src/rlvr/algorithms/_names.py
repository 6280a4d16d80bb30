"""Name tables: look a function up by name and check the options passed to it.

Every family in rlvr.algorithms (advantages, policy losses, KL kinds, aggregations) is one
visible dict from name to function; these helpers turn a wrong name or a misspelt option into
one message that lists what is valid, instead of a KeyError or a TypeError from deep inside.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

F = TypeVar("F")


def lookup(table: Mapping[str, F], name: str, what: str) -> F:
    """table[name]; an unknown name raises ValueError naming the valid ones (and the closest)."""
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be a string, got {type(name).__name__} {name!r}")
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown {what} {name!r}{hint}; valid names: {', '.join(sorted(table))}")
    return table[name]


def check_options(
    fn: Callable[..., Any], options: Mapping[str, Any], what: str, extra: Iterable[str] = ()
) -> None:
    """Raise TypeError if `options` holds a key that `fn` does not take as keyword-only (or `extra`),
    or lacks a keyword-only argument of `fn` that has no default."""
    params = inspect.signature(fn).parameters.values()
    keyword_only = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    accepted = {p.name for p in keyword_only} | set(extra)
    unknown = sorted(set(options) - accepted)
    if unknown:
        valid = ", ".join(sorted(accepted)) or "none"
        raise TypeError(f"{what} got unknown option(s) {unknown}; it accepts: {valid}")
    missing = sorted(
        p.name for p in keyword_only if p.default is inspect.Parameter.empty and p.name not in options
    )
    if missing:
        raise TypeError(f"{what} needs the option(s) {missing}")
