"""Data curation: dedup (exact / normalised / near / contamination), pass-rate filter
(rlvr.evaluation.pass_rate), stats, mix."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rlvr import tasks
from rlvr.config import load_config
from rlvr.data.curation import (
    context_advice,
    dedup,
    lsh_bands,
    minhash_signatures,
    mix,
    normalize_text,
    parse_source,
    sidecar,
    stats,
)
from rlvr.data.io import DataError
from rlvr.evaluation.pass_rate import FILTER_SAMPLING, filter_by_pass_rate, gold_verifiable
from rlvr.rollout.base import Rollout, SamplingParams
from rlvr.trainers.pipeline import recipe_tokenizer

LONG = (
    "A farmer has a rectangular field whose length is three times its width. He walks along the "
    "fence around the whole field and counts exactly four hundred steps, each step being one metre. "
    "After that he divides the field into two equal parts with a straight fence parallel to the width. "
    "How many metres of fence does he need in total, counting the fence around the field and the new one?"
)
OTHER = (
    "Five friends share a pizza cut into twelve slices. Two of them eat three slices each, one eats two, "
    "and the remaining friends split what is left equally. How many slices does each of the last two eat?"
)


def write_jsonl(path: Path, records: Sequence[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------- dedup


def test_normalize_text_is_conservative() -> None:
    assert normalize_text("What is  $2+3$?") == normalize_text("what is 2+3 ?")
    assert normalize_text("2+3") != normalize_text("2-3")


def test_minhash_estimates_jaccard() -> None:
    words = LONG.split()
    changed = " ".join(words[:20] + ["seven"] + words[21:])
    signatures = minhash_signatures([LONG, changed, OTHER, LONG], num_perm=256)
    assert signatures.shape == (4, 256) and signatures.dtype == np.uint32
    agreement = (signatures[:, None, :] == signatures[None, :, :]).mean(-1)
    assert agreement[0, 3] == 1.0
    assert 0.8 < agreement[0, 1] < 1.0
    assert agreement[0, 2] < 0.2


def test_lsh_bands_fit_the_threshold() -> None:
    assert lsh_bands(0.8, 128) == (16, 8)  # P(0.8) = 1 - (1 - 0.8^8)^16 = 0.947; with 9 rows 0.867 < 0.9
    assert lsh_bands(0.9, 128) == (9, 14)
    for threshold in (0.5, 0.7, 0.8, 0.95):
        bands, rows = lsh_bands(threshold, 64, recall=0.95)
        assert bands * rows <= 64 and 1 - (1 - threshold**rows) ** bands >= 0.95
    with pytest.raises(ValueError, match="threshold"):
        lsh_bands(1.5, 128)


def test_dedup_exact_normalised_near(tmp_path: Path) -> None:
    words = LONG.split()
    near = " ".join(words[:30] + ["eleven"] + words[31:])
    data = write_jsonl(tmp_path / "train.jsonl", [
        {"problem": "What is the sum of the first ten positive integers?", "answer": "55"},
        {"problem": "What is the sum of the first ten positive integers?", "answer": "55"},
        {"problem": "what is the SUM of the first   ten positive integers ?", "answer": "55"},
        {"problem": LONG, "answer": "1000"},
        {"problem": near, "answer": "1000"},
        {"problem": OTHER, "answer": "2"},
    ])
    out = tmp_path / "clean.jsonl"
    summary = dedup(data, out)
    kept = read_jsonl(out)
    assert [r["problem"] for r in kept] == [
        "What is the sum of the first ten positive integers?", LONG, OTHER]
    assert summary["records_in"] == 6 and summary["records_out"] == 3
    assert summary["duplicates"] == {"exact": 1, "normalised": 1, "near": 1}
    report = read_jsonl(Path(summary["report"]))
    assert Path(summary["report"]) == tmp_path / "clean.dedup.jsonl"
    pairs = {(d["kind"], d["location"], d["match"]) for d in report}
    assert pairs == {("exact", f"{data}:2", f"{data}:1"), ("normalised", f"{data}:3", f"{data}:1"),
                     ("near", f"{data}:5", f"{data}:4")}
    near_entry = next(d for d in report if d["kind"] == "near")
    assert 0.8 <= near_entry["similarity"] < 1.0 and not near_entry["contamination"]
    assert near_entry["text"].startswith("A farmer") and near_entry["match_text"].startswith("A farmer")

    # Without near-duplicate detection the edited copy stays.
    summary = dedup(data, out, method="none")
    assert summary["records_out"] == 4 and summary["duplicates"]["near"] == 0


def test_dedup_contamination_names_each_pair(tmp_path: Path) -> None:
    words = LONG.split()
    math500 = write_jsonl(tmp_path / "math500.jsonl", [
        {"problem": "Find the remainder when 2^100 is divided by 7.", "answer": "2"},
        {"problem": LONG, "answer": "1000"},
    ])
    aime = write_jsonl(tmp_path / "aime.jsonl", [{"Problem": OTHER, "Answer": 2}])
    data = write_jsonl(tmp_path / "train.jsonl", [
        {"problem": "Compute 17 * 23.", "answer": "391"},
        {"problem": " ".join(words[:12] + ["two"] + words[13:]), "answer": "1000"},  # near MATH-500 #2
        # normalised MATH-500 #1
        {"problem": "find the remainder when 2^100 is divided by 7.", "answer": "2"},
        {"problem": OTHER, "answer": "2"},  # exact AIME #1
    ])
    out = tmp_path / "clean.jsonl"
    summary = dedup(data, out, against=[math500, aime], report=tmp_path / "pairs.jsonl")
    assert [r["problem"] for r in read_jsonl(out)] == ["Compute 17 * 23."]
    assert summary["contaminated"] == 3 and summary["benchmark_items"] == 3
    assert summary["benchmark_items_matched"] == 3
    report = read_jsonl(tmp_path / "pairs.jsonl")
    assert all(d["contamination"] for d in report)
    assert {(d["location"], d["match"], d["kind"]) for d in report} == {
        (f"{data}:2", f"{math500}:2", "near"),
        (f"{data}:3", f"{math500}:1", "normalised"),
        (f"{data}:4", f"{aime}:1", "exact"),
    }


def test_dedup_prefers_the_benchmark_match(tmp_path: Path) -> None:
    # The training file repeats a benchmark item twice: both copies are contamination.
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"problem": OTHER}])
    data = write_jsonl(tmp_path / "train.jsonl", [{"problem": OTHER}, {"problem": OTHER}])
    summary = dedup(data, tmp_path / "out.jsonl", against=[bench])
    report = read_jsonl(Path(summary["report"]))
    assert [d["match"] for d in report] == [f"{bench}:1", f"{bench}:1"]
    assert summary["records_out"] == 0


def test_dedup_reads_the_task_prompt_and_fields(tmp_path: Path) -> None:
    kk = tasks.get("knights_knaves")
    records = [kk.to_record(e) for e in kk.examples(20, seed=3, people=3)]
    data = write_jsonl(tmp_path / "kk.jsonl", records + [records[4]])
    summary = dedup(data, tmp_path / "out.jsonl", task="knights_knaves")
    assert summary["records_out"] == 20 and summary["duplicates"]["exact"] == 1
    # Distinct puzzles share their template text but are not near-duplicates at the default threshold.
    assert summary["duplicates"]["near"] == 0
    summary = dedup(data, tmp_path / "out.jsonl", field="quiz")
    assert summary["records_out"] == 20


def test_dedup_reads_benchmark_rows_without_text_through_the_task(tmp_path: Path) -> None:
    """Countdown rows (nums + target) hold no problem text (text_rows False): benchmark rows are
    compared by the task's prompt too, so a repeated puzzle is contamination."""
    countdown = tasks.get("countdown")
    records = [countdown.to_record(e) for e in countdown.examples(6, seed=1)]
    bench = write_jsonl(tmp_path / "bench.jsonl",
                        [{"nums": records[2]["nums"], "target": records[2]["target"]}])
    data = write_jsonl(tmp_path / "train.jsonl", records)
    summary = dedup(data, tmp_path / "out.jsonl", against=[bench], task="countdown")
    assert summary["contaminated"] == 1 and summary["records_out"] == 5
    with pytest.raises(DataError, match=r"bench\.jsonl:1: no problem text"):  # by field, no text to compare
        dedup(data, tmp_path / "out.jsonl", against=[bench], task=tasks.get("math"))


