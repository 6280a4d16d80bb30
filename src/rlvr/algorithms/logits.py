"""Log-probabilities of chosen tokens and entropies, from logits, without a [.., V] float32 copy.

A model's logits are [B, T, V] with V up to ~150k (Qwen2.5): a float32 log_softmax of the whole
tensor, plus its saved copy for backward, costs several times the logits themselves. Both
functions here walk over blocks of about `chunk_elements` logits (2^25 by default, 128 MiB in
float32), upcast one block at a time, and keep only [B, T] results. Their backward passes are
written by hand (torch.autograd.Function) and recompute the softmax block by block, so no
[.., V] intermediate is kept between forward and backward; the only [.., V] tensor created is
the gradient itself, in the logits' dtype.

Results are float32 (float64 for float64 logits). `temperature` divides the logits first, as
the sampler did (the log-probabilities must be those of the distribution that was sampled).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from rlvr.algorithms.masked import float_dtype

DEFAULT_CHUNK_ELEMENTS = 2**25

Block = tuple[int, int, int, int]  # rows b0:b1 and positions t0:t1 of a [B, T, V] tensor


def _blocks(batch: int, steps: int, vocab: int, chunk_elements: int) -> list[Block]:
    """Cover [batch, steps] with blocks of at most max(chunk_elements // vocab, 1) positions:
    whole rows when a row fits, otherwise pieces of one row (both are views, never copies of
    the full tensor)."""
    rows = max(chunk_elements // max(vocab, 1), 1)
    if steps == 0 or batch == 0:
        return []
    if rows >= steps:
        per_block = rows // steps
        return [(b, min(b + per_block, batch), 0, steps) for b in range(0, batch, per_block)]
    return [(b, b + 1, t, min(t + rows, steps)) for b in range(batch) for t in range(0, steps, rows)]


def _as_3d(logits: Tensor) -> Tensor:
    if logits.dim() < 2:
        raise ValueError(f"logits must be [..., V] with at least 2 dims, got shape {tuple(logits.shape)}")
    if logits.dim() == 2:
        return logits.unsqueeze(0)
    return logits.reshape(-1, logits.shape[-2], logits.shape[-1])


def _scaled(chunk: Tensor, temperature: float, dtype: torch.dtype, copy: bool) -> Tensor:
    """chunk / temperature in `dtype`, a fresh tensor when copy (safe to modify in place)."""
    z = chunk.to(dtype, copy=copy)
    if temperature != 1.0:
        z = z.div_(temperature) if copy else z / temperature
    return z


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits / temperature)[ids], blockwise; see token_logprobs_from_logits."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, ids: Tensor, temperature: float, chunk_elements: int) -> Tensor:
        x = _as_3d(logits)
        idx = ids.reshape(x.shape[:2])
        dtype = float_dtype(logits)
        out = torch.empty(x.shape[:2], dtype=dtype, device=logits.device)
        lse = torch.empty_like(out)
        for b0, b1, t0, t1 in _blocks(x.shape[0], x.shape[1], x.shape[2], chunk_elements):
            z = _scaled(x[b0:b1, t0:t1], temperature, dtype, copy=False)  # (b, t, V)
            block_lse = torch.logsumexp(z, dim=-1)
            lse[b0:b1, t0:t1] = block_lse
            out[b0:b1, t0:t1] = z.gather(-1, idx[b0:b1, t0:t1, None]).squeeze(-1) - block_lse
        ctx.save_for_backward(logits, ids, lse)
        ctx.temperature = temperature
        ctx.chunk_elements = chunk_elements
        return out.reshape(ids.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None]:
        logits, ids, lse = ctx.saved_tensors
        x = _as_3d(logits)
        idx = ids.reshape(x.shape[:2])
        g = grad_out.reshape(x.shape[:2]).to(lse.dtype) / ctx.temperature
        grad = torch.empty(x.shape, dtype=logits.dtype, device=logits.device)
        for b0, b1, t0, t1 in _blocks(x.shape[0], x.shape[1], x.shape[2], ctx.chunk_elements):
            gb = g[b0:b1, t0:t1, None]
            # d/dz [z_id - logsumexp(z)] = onehot(id) - softmax(z)
            p = _scaled(x[b0:b1, t0:t1], ctx.temperature, lse.dtype, copy=True)
            p.sub_(lse[b0:b1, t0:t1, None]).exp_().mul_(-gb)
            p.scatter_add_(-1, idx[b0:b1, t0:t1, None], gb)
            grad[b0:b1, t0:t1] = p
        return grad.reshape(logits.shape), None, None, None


class _Entropy(torch.autograd.Function):
    """Entropy of softmax(logits / temperature), blockwise; see entropy_from_logits."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, temperature: float, chunk_elements: int) -> Tensor:
        x = _as_3d(logits)
        dtype = float_dtype(logits)
        out = torch.empty(x.shape[:2], dtype=dtype, device=logits.device)
        lse = torch.empty_like(out)
        for b0, b1, t0, t1 in _blocks(x.shape[0], x.shape[1], x.shape[2], chunk_elements):
            logp = _scaled(x[b0:b1, t0:t1], temperature, dtype, copy=True)
            block_lse = torch.logsumexp(logp, dim=-1)
            lse[b0:b1, t0:t1] = block_lse
            # A -inf logit has p = 0: clamping its log-probability keeps 0 * log p finite.
            logp.sub_(block_lse[..., None]).clamp_(min=torch.finfo(dtype).min)
            out[b0:b1, t0:t1] = -(logp.exp().mul_(logp)).sum(-1)
        ctx.save_for_backward(logits, lse, out)
        ctx.temperature = temperature
        ctx.chunk_elements = chunk_elements
        return out.reshape(logits.shape[:-1])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None]:
        logits, lse, entropy = ctx.saved_tensors
        x = _as_3d(logits)
        g = grad_out.reshape(x.shape[:2]).to(lse.dtype) / ctx.temperature
        grad = torch.empty(x.shape, dtype=logits.dtype, device=logits.device)
        for b0, b1, t0, t1 in _blocks(x.shape[0], x.shape[1], x.shape[2], ctx.chunk_elements):
            # dH/dz_k = -p_k * (log p_k + H)
            logp = _scaled(x[b0:b1, t0:t1], ctx.temperature, lse.dtype, copy=True)
            logp.sub_(lse[b0:b1, t0:t1, None]).clamp_(min=torch.finfo(lse.dtype).min)
            p = logp.exp()
            logp.add_(entropy[b0:b1, t0:t1, None]).mul_(p).mul_(-g[b0:b1, t0:t1, None])
            grad[b0:b1, t0:t1] = logp
        return grad.reshape(logits.shape), None, None


