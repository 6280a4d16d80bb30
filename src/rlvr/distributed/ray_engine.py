"""Rollout workers as Ray actors behind the RolloutEngine protocol: the RL loop runs unchanged.

    engine = RayRolloutEngine(policy_model, num_workers=2, eos_token_ids=eos, pad_token_id=pad)
    rollouts = engine.generate(prompt_ids, params)   # prompts split across workers, order kept
    engine.load_weights(policy.state_dict())         # one copy in the object store, read by all

Each worker actor holds its own copy of the model and a rollout engine (rlvr's TorchEngine, or a
vLLM engine on a GPU worker). generate() deals the prompts to the workers in contiguous slices
(all n samples of a prompt stay on one worker, so they share its prefill), runs the slices in
parallel and concatenates the results in worker order, which is prompt order; prompt_index is
shifted back to the caller's numbering. Worker w samples with seed (params.seed, w) mixed into one
integer, so a run is reproducible for a fixed number of workers (not across different numbers:
the random streams are split differently).

load_weights() puts the learner's state dict into the Ray object store once (ray.put) and every
worker reads that one object (on a node, through shared memory), then copies it into its model.

Ray is imported here only (and in the other modules of rlvr.distributed).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from rlvr.rollout.base import Rollout, SamplingParams
from rlvr.rollout.torch_engine import TorchEngine
from rlvr.rollout.vllm_engine import VLLMEngine

EngineKind = Literal["torch", "vllm"]


def require_ray() -> Any:
    try:
        import ray
    except ImportError as err:  # ray is an optional extra
        raise RuntimeError("distributed=ray needs Ray: pip install 'rlvr[ray]' (or pip install ray)") from err
    return ray


def ensure_ray(address: str = "", num_cpus: int | None = None, num_gpus: int | None = None,
               resources: dict[str, float] | None = None) -> Any:
    """Connect to a Ray cluster, or start a local one; returns the ray module.

    address "" starts a local single-machine cluster (num_cpus / num_gpus / custom resources: its
    resources); "auto" joins the cluster this node belongs to (started with `ray start`, or named by
    the RAY_ADDRESS environment variable); "ray://host:10001" or "host:6379" joins a remote one. An
    already initialised Ray is used as it is.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None, include_dashboard=False,
                 log_to_driver=True)
    return ray


def node_info() -> dict[str, Any]:
    """Where the calling process runs: Ray node id, node IP, hostname and process id (in an actor or
    the driver)."""
    ray = require_ray()
    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(), "pid": os.getpid()}


def worker_seed(seed: int | None, worker: int) -> int | None:
    """Seed of worker `worker` for one generate() call: a fixed mix of (seed, worker), None stays None."""
    if seed is None:
        return None
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + (worker + 1) * 0xBF58476D1CE4E5B9) % (2**63 - 1)
    return mixed


