"""Checkpoints resume from every weight layout save_pretrained writes, sharded ones included."""

from __future__ import annotations

import json

import pytest
import torch

from rlvr.models import load_model, load_tokenizer
from rlvr.trainers.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def shard(checkpoint, model) -> list[str]:
    """Rewrite the checkpoint's weights as save_pretrained does for a model over max_shard_size."""
    (checkpoint / "model.safetensors").unlink()
    model.save_pretrained(str(checkpoint), max_shard_size="200KB")
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    return sorted(set(index["weight_map"].values()))


def test_a_sharded_hf_checkpoint_resumes(tiny_model_dir, tmp_path):
    trained = load_model(tiny_model_dir)  # model.impl=hf: the transformers class
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(torch.randn_like(parameter))
    checkpoint = save_checkpoint(tmp_path / "rl", 7, trained, load_tokenizer(tiny_model_dir),
                                 {"data": 3}, keep_last=2)
    shards = shard(checkpoint, trained)
    assert len(shards) >= 3 and not (checkpoint / "model.safetensors").exists()

    fresh = load_model(tiny_model_dir)
    state = load_checkpoint(checkpoint, fresh, fresh.config)
    assert state["step"] == 7 and state["data"] == 3
    want = trained.state_dict()
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, want[name], rtol=0, atol=0, msg=name)


def test_a_missing_shard_is_named(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir)
    checkpoint = save_checkpoint(tmp_path / "rl", 1, model, None, {}, keep_last=1)
    shards = shard(checkpoint, model)
    (checkpoint / shards[1]).unlink()
    with pytest.raises(CheckpointError, match=f"names the shard '{shards[1]}'"):
        load_checkpoint(checkpoint, model, model.config)
    (checkpoint / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors, model.safetensors.index.json"):
        load_checkpoint(checkpoint, model, model.config)
