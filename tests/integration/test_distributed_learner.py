"""The data-parallel learner (rlvr.distributed.learner) against the single-process RL step.

Two CPU processes joined by gloo run `dp_minibatch_step` with FSDP2 (fully_shard) and with replicated
weights; their gradient and updated weights must equal those of rlvr.trainers.rl.minibatch_step in
one process, for several loss settings, with micro-batches uneven across ranks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlvr import algorithms
from rlvr.config import RLConfig
from rlvr.distributed.launch import spawn
from rlvr.distributed.learner import (
    DataParallel,
    apply_gradient_checkpointing,
    called_modules,
    dp_minibatch_step,
    full_state_dict,
    plan_micro_batches,
    shard_model,
)
from rlvr.models.native import NativeCausalLM
from rlvr.trainers.rl import Knobs, Learner, RolloutBatch, StepData, minibatch_step, padded

CFG = dict(model_type="qwen2", vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=True, max_position_embeddings=256)
SCENARIOS = {
    # name: (RLConfig overrides, use old log-probs, use a reference model)
    "ppo_token_mean": ({}, False, False),
    "ppo_old_kl_seq_mean": ({"loss_agg": "seq-mean-token-mean", "kl_coef": 0.1, "clip_high": 0.28}, True,
                            True),
    "sum_norm": ({"loss_agg": "seq-mean-token-sum-norm"}, True, False),
    # The entropy bonus is a token-mean per micro-batch weighted like the loss, so it is independent of
    # how sequences are split into micro-batches only under token-mean aggregation (see the report).
    "entropy_bonus_token_mean": ({"entropy_coef": 0.01}, True, False),
}


class GradRecorder(torch.optim.SGD):
    """SGD that keeps a full copy of every gradient it steps with (a test double for the optimizer)."""

    def __init__(self, params, names):
        super().__init__(params, lr=0.0)
        self.names, self.seen = names, {}

    def step(self, closure=None):
        for name, p in zip(self.names, self.param_groups[0]["params"]):
            g = p.grad
            self.seen[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
        return super().step(closure)


def make_batch(seed: int = 0) -> RolloutBatch:
    rng = np.random.default_rng(seed)
    batch = RolloutBatch()
    for g in range(3):
        prompt = rng.integers(1, CFG["vocab_size"], size=int(rng.integers(3, 9))).tolist()
        for _ in range(4):
            n = int(rng.integers(2, 15))
            batch.prompt_ids.append(prompt)
            batch.completion_ids.append(rng.integers(1, CFG["vocab_size"], size=n).tolist())
            batch.engine_logprobs.append((-rng.random(n) * 3).tolist())
            batch.rewards.append(float(rng.integers(0, 2)))
            batch.group_ids.append(g)
    return batch


def inputs(overrides: dict, use_old: bool, use_ref: bool):
    """(batch, cfg, knobs, width, advantages, loss_mask, old_lp, ref_lp) for one scenario."""
    batch = make_batch()
    cfg = RLConfig(micro_batch_tokens=40, **overrides)
    knobs = Knobs(difficulty={}, max_new_tokens=16, group_size=4, temperature=0.9, lr=1e-2, stage=0)
    width = max(len(c) for c in batch.completion_ids)
    lengths = torch.tensor([len(c) for c in batch.completion_ids])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
    adv = algorithms.compute_advantages("grpo", torch.tensor(batch.rewards),
                                        torch.tensor(batch.group_ids), mask)
    old_lp = padded(batch.engine_logprobs, width) if use_old else None
    ref_lp = (padded(batch.engine_logprobs, width) * 0.5) if use_ref else None
    return batch, cfg, knobs, width, adv, mask, old_lp, ref_lp


def new_model() -> NativeCausalLM:
    torch.manual_seed(0)
    return NativeCausalLM(CFG)


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    # eps 1e-6, not 1e-8: Adam divides by |g| + eps, so with a smaller eps a gradient entry near
    # zero turns float rounding (~1e-10 between two correct forward paths) into a full-size update.
    return torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-6)


def run_step(model, optimizer, scenario: str, step_fn, **extra):
    batch, cfg, knobs, width, adv, mask, old_lp, ref_lp = inputs(*SCENARIOS[scenario])
    index = list(range(len(batch.completion_ids)))
    return step_fn(Learner(model, optimizer, torch.device("cpu"), True),
                   StepData(batch, adv, mask, old_lp, ref_lp),
                   index, cfg, knobs, **extra)


def single_process(scenario: str):
    """Reference: the trainer's own step; gradient, weights after an AdamW step, metrics."""
    model = new_model()
    recorder = GradRecorder(model.parameters(), [n for n, _ in model.named_parameters()])
    stats = run_step(model, recorder, scenario, minibatch_step)
    model = new_model()
    run_step(model, adamw(model), scenario, minibatch_step)
    return recorder.seen, {k: v.clone() for k, v in model.state_dict().items()}, stats


