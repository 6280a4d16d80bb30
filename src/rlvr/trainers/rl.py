"""Reinforcement learning with verifiable rewards: one readable loop.

    for step:  sample prompts -> generate G completions each -> score -> group statistics and
               filters -> advantages -> mini-batch policy updates -> sync weights to the engine
               -> log -> eval -> checkpoint

Differences from the papers, stated once: the reward of a completion is whatever the task's
reward scheme (plus optional length shaping) returns; with several optimizer steps per batch, old
log-probs come from the rollout engine when it ran the learner's own module (CPU,
engine_shares_weights) and are recomputed by the learner otherwise (as verl does), and whenever
the learner computes its current log-probs anyway (rl.tis_cap, rl.kl_in_reward); with one
optimizer step per batch the PPO ratio is exactly 1 and old log-probs are the detached current
ones, as in verl. PPO with a critic (rl.advantage=gae): rlvr.trainers.critic.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from rlvr import algorithms
from rlvr.config import CheckpointConfig, LoggingConfig, RLConfig
from rlvr.errors import CheckpointError
from rlvr.evaluation.metrics import source_metrics
from rlvr.models.lora import hf_state_dict
from rlvr.rewards import cosine_length_reward, overlong_penalty
from rlvr.rollout import RolloutEngine, SamplingParams
from rlvr.tasks import Example, Task
from rlvr.tasks.generic import failure_metrics, reward_failures
from rlvr.trainers import checkpoint as ckpt
from rlvr.trainers.common import (
    MetricsLogger,
    Progress,
    autocast_context,
    build_batch,
    forward_logits,
    lr_at,
    micro_batches,
    per_sequence,
    stage_value,
    trainable_parameters,
)

if TYPE_CHECKING:
    from rlvr.trainers.critic import Critic


class ProblemPool:
    """Training problems by difficulty; step s draws a pure function of (seed, s, round).

    `source(difficulty) -> list[Example]` supplies the problems of one difficulty (generated or
    filtered from a file); pools are built on first use and cached. `weights(pool) -> per-row
    weights` makes draws proportional to them (mixed runs: each source's share); None: uniform.
    """

    def __init__(self, source: Callable[[dict[str, Any]], list[Example]], seed: int,
                 weights: Callable[[list[Example]], list[float]] | None = None) -> None:
        self.source, self.seed, self.weights = source, seed, weights
        self._pools: dict[str, tuple[list[Example], np.ndarray | None]] = {}

    def draw(self, difficulty: dict[str, Any], n: int, step: int, round_: int = 0) -> list[Example]:
        key = json.dumps(difficulty, sort_keys=True)
        if key not in self._pools:
            rows = self.source(difficulty)
            if not rows:
                raise ValueError(f"no training problems for difficulty {difficulty}")
            p = None if self.weights is None else np.asarray(self.weights(rows), dtype=np.float64)
            self._pools[key] = (rows, None if p is None else p / p.sum())
        pool, p = self._pools[key]
        rng = np.random.default_rng([self.seed, step, round_])
        return [pool[i] for i in rng.choice(len(pool), size=n, replace=len(pool) < n, p=p)]


@dataclass
class Knobs:
    """The schedules' values at one step."""

    difficulty: dict[str, Any]
    max_new_tokens: int
    group_size: int
    temperature: float
    lr: float
    stage: int


def knobs_at(cfg: RLConfig, step: int, default_difficulty: dict[str, Any]) -> Knobs:
    total = max(cfg.steps, 1)
    temperature = cfg.temperature
    if cfg.final_temperature is not None and total > 1:
        temperature += (cfg.final_temperature - cfg.temperature) * step / (total - 1)
    stage = sum(1 for s in cfg.curriculum if s.start_step <= step)
    return Knobs(
        difficulty=stage_value(cfg.curriculum, step, default_difficulty),
        max_new_tokens=stage_value(cfg.max_new_tokens_stages, step, cfg.max_new_tokens),
        group_size=stage_value(cfg.group_size_stages, step, cfg.group_size),
        temperature=temperature,
        lr=lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.lr_schedule, cfg.min_lr_ratio),
        stage=max(stage - 1, 0),
    )


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
                             "texts", "rewards", "correct", "format_ok", "parts"):
                    getattr(self, name).append(getattr(other, name)[i])
                self.group_ids.append(remap[g])


def shaped_reward(score_reward: float, correct: bool, length: int, truncated: bool, cfg: RLConfig,
                  max_new_tokens: int) -> tuple[float, dict[str, float]]:
    """Task reward plus the configured length term; returns (reward, extra parts)."""
    shaping = cfg.length_reward
    if shaping.kind == "cosine":
        limit = max_new_tokens + 1 if not truncated else length  # truncation = past the limit
        value = cosine_length_reward(length, limit, correct, correct_start=shaping.correct_start,
                                     correct_end=shaping.correct_end, wrong_start=shaping.wrong_start,
                                     wrong_end=shaping.wrong_end, exceed_penalty=shaping.exceed_penalty)
        return shaping.weight * value, {"length": value}
    if shaping.kind == "overlong":
        value = overlong_penalty(length, max_new_tokens, shaping.cache_tokens)
        return score_reward + shaping.weight * value, {"length": value}
    return score_reward, {}


