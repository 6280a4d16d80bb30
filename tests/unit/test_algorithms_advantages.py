"""rlvr.algorithms advantages: hand-computed values, a python-loop reference, masks and edge cases."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from rlvr.algorithms import (
    ADVANTAGES,
    compute_advantages,
    discounted_returns,
    gae_advantages_returns,
    token_rewards,
)

S3 = math.sqrt(3.0)


def ones_mask(lengths: list[int], steps: int) -> torch.Tensor:
    return (torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]).float()


def per_sequence(advantages: torch.Tensor) -> list[float]:
    """First-token value of each row (sequence-level estimators broadcast one value per row)."""
    return advantages[:, 0].tolist()


# Batch used by the hand-computed group tests: group 10 = rewards (1, 0, 0); group 3 = (2, 2)
# (zero variance); group -4 = (5,) (a single sample). Ids are neither sorted nor contiguous.
REWARDS = torch.tensor([1.0, 2.0, 0.0, 5.0, 2.0, 0.0])
GROUPS = torch.tensor([10, 3, 10, -4, 3, 10])
MASK = torch.ones(6, 3)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = 1/sqrt(3)
        ("grpo", [2 / S3, 0.0, -1 / S3, 0.0, 0.0, -1 / S3]),
        ("dr_grpo", [2 / 3, 0.0, -1 / 3, 0.0, 0.0, -1 / 3]),
        # r minus the mean of the others: 1 - 0, 0 - 1/2
        ("rloo", [1.0, 0.0, -0.5, 0.0, 0.0, -0.5]),
        # B = 6 samples, 3 with a nonzero r - mean_g: factor 2
        ("gpg", [4 / 3, 0.0, -2 / 3, 0.0, 0.0, -2 / 3]),
    ],
)
def test_group_baselines_by_hand(name: str, expected: list[float]) -> None:
    advantages = compute_advantages(name, REWARDS, GROUPS, MASK)
    assert advantages.shape == (6, 3)
    assert advantages.dtype == torch.float32
    torch.testing.assert_close(advantages, torch.tensor(expected)[:, None].expand(6, 3), rtol=1e-5, atol=1e-6)


def test_grpo_eps_option() -> None:
    advantages = compute_advantages("grpo", REWARDS, GROUPS, MASK, eps=1.0)
    expected = (2 / 3) / (1 / S3 + 1.0)
    assert advantages[0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_opo_length_weighted_baseline_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0])
    mask = ones_mask([1, 2, 3], 3)
    # b = (1*1 + 2*0 + 3*0) / 6 = 1/6
    advantages = compute_advantages("opo", rewards, torch.tensor([4, 4, 4]), mask)
    expected = torch.tensor([5 / 6, -1 / 6, -1 / 6])[:, None] * mask
    torch.testing.assert_close(advantages, expected)


def test_reinforce_pp_baseline_by_hand() -> None:
    # r - mean_g = (0.5, -0.5) on tokens (0.5 | -0.5, -0.5): token mean -1/6, deviations
    # (2/3, -1/3, -1/3), unbiased var 1/3.
    mask = ones_mask([1, 2], 2)
    advantages = compute_advantages(
        "reinforce_pp_baseline", torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), mask
    )
    expected = torch.tensor([[2 / 3, 0.0], [-1 / 3, -1 / 3]]) / math.sqrt(1 / 3 + 1e-8)
    torch.testing.assert_close(advantages, expected)


def test_token_rewards_and_returns_by_hand() -> None:
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    per_token = token_rewards(torch.tensor([1.0, 0.0]), mask, kl=kl, kl_coef=0.1)
    torch.testing.assert_close(per_token, torch.tensor([[-0.01, -0.02, 0.97], [-0.05, -0.05, 0.0]]))
    torch.testing.assert_close(
        discounted_returns(per_token, mask, 1.0), torch.tensor([[0.94, 0.95, 0.97], [-0.1, -0.05, 0.0]])
    )
    # gamma 0.5: 0.97; -0.02 + 0.5 * 0.97 = 0.465; -0.01 + 0.5 * 0.465 = 0.2225
    torch.testing.assert_close(
        discounted_returns(per_token, mask, 0.5), torch.tensor([[0.2225, 0.465, 0.97], [-0.075, -0.05, 0.0]])
    )


def whiten_list(values: list[float]) -> list[float]:
    mean = statistics.fmean(values)
    std = math.sqrt(statistics.variance(values) + 1e-8)
    return [(v - mean) / std for v in values]


def test_reinforce_pp_by_hand() -> None:
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    advantages = compute_advantages(
        "reinforce_pp", torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), mask, kl=kl, kl_coef=0.1, gamma=0.5
    )
    w = whiten_list([0.2225, 0.465, 0.97, -0.075, -0.05])
    torch.testing.assert_close(advantages, torch.tensor([[w[0], w[1], w[2]], [w[3], w[4], 0.0]]))


def test_gae_by_hand() -> None:
    mask = torch.ones(1, 3)
    values = torch.tensor([[0.5, 0.25, 0.75]])
    # gamma = lam = 1: returns 1 everywhere, A = 1 - V = (0.5, 0.75, 0.25), whitened (0, 1, -1)
    advantages, returns = gae_advantages_returns(torch.tensor([1.0]), mask, values)
    torch.testing.assert_close(returns, torch.ones(1, 3))
    torch.testing.assert_close(advantages, torch.tensor([[0.0, 1.0, -1.0]]), rtol=1e-5, atol=1e-6)
    # gamma 0.9, lam 0.8: deltas (-0.275, 0.425, 0.25); A2 = 0.25, A1 = 0.425 + 0.72 * 0.25,
    # A0 = -0.275 + 0.72 * A1
    advantages, returns = gae_advantages_returns(torch.tensor([1.0]), mask, values, gamma=0.9, lam=0.8)
    raw = [-0.275 + 0.72 * 0.605, 0.605, 0.25]
    torch.testing.assert_close(returns, torch.tensor([[raw[0] + 0.5, raw[1] + 0.25, 1.0]]))
    torch.testing.assert_close(advantages, torch.tensor([whiten_list(raw)]))
    via_table = compute_advantages(
        "gae", torch.tensor([1.0]), torch.tensor([0]), mask, values=values, gamma=0.9, lam=0.8
    )
    torch.testing.assert_close(via_table, advantages)


# ---------------------------------------------------------------- python-loop reference


def loop_group_centered(
    rewards: list[float], groups: list[int], weights: list[float] | None = None
) -> list[float]:
    out = []
    for i, g in enumerate(groups):
        members = [j for j, h in enumerate(groups) if h == g]
        values = [rewards[j] for j in members]
        if len(set(values)) == 1:
            out.append(0.0)
            continue
        if weights is not None and sum(weights[j] for j in members) > 0:
            baseline = sum(weights[j] * rewards[j] for j in members) / sum(weights[j] for j in members)
        else:
            baseline = statistics.fmean(values)
        out.append(rewards[i] - baseline)
    return out


def loop_sequence_advantages(
    name: str, rewards: list[float], groups: list[int], lengths: list[int]
) -> list[float]:
    centered = loop_group_centered(rewards, groups)
    if name == "dr_grpo":
        return centered
    if name == "grpo":
        out = []
        for i, g in enumerate(groups):
            values = [rewards[j] for j, h in enumerate(groups) if h == g]
            std = statistics.stdev(values) if len(values) > 1 and len(set(values)) > 1 else 0.0
            out.append(centered[i] / (std + 1e-6))
        return out
    if name == "rloo":
        out = []
        for i, g in enumerate(groups):
            others = [rewards[j] for j, h in enumerate(groups) if h == g and j != i]
            same = len({rewards[j] for j, h in enumerate(groups) if h == g}) == 1
            out.append(0.0 if not others or same else rewards[i] - statistics.fmean(others))
        return out
    if name == "gpg":
        nonzero = sum(1 for c in centered if c != 0)
        return [c * len(rewards) / nonzero if nonzero else 0.0 for c in centered]
    if name == "opo":
        return loop_group_centered(rewards, groups, [float(n) for n in lengths])
    raise AssertionError(name)


def loop_token_returns(
    rewards: list[float], mask: list[list[float]], kl: list[list[float]], kl_coef: float, gamma: float
) -> list[list[float]]:
    out = []
    for r, row, kl_row in zip(rewards, mask, kl):
        valid = [t for t, m in enumerate(row) if m]
        per_token = {t: -kl_coef * kl_row[t] for t in valid}
        if valid:
            per_token[valid[-1]] += r
        returns = [0.0] * len(row)
        running = 0.0
        for t in reversed(valid):
            running = per_token[t] + gamma * running
            returns[t] = running
        out.append(returns)
    return out


def loop_gae(
    rewards: list[float], mask: list[list[float]], values: list[list[float]], gamma: float, lam: float
) -> tuple[list[list[float]], list[list[float]]]:
    zeros = [[0.0] * len(row) for row in mask]
    per_token = loop_token_returns(rewards, mask, zeros, 0.0, 0.0)  # gamma 0: returns = token rewards
    advantages, returns = [], []
    for row, r_row, v_row in zip(mask, per_token, values):
        valid = [t for t, m in enumerate(row) if m]
        a_row, ret_row = [0.0] * len(row), [0.0] * len(row)
        next_value, next_adv = 0.0, 0.0
        for t in reversed(valid):
            delta = r_row[t] + gamma * next_value - v_row[t]
            next_adv = delta + gamma * lam * next_adv
            next_value = v_row[t]
            a_row[t], ret_row[t] = next_adv, next_adv + v_row[t]
        advantages.append(a_row)
        returns.append(ret_row)
    return advantages, returns


def loop_whiten(x: list[list[float]], mask: list[list[float]]) -> list[list[float]]:
    flat = [v for row, m_row in zip(x, mask) for v, m in zip(row, m_row) if m]
    w = iter(whiten_list(flat))
    return [[next(w) if m else 0.0 for m in m_row] for m_row in mask]


def random_batch(seed: int, batch: int = 24, steps: int = 7):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (batch,), generator=g).double() / 2  # ties are common
    ids = torch.tensor([-7, 3, 100, 42, 5])[torch.randint(0, 5, (batch,), generator=g)]
    lengths = torch.randint(0, steps + 1, (batch,), generator=g)
    mask = (torch.arange(steps)[None, :] < lengths[:, None]).float()
    mask[0, :] = 0  # a fully masked row
    mask[1, :] = 1
    mask[1, steps // 2] = 0  # a row with a hole
    kl = torch.randn(batch, steps, generator=g, dtype=torch.float64).abs()
    values = torch.randn(batch, steps, generator=g, dtype=torch.float64)
    return rewards, ids, mask, kl, values


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "gpg", "opo"])
def test_vectorised_equals_loop_for_group_baselines(name: str, seed: int) -> None:
    rewards, ids, mask, _, _ = random_batch(seed)
    advantages = compute_advantages(name, rewards, ids, mask)
    expected = loop_sequence_advantages(name, rewards.tolist(), ids.tolist(), mask.sum(-1).int().tolist())
    torch.testing.assert_close(advantages, torch.tensor(expected, dtype=torch.float64)[:, None] * mask)


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_equals_loop_for_reinforce_pp_baseline(seed: int) -> None:
    rewards, ids, mask, _, _ = random_batch(seed)
    advantages = compute_advantages("reinforce_pp_baseline", rewards, ids, mask)
    centered = loop_group_centered(rewards.tolist(), ids.tolist())
    expected = loop_whiten([[c] * mask.shape[1] for c in centered], mask.tolist())
    torch.testing.assert_close(advantages, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_vectorised_equals_loop_for_reinforce_pp(gamma: float) -> None:
    rewards, ids, mask, kl, _ = random_batch(3)
    advantages = compute_advantages("reinforce_pp", rewards, ids, mask, kl=kl, kl_coef=0.05, gamma=gamma)
    returns = loop_token_returns(rewards.tolist(), mask.tolist(), kl.tolist(), 0.05, gamma)
    torch.testing.assert_close(
        advantages, torch.tensor(loop_whiten(returns, mask.tolist()), dtype=torch.float64)
    )


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (0.9, 0.95), (1.0, 0.5)])
def test_vectorised_equals_loop_for_gae(gamma: float, lam: float) -> None:
    rewards, _, mask, _, values = random_batch(4)
    advantages, returns = gae_advantages_returns(rewards, mask, values, gamma=gamma, lam=lam)
    raw, loop_returns = loop_gae(rewards.tolist(), mask.tolist(), values.tolist(), gamma, lam)
    torch.testing.assert_close(returns, torch.tensor(loop_returns, dtype=torch.float64))
    torch.testing.assert_close(advantages, torch.tensor(loop_whiten(raw, mask.tolist()), dtype=torch.float64))


# ---------------------------------------------------------------- masks and edge cases


def all_options(name: str, batch: int, steps: int, fill: float = 0.3) -> dict:
    if name == "gae":
        return {"values": torch.full((batch, steps), fill)}
    if name == "reinforce_pp":
        return {"kl": torch.full((batch, steps), fill), "kl_coef": 0.1}
    if name == "prefix_tree":
        return {"tokens": torch.arange(batch * steps).reshape(batch, steps) % 3}
    return {}


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_values_at_masked_positions_do_not_matter(name: str) -> None:
    rewards, ids, mask, kl, values = random_batch(5)
    tokens = torch.randint(0, 3, mask.shape, generator=torch.Generator().manual_seed(1))
    options = {"gae": {"values": values}, "reinforce_pp": {"kl": kl, "kl_coef": 0.1},
               "prefix_tree": {"tokens": tokens}}.get(name, {})
    clean = compute_advantages(name, rewards, ids, mask, **options)

    def garbage(v: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.bool(), v, torch.nan if v.is_floating_point() else torch.tensor(99))

    dirty = {key: garbage(v) if torch.is_tensor(v) else v for key, v in options.items()}
    assert torch.equal(compute_advantages(name, rewards, ids, mask, **dirty), clean)
    assert torch.all(clean[~mask.bool()] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_zero_variance_single_sample_and_masked_rows_are_finite(name: str, dtype: torch.dtype) -> None:
    # (0.1 x3) has zero variance, but its float mean is not exactly 0.1 (0.1 + 0.1 + 0.1 != 0.3)
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 1.0, 0.0], dtype=dtype)
    ids = torch.tensor([1, 1, 1, 2, 3, 3])  # group 2 is a single sample
    mask = torch.ones(6, 4)
    mask[4] = 0  # a fully masked row
    advantages = compute_advantages(name, rewards, ids, mask, **all_options(name, 6, 4))
    assert torch.isfinite(advantages).all()
    assert torch.all(advantages[4] == 0)
    if name == "reinforce_pp_baseline":
        # r - mean_g is exactly 0 on rows 0-3; whitening shifts them all by the same amount
        assert torch.all(advantages[:4] == advantages[0, 0])
    elif name not in ("reinforce_pp", "gae"):  # the group baselines
        # exactly 0, not a rounding residue of the mean divided by a tiny std
        assert torch.all(advantages[:4] == 0), advantages


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_fully_masked_batch_gives_zeros(name: str) -> None:
    mask = torch.zeros(4, 3)
    advantages = compute_advantages(
        name, torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0, 0, 1, 1]), mask, **all_options(name, 4, 3)
    )
    assert torch.equal(advantages, torch.zeros(4, 3))


def test_constant_rewards_give_zero_whitened_advantages() -> None:
    mask = ones_mask([3, 2, 1], 3)
    same = torch.tensor([1.0, 1.0, 1.0])
    advantages = compute_advantages("reinforce_pp", same, torch.tensor([0, 0, 0]), mask, gamma=1.0)
    # returns are all 1: whitening leaves at most a 1e-12 residue of the mean
    assert advantages.abs().max().item() < 1e-6


def test_better_reward_gets_larger_advantage() -> None:
    for name in ("grpo", "dr_grpo", "rloo", "gpg", "opo", "reinforce_pp_baseline"):
        a = compute_advantages(name, torch.tensor([1.0, 0.0, 0.5]), torch.tensor([8, 8, 8]), torch.ones(3, 2))
        assert a[0, 0] > a[2, 0] > a[1, 0], name


def test_errors_name_what_is_valid() -> None:
    with pytest.raises(
        ValueError, match=r"unknown advantage estimator 'grop' \(did you mean 'grpo'\?\).*dr_grpo"
    ):
        compute_advantages("grop", REWARDS, GROUPS, MASK)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['epsilon'\]; it accepts: eps"):
        compute_advantages("grpo", REWARDS, GROUPS, MASK, epsilon=0.1)
    with pytest.raises(TypeError, match=r"needs the option\(s\) \['values'\]"):
        compute_advantages("gae", REWARDS, GROUPS, MASK)
    with pytest.raises(ValueError, match=r"rewards has shape \(5,\), expected \(6,\)"):
        compute_advantages("grpo", REWARDS[:5], GROUPS, MASK)
    with pytest.raises(TypeError, match="integer ids"):
        compute_advantages("grpo", REWARDS, GROUPS.float(), MASK)
    with pytest.raises(ValueError, match="kl_coef"):
        compute_advantages("reinforce_pp", REWARDS, GROUPS, MASK, kl=torch.zeros(6, 3))


# ---------------------------------------------------------------- prefix_tree


def tree_reference(rewards: list[float], groups: list[int], mask: list[list[float]],
                   tokens: list[list[int]], eps: float = 1e-6) -> list[list[float]]:
    """Brute force: V(prefix) = mean reward of the group's rows whose valid tokens start with it,
    where a row's end is a token of its own ("$")."""
    seqs = [tuple(t for t, m in zip(row, keep) if m) + ("$",) for row, keep in zip(tokens, mask)]
    out = [[0.0] * len(mask[0]) for _ in mask]
    for b, seq in enumerate(seqs):
        mates = [j for j in range(len(seqs)) if groups[j] == groups[b]]
        group_rewards = [rewards[j] for j in mates]
        if len(set(group_rewards)) < 2:
            continue
        std = statistics.stdev(group_rewards)

        def value(prefix: tuple, mates: list[int] = mates) -> float:
            # the rows that went through this prefix and on (or ended with it, for a prefix with "$");
            # the root is the whole group, rows without a token included (as in mean_g)
            through = [rewards[j] for j in mates if not prefix or (
                seqs[j][: len(prefix)] == prefix and (prefix[-1:] == ("$",) or seqs[j][len(prefix)] != "$"))]
            return sum(through) / len(through)

        positions = [t for t, m in enumerate(mask[b]) if m]
        for k, t in enumerate(positions):
            # the last token and the end together: the prefix that includes the "$"
            upto = seq[: k + 1] if k + 1 < len(positions) else seq
            out[b][t] = (value(upto) - value(seq[:k])) / (std + eps)
    return out


