"""SharedPromptKVCache (a prompt's K/V kept once for its samples) against the replicated KVCache."""

from __future__ import annotations

import pytest
import torch

from rlvr.models.native import SharedPromptKVCache, _PromptGrid
from rlvr.rollout.base import SamplingParams
from rlvr.rollout.torch_engine import TorchEngine

# different lengths: left padding inside a chunk; prompt 1 twice (equal prompts share a prefill)
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17, 18, 19, 20, 21, 22], [11, 12, 13]]


def test_grid_places_every_query_row_once():
    row_prompt = torch.tensor([0, 0, 1, 2, 2, 2])  # 3 prompts with 2, 1 and 3 rows: G = 3
    kv_heads, rep = 2, 3
    grid = _PromptGrid.build(row_prompt, 3, kv_heads, rep)
    rows = row_prompt.shape[0] * kv_heads * rep
    assert grid.to_grid.shape[0] == 3 * kv_heads * 3 * rep
    assert sorted(grid.from_grid.tolist()) == sorted(set(grid.from_grid.tolist()))  # one place each
    assert torch.equal(grid.to_grid[grid.from_grid], torch.arange(rows))
    # row 3 (prompt 2, rank 0), kv head 1, j = 2: grid row ((2 * 2 + 1) * 3 + 0) * 3 + 2 = 47
    assert grid.from_grid[(3 * kv_heads + 1) * rep + 2] == 47
    # the same place in rows of (B * (Hq + Hkv), d) q/k heads: row 3, query head 1 * rep + 2
    assert grid.qk_to_grid[47] == 3 * (kv_heads * rep + kv_heads) + 1 * rep + 2


def test_shared_decoding_equals_replicated_through_selects(random_native):
    """Rows repeat and drop (a prompt loses all its rows); logits match the replicated cache."""
    torch.manual_seed(1)
    lengths = (6, 3, 9)
    T = max(lengths)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, T - n :], mask[i, T - n :] = torch.randint(1, random_native.config.vocab_size, (n,)), 1
    rows = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    selects = {3: torch.tensor([0, 2, 5, 6, 7]), 6: torch.tensor([2, 3, 3, 4])}  # drop prompt 1, then 0
    with torch.no_grad():
        logits, replicated = random_native.prefill(ids, mask, T + 12)
        logits, replicated = logits.index_select(0, rows), replicated.select(rows)
        shared_logits, shared = random_native.prefill(ids, mask, T + 12, rows=rows)
        assert isinstance(shared, SharedPromptKVCache)
        torch.testing.assert_close(shared_logits, logits, atol=1e-5, rtol=1e-5)
        for step in range(10):
            if step in selects:
                replicated, shared = replicated.select(selects[step]), shared.select(selects[step])
            next_ids = torch.randint(1, random_native.config.vocab_size, (shared.batch_size,))
            logits = random_native.decode_step(next_ids, replicated)
            torch.testing.assert_close(random_native.decode_step(next_ids, shared), logits,
                                       atol=1e-5, rtol=1e-5)
        assert shared.prompt_keys[0].shape[0] == 1  # only prompt 2's rows are left
    with pytest.raises(RuntimeError, match="KV cache full"):
        for _ in range(3):
            random_native.decode_step(torch.ones(shared.batch_size, dtype=torch.long), shared)


@pytest.mark.parametrize("workers, max_batch_size", [(1, None), (2, None), (1, 5)])
def test_engine_samples_equal_the_replicated_cache(random_native, workers, max_batch_size):
    """Same seed, same tokens and stops; log-probs equal up to float summation order."""
    eos = [3, 4, 7]  # ~6% of the random model's mass: rows stop at different steps, and compact
    params = SamplingParams(n=6, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=11)

    def run(share: bool):
        engine = TorchEngine(random_native, eos_token_ids=eos, workers=workers, max_batch_size=max_batch_size,
                             share_prompt=share)
        return engine.generate(PROMPTS, params)

    old, new = run(False), run(True)
    assert len(old) == len(new) == len(PROMPTS) * params.n
    assert {r.finish_reason for r in old} == {"stop", "length"}
    for a, b in zip(old, new):
        assert (a.prompt_index, a.metadata, a.finish_reason) == (b.prompt_index, b.metadata, b.finish_reason)
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-5, rtol=0)


def test_greedy_shared_equals_hf_path(random_native, random_hf):
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=12)
    shared = TorchEngine(random_native, eos_token_ids=[], share_prompt=True).generate(PROMPTS, params)
    reference = TorchEngine(random_hf, eos_token_ids=[]).generate(PROMPTS, params)
    assert [r.token_ids for r in shared] == [r.token_ids for r in reference]


def test_share_prompt_needs_the_native_api(random_hf):
    with pytest.raises(ValueError, match="share_prompt needs a model with the native inference API"):
        TorchEngine(random_hf, eos_token_ids=[], share_prompt=True)
    TorchEngine(random_hf, eos_token_ids=[], share_prompt=False)  # the HF path replicates anyway
