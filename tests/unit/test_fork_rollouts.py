"""Tree sampling (rl.fork_points): roots, forks at their least likely tokens, prefixes copied."""

from __future__ import annotations

import pytest

from rlvr.config import load_config
from rlvr.errors import ConfigError
from rlvr.rollout import Rollout, SamplingParams
from rlvr.trainers import rl


class CountingEngine:
    """Completion of a prompt p, sample k of a call: tokens 100 + len(p) + k, ..., 6 of them, with
    log-probs that make position 2 (then 4) the least likely; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[int]], SamplingParams]] = []

    def generate(self, prompt_ids, params):
        self.calls.append(([list(p) for p in prompt_ids], params))
        out = []
        for i, prompt in enumerate(prompt_ids):
            for k in range(params.n):
                tokens = [100 + len(prompt) + k + j for j in range(6)][: params.max_new_tokens]
                logprobs = [-0.1, -0.2, -3.0, -0.3, -2.0, -5.0][: len(tokens)]
                finish = "stop" if len(tokens) == 6 else "length"
                out.append(Rollout(i, list(prompt), tokens, logprobs, finish))
        return out


def test_fork_positions_are_the_least_likely_tokens_but_the_last():
    assert rl.fork_positions([-0.1, -0.2, -3.0, -0.3, -2.0, -5.0], 2) == [2, 4]
    assert rl.fork_positions([-1.0, -1.0, -1.0], 1) == [0]  # ties: the earlier
    assert rl.fork_positions([-4.0], 2) == [0, 0]  # nothing but the last token: fresh samples


def test_forks_copy_their_root_prefix_and_fill_the_group():
    engine = CountingEngine()
    params = SamplingParams(n=6, max_new_tokens=8, seed=5)
    out = rl.forked_rollouts(engine, [[1, 2], [3]], params, points=2, samples=1)
    (roots_call, roots_params), (forks_call, forks_params) = engine.calls
    assert roots_call == [[1, 2], [3]] and roots_params.n == 2  # 6 / (1 + 2 x 1) roots per prompt
    assert forks_params.n == 1 and forks_params.seed != roots_params.seed
    assert len(out) == 12 and [r.prompt_index for r in out] == [0] * 6 + [1] * 6
    root, fork_at_2, fork_at_4 = out[0], out[1], out[2]
    assert forks_call[0] == [1, 2] + root.token_ids[:2] and forks_call[1] == [1, 2] + root.token_ids[:4]
    assert fork_at_2.prompt_ids == [1, 2]  # the group's prompt, not the fork's
    assert fork_at_2.token_ids[:2] == root.token_ids[:2] and fork_at_2.logprobs[:2] == root.logprobs[:2]
    assert fork_at_2.token_ids[2:] == [104 + j for j in range(6)][:6]  # its continuation (prompt of 4)
    assert fork_at_2.metadata["fork_at"] == 2 and fork_at_4.metadata["fork_at"] == 4
    # a completion holds at most max_new_tokens in all: the fork at 4 is cut to 4 + 4 and truncated
    assert len(fork_at_4.token_ids) == 8 and fork_at_4.finish_reason == "length"
    assert fork_at_2.finish_reason == "stop" and len(fork_at_2.token_ids) == 8


def test_fork_settings_are_checked_at_load():
    load_config("recipes/kk-tiny.yaml", ["rl.fork_points=1"])  # 16 = 8 roots x (1 + 1)
    with pytest.raises(ConfigError, match=r"rl.fork_points: got 2, .*1 \+ fork_points x fork_samples = 3"):
        load_config("recipes/kk-tiny.yaml", ["rl.fork_points=2"])
    with pytest.raises(ConfigError, match=r"rl.fork_points: .*partial rollouts"):
        load_config("recipes/kk-tiny.yaml", ["rl.fork_points=1", "rl.partial_tokens_per_step=64"])
    with pytest.raises(ConfigError, match=r"rl.fork_samples: got 0"):
        load_config("recipes/kk-tiny.yaml", ["rl.fork_points=1", "rl.fork_samples=0"])
