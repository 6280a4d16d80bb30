"""The contract every registered task keeps (docs/design.md, "Tasks"), checked over rlvr.tasks.TASKS.

Optional task members this test uses when present:
  oracle_completion(example) -> str     a completion that earns the maximum reward
                                        (solution_trace(example) is used when that is all there is)
  reward_range -> (min, max)            default (0.0, 1.0): garbage earns min, the oracle max
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

import rlvr.tasks
from rlvr.tasks import TASKS, Example, Score, Task

GARBAGE = [
    "",
    "I don't know.",
    "lorem ipsum dolor sit amet " * 20,
    "<think>",
    "</answer></think>",
    "\x00\ufffd\udcff",
]
HUNDRED_KB = [
    "<answer>" * 12_500,  # unclosed tags: a regex that rescans from each one is quadratic
    "<think>" + "Let me reconsider the problem once more. " * 2_500,  # a ramble cut at the limit
]


@pytest.fixture(params=sorted(TASKS))
def task(request: pytest.FixtureRequest) -> Task:
    return rlvr.tasks.get(request.param)  # a registered task whose module does not import fails here


def reward_range(task: Task) -> tuple[float, float]:
    return tuple(getattr(task, "reward_range", (0.0, 1.0)))  # type: ignore[return-value]


def oracle(task: Task, example: Example) -> str:
    for method in ("oracle_completion", "solution_trace"):
        if hasattr(task, method):
            return getattr(task, method)(example)
    pytest.skip(f"task {task.name!r} offers neither oracle_completion nor solution_trace")


def test_is_a_task_with_its_registered_name(task: Task) -> None:
    assert isinstance(task, Task)
    assert task.name in TASKS and rlvr.tasks.get(task.name).name == task.name
    assert isinstance(task.response_prefix, str)
    low, high = reward_range(task)
    assert low < high


def test_examples_are_a_pure_function_of_seed_and_index(task: Task) -> None:
    first = task.examples(6, seed=11)
    assert len(first) == 6 and all(isinstance(e, Example) for e in first)
    assert task.examples(6, seed=11) == first
    assert task.examples(3, seed=11) == first[:3]
    prompts = [e.prompt for e in first]
    assert len(set(prompts)) == len(prompts), "different indices gave the same problem"
    assert [e.prompt for e in task.examples(6, seed=12)] != prompts


def test_messages_carry_the_prompt(task: Task) -> None:
    example = task.examples(1, seed=0)[0]
    messages = task.messages(example)
    assert messages and all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in messages)
    assert messages[-1]["role"] == "user" and example.prompt in messages[-1]["content"]


def test_oracle_earns_the_maximum(task: Task) -> None:
    high = reward_range(task)[1]
    for example in task.examples(8, seed=1):
        score = task.score(oracle(task, example), example)
        assert isinstance(score, Score)
        assert (score.correct, score.format_ok, score.reward) == (True, True, high)


@pytest.mark.parametrize("text", GARBAGE + HUNDRED_KB, ids=lambda t: f"{len(t)}chars-{t[:8]!r}")
def test_garbage_earns_the_minimum(task: Task, text: str) -> None:
    low = reward_range(task)[0]
    for example in task.examples(2, seed=2):
        score = task.score(text, example)
        assert isinstance(score, Score) and isinstance(score.reward, float) and math.isfinite(score.reward)
        assert score.correct is False
        assert score.reward == low


def test_oracle_answer_after_a_hundred_kilobytes_is_judged(task: Task) -> None:
    example = task.examples(1, seed=3)[0]
    text = oracle(task, example)
    long = "x " * 50_000 + text
    score = task.score(long, example)
    assert isinstance(score, Score) and math.isfinite(score.reward)
    assert score.correct is True  # `correct` judges the answer alone, wherever it starts


def test_records_round_trip(task: Task) -> None:
    high = reward_range(task)[1]
    for example in task.examples(5, seed=4):
        record = json.loads(json.dumps(task.to_record(example)))  # records must be JSON-serialisable
        again = task.from_record(record)
        assert again.prompt == example.prompt
        assert json.dumps(again.answer, sort_keys=True) == json.dumps(example.answer, sort_keys=True)
        assert task.score(oracle(task, again), again).reward == high


def test_a_registered_task_whose_module_does_not_import_fails(tmp_path) -> None:
    """The contract must fail, not skip, for a task that cannot be imported (pytest run on this file)."""
    (tmp_path / "broken_task.py").write_text("raise ImportError('a dependency is missing')\n")
    (tmp_path / "register_broken.py").write_text(
        "import rlvr.tasks\nrlvr.tasks.TASKS['broken'] = 'broken_task:Broken'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "register_broken", "-rfEs",
         __file__, "-k", "broken and test_is_a_task_with_its_registered_name"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout and "skipped" not in result.stdout
    assert "a dependency is missing" in result.stdout
