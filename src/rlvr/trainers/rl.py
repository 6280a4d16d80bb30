"""Reinforcement learning with verifiable rewards: one readable loop.

    train_rl   for step: rl_step -> learning-curve point -> log -> collapse guard -> checkpoint
    rl_step    knobs_at (schedules) -> collect (sample G completions per prompt, score, dynamic
               sampling) -> update_policy -> sync weights to the engine
    update_policy
               log-probs before the update (reference, current) -> step_advantages (rewards,
               KL in reward, estimator or critic, TIS) -> optimizer_steps: ppo_epochs x
               mini_batches of minibatch_step (micro_batch_loss: policy loss + KL - entropy)

The file reads in that order. Differences from the papers, stated once: the reward of a
completion is whatever the task's reward scheme (plus optional length shaping) returns; with
several optimizer steps per batch, old log-probs come from the rollout engine when it ran the
learner's own module (CPU, engine_shares_weights) and are recomputed by the learner otherwise (as
verl does), and whenever the learner computes its current log-probs anyway (rl.tis_cap,
rl.kl_in_reward); with one optimizer step per batch the PPO ratio is exactly 1 and old log-probs
are the detached current ones, as in verl. PPO with a critic (rl.advantage=gae):
rlvr.trainers.critic. The step's data and the learner's forward: rlvr.trainers.sequences.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from rlvr import algorithms
from rlvr.config import CheckpointConfig, LoggingConfig, RLConfig
from rlvr.data.io import write_jsonl_atomic
from rlvr.errors import CheckpointError
from rlvr.evaluation.metrics import source_metrics
from rlvr.models.lora import hf_state_dict
from rlvr.rewards import cosine_length_reward, overlong_penalty
from rlvr.rollout import Rollout, RolloutEngine, SamplingParams
from rlvr.rollout.partial import logprob_mismatch, truncated_importance_weights
from rlvr.tasks import Example, Task
from rlvr.tasks.generic import failure_metrics, reward_failures
from rlvr.trainers import checkpoint as ckpt
from rlvr.trainers import metric_names as M
from rlvr.trainers.common import (
    MetricsLogger,
    Progress,
    RunningMeans,
    clip_and_step,
    lr_at,
    micro_batches,
    set_lr,
    stage_value,
    trainable_parameters,
)
from rlvr.trainers.critic import Critic, value_statistics
from rlvr.trainers.sequences import (
    RolloutBatch,
    forward_lengths,
    mini_batch_indices,
    padded,
    sequence_values,
)

# ---------------------------------------------------------------------------------------------
# What the loop runs on


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
class Sampler:
    """What a step samples from and scores with: the engine (sampling the policy), the task and its
    problems. prompt_cache(example) -> prompt token ids; eos_ids stop a completion."""

    engine: RolloutEngine
    tokenizer: Any
    task: Task
    pool: ProblemPool
    prompt_cache: Callable[[Example], list[int]]
    eos_ids: tuple[int, ...]


@dataclass
class RLRun:
    """One RL stage: the policy and where it runs, the sampler, where the run writes, optional parts.

    engine_shares_weights: the engine runs the policy's own module (CPU): no weight sync, and its
    log-probs are the learner's own. learner_ranks: learner ranks elsewhere (rlvr.distributed.
    make_learner) that run the update instead of this process. critic: PPO's value model
    (rlvr.trainers.critic.build_critic), checkpointed with the actor. eval_fn(done) -> metrics,
    with eval_every > 0: the learning curve, logged as rows of phase "rl_eval" whose step is the
    number of RL steps done: before the first step, after every eval_every-th and after the last.
    """

    policy: torch.nn.Module
    sampler: Sampler
    run_dir: Path
    logger: MetricsLogger
    device: torch.device
    packed: bool
    seed: int
    default_difficulty: dict[str, Any]
    engine_shares_weights: bool
    learner_ranks: Any = None
    critic: Critic | None = None
    eval_fn: Callable[[int], dict[str, float]] | None = None
    eval_every: int = 0


@dataclass
class Learner:
    """The policy being trained with its optimizer, where it runs, and its frozen reference (the KL
    term; None without one). packed: rlvr's native model (packed rows, prompts shared in a group)."""

    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    packed: bool
    ref: torch.nn.Module | None = None


def new_optimizer(model: torch.nn.Module, cfg: RLConfig) -> torch.optim.Optimizer:
    """The RL stage's AdamW over the trainable parameters (with LoRA, the adapters); the learner
    ranks of rlvr.distributed build theirs with it too."""
    return torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr,
                             betas=(cfg.adam_betas[0], cfg.adam_betas[1]),
                             weight_decay=cfg.weight_decay)


def new_learner(policy: torch.nn.Module, cfg: RLConfig, device: torch.device, packed: bool) -> Learner:
    """A Learner for `policy`: its optimizer, and a frozen copy as the reference when rl.kl_coef > 0."""
    ref = copy.deepcopy(policy).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    return Learner(policy, new_optimizer(policy, cfg), device, packed, ref)


