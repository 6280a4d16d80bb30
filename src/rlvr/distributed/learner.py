"""The learner on several processes: FSDP2 or replicated data parallelism, packing, token budgets.

One optimizer step of the RL loop (rlvr.trainers.rl.minibatch_step) on `world_size` ranks:

    plan   every rank holds the whole mini-batch and computes the same plan: sequences are dealt to
           ranks longest first onto the rank with the fewest tokens (LPT), then packed into
           micro-batches of at most `micro_batch_tokens` tokens (dynamic batch size: the number of
           sequences per micro-batch varies, the tokens do not); ranks with fewer micro-batches get
           empty ones so that every rank runs the same number of forward/backward passes (FSDP's
           collectives must pair up across ranks).
    loss   each micro-batch's loss is weighted by its share of the *whole* mini-batch (all ranks), as
           in the single-process step, so the sum of every rank's gradient is the single-process
           gradient exactly (up to float rounding).
    reduce fsdp: FSDP2 (torch.distributed.fsdp.fully_shard) reduce-scatters gradients in backward;
           its average over ranks is undone by scaling the loss by world_size. replicate: each rank
           holds the full model and gradients are all-reduced (summed) after the last backward.
    step   the global gradient norm is clipped (DTensor-aware under FSDP), then every rank steps its
           (shard of the) optimizer; the replicas stay identical.

Sequence packing: with a model that takes segment ids (rlvr's native model), the sequences of a
micro-batch are packed first-fit into rows as wide as its longest sequence, so the update computes
no padding tokens; other models get one right-padded sequence per row.

Gradient checkpointing (`apply_gradient_checkpointing`): transformers models use their own
per-layer checkpointing; for rlvr's native model, whose forward runs each layer inline, every
decoder layer's MLP is checkpointed (torch.distributed._composable.checkpoint), which drops the
largest activations (3 x intermediate_size per token) and recomputes them in backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from rlvr.algorithms import entropy_from_logits, token_logprobs_from_logits
from rlvr.config import RLConfig
from rlvr.trainers.common import (
    autocast_context,
    build_batch,
    clip_and_step,
    forward_logits,
    pack_rows,
    per_sequence,
    set_lr,
)
from rlvr.trainers.rl import (
    Knobs,
    Learner,
    StepData,
    StepFn,
    StepSums,
    active_share,
    gradient_rows,
    micro_batch_loss,
    skipped_step,
)

Strategy = Literal["fsdp", "replicate"]


@dataclass(frozen=True)
class DataParallel:
    """Where this process stands: rank in [0, world_size), and how gradients are combined."""

    rank: int = 0
    world_size: int = 1
    strategy: Strategy = "replicate"

    @classmethod
    def from_process_group(cls, strategy: Strategy) -> DataParallel:
        if not (dist.is_available() and dist.is_initialized()):
            return cls(0, 1, strategy)
        return cls(dist.get_rank(), dist.get_world_size(), strategy)


# ---------------------------------------------------------------------------------------------
# Model preparation: sharding units, FSDP2, gradient checkpointing


def called_modules(module: nn.Module) -> list[nn.Module]:
    """The submodules whose forward actually runs when `module`'s parent runs it inline.

    A module class that does not define forward (rlvr's native DecoderLayer and Attention: the model
    runs their parts inline) is replaced by its children, recursively. FSDP2 and activation
    checkpointing act through forward hooks, so they must be attached to these modules.
    """
    if type(module).forward is not nn.Module.forward:
        return [module]
    found: list[nn.Module] = []
    for child in module.children():
        found.extend(called_modules(child))
    return found


def decoder_layers(model: nn.Module) -> Sequence[nn.Module]:
    """model.model.layers of Qwen2 / Llama style models (native or transformers)."""
    backbone = getattr(model, "model", None)
    layers = getattr(backbone, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: expected decoder layers at model.model.layers "
                         "(Qwen2/Llama layout)")
    return layers


def apply_gradient_checkpointing(model: nn.Module) -> str:
    """Recompute activations in backward instead of storing them; returns what was checkpointed.

    Call before `shard_model` (checkpointing wraps the layers that FSDP then shards).
    """
    enable = getattr(model, "gradient_checkpointing_enable", None)  # a transformers model
    if enable is not None:
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return "every decoder layer (transformers)"
    from torch.distributed._composable import checkpoint  # lazy, as fully_shard in shard_model

    count = 0
    for layer in decoder_layers(model):
        units = called_modules(layer)
        if units == [layer]:
            checkpoint(layer)
            count += 1
            continue
        for unit in units:
            if any(True for _ in unit.children()):  # a compound block (the MLP), not a single projection
                checkpoint(unit)
                count += 1
    if count == 0:
        raise ValueError(f"{type(model).__name__}: found no decoder layer or MLP block to checkpoint")
    return f"{count} blocks (the MLP of every decoder layer)"


def shard_model(model: nn.Module, dp: DataParallel, reshard_after_forward: bool = True) -> nn.Module:
    """Apply FSDP2 (dp.strategy == "fsdp"): one sharding unit per decoder layer, plus the root.

    The root unit holds the embedding, final norm and (tied or not) lm_head. A decoder layer that
    the model runs inline is sharded as the group of modules it calls (fully_shard of a list), so
    its parameters are gathered once before the first of them runs. replicate: the model is
    returned unchanged (gradients are all-reduced by `dp_minibatch_step`).
    """
    if dp.strategy != "fsdp" or (dp.world_size == 1 and not dist.is_initialized()):
        return model
    from torch.distributed.fsdp import fully_shard  # seconds to import; only sharded runs need it

    for layer in decoder_layers(model):
        units = called_modules(layer)
        fully_shard(units if len(units) > 1 else units[0], reshard_after_forward=reshard_after_forward)
    fully_shard(model, reshard_after_forward=reshard_after_forward)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, whole and on CPU (a collective under FSDP: every rank must call)."""
    out = {}
    for name, value in model.state_dict().items():
        if hasattr(value, "full_tensor"):  # a DTensor shard
            value = value.full_tensor()
        out[name] = value.detach().cpu()
    return out


