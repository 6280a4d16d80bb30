"""The contract every task keeps (docs/design.md, "Tasks"), as checks a test or `rlvr check-task` runs.

Each check_* function raises ContractError (an AssertionError) saying which promise broke and on
what input, or NoOracle when the task offers no completion known to earn its maximum. Scorer calls
go through `bounded_score`: a call that raises, prints, returns something other than a Score with a
finite float reward, or does not return within `timeout_seconds` breaks the contract ("scorers are
total"). The deadline is kept by waiting on a daemon thread: a scorer that never returns is
reported and left behind (a thread cannot be killed; the process exits without it).

Optional task members the checks use when present:
  oracle_completion(example) -> str     a completion that earns the maximum reward
                                        (solution_trace(example) is used when that is all there is)
  reward_range -> (min, max)            default (0.0, 1.0): garbage earns min, the oracle max
and the hooks of rlvr.tasks.base that generic tools read (difficulty_keys, generation_options,
record_match, text_rows): check_hooks checks the form of each one a task declares.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlvr.data.io import load_examples
from rlvr.tasks import TaskError, check_task, factory
from rlvr.tasks.base import Example, GenerationOption, Score

GARBAGE = (
    "",
    "I don't know.",
    "lorem ipsum dolor sit amet " * 20,
    "<think>",
    "</answer></think>",
    "\x00\ufffd\udcff",
)
HUNDRED_KB = (
    "<answer>" * 12_500,  # unclosed tags: a regex that rescans from each one is quadratic
    "<think>" + "Let me reconsider the problem once more. " * 2_500,  # a ramble cut at the limit
)
TIMEOUT_SECONDS = 10.0


class ContractError(AssertionError):
    """A broken promise of the task contract; the message says which and on what input."""


class NoOracle(Exception):
    """The task offers neither oracle_completion nor solution_trace: the oracle checks cannot run."""


def reward_range(task: Any) -> tuple[float, float]:
    low, high = getattr(task, "reward_range", (0.0, 1.0))
    return float(low), float(high)


def oracle(task: Any, example: Example) -> str:
    for method in ("oracle_completion", "solution_trace"):
        if callable(getattr(task, method, None)):
            return str(getattr(task, method)(example))
    raise NoOracle(f"task {task.name!r} offers neither oracle_completion nor solution_trace")


def _describe(text: str) -> str:
    return f"a completion of {len(text)} characters starting {text[:24]!r}"


def bounded_score(task: Any, text: str, example: Example, timeout_seconds: float = TIMEOUT_SECONDS) -> Score:
    """task.score(text, example), checked to be total: returns a Score with a finite float reward,
    within timeout_seconds, without raising or printing."""
    outcome: dict[str, Any] = {}
    printed = io.StringIO()

    def call() -> None:
        try:
            outcome["score"] = task.score(text, example)
        except BaseException as error:  # the contract forbids every exception
            outcome["error"] = error

    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        worker = threading.Thread(target=call, daemon=True, name="contract-score")
        worker.start()
        worker.join(timeout_seconds)
    if worker.is_alive():
        raise ContractError(f"score did not return within {timeout_seconds:g}s on {_describe(text)}")
    if "error" in outcome:
        error = outcome["error"]
        raise ContractError(f"score raised {type(error).__name__}: {error} on {_describe(text)}")
    if printed.getvalue():
        raise ContractError(f"score printed {printed.getvalue()[:80]!r} on {_describe(text)}")
    score = outcome["score"]
    if not isinstance(score, Score):
        raise ContractError(f"score returned a {type(score).__name__}, expected rlvr.tasks.Score, "
                            f"on {_describe(text)}")
    if not isinstance(score.reward, float) or not math.isfinite(score.reward):
        raise ContractError(f"score's reward is {score.reward!r}, expected a finite float, "
                            f"on {_describe(text)}")
    return score


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ContractError(message)


def check_protocol(task: Any) -> None:
    """A Task (every protocol member), with a str name and response_prefix and a reward range low < high."""
    try:
        check_task(task, getattr(task, "name", type(task).__name__))
    except TaskError as error:
        raise ContractError(str(error)) from None
    low, high = reward_range(task)
    _require(low < high, f"reward_range {(low, high)}: expected min < max")


def check_examples_are_pure(task: Any, seed: int = 11) -> None:
    """Example i is a function of (seed, i) alone; different indices and seeds give different problems."""
    first = task.examples(6, seed=seed)
    _require(len(first) == 6 and all(isinstance(e, Example) for e in first),
             f"examples(6, seed={seed}) returned {len(first)} items, expected 6 Examples")
    _require(task.examples(6, seed=seed) == first, "examples(6, seed) differs between two calls")
    _require(task.examples(3, seed=seed) == first[:3],
             "examples(3, seed) is not the first 3 of examples(6, seed)")
    prompts = [e.prompt for e in first]
    _require(len(set(prompts)) == len(prompts), "different indices gave the same problem")
    _require([e.prompt for e in task.examples(6, seed=seed + 1)] != prompts,
             "another seed gave the same problems")


def check_messages(task: Any, examples: Sequence[Example]) -> None:
    """messages(example) is a chat list of {role, content} strings whose last user turn holds the prompt."""
    for example in examples:
        messages = task.messages(example)
        _require(bool(messages) and all(isinstance(m, dict) and set(m) == {"role", "content"}
                                        and isinstance(m["content"], str) for m in messages),
                 f"messages() returned {messages!r:.120}, expected [{{role, content}}, ...] "
                 "with str contents")
        _require(messages[-1]["role"] == "user" and example.prompt in messages[-1]["content"],
                 "the last message is not a user turn holding example.prompt")


def check_oracle_earns_the_maximum(task: Any, examples: Sequence[Example],
                                   timeout_seconds: float = TIMEOUT_SECONDS) -> None:
    high = reward_range(task)[1]
    for i, example in enumerate(examples):
        score = bounded_score(task, oracle(task, example), example, timeout_seconds)
        _require((score.correct, score.format_ok, score.reward) == (True, True, high),
                 f"the oracle completion of example {i} scored (correct, format_ok, reward) = "
                 f"{(score.correct, score.format_ok, score.reward)}, expected (True, True, {high})")


def check_garbage_earns_the_minimum(task: Any, examples: Sequence[Example],
                                    texts: Sequence[str] = GARBAGE + HUNDRED_KB,
                                    timeout_seconds: float = TIMEOUT_SECONDS) -> None:
    low = reward_range(task)[0]
    for text in texts:
        for example in examples:
            score = bounded_score(task, text, example, timeout_seconds)
            _require(score.correct is False, f"{_describe(text)} was judged correct")
            _require(score.reward == low,
                     f"{_describe(text)} earned {score.reward}, expected the minimum {low}")


def check_oracle_after_a_hundred_kilobytes(task: Any, example: Example,
                                           timeout_seconds: float = TIMEOUT_SECONDS) -> None:
    """`correct` judges the answer alone, wherever it starts."""
    text = "x " * 50_000 + oracle(task, example)
    score = bounded_score(task, text, example, timeout_seconds)
    _require(score.correct is True, "the oracle completion after 100 KB of text was not judged correct")


def check_records_round_trip(task: Any, examples: Sequence[Example], timeout_seconds: float = TIMEOUT_SECONDS,
                             with_oracle: bool = True) -> None:
    """to_record is JSON-serialisable and from_record reads it back to the same problem."""
    high = reward_range(task)[1]
    for i, example in enumerate(examples):
        try:
            record = json.loads(json.dumps(task.to_record(example)))
        except (TypeError, ValueError) as error:
            raise ContractError(f"to_record(example {i}) is not JSON-serialisable: {error}") from None
        again = task.from_record(record)
        _require(again.prompt == example.prompt, f"from_record(to_record(example {i})) has another prompt")
        same_answer = (json.dumps(again.answer, sort_keys=True, default=str)
                       == json.dumps(example.answer, sort_keys=True, default=str))
        _require(same_answer, f"from_record(to_record(example {i})) has another answer")
        if with_oracle:
            _require(bounded_score(task, oracle(task, again), again, timeout_seconds).reward == high,
                     f"the oracle completion of example {i} read back from its record does not earn {high}")


def check_hooks(task: Any, examples: Sequence[Example]) -> None:
    """The optional hooks a task declares have their documented form (rlvr.tasks.base): difficulty_keys
    strings; generation_options GenerationOptions with identifier names and int / float / str types;
    text_rows a bool; record_match an int for any dict, 0 for an empty one and > 0 for the task's own
    records (to_record of its examples), so `rlvr data stats` recognises the files it writes."""
    keys = getattr(task, "difficulty_keys", None)
    if keys is not None:
        _require(isinstance(keys, (tuple, list)) and all(isinstance(k, str) for k in keys),
                 f"difficulty_keys {keys!r}: expected a tuple of metadata key names")
    for option in getattr(task, "generation_options", ()):
        _require(isinstance(option, GenerationOption),
                 f"generation_options holds {option!r}, not a GenerationOption")
        _require(option.name.isidentifier(), f"generation option {option.name!r} is not a keyword name")
        _require(option.type in (int, float, str),
                 f"generation option {option.name!r} has type {option.type!r}, expected int, float or str")
    _require(isinstance(getattr(task, "text_rows", True), bool), "text_rows is not a bool")
    match = getattr(type(task), "record_match", None)
    if match is None:
        return
    _require(callable(match), "record_match is not callable")
    empty = match({})
    _require(type(empty) is int and empty == 0, f"record_match({{}}) returned {empty!r}, expected 0")
    for i, example in enumerate(examples[:3]):
        score = match(json.loads(json.dumps(task.to_record(example), default=str)))
        _require(type(score) is int and score > 0,
                 f"record_match(to_record(example {i})) returned {score!r}, expected an int > 0 "
                 "(its own record)")


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "pass" | "fail" | "skip"
    message: str = ""


def run_contract(task: Any, examples: Sequence[Example] | None = None, n: int = 8,
                 timeout_seconds: float = TIMEOUT_SECONDS) -> list[CheckResult]:
    """Every check on `task`, in order; a check that raises anything fails with its message.

    examples: rows to check on (e.g. a data file's, for a task without a generator); None: the
    task's own examples(n, seed) (and the purity of its generator is checked too)."""
    results = [_run("protocol", lambda: check_protocol(task))]
    if results[0].status == "fail":
        return results
    if examples is None:
        try:
            examples = task.examples(n, seed=1)
        except Exception as error:  # reported, the rest cannot run
            message = (f"examples({n}, seed=1) raised {type(error).__name__}: {error} (a task without a "
                       "generator: check it on rows, --data FILE)")
            return [*results, CheckResult("examples", "fail", message)]
        results.append(_run("examples are a pure function of (seed, index)",
                            lambda: check_examples_are_pure(task)))
    rows = list(examples)
    has_oracle = any(callable(getattr(task, m, None)) for m in ("oracle_completion", "solution_trace"))
    checks: list[tuple[str, Callable[[], None]]] = [
        ("messages carry the prompt", lambda: check_messages(task, rows)),
        ("the oracle earns the maximum", lambda: check_oracle_earns_the_maximum(task, rows, timeout_seconds)),
        ("garbage earns the minimum (scorer total, bounded in time)",
         lambda: check_garbage_earns_the_minimum(task, rows[:2], timeout_seconds=timeout_seconds)),
        ("the oracle after 100 KB is judged", lambda: check_oracle_after_a_hundred_kilobytes(task, rows[0],
                                                                                          timeout_seconds)),
        ("records round-trip", lambda: check_records_round_trip(task, rows[:5], timeout_seconds, has_oracle)),
        ("the optional hooks have their form", lambda: check_hooks(task, rows)),
    ]
    results += [_run(name, check) for name, check in checks]
    return results


def _run(name: str, check: Callable[[], None]) -> CheckResult:
    try:
        check()
    except NoOracle as reason:
        return CheckResult(name, "skip", str(reason))
    except Exception as error:  # any failure of the task's code fails its check
        message = str(error) if isinstance(error, ContractError) else f"{type(error).__name__}: {error}"
        return CheckResult(name, "fail", message)
    return CheckResult(name, "pass")


def load_and_check(spec: str, options: dict[str, Any] | None = None, data: str | None = None, n: int = 8,
                   timeout_seconds: float = TIMEOUT_SECONDS) -> list[CheckResult]:
    """`rlvr check-task`: build task `spec` with `options` and run the contract on it (on the first
    n rows of `data` when given). A spec that builds no Task fails the protocol check, named."""
    try:
        task = factory(spec)(**(options or {}))
    except TaskError as error:
        return [CheckResult("protocol", "fail", str(error))]
    except (TypeError, ValueError) as error:
        return [CheckResult("protocol", "fail", f"building task {spec!r} with options {options or {}} raised "
                                                f"{type(error).__name__}: {error}")]
    examples = None
    if data:
        examples = load_examples(task, data, limit=n)
        if not examples:
            return [CheckResult("examples", "fail", f"{data} holds no rows")]
    return run_contract(task, examples, n=n, timeout_seconds=timeout_seconds)


def describe_results(spec: str, results: Sequence[CheckResult]) -> str:
    """One line per check ("PASS name", "FAIL name: why", "SKIP name: why") and a verdict."""
    lines = [f"{r.status.upper()}  {r.name}" + (f": {r.message}" if r.message else "") for r in results]
    failed = sum(r.status == "fail" for r in results)
    verdict = f"task {spec}: {failed} of {len(results)} checks failed" if failed else \
        f"task {spec}: the contract holds ({sum(r.status == 'pass' for r in results)} checks passed)"
    return "\n".join([*lines, verdict])
