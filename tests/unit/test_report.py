"""The run report renders from a synthetic run directory, self-contained, with what the run has."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rlvr.evaluation import EvalResult, compute_metrics, write_eval, write_report
from rlvr.evaluation.report import (
    Panel,
    eval_table,
    format_number,
    nice_ticks,
    pick_samples,
    read_metrics,
    stage_markers,
    svg_line_chart,
)


def _eval_samples(accuracy_by_people: dict[int, float], n_per_size: int = 4) -> list[dict]:
    samples = []
    index = 0
    for people, accuracy in accuracy_by_people.items():
        for j in range(n_per_size):
            correct = j < round(accuracy * n_per_size)
            samples.append({
                "prompt_index": index, "sample_index": 0, "metadata": {"people": people, "source": "test"},
                "prompt": f"puzzle {index}",
                "completion": f"<think>people {people}</think><answer>{correct}</answer>",
                "extracted": str(correct), "reward": float(correct), "correct": correct, "format_ok": True,
                "parts": {}, "n_tokens": 10 + index, "finish_reason": "stop",
            })
            index += 1
    return samples


def make_run(run: Path) -> Path:
    """A run directory as the trainers write it, with one broken metrics line."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text("name: kk-demo\ntask:\n  name: knights_knaves\nrl:\n  lr: 0.0001  # "
                                     "RESOLVED-CONFIG\n")
    lines = []
    for step in range(5):
        lines.append(json.dumps({"step": step, "phase": "sft", "sft/loss": 2.0 / (step + 1), "sft/lr": 1e-3,
                                 "sft/tokens_per_s": 14000.0}))
    for step in range(30):
        lines.append(json.dumps({
            "step": step, "phase": "rl", "reward/mean": step / 30, "reward/std": 0.3, "accuracy": step / 40,
            "format_error_ratio": 0.1, "all_correct_ratio": step / 60, "all_wrong_ratio": 1 - step / 30,
            "response_length/mean": 80.0 + step, "response_length/min": 40.0, "response_length/max": 200.0,
            "response_length/clip_ratio": 0.05, "actor/entropy": 1.0 - step / 60,
            "actor/kl_loss": 0.001 * step, "actor/pg_clipfrac": 0.02,
            "actor/lr": 1e-4 * min(1.0, (step + 1) / 5), "rollout/temperature": 1.0,
            "rollout/max_new_tokens": 256 if step < 20 else 512, "curriculum/stage": 1 if step < 10 else 2,
            "timing_s/gen": 1.5, "timing_s/update": 0.5, "timing_s/step": 2.1,
            "perf/gen_tokens_per_s": 9000.0, "custom/thing": float(step),
            "actor/grad_norm": float("nan") if step == 3 else 1.0,
        }))
    lines.insert(12, '{"step": 7, "phase": "rl", "reward/mean": 0.')  # a crash mid-write
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "samples").mkdir()
    rl_samples = [
        {"step": 29, "prompt": "p", "completion": "BEST-COMPLETION", "reward": 1.0,
         "correct": True, "n_tokens": 30},
        {"step": 29, "prompt": "p",
         "completion": "WORST-COMPLETION <script>alert(1)</script>", "reward": -1.0,
         "correct": False, "n_tokens": 20},
        {"step": 29, "prompt": "p", "completion": "LONGEST-COMPLETION " * 20, "reward": 0.0, "n_tokens": 400},
    ]
    old_sample = {**rl_samples[0], "completion": "OLD"}
    (run / "samples" / "step_000028.jsonl").write_text(json.dumps(old_sample) + "\n")
    (run / "samples" / "step_000029.jsonl").write_text("".join(json.dumps(s) + "\n" for s in rl_samples))
    for name, accuracy in (("before_rl_greedy", {3: 0.25, 4: 0.5}), ("after_rl_greedy", {3: 0.75, 4: 0.5})):
        samples = _eval_samples(accuracy)
        settings = {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 256, "seed": 0, "task": "kk"}
        write_eval(EvalResult(compute_metrics(samples, difficulty_keys=("people",)), samples, settings, {}),
                   run / "eval" / name)
    (run / "summary.json").write_text(json.dumps({"accuracy_greedy_after": 0.625,
                                                  "wall_s": {"sft": 10, "rl": 20}}))
    return run


def _svgs(page: str) -> list[str]:
    return re.findall(r"<svg.*?</svg>", page, flags=re.DOTALL)


