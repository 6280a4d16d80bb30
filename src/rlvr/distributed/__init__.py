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
    """Ray resources the run's actors reserve in all: CPU, GPU, then each custom resource named in
    resources_per_worker / resources_per_learner, summed over rollout workers and learners."""
    need = {
        "CPU": cfg.num_rollout_workers * cfg.cpus_per_worker + cfg.num_learners * cfg.cpus_per_learner,
        "GPU": cfg.num_rollout_workers * cfg.gpus_per_worker + cfg.num_learners * cfg.gpus_per_learner,
    }
    for count, custom in ((cfg.num_rollout_workers, cfg.resources_per_worker),
                          (cfg.num_learners, cfg.resources_per_learner)):
        for name, amount in custom.items():
            need[name] = need.get(name, 0.0) + count * amount
    return need


def connect(cfg: RayConfig) -> Any:
    """Join cfg.address, or start a local cluster that can hold all of the run's actors; returns ray.

    Ray leaves an actor whose resources no node can ever provide pending forever, without an error:
    on a 2-core machine the default 2 rollout workers + 1 learner (1 CPU each) would hang the run.
    A local cluster is therefore started with max(cores, CPUs reserved) logical CPUs (the actors
    then share the cores; each uses threads_per_worker threads) and the custom resources the
    actors reserve (so a recipe written for a cluster's resources_per_worker / _learner also runs on
    one machine), and a local cluster that still cannot hold them (too few GPUs, or one started
    earlier with fewer CPUs) is refused here with the keys to change. A remote cluster is joined as
    it is (an autoscaler may add nodes), but a custom resource that none of its nodes has is refused:
    that is a misspelt name or a node started without `--resources`, and the actors would never start.
    """
    from rlvr.distributed.ray_engine import ensure_ray  # imports torch: see the module docstring

    need = reserved_resources(cfg)
    custom = {name: amount for name, amount in need.items() if name not in ("CPU", "GPU")}
    # num_cpus and resources only size a local cluster this call starts (ensure_ray ignores them otherwise)
    ray = ensure_ray(cfg.address, num_cpus=max(os.cpu_count() or 1, math.ceil(need["CPU"])), resources=custom)
    have = ray.cluster_resources()
    if not cfg.address:
        short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}
        if short:
            detail = ", ".join(f"{v:g} {k} reserved, the cluster has {h:g}" for k, (v, h) in short.items())
            raise RuntimeError(
                f"distributed=ray: the local Ray cluster cannot hold {cfg.num_rollout_workers} rollout "
                f"workers and {cfg.num_learners} learners ({detail}); lower ray.num_rollout_workers, "
                f"ray.num_learners, ray.cpus_per_worker / cpus_per_learner, ray.gpus_per_worker / "
                f"gpus_per_learner or ray.resources_per_worker / resources_per_learner"
            )
        return ray
    missing = [name for name in custom if have.get(name, 0.0) <= 0]
    if missing:
        tables = (("worker", cfg.resources_per_worker), ("learner", cfg.resources_per_learner))
        keys = sorted({f"ray.resources_per_{kind}" for kind, table in tables
                       for name in missing if name in table})
        has = ", ".join(f"{k} {v:g}" for k, v in sorted(have.items()) if not k.startswith("node:"))
        raise RuntimeError(
            f"distributed=ray: {' and '.join(keys)} reserve {', '.join(map(repr, missing))}, which no node "
            f"of the Ray cluster at {cfg.address!r} has (it has: {has}); start those nodes with "
            f"`ray start --address=... --resources='{{\"{missing[0]}\": N}}'` or fix the resource name"
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
        gpus_per_worker=cfg.gpus_per_worker, resources_per_worker=cfg.resources_per_worker,
        threads_per_worker=cfg.threads_per_worker, spread=cfg.spread, address=cfg.address,
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
        gpus_per_learner=cfg.gpus_per_learner, resources_per_learner=cfg.resources_per_learner,
        address=cfg.address,
    )


def placement(engine: Any, learner: Any = None) -> dict[str, Any]:
    """Where a run's Ray processes run (summary.json's "placement"): the driver, each rollout worker
    and each learner rank as {node_id, node_ip, hostname, pid}; learners is [] when the update runs
    in the driver. Processes on one Ray node share its node_id, also when two nodes share a host."""
    from rlvr.distributed.ray_engine import node_info

    return {"driver": node_info(), "rollout_workers": engine.placement(),
            "learners": learner.placement() if learner is not None else []}


def describe_placement(where: dict[str, Any]) -> str:
    """One line for the log: the processes of placement() grouped by node."""
    nodes: dict[str, list[str]] = {}
    for role, entries in (("driver", [where["driver"]]), ("rollout worker", where["rollout_workers"]),
                          ("learner", where["learners"])):
        for i, entry in enumerate(entries):
            name = role if role == "driver" else f"{role} {i}"
            node = f"{entry['node_id'][:12]} ({entry['hostname']}, {entry['node_ip']})"
            nodes.setdefault(node, []).append(name)
    return "; ".join(f"node {node}: {', '.join(names)}" for node, names in nodes.items())


__all__ = ["connect", "describe_placement", "make_engine", "make_learner", "placement", "reserved_resources"]
