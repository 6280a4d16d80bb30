"""Gradient noise scale of a recipe's RL update, and of SFT on the task's traces, at a checkpoint.

The noise scale of a gradient estimator (McCandlish et al. 2018, "An empirical model of
large-batch training") is B_noise = tr(Sigma) / |G|^2: G is the true gradient, Sigma the
covariance of one unit's gradient (here one GRPO group, or one SFT example). A batch of b units
estimates G with signal share about b / (b + B_noise), so B_noise says how many units a step
needs before its direction is mostly signal rather than noise.

`rlvr noise RECIPE.yaml model.path=CKPT --groups 256` draws the recipe's own RL batches (its
prompts, group size, temperature, reward) from the checkpoint, and takes each group's gradient
through the trainer's own advantage and loss code (update_policy with one group per mini-batch,
stepping no optimizer); then the gradients of `--sft-examples` of the task's solution traces
(the SFT loss, token-mean over one example). Memory is O(parameters): only running sums are kept,
in `--parts` interleaved parts (2 x parts float64 vectors) whose delete-one jackknife gives each
B_noise a one-standard-error interval: two settings whose intervals overlap are not told apart.
The model is built as the trainer builds it (pipeline.run_policy): with model.lora, peft adapters
around the checkpoint, and the gradients are those of the adapter parameters, the ones a LoRA
run's optimizer steps.

"Adam-normalised" divides every coordinate by its root mean square over the units, as Adam's
second-moment estimate would once it has seen them: the signal share an Adam step sees.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlvr import tasks
from rlvr.config import RLConfig, RunConfig
from rlvr.errors import ConfigError
from rlvr.models import eos_token_ids, prompt_ids
from rlvr.rollout.torch_engine import TorchEngine
from rlvr.trainers import rl
from rlvr.trainers.common import setup_torch
from rlvr.trainers.pipeline import (
    Policy,
    check_lora,
    run_policy,
    solution_target,
    trace_pairs,
    training_source,
)
from rlvr.trainers.sequences import RolloutBatch, sequence_values
from rlvr.trainers.sft import sft_loss


@dataclass
class NoiseScale:
    """Estimates from N per-unit gradients g_1..g_N.

    mean_sq: |mean g|^2; trace_cov: tr(Sigma), the unbiased per-unit covariance trace;
    signal_sq: |G|^2 estimated without bias as |mean g|^2 - tr(Sigma) / N (can come out <= 0
    when the signal is below what N units resolve); b_noise: tr(Sigma) / signal_sq, inf when
    signal_sq <= 0; half_cos: cosine between the mean gradients of the first and second half of
    the units (near 0: the halves' directions are mostly noise; near 1: mostly signal).
    b_noise_low, b_noise_high: b_noise at one jackknife standard error either side (delete one of
    the accumulator's parts at a time) of its inverse, signal_sq / trace_cov; high is inf when the
    signal is within one standard error of 0, both are inf when it is a standard error below.
    """

    n: int
    mean_sq: float
    trace_cov: float
    signal_sq: float
    b_noise: float
    half_cos: float
    b_noise_low: float = math.inf
    b_noise_high: float = math.inf

    def as_dict(self) -> dict[str, float | None]:
        """JSON-ready: an infinite b_noise (no resolvable signal) or bound is None."""
        out: dict[str, float | None] = dict(dataclasses.asdict(self))
        for key in ("b_noise", "b_noise_low", "b_noise_high"):
            if math.isinf(getattr(self, key)):
                out[key] = None
        return out


class NoiseAccumulator:
    """Running sums of flat gradient vectors, in `parts` interleaved parts (unit i goes to part
    i % parts); `scale()` turns them into a NoiseScale.

    The parts give the jackknife interval of B_noise and the two halves of half_cos (even parts
    against odd ones, i.e. even units against odd units), which keeps half_cos meaningful when the
    units arrive in batches drawn the same way. Memory: 2 x parts float64 vectors of `dim`.
    """

    def __init__(self, dim: int, parts: int = 8) -> None:
        check_parts(parts, "parts")
        self.n = 0
        self.part_sum = torch.zeros(parts, dim, dtype=torch.float64)
        self.part_sum_sq = torch.zeros(parts, dim, dtype=torch.float64)  # per coordinate: sum of g^2

    @property
    def sum(self) -> torch.Tensor:
        return self.part_sum.sum(0)

    def add(self, grad: torch.Tensor) -> None:
        g = grad.detach().reshape(-1).to(torch.float64)
        if g.shape != self.part_sum.shape[1:]:
            raise ValueError(f"gradient of {g.numel()} values, accumulator of {self.part_sum.shape[1]}")
        k = self.n % len(self.part_sum)
        self.part_sum[k] += g
        self.part_sum_sq[k] += g * g
        self.n += 1

    def scale(self, adam_normalised: bool = False) -> NoiseScale:
        if self.n < 2:
            raise ValueError(f"a noise scale needs at least 2 gradients, got {self.n}")
        n, total, total_sq = self.n, self.part_sum.sum(0), self.part_sum_sq.sum(0)
        weight = torch.ones_like(total)  # per coordinate: 1, or Adam's 1 / rms over all units
        if adam_normalised:
            rms = (total_sq / n).sqrt()
            weight = torch.where(rms > 0, 1.0 / rms.clamp(min=1e-300), torch.zeros_like(rms))
        mean_sq, trace_cov, signal_sq = _moments(n, total * weight, float(total_sq @ weight.square()))
        b_noise = trace_cov / signal_sq if signal_sq > 0 else math.inf
        a, b = self.part_sum[0::2].sum(0) * weight, self.part_sum[1::2].sum(0) * weight
        denom = float(a.norm() * b.norm())
        half_cos = float(a @ b) / denom if denom > 0 else 0.0
        low, high = self._jackknife(total, total_sq, weight, signal_sq / trace_cov if trace_cov > 0 else 0.0)
        return NoiseScale(n, mean_sq, trace_cov, signal_sq, b_noise, half_cos, low, high)

    def _jackknife(self, total: torch.Tensor, total_sq: torch.Tensor, weight: torch.Tensor,
                   ratio: float) -> tuple[float, float]:
        """B_noise at ratio -/+ the delete-one-part jackknife standard error of ratio = 1 / B_noise
        (the same per-coordinate weights for every replicate); (inf, inf) with too few units.
        total, total_sq: the parts' sums, as scale() has them."""
        parts = len(self.part_sum)
        ratios = []
        for k in range(parts):
            n_k = (self.n - k + parts - 1) // parts  # units i with i % parts == k
            n = self.n - n_k
            if n_k == 0 or n < 2:
                return math.inf, math.inf
            _, trace_cov, signal_sq = _moments(n, (total - self.part_sum[k]) * weight,
                                               float((total_sq - self.part_sum_sq[k]) @ weight.square()))
            ratios.append(signal_sq / trace_cov if trace_cov > 0 else 0.0)
        mean = sum(ratios) / parts
        se = math.sqrt((parts - 1) / parts * sum((r - mean) ** 2 for r in ratios))
        return (1.0 / (ratio + se) if ratio + se > 0 else math.inf,
                1.0 / (ratio - se) if ratio - se > 0 else math.inf)


def check_parts(parts: int, name: str) -> None:
    """ValueError naming `name` unless parts is an even number >= 2 (halves pair even and odd parts)."""
    if parts < 2 or parts % 2:
        raise ValueError(f"{name} must be an even number >= 2, got {parts}")


def _moments(n: int, total: torch.Tensor, sum_norm_sq: float) -> tuple[float, float, float]:
    """(|mean|^2, unbiased tr(Sigma), |mean|^2 - tr(Sigma) / n) of n units whose vector sum is
    `total` and whose squared norms sum to sum_norm_sq."""
    mean = total / n
    mean_sq = float(mean @ mean)
    trace_cov = max((sum_norm_sq - n * mean_sq) / (n - 1), 0.0)
    return mean_sq, trace_cov, mean_sq - trace_cov / n


def flat_grad(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """The parameters' .grad concatenated (zeros where a parameter has none)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                      for p in params])


def rl_group_gradients(policy: torch.nn.Module, sampler: rl.Sampler, cfg: RLConfig, *, groups: int,
                       device: torch.device, packed: bool, seed: int, default_difficulty: dict[str, Any],
                       stats: dict[str, float] | None = None) -> Iterable[torch.Tensor]:
    """Yield one flat policy gradient per group of the recipe's RL batches, at the current weights.

    Batches are drawn as RL steps 0, 1, ... would draw them (knobs of step 0: its difficulty,
    temperature, group size, max_new_tokens) until `groups` groups are out. Each group's gradient is
    the trainer's own: update_policy's advantages over the whole batch, then micro_batch_loss over
    that group alone as one mini-batch, at PPO ratio 1 (the on-policy gradient that a step's first
    mini-batch takes), backward, no optimizer step. With equal group sizes and a seq-mean or
    token-sum aggregation, the mean of a batch's group gradients is the gradient of the batch as one
    mini-batch. A KL term is left out (its gradient is zero while the policy equals its reference).
    Equal-reward groups yield zeros, as they add nothing to a step. `stats` receives accuracy,
    zero_variance_ratio, truncation ratio and generated tokens. sampler.engine must run `policy`.
    """
    params = [p for p in policy.parameters() if p.requires_grad]
    one_epoch = dataclasses.replace(cfg, ppo_epochs=1)  # each group once; mini_batches is set per batch below
    knobs = rl.knobs_at(cfg, 0, default_difficulty)
    # no reference model: no KL term; update_policy hands the optimizer to `record`, which never steps it
    learner = rl.Learner(policy, torch.optim.SGD(params, lr=0.0), device, packed)
    record = GradientRecorder(params)
    totals = SampleTotals()
    step = 0
    while totals.groups < groups:
        policy.eval()
        batch, _ = rl.collect(sampler, knobs, cfg, seed, step)
        policy.train()
        keep = sorted(set(batch.group_ids))[: groups - totals.groups]
        if len(keep) < len(set(batch.group_ids)):
            trimmed = RolloutBatch()
            trimmed.extend(batch, keep)
            batch = trimmed
        totals.add(batch, len(keep))
        one_group_each = dataclasses.replace(one_epoch, mini_batches=len(keep))
        rl.update_policy(learner, batch, one_group_each, knobs, step, seed, step_fn=record,
                         engine_shares_weights=True)
        totals.zero_variance_groups += record.empty
        yield from record.gradients
        record.gradients.clear()
        record.empty = 0
        step += 1
    policy.zero_grad(set_to_none=True)
    policy.eval()
    if stats is not None:
        stats.update(totals.statistics())


class GradientRecorder:
    """A StepFn (rlvr.trainers.rl) that keeps each mini-batch's gradient instead of stepping.

    The loss is micro_batch_loss over the rows that carry a gradient, with no old log-probs (ratio
    exactly 1: the on-policy gradient a step's first mini-batch takes) and no KL term; a
    mini-batch with no such row (an equal-reward group) yields zeros and counts in `empty`.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter]) -> None:
        self.params = list(params)
        self.gradients: list[torch.Tensor] = []
        self.empty = 0

    def __call__(self, learner: rl.Learner, data: rl.StepData, index: Sequence[int], cfg: RLConfig,
                 knobs: rl.Knobs) -> dict[str, float]:
        policy = learner.policy
        policy.zero_grad(set_to_none=True)
        active = rl.gradient_rows(index, data, cfg)
        self.empty += not active
        if active:
            on_policy = dataclasses.replace(data, old_logprobs=None, ref_logprobs=None)
            new_lp, _ = sequence_values(policy, data.batch, active, data.width, knobs.temperature,
                                        learner.device, learner.packed, token_budget=cfg.micro_batch_tokens,
                                        autocast=cfg.autocast)
            loss = rl.micro_batch_loss(new_lp, None, on_policy, active, data.loss_mask[index], cfg, knobs,
                                       rl.StepSums())
            if loss is None:
                raise FloatingPointError("non-finite RL loss while measuring the gradient noise")
            loss.backward()
        self.gradients.append(flat_grad(self.params))
        return {}


@dataclass
class SampleTotals:
    """What the measured RL batches held: samples, correct ones, truncated ones, tokens, groups."""

    samples: int = 0
    correct: int = 0
    truncated: int = 0
    tokens: int = 0
    groups: int = 0
    zero_variance_groups: int = 0

    def add(self, batch: RolloutBatch, groups: int) -> None:
        self.groups += groups
        self.samples += len(batch)
        self.correct += sum(batch.correct)
        self.truncated += sum(r == "length" for r in batch.finish_reasons)
        self.tokens += sum(len(c) for c in batch.completion_ids)

    def statistics(self) -> dict[str, float]:
        return {"accuracy": self.correct / self.samples,
                "zero_variance_ratio": self.zero_variance_groups / self.groups,
                "truncation_ratio": self.truncated / self.samples,
                "response_length_mean": self.tokens / self.samples}


def sft_example_gradients(policy: torch.nn.Module, pairs: Sequence[tuple[list[int], list[int]]],
                          device: torch.device, packed: bool,
                          autocast: str = "none") -> Iterable[torch.Tensor]:
    """Yield the gradient of each (prompt, completion) pair's SFT loss: the token-mean NLL of its
    completion, the unit whose batch mean is the SFT step's gradient when examples are equally long."""
    params = [p for p in policy.parameters() if p.requires_grad]
    policy.train()
    for prompt, completion in pairs:
        policy.zero_grad(set_to_none=True)
        loss_sum, n_tokens = sft_loss(policy, [prompt + completion], [len(prompt)], [[0]], device, packed,
                                      autocast)
        (loss_sum / max(n_tokens, 1)).backward()
        yield flat_grad(params)
    policy.zero_grad(set_to_none=True)
    policy.eval()


def measure(config: RunConfig, groups: int, sft_examples: int, progress: Callable[[str], None] = print,
            parts: int = 8) -> dict[str, Any]:
    """Noise scales of the recipe's RL gradient (per group) and SFT gradient (per example) at the
    checkpoint config.model.path, each unit stream in `parts` parts (NoiseAccumulator). Writes
    nothing. Returns a JSON-ready dict."""
    if groups < 2:
        raise ValueError(f"--groups must be >= 2, got {groups}")
    check_parts(parts, "--parts")  # before the model loads
    if not config.model.path:
        raise ConfigError("rlvr noise measures a trained checkpoint: pass model.path=DIR (e.g. a run's "
                          "checkpoints/sft/step_000500)")
    check_lora(config)
    device = setup_torch(config.seed, config.threads, config.device)
    task = tasks.get(config.data.task, **config.data.task_options)
    policy = run_policy(config, Path(config.out_dir), device, task)  # with model.lora: its adapters train
    eos_ids = eos_token_ids(policy.tokenizer)
    engine = TorchEngine(policy.model, eos_token_ids=eos_ids, pad_token_id=policy.tokenizer.pad_token_id or 0,
                         device=str(device))
    dim = sum(p.numel() for p in policy.model.parameters() if p.requires_grad)
    result: dict[str, Any] = {"model": str(policy.path), "parameters": dim, "groups": groups,
                              "group_size": config.rl.group_size, "temperature": config.rl.temperature,
                              "advantage": config.rl.advantage, "loss_agg": config.rl.loss_agg,
                              "prompts_per_step": config.rl.prompts_per_step,
                              "mini_batches": config.rl.mini_batches}

    def prompt_cache(ex: Any) -> list[int]:
        return prompt_ids(policy.tokenizer, task.messages(ex), task.response_prefix)

    t0 = time.perf_counter()
    pool = rl.ProblemPool(training_source(config, task, set()), seed=config.seed)
    sampler = rl.Sampler(engine, policy.tokenizer, task, pool, prompt_cache, eos_ids)
    result["rl"], acc = rl_noise(config, policy, sampler, groups, device, parts)
    result["rl"]["seconds"] = time.perf_counter() - t0
    progress(f"RL: {acc.n} groups in {time.perf_counter() - t0:.0f}s")
    if sft_examples >= 2:
        t0 = time.perf_counter()
        result["sft"] = sft_noise(config, policy, sampler, sft_examples, device, rl_mean=acc.sum / acc.n,
                                  parts=parts)
        result["sft"]["seconds"] = time.perf_counter() - t0
        progress(f"SFT: {result['sft']['examples']} examples in {time.perf_counter() - t0:.0f}s")
    return result


def rl_noise(config: RunConfig, policy: Policy, sampler: rl.Sampler, groups: int,
             device: torch.device, parts: int = 8) -> tuple[dict[str, Any], NoiseAccumulator]:
    """The RL part of `measure`: batch statistics and the per-group noise scales (raw and
    Adam-normalised), and the accumulator of the group gradients."""
    acc = NoiseAccumulator(sum(p.numel() for p in policy.model.parameters() if p.requires_grad), parts)
    stats: dict[str, float] = {}
    for g in rl_group_gradients(policy.model, sampler, config.rl, groups=groups, device=device,
                                packed=policy.packed, seed=config.seed,
                                default_difficulty=config.data.difficulty or {}, stats=stats):
        acc.add(g)
    return {**stats, "per_group": acc.scale().as_dict(),
            "per_group_adam_normalised": acc.scale(adam_normalised=True).as_dict()}, acc


def sft_noise(config: RunConfig, policy: Policy, sampler: rl.Sampler, examples: int, device: torch.device,
              rl_mean: torch.Tensor, parts: int = 8) -> dict[str, Any]:
    """The SFT part of `measure`: per-example noise scales of the task's solution traces (drawn
    from the RL pool at a step no RL batch uses), and the cosine of their mean with the RL mean."""
    task = sampler.task
    target = solution_target(task)
    if target is None:
        raise ValueError(f"task {task.name!r} has no solution traces; use --sft-examples 0")
    drawn = sampler.pool.draw(config.data.difficulty or {}, examples, step=10**6)
    pairs = trace_pairs(task, policy.tokenizer, drawn, eos_token_ids(policy.tokenizer)[0], target)
    sft = NoiseAccumulator(rl_mean.numel(), parts)
    for g in sft_example_gradients(policy.model, pairs, device, policy.packed, config.sft.autocast):
        sft.add(g)
    sft_mean = sft.sum / sft.n
    denom = float(rl_mean.norm() * sft_mean.norm())
    return {"examples": sft.n, "per_example": sft.scale().as_dict(),
            "per_example_adam_normalised": sft.scale(adam_normalised=True).as_dict(),
            "cos_with_rl_mean": float(rl_mean @ sft_mean) / denom if denom > 0 else 0.0}


def signal_share(batch: float, b_noise: float | None) -> float:
    """About how much of a `batch`-unit gradient is signal: |G|^2 / E|g_batch|^2 = b / (b + B_noise).
    b_noise None or inf: no resolvable signal."""
    return 0.0 if b_noise is None or math.isinf(b_noise) else batch / (batch + b_noise)


def describe(result: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    def value(b: float | None) -> str:
        return "inf" if b is None else f"{b:.4g}"

    def line(name: str, s: dict[str, float], unit: str) -> str:
        return (f"  {name}: B_noise {value(s['b_noise'])} {unit} (1 s.e.: {value(s['b_noise_low'])} to "
                f"{value(s['b_noise_high'])})  |G|^2 {s['signal_sq']:.3g}  tr(Sigma) "
                f"{s['trace_cov']:.3g}  cos(half, half) {s['half_cos']:.3f}  (N={s['n']})")

    rl_part = result["rl"]
    lines = [f"{result['model']}: {result['parameters']} parameters",
             f"RL ({result['advantage']}, {result['group_size']} samples per group, "
             f"T={result['temperature']}): "
             f"accuracy {rl_part['accuracy']:.3f}, equal-reward groups {rl_part['zero_variance_ratio']:.2f}",
             line("per group", rl_part["per_group"], "groups"),
             line("per group, Adam-normalised", rl_part["per_group_adam_normalised"], "groups")]
    b = result["rl"]["per_group_adam_normalised"]["b_noise"]
    per_step = result["prompts_per_step"]
    per_update = per_step / result["mini_batches"]
    lines.append(f"  signal share (Adam-normalised): a step of {per_step} groups "
                 f"{signal_share(per_step, b):.1%}, "
                 f"an optimizer step of {per_update:g} {signal_share(per_update, b):.1%}")
    if "sft" in result:
        sft = result["sft"]
        lines += ["SFT (solution traces):", line("per example", sft["per_example"], "examples"),
                  line("per example, Adam-normalised", sft["per_example_adam_normalised"], "examples"),
                  f"  cos(mean RL gradient, mean SFT gradient) {sft['cos_with_rl_mean']:.3f}"]
    return "\n".join(lines)