def test_prefix_tree_by_hand() -> None:
    # group 0: rows 0-1 share [1, 2], rows 2-3 share [1, 5] and part at the last token;
    # group 1 has one reward: zero everywhere.
    tokens = torch.tensor([[1, 2, 3], [1, 2, 4], [1, 5, 6], [1, 5, 7], [9, 9, 9], [9, 9, 8]])
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    got = compute_advantages("prefix_tree", rewards, groups, torch.ones(6, 3), tokens=tokens, eps=0.0)
    std = statistics.stdev([1.0, 0.0, 1.0, 1.0])  # 0.5
    # V(root) = V([1]) = 0.75, V([1, 2]) = 0.5, V([1, 5]) = 1; the leaves are the rows' rewards
    expected = torch.tensor([[0.0, -0.25, 0.5], [0.0, -0.25, -0.5], [0.0, 0.25, 0.0], [0.0, 0.25, 0.0],
                             [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]) / std
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_tree_matches_the_brute_force_and_sums_to_grpo(seed: int) -> None:
    rewards, ids, mask, _, _ = random_batch(seed, batch=30, steps=6)
    tokens = torch.randint(0, 2, mask.shape, generator=torch.Generator().manual_seed(seed))  # much sharing
    got = compute_advantages("prefix_tree", rewards, ids, mask, tokens=tokens)
    want = tree_reference(rewards.tolist(), ids.tolist(), mask.tolist(), tokens.tolist())
    torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype))
    # along each row the credit telescopes to GRPO's sequence advantage, for the rows that no other
    # row of their group repeats (a repeated response's leaf value is the mean of its copies' rewards)
    grpo = compute_advantages("grpo", rewards, ids, mask)
    seqs = [(g, tuple(t for t, m in zip(row, keep) if m)) for g, row, keep in
            zip(ids.tolist(), tokens.tolist(), mask.tolist())]
    checked = 0
    for b, (g, seq) in enumerate(seqs):
        if seq and seqs.count((g, seq)) == 1:
            first = int(torch.nonzero(mask[b]).flatten()[0])
            assert float(got[b].sum()) == pytest.approx(float(grpo[b, first]), abs=1e-9)
            checked += 1
    assert checked >= 10


