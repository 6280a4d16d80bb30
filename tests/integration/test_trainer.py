"""The pipeline end to end on a tiny model: smoke, determinism, crash and resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlvr.config import load_config
from rlvr.trainers.pipeline import RunDirError, run

TIMING = ("timing_s/", "perf/", "sft/tokens_per_s")


def small_overrides(model_dir: Path, out_dir: Path, rl_steps: int = 2) -> list[str]:
    return [
        f"model.path={model_dir}", f"out_dir={out_dir}", "threads=1", "logging.progress=false",
        "data.train_size=200", "data.eval_size=8", "sft.steps=4", "sft.batch_size=8", "sft.data_size=64",
        "sft.warmup_steps=1", f"rl.steps={rl_steps}", "rl.prompts_per_step=4",
        "rl.mini_batches=2", "rl.group_size=4", "rl.max_new_tokens=24", "eval.max_new_tokens=24",
        "eval.samples=2", "checkpoint.every=2", "logging.samples_every=1",
    ]


def rl_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in rec.items() if not k.startswith(TIMING)} for rec in lines
            if rec["phase"] == "rl"]


def eval_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in rec.items() if not k.startswith(TIMING)} for rec in lines
            if rec["phase"] == "rl_eval"]


def test_pipeline_smoke_changes_weights_and_writes_the_run_dir(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    # An SFT of 4 steps earns no reward, so GRPO advantages are all 0; the KL (to a reference model)
    # and entropy terms still move the weights, which exercises that path of the update.
    overrides = small_overrides(tiny_model_dir, out) + ["rl.kl_coef=0.05", "rl.entropy_coef=0.01",
                                                        "sft.eval_every=2", "eval.every=1"]
    summary = run(load_config("recipes/kk-tiny.yaml", overrides))
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.html", "data/eval.jsonl",
                 "eval/before_rl_greedy/metrics.json", "eval/after_rl_sampled/samples.jsonl"):
        assert (out / name).exists(), name
    assert summary["eval_size"] == 8 and summary["eval_difficulty"] == {"people": [3]}
    assert 0.0 <= summary["accuracy_after_rl"] <= 1.0 and "temperature" in summary["accuracy_metric"]
    lines = rl_lines(out)
    assert [rec["step"] for rec in lines] == [1, 2]  # step N: the row of the N-th update (1..N)
    curve = eval_lines(out)  # the learning curve (eval.every=1): before RL, after each step
    assert [rec["step"] for rec in curve] == [0, 1, 2]
    assert all(0.0 <= rec["eval/sampled_accuracy"] <= 1.0 and rec["eval/samples"] == 8 * 2 for rec in curve)
    raw = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [("timing_s/eval" in rec) for rec in raw if rec["phase"] == "rl"] == [True, True]
    assert summary["placebo_control"] is False
    sft_lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"sft"' in x]
    assert [("sft_eval/greedy_accuracy" in rec) for rec in sft_lines] == [False, True, False, False]
    for rec in lines:
        for key in ("reward/mean", "accuracy", "actor/pg_loss", "actor/grad_norm",
                    "actor/entropy", "actor/kl_loss", "response_length/mean",
                    "all_correct_ratio", "all_wrong_ratio"):
            assert key in rec and rec[key] == rec[key] and abs(rec[key]) != float("inf"), key
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    sft = load_file(str(out / "checkpoints/sft/step_000004/model.safetensors"))
    after = load_file(str(out / "checkpoints/rl/step_000002/model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(before[name], sft[name]), "SFT did not change the weights"
    assert not torch.equal(sft[name], after[name]), "RL did not change the weights"
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000001.jsonl", "step_000002.jsonl"]
    generation = json.loads((out / "checkpoints/rl/step_000002/generation_config.json").read_text())
    from rlvr.models import eos_token_ids, load_tokenizer

    assert sorted(generation["eos_token_id"]) == sorted(eos_token_ids(load_tokenizer(tiny_model_dir)))


def test_same_seed_same_metrics(tiny_model_dir, tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    run(load_config("recipes/kk-tiny.yaml", small_overrides(tiny_model_dir, a)))
    run(load_config("recipes/kk-tiny.yaml", small_overrides(tiny_model_dir, b)))
    assert rl_lines(a) == rl_lines(b)
    assert ((a / "eval/after_rl_sampled/samples.jsonl").read_text()
            == (b / "eval/after_rl_sampled/samples.jsonl").read_text())


def test_same_seed_same_metrics_with_engine_and_update_workers(tiny_model_dir, tmp_path):
    """Two decoding workers and two gradient workers (micro-batches small enough to split): the
    threads' results are combined in a fixed order, so a rerun gives the same metrics."""
    extra = ["model.engine_workers=2", "rl.update_workers=2", "rl.micro_batch_tokens=24"]
    a = tmp_path / "a"
    b = tmp_path / "b"
    run(load_config("recipes/kk-tiny.yaml", [*small_overrides(tiny_model_dir, a), *extra]))
    run(load_config("recipes/kk-tiny.yaml", [*small_overrides(tiny_model_dir, b), *extra]))
    assert rl_lines(a) == rl_lines(b)
    assert ((a / "eval/after_rl_sampled/samples.jsonl").read_text()
            == (b / "eval/after_rl_sampled/samples.jsonl").read_text())


