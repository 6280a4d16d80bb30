"""Data curation behind `rlvr data dedup | stats | mix` (`rlvr data filter`, which samples a model,
is rlvr.evaluation.pass_rate).

dedup                exact, normalised-text and near duplicates (word n-gram MinHash with LSH, or
                     cosine similarity of a local embedding model), and contamination against
                     benchmark files, naming each overlapping pair by file:line.
stats                prompt and answer length distributions (an SFT file: prompt, assistant-turn and
                     sequence tokens); with an eval samples file, Light-R1's context advice: max
                     over problems of the shortest correct response.
mix                  several sources with weights into one training file, provenance kept.

Every command streams its input (records are read a line at a time; only fixed-size summaries
such as hashes and MinHash signatures are held per record), names malformed lines as
FILE:LINE, and writes its outputs atomically (temporary file + os.replace).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import unicodedata
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from rlvr.data.conversations import is_conversation, read_conversations, token_lengths
from rlvr.data.io import read_numbered, read_records, write_jsonl_atomic
from rlvr.data.tools import stats as data_stats
from rlvr.data.tools import summarize
from rlvr.errors import DataError
from rlvr.models import eos_token_ids, load_tokenizer, prompt_ids
from rlvr.tasks import get

PathLike = str | os.PathLike[str]

# Fields that hold the problem text in common public formats, in order of preference (matched
# case-insensitively: AIME sets spell it "Problem"). A list value is chat messages (verl).
TEXT_FIELDS = ("problem", "question", "quiz", "prompt", "input", "instruction")
ANSWER_FIELDS = ("answer", "solution", "solution_text_format", "target", "ground_truth")


# ------------------------------------------------------------------------------ shared helpers


@contextlib.contextmanager
def atomic_writer(path: PathLike) -> Iterator[IO[str]]:
    """A text handle on a temporary file next to `path`, renamed onto `path` on success only."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def sidecar(path: PathLike, suffix: str) -> Path:
    """`out.jsonl` + ".pass_rates.jsonl" -> `out.pass_rates.jsonl` (next to the output)."""
    target = Path(path)
    stem = target.name[: -len("".join(target.suffixes))] if target.suffixes else target.name
    return target.with_name(stem + suffix)


def _field(record: dict[str, Any], names: Sequence[str]) -> Any:
    lowered = {str(key).lower(): value for key, value in record.items()}
    for name in names:
        if lowered.get(name) is not None:
            return lowered[name]
    return None


def record_text(record: dict[str, Any], field: str | None = None, task: Any = None) -> str:
    """The problem text of a record: record[field], else the task's prompt, else the first of
    TEXT_FIELDS present (chat-message lists give their user / plain contents). KeyError if none."""
    if field is not None:
        if field not in record:
            raise KeyError(f"no field {field!r} (fields: {', '.join(sorted(map(str, record)))})")
        value = record[field]
    elif task is not None:
        return str(task.from_record(record).prompt)
    else:
        value = _field(record, TEXT_FIELDS)
        if value is None:
            raise KeyError(
                f"no problem text: none of the fields {', '.join(TEXT_FIELDS)} is present "
                f"(fields: {', '.join(sorted(map(str, record)))}); name one with field= or give the task"
            )
    if isinstance(value, list):
        user = [m.get("content", "") for m in value
                if isinstance(m, dict) and m.get("role", "user") == "user"]
        return "\n".join(str(c) for c in user)
    return str(value)


