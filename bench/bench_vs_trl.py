"""Seconds per GRPO step: rlvr's RL trainer vs TRL's GRPOTrainer (the reference), in one process.

Both contenders start every round from the same HF checkpoint directory (default: the newest
kk-tiny SFT checkpoint under bench/out/kk-tiny-sft) and run the same GRPO step: the same
Knights-and-Knaves prompts at the same step (rendered by the tokenizer's chat template; the bench
checks that both sides get identical prompt token ids), 16 prompts x 8 samples = 128 completions,
temperature 1.0, no top-p / top-k, the same stop ids, reward = the KK task's score (Logic-RL scheme
by default: its format term gives nonzero advantages even before any answer is right, so every
update really moves the policy), group-normalised advantages, PPO clip 0.2 with token-mean
aggregation (TRL: loss_type "dapo"), one optimizer step per batch, no reference model (TRL: beta
0), AdamW at the same lr, grad clip 1.0, no logging, eval or saving.

Workloads
  natural  completions end at EOS (uneven lengths), at most 320 new tokens;
  fixed    every completion is exactly 64 tokens: rlvr gets no stop ids (a sampled EOS does not
           stop it), TRL gets min_new_tokens=64 (EOS is never sampled); the compute is the same.
           A 64-token cut never holds a whole answer, so the KK score would give every sample the
           same reward (-3): all advantages 0, rlvr would skip its update while TRL runs one. Both
           sides are scored instead by `fixed_reward` (the share of vowels among the completion's
           letters), which differs within every group: every sequence carries a nonzero advantage
           and both sides run the whole update.

Contenders (each with its own settings; the ratio uses the fastest of each side)
  rlvr fp32         the native model, fp32 learner and fp32 KV-cache decoding (the recipe default);
  rlvr bf16-decode  the same fp32 learner; the engine decodes from bf16 copies of the weights;
  rlvr bf16         bf16 decoding and a bf16-autocast update (rl.autocast: TRL's bf16 setting);
  TRL fp32 / bf16   GRPOTrainer with transformers' generate (no vLLM); bf16 = TRL's default mixed
                    precision (autocast); gradient checkpointing off (TRL turns it on by default,
                    which only costs time here), generation batch = 128 = per-device train batch.
                    (TRL's other non-vLLM path, transformers' continuous batching, was ~5x slower
                    than generate on this CPU for the natural batch, so it is not a contender.)

Interleaving: TRL's trainer runs its steps; after each of its optimizer steps a callback runs one
step of every rlvr contender on the same prompts, so load from other jobs on the shared machine
hits both sides alike. Every round (one per TRL setting) restarts all contenders from the
checkpoint. The first --warmup steps of each round are not counted; the table reports the median
seconds per step over the rest.

A step is measured end to end: rlvr: the body of rlvr.trainers.rl.train_rl (schedule, generate +
score, batch metrics, update); TRL: the time between two of its optimizer steps, minus the rlvr
work done in between. "gen s" is sampling plus scoring for rlvr, and the time until the reward
function is called for TRL (batch fetch, tokenisation, generate). "fwd/real" is the number of token
positions the update's forward pass computes over the number of real (prompt + completion) tokens.

    .venv/bin/rlvr sft recipes/kk-tiny.yaml out_dir=bench/out/kk-tiny-sft sft.steps=300 \
        data.task_options.phrasing=varied data.task_options.trace=compact   # the measured workload
    .venv/bin/python bench/bench_vs_trl.py                       # both workloads, 2 warm-up + 3 steps
    .venv/bin/python bench/bench_vs_trl.py --workloads natural --steps 5 --trl fp32

Threads: 2 for both (--threads) and OMP_WAIT_POLICY=PASSIVE unless the environment sets it (see
below): on a machine shared with other jobs, spinning OpenMP waits make every small op slow.

TRL is not a dependency of rlvr: `pip install trl` (it must not replace the installed torch).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Never reach for the hub: the checkpoint is a local directory.
for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
# OpenMP threads that spin while waiting collapse when the cores are shared with other jobs (measured
# here: a 2-thread decode loop 7-20x slower with spinning at load 4-6 on 2 cores). Set before torch
# loads libgomp; export OMP_WAIT_POLICY=ACTIVE to compare.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from rlvr import tasks  # noqa: E402
from rlvr.models import eos_token_ids, load_tokenizer, prompt_ids  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SFT_RUN = ROOT / "bench" / "out" / "kk-tiny-sft"
DEFAULT_JSON = ROOT / "bench" / "out" / "bench_vs_trl.json"


@dataclass(frozen=True)
class Workload:
    name: str
    max_new_tokens: int
    stop_at_eos: bool


# name: (engine decoding dtype, rl.autocast of the update); the learner's parameters stay fp32
RLVR_SETTINGS = {"fp32": (None, "none"), "bf16-decode": (torch.bfloat16, "none"),
                 "bf16": (torch.bfloat16, "bfloat16")}


@dataclass
class StepRecord:
    """One measured step of one contender."""

    round: int
    step: int
    seconds: float
    gen_seconds: float
    completion_tokens: int
    rows: int
    forward_positions: int  # token positions the update's forward pass computes (padding included)
    real_tokens: int  # prompt + completion tokens of the batch
    loss_tokens: int  # positions the loss counts (-1: not reported)
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Settings:
    model_dir: Path
    prompts: int
    group_size: int
    warmup: int
    steps: int
    lr: float
    seed: int
    examples: list[Any]
    prompt_token_ids: list[list[int]]
    eos_ids: tuple[int, ...]
    reward_scheme: str


def fixed_reward(text: str) -> float:
    """The fixed workload's reward, the same on both sides: the share of vowels among the letters
    of the completion (continuous, so the samples of a group all differ)."""
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / max(len(letters), 1)


class FixedRewardTask:
    """The KK task with its score replaced by fixed_reward (prompts and everything else unchanged)."""

    def __init__(self, task: Any) -> None:
        self.task = task

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def score(self, completion: str, example: Any) -> Any:  # noqa: ARG002 - the Task protocol
        from rlvr.tasks.base import Score

        return Score(reward=fixed_reward(completion), correct=False, format_ok=True)


def workload_task(workload: Workload, reward_scheme: str) -> Any:
    task = tasks.get("knights_knaves", reward_scheme=reward_scheme)
    return task if workload.stop_at_eos else FixedRewardTask(task)


# ------------------------------------------------------------------------------------------------
# rlvr: the body of train_rl, one step at a time


class StepPool:
    """ProblemPool stand-in: step s gets prompts [s * n, (s + 1) * n) of a fixed list (TRL's order)."""

    def __init__(self, examples: list[Any]) -> None:
        self.examples = examples

    # ProblemPool.draw's signature
    def draw(self, difficulty: dict[str, Any], n: int, step: int,  # noqa: ARG002
             round_: int = 0) -> list[Any]:  # noqa: ARG002
        start = (step * n) % len(self.examples)
        return self.examples[start : start + n]


class RlvrContender:
    """rlvr's learner + TorchEngine from the checkpoint, stepped like train_rl (one update per batch)."""

    def __init__(self, name: str, setting: tuple[torch.dtype | None, str], workload: Workload,
                 s: Settings) -> None:
        from rlvr.config import RLConfig
        from rlvr.rollout.torch_engine import TorchEngine
        from rlvr.trainers.pipeline import load_policy

        self.name, self.workload, self.s = name, workload, s
        self.policy = load_policy(s.model_dir, "native", "float32", torch.device("cpu"))
        self.cfg = RLConfig(steps=s.warmup + s.steps, prompts_per_step=s.prompts, group_size=s.group_size,
                            max_new_tokens=workload.max_new_tokens, lr=s.lr,
                            lr_schedule="constant", grad_clip=1.0, temperature=1.0, top_p=1.0, top_k=0,
                            advantage="grpo", loss="ppo", loss_agg="token-mean", kl_coef=0.0,
                            zero_variance="keep", autocast=setting[1])
        # fixed workload: no stop ids at all, so every completion runs to max_new_tokens
        self.stop_ids = s.eos_ids if workload.stop_at_eos else ()
        tok = self.policy.tokenizer
        self.engine = TorchEngine(self.policy.model, eos_token_ids=self.stop_ids,
                                  pad_token_id=tok.pad_token_id or 0, device="cpu", dtype=setting[0])
        # as in train_rl
        self.optimizer = torch.optim.AdamW(self.policy.model.parameters(), lr=self.cfg.lr, betas=(0.9, 0.99),
                                           weight_decay=self.cfg.weight_decay)
        self.task = workload_task(workload, s.reward_scheme)
        self.pool = StepPool(s.examples)
        self.ids = {ex.prompt: ids for ex, ids in zip(s.examples, s.prompt_token_ids)}
        self.records: list[StepRecord] = []

    def step(self, round_: int, step: int) -> StepRecord:
        from rlvr.trainers.common import micro_batches
        from rlvr.trainers.rl import Learner, Sampler, batch_metrics, collect, knobs_at, update_policy

        model, cfg = self.policy.model, self.cfg
        t_step = time.perf_counter()
        knobs = knobs_at(cfg, step, {"people": 3})
        model.eval()
        sampler = Sampler(self.engine, self.policy.tokenizer, self.task, self.pool,
                          lambda ex: self.ids[ex.prompt],
                          self.stop_ids)
        batch, _ = collect(sampler, knobs, cfg, self.s.seed, step)
        t_gen = time.perf_counter() - t_step
        batch_metrics(batch, knobs)
        model.train()
        stats = update_policy(Learner(model, self.optimizer, torch.device("cpu"),
                                      self.policy.packed), batch, cfg,
                              knobs, step, self.s.seed)
        model.eval()
        seconds = time.perf_counter() - t_step
        lengths = [len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids)]
        # the update (rlvr.trainers.sequences.sequence_values with the native model): per micro-batch of
        # completions, each distinct prompt once (padded to the longest) + completions padded
        completions = [len(c) for c in batch.completion_ids]
        forward = 0
        for mb in micro_batches(completions, cfg.micro_batch_tokens):
            prompts = {tuple(batch.prompt_ids[i]) for i in mb}
            forward += len(prompts) * max(map(len, prompts)) + len(mb) * max(completions[i] for i in mb)
        engine = self.engine.last_stats
        record = StepRecord(
            round=round_, step=step, seconds=seconds, gen_seconds=t_gen,
            completion_tokens=sum(len(c) for c in batch.completion_ids), rows=len(batch),
            forward_positions=forward, real_tokens=sum(lengths), loss_tokens=int(stats["actor/loss_tokens"]),
            extra={"row_steps": float(engine["row_steps"]), "decode_steps": float(engine["decode_steps"]),
                   "reward_mean": sum(batch.rewards) / len(batch), "active_rows": active_rows(batch)},
        )
        self.records.append(record)
        return record


