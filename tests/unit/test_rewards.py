"""rlvr.rewards: hand-computed length rewards, format rules (with a pre-filled prefix), combine."""

from __future__ import annotations

import math

import pytest

from rlvr.rewards import check_format, combine, cosine_length_reward, last_answer_block, overlong_penalty

# ----------------------------------------------------------------------------- cosine length reward


@pytest.mark.parametrize("length, correct, expected", [
    (0, True, 2.0),  # r_0 for correct answers
    (50, True, 1.5),  # midpoint: 1 + 0.5 (2 - 1)(1 + cos(pi/2)) = 1.5
    (25, True, 1.0 + 0.5 * (1 + math.sqrt(0.5))),  # cos(pi/4) = sqrt(1/2): 1.853553...
    (0, False, -10.0),  # a short wrong answer is penalised most
    (50, False, -5.0),  # 0 + 0.5 (-10 - 0)(1 + 0)
    (75, False, 0.5 * -10.0 * (1 - math.sqrt(0.5))),  # -1.464466...
    (100, True, -10.0),  # at the limit: exceed penalty, whatever the answer
    (150, False, -10.0),
])
def test_cosine_length_reward_by_hand(length, correct, expected):
    assert cosine_length_reward(length, 100, correct) == pytest.approx(expected, abs=1e-12)


def test_cosine_direction_shorter_correct_better_longer_wrong_better():
    correct = [cosine_length_reward(t, 100, True) for t in range(100)]
    wrong = [cosine_length_reward(t, 100, False) for t in range(100)]
    assert all(a > b for a, b in zip(correct, correct[1:]))
    assert all(a < b for a, b in zip(wrong, wrong[1:]))  # the direction some ports invert
    assert min(correct) > max(wrong)


def test_cosine_custom_values_and_bad_limit():
    value = cosine_length_reward(0, 10, True, correct_start=1.0, correct_end=0.5)
    assert value == 1.0
    assert cosine_length_reward(10, 10, False, exceed_penalty=-3.0) == -3.0
    with pytest.raises(ValueError, match="max_length"):
        cosine_length_reward(1, 0, True)


# ----------------------------------------------------------------------------- DAPO overlong penalty


@pytest.mark.parametrize("length, expected", [
    (0, 0.0), (16, 0.0),  # up to max - cache: no penalty
    (17, -0.25), (18, -0.5), (20, -1.0),  # ((20 - 4) - length) / 4 inside the window
    (21, -1.0), (1000, -1.0),  # beyond the limit
])
def test_overlong_penalty_by_hand(length, expected):
    assert overlong_penalty(length, 20, 4) == expected


def test_overlong_penalty_dapo_sizes_and_bad_arguments():
    assert overlong_penalty(16384, 20480, 4096) == 0.0
    assert overlong_penalty(18432, 20480, 4096) == -0.5
    for cache in (0, 21):
        with pytest.raises(ValueError, match="cache_length"):
            overlong_penalty(5, 20, cache)


# ----------------------------------------------------------------------------- format


@pytest.mark.parametrize("text, ok, reason", [
    ("<think>a</think><answer>b</answer>", True, ""),
    ("<think>a</think>\n<answer>b</answer>\n", True, ""),
    ("<think>a</think><answer>b</answer><|im_end|>", True, ""),  # end-of-turn marker is not "text after"
    ("<think>a</think><answer>b</answer> <|endoftext|>\n", True, ""),
    ("<think>a</think><answer>b</answer> thanks", False, "text after the last closing tag"),
    ("<answer>b</answer>", False, "<think> missing"),
    ("<think>a</think>", False, "<answer> missing"),
    ("<think>a</think><think>b</think><answer>c</answer>", False, "<think> repeated 2 times"),
    ("<think>a</think><answer>b</answer><answer>c</answer>", False, "<answer> repeated 2 times"),
    ("<answer>b</answer><think>a</think>", False, "<answer> out of order"),  # tags are checked in order
    ("</think><think>a<answer>b</answer>", False, "</think> out of order"),
    ("<think>a<answer>b</answer></think>", False, "<answer> out of order"),  # answer inside think
])
def test_check_format_rules(text, ok, reason):
    result = check_format(text)
    assert (result.ok, result.reason) == (ok, reason)


def test_check_format_with_prefilled_think():
    completion = "reasoning</think><answer>(1) A is a knight</answer>"
    assert check_format(completion, prefix="<think>").ok
    assert check_format(completion).reason == "<think> missing"  # the same text without the prefix
    again = "<think>reasoning</think><answer>x</answer>"
    assert check_format(again, prefix="<think>").reason == "<think> repeated 2 times"
    assert check_format(again, prefix="<think>\n").reason == "<think> repeated 2 times"


def test_check_format_options_and_answer_field():
    result = check_format("<think>a</think><answer> x </answer> trailing", allow_text_after=True)
    assert result.ok and result.answer == "x"
    assert check_format("<answer>x</answer>", tags=("answer",)).ok
    assert check_format("anything", tags=()).ok
    assert check_format("<answer>1</answer><answer>2</answer>").answer == "2"


def test_last_answer_block():
    assert last_answer_block("<answer> a </answer> text <answer>\nb\n</answer>") == "b"
    assert last_answer_block("<answer>a</answer><answer>unclosed") == "a"
    assert last_answer_block("no tags") is None
    assert last_answer_block("<answer></answer>") == ""
    assert last_answer_block("<answer>a<answer>b</answer>") == "b"  # the opening tag nearest the close
    assert last_answer_block("<answer><answer>b</answer></answer>") == "b</answer>"  # the last close counts
    assert last_answer_block("</answer><answer>b") is None  # a close with no open before it
    assert last_answer_block("<answer>a</answer>b</answer>") == "a</answer>b"
    assert last_answer_block("<answer a</answer>") is None


# ----------------------------------------------------------------------------- combine


def test_combine():
    parts = {"answer": 2.0, "format": -1.0, "length": 0.5}
    assert combine(parts) == 1.5
    assert combine(parts, {"length": 0.0}) == 1.0
    assert combine(parts, {"answer": 0.5, "format": 2.0}) == 1.0 - 2.0 + 0.5
    assert combine({}) == 0.0
    with pytest.raises(KeyError, match="lenght"):
        combine(parts, {"lenght": 1.0})
