"""SFT from a file (`sft.train_file`) through `rlvr run`: the tiny model learns the file's
conversations, truncation is counted and reported, bad rows stop the run before it writes anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlvr.config import ConfigError, load_config
from rlvr.trainers.pipeline import run

NAMES = ["Zoey", "Oliver", "Ethan", "Ella", "Henry", "Amelia", "Lily", "Noah"]


def sft_rows(n: int, long_every: int) -> list[dict]:
    """Conversations in the three layouts; every long_every-th one has a long answer."""
    rows = []
    for i in range(n):
        a, b = NAMES[i % 8], NAMES[(3 * i + 1) % 8]
        answer = f"{a} is a knight and {b} is a knave."
        if i % long_every == 0:
            answer = " ".join([answer] * 6)
        question = f"Who is who, {a} or {b}?"
        if i % 3 == 0:
            rows.append({"messages": [{"role": "user", "content": question},
                                      {"role": "assistant", "content": answer}]})
        elif i % 3 == 1:
            rows.append({"prompt": question, "completion": answer})
        else:
            rows.append({"conversations": [{"from": "human", "value": question},
                                           {"from": "gpt", "value": answer}]})
    return rows


def overrides(model_dir: Path, out: Path, train_file: Path) -> list[str]:
    return [f"model.path={model_dir}", f"out_dir={out}", "threads=1",
            "logging.progress=false", "rl.enabled=false", f"sft.train_file={train_file}", "sft.steps=30",
            "sft.batch_size=8", "sft.warmup_steps=2", "sft.max_seq_len=48", "data.eval_size=4",
            "eval.samples=0", "eval.max_new_tokens=8", "checkpoint.every=0"]


def test_the_tiny_model_learns_a_file_and_truncation_is_reported(tiny_model_dir, tmp_path):
    train_file = tmp_path / "sft.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in sft_rows(32, long_every=4)))
    out = tmp_path / "run"
    summary = run(load_config("recipes/kk-tiny.yaml", overrides(tiny_model_dir, out, train_file)))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["sft/loss"] for r in rows if r["phase"] == "sft"]
    assert len(losses) == 30
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    # the 8 long answers (~80 tokens) pass sft.max_seq_len=48, the others (~30 tokens) do not
    assert summary["sft_truncated_fraction"] == 8 / 32 and summary["sft_max_seq_len"] == 48
    assert all(0 <= r["sft/truncated_fraction"] <= 1 for r in rows if r["phase"] == "sft")
    assert any(r["sft/truncated_fraction"] > 0 for r in rows if r["phase"] == "sft")


def test_a_bad_sft_file_stops_the_run_before_it_writes_anything(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(sft_rows(1, 9)[0]) + "\n" + '{"prompt": "x", "completion": }\n')
    no_layout = tmp_path / "rows.jsonl"
    no_layout.write_text(json.dumps(sft_rows(1, 9)[0]) + "\n"
                         + json.dumps({"quiz": "x", "solution": [1]}) + "\n")
    cases = [
        (bad_json, r"^config key sft.train_file: .*bad.jsonl:2: invalid JSON: .*\(column 31\)"),
        (no_layout,
         r"^config key sft.train_file: .*rows.jsonl:2: expected `messages` .*; the row has the keys "
         r"quiz, solution"),
        (tmp_path / "missing.jsonl", r"^config key sft.train_file: .*missing.jsonl"),
    ]
    for path, message in cases:
        with pytest.raises(ConfigError, match=message):
            run(load_config("recipes/kk-tiny.yaml", overrides(tiny_model_dir, out, path)))
        assert not out.exists(), path
