"""The contract every registered task keeps (docs/design.md, "Tasks"), checked over rlvr.tasks.TASKS.

The checks live in rlvr.tasks.contract, which `rlvr check-task` runs on a task from outside the
package; each test here is one of them on one registered task.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import rlvr.tasks
from rlvr.tasks import TASKS, Task, contract


@pytest.fixture(params=sorted(TASKS))
def task(request: pytest.FixtureRequest) -> Task:
    return rlvr.tasks.get(request.param)  # a registered task whose module does not import fails here


def needs_oracle(task: Task) -> None:
    try:
        contract.oracle(task, task.examples(1, seed=0)[0])
    except contract.NoOracle as reason:
        pytest.skip(str(reason))


def test_is_a_task_with_its_registered_name(task: Task) -> None:
    contract.check_protocol(task)
    assert task.name in TASKS and rlvr.tasks.get(task.name).name == task.name


def test_examples_are_a_pure_function_of_seed_and_index(task: Task) -> None:
    contract.check_examples_are_pure(task)


def test_messages_carry_the_prompt(task: Task) -> None:
    contract.check_messages(task, task.examples(3, seed=0))


def test_oracle_earns_the_maximum(task: Task) -> None:
    needs_oracle(task)
    contract.check_oracle_earns_the_maximum(task, task.examples(8, seed=1))


@pytest.mark.parametrize("text", contract.GARBAGE + contract.HUNDRED_KB,
                         ids=lambda t: f"{len(t)}chars-{t[:8]!r}")
def test_garbage_earns_the_minimum(task: Task, text: str) -> None:
    contract.check_garbage_earns_the_minimum(task, task.examples(2, seed=2), texts=[text])


def test_oracle_answer_after_a_hundred_kilobytes_is_judged(task: Task) -> None:
    needs_oracle(task)
    contract.check_oracle_after_a_hundred_kilobytes(task, task.examples(1, seed=3)[0])


def test_records_round_trip(task: Task) -> None:
    needs_oracle(task)
    contract.check_records_round_trip(task, task.examples(5, seed=4))


def test_the_optional_hooks_have_their_form(task: Task) -> None:
    contract.check_hooks(task, task.examples(3, seed=5))


def test_the_tasks_own_records_are_recognised_as_its_own(task: Task) -> None:
    """`rlvr data stats` without --task names the task of a file that `rlvr data gen` wrote."""
    from rlvr.data.tools import guess_task

    assert all(guess_task(task.to_record(e)) == task.name for e in task.examples(3, seed=6))


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