def test_report_renders_a_synthetic_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    path = write_report(run)
    assert path == run / "report.html"
    page = path.read_text(encoding="utf-8")
    # Self-contained: nothing fetched, nothing executed.
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|\bhref=|url\(|https?:", page,
                         flags=re.IGNORECASE)
    # Curves present in metrics.jsonl are drawn, with stage boundaries; absent ones are not.
    for title in ("Reward", "Accuracy and format errors", "Groups all correct / all wrong",
                  "Response length (tokens)", "Entropy", "KL", "Learning rate", "Time per phase (s)",
                  "SFT loss", "Gradient norm"):
        assert f'aria-label="{title}"' in page, title
    assert 'aria-label="Policy loss"' not in page
    assert "stage 2" in page and "context 512" in page
    assert "custom/… (rl)" in page  # keys outside the known panels are still plotted
    # Every chart is well-formed SVG.
    svgs = _svgs(page)
    assert len(svgs) >= 12
    for svg in svgs:
        ET.fromstring(svg)
    # Time per phase table, evals before / after with a signed change per difficulty.
    assert "Time per phase (RL)" in page and "share of step" in page
    assert "avg@n by people" in page and "+0.500" in page and "Δ greedy" in page
    assert "0.375 → 0.625" in page
    # Samples: best / worst / longest of the latest step, escaped.
    assert "BEST-COMPLETION" in page and "LONGEST-COMPLETION" in page and "OLD" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # Config, summary, and the broken line named.
    assert "RESOLVED-CONFIG" in page and "accuracy_greedy_after" in page and "wall_s.rl" in page
    assert re.search(r"metrics\.jsonl:13: skipped", page)
    assert not list(run.glob(".*.tmp"))


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_report_writes_png_plots(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    write_report(run)
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert "reward.png" in pngs and "sft_loss.png" in pngs and "entropy.png" in pngs
    assert (run / "plots" / "reward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_report(run, png=False)  # no PNGs asked: the HTML alone


def test_report_of_an_empty_or_missing_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    page = write_report(tmp_path / "empty").read_text()
    assert "no metrics.jsonl" in page
    with pytest.raises(FileNotFoundError, match="nowhere"):
        write_report(tmp_path / "nowhere")


def test_read_metrics_keeps_the_last_line_per_step(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "phase": "rl", "a": 1}\n{"step": 1, "phase": "rl", "a": 2}\n'
                    '{"step": 1, "phase": "rl", "a": 3}\n[1, 2]\n\n{"step": 0, "phase": "sft", "b": 1}\n')
    warnings: list[str] = []
    rows = read_metrics(path, warnings)
    assert [r["a"] for r in rows["rl"]] == [1, 3] and len(rows["sft"]) == 1
    assert warnings == [f"{path}:4: skipped, expected an object with a numeric 'step'"]


def test_stage_markers() -> None:
    rows = [{"step": s, "curriculum/stage": 1 + s // 3, "rollout/max_new_tokens": 256.0 if s < 4 else 512.0}
            for s in range(7)]
    assert stage_markers(rows) == [(3.0, "stage 2"), (4.0, "context 512"), (6.0, "stage 3")]


def test_chart_helpers() -> None:
    assert [round(t, 9) for t in nice_ticks(0.0, 1.0)] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert [round(t, 9) for t in nice_ticks(3, 97)] == [20, 40, 60, 80]
    # range 1.2e-5 / 5 = 2.4e-6 -> step 5e-6; ticks start at the first multiple inside the range
    assert [round(t, 12) for t in nice_ticks(-2e-6, 1e-5)] == [0.0, 5e-6, 1e-5]
    assert nice_ticks(-1.0, 1.0) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert (format_number(1e-6) == "1.00e-6" and format_number(0.12345) == "0.123"
            and format_number(12.0) == "12")
    assert format_number(float("nan")) == "–"
    svg = svg_line_chart(Panel("t", [("a", [0, 1, 2, 3], [1.0, math.nan, 2.0, 3.0]), ("b", [5], [1.0])]))
    ET.fromstring(svg)
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 2  # a NaN breaks the line


def test_pick_samples() -> None:
    samples = [{"reward": 1.0, "n_tokens": 50}, {"reward": 1.0, "n_tokens": 10},
               {"reward": 0.0, "n_tokens": 5}, {"reward": 0.5, "n_tokens": 99}]
    picks = {label: s["n_tokens"] for label, s in pick_samples(samples)}
    assert picks == {"best": 10, "worst": 5, "longest": 99}
    assert pick_samples([{"text": "no reward"}]) == []
    same = [{"reward": 0.0, "n_tokens": 7}, {"reward": 0.0, "n_tokens": 3}]
    assert [(label, s["n_tokens"]) for label, s in pick_samples(same)] == [
        ("shortest (all rewards equal)", 3), ("longest (all rewards equal)", 7)]


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="no headless chromium on PATH")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    path = write_report(run, png=False)
    browser = next(shutil.which(b)
                   for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b))
    result = subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "<svg" in dom and "BEST-COMPLETION" in dom and "avg@n by people" in dom


