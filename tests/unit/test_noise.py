"""Gradient noise scale: the estimator on gradients of known signal and noise, and the RL group
gradients against the trainer's own step."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rlvr.config import RLConfig
from rlvr.diagnostics.noise import NoiseAccumulator, flat_grad, rl_group_gradients, sft_example_gradients
from rlvr.models.native import NativeCausalLM
from rlvr.rollout.torch_engine import TorchEngine
from rlvr.tasks.base import Example, Score
from rlvr.trainers import rl

CFG = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           intermediate_size=64, tie_word_embeddings=True, max_position_embeddings=256)


def accumulate(grads: torch.Tensor) -> NoiseAccumulator:
    acc = NoiseAccumulator(grads.shape[1])
    for g in grads:
        acc.add(g)
    return acc


def test_noise_scale_recovers_a_known_signal_and_covariance():
    gen = torch.Generator().manual_seed(0)
    D, N = 200, 4000
    G = torch.zeros(D)
    G[:4] = 1.0  # |G|^2 = 4
    grads = G + torch.randn(N, D, generator=gen)  # Sigma = I: tr = 200, B_noise = 50
    s = accumulate(grads).scale()
    assert s.n == N
    assert s.trace_cov == pytest.approx(200, rel=0.03)
    assert s.signal_sq == pytest.approx(4, rel=0.1)
    assert s.b_noise == pytest.approx(50, rel=0.1)
    # halves of 2000 units: signal share 2000 * 4 / (2000 * 4 + 200)
    assert s.half_cos == pytest.approx(8000 / 8200, abs=0.02)


def test_pure_noise_has_no_resolvable_signal():
    gen = torch.Generator().manual_seed(1)
    s = accumulate(torch.randn(400, 300, generator=gen)).scale()
    assert abs(s.signal_sq) < 3 * math.sqrt(2 * 300) / 400  # within a few standard errors of 0
    assert abs(s.half_cos) < 0.1
    assert s.b_noise > 1000 or s.b_noise == math.inf


def test_adam_normalised_scale_equals_the_scale_of_explicitly_normalised_gradients():
    gen = torch.Generator().manual_seed(2)
    scales = torch.logspace(-4, 1, 50)  # coordinates of very different magnitudes, as in a network
    grads = (0.3 + torch.randn(64, 50, generator=gen)) * scales
    grads[:, 7] = 0.0  # a coordinate that never gets a gradient is left out, not divided by zero
    rms = grads.pow(2).mean(0).sqrt()
    explicit = torch.where(rms > 0, grads / rms.clamp(min=1e-30), torch.zeros_like(grads))
    got = accumulate(grads).scale(adam_normalised=True)
    want = accumulate(explicit).scale()
    for field in ("mean_sq", "trace_cov", "signal_sq", "b_noise", "half_cos"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-6), field
    raw = accumulate(grads).scale()
    assert got.b_noise < raw.b_noise  # the raw scale is ruled by the largest coordinates' noise


def test_accumulator_rejects_too_few_or_misshapen_gradients():
    acc = NoiseAccumulator(3)
    acc.add(torch.ones(3))
    with pytest.raises(ValueError, match="at least 2"):
        acc.scale()
    with pytest.raises(ValueError, match="4 values"):
        acc.add(torch.ones(4))


class Tokens:
    """Completion text = the token ids; enough for the toy task below."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


class EvenFirstToken:
    """Reward 1 when the completion starts with an even token id."""

    name = "even"

    def score(self, text: str, example: Example) -> Score:
        first = text.split()[0] if text else "1"
        ok = int(first) % 2 == 0
        return Score(reward=float(ok), correct=ok, format_ok=True, extracted=first, parts={})


def toy_setup(prompts_per_step: int):
    torch.manual_seed(0)
    model = NativeCausalLM(CFG).eval()
    engine = TorchEngine(model, eos_token_ids=(1,), pad_token_id=0, device="cpu")
    examples = [Example(prompt=str(i), answer=None, metadata={}) for i in range(12)]
    pool = rl.ProblemPool(lambda difficulty: examples, seed=0)

    def prompt_cache(ex: Example) -> list[int]:
        return [2 + int(ex.prompt), 3, 5 + int(ex.prompt) % 7]

    cfg = RLConfig(prompts_per_step=prompts_per_step, group_size=4,
                   mini_batches=prompts_per_step, max_new_tokens=6, grad_clip=0.0,
                   loss_agg="seq-mean-token-mean", micro_batch_tokens=64)
    return model, engine, pool, prompt_cache, cfg


