"""Knights and Knaves: generator, solver, trace, answer parsing, both reward schemes, records."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr.data.io import read_records
from rlvr.tasks import RecordError, get
from rlvr.tasks.base import Example
from rlvr.tasks.knights_knaves import (
    KnightsKnaves,
    evaluate,
    format_answer,
    logic_rl_roles,
    parse_answer,
    parse_statements,
    render_statement,
    solve,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PUBLIC = FIXTURES / "kk_public_sample.jsonl"
VERL = FIXTURES / "kk_logic_rl_verl.jsonl"
# Responses to the two puzzles of kk_logic_rl_verl.jsonl (field index), each with the score Logic-RL's
# reward gives it: verl/utils/reward_score/kk.py compute_score in github.com/Unakar/Logic-RL at
# commit 9d2c457, run on the row's prompt + response, as Logic-RL's verl reward manager calls it.
LOGIC_RL_SCORES = FIXTURES / "kk_logic_rl_scores.jsonl"
NAMES = ["Zoey", "Oliver", "Ethan"]
GOLD = [True, False, True]  # Zoey knight, Oliver knave, Ethan knight


def brute_force(statements):
    """An independent solver: tree evaluation over every assignment (the task's is bit-parallel)."""
    n = len(statements)
    return [list(a) for a in itertools.product((False, True), repeat=n)
            if all(evaluate(s, a) == a[i] for i, s in enumerate(statements))]


def hand_example(people_names=NAMES, solution=GOLD):
    from rlvr.tasks.base import Example

    return Example(prompt="puzzle", answer={"names": list(people_names), "solution": list(solution)})


def completion(answer: str, think: str = "reasoning") -> str:
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


RIGHT = "(1) Zoey is a knight\n(2) Oliver is a knave\n(3) Ethan is a knight"
WRONG = "(1) Zoey is a knight\n(2) Oliver is a knight\n(3) Ethan is a knight"


# ----------------------------------------------------------------------------- generator


def test_same_seed_same_examples_and_prefix_stability():
    task = KnightsKnaves()
    first = task.examples(20, seed=3)
    assert first == task.examples(20, seed=3)
    assert task.examples(5, seed=3) == first[:5]  # example i depends on (seed, i) only
    assert [e.prompt for e in task.examples(20, seed=4)] != [e.prompt for e in first]
    assert len({e.prompt for e in first}) == 20


def test_examples_are_identical_in_another_process_with_another_hash_seed():
    code = ("from rlvr.tasks import get; e = get('knights_knaves').examples(3, seed=7, people=[3, 5]);"
            "print(repr([(x.prompt, x.answer) for x in e]))")
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
        outputs.add(run.stdout)
    here = KnightsKnaves().examples(3, seed=7, people=[3, 5])
    assert outputs == {repr([(x.prompt, x.answer) for x in here]) + "\n"}


@pytest.mark.parametrize("people", range(2, 9))
def test_generated_puzzles_have_exactly_the_stated_solution(people):
    for example in KnightsKnaves().examples(12 if people < 7 else 4, seed=1, people=people):
        statements = example.metadata["statements"]
        assert len(statements) == people == len(example.answer["names"])
        assert brute_force(statements) == [example.answer["solution"]]
        assert solve(statements) == [example.answer["solution"]]


def test_statement_shape_follows_the_public_set():
    examples = KnightsKnaves().examples(600, seed=2, people=[2, 3, 4, 5])
    tops = set()
    for example in examples:
        for speaker, statement in enumerate(example.metadata["statements"]):
            tops.add(statement[0] if statement[0] in ("not", "and", "or", "->", "<=>") else "leaf")
            leaves = [statement] if statement[0] in ("telling-truth", "lying") else list(statement[1:])
            # depth limit 2: every operand is a leaf
            assert all(leaf[0] in ("telling-truth", "lying") for leaf in leaves)
            assert ("lying", speaker) not in leaves  # never "I am a knave"
            assert statement != ("not", ("telling-truth", speaker))  # nor "I am not a knight"
    assert tops == {"leaf", "not", "and", "or", "->", "<=>"}


def test_people_list_mixes_sizes_by_index_and_knights_are_about_half():
    examples = KnightsKnaves().examples(900, seed=5, people=[3, 4, 6])
    assert [e.metadata["people"] for e in examples[:6]] == [3, 4, 6, 3, 4, 6]
    roles = [r for e in examples for r in e.answer["solution"]]
    assert 0.45 < sum(roles) / len(roles) < 0.62  # the public set has about 54% knights
    meta = examples[1].metadata
    assert (meta["seed"], meta["index"], meta["source"]) == (5, 1, "generated")


@pytest.mark.parametrize("bad", [1, 9, 0, [3, 9], [], "3", 3.0])
def test_people_out_of_range_is_an_error(bad):
    with pytest.raises(ValueError, match="people"):
        KnightsKnaves().examples(2, seed=0, people=bad)


def test_unknown_difficulty_option_and_bad_options_are_errors():
    with pytest.raises(ValueError, match="unknown difficulty"):
        KnightsKnaves().examples(2, seed=0, depth=3)
    with pytest.raises(ValueError, match="reward_scheme"):
        KnightsKnaves(reward_scheme="logic-rl")
    with pytest.raises(ValueError, match="phrasing"):
        KnightsKnaves(phrasing="fancy")
    with pytest.raises(ValueError, match="knight"):
        KnightsKnaves(names=["Ann", "Knightley", "Bob"])
    with pytest.raises(ValueError, match="distinct"):
        KnightsKnaves(names=["Ann", "ann", "Bob"])
    with pytest.raises(ValueError, match="pool has 3"):
        KnightsKnaves(names=["Ann", "Bea", "Cy"]).examples(1, seed=0, people=4)


def test_names_option_and_rendering():
    task = KnightsKnaves(names=["Ann", "Bea", "Cy", "Dot"], phrasing="plain")
    example = task.examples(1, seed=0, people=3)[0]
    names = example.answer["names"]
    assert set(names) <= {"Ann", "Bea", "Cy", "Dot"} and len(set(names)) == 3
    prompt = example.prompt
    assert prompt.startswith("A very special island is inhabited only by knights and knaves. Knights always "
                             "tell the truth, and knaves always lie. You meet 3 inhabitants: "
                             f"{names[0]}, {names[1]}, and {names[2]}.")
    assert prompt.endswith(" So who is a knight and who is a knave?")
    for name, statement in zip(names, example.metadata["statements"]):
        assert f"{name} says that {render_statement(statement, names)}." in prompt
    two = KnightsKnaves().examples(1, seed=0, people=2)[0]
    assert "You meet 2 inhabitants: {} and {}.".format(*two.answer["names"]) in two.prompt


def test_terse_phrasing_is_names_then_plain_statements_and_round_trips():
    task = KnightsKnaves(names=["Ann", "Bea", "Cy", "Dot"], phrasing="terse")
    example = task.examples(1, seed=0, people=3)[0]
    names, statements = example.answer["names"], example.metadata["statements"]
    said = " ".join(f"{n} says that {render_statement(s, names)}." for n, s in zip(names, statements))
    assert example.prompt == f"{names[0]}, {names[1]}, and {names[2]}. {said}"
    # Same puzzle and trace as the plain phrasing: only the prompt's wording changes.
    plain_task = KnightsKnaves(names=["Ann", "Bea", "Cy", "Dot"], phrasing="plain")
    plain = plain_task.examples(1, seed=0, people=3)[0]
    assert plain.answer == example.answer and task.solution_trace(example) == task.solution_trace(plain)
    again = task.from_record(task.to_record(example))
    assert again.prompt == example.prompt and again.answer == example.answer
    assert task.score(task.solution_trace(example), again).correct


def test_render_statement_wording():
    names = ["A", "B", "C"]
    assert render_statement(("telling-truth", 1), names) == "B is a knight"
    assert render_statement(("not", ("lying", 2)), names) == "C is not a knave"
    assert (render_statement(("->", ("telling-truth", 0), ("lying", 1)), names)
            == "if A is a knight then B is a knave")
    assert (render_statement(("<=>", ("lying", 0), ("lying", 2)), names)
            == "A is a knave if and only if C is a knave")
    assert (render_statement(("or", ("lying", 0), ("telling-truth", 2)), names)
            == "A is a knave or C is a knight")


# ----------------------------------------------------------------------------- solver


def test_solver_hand_checked_puzzles():
    # Fixture row 0: Ruby says "Owen knave or Grace knight", Owen "Ruby knight iff Grace knave",
    # Grace "Owen is not a knight". Ruby, Grace knights and Owen a knave: Ruby true, Owen
    # (T iff F) false, Grace true -- consistent; no other assignment is.
    row = (("or", ("lying", 1), ("telling-truth", 2)), ("<=>", ("telling-truth", 0), ("lying", 2)),
           ("not", ("telling-truth", 1)))
    assert solve(row) == [[True, False, True]]
    # "B is a knight" / "A is a knave": no consistent assignment.
    assert solve((("telling-truth", 1), ("lying", 0))) == []
    # "B is a knave" / "A is a knave": two.
    assert solve((("lying", 1), ("lying", 0))) == [[True, False], [False, True]]


def test_bit_parallel_solver_equals_tree_evaluation_on_arbitrary_trees():
    import random

    rng = random.Random(0)

    def tree(n, depth):
        if depth == 0 or rng.random() < 0.3:
            return (rng.choice(["telling-truth", "lying"]), rng.randrange(n))
        op = rng.choice(["not", "and", "or", "->", "<=>"])
        if op == "not":
            return ("not", tree(n, depth - 1))
        arity = rng.choice([2, 3]) if op in ("and", "or") else 2
        return (op, *(tree(n, depth - 1) for _ in range(arity)))

    for _ in range(300):
        n = rng.randint(2, 5)
        statements = tuple(tree(n, 3) for _ in range(n))
        assert sorted(solve(statements)) == sorted(brute_force(statements))


def test_evaluate_truth_tables():
    for a, b in itertools.product((True, False), repeat=2):
        leaves = (("telling-truth", 0), ("telling-truth", 1))
        assert evaluate(("->", *leaves), (a, b)) == ((not a) or b)
        assert evaluate(("<=>", *leaves), (a, b)) == (a == b)
        assert evaluate(("and", *leaves), (a, b)) == (a and b)
        assert evaluate(("or", *leaves), (a, b)) == (a or b)
        assert evaluate(("not", ("lying", 0)), (a, b)) == a


def test_parse_statements_literal_lists_and_rejections():
    text = "(('not', ('telling-truth', 2)), ('or', ('telling-truth', 1), ('lying', 2)), ('lying', 0))"
    parsed = parse_statements(text, 3)
    assert parsed == (("not", ("telling-truth", 2)), ("or", ("telling-truth", 1), ("lying", 2)), ("lying", 0))
    assert parse_statements(json.loads(json.dumps(parsed)), 3) == parsed  # lists from JSON become tuples
    bad = [
        "__import__('os').system('echo hacked')",  # literal_eval refuses calls: never evaluated
        "(('telling-truth', 3), ('lying', 0), ('lying', 1))",  # index out of range
        "(('xor', ('lying', 1), ('lying', 2)), ('lying', 0), ('lying', 1))",  # unknown operator
        "(('->', ('lying', 1)), ('lying', 0), ('lying', 1))",  # wrong arity
        "(('lying', 1), ('lying', 0))",  # two statements for three people
        "(('lying', True), ('lying', 0), ('lying', 1))",  # a bool is not an index
        "((",
    ]
    for value in bad:
        with pytest.raises(ValueError):
            parse_statements(value, 3)


# ----------------------------------------------------------------------------- trace


@pytest.mark.parametrize("scheme", ["default", "logic_rl"])
@pytest.mark.parametrize("prefix", ["", "<think>", "<think>\n"])
def test_solution_trace_scores_the_maximum(scheme, prefix):
    task = KnightsKnaves(reward_scheme=scheme, response_prefix=prefix)
    for example in task.examples(30, seed=8, people=[2, 3, 4, 5]):
        trace = task.solution_trace(example)
        score = task.score(trace, example)
        assert (score.reward, score.correct, score.format_ok) == (task.reward_range[1], True, True)
        assert task.oracle_completion(example) == trace


def test_solution_trace_after_prefix_is_the_rest_of_the_full_trace():
    example = KnightsKnaves().examples(1, seed=0)[0]
    full = KnightsKnaves().solution_trace(example)
    assert full.startswith("<think>\n")
    assert KnightsKnaves(response_prefix="<think>").solution_trace(example) == full[len("<think>"):]
    assert KnightsKnaves(response_prefix="<think>\n").solution_trace(example) == full[len("<think>\n"):]
    assert KnightsKnaves(response_prefix="<think> ").solution_trace(example) == full[len("<think>"):]
    with pytest.raises(ValueError, match="response_prefix"):
        KnightsKnaves(response_prefix="<answer>").solution_trace(example)


def test_solution_trace_is_the_ordered_search_with_correct_checks():
    task = KnightsKnaves()
    for example in task.examples(40, seed=9, people=[2, 3, 4]):
        names, statements = example.answer["names"], example.metadata["statements"]
        think = task.solution_trace(example).split("</think>")[0].removeprefix("<think>\n").strip("\n")
        blocks = []
        for line in think.splitlines():
            if line.endswith(":"):
                blocks.append((line, []))
            else:
                blocks[-1][1].append(line)
        order = list(itertools.product((True, False), repeat=len(names)))
        assert len(blocks) == order.index(tuple(example.answer["solution"])) + 1
        for (header, checks), assignment in zip(blocks, order):
            roles = ["knight" if r else "knave" for r in assignment]
            # every line starts with a space: names are the same BPE tokens as in the prompt
            assert header == "".join(f" {n} {r}" for n, r in zip(names, roles)) + ":"
            for i, line in enumerate(checks):
                value = evaluate(statements[i], assignment)
                verdict = "ok" if value == assignment[i] else "contradiction"
                assert line == f" {names[i]} {roles[i]} says {str(value).lower()} {verdict}."
            verdicts = [line.rsplit(" ", 1)[1] for line in checks]
            final = assignment == tuple(example.answer["solution"])
            # stop at the first contradiction; the consistent assignment checks everyone
            assert verdicts == (["ok."] * len(names) if final
                                else ["ok."] * (len(checks) - 1) + ["contradiction."])


def test_stepwise_trace_values_every_claim_against_the_header():
    names = ["Zoey", "Oliver", "Ethan"]
    statements = (("or", ("lying", 1), ("telling-truth", 2)), ("not", ("telling-truth", 2)),
                  ("->", ("telling-truth", 0), ("lying", 1)))
    example = Example("puzzle", {"names": names, "solution": [True, False, True]},
                      {"people": 3, "statements": statements})
    assert solve(statements) == [[True, False, True]]
    # Each claim: name, claimed role, the role in the header above, whether they agree.
    assert KnightsKnaves(trace="stepwise").solution_trace(example) == "\n".join([
        "<think>",
        " Zoey knight Oliver knight Ethan knight:",
        " Zoey knight says Oliver knave knight false or Ethan knight knight true so true ok.",
        " Oliver knight says not Ethan knight knight true so false contradiction.",
        " Zoey knight Oliver knight Ethan knave:",
        " Zoey knight says Oliver knave knight false or Ethan knight knave false so false contradiction.",
        " Zoey knight Oliver knave Ethan knight:",
        " Zoey knight says Oliver knave knave true or Ethan knight knight true so true ok.",
        " Oliver knave says not Ethan knight knight true so false ok.",
        " Ethan knight says if Zoey knight knight true then Oliver knave knave true so true ok.",
        "</think>",
        "<answer>",
        "(1) Zoey is a knight\n(2) Oliver is a knave\n(3) Ethan is a knight",
        "</answer>",
    ])
    task, compact = KnightsKnaves(trace="stepwise"), KnightsKnaves()
    for example in task.examples(40, seed=9, people=[2, 3, 4]):
        trace = task.solution_trace(example)
        assert task.score(trace, example).correct
        # Dropping the steps between "says" and the statement's value gives the compact trace.
        assert re.sub(r" says .*? so ", " says ", trace) == compact.solution_trace(example)


def test_stepwise_trace_brackets_a_compound_operand_from_a_record():
    statements = (("not", ("and", ("telling-truth", 1), ("lying", 0))), ("telling-truth", 0))
    example = Example("puzzle", {"names": ["Al", "Bo"], "solution": [True, True]},
                      {"people": 2, "statements": statements})
    assert solve(statements) == [[True, True]]
    first = KnightsKnaves(trace="stepwise").solution_trace(example).split("\n")[2]
    assert (first == " Al knight says not ( Bo knight knight true and Al knave knight false so "
                     "false) so true ok.")
    with pytest.raises(ValueError, match="trace"):
        KnightsKnaves(trace="verbose")


def test_solution_trace_answer_lines_follow_the_name_order():
    example = hand_example()
    assert format_answer(example.answer["names"], example.answer["solution"]) == RIGHT


# ----------------------------------------------------------------------------- answer parsing


@pytest.mark.parametrize("text", [
    RIGHT,
    "(1) Zoey is a knight (2) Oliver is a knave (3) Ethan is a knight",
    "(3) Ethan is a knight\n(1) Zoey is a knight\n(2) Oliver is a knave",
    "ZOEY IS A KNIGHT, oliver is a KNAVE and ethan   is\na knight.",
    "Zoey is knight; Oliver is knave; Ethan is an knight",
])
def test_parse_answer_accepts_order_case_and_spacing(text):
    assert parse_answer(text, NAMES) == GOLD


@pytest.mark.parametrize("text", [
    "",
    None,
    "(1) Zoey is a knight\n(2) Oliver is a knave",  # one person omitted
    "(1) Zoey is a knight\n(1) Zoey is a knave\n(2) Oliver is a knave\n(3) Ethan is a knight",  # both roles
    "(1) Zoey is a knight\n(2) Zoey is a knave\n(3) Ethan is a knight",  # Oliver replaced by a repeat
    RIGHT + "\n(4) Bob is a knave",  # someone not in the puzzle
    "(1) Zoey is a knight\n(2) Bob is a knave\n(3) Ethan is a knight",  # a stranger instead of Oliver
    "(1) Zoey is a knight or a knave\n(2) Oliver is a knave\n(3) Ethan is a knight",  # hedge
    "(1) Zoey is a knight/knave\n(2) Oliver is a knave\n(3) Ethan is a knight",  # hedge
    "(1) Zoey is not a knight\n(2) Oliver is a knave\n(3) Ethan is a knight",  # negated claim
    "(1) Zoey is a knights\n(2) Oliver is a knave\n(3) Ethan is a knight",  # not the word
    "(1) Zoey is a kn\u0430ve\n(2) Oliver is a knave\n(3) Ethan is a knight",  # Cyrillic a
    "(1) Zoey is a \u212anight\n(2) Oliver is a knave\n(3) Ethan is a knight",  # Kelvin sign K
    "(1) Zoey is a knig\u200bht\n(2) Oliver is a knave\n(3) Ethan is a knight",  # zero-width space
    "(1) Zoey is a knight\n(2) Oliver is a knave\n(3) Ethan is a knight\nAll knights and knaves found.",
])
def test_parse_answer_rejects(text):
    assert parse_answer(text, NAMES) is None


def test_parse_answer_names_that_are_not_single_words_and_prefixes():
    assert parse_answer("Mary Ann is a knave, Bob is a knight", ["Mary Ann", "Bob"]) == [False, True]
    assert parse_answer("Ann is a knave, Anna is a knight", ["Anna", "Ann"]) == [True, False]
    assert parse_answer("Ann is a knave, Bob is a knight", ["Mary Ann", "Bob"]) is None


# ----------------------------------------------------------------------------- rewards


def test_default_scheme_values_and_parts():
    task, example = KnightsKnaves(), hand_example()
    cases = [  # completion -> (reward, correct, format_ok)
        (completion(RIGHT), (1.0, True, True)),
        (completion(WRONG), (0.0, False, True)),
        (f"<answer>{RIGHT}</answer>", (0.0, True, False)),  # right answer, no <think>
        ("", (0.0, False, False)),
    ]
    for text, (reward, correct, format_ok) in cases:
        score = task.score(text, example)
        assert (score.reward, score.correct, score.format_ok) == (reward, correct, format_ok)
        assert score.parts == {"answer": float(correct), "format": float(format_ok)}


def test_logic_rl_totals_by_hand():
    task, example = KnightsKnaves(reward_scheme="logic_rl"), hand_example()
    cases = [  # completion -> (total, format part, answer part)
        (completion(RIGHT), 3.0, 1.0, 2.0),  # format ok, exact answer: 1 + 2
        (completion(WRONG), -0.5, 1.0, -1.5),  # format ok, parsed but wrong: 1 - 1.5
        (completion("I am not sure"), -1.0, 1.0, -2.0),  # format ok, unparseable: 1 - 2
        (f"{RIGHT}", -3.0, -1.0, -2.0),  # no tags at all: -1 - 2
        (completion(RIGHT) + "\nDone.", 3.0, 1.0, 2.0),  # Logic-RL allows text after </answer>
        (completion(WRONG) + ".<|eot_id|>", -0.5, 1.0, -1.5),
        # "is a" needed
        (completion("(1) Zoey is knight\n(2) Oliver is knave\n(3) Ethan is knight"), -1.0, 1.0, -2.0),
    ]
    for text, total, format_part, answer_part in cases:
        score = task.score(text, example)
        assert score.reward == total
        assert score.parts == {"format": format_part, "answer": answer_part}
    assert task.reward_range == (-3.0, 3.0)


def test_logic_rl_scores_equal_logic_rl_on_every_row():
    rows = list(read_records(VERL))
    scored = [json.loads(line) for line in LOGIC_RL_SCORES.read_text().splitlines()]
    assert len(scored) == 42
    task = KnightsKnaves(reward_scheme="logic_rl", response_prefix="<think>")  # the prompts end in <think>
    examples = [task.from_record(row) for row in rows]
    ours = [task.score(row["response"], examples[row["index"]]).reward for row in scored]
    assert [(row["case"], mine) for row, mine in zip(scored, ours) if mine != row["logic_rl_score"]] == []
    # rlvr's own scheme keeps its stricter format: no text after </answer> but an end-of-turn marker.
    default = KnightsKnaves(response_prefix="<think>")
    for row in scored:
        if row["case"].startswith("text after </answer>"):
            assert row["logic_rl_score"] == 3.0
            assert not default.score(row["response"], examples[row["index"]]).format_ok


def test_logic_rl_roles_follow_logic_rl_rules():
    names = ["Zoey", "Oliver"]
    assert logic_rl_roles("Zoey is a knight, oliver is a KNAVE", names) == [True, False]
    # 3 role words
    assert logic_rl_roles("Oliver is a knave. Zoey is a knight. Zoey is a knave", names) is None
    assert logic_rl_roles("Zoey is knight, Oliver is a knave", names) is None  # the article is required
    assert logic_rl_roles("Zoey is a knight, Bob is a knave", names) is None  # Oliver has no claim
    assert logic_rl_roles("Zoey is a knights, Oliver is a knave", names) is None  # counted, not a claim
    # Kelvin K counts
    assert logic_rl_roles("\u212anight: Zoey is a knight, Oliver is a knave", names) is None
    assert logic_rl_roles("", names) is None and logic_rl_roles(None, names) is None


def test_logic_rl_with_prefilled_think():
    task, example = KnightsKnaves(reward_scheme="logic_rl", response_prefix="<think>"), hand_example()
    assert task.score(f"reasoning</think>\n<answer>{RIGHT}</answer>", example).reward == 3.0
    # writing the pre-filled tag again is a repeat, not a fix
    assert task.score(completion(RIGHT), example).reward == -3.0


HACKS = {
    "two answer blocks, last "
    "right": (f"<think>x</think><answer>{WRONG}</answer><answer>{RIGHT}</answer>", True),
    "two answer blocks, last "
    "wrong": (f"<think>x</think><answer>{RIGHT}</answer><answer>{WRONG}</answer>", False),
    "answer outside the tags": (f"<think>x</think>{RIGHT}", False),
    "answer in think, empty answer": (f"<think>{RIGHT}</think><answer></answer>", False),
    "tags in the wrong order": (f"<answer>{RIGHT}</answer><think>x</think>", True),
    "hedged": ("<think>x</think><answer>(1) Zoey is a knight or a knave\n(2) Oliver is a knave\n"
               "(3) Ethan is a knight</answer>", False),
    "every role twice": ("<think>x</think><answer>" + RIGHT + "\n" + WRONG + "</answer>", False),
    "Cyrillic a": ("<think>x</think><answer>" + RIGHT.replace("knave", "kn\u0430ve") + "</answer>", False),
    "unclosed answer": (f"<think>x</think><answer>{RIGHT}", False),
}


@pytest.mark.parametrize("name", HACKS)
def test_reward_hacks_earn_nothing(name):
    text, answer_right = HACKS[name]
    example = hand_example()
    default = KnightsKnaves().score(text, example)
    logic_rl = KnightsKnaves(reward_scheme="logic_rl").score(text, example)
    assert default.reward == 0.0
    assert logic_rl.reward < 0
    assert default.correct == logic_rl.correct == answer_right  # `correct` judges the last block alone
    if name.startswith("two answer blocks") or name == "tags in the wrong order":
        assert not default.format_ok and logic_rl.reward == -3.0


@pytest.mark.parametrize("text, logic_rl_reward", [
    ("<answer>" * 12_500, -3.0),  # 100 KB of unclosed tags: a regex scan would be quadratic
    ("<think>" + "Zoey is a knight. " * 5_600 + "</think><answer>" + RIGHT + "</answer>", 3.0),
    ("<think>x</think><answer>" + "Zoey is a knight " * 6_000 + "</answer>", -1.0),
    ("\x00\udcff" * 50_000, -3.0),
])
def test_hundred_kilobyte_completions_are_scored(text, logic_rl_reward):
    assert len(text) >= 100_000
    assert KnightsKnaves(reward_scheme="logic_rl").score(text, hand_example()).reward == logic_rl_reward
    assert KnightsKnaves().score(text, hand_example()).reward == float(logic_rl_reward == 3.0)


def test_score_never_raises_and_gives_the_minimum():
    from rlvr.tasks.base import Example

    broken = Example(prompt="p", answer={"solution": [True]})  # no names
    for scheme, minimum in (("default", 0.0), ("logic_rl", -3.0)):
        task = KnightsKnaves(reward_scheme=scheme)
        assert task.score(completion(RIGHT), broken).reward == minimum
        assert task.score(None, hand_example()).reward == minimum  # type: ignore[arg-type]
        assert task.reward_range[0] == minimum


def test_extracted_is_the_judged_block():
    score = KnightsKnaves().score(f"<think>x</think><answer>a</answer><answer>\n {RIGHT} "
                                  "\n</answer>", hand_example())
    assert score.extracted == RIGHT
    assert KnightsKnaves().score("no block", hand_example()).extracted is None


ODD_TAGS = [
    f"<think>x</think><answer>a<answer>{RIGHT}</answer>",  # nested opening tag: the one nearest the close
    f"<answer><answer>{RIGHT}</answer></answer>",
    f"<answer>{RIGHT}</answer><answer>unclosed",
    f"</answer><answer>{RIGHT}",  # a close before any open, then an unclosed block
    f"<answer>{WRONG}</answer>x<answer>{RIGHT}</answer>",
    f"<answer> <answer> </answer> {RIGHT} </answer>",
    "<answer" + RIGHT + "</answer>",
]


@pytest.mark.parametrize("text", ODD_TAGS)
@pytest.mark.parametrize("prefix", ["", "<think>"])
def test_the_judged_block_is_rewards_last_answer_block(text, prefix):
    from rlvr.rewards import last_answer_block

    for scheme in ("default", "logic_rl"):
        score = KnightsKnaves(reward_scheme=scheme, response_prefix=prefix).score(text, hand_example())
        assert score.extracted == last_answer_block(prefix + text)
        assert score.correct == (parse_answer(score.extracted, NAMES) == GOLD)


def test_messages():
    example = KnightsKnaves().examples(1, seed=0)[0]
    system, user = KnightsKnaves().messages(example)
    assert system["role"] == "system" and "<think>" in system["content"] and "<answer>" in system["content"]
    assert "(1) NAME is a knight" in system["content"]
    assert user == {"role": "user", "content": example.prompt}


# ----------------------------------------------------------------------------- records


def test_public_rows_load_unchanged():
    rows = list(read_records(PUBLIC))
    task = KnightsKnaves()
    for row in rows:
        example = task.from_record(row)
        assert example.prompt == row["quiz"]
        assert example.answer == {"names": row["names"], "solution": row["solution"]}
        assert example.metadata["people"] == len(row["names"])
        assert example.metadata["index"] == row["index"]
        assert task.score(task.oracle_completion(example), example).reward == 1.0
    assert task.from_record(rows[0]).metadata["statements"][1] == ("<=>", ("telling-truth", 0), ("lying", 2))


def test_logic_rl_verl_rows_load(tmp_path):
    task = KnightsKnaves()
    public = [task.from_record(row) for row in read_records(PUBLIC)]
    verl_rows = list(read_records(VERL))
    loaded = [task.from_record(row) for row in verl_rows]
    for example, reference in zip(loaded, public):
        assert (example.prompt, example.answer) == (reference.prompt, reference.answer)
        assert example.metadata["statements"] == reference.metadata["statements"]
        assert example.metadata["source"] == "kk_logic"
    assert [e.metadata["index"] for e in loaded] == [0, 1]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(verl_rows), path)
    assert [task.from_record(row) for row in read_records(path)] == loaded