def test_prefix_tree_credits_only_where_samples_part() -> None:
    # four rows of one prompt: identical for 3 tokens, then row 3 leaves; rows 0-2 part at token 4
    tokens = torch.tensor([[7, 7, 7, 1, 5, 5], [7, 7, 7, 1, 6, 6], [7, 7, 7, 1, 8, 8], [7, 7, 7, 2, 5, 5]])
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    got = compute_advantages("prefix_tree", rewards, torch.zeros(4, dtype=torch.long), torch.ones(4, 6),
                             tokens=tokens)
    assert torch.all(got[:, :3] == 0)  # shared by every sample
    assert torch.all(got[:, 5] == 0)  # each row is alone after its last branch
    assert got[3, 3] < 0 < got[0, 3]  # row 3's branch led to a wrong answer
    assert got[2, 4] < 0 < got[0, 4] == got[1, 4]


def test_prefix_tree_needs_integer_tokens_of_the_mask_shape() -> None:
    with pytest.raises(TypeError, match=r"needs the option\(s\) \['tokens'\]"):
        compute_advantages("prefix_tree", REWARDS, GROUPS, MASK)
    with pytest.raises(ValueError, match=r"tokens has shape \(6, 2\), expected \(6, 3\)"):
        compute_advantages("prefix_tree", REWARDS, GROUPS, MASK, tokens=torch.zeros(6, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        compute_advantages("prefix_tree", REWARDS, GROUPS, MASK, tokens=torch.zeros(6, 3))
