"""One place names every metric the trainers log: docs/design.md lists exactly those names, the
modules beneath the trainers use them, and an update's metrics are all among them."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from rlvr import algorithms, tasks
from rlvr.config import CriticConfig, RLConfig
from rlvr.evaluation.metrics import source_metrics
from rlvr.models.native import NativeCausalLM
from rlvr.rollout.base import SamplingParams
from rlvr.rollout.partial import PartialRollouts, logprob_mismatch, truncated_importance_weights
from rlvr.rollout.torch_engine import TorchEngine
from rlvr.tasks import Example
from rlvr.tasks.generic import WithRewardFunctions, failure_metrics
from rlvr.trainers import metric_names as M
from rlvr.trainers.critic import Critic, value_model
from rlvr.trainers.rl import Knobs, Learner, RolloutBatch, batch_metrics, update_policy

DESIGN = Path(__file__).parents[2] / "docs" / "design.md"
CFG = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           intermediate_size=64, tie_word_embeddings=True, max_position_embeddings=256)


def documented_names() -> set[str]:
    """The names of design.md's metric-name block, `a/b|c` expanded to a/b and a/c."""
    text = DESIGN.read_text()
    block = text[text.index("Metric names (verl's"):]
    block = block[block.index("```") + 3:]
    block = block[: block.index("```")]
    content = " ".join(line[16:] for line in block.strip("\n").splitlines())  # after the 16-column labels
    content = re.sub(r"\([^)]*\)", " ", content)  # remarks in parentheses
    content = re.sub(r"\|\s+", "|", content)  # an alternative list continued on the next line
    names = set()
    for token in re.split(r"[,\s]+", content):
        if not token:
            continue
        head, _, tail = token.rpartition("/")
        names.update(f"{head}/{alt}" if head else alt for alt in tail.split("|"))
    return names


def test_design_md_lists_every_metric_name_and_no_other():
    documented = documented_names()
    want = set(M.NAMES) | set(M.PATTERNS)
    assert documented - want == set(), "listed in docs/design.md but not in metric_names.py"
    assert want - documented == set(), "in metric_names.py but missing from docs/design.md"
    for name in ("partial/staleness_max", "rollout/tis_weight_mean", "rollout/logprob_abs_diff_mean",
                 "actor/reward_kl", "actor/loss_tokens", "critic/vf_explained_var", "rewards/<part>/mean",
                 "reward/errors", "accuracy/<source>", "sft/truncated_fraction"):
        assert name in documented


def test_modules_beneath_the_trainers_use_the_listed_names():
    group = algorithms.group_stats(torch.tensor([1.0, 0.0]), torch.tensor([True, False]),
                                   torch.tensor([0, 0]))
    assert tuple(group) == M.GROUP_STATS
    lp, mask = torch.zeros(2, 3), torch.ones(2, 3)
    assert tuple(truncated_importance_weights(lp, lp - 0.1, mask, cap=2.0)[1]) == M.TIS
    assert tuple(logprob_mismatch(lp, lp - 0.1, mask)) == M.ENGINE_MISMATCH
    torch.manual_seed(0)
    engine = PartialRollouts(TorchEngine(NativeCausalLM(CFG), eos_token_ids=(1,), pad_token_id=0),
                             tokens_per_step=2)
    out = engine.generate_partial([[2, 3], [4, 5]], SamplingParams(n=2, max_new_tokens=4, seed=0),
                                  keys=["a", "b"])
    assert set(out.metrics) == set(M.PARTIAL)
    no_functions = WithRewardFunctions(tasks.get("countdown"), [])
    assert tuple(failure_metrics(no_functions, {})) == M.REWARD_FAILURES
    by_source = source_metrics(["a", "b", None], [1.0, 0.0, 1.0], [True, False, True])
    assert set(by_source) == {"reward/a/mean", "accuracy/a", "batch_share/a", "reward/b/mean", "accuracy/b",
                              "batch_share/b"}
    assert all(M.is_metric_name(name) for name in by_source)
    assert not any(M.is_metric_name(name) for name in ("reward/a/b/mean", "accuracy/a/b", "actor/nothing"))


def toy_batch() -> RolloutBatch:
    gen = torch.Generator().manual_seed(0)
    batch = RolloutBatch()
    for g, rewards in enumerate([[1.0, 0.0, 0.5], [0.0, 1.0, 1.0]]):
        prompt = torch.randint(2, 40, (4,), generator=gen).tolist()
        for r in rewards:
            n = int(torch.randint(2, 8, (1,), generator=gen))
            batch.examples.append(Example(f"problem {g}", "", {"data_source": f"source{g}"}))
            batch.prompt_ids.append(prompt)
            batch.completion_ids.append(torch.randint(2, 40, (n,), generator=gen).tolist())
            batch.engine_logprobs.append([-3.0] * n)
            batch.finish_reasons.append("stop")
            batch.rewards.append(r)
            batch.correct.append(r == 1.0)
            batch.format_ok.append(True)
            batch.parts.append({"answer": r})
            batch.group_ids.append(g)
    return batch


def test_every_metric_of_a_step_and_its_update_is_a_listed_name():
    torch.manual_seed(0)
    policy = NativeCausalLM(CFG)
    ref = NativeCausalLM(CFG).eval().requires_grad_(False)
    knobs = Knobs(difficulty={}, max_new_tokens=8, group_size=3, temperature=1.0, lr=1e-3, stage=0)
    batch = toy_batch()
    logged = dict(batch_metrics(batch, knobs))
    cfg = RLConfig(mini_batches=2, kl_coef=0.1, entropy_coef=0.01, tis_cap=2.0, micro_batch_tokens=64)
    learner = Learner(policy, torch.optim.AdamW(policy.parameters(), lr=1e-3), torch.device("cpu"), True, ref)
    logged.update(update_policy(learner, batch, cfg, knobs, 0, 0))
    critic = Critic(value_model(policy, seed=0), CriticConfig(enabled=True), packed=True)
    in_reward = RLConfig(advantage="gae", kl_coef=0.1, kl_in_reward=True, micro_batch_tokens=64)
    logged.update(update_policy(learner, batch, in_reward, knobs, 1, 0, critic=critic))
    assert {M.ACTOR_PG_LOSS, M.ACTOR_REWARD_KL, M.CRITIC_VF_EXPLAINED_VAR, M.TIS[0],
            M.reward_part_mean("answer"),
            "accuracy/source0"} <= set(logged)
    assert [name for name in logged if not M.is_metric_name(name)] == []
