"""rlvr.algorithms KL estimators and loss aggregation: hand values, masks, extremes."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import AGGREGATIONS, KL_KINDS, aggregate_loss, kl_penalty


def test_kl_by_hand() -> None:
    logprobs = torch.tensor([-1.0, -2.0, -1.0])
    ref = torch.tensor([-2.0, -1.0, -1.0])
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), torch.tensor([1.0, -1.0, 0.0]))
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k2"), torch.tensor([0.5, 0.5, 0.0]))
    # k3 = exp(ref - lp) - (ref - lp) - 1: exp(-1) + 1 - 1, exp(1) - 1 - 1, 0
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k3"), torch.tensor([math.exp(-1), math.e - 2, 0.0]))


@pytest.mark.parametrize("kind", sorted(KL_KINDS))
def test_kl_extremes_are_finite_with_finite_gradients(kind: str) -> None:
    logprobs = torch.tensor([-50.0, 0.0, -3.0], requires_grad=True)
    ref = torch.tensor([0.0, -50.0, -3.0])
    kl = kl_penalty(logprobs, ref, kind)
    kl.sum().backward()
    assert torch.isfinite(kl).all() and torch.isfinite(logprobs.grad).all()
    if kind == "k3":
        torch.testing.assert_close(kl, torch.tensor([10.0, 10.0, 0.0]))  # clamped


def test_k3_and_k2_are_nonnegative_and_k3_estimates_kl() -> None:
    torch.manual_seed(0)
    # samples from p = N(0, 1), reference q = N(0.3, 1): KL(p || q) = 0.3^2 / 2 = 0.045
    x = torch.randn(200_000, dtype=torch.float64)
    logp = -0.5 * x**2
    logq = -0.5 * (x - 0.3) ** 2
    k3 = kl_penalty(logp, logq, "k3")
    assert (k3 >= 0).all() and (kl_penalty(logp, logq, "k2") >= 0).all()
    assert k3.mean().item() == pytest.approx(0.045, abs=2e-3)
    assert kl_penalty(logp, logq, "k1").mean().item() == pytest.approx(0.045, abs=5e-3)


def test_kl_gradient_pulls_towards_reference() -> None:
    logprobs = torch.tensor([-1.0, -3.0], requires_grad=True)
    ref = torch.tensor([-2.0, -2.0])
    kl_penalty(logprobs, ref, "k3").sum().backward()
    # above the reference: lowering the log-probability lowers the penalty, and the reverse
    assert logprobs.grad[0] > 0 > logprobs.grad[1]


def test_kl_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown KL kind 'k4'.*valid names: k1, k2, k3"):
        kl_penalty(torch.zeros(2), torch.zeros(2), "k4")
    with pytest.raises(ValueError, match="differ"):
        kl_penalty(torch.zeros(2), torch.zeros(3), "k1")


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # row 2 fully masked


@pytest.mark.parametrize(
    ("mode", "norm", "expected"),
    [
        ("token-mean", None, (1 + 2 + 4) / 3),
        ("seq-mean-token-sum", None, (3 + 4) / 2),
        ("seq-mean-token-mean", None, (1.5 + 4) / 2),
        ("seq-mean-token-sum-norm", None, (3 / 3 + 4 / 3) / 2),
        ("seq-mean-token-sum-norm", 8.0, (3 / 8 + 4 / 8) / 2),
    ],
)
def test_aggregation_by_hand(mode: str, norm: float | None, expected: float) -> None:
    assert aggregate_loss(PER_TOKEN, MASK, mode, norm).item() == pytest.approx(expected)
    # values at masked positions never matter
    dirty = torch.where(MASK.bool(), PER_TOKEN, torch.nan)
    assert aggregate_loss(dirty, MASK, mode, norm).item() == pytest.approx(expected)
    # nor does a bool mask, or one more fully masked row
    longer = torch.cat([PER_TOKEN, PER_TOKEN[:1]])
    longer_mask = torch.cat([MASK, torch.zeros(1, 3)]).bool()
    assert aggregate_loss(longer, longer_mask, mode, norm).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_aggregation_of_nothing_is_zero_with_zero_gradient(mode: str) -> None:
    per_token = torch.randn(2, 4, requires_grad=True)
    loss = aggregate_loss(per_token, torch.zeros(2, 4), mode)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(per_token.grad, torch.zeros(2, 4))


def test_aggregation_weights_long_and_short_sequences_as_documented() -> None:
    # one short sequence (1 token of loss 1) and one long one (4 tokens of loss 0)
    per_token = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert aggregate_loss(per_token, mask, "token-mean").item() == pytest.approx(1 / 5)
    assert aggregate_loss(per_token, mask, "seq-mean-token-mean").item() == pytest.approx(1 / 2)


def test_aggregation_errors() -> None:
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'.*token-mean"):
        aggregate_loss(PER_TOKEN, MASK, "mean")
    with pytest.raises(ValueError, match=r"per_token has shape \(3, 2\), expected \(3, 3\)"):
        aggregate_loss(PER_TOKEN[:, :2], MASK, "token-mean")
    with pytest.raises(ValueError, match="must be > 0"):
        aggregate_loss(PER_TOKEN, MASK, "seq-mean-token-sum-norm", 0.0)
