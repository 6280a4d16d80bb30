"""A step's rollouts and the learner's forward over them: components of the RL loop and the critic.

    RolloutBatch     one step's scored rollouts, group by group (one list entry per sequence)
    padded           ragged per-token values -> a (B, width) tensor, zeros after each row's end
    mini_batch_indices  the sequences of each optimizer step of an update (whole groups)
    sequence_values  per-token log-probs (and entropies) of a batch's completions under a model,
                     in token-budget micro-batches; grouped_forward / whole_forward are the two
                     ways a micro-batch runs (prompts shared through completion_logits, or whole
                     sequences), which the critic's value forward uses too
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rlvr import algorithms
from rlvr.tasks import Example
from rlvr.trainers.common import autocast_context, build_batch, forward_logits, micro_batches, per_sequence


@dataclass
class RolloutBatch:
    """One step's scored rollouts, group by group (all lists have one entry per sequence)."""

    examples: list[Example] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)
    completion_ids: list[list[int]] = field(default_factory=list)
    engine_logprobs: list[list[float]] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    format_ok: list[bool] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)
    group_ids: list[int] = field(default_factory=list)
    reused_tokens: list[int] = field(default_factory=list)
    """Leading completion tokens copied from another sample, not generated (rl.fork_points)."""
    engine_metrics: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rewards)

    def extend(self, other: RolloutBatch, groups: Sequence[int]) -> None:
        """Append the sequences of `other` whose group id is in `groups` (ids renumbered)."""
        keep = set(groups)
        offset = max(self.group_ids, default=-1) + 1
        remap = {g: offset + i for i, g in enumerate(sorted(keep))}
        for i, g in enumerate(other.group_ids):
            if g in keep:
                for name in ("examples", "prompt_ids", "completion_ids", "engine_logprobs", "finish_reasons",
                             "texts", "rewards", "correct", "format_ok", "parts", "reused_tokens"):
                    getattr(self, name).append(getattr(other, name)[i])
                self.group_ids.append(remap[g])


