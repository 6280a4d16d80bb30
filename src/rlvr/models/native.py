"""A compact pure-torch Qwen2 / Llama decoder with the Hugging Face parameter names.

Why: RL on a CPU is bounded by how fast the policy samples and trains. This module reproduces
`Qwen2ForCausalLM` / `LlamaForCausalLM` exactly (RMSNorm, rotary embeddings with `rope_theta`,
grouped-query attention, SwiGLU MLP, tied or untied lm_head) in a few hundred lines, with a
training forward that supports sequence packing (no compute spent on padding) and a decode path
built for rollouts: a preallocated KV cache whose rows can be replicated (n samples share one
prefill) or dropped (finished rows stop costing compute), fused projections, few ops per step,
and optional bf16 copies of the weights for decoding (bf16 matmuls are ~2x faster on CPUs with
AVX512-BF16 or AMX). Its `state_dict()` keys equal the HF ones
(`model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.weight`, ..., `model.norm.weight`,
`lm_head.weight`), so weights move between the two unchanged and `save_pretrained` writes a
checkpoint that `transformers.AutoModelForCausalLM.from_pretrained` loads.

Architecture (Qwen2 technical report; Llama 2 paper), per layer, for hidden states x (B, T, H):
    h = x + o_proj(attention(rope(q_proj(rms(x))), rope(k_proj(rms(x))), v_proj(rms(x))))
    y = h + down_proj(silu(gate_proj(rms(h))) * up_proj(rms(h)))
    rms(x) = weight * x / sqrt(mean(x^2) + eps)
    rope(x)[p] = x * cos(p * inv_freq) + rotate_half(x) * sin(p * inv_freq),
    inv_freq_i = rope_theta^(-2i / head_dim)  (RoFormer, Su et al. 2021)
Qwen2 has biases on q/k/v only; Llama has them on q/k/v/o when `attention_bias` and on the MLP
when `mlp_bias`. Configs this file does not reproduce exactly (RoPE scaling, sliding windows,
other architectures) are refused by `is_supported`; callers then use the HF model.

Inference API (used by rlvr.rollout.torch_engine):
    logits, cache = model.prefill(input_ids, attention_mask, capacity)   # left-padded prompts
    logits = model.decode_step(next_ids, cache)                           # one token per row
    cache = cache.select(rows)             # drop finished rows, or repeat rows for n samples
    logits, cache = model.prefill(ids, mask, capacity, rows=rows)  # rows continuing shared prompts:
                                           # each prompt's K/V kept once (SharedPromptKVCache)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

# transformers is imported inside the few functions that convert to or from it: the native model
# runs without it (start-up time of rollout workers and learner ranks).

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")
_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
# enable_gqa in scaled_dot_product_attention appeared in torch 2.5; older torch repeats K/V heads.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def as_hf_config(config: Any) -> Any:
    """An HF `PretrainedConfig` from a config object or a plain dict (model_type defaults to qwen2).

    A dict goes through `AutoConfig.for_model`, so omitted fields take the HF defaults of that
    architecture (e.g. Qwen2Config's num_key_value_heads defaults to 32, not to the head count).
    """
    if isinstance(config, Mapping):
        from transformers import AutoConfig

        fields = dict(config)
        model_type = fields.pop("model_type", "qwen2")
        return AutoConfig.for_model(model_type, **fields)
    return config


def _rope_settings(config: Any) -> tuple[float, str, float | None]:
    """(rope_theta, rope_type, partial_rotary_factor) for transformers 4.x and 5.x config layouts."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type")) or scaling.get("rope_type", scaling.get("type"))
    partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))
    return float(theta), rope_type or "default", partial


def is_supported(config: Any) -> tuple[bool, str]:
    """Whether NativeCausalLM reproduces this config exactly; the reason when it does not."""
    try:
        config = as_hf_config(config)
    except (ValueError, KeyError) as exc:
        return False, f"cannot build a transformers config: {exc}"
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return False, f"model_type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES}"
    if getattr(config, "hidden_act", "silu") not in ("silu", "swish"):
        return False, f"hidden_act {config.hidden_act!r} is not silu"
    _, rope_type, partial = _rope_settings(config)
    if rope_type != "default":
        return False, f"RoPE scaling {rope_type!r} is not implemented (only plain RoPE)"
    if partial not in (None, 1.0):
        return False, f"partial_rotary_factor {partial} is not implemented"
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return False, "sliding-window attention layers are not implemented"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return False, "sliding-window attention is not implemented"
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    if heads % kv_heads:
        return False, f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
    if _head_dim(config) % 2:
        return False, f"head_dim {_head_dim(config)} is odd"
    return True, "ok"


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@dataclass(frozen=True)
class Arch:
    """The sizes and switches the native model needs, resolved once from an HF config."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    pad_token_id: int | None
    attention_dropout: float
    initializer_range: float

    @classmethod
    def from_config(cls, config: Any) -> Arch:
        ok, reason = is_supported(config)
        if not ok:
            raise ValueError(f"NativeCausalLM cannot reproduce this config: {reason}; use the HF model")
        model_type = config.model_type
        attention_bias = bool(getattr(config, "attention_bias", False))
        pad = getattr(config, "pad_token_id", None)
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads or config.num_attention_heads,
            head_dim=_head_dim(config),
            rms_norm_eps=float(config.rms_norm_eps),
            rope_theta=_rope_settings(config)[0],
            # Qwen2 always has q/k/v biases and no o_proj bias; Llama switches all four together.
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type == "llama" and attention_bias,
            mlp_bias=model_type == "llama" and bool(getattr(config, "mlp_bias", False)),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            pad_token_id=pad if isinstance(pad, int) and 0 <= pad < config.vocab_size else None,
            attention_dropout=float(getattr(config, "attention_dropout", 0.0) or 0.0),
            initializer_range=float(getattr(config, "initializer_range", 0.02)),
        )


# --------------------------------------------------------------------------------------------
# Modules (names mirror transformers' Qwen2/Llama modules so state_dict keys match)
# --------------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) over the last dim, normalised in float32 as HF does."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    # HF casts the normalised activations back to x's dtype before multiplying by the weight
    return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, arch: Arch) -> None:
        super().__init__()
        a = arch
        self.q_proj = nn.Linear(a.hidden_size, a.num_heads * a.head_dim, bias=a.qkv_bias)
        self.k_proj = nn.Linear(a.hidden_size, a.num_kv_heads * a.head_dim, bias=a.qkv_bias)
        self.v_proj = nn.Linear(a.hidden_size, a.num_kv_heads * a.head_dim, bias=a.qkv_bias)
        self.o_proj = nn.Linear(a.num_heads * a.head_dim, a.hidden_size, bias=a.o_bias)


class MLP(nn.Module):
    def __init__(self, arch: Arch) -> None:
        super().__init__()
        h, i, bias = arch.hidden_size, arch.intermediate_size, arch.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.self_attn = Attention(arch)
        self.mlp = MLP(arch)
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)


class Backbone(nn.Module):
    """Registered as `model` so that keys read `model.layers.{i}...` as in HF checkpoints."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size, padding_idx=arch.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(arch) for _ in range(arch.num_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)