def split_evenly(count: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) slices of range(count) for `parts` workers; sizes differ by at most one."""
    base, extra = divmod(count, parts)
    slices, lo = [], 0
    for w in range(parts):
        hi = lo + base + (1 if w < extra else 0)
        slices.append((lo, hi))
        lo = hi
    return slices


class RolloutWorker:
    """One rollout worker (a Ray actor): a model copy and an engine, on this actor's CPU or GPU.

    model: an nn.Module (torch engine; moved to `device`) or a local HF directory (vllm engine).
    """

    def __init__(self, model: Any, engine: EngineKind, eos_token_ids: Sequence[int], pad_token_id: int,
                 device: str, threads: int, engine_options: dict[str, Any] | None = None) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        options = dict(engine_options or {})
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if engine == "torch":
            self.engine: Any = TorchEngine(model, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id,
                                           device=device, **options)
        elif engine == "vllm":
            self.engine = VLLMEngine(str(model), eos_token_ids=eos_token_ids, **options)
        else:
            raise ValueError(f"unknown rollout engine {engine!r}; valid: torch, vllm")

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> tuple[list[Rollout], float]:
        start = time.perf_counter()
        rollouts = self.engine.generate(prompt_ids, params) if prompt_ids else []
        return rollouts, time.perf_counter() - start

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.engine.load_weights(state_dict)

    def ping(self) -> bool:
        return True

    def node(self) -> dict[str, Any]:
        return node_info()


class RayRolloutEngine:
    """RolloutEngine over `num_workers` RolloutWorker actors (see the module docstring).

    model: the policy module (copied to every worker through the object store) or, for
    engine="vllm", a local HF directory each worker loads. cpus_per_worker / gpus_per_worker: the
    Ray resources each worker reserves (fractions allowed); resources_per_worker: custom Ray resources
    it reserves as well (e.g. {"rollout": 1}: only nodes started with that resource take workers);
    threads_per_worker: torch CPU threads in a worker (0: torch's default). spread=True asks Ray to
    place workers on different nodes.
    """

    def __init__(
        self,
        model: Any,
        num_workers: int,
        eos_token_ids: Sequence[int],
        pad_token_id: int = 0,
        *,
        engine: EngineKind = "torch",
        engine_options: dict[str, Any] | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        resources_per_worker: dict[str, float] | None = None,
        threads_per_worker: int = 1,
        spread: bool = False,
        address: str = "",
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"RayRolloutEngine: num_workers must be >= 1, got {num_workers}")
        ray = ensure_ray(address)
        self._ray = ray
        if isinstance(model, torch.nn.Module):
            # The workers get a CPU copy whatever the learner's device; each moves it where it runs.
            first = next(model.parameters(), None)
            on_cpu = first is None or first.device.type == "cpu"
            model_ref: Any = ray.put(model if on_cpu else _cpu_copy(model))
        else:
            model_ref = str(model)
        device = "cuda" if gpus_per_worker > 0 else "cpu"
        actor = ray.remote(RolloutWorker).options(
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, resources=dict(resources_per_worker or {}),
            scheduling_strategy="SPREAD" if spread else "DEFAULT",
        )
        self.workers = [
            actor.remote(model_ref, engine, list(eos_token_ids), pad_token_id, device, threads_per_worker,
                         engine_options)
            for _ in range(num_workers)
        ]
        ray.get([w.ping.remote() for w in self.workers])  # surface start-up errors here, not mid-step
        self.last_stats: dict[str, float] = {}

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Rollout]:
        """len(prompt_ids) * params.n rollouts, ordered by prompt then sample (as one engine would)."""
        start = time.perf_counter()
        prompts = [list(p) for p in prompt_ids]
        slices = split_evenly(len(prompts), self.num_workers)
        futures = [
            w.generate.remote(prompts[lo:hi], dataclasses.replace(params, seed=worker_seed(params.seed, i)))
            for i, (w, (lo, hi)) in enumerate(zip(self.workers, slices))
        ]
        results = self._ray.get(futures)
        rollouts: list[Rollout] = []
        busy: list[float] = []
        for (lo, _), (part, seconds) in zip(slices, results):
            for r in part:
                r.prompt_index += lo
                r.metadata["worker"] = len(busy)
            rollouts.extend(part)
            busy.append(seconds)
        wall = time.perf_counter() - start
        tokens = sum(len(r.token_ids) for r in rollouts)
        self.last_stats = {
            "completion_tokens": float(tokens),
            "seconds": wall,
            "tokens_per_second": tokens / wall if wall > 0 else 0.0,
            "worker_seconds_max": max(busy, default=0.0),
            "worker_seconds_min": min(busy, default=0.0),
            "overhead_seconds": wall - max(busy, default=0.0),
        }
        return rollouts

    def placement(self) -> list[dict[str, Any]]:
        """Where each worker runs (node_info of its actor), in worker order."""
        return self._ray.get([w.node.remote() for w in self.workers])

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Send the learner's weights to every worker: one object-store copy, read by all."""
        cpu = {name: t.detach().to("cpu") for name, t in state_dict.items()}
        ref = self._ray.put(cpu)
        self._ray.get([w.load_weights.remote(ref) for w in self.workers])

    def shutdown(self) -> None:
        """Stop the worker actors (Ray itself keeps running)."""
        for w in self.workers:
            self._ray.kill(w)
        self.workers = []


def _cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to("cpu")


__all__ = ["RayRolloutEngine", "RolloutWorker", "ensure_ray", "node_info", "require_ray", "split_evenly",
           "worker_seed"]
