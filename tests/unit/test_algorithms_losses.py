"""rlvr.algorithms policy and value losses: hand values, a loop reference, masks, extremes, gradient signs."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import POLICY_LOSSES, policy_loss, value_loss

E = math.e
STAT_KEYS = {"pg_clipfrac", "pg_clipfrac_lower", "pg_clipfrac_dual", "ppo_kl", "ratio_mean", "ratio_max"}


def stats_as_floats(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    for value in stats.values():
        assert value.dim() == 0 and not value.requires_grad
    return {key: value.item() for key, value in stats.items()}


def test_ppo_by_hand() -> None:
    # log-ratios 1, 1, 2, -1, -1 with advantages 1, -1, -1, -1, 1, clip 0.2, dual clip 3:
    #   ratio e,    A  1: max(-e, -1.2)            = -1.2   (upper clip)
    #   ratio e,    A -1: max(e, 1.2)               = e      (below the dual cap 3)
    #   ratio e^2,  A -1: min(max(e^2, 1.2), 3)     = 3      (dual clip)
    #   ratio 1/e,  A -1: max(1/e, 0.8)             = 0.8    (lower clip)
    #   ratio 1/e,  A  1: max(-1/e, -0.8)           = -1/e
    old = torch.zeros(1, 5)
    new = torch.tensor([[1.0, 1.0, 2.0, -1.0, -1.0]], requires_grad=True)
    advantages = torch.tensor([[1.0, -1.0, -1.0, -1.0, 1.0]])
    loss, stats = policy_loss("ppo", new, old, advantages, torch.ones(1, 5), dual_clip=3.0)
    assert loss.item() == pytest.approx((-1.2 + E + 3.0 + 0.8 - 1 / E) / 5, rel=1e-6)
    s = stats_as_floats(stats)
    assert set(s) == STAT_KEYS
    assert s["pg_clipfrac"] == pytest.approx(0.2)
    assert s["pg_clipfrac_lower"] == pytest.approx(0.2)
    assert s["pg_clipfrac_dual"] == pytest.approx(0.2)
    assert s["ppo_kl"] == pytest.approx(-0.4)
    assert s["ratio_mean"] == pytest.approx((2 * E + E**2 + 2 / E) / 5, rel=1e-6)
    assert s["ratio_max"] == pytest.approx(E**2, rel=1e-6)
    loss.backward()
    # gradient only where no clip is active: d(e^x * 1)/dx / 5 and d(-e^-x)/dx / 5
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, E / 5, 0.0, 0.0, -(1 / E) / 5]]))


def test_ppo_clip_higher_by_hand() -> None:
    loss, _ = policy_loss(
        "ppo", torch.ones(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), clip_high=0.28
    )
    assert loss.item() == pytest.approx(-1.28)


def test_gspo_by_hand() -> None:
    old = torch.zeros(2, 3)
    # row 0: log-ratios 0.2, 0.4 (and 50 on a masked token): s = exp(0.3); row 1: -0.1, 0.1: s = 1
    new = torch.tensor([[0.2, 0.4, 50.0], [-0.1, 0.1, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    loss, stats = policy_loss("gspo", new, old, advantages, mask, clip_low=0.2, clip_high=0.2)
    # row 0: exp(0.3) = 1.35 is clipped to 1.2 -> -1.2 per token; row 1: ratio 1 -> 1 per token
    assert loss.item() == pytest.approx((-1.2 * 2 + 1.0 * 2) / 4, rel=1e-6)
    s = stats_as_floats(stats)
    assert s["pg_clipfrac"] == pytest.approx(0.5)
    assert s["ratio_max"] == pytest.approx(math.exp(0.3), rel=1e-6)
    # the paper's default clip range: exp(0.3) clipped to 1 + 4e-4
    loss, _ = policy_loss("gspo", new, old, advantages, mask)
    assert loss.item() == pytest.approx((-(1 + 4e-4) * 2 + 1.0 * 2) / 4, abs=1e-7)


def test_gspo_gradient_is_sequence_ratio_times_token_gradient() -> None:
    new = torch.tensor([[0.1, 0.3, -0.2]], requires_grad=True)
    loss, _ = policy_loss(
        "gspo",
        new,
        torch.zeros(1, 3),
        torch.full((1, 3), 2.0),
        torch.ones(1, 3),
        clip_low=1.0,
        clip_high=1.0,
        loss_agg="seq-mean-token-mean",
    )
    loss.backward()
    # d/dx of -A * exp(mean x) through the token form: -A * s / |y| on every token
    s = math.exp((0.1 + 0.3 - 0.2) / 3)
    torch.testing.assert_close(new.grad, torch.full((1, 3), -2.0 * s / 3))


def test_cispo_by_hand() -> None:
    old = torch.tensor([[-1.5, -0.5]])
    new = torch.tensor([[-0.5, -0.5]], requires_grad=True)  # ratios e and 1
    advantages = torch.tensor([[1.0, -2.0]])
    loss, stats = policy_loss("cispo", new, old, advantages, torch.ones(1, 2), clip_high=0.28)
    # token 0: -1.28 * 1 * (-0.5) = 0.64; token 1: -1 * (-2) * (-0.5) = -1
    assert loss.item() == pytest.approx((0.64 - 1.0) / 2)
    assert stats_as_floats(stats)["pg_clipfrac"] == pytest.approx(0.5)
    loss.backward()
    # the clipped token keeps a gradient: -weight * A / 2
    torch.testing.assert_close(new.grad, torch.tensor([[-1.28 / 2, 2.0 / 2]]))


def test_shared_clip_options_are_accepted_and_unused_ones_ignored() -> None:
    new, old, advantages, mask = random_batch(9)
    shared = {
        "clip_low": 0.1,
        "clip_high": 0.3,
        "dual_clip": 3.0,
        "loss_agg": "token-mean",
        "loss_agg_norm": 64,
    }
    plain, _ = policy_loss("reinforce", new, old, advantages, mask)
    assert torch.equal(policy_loss("reinforce", new, old, advantages, mask, **shared)[0], plain)
    capped, _ = policy_loss("cispo", new, old, advantages, mask, clip_high=0.3)
    assert torch.equal(policy_loss("cispo", new, old, advantages, mask, **shared)[0], capped)


def test_reinforce_by_hand() -> None:
    new = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = policy_loss("reinforce", new, torch.zeros(1, 2), torch.tensor([[2.0, -1.0]]), torch.ones(1, 2))
    assert loss.item() == pytest.approx((2.0 - 2.0) / 2)
    loss.backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-1.0, 0.5]]))


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 7 / 3),
        ("seq-mean-token-sum", (3 + 4) / 2),
        ("seq-mean-token-mean", (1.5 + 4) / 2),
        ("seq-mean-token-sum-norm", (3 / 3 + 4 / 3) / 2),
    ],
)
def test_loss_agg_option(mode: str, expected: float) -> None:
    # reinforce with logprobs -1 and advantages a gives per-token losses a
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    loss, _ = policy_loss("reinforce", -torch.ones(3, 3), -torch.ones(3, 3), per_token, mask, loss_agg=mode)
    assert loss.item() == pytest.approx(expected)


def test_loss_agg_norm_option() -> None:
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, _ = policy_loss(
        "reinforce",
        -torch.ones(2, 3),
        -torch.ones(2, 3),
        per_token,
        mask,
        loss_agg="seq-mean-token-sum-norm",
        loss_agg_norm=10,
    )
    assert loss.item() == pytest.approx((3 / 10 + 4 / 10) / 2)


# ---------------------------------------------------------------- python-loop reference


def loop_token_loss(name: str, new: float, old: float, a: float, seq_ratio: float, o: dict) -> float:
    if name == "reinforce":
        return -a * new
    if name == "cispo":
        weight = min(math.exp(new - old), 1 + o.get("clip_high", 0.28))
        return -weight * a * new
    ratio = seq_ratio if name == "gspo" else math.exp(new - old)
    low, high = o.get("clip_low", 0.2), o.get("clip_high", 0.2)
    loss = max(-a * ratio, -a * min(max(ratio, 1 - low), 1 + high))
    if o.get("dual_clip") is not None and a < 0:
        loss = min(loss, -o["dual_clip"] * a)
    return loss


def loop_policy_loss(name, new, old, adv, mask, options) -> float:
    rows = []
    for i in range(len(mask)):
        valid = [t for t, m in enumerate(mask[i]) if m]
        seq_ratio = math.exp(sum(new[i][t] - old[i][t] for t in valid) / len(valid)) if valid else 1.0
        rows.append(
            [loop_token_loss(name, new[i][t], old[i][t], adv[i][t], seq_ratio, options) for t in valid]
        )
    tokens = [x for row in rows for x in row]
    mode = options.get("loss_agg", "token-mean")
    kept = [row for row in rows if row]
    if mode == "token-mean":
        return sum(tokens) / len(tokens)
    if mode == "seq-mean-token-sum":
        return sum(sum(row) for row in kept) / len(kept)
    if mode == "seq-mean-token-mean":
        return sum(sum(row) / len(row) for row in kept) / len(kept)
    return sum(sum(row) / options["loss_agg_norm"] for row in kept) / len(kept)


CASES = [
    ("ppo", {}),
    ("ppo", {"clip_low": 0.1, "clip_high": 0.28, "dual_clip": 3.0, "loss_agg": "seq-mean-token-mean"}),
    ("gspo", {"clip_low": 0.05, "clip_high": 0.1, "loss_agg": "seq-mean-token-sum"}),
    ("cispo", {"clip_high": 0.3, "loss_agg": "seq-mean-token-sum-norm", "loss_agg_norm": 16}),
    ("reinforce", {}),
]


def random_batch(seed: int, batch: int = 6, steps: int = 5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, steps, generator=g, dtype=torch.float64) * 3
    new = old + torch.randn(batch, steps, generator=g, dtype=torch.float64) * 0.5
    advantages = torch.randn(batch, steps, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, steps + 1, (batch,), generator=g)
    mask = (torch.arange(steps)[None, :] < lengths[:, None]).double()
    mask[0] = 0  # a fully masked row
    return new, old, advantages, mask


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("name", "options"), CASES)
def test_vectorised_equals_loop(name: str, options: dict, seed: int) -> None:
    new, old, advantages, mask = random_batch(seed)
    loss, _ = policy_loss(name, new, old, advantages, mask, **options)
    expected = loop_policy_loss(name, new.tolist(), old.tolist(), advantages.tolist(), mask.tolist(), options)
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("name", "options"), CASES)
def test_values_at_masked_positions_never_matter(name: str, options: dict) -> None:
    new, old, advantages, mask = random_batch(7)
    invalid = ~mask.bool()

    def run(fill: float):
        x = torch.where(invalid, torch.full_like(new, fill), new).requires_grad_(True)
        loss, stats = policy_loss(
            name, x, torch.where(invalid, fill, old), torch.where(invalid, fill, advantages), mask, **options
        )
        loss.backward()
        return loss, stats, x.grad

    clean_loss, clean_stats, clean_grad = run(0.0)
    for fill in (float("nan"), float("inf"), -1e4, 50.0):
        loss, stats, grad = run(fill)
        assert torch.equal(loss, clean_loss)
        assert all(torch.equal(stats[k], clean_stats[k]) for k in STAT_KEYS)
        assert torch.equal(grad, clean_grad)
    assert torch.all(clean_grad[invalid] == 0)


@pytest.mark.parametrize(("name", "options"), CASES)
@pytest.mark.parametrize("extreme", [50.0, -50.0])
def test_log_ratios_of_50_stay_finite(name: str, options: dict, extreme: float) -> None:
    old = torch.zeros(2, 3)
    new = torch.full((2, 3), extreme, requires_grad=True)
    advantages = torch.tensor([[1.0, -1.0, 2.0], [-3.0, 0.5, -0.5]])
    loss, stats = policy_loss(name, new, old, advantages, torch.ones(2, 3), **options)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(v) for v in stats.values())
    assert torch.isfinite(new.grad).all()


@pytest.mark.parametrize(("name", "options"), CASES)
def test_fully_masked_batch_gives_zero_not_nan(name: str, options: dict) -> None:
    new = torch.randn(3, 4, requires_grad=True)
    loss, stats = policy_loss(name, new, torch.randn(3, 4), torch.randn(3, 4), torch.zeros(3, 4), **options)
    loss.backward()
    assert loss.item() == 0.0
    assert all(v.item() == 0.0 for v in stats.values())
    assert torch.equal(new.grad, torch.zeros(3, 4))


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_gradient_sign(name: str, advantage: float) -> None:
    """Raising the log-probability of a positive-advantage token lowers the loss (and raises it
    for a negative advantage), on-policy and slightly off-policy."""
    for offset in (0.0, 1e-4, -1e-4):  # inside every default clip range (gspo: 3e-4)
        old = torch.tensor([[-1.2, -0.7]])
        new = (old + offset).requires_grad_(True)
        loss, _ = policy_loss(name, new, old, torch.full((1, 2), advantage), torch.ones(1, 2))
        loss.backward()
        assert torch.all(torch.sign(new.grad) == -advantage), (name, offset, new.grad)


def test_bf16_inputs_give_float32_loss() -> None:
    new, old, advantages, mask = (t.to(torch.bfloat16) for t in random_batch(3))
    loss, stats = policy_loss("ppo", new, old, advantages, mask)
    assert loss.dtype == torch.float32 and stats["ratio_mean"].dtype == torch.float32


def test_errors_name_what_is_valid() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(
        ValueError, match=r"unknown policy loss 'ppo2' \(did you mean 'ppo'\?\); valid names: cispo"
    ):
        policy_loss("ppo2", x, x, x, x)
    with pytest.raises(
        TypeError, match=r"unknown option\(s\) \['clip_hihg'\]; it accepts: clip_high, clip_low"
    ):
        policy_loss("ppo", x, x, x, x, clip_hihg=0.28)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['gamma'\]"):
        policy_loss("reinforce", x, x, x, x, gamma=1.0)
    with pytest.raises(ValueError, match="unknown loss aggregation 'token_mean'"):
        policy_loss("ppo", x, x, x, x, loss_agg="token_mean")
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        policy_loss("ppo", x, x, x, x, dual_clip=0.5)
    with pytest.raises(ValueError, match=r"advantages has shape \(2, 2\), expected \(2, 3\)"):
        policy_loss("ppo", x, x, x[:, :2], x)


def test_value_loss_by_hand() -> None:
    values = torch.tensor([[1.0, 1.9]], requires_grad=True)
    old_values = torch.tensor([[0.5, 1.8]])
    returns = torch.tensor([[2.0, 2.0]])
    loss, stats = value_loss(values, old_values, returns, torch.ones(1, 2), clip=0.2)
    # token 0: V_clip = 0.7, max((1 - 2)^2, (0.7 - 2)^2) = 1.69; token 1: within the clip, 0.01
    assert loss.item() == pytest.approx((0.5 * 1.69 + 0.5 * 0.01) / 2)
    assert stats["vf_clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    # the clipped token has no gradient; the other: (V - R) / 2
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -0.05]]))
    plain, _ = value_loss(values, old_values, returns, torch.ones(1, 2), clip=None)
    assert plain.item() == pytest.approx((0.5 * 1.0 + 0.5 * 0.01) / 2)


def test_value_loss_ignores_masked_positions() -> None:
    mask = torch.tensor([[1.0, 0.0]])
    a, _ = value_loss(
        torch.tensor([[1.0, 5.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, -9.0]]), mask
    )
    b, _ = value_loss(
        torch.tensor([[1.0, float("nan")]]),
        torch.tensor([[1.0, float("inf")]]),
        torch.tensor([[2.0, 3.0]]),
        mask,
    )
    assert a.item() == b.item() == pytest.approx(0.5)