# ------------------------------------------------------------------------------------------------
# TRL: GRPOTrainer with a callback that times its steps and runs the rlvr steps in between


def active_rows(batch: Any) -> float:
    """Sequences of the batch whose GRPO advantage is nonzero (those the update runs)."""
    from rlvr.algorithms import group_has_variance

    return float(group_has_variance(torch.tensor(batch.rewards), torch.tensor(batch.group_ids)).sum())


def trl_config(workload: Workload, precision: str, s: Settings, out_dir: str) -> Any:
    from trl import GRPOConfig

    rows = s.prompts * s.group_size
    # rlvr's stop ids (the tokenizer's eos plus <|im_end|> / <|endoftext|>); the fixed workload forbids them
    generation_kwargs: dict[str, Any] = {"eos_token_id": list(s.eos_ids)}
    if not workload.stop_at_eos:
        generation_kwargs["min_new_tokens"] = workload.max_new_tokens
    return GRPOConfig(
        output_dir=out_dir, seed=s.seed, use_cpu=True, bf16=precision == "bf16", fp16=False,
        max_steps=s.warmup + s.steps, learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0, max_grad_norm=1.0,
        # one optimizer step per batch of prompts x group_size completions, generated at once
        per_device_train_batch_size=rows, gradient_accumulation_steps=1, num_generations=s.group_size,
        num_iterations=1, shuffle_dataset=False,
        max_completion_length=workload.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs=generation_kwargs, use_vllm=False,
        beta=0.0, loss_type="dapo", scale_rewards="group", epsilon=0.2,
        activation_checkpointing=False, gradient_checkpointing=False,  # TRL's default turns it on
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        log_completions=False, dataloader_pin_memory=False, dataloader_num_workers=0,
    )


