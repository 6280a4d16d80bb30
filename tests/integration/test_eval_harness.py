"""The evaluation harness with the real pieces: a tiny model built offline, TorchEngine, a task."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlvr import tasks
from rlvr.data.curation import sidecar
from rlvr.data.tools import generate
from rlvr.evaluation import (
    EvalSampling,
    ModelLoading,
    compute_metrics,
    eval_command,
    evaluate,
    load_engine,
    read_eval,
    write_report,
)
from rlvr.evaluation.pass_rate import FILTER_SAMPLING, filter_command
from rlvr.models.factory import init_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model(tmp_path_factory.mktemp("eval_models") / "tiny", seed=0, n_per_task=35)


@pytest.fixture(scope="module")
def engine_and_tokenizer(model_dir: Path):
    torch.manual_seed(0)
    return load_engine(model_dir, device="cpu")


def test_evaluate_with_torch_engine(engine_and_tokenizer) -> None:
    engine, tokenizer = engine_and_tokenizer
    task = tasks.get("knights_knaves")
    examples = task.examples(4, seed=11, people=[2, 3])
    sampling = EvalSampling(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7, k_values=(1, 3),
                            prompts_per_batch=3)
    result = evaluate(engine, tokenizer, task, examples, sampling)
    assert len(result.samples) == 12
    assert [s["prompt_index"] for s in result.samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for sample in result.samples:
        assert 1 <= sample["n_tokens"] <= 12
        assert sample["finish_reason"] in ("stop", "length")
        if sample["finish_reason"] == "length":
            assert sample["n_tokens"] == 12
    # A random model: nothing right, nothing well-formed; the bookkeeping still adds up.
    m = result.metrics
    assert m["avg@n"] == 0.0 and m["pass@3"] == 0.0 and m["format_error_rate"] == 1.0
    assert m["by_people/2/n_prompts"] == 2 and m["by_people/3/n_prompts"] == 2
    assert m["truncation_rate"] == pytest.approx(sum(s["finish_reason"] == "length"
                                                     for s in result.samples) / 12)
    assert result.timing["gen_tokens_per_s"] > 0
    # Same seed, same completions.
    again = evaluate(engine, tokenizer, task, examples, sampling)
    assert [s["completion"] for s in again.samples] == [s["completion"] for s in result.samples]


def test_eval_command_end_to_end(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "kk_test.jsonl"
    generate("knights_knaves", 5, seed=3, out=data, people=[2, 3])
    out = tmp_path / "eval"
    cpu = ModelLoading(device="cpu")
    result = eval_command(str(model_dir), "knights_knaves", str(data), str(out),
                          sampling=EvalSampling.from_options(n=2, k="1,2", max_new_tokens=10), loading=cpu,
                          progress=False, limit=4)
    payload = read_eval(out)
    # n > 1 defaults
    assert payload["settings"]["temperature"] == 0.6 and payload["settings"]["top_p"] == 0.95
    assert payload["settings"]["data"] == str(data) and payload["settings"]["model"] == str(model_dir)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8
    recomputed = compute_metrics(samples, (1, 2), payload["settings"]["difficulty_keys"])
    assert recomputed == pytest.approx(result.metrics)
    assert result.metrics["by_people/2/n_prompts"] == 2  # knights_knaves' difficulty key
    assert result.samples == []  # streamed to the file, not held
    generated = eval_command(str(model_dir), "knights_knaves", None, limit=3, loading=cpu, progress=False,
                             sampling=EvalSampling.from_options(max_new_tokens=4))
    assert generated.metrics["n_prompts"] == 3 and generated.settings["data"] == "generated (seed 12345)"
    assert len(generated.samples) == 3  # no out directory: the samples come back
    with pytest.raises(ValueError, match="identical"):
        eval_command(str(model_dir), "knights_knaves", str(data),
                     sampling=EvalSampling.from_options(n=2, temperature=0.0), loading=cpu)


def test_eval_cli_takes_the_task_and_its_options_from_a_recipe(model_dir: Path, tmp_path: Path) -> None:
    from rlvr.cli import main
    from rlvr.config import load_config

    recipe = Path(__file__).parents[2] / "recipes" / "kk-tiny.yaml"
    options = load_config(recipe, []).data.task_options
    assert options["system_prompt"] == "" and options["phrasing"] == "terse"  # what the recipe trains on
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(model_dir), "--recipe", str(recipe), "--limit",
                 "2", "--max-new-tokens", "4", "--device", "cpu", "--out", str(out)]) == 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    want = tasks.get("knights_knaves", **options).examples(2, 12345)
    assert [s["prompt"] for s in samples] == [ex.prompt for ex in want]
    assert [s["prompt"] for s in samples] != [ex.prompt
                                              for ex in tasks.get("knights_knaves").examples(2, 12345)]
    assert read_eval(out)["settings"]["max_new_tokens"] == 4
    # --task-option goes over the recipe's; a task other than the recipe's is an error
    assert main(["eval", "--model", str(model_dir), "--recipe", str(recipe), "--limit",
                 "1", "--max-new-tokens", "2", "--device", "cpu", "--task-option", "phrasing=plain", "--out",
                 str(tmp_path / "e2")]) == 0
    with pytest.raises(SystemExit, match="trains knights_knaves"):
        main(["eval", "--model", str(model_dir), "--recipe", str(recipe), "--task", "math"])
    with pytest.raises(SystemExit, match="--task or --recipe"):
        main(["eval", "--model", str(model_dir)])


def test_eval_with_a_recipe_renders_prompts_with_its_prompt_template(model_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`rlvr eval --recipe` prompts a model as the recipe's run does: data.prompt_template becomes the
    tokenizer's chat template (here over the model's own chat template, which would render otherwise)."""
    from rlvr.cli import main
    from rlvr.config import dump_yaml, load_config
    from rlvr.models import load_tokenizer
    from rlvr.rollout.torch_engine import TorchEngine

    template = "User: {question}\nAssistant: <think>"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(dump_yaml(load_config(Path(__file__).parents[2] / "recipes" / "kk-tiny.yaml", [
        'data.prompt_template="User: {question}\\nAssistant: <think>"',
        "data.task_options={response_prefix: '<think>', system_prompt: ''}"])))
    seen: list[list[int]] = []
    generate_ids = TorchEngine.generate

    def recording(self, prompt_ids, params):  # type: ignore[no-untyped-def]
        seen.extend(prompt_ids)
        return generate_ids(self, prompt_ids, params)

    monkeypatch.setattr(TorchEngine, "generate", recording)
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(model_dir), "--recipe", str(recipe), "--limit", "2",
                 "--max-new-tokens", "2", "--device", "cpu", "--out", str(out)]) == 0
    tokenizer = load_tokenizer(model_dir)
    assert tokenizer.chat_template  # the model has its own, which the recipe's run does not use
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    rendered = [template.format(question=s["prompt"]) for s in samples]
    assert seen == [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
    assert read_eval(out)["settings"]["prompt_template"] == template


def test_filter_command_with_a_model(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "pool.jsonl"
    generate("knights_knaves", 4, seed=5, out=data, people=2)
    out = tmp_path / "kept.jsonl"
    # An untrained model solves nothing: with 0% inside the range every problem is kept.
    summary = filter_command(data, out, "knights_knaves", model_dir,
                             sampling=replace(FILTER_SAMPLING, n=2, max_new_tokens=8), keep=(0.0, 0.625),
                             device="cpu")
    assert summary["records_out"] == 4 and len(out.read_text().splitlines()) == 4
    rates = [json.loads(line) for line in sidecar(out, ".pass_rates.jsonl").read_text().splitlines()]
    assert [r["pass_rate"] for r in rates] == [0.0] * 4 and all(r["kept"] for r in rates)
    assert json.loads(sidecar(out, ".filter.json").read_text())["settings"]["model"] == str(model_dir)


def test_report_over_a_real_eval(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "kk.jsonl"
    generate("knights_knaves", 3, seed=1, out=data, people=3)
    run = tmp_path / "run"
    eval_command(str(model_dir), "knights_knaves", str(data), str(run / "eval" / "after_rl_greedy"),
                 sampling=EvalSampling.from_options(max_new_tokens=8), loading=ModelLoading(device="cpu"),
                 progress=False)
    page = write_report(run, png=False).read_text()
    assert "after_rl_greedy" in page and "avg@n by people" in page and "Eval completions" in page
