"""The RL optimizer step skips sequences whose loss is identically zero, and steps as if it ran them."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr import algorithms
from rlvr.config import RLConfig
from rlvr.models.native import NativeCausalLM
from rlvr.trainers import rl
from rlvr.trainers.rl import Knobs, Learner, RolloutBatch, StepData, minibatch_step, padded

CFG = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           intermediate_size=64, tie_word_embeddings=True, max_position_embeddings=256)


class GradRecorder(torch.optim.SGD):
    """SGD that keeps a copy of every gradient it steps with (minibatch_step sets its lr)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.names = [n for n, _ in model.named_parameters()]
        super().__init__(model.parameters(), lr=0.0)
        self.seen: dict[str, torch.Tensor] = {}

    def step(self, closure=None):
        for name, p in zip(self.names, self.param_groups[0]["params"]):
            self.seen[name] = p.grad.detach().clone()
        return super().step(closure)


def make_batch(rewards: list[list[float]]) -> RolloutBatch:
    gen = torch.Generator().manual_seed(0)
    batch = RolloutBatch()
    for g, group in enumerate(rewards):
        prompt = torch.randint(1, 40, (5 + g,), generator=gen).tolist()
        for r in group:
            n = int(torch.randint(3, 12, (1,), generator=gen))
            batch.prompt_ids.append(prompt)
            batch.completion_ids.append(torch.randint(1, 40, (n,), generator=gen).tolist())
            batch.engine_logprobs.append((-torch.rand(n, generator=gen) * 3).tolist())
            batch.rewards.append(r)
            batch.group_ids.append(g)
    return batch


def step(batch: RolloutBatch, loss_agg: str, model: NativeCausalLM, optimizer: torch.optim.Optimizer):
    cfg = RLConfig(loss_agg=loss_agg, micro_batch_tokens=64)
    knobs = Knobs(difficulty={}, max_new_tokens=16, group_size=4, temperature=1.0, lr=1e-2, stage=0)
    width = max(len(c) for c in batch.completion_ids)
    lengths = torch.tensor([len(c) for c in batch.completion_ids])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
    adv = algorithms.compute_advantages("grpo", torch.tensor(batch.rewards),
                                        torch.tensor(batch.group_ids), mask)
    old_lp = padded(batch.engine_logprobs, width)
    return minibatch_step(Learner(model, optimizer, torch.device("cpu"), True),
                          StepData(batch, adv, mask, old_lp),
                          list(range(len(batch))), cfg, knobs)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_zero_advantage_groups_are_not_run_and_the_gradient_is_unchanged(monkeypatch, loss_agg):
    # group 0 all correct, group 2 all wrong: GRPO gives them zero advantages
    batch = make_batch([[1.0] * 4, [1.0, 0.0, 0.0, 1.0], [0.0] * 4])
    run_rows: list[int] = []
    values = rl.sequence_values

    def counting(model, b, index, *args, **kwargs):
        run_rows.extend(index)
        return values(model, b, index, *args, **kwargs)

    monkeypatch.setattr(rl, "sequence_values", counting)
    torch.manual_seed(0)
    model = NativeCausalLM(CFG)
    skipping = GradRecorder(model)
    stats = step(batch, loss_agg, model, skipping)
    assert sorted(run_rows) == [4, 5, 6, 7]  # only the group with reward variance ran

    monkeypatch.setattr(rl, "gradient_rows", lambda index, *a: list(index))  # run every row
    torch.manual_seed(0)
    model = NativeCausalLM(CFG)
    running_all = GradRecorder(model)
    want = step(batch, loss_agg, model, running_all)
    assert sorted(run_rows) == sorted([4, 5, 6, 7] + list(range(12)))
    assert any(float(g.abs().max()) > 1e-4 for g in running_all.seen.values())  # a gradient to compare
    for name, g in running_all.seen.items():
        torch.testing.assert_close(skipping.seen[name], g, atol=1e-7, rtol=1e-5)
    assert stats["actor/pg_loss"] == pytest.approx(want["actor/pg_loss"], rel=1e-5, abs=1e-8)
    assert stats["actor/grad_norm"] == pytest.approx(want["actor/grad_norm"], rel=1e-5)
    # entropy describes the rows that ran: a weighted mean of per-row values, so within their range
    assert 0.0 < stats["actor/entropy"] < 2 * want["actor/entropy"]