class _TrlClock:
    """Reward function + step callback: times TRL's steps and runs `between(step)` after each."""

    def __init__(self, name: str, round_: int, s: Settings, between: Callable[[int], None],
                 show: Callable[[str, StepRecord], None], workload: Workload) -> None:
        self.name, self.round, self.s, self.between, self.show = name, round_, s, between, show
        self.task = workload_task(workload, s.reward_scheme)
        self.records: list[StepRecord] = []
        self.t_start = 0.0
        self.t_reward = 0.0
        self.lengths: list[int] = []
        self.prompt_lengths: list[int] = []
        self.rewards: list[float] = []

    def reward(self, prompts: list, completions: list,  # noqa: ARG002 - TRL passes reward inputs by keyword
               completion_ids: list, example_index: list[int],
               **_: Any) -> list[float]:
        self.t_reward = time.perf_counter()
        self.lengths = [len(c) for c in completion_ids]
        self.prompt_lengths = [len(self.s.prompt_token_ids[i]) for i in example_index]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        self.rewards = [self.task.score(t, self.s.examples[i]).reward for t, i in zip(texts, example_index)]
        return self.rewards

    def active_rows(self) -> int:
        """Samples of groups whose rewards are not all equal (TRL's rows with a nonzero advantage)."""
        g = self.s.group_size
        groups = [self.rewards[i : i + g] for i in range(0, len(self.rewards), g)]
        return sum(len(group) for group in groups if max(group) != min(group))

    def callback(self) -> Any:
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):  # noqa: ARG002 - TrainerCallback's
                clock.t_start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002 - TrainerCallback's
                clock.step_done(state.global_step - 1)

        return Callback()

    def step_done(self, step: int) -> None:
        now = time.perf_counter()
        rows = len(self.lengths)
        # TRL pads every row to the longest prompt + the longest completion of the batch
        forward = rows * (max(self.prompt_lengths) + max(self.lengths))
        self.records.append(StepRecord(
            round=self.round, step=step, seconds=now - self.t_start, gen_seconds=self.t_reward - self.t_start,
            completion_tokens=sum(self.lengths), rows=rows, forward_positions=forward,
            real_tokens=sum(self.lengths) + sum(self.prompt_lengths), loss_tokens=-1,
            extra={"reward_mean": sum(self.rewards) / max(rows, 1), "active_rows": float(self.active_rows())},
        ))
        self.show(self.name, self.records[-1])
        self.between(step)
        self.t_start = time.perf_counter()


