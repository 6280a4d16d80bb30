"""Partial rollouts: a per-step token budget; unfinished sequences continue in the next step.

Long completions make synchronous RL wait for the slowest sequence of every batch (the long tail).
Kimi k1.5 (2025) caps the tokens each sequence may generate per iteration and carries the rest
over; AReaL (Fu et al. 2025) corrects the resulting staleness with importance ratios. This module
is the rollout half of that: a wrapper around any RolloutEngine.

    partial = PartialRollouts(engine, tokens_per_step=64)
    out = partial.generate_partial(prompt_ids, params, keys=examples)   # every step
    # out.rollouts: the sequences of groups that are now complete, prompt_index -> out.keys[i]
    partial.load_weights(policy.state_dict())                           # after every update

A *group* is the params.n samples of one prompt; it is returned only when all its samples have
finished (group-relative advantages need the whole group). In each call every unfinished sequence
generates at most `tokens_per_step` more tokens, continuing from prompt + its tokens so far (the
inner engine sees them as a longer prompt); a sequence finishes on a stop token, or when its
completion reaches the max_new_tokens it started with. Groups come back oldest first, each exactly
once, with all their tokens. Every token remembers the weight version that sampled it; its
log-prob is the behaviour policy's, so the trainer can correct stale tokens with
`truncated_importance_weights` (below).

Rollout.metadata of a returned sequence: sample_index, staleness (weight versions between its first
token and now), token_versions (one per token), segments (generate calls that extended it).

Limits: stop strings are refused (a string split across two steps' segments would be missed; use
stop_token_ids); with a lockstep engine a carried sequence re-runs the prefill of its prompt and
partial completion in the next step (vLLM's prefix cache makes that cheap on GPU).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from rlvr.rollout.base import Rollout, RolloutEngine, SamplingParams


@dataclass
class _Sequence:
    sample_index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    segments: int = 0
    finish_reason: Literal["stop", "length"] | None = None


@dataclass
class _Group:
    key: Any
    prompt_ids: list[int]
    max_new_tokens: int
    started_call: int
    sequences: list[_Sequence]

    @property
    def done(self) -> bool:
        return all(s.finish_reason is not None for s in self.sequences)


@dataclass
class PartialBatch:
    """What one step returns: complete groups (oldest first) and the step's partial-rollout metrics.

    rollouts are ordered by group then sample; rollouts[j].prompt_index indexes `keys` and
    `prompt_ids` (the caller's key and the prompt of each returned group).
    """

    rollouts: list[Rollout]
    keys: list[Any]
    prompt_ids: list[list[int]]
    metrics: dict[str, float]


class PartialRollouts:
    """Wraps `engine` (any RolloutEngine) with a per-step token budget (see the module docstring).

    It is itself a RolloutEngine: generate() runs complete sequences through the inner engine (for
    evaluation); generate_partial() is the budgeted, carrying call the RL loop makes each step.
    """

    def __init__(self, engine: RolloutEngine, tokens_per_step: int) -> None:
        if tokens_per_step < 1:
            raise ValueError(f"PartialRollouts: tokens_per_step must be >= 1, got {tokens_per_step}")
        self.engine = engine
        self.tokens_per_step = tokens_per_step
        self.version = 0
        self._calls = 0
        self._pending: list[_Group] = []

    # ---------------------------------------------------------------- RolloutEngine protocol

    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Rollout]:
        """Complete sequences, no budget and no carrying (the inner engine's own generate)."""
        return self.engine.generate(prompt_ids, params)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Pass the learner's new weights on, and count a new weight version."""
        self.engine.load_weights(state_dict)
        self.version += 1

    def mark_updated(self) -> None:
        """Count a new weight version without sending weights (the engine shares the learner's module)."""
        self.version += 1

    # ---------------------------------------------------------------- partial generation

    @property
    def pending_groups(self) -> int:
        return len(self._pending)

    @property
    def pending_sequences(self) -> int:
        return sum(1 for g in self._pending for s in g.sequences if s.finish_reason is None)

    def generate_partial(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams,
                         keys: Sequence[Any] | None = None) -> PartialBatch:
        """Start groups for `prompt_ids` (n samples each), advance every unfinished sequence by at
        most tokens_per_step tokens, and return the groups that are now complete.

        keys: one caller's value per prompt, handed back with its group (default: the prompt's
        position in this call and the call number, as a tuple).
        """
        if params.stop_strings:
            raise ValueError("PartialRollouts: stop_strings are not supported (a string could straddle two "
                             "steps' segments); stop on token ids (SamplingParams.stop_token_ids)")
        if keys is not None and len(keys) != len(prompt_ids):
            raise ValueError(f"PartialRollouts: {len(keys)} keys for {len(prompt_ids)} prompts")
        call = self._calls
        self._calls += 1
        resumed = self.pending_sequences
        for i, p in enumerate(prompt_ids):
            if len(p) == 0:
                raise ValueError(f"PartialRollouts.generate_partial: prompt {i} is empty")
            key = keys[i] if keys is not None else (call, i)
            self._pending.append(_Group(key, list(p), params.max_new_tokens, call,
                                        [_Sequence(s) for s in range(params.n)]))
        self._advance(params, call)
        return self._collect(resumed)

    def drain(self, params: SamplingParams) -> PartialBatch:
        """Finish every pending group (no new prompts), e.g. at the end of training."""
        resumed = self.pending_sequences
        while self.pending_sequences:
            call = self._calls
            self._calls += 1
            self._advance(params, call)
        return self._collect(resumed)

    def _advance(self, params: SamplingParams, call: int) -> None:
        """One budgeted segment for every unfinished sequence; inner calls grouped by token cap."""
        by_cap: dict[int, list[tuple[_Group, _Sequence]]] = {}
        for g in self._pending:
            for s in g.sequences:
                if s.finish_reason is None:
                    cap = min(self.tokens_per_step, g.max_new_tokens - len(s.token_ids))
                    by_cap.setdefault(cap, []).append((g, s))
        for part, cap in enumerate(sorted(by_cap, reverse=True)):
            rows = by_cap[cap]
            seed = (None if params.seed is None
                    else (params.seed * 1_000_003 + call * 7919 + part) % (2**63 - 1))
            inner = dataclasses.replace(params, n=1, max_new_tokens=cap, seed=seed)
            outs = self.engine.generate([g.prompt_ids + s.token_ids for g, s in rows], inner)
            if len(outs) != len(rows):
                raise RuntimeError(f"PartialRollouts: inner engine returned {len(outs)} rollouts for "
                                   f"{len(rows)} rows")
            for (g, s), r in zip(rows, sorted(outs, key=lambda r: r.prompt_index)):
                s.token_ids.extend(r.token_ids)
                s.logprobs.extend(r.logprobs)
                s.versions.extend([self.version] * len(r.token_ids))
                s.segments += 1
                if r.finish_reason == "stop":
                    s.finish_reason = "stop"
                elif len(s.token_ids) >= g.max_new_tokens:
                    s.finish_reason = "length"

    def _collect(self, resumed: int) -> PartialBatch:
        done = [g for g in self._pending if g.done]
        self._pending = [g for g in self._pending if not g.done]
        rollouts: list[Rollout] = []
        staleness: list[int] = []
        stale_tokens = total_tokens = 0
        for i, g in enumerate(done):
            for s in g.sequences:
                age = self.version - s.versions[0] if s.versions else 0
                staleness.append(age)
                stale_tokens += sum(1 for v in s.versions if v < self.version)
                total_tokens += len(s.versions)
                assert s.finish_reason is not None
                rollouts.append(Rollout(
                    prompt_index=i, prompt_ids=list(g.prompt_ids), token_ids=list(s.token_ids),
                    logprobs=list(s.logprobs), finish_reason=s.finish_reason,
                    metadata={"sample_index": s.sample_index, "staleness": age,
                              "token_versions": list(s.versions), "segments": s.segments},
                ))
        waiting = sum(1 for g in self._pending for s in g.sequences if s.finish_reason is not None)
        metrics = {
            "partial/returned_groups": float(len(done)),
            "partial/returned_sequences": float(len(rollouts)),
            "partial/resumed_sequences": float(resumed),
            "partial/carried_groups": float(len(self._pending)),
            "partial/carried_sequences": float(self.pending_sequences),
            "partial/waiting_sequences": float(waiting),
            "partial/staleness_mean": float(sum(staleness) / len(staleness)) if staleness else 0.0,
            "partial/staleness_max": float(max(staleness, default=0)),
            "partial/stale_token_fraction": stale_tokens / total_tokens if total_tokens else 0.0,
            "partial/weight_version": float(self.version),
        }
        return PartialBatch(rollouts, [g.key for g in done], [list(g.prompt_ids) for g in done], metrics)


# --------------------------------------------------------------------------------------------
# Off-policy correction and mismatch measurement (pure functions)
# --------------------------------------------------------------------------------------------


def truncated_importance_weights(learner_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                                 mask: torch.Tensor,
                                 cap: float = 2.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token truncated importance weights w = min(pi_learner / pi_rollout, cap), detached; (B, T).

    learner_logprobs: log-probs of the sampled tokens under the learner's current (pre-update)
    weights; rollout_logprobs: those the rollout engine sampled with (an older version for carried
    tokens, or a different numerical implementation such as vLLM). Multiplying each token's
    advantage by w (w >= 0, so PPO clipping is unaffected) turns the policy gradient into an
    estimate under the behaviour distribution that actually produced the tokens: truncated
    importance sampling (Ionides 2008; as used for rollout/learner mismatch by Yao et al. 2025,
    "Your efficient RL framework secretly brings you off-policy RL training"). The cap bounds the
    variance. Positions outside mask get weight 0.
    """
    if cap <= 0:
        raise ValueError(f"truncated_importance_weights: cap must be > 0, got {cap}")
    m = mask.to(learner_logprobs.dtype)
    log_ratio = (learner_logprobs.detach() - rollout_logprobs.to(learner_logprobs.dtype)) * m
    ratio = log_ratio.exp()
    weights = ratio.clamp(max=cap) * m
    n = m.sum().clamp(min=1)
    stats = {
        "rollout/tis_weight_mean": float((weights.sum() / n).item()),
        "rollout/tis_truncated_fraction": float((((ratio > cap).to(m.dtype) * m).sum() / n).item()),
    }
    return weights, stats


def logprob_mismatch(learner_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                     mask: torch.Tensor) -> dict[str, float]:
    """How far the engine's log-probs are from the learner's on the same tokens (masked means).

    logprob_abs_diff: mean and max |log pi_learner - log pi_rollout|; prob_abs_diff: mean
    |pi_learner - pi_rollout|; kl_k3: the k3 estimate (r - 1) - log r, r = pi_learner / pi_rollout,
    of KL(rollout || learner) from the sampled tokens (Schulman 2020, "Approximating KL divergence").
    """
    m = mask.to(torch.float64)
    a, b = learner_logprobs.detach().to(torch.float64), rollout_logprobs.to(torch.float64)
    d = (a - b) * m
    n = m.sum().clamp(min=1)
    k3 = (d.exp() - 1 - d) * m
    return {
        "rollout/logprob_abs_diff_mean": float((d.abs().sum() / n).item()),
        "rollout/logprob_abs_diff_max": float(d.abs().max().item()) if d.numel() else 0.0,
        "rollout/prob_abs_diff_mean": float((((a.exp() - b.exp()).abs() * m).sum() / n).item()),
        "rollout/kl_k3": float((k3.sum() / n).item()),
    }


__all__ = ["PartialBatch", "PartialRollouts", "logprob_mismatch", "truncated_importance_weights"]
