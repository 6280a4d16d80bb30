"""`rlvr eval --engine vllm`: the same greedy completions and metrics as the torch engine (fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from rlvr.evaluation.evaluate import EvalSampling, ModelLoading, eval_command  # noqa: E402


def test_eval_on_vllm_matches_the_torch_engine(tiny_model_dir: Path):
    kwargs = dict(sampling=EvalSampling.from_options(n=1, max_new_tokens=32, prompts_per_batch=4), limit=6,
                  progress=False)
    ours = eval_command(str(tiny_model_dir), "knights_knaves", None, loading=ModelLoading(engine="vllm"),
                        **kwargs)
    theirs = eval_command(str(tiny_model_dir), "knights_knaves", None, loading=ModelLoading(engine="torch"),
                          **kwargs)
    assert len(ours.samples) == 6
    assert [s["completion"] for s in ours.samples] == [s["completion"] for s in theirs.samples]
    assert ours.metrics == theirs.metrics
