"""Scale-out: Ray rollout workers and learner ranks, FSDP2 / data-parallel learner steps.

This package is the only place in rlvr that imports torch.distributed or ray, and it imports them
lazily: `import rlvr.distributed` costs nothing and works without Ray installed.

    launch.py       process groups (gloo / nccl), free ports, a spawn helper
    learner.py      data-parallel optimizer step (FSDP2 or replicated), packing, token budgets,
                    gradient checkpointing
    ray_engine.py   RayRolloutEngine: rollout worker actors behind the RolloutEngine protocol
    ray_learner.py  RayLearnerGroup: learner ranks as actors running the RL loop's update step

The RL loop (rlvr.trainers.rl.train_rl) is the same for every backend: `make_engine` gives it a
RolloutEngine whose workers are Ray actors; `make_learner` gives the Ray learner ranks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from rlvr.config import RayConfig  # the `ray:` section of the run config


def reserved_resources(cfg: RayConfig) -> dict[str, float]:
    """Ray resources the run's actors reserve: {"CPU": ..., "GPU": ...} over rollout workers and learners."""
    return {
        "CPU": cfg.num_rollout_workers * cfg.cpus_per_worker + cfg.num_learners * cfg.cpus_per_learner,
        "GPU": cfg.num_rollout_workers * cfg.gpus_per_worker + cfg.num_learners * cfg.gpus_per_learner,
    }


def connect(cfg: RayConfig) -> Any:
    """Join cfg.address, or start a local cluster that can hold all of the run's actors; returns ray.

    Ray leaves an actor whose resources no node can ever provide pending forever, without an error:
    on a 2-core machine the default 2 rollout workers + 1 learner (1 CPU each) would hang the run.
    A local cluster is therefore started with max(cores, CPUs reserved) logical CPUs (the actors
    then share the cores; each uses threads_per_worker threads), and a local cluster that still
    cannot hold them (too few GPUs, or one started earlier with fewer CPUs) is refused here with the
    keys to change. A remote cluster is joined as it is (an autoscaler may add nodes).
    """
    from rlvr.distributed.ray_engine import ensure_ray  # imports torch: see the module docstring

    need = reserved_resources(cfg)
    # num_cpus only sizes a local cluster this call starts (ensure_ray ignores it otherwise)
    ray = ensure_ray(cfg.address, num_cpus=max(os.cpu_count() or 1, math.ceil(need["CPU"])))
    if not cfg.address:
        have = ray.cluster_resources()
        short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}
        if short:
            detail = ", ".join(f"{v:g} {k} reserved, the cluster has {h:g}" for k, (v, h) in short.items())
            raise RuntimeError(
                f"distributed=ray: the local Ray cluster cannot hold {cfg.num_rollout_workers} rollout workers "
                f"and {cfg.num_learners} learners ({detail}); lower ray.num_rollout_workers, "
                f"ray.num_learners, ray.cpus_per_worker / cpus_per_learner or ray.gpus_per_worker / "
                f"gpus_per_learner"
            )
    return ray


def make_engine(cfg: RayConfig, policy_model: Any, eos_token_ids: Sequence[int], pad_token_id: int = 0,
                model_dir: str | None = None) -> Any:
    """A RayRolloutEngine for the RL loop (train_rl with engine_shares_weights=False).

    policy_model: the learner's module (copied to the workers); model_dir: the HF directory the
    vLLM workers load (rollout_engine="vllm" only).
    """
    from rlvr.distributed.ray_engine import RayRolloutEngine  # imports torch: see the module docstring

    if cfg.rollout_engine == "vllm":
        if not model_dir:
            raise ValueError("ray.rollout_engine=vllm: the workers need the model directory (model_dir)")
        model: Any = model_dir
    else:
        model = policy_model
    connect(cfg)
    return RayRolloutEngine(
        model, cfg.num_rollout_workers, eos_token_ids, pad_token_id, engine=cfg.rollout_engine,
        engine_options=dict(cfg.engine_options), cpus_per_worker=cfg.cpus_per_worker,
        gpus_per_worker=cfg.gpus_per_worker, threads_per_worker=cfg.threads_per_worker, spread=cfg.spread,
        address=cfg.address,
    )


def make_learner(cfg: RayConfig, policy_model: Any, rl_config: Any, packed: bool) -> Any:
    """A RayLearnerGroup of cfg.num_learners ranks (None when num_learners == 0: learn in the driver)."""
    if cfg.num_learners == 0:
        return None
    from rlvr.distributed.ray_learner import RayLearnerGroup  # imports torch: see the module docstring

    connect(cfg)
    return RayLearnerGroup(
        policy_model, rl_config, num_learners=cfg.num_learners, strategy=cfg.learner_strategy, packed=packed,
        gradient_checkpointing=cfg.gradient_checkpointing, cpus_per_learner=cfg.cpus_per_learner,
        gpus_per_learner=cfg.gpus_per_learner, address=cfg.address,
    )


__all__ = ["connect", "make_engine", "make_learner", "reserved_resources"]