def _numbered_texts(
    path: PathLike, field: str | None, task: Any
) -> Iterator[tuple[int, dict[str, Any], str]]:
    """(line, record, problem text) of a data file, streaming; a record without text is a DataError."""
    for line, record in read_numbered(path):
        try:
            text = record_text(record, field, task)
        except (KeyError, ValueError, TypeError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise DataError(f"{path}:{line}: {message}") from None
        yield line, record, text


# ----------------------------------------------------------------------- text normalisation

_WHITESPACE = re.compile(r"\s+")
_TOKENS = re.compile(r"\w+|[^\w\s]")


def normalize_text(text: str) -> str:
    """The key of a "normalised" duplicate: NFKC, lowercase, no whitespace, no `$` delimiters.

    Conservative on purpose: punctuation and operators are kept ("2+3" and "2-3" stay distinct),
    only spacing, case, Unicode variants and TeX math delimiters are ignored.
    """
    text = unicodedata.normalize("NFKC", text).lower().replace("$", "")
    return _WHITESPACE.sub("", text)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


# -------------------------------------------------------------------------------- MinHash / LSH


class _TokenHashes(dict):  # type: ignore[type-arg]
    """token -> CRC32, computed on first sight (a dict lookup afterwards)."""

    def __missing__(self, token: str) -> int:
        value = self[token] = zlib.crc32(token.encode("utf-8"))
        return value


# Odd 64-bit multipliers that combine the n token hashes of a shingle (n <= 8).
_GRAM_MULTIPLIERS = np.random.default_rng(2024).integers(1, 2**63, size=8, dtype=np.uint64) | np.uint64(1)


def shingle_hashes(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of the word n-grams of each text: (values, starts) where text i owns
    values[starts[i]:starts[i + 1]].

    Tokens are words and single punctuation marks of the NFKC-lowercased text. Text i has one
    shingle per token position (max(tokens, 1) shingles): the n tokens from there, the window
    running past the last token into zero padding, so a text shorter than n is still one
    shingle and every text has at least one. Repeats are kept: a minimum ignores them.
    A shingle's hash: sum_k token_hash[j + k] * m_k mod 2^64, top 32 bits.
    """
    if not 1 <= ngram <= len(_GRAM_MULTIPLIERS):
        raise ValueError(f"ngram must be in 1..{len(_GRAM_MULTIPLIERS)}, got {ngram}")
    table = _TokenHashes()
    pad = [0] * (ngram - 1)
    flat: list[int] = []
    sizes = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        tokens = _TOKENS.findall(unicodedata.normalize("NFKC", text).lower()) or [""]
        flat += [table[t] for t in tokens]
        flat += pad
        sizes[i] = len(tokens)
    ids = np.array(flat + pad, dtype=np.uint64)
    width = len(flat)
    with np.errstate(over="ignore"):  # arithmetic mod 2^64 is the point
        grams = ids[:width] * _GRAM_MULTIPLIERS[0]
        for k in range(1, ngram):
            grams += ids[k:k + width] * _GRAM_MULTIPLIERS[k]
    # Keep the windows that start at a real token, not in a text's padding.
    segment = sizes + ngram - 1
    segment_starts = np.concatenate(([0], np.cumsum(segment)[:-1]))
    offset = np.arange(width) - np.repeat(segment_starts, segment)
    keep = offset < np.repeat(sizes, segment)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return grams[keep] >> np.uint64(32), starts


def minhash_permutations(num_perm: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of num_perm hash functions h(x) = ((a x + b) mod 2^64) >> 32, a odd: the
    multiply-add-shift family (Dietzfelbinger 1996), 32-bit outputs from 32-bit inputs."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signatures(
    texts: Sequence[str], num_perm: int = 128, ngram: int = 3, seed: int = 0
) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures of the texts' word n-gram sets.

    The fraction of equal entries between two rows estimates the Jaccard similarity of the two
    shingle sets (Broder 1997). Vectorised over a batch: for 32 hash functions at a time, one
    (32, total shingles) product, then a segmented minimum per text.
    """
    if not texts:
        return np.zeros((0, num_perm), dtype=np.uint32)
    values, starts = shingle_hashes(texts, ngram)
    a, b = minhash_permutations(num_perm, seed)
    signatures = np.empty((len(texts), num_perm), dtype=np.uint32)
    for first in range(0, num_perm, 32):
        block = slice(first, first + 32)
        with np.errstate(over="ignore"):
            mixed = (a[block, None] * values[None, :] + b[block, None]) >> np.uint64(32)
        signatures[:, block] = np.minimum.reduceat(mixed, starts, axis=1).T
    return signatures


def lsh_bands(threshold: float, num_perm: int, recall: float = 0.9) -> tuple[int, int]:
    """(bands, rows) for LSH over MinHash signatures: two rows become candidates when all `rows`
    entries of some band agree, with probability P(J) = 1 - (1 - J^rows)^bands at Jaccard J.

    Candidates are verified against the threshold afterwards, so a false candidate costs only a
    comparison while a missed one is a duplicate kept: the rule is the largest `rows` (fewest
    false candidates) whose P(threshold) >= recall, with bands = num_perm // rows.
    For 128 permutations: threshold 0.8 -> (16, 8), P(0.8) = 0.95, P(0.6) = 0.24, P(0.5) = 0.06.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"near-duplicate threshold must be in (0, 1), got {threshold}")
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def _band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(N, bands) int64 bucket ids: equal ids <=> equal band slices (per band)."""
    rng = np.random.default_rng(12345)
    multipliers = rng.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    keys = np.empty((signatures.shape[0], bands), dtype=np.int64)
    for band in range(bands):
        block = signatures[:, band * rows:(band + 1) * rows].astype(np.uint64)
        with np.errstate(over="ignore"):
            hashed = (block * multipliers).sum(axis=1)  # a 64-bit hash of the slice; verified later
        keys[:, band] = np.unique(hashed, return_inverse=True)[1].ravel()
    return keys


def near_duplicates(
    signatures: np.ndarray, threshold: float, candidates: np.ndarray, reference: np.ndarray,
    bands: int, rows: int,
) -> dict[int, tuple[int, float]]:
    """Greedy near-duplicate decisions over rows in index order.

    reference rows (benchmark items) are always kept; a candidate row (training record) is a
    duplicate when some earlier kept row has estimated Jaccard >= threshold (benchmark rows are
    preferred as the match, then the most similar); else it is kept. Rows in neither set are
    ignored (already dropped as exact duplicates). Returns {row: (matched row, similarity)}.
    """
    keys = _band_keys(signatures, bands, rows)
    shared = np.zeros(len(signatures), dtype=bool)
    for band in range(bands):
        counts = np.bincount(keys[:, band])
        shared |= counts[keys[:, band]] > 1
    buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    decisions: dict[int, tuple[int, float]] = {}
    for row in np.flatnonzero(shared & (candidates | reference)).tolist():
        seen: set[int] = set()
        for band in range(bands):
            seen.update(buckets[band].get(int(keys[row, band]), ()))
        if candidates[row] and seen:
            others = np.fromiter(seen, dtype=np.int64, count=len(seen))
            similarity = (signatures[others] == signatures[row]).mean(axis=1)
            hits = np.flatnonzero(similarity >= threshold)
            if len(hits):
                # Prefer a benchmark match (contamination), then the most similar, then the earliest.
                order = np.lexsort((others[hits], -similarity[hits], ~reference[others[hits]]))
                best = int(hits[order[0]])
                decisions[row] = (int(others[best]), float(similarity[best]))
                continue
        for band in range(bands):
            buckets[band].setdefault(int(keys[row, band]), []).append(row)
    return decisions


def embed_texts(texts: Sequence[str], model_dir: PathLike, batch_size: int = 64) -> np.ndarray:
    """(len(texts), d) L2-normalised mean-pooled last hidden states of a local encoder or LM."""
    import torch  # the embedding method only: `rlvr data dedup` starts without torch (start-up time)
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=512, return_tensors="pt")
            hidden = model(**batch).last_hidden_state.float()  # (B, T, d)
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 1), dtype=np.float32)


