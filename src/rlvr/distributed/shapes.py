"""Reference model shapes (Qwen2.5 family) with random weights, for GPU tests and benchmarks.

No weights are downloaded: `random_model_dir` writes an HF-format directory (config.json +
model.safetensors) of the given shape with rlvr's native model, which vLLM and transformers load.
Shapes are those of the published Qwen2.5 configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlvr.models.native import NativeCausalLM

_COMMON = dict(model_type="qwen2", rope_theta=1_000_000.0, rms_norm_eps=1e-6, max_position_embeddings=32768,
               hidden_act="silu", attention_dropout=0.0, bos_token_id=151643, eos_token_id=151645)

QWEN25_SHAPES: dict[str, dict[str, Any]] = {
    "0.5B": dict(_COMMON, vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "1.5B": dict(_COMMON, vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "7B": dict(_COMMON, vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
    "32B": dict(_COMMON, vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                num_attention_heads=40, num_key_value_heads=8, tie_word_embeddings=False),
    # a CPU-sized stand-in with the same structure, for checking scripts without a GPU
    "tiny": dict(_COMMON, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=1,
                 eos_token_id=2),
}


def shape_config(shape: str) -> dict[str, Any]:
    if shape not in QWEN25_SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; valid: {', '.join(QWEN25_SHAPES)}")
    return dict(QWEN25_SHAPES[shape])


def random_model(shape: str, dtype: torch.dtype = torch.bfloat16, device: str = "cpu", seed: int = 0,
                 logit_scale: float = 1.0) -> Any:
    """A NativeCausalLM of `shape` with HF's random initialisation.

    logit_scale multiplies the input embedding (and the tied or separate output head), which
    sharpens the next-token distributions of a random model; with the default init they are
    almost uniform over the vocabulary, which would make log-prob comparisons trivially close.
    """
    torch.manual_seed(seed)
    with torch.device(device):
        model = NativeCausalLM(shape_config(shape))
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(logit_scale)
        if not model.arch.tie_word_embeddings:
            model.lm_head.weight.mul_(logit_scale)
    return model.to(dtype).eval()


def random_model_dir(shape: str, out: str | Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
                     seed: int = 0, logit_scale: float = 1.0) -> Path:
    """Write random_model(...) as an HF directory at `out` and return its path."""
    model = random_model(shape, dtype, device, seed, logit_scale)
    model.save_pretrained(out)
    return Path(out)


__all__ = ["QWEN25_SHAPES", "random_model", "random_model_dir", "shape_config"]
