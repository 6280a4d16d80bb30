"""The errors that mean "the input is wrong" (a recipe, a data line, a directory), not a bug.

The command line prints these as one clear message instead of a traceback. This module imports
nothing, so any layer may raise them (tasks included: the dependency rule allows rlvr.errors).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the key and what was expected.

    `key` is the dotted key path the error is about (when there is one): load_config uses it to say
    which override or which recipe line set the value."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class RecordError(ValueError):
    """A data record that cannot be turned into an Example; the message names the field."""


class DataError(ValueError):
    """A data file that cannot be read as records; the message names the file and line."""


class ModelLoadError(ValueError):
    """A model or tokenizer path that cannot be loaded; the message says what to do."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (missing state, written by a different run)."""


class RunDirError(RuntimeError):
    """A run directory that holds something else (a different run, or files without config.yaml)."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, RecordError, DataError, ModelLoadError, CheckpointError, RunDirError,
    FileNotFoundError, FileExistsError, NotADirectoryError,
)
