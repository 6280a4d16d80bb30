"""data.max_prompt_tokens: problems with a longer prompt are left out of training and the held-out
set (as DeepScaleR's dataset does), and vLLM engines are sized to the longest rollout."""

from __future__ import annotations

import pytest

from rlvr import tasks
from rlvr.config import ConfigError, load_config
from rlvr.trainers.pipeline import training_source, within_prompt_limit


def test_problems_over_the_limit_are_left_out_of_training_and_the_held_out_set():
    config = load_config("recipes/kk-tiny.yaml", ["data.train_size=30", "data.max_prompt_tokens=400"])
    task = tasks.get("knights_knaves")
    generated = task.examples(30, seed=config.seed, people=3)
    median = sorted(len(ex.prompt) for ex in generated)[15]
    fits = lambda ex: len(ex.prompt) <= median  # noqa: E731 - a stand-in tokenizer: one token per character
    assert 0 < sum(fits(ex) for ex in generated) < 30  # the limit cuts inside this set
    source = training_source(config, task, banned=set(), fits=fits)
    assert source({"people": 3}) == [ex for ex in generated if fits(ex)]
    assert training_source(config, task, banned=set())({"people": 3}) == generated  # no limit: all
    held_out = generated[:10]
    assert (within_prompt_limit(held_out, fits, 400, "held-out problems")
            == [ex for ex in held_out if fits(ex)])
    with pytest.raises(ConfigError, match="data.max_prompt_tokens: every one of the 10 held-out problems"):
        within_prompt_limit(held_out, lambda ex: False, 400, "held-out problems")


def test_vllm_context_holds_the_prompt_limit_and_the_longest_completion_stage():
    deepscaler = load_config("recipes/deepscaler-1.5b.yaml")
    assert deepscaler.context_tokens() == 1024 + 24576
    ray = ["distributed=ray", "ray.rollout_engine=vllm"]
    load_config("recipes/deepscaler-1.5b.yaml", [*ray, "ray.engine_options={max_model_len: 25600}"])
    with pytest.raises(ConfigError,
                       match=r"ray.engine_options.max_model_len: got 9216, expected an integer >= 25600"):
        load_config("recipes/deepscaler-1.5b.yaml", [*ray, "ray.engine_options={max_model_len: 9216}"])
    # no limit: 1024 assumed
    assert load_config(None, ["rl.max_new_tokens=100"]).context_tokens() == 1024 + 100


def test_prompt_tokens_count_the_chat_prompt_the_model_sees(tiny_model_dir):
    from rlvr.models import load_tokenizer, prompt_ids
    from rlvr.trainers.pipeline import prompt_tokens

    tokenizer, task = load_tokenizer(tiny_model_dir), tasks.get("knights_knaves", response_prefix="<think>")
    examples = task.examples(6, seed=1, people=[2, 3])
    lengths = [len(prompt_ids(tokenizer, task.messages(ex), "<think>")) for ex in examples]
    limit = sorted(lengths)[2]
    ids, fits = prompt_tokens(tokenizer, task, limit)
    assert [len(ids(ex)) for ex in examples] == lengths
    assert [fits(ex) for ex in examples] == [n <= limit for n in lengths]
    assert prompt_tokens(tokenizer, task, 0)[1] is None  # no limit, no filter