def generate_and_score(engine: RolloutEngine, tokenizer: Any, task: Task, examples: list[Example],
                       prompt_cache: Callable[[Example], list[int]], knobs: Knobs, cfg: RLConfig,
                       eos_ids: tuple[int, ...], seed: int) -> RolloutBatch:
    """Generate group_size completions per example and score them; one group per example."""
    prompts = [prompt_cache(ex) for ex in examples]
    params = SamplingParams(n=knobs.group_size, temperature=knobs.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=knobs.max_new_tokens, stop_token_ids=eos_ids, seed=seed)
    batch = RolloutBatch()
    if hasattr(engine, "generate_partial"):  # partial rollouts: complete groups, possibly from earlier steps
        out = engine.generate_partial(prompts, params, keys=examples)
        while not out.rollouts:  # no group complete yet: advance the carried ones within this step
            out = engine.generate_partial([], params)
        rollouts, examples, batch.engine_metrics = out.rollouts, out.keys, out.metrics
    else:
        rollouts = engine.generate(prompts, params)
    for r in rollouts:
        ex = examples[r.prompt_index]
        text = tokenizer.decode(r.token_ids, skip_special_tokens=True)
        score = task.score(text, ex)
        truncated = r.finish_reason == "length"
        reward, extra = shaped_reward(score.reward, score.correct, len(r.token_ids), truncated, cfg,
                                      knobs.max_new_tokens)
        batch.examples.append(ex)
        batch.prompt_ids.append(list(r.prompt_ids))
        batch.completion_ids.append(list(r.token_ids))
        batch.engine_logprobs.append(list(r.logprobs))
        batch.finish_reasons.append(r.finish_reason)
        batch.texts.append(text)
        batch.rewards.append(reward)
        batch.correct.append(score.correct)
        batch.format_ok.append(score.format_ok)
        batch.parts.append({**score.parts, **extra})
        batch.group_ids.append(r.prompt_index)
    return batch


def collect(engine: RolloutEngine, tokenizer: Any, task: Task, pool: ProblemPool,
            prompt_cache: Callable[[Example], list[int]], knobs: Knobs, cfg: RLConfig,
            eos_ids: tuple[int, ...], seed: int, step: int) -> tuple[RolloutBatch, dict[str, float]]:
    """The step's rollouts; with dynamic sampling, refill until prompts_per_step groups have variance."""
    examples = pool.draw(knobs.difficulty, cfg.prompts_per_step, step)
    first = generate_and_score(engine, tokenizer, task, examples, prompt_cache, knobs, cfg, eos_ids,
                               seed=seed * 1_000_003 + step)
    if cfg.zero_variance != "dynamic_sampling":
        return first, {"dynamic_sampling/rounds": 0.0}
    batch, dropped, rounds, current = RolloutBatch(), 0, 0, first
    while True:
        rewards = torch.tensor(current.rewards)
        groups = torch.tensor(current.group_ids)
        picked = algorithms.dynamic_sampling_select(rewards, groups)
        kept_groups = sorted(set(groups[picked.indices].tolist()))
        room = cfg.prompts_per_step - len(set(batch.group_ids))
        dropped += int(picked.num_dropped_groups)
        batch.extend(current, kept_groups[:room])
        if len(set(batch.group_ids)) >= cfg.prompts_per_step or rounds >= cfg.max_refill_rounds:
            break
        rounds += 1
        examples = pool.draw(knobs.difficulty, cfg.prompts_per_step, step, round_=rounds)
        current = generate_and_score(engine, tokenizer, task, examples, prompt_cache, knobs, cfg, eos_ids,
                                     seed=seed * 1_000_003 + step + 7919 * rounds)
    return batch, {"dynamic_sampling/rounds": float(rounds), "dynamic_sampling/dropped_groups": float(dropped),
                   "dynamic_sampling/kept_groups": float(len(set(batch.group_ids)))}


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
    forward = _grouped_forward if _grouped(model, packed) else _whole_forward
    for mb in micro_batches(forward_lengths(model, batch, index, packed), token_budget):
        with autocast_context(device, autocast):
            logits, targets, place = forward(model, batch, [index[k] for k in mb], width, device, packed)
        out_lp[mb] = place(algorithms.token_logprobs_from_logits(logits, targets, temperature))
        if out_ent is not None:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                out_ent[mb] = place(algorithms.entropy_from_logits(logits, temperature))
    return out_lp, out_ent


