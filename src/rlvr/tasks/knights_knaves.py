"""Knights and Knaves: generator, solver, prompt, chain-of-thought writer and verifier.

The puzzle family of the public K&K set (Xie et al. 2024, "On Memorization of Large Language
Models in Logical Reasoning"), which Logic-RL (Xie et al. 2025) trains on. Knights always tell the
truth, knaves always lie; each of N people (2..8) makes one statement; exactly one assignment of
roles is consistent with all statements.

Statements are trees of tuples, the public set's own form (person indices are 0-based):

    ("telling-truth", j)        person j is a knight
    ("lying", j)                person j is a knave
    ("not", s)                  ("and", s, t, ...)   ("or", s, t, ...)
    ("->", s, t)                if s then t           ("<=>", s, t)   s if and only if t

Generation follows the public set: a fair die picks leaf / not / and / or / -> / <=> for the
top of each statement, the operands (depth 2) are leaves, a speaker never calls themself a knave
(nor "not a knight"), and puzzles without exactly one solution are drawn again from the same RNG.

Rewards. "default": 1.0 iff the answer is right and the format holds, else 0.0; the format is
rlvr's (rlvr.rewards.check_format): each tag once, in order, and nothing but an end-of-turn marker
after </answer>. "logic_rl": Logic-RL's scheme (verl/utils/reward_score/kk.py in Unakar/Logic-RL),
format +1 / -1 plus answer +2 (right), -1.5 (parsed but wrong), -2 (unparseable, or the format
failed), so the totals are 3, -0.5, -1 and -3, with Logic-RL's own rules: the format needs each tag
once and in order but allows any text after </answer>, and an answer parses when the words
"knight"/"knave" (lower-cased substrings) occur once per person and every name has a claim
"NAME is a knight|knave" (first claim per name; the article "a" required). Logic-RL judges the text
after the prompt's assistant header; rlvr judges response_prefix + completion, the same text when
the prompt ends with that header. `correct` is rlvr's judgement of the last answer block (see
parse_answer) in both schemes.
"""

from __future__ import annotations

import ast
import itertools
import random
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from rlvr.errors import RecordError
from rlvr.rewards import check_format, last_answer_block
from rlvr.tasks.base import Example, GenerationOption, Score

Statement = tuple[Any, ...]

DEFAULT_NAMES: tuple[str, ...] = (
    "Zoey", "Oliver", "Ethan", "Ella", "Henry", "Amelia", "Lily", "Matthew", "Riley", "Mia",
    "Noah", "Emma", "Liam", "Ava", "Lucas", "Sophia", "James", "Grace", "Owen", "Chloe",
    "Jack", "Harper", "Leo", "Aria", "Mason", "Nora", "Samuel", "Ruby", "Daniel", "Evelyn",
)
MIN_PEOPLE, MAX_PEOPLE = 2, 8
REWARD_SCHEMES = ("default", "logic_rl")
PHRASINGS = ("varied", "plain", "terse")
TRACES = ("compact", "stepwise")

_INTRO = (
    "A very special island is inhabited only by knights and knaves. Knights always tell the truth, "
    "and knaves always lie. You meet {n} inhabitants: {names}."
)
_QUESTION = "So who is a knight and who is a knave?"
# phrasing="terse": the people and their statements only (rules and question left out), for models too
# small to read instructions; 3-person chat prompts without a system message shrink from ~92 to ~52
# tokens with the kk-tiny tokenizer.
_TERSE_INTRO = "{names}."
# Speech templates: {name} the speaker, {s} the statement mid-sentence, {S} capitalised in quotes.
_TEMPLATES = (
    "{name} says that {s}.",
    "{name} claims that {s}.",
    "{name} tells you that {s}.",
    "{name} states that {s}.",
    "{name} insists that {s}.",
    "{name} declares that {s}.",
    "According to {name}, {s}.",
    '{name} says, "{S}."',
    '"{S}," says {name}.',
    '{name} remarks, "{S}."',
    'In the words of {name}: "{S}."',
    '"{S}," {name} announces.',
)
_SYSTEM = (
    "You solve logic puzzles. First think step by step inside <think> </think>. Then give the answer "
    "inside <answer> </answer>, one line per person in the order the puzzle names them, written as "
    "(1) NAME is a knight or (1) NAME is a knave."
)
_OPS = ("leaf", "not", "and", "or", "->", "<=>")
# Draws before giving up; measured mean draws per unique puzzle: 2.2 (2 people) to 2.7 (8).
_MAX_DRAWS = 100_000

