"""rlvr.algorithms group statistics and filters (DAPO dynamic sampling)."""

from __future__ import annotations

import pytest
import torch

from rlvr.algorithms import (
    compute_advantages,
    dynamic_sampling_select,
    group_has_variance,
    group_stats,
    shuffle_within_groups,
    zero_variance_mask,
)

# groups (by id): 7 -> rewards (1, 1) all correct; -2 -> (0, 0, 0) all wrong; 40 -> (1, 0) mixed;
# 5 -> (0.5,) a single sample; ids neither sorted nor contiguous, members interleaved.
IDS = torch.tensor([7, -2, 40, 7, -2, 40, 5, -2])
REWARDS = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.0])
CORRECT = REWARDS == 1.0


def test_group_stats_by_hand() -> None:
    stats = group_stats(REWARDS, CORRECT, IDS)
    assert stats == {
        "num_groups": 4,
        "all_correct_ratio": 0.25,  # group 7
        "all_wrong_ratio": 0.5,  # groups -2 and 5
        "zero_variance_ratio": 0.75,  # groups 7, -2 and the single sample 5
    }
    assert all(isinstance(v, (int, float)) for v in stats.values())


def test_group_stats_equals_python_loop() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(-5, 6, (64,), generator=g)
    rewards = torch.randint(0, 2, (64,), generator=g).float()
    groups = {}
    for i, r in zip(ids.tolist(), rewards.tolist()):
        groups.setdefault(i, []).append(r)
    stats = group_stats(rewards, rewards > 0, ids)
    n = len(groups)
    assert stats["num_groups"] == n
    assert stats["all_correct_ratio"] == pytest.approx(
        sum(all(r > 0 for r in v) for v in groups.values()) / n
    )
    assert stats["all_wrong_ratio"] == pytest.approx(
        sum(not any(r > 0 for r in v) for v in groups.values()) / n
    )
    assert stats["zero_variance_ratio"] == pytest.approx(sum(len(set(v)) == 1 for v in groups.values()) / n)


def test_zero_variance_mask_removes_only_groups_without_signal() -> None:
    mask = torch.ones(8, 3)
    mask[2, 2] = 0
    kept = zero_variance_mask(REWARDS, IDS, mask)
    expected = mask.clone()
    expected[[0, 1, 3, 4, 6, 7]] = 0  # only group 40 (rows 2 and 5) varies
    assert torch.equal(kept, expected)
    assert torch.equal(zero_variance_mask(REWARDS, IDS, mask.bool()), expected.bool())
    keep = zero_variance_mask(REWARDS, IDS)  # without a mask: per-sample keep flags
    assert keep.dtype == torch.bool and torch.equal(mask * keep[:, None], expected)
    assert group_has_variance(REWARDS, IDS).tolist() == [False, False, True, False, False, True, False, False]


def test_dynamic_sampling_keeps_varied_groups_and_reports_drops() -> None:
    picked = dynamic_sampling_select(REWARDS, IDS)
    assert picked.indices.tolist() == [2, 5]
    assert (picked.num_kept_groups, picked.num_dropped_groups, picked.num_surplus_groups) == (1, 3, 0)


def test_dynamic_sampling_max_groups_keeps_first_seen() -> None:
    ids = torch.tensor([9, 1, 9, 1, 4, 4, 6, 6])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])  # 9, 1, 6 vary; 4 does not
    picked = dynamic_sampling_select(rewards, ids, max_groups=2)
    assert picked.indices.tolist() == [0, 1, 2, 3]  # groups 9 and 1, seen first
    assert (picked.num_kept_groups, picked.num_dropped_groups, picked.num_surplus_groups) == (2, 1, 1)
    assert dynamic_sampling_select(rewards, ids, max_groups=0).indices.tolist() == []


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"rewards has shape \(7,\), expected \(8,\)"):
        group_stats(REWARDS[:7], CORRECT, IDS)
    with pytest.raises(TypeError, match="integer ids"):
        dynamic_sampling_select(REWARDS, IDS.float())


def test_shuffle_within_groups_keeps_each_groups_values_and_is_seeded() -> None:
    ids = torch.tensor([7, 3, 7, 3, 7, 3, 7, 3, 5, 5, 5, 5])
    rewards = torch.arange(12, dtype=torch.float32)  # all distinct: a permutation is visible

    def draw(seed: int) -> torch.Tensor:
        return shuffle_within_groups(rewards, ids, torch.Generator().manual_seed(seed))

    out = draw(0)
    for g in (7, 3, 5):
        assert sorted(out[ids == g].tolist()) == sorted(rewards[ids == g].tolist())
    assert torch.equal(out, draw(0))  # the generator's seed decides it
    assert any(not torch.equal(draw(s), draw(0)) for s in range(1, 4))
    assert any(not torch.equal(draw(s), rewards) for s in range(4))  # it does move values
    # GRPO advantages of shuffled rewards: the same multiset per group as the real ones'.
    mask = torch.ones(12, 3)
    real = compute_advantages("grpo", rewards, ids, mask)[:, 0]
    shuffled = compute_advantages("grpo", out, ids, mask)[:, 0]
    for g in (7, 3, 5):
        assert torch.allclose(shuffled[ids == g].sort().values, real[ids == g].sort().values)
    assert not torch.allclose(shuffled, real)
    with pytest.raises(ValueError, match="values has shape"):
        shuffle_within_groups(rewards[:5], ids, torch.Generator())
