"""What bench_rl_step and bench_rl_throughput share: the recipe's RL stage built as train_rl builds
it (policy, engine, problem pool, prompt cache, learner, sampler), and the rows an update runs.

Imported by those scripts (they run with bench/ on sys.path); not a benchmark itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class RLStage:
    """One RL stage of a recipe from a checkpoint: run a step with collect + update_policy."""

    config: Any  # rlvr.config.RunConfig
    policy: Any  # rlvr.trainers.pipeline.Policy
    learner: Any  # rlvr.trainers.rl.Learner
    sampler: Any  # rlvr.trainers.rl.Sampler
    threads: int  # torch's intra-op threads, set before anything was built


def build_stage(recipe: str, model_dir: str, overrides: list[str],
                engine_options: dict[str, Any] | None = None, start: dict | None = None,
                threads: int = 0) -> RLStage:
    """The recipe (plus overrides) loaded on `model_dir`, its weights replaced by `start` when given,
    with a TorchEngine on the policy's own module (plus engine_options) and a fresh learner; torch
    threads: `threads`, else the recipe's, else torch's default."""
    import torch

    from rlvr import tasks
    from rlvr.config import load_config
    from rlvr.models import eos_token_ids
    from rlvr.rollout.torch_engine import TorchEngine
    from rlvr.trainers.pipeline import (
        engine_dtype,
        engine_workers,
        load_policy,
        prompt_tokens,
        training_source,
    )
    from rlvr.trainers.rl import ProblemPool, Sampler, new_learner

    config = load_config(recipe, [f"model.path={model_dir}", *overrides])
    threads = threads or config.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    policy = load_policy(config.model.path, config.model.impl, config.model.dtype, device)
    if start is not None:
        policy.model.load_state_dict(start)
    task = tasks.get(config.data.task, **config.data.task_options)
    eos = eos_token_ids(policy.tokenizer)
    engine = TorchEngine(policy.model, eos_token_ids=eos, pad_token_id=policy.tokenizer.pad_token_id or 0,
                         dtype=engine_dtype(config, policy), workers=engine_workers(config),
                         **(engine_options or {}))
    pool = ProblemPool(training_source(config, task, set()), seed=config.seed)
    prompt_cache, _ = prompt_tokens(policy.tokenizer, task, 0)  # the pipeline's cached prompt ids
    learner = new_learner(policy.model, config.rl, device, policy.packed)  # as train_rl builds it
    sampler = Sampler(engine, policy.tokenizer, task, pool, prompt_cache, eos)
    return RLStage(config, policy, learner, sampler, threads)


def active_rows(batch: Any, cfg: Any) -> list[int]:
    """The rows of `batch` whose update has a gradient (the others are skipped by update_policy)."""
    import torch

    from rlvr import algorithms
    from rlvr.trainers.rl import StepData, gradient_rows

    comps = [len(c) for c in batch.completion_ids]
    mask = (torch.arange(max(comps))[None, :] < torch.tensor(comps)[:, None]).float()
    adv = algorithms.compute_advantages(cfg.advantage, torch.tensor(batch.rewards),
                                        torch.tensor(batch.group_ids), mask)
    return gradient_rows(range(len(batch)), StepData(batch, adv, mask), cfg)