def test_dedup_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "a"}\n{"problem": "b"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2:"):
        dedup(bad, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    textless = write_jsonl(tmp_path / "textless.jsonl", [{"problem": "a"}, {"nums": [1, 2], "target": 3}])
    with pytest.raises(DataError, match=r"textless\.jsonl:2: no problem text"):
        dedup(textless, tmp_path / "out.jsonl")
    with pytest.raises(ValueError, match="embedding_model"):
        dedup(textless, tmp_path / "out.jsonl", method="embedding")


def test_dedup_with_embeddings(tmp_path: Path) -> None:
    from rlvr.models.factory import init_model

    model = init_model(tmp_path / "encoder", seed=0, n_per_task=14)
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"problem": OTHER}])
    data = write_jsonl(tmp_path / "train.jsonl", [
        {"problem": LONG}, {"problem": LONG + " "}, {"problem": OTHER}, {"problem": "Compute 2 + 2."}])
    summary = dedup(data, tmp_path / "out.jsonl", against=[bench], method="embedding", embedding_model=model,
                    threshold=0.999)
    report = read_jsonl(Path(summary["report"]))
    assert ({(d["location"], d["match"]) for d in report}
            == {(f"{data}:2", f"{data}:1"), (f"{data}:3", f"{bench}:1")})
    assert summary["records_out"] == 2


