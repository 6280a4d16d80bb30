"""Countdown: reach a target number from given numbers with + - * / (TinyZero's task).

A problem is 3..6 positive integers and a target; the model writes an arithmetic expression that
uses the numbers and evaluates to the target. Generated problems are solvable by construction:
a random expression over the numbers (positive integer intermediate values, exact divisions
only) gives the target, and that expression is kept in metadata["solution"]. TinyZero's rows
(nums, target), and verl's (reward_model.ground_truth = {target, numbers}), load with from_record.

Verifier (decided here):
  * the graded text is the last <answer> ... </answer> block (no block: no answer);
  * it may hold only ASCII digits, + - * / ( ) . and spaces, and at most an "= N" tail whose N
    must equal the target ("(1 + 2) * 3 = 9"); anything else (letters, unicode look-alike
    digits or operators such as "−", "×", "÷", "１") is not a well-formed attempt;
  * grammar: sums of products of unary-minus factors, numbers, parenthesised expressions;
    at most 1,000 characters and 32 levels of nesting; numbers of at most 12 digits;
  * each given number is used exactly once (numbers_use="exactly_once", TinyZero's rule: the
    multiset of literals equals the given one) or at most once ("at_most_once"); literals are
    compared by value (4.0 is a use of 4);
  * the value is computed with exact rationals (fractions.Fraction) by our own parser, never
    Python's eval; division by zero makes an attempt wrong, not an error. Values are only
    computed after the number check, so they stay small.

Rewards. "default": 1.0 iff correct and the <think>/<answer> format holds, else 0.0.
"tinyzero": 1.0 correct, 0.1 a well-formed attempt (parses, whatever its numbers or value),
0.0 no answer block or not well-formed; the <think> tags are not required (TinyZero's scheme;
unlike TinyZero, text outside the grammar earns 0, not 0.1). parts: answer, format, well_formed.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from rlvr.errors import RecordError
from rlvr.rewards import check_format, last_answer_block
from rlvr.tasks.base import Example, GenerationOption, Score

REWARD_SCHEMES = ("default", "tinyzero")
NUMBERS_USE = ("exactly_once", "at_most_once")
MIN_NUMBERS, MAX_NUMBERS = 3, 6
MAX_EXPRESSION_CHARS = 1000
MAX_NESTING = 32
MAX_LITERAL_DIGITS = 12
_SYSTEM = (
    "You solve arithmetic puzzles. First think step by step inside <think> </think>. Then give only "
    "the equation inside <answer> </answer>, for example <answer> (1 + 2) / 3 </answer>."
)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_ALLOWED = re.compile(r"[0-9+\-*/(). \t\r\n]*")  # [0-9], never \d: it matches other scripts' digits
_TOKEN = re.compile(r"\s*(?:([0-9]+(?:\.[0-9]+)?)|([-+*/()]))")
_MAX_DRAWS = 10_000  # expression trees tried for one example before giving up (a few suffice)


class ExpressionError(ValueError):
    """Text that is not an expression of the grammar (or breaks a size guard)."""


# -- parsing and exact evaluation -----------------------------------------------------------------

def tokenize(text: str) -> list[str]:
    """Numbers and the operators + - * / ( ); anything else is an ExpressionError."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    if not _ALLOWED.fullmatch(text):
        raise ExpressionError("characters other than digits, + - * / ( ) . and spaces")
    tokens, position, end = [], 0, len(text.rstrip())
    while position < end:
        match = _TOKEN.match(text, position)
        if match is None:
            raise ExpressionError(f"unexpected {text[position:position + 10]!r}")
        number = match.group(1)
        if number is not None and len(number.replace(".", "")) > MAX_LITERAL_DIGITS:
            raise ExpressionError(f"number longer than {MAX_LITERAL_DIGITS} digits")
        tokens.append(number if number is not None else match.group(2))
        position = match.end()
    return tokens


