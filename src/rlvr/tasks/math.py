"""Math word problems with a final answer, graded by math-verify in bounded time.

Real training uses data files: rows with a problem and an answer (MATH, DeepScaleR, ...) or verl's
schema (`prompt` + `reward_model.ground_truth`), read by `from_record`. `examples()` only offers a
small deterministic generator of simple problems (linear equations, fraction arithmetic, short
word problems, levels 1..3) so the task runs offline and in tests; it is not a benchmark.

Prompt: the problem plus DeepScaleR's suffix ("Let's think step by step and output the final
answer within \\boxed{}."), with a system message asking for <think> ... </think> then
<answer> ... </answer>.

Which text is graded (decided here; DeepScaleR's grader uses the text after </think>):
  1. the answer part: the last <answer> ... </answer> block; without one, the text after the last
     </think>; without that, the whole completion (so `correct` means something for models
     that ignore the tags; the default reward still requires the format);
  2. inside it, the last complete \\boxed{...} (or \\fbox{...}) with the boxes just before it that
     only spacing, punctuation, "and"/"or" or "x =" separate from it (a set or tuple written as
     several boxes; a hedge "\\boxed{1} or \\boxed{5}" is graded as both values); without a box,
     the answer part itself is a bare answer, accepted where math-verify extracts one ("x = 5").
  An answer block or box that exists but does not parse extracts nothing (wrong, reward 0),
  never the surrounding text: a \\boxed{ that never closes, an <answer> after the last
  </answer>, a </answer> without an <answer> before it.

How it is graded, cheapest first (both sides first pass through canonical(): an approximation
after \\approx, currency signs, trailing unit words and Python's ** are dropped):
  1. a multiple-choice gold (a letter A-J, "(C)", "\\textbf{(C)}"): correct iff the candidate
     names the same letter (choice_letter: wrappers dropped, case-sensitive, one letter only);
  2. exact match after a conservative normalisation (spaces, \\left/\\right, \\dfrac, $...$,
     TeX shorthand \\frac12 -> \\frac{1}{2}): correct;
  3. both sides plain numbers (integer, decimal, a/b, \\frac{a}{b}, mixed 3\\frac{1}{2}), or tuples
     of them with the same brackets: decided here at the precision the answer implies
     (numbers_agree: a 2+-place decimal gold is met by an exact value that rounds to it; an exact
     gold by a decimal of 3+ significant digits that it rounds to; otherwise equal values only);
  4. guards judged in-process as wrong: an answer longer than max_answer_chars, brackets nested
     deeper than 32, numeric power towers or powers/factorials with over ~10^5 digits;
  5. otherwise math-verify (`verify(gold, pred)`, gold first, relations compared with sets so
     x > 3 meets (3, \\infty)) in a worker process (rlvr.tasks._timeout) with a deadline of
     timeout_seconds; a miss kills the worker and scores wrong with parts["timeout"] = 1. Against
     a 2+-place decimal gold an exact constant (\\pi, 2\\sqrt{5}) that rounds to it is correct too.
Gold answers are parsed as \\boxed{gold}; predictions with LatexExtractionConfig
(boxed_match_priority=0, no malformed-operator or "nits" rewriting: math-verify's advice for
rewards) and ExprExtractionConfig; math-verify's unit rewrite is off on both sides (it reads
"2h" as 2 and "6ab" as 6). tests/fixtures/math_grading_cases.jsonl holds verdicts after the
public graders' test suites; bench/bench_math_agreement.py measures agreement on it.

Rewards. "default": 1.0 iff correct and the <think>/<answer> format holds, else 0.0.
"answer_only": 1.0 iff correct (format reported, not required). parts: answer, format, timeout
(+ grader_error when the worker failed).
"""

from __future__ import annotations

import logging
import math
import random
import re
from fractions import Fraction
from functools import lru_cache
from typing import Any

from rlvr.errors import RecordError
from rlvr.rewards import check_format
from rlvr.tasks._timeout import Outcome, shared_pool
from rlvr.tasks.base import Example, GenerationOption, Score

PROMPT_SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."
REWARD_SCHEMES = ("default", "answer_only")
LEVELS = (1, 2, 3)
_SYSTEM = (
    "You solve math problems. First think step by step inside <think> </think>. Then give the final "
    "answer inside <answer> </answer>, written as \\boxed{ANSWER}."
)
_HANDLER = "rlvr.tasks.math:grade_request"
_WARMUP = "rlvr.tasks.math:warm_up"
_MAX_NESTING = 32
_MAX_DIGITS = 100_000  # powers and factorials beyond this many digits are judged in-process as wrong
# Provenance fields kept in metadata when a record has them (and written back by to_record).
_META_KEYS = ("source", "seed", "index", "level", "kind", "solution", "subject", "type", "unique_id", "id")
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


# -- extraction ---------------------------------------------------------------------------------

def answer_part(text: str) -> str | None:
    """The graded region: last <answer> block, else the text after the last </think>, else all.

    The block is the text between the last "</answer>" and the last "<answer>" before it
    (found with rfind, linear even on adversarial text). An answer block that exists but does
    not parse gives None (nothing extracted), never the surrounding text: an "<answer>" after the
    last "</answer>" (an unclosed block) or a "</answer>" without an "<answer>" before it.
    """
    close = text.rfind("</answer>")
    if text.rfind("<answer>") > close:
        return None  # the last block never closes
    if close >= 0:
        open_ = text.rfind("<answer>", 0, close)
        if open_ < 0:
            return None  # a closing tag without an opening one
        return text[open_ + len("<answer>") : close].strip()
    think_end = text.rfind("</think>")
    if think_end >= 0:
        return text[think_end + len("</think>") :].strip()
    return text.strip()


