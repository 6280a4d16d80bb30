"""The RL stage's size and memory estimate that `rlvr config` and `rlvr run` print at start-up."""

from __future__ import annotations

import subprocess
import sys

from rlvr.config import load_config
from rlvr.trainers import budget


def test_stage_sizes_follow_the_schedules() -> None:
    config = load_config("recipes/kk-tiny.yaml",
                         ["rl.steps=10", "rl.group_size_stages=[{start_step: 4, value: 8}]",
                           "rl.max_new_tokens_stages=[{start_step: 6, value: 100}]"])
    sizes = {k.split(" ")[0]: v for k, v in budget.rl_stage_sizes(config).items()}
    assert sizes["rl_samples_per_step"] == 8 * 16 and sizes["rl_samples_per_optimizer_step"] == 16
    assert sizes["rl_optimizer_steps"] == 80
    assert sizes["rl_samples_total"] == 4 * 128 + 6 * 64
    assert sizes["rl_completion_tokens_at_most"] == 4 * 128 * 400 + 2 * 64 * 400 + 4 * 64 * 100
    dynamic = load_config("recipes/kk-tiny.yaml", ["rl.steps=10", "rl.zero_variance=dynamic_sampling"])
    assert (budget.rl_stage_sizes(dynamic)["rl_generated_samples_at_most (dynamic sampling refills)"]
            == 4 * 1280)


def test_memory_estimate_grows_with_the_batch_and_warns_past_the_memory() -> None:
    config = load_config("recipes/kk-tiny.yaml")
    shape = budget.model_shape(config)
    assert shape is not None and 0.9e6 < shape.params < 1.5e6  # the tiny preset
    small = budget.rl_memory(config, shape, prompt_tokens=60)
    assert small["total"] == sum(v for k, v in small.items() if k != "total")
    assert budget.memory_warning(config, small, (16 * budget.GiB, "test memory")) is None
    big = load_config("recipes/kk-tiny.yaml", ["rl.prompts_per_step=512", "rl.group_size=64"])
    parts = budget.rl_memory(big, shape, prompt_tokens=60)
    assert parts["kv_cache"] == small["kv_cache"] * 512 * 64 // 128
    message = budget.memory_warning(big, parts, (16 * budget.GiB, "test memory"))
    assert (message is not None and "rl.prompts_per_step x rl.group_size = 32768" in message
            and "16.0 GiB" in message)
    assert budget.memory_warning(big, parts, None) is None  # memory unknown: nothing to compare with


def test_under_lora_only_the_adapters_have_gradients_and_optimizer_state(tmp_path) -> None:
    """A 7B-shaped model (Qwen2.5-7B's config): full training holds weights, gradients, AdamW m and v
    (16 bytes a parameter); LoRA holds the frozen weights once and those four for the adapters."""
    import json

    (tmp_path / "config.json").write_text(json.dumps({
        "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "intermediate_size": 18944, "vocab_size": 152064, "tie_word_embeddings": False}))
    full = load_config("recipes/kk-tiny.yaml", [f"model.path={tmp_path}"])
    shape = budget.model_shape(full)
    assert shape is not None and 7.0e9 < shape.params < 7.7e9
    lora = load_config("recipes/kk-tiny.yaml", [f"model.path={tmp_path}", "model.lora.r=16"])
    # r x (in + out) per projection: q 3584+3584, k and v 3584+512, o 3584+3584, gate and up
    # 3584+18944, down 18944+3584 -> 16 x 100352 per layer
    adapters = 28 * 16 * (2 * 7168 + 2 * 4096 + 3 * 22528)
    assert budget.lora_params(lora, shape) == adapters
    assert budget.lora_params(full, shape) == 0
    state = {name: budget.rl_memory(c, shape, 60)["weights_and_optimizer"] for name, c in (("full", full),
                                                                                        ("lora", lora))}
    assert state["full"] == 16 * shape.params and state["lora"] == 4 * shape.params + 16 * adapters
    kl = load_config("recipes/kk-tiny.yaml", [f"model.path={tmp_path}", "model.lora.r=16", "rl.kl_coef=0.01"])
    with_ref = state["lora"] + 4 * (shape.params + adapters)
    assert budget.rl_memory(kl, shape, 60)["weights_and_optimizer"] == with_ref
    only_q = load_config("recipes/kk-tiny.yaml",
                         [f"model.path={tmp_path}", "model.lora.target_modules=[q_proj]"])
    assert budget.lora_params(only_q, shape) == 28 * 16 * 7168
    lines, _ = budget.budget_lines(lora)
    assert f"{adapters / 1e6:.2f}M of LoRA adapters trained" in lines[-1]


def test_rlvr_config_prints_the_stage_and_warns_on_a_batch_too_big() -> None:
    def config(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rlvr.cli", "config",
                               "recipes/kk-tiny.yaml", *overrides],
                              capture_output=True, text=True, check=True)

    out = config()
    assert "# rl_samples_total (the stage's trained samples): 8,960" in out.stdout
    assert "# rl_memory_estimate:" in out.stdout and out.stderr == ""
    huge = config("rl.prompts_per_step=4096", "rl.group_size=256", "rl.max_new_tokens=8192")
    assert "rlvr: warning: the RL batch of this recipe needs about" in huge.stderr