def _grouped(model: torch.nn.Module, packed: bool) -> bool:
    """Whether the update runs through model.completion_logits (prompts shared within a group)."""
    return packed and hasattr(model, "completion_logits")


def forward_lengths(model: torch.nn.Module, batch: RolloutBatch, index: Sequence[int], packed: bool) -> list[int]:
    """What a sequence costs in a micro-batch's token budget: its completion when prompts are shared
    (completion_logits), else prompt + completion."""
    grouped = _grouped(model, packed)
    return [len(batch.completion_ids[i]) + (0 if grouped else len(batch.prompt_ids[i])) for i in index]


Placer = Callable[[torch.Tensor], torch.Tensor]


def _grouped_forward(model: torch.nn.Module, batch: RolloutBatch, rows: Sequence[int], width: int,
                     device: torch.device, packed: bool) -> tuple[torch.Tensor, torch.Tensor, Placer]:
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
    logits = model.completion_logits(prompt_ids.to(device), prompt_lengths, completion_ids,
                                     torch.tensor(prompt_index, device=device))
    C = completion_ids.shape[1]
    valid = torch.arange(C, device=device)[None, :] < completion_lengths[:, None]

    def place(values: torch.Tensor) -> torch.Tensor:
        return F.pad(torch.where(valid, values, 0.0), (0, width - C))

    return logits, completion_ids, place


def _whole_forward(model: torch.nn.Module, batch: RolloutBatch, rows: Sequence[int], width: int,
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


def padded(values: Sequence[Sequence[float]], width: int) -> torch.Tensor:
    out = torch.zeros((len(values), width))
    for i, row in enumerate(values):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.float32)
    return out


def training_rewards(batch: RolloutBatch, cfg: RLConfig, seed: int, step: int) -> torch.Tensor:
    """The rewards the advantages see: the batch's own, or with rl.shuffle_rewards (the placebo
    control) each group's rewards permuted among its samples, drawn from (seed, step) alone so a
    resumed run draws the same permutation."""
    rewards = torch.tensor(batch.rewards, dtype=torch.float32)
    if not cfg.shuffle_rewards:
        return rewards
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, 31]).generate_state(1)[0]))
    return algorithms.shuffle_within_groups(rewards, torch.tensor(batch.group_ids), generator)