def test_group_gradients_average_to_the_trainers_gradient_of_the_whole_batch():
    model, engine, pool, prompt_cache, cfg = toy_setup(prompts_per_step=4)
    sampler = rl.Sampler(engine, Tokens(), EvenFirstToken(), pool, prompt_cache, (1,))
    kw = dict(device=torch.device("cpu"), packed=True, seed=0, default_difficulty={})
    stats: dict[str, float] = {}
    per_group = list(rl_group_gradients(model, sampler, cfg, groups=4, stats=stats, **kw))
    assert len(per_group) == 4
    assert 0.0 < stats["accuracy"] < 1.0
    assert any(g.abs().sum() > 0 for g in per_group)
    assert all(p.grad is None for p in model.parameters())  # measuring leaves no gradient behind

    # The same step-0 batch through the trainer as one mini-batch, with an optimizer that records.
    knobs = rl.knobs_at(cfg, 0, {})
    batch, _ = rl.collect(sampler, knobs, cfg, 0, 0)
    seen: list[torch.Tensor] = []
    params = list(model.parameters())

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(flat_grad(params))

    model.train()
    rl.update_policy(rl.Learner(model, Recorder(params, lr=0.0), torch.device("cpu"), True), batch,
                     dataclasses.replace(cfg, mini_batches=1), knobs, 0, 0)
    whole = seen[0]
    assert whole.abs().sum() > 0
    torch.testing.assert_close(torch.stack(per_group).mean(0), whole, rtol=1e-4, atol=1e-7)


def test_group_count_need_not_be_a_multiple_of_the_batch():
    model, engine, pool, prompt_cache, cfg = toy_setup(prompts_per_step=4)
    sampler = rl.Sampler(engine, Tokens(), EvenFirstToken(), pool, prompt_cache, (1,))
    grads = list(rl_group_gradients(model, sampler, cfg, groups=6, device=torch.device("cpu"),
                                    packed=True, seed=0,
                                    default_difficulty={}))
    assert len(grads) == 6


def test_sft_example_gradient_is_the_token_mean_nll_gradient():
    torch.manual_seed(0)
    model = NativeCausalLM(CFG)
    pairs = [([2, 3, 4], [5, 6, 7, 1]), ([2, 9], [8, 1])]
    got = list(sft_example_gradients(model, pairs, torch.device("cpu"), packed=True))
    assert len(got) == 2
    prompt, completion = pairs[1]
    model.train()
    ids = torch.tensor([prompt + completion])
    logp = torch.log_softmax(model(ids)[0, :-1].float(), -1)
    targets = ids[0, 1:]
    nll = -logp[torch.arange(len(targets)), targets][len(prompt) - 1 :].mean()
    model.zero_grad()
    nll.backward()
    torch.testing.assert_close(got[1], flat_grad(list(model.parameters())), rtol=1e-4, atol=1e-6)


def test_signal_share_of_a_batch():
    from rlvr.diagnostics.noise import signal_share

    assert signal_share(8, 792) == pytest.approx(0.01)
    assert signal_share(50, 50) == pytest.approx(0.5)
    assert signal_share(8, math.inf) == 0.0
    # b / (b + B_noise) is |G|^2 / E|mean of b units|^2 on gradients with that noise scale
    gen = torch.Generator().manual_seed(3)
    G = torch.zeros(100)
    G[0] = 1.0  # |G|^2 = 1, tr(Sigma) = 100: B_noise = 100
    means = torch.stack([(G + torch.randn(25, 100, generator=gen)).mean(0) for _ in range(2000)])
    assert float(1.0 / means.pow(2).sum(1).mean()) == pytest.approx(signal_share(25, 100), rel=0.05)


