"""Evaluation metrics by hand, and evaluate()'s bookkeeping with a scripted engine."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from itertools import combinations

import pytest

from rlvr import tasks
from rlvr.evaluation import (
    EvalResult,
    compute_metrics,
    evaluate,
    maj_at_k,
    normalize_answer,
    pass_at_k,
    write_eval,
)
from rlvr.evaluation.evaluate import EvalSampling, ModelLoading, format_summary, parse_k, read_eval
from rlvr.evaluation.metrics import breakdown_table, majority_vote_score, reflection_counts
from rlvr.rollout.base import Rollout, SamplingParams

# ------------------------------------------------------------------------------------ pass@k


def test_pass_at_k_hand_computed() -> None:
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 1, 16) == 1.0
    assert pass_at_k(5, 4, 2) == 1.0  # n - c < k: every draw of 2 holds a correct one


def test_pass_at_k_equals_enumeration_over_subsets() -> None:
    outcomes = [True, False, False, True, False, False]
    n, c = len(outcomes), sum(outcomes)
    for k in range(1, n + 1):
        draws = list(combinations(outcomes, k))
        expected = sum(any(d) for d in draws) / len(draws)
        assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_k_above_n() -> None:
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)


# ------------------------------------------------------------------------------------- maj@k


def test_normalize_answer() -> None:
    assert normalize_answer("  $\\boxed{ 42 }$. ") == "42"
    assert (normalize_answer("(1) Zoey is a KNIGHT\n(2)  Ethan is a knave")
            == "(1) zoey is a knight (2) ethan is a knave")
    assert normalize_answer("") is None
    assert normalize_answer(None) is None
    assert normalize_answer("1/2") != normalize_answer("0.5")


def test_majority_vote_tie_rule_splits_credit() -> None:
    # 2 votes "a" (correct), 2 votes "b" (wrong): a tie -> expected score of a random break.
    assert majority_vote_score(["a", "b", "a", "b"], [True, False, True, False]) == 0.5
    # Order does not matter.
    assert majority_vote_score(["b", "b", "a", "a"], [False, False, True, True]) == 0.5
    # Three-way tie with one correct answer -> 1/3.
    assert majority_vote_score(["a", "b", "c"], [True, False, False]) == pytest.approx(1 / 3)
    # Clear majority wins; abstentions (None) do not vote.
    assert majority_vote_score(["b", "b", "a"], [False, False, True]) == 0.0
    assert majority_vote_score([None, None, "a"], [False, False, True]) == 1.0
    assert majority_vote_score([None, None], [False, False]) == 0.0


def test_maj_at_k_blocks() -> None:
    answers = ["x", "x", "y", "y", "y", "x", "x", "z"]
    corrects = [a == "x" for a in answers]
    # k=4: blocks [x x y y] (tie -> 0.5) and [y x x z] (x wins -> 1): mean 0.75.
    assert maj_at_k(answers, corrects, 4) == pytest.approx(0.75)
    # k=1 equals the plain accuracy.
    assert maj_at_k(answers, corrects, 1) == pytest.approx(sum(corrects) / len(corrects))
    # k=3: floor(8/3) = 2 blocks [x x y] -> 1, [y y x] -> 0; the last two samples are left out.
    assert maj_at_k(answers, corrects, 3) == pytest.approx(0.5)


# ----------------------------------------------------------------------- compute_metrics


def _sample(prompt: int, index: int, correct: bool, answer: str | None, tokens: int, **extra) -> dict:
    sample = {
        "prompt_index": prompt, "sample_index": index, "correct": correct, "format_ok": answer is not None,
        "extracted": answer, "n_tokens": tokens, "finish_reason": extra.pop("finish", "stop"),
        "reward": 1.0 if correct else 0.0, "completion": extra.pop("text", ""),
        "metadata": extra.pop("metadata", {}),
    }
    assert not extra
    return sample


def test_compute_metrics_by_hand() -> None:
    kk3, kk4 = {"people": 3, "source": "a"}, {"people": 4, "source": "b"}
    samples = [
        # prompt 0 (3 people): 3 of 4 correct
        _sample(0, 0, True, "A", 10, metadata=kk3), _sample(0, 1, True, "A", 20, metadata=kk3),
        _sample(0, 2, False, "B", 30, metadata=kk3, finish="length"),
        _sample(0, 3, True, "A", 30, metadata=kk3),
        # prompt 1 (4 people): 0 of 4 correct, one sample without an answer
        _sample(1, 0, False, "C", 40, metadata=kk4), _sample(1, 1, False, None, 50, metadata=kk4),
        _sample(1, 2, False, "C", 60, metadata=kk4, text="Wait, let me check. Wait."),
        _sample(1, 3, False, "D", 70, metadata=kk4),
    ]
    m = compute_metrics(samples, k_values=(1, 2, 4), difficulty_keys=("people",))
    assert m["avg@n"] == pytest.approx((3 / 4 + 0) / 2)
    assert m["pass@1"] == pytest.approx(m["avg@n"])
    assert m["pass@2"] == pytest.approx((pass_at_k(4, 3, 2) + 0) / 2)
    assert m["pass@4"] == pytest.approx(0.5)
    assert m["maj@4"] == pytest.approx(0.5)  # prompt 0: A wins; prompt 1: C wins (wrong)
    assert m["maj@1"] == pytest.approx(m["avg@n"])
    assert m["n_prompts"] == 2 and m["n_samples"] == 8
    assert m["truncation_rate"] == pytest.approx(1 / 8)
    assert m["format_error_rate"] == pytest.approx(1 / 8)
    assert m["length/correct_mean"] == pytest.approx(20.0)
    assert m["length/wrong_mean"] == pytest.approx((30 + 40 + 50 + 60 + 70) / 5)
    assert m["length/max"] == 70 and m["length/min"] == 10
    assert m["reflection_words_per_response"] == pytest.approx(3 / 8)  # wait x2 + "let me check"
    assert m["reflection/wait_per_response"] == pytest.approx(2 / 8)
    assert m["reflection_response_ratio"] == pytest.approx(1 / 8)
    # Breakdowns by difficulty and by source.
    assert m["by_people/3/avg@n"] == pytest.approx(0.75)
    assert m["by_people/4/avg@n"] == 0.0
    assert m["by_people/3/truncation_rate"] == pytest.approx(0.25)
    assert m["by_source/a/pass@2"] == pytest.approx(1.0)
    assert m["by_source/b/n_prompts"] == 1
    assert breakdown_table(m, "people") == {"3": pytest.approx(0.75), "4": 0.0}
    # "people" is knights_knaves' difficulty key, not a generic one: without it, by source only.
    generic = compute_metrics(samples, k_values=(1, 2, 4))
    assert not any(k.startswith("by_people/") for k in generic) and generic["by_source/b/n_prompts"] == 1


def test_compute_metrics_orders_difficulties_numerically_and_omits_undefined_means() -> None:
    samples = [_sample(i, 0, False, "x", 5, metadata={"level": level}) for i, level in enumerate([10, 2, 3])]
    m = compute_metrics(samples)
    assert list(breakdown_table(m, "level")) == ["2", "3", "10"]
    assert "length/correct_mean" not in m  # nothing correct: no NaN in the output


def test_compute_metrics_needs_equal_samples_per_prompt() -> None:
    with pytest.raises(ValueError, match="same number of samples"):
        compute_metrics([_sample(0, 0, True, "a", 1), _sample(0, 1, True, "a", 1),
                         _sample(1, 0, True, "a", 1)])


def test_reflection_counts_word_boundaries() -> None:
    counts = reflection_counts("Wait... I should re-check. Awaiting nothing; double-check! "
                               "Let me reconsider.")
    assert counts["wait"] == 1  # "Awaiting" is not "wait"
    assert counts["recheck"] == 1 and counts["double_check"] == 1 and counts["let_me_check"] == 1


def test_parse_k_and_check_sampling() -> None:
    assert parse_k("16,1,4,4") == (1, 4, 16)
    assert parse_k(2) == (2,)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_k("1;4")
    with pytest.raises(ValueError, match="identical"):
        EvalSampling(n=4, temperature=0.0)
    with pytest.raises(ValueError, match=r"\[16\]"):
        EvalSampling(n=4, temperature=1.0, k_values=(1, 16))


def test_eval_sampling_defaults_and_settings() -> None:
    greedy, sampled = EvalSampling.from_options(n=1), EvalSampling.from_options(n=4, k="4,1")
    assert (greedy.temperature, greedy.top_p) == (0.0, 1.0)
    assert (sampled.temperature, sampled.top_p, sampled.k_values) == (0.6, 0.95, (1, 4))
    assert EvalSampling.from_options(n=4, temperature=1.0).top_p == 0.95
    assert list(sampled.settings()) == ["n", "temperature", "top_p", "top_k", "max_new_tokens", "seed",
                                        "k_values", "prompts_per_batch"]
    assert sampled.settings()["k_values"] == [1, 4]
    params = sampled.params((1, 2), batch=3)
    assert params.seed == 3 and params.n == 4 and params.stop_token_ids == (1, 2)
    with pytest.raises(ValueError, match="prompts_per_batch"):
        EvalSampling(prompts_per_batch=0)
    with pytest.raises(ValueError, match="engine"):
        ModelLoading(engine="jax")


# -------------------------------------------------------------------- evaluate() bookkeeping


class CharTokenizer:
    """Just enough tokenizer for evaluate(): one id per character, a ChatML-like template."""

    chat_template = "char"
    eos_token_id = 1
    name_or_path = "char"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True) -> str:
        return "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"

    def __call__(self, texts, add_special_tokens=False):
        if isinstance(texts, str):
            return {"input_ids": self.encode(texts)}
        return {"input_ids": [self.encode(t) for t in texts]}

    def encode(self, text: str) -> list[int]:
        return [ord(c) + 2 for c in text]

    def decode(self, ids, skip_special_tokens=True) -> str:
        return "".join(chr(i - 2) for i in ids if i > 1)

    def get_vocab(self) -> dict[str, int]:
        return {"<eos>": 1}


class ScriptedEngine:
    """Returns, for the prompt whose text contains a key of `script`, its completions in turn."""

    def __init__(self, tokenizer: CharTokenizer, script: dict[str, list[str]]) -> None:
        self.tokenizer, self.script = tokenizer, script
        self.calls: list[SamplingParams] = []

    def generate(self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams) -> list[Rollout]:
        self.calls.append(params)
        rollouts = []
        for p, ids in enumerate(prompt_ids):
            text = self.tokenizer.decode(ids)
            completions = next(v for k, v in self.script.items() if k in text)
            for s in range(params.n):
                tokens = self.tokenizer.encode(completions[s % len(completions)]) + [1]
                finish = "stop"
                if len(tokens) > params.max_new_tokens:
                    tokens, finish = tokens[: params.max_new_tokens], "length"
                rollouts.append(Rollout(p, list(ids), tokens, [0.0] * len(tokens), finish))
        return rollouts

    def load_weights(self, state_dict) -> None:  # pragma: no cover - protocol completeness
        pass


@pytest.fixture
def kk_setup():
    task = tasks.get("knights_knaves")
    examples = task.examples(3, seed=1, people=[2, 3, 3])
    tokenizer = CharTokenizer()
    right = [task.oracle_completion(e) for e in examples]
    wrong = "<think>\nno idea\n</think>\n<answer>\nI give up\n</answer>"
    script = {
        examples[0].prompt: [right[0]],                          # always right
        examples[1].prompt: [right[1], wrong, wrong, "Wait"],    # 1 of 4 right
        examples[2].prompt: [wrong],                             # never right
    }
    return task, examples, tokenizer, ScriptedEngine(tokenizer, script), right


def test_evaluate_bookkeeping(kk_setup, tmp_path) -> None:
    task, examples, tokenizer, engine, right = kk_setup
    sampling = EvalSampling(n=4, temperature=1.0, top_p=0.9, max_new_tokens=10_000, seed=5,
                            k_values=(1, 2, 4), prompts_per_batch=2)
    result = evaluate(engine, tokenizer, task, examples, sampling)
    m = result.metrics
    assert m["avg@n"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert m["pass@4"] == pytest.approx(2 / 3)
    assert m["pass@2"] == pytest.approx((1 + pass_at_k(4, 1, 2) + 0) / 3)
    assert m["by_people/2/avg@n"] == 1.0 and m["by_people/3/avg@n"] == pytest.approx(0.125)
    assert m["by_source/generated/n_prompts"] == 3
    assert m["format_error_rate"] == pytest.approx(1 / 12)  # the bare "Wait"
    # Two batches (2 + 1 prompts), seeds seed + batch, eos ids passed as stop tokens.
    assert [c.seed for c in engine.calls] == [5, 6]
    assert engine.calls[0].n == 4 and engine.calls[0].top_p == 0.9 and engine.calls[0].stop_token_ids == (1,)
    assert len(result.samples) == 12
    first = result.samples[0]
    assert first["prompt_index"] == 0 and first["sample_index"] == 0 and first["correct"] is True
    assert first["completion"] == right[0] and first["n_tokens"] == len(right[0]) + 1
    assert first["metadata"]["people"] == 2 and first["extracted"].startswith("(1)")
    assert [s["prompt_index"] for s in result.samples] == [0] * 4 + [1] * 4 + [2] * 4
    assert result.settings == {**result.settings, "n": 4, "temperature": 1.0, "top_p": 0.9, "top_k": 0,
                               "max_new_tokens": 10_000, "seed": 5, "task": "knights_knaves"}
    assert "avg@n" in format_summary(result)

    out = write_eval(result, tmp_path / "eval")
    payload = read_eval(out)
    assert (payload["settings"]["temperature"] == 1.0
            and payload["metrics"]["avg@n"] == pytest.approx(m["avg@n"]))
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 12
    # Every figure can be recomputed from the samples file.
    assert payload["settings"]["difficulty_keys"] == ["people", "difficulty", "level"]  # the task's first
    again = compute_metrics([json.loads(line) for line in lines], (1, 2, 4),
                            payload["settings"]["difficulty_keys"])
    assert again == pytest.approx(m)
    assert not list(out.glob("*.tmp"))


def test_evaluate_truncation(kk_setup) -> None:
    task, examples, tokenizer, engine, _ = kk_setup
    result = evaluate(engine, tokenizer, task, examples[:1], EvalSampling(max_new_tokens=5))
    assert result.metrics["truncation_rate"] == 1.0
    assert result.samples[0]["finish_reason"] == "length" and result.samples[0]["n_tokens"] == 5
    assert result.metrics["avg@n"] == 0.0


def test_evaluate_rejects_bad_settings(kk_setup) -> None:
    task, examples, tokenizer, engine, _ = kk_setup
    with pytest.raises(ValueError, match="identical"):
        evaluate(engine, tokenizer, task, examples, EvalSampling(n=2, temperature=0.0))
    with pytest.raises(ValueError, match="no examples"):
        evaluate(engine, tokenizer, task, [], EvalSampling())
    assert engine.calls == []


def test_write_eval_nan_becomes_null(tmp_path) -> None:
    result = EvalResult({"avg@n": float("nan")}, [], {"n": 1}, {})
    write_eval(result, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["avg@n"] is None
