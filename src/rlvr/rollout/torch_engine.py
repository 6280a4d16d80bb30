"""Batched sampling with a KV cache for a local causal LM, in plain torch (CPU default, any device).

`TorchEngine` implements the RolloutEngine protocol (base.py) for
  * any transformers causal LM: its forward with `past_key_values` (a DynamicCache), and
  * a fast path for models that offer the native inference API (rlvr.models.native.NativeCausalLM):
        logits, cache = model.prefill(input_ids, attention_mask, capacity, rows=rows)
        logits = model.decode_step(next_ids, cache);  cache = cache.select(rows)
    (rows: the prompt each decoding row continues; without it, one row per prompt)
    The engine only duck-types this API (the rollout package imports nothing from rlvr.models).

How one generate() call runs:
  1. rows = (prompt, sample) pairs, prompt-major; chunks of at most `max_batch_size` rows, and
     with `workers` > 1 at least that many chunks, cut at prompt boundaries where possible.
     Chunks run one after another, or with workers > 1 in that many threads at once, each with one
     intra-op torch thread: the ops of a decode step on this model are too small for torch's
     intra-op parallelism (on 2 CPU cores, 2 threads decoded one batch slower than 1), while
     independent chunks keep both cores busy.
  2. per chunk: the distinct prompts are left-padded and prefilled once, so n samples share one
     prefill; on the native path a prompt's keys and values are then also kept once for all its
     samples while decoding (share_prompt), else they are replicated to one row per sample.
  3. decode in lockstep: sample every running row, record token and log-prob, stop rows on a stop
     id or stop string; finished rows are dropped from the running batch (compacted once enough
     have finished that the copy pays for itself), so they stop costing compute.
Rows of different prompt lengths share cache slots through left padding, with positions counted
per row and padding masked out exactly, so a prompt's results do not depend on the rest of the
batch beyond float rounding.

Sampling: log-probs are log_softmax(logits / T) of the unfiltered logits (T = 1 for greedy),
float32; top-k then top-p (on the renormalised top-k distribution) restrict the support; a token
is drawn by inverting the CDF with one uniform number (Gumbel-max or torch.multinomial draw one
number per vocabulary entry, ~10x slower on CPU for a 1000-token vocabulary). The uniforms are
drawn once per generate() call, one per (row, token index), from a torch.Generator seeded by
SamplingParams.seed: a row's samples do not depend on how the rows are chunked, compacted or
spread over workers (beyond float rounding of the logits).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rlvr.rollout.base import Rollout, SamplingParams

# Compact the running batch once this fraction of its rows has finished. Compaction copies the
# filled cache of the surviving rows, which costs about as much as one or two decode steps.
COMPACT_FRACTION = 0.125


# --------------------------------------------------------------------------------------------
# Sampling (pure functions)
# --------------------------------------------------------------------------------------------


def top_k_top_p_mask(logprobs: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor | None:
    """Boolean (B, V) mask of tokens kept by top-k, then top-p; None when neither filter is on.

    top-k keeps tokens whose log-prob is at least the k-th largest (ties at the border kept).
    top-p keeps the smallest prefix of the tokens sorted by probability (renormalised over the
    top-k survivors) whose mass reaches top_p (Holtzman et al. 2020); the most likely token is
    always kept. Sorting the whole vocabulary is slow on CPU, so the candidates are the top 32,
    widened 4x until their mass reaches top_p in every row.
    """
    V = logprobs.shape[-1]
    keep = None
    if 0 < top_k < V:
        kth = logprobs.topk(top_k, dim=-1).values[:, -1:]
        keep = logprobs >= kth
    if top_p < 1.0:
        probs = logprobs.exp() if keep is None else logprobs.exp().masked_fill(~keep, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
        k = min(V, 32)
        while True:
            values, index = probs.topk(k, dim=-1)  # descending
            cum = values.cumsum(-1)
            if k == V or bool((cum[:, -1] >= top_p).all()):
                break
            k = min(V, 4 * k)
        keep_sorted = (cum - values) < top_p  # mass strictly before the token is below top_p
        nucleus = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, index, keep_sorted)
        keep = nucleus if keep is None else keep & nucleus
    return keep


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row of logits (B, V); return (tokens (B,) int64, logprobs (B,) float32).

    logprobs are those of the drawn tokens under log_softmax(logits / temperature) before any
    filtering (under log_softmax(logits) when temperature == 0, which means greedy argmax).
    uniform (B,) in [0, 1): the numbers that invert each row's CDF; default drawn from generator.
    """
    logits = logits.float()
    if temperature == 0:
        logprobs = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1)
    else:
        logprobs = torch.log_softmax(logits / temperature, dim=-1)
        keep = top_k_top_p_mask(logprobs, top_k, top_p)
        probs = logprobs.exp() if keep is None else logprobs.exp().masked_fill(~keep, 0.0)
        cdf = probs.cumsum(dim=-1)  # (B, V)
        if uniform is None:
            u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype)
        else:
            u = uniform.to(cdf.dtype)[:, None]
        # first index whose cdf exceeds u * total: never a zero-probability token
        tokens = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1)
        tokens = tokens.clamp_(max=logits.shape[-1] - 1)
    chosen = logprobs.gather(-1, tokens[:, None]).squeeze(1)
    return tokens, chosen


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str):
    """(ids (B, T) int64, attention_mask (B, T) int64) with prompts aligned to the right."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, T - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, T - len(p) :] = 1
    return ids.to(device), mask.to(device)


# --------------------------------------------------------------------------------------------
# Model backends: prefill, step, select
# --------------------------------------------------------------------------------------------


class _NativeBackend:
    """Models with prefill / decode_step / cache.select (rlvr.models.native.NativeCausalLM).

    share_prompt: prefill(..., rows=) keeps each prompt's K/V once for all its rows (the model's
    SharedPromptKVCache); otherwise the prompts' caches are replicated to one per row.
    """

    def __init__(self, model: Any, dtype: torch.dtype | None, share_prompt: bool) -> None:
        self.model = model
        self.dtype = dtype
        self.share_prompt = share_prompt

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, capacity: int,
                rows: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Logits (R, V) and state of R rows, row r continuing prompt rows[r] of ids (P, T)."""
        if self.share_prompt:
            return self.model.prefill(ids, mask, capacity, dtype=self.dtype, rows=rows)
        logits, state = self.model.prefill(ids, mask, capacity, dtype=self.dtype)
        return logits.index_select(0, rows), state.select(rows)

    def step(self, next_ids: torch.Tensor, state: Any) -> torch.Tensor:
        return self.model.decode_step(next_ids, state)

    def select(self, state: Any, rows: torch.Tensor) -> Any:
        return state.select(rows)


