"""MetricsLogger's mirrors: W&B gets the run's resolved config and the metrics; TensorBoard the config text.

wandb and tensorboard are optional extras: fake modules in sys.modules record what rlvr calls.
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from rlvr.config import load_config, to_dict
from rlvr.trainers.common import MetricsLogger


class FakeWandb(types.ModuleType):
    def __init__(self, stop: bool = False) -> None:
        super().__init__("wandb")
        self.init_kwargs: list[dict] = []
        self.logged: list[tuple[dict, int]] = []
        self.finished = False
        self.stop = stop

    def init(self, **kwargs):  # noqa: ANN003, ANN201
        self.init_kwargs.append(kwargs)
        if self.stop:
            raise StopAfterInit
        return self

    def log(self, values: dict, step: int) -> None:
        self.logged.append((values, step))

    def finish(self) -> None:
        self.finished = True


class StopAfterInit(Exception):
    pass


def test_wandb_gets_the_config_and_the_metrics(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = {"seed": 3, "rl": {"lr": 1e-6}}
    logger = MetricsLogger(tmp_path, wandb=True, wandb_project="p", config=config)
    logger.log({"phase": "rl", "step": 2, "reward/mean": 0.5, "done": True})
    logger.close()
    assert fake.init_kwargs == [{"project": "p", "dir": str(tmp_path), "config": config}]
    assert fake.logged == [({"rl/step": 2, "rl/reward/mean": 0.5}, 2)] and fake.finished


def test_tensorboard_gets_the_config_as_text(tmp_path, monkeypatch):
    written: list[tuple] = []

    class Writer:
        def __init__(self, log_dir: str) -> None:
            written.append(("dir", log_dir))

        def add_text(self, tag: str, text: str, step: int) -> None:
            written.append((tag, text, step))

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = Writer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    MetricsLogger(tmp_path, tensorboard=True, config={"seed": 3})
    assert written[0] == ("dir", str(tmp_path / "tensorboard"))
    tag, text, step = written[1]
    assert (tag, step) == ("config", 0)
    assert json.loads("\n".join(line[4:] for line in text.splitlines())) == {"seed": 3}


def test_a_run_passes_its_resolved_config_to_wandb(tiny_model_dir, tmp_path, monkeypatch):
    from rlvr.trainers.pipeline import run

    fake = FakeWandb(stop=True)  # the run stops at wandb.init: no training needed to see its arguments
    monkeypatch.setitem(sys.modules, "wandb", fake)
    overrides = [f"model.path={tiny_model_dir}", f"out_dir={tmp_path / 'run'}", "threads=1", "logging.progress=false",
                 "data.eval_size=4", "logging.wandb=true", "logging.wandb_project=kk", "rl.lr=3e-6"]
    config = load_config("recipes/kk-tiny.yaml", overrides)
    with pytest.raises(StopAfterInit):
        run(config)
    [kwargs] = fake.init_kwargs
    assert kwargs["project"] == "kk" and kwargs["config"] == to_dict(config)
    assert kwargs["config"]["rl"]["lr"] == 3e-6 and kwargs["config"]["model"]["path"] == str(tiny_model_dir)
