"""Advantage estimators: sequence rewards -> per-token advantages.

    compute_advantages(name, rewards[B], group_ids[B], mask[B, T], **options) -> advantages[B, T]

B sequences, T response tokens; mask is 1 on response tokens; group_ids puts the samples of one
prompt in one group (any integer ids); r is the sequence reward, mean_g and std_g the mean and
unbiased standard deviation of its group. Sequence-level values are broadcast to every response
token; advantages are 0 at masked positions. The mask only broadcasts and weighs: every sample
counts in its group's statistics, whether or not it has response tokens.

ADVANTAGES maps each name to its function. A group whose rewards are all equal gets exactly 0
from every group baseline (see groups.group_centered). Advantages are float32 (float64 for
float64 rewards); group statistics and whitening are computed in float64.

Options by name (anything else is an error):
    grpo                   eps=1e-6
    dr_grpo, rloo, gpg, opo, reinforce_pp_baseline      none
    reinforce_pp           gamma=1.0, kl=None [B, T], kl_coef=None
    gae                    values [B, T] (required), gamma=1.0, lam=1.0, kl=None, kl_coef=None
    prefix_tree            tokens [B, T] (required: the response token ids), eps=1e-6
For PPO with a critic, gae_advantages_returns also gives the returns (the value targets).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rlvr.algorithms._names import check_options, lookup
from rlvr.algorithms.groups import group_centered, group_index, group_is_constant, group_std
from rlvr.algorithms.masked import check_mask, check_shape, float_dtype, masked_whiten


def _out_dtype(rewards: Tensor) -> torch.dtype:
    return float_dtype(rewards)


def _broadcast(per_sequence: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B] -> [B, T]: the sequence value on every valid token, 0 elsewhere."""
    values = per_sequence.to(dtype)[:, None].expand(mask.shape)
    return torch.where(mask.bool(), values, torch.zeros((), dtype=dtype, device=values.device))


def grpo_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor, *, eps: float = 1e-6) -> Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath): A = (r - mean_g) / (std_g + eps).

    std_g is unbiased; a group of one (and any group of equal rewards) gets 0.
    """
    index = group_index(group_ids)
    centered = group_centered(rewards, index)  # (B,)
    std = group_std(centered, index)[index.inverse]  # (B,)
    return _broadcast(centered / (std + eps), mask, _out_dtype(rewards))


def dr_grpo_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A = r - mean_g.

    No division by std_g, which over-weights groups that are nearly all right or all wrong.
    Pair it with the seq-mean-token-sum-norm aggregation to also remove the length bias.
    """
    index = group_index(group_ids)
    return _broadcast(group_centered(rewards, index), mask, _out_dtype(rewards))


def rloo_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
    """RLOO (Ahmadian et al. 2024, "Back to Basics"): r minus the mean of the other samples of its group.

    r_i - (S_g - r_i) / (n - 1) = n / (n - 1) * (r_i - mean_g); a group of one gets 0.
    """
    index = group_index(group_ids)
    centered = group_centered(rewards, index)
    n = index.counts.to(centered.dtype)[index.inverse]
    scale = torch.where(n > 1, n / (n - 1).clamp(min=1), torch.zeros_like(n))
    return _broadcast(centered * scale, mask, _out_dtype(rewards))


def reinforce_pp_baseline_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
    """REINFORCE++ with a group baseline (Hu 2025, "REINFORCE++"): whiten(r - mean_g).

    whiten(x) = (x - mean) / sqrt(var + 1e-8) over the valid tokens of the batch (unbiased
    var), so a long response weighs more in the batch statistics, as in OpenRLHF.
    """
    index = group_index(group_ids)
    centered = group_centered(rewards, index)
    return masked_whiten(_broadcast(centered, mask, centered.dtype), mask).to(_out_dtype(rewards))


def gpg_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
    """GPG (Chu et al. 2025, "GPG: A Simple and Strong Reinforcement Learning Baseline"):
    A = (r - mean_g) * B / M, where M counts the samples with r - mean_g != 0.

    The factor restores the gradient scale lost to samples of zero advantage (M = 0 gives 0).
    """
    index = group_index(group_ids)
    centered = group_centered(rewards, index)
    nonzero = (centered != 0).sum().to(centered.dtype)
    scale = rewards.shape[0] / nonzero.clamp(min=1)
    return _broadcast(centered * scale, mask, _out_dtype(rewards))


def opo_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
    """OPO (Hao et al. 2025, "On-Policy RL with Optimal Reward Baseline"): A = r - b_g,
    b_g = sum_g(len_i * r_i) / sum_g(len_i), the length-weighted group mean.

    len_i is the number of valid tokens of sequence i (from the mask); the baseline that
    minimises gradient variance when the gradient norm grows with length.
    """
    index = group_index(group_ids)
    lengths = mask.bool().sum(-1)  # (B,)
    return _broadcast(group_centered(rewards, index, weights=lengths), mask, _out_dtype(rewards))