# ASCII-only matching: look-alike letters (Cyrillic "а", the Kelvin sign) never count as "knight".
_ROLE_WORD = re.compile(r"knight|knave", re.IGNORECASE | re.ASCII)
_NAME_OK = re.compile(r"[A-Za-z][A-Za-z'-]*")
_TEXT_FORMAT_LINE = re.compile(r"\(\s*\d+\s*\)\s*(\S+)\s+is\s+an?\s+(knight|knave)\b",
                               re.IGNORECASE | re.ASCII)
_QUIZ_IN_PROMPT = re.compile(r"A very special island.*?So who is a knight and who is a knave\?", re.DOTALL)


# ----------------------------------------------------------------------------- statements


def evaluate(statement: Statement, assignment: Sequence[bool]) -> bool:
    """Truth value of `statement` when person j is a knight iff assignment[j]."""
    op = statement[0]
    if op == "telling-truth":
        return bool(assignment[statement[1]])
    if op == "lying":
        return not assignment[statement[1]]
    if op == "not":
        return not evaluate(statement[1], assignment)
    values = [evaluate(part, assignment) for part in statement[1:]]
    if op == "and":
        return all(values)
    if op == "or":
        return any(values)
    if op == "->":
        return (not values[0]) or values[1]
    return values[0] == values[1]  # "<=>"


@lru_cache(maxsize=16)
def _knight_masks(n: int) -> tuple[int, ...]:
    """Truth tables of "j is a knight" over the 2**n assignments (bit a of mask j: a >> j & 1)."""
    return tuple(sum(1 << a for a in range(1 << n) if a >> j & 1) for j in range(n))


def _truth_table(statement: Statement, masks: tuple[int, ...], full: int) -> int:
    """The set of assignments (as a bitmask over assignment numbers) where `statement` holds."""
    op = statement[0]
    if op == "telling-truth":
        return masks[statement[1]]
    if op == "lying":
        return full ^ masks[statement[1]]
    if op == "not":
        return full ^ _truth_table(statement[1], masks, full)
    tables = [_truth_table(part, masks, full) for part in statement[1:]]
    if op == "and":
        result = full
        for table in tables:
            result &= table
        return result
    if op == "or":
        result = 0
        for table in tables:
            result |= table
        return result
    if op == "->":
        return (full ^ tables[0]) | tables[1]
    return full ^ (tables[0] ^ tables[1])  # "<=>"


def _consistent_mask(statements: Sequence[Statement]) -> int:
    """Bitmask of the assignments where every person i is a knight iff statement i is true."""
    n = len(statements)
    masks = _knight_masks(n)
    full = (1 << (1 << n)) - 1
    consistent = full
    for i, statement in enumerate(statements):
        consistent &= full ^ (masks[i] ^ _truth_table(statement, masks, full))
    return consistent


def solve(statements: Sequence[Statement]) -> list[list[bool]]:
    """All consistent role assignments (True = knight), by brute force over the 2**n assignments.

    Bit-parallel: each statement becomes a 2**n-bit truth table, so one puzzle costs O(n) integer
    operations rather than O(n 2**n) tree walks.
    """
    n = len(statements)
    consistent = _consistent_mask(statements)
    return [[bool(a >> j & 1) for j in range(n)] for a in range(1 << n) if consistent >> a & 1]


def parse_statements(value: Any, people: int) -> tuple[Statement, ...]:
    """The statements of a record, from the public set's Python-literal string or nested lists.

    Parsed with ast.literal_eval (never eval); raises ValueError saying what is wrong.
    """
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
            raise ValueError(f"not a Python literal ({type(error).__name__})") from None
    if not isinstance(value, (list, tuple)) or len(value) != people:
        raise ValueError(f"expected a sequence of {people} statements (one per name)")
    return tuple(_normalise(statement, people) for statement in value)


def _normalise(node: Any, people: int, depth: int = 0) -> Statement:
    """Validate one statement tree and turn its lists into tuples."""
    if depth > 32 or not isinstance(node, (list, tuple)) or not node:
        raise ValueError(f"bad statement node {node!r:.80}")
    op, args = node[0], node[1:]
    if op in ("telling-truth", "lying"):
        if len(args) != 1 or type(args[0]) is not int or not 0 <= args[0] < people:
            raise ValueError(f"{op!r} needs one person index in 0..{people - 1}, got {node!r:.80}")
        return (op, args[0])
    arity_ok = {"not": len(args) == 1, "and": len(args) >= 2, "or": len(args) >= 2,
                "->": len(args) == 2, "<=>": len(args) == 2}
    if op not in arity_ok:
        raise ValueError(f"unknown operator {op!r}; expected telling-truth, lying, not, and, or, ->, <=>")
    if not arity_ok[op]:
        raise ValueError(f"operator {op!r} has {len(args)} operands in {node!r:.80}")
    return (op, *(_normalise(arg, people, depth + 1) for arg in args))