# --------------------------------------------------------------------------------------------
# Rotary embeddings and masks (pure functions)
# --------------------------------------------------------------------------------------------


def rope_inv_freq(head_dim: int, theta: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """inv_freq_i = theta^(-2i / head_dim), i < head_dim / 2, float32 (computed as HF does)."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta**exponent)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (*positions.shape, head_dim): angles in float32, then cast (as HF)."""
    freqs = positions[..., None].float() * inv_freq  # (..., head_dim/2)
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def packed_position_ids(segment_ids: torch.Tensor) -> torch.Tensor:
    """Positions that restart at 0 at every segment start: (B, T) int64.

    A segment starts where the id differs from the previous token's (or at t = 0); e.g.
    segment_ids [1 1 1 2 2 0 0] -> positions [0 1 2 0 1 0 1].
    """
    t = torch.arange(segment_ids.shape[1], device=segment_ids.device).expand_as(segment_ids)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start_index = torch.where(starts, t, torch.zeros_like(t)).cummax(dim=1).values
    return t - start_index


def packed_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: query t sees key s iff s <= t and both lie in the same segment.

    The diagonal is always allowed, so no query row is fully masked (a fully masked row would give
    NaN in softmax, and NaN times a zero weight still poisons later layers).
    """
    T = segment_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    return (same & causal)[:, None]


def _rotary_qkv(attn: Attention, a: Arch, h: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k (rotated) and v of normed hidden states h (B, T, H): (B, heads, T, head_dim) each."""
    B, T, _ = h.shape
    q = attn.q_proj(h).view(B, T, a.num_heads, a.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(B, T, a.num_kv_heads, a.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(B, T, a.num_kv_heads, a.head_dim).transpose(1, 2)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float):
    """SDPA with grouped-query heads: q (B, Hq, T, d), k/v (B, Hkv, S, d).

    With a gradient, bf16 and a CPU, the attention is written out as matmuls and a softmax instead:
    the fused CPU kernel's bf16 backward is slow (slower than its own fp32 one). kk-tiny SFT shapes
    (2 threads, 4 heads of 32, rows of 240-400 tokens): forward + backward 36 ms instead of 54 ms.
    """
    if q.device.type == "cpu" and q.requires_grad and not dropout and _bf16(q):
        return _attend_matmul(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    if mask is None:
        kwargs: dict[str, Any] = {"is_causal": True}
    else:
        kwargs = {"attn_mask": mask}
    if q.shape[1] != k.shape[1]:
        if _SDPA_HAS_GQA:
            kwargs["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, **kwargs)


def _bf16(q: torch.Tensor) -> bool:
    """Whether attention on q runs in bf16: q is bf16, or CPU autocast to bf16 is on (under autocast
    the rotary embedding leaves q in float32, and SDPA would cast it)."""
    if q.dtype == torch.bfloat16:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _attend_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: torch.Tensor | None) -> torch.Tensor:
    """_attend as explicit matmuls: mask (B, 1, T, S) bool or None (causal, T == S)."""
    B, Hq, T, d = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    rep = Hq // Hkv
    # Query heads that share a K/V head are stacked along T, so K and V are never repeated.
    scores = torch.matmul(q.reshape(B, Hkv, rep * T, d), k.transpose(-1, -2)).view(B, Hkv, rep, T, S)
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    else:
        mask = mask[:, :, None]  # (B, 1, 1, T, S): the same for every head
    scores = (scores * d**-0.5).masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(B, Hkv, rep * T, S)
    return torch.matmul(probs, v).view(B, Hq, T, d)


def _decode_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One decode step's attention: q (B, Hkv, rep, d) over k/v (B, Hkv, S, d), bias (B, 1, 1, S).

    In float32 two batched matmuls and a softmax beat the fused CPU kernel, which is built for long
    queries: on 2 cores, 128 rows x 250 keys of the kk-tiny model, 1.25 ms instead of 1.8 ms
    (bench: ~30% of all decode-attention time). In bf16 the fused kernel is as fast or faster.
    """
    if q.dtype != torch.float32:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5).add_(bias)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


# --------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------


@dataclass
class KVCache:
    """Preallocated keys/values for a batch of left-padded rows that advance in lockstep.

    keys[i], values[i]: (B, Hkv, capacity, d) for layer i; slots [0, length) are filled.
    key_bias: (B, 1, 1, capacity) additive attention bias: -inf on a row's left padding, else 0.
    positions: (B,) int64 rotary position of each row's next token (its own count of real tokens,
    so a row's results do not depend on how much padding the batch gave it).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    key_bias: torch.Tensor
    positions: torch.Tensor
    length: int
    weights: _DecodeWeights
    rope: torch.Tensor  # (capacity, 2, d): cos and signed sin per position, see _rope_table

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    @property
    def capacity(self) -> int:
        return self.key_bias.shape[-1]

    def attend(self, layer: int, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Write the new token's key and value at slot `length` of layer `layer`; return its
        attention over the filled slots, (B, Hkv, rep, d).

        qk (B, Hq + Hkv, d): the token's rotated query heads, then its key heads; v (B, Hkv, d).
        """
        slot, (B, Hkv, _, d) = self.length, self.keys[layer].shape
        self.keys[layer].select(2, slot).copy_(qk[:, -Hkv:])
        self.values[layer].select(2, slot).copy_(v)
        q = qk[:, :-Hkv].view(B, Hkv, -1, d)
        keys, values = self.keys[layer][:, :, : slot + 1], self.values[layer][:, :, : slot + 1]
        return _decode_attend(q, keys, values, self.key_bias[..., : slot + 1])

    def select(self, rows: torch.Tensor) -> KVCache:
        """A new cache holding `rows` (int64 indices, repeats allowed) of this one, in that order.

        Copies only the filled slots; use it to drop finished rows or to give each of n samples
        its own copy of a prompt's prefill.
        """
        rows = rows.to(self.positions.device)
        n, used = rows.shape[0], self.length

        def take(buf: torch.Tensor) -> torch.Tensor:
            out = buf.new_empty((n, *buf.shape[1:]))
            out[:, :, :used] = buf[:, :, :used].index_select(0, rows)
            return out

        bias = self.key_bias.index_select(0, rows)
        return KVCache(
            keys=[take(k) for k in self.keys],
            values=[take(v) for v in self.values],
            key_bias=bias,
            positions=self.positions.index_select(0, rows),
            length=used,
            weights=self.weights,
            rope=self.rope,
        )


@dataclass
class SharedPromptKVCache:
    """A KV cache for rows that continue a few shared prompts (a group's n samples): each prompt's
    keys and values are stored once, each row's generated ones on their own.

    prompt_keys[i], prompt_values[i]: (P, Hkv, Tp, d) of the left-padded prompts, layer i;
    prompt_bias: (P * Hkv, 1, Tp) additive bias, -inf on a prompt's left padding;
    keys[i], values[i]: (B, Hkv, capacity, d) of the generated tokens; slots [0, length) filled;
    row_prompt: (B,) the prompt each row continues; positions: (B,) rotary position of each row's
    next token. weights: the decode weights with the query rows scaled by head_dim^-0.5, so no
    score is scaled per step.

    Decode attention (attend): the queries of all rows of a prompt are gathered into one matrix,
    (G * rep, d) for each prompt and K/V head (G: most rows any prompt has), and scored against
    the prompt's keys in one batched matmul; each row's own generated keys are scored as usual;
    one softmax runs over both parts, and the output adds both parts' values. Compared with
    KVCache this reads each prompt's K/V once per step instead of once per row, and replicating
    or dropping rows (select) copies only the generated slots.
    """

    prompt_keys: list[torch.Tensor]
    prompt_values: list[torch.Tensor]
    prompt_bias: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    row_prompt: torch.Tensor
    positions: torch.Tensor
    length: int
    weights: _DecodeWeights
    rope: torch.Tensor  # (positions, 2, d): cos and signed sin per position, see _rope_table
    grid: _PromptGrid

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    @property
    def capacity(self) -> int:
        """Slots for generated tokens."""
        return self.keys[0].shape[2]

    def attend(self, layer: int, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """As KVCache.attend; the queries in qk are pre-scaled by head_dim^-0.5 (see weights)."""
        slot, grid = self.length, self.grid
        (B, Hkv, _, d), heads = self.keys[layer].shape, qk.shape[1]
        rep = (heads - Hkv) // Hkv
        self.keys[layer].select(2, slot).copy_(qk[:, -Hkv:])
        self.values[layer].select(2, slot).copy_(v)
        q = qk[:, :-Hkv].view(B, Hkv, rep, d)
        keys, values = self.keys[layer][:, :, : slot + 1], self.values[layer][:, :, : slot + 1]
        prompt_keys, prompt_values = self.prompt_keys[layer], self.prompt_values[layer]
        P, _, Tp, _ = prompt_keys.shape
        # each (prompt, kv head) the queries of its rows: (P * Hkv, G * rep, d)
        q_grid = qk.view(B * heads, d).index_select(0, grid.qk_to_grid).view(P * Hkv, -1, d)
        prompt_keys_t = prompt_keys.view(P * Hkv, Tp, d).transpose(1, 2)
        prompt_scores = torch.baddbmm(self.prompt_bias, q_grid, prompt_keys_t)  # (P * Hkv, G * rep, Tp)
        prompt_scores = prompt_scores.view(-1, Tp).index_select(0, grid.from_grid).view(B, Hkv, rep, Tp)
        scores = torch.cat([prompt_scores, torch.matmul(q, keys.transpose(-1, -2))], dim=-1)
        probs = torch.softmax(scores, dim=-1).view(B * Hkv * rep, -1)  # (B * Hkv * rep, Tp + slot + 1)
        p_grid = probs[:, :Tp].index_select(0, grid.to_grid).view(P * Hkv, -1, Tp)
        out = torch.bmm(p_grid, prompt_values.view(P * Hkv, Tp, d)).view(-1, d)
        out = out.index_select(0, grid.from_grid)  # (B * Hkv * rep, d)
        own = probs[:, Tp:].view(B * Hkv, rep, slot + 1)
        return torch.baddbmm(out.view(B * Hkv, rep, d), own, values.flatten(0, 1)).view(B, Hkv, rep, d)

    def select(self, rows: torch.Tensor) -> SharedPromptKVCache:
        """A new cache holding `rows` (int64 indices, repeats allowed) of this one, in that order;
        prompts no row continues are dropped. Copies only the generated slots."""
        rows = rows.to(self.positions.device)
        n, used = rows.shape[0], self.length
        row_prompt = self.row_prompt.index_select(0, rows)
        present, row_prompt = torch.unique(row_prompt, sorted=True, return_inverse=True)
        prompt_keys, prompt_values, prompt_bias = self.prompt_keys, self.prompt_values, self.prompt_bias
        if present.shape[0] < self.prompt_keys[0].shape[0]:
            prompt_keys = [k.index_select(0, present) for k in prompt_keys]
            prompt_values = [v.index_select(0, present) for v in prompt_values]
            Hkv = prompt_keys[0].shape[1]
            prompt_bias = prompt_bias.view(-1, Hkv, 1, prompt_bias.shape[-1]).index_select(0, present)
            prompt_bias = prompt_bias.view(-1, 1, prompt_bias.shape[-1])

        def take(buf: torch.Tensor) -> torch.Tensor:
            out = buf.new_empty((n, *buf.shape[1:]))
            out[:, :, :used] = buf[:, :, :used].index_select(0, rows)
            return out

        return SharedPromptKVCache(
            prompt_keys=prompt_keys,
            prompt_values=prompt_values,
            prompt_bias=prompt_bias,
            keys=[take(k) for k in self.keys],
            values=[take(v) for v in self.values],
            row_prompt=row_prompt,
            positions=self.positions.index_select(0, rows),
            length=used,
            weights=self.weights,
            rope=self.rope,
            grid=_PromptGrid.build(row_prompt, present.shape[0], prompt_keys[0].shape[1], self.grid.rep),
        )


@dataclass(frozen=True)
class _PromptGrid:
    """Where each row's queries sit when a prompt's rows are scored together (SharedPromptKVCache).

    Query rows are indexed (row, kv head, j) with j < rep, flat r * Hkv * rep + h * rep + j; grid
    rows (prompt, kv head, g, j), g < G the row's rank among its prompt's rows, flat
    ((p * Hkv + h) * G + g) * rep + j. to_grid[grid row] is the query row placed there (empty
    places repeat query row h * rep + j: finite values that nothing reads); from_grid[query row]
    is its grid row; qk_to_grid is to_grid in rows of decode_step's (B * (Hq + Hkv), d) q/k heads.
    """

    to_grid: torch.Tensor
    from_grid: torch.Tensor
    qk_to_grid: torch.Tensor
    rep: int

    @classmethod
    def build(cls, row_prompt: torch.Tensor, num_prompts: int, kv_heads: int, rep: int) -> _PromptGrid:
        prompts = row_prompt.tolist()
        rank, counts = [], [0] * num_prompts
        for p in prompts:
            rank.append(counts[p])
            counts[p] += 1
        G = max(counts)
        hj = [(h, j) for h in range(kv_heads) for j in range(rep)]
        to_grid = [0] * (num_prompts * kv_heads * G * rep)
        for p in range(num_prompts):
            for h, j in hj:
                for g in range(G):
                    to_grid[((p * kv_heads + h) * G + g) * rep + j] = h * rep + j
        from_grid = []
        for r, (p, g) in enumerate(zip(prompts, rank)):
            for h, j in hj:
                place = ((p * kv_heads + h) * G + g) * rep + j
                to_grid[place] = (r * kv_heads + h) * rep + j
                from_grid.append(place)
        heads = kv_heads * (rep + 1)  # query heads, then key heads, per row of qk
        qk_to_grid = [(i // (kv_heads * rep)) * heads + i % (kv_heads * rep) for i in to_grid]
        device = row_prompt.device
        return cls(to_grid=torch.tensor(to_grid, device=device),
                   from_grid=torch.tensor(from_grid, device=device),
                   qk_to_grid=torch.tensor(qk_to_grid, device=device), rep=rep)


def adapted_weight(linear: nn.Module) -> torch.Tensor:
    """The weight a Linear layer applies. A LoRA layer injected by peft (model.lora) keeps the frozen
    weight in `base_layer` and adds each active adapter's (alpha / r) B A; decoding from fused
    weights must add them too, or it would sample from the base model."""
    base: Any = getattr(linear, "base_layer", None)
    if base is None:
        return cast(torch.Tensor, linear.weight)
    weight: torch.Tensor = base.weight
    if getattr(linear, "merged", False) or getattr(linear, "disable_adapters", False):
        return weight  # merged: base_layer already holds the sum; disabled: the base model
    lora: Any = linear
    for name in lora.active_adapters:
        if name in lora.lora_A:
            weight = weight + lora.get_delta_weight(name)
    return weight


def _bias(linear: nn.Module) -> torch.Tensor | None:
    return cast("torch.Tensor | None", getattr(linear, "base_layer", linear).bias)


class _LayerWeights(NamedTuple):
    """One layer's decode weights (see _DecodeWeights)."""

    ln1: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor | None
    o_w_t: torch.Tensor
    o_b: torch.Tensor | None
    ln2: torch.Tensor
    gate_up_w: torch.Tensor
    gate_up_b: torch.Tensor | None
    down_w_t: torch.Tensor
    down_b: torch.Tensor | None


@dataclass
class _DecodeWeights:
    """Weights for decoding in the decode dtype (a snapshot taken by prefill).

    Per layer: (input norm, [q; k; v] projection weight and bias, o_proj weight^T and bias,
    post-attention norm, [gate; up] weight and bias, down_proj weight^T and bias): one matmul
    instead of three (q/k/v) or two (gate/up) per decode step.
    """

    layers: list[_LayerWeights]
    embed: torch.Tensor
    norm: torch.Tensor
    lm_head: torch.Tensor


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class NativeCausalLM(nn.Module):
    """Qwen2 / Llama causal LM in plain torch with HF parameter names (see the module docstring)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = as_hf_config(config)
        self.arch = Arch.from_config(self.config)
        self.model = Backbone(self.arch)
        self.lm_head = nn.Linear(self.arch.hidden_size, self.arch.vocab_size, bias=False)
        self._tie()
        self._rope_tables: dict[tuple, torch.Tensor] = {}
        self.reset_parameters()

    def _layers(self) -> list[DecoderLayer]:
        return cast(list[DecoderLayer], list(self.model.layers))

    def _tie(self) -> None:
        if self.arch.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HF's initialisation: N(0, initializer_range) weights, zero biases and padding row, unit norms."""
        std = self.arch.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
        if self.arch.pad_token_id is not None:
            self.model.embed_tokens.weight[self.arch.pad_token_id].zero_()

    # ---------------------------------------------------------------- training forward

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) for input_ids (B, T).

        position_ids (B, T): rotary positions; default 0..T-1, or restarting at every segment when
        segment_ids is given. segment_ids (B, T): packing; a token attends to earlier tokens of the
        same segment id only (id 0 is padding; its outputs are finite and meaningless). An HF-style
        attention_mask (1 real, 0 pad) is a valid segment_ids tensor.
        """
        a = self.arch
        B, T = input_ids.shape
        if position_ids is None:
            if segment_ids is None:
                position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
            else:
                position_ids = packed_position_ids(segment_ids)
        mask = None if segment_ids is None else packed_attention_mask(segment_ids)
        x = self.model.embed_tokens(input_ids)  # (B, T, H)
        cos, sin = rope_cos_sin(position_ids, rope_inv_freq(a.head_dim, a.rope_theta, x.device), x.dtype)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d): broadcast over heads
        dropout = a.attention_dropout if self.training else 0.0
        for layer in self._layers():
            attn = layer.self_attn
            q, k, v = _rotary_qkv(attn, a, layer.input_layernorm(x), cos, sin)
            o = _attend(q, k, v, mask, dropout)  # (B, Hq, T, d)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(B, T, a.num_heads * a.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(self.model.norm(x))

    def completion_logits(
        self,
        prompt_ids: torch.Tensor,
        prompt_lengths: torch.Tensor,
        completion_ids: torch.Tensor,
        prompt_index: torch.Tensor,
    ) -> torch.Tensor:
        """Logits predicting each completion token, with each prompt computed once: (n, C, V).

        prompt_ids (P, Tp): right-padded distinct prompts, prompt_lengths (P,) their lengths;
        completion_ids (n, C): right-padded completions, row r continuing prompt prompt_index[r].
        Out[r, t] is what forward() gives at the position before completion token t of the
        sequence prompt + completion, so log-probs match it exactly; but a group of G samples
        costs one prompt pass instead of G, and no logits are computed on prompt positions (in
        GRPO on short answers the prompt is a large share of the tokens). Differentiable: the
        prompt's keys and values receive the gradients of every completion that attends to them.
        Values on completion padding are finite and meaningless.
        """
        a = self.arch
        P, Tp = prompt_ids.shape
        n, C = completion_ids.shape
        device = prompt_ids.device
        inv_freq = rope_inv_freq(a.head_dim, a.rope_theta, device)
        x = self.model.embed_tokens(prompt_ids)
        cos_p, sin_p = rope_cos_sin(torch.arange(Tp, device=device).expand(P, Tp), inv_freq, x.dtype)
        cos_p, sin_p = cos_p[:, None], sin_p[:, None]
        # Completion token t of row r sits at position prompt_lengths[g] + t; it sees its prompt's
        # real tokens and the completion tokens up to itself.
        lengths = prompt_lengths[prompt_index]  # (n,)
        positions = lengths[:, None] + torch.arange(C, device=device)[None, :]
        cos_c, sin_c = rope_cos_sin(positions, inv_freq, x.dtype)
        cos_c, sin_c = cos_c[:, None], sin_c[:, None]
        sees_prompt = torch.arange(Tp, device=device)[None, :] < lengths[:, None]  # (n, Tp)
        causal = torch.ones(C, C, dtype=torch.bool, device=device).tril()
        mask = torch.cat([sees_prompt[:, None, :].expand(n, C, Tp), causal.expand(n, C, C)], dim=-1)[:, None]
        y = self.model.embed_tokens(completion_ids)
        dropout = a.attention_dropout if self.training else 0.0
        for layer in self._layers():
            attn = layer.self_attn
            q, k, v = _rotary_qkv(attn, a, layer.input_layernorm(x), cos_p, sin_p)
            qc, kc, vc = _rotary_qkv(attn, a, layer.input_layernorm(y), cos_c, sin_c)
            # right-padded prompts under a causal mask: real tokens never see the padding after them
            o = _attend(q, k, v, None, dropout)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(P, Tp, a.num_heads * a.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            keys = torch.cat([k.index_select(0, prompt_index), kc], dim=2)
            values = torch.cat([v.index_select(0, prompt_index), vc], dim=2)
            oc = _attend(qc, keys, values, mask, dropout)
            y = y + attn.o_proj(oc.transpose(1, 2).reshape(n, C, a.num_heads * a.head_dim))
            y = y + layer.mlp(layer.post_attention_layernorm(y))
        # the last prompt token predicts completion token 0; completion token t predicts t + 1
        last = x[torch.arange(P, device=device), prompt_lengths - 1].index_select(0, prompt_index)
        hidden = torch.cat([last[:, None], y[:, : C - 1]], dim=1)
        return self.lm_head(self.model.norm(hidden))

    # ---------------------------------------------------------------- inference (KV cache)

    def _fused_weights(self, dtype: torch.dtype, q_scale: float = 1.0) -> _DecodeWeights:
        """Decode weights in dtype, built afresh by every prefill; q_scale multiplies the query
        projection (weight and bias), e.g. head_dim^-0.5 to scale attention scores for free.

        Rebuilding costs one copy of the weights (milliseconds for the CPU presets), far less
        than a generate call; caching them would risk decoding with stale weights after an
        update that bypasses version counters (e.g. through `param.data`).
        """
        a = self.arch

        def to_dtype(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dtype)

        def bias(linear: nn.Module, scale: float = 1.0) -> torch.Tensor:
            b = _bias(linear)
            if b is None:
                raise ValueError(f"{type(linear).__name__} has no bias, but the config says it has")
            return b * scale

        def optional_bias(linear: nn.Module) -> torch.Tensor | None:
            b = _bias(linear)
            return None if b is None else to_dtype(b)

        layers = []
        with torch.no_grad():
            for layer in self._layers():
                at, mlp = layer.self_attn, layer.mlp
                projections = (at.q_proj, at.k_proj, at.v_proj)
                scales = (q_scale, 1.0, 1.0)
                qkv_w = torch.cat([adapted_weight(p) * c for p, c in zip(projections, scales)])
                qkv_b = torch.cat([bias(p, c) for p, c in zip(projections, scales)]) if a.qkv_bias else None
                gate_up_w = torch.cat([adapted_weight(mlp.gate_proj), adapted_weight(mlp.up_proj)])
                gate_up_b = torch.cat([bias(mlp.gate_proj), bias(mlp.up_proj)]) if a.mlp_bias else None
                layers.append(_LayerWeights(
                    ln1=to_dtype(layer.input_layernorm.weight),
                    qkv_w=to_dtype(qkv_w),
                    qkv_b=None if qkv_b is None else to_dtype(qkv_b),
                    o_w_t=to_dtype(adapted_weight(at.o_proj).t()),
                    o_b=optional_bias(at.o_proj),
                    ln2=to_dtype(layer.post_attention_layernorm.weight),
                    gate_up_w=to_dtype(gate_up_w),
                    gate_up_b=None if gate_up_b is None else to_dtype(gate_up_b),
                    down_w_t=to_dtype(adapted_weight(mlp.down_proj).t()),
                    down_b=optional_bias(mlp.down_proj),
                ))
        return _DecodeWeights(
            layers=layers,
            embed=self.model.embed_tokens.weight.detach().to(dtype),
            norm=self.model.norm.weight.detach().to(dtype),
            lm_head=self.lm_head.weight.detach().to(dtype),
        )

    def _rope_table(self, max_positions: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(P, 2, d): row p holds cos(p * inv_freq) and the signed sin, [-sin, sin] halves.

        rotate_half(x) * sin == roll(x, d/2) * signed_sin, so decoding applies RoPE with a roll
        and one fused multiply-add instead of slicing, negating and concatenating.
        """
        a = self.arch
        key = (device, dtype)
        table = self._rope_tables.get(key)
        if table is None or table.shape[0] < max_positions:
            size = max(max_positions, 2 * (0 if table is None else table.shape[0]), 256)
            pos = torch.arange(size, device=device)
            cos, sin = rope_cos_sin(pos, rope_inv_freq(a.head_dim, a.rope_theta, device), dtype)
            half = a.head_dim // 2
            signed_sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
            table = torch.stack((cos, signed_sin), dim=1).contiguous()
            self._rope_tables[key] = table
        return table

    @torch.no_grad()
    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        capacity: int | None = None,
        dtype: torch.dtype | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache | SharedPromptKVCache]:
        """Run left-padded prompts (B, T) and return (last-token float32 logits (B, V), cache).

        attention_mask (B, T): 1 on prompt tokens, 0 on the left padding. capacity: total slots
        of the cache (prompt + tokens to generate); at least T. dtype: precision of the cache and
        of decode_step (default: the parameters'). A float32 model can decode in bfloat16 from
        bf16 copies of its weights, so the learner's own fp32 module can serve as the engine.
        rows (R,) int64: decode R rows, row r continuing prompt rows[r] (e.g. n samples of each
        prompt); the logits are then (R, V) and the cache a SharedPromptKVCache, which keeps each
        prompt's keys and values once. Without rows: a KVCache of the B prompts.
        """
        a = self.arch
        B, T = input_ids.shape
        capacity = max(capacity or T, T)
        device, param_dtype = input_ids.device, self.model.embed_tokens.weight.dtype
        dtype = dtype or param_dtype
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        valid = attention_mask.bool()
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
        # causal, and keys must be real tokens; the diagonal keeps padding queries finite
        diagonal = torch.eye(T, dtype=torch.bool, device=device)
        mask = packed_attention_mask(valid.long()) & (valid[:, None, None, :] | diagonal)
        if rows is not None:
            return self._prefill_shared(input_ids, valid, positions, mask, capacity, dtype, rows)
        weights = self._fused_weights(dtype)
        cache_shape = (B, a.num_kv_heads, capacity, a.head_dim)
        keys = [torch.zeros(cache_shape, device=device, dtype=dtype) for _ in range(a.num_layers)]
        values = [torch.zeros(cache_shape, device=device, dtype=dtype) for _ in range(a.num_layers)]
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(positions, rope_inv_freq(a.head_dim, a.rope_theta, device), param_dtype)
        cos, sin = cos[:, None], sin[:, None]
        for i, layer in enumerate(self._layers()):
            attn = layer.self_attn
            q, k, v = _rotary_qkv(attn, a, layer.input_layernorm(x), cos, sin)
            keys[i][:, :, :T] = k
            values[i][:, :, :T] = v
            o = _attend(q, k, v, mask, 0.0)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(B, T, a.num_heads * a.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.lm_head(self.model.norm(x[:, -1])).float()
        key_bias = torch.zeros(B, 1, 1, capacity, device=device, dtype=dtype)
        key_bias[:, 0, 0, :T].masked_fill_(~valid, float("-inf"))
        # a row's position never exceeds its slot index, so `capacity` positions suffice
        rope = self._rope_table(capacity, device, dtype)
        cache = KVCache(keys, values, key_bias, positions[:, -1] + 1, T, weights, rope)
        return logits, cache

    def _prefill_shared(self, input_ids: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor,
                        mask: torch.Tensor, capacity: int, dtype: torch.dtype,
                        rows: torch.Tensor) -> tuple[torch.Tensor, SharedPromptKVCache]:
        """prefill with rows: the prompts' keys and values once, an empty generated part per row."""
        a = self.arch
        (P, T), device = input_ids.shape, input_ids.device
        rows = rows.to(device)
        param_dtype = self.model.embed_tokens.weight.dtype
        prompt_keys, prompt_values = [], []
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(positions, rope_inv_freq(a.head_dim, a.rope_theta, device), param_dtype)
        cos, sin = cos[:, None], sin[:, None]
        for layer in self._layers():
            attn = layer.self_attn
            q, k, v = _rotary_qkv(attn, a, layer.input_layernorm(x), cos, sin)
            prompt_keys.append(k.to(dtype).contiguous())
            prompt_values.append(v.to(dtype).contiguous())
            o = _attend(q, k, v, mask, 0.0)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(P, T, a.num_heads * a.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.lm_head(self.model.norm(x[:, -1])).float().index_select(0, rows)
        bias = torch.zeros(P, a.num_kv_heads, 1, T, device=device, dtype=dtype)
        bias.masked_fill_(~valid[:, None, None, :], float("-inf"))
        R, new = rows.shape[0], capacity - T
        shape = (R, a.num_kv_heads, max(new, 1), a.head_dim)
        rep = a.num_heads // a.num_kv_heads
        # a sorted row_prompt keeps the grid's rows in row order; prompts no row continues are dropped
        present, row_prompt = torch.unique(rows, sorted=True, return_inverse=True)
        if present.shape[0] < P:
            prompt_keys = [k.index_select(0, present) for k in prompt_keys]
            prompt_values = [v.index_select(0, present) for v in prompt_values]
            bias = bias.index_select(0, present)
        cache = SharedPromptKVCache(
            prompt_keys=prompt_keys,
            prompt_values=prompt_values,
            prompt_bias=bias.view(-1, 1, T),
            keys=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(a.num_layers)],
            values=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(a.num_layers)],
            row_prompt=row_prompt,
            positions=positions[:, -1].index_select(0, rows) + 1,
            length=0,
            weights=self._fused_weights(dtype, q_scale=a.head_dim**-0.5),
            rope=self._rope_table(capacity, device, dtype),
            grid=_PromptGrid.build(row_prompt, present.shape[0], a.num_kv_heads, rep),
        )
        return logits, cache

    @torch.no_grad()
    def decode_step(self, next_ids: torch.Tensor, cache: KVCache | SharedPromptKVCache) -> torch.Tensor:
        """Append one token per row (next_ids (B,)) to the cache; return float32 logits (B, V).

        The cache is updated in place (slot `length`, positions + 1). Per layer this is one fused
        q/k/v projection, rotary for all heads in three ops, the cache's attend (two cache writes
        and the attention) and two matmuls that add into the residual; grouped query heads attend
        as a (Hkv, Hq/Hkv) grid, so K/V heads are never repeated.
        """
        a = self.arch
        slot = cache.length
        if slot >= cache.capacity:
            raise RuntimeError(f"KV cache full: capacity {cache.capacity} slots")
        B = next_ids.shape[0]
        n_q, n_qk = a.num_heads * a.head_dim, (a.num_heads + a.num_kv_heads) * a.head_dim
        eps = a.rms_norm_eps
        inter = a.intermediate_size
        w = cache.weights
        x = F.embedding(next_ids, w.embed)  # (B, H)
        cos_sin = cache.rope.index_select(0, cache.positions)  # (B, 2, d)
        cos, sin = cos_sin[:, :1], cos_sin[:, 1:]  # (B, 1, d): broadcast over heads
        heads, half = a.num_heads + a.num_kv_heads, a.head_dim // 2
        for i, (ln1, w_qkv, b_qkv, wo_t, bo, ln2, w_gu, b_gu, wd_t, bd) in enumerate(w.layers):
            h = rms_norm(x, ln1, eps)
            y = F.linear(h, w_qkv, b_qkv)  # (B, n_qk + n_k)
            qk = y[:, :n_qk].view(B, heads, a.head_dim)
            qk = torch.addcmul(qk * cos, qk.roll(half, dims=-1), sin)  # rotary, all q and k heads at once
            o = cache.attend(i, qk, y[:, n_qk:].view(B, a.num_kv_heads, a.head_dim))  # (B, Hkv, rep, d)
            x = torch.addmm(x, o.reshape(B, n_q), wo_t)
            if bo is not None:
                x = x + bo
            gu = F.linear(rms_norm(x, ln2, eps), w_gu, b_gu)  # (B, 2 I)
            x = torch.addmm(x, F.silu(gu[:, :inter]) * gu[:, inter:], wd_t)
            if bd is not None:
                x = x + bd
        cache.length = slot + 1
        cache.positions += 1
        return F.linear(rms_norm(x, w.norm, eps), w.lm_head).float()

    # ---------------------------------------------------------------- conversion and IO

    @classmethod
    def from_hf(cls, hf_model: nn.Module) -> NativeCausalLM:
        """A native copy of a transformers Qwen2/Llama causal LM (same dtype and device)."""
        param = next(hf_model.parameters())
        model = cls(hf_model.config).to(device=param.device, dtype=param.dtype)
        model.load_hf_state_dict(hf_model.state_dict())
        return model

    def to_hf(self) -> nn.Module:
        """A transformers model with this model's config and weights."""
        from transformers import AutoModelForCausalLM

        param = next(self.parameters())
        hf = AutoModelForCausalLM.from_config(self.config).to(device=param.device, dtype=param.dtype)
        hf.load_state_dict(self.state_dict())
        return hf

    def load_hf_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str = "state_dict") -> None:
        """Copy weights named as in HF checkpoints; errors name missing or unexpected keys."""
        own = self.state_dict()
        ignored = [k for k in state_dict if k.endswith("rotary_emb.inv_freq")]
        unexpected = sorted(set(state_dict) - set(own) - set(ignored))
        optional = {"lm_head.weight"} if self.arch.tie_word_embeddings else set()
        missing = sorted(set(own) - set(state_dict) - optional)
        if unexpected or missing:
            raise KeyError(
                f"{source}: weights do not match the config's architecture: missing {missing[:8]}, "
                f"unexpected {unexpected[:8]}"
            )
        with torch.no_grad():
            for name, tensor in state_dict.items():
                if name in own:
                    if own[name].shape != tensor.shape:
                        raise ValueError(
                            f"{source}: {name} has shape {tuple(tensor.shape)}, the config expects "
                            f"{tuple(own[name].shape)}"
                        )
                    own[name].copy_(tensor)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
    ) -> NativeCausalLM:
        """Load an HF-format directory (config.json + model.safetensors, sharded or not)."""
        from transformers import AutoConfig

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json (expected an HF-format model directory)")
        config = AutoConfig.from_pretrained(str(path))
        state_dict = read_weights(path)
        if dtype is None:
            dtype = next(iter(state_dict.values())).dtype
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device=device)
        model = model.to(dtype)
        model._tie()  # to_empty gives the tied weight two separate tensors
        model.load_hf_state_dict(state_dict, source=str(path))
        return model

    def save_pretrained(self, path: str | os.PathLike,
                        state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write config.json + model.safetensors that AutoModelForCausalLM.from_pretrained loads.

        Atomic: everything is written to a temporary sibling directory, which then replaces path.
        A tied lm_head is not stored (HF re-ties it from the embedding). state_dict: the weights to
        write under this model's config (default its own; e.g. LoRA adapters merged in).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            config = copy.deepcopy(self.config)
            config.architectures = [_ARCHITECTURES[self.config.model_type]]
            dtype = next(self.parameters()).dtype
            if hasattr(config, "dtype"):  # transformers >= 4.56; older versions call it torch_dtype
                config.dtype = dtype
            else:
                config.torch_dtype = dtype
            config.save_pretrained(str(tmp))
            tensors = {
                name: t.detach().contiguous().cpu()
                for name, t in (self.state_dict() if state_dict is None else state_dict).items()
                if not (self.arch.tie_word_embeddings and name == "lm_head.weight")
            }
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            _replace_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an HF-format directory: model.safetensors, the shards its index names, or
    pytorch_model.bin. FileNotFoundError names what is missing (a shard, or every form)."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if Path(shard).name != shard or not (path / shard).is_file():
                raise FileNotFoundError(f"{index} names the shard {shard!r}, which is not a file in {path}")
            state.update(load_file(str(path / shard)))
        absent = sorted(set(weight_map) - set(state))
        if absent:
            raise FileNotFoundError(f"{index} maps {len(absent)} tensors its shards lack, e.g. {absent[0]!r}")
        return state
    bin_file = path / "pytorch_model.bin"
    if bin_file.is_file():
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise FileNotFoundError(
        f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _replace_dir(src: Path, dst: Path) -> None:
    """Move directory src to dst, replacing dst if present; dst is never left half-written."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


__all__ = [
    "Arch",
    "KVCache",
    "SharedPromptKVCache",
    "adapted_weight",
    "NativeCausalLM",
    "SUPPORTED_MODEL_TYPES",
    "as_hf_config",
    "is_supported",
    "packed_attention_mask",
    "packed_position_ids",
    "rope_cos_sin",
    "rope_inv_freq",
]