def run_trl_round(workload: Workload, precision: str, round_: int, s: Settings,
                  between: Callable[[int], None],
                  show: Callable[[str, StepRecord], None]) -> list[StepRecord]:
    """One TRL training run of warmup + steps steps; `between(step)` runs after each of its steps."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    task = tasks.get("knights_knaves")
    rows = [{"prompt": task.messages(ex), "example_index": i} for i, ex in enumerate(s.examples)]
    clock = _TrlClock(f"TRL {precision}", round_, s, between, show, workload)

    def kk_reward(prompts: list, completions: list, completion_ids: list, example_index: list[int],
                  **kwargs: Any) -> list[float]:
        return clock.reward(prompts, completions, completion_ids, example_index, **kwargs)

    with tempfile.TemporaryDirectory(prefix="bench_trl_") as out_dir:
        trainer = GRPOTrainer(model=str(s.model_dir), reward_funcs=[kk_reward],
                              args=trl_config(workload, precision, s, out_dir),
                              train_dataset=Dataset.from_list(rows),
                              processing_class=load_tokenizer(s.model_dir), callbacks=[clock.callback()])
        # TRL truncates each completion after its first id in eos_token_ids (read from the model's
        # generation config at construction); give it the same ids it now stops at
        trainer.eos_token_ids = list(s.eos_ids)
        check_trl_prompts(trainer, s)
        # the end-of-training metrics line, printed after the last step
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return clock.records


def check_trl_prompts(trainer: Any, s: Settings) -> None:
    """TRL renders conversational prompts itself; they must equal rlvr's prompt token ids."""
    theirs, _, _ = trainer._tokenize_prompts([tasks.get("knights_knaves").messages(ex)
                                              for ex in s.examples[:8]])
    if [list(t) for t in theirs] != s.prompt_token_ids[:8]:
        raise SystemExit("bench_vs_trl: TRL's rendered prompt ids differ from rlvr's; the "
                         "comparison is not fair")
    stops = trainer.generation_config.eos_token_id
    if sorted(trainer.eos_token_ids) != sorted(s.eos_ids) or sorted(stops) != sorted(s.eos_ids):
        raise SystemExit(f"bench_vs_trl: TRL stops at {stops} and truncates at {trainer.eos_token_ids}, "
                         f"rlvr stops at {list(s.eos_ids)}")


