"""Every shipped recipe loads, type-checks and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlvr.config import load_config
from rlvr.tasks import get

RECIPES = sorted(Path(__file__).resolve().parents[2].joinpath("recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_validates(recipe):
    config = load_config(recipe)
    assert config.name == recipe.stem
    if config.data.task == "reasoning_gym":  # a task on an optional package
        pytest.importorskip("reasoning_gym")
    task = get(config.data.task, **config.data.task_options)  # task options are accepted by the task
    assert task.name == config.data.task
    if config.sft.enabled:
        assert hasattr(task, "solution_trace") or hasattr(task, "oracle_completion")


def test_default_recipe_targets_the_learning_proof():
    config = load_config(RECIPES[0].parent / "kk-tiny.yaml")
    assert config.data.eval_size >= 200 and config.data.eval_difficulty == {"people": 3}
    assert config.device == "cpu" and not config.model.path
