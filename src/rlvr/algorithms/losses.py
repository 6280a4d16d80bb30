"""Policy losses and the PPO value loss.

    policy_loss(name, logprobs[B, T], old_logprobs[B, T], advantages[B, T], mask[B, T], **options)
        -> (loss: scalar tensor, stats: dict[str, 0-dim tensor])

logprobs are the current policy's log-probabilities of the sampled tokens (with gradient),
old_logprobs those of the policy that sampled them (no gradient), advantages come from
compute_advantages. POLICY_LOSSES maps each name to a function that returns the per-token
terms; policy_loss then aggregates them with `loss_agg` (see aggregation.py; default
token-mean; `loss_agg_norm` is the constant of seq-mean-token-sum-norm).

The importance ratio is exp(clamp(logprobs - old_logprobs, -20, 20)): a log-ratio of +-50
(a token the old policy found impossible) stays finite instead of overflowing to inf; past the
bound the ratio is constant, so such a token gets no gradient through the ratio.

Values at masked positions never matter: logprobs, old_logprobs and advantages are replaced by
0 there before any arithmetic (a NaN in padding can reach neither the loss nor the gradient).

Stats, all masked means over the valid tokens (0 when there are none), returned as detached
0-dim float32 tensors on the input's device, so that calling policy_loss once per micro-batch
forces no device synchronisation; call .item() when logging:
    pg_clipfrac        fraction of tokens where the upper clip is active (the ratio is above
                       1 + clip_high and the clip removes the gradient: A > 0 for ppo / gspo;
                       any sign for cispo, whose weight is capped)
    pg_clipfrac_lower  fraction where the lower clip is active (ratio < 1 - clip_low, A < 0)
    pg_clipfrac_dual   fraction where the dual clip caps the loss (A < 0, ratio > dual_clip)
    ppo_kl             approximate KL(old || new) = mean(old_logprobs - logprobs) (k1)
    ratio_mean, ratio_max   of the ratio the loss uses (sequence-level for gspo)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rlvr.algorithms._names import check_options, lookup
from rlvr.algorithms.aggregation import aggregate_loss
from rlvr.algorithms.masked import check_mask, check_shape, float_dtype, masked_mean

LOG_RATIO_BOUND = 20.0
SHARED_OPTIONS = ("clip_low", "clip_high", "dual_clip", "loss_agg", "loss_agg_norm")


class TokenTerms(NamedTuple):
    """What a policy-loss function returns, all [B, T]."""

    loss: Tensor  # per-token loss, with gradient
    ratio: Tensor  # the importance ratio the loss used, detached
    clipped_upper: Tensor  # bool
    clipped_lower: Tensor  # bool
    clipped_dual: Tensor  # bool


def importance_ratio(log_ratio: Tensor) -> Tensor:
    """exp(clamp(log_ratio, -20, 20)): finite for any finite log-ratio."""
    return torch.exp(log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND))


def _check_clip(name: str, value: float) -> None:
    if not 0 <= value:
        raise ValueError(f"policy loss option {name} must be >= 0, got {value}")


def clipped_surrogate(
    ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float, dual_clip: float | None
) -> TokenTerms:
    """PPO's clipped objective per token (Schulman et al. 2017), with an optional dual clip.

    l = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)); with dual_clip c and
    A < 0, l = min(l, -c * A) (Ye et al. 2020, "Mastering Complex Control in MOBA Games"),
    which bounds the loss of a negative-advantage token whose ratio has exploded.
    """
    _check_clip("clip_low", clip_low)
    _check_clip("clip_high", clip_high)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    r = ratio.detach()
    upper = (advantages > 0) & (r > 1.0 + clip_high)
    lower = (advantages < 0) & (r < 1.0 - clip_low)
    dual = torch.zeros_like(upper)
    if dual_clip is not None:
        if not dual_clip > 1.0:
            raise ValueError(f"policy loss option dual_clip must be > 1 (e.g. 3), got {dual_clip}")
        cap = -dual_clip * advantages
        negative = advantages < 0
        dual = negative & (loss.detach() > cap)
        loss = torch.where(negative, torch.minimum(loss, cap), loss)
    return TokenTerms(loss, r, upper, lower, dual)


def ppo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,  # noqa: ARG001 - POLICY_LOSSES' signature
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> TokenTerms:
    """PPO clip with a token-level ratio exp(logprobs - old_logprobs) (see clipped_surrogate).

    DAPO's clip-higher (Yu et al. 2025) is clip_high = 0.28; the two-sided guard used by
    Light-R1 / MiniMax and verl is dual_clip = 3.
    """
    return clipped_surrogate(
        importance_ratio(logprobs - old_logprobs), advantages, clip_low, clip_high, dual_clip
    )


def gspo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    dual_clip: float | None = None,
) -> TokenTerms:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): a sequence-level ratio
    s_i = exp(mean over the valid tokens of sequence i of (logprobs - old_logprobs)), clipped like ppo.

    Written in the paper's token form s_it = sg(s_i) * pi_t / sg(pi_t): its value is s_i on every
    token and its gradient s_i * grad log pi_t, so that with seq-mean-token-mean aggregation (the
    paper's objective) the gradient is exactly GSPO's. The defaults clip_low = 3e-4 and
    clip_high = 4e-4 are the paper's: a sequence ratio moves far less than a token ratio.
    """
    seq_log_ratio = masked_mean(logprobs - old_logprobs, mask, dim=-1)  # (B,)
    token_log_ratio = seq_log_ratio.detach()[:, None] + logprobs - logprobs.detach()  # (B, T)
    return clipped_surrogate(importance_ratio(token_log_ratio), advantages, clip_low, clip_high, dual_clip)


