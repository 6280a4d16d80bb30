"""PPO's critic: GAE through the trainer, a critic that learns a toy value, and its config checks."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from rlvr.config import ConfigError, CriticConfig, RLConfig, load_config
from rlvr.models.native import NativeCausalLM
from rlvr.trainers import critic as critic_module
from rlvr.trainers.critic import Critic, value_model, value_statistics
from rlvr.trainers.rl import Knobs, Learner, RolloutBatch, update_policy

CFG = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           intermediate_size=64, tie_word_embeddings=True, max_position_embeddings=256)
KNOBS = Knobs(difficulty={}, max_new_tokens=16, group_size=4, temperature=1.0, lr=1e-3, stage=0)
CPU = torch.device("cpu")


def whiten(xs: list[float]) -> list[float]:
    n = len(xs)
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return [(x - mean) / (var + 1e-8) ** 0.5 for x in xs]


def test_gae_through_the_trainer_matches_a_hand_computed_trajectory():
    # Two sequences of one group: 3 tokens with reward 1, 2 tokens with reward 0.
    batch = RolloutBatch()
    for completion, reward in (([5, 6, 7], 1.0), ([8, 9], 0.0)):
        batch.prompt_ids.append([1, 2])
        batch.completion_ids.append(completion)
        batch.engine_logprobs.append([-1.0] * len(completion))
        batch.rewards.append(reward)
        batch.group_ids.append(0)
    values = torch.tensor([[0.5, 0.25, 0.75], [0.2, 0.4, 0.0]])  # the second row's last entry is padding
    seen: dict[str, torch.Tensor] = {}

    class FixedCritic:
        cfg = CriticConfig(enabled=True)

        def values(self, batch, width, device, rl_cfg):
            return values.clone()

        def update(self, batch, old_values, returns, mask, rl_cfg, device, step, seed):
            seen["old_values"], seen["returns"] = old_values, returns
            return {"critic/vf_loss": 0.0}

    def record(_learner, data, _index, _cfg, _knobs):  # a StepFn
        seen["advantages"] = data.advantages
        return {}

    cfg = RLConfig(advantage="gae", advantage_options={"gamma": 0.9, "lam": 0.8})
    model = NativeCausalLM(CFG)
    stats = update_policy(Learner(model, torch.optim.SGD(model.parameters(), lr=0.0), CPU, True),
                          batch, cfg, KNOBS,
                          0, 0, step_fn=record, critic=FixedCritic())  # type: ignore[arg-type]
    # row 0: deltas d2 = 1 - 0.75 = 0.25, d1 = 0 + 0.9 * 0.75 - 0.25 = 0.425, d0 = 0.9 * 0.25 - 0.5 = -0.275;
    #        A2 = 0.25, A1 = 0.425 + 0.72 * 0.25 = 0.605, A0 = -0.275 + 0.72 * 0.605 = 0.1606
    # row 1: d1 = 0 - 0.4 = -0.4, d0 = 0.9 * 0.4 - 0.2 = 0.16; A1 = -0.4, A0 = 0.16 - 0.72 * 0.4 = -0.128
    raw = [0.1606, 0.605, 0.25, -0.128, -0.4]
    torch.testing.assert_close(seen["returns"], torch.tensor([[0.6606, 0.855, 1.0], [0.072, 0.0, 0.0]]))
    w = whiten(raw)  # whitened over the batch's five valid tokens
    torch.testing.assert_close(seen["advantages"], torch.tensor([[w[0], w[1], w[2]], [w[3], w[4], 0.0]]))
    assert stats["critic/returns/mean"] == pytest.approx((0.6606 + 0.855 + 1.0 + 0.072 + 0.0) / 5)
    assert stats["critic/values/mean"] == pytest.approx((0.5 + 0.25 + 0.75 + 0.2 + 0.4) / 5)


def toy_batch(gen: torch.Generator, groups: int = 8, group_size: int = 4) -> RolloutBatch:
    """Prompts of two kinds, told apart by their first token: kind 3 always earns 1, kind 4 always 0;
    completions are random tokens. The value of every prefix is its prompt's kind."""
    batch = RolloutBatch()
    for g in range(groups):
        kind = int(torch.randint(0, 2, (1,), generator=gen))
        prompt = [3 + kind] + torch.randint(5, 40, (4,), generator=gen).tolist()
        for _ in range(group_size):
            n = int(torch.randint(2, 10, (1,), generator=gen))
            batch.prompt_ids.append(prompt)
            batch.completion_ids.append(torch.randint(5, 40, (n,), generator=gen).tolist())
            batch.engine_logprobs.append([-3.0] * n)
            batch.rewards.append(1.0 - kind)
            batch.group_ids.append(g)
    return batch


