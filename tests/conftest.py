"""Shared fixtures: a tiny offline model built once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from rlvr.models import init_model

    return init_model(tmp_path_factory.mktemp("models") / "tiny-kk", preset="tiny",
                      tasks=("knights_knaves",), seed=0)