ALL_KNIGHTS = "(1) Ruby is a knight\n(2) Owen is a knight\n(3) Grace is a knight"


def _row(**changes):
    row = next(read_records(PUBLIC))
    row.update(changes)
    return {k: v for k, v in row.items() if v is not None}


@pytest.mark.parametrize("changes, words", [
    ({"solution": [True, True, True], "solution_text_format": ALL_KNIGHTS},
     ["index=0", "'solution'", "unique solution [True, False, True]"]),
    ({"solution": [True, True, True]}, ["index=0", "'solution_text_format'", "disagrees"]),
    ({"solution_text_format": ALL_KNIGHTS}, ["index=0", "'solution_text_format'"]),
    ({"statements": "(('lying', 1), ('lying', 0), ('lying', 1))"}, ["'statements'", "2 solutions"]),
    ({"statements": "(('lying', 5), ('lying', 0), ('lying', 1))"}, ["'statements'", "0..2"]),
    ({"statements": "__import__('os')"}, ["'statements'", "not a Python literal"]),
    ({"quiz": None}, ["missing field 'quiz'"]),
    ({"quiz": ""}, ["'quiz'"]),
    ({"names": None, "solution_text_format": None}, ["missing field 'names'"]),
    ({"solution": None, "solution_text_format": None}, ["missing field 'solution'"]),
    ({"solution": ["true", "false", "true"]}, ["'solution'", "booleans"]),
    ({"solution": [True, False]}, ["'solution'"]),
    ({"names": ["Ruby", "ruby", "Grace"]}, ["'names'", "repeats"]),
    ({"knight_knave": {"knight": "saint", "knave": "sinner"}}, ["'knight_knave'"]),
])
def test_bad_records_raise_record_error_naming_the_field(changes, words):
    with pytest.raises(RecordError) as error:
        KnightsKnaves().from_record(_row(**changes))
    for word in words:
        assert word in str(error.value)