# ---------------------------------------------------------------------------------------------
# Planning: sequences -> ranks -> micro-batches


def _cost(lengths: Sequence[int], members: Sequence[int], padded: bool) -> int:
    if not members:
        return 0
    if padded:
        return len(members) * max(lengths[i] for i in members)
    return sum(lengths[i] for i in members)


def plan_micro_batches(lengths: Sequence[int], token_budget: int, world_size: int = 1,
                       padded: bool = False) -> list[list[list[int]]]:
    """plan[rank] = that rank's micro-batches (lists of sequence positions); equal count on every rank.

    Ranks: longest sequence first, onto the rank holding the fewest tokens (ties: lowest rank).
    Micro-batches: first-fit decreasing within `token_budget` tokens, counted as the sum of lengths
    (packed rows) or as count x longest (padded rows, `padded=True`); a sequence longer than the
    budget gets a micro-batch of its own. Short ranks are padded with empty micro-batches.
    Deterministic: every rank computes the same plan from the same lengths.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    per_rank: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for i in order:
        r = min(range(world_size), key=lambda k: (load[k], k))
        per_rank[r].append(i)
        load[r] += lengths[i]
    plan: list[list[list[int]]] = []
    for members in per_rank:
        bins: list[list[int]] = []
        for i in members:  # already longest first
            for b in bins:
                if _cost(lengths, b + [i], padded) <= token_budget:
                    b.append(i)
                    break
            else:
                bins.append([i])
        plan.append(bins)
    depth = max((len(b) for b in plan), default=0)
    for bins in plan:
        bins.extend([] for _ in range(depth - len(bins)))
    return plan


# ---------------------------------------------------------------------------------------------
# Forward passes on packed micro-batches


def micro_batch_values(model: nn.Module, sequences: Sequence[Sequence[int]], starts: Sequence[int],
                       width: int, temperature: float, device: torch.device, packed: bool,
                       with_entropy: bool = False,
                       entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Completion log-probs (and entropies) of `sequences`, (b, width) each, from one forward pass.

    starts[i] is where sequence i's completion begins. With packed=True the sequences share rows
    (segment-aware attention), with no padding beyond the last row's tail. Entropies carry gradients
    only with entropy_grad (an entropy bonus); otherwise they are for logging and cost no backward.
    """
    lengths = [len(s) for s in sequences]
    rows = pack_rows(lengths, max(lengths)) if packed else [[k] for k in range(len(sequences))]
    sub = build_batch(sequences, starts, rows)
    logits = forward_logits(model, sub, device, packed)  # (R, L, V)
    token_lp = token_logprobs_from_logits(logits, sub.target_ids.to(device), temperature)
    lp = per_sequence(token_lp, sub.where, starts, width)
    ent = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = per_sequence(entropy_from_logits(logits, temperature), sub.where, starts, width)
    return lp, ent


def _idle_pass(model: nn.Module, device: torch.device, packed: bool, scale: float = 0.0) -> None:
    """A forward/backward that changes no gradient: keeps FSDP's collectives paired on a rank with
    nothing left to compute (its all-gathers and reduce-scatters must match the other ranks')."""
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    if packed:
        out = model(ids, position_ids=torch.arange(2, device=device)[None], segment_ids=torch.ones_like(ids))
    else:
        out = model(ids)
    logits = out.logits if hasattr(out, "logits") else out
    (logits.float().sum() * scale).backward()


def _set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    set_sync = getattr(model, "set_requires_gradient_sync", None)  # an FSDP2 module
    if set_sync is not None:
        set_sync(enabled)