def embedding_duplicates(
    vectors: np.ndarray, threshold: float, candidates: np.ndarray, reference: np.ndarray, block: int = 256
) -> dict[int, tuple[int, float]]:
    """near_duplicates' greedy rule with the cosine similarity of unit vectors (exact, blockwise).

    Reference rows must come first (they are the benchmark items, always kept).
    """
    kept = reference.copy()
    decisions: dict[int, tuple[int, float]] = {}
    positions = np.arange(len(vectors))
    order = np.flatnonzero(candidates)
    for start in range(0, len(order), block):
        rows = order[start:start + block]
        sims = vectors[rows] @ vectors.T  # (block, N)
        for i, row in enumerate(rows):
            row = int(row)
            scores = np.where(kept & (positions < row), sims[i], -np.inf)
            bench = np.where(reference, scores, -np.inf)
            best = int(np.argmax(bench)) if bench.max() >= threshold else int(np.argmax(scores))
            if scores[best] >= threshold:
                decisions[row] = (best, float(min(scores[best], 1.0)))
            else:
                kept[row] = True
    return decisions


# ------------------------------------------------------------------------------------- dedup


@dataclass
class Duplicate:
    """One dropped training record and what it duplicates.

    kind: "exact" | "normalised" | "near"; contamination: the match is a benchmark item.
    location / match: "FILE:LINE" of the dropped record and of the record it repeats.
    """

    kind: str
    contamination: bool
    location: str
    match: str
    similarity: float
    text: str = ""
    match_text: str = ""


