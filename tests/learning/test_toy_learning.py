"""Learning test: GRPO raises the reward of a toy task within about a minute on a CPU.

The toy task rewards completions made of one word ("knight"); a randomly initialised model says it
about once in several hundred tokens, so a rising reward shows that rewards, advantages, the
policy loss and the optimizer step all point the right way.
"""

from __future__ import annotations

import torch

from rlvr.config import load_config
from rlvr.models import eos_token_ids, prompt_ids
from rlvr.rollout.torch_engine import TorchEngine
from rlvr.tasks import Example, Score
from rlvr.trainers.common import MetricsLogger
from rlvr.trainers.pipeline import load_policy
from rlvr.trainers.rl import ProblemPool, RLRun, Sampler, train_rl


class SayKnight:
    name = "say_knight"
    response_prefix = ""

    def examples(self, n, seed, **difficulty):
        return [Example(prompt=f"Puzzle {seed}-{i}: who is a knight?", answer="knight", metadata={"index": i})
                for i in range(n)]

    def messages(self, example):
        return [{"role": "user", "content": example.prompt}]

    def score(self, completion, example):
        words = completion.split()
        share = sum(w.strip(".,:") == "knight" for w in words) / max(len(words), 1)
        return Score(reward=share, correct=share > 0.5, format_ok=True, parts={"answer": share})

    def from_record(self, record):
        return Example(record["prompt"], record["answer"])

    def to_record(self, example):
        return {"prompt": example.prompt, "answer": example.answer}


def test_grpo_raises_reward_on_a_toy_task(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    config = load_config("recipes/kk-tiny.yaml", [
        f"out_dir={tmp_path}", "rl.steps=40", "rl.prompts_per_step=8", "rl.group_size=8",
        "rl.max_new_tokens=8", "rl.lr=3e-3", "rl.lr_schedule=constant", "rl.mini_batches=1",
        "rl.autocast=bfloat16", "checkpoint.every=0", "logging.samples_every=0",
        "logging.progress=false",
    ])
    policy = load_policy(tiny_model_dir, "auto", "float32", torch.device("cpu"))
    task = SayKnight()
    eos = eos_token_ids(policy.tokenizer)
    engine = TorchEngine(policy.model, eos_token_ids=eos, pad_token_id=0)
    logger = MetricsLogger(tmp_path)
    sampler = Sampler(engine, policy.tokenizer, task, ProblemPool(lambda d: task.examples(64, 0), seed=0),
                      lambda ex: prompt_ids(policy.tokenizer, task.messages(ex)), eos)
    run = RLRun(policy.model, sampler, tmp_path, logger, torch.device("cpu"), packed=policy.packed, seed=0,
                default_difficulty={}, engine_shares_weights=True)
    train_rl(run, config.rl, config.checkpoint, config.logging)
    import json

    rewards = [json.loads(x)["reward/mean"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > 0.5 and last > first + 0.3, (first, last)
