"""Cold-start supervised fine-tuning: one readable loop.

Data: SFTExamples, token ids with a per-token `trained` flag: a task's solver trace is a prompt
(context) and a completion (trained); a conversation from sft.train_file trains its assistant
turns only (rlvr.data.conversations). Sequences longer than sft.max_seq_len are cut (truncate);
the share of cut ones is logged as sft/truncated_fraction.

Loss: mean negative log-likelihood over trained tokens only (the rest is context).
Sequences are packed several to a row (segment-aware attention, positions restart per sequence)
when the model is rlvr's native implementation, so no padding token is computed on; with a plain
transformers model rows are right-padded and padding is masked out of the loss. Linear warm-up,
cosine decay; gradient accumulation over micro-batches of `micro_batch_tokens`; atomic
checkpoints; resume from the newest checkpoint of the run directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlvr.algorithms import token_logprobs_from_logits
from rlvr.config import CheckpointConfig, LoggingConfig, SFTConfig
from rlvr.trainers import checkpoint as ckpt
from rlvr.trainers import metric_names as M
from rlvr.trainers.common import (
    MetricsLogger,
    Progress,
    autocast_context,
    build_batch,
    forward_logits,
    lr_at,
    micro_batches,
    pack_rows,
    set_lr,
    trainable_parameters,
)


@dataclass(frozen=True)
class SFTExample:
    """One SFT sequence: token ids and, per token, whether predicting it is trained."""

    ids: list[int]
    trained: list[bool]
    truncated: bool = False
    """Cut at sft.max_seq_len (its tail is not trained)."""

    @classmethod
    def from_pair(cls, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> SFTExample:
        return cls(list(prompt_ids) + list(completion_ids),
                   [False] * len(prompt_ids) + [True] * len(completion_ids))

    @property
    def targets(self) -> int:
        """Tokens the loss is on (the first token of a sequence has nothing to predict it from)."""
        return sum(self.trained[1:])


def truncate(examples: Sequence[SFTExample], max_len: int) -> tuple[list[SFTExample], int]:
    """Cut sequences longer than max_len tokens to their first max_len; drop those left with no
    trained token (a prompt that fills max_len). Returns (kept examples, number dropped)."""
    kept, dropped = [], 0
    for ex in examples:
        if len(ex.ids) > max_len:
            ex = SFTExample(ex.ids[:max_len], ex.trained[:max_len], truncated=True)
        if ex.targets == 0:
            dropped += 1
            continue
        kept.append(ex)
    return kept, dropped


def step_indices(step: int, batch_size: int, n_examples: int, seed: int) -> np.ndarray:
    """Example indices of `step`: consecutive slices of a per-epoch permutation (a pure function of step)."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_examples)
        perm = np.random.default_rng([seed, epoch]).permutation(n_examples)
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return np.asarray(out)


def layout(lengths: Sequence[int], token_budget: int, packed: bool) -> list[list[list[int]]]:
    """Micro-batches, each a list of rows, each a list of sequence indices."""
    if not packed:
        return [[[i] for i in mb] for mb in micro_batches(lengths, token_budget)]
    rows = pack_rows(lengths, row_tokens=max(lengths))
    row_width = [sum(lengths[i] for i in row) for row in rows]
    groups = micro_batches(row_width, token_budget)
    return [[rows[r] for r in group] for group in groups]


def sft_loss(model: torch.nn.Module, sequences: Sequence[Sequence[int]], starts: Sequence[int],
             rows: list[list[int]], device: torch.device, packed: bool,
             autocast: str = "none",
             trained: Sequence[Sequence[bool]] | None = None) -> tuple[torch.Tensor, int]:
    """Summed NLL of the completion tokens of `sequences` laid out in `rows`, and their count
    (trained: the per-token targets instead of the completions after `starts`)."""
    batch = build_batch(sequences, starts, rows, trained)
    with autocast_context(device, autocast):
        logits = forward_logits(model, batch, device, packed)  # (R, L, V)
    logp = token_logprobs_from_logits(logits, batch.target_ids.to(device))  # (R, L)
    mask = batch.loss_mask.to(device)
    return -(logp * mask).sum(), int(mask.sum().item())