# ----------------------------------------------------------------------------- pass-rate filter


class CharTokenizer:
    chat_template = "char"
    eos_token_id = 1
    name_or_path = "char"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True) -> str:
        return "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) + 2 for c in t] for t in texts]}

    def decode(self, ids, skip_special_tokens=True) -> str:
        return "".join(chr(i - 2) for i in ids if i > 1)

    def get_vocab(self) -> dict[str, int]:
        return {"<eos>": 1}


class ScriptedEngine:
    """For a prompt containing "Problem K:", returns correct[K] right answers out of n."""

    def __init__(self, tokenizer: CharTokenizer, correct: dict[int, int]) -> None:
        self.tokenizer, self.correct = tokenizer, correct
        self.prompts_seen: list[int] = []

    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Rollout]:
        rollouts = []
        for p, ids in enumerate(prompt_ids):
            key = int(self.tokenizer.decode(ids).split("Problem ")[1].split(":")[0])
            self.prompts_seen.append(key)
            for s in range(params.n):
                answer = key if s < self.correct[key] else key + 1
                text = f"<think>\nok\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>"
                tokens = [ord(c) + 2 for c in text] + [1]
                rollouts.append(Rollout(p, list(ids), tokens, [0.0] * len(tokens), "stop"))
        return rollouts

    def load_weights(self, state_dict) -> None:  # pragma: no cover
        pass


def test_gold_verifiable() -> None:
    math_task = tasks.get("math")
    assert gold_verifiable(math_task, math_task.from_record({"problem": "p", "answer": "42"})) is True
    assert gold_verifiable(math_task, math_task.from_record({"problem": "p", "answer": "}{"})) is False


def test_filter_keeps_the_pass_rate_range(tmp_path: Path) -> None:
    correct = {0: 0, 1: 1, 2: 2, 3: 5, 4: 6, 5: 8, 6: 4}
    records = [{"problem": f"Problem {k}: what is {k}?", "answer": str(k)} for k in correct]
    records.insert(3, {"problem": "Problem 99: unanswerable", "answer": "}{"})  # unverifiable gold
    records.insert(5, {"problem": "Problem 98: no answer field"})  # unreadable by the task
    data = write_jsonl(tmp_path / "pool.jsonl", records)
    engine = ScriptedEngine(CharTokenizer(), correct)
    out = tmp_path / "kept.jsonl"
    summary = filter_by_pass_rate(data, out, task="math", engine=engine, tokenizer=CharTokenizer(),
                                  sampling=replace(FILTER_SAMPLING, n=8, prompts_per_batch=3,
                                                   max_new_tokens=200))
    kept = [r["problem"] for r in read_jsonl(out)]
    # 2/8 = 0.25 and 5/8 = 0.625 (the inclusive upper bound) and 4/8 are kept; 1/8 is too hard.
    assert kept == ["Problem 2: what is 2?", "Problem 3: what is 3?", "Problem 6: what is 6?"]
    assert summary["records_in"] == 9 and summary["records_out"] == 3
    assert summary["too_hard"] == 2 and summary["too_easy"] == 2
    assert summary["unverifiable"] == [f"{data}:4"]
    assert summary["unreadable"][0].startswith(f"{data}:6: ")
    assert sorted(engine.prompts_seen) == sorted(correct)  # dropped problems were never sampled
    assert summary["correct_histogram"] == [1, 1, 1, 0, 1, 1, 1, 0, 1]
    rates = read_jsonl(sidecar(out, ".pass_rates.jsonl"))
    assert len(rates) == 9
    by_location = {r["location"]: r for r in rates}
    assert by_location[f"{data}:1"]["pass_rate"] == 0.0 and by_location[f"{data}:1"]["reason"] == "too hard"
    assert by_location[f"{data}:4"]["reason"] == "unverifiable gold answer"
    assert by_location[f"{data}:7"]["pass_rate"] == 0.75 and by_location[f"{data}:7"]["reason"] == "too easy"
    assert by_location[f"{data}:3"]["shortest_correct_tokens"] > 0
    assert summary["settings"]["n"] == 8 and summary["settings"]["temperature"] == 1.0