# ------------------------------------------------------------------------------------------------
# Orchestration and report


def newest_checkpoint(run_dir: Path) -> Path:
    found = sorted(p for p in (run_dir / "checkpoints" / "sft").glob("step_*")
                   if (p / "config.json").is_file())
    if not found:
        raise SystemExit(f"bench_vs_trl: no SFT checkpoint under {run_dir}/checkpoints/sft; make one with\n"
                         f"  .venv/bin/rlvr sft recipes/kk-tiny.yaml out_dir={run_dir} sft.steps=300 "
                         "data.task_options.phrasing=varied data.task_options.trace=compact\n"
                         "or pass --model-dir")
    return found[-1]


def settings(args: argparse.Namespace) -> Settings:
    model_dir = Path(args.model_dir) if args.model_dir else newest_checkpoint(Path(args.sft_run))
    tokenizer = load_tokenizer(model_dir)
    task = tasks.get("knights_knaves")
    # unseen puzzles: a seed disjoint from the SFT traces' (seed + 20_011) and held-out set (seed + 10_007)
    examples = task.examples(args.prompts * (args.warmup + args.steps), seed=args.seed + 31_337, people=3)
    ids = [prompt_ids(tokenizer, task.messages(ex), task.response_prefix) for ex in examples]
    return Settings(model_dir=model_dir, prompts=args.prompts, group_size=args.group_size, warmup=args.warmup,
                    steps=args.steps, lr=args.lr, seed=args.seed, examples=examples, prompt_token_ids=ids,
                    eos_ids=eos_token_ids(tokenizer, model_dir), reward_scheme=args.reward_scheme)


def run_workload(workload: Workload, args: argparse.Namespace, s: Settings) -> dict[str, list[StepRecord]]:
    """Every TRL setting is one round; each round hosts one step of every rlvr contender per TRL step."""
    results: dict[str, list[StepRecord]] = {}

    def show(name: str, r: StepRecord) -> None:
        results.setdefault(name, []).append(r)
        print(f"  {workload.name:<8}{name:<18} step {r.step}: {r.seconds:6.2f}s (gen {r.gen_seconds:5.2f}s, "
              f"mean len {r.completion_tokens / r.rows:5.1f}, reward {r.extra['reward_mean']:+.2f}, "
              f"rows with an advantage {r.extra['active_rows']:.0f}/{r.rows})", flush=True)

    for round_, precision in enumerate(args.trl.split(",")):
        contenders = [RlvrContender(f"rlvr {name}", RLVR_SETTINGS[name], workload, s)
                      for name in args.rlvr.split(",")]

        def between(step: int, contenders: list[RlvrContender] = contenders, round_: int = round_) -> None:
            for c in contenders:
                show(c.name, c.step(round_, step))

        run_trl_round(workload, precision, round_, s, between, show)
    return results


def summarise(records: list[StepRecord], warmup: int) -> dict[str, float]:
    kept = [r for r in records if r.step >= warmup] or records
    seconds = statistics.median(r.seconds for r in kept)
    tokens = statistics.mean(r.completion_tokens for r in kept)
    return {
        "seconds_per_step": seconds,
        "min_seconds": min(r.seconds for r in kept),
        "gen_seconds": statistics.median(r.gen_seconds for r in kept),
        "update_seconds": statistics.median(r.seconds - r.gen_seconds for r in kept),
        "mean_completion_length": tokens / kept[0].rows,
        "completion_tokens_per_s": tokens / seconds,
        "forward_over_real": statistics.mean(r.forward_positions / r.real_tokens for r in kept),
        "measured_steps": len(kept),
    }