def render_statement(statement: Statement, names: Sequence[str]) -> str:
    """English for a statement tree, e.g. "if Zoey is a knight then Oliver is not a knave"."""
    op = statement[0]
    if op in ("telling-truth", "lying"):
        return f"{names[statement[1]]} is {_article_role(op == 'telling-truth')}"
    if op == "not":
        inner = statement[1]
        if inner[0] in ("telling-truth", "lying"):
            return f"{names[inner[1]]} is not {_article_role(inner[0] == 'telling-truth')}"
        return f"it is not the case that {render_statement(inner, names)}"
    parts = [render_statement(part, names) for part in statement[1:]]
    if op == "->":
        return f"if {parts[0]} then {parts[1]}"
    if op == "<=>":
        return f"{parts[0]} if and only if {parts[1]}"
    return f" {op} ".join(parts)


def _article_role(knight: bool) -> str:
    return "a knight" if knight else "a knave"


def _join_names(names: Sequence[str]) -> str:
    if len(names) == 2:
        return f"{names[0]} and {names[1]}"
    return ", ".join(names[:-1]) + f", and {names[-1]}"


# ----------------------------------------------------------------------------- generator


def _sample_leaf(rng: random.Random, speaker: int, people: int) -> Statement:
    while True:
        leaf = (rng.choice(("telling-truth", "lying")), rng.randrange(people))
        if leaf != ("lying", speaker):  # nobody says "I am a knave"
            return leaf


def _sample_statement(rng: random.Random, speaker: int, people: int) -> Statement:
    """One statement of depth <= 2: a die picks the top operator, the operands are leaves."""
    op = rng.choice(_OPS)
    if op == "leaf":
        return _sample_leaf(rng, speaker, people)
    if op == "not":
        while True:
            leaf = _sample_leaf(rng, speaker, people)
            if leaf != ("telling-truth", speaker):  # "I am not a knight" is "I am a knave"
                return ("not", leaf)
    first = _sample_leaf(rng, speaker, people)
    while True:
        second = _sample_leaf(rng, speaker, people)
        if second != first:
            return (op, first, second)


def sample_puzzle(rng: random.Random, people: int) -> tuple[tuple[Statement, ...], list[bool]]:
    """Draw statements until exactly one assignment is consistent; returns (statements, solution)."""
    for _ in range(_MAX_DRAWS):
        statements = tuple(_sample_statement(rng, i, people) for i in range(people))
        consistent = _consistent_mask(statements)
        if consistent and not consistent & (consistent - 1):  # exactly one bit set
            a = consistent.bit_length() - 1
            return statements, [bool(a >> j & 1) for j in range(people)]
    raise RuntimeError(f"no unique-solution puzzle with {people} people in {_MAX_DRAWS} draws")


# ----------------------------------------------------------------------------- answers


# A claim "WORD is (a|an)? knight|knave"; names that are single ASCII words (all generated names,
# and the public set's) are then looked up in a dict, so no regex is compiled per puzzle.
_CLAIM = re.compile(
    r"(?<![A-Za-z0-9_'-])([A-Za-z][A-Za-z'-]*)\s+is\s+(?:an?\s+)?(knight|knave)(?![A-Za-z0-9_])",
    re.IGNORECASE | re.ASCII,
)


@lru_cache(maxsize=4096)
def _claim_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    """The claim pattern for names that are not single ASCII words (e.g. "Mary Ann" in a record)."""
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    return re.compile(
        rf"(?<![A-Za-z0-9_])({alternatives})\s+is\s+(?:an?\s+)?(knight|knave)(?![A-Za-z0-9_])",
        re.IGNORECASE | re.ASCII,
    )


@lru_cache(maxsize=4096)
def _pattern_for(names: tuple[str, ...]) -> re.Pattern[str]:
    return _CLAIM if all(_NAME_OK.fullmatch(name) for name in names) else _claim_pattern(names)