def token_rewards(
    rewards: Tensor, mask: Tensor, kl: Tensor | None = None, kl_coef: float | None = None
) -> Tensor:
    """Per-token rewards [B, T]: the sequence reward on the last valid token of each row, minus
    kl_coef * kl[B, T] on every valid token when a KL is given; 0 at invalid positions.

    A row without valid tokens gets no reward. kl at invalid positions is ignored.
    """
    batch, steps = check_mask(mask, "token_rewards")
    check_shape("rewards", rewards, (batch,), "token_rewards")
    valid = mask.bool()
    dtype = _out_dtype(rewards)
    if kl is not None and kl_coef is None:
        raise ValueError("token_rewards: kl is given but kl_coef is not; pass both (or neither)")
    if kl_coef is not None and kl_coef != 0 and kl is None:
        raise ValueError(f"token_rewards: kl_coef={kl_coef} needs the per-token kl [B, T]")
    if kl is not None and kl_coef is not None:
        check_shape("kl", kl, (batch, steps), "token_rewards")
        per_token = torch.where(
            valid, -kl_coef * kl.to(dtype), torch.zeros((), dtype=dtype, device=kl.device)
        )
    else:
        per_token = torch.zeros((batch, steps), dtype=dtype, device=mask.device)
    positions = torch.arange(1, steps + 1, device=mask.device)
    last = ((valid.long() * positions).amax(-1) - 1).clamp(min=0)  # (B,) index of the last valid token
    final = torch.where(valid.any(-1), rewards.to(dtype), torch.zeros((), dtype=dtype, device=rewards.device))
    return per_token.scatter_add(1, last[:, None], final[:, None])


