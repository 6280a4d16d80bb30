"""Bring-your-own runs on the tiny model: failing reward functions, external tasks, mixed sources."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from rlvr.config import ConfigError, load_config
from rlvr.trainers.pipeline import run


def quick(model_dir: Path, out_dir: Path, rl_steps: int = 2) -> list[str]:
    """A run of rl_steps RL steps of 4 prompts x 4 samples, no SFT, a greedy eval of 4 problems."""
    return [
        f"model.path={model_dir}", f"out_dir={out_dir}", "threads=1", "logging.progress=false",
        "data.train_size=64", "data.eval_size=4", "sft.enabled=false", f"rl.steps={rl_steps}",
        "rl.prompts_per_step=4", "rl.mini_batches=1", "rl.group_size=4", "rl.max_new_tokens=16",
        "eval.max_new_tokens=16", "eval.samples=0", "eval.every=0", "checkpoint.every=0",
        "logging.samples_every=1",
    ]


def rl_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["phase"] == "rl"]


FAILING = textwrap.dedent('''
    import pathlib, time

    def raises(data_source, solution_str, ground_truth, extra_info=None):
        raise RuntimeError("my reward is broken")

    def hangs_on_sixth_call(data_source, solution_str, ground_truth, extra_info=None):
        counter = pathlib.Path(__file__).with_name("calls.txt")
        calls = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(calls))
        if calls == 6:
            time.sleep(60)
        return 0.5
''')


def test_failing_reward_functions_are_counted_per_step_logged_once_and_the_run_goes_on(
        tiny_model_dir, tmp_path, capsys):
    (tmp_path / "failing.py").write_text(FAILING)
    out = tmp_path / "run"
    overrides = quick(tiny_model_dir, out) + [
        f"reward.functions=[{{function: '{tmp_path}/failing.py:raises'}}, "
        f"{{function: '{tmp_path}/failing.py:hangs_on_sixth_call', weight: 2}}]",
        "reward.timeout_seconds=1", "reward.error_reward=-0.25"]
    summary = run(load_config("recipes/kk-tiny.yaml", overrides))
    assert summary["rl_steps_done"] == 2
    rows = rl_rows(out)
    # Every call of `raises` fails: 16 per step. The 6th call of the other one (4 were the greedy
    # eval before RL) misses its deadline, in step 1.
    assert [r["reward/errors"] for r in rows] == [16.0, 16.0]
    assert [r["reward/timeouts"] for r in rows] == [1.0, 0.0]
    samples = [json.loads(x) for x in (out / "samples" / "step_000001.jsonl").read_text().splitlines()]
    timed_out = [s for s in samples if s["parts"]["reward_timeouts"] == 1.0]
    assert (len(timed_out) == 1 and timed_out[0]["parts"]["fn1"] == -0.25
            and timed_out[0]["parts"]["fn0"] == -0.25)
    others = [s for s in samples if s["parts"]["reward_timeouts"] == 0.0]
    assert all(s["parts"]["fn1"] == 0.5 and s["parts"]["reward_errors"] == 1.0 for s in others)
    printed = capsys.readouterr().out
    assert printed.count("failing.py:raises failed (RuntimeError: my reward is broken)") == 1
    assert printed.count("hangs_on_sixth_call missed its 1s deadline") == 1
    assert "First input: data_source=" in printed and "completion=" in printed


ECHO = Path(__file__).resolve().parents[1] / "fixtures" / "echo_task.py"


def test_a_task_from_outside_the_package_trains_and_evaluates(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    overrides = quick(tiny_model_dir, out, rl_steps=1) + [
        f"data.task={ECHO}:EchoTask", "data.task_options={response_prefix: 'Answer: '}", "sft.enabled=true",
        "sft.steps=2", "sft.batch_size=4", "sft.data_size=16", "sft.warmup_steps=1"]
    with pytest.raises(ConfigError, match=r"config key data.eval_difficulty: task 'echo' "
                                          r"cannot generate problems of difficulty \{'people': "
                                          r"3\}: .*'people'"):
        run(load_config("recipes/kk-tiny.yaml", overrides))  # the recipe's KK difficulty, refused at start-up
    assert not out.exists()
    summary = run(load_config(None, overrides))
    assert summary["rl_steps_done"] == 1 and 0.0 <= summary["accuracy_after_rl"] <= 1.0
    saved = (out / "config.yaml").read_text()
    assert "difficulty:\n    length: 1" in saved or "difficulty: {length: 1}" in saved  # the task's default
    held_out = [json.loads(x) for x in (out / "data" / "eval.jsonl").read_text().splitlines()]
    assert len(held_out) == 4 and all(r["prompt"].startswith("Repeat: ") for r in held_out)
    samples = [json.loads(x) for x in (out / "samples" / "step_000001.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and all(s["prompt"].startswith("Repeat: ") for s in samples)


def test_a_mixed_run_routes_rows_by_data_source_and_reports_each_source(tiny_model_dir, tmp_path, capsys):
    from rlvr import tasks
    from rlvr.data.io import write_jsonl_atomic

    kk, echo = tasks.get("knights_knaves"), tasks.get(f"{ECHO}:EchoTask")
    rows = [{**kk.to_record(e), "data_source": "kk"} for e in kk.examples(12, seed=0)]
    rows += [{**echo.to_record(e), "data_source": "echo"} for e in echo.examples(12, seed=0)]
    write_jsonl_atomic(tmp_path / "train.jsonl", rows[2:12] + rows[14:])
    write_jsonl_atomic(tmp_path / "eval.jsonl", rows[:2] + rows[12:14])
    out = tmp_path / "run"
    overrides = quick(tiny_model_dir, out) + [
        "data.task=mixed",
        f"data.sources={{kk: {{task: knights_knaves}}, echo: {{task: '{ECHO}:EchoTask', weight: 3}}}}",
        f"data.train_file={tmp_path}/train.jsonl", f"data.eval_file={tmp_path}/eval.jsonl", "eval.every=1",
        "eval.curve_samples=1", "eval.temperature=0"]
    summary = run(load_config(None, overrides))
    assert (set(summary["accuracy_by_source_after_rl"]) == {"kk", "echo"}
            == set(summary["accuracy_by_source_before_rl"]))
    seen = set()
    for row in rl_rows(out):  # a step of 4 prompts may draw from one source only
        present = [s for s in ("kk", "echo") if f"batch_share/{s}" in row]
        assert present and sum(row[f"batch_share/{s}"] for s in present) == 1.0
        assert all(0.0 <= row[f"accuracy/{s}"] <= 1.0 and f"reward/{s}/mean" in row for s in present)
        seen.update(present)
    assert "echo" in seen  # weight 3 of 4
    curve = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"rl_eval"' in x]
    assert len(curve) == 3 and all({"eval/kk/sampled_accuracy", "eval/echo/sampled_accuracy"}
                                   <= set(c) for c in curve)
    samples = [json.loads(x) for x in (out / "samples" / "step_000001.jsonl").read_text().splitlines()]
    kk_rows = [s for s in samples if not s["prompt"].startswith("Repeat: ")]
    assert all("format" in s["parts"] for s in kk_rows)  # scored by knights_knaves, not by echo
    assert all("format" not in s["parts"] for s in samples if s["prompt"].startswith("Repeat: "))
    assert "greedy accuracy" in capsys.readouterr().out


def test_a_run_with_a_prompt_template_on_a_model_without_a_chat_template(tiny_model_dir, tmp_path):
    import shutil

    from rlvr.models import load_tokenizer, prompt_text

    base_model = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base_model)
    (base_model / "chat_template.jinja").unlink()
    assert load_tokenizer(base_model).chat_template is None
    out = tmp_path / "run"
    config = load_config("recipes/kk-tiny.yaml", [
        f"model.path={base_model}", f"out_dir={out}", "threads=1",
        "logging.progress=false", "data.eval_size=2", "sft.enabled=false", "rl.steps=1",
        "rl.prompts_per_step=2", "rl.mini_batches=1", "rl.group_size=2", "rl.max_new_tokens=8",
        "eval.max_new_tokens=8", "eval.samples=0", "eval.every=0", "checkpoint.every=0",
        'data.prompt_template="User: {question}\\nAssistant: <think>"',
        "data.task_options={response_prefix: '<think>', system_prompt: ''}"])
    run(config)
    saved = load_tokenizer(out / "checkpoints" / "rl" / "step_000001")  # the template travels with the model
    question = [{"role": "user", "content": "Who is a knight?"}]
    assert prompt_text(saved, question, "<think>") == "User: Who is a knight?\nAssistant: <think>"


def test_wandb_gets_a_completions_table_every_samples_every_steps_and_a_restart_resumes_its_run(
        tiny_model_dir, tmp_path, monkeypatch):
    import sys
    import types

    class Wandb(types.ModuleType):
        def __init__(self) -> None:
            super().__init__("wandb")
            self.inits: list[dict] = []
            self.tables: list[tuple[int, object]] = []

        def init(self, **kwargs):
            self.inits.append(kwargs)
            return self

        def log(self, values: dict, step: int) -> None:
            if "samples/completions" in values:
                self.tables.append((step, values["samples/completions"]))

        def finish(self) -> None:
            pass

        class Table:
            def __init__(self, columns: list, data: list) -> None:
                self.columns, self.data = columns, data

    fake = Wandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    overrides = quick(tiny_model_dir, out, rl_steps=3) + ["logging.wandb=true", "logging.samples_every=2"]
    run(load_config("recipes/kk-tiny.yaml", overrides))
    # steps 1 and 3 (every 2nd from the first, and the last)
    assert [step for step, _ in fake.tables] == [1, 3]
    table = fake.tables[0][1]
    assert table.columns == ["step", "prompt", "completion", "reward", "correct"] and len(table.data) == 16
    dumped = [json.loads(x) for x in (out / "samples" / "step_000001.jsonl").read_text().splitlines()]
    assert [row[1:] for row in table.data] == [[d["prompt"], d["completion"], d["reward"], d["correct"]]
                                               for d in dumped]
    run(load_config("recipes/kk-tiny.yaml", overrides))  # the same command again: the run resumes
    assert len(fake.inits) == 2 and fake.inits[0]["id"] == fake.inits[1]["id"]
    assert fake.inits[1]["resume"] == "allow"


def test_the_reasoning_gym_recipe_runs_on_the_offline_tiny_model(tmp_path):
    pytest.importorskip("reasoning_gym")
    out = tmp_path / "run"
    config = load_config("recipes/rg-chain-sum-tiny.yaml", [
        f"out_dir={out}", "threads=1", "logging.progress=false", "data.train_size=64", "data.eval_size=4",
        "sft.steps=2", "sft.batch_size=4", "sft.data_size=16", "sft.warmup_steps=1", "rl.steps=1",
        "rl.prompts_per_step=2", "rl.group_size=2", "eval.samples=0", "checkpoint.every=0"])
    summary = run(config)
    assert summary["rl_steps_done"] == 1 and (out / "model_init" / "tokenizer.json").exists()
    samples = [json.loads(x) for x in (out / "samples" / "step_000001.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["prompt"].startswith("State the final answer") for s in samples)
    assert all(set(s["parts"]) >= {"answer", "format", "grader_error"} for s in samples)