def _snippet(text: str, width: int = 160) -> str:
    flat = _WHITESPACE.sub(" ", text).strip()
    return flat if len(flat) <= width else flat[: width - 3] + "..."


class _Index:
    """What a dedup run holds per row (benchmark rows first, then training rows): location,
    exact and normalised text keys, and a feature row (MinHash signature or embedding),
    computed in batches as rows stream in."""

    def __init__(self, method: str, num_perm: int, ngram: int, seed: int,
                 embedding_model: PathLike | None) -> None:
        self.method = method
        self.num_perm, self.ngram, self.seed = num_perm, ngram, seed
        self.embedding_model = embedding_model
        self.locations: list[tuple[str, int]] = []
        self.reference: list[bool] = []
        self.reference_texts: dict[int, str] = {}
        self.keys: dict[bytes, int] = {}
        self.features: list[np.ndarray] = []
        self.pending: list[str] = []

    def add(self, path: str, line: int, text: str, reference: bool) -> tuple[str, int] | None:
        """Register a row; returns (kind, earlier row) when its text repeats an earlier row's."""
        row = len(self.locations)
        self.locations.append((path, line))
        self.reference.append(reference)
        if reference:
            self.reference_texts[row] = text
        match = None
        # Exact and normalised keys share one table (distinct prefixes); first occurrence owns a key,
        # so a training row's match is a benchmark row whenever one has that key.
        for kind, key in (("exact", b"e" + _digest(text.strip())),
                          ("normalised", b"n" + _digest(normalize_text(text)))):
            earlier = self.keys.setdefault(key, row)
            prefer = match is None or (self.reference[earlier] and not self.reference[match[1]])
            if earlier != row and not reference and prefer:
                match = (kind, earlier)
        if self.method != "none":
            self.pending.append(text)
            if len(self.pending) >= 2048:
                self.flush()
        return match

    def flush(self) -> None:
        if not self.pending:
            return
        if self.method == "minhash":
            self.features.append(minhash_signatures(self.pending, self.num_perm, self.ngram, self.seed))
        else:
            assert self.embedding_model is not None
            self.features.append(embed_texts(self.pending, self.embedding_model))
        self.pending = []

    def location(self, row: int) -> str:
        path, line = self.locations[row]
        return f"{path}:{line}"


