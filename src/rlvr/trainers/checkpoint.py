"""Atomic checkpoints: an HF-format model directory plus the trainer's state.

Layout: RUN_DIR/checkpoints/<stage>/step_000120/ holds config.json, model.safetensors (or the
shards listed in model.safetensors.index.json, as save_pretrained writes a large model) and the
tokenizer files (loadable by transformers and vLLM as they are) and trainer_state.pt (optimizer,
RNG states, step, data position, anything else the loop needs to continue exactly). A checkpoint
is written into a temporary directory and renamed into place, so a crash never leaves a half one.

With LoRA (model.lora) the weights are the adapter's: adapter_model.safetensors and
adapter_config.json (naming the base model's directory), which peft and transformers load onto
the base model; with checkpoint.merge_lora the checkpoint also holds merged/, the adapter folded
into the base weights as a plain HF model directory with the tokenizer.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlvr.errors import CheckpointError
from rlvr.models import eos_token_ids, lora
from rlvr.models.native import read_weights

STATE_FILE = "trainer_state.pt"
# Config fields that must agree between a checkpoint and the run's model.
_SHAPE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "intermediate_size")


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_model_dir(model: torch.nn.Module, tokenizer: Any, out: Path, merge_lora: bool = False) -> None:
    """Write an HF-format model directory (config, safetensors weights, tokenizer) at `out`; for a
    LoRA model the adapter instead of the weights, and with merge_lora the merged model in out/merged.

    generation_config.json names every end-of-turn id rlvr stops on, so that transformers, vLLM
    and TRL stop a checkpoint's generations where rlvr does.
    """
    if lora.is_lora(model):
        lora.save_adapter(model, out)
        if merge_lora:
            lora.save_merged(model, out / "merged")
            _save_tokenizer(tokenizer, out / "merged")
    else:
        model.save_pretrained(str(out))  # type: ignore[operator]
    _save_tokenizer(tokenizer, out)


def _save_tokenizer(tokenizer: Any, out: Path) -> None:
    """The tokenizer files and a generation_config.json naming every end-of-turn id."""
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
        has_eos = getattr(tokenizer, "eos_token_id", None) is not None
        if has_eos and not (out / "generation_config.json").exists():
            from transformers import (
                GenerationConfig,  # lazy: importing the trainers loads no transformers (start-up time)
            )

            eos = list(eos_token_ids(tokenizer))
            GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id).save_pretrained(str(out))


def save_checkpoint(stage_dir: Path, step: int, model: torch.nn.Module, tokenizer: Any,
                    state: dict[str, Any], keep_last: int, merge_lora: bool = False) -> Path:
    """Save step `step` under stage_dir atomically and keep only the newest `keep_last`."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    final = stage_dir / f"step_{step:06d}"
    tmp = stage_dir / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(model, tokenizer, tmp / "model_tmp", merge_lora)
    for item in (tmp / "model_tmp").iterdir():  # flatten: the checkpoint dir itself is the HF dir
        item.rename(tmp / item.name)
    (tmp / "model_tmp").rmdir()
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(stage_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(stage_dir: Path) -> list[Path]:
    """Complete checkpoints of a stage, oldest first."""
    if not stage_dir.is_dir():
        return []
    found = [p for p in stage_dir.glob("step_*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(stage_dir: Path) -> Path | None:
    found = list_checkpoints(stage_dir)
    return found[-1] if found else None


def check_compatible(checkpoint: Path, model_config: Any) -> None:
    """Refuse a checkpoint whose architecture differs from the run's model, naming the field."""
    config_file = checkpoint / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"checkpoint {checkpoint} has no config.json")
    saved = json.loads(config_file.read_text())
    current = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    for key in _SHAPE_KEYS:
        if key in saved and key in current and saved[key] != current[key]:
            raise CheckpointError(
                f"checkpoint {checkpoint} is from another model: {key} is {saved[key]} there but "
                f"{current[key]} in this run's model; use a fresh out_dir or the matching model"
            )


def load_checkpoint(checkpoint: Path, model: torch.nn.Module, model_config: Any) -> dict[str, Any]:
    """Load weights (a LoRA model: its adapter) into `model` and return the trainer state (RNG
    states restored)."""
    if lora.is_lora(model):
        try:
            lora.load_adapter(checkpoint, model)
        except lora.LoRAError as error:
            raise CheckpointError(f"checkpoint {checkpoint}: {error}") from None
        return _load_state(checkpoint)
    if lora.is_adapter_dir(checkpoint):
        raise CheckpointError(f"checkpoint {checkpoint} holds a LoRA adapter, but this run trains full "
                              "weights (model.lora is null); use a fresh out_dir")
    check_compatible(checkpoint, model_config)
    # model.safetensors, or the shards of model.safetensors.index.json (save_pretrained's max_shard_size)
    try:
        weights = read_weights(checkpoint)
    except FileNotFoundError as error:
        raise CheckpointError(f"checkpoint {checkpoint} has no readable weights: {error}") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied embeddings are stored once; anything else missing means a different model.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit this model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    tie_weights = getattr(model, "tie_weights", None)  # transformers models tie lm_head to the embedding
    if "lm_head.weight" not in weights and tie_weights is not None:
        tie_weights()
    return _load_state(checkpoint)


def _load_state(checkpoint: Path) -> dict[str, Any]:
    state = torch.load(checkpoint / STATE_FILE, weights_only=False)
    set_rng_state(state["rng"])
    return state