class _Parser:
    """Recursive descent over tokens; builds a nested tuple tree, checks nesting depth.

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := "-" factor | NUMBER | "(" expr ")"
    """

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.position = 0
        self.depth = 0

    def parse(self) -> Any:
        if not self.tokens:
            raise ExpressionError("empty expression")
        tree = self._expr()
        if self.position != len(self.tokens):
            raise ExpressionError(f"unexpected {self.tokens[self.position]!r}")
        return tree

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _expr(self) -> Any:
        tree = self._term()
        while self._peek() in ("+", "-"):
            op = self.tokens[self.position]
            self.position += 1
            tree = (op, tree, self._term())
        return tree

    def _term(self) -> Any:
        tree = self._factor()
        while self._peek() in ("*", "/"):
            op = self.tokens[self.position]
            self.position += 1
            tree = (op, tree, self._factor())
        return tree

    def _factor(self) -> Any:
        token = self._peek()
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ExpressionError(f"nested deeper than {MAX_NESTING}")
        try:
            if token is None:
                raise ExpressionError("expression ends early")
            self.position += 1
            if token == "-":
                return ("neg", self._factor())
            if token == "(":
                tree = self._expr()
                if self._peek() != ")":
                    raise ExpressionError("unbalanced parenthesis")
                self.position += 1
                return tree
            if token[0].isdigit():
                # ints where possible: exact, and several times faster than Fraction to hash and add
                return Fraction(token) if "." in token else int(token)
            raise ExpressionError(f"unexpected {token!r}")
        finally:
            self.depth -= 1


def parse_expression(text: str) -> Any:
    """The expression tree of `text`: a number leaf (int, or Fraction for a decimal literal),
    ("neg", t) or (op, left, right)."""
    return _Parser(tokenize(text)).parse()


def literals(tree: Any) -> list[int | Fraction]:
    """The numbers written in the expression, left to right."""
    if not isinstance(tree, tuple):
        return [tree]
    return [value for child in tree[1:] for value in literals(child)]


def evaluate(tree: Any) -> int | Fraction:
    """Exact value (int and Fraction arithmetic only); ZeroDivisionError on division by zero."""
    if not isinstance(tree, tuple):
        return tree
    if tree[0] == "neg":
        return -evaluate(tree[1])
    left, right = evaluate(tree[1]), evaluate(tree[2])
    if tree[0] == "+":
        return left + right
    if tree[0] == "-":
        return left - right
    if tree[0] == "*":
        return left * right
    return Fraction(left) / right


def numbers_ok(used: Sequence[int | Fraction], given: Sequence[int], rule: str) -> bool:
    """exactly_once: the multisets are equal; at_most_once: used is a sub-multiset of given.

    Values compare across types (Fraction(4) == 4 with equal hashes), so 4.0 counts as 4.
    """
    used_count: Counter[int | Fraction] = Counter(used)
    given_count: Counter[int | Fraction] = Counter(given)
    if rule == "exactly_once":
        return used_count == given_count
    return all(given_count[value] >= count for value, count in used_count.items())


def judge(answer: str | None, numbers: Sequence[int], target: int, rule: str) -> tuple[bool, bool]:
    """(well_formed, correct) of an answer text for the problem (numbers, target)."""
    if answer is None:
        return False, False
    expression, _, claimed = answer.partition("=")
    try:
        tree = parse_expression(expression)
        if claimed and not re.fullmatch(r"\s*[0-9]{1,12}\s*", claimed):
            raise ExpressionError("the text after '=' must be one number")
    except ExpressionError:
        return False, False
    if claimed and int(claimed) != target:
        return True, False
    if not numbers_ok(literals(tree), numbers, rule):
        return True, False
    try:
        return True, evaluate(tree) == target
    except ZeroDivisionError:
        return True, False


# -- a solver (for oracle answers of records that come without one) --------------------------------

def solve(numbers: Sequence[int], target: int, use_all: bool = True) -> str | None:
    """An expression over `numbers` with value `target`, or None. Exact, exhaustive.

    Dynamic programming over subsets: for each subset, every value reachable from it (one
    expression each), combining two disjoint subsets with + - * /; the full set is only searched
    for the goal. Milliseconds for 3-4 numbers, up to seconds for 6.
    """
    count = len(numbers)
    goal, full = Fraction(target), (1 << count) - 1
    reach: dict[int, dict[Fraction, str]] = {1 << i: {Fraction(n): str(n)} for i, n in enumerate(numbers)}
    for mask in sorted(range(1, full + 1), key=lambda m: bin(m).count("1")):
        if mask in reach:
            continue
        if mask == full and use_all:
            return _reach_goal(reach, full, goal)  # only the goal matters: no table for the full set
        values: dict[Fraction, str] = {}
        for sub, rest in _splits(mask):
            for a, text_a in reach[sub].items():
                for b, text_b in reach[rest].items():
                    _combine(values, a, text_a, b, text_b)
        reach[mask] = values
    for mask in sorted(reach, key=lambda m: (m != full, bin(m).count("1"))):
        if (use_all and mask == full or not use_all) and goal in reach[mask]:
            return reach[mask][goal]
    return None