def dedup(
    data: PathLike,
    out: PathLike,
    *,
    against: Sequence[PathLike] = (),
    method: str = "minhash",
    threshold: float = 0.8,
    ngram: int = 3,
    num_perm: int = 128,
    field: str | None = None,
    task: Any = None,
    embedding_model: PathLike | None = None,
    report: PathLike | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Drop duplicate and contaminated records of `data`; write the rest to `out` (atomic).

    Kinds, checked in this order, first occurrence kept: "exact" (same stripped problem text),
    "normalised" (equal after normalize_text), "near" (MinHash estimate of the word-n-gram
    Jaccard similarity >= threshold, candidates from LSH banding; with method="embedding",
    cosine similarity >= threshold of `embedding_model`'s mean-pooled hidden states).
    method="none" checks exact and normalised only. Records matching an item of the `against`
    benchmark files are contamination, always dropped, the benchmark item named as the match.

    The problem text is record[field], else the task's prompt (task: a Task or a name), else
    the first of TEXT_FIELDS. Benchmarks are read by field (AIME / MATH-500 rows as they come).
    Every dropped record is written with its match, kind and similarity to `report` (default:
    next to `out`, "<name>.dedup.jsonl"). Returns a summary dict (counts, settings, paths).
    Memory: two 17-byte keys and num_perm 4-byte signature entries per record, never the text.
    """
    if method not in ("minhash", "embedding", "none"):
        raise ValueError(f"unknown dedup method {method!r}; valid: minhash, embedding, none")
    if method == "embedding" and embedding_model is None:
        raise ValueError("method='embedding' needs embedding_model=DIR (a local Hugging Face model "
                         "directory)")
    if method == "minhash":
        lsh_bands(threshold, num_perm)  # validates the threshold before any reading
    if isinstance(task, str):
        task = get(task)
    index = _Index(method, num_perm, ngram, seed, embedding_model)
    drops, n_reference = _first_pass(index, data, against, field, task, threshold)
    duplicates = _write_kept(data, out, field, task, index, drops, n_reference)
    report_path = Path(report) if report is not None else sidecar(out, ".dedup.jsonl")
    write_jsonl_atomic(report_path, (asdict(d) for d in duplicates))
    contaminated = [d for d in duplicates if d.contamination]
    records_in = len(index.locations) - n_reference
    return {
        "data": str(data),
        "out": str(out),
        "report": str(report_path),
        "records_in": records_in,
        "records_out": records_in - len(duplicates),
        "duplicates": {kind: sum(1 for d in duplicates if d.kind == kind and not d.contamination)
                       for kind in ("exact", "normalised", "near")},
        "contaminated": len(contaminated),
        "benchmark_items": n_reference,
        "benchmark_items_matched": len({d.match for d in contaminated}),
        "settings": {"method": method, "threshold": threshold, "ngram": ngram, "num_perm": num_perm,
                     "against": [str(p) for p in against], "field": field,
                     "embedding_model": None if embedding_model is None else str(embedding_model)},
    }


def _first_pass(index: _Index, data: PathLike, against: Sequence[PathLike], field: str | None, task: Any,
                threshold: float) -> tuple[dict[int, tuple[str, int, float]], int]:
    """Index the benchmark items, then `data`'s records: the rows to drop, {row: (kind, matched row,
    similarity)} (exact and normalised repeats as they are read, near ones after), and the number of
    benchmark items (rows below it are benchmark rows)."""
    for bench in dict.fromkeys(str(p) for p in against):
        for line, _, text in _numbered_texts(bench, field, _bench_task(task, field)):
            index.add(bench, line, text, reference=True)
    n_reference = len(index.locations)
    drops: dict[int, tuple[str, int, float]] = {}
    for line, _, text in _numbered_texts(data, field, task):
        repeat = index.add(str(data), line, text, reference=False)
        if repeat is not None:
            drops[len(index.locations) - 1] = (repeat[0], repeat[1], 1.0)
    for row, (match, similarity) in _near_matches(index, set(drops), threshold).items():
        drops[row] = ("near", match, similarity)
    return drops, n_reference


def _bench_task(task: Any, field: str | None) -> Any:
    """Benchmark rows are read by field (AIME / MATH-500 rows as published), except for a task
    whose rows hold no problem text (its `text_rows` is False, e.g. countdown's nums + target):
    those go through the task."""
    if field is None and task is not None and not getattr(task, "text_rows", True):
        return task
    return None


def _near_matches(index: _Index, exact_rows: set[int], threshold: float) -> dict[int, tuple[int, float]]:
    if index.method == "none" or not index.locations:
        return {}
    index.flush()
    reference = np.array(index.reference, dtype=bool)
    candidates = ~reference
    if exact_rows:
        candidates[np.fromiter(exact_rows, dtype=np.int64)] = False
    features = np.concatenate(index.features)
    if index.method == "embedding":
        return embedding_duplicates(features, threshold, candidates, reference)
    bands, rows = lsh_bands(threshold, index.num_perm)
    return near_duplicates(features, threshold, candidates, reference, bands, rows)


def _write_kept(
    data: PathLike, out: PathLike, field: str | None, task: Any, index: _Index,
    drops: dict[int, tuple[str, int, float]], n_reference: int,
) -> list[Duplicate]:
    """Second pass over `data`: write the kept records, pick up the report's text snippets."""
    wanted = set(drops) | {match for _, match, _ in drops.values()}
    texts = {row: text for row, text in index.reference_texts.items() if row in wanted}

    def kept() -> Iterator[dict[str, Any]]:
        for offset, (_, record, text) in enumerate(_numbered_texts(data, field, task)):
            row = n_reference + offset
            if row in wanted:
                texts[row] = text
            if row not in drops:
                yield record

    write_jsonl_atomic(out, kept())
    return [
        Duplicate(
            kind=kind, contamination=index.reference[match], location=index.location(row),
            match=index.location(match), similarity=round(similarity, 4),
            text=_snippet(texts.get(row, "")), match_text=_snippet(texts.get(match, "")),
        )
        for row, (kind, match, similarity) in sorted(drops.items())
    ]


# ------------------------------------------------------------------------------------- stats


def context_advice(samples: PathLike) -> dict[str, Any]:
    """Light-R1's context-length advice from an eval samples.jsonl (rlvr eval, n samples each).

    For each problem with at least one correct response, its shortest correct response length
    (tokens); the advice is the largest of these over problems: the shortest response budget
    under which every solved problem can still be solved by some sample. Also given: the
    distribution of these minima, the unsolved count, and the truncation rate (if responses were
    cut at max_new_tokens, unsolved problems might need more than any budget seen here).
    """
    shortest: dict[int, int | None] = {}
    total = truncated = 0
    longest = 0
    for line, sample in read_numbered(samples):
        try:
            index, tokens = int(sample["prompt_index"]), int(sample["n_tokens"])
            correct = bool(sample["correct"])
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"{samples}:{line}: expected an rlvr eval sample with prompt_index, n_tokens and "
                            f"correct ({error!r})") from None
        total += 1
        truncated += sample.get("finish_reason") == "length"
        longest = max(longest, tokens)
        current = shortest.get(index)
        if correct and (current is None or tokens < current):
            shortest[index] = tokens
        else:
            shortest.setdefault(index, current)
    minima = [v for v in shortest.values() if v is not None]
    return {
        "samples": str(samples),
        "problems": len(shortest),
        "solved": len(minima),
        "unsolved": len(shortest) - len(minima),
        "responses": total,
        "truncation_rate": truncated / total if total else 0.0,
        "longest_response_tokens": longest,
        "shortest_correct_tokens": summarize(minima),
        "advice_max_new_tokens": max(minima) if minima else None,
    }