def update_policy(policy: torch.nn.Module, ref: torch.nn.Module | None, optimizer: torch.optim.Optimizer,
                  batch: RolloutBatch, cfg: RLConfig, knobs: Knobs, device: torch.device, packed: bool,
                  step: int, seed: int, step_fn: Callable[..., dict[str, float]] | None = None, *,
                  engine_shares_weights: bool = False, critic: Critic | None = None,
                  update_actor: bool = True) -> dict[str, float]:
    """Advantages, then ppo_epochs x mini_batches optimizer steps. Returns update metrics.

    engine_shares_weights: the engine's log-probs are the learner's own (the engine runs this
    module), so with several optimizer steps they serve as old log-probs; otherwise the learner
    recomputes them before its first update. critic: GAE advantages from its values, and its own
    update (rlvr.trainers.critic); update_actor=False (critic warm-up) leaves the policy as it is.
    actor/logprob_mismatch is the mean |learner - engine| log-prob per token before the first
    update: over the whole batch when the learner computed its log-probs, else over the loss tokens
    of the first optimizer step (left out when that step has none, or with one optimizer step).
    """
    B = len(batch)
    width = max(len(c) for c in batch.completion_ids)
    lengths = torch.tensor([len(c) for c in batch.completion_ids])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()  # (B, T)
    group_ids = torch.tensor(batch.group_ids)
    rewards = training_rewards(batch, cfg, seed, step)
    n_updates = cfg.ppo_epochs * cfg.mini_batches
    stats: dict[str, float] = {}

    need_old = n_updates > 1 and update_actor
    ref_lp = None
    with torch.no_grad():
        if ref is not None:
            ref_lp, _ = sequence_values(ref, batch, range(B), width, knobs.temperature, device, packed,
                                        cfg.micro_batch_tokens, autocast=cfg.autocast)
            ref_lp = ref_lp.cpu()
    behaviour = padded(batch.engine_logprobs, width)
    cur = None  # the learner's log-probs before this update, computed once for all their uses
    if cfg.tis_cap is not None or (cfg.kl_in_reward and ref_lp is not None) or (need_old and not engine_shares_weights):
        with torch.no_grad():
            cur, _ = sequence_values(policy, batch, range(B), width, knobs.temperature, device, packed,
                                     cfg.micro_batch_tokens, autocast=cfg.autocast)
        cur = cur.cpu()
        stats["actor/logprob_mismatch"] = float(((cur - behaviour).abs() * mask).sum() / mask.sum().clamp(min=1))
    # old log-probs: the learner's own when computed (the proximal policy with tis_cap), else the engine's
    old_lp = (cur if cur is not None else behaviour) if need_old else None
    if cfg.tis_cap is not None:
        from rlvr.rollout.partial import logprob_mismatch, truncated_importance_weights

        assert cur is not None
        tis_weights, tis_stats = truncated_importance_weights(cur, behaviour, mask, cfg.tis_cap)
        stats.update(tis_stats)
        stats.update(logprob_mismatch(cur, behaviour, mask))

    adv_options = dict(cfg.advantage_options)
    if cfg.kl_in_reward and ref_lp is not None:
        assert cur is not None
        kl = algorithms.kl_penalty(cur, ref_lp, cfg.kl_kind) * mask
        stats["actor/reward_kl"] = float((kl.sum() / mask.sum().clamp(min=1)).item())
        if cfg.advantage in ("reinforce_pp", "gae"):
            adv_options.update(kl=kl, kl_coef=cfg.kl_coef)
        else:
            rewards = rewards - cfg.kl_coef * kl.sum(-1)
    if critic is not None:
        old_values = critic.values(batch, width, device, cfg)
        advantages, returns = algorithms.gae_advantages_returns(rewards, mask, old_values, **adv_options)
        advantages = advantages.float()
        from rlvr.trainers.critic import value_statistics

        stats.update(value_statistics(old_values, returns, mask))
        stats.update(critic.update(batch, old_values, returns.float(), mask, cfg, device, step, seed))
    else:
        advantages = algorithms.compute_advantages(cfg.advantage, rewards, group_ids, mask, **adv_options)
    if cfg.tis_cap is not None:
        advantages = advantages * tis_weights
    loss_mask = mask.clone()
    if cfg.zero_variance == "mask":
        loss_mask = loss_mask * algorithms.zero_variance_mask(rewards, group_ids)[:, None].float()

    groups = sorted(set(batch.group_ids))
    rng = np.random.default_rng([seed, step, 17])
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}  # a statistic is the mean over the optimizer steps that report it
    first_step = True
    for epoch in range(cfg.ppo_epochs if update_actor else 0):
        order = rng.permutation(len(groups)) if epoch > 0 or cfg.mini_batches > 1 else np.arange(len(groups))
        per_mb = math.ceil(len(groups) / cfg.mini_batches)
        for m in range(cfg.mini_batches):
            chosen = {groups[i] for i in order[m * per_mb : (m + 1) * per_mb]}
            index = [i for i in range(B) if batch.group_ids[i] in chosen]
            if not index:
                continue
            mb_stats = (step_fn or minibatch_step)(policy, optimizer, batch, index, width, advantages, loss_mask,
                                      old_lp, ref_lp, cfg, knobs, device, packed)
            # Each step's |new - old| after the first includes the policy's own movement: only the
            # first, at the weights the engine sampled from, measures the learner/engine mismatch.
            mismatch = mb_stats.pop("actor/logprob_mismatch", None)
            if first_step and cur is None and old_lp is not None and mismatch is not None:
                active = gradient_rows(index, advantages, loss_mask, cfg, ref_lp)
                if float(loss_mask[active].sum()) > 0:
                    stats["actor/logprob_mismatch"] = mismatch
            first_step = False
            for k, v in mb_stats.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
    stats.update({k: v / counts[k] for k, v in sums.items()})
    stats["critic/advantages/mean"] = float(advantages[mask.bool()].mean()) if mask.any() else 0.0
    stats["critic/advantages/max"] = float(advantages[mask.bool()].max()) if mask.any() else 0.0
    stats["critic/advantages/min"] = float(advantages[mask.bool()].min()) if mask.any() else 0.0
    stats["actor/loss_tokens"] = float(loss_mask.sum())
    return stats


def _agg_weight(mode: str, mask: torch.Tensor, total_mask: torch.Tensor) -> float:
    """Share of a micro-batch in its mini-batch's aggregated loss (every mode is linear in token losses).

    token-mean: its share of valid tokens; seq-mean modes: its share of rows with a valid token
    (rows the loss mask empties do not count, as in algorithms.aggregate_loss).
    """
    if mode == "token-mean":
        return float(mask.sum() / total_mask.sum().clamp(min=1))
    rows = float((mask.sum(-1) > 0).sum())
    return rows / max(float((total_mask.sum(-1) > 0).sum()), 1.0)


def loss_options(cfg: RLConfig, knobs: Knobs) -> dict[str, Any]:
    """Keyword arguments of algorithms.policy_loss from the recipe (None: the loss's own default)."""
    options = {"clip_low": cfg.clip_low, "clip_high": cfg.clip_high, "dual_clip": cfg.dual_clip,
               "loss_agg": cfg.loss_agg, "loss_agg_norm": knobs.max_new_tokens}
    return {k: v for k, v in options.items() if v is not None}