def _splits(mask: int) -> list[tuple[int, int]]:
    """Each unordered split of `mask` into two non-empty disjoint parts, once."""
    pairs, sub = [], (mask - 1) & mask
    while sub:
        if sub < mask ^ sub:
            pairs.append((sub, mask ^ sub))
        sub = (sub - 1) & mask
    return pairs


def _reach_goal(reach: dict[int, dict[Fraction, str]], mask: int, goal: Fraction) -> str | None:
    for sub, rest in _splits(mask):
        for a, text_a in reach[sub].items():
            for b, text_b in reach[rest].items():
                values: dict[Fraction, str] = {}
                _combine(values, a, text_a, b, text_b)
                if goal in values:
                    return values[goal]
    return None


def _combine(values: dict[Fraction, str], a: Fraction, text_a: str, b: Fraction, text_b: str) -> None:
    pa, pb = _wrap(text_a), _wrap(text_b)
    values.setdefault(a + b, f"{pa} + {pb}")
    values.setdefault(a * b, f"{pa} * {pb}")
    values.setdefault(a - b, f"{pa} - {pb}")
    values.setdefault(b - a, f"{pb} - {pa}")
    if b:
        values.setdefault(a / b, f"{pa} / {pb}")
    if a:
        values.setdefault(b / a, f"{pb} / {pa}")


def _wrap(text: str) -> str:
    return text if text.isdigit() else f"({text})"


# -- the task -----------------------------------------------------------------------------------