def test_a_step_with_no_active_row_still_steps_the_optimizer():
    batch = make_batch([[1.0] * 4, [0.0] * 4])
    torch.manual_seed(0)
    model = NativeCausalLM(CFG)
    recorder = GradRecorder(model)
    stats = step(batch, "token-mean", model, recorder)
    assert set(recorder.seen) == {n for n, _ in model.named_parameters()}
    assert all(float(g.abs().max()) == 0.0 for g in recorder.seen.values())
    assert stats["actor/grad_norm"] == 0.0 and stats["actor/pg_loss"] == 0.0
    assert "actor/entropy" not in stats  # nothing ran, nothing to describe


def test_shuffle_rewards_permutes_within_groups_by_seed_and_step() -> None:
    batch = make_batch([[0.0, 1.0, 0.0, 1.0, 1.0, 0.0], [2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [1.0, 1.0, 1.0]])
    real = torch.tensor(batch.rewards)
    assert torch.equal(rl.training_rewards(batch, RLConfig(), seed=0, step=0), real)
    control = RLConfig(shuffle_rewards=True)
    draws = {(seed, step): rl.training_rewards(batch, control, seed, step) for seed in (0, 1)
             for step in (0, 1, 2)}
    ids = torch.tensor(batch.group_ids)
    for out in draws.values():
        for g in range(3):
            assert sorted(out[ids == g].tolist()) == sorted(real[ids == g].tolist())
    # a pure function of (seed, step)
    assert torch.equal(rl.training_rewards(batch, control, 1, 2), draws[1, 2])
    assert len({tuple(v.tolist()) for v in draws.values()}) > 1
    assert any(not torch.equal(v, real) for v in draws.values())


# ---------------------------------------------------------------- old log-probs and their mismatch


def learner_logprobs(model: NativeCausalLM, batch: RolloutBatch) -> torch.Tensor:
    width = max(len(c) for c in batch.completion_ids)
    with torch.no_grad():
        lp, _ = rl.sequence_values(model, batch, range(len(batch)), width, 1.0,
                                   torch.device("cpu"), True, 1 << 20)
    return lp


def update(model: NativeCausalLM, batch: RolloutBatch, shares: bool, step_fn=None, **cfg_options):
    cfg = RLConfig(micro_batch_tokens=64, **{"mini_batches": 3, **cfg_options})
    knobs = Knobs(difficulty={}, max_new_tokens=16, group_size=4, temperature=1.0, lr=5e-2, stage=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-2)
    return rl.update_policy(Learner(model, optimizer, torch.device("cpu"), True), batch, cfg, knobs, 0, 0,
                            step_fn=step_fn, engine_shares_weights=shares)


@pytest.mark.parametrize("shares", [True, False])
def test_old_logprobs_are_recomputed_when_the_engine_does_not_share_weights(shares):
    batch = make_batch([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]])  # random engine lp
    torch.manual_seed(0)
    model = NativeCausalLM(CFG)
    current = learner_logprobs(model, batch)
    seen = []

    def record(_learner, data, _index, _cfg, _knobs):  # a StepFn
        seen.append(data.old_logprobs)
        return {}

    update(model, batch, shares, step_fn=record)
    assert len(seen) == 3  # one per mini-batch, all with the same old log-probs
    want = padded(batch.engine_logprobs, current.shape[1]) if shares else current
    for old in seen:
        torch.testing.assert_close(old, want)