def token_logprobs_from_logits(
    logits: Tensor, ids: Tensor, temperature: float = 1.0, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> Tensor:
    """log softmax(logits / temperature)[ids]: logits [..., V] (e.g. [B, T, V]), ids [...] -> [...].

    The logits at position t must be those that predicted ids[t] (for a causal LM, the model's
    output shifted by one). Differentiable with respect to logits; float32 result.
    """
    _check_temperature(temperature)
    if tuple(ids.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"ids has shape {tuple(ids.shape)}, expected the logits' leading shape {tuple(logits.shape[:-1])}"
        )
    if ids.is_floating_point():
        raise TypeError(f"ids must be integer token ids, got dtype {ids.dtype}")
    result: Tensor = _TokenLogprobs.apply(logits, ids.long(), float(temperature), int(chunk_elements))
    return result


def entropy_from_logits(
    logits: Tensor, temperature: float = 1.0, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> Tensor:
    """Entropy H = -sum_v p_v log p_v of p = softmax(logits / temperature): [..., V] -> [...].

    Differentiable (for an entropy bonus: loss - entropy_coef * aggregate_loss(H, mask); the
    coefficient is 0 by default in the R1 recipes, which log the entropy without training on it).
    """
    _check_temperature(temperature)
    result: Tensor = _Entropy.apply(logits, float(temperature), int(chunk_elements))
    return result