class Countdown:
    """TinyZero's Countdown task (see the module docstring).

    reward_scheme:   "default" (1 / 0) or "tinyzero" (1 / 0.1 / 0).
    numbers_use:     "exactly_once" (TinyZero) or "at_most_once".
    response_prefix: text the prompt pre-fills at the start of the assistant turn (e.g. "<think>").
    max_number:      generated numbers are drawn from 1..max_number.
    max_target:      generated targets lie in 1..max_target.
    """

    name = "countdown"
    difficulty_keys = ("numbers",)
    default_difficulty: dict[str, Any] = {}  # examples() defaults to 4 numbers; data files: every row
    corpus_levels: tuple[dict[str, Any], ...] = tuple({"numbers": k} for k in range(3, 7))
    generation_options = (GenerationOption("numbers", "how many numbers (default: the task's, 4)", int),)
    text_rows = False  # a row is nums + target: its problem text is the task's prompt

    @staticmethod
    def record_match(record: dict[str, Any]) -> int:
        """2 for a TinyZero row (nums + target) or a verl row (ground truth with target and
        numbers), else 0 (see rlvr.tasks.base)."""
        truth = record.get("reward_model", {}).get("ground_truth") if isinstance(
            record.get("reward_model"), dict) else None
        verl = isinstance(truth, dict) and "target" in truth and "numbers" in truth
        return 2 if ("nums" in record and "target" in record) or verl else 0

    def __init__(
        self,
        reward_scheme: str = "default",
        numbers_use: str = "exactly_once",
        response_prefix: str = "",
        max_number: int = 99,
        max_target: int = 100,
    ) -> None:
        if reward_scheme not in REWARD_SCHEMES:
            raise ValueError(f"unknown reward_scheme {reward_scheme!r}; valid: {', '.join(REWARD_SCHEMES)}")
        if numbers_use not in NUMBERS_USE:
            raise ValueError(f"unknown numbers_use {numbers_use!r}; valid: {', '.join(NUMBERS_USE)}")
        if max_number < 2 or max_target < 1:
            raise ValueError(f"need max_number >= 2 and max_target >= 1, got {max_number}, {max_target}")
        self.reward_scheme = reward_scheme
        self.numbers_use = numbers_use
        self.response_prefix = response_prefix
        self.max_number = max_number
        self.max_target = max_target

    @property
    def reward_range(self) -> tuple[float, float]:
        return (0.0, 1.0)

    # -- generation ---------------------------------------------------------------------------

    def examples(self, n: int, seed: int, numbers: int = 4, **difficulty: Any) -> list[Example]:
        """n solvable problems with `numbers` (3..6) numbers; example i is a pure function of
        (seed, i, numbers, max_number, max_target)."""
        if difficulty:
            raise ValueError(f"unknown difficulty option(s) {sorted(difficulty)} for countdown; "
                             "valid: numbers")
        if type(numbers) is not int or not MIN_NUMBERS <= numbers <= MAX_NUMBERS:
            raise ValueError(f"numbers must be an int in {MIN_NUMBERS}..{MAX_NUMBERS}, got {numbers!r}")
        return [self._example(seed, index, numbers) for index in range(n)]

    def _example(self, seed: int, index: int, count: int) -> Example:
        # A string seed goes through SHA-512 in random.seed: stable across processes and platforms.
        rng = random.Random(f"countdown:{seed}:{index}:{count}:{self.max_number}:{self.max_target}")
        for _ in range(_MAX_DRAWS):
            nums = [rng.randint(1, self.max_number) for _ in range(count)]
            value, solution = _random_expression(rng, nums)
            if 1 <= value <= self.max_target:
                metadata = {"source": "generated", "seed": seed, "index": index, "solution": solution}
                return _make_example(nums, value, metadata)
        raise RuntimeError(f"no countdown problem with target <= {self.max_target} in {_MAX_DRAWS} draws")

    # -- prompts and targets ------------------------------------------------------------------

    def messages(self, example: Example) -> list[dict[str, str]]:
        rule = "exactly once" if self.numbers_use == "exactly_once" else "at most once"
        user = (f"{example.prompt} You can use +, -, *, / and parentheses, and each number {rule}. "
                "Show your reasoning in <think> </think> and write only the equation in <answer> </answer>.")
        return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]

    def oracle_completion(self, example: Example) -> str:
        """A completion that earns the maximum reward (the kept solution, else one found by solve)."""
        numbers, target = example.answer["numbers"], example.answer["target"]
        solution = example.metadata.get("solution") or solve(numbers, target)
        if solution is None:
            raise ValueError(f"no expression over {numbers} reaches {target}")
        full = (f"<think>\nTry combinations of {', '.join(map(str, numbers))} to reach {target}: "
                f"{solution} = {target}.\n</think>\n<answer>{solution}</answer>")
        return _after_prefix(full, self.response_prefix)

    # -- scoring ------------------------------------------------------------------------------

    def score(self, completion: str, example: Example) -> Score:
        """Judge one completion; total: any internal error scores as no answer."""
        try:
            return self._score(completion, example)
        except Exception:  # a scorer must never raise into the RL loop
            return Score(reward=0.0, correct=False, format_ok=False,
                         parts={"answer": 0.0, "format": 0.0, "well_formed": 0.0})

    def _score(self, completion: str, example: Example) -> Score:
        text = self.response_prefix + completion
        answer = last_answer_block(text)
        format_ok = all(text.count(tag) == 1 for tag in _TAGS) and check_format(
            completion, prefix=self.response_prefix
        ).ok  # counting first keeps check_format's regex off adversarial text
        well_formed, correct = judge(answer, example.answer["numbers"], example.answer["target"],
                                     self.numbers_use)
        if self.reward_scheme == "default":
            reward = 1.0 if correct and format_ok else 0.0
        else:
            reward = 1.0 if correct else 0.1 if well_formed else 0.0
        parts = {"answer": float(correct), "format": float(format_ok), "well_formed": float(well_formed)}
        return Score(reward=reward, correct=correct, format_ok=format_ok, parts=parts, extracted=answer)

    # -- records ------------------------------------------------------------------------------

    def from_record(self, record: dict[str, Any]) -> Example:
        """An Example from a TinyZero row {nums, target} or a verl row (reward_model.ground_truth
        = {target, numbers}); optional solution, seed, index, source/data_source are kept."""
        if not isinstance(record, dict):
            raise RecordError(f"a countdown record must be a JSON object, got {type(record).__name__}")
        truth = record.get("reward_model", {}).get("ground_truth") if isinstance(
            record.get("reward_model"), dict) else None
        truth = truth if isinstance(truth, dict) else {}
        if "nums" in record:
            nums, nums_field = record["nums"], "nums"
        elif "numbers" in truth:
            nums, nums_field = truth["numbers"], "reward_model.ground_truth.numbers"
        else:
            raise RecordError("countdown record: missing field 'nums' (or verl's 'reward_model.ground_truth."
                              f"numbers'); fields present: {', '.join(sorted(map(str, record)))}")
        if "target" in record:
            target, target_field = record["target"], "target"
        elif "target" in truth:
            target, target_field = truth["target"], "reward_model.ground_truth.target"
        else:
            raise RecordError("countdown record: missing field 'target' "
                              "(or verl's 'reward_model.ground_truth.target')")
        numbers = [_as_int(x, nums_field) for x in _as_list(nums, nums_field)]
        if not numbers:
            raise RecordError(f"countdown record: field {nums_field!r} is empty")
        metadata: dict[str, Any] = {"source": record.get("source") or record.get("data_source") or "record"}
        for key in ("seed", "index", "solution"):
            if record.get(key) is not None:
                metadata[key] = record[key]
        return _make_example(numbers, _as_int(target, target_field), metadata)

    def to_record(self, example: Example) -> dict[str, Any]:
        """TinyZero's schema {nums, target} plus solution, seed, index, source when known."""
        record: dict[str, Any] = {"nums": list(example.answer["numbers"]), "target": example.answer["target"]}
        for key in ("solution", "seed", "index", "source"):
            if example.metadata.get(key) is not None:
                record[key] = example.metadata[key]
        return record


