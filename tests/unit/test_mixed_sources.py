"""Mixed datasets: rows of several sources routed by data_source to their task and reward functions."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import pytest

from rlvr import tasks
from rlvr.config import ConfigError, load_config
from rlvr.data.io import write_jsonl_atomic
from rlvr.evaluation.metrics import source_metrics
from rlvr.tasks.base import Example
from rlvr.trainers.pipeline import build_task, check_inputs, source_weights
from rlvr.trainers.rl import ProblemPool

SOURCES = ("data.sources={kk: {task: knights_knaves, weight: 3}, cd: {task: countdown}, "
           "mine: {function: '%s:exact'}}")
REWARD = textwrap.dedent('''
    def exact(data_source, solution_str, ground_truth, extra_info=None):
        return float(solution_str.strip() == str(ground_truth))
''')


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "reward.py").write_text(REWARD)
    kk, cd = tasks.get("knights_knaves"), tasks.get("countdown")
    rows = [{**kk.to_record(e), "data_source": "kk"} for e in kk.examples(4, seed=0)]
    rows += [{**cd.to_record(e), "data_source": "cd"} for e in cd.examples(3, seed=0, numbers=3)]
    rows += [{"prompt": f"say {i}", "ground_truth": str(i), "data_source": "mine"} for i in range(5)]
    write_jsonl_atomic(tmp_path / "train.jsonl", rows)
    write_jsonl_atomic(tmp_path / "bad.jsonl", rows[:2] + [{"prompt": "q", "data_source": "elsewhere"}])
    return {"reward": str(tmp_path / "reward.py"), "train": str(tmp_path / "train.jsonl"),
            "bad": str(tmp_path / "bad.jsonl"), "dir": str(tmp_path)}


def mixed(files: dict[str, str], *extra: str):
    return load_config(overrides=["data.task=mixed", SOURCES % files["reward"],
                                  f"data.train_file={files['train']}", f"data.eval_file={files['train']}",
                                  "sft.enabled=false", *extra])


def test_each_row_is_read_prompted_and_scored_by_the_task_of_its_source(files):
    config = mixed(files)
    assert config.data.sources["kk"].weight == 3.0 and config.data.sources["mine"].task == "generic"
    assert config.data.difficulty == {}  # mixed: every row, whatever its metadata
    inputs = check_inputs(config)
    rows = inputs.train_rows
    assert (rows is not None
            and Counter(ex.metadata["data_source"] for ex in rows) == {"kk": 4, "cd": 3, "mine": 5})
    assert all(ex.metadata["source"] == ex.metadata["data_source"] for ex in rows)  # eval breaks down by it
    task = inputs.task
    kk, cd, mine = rows[0], rows[4], rows[7]
    assert task.messages(kk) == tasks.get("knights_knaves").messages(kk)
    assert task.messages(cd) == tasks.get("countdown").messages(cd)
    assert task.messages(mine) == [{"role": "user", "content": "say 0"}]
    kk_oracle = tasks.get("knights_knaves").solution_trace(kk)
    assert task.score(kk_oracle, kk).correct and not task.score(kk_oracle, cd).correct
    assert task.score("0", mine).reward == 1.0 and task.score("1", mine).reward == 0.0
    assert task.to_record(cd)["data_source"] == "cd" and task.from_record(task.to_record(cd)) == cd


def test_a_row_of_a_source_without_a_task_is_refused_naming_the_file_line(files):
    with pytest.raises(ConfigError,
                       match=r"config key data.train_file: .*bad.jsonl:3: data_source 'elsewhere' has "
                             r"no task or reward: add it to data.sources "
                             r"\(configured: cd, kk, mine\)"):
        check_inputs(mixed(files, f"data.train_file={files['bad']}"))
    rows = Path(files["dir"]) / "no_source.jsonl"
    rows.write_text('{"prompt": "q", "ground_truth": "1"}\n')
    with pytest.raises(ConfigError, match=r"no_source.jsonl:1: no field 'data_source' \(or 'source'\)"):
        check_inputs(mixed(files, f"data.eval_file={rows}"))
    only_kk = Path(files["dir"]) / "kk.jsonl"
    write_jsonl_atomic(only_kk, [{**tasks.get("knights_knaves").to_record(e), "data_source": "kk"}
                                 for e in tasks.get("knights_knaves").examples(2, seed=0)])
    with pytest.raises(ConfigError,
                       match=r"config key data.sources.cd: .*kk.jsonl has no row of data_source 'cd'"):
        check_inputs(mixed(files, f"data.train_file={only_kk}"))


def test_bad_mixed_configs_name_the_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  task: mixed\n  sources:\n    a: {task: math}\n    b:\n      weight: 0\n")
    with pytest.raises(ConfigError,
                       match=r"r.yaml line 6: config key data.sources.b.weight: got 0.0, expected a "
                             "positive number"):
        load_config(recipe)
    cases = {
        ("data.task=mixed",): "config key data.task: got 'mixed', expected a task other than "
                              "mixed, or data.sources",
        ("data.sources={a: {task: math}}",): "config key data.sources: got .*'a'.*, expected "
                                             "no sources unless",
        ("data.task=mixed", "data.sources={a: {task: no_such_mod_xyz:T}}"):
            "data.sources.a.task: task .* does not import",
        ("data.task=mixed", "data.sources={a: {tsk: math}}"):
            "unknown config key 'data.sources.a.tsk'; did you mean 'data.sources.a.task'",
    }
    for overrides, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=list(overrides))
    generic = load_config(overrides=["data.task=mixed", "data.sources={a: {task: math}, b: {}}"])
    with pytest.raises(ConfigError, match="config key data.sources.b: task generic needs reward.function"):
        build_task(generic)
    prefixes = load_config(overrides=["data.task=mixed",
                                      "data.sources={a: {task: math}, b: {task: countdown, "
                                      "task_options: {response_prefix: '<think>'}}}"])
    with pytest.raises(ConfigError,
                       match=r"config key data.sources: the sources' tasks pre-fill different response "
                             r"prefixes \{'a': '', 'b': '<think>'\}"):
        build_task(prefixes)


def test_sampling_weights_give_each_source_its_share_of_the_prompts():
    config = load_config(overrides=["data.task=mixed", "data.sources={big: {task: math}, small: {task: math, "
                                    "weight: 3}}"])
    rows = [Example(f"p{i}", 1, {"data_source": "big" if i < 900 else "small"}) for i in range(1000)]
    pool = ProblemPool(lambda difficulty: rows, seed=0, weights=source_weights(config))
    drawn = [ex.metadata["data_source"] for step in range(200) for ex in pool.draw({}, 16, step)]
    share = drawn.count("small") / len(drawn)
    assert 0.70 < share < 0.80  # 3 / (1 + 3) of the draws, though it holds 10% of the rows
    uniform = ProblemPool(lambda difficulty: rows, seed=0)
    assert ([e.prompt for e in uniform.draw({}, 16, 5)]
            == [e.prompt for e in ProblemPool(lambda d: rows, 0).draw({}, 16, 5)])
    assert source_weights(load_config()) is None


def test_per_source_batch_metrics():
    metrics = source_metrics(["a", "b/x", "a", None], [1.0, 0.5, 0.0, 2.0], [True, False, False, True])
    assert metrics == {"reward/a/mean": 0.5, "accuracy/a": 0.5, "batch_share/a": 0.5,
                       "reward/b_x/mean": 0.5, "accuracy/b_x": 0.0, "batch_share/b_x": 0.25}
    assert source_metrics([None, None], [1.0, 0.0], [True, False]) == {}
