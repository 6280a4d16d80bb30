"""Evaluation metrics as pure functions of scored samples.

Definitions (n samples per prompt, c of them correct):

* avg@n   mean over prompts of c / n: the expected pass@1 of one sample, estimated from n
          (DeepScaleR's "Pass@1 averaged over 16 samples" is avg@16).
* pass@k  mean over prompts of the unbiased estimator of Chen et al. 2021 (Codex, eq. 1):
          1 - C(n - c, k) / C(n, k), the probability that at least one of k samples drawn
          without replacement from the n is correct. Needs k <= n.
* maj@k   majority vote over k samples. The n samples of a prompt are cut into floor(n / k)
          consecutive blocks of k (any remainder is left out); each block votes; maj@k is the
          mean over blocks and prompts. So maj@1 == avg@n and, with k == n, one vote per prompt.
          Votes are the *normalised extracted answers* (normalize_answer); samples without an
          extracted answer abstain. Tie rule: when t answers share the highest vote count, the
          block scores the mean correctness of those t answers (the expected score of breaking
          the tie uniformly at random), so the result does not depend on sample order. A block
          where every sample abstains scores 0. An answer's correctness is the fraction of its
          voters the task judged correct (the same normalised answer is judged alike, so this is
          0 or 1 unless the verifier looks beyond the answer string).

Samples are dicts as written to samples.jsonl by rlvr.evaluation.evaluate (keys used here:
prompt_index, correct, format_ok, extracted, n_tokens, finish_reason, reward, completion,
metadata), so every figure can be recomputed from that file with compute_metrics.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Metadata keys that name a difficulty in data files of any task ("difficulty", MATH's "level":
# "Level 1".."Level 5"); a task's own difficulty_keys come first (difficulty_keys_of).
GENERIC_DIFFICULTY_KEYS = ("difficulty", "level")
SOURCE_KEY = "source"

# Reflection phrases counted per response: the "aha" signals of the R1 reports. Each entry is
# (metric name, regex); matching is case-insensitive on word boundaries.
REFLECTION_PATTERNS: tuple[tuple[str, str], ...] = (
    ("wait", r"\bwait\b"),
    ("verify", r"\bverif(?:y|ies|ied|ying|ication)\b"),
    ("recheck", r"\bre-?check(?:s|ed|ing)?\b"),
    ("double_check", r"\bdouble[- ]check(?:s|ed|ing)?\b"),
    ("alternatively", r"\balternatively\b"),
    ("let_me_check", r"\blet me (?:check|re-?examine|reconsider|re-?evaluate|think again)\b"),
    ("hmm", r"\bhmm+\b"),
    ("mistake", r"\b(?:my mistake|i made a mistake|that'?s wrong|that is wrong)\b"),
)
_REFLECTION_RES = tuple((name, re.compile(pattern, re.IGNORECASE)) for name, pattern in REFLECTION_PATTERNS)

_SPACES = re.compile(r"\s+")
_BOXED = re.compile(r"^\\boxed\{(.*)\}$", re.DOTALL)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt: 1 - C(n - c, k) / C(n, k) (Chen et al. 2021).

    Computed as 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which avoids huge binomials.
    Example: n=5, c=2, k=2 -> 1 - C(3, 2) / C(5, 2) = 1 - 3/10 = 0.7.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n samples per prompt, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def normalize_answer(answer: str | None) -> str | None:
    """The string maj@k votes with: answers equal after this are the same vote.

    Strips a surrounding `\\boxed{...}` and `$...$`, lowercases, collapses runs of whitespace to
    one space, and drops a trailing period. Deliberately string-level: "1/2" and "0.5" are
    different votes (each may still be judged correct). None and empty answers abstain (None).
    """
    if answer is None:
        return None
    text = answer.strip()
    for _ in range(2):  # "$\boxed{x}$" and "\boxed{$x$}"
        text = text.rstrip(".").strip().strip("$").strip()
        boxed = _BOXED.match(text)
        if boxed:
            text = boxed.group(1).strip()
    text = _SPACES.sub(" ", text.lower()).rstrip(".").strip()
    return text or None


def majority_vote_score(answers: Sequence[str | None], corrects: Sequence[bool]) -> float:
    """Score of one majority vote: answers are normalised votes (None abstains).

    Tie rule: mean correctness over the answers sharing the top count (see module docstring).
    """
    votes: dict[str, list[bool]] = defaultdict(list)
    for answer, correct in zip(answers, corrects, strict=True):
        if answer is not None:
            votes[answer].append(bool(correct))
    if not votes:
        return 0.0
    top = max(len(v) for v in votes.values())
    tied = [v for v in votes.values() if len(v) == top]
    return sum(sum(v) / len(v) for v in tied) / len(tied)


def maj_at_k(answers: Sequence[str | None], corrects: Sequence[bool], k: int) -> float:
    """maj@k of one prompt from its n samples (in sample order): mean over floor(n/k) blocks."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n samples per prompt, got k={k}, n={n}")
    blocks = n // k
    scores = [majority_vote_score(answers[b * k:(b + 1) * k], corrects[b * k:(b + 1) * k])
              for b in range(blocks)]
    return sum(scores) / blocks


