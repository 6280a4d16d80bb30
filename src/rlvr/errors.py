"""The errors that mean "the input is wrong" (a recipe, a data line, a directory), not a bug.

The command line prints these as one clear message instead of a traceback.
"""

from __future__ import annotations


def _user_errors() -> tuple[type[BaseException], ...]:
    from rlvr.config import ConfigError
    from rlvr.tasks.base import RecordError

    found: list[type[BaseException]] = [ConfigError, RecordError, FileNotFoundError, FileExistsError,
                                        NotADirectoryError]
    for module, name in (("rlvr.data.io", "DataError"), ("rlvr.trainers.pipeline", "RunDirError"),
                         ("rlvr.trainers.checkpoint", "CheckpointError"), ("rlvr.models.loading", "ModelLoadError")):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


USER_ERRORS = _user_errors()
