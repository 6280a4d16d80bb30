"""Learner ranks as Ray actors: the RL loop hands each step's update to them.

    learner = RayLearnerGroup(policy_model, cfg.rl, num_learners=2, strategy="fsdp", packed=True)
    metrics = learner.update(batch, cfg.rl, knobs, step, seed)   # in place of rl.update_policy(...)
    engine.load_weights(learner.state_dict())                    # whole weights, gathered from the shards

Each rank is an actor holding a copy of the policy (sharded with FSDP2, or replicated), an AdamW
optimizer built as the trainer builds it, and a frozen reference copy when cfg.kl_coef > 0. The
ranks join one torch.distributed group (gloo on CPU, nccl on GPU) whose rendezvous address is rank
0's node, so the ranks may sit on different nodes. update() sends the step's RolloutBatch to every
rank and runs rlvr.trainers.rl.update_policy there (the very function the single-process loop
runs); with more than one rank its optimizer steps are `dp_minibatch_step` (rlvr.distributed.learner),
passed as update_policy's `step_fn` (a rlvr.trainers.rl.StepFn).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from rlvr.distributed.launch import default_backend, free_port, init_process_group
from rlvr.distributed.learner import (
    DataParallel,
    Strategy,
    apply_gradient_checkpointing,
    full_state_dict,
    make_step_fn,
    shard_model,
)
from rlvr.distributed.ray_engine import ensure_ray, node_info
from rlvr.trainers.rl import Learner, new_optimizer, update_policy


class LearnerRank:
    """One learner rank (a Ray actor). Call `address` on rank 0, then `setup` on every rank."""

    def __init__(self, model: torch.nn.Module, cfg: Any, rank: int, world_size: int, strategy: Strategy,
                 device: str, packed: bool, gradient_checkpointing: bool, threads: int) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.cfg, self.packed = cfg, packed
        self.dp = DataParallel(rank, world_size, strategy)
        self.policy = model.to(self.device)
        self.ref = copy.deepcopy(self.policy).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
        self.checkpointing = apply_gradient_checkpointing(self.policy) if gradient_checkpointing else ""
        self.optimizer: torch.optim.Optimizer | None = None

    def address(self) -> tuple[str, int]:
        """(this node's IP, a free port on it): the rendezvous point when this is rank 0."""
        import ray

        ip = ray.util.get_node_ip_address()
        return ip, free_port(ip)

    def setup(self, master_addr: str, master_port: int) -> None:
        if self.dp.world_size > 1:
            init_process_group(self.dp.rank, self.dp.world_size, master_addr, master_port,
                               default_backend(self.device))
        self.policy = shard_model(self.policy, self.dp)
        self.optimizer = new_optimizer(self.policy, self.cfg)

    def update(self, batch: Any, cfg: Any, knobs: Any, step: int, seed: int) -> dict[str, float]:
        assert self.optimizer is not None, "LearnerRank.setup must run before update"
        learner = Learner(self.policy, self.optimizer, self.device, self.packed, self.ref)
        step_fn = make_step_fn(self.dp) if self.dp.world_size > 1 else None
        self.policy.train()
        try:
            return update_policy(learner, batch, cfg, knobs, step, seed, step_fn)
        finally:
            self.policy.eval()

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """Whole weights on CPU from rank 0 (None on the others); every rank must be called."""
        full = full_state_dict(self.policy)
        return full if self.dp.rank == 0 else None

    def optimizer_state_dict(self) -> dict[str, Any]:
        assert self.optimizer is not None
        return self.optimizer.state_dict()

    def load_state(self, model_state: dict[str, torch.Tensor],
                   optimizer_state: dict[str, Any] | None) -> None:
        """Resume: whole weights into (the shards of) the policy, and this rank's optimizer state."""
        from torch.distributed.tensor import DTensor, distribute_tensor  # seconds to import; resume only

        own = self.policy.state_dict()
        with torch.no_grad():
            # the same order on every rank: distribute_tensor is a collective
            for name in sorted(model_state):
                target, value = own[name], model_state[name]
                if isinstance(target, DTensor):
                    shard = distribute_tensor(value.to(target.dtype), target.device_mesh, target.placements)
                    target.to_local().copy_(shard.to_local())
                else:
                    target.copy_(value)
        if optimizer_state is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(optimizer_state)

    def node(self) -> dict[str, Any]:
        return node_info()

    def describe(self) -> dict[str, Any]:
        return {"rank": self.dp.rank, "world_size": self.dp.world_size, "strategy": self.dp.strategy,
                "device": str(self.device), "gradient_checkpointing": self.checkpointing}


class RayLearnerGroup:
    """`num_learners` LearnerRank actors driven as one learner (see the module docstring).

    cfg: the run's RLConfig (optimizer settings, kl_coef). packed: the policy takes segment ids
    (rlvr's native model). cpus_per_learner / gpus_per_learner: Ray resources per rank;
    resources_per_learner: custom Ray resources per rank (e.g. {"learner": 1}: only nodes started
    with that resource take ranks).
    """

    def __init__(self, model: torch.nn.Module, cfg: Any, *, num_learners: int = 1,
                 strategy: Strategy = "fsdp", packed: bool = True, gradient_checkpointing: bool = False,
                 cpus_per_learner: float = 1.0,
                 gpus_per_learner: float = 0.0, resources_per_learner: dict[str, float] | None = None,
                 threads_per_learner: int = 1, address: str = "") -> None:
        if num_learners < 1:
            raise ValueError(f"RayLearnerGroup: num_learners must be >= 1, got {num_learners}")
        ray = ensure_ray(address)
        self._ray = ray
        model_ref = ray.put(model.to("cpu") if next(model.parameters()).device.type == "cpu"
                            else copy.deepcopy(model).to("cpu"))
        device = "cuda" if gpus_per_learner > 0 else "cpu"
        actor = ray.remote(LearnerRank).options(num_cpus=cpus_per_learner, num_gpus=gpus_per_learner,
                                                resources=dict(resources_per_learner or {}))
        self.ranks = [
            actor.remote(model_ref, cfg, rank, num_learners, strategy, device, packed, gradient_checkpointing,
                         threads_per_learner)
            for rank in range(num_learners)
        ]
        master_addr, master_port = ray.get(self.ranks[0].address.remote())
        ray.get([r.setup.remote(master_addr, master_port) for r in self.ranks])

    def update(self, batch: Any, cfg: Any, knobs: Any, step: int, seed: int) -> dict[str, float]:
        """One RL update on every rank; returns rank 0's metrics (all ranks report the same)."""
        ref = self._ray.put(batch)
        results = self._ray.get([r.update.remote(ref, cfg, knobs, step, seed) for r in self.ranks])
        return results[0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Whole current weights (HF names) on CPU."""
        results = self._ray.get([r.state_dict.remote() for r in self.ranks])
        return results[0]

    def optimizer_state_dicts(self) -> list[dict[str, Any]]:
        """Each rank's optimizer state (a shard's under FSDP), rank order."""
        return self._ray.get([r.optimizer_state_dict.remote() for r in self.ranks])

    def load_state(self, model_state: dict[str, torch.Tensor],
                   optimizer_states: list[dict] | None = None) -> None:
        ref = self._ray.put(model_state)
        states: list[dict | None] = list(optimizer_states) if optimizer_states else [None] * len(self.ranks)
        if len(states) != len(self.ranks):
            raise ValueError(f"RayLearnerGroup.load_state: {len(states)} optimizer states for "
                             f"{len(self.ranks)} ranks")
        self._ray.get([r.load_state.remote(ref, s) for r, s in zip(self.ranks, states)])

    def describe(self) -> list[dict[str, Any]]:
        return self._ray.get([r.describe.remote() for r in self.ranks])

    def placement(self) -> list[dict[str, Any]]:
        """Where each rank runs (node_info of its actor), rank order."""
        return self._ray.get([r.node.remote() for r in self.ranks])

    def shutdown(self) -> None:
        for r in self.ranks:
            self._ray.kill(r)
        self.ranks = []


__all__ = ["LearnerRank", "RayLearnerGroup"]
