"""Every command in README.md's bash blocks runs as written, with tiny sizes appended.

The commands run in the README's order in one scratch directory (with recipes/ beside them), in
this process through rlvr.cli.main: later commands read what earlier ones wrote (the default job's
run directory, kk3.jsonl). Shrinking only appends options and overrides (the last value wins), and
a checkpoint path the README names is first checked to exist for the recipe as written, then mapped
to the same checkpoint of the shrunk run. Commands that need a GPU, a cluster or vLLM are listed in
NOT_RUN with the reason; the test asserts that list is exactly the README's commands it did not run,
so a new command cannot go untested. A GPU recipe's `rlvr run` still goes through `rlvr config` with
the same arguments: its keys and values are checked.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from rlvr.cli import main
from rlvr.config import load_config

ROOT = Path(__file__).resolve().parents[2]

# Appended to every recipe command (run, sft, rl, config, noise): minutes of work become seconds.
SHRINK = ["threads=1", "logging.progress=false", "data.train_size=32", "data.eval_size=4", "sft.steps=3",
          "sft.batch_size=4", "sft.data_size=16", "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2",
          "rl.mini_batches=1", "rl.max_new_tokens=8", "eval.max_new_tokens=8", "eval.samples=2",
          "checkpoint.every=1"]
SHRINK_OPTIONS = {  # per command, appended options (argparse keeps the last value of an option)
    ("eval",): ["--limit", "2", "--max-new-tokens", "8", "--device", "cpu"],
    ("data", "gen"): ["--n", "24"],
    ("data", "filter"): ["--n", "2", "--max-new-tokens", "8", "--device", "cpu"],
    ("noise",): ["--groups", "2", "--sft-examples", "2"],
}
RECIPE_COMMANDS = ("run", "sft", "rl", "config", "noise")

# The README's commands this test does not run, and why. Keep it to what needs a GPU, a cluster or
# vLLM (and the test suite itself).
NOT_RUN = {
    "make test": "runs this test suite itself (the target is checked to exist)",
    "make test-vllm": "needs vLLM's CPU build in .venv-vllm (the target is checked to exist)",
    "ray start --head --num-gpus=8": "starts a Ray cluster node with GPUs",
    "ray start --address=HEAD_IP:6379 --num-gpus=8": "joins a Ray cluster",
    "rlvr run recipes/logic-rl-qwen2.5-7b.yaml model.path=/models/Qwen2.5-7B-Instruct-1M "
    "data.train_file=kk-train.jsonl "
    "data.eval_file=kk-test.jsonl": "a 7B model on a GPU (checked by rlvr config)",
    "rlvr run recipes/deepscaler-1.5b.yaml model.path=/models/R1-Distill-Qwen-1.5B "
    "data.train_file=/data/deepscaler.jsonl data.eval_file=/data/aime24.jsonl "
    "distributed=ray ray.address=auto ray.num_rollout_workers=8 ray.gpus_per_worker=1 "
    "ray.rollout_engine=vllm ray.num_learners=8 ray.gpus_per_learner=1 "
    "ray.learner_strategy=fsdp": "16 GPUs on a Ray cluster (checked by rlvr config)",
}
MAKE_TARGETS = {"demo": "rlvr run recipes/kk-tiny.yaml", "test": "pytest", "test-vllm": "pytest"}


def readme_commands(text: str) -> list[str]:
    """The commands of the bash code blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(" ".join(words))
    return commands


def kept_steps(steps: int, every: int, keep_last: int) -> list[int]:
    """The steps whose checkpoints a stage keeps: every `every` steps and the last, newest keep_last."""
    saved = sorted({*range(every, steps + 1, every), steps}) if every else [steps]
    return saved[-keep_last:]


def checkpoint_map(readme_text: str, written: str, shrunk: list[str]) -> dict[str, str]:
    """{README checkpoint path: the shrunk run's checkpoint at the same place from the end}, after
    checking that the recipe as written keeps every checkpoint the README names."""
    full, small = load_config(written), load_config(written, shrunk)
    mapping = {}
    for path, stage, step in set(re.findall(r"(\S*checkpoints/(sft|rl)/step_(\d{6}))", readme_text)):
        section = full.sft if stage == "sft" else full.rl
        kept = kept_steps(section.steps, full.checkpoint.every, full.checkpoint.keep_last)
        assert int(step) in kept, f"README names {path}, but {written} keeps {stage} steps {kept} only"
        small_section = small.sft if stage == "sft" else small.rl
        small_kept = kept_steps(small_section.steps, small.checkpoint.every, small.checkpoint.keep_last)
        mapping[path] = path.replace(f"step_{step}",
                                     f"step_{small_kept[kept.index(int(step)) - len(kept)]:06d}")
    return mapping


def shrunk(words: list[str]) -> list[str]:
    """The arguments of `rlvr ...` with the tiny sizes appended."""
    args = words[1:]
    key = tuple(args[:2]) if args[0] in ("data", "model") else (args[0],)
    extra = list(SHRINK_OPTIONS.get(key, []))
    if args[0] in RECIPE_COMMANDS:
        extra += SHRINK
    return args + extra


def test_kept_steps_are_the_newest_of_every_n_and_the_last():
    assert kept_steps(70, 50, 2) == [50, 70] and kept_steps(500, 50, 2) == [450, 500]
    assert kept_steps(3, 1, 2) == [2, 3] and kept_steps(7, 0, 2) == [7]


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    commands = readme_commands(text)
    assert len(commands) >= 20 and len(set(commands)) == len(commands)
    mapping = checkpoint_map(text, str(ROOT / "recipes" / "kk-tiny.yaml"), SHRINK)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    skipped, ran = [], []
    try:
        for command in commands:
            words = command.split(" ")
            if command in NOT_RUN:
                skipped.append(command)
                if words[0] == "rlvr":  # a GPU run: its arguments still go through `rlvr config`
                    assert main(["config", *words[2:]]) == 0, command
                continue
            if words[0] == "make":
                target = words[1]
                dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True,
                                     text=True, check=True)
                assert MAKE_TARGETS[target] in dry.stdout, (command, dry.stdout)
                if target != "demo":
                    raise AssertionError(f"{command}: neither run nor listed in NOT_RUN")
                words = ["rlvr", *MAKE_TARGETS["demo"].split(" ")[1:]]  # the recipe `make demo` runs
            assert words[0] == "rlvr", f"{command}: neither an rlvr command nor listed in NOT_RUN"
            args = [mapping.get(w, w) for w in shrunk(words)]
            assert main(args) == 0, command
            ran.append(command)
    finally:
        torch.set_num_threads(threads)
    assert sorted(skipped) == sorted(NOT_RUN), "NOT_RUN lists commands the README no longer has"
    run_dir = tmp_path / "runs" / "kk-tiny"
    for stage, steps in (("sft", 3), ("rl", 2)):  # the shrunk default job kept what kept_steps says
        names = sorted(p.name for p in (run_dir / "checkpoints" / stage).iterdir()
                       if not p.name.startswith("."))
        assert names == [f"step_{s:06d}" for s in kept_steps(steps, 1, 2)]
    for path in ("runs/mine/summary.json", "runs/sft/summary.json", "runs/rl/summary.json", "kk3.jsonl",
                 "runs/eval-kk3/metrics.json", "kept.jsonl", "kk3-clean.jsonl", "models/tiny/config.json",
                 "runs/kk-tiny/report.html"):
        assert (tmp_path / path).exists(), path
    assert len(ran) + len(skipped) == len(commands)