def test_record_without_statements_is_trusted_and_prompt_without_quiz_fails():
    row = _row(statements=None)
    example = KnightsKnaves().from_record(row)
    assert example.metadata["statements"] is None
    assert KnightsKnaves().score(KnightsKnaves().oracle_completion(example), example).reward == 1.0
    verl = next(read_records(VERL))
    verl["prompt"] = [{"role": "user", "content": "something else"}]
    with pytest.raises(RecordError, match="'prompt'"):
        KnightsKnaves().from_record(verl)
    with pytest.raises(RecordError, match="JSON object"):
        KnightsKnaves().from_record(["not", "a", "dict"])  # type: ignore[arg-type]


def test_generated_examples_round_trip_through_the_public_schema():
    task = get("knights_knaves")
    for example in task.examples(25, seed=4, people=[2, 3, 7]):
        record = json.loads(json.dumps(task.to_record(example)))
        assert {"quiz", "names", "solution", "solution_text", "solution_text_format", "statements",
                "index"} <= set(record)
        assert record["statements"].startswith("((")  # the public set's Python-literal form
        assert parse_statements(record["statements"], len(record["names"])) == example.metadata["statements"]
        assert task.from_record(record) == example


def test_system_prompt_option_controls_the_system_message():
    default = KnightsKnaves()
    ex = default.examples(1, seed=3)[0]
    assert [m["role"] for m in default.messages(ex)] == ["system", "user"]
    bare = KnightsKnaves(system_prompt="")
    assert bare.messages(ex) == [{"role": "user", "content": ex.prompt}]
    custom = KnightsKnaves(system_prompt="Solve it.")
    assert custom.messages(ex)[0] == {"role": "system", "content": "Solve it."}
