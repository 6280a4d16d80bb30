"""rlvr.algorithms blockwise token log-probabilities and entropies: equal to the plain formulas."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import entropy_from_logits, token_logprobs_from_logits

# chunk_elements values that exercise each block layout for logits [3, 5, 11]: several whole
# rows per block, one row per block, pieces of a row, one position per block.
CHUNKS = [10_000, 55, 30, 1]


def reference_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)
    return logp.gather(-1, ids[..., None]).squeeze(-1)


def reference_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def make(seed: int = 0, shape: tuple[int, ...] = (3, 5, 11)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g) * 3
    ids = torch.randint(0, shape[-1], shape[:-1], generator=g)
    return logits, ids


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_value_and_gradient(chunk: int, temperature: float) -> None:
    logits, ids = make()
    x = logits.clone().requires_grad_(True)
    out = token_logprobs_from_logits(x, ids, temperature=temperature, chunk_elements=chunk)
    assert out.shape == ids.shape and out.dtype == torch.float32
    weights = torch.randn(ids.shape)
    (out * weights).sum().backward()

    y = logits.double().requires_grad_(True)
    expected = reference_logprobs(y, ids, temperature)
    (expected * weights.double()).sum().backward()
    torch.testing.assert_close(out.double(), expected.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), y.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_entropy_value_and_gradient(chunk: int, temperature: float) -> None:
    logits, _ = make(1)
    x = logits.clone().requires_grad_(True)
    out = entropy_from_logits(x, temperature=temperature, chunk_elements=chunk)
    assert out.shape == logits.shape[:-1] and out.dtype == torch.float32
    weights = torch.randn(out.shape)
    (out * weights).sum().backward()

    y = logits.double().requires_grad_(True)
    expected = reference_entropy(y, temperature)
    (expected * weights.double()).sum().backward()
    torch.testing.assert_close(out.double(), expected.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), y.grad, rtol=1e-4, atol=1e-6)


def test_gradcheck_in_float64() -> None:
    logits, ids = make(2, (2, 3, 5))
    x = logits.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: token_logprobs_from_logits(z, ids, 0.9, chunk_elements=7), (x,))
    assert torch.autograd.gradcheck(lambda z: entropy_from_logits(z, 0.9, chunk_elements=7), (x,))


def test_entropy_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0], [0.0, 0.0, -torch.inf, -torch.inf]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([math.log(4), 0.0, math.log(2)]))


def test_minus_inf_logits_give_finite_gradients() -> None:
    logits = torch.tensor([[1.0, 2.0, -torch.inf]], requires_grad=True)
    entropy_from_logits(logits).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 2] == 0
    logits.grad = None
    token_logprobs_from_logits(logits, torch.tensor([1])).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_non_contiguous_bf16_logits_of_a_causal_lm() -> None:
    # a causal LM's logits for the response: positions P-1 .. P+T-2 of [B, P+T, V], a strided view
    full, ids = make(3, (2, 9, 13))
    response = full.to(torch.bfloat16)[:, 3:8]
    response_ids = ids[:, 4:9]
    leaf = full.to(torch.bfloat16).requires_grad_(True)
    out = token_logprobs_from_logits(leaf[:, 3:8], response_ids, chunk_elements=20)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out.double(), reference_logprobs(response.float(), response_ids, 1.0), rtol=1e-5, atol=1e-5
    )
    out.sum().backward()
    assert leaf.grad.dtype == torch.bfloat16
    assert torch.all(leaf.grad[:, :3] == 0) and torch.all(leaf.grad[:, 8:] == 0)
    # each position's gradient is onehot - softmax: it sums to 0 over the vocabulary
    assert leaf.grad[:, 3:8].float().sum(-1).abs().max().item() < 1e-2


def test_two_dimensional_logits_and_errors() -> None:
    logits, ids = make(4, (6, 7))
    torch.testing.assert_close(
        token_logprobs_from_logits(logits, ids).double(),
        reference_logprobs(logits, ids, 1.0),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="expected the logits' leading shape"):
        token_logprobs_from_logits(logits, ids[:5])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        entropy_from_logits(logits, temperature=0.0)
