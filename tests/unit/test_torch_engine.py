"""TorchEngine: sampling semantics, log-probs, stops, determinism, batching, both model paths."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.models.native import NativeCausalLM
from rlvr.rollout.base import RolloutEngine, SamplingParams
from rlvr.rollout.torch_engine import TorchEngine, chunk_bounds, sample_tokens, top_k_top_p_mask

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17, 18, 19, 20, 21, 22]]


@pytest.fixture(params=["native", "hf"])
def model(request, random_hf, random_native):
    return random_native if request.param == "native" else random_hf


def greedy(max_new=10, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=max_new, **kw)


def test_is_a_rollout_engine(random_native):
    assert isinstance(TorchEngine(random_native, eos_token_ids=[]), RolloutEngine)


def test_greedy_equals_hf_generate(model, random_hf):
    T = max(map(len, PROMPTS))
    ids = torch.zeros(len(PROMPTS), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(PROMPTS):
        ids[i, T - len(p) :], mask[i, T - len(p) :] = torch.tensor(p), 1
    expected = random_hf.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
        eos_token_id=None, pad_token_id=0
    )[:, T:].tolist()
    rollouts = TorchEngine(model, eos_token_ids=[]).generate(PROMPTS, greedy(12))
    assert [r.token_ids for r in rollouts] == expected
    assert len({tuple(t) for t in expected}) == len(expected)  # the prompts lead to different outputs
    assert all(r.finish_reason == "length" for r in rollouts)


def full_forward_logprobs(random_native, prompt, completion, temperature):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = random_native(ids)[0, len(prompt) - 1 : -1].float()
    scale = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits / scale, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 5, 0.8), (1.3, 0, 1.0), (0.0, 0, 1.0)])
def test_logprobs_equal_full_forward_recomputation(model, random_native, temperature, top_k, top_p):
    params = SamplingParams(n=2, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=9, seed=3)
    rollouts = TorchEngine(model, eos_token_ids=[]).generate(PROMPTS, params)
    for r in rollouts:
        assert len(r.logprobs) == len(r.token_ids) == 9
        assert all(isinstance(x, float) for x in r.logprobs)
        expected = full_forward_logprobs(random_native, r.prompt_ids, r.token_ids, temperature)
        torch.testing.assert_close(torch.tensor(r.logprobs), expected, atol=1e-4, rtol=0)


def test_n_samples_ordered_by_prompt_then_sample(random_native):
    params = SamplingParams(n=4, temperature=1.5, max_new_tokens=6, seed=0)
    rollouts = TorchEngine(random_native, eos_token_ids=[]).generate(PROMPTS, params)
    assert [r.prompt_index for r in rollouts] == [0] * 4 + [1] * 4 + [2] * 4
    assert [r.metadata["sample_index"] for r in rollouts] == [0, 1, 2, 3] * 3
    assert all(r.prompt_ids == PROMPTS[r.prompt_index] for r in rollouts)
    assert len({tuple(r.token_ids) for r in rollouts[:4]}) > 1  # samples of one prompt differ


def test_prefill_once_per_distinct_prompt(random_native):
    engine = TorchEngine(random_native, eos_token_ids=[])
    engine.generate(PROMPTS + [PROMPTS[0]], SamplingParams(n=5, max_new_tokens=4, seed=0))
    assert engine.last_stats["prefill_tokens"] == sum(map(len, PROMPTS))
    assert engine.last_stats["rollouts"] == 20 and engine.last_stats["completion_tokens"] == 80


def test_stop_tokens_and_finish_reasons(model):
    engine = TorchEngine(model, eos_token_ids=[])
    free = engine.generate(PROMPTS, greedy(12))
    stop_id = free[0].token_ids[4]
    first = free[0].token_ids.index(stop_id)
    for eos, extra in (([stop_id], ()), ([], (stop_id,))):  # engine eos ids and per-call stop ids
        stopped = TorchEngine(model, eos_token_ids=eos).generate(PROMPTS, greedy(12, stop_token_ids=extra))
        assert stopped[0].token_ids == free[0].token_ids[: first + 1]
        assert stopped[0].finish_reason == "stop" and len(stopped[0].logprobs) == first + 1
        for r, f in zip(stopped[1:], free[1:]):
            if stop_id in f.token_ids:
                assert (r.token_ids == f.token_ids[: f.token_ids.index(stop_id) + 1]
                        and r.finish_reason == "stop")
            else:
                assert r.token_ids == f.token_ids and r.finish_reason == "length"


def test_stop_strings_need_decode_fn_and_stop_there(random_native):
    def decode(ids):
        return "".join(chr(ord("a") + i % 26) for i in ids)

    free = TorchEngine(random_native, eos_token_ids=[]).generate(PROMPTS[:1], greedy(12))[0].token_ids
    stop = decode(free[5:8])
    with pytest.raises(ValueError, match="decode_fn"):
        TorchEngine(random_native, eos_token_ids=[]).generate(PROMPTS, greedy(12, stop_strings=(stop,)))
    engine = TorchEngine(random_native, eos_token_ids=[], decode_fn=decode)
    r = engine.generate(PROMPTS[:1], greedy(12, stop_strings=(stop,)))[0]
    end = decode(free).index(stop) + len(stop)
    assert r.token_ids == free[:end] and r.finish_reason == "stop"


def test_max_new_tokens(random_native):
    engine = TorchEngine(random_native, eos_token_ids=[])
    assert all(len(r.token_ids) == 3 for r in engine.generate(PROMPTS, greedy(3)))
    empty = engine.generate(PROMPTS, greedy(0))
    assert all(r.token_ids == [] and r.finish_reason == "length" for r in empty)


def test_seed_determinism(model):
    engine = TorchEngine(model, eos_token_ids=[])
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=11)
    a = engine.generate(PROMPTS, params)
    b = engine.generate(PROMPTS, params)
    c = engine.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=12))
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.logprobs for r in a] == [r.logprobs for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]
    torch.manual_seed(5)
    d = engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=8))
    torch.manual_seed(5)
    again = engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=8))
    assert [r.token_ids for r in d] == [r.token_ids for r in again]


def test_top_k_1_equals_greedy(model):
    engine = TorchEngine(model, eos_token_ids=[])
    sampled = engine.generate(PROMPTS,
                              SamplingParams(n=2, temperature=1.7, top_k=1, max_new_tokens=8, seed=0))
    expected = [r.token_ids for r in engine.generate(PROMPTS, greedy(8)) for _ in range(2)]
    assert [r.token_ids for r in sampled] == expected


def test_results_do_not_depend_on_the_rest_of_the_batch(model):
    engine = TorchEngine(model, eos_token_ids=[])
    alone = engine.generate([PROMPTS[1]], greedy(10))[0]
    longer = [[3] * 15, PROMPTS[1], [40, 41]]
    mixed = engine.generate(longer, greedy(10))[1]
    chunked = TorchEngine(model, eos_token_ids=[], max_batch_size=1).generate(longer, greedy(10))[1]
    for other in (mixed, chunked):
        assert other.token_ids == alone.token_ids
        torch.testing.assert_close(torch.tensor(other.logprobs),
                                   torch.tensor(alone.logprobs), atol=1e-5, rtol=0)


def test_max_batch_size_matches_one_batch_for_greedy(random_native):
    whole = TorchEngine(random_native, eos_token_ids=[]).generate(PROMPTS, greedy(7, n=3))
    engine = TorchEngine(random_native, eos_token_ids=[], max_batch_size=2)
    parts = engine.generate(PROMPTS, greedy(7, n=3))
    assert [(r.prompt_index, r.token_ids) for r in parts] == [(r.prompt_index, r.token_ids) for r in whole]


def test_samples_do_not_depend_on_chunks_or_workers(model):
    """Each row draws its k-th token with its own pre-drawn uniform: chunking, compaction and
    parallel workers change nothing but float rounding (tokens equal, log-probs within 1e-5)."""
    params = SamplingParams(n=4, temperature=1.0, top_p=0.9, max_new_tokens=9, seed=7)
    one = TorchEngine(model, eos_token_ids=[]).generate(PROMPTS, params)
    for kw in ({"workers": 2}, {"workers": 3}, {"max_batch_size": 5}, {"max_batch_size": 2, "workers": 2}):
        other = TorchEngine(model, eos_token_ids=[], **kw).generate(PROMPTS, params)
        assert ([(r.prompt_index, r.token_ids) for r in other]
                == [(r.prompt_index, r.token_ids) for r in one]), kw
        for a, b in zip(one, other):
            torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-5, rtol=0)
    assert len({tuple(r.token_ids) for r in one}) > 4  # sampled, not collapsed to a few outputs


def test_workers_keep_greedy_outputs_stops_and_threads(random_native):
    free = TorchEngine(random_native, eos_token_ids=[]).generate(PROMPTS, greedy(12, n=2))
    stop_id = free[2].token_ids[1]
    sequential = TorchEngine(random_native, eos_token_ids=[stop_id]).generate(PROMPTS, greedy(12, n=2))
    threads = torch.get_num_threads()
    engine = TorchEngine(random_native, eos_token_ids=[stop_id], workers=2)
    parallel = engine.generate(PROMPTS, greedy(12, n=2))
    assert torch.get_num_threads() == threads  # restored after the workers ran with one each
    assert ([(r.token_ids, r.finish_reason) for r in parallel]
            == [(r.token_ids, r.finish_reason) for r in sequential])
    assert any(r.finish_reason == "stop" for r in parallel)
    assert engine.last_stats["prefill_tokens"] == sum(map(len, PROMPTS))  # a prompt is prefilled once
    with pytest.raises(ValueError, match="workers"):
        TorchEngine(random_native, eos_token_ids=[], workers=0)


def test_chunk_bounds():
    assert chunk_bounds(8, 16, None, 1) == [(0, 128)]
    assert chunk_bounds(8, 16, None, 2) == [(0, 64), (64, 128)]
    assert chunk_bounds(3, 4, None, 2) == [(0, 8), (8, 12)]  # cut at a prompt boundary
    assert chunk_bounds(1, 5, None, 2) == [(0, 3), (3, 5)]  # fewer prompts than workers: split the rows
    assert chunk_bounds(3, 4, 5, 1) == [(0, 5), (5, 10), (10, 12)]
    assert chunk_bounds(0, 4, None, 2) == []


def test_finished_rows_leave_the_running_batch(random_native):
    engine = TorchEngine(random_native, eos_token_ids=[])
    free = engine.generate(PROMPTS, greedy(12))
    stop_id = free[1].token_ids[1]  # prompt 1 stops after two tokens
    engine = TorchEngine(random_native, eos_token_ids=[stop_id])
    rollouts = engine.generate(PROMPTS, greedy(12, n=4))
    lengths = [len(r.token_ids) for r in rollouts]
    assert lengths[4:8] == [2] * 4 and max(lengths) == 12
    stats = engine.last_stats
    # every decode step after the stop ran fewer rows than the 12 in the batch
    assert stats["row_steps"] < 12 * stats["decode_steps"]
    assert stats["row_steps"] == 12 * 1 + 8 * (stats["decode_steps"] - 1)


def test_load_weights_copies_and_sharing_is_a_no_op(random_hf):
    learner = NativeCausalLM.from_hf(random_hf)
    engine = TorchEngine(NativeCausalLM.from_hf(random_hf), eos_token_ids=[])
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = engine.generate(PROMPTS, greedy(8))
    expected = TorchEngine(learner, eos_token_ids=[]).generate(PROMPTS, greedy(8))
    assert [r.token_ids for r in before] != [r.token_ids for r in expected]
    engine.load_weights(learner.state_dict())
    assert [r.token_ids for r in engine.generate(PROMPTS, greedy(8))] == [r.token_ids for r in expected]
    shared = TorchEngine(learner, eos_token_ids=[])
    shared.load_weights(learner.state_dict())  # same storage: nothing to copy
    with pytest.raises(KeyError, match="does not have"):
        engine.load_weights({"module.lm_head.weight": learner.lm_head.weight})
    with pytest.raises(KeyError, match="no incoming weights"):
        engine.load_weights({"lm_head.weight": learner.lm_head.weight})


def test_train_mode_restored_and_stats(random_native):
    random_native.train()
    engine = TorchEngine(random_native, eos_token_ids=[])
    engine.generate(PROMPTS, greedy(5))
    assert random_native.training
    random_native.eval()
    stats = engine.last_stats
    assert stats["completion_tokens"] == 15 and stats["seconds"] > 0 and stats["tokens_per_second"] > 0


def test_invalid_params_are_reported(random_native):
    engine = TorchEngine(random_native, eos_token_ids=[])
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(PROMPTS, SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[1], []], SamplingParams())


def test_top_k_top_p_mask_hand_computed():
    logprobs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert top_k_top_p_mask(logprobs) is None
    assert top_k_top_p_mask(logprobs, top_k=2).tolist() == [[True, True, False, False]]
    assert top_k_top_p_mask(logprobs, top_p=0.79).tolist() == [[True, True, False, False]]
    assert top_k_top_p_mask(logprobs, top_p=0.81).tolist() == [[True, True, True, False]]
    assert top_k_top_p_mask(logprobs, top_p=0.1).tolist() == [[True, False, False, False]]
    # top-p on the renormalised top-3: 0.5/0.95 = 0.526 < 0.6 so two tokens are needed
    assert top_k_top_p_mask(logprobs, top_k=3, top_p=0.6).tolist() == [[True, True, False, False]]
    wide = torch.full((2, 300), -math.log(300.0))  # uniform over 300: the candidate set must widen
    assert top_k_top_p_mask(wide, top_p=0.505).sum(-1).tolist() == [152, 152]


def test_sample_tokens_frequencies_and_logprobs():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, 4)
    g = torch.Generator().manual_seed(0)
    tokens, logprobs = sample_tokens(logits, temperature=1.0, generator=g)
    freq = torch.bincount(tokens, minlength=4).float() / 20000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    torch.testing.assert_close(logprobs, probs.log()[tokens])
    assert logprobs.dtype == torch.float32
    tokens, logprobs = sample_tokens(logits, temperature=2.0, top_k=2, generator=g)
    assert set(tokens.tolist()) == {0, 1}
    torch.testing.assert_close(logprobs, torch.log_softmax(probs.log() / 2.0, -1)[tokens])
    tokens, logprobs = sample_tokens(logits[:3], temperature=0.0)
    assert tokens.tolist() == [0, 0, 0]
    torch.testing.assert_close(logprobs, probs.log()[:1].expand(3))


def test_bf16_decoding_of_a_float32_model(random_native, random_hf):
    engine = TorchEngine(random_native, eos_token_ids=[], dtype="bfloat16")
    rollouts = engine.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=0))
    assert next(random_native.parameters()).dtype == torch.float32  # the model itself is untouched
    for r in rollouts:
        expected = full_forward_logprobs(random_native, r.prompt_ids, r.token_ids, 1.0)
        torch.testing.assert_close(torch.tensor(r.logprobs), expected, atol=0.25, rtol=0)
    with pytest.raises(ValueError, match="native inference API"):
        TorchEngine(random_hf, eos_token_ids=[], dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="not a torch dtype"):
        TorchEngine(random_native, eos_token_ids=[], dtype="bf16")