def new_step_sums() -> dict[str, float]:
    """Accumulators of one optimizer step's statistics (see micro_batch_loss)."""
    return {"actor/pg_loss": 0.0, "actor/kl_loss": 0.0, "actor/entropy": 0.0, "actor/pg_clipfrac": 0.0,
            "actor/pg_clipfrac_lower": 0.0, "actor/ppo_kl": 0.0, "actor/logprob_mismatch": 0.0,
            "mismatch_tokens": 0.0}


def micro_batch_loss(new_lp: torch.Tensor, new_ent: torch.Tensor | None, rows: Sequence[int],
                     advantages: torch.Tensor, loss_mask: torch.Tensor, total_mask: torch.Tensor,
                     old_lp: torch.Tensor | None, ref_lp: torch.Tensor | None, cfg: RLConfig, knobs: Knobs,
                     sums: dict[str, float]) -> torch.Tensor | None:
    """The loss of one micro-batch (rows `rows`), scaled by its share of the mini-batch's aggregate.

    Policy loss + kl_coef * KL (unless the KL is in the reward) - entropy_coef * entropy; the sum of
    the returned values over a mini-batch's micro-batches is the mini-batch loss (every aggregation
    is linear in token losses, see _agg_weight). Adds the weighted statistics to `sums` (new_step_sums).
    Returns None, adding nothing, when the loss is not finite: the caller skips the optimizer step.
    Shared by the single-process step below and the data-parallel one (rlvr.distributed.learner).
    """
    device = new_lp.device
    m = loss_mask[rows].to(device)
    adv = advantages[rows].to(device)
    old = old_lp[rows].to(device) if old_lp is not None else new_lp.detach()
    loss, pstats = algorithms.policy_loss(cfg.loss, new_lp, old, adv, m, **loss_options(cfg, knobs))
    weight = _agg_weight(cfg.loss_agg, m, total_mask)
    total = loss
    kl_value = ent_value = None
    if ref_lp is not None and not cfg.kl_in_reward:
        kl = algorithms.kl_penalty(new_lp, ref_lp[rows].to(device), cfg.kl_kind)
        kl_value = algorithms.aggregate_loss(kl, m, cfg.loss_agg, norm=knobs.max_new_tokens)
        total = total + cfg.kl_coef * kl_value
    if new_ent is not None:
        ent_value = algorithms.aggregate_loss(new_ent, m, cfg.loss_agg, norm=knobs.max_new_tokens)
        if cfg.entropy_coef:
            total = total - cfg.entropy_coef * ent_value
    if not torch.isfinite(total):
        return None
    if old_lp is not None:
        sums["actor/logprob_mismatch"] += float(((new_lp.detach() - old).abs() * m).sum())
        sums["mismatch_tokens"] += float(m.sum())
    sums["actor/pg_loss"] += weight * float(loss.detach())
    if kl_value is not None:
        sums["actor/kl_loss"] += weight * float(kl_value.detach())
    if ent_value is not None:
        sums["actor/entropy"] += weight * float(ent_value.detach())
    for key in ("pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"):
        sums[f"actor/{key}"] += weight * float(pstats.get(key, 0.0))
    return total * weight


def finish_step_sums(sums: dict[str, float]) -> dict[str, float]:
    """Turn the accumulated mismatch into a per-token mean; drop the accumulator keys."""
    out = dict(sums)
    out["actor/logprob_mismatch"] /= max(out.pop("mismatch_tokens"), 1.0)
    return out