@dataclass
class _HFState:
    cache: Any  # a transformers Cache, or the legacy tuple of (key, value) per layer
    mask: torch.Tensor  # (B, T) 1 on real tokens, 0 on left padding
    positions: torch.Tensor  # (B,) position of each row's next token


class _HFBackend:
    """Any transformers causal LM, through forward(input_ids, attention_mask, position_ids, cache)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        params = inspect.signature(model.forward).parameters
        self.keep_kw = "logits_to_keep" if "logits_to_keep" in params else None
        if self.keep_kw is None and "num_logits_to_keep" in params:
            self.keep_kw = "num_logits_to_keep"

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, capacity: int,  # noqa: ARG002 - the cache grows
                rows: torch.Tensor) -> tuple[torch.Tensor, _HFState]:
        """As _NativeBackend.prefill: the prompts' caches replicated to one per row (a transformers
        cache grows as it goes, so capacity is not needed)."""
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        extra = {self.keep_kw: 1} if self.keep_kw else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        state = _HFState(out.past_key_values, mask, positions[:, -1] + 1)
        return out.logits[:, -1].index_select(0, rows), self.select(state, rows)

    def step(self, next_ids: torch.Tensor, state: _HFState) -> torch.Tensor:
        state.mask = torch.cat([state.mask, state.mask.new_ones(state.mask.shape[0], 1)], dim=1)
        out = self.model(
            input_ids=next_ids[:, None],
            attention_mask=state.mask,
            position_ids=state.positions[:, None],
            past_key_values=state.cache,
            use_cache=True,
        )
        state.cache = out.past_key_values
        state.positions = state.positions + 1
        return out.logits[:, -1]

    def select(self, state: _HFState, rows: torch.Tensor) -> _HFState:
        cache = state.cache
        if hasattr(cache, "reorder_cache"):
            cache.reorder_cache(rows)  # index_select along the batch: drops or repeats rows
        else:
            cache = tuple(tuple(t.index_select(0, rows) for t in layer) for layer in cache)
        return _HFState(cache, state.mask.index_select(0, rows), state.positions.index_select(0, rows))


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """Outputs of one chunk of rows: tokens and log-probs (R, max_new_tokens), lengths, stop flags."""

    tokens: torch.Tensor
    logprobs: torch.Tensor
    lengths: torch.Tensor
    stopped: torch.Tensor


class TorchEngine:
    """RolloutEngine for a local causal LM held in this process (see the module docstring).

    model: a transformers causal LM or a NativeCausalLM. The engine may hold the learner's own
    module (on CPU this is the intended set-up: no second copy, and load_weights is then a
    no-op); generation runs under torch.inference_mode() with the model in eval mode, and the
    previous train/eval mode is restored afterwards.
    eos_token_ids: ids that always end a completion (SamplingParams.stop_token_ids add to them).
    pad_token_id: filler for left padding (never attended to).
    device: where generation runs; the model is moved there if it lives elsewhere.
    decode_fn: token ids -> text; needed for SamplingParams.stop_strings.
    max_batch_size: rows (prompt samples) in flight at once per worker, to bound KV-cache memory.
    workers: chunks of rows decoded at once in threads of this process (see the module docstring);
    1 decodes them one after another with torch's own thread setting, as before 2026-12-03.
    dtype: decoding precision on the native path (torch.bfloat16 or "bfloat16" for a float32
    model: each generate call decodes from bf16 copies of the current weights, ~2x faster matmuls
    on CPUs with AVX512-BF16, but log-probs then differ from the fp32 learner's by ~0.04 nats per
    token on average); the HF path runs in the model's own dtype. Log-probs are float32 always.
    share_prompt: on the native path, keep each prompt's K/V once for all its samples while
    decoding (rlvr.models.native.SharedPromptKVCache: decode attention scores a prompt's rows
    against its keys together, and compaction copies only generated slots); False replicates
    the prompt's cache to every sample, as before 2026-12-03 (same tokens, log-probs within float
    rounding). None: shared on the native path; the HF path always replicates.
    """

    def __init__(
        self,
        model: Any,
        eos_token_ids: Sequence[int] | int | None,
        pad_token_id: int = 0,
        device: str | torch.device = "cpu",
        decode_fn: Callable[[list[int]], str] | None = None,
        max_batch_size: int | None = None,
        dtype: torch.dtype | str | None = None,
        workers: int = 1,
        share_prompt: bool | None = None,
    ) -> None:
        decode_dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        if dtype is not None and not isinstance(decode_dtype, torch.dtype):
            raise ValueError(f"TorchEngine: dtype {dtype!r} is not a torch dtype (e.g. 'bfloat16')")
        self.device = torch.device(device)
        param = next(model.parameters(), None)
        if param is not None and param.device != self.device:
            model = model.to(self.device)
        self.model = model
        if eos_token_ids is None:
            eos_token_ids = ()
        elif isinstance(eos_token_ids, int):
            eos_token_ids = (eos_token_ids,)
        self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
        self.pad_token_id = int(pad_token_id)
        self.decode_fn = decode_fn
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"TorchEngine: max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        if workers < 1:
            raise ValueError(f"TorchEngine: workers must be >= 1, got {workers}")
        self.workers = int(workers)
        native = all(hasattr(model, name) for name in ("prefill", "decode_step"))
        if not native and decode_dtype is not None:
            raise ValueError("TorchEngine: dtype is only supported for models with the native inference API")
        if not native and share_prompt:
            raise ValueError("TorchEngine: share_prompt needs a model with the native inference API")
        self.backend: _NativeBackend | _HFBackend = (
            _NativeBackend(model, decode_dtype, share_prompt is not False) if native else _HFBackend(model)
        )
        self.last_stats: dict[str, float] = {}

    # ---------------------------------------------------------------- public API

    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Rollout]:
        """len(prompt_ids) * params.n rollouts, ordered by prompt then sample."""
        _check_params(params, self.decode_fn)
        for i, p in enumerate(prompt_ids):
            if len(p) == 0:
                raise ValueError(f"TorchEngine.generate: prompt {i} is empty")
        start = time.perf_counter()
        rows = [(p, s) for p in range(len(prompt_ids)) for s in range(params.n)]
        generator = _generator(params.seed, self.device)
        uniforms = None  # (rows, max_new_tokens): the number that draws each row's k-th token
        if params.temperature > 0 and rows:
            shape = (len(rows), max(params.max_new_tokens, 1))
            uniforms = torch.rand(shape, generator=generator, device=self.device)
        bounds = chunk_bounds(len(prompt_ids), params.n, self.max_batch_size, self.workers)
        stats = {"decode_steps": 0, "row_steps": 0, "prefill_tokens": 0}
        was_training = getattr(self.model, "training", False)
        self.model.eval()

        def run(lo: int, hi: int) -> tuple[_Chunk, dict[str, int]]:
            chunk_stats = dict.fromkeys(stats, 0)
            with torch.inference_mode():  # thread-local: each worker enters it itself
                u = None if uniforms is None else uniforms[lo:hi]
                chunk = self._run_chunk([prompt_ids[p] for p, _ in rows[lo:hi]], params, u, chunk_stats)
                return chunk, chunk_stats

        threads = torch.get_num_threads()
        try:
            if self.workers > 1 and len(bounds) > 1:
                torch.set_num_threads(1)
                with ThreadPoolExecutor(max_workers=min(self.workers, len(bounds))) as pool:
                    outs = list(pool.map(lambda b: run(*b), bounds))
            else:
                outs = [run(lo, hi) for lo, hi in bounds]
        finally:
            torch.set_num_threads(threads)
            self.model.train(was_training)
        rollouts: list[Rollout] = []
        for (lo, hi), (out, chunk_stats) in zip(bounds, outs):
            rollouts.extend(_to_rollouts(rows[lo:hi], prompt_ids, out))
            for key, value in chunk_stats.items():
                stats[key] += value
        seconds = time.perf_counter() - start
        tokens = sum(len(r.token_ids) for r in rollouts)
        self.last_stats = {
            "completion_tokens": tokens,
            "prompt_tokens": sum(len(prompt_ids[r.prompt_index]) for r in rollouts),
            "rollouts": len(rollouts),
            "seconds": seconds,
            "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
            **stats,
        }
        return rollouts

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Copy the learner's weights (HF names) into the engine's model.

        Tensors that already share storage with the engine's (the engine holds the learner's own
        module) are skipped, so that set-up costs nothing. Unknown names, or engine weights that no
        incoming tensor covers, raise KeyError.
        """
        own = self.model.state_dict()
        unknown = sorted(set(state_dict) - set(own))
        if unknown:
            raise KeyError(f"TorchEngine.load_weights: names the engine's model does not have: {unknown[:8]}")
        covered = set()
        with torch.no_grad():
            for name, tensor in state_dict.items():
                target = own[name]
                if target.data_ptr() != tensor.data_ptr() or target.device != tensor.device:
                    if target.shape != tensor.shape:
                        raise ValueError(
                            f"TorchEngine.load_weights: {name} has shape {tuple(tensor.shape)}, "
                            f"the engine's model expects {tuple(target.shape)}"
                        )
                    target.copy_(tensor)
                covered.add(target.data_ptr())
        missing = sorted(n for n, t in own.items() if t.data_ptr() not in covered)
        if missing:
            raise KeyError(f"TorchEngine.load_weights: no incoming weights for {missing[:8]}")

    # ---------------------------------------------------------------- generation

    def _run_chunk(
        self, prompts: list[Sequence[int]], params: SamplingParams, uniforms: torch.Tensor | None, stats: dict
    ) -> _Chunk:
        """Generate one completion per entry of prompts (equal entries share one prefill); uniforms
        (R, max_new_tokens) draw the tokens (None for greedy)."""
        R, max_new = len(prompts), params.max_new_tokens
        out = _Chunk(
            tokens=torch.full((R, max(max_new, 1)), self.pad_token_id, dtype=torch.long, device=self.device),
            logprobs=torch.zeros((R, max(max_new, 1)), dtype=torch.float32, device=self.device),
            lengths=torch.full((R,), max_new, dtype=torch.long, device=self.device),
            stopped=torch.zeros(R, dtype=torch.bool, device=self.device),
        )
        if max_new == 0:
            return out
        distinct: dict[tuple[int, ...], int] = {}
        row_prompt = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
        ids, mask = left_pad(list(distinct), self.pad_token_id, self.device)
        stats["prefill_tokens"] += int(mask.sum())
        expand = torch.as_tensor(row_prompt, dtype=torch.long, device=self.device)
        logits, state = self.backend.prefill(ids, mask, ids.shape[1] + max_new, expand)

        stop_ids = torch.as_tensor(
            sorted(set(self.eos_token_ids) | set(params.stop_token_ids)), dtype=torch.long, device=self.device
        )
        row_ids = torch.arange(R, device=self.device)  # chunk row of each running batch row
        alive = torch.ones(R, dtype=torch.bool, device=self.device)
        for step in range(max_new):
            u = None if uniforms is None else uniforms[row_ids, step]
            tokens, logprobs = sample_tokens(logits, params.temperature, params.top_k, params.top_p,
                                             uniform=u)
            out.tokens[row_ids, step] = tokens
            out.logprobs[row_ids, step] = logprobs
            hit = torch.isin(tokens, stop_ids) & alive
            if params.stop_strings:
                hit |= self._stop_string_hits(out.tokens, row_ids, alive, step, params.stop_strings)
            if bool(hit.any()):
                finished = row_ids[hit]
                out.lengths[finished] = step + 1
                out.stopped[finished] = True
                alive &= ~hit
            n_alive = int(alive.sum())
            if n_alive == 0 or step == max_new - 1:
                break
            if alive.shape[0] - n_alive >= max(1, math.ceil(COMPACT_FRACTION * alive.shape[0])):
                keep = alive.nonzero().squeeze(1)
                state = self.backend.select(state, keep)
                row_ids, tokens, alive = row_ids[keep], tokens[keep], alive[keep]
            logits = self.backend.step(tokens, state)
            stats["decode_steps"] += 1
            stats["row_steps"] += int(alive.shape[0])
        return out

    def _stop_string_hits(
        self, tokens: torch.Tensor, row_ids: torch.Tensor, alive: torch.Tensor, step: int,
        stops: tuple[str, ...],
    ) -> torch.Tensor:
        """Running rows whose newest token completes one of the stop strings.

        Only the last len(longest stop string) + 1 tokens are decoded: a token is at least one
        character, so that window holds any occurrence that ends in the newest token (earlier
        occurrences would have stopped the row before).
        """
        assert self.decode_fn is not None
        window = max(len(s) for s in stops) + 1
        lo = max(0, step + 1 - window)
        recent = tokens[row_ids, lo : step + 1].tolist()
        flags = [
            bool(is_alive) and any(s in self.decode_fn(ids) for s in stops)
            for ids, is_alive in zip(recent, alive.tolist())
        ]
        return torch.tensor(flags, dtype=torch.bool, device=alive.device)