def _answer_text(record: dict[str, Any]) -> str | None:
    value = _field(record, ANSWER_FIELDS)
    if value is None:
        truth = record.get("reward_model")
        value = truth.get("ground_truth") if isinstance(truth, dict) else None
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def stats(
    data: PathLike | None = None,
    *,
    samples: PathLike | None = None,
    task: str | None = None,
    tokenizer: Any = None,
    task_options: dict[str, Any] | None = None,
    config: Any = None,
) -> dict[str, Any]:
    """Length statistics of a data file and / or Light-R1's context advice from a samples file.

    data: rlvr.data.tools.stats (count, prompt characters and words, difficulty counts) plus
    answer lengths in characters (the first of ANSWER_FIELDS, or reward_model.ground_truth)
    and, with a tokenizer, prompt and answer lengths in tokens. An SFT file (rows of messages,
    prompt + completion or ShareGPT conversations): conversation_stats. samples: context_advice.
    tokenizer: a tokenizer or a model directory. config: a run's config (`--recipe`: a recipe or a
    run's config.yaml, loaded by the caller, who also passes its run's tokenizer,
    rlvr.trainers.pipeline.recipe_tokenizer); its task (with its task options unless task_options
    is given) measures the file, and lengths are compared with its sft.max_seq_len and rl.max_new_tokens.
    A problem's prompt is counted as the model sees it when the task is known (the task's messages
    through the tokenizer's chat template, response prefix included), else as the record's text.
    """
    if data is None and samples is None:
        raise ValueError("stats needs a data file, a samples file, or both")
    if config is not None:
        task = task or config.data.task
    if isinstance(tokenizer, str | os.PathLike):
        tokenizer = load_tokenizer(Path(tokenizer))
    result: dict[str, Any] = {}
    if data is not None and _is_sft_file(data):
        result.update(conversation_stats(data, tokenizer, config))
    elif data is not None:
        if task_options is None and config is not None and task == config.data.task:
            task_options = config.data.task_options
        result.update(data_stats(data, task, task_options=task_options))
        answer_chars: list[int] = []
        prompt_tokens: list[int] = []
        answer_tokens: list[int] = []
        task_obj = None
        if result.get("task") is not None and tokenizer is not None:
            task_obj = get(result["task"], **(task_options or {}))
        for _, record in read_numbered(data):
            answer = _answer_text(record)
            if answer is not None:
                answer_chars.append(len(answer))
            if tokenizer is not None:
                if task_obj is not None:
                    messages = task_obj.messages(task_obj.from_record(record))
                    prompt_tokens.append(len(prompt_ids(tokenizer, messages, task_obj.response_prefix)))
                else:
                    prompt_tokens.append(len(tokenizer(record_text(record),
                                                       add_special_tokens=False)["input_ids"]))
                if answer is not None:
                    answer_tokens.append(len(tokenizer(answer, add_special_tokens=False)["input_ids"]))
        result["answer_chars"] = summarize(answer_chars)
        if tokenizer is not None:
            result["prompt_tokens"] = summarize(prompt_tokens)
            result["answer_tokens"] = summarize(answer_tokens)
    if samples is not None:
        result["context_advice"] = context_advice(samples)
    return result


