"""Process groups on one machine or many: free ports, init / teardown, and a spawn helper for tests.

torch.distributed is imported here (and elsewhere in rlvr.distributed) only: the rest of rlvr runs in
one process and never needs it.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` now (the OS picks it; another process could still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def default_backend(device: torch.device | str) -> str:
    """nccl for CUDA devices, gloo otherwise (gloo is the only CPU backend shipped with every torch)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_process_group(rank: int, world_size: int, master_addr: str, master_port: int,
                       backend: str = "gloo", timeout_s: float = 600.0) -> None:
    """Join the default process group through a TCP rendezvous at master_addr:master_port."""
    os.environ["MASTER_ADDR"] = master_addr
    os.environ["MASTER_PORT"] = str(master_port)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))


def destroy_process_group() -> None:
    """Leave the default group; the barrier first keeps a fast rank from tearing down under a slow one."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _spawn_entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, backend: str,
                 out_dir: str, args: tuple) -> None:
    torch.set_num_threads(1)  # world_size processes share the machine's cores
    init_process_group(rank, world_size, "127.0.0.1", port, backend)
    try:
        result = fn(rank, world_size, *args)
        with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
            pickle.dump(result, f)
    finally:
        destroy_process_group()


def spawn(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo") -> list[Any]:
    """Run fn(rank, world_size, *args) in world_size fresh processes joined in one process group.

    Returns each rank's return value (pickled through a temporary directory). fn must be importable
    by name (a module-level function), as torch.multiprocessing starts processes with "spawn".
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="rlvr-spawn-") as out_dir:
        mp.spawn(_spawn_entry, args=(fn, world_size, port, backend, out_dir, args), nprocs=world_size,
                 join=True)
        results = []
        for rank in range(world_size):
            with open(Path(out_dir) / f"rank{rank}.pkl", "rb") as f:
                results.append(pickle.load(f))
    return results


__all__ = ["default_backend", "destroy_process_group", "free_port", "init_process_group", "spawn"]