def discounted_returns(per_token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """G_t = sum over the valid tokens k >= t of gamma^(number of valid tokens from t to k) * r_k.

    Invalid positions are skipped (neither rewarded nor discounted) and get 0. gamma = 1 is a
    reversed cumulative sum; other values loop over T.
    """
    valid = mask.bool()
    zero = torch.zeros((), dtype=per_token_rewards.dtype, device=per_token_rewards.device)
    rewards = torch.where(valid, per_token_rewards, zero)
    if gamma == 1.0:
        return torch.where(valid, rewards.flip(-1).cumsum(-1).flip(-1), zero)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = torch.where(valid[:, t], rewards[:, t] + gamma * running, running)
        returns[:, t] = torch.where(valid[:, t], running, zero)
    return returns


def _gae(per_token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Raw (not whitened) GAE advantages [B, T], see gae_advantages_returns."""
    valid = mask.bool()
    zero = torch.zeros((), dtype=per_token_rewards.dtype, device=per_token_rewards.device)
    values = torch.where(valid, values.to(per_token_rewards.dtype), zero)
    if gamma == 1.0 and lam == 1.0:
        # The TD errors telescope: A_t = G_t - V_t.
        return torch.where(valid, discounted_returns(per_token_rewards, mask, 1.0) - values, zero)
    advantages = torch.zeros_like(per_token_rewards)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in range(per_token_rewards.shape[1] - 1, -1, -1):
        delta = per_token_rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        next_advantage = torch.where(valid[:, t], advantage, next_advantage)
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        advantages[:, t] = torch.where(valid[:, t], advantage, zero)
    return advantages


def gae_advantages_returns(
    rewards: Tensor,
    mask: Tensor,
    values: Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
    kl: Tensor | None = None,
    kl_coef: float | None = None,
) -> tuple[Tensor, Tensor]:
    """GAE (Schulman et al. 2016) for PPO with a critic: (whitened advantages, returns), both [B, T].

    Token rewards r_t come from token_rewards (sequence reward on the last token, minus a KL
    penalty when given). Over the valid tokens of each row, with V after the last one = 0:
        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},
        returns_t = A_t + V_t  (the value-loss targets, not whitened);
    the advantages are then whitened over the valid tokens of the batch. values[B, T] at
    invalid positions are ignored.
    """
    batch, steps = check_mask(mask, "gae")
    check_shape("values", values, (batch, steps), "gae")
    per_token = token_rewards(rewards, mask, kl, kl_coef)
    raw = _gae(per_token, values, mask, gamma, lam)
    valid = mask.bool()
    returns = torch.where(
        valid, raw + values.to(raw.dtype), torch.zeros((), dtype=raw.dtype, device=raw.device)
    )
    return masked_whiten(raw, mask), returns


def reinforce_pp_advantages(
    rewards: Tensor,
    group_ids: Tensor,  # noqa: ARG001 - ADVANTAGES' signature: not grouped
    mask: Tensor,
    *,
    gamma: float = 1.0,
    kl: Tensor | None = None,
    kl_coef: float | None = None,
) -> Tensor:
    """REINFORCE++ (Hu 2025): whiten(returns of token rewards) over the valid tokens of the batch.

    Token rewards: r on the last response token, minus kl_coef * kl on every token when given;
    returns G_t with discount gamma (see discounted_returns). No critic and no group baseline
    (group_ids is accepted for the common signature and not used).
    """
    per_token = token_rewards(rewards, mask, kl, kl_coef)
    return masked_whiten(discounted_returns(per_token, mask, gamma), mask)


def gae_advantages(
    rewards: Tensor,
    group_ids: Tensor,  # noqa: ARG001 - ADVANTAGES' signature: not grouped
    mask: Tensor,
    *,
    values: Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
    kl: Tensor | None = None,
    kl_coef: float | None = None,
) -> Tensor:
    """Whitened GAE advantages (see gae_advantages_returns, which also gives the returns)."""
    advantages, _ = gae_advantages_returns(rewards, mask, values, gamma, lam, kl, kl_coef)
    return advantages


def prefix_tree_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor, *, tokens: Tensor,
                           eps: float = 1e-6) -> Tensor:
    """Credit where a group's samples part ways: A_t = (V(y_<=t) - V(y_<t)) / (std_g + eps).

    The responses of one group (one prompt) form a prefix tree over their token ids; V(prefix)
    is the mean reward of the group's samples that begin with that prefix (a Monte Carlo value
    from the group's own samples, as in tree-search RL such as TreeRL, Hou et al. 2025). A token
    that every sample through its prefix also chose gets 0; only the tokens where samples branch
    carry advantage. Along each response the advantages sum to GRPO's (r - mean_g) / (std_g +
    eps), where r is the mean reward of the response's copies when it occurs more than once in
    its group; a response's last token has a node of its own, so a response that stops is never
    the prefix of one that goes on. After its last branch a response is alone (V = its own
    reward) and its later tokens get 0: decisions no other sample shares get no credit (the
    estimator's bias, traded for the noise those tokens add to GRPO's update).

    tokens[B, T] holds the response ids at the mask's valid positions (others are ignored).
    """
    batch, steps = check_mask(mask, "prefix_tree")
    check_shape("tokens", tokens, (batch, steps), "prefix_tree")
    if tokens.is_floating_point() or tokens.is_complex():
        raise TypeError(f"prefix_tree: tokens must hold integer token ids, got dtype {tokens.dtype}")
    index = group_index(group_ids)
    centered = group_centered(rewards, index)
    std = group_std(centered, index)  # (num_groups,)
    constant = group_is_constant(centered, index)
    r = rewards.to(centered.dtype).tolist()
    valid = mask.bool().tolist()
    ids = tokens.tolist()
    out = [[0.0] * steps for _ in range(batch)]  # filled in python, one tensor at the end
    members: list[list[int]] = [[] for _ in range(index.num_groups)]
    for b, g in enumerate(index.inverse.tolist()):
        members[g].append(b)
    for g, rows in enumerate(members):
        if bool(constant[g]):
            continue
        # Node 0 is the root (the prompt); children[node][key] -> node; per-node reward sums. A
        # row's last token gets its own key (token,): a response that stops there is not the
        # prefix of one that goes on.
        children: list[dict[object, int]] = [{}]
        count, total = [0], [0.0]
        paths: list[list[tuple[int, int]]] = []  # per row: (position, node after that token)
        for b in rows:
            node, path = 0, []
            count[0] += 1
            total[0] += r[b]
            positions = [t for t in range(steps) if valid[b][t]]
            for t in positions:
                key: object = ids[b][t] if t != positions[-1] else (ids[b][t],)
                nxt = children[node].get(key)
                if nxt is None:
                    nxt = len(children)
                    children[node][key] = nxt
                    children.append({})
                    count.append(0)
                    total.append(0.0)
                count[nxt] += 1
                total[nxt] += r[b]
                path.append((t, nxt))
                node = nxt
            paths.append(path)
        scale = 1.0 / (float(std[g]) + eps)
        for b, path in zip(rows, paths):
            before = total[0] / count[0]
            for t, node in path:
                value = total[node] / count[node]
                out[b][t] = (value - before) * scale
                before = value
    return torch.tensor(out, dtype=centered.dtype).reshape(batch, steps).to(_out_dtype(rewards))


ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "reinforce_pp_baseline": reinforce_pp_baseline_advantages,
    "gpg": gpg_advantages,
    "opo": opo_advantages,
    "gae": gae_advantages,
    "prefix_tree": prefix_tree_advantages,
}


def compute_advantages(name: str, rewards: Tensor, group_ids: Tensor, mask: Tensor, **options: Any) -> Tensor:
    """Per-token advantages [B, T] of estimator `name` (see ADVANTAGES and the module doc)."""
    fn = lookup(ADVANTAGES, name, "advantage estimator")
    check_options(fn, options, f"compute_advantages({name!r})")
    batch, _ = check_mask(mask, f"compute_advantages({name!r})")
    check_shape("rewards", rewards, (batch,), f"compute_advantages({name!r})")
    check_shape("group_ids", group_ids, (batch,), f"compute_advantages({name!r})")
    return fn(rewards, group_ids, mask, **options)