@pytest.mark.slow
def test_sigkill_mid_run_resumes_to_the_same_metrics(tiny_model_dir, tmp_path):
    steps = 6
    reference = tmp_path / "reference"
    run(load_config("recipes/kk-tiny.yaml", small_overrides(tiny_model_dir, reference, rl_steps=steps)))

    crashed = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "rlvr.cli", "run", "recipes/kk-tiny.yaml",
           *small_overrides(tiny_model_dir, crashed, rl_steps=steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        metrics = crashed / "metrics.jsonl"
        if metrics.exists() and sum('"phase": "rl"' in x for x in metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (crashed / "summary.json").exists()
    assert len(rl_lines(crashed)) < steps
    run(load_config("recipes/kk-tiny.yaml", small_overrides(tiny_model_dir, crashed, rl_steps=steps)))
    assert rl_lines(crashed) == rl_lines(reference)
    assert json.loads((crashed / "summary.json").read_text())["accuracy_after_rl"] == \
        json.loads((reference / "summary.json").read_text())["accuracy_after_rl"]


def test_a_placebo_control_run_is_marked_and_resumes_to_the_same_metrics(tiny_model_dir, tmp_path):
    """rl.shuffle_rewards with the learning curve, the high-entropy token selection and tree sampling
    (forks credited by the prefix-tree estimator) on: a run cut
    between checkpoints (its newest checkpoint, summary and final evals gone, as after a kill)
    resumes to the uninterrupted run's metrics, curve included; summary.json and report.html say it
    is a control."""
    # A 4-step SFT earns no answer reward; the overlong length penalty gives every group varied
    # rewards, so the permutation changes the update.
    extra = ["rl.shuffle_rewards=true", "eval.every=2", "eval.curve_size=4", "rl.length_reward.kind=overlong",
             "rl.length_reward.cache_tokens=20", "rl.top_entropy_fraction=0.2", "rl.fork_points=1",
             "rl.advantage=prefix_tree"]
    reference, cut = tmp_path / "reference", tmp_path / "cut"
    summary = run(load_config("recipes/kk-tiny.yaml", small_overrides(tiny_model_dir, reference, 4) + extra))
    assert summary["placebo_control"] is True
    assert "Placebo control run" in (reference / "report.html").read_text()
    assert [rec["step"] for rec in eval_lines(reference)] == [0, 2, 4]
    run(load_config("recipes/kk-tiny.yaml", small_overrides(tiny_model_dir, cut, 4) + extra))
    shutil.rmtree(cut / "checkpoints/rl/step_000004")
    for name in ("summary.json", "eval/after_rl_greedy", "eval/after_rl_sampled"):
        shutil.rmtree(cut / name) if (cut / name).is_dir() else (cut / name).unlink()
    with open(cut / "metrics.jsonl", "a") as f:  # a curve point logged before a checkpoint that never came
        f.write(json.dumps({"phase": "rl_eval", "step": 3, "eval/sampled_accuracy": 9.0}) + "\n")
    run(load_config("recipes/kk-tiny.yaml", small_overrides(tiny_model_dir, cut, 4) + extra))
    assert rl_lines(cut) == rl_lines(reference)
    assert eval_lines(cut) == eval_lines(reference)
    assert json.loads((cut / "summary.json").read_text())["accuracy_after_rl"] == summary["accuracy_after_rl"]
    # The control differs from the real run only through the permuted rewards: the same first batch,
    # another update.
    real = tmp_path / "real"
    run(load_config("recipes/kk-tiny.yaml", small_overrides(tiny_model_dir, real, 4) + extra[1:]))
    control_lines, real_lines = rl_lines(reference), rl_lines(real)
    assert (control_lines[0]["reward/std"] > 0
            and control_lines[0]["reward/mean"] == real_lines[0]["reward/mean"])
    assert control_lines[0]["actor/pg_loss"] != real_lines[0]["actor/pg_loss"]
    assert all(line["actor/pg_entropy_threshold"] > 0 for line in control_lines + real_lines)
    assert all(0 < line["rollout/reused_token_ratio"] < 1 for line in control_lines + real_lines)


def test_a_reference_synced_every_k_steps_is_checkpointed_and_resumes(tiny_model_dir, tmp_path):
    """rl.ref_sync_every=2, alpha 0.5: the step-2 checkpoint's reference is the mean of the SFT
    weights and the step-2 policy, and a run cut after it resumes to the uninterrupted run's
    metrics (the KL terms of steps 3-4 are taken against the synced reference)."""
    extra = ["rl.kl_coef=0.05", "rl.ref_sync_every=2", "rl.ref_sync_alpha=0.5",
             "rl.length_reward.kind=overlong", "rl.length_reward.cache_tokens=20"]
    reference, cut = tmp_path / "reference", tmp_path / "cut"
    run(load_config("recipes/kk-tiny.yaml", small_overrides(tiny_model_dir, reference, 4) + extra))
    lines = rl_lines(reference)
    assert all(rec["actor/kl_loss"] > 0 for rec in lines[1:])
    state = torch.load(reference / "checkpoints/rl/step_000002/trainer_state.pt", weights_only=False)
    sft = load_file(reference / "checkpoints/sft/step_000004/model.safetensors")
    policy = load_file(reference / "checkpoints/rl/step_000002/model.safetensors")
    shared = set(sft) & set(policy) & set(state["reference"])
    assert shared and any(not torch.equal(sft[k], policy[k]) for k in shared)
    for k in shared:
        torch.testing.assert_close(state["reference"][k], 0.5 * (sft[k] + policy[k]))
    run(load_config("recipes/kk-tiny.yaml", small_overrides(tiny_model_dir, cut, 4) + extra))
    shutil.rmtree(cut / "checkpoints/rl/step_000004")
    for name in ("summary.json", "eval/after_rl_greedy", "eval/after_rl_sampled"):
        shutil.rmtree(cut / name) if (cut / name).is_dir() else (cut / name).unlink()
    run(load_config("recipes/kk-tiny.yaml", small_overrides(tiny_model_dir, cut, 4) + extra))
    assert rl_lines(cut) == lines


def test_the_learning_curve_does_not_change_the_rl_metrics(tiny_model_dir, tmp_path):
    # varied rewards: real updates
    extra = ["rl.length_reward.kind=overlong", "rl.length_reward.cache_tokens=20"]
    off, on = tmp_path / "off", tmp_path / "on"
    run(load_config("recipes/kk-tiny.yaml",
                    small_overrides(tiny_model_dir, off, 3) + extra + ["eval.every=0"]))
    run(load_config("recipes/kk-tiny.yaml",
                    small_overrides(tiny_model_dir, on, 3) + extra + ["eval.every=1"]))
    assert eval_lines(off) == [] and [rec["step"] for rec in eval_lines(on)] == [0, 1, 2, 3]
    assert rl_lines(off) == rl_lines(on)


def test_run_dir_with_a_different_run_is_refused(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    overrides = small_overrides(tiny_model_dir, out) + ["sft.enabled=false", "rl.steps=0", "eval.samples=0"]
    run(load_config("recipes/kk-tiny.yaml", overrides))
    with pytest.raises(RunDirError, match="already holds a different run"):
        run(load_config("recipes/kk-tiny.yaml", overrides + ["seed=1"]))


def test_bad_inputs_fail_with_one_clear_message(tiny_model_dir, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "rlvr.cli", *args], capture_output=True, text=True)

    result = cli("run", "recipes/kk-tiny.yaml", "rl.lrr=1")
    assert (result.returncode == 2 and "did you mean 'rl.lr'" in result.stderr
            and "Traceback" not in result.stderr)
    result = cli("run", "recipes/kk-tiny.yaml", f"model.path={tmp_path / 'missing'}",
                 f"out_dir={tmp_path / 'x'}")
    assert result.returncode == 2 and "model.path" in result.stderr and "Traceback" not in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"quiz": "x"}\nnot json\n')
    result = cli("run", "recipes/kk-tiny.yaml", f"model.path={tiny_model_dir}", f"out_dir={tmp_path / 'y'}",
                 f"data.eval_file={bad}")
    assert result.returncode == 2 and "bad.jsonl:" in result.stderr and "Traceback" not in result.stderr


def test_checkpoint_from_another_model_is_refused(tiny_model_dir, tmp_path):
    from rlvr.models import init_model
    from rlvr.trainers.checkpoint import CheckpointError, check_compatible

    other = init_model(tmp_path / "mini", preset="mini", tasks=("knights_knaves",), seed=0)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="from another model: hidden_size"):
        check_compatible(other, config)