def minibatch_step(policy, optimizer, batch, index, width, advantages, loss_mask, old_lp, ref_lp, cfg, knobs,
                   device, packed) -> dict[str, float]:  # noqa: ANN001 - flat helper of update_policy
    """One optimizer step on the sequences `index`, accumulated over token-budget micro-batches."""
    for group in optimizer.param_groups:
        group["lr"] = knobs.lr
    total_mask = loss_mask[index]
    sums = new_step_sums()
    active = gradient_rows(index, advantages, loss_mask, cfg, ref_lp)
    lengths = forward_lengths(policy, batch, active, packed)
    parts = worker_parts(micro_batches(lengths, cfg.micro_batch_tokens), lengths, update_workers(cfg, device))

    def gradients(part: list[list[int]]) -> tuple[list[torch.Tensor | None] | None, dict[str, float]]:
        """Summed parameter gradients of the micro-batches `part` (None: a loss was not finite)."""
        part_sums = dict.fromkeys(sums, 0.0)
        grads: list[torch.Tensor | None] = [None] * len(params)
        for mb in part:
            rows = [active[k] for k in mb]
            new_lp, new_ent = sequence_values(policy, batch, rows, width, knobs.temperature, device, packed,
                                              token_budget=1 << 62, with_entropy=True,  # entropy: always logged
                                              entropy_grad=cfg.entropy_coef != 0, autocast=cfg.autocast)
            total = micro_batch_loss(new_lp, new_ent, rows, advantages, loss_mask, total_mask, old_lp, ref_lp, cfg,
                                     knobs, part_sums)
            if total is None:
                return None, part_sums
            for i, g in enumerate(torch.autograd.grad(total, params, allow_unused=True)):
                if g is not None:
                    grads[i] = g if grads[i] is None else grads[i] + g
        return grads, part_sums

    params = [p for p in policy.parameters() if p.requires_grad]
    if len(parts) > 1:  # each worker one intra-op thread (see TorchEngine's workers); summed in part order
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max_workers=len(parts)) as pool:
                results = list(pool.map(gradients, parts))
        finally:
            torch.set_num_threads(threads)
    else:
        results = [gradients(part) for part in parts]
    for grads, part_sums in results:
        if grads is None:
            optimizer.zero_grad(set_to_none=True)
            return {"actor/skipped_updates": 1.0, "actor/grad_norm": float("nan"), "actor/lr": knobs.lr}
        for key, value in part_sums.items():
            sums[key] += value
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
    fill_missing_gradients(policy)
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip or float("inf"))
    skipped = 0.0
    if torch.isfinite(grad_norm):
        optimizer.step()
    else:
        skipped = 1.0
    optimizer.zero_grad(set_to_none=True)
    return {**step_statistics(sums, active, loss_mask, total_mask, cfg), "actor/grad_norm": float(grad_norm),
            "actor/lr": knobs.lr, "actor/skipped_updates": skipped}


def update_workers(cfg: RLConfig, device: torch.device) -> int:
    """Threads that compute one optimizer step's micro-batch gradients at once (rl.update_workers;
    0: torch's thread count on a CPU, 1 elsewhere)."""
    if cfg.update_workers:
        return cfg.update_workers
    return torch.get_num_threads() if device.type == "cpu" else 1


def worker_parts(batches: list[list[int]], lengths: Sequence[int], workers: int) -> list[list[list[int]]]:
    """The micro-batches split into at most `workers` parts of about equal tokens (longest first, each
    to the lightest part; ties to the first): the same lengths give the same parts, so gradients are
    summed in the same order run to run."""
    loads = [0] * max(1, min(workers, len(batches)))
    parts: list[list[list[int]]] = [[] for _ in loads]
    for mb in sorted(batches, key=lambda b: -len(b) * max(lengths[k] for k in b)):
        i = loads.index(min(loads))
        parts[i].append(mb)
        loads[i] += len(mb) * max(lengths[k] for k in mb)
    return [p for p in parts if p]


def fill_missing_gradients(policy: torch.nn.Module) -> None:
    """A zero gradient for every trainable parameter that got none (a step with no active row), so
    that the optimizer steps as it would on a zero loss (AdamW's momentum still moves the weights)."""
    for p in policy.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def step_statistics(sums: dict[str, float], active: Sequence[int], loss_mask: torch.Tensor,
                    total_mask: torch.Tensor, cfg: RLConfig) -> dict[str, float]:
    """The step's statistics from its accumulated sums (new_step_sums) over the active rows.

    The losses are exact as accumulated (an inactive row adds zero). Entropy, clip fractions and
    ppo_kl describe the active rows: their aggregation weights are rescaled to sum to one over
    them; with no active row there is nothing to describe and they are left out.
    """
    share = _agg_weight(cfg.loss_agg, loss_mask[list(active)], total_mask) if len(active) else 0.0
    out: dict[str, float] = {}
    for key, value in finish_step_sums(sums).items():
        if key in ("actor/pg_loss", "actor/kl_loss", "actor/logprob_mismatch"):
            out[key] = value
        elif share > 0:
            out[key] = value / share
    return out


def gradient_rows(index: Sequence[int], advantages: torch.Tensor, loss_mask: torch.Tensor, cfg: RLConfig,
                  ref_lp: torch.Tensor | None) -> list[int]:
    """The sequences of `index` that can contribute a gradient to the step.

    Every policy loss is the advantage times a function of the ratio, token by token, so without a
    KL loss or an entropy bonus a sequence whose advantage is zero on all its loss tokens (a GRPO
    group whose samples all scored the same; a masked sequence) adds exactly zero to the loss and
    its gradient. Its forward and backward are skipped; it still counts in the aggregation's
    denominators (total_mask in micro_batch_loss), so the step is the one that running it would give.
    On kk-tiny a third of the groups have equal rewards: a third of the update's compute.
    """
    if (ref_lp is not None and not cfg.kl_in_reward) or cfg.entropy_coef:
        return list(index)
    return [i for i in index if bool(((advantages[i] != 0) & (loss_mask[i] > 0)).any())]