def test_filter_custom_range_and_bad_arguments(tmp_path: Path) -> None:
    correct = {0: 0, 1: 4, 2: 8}
    data = write_jsonl(tmp_path / "pool.jsonl",
                       [{"problem": f"Problem {k}: what is {k}?", "answer": str(k)} for k in correct])
    engine = ScriptedEngine(CharTokenizer(), correct)
    summary = filter_by_pass_rate(data, tmp_path / "hard.jsonl", task="math", engine=engine,
                                  tokenizer=CharTokenizer(), sampling=replace(FILTER_SAMPLING, n=8),
                                  keep=(0.0, 0.5))
    assert summary["records_out"] == 2
    with pytest.raises(ValueError, match="low"):
        filter_by_pass_rate(data, tmp_path / "x.jsonl", task="math", engine=engine, tokenizer=CharTokenizer(),
                            keep=(0.7, 0.2))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "Problem 0: a", "answer": "0"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2:"):
        filter_by_pass_rate(bad, tmp_path / "y.jsonl", task="math", engine=engine, tokenizer=CharTokenizer())
    assert not (tmp_path / "y.jsonl").exists() and not (tmp_path / "y.pass_rates.jsonl").exists()


# ------------------------------------------------------------------------------------ stats


def test_context_advice_is_max_of_shortest_correct(tmp_path: Path) -> None:
    samples = []
    for prompt, outcomes in enumerate([[(120, True), (80, True), (300, False)],
                                       [(500, False), (400, True), (90, False)],
                                       [(50, False), (60, False), (1024, False)]]):
        for i, (tokens, correct) in enumerate(outcomes):
            samples.append({"prompt_index": prompt, "sample_index": i, "n_tokens": tokens, "correct": correct,
                            "finish_reason": "length" if tokens == 1024 else "stop"})
    path = write_jsonl(tmp_path / "samples.jsonl", samples)
    advice = context_advice(path)
    assert advice["advice_max_new_tokens"] == 400  # max(80, 400)
    assert advice["problems"] == 3 and advice["solved"] == 2 and advice["unsolved"] == 1
    assert advice["truncation_rate"] == pytest.approx(1 / 9)
    assert advice["shortest_correct_tokens"]["min"] == 80
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt_index": 0}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1:"):
        context_advice(bad)


def test_stats_lengths(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"problem": "one two three", "answer": "12"},
                                              {"problem": "one", "answer": "1234"}])
    result = stats(data, task="math")
    assert result["count"] == 2
    assert result["prompt_words"]["max"] == 3
    assert result["answer_chars"] == {"mean": 3.0, "min": 2, "max": 4, "p50": 2, "p90": 4, "p95": 4, "p99": 4}
    with pytest.raises(ValueError, match="needs"):
        stats()


# -------------------------------------------------------------------------------------- mix


def test_mix_weights_and_provenance(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"problem": f"a{i}", "source": "orig"} for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"problem": f"b{i}"} for i in range(30)])
    out = tmp_path / "mix.jsonl"
    summary = mix([f"{a}:1", f"{b}:1"], out, seed=3)
    records = read_jsonl(out)
    assert summary["records_out"] == 20  # the most records with no source repeated, half from each
    assert Counter(r["source"] for r in records) == {"a": 10, "b": 10}
    assert sorted(r["problem"] for r in records if r["source"] == "a") == sorted(f"a{i}" for i in range(10))
    first_a = next(r for r in records if r["source"] == "a")
    line = first_a["provenance"]["line"]
    assert first_a["provenance"] == {"source": "a", "file": str(a), "line": line, "original_source": "orig"}
    assert first_a["problem"] == f"a{line - 1}"
    # Sources are interleaved, not concatenated.
    assert [r["source"] for r in records] != sorted(r["source"] for r in records)
    # Same seed, same file.
    mix([f"{a}:1", f"{b}:1"], tmp_path / "again.jsonl", seed=3)
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()

    summary = mix([(a, 1.0), (b, 4.0)], out, total=50, names=["small", "big"])
    counts = Counter(r["provenance"]["source"] for r in read_jsonl(out))
    assert counts == {"small": 10, "big": 40}
    assert summary["sources"][1]["repeated"] is True
    big = Counter(r["problem"] for r in read_jsonl(out) if r["source"] == "big")
    assert len(big) == 30 and sum(big.values()) == 40  # every record once, ten of them twice


