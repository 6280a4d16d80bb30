"""reasoning-gym's datasets as a task (optional package): the task contract on a few of them,
difficulty options passed through, its export rows, failing scorers, and the missing package."""

from __future__ import annotations

import sys

import pytest

import rlvr.tasks
from rlvr.tasks import TaskError, contract
from rlvr.tasks.base import Example


def test_without_the_package_the_task_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import reasoning_gym raises ImportError
    with pytest.raises(TaskError,
                       match=r"task 'reasoning_gym': .*needs the reasoning-gym package: pip install"):
        rlvr.tasks.get("reasoning_gym", dataset="chain_sum")


rg = pytest.importorskip("reasoning_gym")


@pytest.mark.parametrize("dataset", ["chain_sum", "word_sorting", "countdown", "basic_arithmetic"])
def test_the_task_contract_holds_on_reasoning_gym_datasets(dataset):
    task = rlvr.tasks.get("reasoning_gym", dataset=dataset)
    results = contract.run_contract(task, n=3)
    assert [(r.name, r.status, r.message) for r in results if r.status != "pass"] == []
    assert len(results) == 8


def test_difficulty_options_reach_the_dataset_and_its_scorer_judges():
    task = rlvr.tasks.get("reasoning_gym", dataset="chain_sum", config={"min_digits": 1, "max_digits": 1})
    two = task.examples(20, seed=5, min_terms=2, max_terms=2)
    four = task.examples(20, seed=5, min_terms=4, max_terms=4)
    assert all(e.prompt.count("+") + e.prompt.count("-") == 1 for e in two)
    assert all(e.prompt.count("+") + e.prompt.count("-") == 3 for e in four)
    assert two[0].metadata["min_terms"] == 2 and two[0].metadata["dataset"] == "chain_sum"
    example = two[0]
    right = task.score(f"<think>sum</think><answer>{example.answer}</answer>", example)
    assert ((right.reward, right.correct, right.format_ok, right.extracted)
            == (1.0, True, True, example.answer))
    wrong = task.score(f"<think>sum</think><answer>{int(example.answer) + 1}</answer>", example)
    assert (wrong.reward, wrong.correct, wrong.format_ok) == (0.0, False, True)
    unformatted = task.score(f"<answer>{example.answer}</answer>", example)  # no <think>: the default scheme
    assert (unformatted.reward, unformatted.correct, unformatted.format_ok) == (0.0, True, False)
    lenient = rlvr.tasks.get("reasoning_gym", dataset="chain_sum", reward_scheme="answer_only")
    assert lenient.score(f" {example.answer} ", example).reward == 1.0


def test_export_rows_load_and_bad_options_are_named():
    task = rlvr.tasks.get("reasoning_gym", dataset="chain_sum")
    data = rg.create_dataset("chain_sum", seed=3, size=2)
    example = task.from_record(dict(data[1]))  # reasoning-gym's own {question, answer, metadata}
    assert example.prompt == data[1]["question"] and example.metadata["dataset"] == "chain_sum"
    assert task.score(task.oracle_completion(example), example).reward == 1.0
    with pytest.raises(ValueError,
                       match=r"'chain_sun' is not one of reasoning-gym's .* \(did you mean 'chain_sum'\?\)"):
        rlvr.tasks.get("reasoning_gym", dataset="chain_sun")
    with pytest.raises(TypeError):
        rlvr.tasks.get("reasoning_gym", dataset="chain_sum", config={"no_such_field": 1})
    with pytest.raises(ValueError, match="field 'question'"):
        task.from_record({"answer": "1"})


def test_a_failing_dataset_scorer_scores_zero_and_is_reported_in_parts():
    task = rlvr.tasks.get("reasoning_gym", dataset="chain_sum")
    broken = Example("1 + 1 =", "2", {"dataset": "no_such_dataset_xyz", "rg_metadata": {}})
    score = task.score("<think>x</think><answer>2</answer>", broken)  # the worker cannot build its dataset
    assert (score.reward, score.correct) == (0.0, False) and score.parts["grader_error"] == 1.0