def parse_answer(text: str | None, names: Sequence[str]) -> list[bool] | None:
    """Roles claimed in an answer ("(1) Zoey is a knight (2) ..."), in `names` order; None if unparseable.

    Any order, case, numbering and whitespace. Unparseable (None): empty text; the words
    "knight"/"knave" (ASCII only, case-insensitive, as substrings) do not occur exactly once per
    person (Logic-RL's check: it rejects hedges like "a knight or a knave", extra people and
    repeats); a claim "X is a knight|knave" about someone not in the puzzle; a person without a
    claim; a person claimed twice.
    """
    if not text or len(_ROLE_WORD.findall(text)) != len(names):
        return None
    lowered = [name.lower() for name in names]
    known = set(lowered)
    roles: dict[str, bool] = {}
    for match in _pattern_for(tuple(names)).finditer(text):
        key = match.group(1).lower()
        if key not in known or key in roles:
            return None
        roles[key] = match.group(2).lower() == "knight"
    if len(roles) != len(names):
        return None
    return [roles[name] for name in lowered]


def logic_rl_roles(text: str | None, names: Sequence[str]) -> list[bool] | None:
    """Roles in an answer as Logic-RL's reward parses them, in `names` order; None if unparseable.

    Unparseable: empty text; the lower-cased text holds the substrings "knight" and "knave" more or
    fewer times in all than there are people (so "knights" counts, and str.lower folds the Kelvin
    sign into "k"); a name without a claim "NAME is a knight|knave" (case-insensitive, whole words,
    the article "a" required). The first claim of each name counts. Looser than parse_answer in
    places (no check of names outside the puzzle), stricter in others ("is knight", "is an knave").
    """
    if not text:
        return None
    lowered = text.lower()
    if lowered.count("knight") + lowered.count("knave") != len(names):
        return None
    roles = []
    for name in names:
        found = _logic_rl_claim(name).search(text)
        if found is None:
            return None
        roles.append(found.group(1).lower() == "knight")
    return roles


@lru_cache(maxsize=4096)
def _logic_rl_claim(name: str) -> re.Pattern[str]:
    return re.compile(rf"\b{re.escape(name)}\b\s+is\s+a\s+\b(knight|knave)\b", re.IGNORECASE)


def format_answer(names: Sequence[str], solution: Sequence[bool]) -> str:
    """The public set's solution_text_format: "(1) Zoey is a knight\\n(2) Oliver is a knave"."""
    return "\n".join(f"({i}) {name} is {_article_role(role)}" for i, (name, role) in
                     enumerate(zip(names, solution), start=1))


def _solution_text(names: Sequence[str], solution: Sequence[bool]) -> str:
    claims = [f"{name} is {_article_role(role)}" for name, role in zip(names, solution)]
    return _join_names(claims) + "."


def _tags_once(text: str) -> bool:
    return all(text.count(tag) == 1 for tag in ("<think>", "</think>", "<answer>", "</answer>"))


# ----------------------------------------------------------------------------- the task