def chunk_bounds(n_prompts: int, n: int, max_batch_size: int | None, workers: int) -> list[tuple[int, int]]:
    """[lo, hi) row ranges of the chunks for n_prompts x n rows (prompt-major).

    At most max_batch_size rows each; with workers > 1 at least `workers` chunks (when there are
    that many rows), cut at prompt boundaries when there are at least `workers` prompts so that
    a prompt's samples share one prefill. E.g. 8 prompts x 16 samples, 2 workers: rows [0, 64)
    and [64, 128).
    """
    total = n_prompts * n
    if total == 0:
        return []
    size = min(max_batch_size or total, total)
    if workers > 1:
        if n_prompts >= workers:
            size = min(size, math.ceil(n_prompts / workers) * n)
        else:
            size = min(size, math.ceil(total / workers))
    return [(lo, min(lo + size, total)) for lo in range(0, total, size)]


def _check_params(params: SamplingParams, decode_fn: Callable | None) -> None:
    problems = []
    if params.n < 1:
        problems.append(f"n must be >= 1, got {params.n}")
    if params.temperature < 0:
        problems.append(f"temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {params.top_p}")
    if params.top_k < 0:
        problems.append(f"top_k must be >= 0, got {params.top_k}")
    if params.max_new_tokens < 0:
        problems.append(f"max_new_tokens must be >= 0, got {params.max_new_tokens}")
    if params.stop_strings and decode_fn is None:
        problems.append("stop_strings need the engine's decode_fn (TorchEngine(..., decode_fn=...))")
    if problems:
        raise ValueError("SamplingParams: " + "; ".join(problems))


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator seeded by seed, or by the global torch RNG (so torch.manual_seed applies)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    return torch.Generator(device=device).manual_seed(seed)


def _to_rollouts(rows: list[tuple[int, int]], prompt_ids: Sequence[Sequence[int]],
                 out: _Chunk) -> list[Rollout]:
    lengths, stopped = out.lengths.tolist(), out.stopped.tolist()
    tokens, logprobs = out.tokens.cpu().tolist(), out.logprobs.cpu().tolist()
    rollouts = []
    for r, (p, s) in enumerate(rows):
        n = lengths[r]
        reason: Literal["stop", "length"] = "stop" if stopped[r] else "length"
        rollouts.append(
            Rollout(
                prompt_index=p,
                prompt_ids=list(prompt_ids[p]),
                token_ids=tokens[r][:n],
                logprobs=logprobs[r][:n],
                finish_reason=reason,
                metadata={"sample_index": s},
            )
        )
    return rollouts


__all__ = ["COMPACT_FRACTION", "TorchEngine", "chunk_bounds", "left_pad", "sample_tokens", "top_k_top_p_mask"]
