"""Reward functions from outside the package: both signatures, deadlines, errors, bad specs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rlvr.tasks.reward_functions import RewardFunctionError, load_reward_function

CODE = textwrap.dedent('''
    import time

    def verl_score(data_source, solution_str, ground_truth, extra_info=None):
        return {"score": float(solution_str.strip() == str(ground_truth)), "length": len(solution_str)}

    def verl_float(data_source, solution_str, ground_truth, extra_info=None):
        return 0.5

    def trl_reward(prompts, completions, **columns):
        return [None if c == "skip" else float(len(c) > 3) for c in completions]

    def raises(data_source, solution_str, ground_truth, extra_info=None):
        raise RuntimeError("boom")

    def hangs(data_source, solution_str, ground_truth, extra_info=None):
        time.sleep(60)

    def not_a_number(data_source, solution_str, ground_truth, extra_info=None):
        return "high"

    def wrong_signature(x, y):
        return 1.0
''')


@pytest.fixture()
def reward_file(tmp_path: Path) -> str:
    path = tmp_path / "my_rewards.py"
    path.write_text(CODE)
    return str(path)


def test_verl_dict_float_and_trl(reward_file: str) -> None:
    verl = load_reward_function(f"{reward_file}:verl_score")
    assert verl.kind == "verl"
    call = verl("q", "42", 42)
    assert call.status == "ok" and call.reward == 1.0 and call.parts == {"length": 2.0}
    assert verl("q", "41", 42).reward == 0.0
    assert load_reward_function(f"{reward_file}:verl_float")("q", "x", 1).reward == 0.5
    trl = load_reward_function(f"{reward_file}:trl_reward")
    assert trl.kind == "trl"
    assert trl("q", "long answer", None).reward == 1.0
    assert trl("q", "skip", None).reward is None


def test_raise_hang_and_non_number_give_error_reward_and_are_counted(reward_file: str) -> None:
    reports: list[str] = []
    failing = load_reward_function(f"{reward_file}:raises", error_reward=-1.0, report=reports.append)
    call = failing("what is 6*7?", "c" * 1000, 1, "toy")
    assert call.status == "error" and call.reward == -1.0 and "boom" in call.detail
    assert failing.errors == 1 and failing.first_failures["error"]["input"]["completion"] == "c" * 1000
    assert len(reports) == 1 and "raises failed (RuntimeError: boom)" in reports[0]
    assert "what is 6*7?" in reports[0] and "data_source='toy'" in reports[0] and "reward -1" in reports[0]
    assert "[... 700 characters ...]" in reports[0]  # the completion as an excerpt, not whole
    assert failing("q", "d", 1).status == "error" and failing.errors == 2
    assert len(reports) == 1  # only the first occurrence is reported
    hanging = load_reward_function(f"{reward_file}:hangs", timeout_seconds=1.0, report=reports.append)
    call = hanging("q", "c", 1)
    assert call.status == "timeout" and call.reward == 0.0 and hanging.timeouts == 1
    assert hanging("q", "c", 1).status == "timeout" and hanging.timeouts == 2  # the pool recovered
    assert len(reports) == 2 and "missed its 1s deadline" in reports[1] and "reward/timeouts" in reports[1]
    wrong = load_reward_function(f"{reward_file}:not_a_number")
    assert wrong("q", "c", 1).status == "error" and wrong.errors == 1
    assert "expected a finite number" in wrong.first_failures["error"]["detail"]


def test_failure_counts_of_a_wrapped_task_and_their_per_step_increase(reward_file: str) -> None:
    from rlvr.tasks.generic import GenericTask, WithRewardFunctions, failure_metrics, reward_failures

    task = GenericTask()
    assert reward_failures(task) == {} and failure_metrics(task, {}) == {}  # no function: no metric
    scored = WithRewardFunctions(task, [(load_reward_function(f"{reward_file}:raises"), 1.0),
                                        (load_reward_function(f"{reward_file}:hangs", timeout_seconds=0.5),
                                         1.0)])
    example = task.from_record({"prompt": "q", "answer": "1"})
    scored.score("a", example)
    before = reward_failures(scored)
    assert before == {"errors": 1, "timeouts": 1}
    for text in ("b", "c"):
        scored.score(text, example)
    assert failure_metrics(scored, before) == {"reward/errors": 2.0, "reward/timeouts": 2.0}


def test_bad_specs_name_the_spec(reward_file: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_xyz\n")
    cases = {
        f"{broken}:f": "does not import",
        f"{tmp_path}/missing.py:f": "does not exist",
        f"{reward_file}:absent": "has no function 'absent'",
        f"{reward_file}:wrong_signature": "expected verl's compute_score",
        "no_colon": "expected 'path/to/file.py:name'",
        "no_such_pkg_xyz.mod:f": "does not import",
    }
    for spec, message in cases.items():
        with pytest.raises(RewardFunctionError, match=message) as info:
            load_reward_function(spec)
        assert spec.rpartition(":")[2] in str(info.value)


def test_generic_task_rows_and_weighted_functions(reward_file: str) -> None:
    from rlvr.tasks.generic import GenericTask, WithRewardFunctions

    task = GenericTask()
    verl_row = {"prompt": [{"role": "user", "content": "6*7?"}], "data_source": "toy",
                "reward_model": {"ground_truth": "42"}}
    example = task.from_record(verl_row)
    assert example.prompt == "6*7?" and example.answer == "42"
    assert task.messages(example) == verl_row["prompt"]  # the row's chat prompt, as given
    assert task.from_record(task.to_record(example)) == example
    with pytest.raises(ValueError, match="field 'prompt'"):
        task.from_record({"question": "no prompt"})
    scored = WithRewardFunctions(task, [(load_reward_function(f"{reward_file}:verl_score"), 2.0),
                                        (load_reward_function(f"{reward_file}:raises"), 1.0)])
    score = scored.score("42", example)
    assert score.reward == 2.0 and score.correct
    assert (score.parts["reward_errors"] == 1.0 and score.parts["fn1"] == 0.0
            and score.parts["fn0/length"] == 2.0)
    assert scored.score("41", example).reward == 0.0 and not scored.score("41", example).correct


def test_recipe_reward_section_builds_the_scored_task_and_names_bad_specs(reward_file: str) -> None:
    from rlvr import tasks
    from rlvr.config import ConfigError, load_config
    from rlvr.trainers.pipeline import with_reward_functions

    config = load_config(overrides=["data.task=generic",
                                    f"reward.functions=[{{function: '{reward_file}:verl_score', "
                                    "weight: 3}]", "reward.timeout_seconds=2"])
    task = with_reward_functions(tasks.get(config.data.task), config.reward)
    example = task.from_record({"prompt": "q", "answer": "7"})
    assert task.score("7", example).reward == 3.0
    with pytest.raises(ConfigError, match="needs reward.function"):
        with_reward_functions(tasks.get("generic"), load_config(overrides=["data.task=generic"]).reward)
    bad = load_config(overrides=[f"reward.function={reward_file}:wrong_signature"]).reward
    with pytest.raises(ConfigError, match="wrong_signature"):
        with_reward_functions(tasks.get("countdown"), bad)