class KnightsKnaves:
    """The Knights-and-Knaves task (see the module docstring).

    reward_scheme:   "default" (1 / 0) or "logic_rl" (3 / -0.5 / -1 / -3).
    response_prefix: text the prompt pre-fills at the start of the assistant turn (e.g. "<think>");
                     completions are judged as prefix + completion, and solution_trace returns
                     only what follows the prefix.
    names:           the pool names are drawn from (default DEFAULT_NAMES); ASCII letters only.
    phrasing:        "varied" (a speech template drawn per person, as the public set), "plain"
                     (always "NAME says that ..."; fewer distinct words for a tiny model) or "terse"
                     (plain statements after the list of names, without the rules and the question).
    trace:           the SFT trace (solution_trace): "compact" (one truth value per statement) or
                     "stepwise" (each named role claim is looked up and valued; see solution_trace).
    """

    name = "knights_knaves"
    difficulty_keys = ("people",)
    # Defaults of a recipe's data.difficulty / eval_difficulty and sft.difficulty (rlvr.config), and the
    # levels the offline tokenizer's corpus covers (rlvr.models.factory).
    default_difficulty: dict[str, Any] = {"people": 3}
    sft_difficulty: dict[str, Any] = {"people": [2, 3, 3, 3]}
    corpus_levels: tuple[dict[str, Any], ...] = tuple({"people": p} for p in range(2, 9))
    generation_options = (GenerationOption("people", "number(s) of people (default: the task's, 3)", int,
                                           several=True),)

    @staticmethod
    def record_match(record: dict[str, Any]) -> int:
        """2 for a row of the K&K set (quiz) or of Logic-RL's parquet (ground truth with
        solution_text_format), else 0 (see rlvr.tasks.base)."""
        truth = _nested(record, "reward_model", "ground_truth")
        return 2 if "quiz" in record or "solution_text_format" in truth else 0

    def __init__(
        self,
        reward_scheme: str = "default",
        response_prefix: str = "",
        names: Sequence[str] | None = None,
        phrasing: str = "varied",
        system_prompt: str | None = None,
        trace: str = "compact",
    ) -> None:
        if reward_scheme not in REWARD_SCHEMES:
            raise ValueError(f"unknown reward_scheme {reward_scheme!r}; valid: {', '.join(REWARD_SCHEMES)}")
        if phrasing not in PHRASINGS:
            raise ValueError(f"unknown phrasing {phrasing!r}; valid: {', '.join(PHRASINGS)}")
        if trace not in TRACES:
            raise ValueError(f"unknown trace {trace!r}; valid: {', '.join(TRACES)}")
        self.system_prompt = _SYSTEM if system_prompt is None else system_prompt
        pool = tuple(DEFAULT_NAMES if names is None else names)
        _check_name_pool(pool)
        self.reward_scheme = reward_scheme
        self.response_prefix = response_prefix
        self.names = pool
        self.phrasing = phrasing
        self.trace = trace

    @property
    def reward_range(self) -> tuple[float, float]:
        """(min, max) of the reward: garbage scores the first, a right, well-formed answer the second."""
        return (-3.0, 3.0) if self.reward_scheme == "logic_rl" else (0.0, 1.0)

    # -- generation ---------------------------------------------------------------------------

    def examples(self, n: int, seed: int, people: int | Sequence[int] = 3,
                 **difficulty: Any) -> list[Example]:
        """n puzzles; example i is a pure function of (seed, i, its people count).

        people: an int in 2..8, or a sequence of them: example i has people[i % len(people)].
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if difficulty:
            raise ValueError(f"unknown difficulty option(s) {sorted(difficulty)} for {self.name}; "
                             "valid: people")
        sizes: list[Any] = list(people) if isinstance(people, (list, tuple)) else [people]
        if not sizes or any(type(k) is not int or not MIN_PEOPLE <= k <= MAX_PEOPLE for k in sizes):
            raise ValueError(f"people must be an int in {MIN_PEOPLE}..{MAX_PEOPLE} or a list of them, "
                             f"got {people!r}")
        if max(sizes) > len(self.names):
            raise ValueError(f"{max(sizes)} people need at least as many names; "
                             f"the pool has {len(self.names)}")
        return [self._example(seed, index, sizes[index % len(sizes)]) for index in range(n)]

    def _example(self, seed: int, index: int, people: int) -> Example:
        # A string seed goes through SHA-512 in random.seed: stable across processes and platforms.
        rng = random.Random(f"knights_knaves:{seed}:{index}:{people}")
        statements, solution = sample_puzzle(rng, people)
        names = rng.sample(self.names, people)
        prompt = self._render(statements, names, rng)
        metadata = {"people": people, "seed": seed, "index": index, "source": "generated",
                    "statements": statements}
        return Example(prompt=prompt, answer={"names": names, "solution": solution}, metadata=metadata)

    def _render(self, statements: Sequence[Statement], names: Sequence[str], rng: random.Random) -> str:
        terse = self.phrasing == "terse"
        sentences = [(_TERSE_INTRO if terse else _INTRO).format(n=len(names), names=_join_names(names))]
        for name, statement in zip(names, statements):
            text = render_statement(statement, names)
            template = rng.choice(_TEMPLATES) if self.phrasing == "varied" else _TEMPLATES[0]
            sentences.append(template.format(name=name, s=text, S=text[0].upper() + text[1:]))
        if not terse:
            sentences.append(_QUESTION)
        return " ".join(sentences)

    # -- prompts and targets ------------------------------------------------------------------

    def messages(self, example: Example) -> list[dict[str, str]]:
        """System instruction (the `system_prompt` option; "" leaves it out) and the puzzle."""
        user = {"role": "user", "content": example.prompt}
        return [{"role": "system", "content": self.system_prompt}, user] if self.system_prompt else [user]

    def solution_trace(self, example: Example) -> str:
        """The cold-start SFT target: a brute-force search written out, then the answer.

        Assignments are tried in a fixed order (knight before knave, first person slowest); each
        gets a header with the names, then the statements are checked in order, one line each:
        the speaker, their role, the statement's truth value, "ok" or "contradiction". An assignment
        stops at its first contradiction; the search stops at the consistent one. For 3 people:

            <think>
            Zoey knight Oliver knight Ethan knight:
            Zoey knight says false contradiction.
            Zoey knight Oliver knight Ethan knave:
            ...
            </think>
            <answer>
            (1) Zoey is a knave
            ...
            </answer>

        trace="stepwise" writes out how each truth value is reached: every claim "X is a knight /
        knave" in the statement becomes the name, the claimed role, X's role in the assignment being
        tried and whether they agree; the connectives stay between the claims, and "so" gives the
        statement's value. Each token then depends on a copy from the prompt, a look-up in the
        assignment header or the two tokens before it:

            Zoey knight says Oliver knave knight false and Ethan knight knight true so false contradiction.

        Returns only the text after response_prefix (which must be a start of the trace).
        """
        names, statements = example.answer["names"], example.metadata.get("statements")
        if statements is None:
            raise ValueError("solution_trace needs the statements in example.metadata['statements']")
        lines = []
        for assignment in itertools.product((True, False), repeat=len(names)):
            # Each line starts with a space so that every name is the same BPE token (" Zoey") as in
            # the prompt; a name at line start would be another token ("Zoey") the model must map.
            lines.append("".join(f" {name} {_role(role)}" for name, role in zip(names, assignment)) + ":")
            for name, role, statement in zip(names, assignment, statements):
                value = evaluate(statement, assignment)
                verdict = "ok" if value == role else "contradiction"
                stepwise = self.trace == "stepwise"
                steps = (_steps(statement, names, assignment, top=True) + " so") if stepwise else ""
                lines.append(f" {name} {_role(role)} says{steps} {_truth(value)} {verdict}.")
                if verdict != "ok":
                    break
            else:
                break
        if list(assignment) != list(example.answer["solution"]):
            raise ValueError(f"the statements' first consistent assignment {list(assignment)} "
                             "is not the answer")
        think = "\n".join(lines)
        full = f"<think>\n{think}\n</think>\n<answer>\n{format_answer(names, assignment)}\n</answer>"
        return _after_prefix(full, self.response_prefix)

    def oracle_completion(self, example: Example) -> str:
        """A completion that scores the maximum reward (the solution trace when statements are known)."""
        if example.metadata.get("statements") is not None:
            return self.solution_trace(example)
        answer = format_answer(example.answer["names"], example.answer["solution"])
        return _after_prefix(f"<think>\n</think>\n<answer>\n{answer}\n</answer>", self.response_prefix)

    # -- scoring ------------------------------------------------------------------------------

    def score(self, completion: str, example: Example) -> Score:
        """Judge one completion; total: any internal error gives the minimum score."""
        try:
            return self._score(completion, example)
        except Exception:  # a scorer must never raise into the RL loop
            return self._min_score()

    def _score(self, completion: str, example: Example) -> Score:
        text = self.response_prefix + completion
        answer = last_answer_block(text)
        logic_rl = self.reward_scheme == "logic_rl"
        # Counting the tags first returns early on adversarial text (100 KB of "<answer>").
        format_ok = _tags_once(text) and check_format(
            completion, prefix=self.response_prefix, allow_text_after=logic_rl).ok
        solution = [bool(x) for x in example.answer["solution"]]
        predicted = parse_answer(answer, example.answer["names"])
        correct = predicted is not None and predicted == solution
        if not logic_rl:
            reward = 1.0 if correct and format_ok else 0.0
            parts = {"answer": float(correct), "format": float(format_ok)}
        else:
            format_part = 1.0 if format_ok else -1.0
            claimed = logic_rl_roles(answer, example.answer["names"]) if format_ok else None
            if claimed is None:
                answer_part = -2.0
            else:
                answer_part = 2.0 if claimed == solution else -1.5
            reward = format_part + answer_part
            parts = {"answer": answer_part, "format": format_part}
        return Score(reward=reward, correct=correct, format_ok=format_ok, parts=parts, extracted=answer)

    def _min_score(self) -> Score:
        if self.reward_scheme == "logic_rl":
            return Score(reward=-3.0, correct=False, format_ok=False, parts={"answer": -2.0, "format": -1.0})
        return Score(reward=0.0, correct=False, format_ok=False, parts={"answer": 0.0, "format": 0.0})

    # -- records ------------------------------------------------------------------------------

    def from_record(self, record: dict[str, Any]) -> Example:
        """An Example from a row of the public K&K set, or of Logic-RL's verl-style parquet.

        Fields: quiz, names, solution (list of bools, True = knight), solution_text_format, and
        optionally statements (then the solver must find exactly this solution) and index.
        Logic-RL rows without these top-level fields are read from prompt (the quiz inside the
        chat text) and reward_model.ground_truth (solution_text_format, statements).
        """
        if not isinstance(record, dict):
            raise RecordError(f"a knights_knaves record must be a JSON object, got {type(record).__name__}")
        where = _describe(record)
        truth = _nested(record, "reward_model", "ground_truth")
        quiz = _quiz_of(record, where)
        text_format = record.get("solution_text_format", truth.get("solution_text_format"))
        names = _names_of(record, text_format, where)
        solution = _solution_of(record, names, text_format, where)
        statements_value = record.get("statements", truth.get("statements"))
        statements = None
        if statements_value is not None:
            try:
                statements = parse_statements(statements_value, len(names))
            except ValueError as error:
                raise RecordError(f"{where}: field 'statements': {error}") from None
            solutions = solve(statements)
            if len(solutions) != 1:
                raise RecordError(f"{where}: field 'statements' has {len(solutions)} solutions, "
                                  "expected exactly 1")
            if solutions[0] != solution:
                raise RecordError(
                    f"{where}: field 'solution' is {solution} but field 'statements' has the unique "
                    f"solution {solutions[0]}"
                )
        metadata: dict[str, Any] = {
            "people": len(names),
            "index": _index_of(record),
            "source": record.get("source") or record.get("data_source") or "record",
            "statements": statements,
        }
        if "seed" in record:
            metadata["seed"] = record["seed"]
        return Example(prompt=quiz, answer={"names": names, "solution": solution}, metadata=metadata)

    def to_record(self, example: Example) -> dict[str, Any]:
        """The public K&K schema (plus seed and source when known), readable by from_record."""
        names, solution = list(example.answer["names"]), [bool(x) for x in example.answer["solution"]]
        record: dict[str, Any] = {
            "quiz": example.prompt,
            "names": names,
            "solution": solution,
            "solution_text": _solution_text(names, solution),
            "solution_text_format": format_answer(names, solution),
        }
        statements = example.metadata.get("statements")
        if statements is not None:
            # The public set stores the tree as a Python literal; repr of nested tuples is exactly that.
            record["statements"] = repr(tuple(_as_tuples(s) for s in statements))
        for key in ("index", "seed", "source"):
            if example.metadata.get(key) is not None:
                record[key] = example.metadata[key]
        return record


def _role(knight: bool) -> str:
    return "knight" if knight else "knave"


def _truth(value: bool) -> str:
    return "true" if value else "false"


def _steps(statement: Statement, names: Sequence[str], assignment: Sequence[bool], top: bool = False) -> str:
    """The stepwise trace's evaluation of `statement` under `assignment` (see solution_trace).

    A claim is " NAME CLAIMED ACTUAL TRUTH"; "not" precedes its operand; and / or join their
    operands; "if A then B"; "A iff B". A compound operand below the top (not made by the generator,
    possible in loaded records) is bracketed with its own value: " (... so TRUTH)".
    """
    op = statement[0]
    if op in ("telling-truth", "lying"):
        claimed, person = op == "telling-truth", statement[1]
        actual = bool(assignment[person])
        return f" {names[person]} {_role(claimed)} {_role(actual)} {_truth(claimed == actual)}"
    parts = [_steps(part, names, assignment) for part in statement[1:]]
    if op == "not":
        text = f" not{parts[0]}"
    elif op == "->":
        text = f" if{parts[0]} then{parts[1]}"
    elif op == "<=>":
        text = f"{parts[0]} iff{parts[1]}"
    else:
        text = f" {op}".join(parts)
    return text if top else f" ({text} so {_truth(evaluate(statement, assignment))})"


def _after_prefix(full: str, prefix: str) -> str:
    """`full` minus the pre-filled `prefix` (trailing whitespace in the prefix is tolerated)."""
    if full.startswith(prefix):
        return full[len(prefix) :]
    stem = prefix.rstrip()
    if full.startswith(stem):
        return full[len(stem) :]
    raise ValueError(f"response_prefix {prefix!r} is not a start of the completion format ({full[:20]!r}...)")


def _as_tuples(node: Any) -> Any:
    return tuple(_as_tuples(x) for x in node) if isinstance(node, (list, tuple)) else node


def _check_name_pool(pool: tuple[str, ...]) -> None:
    bad = [name for name in pool if not (isinstance(name, str) and _NAME_OK.fullmatch(name))]
    bad += [name for name in pool if isinstance(name, str) and _ROLE_WORD.search(name)]
    if bad:
        raise ValueError(f"names must be ASCII words without 'knight'/'knave'; bad: {bad[:5]}")
    if len({name.lower() for name in pool}) != len(pool):
        raise ValueError("names must be distinct (case-insensitively)")
    if len(pool) < MIN_PEOPLE:
        raise ValueError(f"need at least {MIN_PEOPLE} names, got {len(pool)}")


def _nested(record: dict[str, Any], *keys: str) -> dict[str, Any]:
    """record[k1][k2]... when every level is a dict, else {} (optional sub-records)."""
    value: Any = record
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else {}


def _index_of(record: dict[str, Any]) -> Any:
    return record["index"] if "index" in record else _nested(record, "extra_info").get("index")


def _describe(record: dict[str, Any]) -> str:
    """How an error names a record: its index and the start of its statements."""
    index = _index_of(record)
    quiz = record.get("quiz")
    label = f"record index={index}" if index is not None else "record"
    if isinstance(quiz, str):
        body = quiz.split("inhabitants:", 1)[-1].strip()
        label += f" (quiz {body[:50]!r}...)"
    return label


def _quiz_of(record: dict[str, Any], where: str) -> str:
    quiz = record.get("quiz")
    if quiz is None and "prompt" in record:
        prompt = record["prompt"]
        messages = prompt if isinstance(prompt, (list, tuple)) else [{"content": prompt}]
        contents = [m.get("content") for m in messages if isinstance(m, dict)]
        for content in contents:
            found = _QUIZ_IN_PROMPT.search(content) if isinstance(content, str) else None
            if found:
                return found.group(0)
        raise RecordError(f"{where}: field 'prompt' holds no K&K quiz ('A very special island ... knave?')")
    if quiz is None:
        raise RecordError(f"{where}: missing field 'quiz'")
    if not isinstance(quiz, str) or not quiz.strip():
        raise RecordError(f"{where}: field 'quiz' must be a non-empty string")
    return quiz


def _names_of(record: dict[str, Any], text_format: Any, where: str) -> list[str]:
    names = record.get("names")
    if names is None and isinstance(text_format, str):
        names = [m.group(1) for m in _TEXT_FORMAT_LINE.finditer(text_format)]
    if names is None:
        raise RecordError(f"{where}: missing field 'names'")
    well_formed = isinstance(names, (list, tuple)) and all(isinstance(x, str) and x.strip() for x in names)
    if not well_formed or not MIN_PEOPLE <= len(names) <= MAX_PEOPLE:
        raise RecordError(f"{where}: field 'names' must list {MIN_PEOPLE}..{MAX_PEOPLE} non-empty names")
    if len({x.lower() for x in names}) != len(names):
        raise RecordError(f"{where}: field 'names' repeats a name")
    if any(_ROLE_WORD.search(x) for x in names):
        raise RecordError(f"{where}: field 'names' contains 'knight' or 'knave' in a name")
    # Perturbed variants of the public set rename the roles (e.g. {"knight": "saint", ...}).
    role_words = _nested(record, "knight_knave")
    if (role_words.get("knight", "knight"), role_words.get("knave", "knave")) != ("knight", "knave"):
        raise RecordError(f"{where}: field 'knight_knave' renames the roles; only knight/knave is supported")
    return list(names)


def _solution_of(record: dict[str, Any], names: list[str], text_format: Any, where: str) -> list[bool]:
    solution = record.get("solution")
    from_text = parse_answer(text_format, names) if isinstance(text_format, str) else None
    if text_format is not None and from_text is None:
        raise RecordError(f"{where}: field 'solution_text_format' does not give one role per name {names}")
    if solution is None:
        if from_text is None:
            raise RecordError(f"{where}: missing field 'solution' (and no 'solution_text_format')")
        return from_text
    well_formed = isinstance(solution, (list, tuple)) and all(isinstance(x, bool) for x in solution)
    if not well_formed or len(solution) != len(names):
        raise RecordError(f"{where}: field 'solution' must be {len(names)} booleans (true = knight)")
    solution = list(solution)
    if from_text is not None and from_text != solution:
        raise RecordError(f"{where}: field 'solution_text_format' disagrees with field 'solution' {solution}")
    return solution