def _is_sft_file(path: PathLike) -> bool:
    first = next(read_records(path), None)
    return first is not None and is_conversation(first)



def conversation_stats(path: PathLike, tokenizer: Any, config: Any = None) -> dict[str, Any]:
    """Token lengths of an SFT file's rows (rlvr.data.conversations): the prompt before the first
    assistant turn, the assistant turns (what SFT trains; the completions an imitating policy
    writes) and the whole sequence, each as mean / min / max / p50 / p90 / p95 / p99. The context
    advice of Light-R1 and DeepScaleR reads these: a context (sft.max_seq_len, rl.max_new_tokens)
    that the long tail fits in. With a run's config, the share of rows over its limits."""
    rows = read_conversations(path)
    result: dict[str, Any] = {"path": str(path), "layout": "conversations", "count": len(rows)}
    turns = [[m["content"] for m in r.messages if m["role"] == "assistant"] for r in rows]
    result["assistant_turns"] = summarize([len(t) for t in turns])
    result["completion_chars"] = summarize([sum(map(len, t)) for t in turns])
    if tokenizer is None:
        return result
    lengths = token_lengths(tokenizer, rows, eos_token_ids(tokenizer))
    for name in ("prompt", "completion", "sequence"):
        result[f"{name}_tokens"] = summarize(lengths[name])
    if config is not None and rows:
        if config.sft.max_seq_len:
            result["sft_max_seq_len"] = config.sft.max_seq_len
            over = sum(n > config.sft.max_seq_len for n in lengths["sequence"])
            result["over_sft_max_seq_len"] = over / len(rows)
        result["rl_max_new_tokens"] = config.rl.max_new_tokens
        result["completions_over_rl_max_new_tokens"] = sum(
            n > config.rl.max_new_tokens for n in lengths["completion"]) / len(rows)
    return result


# --------------------------------------------------------------------------------------- mix


def parse_source(spec: str | tuple[PathLike, float]) -> tuple[str, float]:
    """"PATH" or "PATH:WEIGHT" (or a (path, weight) pair) -> (path, weight); weight defaults to 1."""
    if isinstance(spec, tuple):
        path, weight = spec
        return str(path), float(weight)
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return spec, 1.0


def _allocate(counts: Sequence[int], weights: Sequence[float], total: int | None) -> list[int]:
    """Records to take from each source: proportional to weights, summing to total (largest
    remainder rounding). total None: the most records with no source repeated."""
    share = [w / sum(weights) for w in weights]
    if total is None:
        total = min(int(math.floor(c / s + 1e-9)) for c, s in zip(counts, share) if s > 0)
    exact = [s * total for s in share]
    taken = [int(math.floor(x)) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: taken[i] - exact[i])
    for i in order[: total - sum(taken)]:
        taken[i] += 1
    return taken