def padded(values: Sequence[Sequence[float]], width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows of per-token values (e.g. the engine's log-probs; token ids with dtype=torch.long) as a
    (len(values), width) tensor of `dtype`, zeros after each row's end."""
    out = torch.zeros((len(values), width), dtype=dtype)
    for i, row in enumerate(values):
        out[i, : len(row)] = torch.as_tensor(row, dtype=dtype)
    return out


def sequence_values(model: torch.nn.Module, batch: RolloutBatch, index: Sequence[int], width: int,
                    temperature: float, device: torch.device, packed: bool, token_budget: int,
                    with_entropy: bool = False, entropy_grad: bool = False,
                    autocast: str = "none") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (and entropies) of the completions of sequences `index`: (b, width) each.

    Runs in micro-batches of `token_budget` tokens (see forward_lengths). Gradients flow to the
    log-probs when called with grad enabled (the index assignments below are differentiable), and
    to the entropies only with entropy_grad (an entropy bonus); otherwise entropies are for logging
    and cost no backward. A model with `completion_logits` (rlvr's native one) runs each distinct
    prompt once per micro-batch and computes logits on completion positions only; others run every
    sequence whole. autocast="bfloat16": the forward's matmuls in bf16; log-probs stay float32.
    """
    index = list(index)
    out_lp = torch.zeros((len(index), width), device=device)
    out_ent = torch.zeros((len(index), width), device=device) if with_entropy else None
    forward = grouped_forward if shares_prompts(model, packed) else whole_forward
    for mb in micro_batches(forward_lengths(model, batch, index, packed), token_budget):
        with autocast_context(device, autocast):
            logits, targets, place = forward(model, batch, [index[k] for k in mb], width, device, packed)
        out_lp[mb] = place(algorithms.token_logprobs_from_logits(logits, targets, temperature))
        if out_ent is not None:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                out_ent[mb] = place(algorithms.entropy_from_logits(logits, temperature))
    return out_lp, out_ent


def shares_prompts(model: torch.nn.Module, packed: bool) -> bool:
    """Whether the update runs through model.completion_logits (prompts shared within a group)."""
    return packed and hasattr(model, "completion_logits")


def forward_lengths(model: torch.nn.Module, batch: RolloutBatch, index: Sequence[int],
                    packed: bool) -> list[int]:
    """What a sequence costs in a micro-batch's token budget: its completion when prompts are shared
    (completion_logits), else prompt + completion."""
    grouped = shares_prompts(model, packed)
    return [len(batch.completion_ids[i]) + (0 if grouped else len(batch.prompt_ids[i])) for i in index]


Placer = Callable[[torch.Tensor], torch.Tensor]


def grouped_forward(model: torch.nn.Module, batch: RolloutBatch, rows: Sequence[int], width: int,
                    device: torch.device, _packed: bool) -> tuple[torch.Tensor, torch.Tensor, Placer]:
    """model.completion_logits on `rows`, each distinct prompt once: logits (b, C, V), the target ids
    (b, C), and a function taking per-position values (b, C) to (b, width) with zeros on padding."""
    prompts: dict[tuple[int, ...], int] = {}
    prompt_index = [prompts.setdefault(tuple(batch.prompt_ids[i]), len(prompts)) for i in rows]
    prompt_lengths = torch.tensor([len(p) for p in prompts], device=device)
    prompt_ids = torch.zeros((len(prompts), int(prompt_lengths.max())), dtype=torch.long)
    for p, k in prompts.items():
        prompt_ids[k, : len(p)] = torch.tensor(p)
    completion_lengths = torch.tensor([len(batch.completion_ids[i]) for i in rows], device=device)
    completion_ids = torch.zeros((len(rows), int(completion_lengths.max())), dtype=torch.long)
    for r, i in enumerate(rows):
        completion_ids[r, : len(batch.completion_ids[i])] = torch.tensor(batch.completion_ids[i])
    completion_ids = completion_ids.to(device)
    native: Any = model  # a model with completion_logits (shares_prompts)
    logits = native.completion_logits(prompt_ids.to(device), prompt_lengths, completion_ids,
                                      torch.tensor(prompt_index, device=device))
    C = completion_ids.shape[1]
    valid = torch.arange(C, device=device)[None, :] < completion_lengths[:, None]

    def place(values: torch.Tensor) -> torch.Tensor:
        return F.pad(torch.where(valid, values, 0.0), (0, width - C))

    return logits, completion_ids, place


def whole_forward(model: torch.nn.Module, batch: RolloutBatch, rows: Sequence[int], width: int,
                  device: torch.device, packed: bool) -> tuple[torch.Tensor, torch.Tensor, Placer]:
    """Every sequence of `rows` whole, one per row: logits (b, L, V), the target ids (b, L), and a
    function taking per-position values (b, L) to the completions' (b, width)."""
    starts = [len(batch.prompt_ids[i]) for i in rows]
    sub = build_batch([batch.prompt_ids[i] + batch.completion_ids[i] for i in rows], starts,
                      [[k] for k in range(len(rows))])
    logits = forward_logits(model, sub, device, packed)

    def place(values: torch.Tensor) -> torch.Tensor:
        return per_sequence(values, sub.where, starts, width)

    return logits, sub.target_ids.to(device), place


def mini_batch_indices(batch: RolloutBatch, ppo_epochs: int, mini_batches: int,
                       rng: np.random.Generator) -> Iterator[list[int]]:
    """Sequence indices of each optimizer step of an update (the actor's and the critic's): each epoch
    deals the batch's groups in an order drawn from `rng` (the first epoch of one mini-batch: in order)
    into `mini_batches` runs of whole groups; an empty run is left out."""
    groups = sorted(set(batch.group_ids))
    per_mb = math.ceil(len(groups) / mini_batches)
    for epoch in range(ppo_epochs):
        order = rng.permutation(len(groups)) if epoch > 0 or mini_batches > 1 else np.arange(len(groups))
        for m in range(mini_batches):
            chosen = {groups[i] for i in order[m * per_mb : (m + 1) * per_mb]}
            index = [i for i in range(len(batch)) if batch.group_ids[i] in chosen]
            if index:
                yield index