@torch.no_grad()
def sync_reference(ref: torch.nn.Module, policy: torch.nn.Module, alpha: float) -> None:
    """ref <- alpha x policy + (1 - alpha) x ref, tensor by tensor (rl.ref_sync_every). A tensor
    under two names (tied embeddings) moves once."""
    theirs = policy.state_dict()
    seen: set[int] = set()
    for name, mine in ref.state_dict().items():
        if mine.data_ptr() in seen:
            continue
        seen.add(mine.data_ptr())
        if mine.is_floating_point():
            mine.lerp_(theirs[name].to(mine.device, mine.dtype), alpha)
        else:
            mine.copy_(theirs[name])


# ---------------------------------------------------------------------------------------------
# The loop


def train_rl(run: RLRun, cfg: RLConfig, checkpoint: CheckpointConfig,
             logging: LoggingConfig) -> dict[str, Any]:
    """Run cfg.steps RL steps (resuming from the newest checkpoint); returns a summary dict."""
    if run.critic is not None and run.learner_ranks is not None:
        raise ValueError("train_rl: the data-parallel learner has no critic; run the update in the driver")
    learner = new_learner(run.policy, cfg, run.device, run.packed)
    stage_dir = Path(run.run_dir) / "checkpoints" / "rl"
    start_step, guard = resume(run, learner, stage_dir)
    run.logger.truncate_after("rl", start_step)  # rows logged after the checkpoint (or before the first) go
    # The point at the resumed step may have been logged before its checkpoint was written, or not:
    # it is dropped and computed again (same weights, same sampling seed: the same value).
    run.logger.truncate_after("rl_eval", start_step - 1)
    curve_point(run, start_step, cfg.steps)
    bar = Progress("rl", cfg.steps, enabled=logging.progress, start=start_step)
    stopped_early = None
    for step in range(start_step, cfg.steps):
        t_step = time.perf_counter()
        done = step + 1
        dump = bool(logging.samples_every) and (step % logging.samples_every == 0 or done == cfg.steps)
        metrics = rl_step(run, learner, cfg, step, dump_samples_to=run.run_dir if dump else None)
        if learner.ref is not None and cfg.ref_sync_every and done % cfg.ref_sync_every == 0:
            sync_reference(learner.ref, learner.policy, cfg.ref_sync_alpha)
        t_eval = curve_point(run, done, cfg.steps)
        if t_eval:
            metrics[M.TIMING_EVAL] = t_eval
        metrics[M.TIMING_STEP] = time.perf_counter() - t_step
        run.logger.log(metrics)
        bar.update(step, reward=metrics[M.REWARD_MEAN], acc=metrics[M.ACCURACY],
                   len=metrics[M.RESPONSE_LENGTH_MEAN])
        collapsed = guard.update(metrics[M.ACCURACY], cfg.collapse_patience)
        if (checkpoint.every and done % checkpoint.every == 0) or done == cfg.steps or collapsed:
            save_rl_checkpoint(run, learner, stage_dir, done, guard, checkpoint)
        if collapsed:
            stopped_early = done
            break
    bar.close()
    return {"rl_steps_done": stopped_early or cfg.steps, "stopped_early_at": stopped_early}


@dataclass
class CollapseGuard:
    """A policy whose batch accuracy stays below half its best for `patience` steps has diverged."""

    best: float = -1.0
    low_streak: int = 0

    def update(self, accuracy: float, patience: int) -> bool:
        """Record one step's accuracy; True when the run should stop (patience 0: never)."""
        self.best = max(self.best, accuracy)
        self.low_streak = self.low_streak + 1 if accuracy < 0.5 * self.best else 0
        return bool(patience and self.low_streak >= patience)


def resume(run: RLRun, learner: Learner, stage_dir: Path) -> tuple[int, CollapseGuard]:
    """Load the newest RL checkpoint into the learner (and the learner ranks, reference, critic,
    engine); returns (steps done, collapse guard). A fresh stage: (0, a new guard)."""
    latest = ckpt.latest_checkpoint(stage_dir)
    if latest is None:
        return 0, CollapseGuard()
    policy = learner.policy
    state = ckpt.load_checkpoint(latest, policy, policy.config)
    learner.optimizer.load_state_dict(state["optimizer"])
    if run.learner_ranks is not None:
        run.learner_ranks.load_state(policy.state_dict(), state.get("learner_optimizers"))
    if learner.ref is not None and "reference" in state:
        learner.ref.load_state_dict(state["reference"])
    if run.critic is not None:
        if "critic" not in state:
            raise CheckpointError(f"checkpoint {latest} has no critic state (written by a run without "
                                  "critic.enabled); use a fresh out_dir")
        run.critic.load_state_dict(state["critic"])
    print(f"[rlvr] resuming RL from {latest}", flush=True)
    if not run.engine_shares_weights:
        run.sampler.engine.load_weights(hf_state_dict(policy))
    return state["step"], CollapseGuard(state["best_accuracy"], state["low_streak"])