_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"\\[{}]|[{}]")  # escaped braces (\{ a set \}) are text, not groups


def _complete_boxes(text: str) -> tuple[dict[int, int], list[tuple[int, int, int, int]]]:
    """One linear scan of the braces: {opening brace: backslash} of every \\boxed{ / \\fbox{, and the
    complete boxes in the order they close, as (box start, content start, content end, box end)."""
    opens = {m.end() - 1: m.start() for m in _BOX_OPEN.finditer(text)}
    complete: list[tuple[int, int, int, int]] = []
    if not opens:
        return opens, complete
    stack: list[int] = []
    for match in _BRACE.finditer(text):
        token = match.group()
        if token == "{":
            stack.append(match.start())
        elif token == "}" and stack:
            start = stack.pop()
            if start in opens:
                complete.append((opens[start], start + 1, match.start(), match.end()))
    return opens, complete


def last_boxed(text: str) -> str | None:
    """Content of the complete \\boxed{...} that closes last; None without one. Linear time."""
    _, complete = _complete_boxes(text)
    return text[complete[-1][1] : complete[-1][2]].strip() if complete else None


# Text allowed between the boxes of one multi-box answer ("\\boxed{-1} or \\boxed{4}",
# "$x = \\boxed{3}$, $y = \\boxed{5}$"): spacing, punctuation, math delimiters, and/or, "x =".
_MAX_GAP = 80
_BOX_GAP = re.compile(
    r"(?:\s|[,;.&$]|\\[,;:! ()\[\]]|\\q?quad|\\text\{\s*(?:and|or|,)?\s*\}|\b(?:and|or)\b|[A-Za-z]\s*=)*"
)


def final_boxes(text: str) -> list[str] | None:
    """Contents of the final answer's boxes: [] without a box, None when a box never closes.

    The final answer is the last top-level complete \\boxed{...} (or \\fbox{...}) together with
    the boxes before it that only spacing, punctuation, "and"/"or" or "x =" separate from it: a set
    or tuple written as several boxes ("\\boxed{-2} and \\boxed{1}", also a hedge "\\boxed{1} or
    \\boxed{5}", which is graded as the two values, not as the last one). A box that opens and never
    closes means nothing was extracted: None, never a fallback to the surrounding text. Linear
    apart from sorting the boxes.
    """
    opens, complete = _complete_boxes(text)
    if not opens:
        return []
    if len(complete) < len(opens):
        return None  # a box that never closes
    top: list[tuple[int, int, int, int]] = []
    for box in sorted(complete):
        if not top or box[0] >= top[-1][3]:
            top.append(box)  # not inside the previous top-level box
    first = len(top) - 1
    while first > 0 and _joined(text, top[first - 1][3], top[first][0]):
        first -= 1
    contents: list[str] = []
    for box in top[first:]:
        content = text[box[1] : box[2]].strip()
        if content not in contents:
            contents.append(content)
    return contents


def _joined(text: str, start: int, end: int) -> bool:
    # Bounded: the gap regex backtracks quadratically on long runs of spaces after a letter.
    return end - start <= _MAX_GAP and _BOX_GAP.fullmatch(text, start, end) is not None


_SPACING = re.compile(r"\\left|\\right|\\displaystyle|\\[,;:! ]|\s+")
_SHORT_FRAC_DD = re.compile(r"\\frac([0-9])\s*([0-9])")
_SHORT_FRAC_GD = re.compile(r"\\frac(\{[^{}]*\})\s*([0-9])")
_SHORT_FRAC_DG = re.compile(r"\\frac([0-9])\s*(?=\{)")
_SHORT_SQRT = re.compile(r"\\sqrt([0-9])")


def tex_shorthand(text: str) -> str:
    """Brace TeX's one-token arguments: \\frac12 -> \\frac{1}{2}, \\sqrt2 -> \\sqrt{2}.

    This is TeX's own reading (an unbraced argument is one token: \\frac123 is \\frac{1}{2}3),
    unlike math-verify's "malformed operators" rewrite (\\frac123 -> \\frac{1}{23}).
    """
    text = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", text)
    text = re.sub(r"\\(frac|sqrt)\s+(?=[0-9{])", r"\\\1", text)
    text = _SHORT_FRAC_DD.sub(r"\\frac{\1}{\2}", text)
    text = _SHORT_FRAC_GD.sub(r"\\frac\1{\2}", text)
    text = _SHORT_FRAC_DG.sub(r"\\frac{\1}", text)
    return _SHORT_SQRT.sub(r"\\sqrt{\1}", text)


def normalise(text: str) -> str:
    """A conservative canonical form for the exact-match fast path (never changes the value)."""
    text = tex_shorthand(text.strip())
    text = _SPACING.sub("", text)
    while len(text) >= 2 and text[0] == "$" and text[-1] == "$":
        text = text[1:-1]
    return text.rstrip(".")


_INT = re.compile(r"[+-]?[0-9]{1,40}")
_DECIMAL = re.compile(r"[+-]?[0-9]{0,40}\.[0-9]{1,40}")
_SLASH = re.compile(r"([+-]?[0-9]{1,40})/([0-9]{1,40})")
_FRAC = re.compile(r"([+-]?)\\frac\{([+-]?[0-9]{1,40})\}\{([+-]?[0-9]{1,40})\}")


