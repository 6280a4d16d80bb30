"""Per-token estimators of KL(policy || reference) from the log-probabilities of sampled tokens.

With x = logprobs - ref_logprobs at tokens sampled from the policy (J. Schulman, "Approximating
KL Divergence", 2020):

* k1 = x                                unbiased, high variance, can be negative;
* k2 = x^2 / 2                          biased, low variance, never negative;
* k3 = exp(-x) + x - 1                  unbiased, low variance, never negative; clamped to
  [-10, 10] as in verl's "low_var_kl" (a token that the reference finds very unlikely must not
  dominate the loss).

Use the result as a loss term (GRPO's KL loss: aggregate it with the loss mask and add
kl_coef times it) or fold it into token rewards (PPO / REINFORCE++: reward - kl_coef * KL,
see advantages.token_rewards). Results are at least float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlvr.algorithms._names import lookup
from rlvr.algorithms.masked import float_dtype

# k3 exponentiates the log-ratio: keep it where exp() and its gradient are finite (exp(20) is
# 5e8, far past the clamp of the result at 10, so values are unchanged by this bound).
_K3_LOG_RATIO_BOUND = 20.0
K3_CLAMP = 10.0


def _log_ratio(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"kl_penalty: logprobs {tuple(logprobs.shape)} and ref_logprobs "
            f"{tuple(ref_logprobs.shape)} differ"
        )
    dtype = torch.promote_types(float_dtype(logprobs), float_dtype(ref_logprobs))
    return logprobs.to(dtype) - ref_logprobs.to(dtype)


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = logprobs - ref_logprobs."""
    return _log_ratio(logprobs, ref_logprobs)


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = 0.5 * (logprobs - ref_logprobs)^2."""
    x = _log_ratio(logprobs, ref_logprobs)
    return 0.5 * x * x


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = exp(ref - logprobs) - (ref - logprobs) - 1, clamped to [-10, 10]."""
    d = (-_log_ratio(logprobs, ref_logprobs)).clamp(-_K3_LOG_RATIO_BOUND, _K3_LOG_RATIO_BOUND)
    return (torch.exp(d) - d - 1.0).clamp(-K3_CLAMP, K3_CLAMP)


KL_KINDS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """Per-token KL estimate (same shape as logprobs, e.g. [B, T]) of kind k1, k2 or k3.

    Padded positions are not masked here: aggregate with the loss mask (aggregate_loss) or pass
    the result as `kl` to compute_advantages, which both ignore invalid positions.
    """
    return lookup(KL_KINDS, kind, "KL kind")(logprobs, ref_logprobs)
