"""The data-parallel learner on CUDA (nccl): one GPU against the single-process step, and two GPUs.

Marked `gpu`; skipped without CUDA (the two-GPU test also without a second GPU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from rlvr import algorithms  # noqa: E402
from rlvr.config import RLConfig  # noqa: E402
from rlvr.distributed.launch import spawn  # noqa: E402
from rlvr.distributed.learner import (  # noqa: E402
    DataParallel,
    apply_gradient_checkpointing,
    dp_minibatch_step,
    full_state_dict,
    shard_model,
)
from rlvr.distributed.shapes import random_model  # noqa: E402
from rlvr.trainers.rl import Knobs, Learner, RolloutBatch, StepData, minibatch_step  # noqa: E402


def make_inputs(vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    batch = RolloutBatch()
    for g in range(4):
        prompt = rng.integers(10, vocab, size=int(rng.integers(16, 64))).tolist()
        for _ in range(4):
            n = int(rng.integers(8, 200))
            batch.prompt_ids.append(prompt)
            batch.completion_ids.append(rng.integers(10, vocab, size=n).tolist())
            batch.engine_logprobs.append([-1.0] * n)
            batch.rewards.append(float(rng.integers(0, 2)))
            batch.group_ids.append(g)
    width = max(len(c) for c in batch.completion_ids)
    lengths = torch.tensor([len(c) for c in batch.completion_ids])
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
    adv = algorithms.compute_advantages("grpo", torch.tensor(batch.rewards),
                                        torch.tensor(batch.group_ids), mask)
    cfg = RLConfig(micro_batch_tokens=1024)
    knobs = Knobs(difficulty={}, max_new_tokens=256, group_size=4, temperature=1.0, lr=1e-5, stage=0)
    return batch, cfg, knobs, width, adv, mask


def step(model, fn, **extra):
    batch, cfg, knobs, width, adv, mask = make_inputs(model.arch.vocab_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # weights after = before - (clipped) gradient
    index = list(range(len(batch.completion_ids)))
    fn(Learner(model, optimizer, torch.device("cuda"), True), StepData(batch, adv, mask), index, cfg,
       knobs, **extra)
    return full_state_dict(model)


def test_world_of_one_with_checkpointing_equals_the_trainer_step_on_cuda():
    want = step(random_model("0.5B", torch.float32, "cuda"), minibatch_step)
    model = random_model("0.5B", torch.float32, "cuda")
    apply_gradient_checkpointing(model)
    got = step(model, dp_minibatch_step, dp=DataParallel(0, 1, "replicate"))
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-4, msg=name)


def _fsdp_rank(rank: int, world: int) -> dict[str, torch.Tensor]:
    torch.cuda.set_device(rank)
    model = shard_model(random_model("0.5B", torch.float32, "cuda"), DataParallel(rank, world, "fsdp"))
    return step(model, dp_minibatch_step, dp=DataParallel(rank, world, "fsdp"))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_fsdp_equals_one_process():
    want = step(random_model("0.5B", torch.float32, "cuda"), minibatch_step)
    results = spawn(_fsdp_rank, 2, backend="nccl")
    for got in results:
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-4, msg=name)