def _all_reduce_gradients(model: nn.Module) -> None:
    """Sum every parameter's gradient over ranks (replicate strategy), missing gradients as zeros."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads: list[torch.Tensor] = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def _sum_over_ranks(values: list[float], dp: DataParallel) -> list[float]:
    if dp.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


# ---------------------------------------------------------------------------------------------
# One optimizer step (the data-parallel twin of rlvr.trainers.rl.minibatch_step)


def dp_minibatch_step(learner: Learner, data: StepData, index: Sequence[int], cfg: RLConfig, knobs: Knobs, *,
                      dp: DataParallel) -> dict[str, float]:
    """One optimizer step on the sequences `index` of data.batch, this rank computing its share.

    Arguments and returned metrics are those of rlvr.trainers.rl.minibatch_step (the same loss,
    weighting, KL and entropy terms, clipping and skip rule), so `update_policy` can call either;
    tests check that the gradient and the updated weights equal the single-process step's.
    Every rank must call it with the same arguments.
    """
    set_lr(learner.optimizer, knobs.lr)
    total_mask = data.loss_mask[index]
    index = gradient_rows(index, data, cfg)  # rows with a zero loss are not run
    sums, nonfinite = _backward_share(learner, data, index, total_mask, cfg, knobs, dp)
    summed = _sum_over_ranks([*sums.values(), nonfinite], dp)
    sums, nonfinite = StepSums.from_values(summed[:-1]), summed[-1]
    if nonfinite:  # as in the single-process step: no update from this mini-batch on any rank
        learner.optimizer.zero_grad(set_to_none=True)
        return skipped_step(knobs)
    if dp.world_size > 1 and dp.strategy != "fsdp":  # replicate: sum the gradients here
        _all_reduce_gradients(learner.policy)
    grad_norm, skipped = clip_and_step(learner.policy, learner.optimizer, cfg.grad_clip)
    return {**sums.statistics(active_share(cfg.loss_agg, data.loss_mask, index, total_mask)),
            "actor/grad_norm": grad_norm, "actor/lr": knobs.lr, "actor/skipped_updates": skipped}


def _backward_share(learner: Learner, data: StepData, index: list[int], total_mask: torch.Tensor,
                    cfg: RLConfig, knobs: Knobs, dp: DataParallel) -> tuple[StepSums, float]:
    """This rank's forward/backward passes over its micro-batches of the plan (plan_micro_batches),
    as many as every other rank's; returns its statistics and 1.0 if a loss was not finite (its
    later micro-batches then only keep FSDP's collectives paired)."""
    policy, device, packed = learner.policy, learner.device, learner.packed
    batch = data.batch
    sequences = [batch.prompt_ids[i] + batch.completion_ids[i] for i in index]
    sums, nonfinite = StepSums(), 0.0
    fsdp = dp.strategy == "fsdp" and dp.world_size > 1
    scale = float(dp.world_size) if fsdp else 1.0  # FSDP averages gradients over ranks; we want the sum
    plan = plan_micro_batches([len(s) for s in sequences], cfg.micro_batch_tokens, dp.world_size,
                              padded=not packed)
    mine = plan[dp.rank]
    for m_i, mb in enumerate(mine):
        _set_gradient_sync(policy, m_i == len(mine) - 1)  # reduce-scatter once, after the last backward
        if not mb or nonfinite:
            if fsdp:
                _idle_pass(policy, device, packed)
            continue
        rows = [index[k] for k in mb]
        with autocast_context(device, cfg.autocast):
            new_lp, new_ent = micro_batch_values(
                policy, [sequences[k] for k in mb], [len(batch.prompt_ids[i]) for i in rows], data.width,
                knobs.temperature, device, packed, with_entropy=True, entropy_grad=cfg.entropy_coef != 0)
        total = micro_batch_loss(new_lp, new_ent, data, rows, total_mask, cfg, knobs, sums)
        if total is None:
            nonfinite = 1.0
            if fsdp:  # the other ranks still run this pass's collectives
                _idle_pass(policy, device, packed)
            continue
        (total * scale).backward()
    _set_gradient_sync(policy, True)
    return sums, nonfinite


def make_step_fn(dp: DataParallel) -> StepFn:
    """A StepFn (rlvr.trainers.rl) that runs `dp_minibatch_step` on this rank."""

    def step(learner: Learner, data: StepData, index: Sequence[int], cfg: RLConfig,
             knobs: Knobs) -> dict[str, float]:
        return dp_minibatch_step(learner, data, index, cfg, knobs, dp=dp)

    return step


__all__ = [
    "DataParallel",
    "apply_gradient_checkpointing",
    "called_modules",
    "decoder_layers",
    "dp_minibatch_step",
    "full_state_dict",
    "make_step_fn",
    "micro_batch_values",
    "plan_micro_batches",
    "shard_model",
]