def test_rlvr_noise_command_end_to_end(tiny_model_dir, tmp_path, capsys):
    import json
    from pathlib import Path

    from rlvr.cli import main

    recipe = str(Path(__file__).parents[2] / "recipes" / "kk-tiny.yaml")
    small = ["threads=1", "data.train_size=40", "rl.prompts_per_step=2",
             "rl.mini_batches=1", "rl.group_size=3", "rl.max_new_tokens=6"]
    out = tmp_path / "noise.json"
    assert main(["noise", recipe, f"model.path={tiny_model_dir}", *small, "--groups", "3",
                 "--sft-examples", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rl"]["per_group"]["n"] == 3 and result["sft"]["per_example"]["n"] == 2
    assert result["group_size"] == 3 and result["prompts_per_step"] == 2
    # an untrained model fails every puzzle: no group has a gradient, so no RL signal can be seen
    assert result["rl"]["accuracy"] == 0.0 and result["rl"]["zero_variance_ratio"] == 1.0
    assert result["rl"]["per_group"]["signal_sq"] == 0.0 and result["rl"]["per_group"]["b_noise"] is None
    assert result["sft"]["per_example"]["trace_cov"] > 0  # every trace has a gradient
    assert "signal share" in capsys.readouterr().out
    assert main(["noise", recipe, *small]) == 2  # no model.path: one clear error, nothing written
    assert "pass model.path=DIR" in capsys.readouterr().err


def test_noise_of_a_lora_recipe_takes_the_gradients_of_the_adapters(tiny_model_dir, tmp_path):
    """`rlvr noise` with model.lora builds the policy as the trainer does: peft adapters around the
    checkpoint, and the gradients measured are those of the adapter parameters (what a LoRA run's
    optimizer steps), not of the frozen base."""
    pytest.importorskip("peft")
    from rlvr.config import load_config
    from rlvr.diagnostics.noise import measure
    from rlvr.trainers.pipeline import load_policy, with_lora

    config = load_config("recipes/kk-tiny.yaml", [
        f"model.path={tiny_model_dir}", f"out_dir={tmp_path}", "model.lora.r=4", "threads=1",
        "data.train_size=32", "rl.prompts_per_step=2", "rl.mini_batches=2", "rl.group_size=4",
        "rl.max_new_tokens=8", "sft.autocast=none"])
    result = measure(config, groups=2, sft_examples=2, progress=lambda _: None)
    base = load_policy(tiny_model_dir, "auto", "float32", torch.device("cpu")).model
    adapted = with_lora(load_policy(tiny_model_dir, "auto", "float32", torch.device("cpu")), config).model
    adapters = sum(p.numel() for n, p in adapted.named_parameters() if p.requires_grad and "lora_" in n)
    assert 0 < adapters < sum(p.numel() for p in base.parameters())
    assert result["parameters"] == adapters
    assert result["sft"]["per_example"]["mean_sq"] > 0  # the SFT loss reaches the adapters (lora_B)


def test_jackknife_interval_covers_the_truth_and_matches_the_spread_over_repeats():
    gen = torch.Generator().manual_seed(4)
    D, N = 60, 400
    G = torch.zeros(D)
    G[:3] = 0.7  # |G|^2 = 1.47, tr(Sigma) = 60: B_noise ~ 40.8, about N / 10
    ratios, errors, covered = [], [], 0
    for _ in range(60):
        s = accumulate(G + torch.randn(N, D, generator=gen)).scale()
        assert s.b_noise_low < s.b_noise_high
        covered += s.b_noise_low <= 60 / 1.47 <= s.b_noise_high
        ratios.append(s.signal_sq / s.trace_cov)
        # the standard error of 1 / B_noise, back out of the interval's low end
        errors.append(1 / s.b_noise_low - s.signal_sq / s.trace_cov)
    spread = float(torch.tensor(ratios).std())
    assert float(torch.tensor(errors).mean()) == pytest.approx(spread, rel=0.3)
    assert 0.5 <= covered / 60 <= 0.85  # one standard error either side: ~68%


def test_jackknife_interval_of_pure_noise_is_open_above_and_parts_keep_half_cos():
    gen = torch.Generator().manual_seed(5)
    grads = torch.randn(400, 300, generator=gen)
    s = accumulate(grads).scale()
    assert s.b_noise_high == math.inf and s.as_dict()["b_noise_high"] is None
    two = NoiseAccumulator(300, parts=2)
    for g in grads:
        two.add(g)
    assert two.scale().half_cos == pytest.approx(s.half_cos, rel=1e-9)  # even units vs odd units either way
    assert two.scale().b_noise == pytest.approx(s.b_noise, rel=1e-9)
    with pytest.raises(ValueError, match="even number"):
        NoiseAccumulator(3, parts=3)
    few = NoiseAccumulator(3)
    for _ in range(3):
        few.add(torch.randn(3, generator=gen))
    assert few.scale().b_noise_low == math.inf  # fewer units than parts: no interval
