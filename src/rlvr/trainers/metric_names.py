"""Every metric name the trainers can log (metrics.jsonl rows, TensorBoard, W&B), in one place.

Names follow verl's where one exists. The trainers (rl.py, critic.py, sft.py, pipeline.py) use the
constants below. Modules beneath the trainers name their own keys, since they import nothing of
the trainers: algorithms.group_stats (GROUP_STATS), rollout.partial's engine metrics (PARTIAL),
truncated importance weights (TIS), logprob_mismatch (ENGINE_MISMATCH), the failed reward-function
calls of tasks.generic (REWARD_FAILURES) and evaluation.metrics.source_metrics (the per-source
patterns); tests/unit/test_metric_names.py checks their keys against these, and that
docs/design.md lists every name in NAMES and PATTERNS (and nothing else).
"""

from __future__ import annotations

import re

# -- RL rows (phase "rl"): the batch ---------------------------------------------------------
REWARD_MEAN = "reward/mean"
REWARD_STD = "reward/std"
ACCURACY = "accuracy"
FORMAT_ERROR_RATIO = "format_error_ratio"
RESPONSE_LENGTH_MEAN = "response_length/mean"
RESPONSE_LENGTH_MIN = "response_length/min"
RESPONSE_LENGTH_MAX = "response_length/max"
RESPONSE_LENGTH_CLIP_RATIO = "response_length/clip_ratio"
PROMPT_LENGTH_MEAN = "prompt_length/mean"
ROLLOUT_TEMPERATURE = "rollout/temperature"
ROLLOUT_MAX_NEW_TOKENS = "rollout/max_new_tokens"
ROLLOUT_GROUP_SIZE = "rollout/group_size"
ROLLOUT_REUSED_TOKEN_RATIO = "rollout/reused_token_ratio"
CURRICULUM_STAGE = "curriculum/stage"
REWARD_PART_MEAN = "rewards/<part>/mean"
"""A pattern: the batch mean of each reward part (Score.parts, plus "length" with length shaping)."""
SOURCE_REWARD_MEAN = "reward/<source>/mean"
SOURCE_ACCURACY = "accuracy/<source>"
SOURCE_BATCH_SHARE = "batch_share/<source>"
"""Patterns: per data_source of the batch's rows (mixed and generic runs; evaluation.source_metrics)."""
GROUP_STATS = ("num_groups", "all_correct_ratio", "all_wrong_ratio", "zero_variance_ratio")
REWARD_FAILURES = ("reward/errors", "reward/timeouts")
"""Failed reward-function calls of the step (only with reward.function(s); tasks.generic)."""
DYNAMIC_SAMPLING_ROUNDS = "dynamic_sampling/rounds"
DYNAMIC_SAMPLING_DROPPED_GROUPS = "dynamic_sampling/dropped_groups"
DYNAMIC_SAMPLING_KEPT_GROUPS = "dynamic_sampling/kept_groups"
PARTIAL = ("partial/returned_groups", "partial/returned_sequences", "partial/resumed_sequences",
           "partial/carried_groups", "partial/carried_sequences", "partial/waiting_sequences",
           "partial/staleness_mean", "partial/staleness_max", "partial/stale_token_fraction",
           "partial/weight_version")

# -- RL rows: the update ---------------------------------------------------------------------
ACTOR_PG_LOSS = "actor/pg_loss"
ACTOR_KL_LOSS = "actor/kl_loss"
ACTOR_ENTROPY = "actor/entropy"
ACTOR_PG_CLIPFRAC = "actor/pg_clipfrac"
ACTOR_PG_CLIPFRAC_LOWER = "actor/pg_clipfrac_lower"
ACTOR_PPO_KL = "actor/ppo_kl"
ACTOR_GRAD_NORM = "actor/grad_norm"
ACTOR_LR = "actor/lr"
ACTOR_SKIPPED_UPDATES = "actor/skipped_updates"
ACTOR_LOGPROB_MISMATCH = "actor/logprob_mismatch"
ACTOR_REWARD_KL = "actor/reward_kl"
ACTOR_LOSS_TOKENS = "actor/loss_tokens"
ACTOR_PG_ENTROPY_THRESHOLD = "actor/pg_entropy_threshold"
"""With rl.top_entropy_fraction < 1: the lowest entropy among the tokens that keep their advantage."""
ADVANTAGES_MEAN = "critic/advantages/mean"
ADVANTAGES_MAX = "critic/advantages/max"
ADVANTAGES_MIN = "critic/advantages/min"
TIS = ("rollout/tis_weight_mean", "rollout/tis_truncated_fraction")
ENGINE_MISMATCH = ("rollout/logprob_abs_diff_mean", "rollout/logprob_abs_diff_max",
                   "rollout/prob_abs_diff_mean", "rollout/kl_k3")
