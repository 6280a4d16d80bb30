"""Group statistics and group filters for samples that share a prompt.

`group_ids[B]` gives each of the B samples the id of its prompt; the G samples of one prompt
form one group. Ids are any integers (not necessarily contiguous or sorted): they are mapped to
0..num_groups-1 with torch.unique(return_inverse=True), and per-group sums use index_add, so
everything here is vectorised.

Filters (DAPO, Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at
Scale", dynamic sampling): a group whose rewards are all equal (all correct or all wrong) has
zero advantage under any group baseline and only dilutes the loss; `zero_variance_mask` removes
such groups from the loss and `dynamic_sampling_select` keeps only groups with reward variance.
A group of one sample counts as zero-variance (it has nothing to be compared with).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from rlvr.algorithms.masked import check_mask, check_shape, wide_dtype


class GroupIndex(NamedTuple):
    """Dense group index of a batch: sample b belongs to group inverse[b] in 0..num_groups-1."""

    inverse: Tensor  # (B,) long
    counts: Tensor  # (num_groups,) long, samples per group
    num_groups: int


def group_index(group_ids: Tensor) -> GroupIndex:
    """Map arbitrary integer ids [B] to a dense GroupIndex."""
    if not isinstance(group_ids, Tensor) or group_ids.dim() != 1:
        raise ValueError(
            f"group_ids must be a 1-D tensor [B], got {getattr(group_ids, 'shape', group_ids)!r}"
        )
    if group_ids.is_floating_point() or group_ids.is_complex():
        raise TypeError(f"group_ids must hold integer ids, got dtype {group_ids.dtype}")
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return GroupIndex(inverse, counts, int(counts.numel()))


def group_sum(x: Tensor, index: GroupIndex) -> Tensor:
    """Per-group sums of a per-sample tensor x[B] -> [num_groups]."""
    return torch.zeros(index.num_groups, dtype=x.dtype, device=x.device).index_add_(0, index.inverse, x)


def group_is_constant(x: Tensor, index: GroupIndex) -> Tensor:
    """[num_groups] bool: True where every sample of the group has exactly the same value."""
    fill = torch.zeros(index.num_groups, dtype=x.dtype, device=x.device)
    high = fill.scatter_reduce(0, index.inverse, x, "amax", include_self=False)
    low = fill.scatter_reduce(0, index.inverse, x, "amin", include_self=False)
    return high == low


def group_centered(rewards: Tensor, index: GroupIndex, weights: Tensor | None = None) -> Tensor:
    """r - mean_g per sample [B], the group mean weighted by `weights` [B] when given.

    A group whose rewards are all equal gets exactly 0: the rounding residue of its mean (about
    1e-9 in float64) would otherwise become a nonzero advantage after a division by a tiny std.
    A weighted group whose weights sum to 0 falls back to the plain mean.
    Computed in float64 (see wide_dtype); the result has that dtype.
    """
    r = rewards.to(wide_dtype(rewards))
    counts = index.counts.to(r.dtype)
    mean = group_sum(r, index) / counts
    if weights is not None:
        w = weights.to(r.dtype)
        total = group_sum(w, index)
        weighted = group_sum(w * r, index) / total.clamp(min=torch.finfo(r.dtype).tiny)
        mean = torch.where(total > 0, weighted, mean)
    centered = r - mean[index.inverse]
    constant = group_is_constant(r, index)[index.inverse]
    return torch.where(constant, torch.zeros_like(centered), centered)


def group_std(centered: Tensor, index: GroupIndex) -> Tensor:
    """Unbiased standard deviation per group [num_groups] from centered values r - mean_g [B].

    sqrt(sum_g (r - mean_g)^2 / (n - 1)); 0 for a group of one.
    """
    counts = index.counts.to(centered.dtype)
    sq = group_sum(centered * centered, index)
    return torch.sqrt(sq / (counts - 1).clamp(min=1))


def group_has_variance(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """[B] bool: True for the samples of groups whose rewards are not all equal."""
    index = group_index(group_ids)
    check_shape("rewards", rewards, tuple(group_ids.shape), "group_has_variance")
    return ~group_is_constant(rewards, index)[index.inverse]


def group_stats(rewards: Tensor, correct: Tensor, group_ids: Tensor) -> dict[str, float]:
    """Batch health figures for logging (python floats; computed once per step).

    rewards[B], correct[B] (bool or 0/1: the answer alone is right), group_ids[B].
    Returns num_groups; all_correct_ratio and all_wrong_ratio (fraction of groups in which every
    sample is correct / none is); zero_variance_ratio (fraction of groups whose rewards are all
    equal, TRL's frac_reward_zero_std; a group of one counts) - the groups that give no signal.
    """
    index = group_index(group_ids)
    check_shape("rewards", rewards, tuple(group_ids.shape), "group_stats")
    check_shape("correct", correct, tuple(group_ids.shape), "group_stats")
    if index.num_groups == 0:
        return {"num_groups": 0, "all_correct_ratio": 0.0, "all_wrong_ratio": 0.0, "zero_variance_ratio": 0.0}
    right = group_sum(correct.bool().long(), index)
    groups = float(index.num_groups)
    return {
        "num_groups": index.num_groups,
        "all_correct_ratio": (right == index.counts).sum().item() / groups,
        "all_wrong_ratio": (right == 0).sum().item() / groups,
        "zero_variance_ratio": group_is_constant(rewards, index).sum().item() / groups,
    }


def zero_variance_mask(rewards: Tensor, group_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Remove zero-variance groups from the loss.

    With mask[B, T]: that mask with the rows of zero-variance groups set to 0 (same dtype).
    Without: the per-sample keep flags [B] bool (True for samples of groups whose rewards vary),
    to multiply into a loss mask as keep[:, None].
    Such groups have advantage 0 under any group baseline, but still count in a token-mean.
    """
    keep = group_has_variance(rewards, group_ids)
    if mask is None:
        return keep
    batch, _ = check_mask(mask, "zero_variance_mask")
    check_shape("rewards", rewards, (batch,), "zero_variance_mask")
    return torch.where(keep[:, None], mask, torch.zeros((), dtype=mask.dtype, device=mask.device))


def shuffle_within_groups(values: Tensor, group_ids: Tensor, generator: torch.Generator) -> Tensor:
    """values[B] with each group's entries permuted among that group's samples (uniformly, by
    `generator`): every group keeps its multiset of values, any link between a sample and its own
    value is broken. A placebo control: GRPO advantages from shuffled rewards carry the update
    noise of the real ones (same per-group statistics) and none of their signal."""
    index = group_index(group_ids)
    check_shape("values", values, tuple(group_ids.shape), "shuffle_within_groups")
    out = values.clone()
    for g in range(index.num_groups):
        members = (index.inverse == g).nonzero().squeeze(1)
        order = torch.randperm(members.numel(), generator=generator)
        out[members] = values[members[order.to(members.device)]]
    return out


@dataclass(frozen=True)
class DynamicSample:
    """What dynamic_sampling_select kept."""

    indices: Tensor  # (K,) long, ascending: the samples of the kept groups
    num_kept_groups: int
    num_dropped_groups: int  # groups dropped for zero reward variance
    num_surplus_groups: int  # groups with variance left out because max_groups was reached


def dynamic_sampling_select(
    rewards: Tensor, group_ids: Tensor, max_groups: int | None = None
) -> DynamicSample:
    """DAPO dynamic sampling: keep only the groups whose rewards vary.

    rewards[B], group_ids[B]. With max_groups, at most that many groups with variance are kept,
    in order of their first sample in the batch (DAPO over-samples, then fills the batch); the
    caller samples more prompts while num_kept_groups is short of its target.
    """
    if max_groups is not None and max_groups < 0:
        raise ValueError(f"dynamic_sampling_select: max_groups must be >= 0, got {max_groups}")
    index = group_index(group_ids)
    check_shape("rewards", rewards, tuple(group_ids.shape), "dynamic_sampling_select")
    varied = ~group_is_constant(rewards, index)  # (num_groups,)
    num_varied = int(varied.sum().item())
    keep = varied
    if max_groups is not None and num_varied > max_groups:
        positions = torch.arange(rewards.shape[0], device=rewards.device)
        first = torch.zeros(index.num_groups, dtype=torch.long, device=rewards.device).scatter_reduce(
            0, index.inverse, positions, "amin", include_self=False
        )
        # Rank the varied groups by first appearance; keep the first max_groups of them.
        order = torch.where(varied, first, torch.full_like(first, rewards.shape[0])).argsort()
        keep = torch.zeros_like(varied)
        keep[order[:max_groups]] = True
    num_kept = int(keep.sum().item())
    indices = keep[index.inverse].nonzero().squeeze(-1)
    return DynamicSample(indices, num_kept, index.num_groups - num_varied, num_varied - num_kept)


__all__ = [
    "DynamicSample",
    "GroupIndex",
    "dynamic_sampling_select",
    "group_centered",
    "group_has_variance",
    "group_index",
    "group_is_constant",
    "group_stats",
    "shuffle_within_groups",
    "group_std",
    "group_sum",
    "zero_variance_mask",
]
