"""The RL algorithm core: pure functions of torch tensors.

No config objects, no I/O, no distributed calls, and nothing else from rlvr. B sequences, T
response tokens, `mask[B, T]` is 1 on response tokens, `group_ids[B]` gives each sample the id
of its prompt. Each family is one name table; an unknown name is a ValueError listing the valid
ones, an unknown option a TypeError listing the accepted ones.

    compute_advantages(name, rewards[B], group_ids[B], mask[B, T], **options) -> [B, T]   ADVANTAGES
    policy_loss(name, logprobs, old_logprobs, advantages, mask, **options) -> (loss, stats)
                                                                                        POLICY_LOSSES
    kl_penalty(logprobs, ref_logprobs, kind) -> per-token KL                            KL_KINDS
    aggregate_loss(per_token[B, T], mask[B, T], mode, norm=None) -> scalar               AGGREGATIONS
    value_loss(values, old_values, returns, mask, clip=0.2) -> (loss, stats)   critic of `gae`
    token_logprobs_from_logits(logits[B, T, V], ids[B, T], temperature) -> [B, T]   blockwise
    entropy_from_logits(logits[B, T, V], temperature) -> [B, T]                      blockwise
    group_stats(rewards, correct, group_ids) -> dict of python floats
    zero_variance_mask(rewards, group_ids, mask=None), dynamic_sampling_select(rewards, group_ids, max_groups)
    shuffle_within_groups(values, group_ids, generator): a group's values permuted among its samples
    top_fraction_mask(x[B, T], mask[B, T], fraction): the batch's largest x (high-entropy tokens)

Files: advantages.py, losses.py, kl.py, aggregation.py, logits.py, groups.py, masked.py.
"""

from rlvr.algorithms.advantages import (
    ADVANTAGES,
    compute_advantages,
    discounted_returns,
    gae_advantages_returns,
    token_rewards,
)
from rlvr.algorithms.aggregation import AGGREGATIONS, aggregate_loss
from rlvr.algorithms.groups import (
    DynamicSample,
    dynamic_sampling_select,
    group_has_variance,
    group_stats,
    shuffle_within_groups,
    zero_variance_mask,
)
from rlvr.algorithms.kl import KL_KINDS, kl_penalty
from rlvr.algorithms.logits import entropy_from_logits, token_logprobs_from_logits
from rlvr.algorithms.losses import POLICY_LOSSES, TokenTerms, policy_loss, value_loss
from rlvr.algorithms.masked import masked_mean, masked_sum, masked_whiten, top_fraction_mask

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "KL_KINDS",
    "POLICY_LOSSES",
    "DynamicSample",
    "TokenTerms",
    "aggregate_loss",
    "compute_advantages",
    "discounted_returns",
    "dynamic_sampling_select",
    "entropy_from_logits",
    "gae_advantages_returns",
    "group_has_variance",
    "group_stats",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "masked_whiten",
    "policy_loss",
    "shuffle_within_groups",
    "token_logprobs_from_logits",
    "token_rewards",
    "top_fraction_mask",
    "value_loss",
    "zero_variance_mask",
]
