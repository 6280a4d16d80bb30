"""Countdown: generator, exact-arithmetic verifier (never eval), reward schemes, records."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from rlvr.tasks import RecordError
from rlvr.tasks.base import Example
from rlvr.tasks.countdown import Countdown, ExpressionError, evaluate, judge, parse_expression, solve

HANG_SECONDS = 15.0


def problem(numbers: list[int], target: int) -> Example:
    return Example(prompt="p", answer={"numbers": numbers, "target": target})


def wrapped(answer: str) -> str:
    return f"<think>\nworking\n</think>\n<answer>{answer}</answer>"


@pytest.fixture(scope="module")
def task() -> Countdown:
    return Countdown()


# -- the expression language -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1 + 2 * 3", Fraction(7)),
        ("(1 + 2) * 3", Fraction(9)),
        ("8 / (3 - 8 / 3)", Fraction(24)),  # exact: floats give 23.999999999999993
        ("10 - 4 - 3", Fraction(3)),  # left-associative
        ("12 / 3 / 2", Fraction(2)),
        ("-3 + 5", Fraction(2)),
        ("- (2 - 7)", Fraction(5)),
        ("1 / 3", Fraction(1, 3)),
        ("2.5 * 2", Fraction(5)),
    ],
)
def test_exact_evaluation(text: str, value: Fraction) -> None:
    assert evaluate(parse_expression(text)) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2 ** 3",
        "+3",
        "(1 + 2",
        "1 + 2)",
        "3 4",
        "__import__('os').system('true')",
        "44 \u2212 19",  # MINUS SIGN
        "44 \u00d7 2",  # MULTIPLICATION SIGN
        "44 \u00f7 2",  # DIVISION SIGN
        "\uff14\uff14 + 19",  # FULLWIDTH DIGIT FOUR
        "\u0664\u0664 + 19",  # ARABIC-INDIC DIGIT FOUR: int() would accept it
        "44 \uff0b 19",  # FULLWIDTH PLUS
        "9" * 13,
        "(" * 40 + "1" + ")" * 40,
        "1 + " * 300 + "1",
    ],
)
def test_malformed_expressions_are_rejected(text: str) -> None:
    with pytest.raises(ExpressionError):
        parse_expression(text)


# -- the verifier -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("answer", "well_formed", "correct"),
    [
        ("44 + 19 + 35", True, True),
        ("(44 + 19) + 35 = 98", True, True),  # an "= target" tail is allowed
        ("44 + 19 + 35 = 99", True, False),  # ... and must name the target
        ("44 + 19 + 35 = 98 = 98", False, False),
        ("35 + 44 + 19", True, True),
        ("44 + 19 - 35", True, False),  # wrong value
        ("44 + 19", True, False),  # 35 unused
        ("44 + 19 + 35 + 0", True, False),  # 0 is not given
        ("44 + 19 + 35 * 1", True, False),
        ("98", True, False),  # a literal that is not a given number
        ("4419 + 35", True, False),  # concatenating digits is not an operation
        ("44.0 + 19 + 35", True, True),  # literals compare by value
        ("the answer is 98", False, False),
        ("", False, False),
    ],
)
def test_judge_hand_written(answer: str, well_formed: bool, correct: bool) -> None:
    assert judge(answer, [44, 19, 35], 98, "exactly_once") == (well_formed, correct)


def test_number_use_rules() -> None:
    numbers = [1, 2, 3, 4]
    assert judge("1 * 2 * 3 * 4", numbers, 24, "exactly_once") == (True, True)
    assert judge("2 * 3 * 4", numbers, 24, "exactly_once") == (True, False)
    assert judge("2 * 3 * 4", numbers, 24, "at_most_once") == (True, True)
    assert judge("4 * 3 * 2 * 1 * 1", numbers, 24, "exactly_once") == (True, False)
    assert judge("4 * 3 * 2 * 1 * 1", numbers, 24, "at_most_once") == (True, False)  # 1 twice
    assert judge("(2 + 2) * 3 * 2", [2, 2, 3, 2], 24, "exactly_once") == (True, True)  # repeats as given


def test_division_by_zero_is_a_wrong_attempt_not_an_error() -> None:
    assert judge("6 / (3 - 3) + 1", [6, 3, 3, 1], 7, "exactly_once") == (True, False)
    score = Countdown(reward_scheme="tinyzero").score(wrapped("6 / (3 - 3) + 1"), problem([6, 3, 3, 1], 7))
    assert (score.correct, score.reward) == (False, 0.1)


def test_default_rewards(task: Countdown) -> None:
    example = problem([44, 19, 35], 98)
    right = task.score(wrapped("44 + 19 + 35"), example)
    assert (right.reward, right.correct, right.format_ok) == (1.0, True, True)
    assert right.parts == {"answer": 1.0, "format": 1.0, "well_formed": 1.0}
    assert right.extracted == "44 + 19 + 35"
    assert task.score(wrapped("44 + 19 - 35"), example).reward == 0.0
    no_tags = task.score("<answer>44 + 19 + 35</answer>", example)
    assert (no_tags.correct, no_tags.format_ok, no_tags.reward) == (True, False, 0.0)


def test_tinyzero_rewards() -> None:
    task, example = Countdown(reward_scheme="tinyzero"), problem([44, 19, 35], 98)
    assert task.score(wrapped("44 + 19 + 35"), example).reward == 1.0
    assert task.score("<answer>44 + 19 + 35</answer>", example).reward == 1.0  # tags not required
    assert task.score(wrapped("44 + 19 - 35"), example).reward == 0.1
    assert task.score(wrapped("44 + 19"), example).reward == 0.1
    assert task.score(wrapped("44 \u2212 19 + 35"), example).reward == 0.0
    assert task.score(wrapped("ninety-eight"), example).reward == 0.0
    assert task.score("<think>44 + 19 + 35</think>", example).reward == 0.0  # no answer block


def test_the_last_answer_block_is_graded(task: Countdown) -> None:
    example = problem([44, 19, 35], 98)
    text = "<think>x</think><answer>1 + 1</answer><answer>44 + 19 + 35</answer>"
    score = task.score(text, example)
    assert (score.correct, score.format_ok, score.reward) == (True, False, 0.0)
    two_answers = "<think>x</think><answer>44 + 19 + 35</answer><answer>1</answer>"
    assert task.score(two_answers, example).correct is False


def test_adversarial_sizes_are_bounded(task: Countdown) -> None:
    example = problem([44, 19, 35], 98)
    start = time.monotonic()
    for text in [
        "<answer>" * 13_000,
        wrapped("(" * 50_000 + "44 + 19 + 35" + ")" * 50_000),
        wrapped("9" * 100_000),
        wrapped("1 + " * 25_000 + "1"),
    ]:
        score = task.score(text, example)
        assert score.correct is False
    long_think = "<think>" + "hmm " * 25_000 + "</think>\n<answer>44 + 19 + 35</answer>"
    assert task.score(long_think, example).reward == 1.0
    assert time.monotonic() - start < HANG_SECONDS


def test_scores_are_total(task: Countdown) -> None:
    broken = Example(prompt="p", answer={"numbers": None, "target": "x"})
    score = task.score(wrapped("1 + 2"), broken)
    assert (score.reward, score.correct) == (0.0, False)


# -- generation and solving ---------------------------------------------------------------------------

@pytest.mark.parametrize("count", [3, 4, 5, 6])
def test_generated_problems_are_solvable_and_deterministic(task: Countdown, count: int) -> None:
    examples = task.examples(10, seed=9, numbers=count)
    assert examples == task.examples(10, seed=9, numbers=count)
    assert task.examples(3, seed=9, numbers=count) == examples[:3]
    for example in examples:
        numbers, target = example.answer["numbers"], example.answer["target"]
        assert len(numbers) == count and all(1 <= n <= 99 for n in numbers) and 1 <= target <= 100
        assert judge(example.metadata["solution"], numbers, target, "exactly_once") == (True, True)
        assert task.score(task.oracle_completion(example), example).reward == 1.0


def test_response_prefix_counts_as_written() -> None:
    task = Countdown(response_prefix="<think>\n")
    example = task.examples(1, seed=0)[0]
    oracle = task.oracle_completion(example)
    assert "<think>" not in oracle
    assert task.score(oracle, example).reward == 1.0
    assert task.score("<think>\n" + oracle, example).format_ok is False


def test_bad_options_are_errors(task: Countdown) -> None:
    for count in (2, 7):
        with pytest.raises(ValueError, match="numbers"):
            task.examples(1, seed=0, numbers=count)
    with pytest.raises(ValueError, match="reward_scheme"):
        Countdown(reward_scheme="logic_rl")
    with pytest.raises(ValueError, match="numbers_use"):
        Countdown(numbers_use="twice")


def test_solve() -> None:
    found = solve([1, 2, 3, 4], 24)
    assert found is not None and judge(found, [1, 2, 3, 4], 24, "exactly_once") == (True, True)
    found = solve([3, 3, 8, 8], 24)  # only 8 / (3 - 8 / 3): needs exact fractions
    assert found is not None and judge(found, [3, 3, 8, 8], 24, "exactly_once") == (True, True)
    assert solve([1, 1, 1], 100) is None
    assert solve([2, 3, 100], 6) is None and solve([2, 3, 100], 6, use_all=False) == "2 * 3"


def test_messages_state_numbers_rule_and_format() -> None:
    example = Countdown().examples(1, seed=0)[0]
    system, user = Countdown().messages(example)
    assert "<answer>" in system["content"]
    assert example.prompt in user["content"] and "exactly once" in user["content"]
    assert "at most once" in Countdown(numbers_use="at_most_once").messages(example)[1]["content"]


# -- records ------------------------------------------------------------------------------------------

def test_from_record_reads_tinyzero_and_verl_rows(task: Countdown) -> None:
    example = task.from_record({"target": 98, "nums": [44, 19, 35]})
    assert example.answer == {"numbers": [44, 19, 35], "target": 98}
    assert example.prompt == "Using the numbers [44, 19, 35], create an equation that equals 98."
    assert task.score(task.oracle_completion(example), example).reward == 1.0  # solved on demand
    verl = {"data_source": "countdown",
            "reward_model": {"ground_truth": {"target": 98, "numbers": [44, 19, 35]}}}
    assert task.from_record(verl).answer == example.answer
    numpy = pytest.importorskip("numpy")
    row = {"target": numpy.int64(98), "nums": numpy.array([44, 19, 35])}
    assert task.from_record(row).answer == example.answer


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"nums": [1, 2, 3]}, "'target'"),
        ({"target": 5}, "'nums'"),
        ({"target": 5, "nums": "1 2 3"}, "'nums'"),
        ({"target": 5, "nums": [1, 2.5, 3]}, "'nums'"),
        ({"target": 5, "nums": []}, "'nums'"),
        ({"target": "5", "nums": [1, 2, 3]}, "'target'"),
        ({"target": True, "nums": [1, 2, 3]}, "'target'"),
    ],
)
def test_bad_records_name_the_field(task: Countdown, record: dict, field: str) -> None:
    with pytest.raises(RecordError, match=field):
        task.from_record(record)


def test_records_round_trip(task: Countdown) -> None:
    for example in task.examples(5, seed=3, numbers=5):
        assert task.from_record(task.to_record(example)) == example