def test_report_marks_a_placebo_control_and_draws_the_learning_curve(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    page = write_report(run, png=False).read_text(encoding="utf-8")
    assert "Placebo control" not in page and "Learning curve" not in page
    with open(run / "metrics.jsonl", "a") as f:
        for done in (0, 10, 20, 30):
            f.write(json.dumps({"phase": "rl_eval", "step": done, "eval/sampled_accuracy": 0.2 + done / 100,
                                "timing_s/eval": 1.0}) + "\n")
    (run / "config.yaml").write_text("rl:\n  shuffle_rewards: true\n")  # a run in progress: no summary yet
    (run / "summary.json").unlink()
    page = write_report(run, png=False).read_text(encoding="utf-8")
    assert "Placebo control run" in page
    curve = next(svg for svg in _svgs(page) if 'aria-label="Learning curve' in svg)
    assert "held-out accuracy (in-loop eval) (0.5)" in curve and "training reward/mean" in curve
    (run / "summary.json").write_text(json.dumps({"placebo_control": False}))
    assert "Placebo control run" not in write_report(run, png=False).read_text(encoding="utf-8")


def test_report_title_is_the_recipe_name(tmp_path: Path) -> None:
    run = make_run(tmp_path / "some-dir")
    page = write_report(run, png=False).read_text(encoding="utf-8")
    assert "<title>kk-demo: rlvr run report</title>" in page and "<h1>kk-demo: rlvr run report</h1>" in page
    (run / "config.yaml").write_text("rl:\n  lr: 0.1\n")  # no name: the directory's
    assert "<h1>some-dir: rlvr run report</h1>" in write_report(run, png=False).read_text(encoding="utf-8")


def _x_ticks(svg: str) -> list[str]:
    return re.findall(r'class="tick xt">([^<]*)<', svg)


def test_step_axes_have_whole_number_ticks_on_short_runs() -> None:
    for xs in ([1, 2], [1, 2, 3], [0], [1, 2, 3, 4, 5, 6, 7]):
        ticks = _x_ticks(svg_line_chart(Panel("t", [("a", xs, [float(x) for x in xs])])))
        assert ticks and all(re.fullmatch(r"-?\d+", t) for t in ticks), (xs, ticks)
    assert _x_ticks(svg_line_chart(Panel("t", [("a", [1, 2], [0.0, 1.0])]))) == ["1", "2"]
    assert nice_ticks(1, 2, integer=True) == [1, 2] and nice_ticks(0, 1000, integer=True)[:2] == [0, 200]
    assert nice_ticks(1, 2) != nice_ticks(1, 2, integer=True)  # a plain axis keeps its fractions


def test_evaluations_table_has_one_column_per_metric() -> None:
    evals = {
        "before_rl_sampled": {"metrics": {"avg@n": 0.25, "pass@1": 0.25, "pass@4": 0.5, "maj@4": 0.3,
                                          "n_prompts": 8, "truncation_rate": 0.1}, "settings": {"n": 4}},
        "after_rl_greedy": {"metrics": {"avg@n": 0.75, "pass@1": 0.75, "n_prompts": 8}, "settings": {"n": 1}},
    }
    table = eval_table(evals)
    header = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    assert header == ["eval", "prompts", "avg@n", "pass@1", "pass@4", "maj@4", "truncated", "format errors",
                      "length", "reflection words", "settings"]
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)[1:]]
    assert rows[0][:7] == ["before_rl_sampled", "8", "0.25", "0.25", "0.5", "0.3", "0.1"]
    assert rows[1][:6] == ["after_rl_greedy", "8", "0.75", "0.75", "–", "–"]  # metrics it lacks: a dash


def test_charts_fill_the_page_width(tmp_path: Path) -> None:
    page = write_report(make_run(tmp_path / "run"), png=False).read_text(encoding="utf-8")
    svgs = _svgs(page)
    assert svgs and all('width="100%"' in svg.split(">", 1)[0] for svg in svgs)
    assert not any(re.search(r'<svg[^>]*\bheight="', svg) for svg in svgs)  # height follows the viewBox
    assert "grid-template-columns:repeat(auto-fill" in page
    bars = re.search(r"<div class=grid-charts>(<svg[^>]*aria-label=\"avg@n by people\")", page)
    assert bars is not None  # the difficulty bar chart sits in the page's chart grid too