def cispo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,  # noqa: ARG001 - POLICY_LOSSES' signature
    *,
    clip_high: float = 0.28,
) -> TokenTerms:
    """CISPO (MiniMax 2025, "MiniMax-M1"): l = -sg(clip(ratio, upper=1 + clip_high)) * A * logprobs.

    The importance weight is clipped and detached instead of the update: every token keeps its
    gradient (ppo's clip zeroes it), only its weight is capped. As in MiniMax-M1 the weight has
    no lower bound.
    """
    _check_clip("clip_high", clip_high)
    ratio = importance_ratio(logprobs - old_logprobs).detach()
    upper = ratio > 1.0 + clip_high
    never = torch.zeros_like(upper)
    return TokenTerms(-ratio.clamp(max=1.0 + clip_high) * advantages * logprobs, ratio, upper, never, never)


def reinforce_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> TokenTerms:  # noqa: ARG001 - POLICY_LOSSES' signature
    """REINFORCE (Williams 1992): l = -A * logprobs, no importance ratio (on-policy only).

    old_logprobs only feed the stats (ratio, ppo_kl), which show how off-policy the batch is.
    """
    ratio = importance_ratio(logprobs - old_logprobs).detach()
    never = torch.zeros_like(ratio, dtype=torch.bool)
    return TokenTerms(-advantages * logprobs, ratio, never, never, never)


POLICY_LOSSES: dict[str, Callable[..., TokenTerms]] = {
    "ppo": ppo_loss,
    "gspo": gspo_loss,
    "cispo": cispo_loss,
    "reinforce": reinforce_loss,
}


def _masked_max(x: Tensor, mask: Tensor) -> Tensor:
    if x.numel() == 0:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    valid = mask.bool()
    top = torch.where(valid, x, torch.full((), float("-inf"), dtype=x.dtype, device=x.device)).amax()
    return torch.where(valid.any(), top, torch.zeros_like(top))


def _sanitize(x: Tensor, valid: Tensor, dtype: torch.dtype) -> Tensor:
    """x in `dtype` with invalid positions set to 0 (keeps the gradient of valid ones)."""
    return torch.where(valid, x.to(dtype), torch.zeros((), dtype=dtype, device=x.device))