def batch_metrics(batch: RolloutBatch, knobs: Knobs) -> dict[str, float]:
    """Reward, accuracy, group and length statistics with the names verl users know."""
    rewards = torch.tensor(batch.rewards)
    correct = torch.tensor(batch.correct, dtype=torch.float32)
    lengths = torch.tensor([len(c) for c in batch.completion_ids], dtype=torch.float32)
    groups = algorithms.group_stats(rewards, torch.tensor(batch.correct), torch.tensor(batch.group_ids))
    out = {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "accuracy": float(correct.mean()),
        "format_error_ratio": 1.0 - float(np.mean(batch.format_ok)),
        "response_length/mean": float(lengths.mean()),
        "response_length/min": float(lengths.min()),
        "response_length/max": float(lengths.max()),
        "response_length/clip_ratio": float(np.mean([f == "length" for f in batch.finish_reasons])),
        "prompt_length/mean": float(np.mean([len(p) for p in batch.prompt_ids])),
        "rollout/temperature": knobs.temperature,
        "rollout/max_new_tokens": float(knobs.max_new_tokens),
        "rollout/group_size": float(knobs.group_size),
        "curriculum/stage": float(knobs.stage),
    }
    out.update({k: float(v) for k, v in groups.items()})
    out.update(source_metrics([ex.metadata.get("data_source") for ex in batch.examples], batch.rewards, batch.correct))
    for name in sorted({k for p in batch.parts for k in p}):
        values = [p[name] for p in batch.parts if name in p]
        out[f"rewards/{name}/mean"] = float(np.mean(values))
    return out


def dump_samples(run_dir: Path, step: int, batch: RolloutBatch) -> list[dict[str, Any]]:
    """Write the step's completions to samples/step_XXXXXX.jsonl; returns the rows."""
    from rlvr.data.io import write_jsonl_atomic

    rows = [
        {"step": step, "group": g, "prompt": ex.prompt, "completion": text, "reward": r, "correct": c,
         "format_ok": f, "parts": p, "finish_reason": fr, "n_tokens": len(ids)}
        for ex, text, r, c, f, p, fr, ids, g in zip(batch.examples, batch.texts, batch.rewards, batch.correct,
                                                     batch.format_ok, batch.parts, batch.finish_reasons,
                                                     batch.completion_ids, batch.group_ids)
    ]
    write_jsonl_atomic(run_dir / "samples" / f"step_{step:06d}.jsonl", rows)
    return rows


def curve_point(logger: MetricsLogger, eval_fn: Callable[[int], dict[str, float]] | None, every: int,
                done: int, steps: int) -> float:
    """Log the learning curve's point after `done` of `steps` RL steps (phase rl_eval) when one is
    due (done = 0, a multiple of `every`, or the last); returns the seconds it took (0: none due)."""
    if eval_fn is None or not every or not (done % every == 0 or done == steps):
        return 0.0
    t0 = time.perf_counter()
    logger.log({"phase": "rl_eval", "step": done, **eval_fn(done)})
    return time.perf_counter() - t0