def rl_step(run: RLRun, learner: Learner, cfg: RLConfig, step: int,
            dump_samples_to: Path | None = None) -> dict[str, Any]:
    """One RL step: sample and score, update, sync the engine; returns the step's metrics row
    (the samples go to dump_samples_to/samples/ when given)."""
    knobs = knobs_at(cfg, step, run.default_difficulty)
    policy = learner.policy
    policy.eval()
    t0 = time.perf_counter()
    failures = reward_failures(run.sampler.task)  # reward functions that raise or hang: counted per step
    batch, ds_stats = collect(run.sampler, knobs, cfg, run.seed, step)
    t_gen = time.perf_counter() - t0
    gen_tokens = sum(len(c) for c in batch.completion_ids) - sum(batch.reused_tokens)
    metrics: dict[str, Any] = {"phase": "rl", "step": step + 1, **batch_metrics(batch, knobs), **ds_stats,
                               **batch.engine_metrics, **failure_metrics(run.sampler.task, failures)}
    t0 = time.perf_counter()
    policy.train()
    if len(batch) > 0:
        if run.learner_ranks is not None:  # ranks elsewhere (rlvr.distributed): same update, their weights
            metrics.update(run.learner_ranks.update(batch, cfg, knobs, step, run.seed))
            policy.load_state_dict(run.learner_ranks.state_dict())
        else:
            update_actor = run.critic is None or step >= run.critic.cfg.warmup_steps
            metrics.update(update_policy(learner, batch, cfg, knobs, step, run.seed,
                                         engine_shares_weights=run.engine_shares_weights, critic=run.critic,
                                         update_actor=update_actor))
    policy.eval()
    t_update = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not run.engine_shares_weights:
        run.sampler.engine.load_weights(hf_state_dict(policy))  # a LoRA policy: adapters merged in
    t_sync = time.perf_counter() - t0
    metrics.update({
        M.TIMING_GEN: t_gen, M.TIMING_UPDATE: t_update, M.TIMING_SYNC: t_sync,
        M.GEN_TOKENS_PER_S: gen_tokens / max(t_gen, 1e-9),
    })
    if dump_samples_to is not None:  # and to W&B / TensorBoard
        run.logger.log_samples(step + 1, dump_samples(dump_samples_to, step + 1, batch))
    return metrics


# ---------------------------------------------------------------------------------------------
# Sampling: schedules, generation, scoring


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


def collect(sampler: Sampler, knobs: Knobs, cfg: RLConfig, seed: int,
            step: int) -> tuple[RolloutBatch, dict[str, float]]:
    """The step's rollouts; with dynamic sampling, refill until prompts_per_step groups have variance."""
    examples = sampler.pool.draw(knobs.difficulty, cfg.prompts_per_step, step)
    first = generate_and_score(sampler, examples, knobs, cfg, seed=seed * 1_000_003 + step)
    if cfg.zero_variance != "dynamic_sampling":
        return first, {M.DYNAMIC_SAMPLING_ROUNDS: 0.0}
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
        examples = sampler.pool.draw(knobs.difficulty, cfg.prompts_per_step, step, round_=rounds)
        current = generate_and_score(sampler, examples, knobs, cfg,
                                     seed=seed * 1_000_003 + step + 7919 * rounds)
    return batch, {M.DYNAMIC_SAMPLING_ROUNDS: float(rounds),
                   M.DYNAMIC_SAMPLING_DROPPED_GROUPS: float(dropped),
                   M.DYNAMIC_SAMPLING_KEPT_GROUPS: float(len(set(batch.group_ids)))}


def generate_and_score(sampler: Sampler, examples: list[Example], knobs: Knobs, cfg: RLConfig,
                       seed: int) -> RolloutBatch:
    """Generate group_size completions per example and score them; one group per example."""
    engine, task = sampler.engine, sampler.task
    prompts = [sampler.prompt_cache(ex) for ex in examples]
    params = SamplingParams(n=knobs.group_size, temperature=knobs.temperature, top_p=cfg.top_p,
                            top_k=cfg.top_k,
                            max_new_tokens=knobs.max_new_tokens, stop_token_ids=sampler.eos_ids, seed=seed)
    batch = RolloutBatch()
    if hasattr(engine, "generate_partial"):  # partial rollouts: complete groups, possibly from earlier steps
        out = engine.generate_partial(prompts, params, keys=examples)
        while not out.rollouts:  # no group complete yet: advance the carried ones within this step
            out = engine.generate_partial([], params)
        rollouts, examples, batch.engine_metrics = out.rollouts, out.keys, out.metrics
    elif cfg.fork_points:
        rollouts = forked_rollouts(engine, prompts, params, cfg.fork_points, cfg.fork_samples)
    else:
        rollouts = engine.generate(prompts, params)
    for r in rollouts:
        ex = examples[r.prompt_index]
        text = sampler.tokenizer.decode(r.token_ids, skip_special_tokens=True)
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
        batch.reused_tokens.append(int(r.metadata.get("fork_at", 0)))
    return batch


def fork_positions(logprobs: Sequence[float], points: int) -> list[int]:
    """Where to fork a root: its `points` least likely sampled tokens, its last excluded (ties: the
    earlier), in order; 0 (a fresh sample from the prompt) for each point a short root lacks."""
    candidates = sorted(range(max(len(logprobs) - 1, 0)), key=lambda t: (logprobs[t], t))[:points]
    return sorted(candidates) + [0] * (points - len(candidates))


