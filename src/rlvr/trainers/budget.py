"""What a recipe's RL stage will cost, from the config alone: samples, tokens and memory.

`rlvr config` and `rlvr run` print rl_stage_sizes() (samples per step and per optimizer step, the
stage's samples and its completion-token bound) and check rl_memory() against the machine's
memory: a batch that cannot fit is named at start-up, before any work, with the keys to change.

The memory figure is an estimate, not a measurement: the KV cache of every sequence in flight
(TorchEngine decodes all prompts_per_step x group_size rows at once), the decode step's
vocabulary-sized buffers, one update micro-batch's activations kept for the backward pass
(rl.micro_batch_tokens completion tokens, capped by what a mini-batch can hold), and weights,
gradients and AdamW state (plus a frozen reference with rl.kl_coef > 0). Under model.lora only the
adapters (r x (in + out) per targeted projection) have gradients and AdamW state; the frozen base
weights are held once. It errs high on activations (every layer's intermediate tensors counted,
attention scores materialised).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from rlvr import tasks
from rlvr.config import RunConfig, stage_value
from rlvr.models import prompt_ids
from rlvr.models.factory import PRESETS, count_params
from rlvr.models.loading import ModelLoadError, model_config_dir
from rlvr.models.tokenizer import DEFAULT_VOCAB_SIZE

GiB = 1024**3
MEMORY_SHARE = 0.8  # warn when the estimate passes this share of the memory there is


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    params: int
    head_dim: int = 0  # 0: hidden // heads


def model_shape(config: RunConfig) -> ModelShape | None:
    """The shape of the recipe's model: model.path's config.json (an adapter checkpoint's: its base
    model's), else the preset (at the default vocabulary size of `rlvr model init`); None when
    neither can be read."""
    if config.model.path:
        try:
            raw = json.loads((model_config_dir(config.model.path) / "config.json").read_text())
        except (OSError, json.JSONDecodeError, ModelLoadError):
            return None
        raw = raw.get("text_config", raw)
        try:
            hidden, layers = int(raw["hidden_size"]), int(raw["num_hidden_layers"])
            heads = int(raw["num_attention_heads"])
            kv = int(raw.get("num_key_value_heads") or heads)
            inter, vocab = int(raw["intermediate_size"]), int(raw["vocab_size"])
        except (KeyError, TypeError, ValueError):
            return None
        tied = bool(raw.get("tie_word_embeddings", False))
        head_dim = int(raw.get("head_dim") or hidden // heads)
        per_layer = hidden * head_dim * (2 * heads + 2 * kv) + 3 * hidden * inter
        params = layers * per_layer + vocab * hidden * (1 if tied else 2)
        return ModelShape(layers, hidden, heads, kv, inter, vocab, params, head_dim)

    preset = PRESETS.get(config.model.preset)
    if preset is None:
        return None
    return ModelShape(preset.num_hidden_layers, preset.hidden_size, preset.num_attention_heads,
                      preset.num_key_value_heads, preset.intermediate_size, DEFAULT_VOCAB_SIZE,
                      count_params(preset, DEFAULT_VOCAB_SIZE))


def rl_stage_sizes(config: RunConfig) -> dict[str, int]:
    """Samples and completion tokens of the RL stage, step by step through the group-size and
    context-length schedules. With dynamic sampling each step may generate up to
    1 + max_refill_rounds times its samples; the trained samples stay the same."""
    rl = config.rl
    steps = rl.steps if rl.enabled else 0
    samples = tokens = 0
    for step in range(steps):
        n = rl.prompts_per_step * int(stage_value(rl.group_size_stages, step, rl.group_size))
        samples += n
        tokens += n * int(stage_value(rl.max_new_tokens_stages, step, rl.max_new_tokens))
    per_step = rl.prompts_per_step * rl.group_size
    out = {
        "rl_samples_per_step (prompts_per_step x group_size)": per_step,
        "rl_samples_per_optimizer_step (per_step / mini_batches)": per_step // rl.mini_batches,
        "rl_optimizer_steps (steps x mini_batches x ppo_epochs)": steps * rl.mini_batches * rl.ppo_epochs,
        "rl_samples_total (the stage's trained samples)": samples,
        "rl_completion_tokens_at_most (samples x max_new_tokens)": tokens,
    }
    if rl.zero_variance == "dynamic_sampling":
        out["rl_generated_samples_at_most (dynamic sampling refills)"] = samples * (1 + rl.max_refill_rounds)
    return out


def lora_params(config: RunConfig, shape: ModelShape) -> int:
    """Adapter parameters of model.lora on `shape`: r x (in + out) for each target projection of
    each layer (the Qwen2 / Llama names; a target of another name counts nothing); 0 without LoRA."""
    lora = config.model.lora
    if lora is None:
        return 0
    head_dim = shape.head_dim or shape.hidden // shape.heads
    q, kv = shape.heads * head_dim, shape.kv_heads * head_dim
    sizes = {"q_proj": (shape.hidden, q), "k_proj": (shape.hidden, kv), "v_proj": (shape.hidden, kv),
             "o_proj": (q, shape.hidden), "gate_proj": (shape.hidden, shape.intermediate),
             "up_proj": (shape.hidden, shape.intermediate), "down_proj": (shape.intermediate, shape.hidden)}
    per_layer = sum(lora.r * sum(sizes[t]) for t in dict.fromkeys(lora.target_modules) if t in sizes)
    return shape.layers * per_layer


def parameter_state_bytes(config: RunConfig, shape: ModelShape) -> int:
    """fp32 weights, gradients and AdamW m and v of what trains, the frozen rest once, and a frozen
    reference copy of everything with rl.kl_coef > 0."""
    adapters = lora_params(config, shape)
    trained = adapters if config.model.lora is not None else shape.params
    frozen = shape.params if config.model.lora is not None else 0
    reference = (shape.params + adapters) if config.rl.kl_coef > 0 else 0
    return 4 * (4 * trained + frozen + reference)


def rl_memory(config: RunConfig, shape: ModelShape, prompt_tokens: int) -> dict[str, int]:
    """Estimated peak bytes of the RL stage by part (see the module docstring); "total" sums them."""
    rl = config.rl
    group = max([rl.group_size] + [int(s.value) for s in rl.group_size_stages])
    max_new = max([rl.max_new_tokens] + [int(s.value) for s in rl.max_new_tokens_stages])
    rows = rl.prompts_per_step * group
    head_dim = shape.hidden // shape.heads
    half = config.model.engine_dtype == "bfloat16" or config.model.dtype in ("bfloat16", "float16")
    kv_bytes = 2 if half else 4
    capacity = prompt_tokens + max_new
    kv = 2 * shape.layers * shape.kv_heads * head_dim * capacity * rows * kv_bytes
    decode = rows * shape.vocab * 4 * 4  # logits, log-softmax, probabilities, cumulative sums
    mini_batch_tokens = (rows // rl.mini_batches) * max_new
    tokens = min(rl.micro_batch_tokens, mini_batch_tokens)
    per_token_layer = 4 * (12 * shape.hidden + 4 * shape.intermediate)  # kept for backward, fp32
    sequences = max(1, min(rows // rl.mini_batches, tokens // max(1, max_new // 2)))
    attention = 4 * 2 * shape.layers * shape.heads * sequences * max_new * capacity  # scores + probabilities
    activations = tokens * shape.layers * per_token_layer + attention + 3 * tokens * shape.vocab * 4
    parts = {"kv_cache": kv, "decode_buffers": decode, "update_activations": activations,
             "weights_and_optimizer": parameter_state_bytes(config, shape)}
    parts["total"] = sum(parts.values())
    return parts


def device_memory(device: str) -> tuple[int, str] | None:
    """(bytes, what they are) of the memory the run can use, or None when unknown."""
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info()[1]), f"GPU memory of {torch.cuda.get_device_name()}"
    try:
        with open("/proc/meminfo") as handle:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle if ":" in line}
        return info["MemAvailable"], "available host memory (MemAvailable)"
    except (OSError, KeyError, ValueError, IndexError):
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical host memory"
        except (ValueError, OSError, AttributeError):
            return None


def memory_warning(config: RunConfig, parts: dict[str, int], memory: tuple[int, str] | None) -> str | None:
    """A one-paragraph warning when the estimate passes MEMORY_SHARE of the memory; else None."""
    if memory is None or parts["total"] <= MEMORY_SHARE * memory[0]:
        return None
    rl = config.rl
    detail = ", ".join(f"{k} {v / GiB:.2f} GiB" for k, v in parts.items() if k != "total")
    return (f"warning: the RL batch of this recipe needs about {parts['total'] / GiB:.1f} GiB ({detail}), "
            f"more than {MEMORY_SHARE:.0%} of the {memory[0] / GiB:.1f} GiB of {memory[1]}: "
            f"rl.prompts_per_step x rl.group_size = {rl.prompts_per_step * rl.group_size} sequences "
            f"decode at once with up to rl.max_new_tokens = {rl.max_new_tokens} tokens each; lower those, "
            f"or rl.micro_batch_tokens ({rl.micro_batch_tokens}) for the update")


def prompt_tokens_bound(config: RunConfig, tokenizer: Any = None) -> tuple[int, str]:
    """(tokens, how they were counted) of the longest of 16 training prompts: token ids when a
    tokenizer is given, else characters (no token is shorter than one character: an upper bound);
    data.max_prompt_tokens when the recipe sets it (no longer prompt is used)."""
    if config.data.max_prompt_tokens:
        return config.data.max_prompt_tokens, "tokens (data.max_prompt_tokens)"

    try:
        task = tasks.get(config.data.task, **config.data.task_options)
        examples = task.examples(16, seed=config.seed, **(config.data.difficulty or {}))
    except Exception:  # a task that needs files or options here: fall back to a guess
        return 512, "a guess of 512 (the task's prompts could not be generated here)"
    if not examples:
        return 512, "a guess of 512 (the task generated no prompts)"
    if tokenizer is not None:
        longest = max(len(prompt_ids(tokenizer, task.messages(ex), task.response_prefix)) for ex in examples)
        return longest, "tokens"
    chars = max(sum(len(str(m.get("content", ""))) for m in task.messages(ex)) + 32 for ex in examples)
    return chars, "characters (an upper bound on tokens)"


def budget_lines(config: RunConfig, tokenizer: Any = None) -> tuple[list[str], str | None]:
    """(lines describing the RL stage's size and memory, a memory warning or None)."""
    lines = [f"{k}: {v:,}" for k, v in rl_stage_sizes(config).items()]
    shape = model_shape(config)
    if shape is None or not (config.rl.enabled and config.rl.steps > 0):
        return lines, None
    prompt, counted = prompt_tokens_bound(config, tokenizer)
    parts = rl_memory(config, shape, prompt)
    memory = device_memory(config.device)
    adapters = (f", {lora_params(config, shape) / 1e6:.2f}M of LoRA adapters trained"
                if config.model.lora else "")
    lines.append(f"rl_memory_estimate: {parts['total'] / GiB:.2f} GiB (" +
                 ", ".join(f"{k} {v / GiB:.2f}" for k, v in parts.items() if k != "total") +
                 f"; prompts of at most {prompt} {counted}; {shape.params / 1e6:.1f}M parameters{adapters})"
                 + (f" of {memory[0] / GiB:.1f} GiB {memory[1]}" if memory else ""))
    return lines, memory_warning(config, parts, memory)
