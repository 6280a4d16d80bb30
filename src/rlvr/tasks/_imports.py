"""Import an object named by a spec: `path/to/file.py:name` or `package.module:name`.

Shared by reward functions (`reward.function`) and tasks from outside the package (`data.task`).
Every failure is a SpecError whose message starts with "<what> '<spec>':" and says what is wrong
(no such file, the module does not import, no such name), so a recipe fails at start-up with one
line instead of a traceback from user code.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any


class SpecError(ValueError):
    """A spec that names nothing importable; the message names the spec."""


def is_spec(text: str) -> bool:
    """Whether `text` looks like `location:name` (a spec) rather than a registered name."""
    location, sep, name = text.rpartition(":")
    return bool(sep and location and name)


def import_object(spec: str, what: str = "object", noun: str = "attribute") -> Any:
    """The object `spec` names. A file path is imported as a module of its own (once per process,
    keyed by its absolute path); a dotted module name through the normal import system."""
    location, sep, name = spec.rpartition(":")
    if not sep or not location or not name:
        raise SpecError(f"{what} {spec!r}: expected 'path/to/file.py:name' or 'module:name'")
    try:
        if location.endswith(".py"):
            module = _import_file(spec, location, what)
        else:
            module = importlib.import_module(location)
    except SpecError:
        raise
    except Exception as error:  # any import failure of user code: one message naming it
        raise SpecError(f"{what} {spec!r}: {location} does not import: "
                        f"{type(error).__name__}: {error}") from None
    if not hasattr(module, name):
        raise SpecError(f"{what} {spec!r}: {location} has no {noun} {name!r}")
    return getattr(module, name)


def _import_file(spec: str, location: str, what: str) -> Any:
    if not os.path.isfile(location):
        raise SpecError(f"{what} {spec!r}: file {location} does not exist")
    module_name = "rlvr_user_" + str(abs(hash(os.path.abspath(location))))
    module = sys.modules.get(module_name)
    if module is None:
        file_spec = importlib.util.spec_from_file_location(module_name, location)
        assert file_spec is not None and file_spec.loader is not None
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[module_name] = module  # before exec: dataclasses and pickling look it up
        try:
            file_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return module