# with a critic (rl.advantage=gae, rlvr.trainers.critic)
CRITIC_VF_LOSS = "critic/vf_loss"
CRITIC_VF_CLIPFRAC = "critic/vf_clipfrac"
CRITIC_VPRED_MEAN = "critic/vpred_mean"
CRITIC_GRAD_NORM = "critic/grad_norm"
CRITIC_LR = "critic/lr"
CRITIC_SKIPPED_UPDATES = "critic/skipped_updates"
CRITIC_VALUES_MEAN = "critic/values/mean"
CRITIC_RETURNS_MEAN = "critic/returns/mean"
CRITIC_VF_EXPLAINED_VAR = "critic/vf_explained_var"

# -- timings (RL and SFT rows) ---------------------------------------------------------------
TIMING_GEN = "timing_s/gen"
TIMING_UPDATE = "timing_s/update"
TIMING_SYNC = "timing_s/sync"
TIMING_EVAL = "timing_s/eval"
TIMING_STEP = "timing_s/step"
GEN_TOKENS_PER_S = "perf/gen_tokens_per_s"

# -- learning-curve rows (phase "rl_eval") ---------------------------------------------------
EVAL_SAMPLED_ACCURACY = "eval/sampled_accuracy"
EVAL_FORMAT_ERROR_RATE = "eval/format_error_rate"
EVAL_RESPONSE_LENGTH = "eval/response_length"
EVAL_SAMPLES = "eval/samples"
EVAL_SOURCE_SAMPLED_ACCURACY = "eval/<source>/sampled_accuracy"
"""A pattern: the learning curve's accuracy per data_source (data.sources)."""

# -- SFT rows (phase "sft") ------------------------------------------------------------------
SFT_LOSS = "sft/loss"
SFT_LR = "sft/lr"
SFT_GRAD_NORM = "sft/grad_norm"
SFT_TOKENS_PER_S = "sft/tokens_per_s"
SFT_COMPLETION_TOKENS = "sft/completion_tokens"
SFT_TRUNCATED_FRACTION = "sft/truncated_fraction"
SFT_EVAL_GREEDY_ACCURACY = "sft_eval/greedy_accuracy"
SFT_EVAL_FORMAT_ERROR_RATE = "sft_eval/format_error_rate"

PATTERNS = (REWARD_PART_MEAN, SOURCE_REWARD_MEAN, SOURCE_ACCURACY, SOURCE_BATCH_SHARE,
            EVAL_SOURCE_SAMPLED_ACCURACY)
"""Names with a placeholder (<part>, <source>): one name per value."""
NAMES = tuple(sorted({value for key, value in globals().items()
                      if key.isupper() and isinstance(value, str) and value not in PATTERNS}
                     | set(GROUP_STATS) | set(REWARD_FAILURES) | set(PARTIAL) | set(TIS)
                     | set(ENGINE_MISMATCH)))
"""Every fixed name, sorted."""

_PATTERN_RE = [re.compile("^" + re.sub(r"<[a-z]+>", "[^/]+", re.escape(p)) + "$") for p in PATTERNS]


def reward_part_mean(part: str) -> str:
    """rewards/<part>/mean for one reward part."""
    return REWARD_PART_MEAN.replace("<part>", part)


def is_metric_name(name: str) -> bool:
    """Whether `name` is one the trainers may log (a fixed name, or a pattern's instance)."""
    return name in NAMES or any(p.match(name) for p in _PATTERN_RE)
