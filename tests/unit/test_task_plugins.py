"""Tasks from outside the package: specs, entry points, the protocol check, `rlvr check-task`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import rlvr.tasks
from rlvr.cli import main
from rlvr.config import ConfigError, load_config
from rlvr.tasks import TaskError, contract

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "echo_task.py"
SPEC = f"{FIXTURE}:EchoTask"


def test_a_file_spec_a_module_spec_and_an_entry_point_build_the_task(tmp_path, monkeypatch):
    task = rlvr.tasks.get(SPEC, response_prefix="> ")
    assert task.name == "echo" and task.response_prefix == "> "
    assert task.examples(1, seed=0, length=2)[0].metadata == {"length": 2, "index": 0}
    shutil.copy(FIXTURE, tmp_path / "my_echo.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert rlvr.tasks.get("my_echo:EchoTask").name == "echo"
    # An installed package registering the task under the entry-point group rlvr.tasks.
    info = tmp_path / "my_echo_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-echo-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[rlvr.tasks]\necho = my_echo:EchoTask\nbroken = my_echo:Absent\n")
    assert "echo" in rlvr.tasks.registered()
    assert rlvr.tasks.get("echo").name == "echo"
    with pytest.raises(TaskError, match=r"task 'broken' \(entry point my_echo:Absent of group rlvr.tasks\) "
                                        "does not load"):
        rlvr.tasks.get("broken")
    config = load_config(overrides=["data.task=echo"])  # the config accepts the entry point's name
    assert config.data.difficulty == {"length": 1} == config.data.eval_difficulty == config.sft.difficulty
    # `rlvr data stats` recognises the entry point's rows by its record_match (the broken one is passed over).
    from rlvr.data.tools import guess_task

    assert guess_task({"prompt": "Repeat: apple 0", "answer": "apple 0"}) == "echo"
    assert guess_task({"prompt": "2+2?"}) is None


def test_check_task_names_a_malformed_hook():
    from rlvr.tasks.base import GenerationOption

    echo = rlvr.tasks.factory(SPEC)

    class Blind(echo):  # type: ignore[misc, valid-type]
        record_match = staticmethod(lambda record: 0)

    class Untyped(echo):  # type: ignore[misc, valid-type]
        generation_options = (GenerationOption("length", "words", list),)

    class Loose(echo):  # type: ignore[misc, valid-type]
        record_match = staticmethod(lambda record: True)

    cases = {Blind: r"record_match\(to_record\(example 0\)\) returned 0, expected an int > 0",
             Untyped: "generation option 'length' has type <class 'list'>",
             Loose: r"record_match\(\{\}\) returned True, expected 0"}
    for cls, message in cases.items():
        results = {r.name: r for r in contract.run_contract(cls(), n=2)}
        hooks = results["the optional hooks have their form"]
        assert hooks.status == "fail", cls
        assert __import__("re").search(message, hooks.message), hooks.message


def test_what_is_not_a_task_fails_with_one_message_naming_it(tmp_path):
    with pytest.raises(TaskError) as info:
        rlvr.tasks.get(f"{FIXTURE}:NotATask")
    message = str(info.value)
    assert f"task '{FIXTURE}:NotATask' (NotATask) is not a rlvr Task: missing from_record, to_record; " \
           "response_prefix is not a str; score is not callable" in message
    assert "examples(n, seed, **difficulty)" in message  # what a Task has
    (tmp_path / "broken.py").write_text("import no_such_dependency_xyz\n")
    cases = {f"{tmp_path}/broken.py:T": "does not import: ModuleNotFoundError",
             f"{tmp_path}/absent.py:T": "does not exist",
             f"{FIXTURE}:Absent": "has no class or function 'Absent'",
             "knights_knave": "did you mean 'knights_knaves'", "no_such_module_xyz:T": "does not import"}
    for spec, expected in cases.items():
        with pytest.raises(TaskError, match=expected):
            rlvr.tasks.get(spec)


def test_the_config_resolves_a_task_spec_and_names_data_task_when_it_does_not_import(tmp_path):
    config = load_config(overrides=[f"data.task={SPEC}"])
    assert config.data.difficulty == {"length": 1}  # the task's default_difficulty
    assert load_config().data.difficulty == {"people": 3}  # knights_knaves' own, as before
    assert load_config().sft.difficulty == {"people": [2, 3, 3, 3]}
    assert load_config(overrides=["data.task=math"]).data.difficulty == {}
    assert (load_config(overrides=[f"data.task={SPEC}", "data.difficulty={length: 3}"]).data.difficulty
            == {"length": 3})
    (tmp_path / "broken.py").write_text("raise RuntimeError('my task is broken')\n")
    with pytest.raises(ConfigError, match=r"^override data.task=.*broken.py:T: config key data.task: task .*"
                                          "does not import: RuntimeError: my task is broken"):
        load_config(overrides=[f"data.task={tmp_path}/broken.py:T"])


def test_check_inputs_refuses_a_spec_that_builds_no_task():
    from rlvr.trainers.pipeline import check_inputs

    config = load_config(overrides=[f"data.task={FIXTURE}:NotATask", "data.difficulty={}",
                                    "data.eval_difficulty={}", "sft.difficulty={}"])
    with pytest.raises(ConfigError,
                       match="config key data.task: task .* is not a rlvr Task: missing from_record"):
        check_inputs(config)


def test_check_task_passes_a_good_task(capsys):
    assert main(["check-task", SPEC]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 8 and f"task {SPEC}: the contract holds (8 checks passed)" in out
    assert "PASS  the optional hooks have their form" in out


@pytest.mark.parametrize("flaw, check, why", [
    ("half", "the oracle earns the maximum", "scored (correct, format_ok, reward) = (True, True, 0.5)"),
    ("lenient", "garbage earns the minimum", "a completion of 0 characters starting '' was judged correct"),
    ("raises", "garbage earns the minimum",
     "score raised KeyError: 'answer' on a completion of 0 characters"),
    ("hangs", "garbage earns the minimum", "score did not return within 1s on a completion of 0 characters"),
    ("prints", "garbage earns the minimum", "score printed 'scoring \\n'"),
])
def test_check_task_names_the_broken_promise(flaw, check, why, capsys):
    assert main(["check-task", SPEC, "--task-option", f"flaw={flaw}", "--timeout-seconds",
                 "1", "--n", "2"]) == 1
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert any(line.startswith(f"FAIL  {check}") and why in line for line in failed), out
    assert "checks failed" in out.splitlines()[-1]


def test_check_task_on_rows_of_a_task_without_a_generator(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "2+2?", "ground_truth": "4"}\n{"prompt": "3+3?", "ground_truth": "6"}\n')
    assert main(["check-task", "generic"]) == 1
    assert "FAIL  examples: examples(8, seed=1) raised RecordError" in capsys.readouterr().out
    assert main(["check-task", "generic", "--data", str(rows)]) == 0
    out = capsys.readouterr().out
    assert "SKIP  the oracle earns the maximum: task 'generic' offers neither" in out and "FAIL" not in out
    results = contract.load_and_check(f"{FIXTURE}:NotATask")
    assert [r.status for r in results] == ["fail"] and "missing from_record" in results[0].message