def reflection_counts(text: str) -> dict[str, int]:
    """Occurrences of each reflection phrase of REFLECTION_PATTERNS in `text`."""
    return {name: len(regex.findall(text)) for name, regex in _REFLECTION_RES}


def group_by_prompt(samples: Iterable[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    """prompt_index -> its samples, in sample order (sample_index when present)."""
    groups: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for sample in samples:
        groups[int(sample["prompt_index"])].append(sample)
    for group in groups.values():
        group.sort(key=lambda s: int(s.get("sample_index", 0)))
    return dict(groups)


class _Sums:
    """Running sums of one scope (all prompts, or one difficulty / source value)."""

    def __init__(self, k_values: Sequence[int]) -> None:
        self.prompts = 0
        self.avg = 0.0
        self.pass_k = dict.fromkeys(k_values, 0.0)
        self.maj_k = dict.fromkeys(k_values, 0.0)
        self.samples = 0
        self.reward = self.truncated = self.format_errors = 0.0
        self.length = 0.0
        self.length_min, self.length_max = math.inf, -math.inf
        self.correct_count = self.correct_length = self.wrong_length = 0.0
        self.reflection = dict.fromkeys((name for name, _ in REFLECTION_PATTERNS), 0.0)
        self.reflective = 0.0

    def add(self, corrects: Sequence[bool], votes: Sequence[str | None], lengths: Sequence[float],
            group: Sequence[Mapping[str, Any]], reflections: Sequence[dict[str, int]]) -> None:
        n, c = len(corrects), sum(corrects)
        self.prompts += 1
        self.avg += c / n
        for k in self.pass_k:
            self.pass_k[k] += pass_at_k(n, c, k)
            self.maj_k[k] += maj_at_k(votes, corrects, k)
        self.samples += n
        for sample, correct, length, counts in zip(group, corrects, lengths, reflections):
            self.reward += float(sample["reward"])
            self.truncated += sample["finish_reason"] == "length"
            self.format_errors += not sample["format_ok"]
            self.length += length
            self.length_min, self.length_max = min(self.length_min, length), max(self.length_max, length)
            if correct:
                self.correct_count += 1
                self.correct_length += length
            else:
                self.wrong_length += length
            for name, count in counts.items():
                self.reflection[name] += count
            self.reflective += sum(counts.values()) > 0

    def accuracy(self) -> dict[str, float]:
        metrics = {"avg@n": self.avg / self.prompts, "n_prompts": float(self.prompts)}
        for k in self.pass_k:
            metrics[f"pass@{k}"] = self.pass_k[k] / self.prompts
            metrics[f"maj@{k}"] = self.maj_k[k] / self.prompts
        return metrics

    def responses(self) -> dict[str, float]:
        count = self.samples
        metrics = {
            "n_samples": float(count),
            "reward_mean": self.reward / count,
            "truncation_rate": self.truncated / count,
            "format_error_rate": self.format_errors / count,
            "length/mean": self.length / count,
            "length/min": self.length_min,
            "length/max": self.length_max,
        }
        # Undefined means are left out rather than written as NaN (not valid JSON).
        if self.correct_count:
            metrics["length/correct_mean"] = self.correct_length / self.correct_count
        if count - self.correct_count:
            metrics["length/wrong_mean"] = self.wrong_length / (count - self.correct_count)
        metrics["reflection_words_per_response"] = sum(self.reflection.values()) / count
        metrics["reflection_response_ratio"] = self.reflective / count
        for name, total in self.reflection.items():
            metrics[f"reflection/{name}_per_response"] = total / count
        return metrics


class MetricsAccumulator:
    """compute_metrics in one pass over prompt groups, holding only running sums: for eval sets
    too large to keep their samples in memory. add(group) takes one prompt's n samples in
    sample order; every prompt must have the same n."""

    def __init__(self, k_values: Sequence[int] = (1,), difficulty_keys: Sequence[str] | None = None) -> None:
        self.k_values = tuple(k_values)
        self.difficulty_keys = tuple(GENERIC_DIFFICULTY_KEYS if difficulty_keys is None else difficulty_keys)
        self.n: int | None = None
        self.total = _Sums(self.k_values)
        self.parts: dict[tuple[str, str], _Sums] = {}

    def add(self, group: Sequence[Mapping[str, Any]]) -> None:
        if not group:
            raise ValueError("a prompt group needs at least one sample")
        if self.n is None:
            self.n = len(group)
        elif len(group) != self.n:
            raise ValueError(f"every prompt needs the same number of samples, got {len(group)} and {self.n}")
        corrects = [bool(s["correct"]) for s in group]
        votes = [normalize_answer(s.get("extracted")) for s in group]
        lengths = [float(s["n_tokens"]) for s in group]
        reflections = [reflection_counts(str(s.get("completion", ""))) for s in group]
        self.total.add(corrects, votes, lengths, group, reflections)
        for pair in breakdown_keys(group[0].get("metadata") or {}, self.difficulty_keys):
            if pair not in self.parts:
                self.parts[pair] = _Sums(self.k_values)
            self.parts[pair].add(corrects, votes, lengths, group, reflections)

    def result(self) -> dict[str, float]:
        """The flat metrics dict (see compute_metrics)."""
        if not self.total.prompts:
            raise ValueError("no samples to compute metrics from")
        metrics = self.total.accuracy()
        metrics.update(self.total.responses())
        for (key, value), sums in sorted(self.parts.items(), key=lambda item: _sort_key(item[0])):
            prefix = f"by_{key}/{value}/"
            values = sums.accuracy()
            response = sums.responses()
            values.update({name: response[name]
                           for name in ("format_error_rate", "truncation_rate", "length/mean")})
            metrics.update({prefix + name: v for name, v in values.items()})
        return metrics


def _key_value(value: Any) -> str:
    """A metadata value as a metric-key segment (no '/', which separates key parts)."""
    return str(value).replace("/", "_").strip() or "none"


def source_metrics(sources: Sequence[Any], rewards: Sequence[float],
                   correct: Sequence[bool]) -> dict[str, float]:
    """Per data source of a batch (one entry per sequence; None: no source): reward/<source>/mean,
    accuracy/<source> and batch_share/<source> (its fraction of the sequences). {} when no
    sequence has a source. Source names become key segments as in the eval breakdowns ('/' -> '_')."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, source in enumerate(sources):
        if source is not None:
            groups[_key_value(source)].append(i)
    out: dict[str, float] = {}
    for name, rows in sorted(groups.items()):
        out[f"reward/{name}/mean"] = sum(float(rewards[i]) for i in rows) / len(rows)
        out[f"accuracy/{name}"] = sum(bool(correct[i]) for i in rows) / len(rows)
        out[f"batch_share/{name}"] = len(rows) / len(sources)
    return out


def difficulty_keys_of(task: Any) -> tuple[str, ...]:
    """The keys evaluation breaks accuracy down by: the task's difficulty_keys (e.g. knights_knaves'
    "people"), then GENERIC_DIFFICULTY_KEYS."""
    own = tuple(getattr(task, "difficulty_keys", None) or ())
    return tuple(dict.fromkeys((*own, *GENERIC_DIFFICULTY_KEYS)))


def breakdown_keys(metadata: Mapping[str, Any],
                   difficulty_keys: Sequence[str] = GENERIC_DIFFICULTY_KEYS) -> list[tuple[str, str]]:
    """(key, value) pairs a prompt is broken down by: the first of difficulty_keys its metadata has,
    and its source."""
    pairs = []
    for key in difficulty_keys:
        if metadata.get(key) is not None:
            pairs.append((key, _key_value(metadata[key])))
            break
    if metadata.get(SOURCE_KEY) is not None:
        pairs.append((SOURCE_KEY, _key_value(metadata[SOURCE_KEY])))
    return pairs


def compute_metrics(samples: Iterable[Mapping[str, Any]], k_values: Sequence[int] = (1,),
                    difficulty_keys: Sequence[str] | None = None) -> dict[str, float]:
    """All evaluation metrics from scored samples; a flat dict of floats.

    Overall keys: avg@n, pass@{k}, maj@{k} for each k, n_prompts, n_samples, reward_mean,
    truncation_rate, format_error_rate, length/{mean,min,max,correct_mean,wrong_mean},
    reflection_words_per_response, reflection_response_ratio, reflection/{word}_per_response.
    Breakdowns: by_{key}/{value}/... for the first of difficulty_keys (default
    GENERIC_DIFFICULTY_KEYS; an eval's metrics.json records the keys it used in settings) a prompt's
    metadata has, and by_source/{value}/..., with avg@n, pass@k, maj@k, n_prompts,
    format_error_rate, truncation_rate and length/mean.
    """
    groups = group_by_prompt(samples)
    accumulator = MetricsAccumulator(k_values, difficulty_keys)
    for index in sorted(groups):
        accumulator.add(groups[index])
    return accumulator.result()


def _sort_key(pair: tuple[str, str]) -> tuple[str, int, float, str]:
    """Numeric values in numeric order (2 < 10), then the rest alphabetically."""
    key, value = pair
    try:
        return (key, 0, float(value), "")
    except ValueError:
        return (key, 1, math.inf, value)


def breakdown_table(metrics: Mapping[str, float], key: str, field: str = "avg@n") -> dict[str, float]:
    """{value: metric} for one breakdown, e.g. breakdown_table(m, "people") -> {"3": 0.4, ...}."""
    prefix = f"by_{key}/"
    table = {}
    for name, value in metrics.items():
        if name.startswith(prefix) and name.endswith("/" + field):
            table[name[len(prefix):-len(field) - 1]] = value
    return dict(sorted(table.items(), key=lambda item: _sort_key((key, item[0]))))