def test_the_critic_learns_the_value_of_a_toy_task():
    torch.manual_seed(0)
    policy = NativeCausalLM(CFG)
    critic = Critic(value_model(policy, seed=0), CriticConfig(enabled=True, lr=3e-3), packed=True)
    cfg = RLConfig(advantage="gae", mini_batches=2, micro_batch_tokens=64)
    gen = torch.Generator().manual_seed(1)
    explained = []
    for step in range(30):
        # critic only (the warm-up path): the policy must not move
        stats = update_policy(Learner(policy, torch.optim.SGD(policy.parameters(), lr=1.0), CPU, True),
                              toy_batch(gen),
                              cfg, KNOBS, step, 0, critic=critic, update_actor=False)
        # measured on a fresh batch, before the critic trains on it
        explained.append(stats["critic/vf_explained_var"])
        assert "actor/pg_loss" not in stats and stats["critic/grad_norm"] > 0
    assert explained[0] < 0.2
    assert min(explained[-5:]) > 0.9, explained  # 0.99 and above in this run


def test_value_model_is_a_copy_with_a_scalar_head():
    torch.manual_seed(0)
    policy = NativeCausalLM(CFG)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    model = value_model(policy, seed=0)
    assert model.lm_head.weight.shape == (1, CFG["hidden_size"])
    # seeded, not global RNG
    assert torch.equal(value_model(policy, seed=0).lm_head.weight, model.lm_head.weight)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(1.0)
    for k, v in policy.state_dict().items():
        assert torch.equal(v, before[k]), k  # the policy is untouched
    out = model(torch.tensor([[1, 2, 3]]))
    assert out.shape == (1, 3, 1)


def test_explained_variance_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, 9.0], [0.0, 9.0, 9.0]])
    stats = value_statistics(returns.clone(), returns, mask)
    assert stats["critic/vf_explained_var"] == pytest.approx(1.0)
    # a constant prediction at the mean explains nothing
    stats = value_statistics(torch.full_like(returns, 2 / 3), returns, mask)
    assert stats["critic/vf_explained_var"] == pytest.approx(0.0, abs=1e-12)
    assert "critic/vf_explained_var" not in value_statistics(returns, torch.ones_like(returns), mask)


def test_state_dict_round_trip_includes_the_optimizer():
    torch.manual_seed(0)
    policy = NativeCausalLM(CFG)
    cfg = RLConfig(advantage="gae", micro_batch_tokens=64)
    a = Critic(value_model(policy, seed=0), CriticConfig(enabled=True, lr=1e-2), packed=True)
    batch = toy_batch(torch.Generator().manual_seed(0))
    frozen = Learner(policy, torch.optim.SGD(policy.parameters(), lr=0.0), CPU, True)
    update_policy(frozen, batch, cfg, KNOBS, 0, 0, critic=a, update_actor=False)
    b = Critic(value_model(policy, seed=5), CriticConfig(enabled=True, lr=1e-2), packed=True)
    buffer = io.BytesIO()  # through torch.save, as the checkpoint's trainer_state.pt
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=False))
    nxt = toy_batch(torch.Generator().manual_seed(1))
    sa = update_policy(frozen, nxt, cfg, KNOBS, 1, 0, critic=a, update_actor=False)
    sb = update_policy(frozen, nxt, cfg, KNOBS, 1, 0, critic=b, update_actor=False)
    assert sa == sb
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


# ---------------------------------------------------------------- config: refused at load


def test_gae_without_a_critic_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"rl.advantage: got 'gae'.*critic.enabled=true"):
        load_config("recipes/kk-tiny.yaml", ["rl.advantage=gae"])
    with pytest.raises(ConfigError, match=r"critic.enabled: .*only gae"):
        load_config("recipes/kk-tiny.yaml", ["critic.enabled=true"])
    config = load_config("recipes/kk-tiny.yaml", ["rl.advantage=gae", "critic.enabled=true"])
    assert config.critic.enabled and config.critic.value_clip == 0.5


def test_critic_with_the_data_parallel_learner_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"data-parallel learner has no critic"):
        load_config("recipes/kk-tiny-ppo.yaml", ["distributed=ray", "ray.num_learners=2"])
    load_config("recipes/kk-tiny-ppo.yaml", ["distributed=ray", "ray.num_learners=0"])  # driver update: fine


@pytest.mark.parametrize("override, key", [
    ("critic.lr=0", "critic.lr"), ("critic.value_clip=-1", "critic.value_clip"),
    ("critic.warmup_steps=-1", "critic.warmup_steps"), ("rl.advantage_options={gamma: 1.5}", "gamma"),
    ("rl.advantage_options={eps: 0.1}", "rl.advantage_options"), ("critic.grad_clip=-1", "critic.grad_clip"),
])
def test_bad_critic_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("recipes/kk-tiny-ppo.yaml", [override])


def test_critic_path_must_be_a_model_with_the_policy_vocabulary(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match=r"critic.path: .*\(no config.json\)"):
        critic_module.check_critic_dir(str(tmp_path), {"vocab_size": 10})
    import json

    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    policy_config = dataclasses.make_dataclass("C", [("vocab_size", int)])(vocab + 1)
    with pytest.raises(ConfigError, match="vocab_size"):
        critic_module.check_critic_dir(str(tiny_model_dir), policy_config)
    assert critic_module.check_critic_dir(str(tiny_model_dir),
                                          dataclasses.replace(policy_config, vocab_size=vocab))