def _selected(path: str, count: int, take: int, rng: random.Random) -> Iterator[tuple[int, dict[str, Any]]]:
    """`take` records of a source with `count` records: whole passes, then a random subset in
    file order; streaming (the file is re-read for each pass)."""
    passes, rest = divmod(take, count)
    chosen = set(rng.sample(range(count), rest))
    for round_ in range(passes + (1 if rest else 0)):
        for position, (line, record) in enumerate(read_numbered(path)):
            if round_ < passes or position in chosen:
                yield line, record


def mix(
    sources: Sequence[str | tuple[PathLike, float]],
    out: PathLike,
    *,
    total: int | None = None,
    seed: int = 0,
    names: Sequence[str] | None = None,
    set_source: bool = True,
) -> dict[str, Any]:
    """Mix sources ("PATH:WEIGHT" strings or (path, weight) pairs) into one file (atomic).

    Source i contributes round(total * w_i / sum w) records (sampled without replacement; a
    source asked for more records than it has is repeated whole, then sampled). total None: the
    largest mix that repeats no source. Sources are interleaved in a random order (seeded);
    within a source, file order is kept. Each output record carries "provenance": {"source":
    name, "file", "line"} and, with set_source, "source": name (the key tasks read into
    metadata["source"], so evals break down by it), any earlier "source" value moving to
    provenance["original_source"]. names default to the file stems.
    """
    parsed, labels, counts = _mix_sources(sources, names)
    taken = _allocate(counts, [w for _, w in parsed], total)
    rng = random.Random(seed)
    streams = [_selected(path, count, take, rng) if take else iter(())
               for (path, _), count, take in zip(parsed, counts, taken)]
    order = [i for i, take in enumerate(taken) for _ in range(take)]
    rng.shuffle(order)

    def mixed() -> Iterator[dict[str, Any]]:
        for i in order:
            line, record = next(streams[i])
            yield _with_provenance(record, labels[i], parsed[i][0], line, set_source)

    write_jsonl_atomic(out, mixed())
    return {
        "out": str(out),
        "records_out": len(order),
        "sources": [
            {"name": label, "file": path, "weight": weight, "records": count, "taken": take,
             "repeated": take > count}
            for label, (path, weight), count, take in zip(labels, parsed, counts, taken)
        ],
        "seed": seed,
    }


def _mix_sources(sources: Sequence[str | tuple[PathLike, float]],
                 names: Sequence[str] | None) -> tuple[list[tuple[str, float]], list[str], list[int]]:
    """The checked sources of a mix: (path, weight) pairs, their names and record counts."""
    parsed = [parse_source(s) for s in sources]
    if not parsed:
        raise ValueError("mix needs at least one source")
    if any(w < 0 for _, w in parsed) or not any(w > 0 for _, w in parsed):
        raise ValueError(f"weights must be >= 0 and not all 0, got {[w for _, w in parsed]}")
    labels = list(names) if names is not None else [Path(p).name.split(".")[0] for p, _ in parsed]
    if len(labels) != len(parsed):
        raise ValueError(f"{len(labels)} names for {len(parsed)} sources")
    counts = [sum(1 for _ in read_numbered(path)) for path, _ in parsed]
    for (path, weight), count in zip(parsed, counts):
        if count == 0 and weight > 0:
            raise DataError(f"{path}: no records, but it has weight {weight}")
    return parsed, labels, counts


def _with_provenance(record: dict[str, Any], label: str, path: str, line: int,
                     set_source: bool) -> dict[str, Any]:
    """A copy of `record` with "provenance" (and, with set_source, "source": label; see mix)."""
    provenance: dict[str, Any] = {"source": label, "file": path, "line": line}
    record = dict(record)
    if set_source:
        if record.get("source") is not None:
            provenance["original_source"] = record["source"]
        record["source"] = label
    record["provenance"] = provenance
    return record