def _make_example(numbers: list[int], target: int, metadata: dict[str, Any]) -> Example:
    prompt = f"Using the numbers {numbers}, create an equation that equals {target}."
    return Example(prompt=prompt, answer={"numbers": numbers, "target": target}, metadata=metadata)


def _random_expression(rng: random.Random, numbers: list[int]) -> tuple[int, str]:
    """Combine random pairs until one value is left; every intermediate value is a positive integer."""
    items = [(n, str(n)) for n in numbers]
    while len(items) > 1:
        (a, text_a), (b, text_b) = items.pop(rng.randrange(len(items))), items.pop(rng.randrange(len(items)))
        if a < b:
            (a, text_a), (b, text_b) = (b, text_b), (a, text_a)
        op = rng.choice("+-*/")
        if op == "-" and a == b or op == "/" and (b == 1 or a % b):
            op = rng.choice("+*")  # keep intermediate values positive integers and divisions meaningful
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        items.append((value, f"{_wrap(text_a)} {op} {_wrap(text_b)}"))
    return items[0]


def _after_prefix(full: str, prefix: str) -> str:
    """`full` minus the pre-filled `prefix` (trailing whitespace in the prefix tolerated)."""
    if full.startswith(prefix):
        return full[len(prefix) :]
    if full.startswith(prefix.rstrip()):
        return full[len(prefix.rstrip()) :]
    raise ValueError(f"response_prefix {prefix!r} is not a start of the completion format ({full[:20]!r}...)")


def _as_list(value: Any, field: str) -> list[Any]:
    if isinstance(value, (str, bytes, dict)):
        raise RecordError(f"countdown record: field {field!r} must be a list of integers, got {value!r:.80}")
    try:
        return list(value)  # parquet gives numpy arrays
    except TypeError:
        raise RecordError(f"countdown record: field {field!r} must be a list of integers, "
                          f"got {value!r:.80}") from None


def _as_int(value: Any, field: str) -> int:
    """An integer (numpy ints and integral floats accepted), else RecordError naming the field."""
    if isinstance(value, bool):
        raise RecordError(f"countdown record: field {field!r} must hold integers, got {value!r}")
    try:
        number = int(value)
        integral = number == value
    except (TypeError, ValueError, OverflowError):
        integral = False
    if not integral:
        raise RecordError(f"countdown record: field {field!r} must hold integers, got {value!r:.80}")
    return number
