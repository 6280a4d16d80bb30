"""Loss aggregation: how per-token losses [B, T] become one scalar.

The choice decides how much a long response weighs against a short one:

* token-mean: every valid token of the batch weighs the same (DAPO's token-level loss);
  sum(l * m) / sum(m).
* seq-mean-token-mean: every sequence weighs the same, its tokens averaged (the original GRPO
  objective, Shao et al. 2024); mean_i [sum_t l_it m_it / sum_t m_it].
* seq-mean-token-sum: every sequence weighs by its length; mean_i [sum_t l_it m_it].
* seq-mean-token-sum-norm: Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"):
  token sums divided by a constant instead of each sequence's own length, which removes GRPO's
  length bias; mean_i [sum_t l_it m_it / norm], norm defaults to T (pass max_new_tokens to keep
  it constant across batches).

"mean_i" runs over the sequences that have at least one valid token, so fully masked rows
(padding rows, groups filtered out of the loss) do not dilute the loss; with no valid token at
all every mode gives 0. Note: verl's seq-mean-token-sum-norm divides the batch total by T
without averaging over sequences (its scale grows with the batch size); ours is the mean over
sequences of Dr. GRPO's per-sequence term, as in its paper and TRL.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlvr.algorithms._names import lookup
from rlvr.algorithms.masked import check_mask, check_shape, masked_mean, masked_sum


def _valid_rows(mask: Tensor) -> Tensor:
    return mask.bool().any(-1)  # (B,)


def _seq_mean(per_seq: Tensor, mask: Tensor) -> Tensor:
    return masked_mean(per_seq, _valid_rows(mask))


def token_mean(per_token: Tensor, mask: Tensor, norm: float | None = None) -> Tensor:  # noqa: ARG001 - AGGREGATIONS' signature
    """sum over valid tokens / number of valid tokens."""
    return masked_mean(per_token, mask)


def seq_mean_token_sum(per_token: Tensor, mask: Tensor, norm: float | None = None) -> Tensor:  # noqa: ARG001 - AGGREGATIONS' signature
    """Mean over sequences of each sequence's token sum."""
    return _seq_mean(masked_sum(per_token, mask, dim=-1), mask)


def seq_mean_token_mean(per_token: Tensor, mask: Tensor, norm: float | None = None) -> Tensor:  # noqa: ARG001 - AGGREGATIONS' signature
    """Mean over sequences of each sequence's token mean."""
    return _seq_mean(masked_mean(per_token, mask, dim=-1), mask)


def seq_mean_token_sum_norm(per_token: Tensor, mask: Tensor, norm: float | None = None) -> Tensor:
    """Mean over sequences of (token sum / norm); norm defaults to T = per_token.shape[-1]."""
    divisor = float(per_token.shape[-1] if norm is None else norm)
    if not divisor > 0:
        raise ValueError(f"seq-mean-token-sum-norm: the norm (loss_agg_norm) must be > 0, got {norm}")
    return _seq_mean(masked_sum(per_token, mask, dim=-1) / divisor, mask)


AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "token-mean": token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


def aggregate_loss(
    per_token: Tensor, mask: Tensor, mode: str = "token-mean", norm: float | None = None
) -> Tensor:
    """Aggregate per_token[B, T] over the valid tokens of mask[B, T] into a scalar (see module doc).

    `norm` is the constant of seq-mean-token-sum-norm (the other modes ignore it, so that a
    trainer can always pass its max_new_tokens).
    """
    fn = lookup(AGGREGATIONS, mode, "loss aggregation")
    batch, steps = check_mask(mask, "aggregate_loss")
    check_shape("per_token", per_token, (batch, steps), "aggregate_loss")
    if not per_token.is_floating_point():
        per_token = per_token.to(torch.float32)
    return fn(per_token, mask, norm)
