"""Helpers the SFT and RL loops share: seeding, batching, log-probs, schedules, logging.

Functions with flat arguments; the loops in sft.py and rl.py stay readable top to bottom.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlvr.config import stage_value as stage_value  # defined beside StageConfig; the loops take it from here


def cpu_threads(threads: int) -> int:
    """The torch CPU threads of config key `threads`: itself, or for 0 every core this process may
    run on (its CPU affinity, which a container or `taskset` may narrow below the machine's count)."""
    if threads > 0:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an optimizer steps: those requiring grad (with LoRA, the adapters only)."""
    return [p for p in model.parameters() if p.requires_grad]


def setup_torch(seed: int, threads: int = 0, device: str = "auto") -> torch.device:
    """Seed every RNG, set the CPU thread count (cpu_threads: 0 is every core), pick the device."""
    torch.set_num_threads(cpu_threads(threads))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def lr_at(step: int, total_steps: int, peak: float, warmup_steps: int, schedule: str,
          min_ratio: float) -> float:
    """Learning rate at `step` (0-based): linear warm-up, then constant / cosine / linear decay to
    min_ratio * peak."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps + 1:
        return peak
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps - 1))
    if schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "linear":
        factor = 1.0 - progress
    else:
        raise ValueError(f"unknown lr schedule {schedule!r}; valid: constant, cosine, linear")
    return peak * (min_ratio + (1.0 - min_ratio) * factor)




# ---------------------------------------------------------------------------------------------
# Batching: micro-batches by token budget, packed or padded rows


# What one more micro-batch costs, in padded tokens: its fixed per-call work (op launches, the
# prompt pass, the optimizer-free backward set-up). Measured on the 1M kk-tiny model on 2 cores: a
# forward+backward costs ~90 us per padded token at every width from 88 to 400, with an intercept
# below the noise (~10 ms), so the constant only needs to keep micro-batches from shrinking to one
# sequence each.
MICRO_BATCH_OVERHEAD_TOKENS = 128


def micro_batches(lengths: Sequence[int], token_budget: int,
                  overhead_tokens: int = MICRO_BATCH_OVERHEAD_TOKENS) -> list[list[int]]:
    """Split sequence indices into micro-batches of at most `token_budget` padded tokens.

    Every row of a micro-batch is padded to its longest sequence, so the split minimises padded
    tokens plus `overhead_tokens` per micro-batch: indices sorted by length (longest first) are cut
    into consecutive runs by dynamic programming. E.g. GRPO completions of lengths 400, 220, 180, 90
    (a truncated sample among natural ones) pad to 1600 tokens in one micro-batch, to 1060 as
    [400] + [220, 180, 90]. A sequence longer than the budget gets a micro-batch of its own.
    """
    n = len(lengths)
    order = sorted(range(n), key=lambda i: -lengths[i])
    width = [lengths[i] for i in order]  # non-increasing: a run's first entry is its width
    best = [0.0] * (n + 1)  # best[j]: least cost of the runs covering width[j:]
    cut = [n] * (n + 1)
    for j in range(n - 1, -1, -1):
        best[j] = float("inf")
        for k in range(j + 1, n + 1):
            if k - j > 1 and (k - j) * width[j] > token_budget:
                break
            cost = overhead_tokens + (k - j) * width[j] + best[k]
            if cost < best[j]:
                best[j], cut[j] = cost, k
    batches: list[list[int]] = []
    j = 0
    while j < n:
        batches.append(order[j : cut[j]])
        j = cut[j]
    return batches


def pack_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """First-fit-decreasing packing of sequences into rows of at most row_tokens tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        for r, space in enumerate(free):
            if lengths[i] <= space:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(max(row_tokens, lengths[i]) - lengths[i])
    return rows


@dataclass
class Batch:
    """Model inputs for a set of sequences laid out in rows.

    input_ids, position_ids, segment_ids, loss_mask: (R, L). segment_ids is 1.. per sequence in a
    row and 0 on padding; loss_mask is 1 on tokens whose prediction is trained (the completion).
    target_ids: (R, L), the next token at each position (shifted), 0 where there is none.
    where: for each input sequence, (row, start, length) of its tokens.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    target_ids: torch.Tensor
    loss_mask: torch.Tensor
    where: list[tuple[int, int, int]]


