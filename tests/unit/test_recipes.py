"""Every shipped recipe loads, type-checks and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlvr.config import load_config, stage_value
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


# The published settings of each recipe that reproduces a project's run, as its source scripts set
# them (verl names; the recipe header names the script and commit). A recipe whose header names a
# source must be listed here, so a new reproduction recipe cannot go unchecked.
PUBLISHED = {
    "logic-rl-qwen2.5-7b": {  # Unakar/Logic-RL main_grpo.sh @ 882de6a
        "commit": "882de6ae7a7818865e98b45dab1ac4642eac7235", "train_batch_size": 64, "n": [16],
        "ppo_mini_batch_size": 32, "ppo_epochs": 1, "lr": 3e-7, "max_prompt_length": 400,
        "max_response_length": [2048], "kl_loss_coef": 0.001, "entropy_coeff": 0.001, "weight_decay": 0.01,
        "betas": [0.9, 0.999], "temperature": 1.0, "total_steps": 5 * (4500 // 64),
    },
    # agentica-project/deepscaler scripts/train/run_deepscaler_1.5b_{8k,16k,24k}.sh @ e6080cc
    "deepscaler-1.5b": {
        "commit": "e6080ccd974eb64bd3430f0b36108244a6fee330", "train_batch_size": 128, "n": [8, 16, 16],
        "ppo_mini_batch_size": 64, "ppo_epochs": 1, "lr": 1e-6, "max_prompt_length": 1024,
        "max_response_length": [8192, 16384, 24576], "kl_loss_coef": 0.001, "entropy_coeff": 0.001,
        "weight_decay": 0.01, "betas": [0.9, 0.999], "temperature": 0.6, "stage_steps": [1040, 1520],
    },
}


def _reproductions() -> list[Path]:
    return [p for p in RECIPES if "# Source:" in p.read_text()]


def test_every_reproduction_recipe_is_checked_against_its_source():
    assert sorted(p.stem for p in _reproductions()) == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_reproduction_recipe_derives_the_published_batch_sizes(name):
    path = RECIPES[0].parent / f"{name}.yaml"
    want = PUBLISHED[name]
    assert want["commit"] in path.read_text()  # the header names the source commit
    config = load_config(path)
    rl, data = config.rl, config.data
    sizes = config.derived_sizes()
    steps_at = [0, *want.get("stage_steps", [])]
    # prompts and samples per step, and per optimizer step, at every stage of the run
    for i, step in enumerate(steps_at):
        group = stage_value(rl.group_size_stages, step, rl.group_size)
        assert rl.prompts_per_step == want["train_batch_size"] and group == want["n"][i]
        assert (stage_value(rl.max_new_tokens_stages, step, rl.max_new_tokens)
                == want["max_response_length"][i])
        assert rl.prompts_per_step // rl.mini_batches == want["ppo_mini_batch_size"]
    assert sizes["prompts_per_mini_batch"] == want["ppo_mini_batch_size"]
    assert sizes["sequences_per_mini_batch"] == want["ppo_mini_batch_size"] * want["n"][0]
    assert sizes["optimizer_steps_per_rl_step (mini_batches x ppo_epochs)"] == (
        want["train_batch_size"] // want["ppo_mini_batch_size"] * want["ppo_epochs"])
    if "total_steps" in want:
        assert rl.steps == want["total_steps"]
    assert ([s.start_step for s in rl.group_size_stages]
            == want.get("stage_steps", [])[: len(rl.group_size_stages)])
    assert [s.start_step for s in rl.max_new_tokens_stages] == want.get("stage_steps", [])
    # optimizer, loss terms, sampling, prompt limit
    assert rl.lr == want["lr"] and rl.lr_schedule == "constant" and rl.warmup_steps == 0
    assert rl.weight_decay == want["weight_decay"] and rl.adam_betas == want["betas"]
    assert rl.kl_coef == want["kl_loss_coef"] and rl.kl_kind == "k3" and not rl.kl_in_reward
    assert rl.entropy_coef == want["entropy_coeff"] and rl.temperature == want["temperature"]
    assert rl.advantage == "grpo" and rl.loss == "ppo" and rl.clip_low is None and rl.clip_high is None
    assert rl.ppo_epochs == want["ppo_epochs"] and rl.grad_clip == 1.0
    assert data.max_prompt_tokens == want["max_prompt_length"] and data.require_files
    assert config.context_tokens() == want["max_prompt_length"] + max(want["max_response_length"])