@dataclass
class SFTRun:
    """One SFT stage: the model and its tokenizer (saved with each checkpoint), where it runs and
    writes. packed: rlvr's native model (packed rows). eval_fn(done) -> metrics, every
    sft.eval_every steps (not after the last): logged on that step's row."""

    model: torch.nn.Module
    tokenizer: Any
    run_dir: Path
    logger: MetricsLogger
    device: torch.device
    packed: bool
    seed: int
    eval_fn: Callable[[int], dict[str, float]] | None = None


def train_sft(run: SFTRun, examples: Sequence[SFTExample], cfg: SFTConfig, checkpoint: CheckpointConfig,
              logging: LoggingConfig) -> dict[str, float]:
    """Train on `examples` for cfg.steps optimizer steps; returns the last metrics."""
    model, logger = run.model, run.logger
    stage_dir = Path(run.run_dir) / "checkpoints" / "sft"
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr,
                                  betas=(cfg.adam_betas[0], cfg.adam_betas[1]),
                                  weight_decay=cfg.weight_decay)
    start_step = resume_sft(stage_dir, model, optimizer)
    logger.truncate_after("sft", start_step)  # rows logged after the checkpoint (or before the first) go
    if start_step >= cfg.steps:
        return {}
    model.train()
    bar = Progress("sft", cfg.steps, enabled=logging.progress, start=start_step)
    last: dict[str, float] = {}
    for step in range(start_step, cfg.steps):
        last = sft_step(model, optimizer, examples, cfg, step, run.seed, run.device, run.packed)
        done = step + 1
        if run.eval_fn is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            model.eval()
            last.update(run.eval_fn(done))
            model.train()
        logger.log(last)
        bar.update(step, loss=last[M.SFT_LOSS], lr=last[M.SFT_LR], tok_s=float(int(last[M.SFT_TOKENS_PER_S])))
        if (checkpoint.every and done % checkpoint.every == 0) or done == cfg.steps:
            ckpt.save_checkpoint(stage_dir, done, model, run.tokenizer, {"optimizer": optimizer.state_dict()},
                                 checkpoint.keep_last, checkpoint.merge_lora)
    bar.close()
    model.eval()
    return last


def resume_sft(stage_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load the newest SFT checkpoint (weights, optimizer, RNG) when there is one; returns its step
    (0: none)."""
    latest = ckpt.latest_checkpoint(stage_dir)
    if latest is None:
        return 0
    state = ckpt.load_checkpoint(latest, model, model.config)
    optimizer.load_state_dict(state["optimizer"])
    print(f"[rlvr] resuming SFT from {latest}", flush=True)
    return int(state["step"])


def sft_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, examples: Sequence[SFTExample],
             cfg: SFTConfig, step: int, seed: int, device: torch.device, packed: bool) -> dict[str, Any]:
    """One optimizer step on step `step`'s batch (step_indices), accumulated over token-budget
    micro-batches; returns its metrics row. A non-finite gradient norm skips the update."""
    t0 = time.perf_counter()
    lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, "cosine", cfg.min_lr_ratio)
    set_lr(optimizer, lr)
    chosen = [examples[i] for i in step_indices(step, cfg.batch_size, len(examples), seed)]
    sequences = [ex.ids for ex in chosen]
    trained = [ex.trained for ex in chosen]
    micro = layout([len(s) for s in sequences], cfg.micro_batch_tokens, packed)
    n_tokens = sum(ex.targets for ex in chosen)
    total_loss = 0.0
    for rows in micro:
        loss_sum, _ = sft_loss(model, sequences, [0] * len(chosen), rows, device, packed, cfg.autocast,
                               trained)
        (loss_sum / n_tokens).backward()
        total_loss += loss_sum.item()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
    if torch.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    return {
        "phase": "sft", "step": step + 1, M.SFT_LOSS: total_loss / n_tokens, M.SFT_LR: lr,
        M.SFT_GRAD_NORM: float(grad_norm), M.SFT_TOKENS_PER_S: sum(map(len, sequences)) / seconds,
        M.SFT_COMPLETION_TOKENS: n_tokens,
        M.SFT_TRUNCATED_FRACTION: sum(ex.truncated for ex in chosen) / len(chosen),
        M.TIMING_STEP: seconds,
    }