def test_mix_arguments(tmp_path: Path) -> None:
    assert parse_source("data/x.jsonl:2.5") == ("data/x.jsonl", 2.5)
    assert parse_source("data/x.jsonl") == ("data/x.jsonl", 1.0)
    a = write_jsonl(tmp_path / "a.jsonl", [{"problem": "a"}])
    with pytest.raises(ValueError, match="weights"):
        mix([f"{a}:0"], tmp_path / "m.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no records"):
        mix([str(a), str(empty)], tmp_path / "m.jsonl")


def test_stats_of_an_sft_file_with_a_recipe_use_the_runs_tokenizer(tiny_model_dir: Path,
                                                                   tmp_path: Path) -> None:
    """`rlvr data stats FILE --recipe R`: token percentiles of prompts, assistant turns and whole
    sequences with the run's tokenizer, and the share of rows over the recipe's limits."""
    from rlvr.cli import main
    from rlvr.data.conversations import Conversation, record_messages, tokenize
    from rlvr.models import eos_token_ids, load_tokenizer

    rows = [{"prompt": f"Who is a knight, {i}?", "completion": "Zoey " * (2 + 4 * i)} for i in range(10)]
    rows[3] = {"messages": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Ella."},
                            {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Noah."}]}
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{path: {tiny_model_dir}}}\nsft: {{max_seq_len: 40}}\n"
                      f"rl: {{max_new_tokens: 20}}\n")
    config = load_config(recipe)
    result = stats(data, config=config, tokenizer=recipe_tokenizer(config))  # as `rlvr data stats --recipe`
    tokenizer = load_tokenizer(tiny_model_dir)
    encoded = tokenize(tokenizer, [Conversation(*record_messages(r), "") for r in rows],
                       eos_token_ids(tokenizer))
    completion = sorted(sum(trained) for _, trained in encoded)
    sequence = [len(ids) for ids, _ in encoded]
    assert result["layout"] == "conversations" and result["count"] == 10
    assert (result["completion_tokens"]["max"] == completion[-1]
            and result["completion_tokens"]["p50"] == completion[4])
    assert set(result["completion_tokens"]) == {"mean", "min", "max", "p50", "p90", "p95", "p99"}
    assert result["sequence_tokens"]["max"] == max(sequence)
    assert result["assistant_turns"]["max"] == 2
    assert result["over_sft_max_seq_len"] == sum(n > 40 for n in sequence) / 10 > 0
    assert result["completions_over_rl_max_new_tokens"] == sum(n > 20 for n in completion) / 10 > 0
    # the command line prints the same dict
    assert main(["data", "stats", str(data), "--recipe", str(recipe)]) == 0


def test_stats_of_problems_with_a_recipe_measure_the_rendered_prompt(tiny_model_dir: Path,
                                                                     tmp_path: Path) -> None:
    from rlvr.data.tools import generate
    from rlvr.models import load_tokenizer, prompt_ids
    from rlvr.tasks import get

    data = generate("knights_knaves", 5, 0, tmp_path / "kk.jsonl", people=2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{path: {tiny_model_dir}}}\ndata: {{task: knights_knaves, task_options: "
                      f"{{response_prefix: '<think>'}}}}\n")
    config = load_config(recipe)
    result = stats(data, config=config, tokenizer=recipe_tokenizer(config))  # as `rlvr data stats --recipe`
    task, tokenizer = get("knights_knaves", response_prefix="<think>"), load_tokenizer(tiny_model_dir)
    lengths = [len(prompt_ids(tokenizer, task.messages(ex), task.response_prefix))
               for ex in task.examples(5, 0, people=2)]
    assert result["prompt_tokens"]["max"] == max(lengths) and result["prompt_tokens"]["min"] == min(lengths)
    by_directory = stats(data, tokenizer=str(tiny_model_dir))  # --tokenizer DIR: the problem text alone
    assert by_directory["prompt_tokens"]["max"] < max(lengths)
