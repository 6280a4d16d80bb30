"""The math task: extraction, grading (fast path and math-verify), bounded time, records.

Grading cases are hand-written; the slow-input cases assert only a generous upper bound
(HANG_SECONDS) that catches a hang, never a speed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rlvr.tasks import RecordError, get
from rlvr.tasks._timeout import WorkerPool
from rlvr.tasks.base import Example
from rlvr.tasks.math import (
    PROMPT_SUFFIX,
    MathTask,
    answer_part,
    canonical,
    choice_letter,
    final_boxes,
    guard,
    last_boxed,
    quick_verdict,
    tex_shorthand,
)

HANG_SECONDS = 15.0


def wrapped(answer: str) -> str:
    return f"<think>\nsome reasoning\n</think>\n<answer>\n{answer}\n</answer>"


def gold(answer: str) -> Example:
    return Example(prompt="a problem", answer=answer)


@pytest.fixture(scope="module")
def task() -> MathTask:
    return MathTask()


# -- extraction -----------------------------------------------------------------------------------

def test_answer_part_prefers_the_last_answer_block_then_after_think_then_all() -> None:
    assert answer_part("<think>a</think><answer>1</answer> x <answer> 2 </answer>") == "2"
    assert answer_part("<think>\\boxed{1}</think> so \\boxed{2}") == "so \\boxed{2}"
    assert answer_part("just \\boxed{3}") == "just \\boxed{3}"


def test_an_answer_block_that_does_not_parse_extracts_nothing() -> None:
    assert answer_part("<think>a</think><answer>\\boxed{5}</answer><answer>\\boxed{6") is None
    assert answer_part("<think>I get 5</think><answer> 5") is None
    assert answer_part("<think>a</think> 5 </answer>") is None


def test_final_boxes_are_the_last_run_of_complete_boxes_and_none_when_one_never_closes() -> None:
    assert final_boxes("no box") == []
    assert final_boxes("so \\boxed{12 - 5") is None
    assert final_boxes("\\boxed{7} wait, actually \\boxed{12 - 5") is None
    assert final_boxes("\\boxed{3}. Wait, that is wrong: \\boxed{5}") == ["5"]
    assert final_boxes("the roots are $\\boxed{-2}$ and $\\boxed{1}$.") == ["-2", "1"]
    assert final_boxes("x = \\boxed{-1} \\text{ or } x = \\boxed{4}") == ["-1", "4"]
    assert final_boxes("\\boxed{5}, \\boxed{5}") == ["5"]
    assert final_boxes("\\boxed{\\boxed{5}}") == ["\\boxed{5}"]
    assert final_boxes("\\boxed{\\{1, 2\\}}") == ["\\{1, 2\\}"]


def test_last_boxed_takes_the_last_complete_box_with_nested_braces() -> None:
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}} and \\boxed{3") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert last_boxed("\\fbox {7}") == "7"
    assert last_boxed("no box here") is None


def test_tex_shorthand_follows_tex_one_token_arguments() -> None:
    assert tex_shorthand("\\frac12") == "\\frac{1}{2}"
    assert tex_shorthand("\\dfrac{3}4") == "\\frac{3}{4}"
    assert tex_shorthand("\\frac123") == "\\frac{1}{2}3"  # TeX's reading, not 1/23
    assert tex_shorthand("\\sqrt2") == "\\sqrt{2}"


@pytest.mark.parametrize(
    ("gold_answer", "candidate", "verdict"),
    [
        ("5", "5", True),
        ("5", "6", False),
        ("\\frac{1}{2}", "0.5", True),
        ("\\frac{1}{2}", "1/2", True),
        ("0.5", "\\dfrac12", True),
        ("3", "$3$", True),
        ("5", "5.0", True),
        ("0.5", "0.6", False),
        ("\\frac{1}{3}", "0.333333", True),  # the gold rounded to the candidate's 6 places
        ("\\frac{1}{3}", "0.333", True),  # 3 significant digits, correctly rounded
        ("\\frac{1}{3}", "0.33", False),  # 2 significant digits are too few
        ("\\frac{2}{3}", "0.666", False),  # truncated, not rounded
        ("\\frac{2}{3}", "0.667", True),
        ("0.67", "\\frac{2}{3}", True),  # a decimal gold with 2 places: the precision asked for
        ("0.3", "\\frac{1}{3}", False),  # one place may be an exact 0.3: no rounding
        ("0.5", "0.46", False),  # decimal against decimal: equal values only
        ("16386.20", "16386.2", True),
        ("\\frac{7}{2}", "3\\frac{1}{2}", True),  # a mixed number
        ("(\\frac{3}{5},\\frac{8}{3})", "(0.6,2.667)", True),  # element by element
        ("(\\frac{3}{5},\\frac{8}{3})", "(0.6,2.6)", False),
        ("(1,2)", "[1,2]", None),  # different brackets: math-verify decides
        ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", None),
        ("5", "", False),
    ],
)
def test_quick_verdict_decides_plain_numbers_at_the_precision_the_answer_implies(
    gold_answer: str, candidate: str, verdict: bool | None
) -> None:
    assert quick_verdict(gold_answer, candidate) is verdict


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        ("10^{10^{10}}", "power tower"),
        ("10**10**10", "power tower"),
        ("9^{9^{9}}", "power tower"),
        ("2^{10000000}", "huge power"),
        ("1000000!", "huge factorial"),
        ("(" * 40 + "1" + ")" * 40, "nested too deep"),
        ("1" * 1001, "too long"),
        ("2^{2^{2}}", None),
        ("e^{x^2} + 1000!", None),
    ],
)
def test_guard_flags_costly_inputs_only(candidate: str, reason: str | None) -> None:
    assert guard(candidate, max_chars=1000) == reason


# -- grading --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("gold_answer", "answer", "correct"),
    [
        ("5", "\\boxed{5}", True),
        ("5", "\\boxed{6}", False),
        ("\\frac{1}{2}", "\\boxed{0.5}", True),
        ("\\frac{1}{2}", "\\boxed{\\frac{2}{4}}", True),
        ("0.5", "\\boxed{\\frac{1}{2}}", True),
        ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{2}}}", True),  # math-verify, in the worker
        ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{3}}}", False),
        ("x^2+2x+1", "\\boxed{(x+1)^2}", True),
        ("\\{1,2\\}", "\\boxed{\\{2,1\\}}", True),
        ("5", "x = 5", True),  # a bare answer, where math-verify accepts it
        ("5", "The answer is 6.", False),
        ("5", "", False),
        ("5", "\\boxed{}", False),
        ("5", "\\boxed{1} or \\boxed{5}", False),  # a hedge: boxes joined by "or" are the set {1, 5}
        ("\\{1,5\\}", "\\boxed{1} or \\boxed{5}", True),
        ("(3,4)", "\\boxed{3}, \\boxed{4}", True),  # a tuple written as several boxes
        ("(3,4)", "\\boxed{4}, \\boxed{3}", False),
        ("5", "\\boxed{3}. Wait, that is wrong; it is \\boxed{5}.", True),  # prose between: the last box
        ("5", "\\boxed{5} or \\boxed{1}", False),
    ],
)
def test_grading(task: MathTask, gold_answer: str, answer: str, correct: bool) -> None:
    score = task.score(wrapped(answer), gold(gold_answer))
    assert score.correct is correct
    assert score.format_ok is True
    assert score.reward == (1.0 if correct else 0.0)
    assert score.parts == {"answer": float(correct), "format": 1.0, "timeout": 0.0}


@pytest.mark.parametrize(
    ("gold_answer", "completion"),
    [
        ("5", "\\boxed{12 - 5"),  # math-verify alone takes the trailing 5
        ("7", "\\boxed{7} wait, actually \\boxed{12 - 5"),  # no fallback to an earlier box either
        ("5", "<think>a</think><answer>\\boxed{12 - 5</answer>"),
        ("5", "<think>a</think><answer>\\boxed{5}</answer><answer>\\boxed{6"),  # an unclosed last block
        ("5", "<think>so 5</think> 5 </answer>"),  # a closing tag without an opening one
    ],
)
def test_an_answer_that_does_not_parse_is_wrong_never_the_surrounding_text(gold_answer: str,
                                                                           completion: str) -> None:
    for scheme in ("default", "answer_only"):
        score = MathTask(reward_scheme=scheme).score(completion, gold(gold_answer))
        assert (score.correct, score.reward, score.extracted) == (False, 0.0, None)


def test_relations_and_intervals_compare_both_ways(task: MathTask) -> None:
    assert task.score(wrapped("\\boxed{(1,2)}"), gold("1 < x < 2")).correct is True
    assert task.score(wrapped("\\boxed{1 < x < 2}"), gold("(1,2)")).correct is True
    assert task.score(wrapped("\\boxed{x \\ge 3}"), gold("[3, \\infty)")).correct is True
    assert task.score(wrapped("\\boxed{x > 3}"), gold("[3, \\infty)")).correct is False
    assert task.score(wrapped("\\boxed{1 \\le x < 2}"), gold("(1,2)")).correct is False


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("\\frac{\\sqrt{3}}{3} \\approx 0.577", "\\frac{\\sqrt{3}}{3}"),
        ("\\approx 0.785", "0.785"),
        ("x \\approx 11", "11"),
        ("4\\pi \\text{ (approximately } 12.57)", "4\\pi"),
        ("\\$1{,}200", "1{,}200"),
        ("\\textdollar 7", "7"),
        ("15 \\text{ cm}^2", "15"),
        ("125\\textnormal{ miles}", "125"),
        ("8 square units", "8"),
        ("10 \\mathrm{cm}", "10"),
        ("x**2 + 1", "x^2 + 1"),
        ("\\text{Evelyn}", "\\text{Evelyn}"),  # text alone is the answer, not a unit
        ("2h", "2h"),  # a one-letter unit may be a variable: kept
        ("$5$", "5"),
    ],
)
def test_canonical_drops_what_never_changes_the_value(answer: str, expected: str) -> None:
    assert canonical(answer) == expected


def test_a_bare_answer_keeps_its_approximation() -> None:
    assert canonical("x \\approx 11", boxed=False) == "x \\approx 11"


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("\\mathrm{C}", "C"), ("\\textbf{(C)}", "C"), ("\\text{(B) } 12", "B"), ("\\textbf{(E)}\\ 24", "E"),
        ("(D)", "D"), ("\\mathrm{d}", None), ("\\mathrm{C}*2", None), ("A, B", None),
        ("\\text{C or D}", None), ("(C) or (D)", None), ("ABCDE", None),
    ],
)
def test_choice_letter_reads_wrapped_letters_case_sensitively(answer: str, letter: str | None) -> None:
    assert choice_letter(answer) == letter


@pytest.mark.parametrize(
    ("gold_answer", "answer", "correct"),
    [
        ("C", "\\boxed{\\textbf{(C)}}", True),
        ("D", "\\boxed{\\mathrm{d}}", False),  # math-verify alone says correct
        ("\\$10", "\\boxed{10}", True),
        ("12.50", "\\boxed{\\$12.5}", True),
        ("2x", "\\boxed{2*x}", True),
        ("6ab", "\\boxed{6*a*b}", True),
        ("6ab", "\\boxed{6}", False),  # math-verify's unit rewrite reads 6ab as 6
        ("2", "\\boxed{2h}", False),  # ... and 2h as 2
        ("x^2+2x+1", "\\boxed{x**2 + 2*x + 1}", True),
        ("5", "\\boxed{x**2 + 5}", False),
        ("3.14", "\\boxed{\\pi}", True),  # in the worker: a constant rounded to the gold's places
        ("4.47", "\\boxed{2\\sqrt{5}}", True),
        ("4.47", "\\boxed{2\\sqrt{3}}", False),
        ("\\frac{\\sqrt{3}}{3}", "\\boxed{\\frac{\\sqrt{3}}{3} \\approx 0.577}", True),
        ("\\frac{1}{3}", "\\boxed{\\frac{1}{4} \\approx 0.333}", False),
        ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
         "\\boxed{\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}}", True),
        ("2", "\\boxed{\\sqrt[3]{8}}", True),
    ],
)
def test_grading_categories_named_in_the_issue(task: MathTask, gold_answer: str, answer: str,
                                               correct: bool) -> None:
    assert task.score(wrapped(answer), gold(gold_answer)).correct is correct


FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "math_grading_cases.jsonl"


def test_agreement_with_public_graders_verdicts_and_no_false_positives() -> None:
    """bench/bench_math_agreement.py prints the same figures, per category and for math-verify."""
    cases = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(cases) >= 300
    assert ({"math-verify", "nemo-skills", "lm-evaluation-harness", "hendrycks-math", "rllm"}
            <= {c["source"] for c in cases})
    scorer = MathTask(reward_scheme="answer_only")
    verdicts = [scorer.score(c["prediction"], gold(c["gold"])).correct for c in cases]
    false_positives = [(c["gold"], c["prediction"]) for c, v in zip(cases, verdicts) if v
                       and not c["expected"]]
    agreement = sum(v == c["expected"] for c, v in zip(cases, verdicts)) / len(cases)
    assert false_positives == []
    assert agreement >= 0.92, agreement


def test_the_last_of_several_answer_blocks_is_graded_and_the_format_fails(task: MathTask) -> None:
    both = "<think>a</think><answer>\\boxed{6}</answer><answer>\\boxed{5}</answer>"
    score = task.score(both, gold("5"))
    assert (score.correct, score.format_ok, score.reward) == (True, False, 0.0)
    swapped = "<think>a</think><answer>\\boxed{5}</answer><answer>\\boxed{6}</answer>"
    assert task.score(swapped, gold("5")).correct is False


def test_answer_outside_the_tags_is_correct_but_earns_only_without_the_format_rule() -> None:
    completion = "<think>2 + 3</think> The answer is \\boxed{5}."
    default = MathTask().score(completion, gold("5"))
    assert (default.correct, default.format_ok, default.reward) == (True, False, 0.0)
    answer_only = MathTask(reward_scheme="answer_only").score(completion, gold("5"))
    assert (answer_only.correct, answer_only.reward) == (True, 1.0)
    assert MathTask(reward_scheme="answer_only").score("\\boxed{4}", gold("5")).reward == 0.0


def test_response_prefix_counts_as_written() -> None:
    task = MathTask(response_prefix="<think>\n")
    example = task.examples(1, seed=0)[0]
    oracle = task.oracle_completion(example)
    assert "<think>" not in oracle
    assert task.score(oracle, example).reward == 1.0
    assert task.score("<think>\n" + oracle, example).format_ok is False


@pytest.mark.parametrize(
    "answer",
    [
        "\\boxed{10^{10^{10}}}",
        "\\boxed{10**10**10}",
        "\\boxed{(10^{7})!}",
        "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",  # a LaTeX bomb
        "\\boxed{" + "\\underbrace{" * 100 + "x" + "}" * 100 + "}",
        "\\boxed{" + "\\sqrt{" * 30 + "2" + "}" * 30 + "}",
        "\\boxed{10^{(10^{(10)})}}",  # a tower the in-process guard does not parse
    ],
    ids=["tower", "python-tower", "factorial", "frac-bomb", "underbrace", "sqrt-30", "paren-tower"],
)
def test_pathological_answers_are_wrong_and_bounded(task: MathTask, answer: str) -> None:
    start = time.monotonic()
    score = task.score(wrapped(answer), gold("5"))
    assert time.monotonic() - start < HANG_SECONDS
    assert score.correct is False and score.reward == 0.0


def test_hundred_kilobyte_completions(task: MathTask) -> None:
    start = time.monotonic()
    long_think = "<think>" + "Let me check again. " * 5_000 + "</think><answer>\\boxed{5}</answer>"
    assert len(long_think) > 100_000
    assert task.score(long_think, gold("5")).reward == 1.0
    assert task.score("<answer>" * 13_000, gold("5")).correct is False
    assert task.score("\\boxed{" * 13_000, gold("5")).correct is False
    assert task.score("1 + " * 25_000 + "5", gold("5")).correct is False
    assert time.monotonic() - start < HANG_SECONDS


def test_scoring_from_threads_uses_math_verify_and_stays_bounded(task: MathTask) -> None:
    # math-verify's own timeout raises in a non-main thread; the worker process makes threads fine.
    cases = [
        (wrapped("\\boxed{\\frac{1}{\\sqrt{2}}}"), gold("\\frac{\\sqrt{2}}{2}"), True),
        (wrapped("\\boxed{(10^{7})!}"), gold("5"), False),
        (wrapped("\\boxed{x^2 - 1}"), gold("(x-1)(x+1)"), True),
    ]
    results: dict[int, bool] = {}

    def run(i: int) -> None:
        results[i] = task.score(cases[i][0], cases[i][1]).correct

    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_SECONDS)
    assert time.monotonic() - start < HANG_SECONDS
    assert results == {i: expected for i, (_, _, expected) in enumerate(cases)}


def test_a_missed_deadline_scores_a_timeout_and_the_next_call_works() -> None:
    task = MathTask(timeout_seconds=0.2)
    start = time.monotonic()
    score = task.score(wrapped("\\boxed{(10^{6})!}"), gold("5"))  # sympy needs ~1 s or more
    assert time.monotonic() - start < HANG_SECONDS
    assert score.correct is False and score.parts["timeout"] == 1.0
    again = MathTask(timeout_seconds=10).score(wrapped("\\boxed{\\frac{1}{\\sqrt{2}}}"),
                                               gold("\\frac{\\sqrt{2}}{2}"))
    assert again.correct is True and again.parts["timeout"] == 0.0


def test_the_task_pickles_and_scores_after(task: MathTask) -> None:
    clone = pickle.loads(pickle.dumps(task))
    assert clone.score(wrapped("\\boxed{\\frac{1}{\\sqrt{2}}}"), gold("\\frac{\\sqrt{2}}{2}")).correct is True


def _score_sqrt_half(task: MathTask) -> tuple[bool, set[int], int]:
    """(the verdict, pids of this process's workers, workers replaced so far)."""
    from rlvr.tasks._timeout import _POOLS

    correct = task.score(wrapped("\\boxed{\\frac{1}{\\sqrt{2}}}"), gold("\\frac{\\sqrt{2}}{2}")).correct
    pools = list(_POOLS.values())
    return correct, {w.process.pid for pool in pools for w in pool._all}, sum(p.restarts for p in pools)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_worker_and_the_parent_keeps_its(task: MathTask) -> None:
    correct, parent_pids, parent_restarts = _score_sqrt_half(task)  # a worker exists before the fork
    assert correct and parent_pids
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child_correct, child_pids, child_restarts = pool.apply(_score_sqrt_half, (task,))
    # A fresh pool in the child: no inherited worker to find unusable and replace.
    assert (child_correct, child_restarts) == (True, 0) and child_pids and not child_pids & parent_pids
    assert _score_sqrt_half(task) == (True, parent_pids, parent_restarts)


def test_workers_end_with_the_process() -> None:
    script = textwrap.dedent("""
        from rlvr.tasks.math import MathTask
        from rlvr.tasks.base import Example
        from rlvr.tasks._timeout import _POOLS
        score = MathTask().score("<answer>\\\\boxed{x^2-1}</answer>", Example("p", "(x-1)(x+1)"))
        assert score.correct, score
        print(*[w.process.pid for pool in _POOLS.values() for w in pool._all])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert pids
    deadline = time.monotonic() + HANG_SECONDS
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- the worker pool --------------------------------------------------------------------------------

@pytest.fixture
def handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of test handlers the worker processes can import."""
    (tmp_path / "rlvr_test_handlers.py").write_text(textwrap.dedent("""
        import os, time
        def handle(request):
            if request.get("sleep"):
                time.sleep(request["sleep"])
            if request.get("raise"):
                raise ValueError("asked to")
            if request.get("exit"):
                os._exit(3)
            print("stray output must not break the protocol")
            return {"echo": request.get("value")}
    """))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "rlvr_test_handlers:handle"


def test_pool_replies_kills_on_deadline_and_recovers(handlers: str) -> None:
    pool = WorkerPool(handlers, max_workers=1)
    try:
        assert pool.call({"value": 7}, 10).value == {"echo": 7}
        start = time.monotonic()
        late = pool.call({"sleep": 30}, 0.3)
        assert late.status == "timeout" and time.monotonic() - start < HANG_SECONDS
        assert pool.restarts == 1
        assert pool.call({"value": "after"}, 10).value == {"echo": "after"}
        failed = pool.call({"raise": True}, 10)
        assert failed.status == "error" and "asked to" in failed.detail
        assert pool.restarts == 1  # a handler error keeps the worker
        assert pool.call({"exit": True}, 10).status == "error"
        assert pool.restarts == 2  # a dead worker is replaced
        assert pool.call({"value": 1}, 10).value == {"echo": 1}
    finally:
        pool.close()
    assert pool.call({"value": 1}, 10).status == "error"


def test_pool_serves_threads_in_parallel(handlers: str) -> None:
    pool = WorkerPool(handlers, max_workers=2)
    try:
        replies: list[object] = []
        threads = [threading.Thread(target=lambda i=i: replies.append(pool.call({"value": i}, 10).value))
                   for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HANG_SECONDS)
        assert sorted(r["echo"] for r in replies) == list(range(6))  # type: ignore[index]
        assert pool._count <= 2
    finally:
        pool.close()


# -- generation, prompts, records --------------------------------------------------------------------

@pytest.mark.parametrize("level", [1, 2, 3])
def test_generated_problems_are_deterministic_and_the_oracle_scores_one(task: MathTask, level: int) -> None:
    examples = task.examples(12, seed=5, level=level)
    assert examples == task.examples(12, seed=5, level=level)
    assert task.examples(4, seed=5, level=level) == examples[:4]
    assert all(e.metadata["level"] == level and e.metadata["source"] == "generated" for e in examples)
    for example in examples:
        assert task.score(task.oracle_completion(example), example).reward == 1.0


def test_generated_answers_by_hand() -> None:
    # Recompute a few generated answers independently of the generator's own arithmetic.
    for example in MathTask().examples(30, seed=0, level=1):
        if example.metadata["kind"] == "arithmetic":
            a, b, c = (int(t) for t in example.prompt.replace("$", " ").replace("?", " ").split()
                       if t.isdigit())
            assert example.answer == str(a * b + c)


def test_bad_options_are_errors(task: MathTask) -> None:
    with pytest.raises(ValueError, match="reward_scheme"):
        MathTask(reward_scheme="logic_rl")
    with pytest.raises(ValueError, match="level"):
        task.examples(1, seed=0, level=4)
    with pytest.raises(ValueError, match="people"):
        task.examples(1, seed=0, people=3)


def test_messages_add_the_deepscaler_suffix_and_the_tag_instruction(task: MathTask) -> None:
    example = task.examples(1, seed=0)[0]
    system, user = task.messages(example)
    assert "<think>" in system["content"] and "<answer>" in system["content"]
    assert user["content"] == f"{example.prompt} {PROMPT_SUFFIX}"
    assert get("math").name == "math"


def test_from_record_reads_problem_answer_rows_with_configurable_keys() -> None:
    example = MathTask().from_record({"problem": "What is 2 + 3?", "answer": 5, "level": "Level 1"})
    assert (example.prompt, example.answer, example.metadata["level"]) == ("What is 2 + 3?", "5", "Level 1")
    custom = MathTask(problem_key="question", answer_key="final").from_record(
        {"question": "Q?", "final": "7"})
    assert (custom.prompt, custom.answer) == ("Q?", "7")
    math_row = {"problem": "Q?", "solution": "So it is $\\boxed{\\frac{1}{2}}$."}
    assert MathTask().from_record(math_row).answer == "\\frac{1}{2}"


def test_from_record_reads_the_verl_schema() -> None:
    record = {
        "data_source": "deepscaler",
        "prompt": [{"role": "user", "content": f"What is 2 + 3? {PROMPT_SUFFIX}"}],
        "reward_model": {"style": "rule", "ground_truth": "5"},
        "extra_info": {"index": 7, "split": "train"},
    }
    example = MathTask().from_record(record)
    assert example.prompt == "What is 2 + 3?"  # the suffix is not doubled by messages()
    assert example.answer == "5"
    assert example.metadata == {"source": "deepscaler", "index": 7}
    as_string = dict(record, prompt="What is 4 + 4?")
    assert MathTask().from_record(as_string).prompt == "What is 4 + 4?"
    numpy = pytest.importorskip("numpy")
    as_array = dict(record, prompt=numpy.array(record["prompt"], dtype=object))
    assert MathTask().from_record(as_array).prompt == "What is 2 + 3?"


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"answer": "5"}, "'problem'"),
        ({"problem": "Q?"}, "'answer'"),
        ({"problem": "Q?", "reward_model": {"style": "rule"}}, "'answer'"),
        ({"problem": "", "answer": "5"}, "'problem'"),
        ({"problem": "Q?", "answer": ["5"]}, "'answer'"),
        ({"problem": "Q?", "answer": " "}, "'answer'"),
        ({"prompt": [{"role": "system", "content": "x"}], "reward_model": {"ground_truth": "5"}}, "'prompt'"),
    ],
)
def test_bad_records_name_the_field(record: dict, field: str) -> None:
    with pytest.raises(RecordError, match=field):
        MathTask().from_record(record)


def test_records_round_trip_with_metadata(task: MathTask) -> None:
    for example in task.examples(6, seed=2, level=3):
        assert task.from_record(task.to_record(example)) == example