def build_batch(
    sequences: Sequence[Sequence[int]], completion_starts: Sequence[int], rows: Sequence[Sequence[int]],
    trained: Sequence[Sequence[bool]] | None = None,
) -> Batch:
    """Lay `sequences` out in `rows` (lists of sequence indices; several per row = packing).

    completion_starts[i] is the index in sequences[i] of its first completion token: predictions of
    tokens at positions >= completion_starts[i] are trained (loss_mask on the position before).
    trained (optional, replaces completion_starts): per token of each sequence, whether predicting
    it is trained (SFT on a conversation's assistant turns).
    """
    width = max(sum(len(sequences[i]) for i in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.zeros(shape, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.zeros(shape, dtype=torch.long)
    target_ids = torch.zeros(shape, dtype=torch.long)
    loss_mask = torch.zeros(shape, dtype=torch.float32)
    where: list[tuple[int, int, int]] = [(0, 0, 0)] * len(sequences)
    for r, row in enumerate(rows):
        offset = 0
        for segment, i in enumerate(row, start=1):
            seq = torch.as_tensor(sequences[i], dtype=torch.long)
            n = len(seq)
            input_ids[r, offset : offset + n] = seq
            position_ids[r, offset : offset + n] = torch.arange(n)
            segment_ids[r, offset : offset + n] = segment
            target_ids[r, offset : offset + n - 1] = seq[1:]
            if trained is not None:
                loss_mask[r, offset : offset + n - 1] = torch.as_tensor(trained[i][1:n], dtype=torch.float32)
            else:
                start = max(1, completion_starts[i])
                loss_mask[r, offset + start - 1 : offset + n - 1] = 1.0
            where[i] = (r, offset, n)
            offset += n
    return Batch(input_ids, position_ids, segment_ids, target_ids, loss_mask, where)


def autocast_context(device: torch.device, mode: str) -> torch.autocast:
    """The context for a training forward: bf16 matmuls under torch.autocast when mode is
    "bfloat16" (sft.autocast, rl.autocast), a no-op context for "none".

    On a CPU whose bf16 matmuls are slower than its float32 ones (no AVX512-BF16 or AMX: torch
    then runs bf16 matmuls in a reference kernel, ~80x slower than float32 on an AVX2-only EPYC,
    which made a kk-tiny SFT step take 70 s instead of 0.6 s), "bfloat16" runs in float32, and
    says so once: float32 is the more exact of the two, so only the speed of such a run changes.
    """
    enabled = mode == "bfloat16" and (device.type != "cpu" or cpu_bf16_matmul_is_fast())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


_BF16_FAST: dict[str, bool] = {}


def cpu_bf16_matmul_is_fast() -> bool:
    """Whether a bf16 matmul on this CPU takes at most 1.5x the time of a float32 one (measured
    once per process on 256 x 256 x 256, best of 3; the two differ by 4x or 80x, so noise from
    other jobs does not decide it). Logs the fallback when it is not."""
    if "cpu" not in _BF16_FAST:
        def best(dtype: torch.dtype) -> float:
            a = torch.randn(256, 256).to(dtype)
            torch.matmul(a, a)  # warm-up: kernel selection, first-touch allocation
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                torch.matmul(a, a)
                times.append(time.perf_counter() - t0)
            return min(times)

        fp32, bf16 = best(torch.float32), best(torch.bfloat16)
        _BF16_FAST["cpu"] = bf16 <= 1.5 * fp32
        if not _BF16_FAST["cpu"]:
            print(f"[rlvr] bf16 matmuls are {bf16 / fp32:.0f}x slower than float32 on this CPU (no "
                  "AVX512-BF16 or AMX): autocast=bfloat16 runs in float32", flush=True)
    return _BF16_FAST["cpu"]


def forward_logits(model: torch.nn.Module, batch: Batch, device: torch.device, packed: bool) -> torch.Tensor:
    """Logits (R, L, V) of `batch`; packed rows need the native model (segment-aware attention)."""
    ids = batch.input_ids.to(device)
    if packed:
        return model(ids, position_ids=batch.position_ids.to(device),
                     segment_ids=batch.segment_ids.to(device))
    # Right padding with causal attention: real tokens never see the padding that follows them.
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out


def per_sequence(values: torch.Tensor, where: Sequence[tuple[int, int, int]], starts: Sequence[int],
                 width: int) -> torch.Tensor:
    """Gather each sequence's completion-position values into a (B, width) tensor, left-aligned.

    Position p of sequence i holds the value predicted for its token completion_starts[i] + p.
    """
    out = torch.zeros((len(where), width), dtype=values.dtype, device=values.device)
    for i, (row, offset, n) in enumerate(where):
        begin = offset + max(1, starts[i]) - 1
        count = n - max(1, starts[i])
        out[i, :count] = values[row, begin : begin + count]
    return out


# ---------------------------------------------------------------------------------------------
# Optimizer steps


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def fill_missing_gradients(model: torch.nn.Module) -> None:
    """A zero gradient for every trainable parameter that got none (a step with no active row), so
    that the optimizer steps as it would on a zero loss (AdamW's momentum still moves the weights)."""
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def clip_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  grad_clip: float) -> tuple[float, float]:
    """Fill missing gradients, clip the global norm (grad_clip 0: no clipping), step when the norm is
    finite, zero the gradients. Returns (gradient norm before clipping, 1.0 if the step was skipped
    else 0.0). The norm of a sharded (FSDP2) model is a DTensor: its full value is taken."""
    fill_missing_gradients(model)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    full_tensor = getattr(grad_norm, "full_tensor", None)
    if full_tensor is not None:
        grad_norm = full_tensor()
    skipped = 0.0
    if torch.isfinite(grad_norm):
        optimizer.step()
    else:
        skipped = 1.0
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), skipped


class RunningMeans:
    """The mean of each statistic over the optimizer steps that report it (keys in first-seen order)."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
            self._counts[k] = self._counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: v / self._counts[k] for k, v in self._sums.items()}


# ---------------------------------------------------------------------------------------------
# Logging


WANDB_ID_FILE = "wandb_run_id.txt"
SAMPLE_TEXT_CHARS = 2000  # of a prompt or completion in TensorBoard's text tab
TENSORBOARD_SAMPLE_ROWS = 32


def _markdown_cell(value: Any, limit: int = SAMPLE_TEXT_CHARS) -> str:
    text = str(value)
    text = text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit} more characters]"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # <think> stays visible
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def samples_markdown(rows: Sequence[dict[str, Any]], limit: int = TENSORBOARD_SAMPLE_ROWS) -> str:
    """A Markdown table (reward, correct, prompt, completion) of the first `limit` rows."""
    lines = ["| reward | correct | prompt | completion |", "|---|---|---|---|"]
    lines += [f"| {float(r['reward']):.4g} | {bool(r['correct'])} | {_markdown_cell(r['prompt'])} | "
              f"{_markdown_cell(r['completion'])} |" for r in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n{len(rows) - limit} more rows in samples/")
    return "\n".join(lines)


class MetricsLogger:
    """Appends one JSON object per step to metrics.jsonl; mirrors to TensorBoard / W&B when enabled.

    config: the run's resolved config (rlvr.config.to_dict); W&B records it as the run's config,
    TensorBoard as a "config" text entry. The W&B run id is kept in RUN_DIR/wandb_run_id.txt, so a
    resumed run continues the same W&B run. log_samples sends completions: a W&B table and a
    TensorBoard text entry (samples/completions).
    """

    def __init__(self, run_dir: Path, tensorboard: bool = False, wandb: bool = False,
                 wandb_project: str = "rlvr", config: dict | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb: Any = None
        self._wandb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # tensorboard is an optional extra
                raise RuntimeError("logging.tensorboard=true needs `pip install rlvr[tensorboard]`") from err
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            if config is not None:  # indented: a Markdown code block in TensorBoard's text tab
                text = json.dumps(config, indent=2, default=str)
                self._tb.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()), 0)
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError as err:
                raise RuntimeError("logging.wandb=true needs `pip install rlvr[wandb]`") from err
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            id_file = Path(run_dir) / WANDB_ID_FILE
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n")
            self._wandb_module = wandb_module
            self._wandb = wandb_module.init(project=wandb_project, dir=str(run_dir), config=config, id=run_id,
                                            resume="allow")

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
            f.flush()
        step = int(record.get("step", 0))
        prefix = record.get("phase", "")
        numeric = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(f"{prefix}/{key}" if prefix else key, value, step)
        if self._wandb is not None:
            self._wandb.log({f"{prefix}/{k}" if prefix else k: v for k, v in numeric.items()}, step=step)

    def log_samples(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        """Completions of a step (dicts with prompt, completion, reward, correct) to W&B as a table and
        to TensorBoard as text (metrics.jsonl does not hold them: samples/ does)."""
        if self._tb is not None and rows:
            self._tb.add_text("samples/completions", samples_markdown(rows), step)
        if self._wandb is not None and rows:
            columns = ["step", "prompt", "completion", "reward", "correct"]
            data = [[step, str(r["prompt"]), str(r["completion"]), float(r["reward"]), bool(r["correct"])]
                    for r in rows]
            table = self._wandb_module.Table(columns=columns, data=data)
            self._wandb.log({"samples/completions": table}, step=step)

    def truncate_after(self, phase: str, step: int) -> None:
        """Drop lines of `phase` with step > `step` (a resumed run rewrites them; step 0: all of them)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            record = json.loads(line)
            if record.get("phase") == phase and record.get("step", 0) > step:
                continue
            kept.append(line)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class Progress:
    """One live terminal line: phase, step/total, chosen metrics and ETA."""

    def __init__(self, phase: str, total: int, enabled: bool = True, start: int = 0) -> None:
        self.phase, self.total, self.start = phase, total, start
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._last_print = 0.0

    def update(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        done = step + 1 - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step - 1)
        shown = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        line = f"[{self.phase}] step {step + 1}/{self.total}  {shown}  eta {eta:4.0f}s"
        now = time.perf_counter()
        if self.tty:
            sys.stderr.write("\r" + line[:160].ljust(160))
            sys.stderr.flush()
        elif now - self._last_print > 10 or step + 1 == self.total:
            sys.stderr.write(line + "\n")
            self._last_print = now

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