def ranked(rank: int, world: int, strategy: str) -> dict:
    """One rank's gradient, updated weights and metrics for every scenario (run under `spawn`)."""
    dp = DataParallel(rank, world, strategy)  # type: ignore[arg-type]
    out = {}
    for scenario in SCENARIOS:
        model = shard_model(new_model(), dp)
        recorder = GradRecorder(model.parameters(), [n for n, _ in model.named_parameters()])
        stats = run_step(model, recorder, scenario, dp_minibatch_step, dp=dp)
        model = shard_model(new_model(), dp)
        run_step(model, adamw(model), scenario, dp_minibatch_step, dp=dp)
        out[scenario] = (recorder.seen, full_state_dict(model), stats)
    return out


def assert_close_dicts(got: dict, want: dict, atol: float) -> None:
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=1e-4, msg=name)


def check_against_reference(results: dict) -> None:
    assert results
    for scenario in results:
        want_grad, want_weights, want_stats = single_process(scenario)
        grad, weights, stats = results[scenario]
        assert any(float(g.abs().max()) > 1e-4 for g in want_grad.values())  # a gradient to compare
        assert_close_dicts(grad, want_grad, atol=1e-5)
        assert_close_dicts(weights, want_weights, atol=1e-5)
        for key in ("actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/grad_norm",
                    "actor/logprob_mismatch", "actor/pg_clipfrac"):
            assert stats[key] == pytest.approx(want_stats[key], rel=1e-4, abs=1e-6), (scenario, key)


# -- planning ----------------------------------------------------------------------------------


def test_plan_covers_every_sequence_once_with_equal_micro_batch_counts():
    lengths = [30, 5, 17, 9, 9, 41, 1, 22, 3, 12]
    for world in (1, 2, 3):
        for padded_rows in (False, True):
            plan = plan_micro_batches(lengths, token_budget=40, world_size=world, padded=padded_rows)
            assert len(plan) == world
            assert len({len(bins) for bins in plan}) == 1  # same number of passes on every rank
            flat = [i for bins in plan for b in bins for i in b]
            assert sorted(flat) == list(range(len(lengths)))
            for bins in plan:
                for b in bins:
                    cost = (len(b) * max(lengths[i] for i in b) if padded_rows and b
                            else sum(lengths[i] for i in b))
                    assert len(b) <= 1 or cost <= 40
    loads = [sum(lengths[i] for b in bins for i in b) for bins in plan_micro_batches(lengths, 40, 2)]
    assert abs(loads[0] - loads[1]) <= max(lengths)  # LPT keeps ranks within one sequence


def test_plan_rejects_a_zero_budget():
    with pytest.raises(ValueError, match="token_budget"):
        plan_micro_batches([3], 0)


def test_native_layer_units_are_the_modules_its_forward_calls():
    model = new_model()
    layer = model.model.layers[0]
    units = called_modules(layer)
    assert layer.mlp in units and layer.self_attn.q_proj in units and layer.input_layernorm in units
    assert layer not in units and layer.self_attn not in units


# -- one process ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_world_of_one_equals_the_trainer_step(scenario: str):
    dp = DataParallel(0, 1, "replicate")
    model = new_model()
    recorder = GradRecorder(model.parameters(), [n for n, _ in model.named_parameters()])
    stats = run_step(model, recorder, scenario, dp_minibatch_step, dp=dp)
    model2 = new_model()
    run_step(model2, adamw(model2), scenario, dp_minibatch_step, dp=dp)
    check_against_reference({scenario: (recorder.seen, dict(model2.state_dict()), stats)})


def test_gradient_checkpointing_keeps_the_gradient():
    dp = DataParallel(0, 1, "replicate")
    model = new_model()
    what = apply_gradient_checkpointing(model)
    assert "MLP" in what
    recorder = GradRecorder(model.parameters(), [n for n, _ in model.named_parameters()])
    run_step(model, recorder, "ppo_token_mean", dp_minibatch_step, dp=dp)
    want_grad, _, _ = single_process("ppo_token_mean")
    assert_close_dicts(recorder.seen, want_grad, atol=1e-5)


# -- two processes (gloo) ------------------------------------------------------------------------


def _two_ranks(rank: int, world: int) -> dict:
    """Everything the two-process tests check, computed in one spawn (process start-up dominates)."""
    out = {strategy: ranked(rank, world, strategy) for strategy in ("fsdp", "replicate")}
    model = shard_model(new_model(), DataParallel(rank, world, "fsdp"))
    out["shard_numel"] = sum(p.to_local().numel() for p in model.parameters())
    out["gathered"] = full_state_dict(model)
    return out


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return spawn(_two_ranks, 2)


@pytest.mark.parametrize("strategy", ["fsdp", "replicate"])
def test_two_gloo_ranks_give_the_single_process_gradient_and_update(two_ranks: list[dict], strategy: str):
    for rank_result in two_ranks:  # every rank holds the same full gradient, weights and metrics
        check_against_reference(rank_result[strategy])


def test_fsdp_shards_parameters_and_gathers_the_full_state_dict(two_ranks: list[dict]):
    full = sum(p.numel() for p in new_model().parameters())
    assert sum(r["shard_numel"] for r in two_ranks) == full  # each rank holds about half
    assert all(r["shard_numel"] < full for r in two_ranks)
    for r in two_ranks:
        assert_close_dicts(r["gathered"], dict(new_model().state_dict()), atol=0.0)
