"""Batching, layout and schedule helpers of the trainers."""

from __future__ import annotations

import math

import torch

from rlvr.config import StageConfig
from rlvr.trainers.common import (
    build_batch,
    cpu_threads,
    lr_at,
    micro_batches,
    pack_rows,
    per_sequence,
    setup_torch,
    stage_value,
)


def test_micro_batches_respect_budget_and_cover_all():
    lengths = [5, 17, 3, 9, 9, 40, 1]
    batches = micro_batches(lengths, token_budget=20)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * width <= 20


def test_micro_batches_minimise_padding_plus_overhead():
    """The split is the cheapest cut of the length-sorted indices into runs (checked by brute force)."""
    import itertools
    import random

    def cost(batches, lengths, overhead):
        return sum(overhead + len(b) * max(lengths[i] for i in b) for b in batches)

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 8))]
        budget, overhead = rng.choice([30, 100, 1000]), rng.choice([0, 5, 40])
        batches = micro_batches(lengths, budget, overhead_tokens=overhead)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget for b in batches)
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        best = float("inf")
        for k in range(len(order)):
            for cuts in itertools.combinations(range(1, len(order)), k):
                edges = (0, *cuts, len(order))
                runs = [order[a:b] for a, b in zip(edges, edges[1:])]
                if all(len(r) == 1 or len(r) * lengths[r[0]] <= budget for r in runs):
                    best = min(best, cost(runs, lengths, overhead))
        assert cost(batches, lengths, overhead) == best
    # one truncated completion among natural ones gets its own micro-batch
    assert micro_batches([180, 400, 90, 220], 16384, overhead_tokens=128)[0] == [1]
    # equal lengths: one micro-batch, whatever the overhead
    assert micro_batches([50] * 10, 16384) == [list(range(10))]


def test_pack_rows_first_fit_decreasing():
    lengths = [6, 4, 3, 3, 2, 1]
    rows = pack_rows(lengths, row_tokens=7)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum(lengths[i] for i in r) <= 7 for r in rows)
    assert len(rows) == math.ceil(sum(lengths) / 7)  # 19 tokens fit exactly in 3 rows here


def test_build_batch_packs_with_segments_and_masks_only_completions():
    seqs = [[10, 11, 12, 13], [20, 21, 22]]
    starts = [2, 1]  # completions: [12, 13] and [21, 22]
    batch = build_batch(seqs, starts, [[0, 1]])
    assert batch.input_ids.tolist() == [[10, 11, 12, 13, 20, 21, 22]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch.segment_ids.tolist() == [[1, 1, 1, 1, 2, 2, 2]]
    # loss on the position *before* each completion token, never across the segment boundary
    assert batch.loss_mask.tolist() == [[0, 1, 1, 0, 1, 1, 0]]
    assert batch.target_ids[0, 1:3].tolist() == [12, 13]
    assert batch.target_ids[0, 4:6].tolist() == [21, 22]


def test_per_sequence_gathers_completion_positions():
    seqs = [[1, 2, 3, 4], [5, 6, 7]]
    starts = [2, 1]
    batch = build_batch(seqs, starts, [[1], [0]])
    values = torch.arange(batch.input_ids.numel(), dtype=torch.float32).view_as(batch.input_ids)
    out = per_sequence(values, batch.where, starts, width=3)
    row0, off0, _ = batch.where[0]
    assert out[0, :2].tolist() == [values[row0, off0 + 1].item(), values[row0, off0 + 2].item()]
    assert out[0, 2].item() == 0.0
    row1, off1, _ = batch.where[1]
    assert out[1, :2].tolist() == [values[row1, off1].item(), values[row1, off1 + 1].item()]


def test_lr_schedules():
    assert lr_at(0, 100, 1.0, 10, "cosine", 0.1) == 0.1
    assert lr_at(9, 100, 1.0, 10, "cosine", 0.1) == 1.0
    assert abs(lr_at(99, 100, 1.0, 10, "cosine", 0.1) - 0.1) < 1e-9
    assert abs(lr_at(99, 100, 2.0, 0, "linear", 0.0)) < 1e-9
    assert lr_at(57, 100, 3.0, 0, "constant", 0.0) == 3.0


def test_stage_value_picks_latest_started_stage():
    stages = [StageConfig(0, 3), StageConfig(10, 4), StageConfig(20, 5)]
    assert [stage_value(stages, s, 99) for s in (0, 9, 10, 25)] == [3, 3, 4, 5]
    assert stage_value([StageConfig(5, 1)], 2, 7) == 7


def test_threads_zero_is_every_core_the_process_may_use(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert cpu_threads(0) == 3 and cpu_threads(1) == 1
    before = torch.get_num_threads()
    try:
        setup_torch(0, threads=0, device="cpu")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_bf16_autocast_falls_back_to_float32_where_bf16_matmuls_are_slow(monkeypatch):
    from rlvr.trainers import common

    cpu = torch.device("cpu")
    monkeypatch.setitem(common._BF16_FAST, "cpu", True)
    with common.autocast_context(cpu, "bfloat16"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    monkeypatch.setitem(common._BF16_FAST, "cpu", False)  # e.g. an AVX2-only CPU
    with common.autocast_context(cpu, "bfloat16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with common.autocast_context(cpu, "none"):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.delitem(common._BF16_FAST, "cpu")
    assert isinstance(common.cpu_bf16_matmul_is_fast(), bool)  # measured on this machine
