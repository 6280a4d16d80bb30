"""Ray backend on a local cluster: rollout worker actors and learner rank actors (needs `pip install ray`).

The RL loop (rlvr.trainers.rl.train_rl) runs unchanged with a RayRolloutEngine of 2 workers next to
a learner; it must learn a toy task like the single-process run. The engine must return exactly
what one TorchEngine per worker slice returns, in the caller's order; a learner actor's update must
equal the in-process update.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("ray") is None:  # an optional extra; a ray that is installed but broken fails
    pytest.skip("ray is not installed (optional extra: pip install 'rlvr[ray]')", allow_module_level=True)
import ray

from rlvr.config import CheckpointConfig, LoggingConfig, RayConfig, RLConfig
from rlvr.distributed import describe_placement, make_engine, make_learner, reserved_resources
from rlvr.distributed.ray_engine import RayRolloutEngine, split_evenly, worker_seed
from rlvr.distributed.ray_learner import RayLearnerGroup
from rlvr.models.native import NativeCausalLM
from rlvr.rollout import SamplingParams
from rlvr.rollout.torch_engine import TorchEngine
from rlvr.tasks import Example, Score
from rlvr.trainers.common import MetricsLogger
from rlvr.trainers.rl import Learner, ProblemPool, RLRun, Sampler, collect, knobs_at, train_rl, update_policy

VOCAB, EOS, TARGET = 16, 1, 7
CFG = dict(model_type="qwen2", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=True, max_position_embeddings=64)


class ToyTokenizer:
    """Token ids as text: decode gives "3 7 7" (EOS dropped); enough for the toy task and checkpoints."""

    pad_token_id = 0

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids if i != EOS)

    def save_pretrained(self, path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "toy_tokenizer.json").write_text("{}")


class TargetTokenTask:
    """Reward = share of the 6 completion slots holding token TARGET: a policy learns it in a few steps."""

    name, response_prefix = "target_token", ""

    def examples(self, n: int, seed: int, **difficulty) -> list[Example]:
        g = torch.Generator().manual_seed(seed)
        return [Example(" ".join(map(str, torch.randint(2, VOCAB, (4,), generator=g).tolist())), str(TARGET))
                for _ in range(n)]

    def messages(self, example: Example) -> list[dict[str, str]]:
        return [{"role": "user", "content": example.prompt}]

    def score(self, completion: str, example: Example) -> Score:
        reward = sum(t == example.answer for t in completion.split()) / 6
        return Score(reward, reward > 0.5, True, {})

    def from_record(self, record: dict) -> Example:
        return Example(record["prompt"], record["answer"])

    def to_record(self, example: Example) -> dict:
        return {"prompt": example.prompt, "answer": example.answer}


def prompt_ids(example: Example) -> list[int]:
    return [int(t) for t in example.prompt.split()]


def new_model(seed: int = 0) -> NativeCausalLM:
    torch.manual_seed(seed)
    return NativeCausalLM(CFG)


RL = RLConfig(steps=10, prompts_per_step=4, group_size=6, max_new_tokens=6, lr=3e-2, temperature=1.0)


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():  # another test module's cluster: use it, leave it running
        yield ray
        return
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)  # 2 rollout workers + 1 learner
    yield ray
    ray.shutdown()



def run_rl(engine_factory, out: Path, learner_factory=None):
    """train_rl on the toy task; returns the per-step metrics."""
    model = new_model()
    engine, shares = engine_factory(model)
    learner_ranks = learner_factory(model) if learner_factory else None
    task = TargetTokenTask()
    pool = ProblemPool(lambda difficulty: task.examples(64, seed=0), seed=0)
    out.mkdir(parents=True, exist_ok=True)
    run = RLRun(model, Sampler(engine, ToyTokenizer(), task, pool, prompt_ids, (EOS,)), out,
                MetricsLogger(out),
                torch.device("cpu"), packed=True, seed=0, default_difficulty={}, engine_shares_weights=shares,
                learner_ranks=learner_ranks)
    train_rl(run, RL, CheckpointConfig(every=0), LoggingConfig(progress=False, samples_every=0))
    if not shares:
        engine.shutdown()
    if learner_ranks is not None:
        learner_ranks.shutdown()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# -- the engine ------------------------------------------------------------------------------------


def test_split_evenly_and_worker_seeds():
    assert split_evenly(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert split_evenly(1, 2) == [(0, 1), (1, 1)]
    assert worker_seed(None, 0) is None
    assert worker_seed(5, 0) != worker_seed(5, 1) and worker_seed(5, 1) == worker_seed(5, 1)


@pytest.mark.usefixtures("cluster")
def test_ray_engine_returns_each_workers_slice_in_the_callers_order():
    engine = make_engine(RayConfig(num_rollout_workers=2), new_model(), (EOS,), 0)
    try:
        assert engine.num_workers == 2
        prompts = [[2, 3, 4], [5, 6], [7, 8, 9, 10], [11, 12], [13]]
        params = SamplingParams(n=3, temperature=1.0, max_new_tokens=5, seed=11)
        got = engine.generate(prompts, params)
        assert ([(r.prompt_index, r.metadata["sample_index"]) for r in got]
                == [(p, s) for p in range(5) for s in range(3)])
        local = TorchEngine(new_model(), eos_token_ids=(EOS,), pad_token_id=0)
        want = []
        for w, (lo, hi) in enumerate(split_evenly(len(prompts), 2)):
            part = local.generate(prompts[lo:hi],
                                  dataclasses.replace(params, seed=worker_seed(params.seed, w)))
            for r in part:
                r.prompt_index += lo
            want += part
        assert [r.token_ids for r in got] == [r.token_ids for r in want]
        assert [r.prompt_ids for r in got] == [prompts[r.prompt_index] for r in got]
        for a, b in zip(got, want):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-6)
            assert a.finish_reason == b.finish_reason
        assert engine.last_stats["completion_tokens"] == sum(len(r.token_ids) for r in got)

        # load_weights reaches every worker: outputs now follow the new weights
        changed = new_model(seed=1)
        engine.load_weights(changed.state_dict())
        greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)
        reference = TorchEngine(changed, eos_token_ids=(EOS,), pad_token_id=0).generate(prompts, greedy)
        assert [r.token_ids for r in engine.generate(prompts, greedy)] == [r.token_ids for r in reference]
    finally:
        engine.shutdown()


def test_reserved_resources_sum_cpus_gpus_and_custom_resources_over_all_actors():
    cfg = RayConfig(num_rollout_workers=2, cpus_per_worker=0.5, resources_per_worker={"rollout": 1},
                    num_learners=3, gpus_per_learner=1, resources_per_learner={"learner": 0.5, "rollout": 2})
    assert reserved_resources(cfg) == {"CPU": 4.0, "GPU": 3.0, "rollout": 8.0, "learner": 1.5}


@pytest.mark.usefixtures("cluster")
def test_a_local_cluster_without_the_custom_resource_is_refused_before_any_actor_starts():
    with pytest.raises(RuntimeError,
                       match=r"1 rollout reserved, the cluster has 0.*ray.resources_per_worker"):
        make_engine(RayConfig(num_rollout_workers=1, resources_per_worker={"rollout": 1}),
                    new_model(), (EOS,), 0)


def test_describe_placement_groups_processes_by_node():
    node = lambda node_id, pid: {"node_id": node_id, "node_ip": "10.0.0.1", "hostname": "h",  # noqa: E731
                                 "pid": pid}
    line = describe_placement({"driver": node("aaaa", 1),
                               "rollout_workers": [node("bbbb", 2), node("bbbb", 3)],
                               "learners": [node("aaaa", 4)]})
    assert (line == "node aaaa (h, 10.0.0.1): driver, learner 0; node bbbb (h, 10.0.0.1): rollout worker "
                    "0, rollout worker 1")


def test_make_engine_and_make_learner_refuse_or_skip_before_starting_actors():
    with pytest.raises(ValueError, match="model directory"):
        make_engine(RayConfig(rollout_engine="vllm"), new_model(), (EOS,), 0)
    assert make_learner(RayConfig(num_learners=0), new_model(), RL, packed=True) is None


# -- the loop ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("cluster")
def test_rl_loop_with_two_ray_rollout_workers_learns_like_one_process(tmp_path: Path):
    single = run_rl(lambda m: (TorchEngine(m, eos_token_ids=(EOS,), pad_token_id=0), True),
                    tmp_path / "single")
    distributed = run_rl(lambda m: (RayRolloutEngine(m, 2, eos_token_ids=(EOS,), pad_token_id=0), False),
                         tmp_path / "ray")
    for rows in (single, distributed):
        rewards = [r["reward/mean"] for r in rows]
        assert len(rows) == RL.steps
        assert rewards[0] < 0.3  # chance is 1/16 per slot
        assert sum(rewards[-3:]) / 3 > 0.8  # learned to emit the target token
    late = lambda rows: sum(r["reward/mean"] for r in rows[-3:]) / 3  # noqa: E731
    assert abs(late(single) - late(distributed)) < 0.15


@pytest.mark.slow
@pytest.mark.usefixtures("cluster")
def test_rl_loop_with_two_rollout_workers_and_a_learner_actor_learns(tmp_path: Path):
    rows = run_rl(lambda m: (RayRolloutEngine(m, 2, eos_token_ids=(EOS,), pad_token_id=0), False), tmp_path,
                  learner_factory=lambda m: RayLearnerGroup(m, RL, num_learners=1))
    rewards = [r["reward/mean"] for r in rows]
    assert len(rows) == RL.steps and rewards[0] < 0.3
    assert sum(rewards[-3:]) / 3 > 0.8


# -- learner ranks -------------------------------------------------------------------------------------


def one_step_batch():
    model = new_model()
    engine = TorchEngine(model, eos_token_ids=(EOS,), pad_token_id=0)
    task = TargetTokenTask()
    pool = ProblemPool(lambda difficulty: task.examples(64, seed=0), seed=0)
    knobs = knobs_at(RL, 0, {})
    batch, _ = collect(Sampler(engine, ToyTokenizer(), task, pool, prompt_ids, (EOS,)), knobs, RL, 0, 0)
    return batch, knobs


def in_process_update(batch, knobs, cfg):
    model = new_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                                  weight_decay=cfg.weight_decay)
    model.train()
    stats = update_policy(Learner(model, optimizer, torch.device("cpu"), True), batch, cfg, knobs, 0, 0)
    return model.state_dict(), stats


@pytest.mark.usefixtures("cluster")
def test_a_learner_actor_updates_exactly_as_the_in_process_loop():
    batch, knobs = one_step_batch()
    want_state, want_stats = in_process_update(batch, knobs, RL)
    group = RayLearnerGroup(new_model(), RL, num_learners=1)
    try:
        stats = group.update(batch, RL, knobs, 0, 0)
        state = group.state_dict()
    finally:
        group.shutdown()
    assert stats["actor/grad_norm"] == pytest.approx(want_stats["actor/grad_norm"], rel=1e-5)
    moved = 0
    for name, value in want_state.items():
        torch.testing.assert_close(state[name], value, atol=1e-6, rtol=1e-5, msg=name)
        moved += int(not torch.equal(value, new_model().state_dict()[name]))
    assert moved > 0  # the update changed weights


@pytest.mark.usefixtures("cluster")
def test_two_fsdp_learner_actors_update_as_one_process():
    batch, knobs = one_step_batch()
    cfg = copy.deepcopy(RL)
    cfg.micro_batch_tokens = 40
    want_state, _ = in_process_update(batch, knobs, cfg)
    group = RayLearnerGroup(new_model(), cfg, num_learners=2, strategy="fsdp")
    try:
        group.update(batch, cfg, knobs, 0, 0)
        state = group.state_dict()
    finally:
        group.shutdown()
    # Adam's first step is lr * g / (|g| + eps): for gradient elements near eps, float rounding
    # differences between one and two ranks grow to ~1e-5 of a 3e-2 step; anything wrong moves by ~lr.
    for name, value in want_state.items():
        torch.testing.assert_close(state[name], value, atol=1e-4, rtol=1e-4, msg=name)