_MIXED = re.compile(r"([+-]?)([0-9]{1,40})\\frac\{([0-9]{1,40})\}\{([0-9]{1,40})\}")


def plain_number(text: str) -> tuple[Fraction, int | None] | None:
    """(value, decimal places or None) of a normalised plain number, else None. ASCII digits only.

    Plain numbers: integers, decimals, a/b, \\frac{a}{b} and mixed numbers 3\\frac{1}{2} (= 7/2,
    the MATH answers' reading, as NeMo-Skills grades them; only a proper fraction after the
    whole part).
    """
    if _INT.fullmatch(text):
        return Fraction(int(text)), None
    if _DECIMAL.fullmatch(text):
        return Fraction(text), len(text) - text.index(".") - 1
    match = _SLASH.fullmatch(text)
    if match and int(match.group(2)) != 0:
        return Fraction(int(match.group(1)), int(match.group(2))), None
    match = _FRAC.fullmatch(text)
    if match and int(match.group(3)) != 0:
        value = Fraction(int(match.group(2)), int(match.group(3)))
        return (-value if match.group(1) == "-" else value), None
    match = _MIXED.fullmatch(text)
    if match and 0 < int(match.group(3)) < int(match.group(4)):
        value = int(match.group(2)) + Fraction(int(match.group(3)), int(match.group(4)))
        return (-value if match.group(1) == "-" else value), None
    return None


def rounded(value: Fraction, places: int) -> Fraction:
    """`value` rounded to `places` decimals, halves away from zero (as people round)."""
    scale = 10**places
    magnitude = math.floor(abs(value) * scale + Fraction(1, 2))
    return Fraction(magnitude if value >= 0 else -magnitude, scale)


def _significant_digits(decimal: str) -> int:
    return len(decimal.lstrip("+-").replace(".", "").lstrip("0"))


def numbers_agree(gold: str, candidate: str) -> bool | None:
    """Two normalised plain numbers compared at the precision the answer implies; None if not both.

    Equal values agree. A decimal gold answer with k >= 2 places may be a rounded value ("to the
    nearest hundredth"): an exact candidate (integer or fraction) agrees iff it rounds to it at k
    places (0.67 for 2/3). A decimal candidate against a decimal gold agrees only when equal: the
    gold 0.5 or 12.25 may be exact, and 0.46 or 12.249 must stay wrong. An exact gold answer
    against a decimal candidate with j places: agrees iff the gold rounds to the candidate at j
    places and the candidate has at least 3 significant digits (0.333 or 0.3333 for 1/3, never
    0.33 or a truncated 0.666 for 2/3). Two exact values agree only when equal.
    """
    a, b = plain_number(gold), plain_number(candidate)
    if a is None or b is None:
        return None
    (gold_value, gold_places), (cand_value, cand_places) = a, b
    if gold_value == cand_value:
        return True
    if gold_places is not None:
        return cand_places is None and gold_places >= 2 and rounded(cand_value, gold_places) == gold_value
    if cand_places is not None:
        return _significant_digits(candidate) >= 3 and rounded(gold_value, cand_places) == cand_value
    return False


_TUPLE = re.compile(r"([(\[])(.*)([)\]])")


def quick_verdict(gold: str, candidate: str) -> bool | None:
    """True / False when decidable without math-verify, else None.

    Decided here: equal normalised text; two plain numbers (numbers_agree); two tuples or
    intervals with the same brackets whose elements are all plain numbers, element by element.
    """
    gold_n, cand_n = normalise(gold), normalise(candidate)
    if not cand_n:
        return False
    if gold_n == cand_n:
        return True
    verdict = numbers_agree(gold_n, cand_n)
    if verdict is not None:
        return verdict
    g, c = _TUPLE.fullmatch(gold_n), _TUPLE.fullmatch(cand_n)
    if g and c and (g.group(1), g.group(3)) == (c.group(1), c.group(3)) and "," in g.group(2):
        gold_items, cand_items = g.group(2).split(","), c.group(2).split(",")
        if len(gold_items) == len(cand_items):
            verdicts = [numbers_agree(x, y) for x, y in zip(gold_items, cand_items)]
            if all(v is not None for v in verdicts):
                return all(verdicts)
    return None


# -- canonical forms: applied to the gold answer and the candidate before any comparison ----------

_APPROX = re.compile(r"\\approx|\\simeq|\\text\{\s*\(?\s*(?:approx|about|roughly)", re.IGNORECASE)
_LONE_VARIABLE = re.compile(r"[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?\s*=?")
_CURRENCY = re.compile(r"\\\$|\\textdollar(?![a-zA-Z])")
_UNIT_WORDS = (
    r"(?:(?:square|sq\.?|cubic)\s+)?(?:cm|mm|km|ft|feet|foot|inch(?:es)?|miles?|met(?:er|re)s?|"
    r"kilomet(?:er|re)s?|centimet(?:er|re)s?|grams?|kg|kilograms?|lbs?|pounds?|ounces?|oz|"
    r"hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|dollars?|cents?|"
    r"degrees?|units?|mph|liters?|litres?|ml)"
)
_TRAILING_UNIT = re.compile(
    r"(?<=[0-9}).\s])\s*(?:\\(?:text|textnormal|textrm|mbox)\s*\{\s*[A-Za-z][A-Za-z .]*\}"
    r"|\\mathrm\s*\{\s*[A-Za-z][A-Za-z .]+\}|" + _UNIT_WORDS + r"(?![A-Za-z]))"
    r"(?:\s*\^\s*\{?[23]\}?)?\s*\.?\s*$"
)