@pytest.mark.parametrize("shares", [True, False])
def test_logprob_mismatch_is_measured_before_the_first_update(shares):
    # The engine's log-probs are the learner's own plus 0.1 nats on every token: the mismatch before
    # the first update is 0.1, whatever the later optimizer steps (lr 5e-2) do to the policy.
    batch = make_batch([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    torch.manual_seed(0)
    model = NativeCausalLM(CFG)
    current = learner_logprobs(model, batch)
    batch.engine_logprobs = [(current[i, : len(c)] + 0.1).tolist()
                             for i, c in enumerate(batch.completion_ids)]
    stats = update(model, batch, shares, ppo_epochs=2)
    assert stats["actor/logprob_mismatch"] == pytest.approx(0.1, abs=1e-5)
    assert float((learner_logprobs(model, batch) - current).abs().max()) > 0.05  # the policy did move


def test_one_optimizer_step_reports_no_mismatch_it_did_not_measure():
    batch = make_batch([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    torch.manual_seed(0)
    stats = update(NativeCausalLM(CFG), batch, True, mini_batches=1)
    assert "actor/logprob_mismatch" not in stats and "actor/pg_loss" in stats


def test_tis_and_kl_in_reward_share_one_forward_of_the_current_policy(monkeypatch):
    batch = make_batch([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    torch.manual_seed(0)
    model = NativeCausalLM(CFG)
    ref = NativeCausalLM(CFG).eval().requires_grad_(False)
    calls: list[tuple[bool, bool]] = []
    values = rl.sequence_values

    def counting(m, *args, **kwargs):
        calls.append((m is model, torch.is_grad_enabled()))
        return values(m, *args, **kwargs)

    monkeypatch.setattr(rl, "sequence_values", counting)
    cfg = RLConfig(micro_batch_tokens=1 << 20, mini_batches=2, tis_cap=2.0, kl_coef=0.1, kl_in_reward=True,
                   advantage="reinforce_pp")
    knobs = Knobs(difficulty={}, max_new_tokens=16, group_size=4, temperature=1.0, lr=1e-3, stage=0)
    learner = Learner(model, torch.optim.AdamW(model.parameters(), lr=1e-3), torch.device("cpu"), True, ref)
    stats = rl.update_policy(learner, batch, cfg, knobs, 0, 0, engine_shares_weights=False)
    # the current policy before the update: once, for TIS, KL and old lp
    assert calls.count((True, False)) == 1
    assert calls.count((False, False)) == 1  # the reference
    assert calls.count((True, True)) == 2  # one training forward per mini-batch
    assert "actor/reward_kl" in stats and "rollout/tis_weight_mean" in stats


def test_update_workers_give_the_sequential_gradient_and_statistics():
    """Micro-batch gradients computed by 3 worker threads and summed in a fixed order equal those of
    one thread running the micro-batches one after another (float rounding aside)."""
    batch = make_batch([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.5], [1.0, 0.0, 1.0, 0.0]])
    knobs = Knobs(difficulty={}, max_new_tokens=16, group_size=4, temperature=1.0, lr=1e-2, stage=0)
    width = max(len(c) for c in batch.completion_ids)
    lengths = torch.tensor([len(c) for c in batch.completion_ids])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
    adv = algorithms.compute_advantages("grpo", torch.tensor(batch.rewards),
                                        torch.tensor(batch.group_ids), mask)
    old_lp = padded(batch.engine_logprobs, width)
    lengths_list = rl.forward_lengths(NativeCausalLM(CFG), batch, range(len(batch)), True)
    assert len(rl.micro_batches(lengths_list, 24)) >= 3  # there is something to split
    seen, stats = {}, {}
    for workers in (1, 3):
        torch.manual_seed(0)
        model = NativeCausalLM(CFG)
        optimizer = GradRecorder(model)
        cfg = RLConfig(micro_batch_tokens=24, update_workers=workers)
        stats[workers] = minibatch_step(Learner(model, optimizer, torch.device("cpu"), True),
                                        StepData(batch, adv, mask, old_lp), list(range(len(batch))),
                                        cfg, knobs)
        seen[workers] = optimizer.seen
    for name, grad in seen[1].items():
        torch.testing.assert_close(seen[3][name], grad, atol=1e-6, rtol=1e-5, msg=name)
    for key in ("actor/pg_loss", "actor/entropy", "actor/grad_norm"):
        assert stats[3][key] == pytest.approx(stats[1][key], rel=1e-5, abs=1e-7), key


def test_worker_parts_balance_tokens_in_a_fixed_order():
    lengths = [10, 9, 8, 3, 2, 2]
    batches = [[0], [1], [2], [3, 4, 5]]  # costs 10, 9, 8, 9 (3 rows padded to 3)
    assert rl.worker_parts(batches, lengths, 2) == [[[0], [2]], [[1], [3, 4, 5]]]
    assert rl.worker_parts(batches, lengths, 1) == [[[0], [1], [3, 4, 5], [2]]]
    assert rl.worker_parts([[0]], lengths, 4) == [[[0]]]


def test_top_entropy_fraction_keeps_the_advantage_on_the_high_entropy_tokens_only():
    batch = make_batch([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    torch.manual_seed(0)
    model = NativeCausalLM(CFG)
    width = max(len(c) for c in batch.completion_ids)
    with torch.no_grad():
        _, entropy = rl.sequence_values(model, batch, range(len(batch)), width, 1.0, torch.device("cpu"),
                                        True, 1 << 20, with_entropy=True)
    seen = []

    def record(_learner, data, _index, _cfg, _knobs):  # a StepFn
        seen.append(data)
        return {}

    full = update(model, batch, True, step_fn=record)
    restricted = update(model, batch, True, step_fn=record, top_entropy_fraction=0.25)
    everything, top = seen[0], seen[-1]
    mask = everything.loss_mask.bool()
    kept = top.advantages != 0
    assert int(kept.sum()) == math.ceil(0.25 * int(mask.sum()))  # no GRPO advantage here is 0
    assert float(entropy[kept].min()) >= float(entropy[mask & ~kept].max())
    assert float(entropy[kept].min()) == pytest.approx(restricted["actor/pg_entropy_threshold"])
    torch.testing.assert_close(top.advantages[kept], everything.advantages[kept])
    torch.testing.assert_close(top.loss_mask, everything.loss_mask)  # the aggregation counts every token
    assert "actor/pg_entropy_threshold" not in full


def test_prefix_tree_advantages_see_the_completion_tokens():
    batch = make_batch([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    for i in (1, 2, 3):  # group 0's completions share their first tokens with row 0
        batch.completion_ids[i][:3] = batch.completion_ids[0][:3]
    torch.manual_seed(0)
    model = NativeCausalLM(CFG)
    seen = []

    def record(_learner, data, _index, _cfg, _knobs):  # a StepFn
        seen.append(data)
        return {}

    update(model, batch, True, step_fn=record, advantage="prefix_tree")
    width = max(len(c) for c in batch.completion_ids)
    lengths = torch.tensor([len(c) for c in batch.completion_ids])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
    want = algorithms.compute_advantages("prefix_tree", torch.tensor(batch.rewards),
                                         torch.tensor(batch.group_ids), mask,
                                         tokens=padded(batch.completion_ids, width, torch.long))
    torch.testing.assert_close(seen[0].advantages, want.float())
    assert torch.all(seen[0].advantages[:4, :3] == 0)  # shared by the whole group
    assert seen[0].advantages[:4].abs().sum() > 0


def test_sync_reference_moves_every_tensor_alpha_of_the_way_to_the_policy():
    torch.manual_seed(0)
    ref, policy = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    for model in (ref, policy):  # one tensor under two names, as tied embeddings are
        model.tied = model.weight
    ref.register_buffer("count", torch.tensor([1]))
    policy.register_buffer("count", torch.tensor([7]))
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    rl.sync_reference(ref, policy, 0.25)
    for name, value in ref.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * before[name] + 0.25 * policy.state_dict()[name])
    assert ref.count.item() == 7
    rl.sync_reference(ref, policy, 1.0)
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in ref.state_dict().items())