def train_rl(  # noqa: C901 - one loop; an optional learner, reference and critic each add branches
    policy: torch.nn.Module,
    tokenizer: Any,
    engine: RolloutEngine,
    task: Task,
    pool: ProblemPool,
    prompt_cache: Callable[[Example], list[int]],
    cfg: RLConfig,
    *,
    run_dir: Path,
    logger: MetricsLogger,
    device: torch.device,
    packed: bool,
    seed: int,
    eos_ids: tuple[int, ...],
    default_difficulty: dict[str, Any],
    checkpoint: CheckpointConfig,
    logging: LoggingConfig,
    engine_shares_weights: bool,
    learner: Any = None,
    eval_fn: Callable[[int], dict[str, float]] | None = None,
    eval_every: int = 0,
    critic: Critic | None = None,
) -> dict[str, Any]:
    """Run cfg.steps RL steps (resuming from the newest checkpoint); returns a summary dict.

    eval_fn(done) -> metrics, with eval_every > 0: the learning curve, logged as rows of phase
    "rl_eval" whose step is the number of RL steps done: before the first step, after every
    eval_every-th and after the last.
    critic: PPO's value model (rlvr.trainers.critic.build_critic), checkpointed with the actor.
    """
    if critic is not None and learner is not None:
        raise ValueError("train_rl: the data-parallel learner has no critic; run the update in the driver")
    run_dir = Path(run_dir)
    stage_dir = run_dir / "checkpoints" / "rl"
    ref = copy.deepcopy(policy).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(trainable_parameters(policy), lr=cfg.lr, betas=(cfg.adam_betas[0], cfg.adam_betas[1]),
                                  weight_decay=cfg.weight_decay)
    start_step, best, low_streak = 0, -1.0, 0
    latest = ckpt.latest_checkpoint(stage_dir)
    if latest is not None:
        state = ckpt.load_checkpoint(latest, policy, policy.config)
        optimizer.load_state_dict(state["optimizer"])
        if learner is not None:
            learner.load_state(policy.state_dict(), state.get("learner_optimizers"))
        if ref is not None and "reference" in state:
            ref.load_state_dict(state["reference"])
        if critic is not None:
            if "critic" not in state:
                raise CheckpointError(f"checkpoint {latest} has no critic state (written by a run without "
                                           "critic.enabled); use a fresh out_dir")
            critic.load_state_dict(state["critic"])
        start_step, best, low_streak = state["step"], state["best_accuracy"], state["low_streak"]
        print(f"[rlvr] resuming RL from {latest}", flush=True)
        if not engine_shares_weights:
            engine.load_weights(hf_state_dict(policy))
    logger.truncate_after("rl", start_step)  # rows logged after the checkpoint (or before the first) go
    # The point at the resumed step may have been logged before its checkpoint was written, or not:
    # it is dropped and computed again (same weights, same sampling seed: the same value).
    logger.truncate_after("rl_eval", start_step - 1)
    curve_point(logger, eval_fn, eval_every, start_step, cfg.steps)
    bar = Progress("rl", cfg.steps, enabled=logging.progress, start=start_step)
    stopped_early = None
    for step in range(start_step, cfg.steps):
        t_step = time.perf_counter()
        knobs = knobs_at(cfg, step, default_difficulty)
        policy.eval()
        t0 = time.perf_counter()
        failures = reward_failures(task)  # reward functions that raise or hang: counted per step
        batch, ds_stats = collect(engine, tokenizer, task, pool, prompt_cache, knobs, cfg, eos_ids, seed, step)
        t_gen = time.perf_counter() - t0
        gen_tokens = sum(len(c) for c in batch.completion_ids)
        metrics: dict[str, Any] = {"phase": "rl", "step": step + 1, **batch_metrics(batch, knobs), **ds_stats,
                                   **batch.engine_metrics, **failure_metrics(task, failures)}
        t0 = time.perf_counter()
        policy.train()
        if len(batch) > 0:
            if learner is not None:  # learner ranks elsewhere (rlvr.distributed): same update, their weights
                metrics.update(learner.update(batch, cfg, knobs, step, seed))
                policy.load_state_dict(learner.state_dict())
            else:
                update_actor = critic is None or step >= critic.cfg.warmup_steps
                metrics.update(update_policy(policy, ref, optimizer, batch, cfg, knobs, device, packed, step, seed,
                                             engine_shares_weights=engine_shares_weights, critic=critic,
                                             update_actor=update_actor))
        policy.eval()
        t_update = time.perf_counter() - t0
        t0 = time.perf_counter()
        if not engine_shares_weights:
            engine.load_weights(hf_state_dict(policy))  # a LoRA policy: adapters merged in
        t_sync = time.perf_counter() - t0
        metrics.update({
            "timing_s/gen": t_gen, "timing_s/update": t_update, "timing_s/sync": t_sync,
            "perf/gen_tokens_per_s": gen_tokens / max(t_gen, 1e-9),
        })
        done = step + 1
        t_eval = curve_point(logger, eval_fn, eval_every, done, cfg.steps)
        if t_eval:
            metrics["timing_s/eval"] = t_eval
        if logging.samples_every and (step % logging.samples_every == 0 or done == cfg.steps):
            logger.log_samples(done, dump_samples(run_dir, done, batch))  # and to W&B / TensorBoard
        metrics["timing_s/step"] = time.perf_counter() - t_step
        logger.log(metrics)
        bar.update(step, reward=metrics["reward/mean"], acc=metrics["accuracy"],
                   len=metrics["response_length/mean"])
        # Collapse guard: a policy whose batch accuracy stays far below its best has diverged.
        best = max(best, metrics["accuracy"])
        low_streak = low_streak + 1 if metrics["accuracy"] < 0.5 * best else 0
        collapsed = cfg.collapse_patience and low_streak >= cfg.collapse_patience
        if (checkpoint.every and done % checkpoint.every == 0) or done == cfg.steps or collapsed:
            state = {"optimizer": optimizer.state_dict(), "best_accuracy": best, "low_streak": low_streak}
            if learner is not None:
                state["learner_optimizers"] = learner.optimizer_state_dicts()
            if ref is not None:
                state["reference"] = ref.state_dict()
            if critic is not None:
                state["critic"] = critic.state_dict()
            ckpt.save_checkpoint(stage_dir, done, policy, tokenizer, state, checkpoint.keep_last, checkpoint.merge_lora)
        if collapsed:
            stopped_early = done
            break
    bar.close()
    return {"rl_steps_done": stopped_early or cfg.steps, "stopped_early_at": stopped_early}
