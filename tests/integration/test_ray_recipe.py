"""The default recipe (recipes/kk-tiny.yaml, shrunk) through `rlvr run` on a local Ray cluster:
2 rollout worker actors + 1 learner actor, next to the same recipe in one process (needs `pip install ray`).

What can be asserted after 20 SFT steps and 2 RL steps (the model is far from solving puzzles):
* both runs finish and write the summary.json contract and one metrics.jsonl row per RL step with
  the verl metric names; distributed=ray changes nothing before RL (same SFT start, same before-RL
  evaluation);
* the Ray run learns exactly as the single-process loop would from the same rollouts: its first
  step's rollouts (2 worker slices, each worker's seed) are reproduced in this process from the
  SFT checkpoint, rlvr.trainers.rl.update_policy runs on them, and its statistics and weights equal
  what the learner actor logged and the run checkpointed after step 1.
The length term (DAPO overlong penalty over the whole budget) gives the groups reward variance, so
the update is not a no-op while every answer is still wrong.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("ray") is None:  # an optional extra; a ray that is installed but broken fails
    pytest.skip("ray is not installed (optional extra: pip install 'rlvr[ray]')", allow_module_level=True)
import ray

from rlvr import tasks
from rlvr.config import RunConfig, load_config
from rlvr.distributed.ray_engine import split_evenly, worker_seed
from rlvr.models import eos_token_ids, prompt_ids
from rlvr.rollout import SamplingParams
from rlvr.rollout.torch_engine import TorchEngine
from rlvr.trainers import pipeline
from rlvr.trainers.rl import Learner, ProblemPool, Sampler, collect, knobs_at, update_policy

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "kk-tiny.yaml"
RL_STEPS, SFT_STEPS, WORKERS = 2, 20, 2
SHRINK = [
    "threads=1", f"sft.steps={SFT_STEPS}", "sft.data_size=400", "sft.batch_size=16", "data.train_size=200",
    "data.eval_size=16", f"rl.steps={RL_STEPS}", "rl.prompts_per_step=4",
    "rl.mini_batches=2", "rl.group_size=4", "rl.max_new_tokens=64", "rl.length_reward.kind=overlong",
    "rl.length_reward.cache_tokens=64", "eval.max_new_tokens=64", "eval.samples=2", "logging.progress=false",
    "checkpoint.every=1", "checkpoint.keep_last=2",  # keeps the RL checkpoint after step 1
]
RAY = ["distributed=ray", f"ray.num_rollout_workers={WORKERS}", "ray.num_learners=1"]
SUMMARY_KEYS = {"accuracy_before_rl", "accuracy_after_rl", "accuracy_metric", "eval_size", "eval_difficulty",
                "eval_max_new_tokens", "wall_seconds", "seed", "rl_steps_done", "greedy_accuracy_before_rl",
                "greedy_accuracy_after_rl", "sampled_accuracy_before_rl", "sampled_accuracy_after_rl"}
VERL_NAMES = {"actor/pg_loss", "actor/grad_norm", "actor/lr", "actor/pg_clipfrac", "actor/ppo_kl",
              "actor/entropy", "critic/advantages/mean", "response_length/mean", "response_length/clip_ratio",
              "prompt_length/mean", "timing_s/gen", "timing_s/step"}


@dataclasses.dataclass
class Run:
    config: RunConfig
    summary: dict
    rows: list[dict]

    @property
    def dir(self) -> Path:
        return Path(self.config.out_dir)

    def rl_rows(self) -> list[dict]:
        return [r for r in self.rows if r.get("phase") == "rl"]


def run_recipe(out_dir: Path, model_dir: Path, *extra: str) -> Run:
    config = load_config(str(RECIPE), [f"out_dir={out_dir}", f"model.path={model_dir}", *SHRINK, *extra])
    summary = pipeline.run(config)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return Run(config, summary, rows)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """(one process, Ray) runs of the shrunk recipe. The Ray run starts its own local cluster when none
    is up (on a 2-core machine that cluster must still hold 3 one-CPU actors), and it is shut down here."""
    base = tmp_path_factory.mktemp("kk-tiny")
    started_here = not ray.is_initialized()
    try:
        one = run_recipe(base / "one", tiny_model_dir)
        distributed = run_recipe(base / "ray", tiny_model_dir, *RAY)
        cpus = ray.cluster_resources().get("CPU", 0.0)
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()
    yield one, distributed, cpus


@pytest.mark.slow
def test_both_runs_finish_with_the_summary_and_metrics_contract(runs):
    one, distributed, cpus = runs
    assert cpus >= WORKERS + 1  # the run's 2 workers + 1 learner fit the cluster it used
    for run in (one, distributed):
        assert SUMMARY_KEYS <= set(run.summary)
        assert json.loads((run.dir / "summary.json").read_text()) == run.summary
        assert run.summary["rl_steps_done"] == RL_STEPS and run.summary["eval_size"] == 16
        rows = run.rl_rows()
        assert [r["step"] for r in rows] == list(range(1, RL_STEPS + 1))
        for r in rows:
            assert VERL_NAMES <= set(r), VERL_NAMES - set(r)
            assert all(torch.isfinite(torch.tensor(float(r[k]))) for k in VERL_NAMES)
            assert r["rollout/group_size"] == 4 and r["num_groups"] == 4
        assert (run.dir / "report.html").exists()
    assert set(one.rl_rows()[0]) == set(distributed.rl_rows()[0])


@pytest.mark.slow
def test_distributed_ray_leaves_everything_before_rl_unchanged(runs):
    one, distributed, _ = runs
    sft = f"checkpoints/sft/step_{SFT_STEPS:06d}/model.safetensors"
    assert (one.dir / sft).read_bytes() == (distributed.dir / sft).read_bytes()
    for name in ("before_rl_greedy", "before_rl_sampled"):
        want = json.loads((one.dir / "eval" / name / "metrics.json").read_text())["metrics"]
        assert json.loads((distributed.dir / "eval" / name / "metrics.json").read_text())["metrics"] == want
    assert distributed.summary["accuracy_before_rl"] == one.summary["accuracy_before_rl"]


class WorkerSlices:
    """What RayRolloutEngine computes, in this process: contiguous prompt slices, worker w sampling
    with worker_seed(seed, w), prompt indices shifted back, results in prompt order."""

    def __init__(self, engine: TorchEngine, workers: int) -> None:
        self.engine, self.workers = engine, workers

    def generate(self, prompts, params: SamplingParams):
        out = []
        for w, (lo, hi) in enumerate(split_evenly(len(prompts), self.workers)):
            part = self.engine.generate(prompts[lo:hi],
                                        dataclasses.replace(params, seed=worker_seed(params.seed, w)))
            for r in part:
                r.prompt_index += lo
            out += part
        return out


@pytest.mark.slow
def test_the_learner_actor_step_equals_the_in_process_update_on_the_same_rollouts(runs):
    _, distributed, _ = runs
    config, run_dir, cpu = distributed.config, distributed.dir, torch.device("cpu")
    policy = pipeline.load_policy(run_dir / f"checkpoints/sft/step_{SFT_STEPS:06d}", config.model.impl,
                                  config.model.dtype, cpu)
    task = tasks.get(config.data.task, **config.data.task_options)
    banned = {ex.prompt for ex in pipeline.held_out_examples(config, task, run_dir)}
    pool = ProblemPool(pipeline.training_source(config, task, banned), seed=config.seed)
    eos_ids = eos_token_ids(policy.tokenizer)
    engine = WorkerSlices(TorchEngine(policy.model, eos_token_ids=eos_ids,
                                      pad_token_id=policy.tokenizer.pad_token_id or 0), WORKERS)
    knobs = knobs_at(config.rl, 0, config.data.difficulty)
    sampler = Sampler(engine, policy.tokenizer, task, pool,
                      lambda ex: prompt_ids(policy.tokenizer, task.messages(ex),
                                            task.response_prefix), eos_ids)
    batch, _ = collect(sampler, knobs, config.rl, config.seed, 0)

    logged = distributed.rl_rows()[0]  # what the Ray run's step 0 saw and did
    lengths = [len(c) for c in batch.completion_ids]
    assert sum(lengths) / len(lengths) == pytest.approx(logged["response_length/mean"])
    assert sum(batch.rewards) / len(batch.rewards) == pytest.approx(logged["reward/mean"])
    assert len(set(batch.rewards)) > 1  # reward variance: a real update, not a no-op

    rl = config.rl
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=rl.lr, betas=(0.9, 0.99),
                                  weight_decay=rl.weight_decay)  # as train_rl builds it
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    policy.model.train()
    stats = update_policy(Learner(policy.model, optimizer, cpu, policy.packed), batch, rl, knobs, 0,
                          config.seed)
    assert stats["actor/grad_norm"] > 0
    for key in ("actor/grad_norm", "actor/pg_loss", "actor/entropy", "actor/lr"):
        assert stats[key] == pytest.approx(logged[key], rel=1e-4, abs=1e-6), key

    after_step_1 = pipeline.load_policy(run_dir / "checkpoints/rl/step_000001", config.model.impl,
                                        config.model.dtype, cpu).model.state_dict()
    moved = 0
    for name, value in policy.model.state_dict().items():
        torch.testing.assert_close(after_step_1[name], value, atol=1e-6, rtol=1e-5, msg=name)
        moved += int(not torch.equal(value, before[name]))
    assert moved > 0