def print_table(all_results: dict[str, dict[str, list[StepRecord]]], warmup: int) -> dict[str, Any]:
    header = (f"{'workload':<9}{'contender':<18}{'s/step':>8}{'min':>7}{'gen s':>7}{'upd s':>7}"
              f"{'mean len':>9}{'tok/s':>8}{'fwd/real':>9}{'n':>4}")
    print("\n" + header + "\n" + "-" * len(header))
    summary: dict[str, Any] = {}
    for workload, results in all_results.items():
        rows = {name: summarise(recs, warmup) for name, recs in results.items()}
        summary[workload] = rows
        for name, m in rows.items():
            print(f"{workload:<9}{name:<18}{m['seconds_per_step']:>8.2f}{m['min_seconds']:>7.2f}{m['gen_seconds']:>7.2f}"
                  f"{m['update_seconds']:>7.2f}{m['mean_completion_length']:>9.1f}{m['completion_tokens_per_s']:>8.0f}"
                  f"{m['forward_over_real']:>9.2f}{m['measured_steps']:>4}")
    print()
    targets = {"natural": 2.0, "fixed": 1.0}
    for workload, rows in summary.items():
        rlvr = min((m["seconds_per_step"], n) for n, m in rows.items() if n.startswith("rlvr"))
        trl = min((m["seconds_per_step"], n) for n, m in rows.items() if n.startswith("TRL"))
        ratio = trl[0] / rlvr[0]
        target = targets.get(workload, 1.0)
        rows["ratio"] = {"trl_over_rlvr": ratio, "fastest_rlvr": rlvr[1],
                         "fastest_trl": trl[1], "target": target}
        print(f"{workload:<9}ratio TRL/rlvr = {trl[0]:.2f} / {rlvr[0]:.2f} = {ratio:.2f}x  "
              f"({trl[1]} vs {rlvr[1]}; target >= {target:.0f}x: {'met' if ratio >= target else 'NOT met'})")
    return summary


def print_checks(all_results: dict[str, dict[str, list[StepRecord]]]) -> None:
    """Padding is never trained on; finished sequences stop costing decode compute (rlvr)."""
    print("\nPadding and finished sequences")
    for workload, results in all_results.items():
        for name, recs in results.items():
            gen_ms = 1000 * sum(r.gen_seconds for r in recs) / sum(r.completion_tokens for r in recs)
            line = f"  {workload:<8}{name:<18} gen {gen_ms:.3f} ms per completion token"
            if name.startswith("rlvr"):
                exact = sum(r.loss_tokens == r.completion_tokens for r in recs)
                row_steps = sum(r.extra["row_steps"] for r in recs)
                lockstep = sum(r.extra["decode_steps"] * r.rows for r in recs)
                line += (f"; loss tokens == completion tokens in {exact}/{len(recs)} steps; decode ran "
                         f"{row_steps / max(lockstep, 1):.2f} of rows x steps")
            print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="",
                    help="HF checkpoint directory (default: newest under --sft-run)")
    ap.add_argument("--sft-run", default=str(DEFAULT_SFT_RUN), help="run directory of `rlvr sft`")
    ap.add_argument("--workloads", default="natural,fixed")
    ap.add_argument("--rlvr", default="fp32,bf16-decode,bf16",
                    help=f"rlvr settings: {','.join(RLVR_SETTINGS)}")
    ap.add_argument("--trl", default="fp32,bf16", help="TRL precisions: fp32, bf16 (autocast)")
    ap.add_argument("--natural-max-new-tokens", type=int, default=320)
    ap.add_argument("--fixed-new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="uncounted steps at the start of every round")
    ap.add_argument("--steps", type=int, default=3, help="measured steps per round")
    ap.add_argument("--lr", type=float, default=1e-4, help="the kk-tiny recipe's RL learning rate")
    ap.add_argument("--reward-scheme", default="logic_rl",
                    help="KK reward: logic_rl (format and answer terms: nonzero advantages "
                         "even when no answer is right yet, so every update moves the policy) "
                         "or default (1 / 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="where to write every step record")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    s = settings(args)
    import accelerate
    import transformers
    import trl

    lengths = [len(p) for p in s.prompt_token_ids]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
          f"accelerate {accelerate.__version__}; {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    print(f"checkpoint {s.model_dir}; {s.prompts} prompts x {s.group_size} samples per step; prompt tokens "
          f"{min(lengths)}-{max(lengths)}; eos ids {list(s.eos_ids)}; {args.warmup} warm-up + {args.steps} "
          f"measured steps per round; lr {args.lr}")
    all_results = {}
    workloads = {"natural": Workload("natural", args.natural_max_new_tokens, True),
                 "fixed": Workload("fixed", args.fixed_new_tokens, False)}
    for name in args.workloads.split(","):
        all_results[name] = run_workload(workloads[name], args, s)
    summary = print_table(all_results, args.warmup)
    print_checks(all_results)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "model_dir": str(s.model_dir), "summary": summary,
                               "records": {w: {n: [asdict(r) for r in recs] for n, recs in res.items()}
                                           for w, res in all_results.items()}}, indent=1))
    print(f"\nstep records: {out}")


if __name__ == "__main__":
    main()
