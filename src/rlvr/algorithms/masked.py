"""Masked reductions over the valid (response) tokens of a batch.

A mask is 1 (or True) on valid tokens and 0 elsewhere; any nonzero entry counts as valid.
Invalid positions are removed with torch.where, never multiplied by 0, so that a NaN or inf
left in a padded position cannot leak into a result (0 * inf is NaN). A reduction over no
valid token is 0, not NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def wide_dtype(x: Tensor) -> torch.dtype:
    """float64 for statistics (means and variances over a batch), except on devices without it.

    Small tensors of rewards or advantages only: the extra precision keeps rounding residues of
    a mean (about 1e-7 relative in float32) from being amplified by a division by a tiny std.
    """
    return torch.float32 if x.device.type == "mps" else torch.float64


def float_dtype(x: Tensor) -> torch.dtype:
    """The dtype results are computed in: at least float32 (bf16 / fp16 inputs are upcast)."""
    return torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32


def check_shape(name: str, x: Tensor, shape: tuple[int, ...], where: str) -> None:
    """Raise ValueError naming the argument when x.shape != shape."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{where}: {name} has shape {tuple(x.shape)}, expected {tuple(shape)}")


def check_mask(mask: Tensor, where: str) -> tuple[int, int]:
    """Check that mask is 2-D [B, T] and return (B, T)."""
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{where}: mask must be a [B, T] tensor, got {shape}")
    return int(mask.shape[0]), int(mask.shape[1])


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of x over valid positions (all of them, or along `dim`)."""
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over valid positions; 0 where there is none.  x, mask: same shape."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """whiten(x) = (x - mean) / sqrt(var + eps) over the valid positions of the whole batch.

    var is the unbiased variance (divided by N - 1 for N valid positions; 0 when N < 2).
    Statistics are taken in float64 (see wide_dtype); the result has x's dtype and is 0 at
    invalid positions.  x, mask: [B, T] (any shape, as long as they match).
    """
    valid = mask.bool()
    xw = x.to(wide_dtype(x))
    count = valid.sum().to(xw.dtype)
    mean = masked_sum(xw, valid) / count.clamp(min=1)
    centered = torch.where(valid, xw - mean, torch.zeros((), dtype=xw.dtype, device=xw.device))
    var = (centered * centered).sum() / (count - 1).clamp(min=1)
    return (centered * torch.rsqrt(var + eps)).to(x.dtype)


def top_fraction_mask(x: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """True on the ceil(fraction * N) valid positions of the batch with the largest x (N valid
    positions; ties go to the earlier position in row-major order), False elsewhere.

    With x the per-token entropy this is the high-entropy ("forking") token selection of Wang et
    al. 2025, "Beyond the 80/20 Rule", who keep the policy gradient on the top 20% of a batch's
    tokens. x, mask: [B, T] (any shape, as long as they match); NaN counts as the smallest value.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top_fraction_mask: fraction must be in (0, 1], got {fraction}")
    valid = mask.bool().reshape(-1)
    positions = valid.nonzero().squeeze(1)
    keep = torch.zeros_like(valid)
    if positions.numel():
        values = x.reshape(-1)[positions].detach().float().nan_to_num(nan=float("-inf"))
        count = math.ceil(fraction * positions.numel() - 1e-9)
        order = torch.sort(values, descending=True, stable=True).indices[:count]
        keep[positions[order]] = True
    return keep.reshape(mask.shape)
