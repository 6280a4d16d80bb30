"""`model.engine: vllm` through `rlvr run` on the shrunk kk-tiny recipe (vLLM colocated, no Ray).

vLLM samples with its own generator, so its rollouts are not the torch engine's; what must hold:
* the run finishes with the summary.json contract, one metrics row per RL step, the update is not
  a no-op (nonzero gradient) and its statistics are finite;
* the learner's weights reach vLLM after every update: with rl.tis_cap set the loop measures the
  engine's log-probs against the learner's before each update (rollout/logprob_abs_diff_max), and
  in fp32 that gap stays at rounding level at every step, which a missed push (stale weights after
  a step with lr 1e-3) would break;
* the update vLLM's rollouts give is the update the torch engine's log-probs would give for the
  same tokens: rewards are the task's on the same tokens, and the importance weights are 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from rlvr.config import load_config  # noqa: E402
from rlvr.trainers import pipeline  # noqa: E402

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "kk-tiny.yaml"
RL_STEPS = 3
SHRINK = [
    "threads=1", "sft.steps=10", "sft.data_size=200", "sft.batch_size=16", "data.train_size=100",
    "data.eval_size=8", f"rl.steps={RL_STEPS}", "rl.prompts_per_step=4",
    "rl.mini_batches=2", "rl.group_size=4", "rl.max_new_tokens=48", "rl.length_reward.kind=overlong",
    "rl.length_reward.cache_tokens=48", "rl.lr=1e-3", "rl.tis_cap=2.0", "eval.max_new_tokens=48",
    "eval.samples=0", "logging.progress=false",
]


def run(out_dir: Path, model_dir: Path, engine: str, extra: tuple[str, ...] = ()) -> list[dict]:
    config = load_config(str(RECIPE),
                         [f"out_dir={out_dir}", f"model.path={model_dir}", f"model.engine={engine}",
                          *SHRINK, *extra])
    summary = pipeline.run(config)
    assert summary["rl_steps_done"] == RL_STEPS
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("phase") == "rl"]


def test_an_rl_run_on_vllm_syncs_weights_every_step(tiny_model_dir: Path, tmp_path: Path):
    rows = run(tmp_path / "vllm", tiny_model_dir, "vllm")
    reference = run(tmp_path / "torch", tiny_model_dir, "torch")
    assert [r["step"] for r in rows] == list(range(1, RL_STEPS + 1))  # steps count 1..N
    for row, ref in zip(rows, reference):
        print(f"step {row['step']}: vllm gap max {row['rollout/logprob_abs_diff_max']:.2e}, "
              f"torch engine gap max {ref['rollout/logprob_abs_diff_max']:.2e}; grad_norm "
              f"{row['actor/grad_norm']:.3f} vs {ref['actor/grad_norm']:.3f}")
        assert row["rollout/logprob_abs_diff_max"] < 1e-4  # fp32: vLLM holds the learner's current weights
        assert abs(row["rollout/tis_weight_mean"] - 1.0) < 1e-4
        assert row["actor/grad_norm"] > 0
        assert set(row) >= set(ref) - {"perf/engine_tokens_per_s"}  # the same metrics as the torch run


def test_a_lora_run_on_vllm_gets_the_merged_adapter_every_step(tiny_model_dir: Path, tmp_path: Path):
    """model.lora with vLLM: the adapter, merged into the base weights, reaches vLLM after every
    update (SFT trains the adapter first, so it is nonzero from the first RL step on)."""
    pytest.importorskip("peft")
    rows = run(tmp_path / "vllm-lora", tiny_model_dir, "vllm", ("model.lora.r=8",))
    assert [r["step"] for r in rows] == list(range(1, RL_STEPS + 1))
    for row in rows:
        assert row["rollout/logprob_abs_diff_max"] < 1e-4  # vLLM samples from the current merged adapter
    # the adapter moved before a later step was checked (a step whose group rewards are all equal,
    # e.g. every completion truncated, has no gradient)
    assert any(row["actor/grad_norm"] > 0 for row in rows[:-1]), [row["actor/grad_norm"] for row in rows]