def canonical(answer: str, boxed: bool = True) -> str:
    """The answer with what never changes its value removed: an approximation after \\approx,
    currency signs, trailing unit words, and Python's ** for powers.

    "\\frac{\\sqrt3}{3} \\approx 0.577" -> "\\frac{\\sqrt3}{3}" ("x \\approx 11" and "\\approx 11"
    keep the value); "\\$1{,}200" -> "1{,}200"; "15\\text{ cm}^2", "45 cents" -> the number;
    "x**2" -> "x^2". Units are stripped here, never by math-verify (its unit rewrite reads
    "2h" or "2s + t" as 2). A bare (unboxed) answer part keeps its \\approx: it is prose.
    """
    text = answer.strip()
    while boxed and len(text) >= 2 and text[0] == "$" and text[-1] == "$" and text[-2] != "\\":
        text = text[1:-1].strip()
    approx = _APPROX.search(text) if boxed else None
    if approx:
        head = text[: approx.start()].strip()
        tail = text[approx.end() :].strip()
        text = head if head and not _LONE_VARIABLE.fullmatch(head) else tail
    text = _CURRENCY.sub("", text).replace("**", "^").strip()
    for _ in range(2):  # "15 \\text{ cm}^2." and "3 \\text{ square } \\text{units}"
        stripped = _TRAILING_UNIT.sub("", text).strip()
        if not stripped:
            break
        text = stripped
    return text


_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|textnormal|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_GOLD_CHOICE = re.compile(r"\(?([A-J])\)?\.?")
_PRED_CHOICE = re.compile(r"\(([A-J])\)(.*)|([A-J])\)?[.:]?", re.DOTALL)
_ANOTHER_LETTER = re.compile(r"(?<![A-Za-z\\])[A-J](?![A-Za-z])")


def choice_letter(answer: str, gold: bool = False) -> str | None:
    """The multiple-choice letter an answer names, else None.

    \\text{}, \\textbf{}, \\mathrm{}, ... wrappers, $ and spacing are dropped first. A gold answer
    is a letter A-J alone ("C", "(C)", "\\textbf{(C)}"); a candidate may follow a parenthesised
    letter with its value ("(B) 12", "\\textbf{(E)}\\ 24") but names no second letter.
    Letters are case-sensitive: "d" is not choice D.
    """
    text = answer.replace("$", "")
    for _ in range(3):
        text = _WRAPPER.sub(r"\1", text)
    text = _SPACING.sub("", text) if gold else text.strip()
    if gold:
        match = _GOLD_CHOICE.fullmatch(text)
        return match.group(1) if match else None
    match = _PRED_CHOICE.fullmatch(text)
    if not match:
        return None
    if match.group(1) and _ANOTHER_LETTER.search(match.group(2)):
        return None
    return match.group(1) or match.group(3)


_POWER = r"(?:\^|\*\*)\s*[({]?\s*"
_TOWER = re.compile(rf"([0-9]+)\s*{_POWER}([0-9]+)\s*{_POWER}([0-9]+)")
_POW = re.compile(rf"([0-9]+)\s*{_POWER}([0-9]+)")
_FACTORIAL = re.compile(r"([0-9]+)\s*!")


def guard(candidate: str, max_chars: int) -> str | None:
    """Why `candidate` is too costly to hand to sympy ("" -> None when it is fine).

    Catches inexpensively what would otherwise cost a worker kill: overlong text, deep nesting,
    numeric towers a^(b^c) and powers or factorials with more than _MAX_DIGITS digits.
    """
    if len(candidate) > max_chars:
        return "too long"
    depth = deepest = 0
    for char in candidate:
        if char in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "})]":
            depth = max(0, depth - 1)
    if deepest > _MAX_NESTING:
        return "nested too deep"
    for a, b, c in _TOWER.findall(candidate):
        # a^(b^c) has about b^c * log10(a) digits: compare logs, never compute b^c.
        if int(a) > 1 and int(b) > 1:
            exponent = int(c) if len(c) < 300 else math.inf
            digits = exponent * math.log10(int(b)) + math.log10(max(math.log10(int(a)), 0.1))
            if digits > math.log10(_MAX_DIGITS):
                return "power tower"
    for a, b in _POW.findall(candidate):
        if int(a) > 1 and _log10(b) + math.log10(math.log10(int(a))) > math.log10(_MAX_DIGITS):
            return "huge power"
    for n in _FACTORIAL.findall(candidate):
        # log10(n!) ~ n (log10 n - log10 e)
        if len(n) > 7 or int(n) * max(math.log10(max(int(n), 1)) - 0.434, 0.0) > _MAX_DIGITS:
            return "huge factorial"
    return None


def _log10(digits: str) -> float:
    """log10 of a decimal integer given as text, without converting a long one to int."""
    stripped = digits.lstrip("0") or "0"
    if stripped == "0":
        return -math.inf
    return len(stripped) - 1 + math.log10(int(stripped[:15]) / 10 ** (min(len(stripped), 15) - 1))


# -- math-verify, run inside a worker process (rlvr.tasks._timeout) ------------------------------
# math-verify and sympy are imported inside these functions: only the worker needs them, and they
# take seconds to import (start-up time of every process that imports rlvr.tasks.math).