def forked_rollouts(engine: RolloutEngine, prompts: list[list[int]], params: SamplingParams, points: int,
                    samples: int) -> list[Rollout]:
    """Tree sampling (rl.fork_points): params.n / (1 + points x samples) roots per prompt, then
    `samples` continuations of each root from each of its fork_positions. A fork is the root's
    tokens before the position (with their log-probs) plus its continuation, cut to
    params.max_new_tokens in all. Ordered by prompt, then root, the root before its forks."""
    per_root = 1 + points * samples
    roots = engine.generate(prompts, replace(params, n=params.n // per_root))
    starts = [fork_positions(root.logprobs, points) for root in roots]
    fork_prompts = [prompts[root.prompt_index] + root.token_ids[:t]
                    for root, ts in zip(roots, starts) for t in ts]
    seed = None if params.seed is None else params.seed + 104_729
    forks = iter(engine.generate(fork_prompts, replace(params, n=samples, seed=seed)) if fork_prompts else [])
    out = []
    for root, ts in zip(roots, starts):
        out.append(root)
        for t in ts:
            for _ in range(samples):
                fork = next(forks)
                room = params.max_new_tokens - t
                tokens, logprobs = fork.token_ids[:room], fork.logprobs[:room]
                finish = fork.finish_reason if len(fork.token_ids) <= room else "length"
                out.append(Rollout(root.prompt_index, list(root.prompt_ids), root.token_ids[:t] + tokens,
                                   root.logprobs[:t] + logprobs, finish, {"fork_at": t}))
    return out


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


def batch_metrics(batch: RolloutBatch, knobs: Knobs) -> dict[str, float]:
    """Reward, accuracy, group and length statistics with the names verl users know."""
    rewards = torch.tensor(batch.rewards)
    correct = torch.tensor(batch.correct, dtype=torch.float32)
    lengths = torch.tensor([len(c) for c in batch.completion_ids], dtype=torch.float32)
    groups = algorithms.group_stats(rewards, torch.tensor(batch.correct), torch.tensor(batch.group_ids))
    out = {
        M.REWARD_MEAN: float(rewards.mean()),
        M.REWARD_STD: float(rewards.std()) if len(rewards) > 1 else 0.0,
        M.ACCURACY: float(correct.mean()),
        "format_error_ratio": 1.0 - float(np.mean(batch.format_ok)),
        M.RESPONSE_LENGTH_MEAN: float(lengths.mean()),
        M.RESPONSE_LENGTH_MIN: float(lengths.min()),
        M.RESPONSE_LENGTH_MAX: float(lengths.max()),
        M.RESPONSE_LENGTH_CLIP_RATIO: float(np.mean([f == "length" for f in batch.finish_reasons])),
        M.PROMPT_LENGTH_MEAN: float(np.mean([len(p) for p in batch.prompt_ids])),
        M.ROLLOUT_TEMPERATURE: knobs.temperature,
        M.ROLLOUT_MAX_NEW_TOKENS: float(knobs.max_new_tokens),
        M.ROLLOUT_GROUP_SIZE: float(knobs.group_size),
        M.CURRICULUM_STAGE: float(knobs.stage),
    }
    out.update({k: float(v) for k, v in groups.items()})
    if any(batch.reused_tokens):
        out[M.ROLLOUT_REUSED_TOKEN_RATIO] = float(sum(batch.reused_tokens) / lengths.sum().clamp(min=1))
    sources = [ex.metadata.get("data_source") for ex in batch.examples]
    out.update(source_metrics(sources, batch.rewards, batch.correct))
    for name in sorted({k for p in batch.parts for k in p}):
        values = [p[name] for p in batch.parts if name in p]
        out[M.reward_part_mean(name)] = float(np.mean(values))
    return out


# ---------------------------------------------------------------------------------------------
# The update: advantages, then mini-batch optimizer steps


@dataclass
class StepData:
    """What every optimizer step of one update reads (the pattern of torchtune's GRPOTrajectory).

    batch: the step's rollouts (B sequences); advantages, loss_mask: (B, T) with T the longest
    completion; old_logprobs (B, T): the PPO ratio's denominator (None: the detached current
    log-probs, ratio 1); ref_logprobs (B, T): the frozen reference's, for the KL loss (None: no KL).
    """

    batch: RolloutBatch
    advantages: torch.Tensor
    loss_mask: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None

    @property
    def width(self) -> int:
        return int(self.loss_mask.shape[1])


class StepFn(Protocol):
    """One optimizer step on the sequences `index` of data.batch; returns its metrics. Implemented by
    minibatch_step (this process), rlvr.distributed.learner.dp_minibatch_step (data-parallel ranks)
    and the gradient-noise tool (records gradients, steps nothing)."""

    def __call__(self, learner: Learner, data: StepData, index: Sequence[int], cfg: RLConfig,
                 knobs: Knobs) -> dict[str, float]: ...


def update_policy(learner: Learner, batch: RolloutBatch, cfg: RLConfig, knobs: Knobs, step: int, seed: int,
                  step_fn: StepFn | None = None, *, engine_shares_weights: bool = False,
                  critic: Critic | None = None, update_actor: bool = True) -> dict[str, float]:
    """Advantages, then ppo_epochs x mini_batches optimizer steps. Returns update metrics.

    engine_shares_weights: the engine's log-probs are the learner's own (the engine runs this
    module), so with several optimizer steps they serve as old log-probs; otherwise the learner
    recomputes them before its first update. critic: GAE advantages from its values, and its own
    update (rlvr.trainers.critic); update_actor=False (critic warm-up) leaves the policy as it is.
    actor/logprob_mismatch is the mean |learner - engine| log-prob per token before the first
    update: over the whole batch when the learner computed its log-probs, else over the loss tokens
    of the first optimizer step (left out when that step has none, or with one optimizer step).
    """
    width = max(len(c) for c in batch.completion_ids)
    lengths = torch.tensor([len(c) for c in batch.completion_ids])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()  # (B, T)
    need_old = cfg.ppo_epochs * cfg.mini_batches > 1 and update_actor
    stats: dict[str, float] = {}
    before = logprobs_before_update(learner, batch, cfg, knobs, width, need_old and not engine_shares_weights)
    if before.current is not None:
        stats[M.ACTOR_LOGPROB_MISMATCH] = float(((before.current - before.behaviour).abs() * mask).sum()
                                                / mask.sum().clamp(min=1))
    # old log-probs: the learner's own when computed (the proximal policy with tis_cap), else the engine's
    old_lp = (before.current if before.current is not None else before.behaviour) if need_old else None
    advantages, loss_mask, adv_stats = step_advantages(batch, before, mask, cfg, critic, learner.device, step,
                                                       seed)
    stats.update(adv_stats)
    data = StepData(batch, advantages, loss_mask, old_lp, before.reference)
    if update_actor:
        # Each step's |new - old| after the first includes the policy's own movement: only the first,
        # at the weights the engine sampled from, measures the learner/engine mismatch.
        stats.update(optimizer_steps(learner, data, cfg, knobs, step, seed, step_fn or minibatch_step,
                                     measure_mismatch=before.current is None and old_lp is not None))
    stats[M.ADVANTAGES_MEAN] = float(advantages[mask.bool()].mean()) if mask.any() else 0.0
    stats[M.ADVANTAGES_MAX] = float(advantages[mask.bool()].max()) if mask.any() else 0.0
    stats[M.ADVANTAGES_MIN] = float(advantages[mask.bool()].min()) if mask.any() else 0.0
    stats[M.ACTOR_LOSS_TOKENS] = float(loss_mask.sum())
    return stats


@dataclass
class LogprobsBeforeUpdate:
    """Per-token log-probs (B, T) of the batch's completions before the update: the engine's
    (behaviour), the learner's (current: only when something needs it) and the reference's; the
    learner's per-token entropies with rl.top_entropy_fraction < 1."""

    behaviour: torch.Tensor
    current: torch.Tensor | None
    reference: torch.Tensor | None
    entropy: torch.Tensor | None = None


def logprobs_before_update(learner: Learner, batch: RolloutBatch, cfg: RLConfig, knobs: Knobs, width: int,
                           recompute_old: bool) -> LogprobsBeforeUpdate:
    """The reference's log-probs (with a reference), and the learner's current ones when TIS, the KL
    in the reward, old log-probs the engine cannot supply (recompute_old) or the high-entropy token
    selection (with the entropies) need them: one forward each, no grad, on CPU."""
    every = range(len(batch))
    ref_lp = cur = ent = None
    with torch.no_grad():
        if learner.ref is not None:
            ref_lp, _ = sequence_values(learner.ref, batch, every, width, knobs.temperature, learner.device,
                                        learner.packed, cfg.micro_batch_tokens, autocast=cfg.autocast)
            ref_lp = ref_lp.cpu()
    behaviour = padded(batch.engine_logprobs, width)
    with_entropy = cfg.top_entropy_fraction < 1.0
    if cfg.tis_cap is not None or (cfg.kl_in_reward and ref_lp is not None) or recompute_old or with_entropy:
        with torch.no_grad():
            cur, ent = sequence_values(learner.policy, batch, every, width, knobs.temperature, learner.device,
                                       learner.packed, cfg.micro_batch_tokens, with_entropy=with_entropy,
                                       autocast=cfg.autocast)
        cur = cur.cpu()
        ent = ent.cpu() if ent is not None else None
    return LogprobsBeforeUpdate(behaviour, cur, ref_lp, ent)


def step_advantages(batch: RolloutBatch, before: LogprobsBeforeUpdate, mask: torch.Tensor, cfg: RLConfig,
                    critic: Critic | None, device: torch.device, step: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(advantages (B, T), loss mask (B, T), statistics) of the batch.

    Rewards (training_rewards), minus kl_coef x the KL to the reference when it is in the reward;
    the estimator rl.advantage, or GAE over the critic's values (which also trains the critic);
    scaled by truncated importance weights with rl.tis_cap; zero on all but the batch's
    highest-entropy loss tokens with rl.top_entropy_fraction < 1; with zero_variance=mask the
    groups without reward variance leave the loss mask.
    """
    stats: dict[str, float] = {}
    cur, ref_lp = before.current, before.reference
    rewards = training_rewards(batch, cfg, seed, step)
    group_ids = torch.tensor(batch.group_ids)
    if cfg.tis_cap is not None:
        assert cur is not None
        tis_weights, tis_stats = truncated_importance_weights(cur, before.behaviour, mask, cfg.tis_cap)
        stats.update(tis_stats)
        stats.update(logprob_mismatch(cur, before.behaviour, mask))
    adv_options = dict(cfg.advantage_options)
    if cfg.kl_in_reward and ref_lp is not None:
        assert cur is not None
        kl = algorithms.kl_penalty(cur, ref_lp, cfg.kl_kind) * mask
        stats[M.ACTOR_REWARD_KL] = float((kl.sum() / mask.sum().clamp(min=1)).item())
        if cfg.advantage in ("reinforce_pp", "gae"):
            adv_options.update(kl=kl, kl_coef=cfg.kl_coef)
        else:
            rewards = rewards - cfg.kl_coef * kl.sum(-1)
    if cfg.advantage == "prefix_tree":
        adv_options["tokens"] = padded(batch.completion_ids, mask.shape[1], torch.long)
    if critic is not None:
        old_values = critic.values(batch, mask.shape[1], device, cfg)
        advantages, returns = algorithms.gae_advantages_returns(rewards, mask, old_values, **adv_options)
        advantages = advantages.float()
        stats.update(value_statistics(old_values, returns, mask))
        stats.update(critic.update(batch, old_values, returns.float(), mask, cfg, device, step, seed))
    else:
        advantages = algorithms.compute_advantages(cfg.advantage, rewards, group_ids, mask, **adv_options)
    if cfg.tis_cap is not None:
        advantages = advantages * tis_weights
    if before.entropy is not None:
        keep = algorithms.top_fraction_mask(before.entropy, mask, cfg.top_entropy_fraction)
        advantages = advantages * keep
        stats[M.ACTOR_PG_ENTROPY_THRESHOLD] = float(before.entropy[keep].min()) if keep.any() else 0.0
    loss_mask = mask.clone()
    if cfg.zero_variance == "mask":
        loss_mask = loss_mask * algorithms.zero_variance_mask(rewards, group_ids)[:, None].float()
    return advantages, loss_mask, stats


def training_rewards(batch: RolloutBatch, cfg: RLConfig, seed: int, step: int) -> torch.Tensor:
    """The rewards the advantages see: the batch's own, or with rl.shuffle_rewards (the placebo
    control) each group's rewards permuted among its samples, drawn from (seed, step) alone so a
    resumed run draws the same permutation."""
    rewards = torch.tensor(batch.rewards, dtype=torch.float32)
    if not cfg.shuffle_rewards:
        return rewards
    state = np.random.SeedSequence([seed, step, 31]).generate_state(1)
    generator = torch.Generator().manual_seed(int(state[0]))
    return algorithms.shuffle_within_groups(rewards, torch.tensor(batch.group_ids), generator)


def optimizer_steps(learner: Learner, data: StepData, cfg: RLConfig, knobs: Knobs, step: int, seed: int,
                    step_fn: StepFn, measure_mismatch: bool) -> dict[str, float]:
    """ppo_epochs x mini_batches optimizer steps on whole groups (an order drawn from (seed, step));
    returns each statistic's mean over the steps that report it, after the first step's
    actor/logprob_mismatch when measure_mismatch (and that step had loss tokens)."""
    out: dict[str, float] = {}
    means = RunningMeans()
    rng = np.random.default_rng([seed, step, 17])
    for n, index in enumerate(mini_batch_indices(data.batch, cfg.ppo_epochs, cfg.mini_batches, rng)):
        mb_stats = step_fn(learner, data, index, cfg, knobs)
        mismatch = mb_stats.pop(M.ACTOR_LOGPROB_MISMATCH, None)
        if n == 0 and measure_mismatch and mismatch is not None:
            active = gradient_rows(index, data, cfg)
            if float(data.loss_mask[active].sum()) > 0:
                out[M.ACTOR_LOGPROB_MISMATCH] = mismatch
        means.add(mb_stats)
    out.update(means.means())
    return out


def minibatch_step(learner: Learner, data: StepData, index: Sequence[int], cfg: RLConfig,
                   knobs: Knobs) -> dict[str, float]:
    """One optimizer step on the sequences `index`, accumulated over token-budget micro-batches
    (computed by update_workers threads at once, see micro_batch_gradients)."""
    policy, optimizer = learner.policy, learner.optimizer
    set_lr(optimizer, knobs.lr)
    total_mask = data.loss_mask[index]
    sums = StepSums()
    active = gradient_rows(index, data, cfg)
    lengths = forward_lengths(policy, data.batch, active, learner.packed)
    parts = worker_parts(micro_batches(lengths, cfg.micro_batch_tokens), lengths,
                         update_workers(cfg, learner.device))
    params = [p for p in policy.parameters() if p.requires_grad]

    def gradients(part: list[list[int]]) -> tuple[list[torch.Tensor | None] | None, StepSums]:
        micro = [[active[k] for k in mb] for mb in part]
        return micro_batch_gradients(learner, params, data, micro, total_mask, cfg, knobs)

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
            return skipped_step(knobs)
        sums.add(part_sums)
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
    grad_norm, skipped = clip_and_step(policy, optimizer, cfg.grad_clip)
    return {**sums.statistics(active_share(cfg.loss_agg, data.loss_mask, active, total_mask)),
            M.ACTOR_GRAD_NORM: grad_norm, M.ACTOR_LR: knobs.lr, M.ACTOR_SKIPPED_UPDATES: skipped}


def micro_batch_gradients(learner: Learner, params: list[torch.nn.Parameter], data: StepData,
                          micro: list[list[int]], total_mask: torch.Tensor, cfg: RLConfig,
                          knobs: Knobs) -> tuple[list[torch.Tensor | None] | None, StepSums]:
    """Summed parameter gradients (torch.autograd.grad, not .grad: several threads may run at once) of
    the micro-batches `micro` (rows of data.batch), and their statistics; None: a loss was not finite."""
    sums = StepSums()
    grads: list[torch.Tensor | None] = [None] * len(params)
    for rows in micro:
        new_lp, new_ent = sequence_values(learner.policy, data.batch, rows, data.width, knobs.temperature,
                                          learner.device, learner.packed, token_budget=1 << 62,
                                          with_entropy=True,  # entropy: always logged
                                          entropy_grad=cfg.entropy_coef != 0, autocast=cfg.autocast)
        total = micro_batch_loss(new_lp, new_ent, data, rows, total_mask, cfg, knobs, sums)
        if total is None:
            return None, sums
        for i, g in enumerate(torch.autograd.grad(total, params, allow_unused=True)):
            if g is not None:
                previous = grads[i]
                grads[i] = g if previous is None else previous + g
    return grads, sums


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


def skipped_step(knobs: Knobs) -> dict[str, float]:
    """The metrics of an optimizer step skipped for a non-finite loss."""
    return {M.ACTOR_SKIPPED_UPDATES: 1.0, M.ACTOR_GRAD_NORM: float("nan"), M.ACTOR_LR: knobs.lr}


def gradient_rows(index: Sequence[int], data: StepData, cfg: RLConfig) -> list[int]:
    """The sequences of `index` that can contribute a gradient to the step.

    Every policy loss is the advantage times a function of the ratio, token by token, so without a
    KL loss or an entropy bonus a sequence whose advantage is zero on all its loss tokens (a GRPO
    group whose samples all scored the same; a masked sequence) adds exactly zero to the loss and
    its gradient. Its forward and backward are skipped; it still counts in the aggregation's
    denominators (total_mask in micro_batch_loss), so the step is the one that running it would give.
    On kk-tiny a third of the groups have equal rewards: a third of the update's compute.
    """
    if (data.ref_logprobs is not None and not cfg.kl_in_reward) or cfg.entropy_coef:
        return list(index)
    advantages, loss_mask = data.advantages, data.loss_mask
    return [i for i in index if bool(((advantages[i] != 0) & (loss_mask[i] > 0)).any())]


def micro_batch_loss(new_lp: torch.Tensor, new_ent: torch.Tensor | None, data: StepData, rows: Sequence[int],
                     total_mask: torch.Tensor, cfg: RLConfig, knobs: Knobs,
                     sums: StepSums) -> torch.Tensor | None:
    """The loss of one micro-batch (rows `rows`), scaled by its share of the mini-batch's aggregate.

    Policy loss + kl_coef * KL (unless the KL is in the reward) - entropy_coef * entropy; the sum of
    the returned values over a mini-batch's micro-batches is the mini-batch loss (every aggregation
    is linear in token losses, see aggregation_share). Adds the weighted statistics to `sums`.
    Returns None, adding nothing, when the loss is not finite: the caller skips the optimizer step.
    Shared by the single-process step and the data-parallel one (rlvr.distributed.learner).
    """
    device = new_lp.device
    m = data.loss_mask[rows].to(device)
    adv = data.advantages[rows].to(device)
    old = data.old_logprobs[rows].to(device) if data.old_logprobs is not None else new_lp.detach()
    loss, pstats = algorithms.policy_loss(cfg.loss, new_lp, old, adv, m, **loss_options(cfg, knobs))
    weight = aggregation_share(cfg.loss_agg, m, total_mask)
    total = loss
    kl_value = ent_value = None
    if data.ref_logprobs is not None and not cfg.kl_in_reward:
        kl = algorithms.kl_penalty(new_lp, data.ref_logprobs[rows].to(device), cfg.kl_kind)
        kl_value = algorithms.aggregate_loss(kl, m, cfg.loss_agg, norm=knobs.max_new_tokens)
        total = total + cfg.kl_coef * kl_value
    if new_ent is not None:
        ent_value = algorithms.aggregate_loss(new_ent, m, cfg.loss_agg, norm=knobs.max_new_tokens)
        if cfg.entropy_coef:
            total = total - cfg.entropy_coef * ent_value
    if not torch.isfinite(total):
        return None
    if data.old_logprobs is not None:
        sums.mismatch += float(((new_lp.detach() - old).abs() * m).sum())
        sums.mismatch_tokens += float(m.sum())
    sums.pg_loss += weight * float(loss.detach())
    if kl_value is not None:
        sums.kl_loss += weight * float(kl_value.detach())
    if ent_value is not None:
        sums.entropy += weight * float(ent_value.detach())
    sums.pg_clipfrac += weight * float(pstats.get("pg_clipfrac", 0.0))
    sums.pg_clipfrac_lower += weight * float(pstats.get("pg_clipfrac_lower", 0.0))
    sums.ppo_kl += weight * float(pstats.get("ppo_kl", 0.0))
    return total * weight


def loss_options(cfg: RLConfig, knobs: Knobs) -> dict[str, Any]:
    """Keyword arguments of algorithms.policy_loss from the recipe (None: the loss's own default)."""
    options = {"clip_low": cfg.clip_low, "clip_high": cfg.clip_high, "dual_clip": cfg.dual_clip,
               "loss_agg": cfg.loss_agg, "loss_agg_norm": knobs.max_new_tokens}
    return {k: v for k, v in options.items() if v is not None}


def aggregation_share(mode: str, mask: torch.Tensor, total_mask: torch.Tensor) -> float:
    """Share of a micro-batch in its mini-batch's aggregated loss (every mode is linear in token losses).

    token-mean: its share of valid tokens; seq-mean modes: its share of rows with a valid token
    (rows the loss mask empties do not count, as in algorithms.aggregate_loss).
    """
    if mode == "token-mean":
        return float(mask.sum() / total_mask.sum().clamp(min=1))
    rows = float((mask.sum(-1) > 0).sum())
    return rows / max(float((total_mask.sum(-1) > 0).sum()), 1.0)


def active_share(mode: str, loss_mask: torch.Tensor, active: Sequence[int],
                 total_mask: torch.Tensor) -> float:
    """The share of the rows that ran (`active`) in the step's aggregate (0 when none ran)."""
    return aggregation_share(mode, loss_mask[list(active)], total_mask) if len(active) else 0.0


@dataclass
class StepSums:
    """One optimizer step's statistics, summed over its micro-batches by micro_batch_loss.

    The losses, entropy, clip fractions and ppo_kl are weighted by each micro-batch's share of the
    step's aggregate; mismatch sums |new - old| log-prob over the loss tokens, mismatch_tokens
    counts them. `values()` / `from_values` carry them through an all-reduce.
    """

    pg_loss: float = 0.0
    kl_loss: float = 0.0
    entropy: float = 0.0
    pg_clipfrac: float = 0.0
    pg_clipfrac_lower: float = 0.0
    ppo_kl: float = 0.0
    mismatch: float = 0.0
    mismatch_tokens: float = 0.0

    def values(self) -> list[float]:
        return [getattr(self, f.name) for f in fields(self)]

    def add(self, other: StepSums) -> None:
        """Add another part's sums (the micro-batches of an update worker)."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @classmethod
    def from_values(cls, values: Sequence[float]) -> StepSums:
        return cls(*values)

    def statistics(self, share: float) -> dict[str, float]:
        """The step's metrics. The losses are exact as accumulated (an inactive row adds zero).
        Entropy, clip fractions and ppo_kl describe the rows that ran, whose aggregation weight is
        `share` (active_share): rescaled to sum to one over them, left out when none ran."""
        out = {M.ACTOR_PG_LOSS: self.pg_loss, M.ACTOR_KL_LOSS: self.kl_loss}
        if share > 0:
            out.update({M.ACTOR_ENTROPY: self.entropy / share, M.ACTOR_PG_CLIPFRAC: self.pg_clipfrac / share,
                        M.ACTOR_PG_CLIPFRAC_LOWER: self.pg_clipfrac_lower / share,
                        M.ACTOR_PPO_KL: self.ppo_kl / share})
        out[M.ACTOR_LOGPROB_MISMATCH] = self.mismatch / max(self.mismatch_tokens, 1.0)
        return out


# ---------------------------------------------------------------------------------------------
# Outputs: samples files, learning-curve points, checkpoints


def dump_samples(run_dir: Path, step: int, batch: RolloutBatch) -> list[dict[str, Any]]:
    """Write the step's completions to samples/step_XXXXXX.jsonl; returns the rows."""
    rows = [
        {"step": step, "group": g, "prompt": ex.prompt, "completion": text, "reward": r, "correct": c,
         "format_ok": f, "parts": p, "finish_reason": fr, "n_tokens": len(ids)}
        for ex, text, r, c, f, p, fr, ids, g in zip(batch.examples, batch.texts, batch.rewards, batch.correct,
                                                     batch.format_ok, batch.parts, batch.finish_reasons,
                                                     batch.completion_ids, batch.group_ids)
    ]
    write_jsonl_atomic(run_dir / "samples" / f"step_{step:06d}.jsonl", rows)
    return rows


def curve_point(run: RLRun, done: int, steps: int) -> float:
    """Log the learning curve's point after `done` of `steps` RL steps (phase rl_eval) when one is
    due (done = 0, a multiple of run.eval_every, or the last); returns the seconds it took (0: none due)."""
    every = run.eval_every
    if run.eval_fn is None or not every or not (done % every == 0 or done == steps):
        return 0.0
    t0 = time.perf_counter()
    run.logger.log({"phase": "rl_eval", "step": done, **run.eval_fn(done)})
    return time.perf_counter() - t0


def save_rl_checkpoint(run: RLRun, learner: Learner, stage_dir: Path, done: int, guard: CollapseGuard,
                       checkpoint: CheckpointConfig) -> None:
    """The policy (HF directory) and everything a resume needs: optimizer(s), reference, critic, guard."""
    state: dict[str, Any] = {"optimizer": learner.optimizer.state_dict(), "best_accuracy": guard.best,
                             "low_streak": guard.low_streak}
    if run.learner_ranks is not None:
        state["learner_optimizers"] = run.learner_ranks.optimizer_state_dicts()
    if learner.ref is not None:
        state["reference"] = learner.ref.state_dict()
    if run.critic is not None:
        state["critic"] = run.critic.state_dict()
    ckpt.save_checkpoint(stage_dir, done, learner.policy, run.sampler.tokenizer, state, checkpoint.keep_last,
                         checkpoint.merge_lora)
