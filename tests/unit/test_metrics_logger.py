"""MetricsLogger's mirrors: W&B gets the run's resolved config and the metrics; TensorBoard the config text.

wandb and tensorboard are optional extras: fake modules in sys.modules record what rlvr calls.
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from rlvr.config import load_config, to_dict
from rlvr.trainers.common import MetricsLogger, samples_markdown


class FakeWandb(types.ModuleType):
    def __init__(self, stop: bool = False) -> None:
        super().__init__("wandb")
        self.init_kwargs: list[dict] = []
        self.logged: list[tuple[dict, int]] = []
        self.finished = False
        self.stop = stop

    def init(self, **kwargs):
        self.init_kwargs.append(kwargs)
        if self.stop:
            raise StopAfterInit
        return self

    def log(self, values: dict, step: int) -> None:
        self.logged.append((values, step))

    def finish(self) -> None:
        self.finished = True

    class Table:
        def __init__(self, columns: list, data: list) -> None:
            self.columns, self.data = columns, data


class StopAfterInit(Exception):
    pass


def test_wandb_gets_the_config_and_the_metrics(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = {"seed": 3, "rl": {"lr": 1e-6}}
    logger = MetricsLogger(tmp_path, wandb=True, wandb_project="p", config=config)
    logger.log({"phase": "rl", "step": 2, "reward/mean": 0.5, "done": True})
    logger.close()
    [kwargs] = fake.init_kwargs
    run_id = (tmp_path / "wandb_run_id.txt").read_text().strip()
    assert kwargs == {"project": "p", "dir": str(tmp_path), "config": config, "id": run_id, "resume": "allow"}
    assert fake.logged == [({"rl/step": 2, "rl/reward/mean": 0.5}, 2)] and fake.finished


def test_wandb_resumes_the_same_run_id_in_the_same_run_dir(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    MetricsLogger(tmp_path / "a", wandb=True).close()
    MetricsLogger(tmp_path / "a", wandb=True).close()  # the restart
    MetricsLogger(tmp_path / "b", wandb=True).close()  # another run
    ids = [kwargs["id"] for kwargs in fake.init_kwargs]
    assert ids[0] == ids[1] != ids[2] and len(ids[0]) == 12
    assert all(kwargs["resume"] == "allow" for kwargs in fake.init_kwargs)


ROWS = [{"prompt": "Who is a knight?\nA | B", "completion": "<think>A</think>",
         "reward": 1.0, "correct": True, "format_ok": True},
        {"prompt": "Q2", "completion": "x" * 3000, "reward": -0.5, "correct": False, "format_ok": False}]


def test_samples_go_to_wandb_as_a_table(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logger = MetricsLogger(tmp_path, wandb=True)
    logger.log_samples(7, ROWS)
    [(values, step)] = fake.logged
    table = values["samples/completions"]
    assert step == 7 and table.columns == ["step", "prompt", "completion", "reward", "correct"]
    assert table.data == [[7, ROWS[0]["prompt"], "<think>A</think>", 1.0, True],
                          [7, "Q2", "x" * 3000, -0.5, False]]
    logger.log_samples(8, [])  # nothing to send
    assert len(fake.logged) == 1


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


def test_samples_go_to_tensorboard_as_text(tmp_path, monkeypatch):
    written: list[tuple] = []

    class Writer:
        def __init__(self, log_dir: str) -> None:
            pass

        def add_text(self, tag: str, text: str, step: int) -> None:
            written.append((tag, text, step))

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = Writer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    MetricsLogger(tmp_path, tensorboard=True).log_samples(3, ROWS)
    [(tag, text, step)] = written
    assert (tag, step) == ("samples/completions", 3)
    lines = text.splitlines()
    assert lines[0] == "| reward | correct | prompt | completion |"
    assert lines[2] == "| 1 | True | Who is a knight?<br>A \\| B | &lt;think&gt;A&lt;/think&gt; |"
    assert lines[3].startswith("| -0.5 | False | Q2 | xxx") and "[... 1000 more characters]" in lines[3]


def test_the_real_tensorboard_writer_gets_scalars_samples_and_config(tmp_path):
    """torch.utils.tensorboard's SummaryWriter, read back from its event file with tensorboard's
    EventAccumulator: every numeric metric per step under PHASE/name, the samples and config as text."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path, tensorboard=True, config={"seed": 3, "rl": {"lr": 1e-6}})
    logger.log({"phase": "rl", "step": 1, "reward/mean": 0.5, "accuracy": 0.25, "done": True, "note": "x"})
    logger.log({"phase": "rl", "step": 2, "reward/mean": 0.75, "accuracy": 0.5})
    logger.log({"phase": "sft", "step": 1, "sft/loss": 2.5})
    logger.log_samples(2, ROWS)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["rl/accuracy", "rl/reward/mean", "rl/step",
                                                "sft/sft/loss", "sft/step"]
    assert [(e.step, e.value) for e in events.Scalars("rl/reward/mean")] == [(1, 0.5), (2, 0.75)]
    assert [(e.step, e.value) for e in events.Scalars("sft/sft/loss")] == [(1, 2.5)]

    def text(tag: str) -> list[tuple[int, str]]:
        return [(e.step, e.tensor_proto.string_val[0].decode())
                for e in events.Tensors(f"{tag}/text_summary")]

    [(step, table)] = text("samples/completions")
    assert step == 2 and table == samples_markdown(ROWS)
    assert "&lt;think&gt;A&lt;/think&gt;" in table
    [(step, config)] = text("config")
    logged = json.loads("\n".join(line[4:] for line in config.splitlines()))
    assert step == 0 and logged == {"seed": 3, "rl": {"lr": 1e-6}}


def test_a_run_passes_its_resolved_config_to_wandb(tiny_model_dir, tmp_path, monkeypatch):
    from rlvr.trainers.pipeline import run

    fake = FakeWandb(stop=True)  # the run stops at wandb.init: no training needed to see its arguments
    monkeypatch.setitem(sys.modules, "wandb", fake)
    overrides = [f"model.path={tiny_model_dir}", f"out_dir={tmp_path / 'run'}", "threads=1",
                 "logging.progress=false", "data.eval_size=4", "logging.wandb=true",
                 "logging.wandb_project=kk", "rl.lr=3e-6"]
    config = load_config("recipes/kk-tiny.yaml", overrides)
    with pytest.raises(StopAfterInit):
        run(config)
    [kwargs] = fake.init_kwargs
    assert kwargs["project"] == "kk" and kwargs["config"] == to_dict(config)
    assert kwargs["config"]["rl"]["lr"] == 3e-6 and kwargs["config"]["model"]["path"] == str(tiny_model_dir)