@lru_cache(maxsize=1)
def _configs() -> tuple[list[Any], list[Any]]:
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # Units off on both sides: canonical() strips unit words; math-verify's rewrite drops letters
    # ("2h" -> 2, "6ab" -> 6), which would make "2" match "2h".
    gold_normalisation = NormalizationConfig(basic_latex=True, units=False, malformed_operators=False,
                                             nits=True, boxed="all", equations=True)
    gold = [LatexExtractionConfig(normalization_config=gold_normalisation), ExprExtractionConfig()]
    pred_normalisation = NormalizationConfig(
        basic_latex=True, units=False, malformed_operators=False, nits=False, boxed="all", equations=False
    )
    pred = [LatexExtractionConfig(boxed_match_priority=0, normalization_config=pred_normalisation),
            ExprExtractionConfig()]
    return gold, pred


def warm_up() -> None:
    """Import math-verify and sympy and silence their loggers (a worker has no one to tell)."""
    logging.disable(logging.CRITICAL)
    _configs()
    grade_request({"gold": "\\boxed{1}", "pred": "\\boxed{1}", "alarm_seconds": 0})


@lru_cache(maxsize=4096)
def _parse_gold(gold: str, alarm_seconds: int | None) -> list[Any]:
    from math_verify import parse

    return parse(gold, _configs()[0], parsing_timeout=alarm_seconds)  # type: ignore[arg-type]


def grade_request(request: dict[str, Any]) -> dict[str, Any]:
    """Worker side: {"gold", "pred", "alarm_seconds", "gold_places", "gold_value"} ->
    {"correct", "extracted"}.

    alarm_seconds > 0 turns on math-verify's own signal timeouts (the worker's main thread), which
    stop slow Python-level sympy work without a restart; the caller's deadline is the hard bound.
    Relations and sets compare (x > 3 is (3, oo)). gold_places, gold_value (a decimal gold answer
    and its places): an exact constant prediction (\\pi, 2\\sqrt{5}) is also correct when it rounds
    to gold_value there.
    """
    from math_verify import parse, verify

    alarm = int(request.get("alarm_seconds", 0)) or None
    gold = _parse_gold(request["gold"], alarm)
    pred = parse(request["pred"], _configs()[1], parsing_timeout=alarm)  # type: ignore[arg-type]
    correct = bool(gold and pred and verify(gold, pred, timeout_seconds=alarm, allow_set_relation_comp=True))
    places = request.get("gold_places")
    if not correct and pred and places is not None:
        correct = _rounds_to(pred[0], str(request["gold_value"]), int(places))
    extracted = next((p for p in pred if isinstance(p, str)), None)
    return {"correct": correct, "extracted": extracted}


def _rounds_to(pred: Any, gold: str, places: int) -> bool:
    """Whether a constant sympy expression rounds to the decimal `gold` at `places` decimals.

    A supplementary check: any failure is "no", never a grader error.
    """
    import sympy

    try:
        if not isinstance(pred, sympy.Expr) or pred.free_symbols or not pred.is_number:
            return False
        value = sympy.N(pred, 40)
        if not value.is_real or not value.is_finite or abs(value) > 10**30:
            return False
        return rounded(Fraction(str(value)), places) == Fraction(gold)
    except Exception:
        return False


# -- the task -----------------------------------------------------------------------------------