def policy_loss(
    name: str,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    **options: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar policy loss of `name` and its stats (see the module doc).

    Options: those of the loss function (POLICY_LOSSES[name]), loss_agg (default "token-mean")
    and loss_agg_norm (the constant of seq-mean-token-sum-norm). Every loss also accepts the
    shared clip options (clip_low, clip_high, dual_clip) and ignores those it does not use, so
    that a trainer can pass one set; any other unknown option is a TypeError.
    """
    fn = lookup(POLICY_LOSSES, name, "policy loss")
    where = f"policy_loss({name!r})"
    check_options(fn, options, where, extra=SHARED_OPTIONS)
    loss_agg = str(options.pop("loss_agg", "token-mean"))
    norm = options.pop("loss_agg_norm", None)
    # A shared clip option that this loss does not use (reinforce has no ratio) is dropped.
    own = set(inspect.signature(fn).parameters)
    options = {key: value for key, value in options.items() if key in own}
    batch, steps = check_mask(mask, where)
    for arg_name, arg in (("logprobs", logprobs), ("old_logprobs", old_logprobs), ("advantages", advantages)):
        check_shape(arg_name, arg, (batch, steps), where)
    valid = mask.bool()
    dtype = float_dtype(logprobs)
    logprobs = _sanitize(logprobs, valid, dtype)
    old_logprobs = _sanitize(old_logprobs.detach(), valid, dtype)
    advantages = _sanitize(advantages.detach(), valid, dtype)

    terms = fn(logprobs, old_logprobs, advantages, valid, **options)
    loss = aggregate_loss(terms.loss, valid, loss_agg, None if norm is None else float(norm))
    with torch.no_grad():
        stats = {
            "pg_clipfrac": masked_mean(terms.clipped_upper.float(), valid),
            "pg_clipfrac_lower": masked_mean(terms.clipped_lower.float(), valid),
            "pg_clipfrac_dual": masked_mean(terms.clipped_dual.float(), valid),
            "ppo_kl": masked_mean((old_logprobs - logprobs).float(), valid),
            "ratio_mean": masked_mean(terms.ratio.float(), valid),
            "ratio_max": _masked_max(terms.ratio.float(), valid),
        }
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float | None = 0.2,
    loss_agg: str = "token-mean",
    loss_agg_norm: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped PPO value loss for a critic (with the gae advantages), all inputs [B, T].

    l = 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = old_V + clamp(V - old_V, -clip, clip);
    clip = None gives the plain 0.5 * (V - R)^2. R are the returns of gae_advantages_returns.
    Stats (detached 0-dim tensors): vf_clipfrac (fraction of valid tokens where the clipped term
    is the larger), vpred_mean.
    """
    batch, steps = check_mask(mask, "value_loss")
    for arg_name, arg in (("values", values), ("old_values", old_values), ("returns", returns)):
        check_shape(arg_name, arg, (batch, steps), "value_loss")
    valid = mask.bool()
    dtype = float_dtype(values)
    values = _sanitize(values, valid, dtype)
    old_values = _sanitize(old_values.detach(), valid, dtype)
    returns = _sanitize(returns.detach(), valid, dtype)
    unclipped = (values - returns) ** 2
    if clip is None:
        per_token = 0.5 * unclipped
        clipped_active = torch.zeros_like(valid)
    else:
        if not clip > 0:
            raise ValueError(f"value_loss: clip must be > 0 (or None), got {clip}")
        clipped_values = old_values + (values - old_values).clamp(-clip, clip)
        clipped = (clipped_values - returns) ** 2
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        clipped_active = clipped.detach() > unclipped.detach()
    loss = aggregate_loss(per_token, valid, loss_agg, loss_agg_norm)
    with torch.no_grad():
        stats = {
            "vf_clipfrac": masked_mean(clipped_active.float(), valid),
            "vpred_mean": masked_mean(values.float(), valid),
        }
    return loss, stats