def test_bad_input_files_are_refused_before_anything_is_written(tiny_model_dir, tmp_path):
    from rlvr.config import ConfigError

    out = tmp_path / "run"
    base = small_overrides(tiny_model_dir, out)
    good = tmp_path / "good.jsonl"
    subprocess.run([sys.executable, "-m", "rlvr.cli", "data", "gen", "--task",
                    "knights_knaves", "--people", "2", "--n", "5", "--out", str(good)], check=True,
                   capture_output=True)
    rows = good.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(rows[0] + "\n" + '{"quiz": "x",, "solution": 1}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cases = [
        ([f"data.train_file={bad}"], r"^config key data.train_file: .*bad.jsonl:2: invalid JSON: "
                                     r".*\(column 14\)"),
        ([f"data.train_file={empty}"], r"config key data.train_file: .*empty.jsonl holds no problems"),
        ([f"data.eval_file={empty}"], r"config key data.eval_file: .*empty.jsonl holds no problems"),
        ([f"data.train_file={good}"],
         r"config key data.train_file: .*good.jsonl has no problem of the RL difficulty "
         r"\{'people': 3\} \(data.difficulty\)"),
        ([f"model.path={tmp_path / 'missing'}"], r"config key model.path: .*missing is not a directory"),
        (["data.task_options={phrasing: nope}"], r"config key data.task_options: "),
        (["data.require_files=true"], r"config key data.train_file: this recipe trains on its data files"),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            run(load_config("recipes/kk-tiny.yaml", base + extra))
        assert not out.exists(), extra  # nothing written: the corrected command is not "a different run"
    run(load_config("recipes/kk-tiny.yaml", base + [f"data.train_file={good}", "data.difficulty={people: 2}",
                                                       "rl.steps=1"]))


def test_resume_names_differing_keys_ignores_free_ones_and_keeps_rows_and_time(tiny_model_dir, tmp_path,
                                                                               capsys):
    out = tmp_path / "run"
    base = small_overrides(tiny_model_dir, out)
    first = run(load_config("recipes/kk-tiny.yaml", base))
    reference = rl_lines(out)
    assert first["invocations"] == 1 and first["wall_seconds"] == first["wall_seconds_last_invocation"] > 0
    with pytest.raises(RunDirError,
                       match=r"different run: rl.lr \(5e-05 there, 0.001 here\); seed \(0 there, 1 here\)"):
        run(load_config("recipes/kk-tiny.yaml", base + ["seed=1", "rl.lr=1e-3"]))
    # Killed after logging RL rows but before its first RL checkpoint: the rows are rewritten, not repeated.
    import shutil

    shutil.rmtree(out / "checkpoints" / "rl")
    for name in ("after_rl_greedy", "after_rl_sampled"):
        shutil.rmtree(out / "eval" / name)
    capsys.readouterr()
    again = run(load_config("recipes/kk-tiny.yaml", base + ["threads=2", "logging.samples_every=0"]))
    assert rl_lines(out) == reference
    assert again["invocations"] == 2 and again["wall_seconds"] > again["wall_seconds_last_invocation"]
    assert again["wall_seconds"] >= first["wall_seconds"] + again["wall_seconds_last_invocation"] - 0.15
    printed = capsys.readouterr().out
    assert ("resuming the run in" in printed and "resuming SFT from" in printed
            and "resuming RL" not in printed)


def test_sft_stage_summary_and_interrupt_message(tiny_model_dir, tmp_path):
    from rlvr.cli import resume_point

    out = tmp_path / "run"
    assert "no checkpoint was written yet" in resume_point(out)
    summary = run(load_config("recipes/kk-tiny.yaml",
                              small_overrides(tiny_model_dir, out) + ["rl.enabled=false"]))
    assert summary["stage"] == "after_sft" and "accuracy_before_rl" not in summary
    assert 0 <= summary["accuracy"] <= 1 and summary["sft_steps"] == 4
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["after_sft_greedy", "after_sft_sampled"]
    assert resume_point(out).endswith("checkpoints/sft/step_000004")


def test_ppo_with_a_critic_resumes_to_the_uninterrupted_run(tiny_model_dir, tmp_path):
    """kk-tiny-ppo (GAE from a value model, critic warm-up): a run cut after its step-2 checkpoint
    resumes to the uninterrupted run's metrics, critic metrics included; the checkpoint holds the
    critic (value head and its optimizer) next to the actor."""
    # the overlong length penalty gives varied rewards, so actor and critic both take real updates
    extra = ["critic.warmup_steps=1", "rl.length_reward.kind=overlong", "rl.length_reward.cache_tokens=20"]
    reference, cut = tmp_path / "reference", tmp_path / "cut"
    run(load_config("recipes/kk-tiny-ppo.yaml", small_overrides(tiny_model_dir, reference, 4) + extra))
    lines = rl_lines(reference)
    assert [rec["step"] for rec in lines] == [1, 2, 3, 4]
    assert "actor/pg_loss" not in lines[0] and "actor/pg_loss" in lines[1]  # step 1: critic only
    assert all(rec["critic/grad_norm"] > 0 for rec in lines)
    # explained variance is undefined (not logged) on a batch whose returns are all equal
    assert all(("critic/vf_explained_var" in rec) == (rec["reward/std"] > 0) for rec in lines)
    run(load_config("recipes/kk-tiny-ppo.yaml", small_overrides(tiny_model_dir, cut, 4) + extra))
    state = torch.load(cut / "checkpoints/rl/step_000002/trainer_state.pt", weights_only=False)
    assert "critic" in state, sorted(state)
    shutil.rmtree(cut / "checkpoints/rl/step_000004")
    for name in ("summary.json", "eval/after_rl_greedy", "eval/after_rl_sampled"):
        shutil.rmtree(cut / name) if (cut / name).is_dir() else (cut / name).unlink()
    run(load_config("recipes/kk-tiny-ppo.yaml", small_overrides(tiny_model_dir, cut, 4) + extra))
    assert rl_lines(cut) == lines