class MathTask:
    """Final-answer math (see the module docstring).

    problem_key, answer_key: record fields of the problem and gold answer (verl's prompt +
                     reward_model.ground_truth are read too).
    response_prefix: text the prompt pre-fills at the start of the assistant turn (e.g. "<think>").
    reward_scheme:   "default" or "answer_only".
    timeout_seconds: deadline for one math-verify call in the worker (the caller's wait).
    max_answer_chars: boxed answers longer than this are wrong; a bare answer part is cut to its
                     last max_answer_chars characters before math-verify.
    grader_workers:  worker processes for math-verify (concurrent scorers up to this many).
    """

    name = "math"
    difficulty_keys = ("level",)
    default_difficulty: dict[str, Any] = {}  # examples() defaults to level 1; data files: every row
    corpus_levels: tuple[dict[str, Any], ...] = tuple({"level": level} for level in (1, 2, 3))
    generation_options = (GenerationOption("level", "level 1..3 of the generated problems (default: 1)",
                                           int),)

    @staticmethod
    def record_match(record: dict[str, Any]) -> int:
        """1 for a row with a problem / question or verl's reward_model: the common fields of math
        sets, which other tasks' rows may have too (see rlvr.tasks.base); else 0."""
        return 1 if any(key in record for key in ("problem", "question", "reward_model")) else 0

    def __init__(
        self,
        problem_key: str = "problem",
        answer_key: str = "answer",
        response_prefix: str = "",
        reward_scheme: str = "default",
        timeout_seconds: float = 3.0,
        max_answer_chars: int = 1000,
        grader_workers: int = 2,
    ) -> None:
        if reward_scheme not in REWARD_SCHEMES:
            raise ValueError(f"unknown reward_scheme {reward_scheme!r}; valid: {', '.join(REWARD_SCHEMES)}")
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be > 0, got {timeout_seconds}")
        if max_answer_chars < 1 or grader_workers < 1:
            raise ValueError("max_answer_chars and grader_workers must be >= 1")
        self.problem_key = problem_key
        self.answer_key = answer_key
        self.response_prefix = response_prefix
        self.reward_scheme = reward_scheme
        self.timeout_seconds = float(timeout_seconds)
        self.max_answer_chars = max_answer_chars
        self.grader_workers = grader_workers

    @property
    def reward_range(self) -> tuple[float, float]:
        return (0.0, 1.0)

    # -- generation ---------------------------------------------------------------------------

    def examples(self, n: int, seed: int, level: int = 1, **difficulty: Any) -> list[Example]:
        """n generated problems of `level` (1..3); example i is a pure function of (seed, i, level).

        Level 1: one-step linear equations, integer arithmetic, a shopping word problem.
        Level 2: linear equations with x on both sides (fraction answers), fraction sums, a
        two-leg distance problem. Level 3: two-equation systems, fraction expressions, a
        discount-then-tax price. Offline stand-ins; real training reads data files.
        """
        if difficulty:
            raise ValueError(f"unknown difficulty option(s) {sorted(difficulty)} for math; valid: level")
        if level not in LEVELS or type(level) is not int:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        return [_generate(seed, index, level) for index in range(n)]

    # -- prompts and targets ------------------------------------------------------------------

    def messages(self, example: Example) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": _SYSTEM},
            {"role": "user", "content": f"{example.prompt} {PROMPT_SUFFIX}"},
        ]

    def oracle_completion(self, example: Example) -> str:
        """A completion that earns the maximum reward: the worked solution (if known), then the answer."""
        steps = example.metadata.get("solution") or f"The answer is {example.answer}."
        full = f"<think>\n{steps}\n</think>\n<answer>\n\\boxed{{{example.answer}}}\n</answer>"
        return _after_prefix(full, self.response_prefix)

    # -- scoring ------------------------------------------------------------------------------

    def score(self, completion: str, example: Example) -> Score:
        """Judge one completion; total: an internal error scores wrong (parts["grader_error"] = 1)."""
        try:
            return self._score(completion, example)
        except Exception:  # a scorer must never raise into the RL loop
            parts = {"answer": 0.0, "format": 0.0, "timeout": 0.0, "grader_error": 1.0}
            return Score(reward=0.0, correct=False, format_ok=False, parts=parts)

    def _score(self, completion: str, example: Example) -> Score:
        text = self.response_prefix + completion
        format_ok = _format_ok(completion, self.response_prefix)
        part = answer_part(text)
        boxes = final_boxes(part) if part is not None else None
        if part is None or boxes is None:  # an answer block or box that does not parse: no answer
            correct, timed_out, failed, extracted = False, False, False, None
        else:
            candidate = ", ".join(boxes) if boxes else part
            correct, timed_out, failed, extracted = self._judge(str(example.answer), candidate, bool(boxes))
        if self.reward_scheme == "default":
            reward = 1.0 if correct and format_ok else 0.0
        else:
            reward = 1.0 if correct else 0.0
        parts = {"answer": float(correct), "format": float(format_ok), "timeout": float(timed_out)}
        if failed:
            parts["grader_error"] = 1.0
        return Score(reward=reward, correct=correct, format_ok=format_ok, parts=parts, extracted=extracted)

    def _judge(self, gold: str, candidate: str, boxed: bool) -> tuple[bool, bool, bool, str | None]:
        """(correct, timed_out, grader_failed, extracted answer text)."""
        gold_boxed = last_boxed(gold)
        gold_answer = canonical(gold_boxed if gold_boxed is not None else gold)
        if boxed and len(candidate) > self.max_answer_chars:
            return False, False, False, candidate
        # A bare answer part is graded by its tail; cut first so every regex here sees bounded text.
        candidate = canonical(candidate if boxed else candidate[-self.max_answer_chars :], boxed)
        if not candidate:
            return False, False, False, None
        gold_choice = choice_letter(gold_answer, gold=True)
        if gold_choice is not None:  # a multiple-choice gold: only the same letter is right
            return choice_letter(candidate) == gold_choice, False, False, candidate
        verdict = quick_verdict(gold_answer, candidate)
        if verdict is not None:
            return verdict, False, False, candidate
        if guard(candidate, self.max_answer_chars):
            return False, False, False, candidate
        pred = "\\boxed{" + tex_shorthand(candidate) + "}" if boxed else tex_shorthand(candidate)
        gold_n = normalise(gold_answer)
        # A decimal gold with >= 2 places: an exact constant (\\pi, 2\\sqrt{5}) that rounds to it is right.
        places = len(gold_n) - gold_n.index(".") - 1 if _DECIMAL.fullmatch(gold_n) else None
        request = {
            "gold": "\\boxed{" + gold_answer + "}",
            "pred": pred,
            "alarm_seconds": max(1, int(self.timeout_seconds) // 2),
            "gold_places": places if places is not None and places >= 2 else None,
            "gold_value": gold_n,
        }
        pool = shared_pool(_HANDLER, self.grader_workers, _WARMUP)
        outcome: Outcome = pool.call(request, self.timeout_seconds)
        if outcome.status != "ok" or outcome.value is None:
            return False, outcome.status == "timeout", outcome.status == "error", candidate if boxed else None
        extracted = candidate if boxed else outcome.value.get("extracted")
        return bool(outcome.value.get("correct")), False, False, extracted

    # -- records ------------------------------------------------------------------------------

    def from_record(self, record: dict[str, Any]) -> Example:
        """An Example from a row with problem_key and answer_key, or verl's prompt + reward_model.

        The problem: record[problem_key], else verl's `prompt` (a chat list: the last user
        message; or a string), with DeepScaleR's suffix removed (messages() adds it back).
        The answer: record[answer_key], else reward_model.ground_truth, else the last \\boxed{}
        of a `solution` field (the MATH set). Provenance fields (_META_KEYS, data_source,
        extra_info.index) go to metadata.
        """
        if not isinstance(record, dict):
            raise RecordError(f"a math record must be a JSON object, got {type(record).__name__}")
        problem = _problem_of(record, self.problem_key)
        answer = _answer_of(record, self.answer_key)
        metadata: dict[str, Any] = {key: record[key] for key in _META_KEYS if record.get(key) is not None}
        metadata.setdefault("source", record.get("data_source") or "record")
        extra = record.get("extra_info")
        if "index" not in metadata and isinstance(extra, dict) and extra.get("index") is not None:
            metadata["index"] = extra["index"]
        return Example(prompt=problem, answer=answer, metadata=metadata)

    def to_record(self, example: Example) -> dict[str, Any]:
        """{problem_key, answer_key, provenance fields}: readable by from_record."""
        record: dict[str, Any] = {self.problem_key: example.prompt, self.answer_key: str(example.answer)}
        for key in _META_KEYS:
            if example.metadata.get(key) is not None:
                record[key] = example.metadata[key]
        return record


def _format_ok(completion: str, prefix: str) -> bool:
    # check_format's regex is quadratic on many unclosed "<answer>"; a tag count other than one
    # fails it anyway, so count (linear) first.
    text = prefix + completion
    return all(text.count(tag) == 1 for tag in _TAGS) and check_format(completion, prefix=prefix).ok


def _after_prefix(full: str, prefix: str) -> str:
    """`full` minus the pre-filled `prefix` (trailing whitespace in the prefix tolerated)."""
    if full.startswith(prefix):
        return full[len(prefix) :]
    if full.startswith(prefix.rstrip()):
        return full[len(prefix.rstrip()) :]
    raise ValueError(f"response_prefix {prefix!r} is not a start of the completion format ({full[:20]!r}...)")


def _fields(record: dict[str, Any]) -> str:
    return ", ".join(sorted(map(str, record)))


def _problem_of(record: dict[str, Any], key: str) -> str:
    if key in record:
        value = record[key]
    elif "prompt" in record:
        value = _chat_text(record["prompt"])
    else:
        raise RecordError(
            f"math record: missing field {key!r} (or verl's 'prompt'); fields present: {_fields(record)}"
        )
    if not isinstance(value, str) or not value.strip():
        field = key if key in record else "prompt"
        raise RecordError(f"math record: field {field!r} must be a non-empty string, got {value!r:.80}")
    text = value.strip()
    if text.endswith(PROMPT_SUFFIX):
        text = text[: -len(PROMPT_SUFFIX)].rstrip()
    return text


def _chat_text(prompt: Any) -> Any:
    """verl's prompt: a string, or a list of {"role", "content"} (the last user message wins)."""
    if isinstance(prompt, str):
        return prompt
    try:
        messages = list(prompt)  # parquet gives numpy arrays of dicts
    except TypeError:
        return prompt
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise RecordError("math record: field 'prompt' is a chat list without a user message")
    return users[-1]


def _answer_of(record: dict[str, Any], key: str) -> str:
    reward_model = record.get("reward_model")
    if key in record:
        value, field = record[key], key
    elif isinstance(reward_model, dict) and "ground_truth" in reward_model:
        value, field = reward_model["ground_truth"], "reward_model.ground_truth"
    elif isinstance(record.get("solution"), str):
        value, field = last_boxed(record["solution"]), "solution"
        if value is None:
            raise RecordError("math record: field 'solution' has no \\boxed{} answer and there is no "
                              f"{key!r} field")
    else:
        raise RecordError(
            f"math record: missing field {key!r} (or verl's 'reward_model.ground_truth'); "
            f"fields present: {_fields(record)}"
        )
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RecordError(f"math record: field {field!r} must be a string or a number, got {value!r:.80}")
    text = str(value).strip()
    if not text:
        raise RecordError(f"math record: field {field!r} is empty")
    return text


# -- the generator ------------------------------------------------------------------------------

_NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonah", "Kira", "Leo")
_ITEMS = ("notebooks", "pencils", "apples", "tickets", "stickers", "mugs", "books", "plants")


def _tex(value: Fraction) -> str:
    """An exact value in LaTeX: 7, -3, \\frac{7}{12}, -\\frac{1}{2}."""
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _money(value: Fraction) -> str:
    """A terminating decimal without trailing zeros (prices), else _tex."""
    for places in range(0, 5):
        scaled = value * 10**places
        if scaled.denominator == 1:
            whole = str(abs(scaled.numerator)).rjust(places + 1, "0")
            text = whole if places == 0 else f"{whole[:-places]}.{whole[-places:]}"
            return ("-" if value < 0 else "") + text
    return _tex(value)


def _linear(a: int, b: int) -> str:
    """a x + b as TeX: 3x + 5, x - 2, -x, 4."""
    head = "" if a == 0 else "x" if a == 1 else "-x" if a == -1 else f"{a}x"
    if b == 0:
        return head or "0"
    if not head:
        return str(b)
    return f"{head} {'+' if b > 0 else '-'} {abs(b)}"


def _level1(rng: random.Random) -> tuple[str, str, Fraction, str]:
    kind = rng.choice(("linear", "arithmetic", "shopping"))
    if kind == "linear":
        a, x, b = rng.randint(2, 9), rng.randint(-9, 12), rng.choice([i for i in range(-20, 21) if i])
        c = a * x + b
        prompt = f"Solve for $x$: ${_linear(a, b)} = {c}$."
        steps = f"Move {b} to the right side: {a}x = {c - b}. Divide by {a}: x = {x}."
        return kind, prompt, Fraction(x), steps
    if kind == "arithmetic":
        a, b, c = rng.randint(2, 19), rng.randint(2, 19), rng.randint(1, 99)
        prompt = f"What is ${a} \\times {b} + {c}$?"
        return kind, prompt, Fraction(a * b + c), f"{a} times {b} is {a * b}; plus {c} gives {a * b + c}."
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    count, price = rng.randint(2, 9), rng.randint(1, 9)
    bill = next(b for b in (20, 50, 100) if b >= count * price)
    prompt = (f"{name} buys {count} {item} at {price} dollars each and pays with a {bill}-dollar bill. "
              f"How many dollars of change does {name} get?")
    cost = count * price
    steps = f"The {item} cost {count} * {price} = {cost} dollars; {bill} - {cost} = {bill - cost}."
    return kind, prompt, Fraction(bill - count * price), steps


def _level2(rng: random.Random) -> tuple[str, str, Fraction, str]:
    kind = rng.choice(("linear_both_sides", "fraction_sum", "distance"))
    if kind == "linear_both_sides":
        a, c = rng.sample([i for i in range(-9, 10) if i], 2)
        b, d = rng.randint(-15, 15), rng.randint(-15, 15)
        x = Fraction(d - b, a - c)
        prompt = f"Solve for $x$: ${_linear(a, b)} = {_linear(c, d)}$."
        steps = f"Collect x on the left: ({a} - {c})x = {d} - {b}, so {a - c}x = {d - b} and x = {_tex(x)}."
        return kind, prompt, x, steps
    if kind == "fraction_sum":
        q, s = rng.randint(2, 12), rng.randint(2, 12)
        p, r = rng.randint(1, q - 1), rng.randint(1, s - 1)
        sign = rng.choice((1, -1))
        value = Fraction(p, q) + sign * Fraction(r, s)
        op = "+" if sign > 0 else "-"
        prompt = (f"Compute $\\frac{{{p}}}{{{q}}} {op} \\frac{{{r}}}{{{s}}}$. "
                  "Give the answer as a fraction in lowest terms.")
        common = q * s // math.gcd(q, s)
        steps = (f"Over the common denominator {common}: {p * common // q}/{common} {op} "
                 f"{r * common // s}/{common} = {_tex(value)}.")
        return kind, prompt, value, steps
    v, t, w, u = rng.randint(30, 90), rng.randint(1, 5), rng.randint(30, 90), rng.randint(1, 5)
    prompt = (f"A car travels at {v} km/h for {t} hours and then at {w} km/h for {u} hours. "
              "How many kilometres does it travel in total?")
    steps = f"{v} * {t} = {v * t} km, {w} * {u} = {w * u} km, total {v * t + w * u} km."
    return kind, prompt, Fraction(v * t + w * u), steps


def _level3(rng: random.Random) -> tuple[str, str, Fraction, str]:
    kind = rng.choice(("system", "fraction_expression", "discount"))
    if kind == "system":
        x, y = rng.randint(-12, 12), rng.randint(-12, 12)
        prompt = f"If $x + y = {x + y}$ and $x - y = {x - y}$, what is $x \\cdot y$?"
        steps = f"Adding: 2x = {2 * x}, so x = {x}; then y = {y}; x * y = {x * y}."
        return kind, prompt, Fraction(x * y), steps
    if kind == "fraction_expression":
        b, d, f = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
        a, c, e = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        value = Fraction(a, b) * Fraction(c, d) - Fraction(e, f)
        prompt = (f"Compute $\\frac{{{a}}}{{{b}}} \\cdot \\frac{{{c}}}{{{d}}} - \\frac{{{e}}}{{{f}}}$. "
                  "Give the answer as a fraction in lowest terms.")
        product = Fraction(a * c, b * d)
        steps = f"The product is {_tex(product)}; minus {_tex(Fraction(e, f))} gives {_tex(value)}."
        return kind, prompt, value, steps
    price, off, tax = rng.randint(2, 30) * 10, rng.choice((10, 20, 25, 50)), rng.choice((5, 8, 10))
    discounted = Fraction(price * (100 - off), 100)
    final = discounted * Fraction(100 + tax, 100)
    prompt = (f"A jacket costs {price} dollars. It is discounted by {off}%, and then a {tax}% sales tax is "
              "added to the discounted price. What is the final price in dollars?")
    steps = f"After the discount: {_money(discounted)} dollars; with tax: {_money(final)} dollars."
    return kind, prompt, final, steps


def _generate(seed: int, index: int, level: int) -> Example:
    # A string seed goes through SHA-512 in random.seed: stable across processes and platforms.
    rng = random.Random(f"math:{seed}:{index}:{level}")
    kind, prompt, value, steps = (_level1, _level2, _level3)[level - 1](rng)
    answer = _money(value) if kind == "discount" else _tex(value)
    metadata = {"source": "generated", "seed": seed, "index": index, "level": level, "kind": kind,
                "solution": steps}
    return Example(prompt=prompt, answer=answer, metadata=metadata)
