"""LoRA through peft (`model.lora`): rollouts use the current adapter, only the adapters train,
checkpoints hold the adapter (and a merged HF model on request), resume equals uninterrupted, and
a target that names no Linear layer stops the run at start-up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("peft")

from rlvr.config import ConfigError, load_config
from rlvr.models import eos_token_ids, prompt_ids
from rlvr.models.lora import apply_lora
from rlvr.rollout import SamplingParams
from rlvr.rollout.torch_engine import TorchEngine
from rlvr.tasks import Example, Score
from rlvr.trainers.common import MetricsLogger
from rlvr.trainers.pipeline import load_policy, run
from rlvr.trainers.rl import ProblemPool, RLRun, Sampler, train_rl
from rlvr.trainers.sequences import RolloutBatch, sequence_values

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CPU = torch.device("cpu")


class Vowels:
    """Toy task: the reward is the share of vowels among the completion's letters (dense: every
    group's samples differ, so every step carries a signal)."""

    name = "vowels"
    response_prefix = ""

    def examples(self, n, seed, **difficulty):
        return [Example(prompt=f"Puzzle {seed}-{i}: who is a knight?", answer="", metadata={"index": i})
                for i in range(n)]

    def messages(self, example):
        return [{"role": "user", "content": example.prompt}]

    def score(self, completion, example):
        letters = [c for c in completion.lower() if c.isalpha()]
        share = sum(c in "aeiou" for c in letters) / max(len(letters), 1)
        return Score(reward=share, correct=share > 0.5, format_ok=True, parts={"answer": share})


@pytest.fixture
def one_thread():
    """One torch thread: on a shared CPU, spinning OpenMP threads make these small steps ~10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def lora_policy(model_dir: Path, impl: str, r: int = 8):
    policy = load_policy(model_dir, impl, "float32", CPU)
    return policy, apply_lora(policy.model, r, 2.0 * r, 0.0, TARGETS, model_dir)


def adapted_layers(model) -> set[str]:
    """The last names of the Linear layers that carry an adapter."""
    return {name.split(".lora_A")[0].rsplit(".", 1)[-1]
            for name, _ in model.named_parameters() if ".lora_A" in name}


@pytest.mark.parametrize("impl", ["native", "hf"])
def test_the_adapters_go_on_the_target_modules_named(tiny_model_dir, impl):
    """model.lora.target_modules decides the adapted layers (not peft's per-architecture default)."""
    policy = load_policy(tiny_model_dir, impl, "float32", CPU)
    assert adapted_layers(apply_lora(policy.model, 4, 8.0, 0.0, ["k_proj", "down_proj"], tiny_model_dir)) == \
        {"k_proj", "down_proj"}
    assert adapted_layers(lora_policy(tiny_model_dir, impl)[1]) == set(TARGETS)


def frozen_and_adapters(model) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return ({k: v for k, v in state.items() if ".lora_" not in k},
            {k: v for k, v in state.items() if ".lora_" in k})


@pytest.mark.parametrize("impl", ["native", "hf"])
def test_rollouts_use_the_current_adapter(tiny_model_dir, impl):
    """The engine's sampling log-probs equal the learner's on the same tokens with a nonzero adapter
    (the native engine decodes from fused weights, so it must add B A itself), and differ from the
    base model's: the adapter is what the engine samples from."""
    torch.manual_seed(0)
    policy, model = lora_policy(tiny_model_dir, impl)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    eos = eos_token_ids(policy.tokenizer)
    engine = TorchEngine(model, eos_token_ids=eos, pad_token_id=policy.tokenizer.pad_token_id or 0)
    prompt = prompt_ids(policy.tokenizer, [{"role": "user", "content": "Zoey says Oliver is a knave."}])
    rollouts = engine.generate([prompt], SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=1))
    batch = RolloutBatch(prompt_ids=[list(r.prompt_ids) for r in rollouts],
                         completion_ids=[list(r.token_ids) for r in rollouts])
    width = max(len(c) for c in batch.completion_ids)

    def learner_logprobs() -> torch.Tensor:
        with torch.no_grad():
            return sequence_values(model, batch, range(len(rollouts)), width, 1.0, CPU,
                                   policy.packed, 1 << 20)[0]

    adapted = learner_logprobs()
    with model.disable_adapter():
        base = learner_logprobs()
    mask = torch.zeros_like(adapted, dtype=torch.bool)
    engine_lp = torch.zeros_like(adapted)
    for i, r in enumerate(rollouts):
        mask[i, : len(r.token_ids)] = True
        engine_lp[i, : len(r.token_ids)] = torch.tensor(r.logprobs)
    assert (engine_lp - adapted)[mask].abs().max() < 1e-4
    assert (base - adapted)[mask].abs().max() > 0.1


@pytest.mark.usefixtures("one_thread")
def test_lora_rl_moves_only_the_adapters_and_learns(tiny_model_dir, tmp_path):
    """GRPO with LoRA on the toy task: the base weights stay byte-identical, the reward rises.

    A random 1M model's tied embeddings have row norms of ~0.23, which caps every logit at about
    2.6 after the final norm; frozen, they keep any output distribution near uniform whatever the
    adapters do, as a pretrained model's (much larger) output layer does not. The base model of this
    test has its embeddings scaled 4x."""
    base_dir = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base_dir)
    weights = load_file(str(base_dir / "model.safetensors"))
    weights["model.embed_tokens.weight"] *= 4.0
    save_file(weights, str(base_dir / "model.safetensors"), metadata={"format": "pt"})
    torch.manual_seed(0)
    config = load_config("recipes/kk-tiny.yaml", [
        f"out_dir={tmp_path}", "rl.steps=10", "rl.prompts_per_step=8", "rl.group_size=8",
        "rl.max_new_tokens=8", "rl.lr=2e-3", "rl.lr_schedule=constant", "rl.mini_batches=1",
        "rl.autocast=bfloat16", "checkpoint.every=0", "logging.samples_every=0", "logging.progress=false",
    ])
    policy, model = lora_policy(base_dir, "native", r=16)
    assert adapted_layers(model) == set(TARGETS)
    frozen, adapters = frozen_and_adapters(model)
    task = Vowels()
    eos = eos_token_ids(policy.tokenizer)
    engine = TorchEngine(model, eos_token_ids=eos, pad_token_id=0)
    sampler = Sampler(engine, policy.tokenizer, task, ProblemPool(lambda d: task.examples(64, 0), seed=0),
                      lambda ex: prompt_ids(policy.tokenizer, task.messages(ex)), eos)
    run = RLRun(model, sampler, tmp_path, MetricsLogger(tmp_path), CPU, packed=policy.packed, seed=0,
                default_difficulty={}, engine_shares_weights=True)
    train_rl(run, config.rl, config.checkpoint, config.logging)
    after_frozen, after_adapters = frozen_and_adapters(model)
    assert all(torch.equal(frozen[k], after_frozen[k]) for k in frozen)
    assert all(not torch.equal(adapters[k], after_adapters[k]) for k in adapters if "lora_B" in k)
    rewards = [json.loads(x)["reward/mean"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # the first update moves most (an untrained base writes few letters), and the reward keeps rising
    first, early, last = sum(rewards[:2]) / 2, sum(rewards[1:4]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.15 and last > early + 0.05, rewards


@pytest.mark.usefixtures("one_thread")
def test_the_hf_implementation_trains_only_the_adapters(tiny_model_dir, tmp_path):
    config = load_config("recipes/kk-tiny.yaml", [
        f"out_dir={tmp_path}", "rl.steps=2", "rl.prompts_per_step=4", "rl.group_size=4",
        "rl.max_new_tokens=8", "rl.lr=1e-2", "rl.mini_batches=2", "checkpoint.every=0",
        "logging.samples_every=0", "logging.progress=false",
    ])
    policy, model = lora_policy(tiny_model_dir, "hf")
    assert not policy.packed
    frozen, adapters = frozen_and_adapters(model)
    task = Vowels()
    eos = eos_token_ids(policy.tokenizer)
    sampler = Sampler(TorchEngine(model, eos_token_ids=eos), policy.tokenizer, task,
                      ProblemPool(lambda d: task.examples(16, 0), seed=0),
                      lambda ex: prompt_ids(policy.tokenizer, task.messages(ex)), eos)
    run = RLRun(model, sampler, tmp_path, MetricsLogger(tmp_path), CPU, packed=False, seed=0,
                default_difficulty={}, engine_shares_weights=True)
    train_rl(run, config.rl, config.checkpoint, config.logging)
    after_frozen, after_adapters = frozen_and_adapters(model)
    assert all(torch.equal(frozen[k], after_frozen[k]) for k in frozen)
    assert all(not torch.equal(adapters[k], after_adapters[k]) for k in adapters if "lora_B" in k)


def small_lora_run(model_dir: Path, out: Path) -> list[str]:
    return [
        f"model.path={model_dir}", f"out_dir={out}", "threads=1", "logging.progress=false",
        "logging.samples_every=0", "data.train_size=200", "data.eval_size=4", "eval.samples=0",
        "eval.max_new_tokens=16", "sft.steps=4", "sft.batch_size=8", "sft.data_size=64", "sft.warmup_steps=1",
        "rl.steps=4", "rl.prompts_per_step=4", "rl.mini_batches=2", "rl.group_size=4", "rl.max_new_tokens=24",
        "rl.lr=1e-3", "rl.tis_cap=2.0", "rl.length_reward.kind=overlong", "rl.length_reward.cache_tokens=20",
        "checkpoint.every=2", "checkpoint.merge_lora=true", "model.lora.r=8",
    ]


def rl_rows(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("timing_s/", "perf/", "sft/tokens_per_s"))}
            for r in rows if r["phase"] in ("sft", "rl")]


def test_a_lora_run_checkpoints_the_adapter_merges_and_resumes(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    overrides = small_lora_run(tiny_model_dir, out)
    run(load_config("recipes/kk-tiny.yaml", overrides))
    reference = rl_rows(out)
    rl = [r for r in reference if r["phase"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2, 3, 4]
    # the shared-weights engine samples from the adapter the learner trains, step after step
    assert all(r["rollout/logprob_abs_diff_max"] < 1e-4 for r in rl)
    checkpoint = out / "checkpoints/rl/step_000004"
    assert ((checkpoint / "adapter_model.safetensors").is_file()
            and not (checkpoint / "model.safetensors").exists())
    assert json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(tiny_model_dir.resolve())
    ids = torch.tensor([[3, 17, 25, 40, 41, 9, 12]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(str(checkpoint / "merged")).eval()(ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
        adapted = PeftModel.from_pretrained(base, str(checkpoint)).eval()(ids).logits
        with_base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()(ids).logits
    assert (merged - adapted).abs().max() < 1e-4
    assert (merged - with_base).abs().max() > 1e-3  # SFT and RL moved the adapter
    # Killed after step 4 was logged but before its checkpoint: resumes from step 2 to the same rows.
    shutil.rmtree(checkpoint)
    for name in ("summary.json", "eval/after_rl_greedy"):
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    run(load_config("recipes/kk-tiny.yaml", overrides))
    assert rl_rows(out) == reference


def test_lora_targets_that_name_no_linear_layer_stop_at_start_up(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    base = [f"model.path={tiny_model_dir}", f"out_dir={out}"]
    cases = [
        (["model.lora.target_modules=[q_proj, qproj]"],
         r"config key model.lora.target_modules: target 'qproj' matches no module of the model \(its Linear "
         r"layers: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj\)"),
        (["model.lora.target_modules=[input_layernorm]"],
         r"target 'input_layernorm' matches .*RMSNorm, not a Linear"),
        (["model.lora.target_modules=[lm_head]"], r"target 'lm_head' is the output layer"),
        (["model.impl=hf", "model.lora.target_modules=[qkv]"], r"target 'qkv' matches no module"),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            run(load_config("recipes/kk-tiny.yaml", base + extra))
        assert not out.exists(), extra
    with pytest.raises(ConfigError, match="target 'qproj' matches no module"):  # the offline preset too
        run(load_config("recipes/kk-tiny.yaml", [f"out_dir={out}", "model.lora.target_modules=[qproj]"]))
    assert not out.exists()


def test_checkpoints_of_the_other_kind_are_refused(tiny_model_dir, tmp_path):
    from rlvr.trainers.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    full = load_policy(tiny_model_dir, "native", "float32", CPU).model
    _, adapted = lora_policy(tiny_model_dir, "native")
    adapter_ckpt = save_checkpoint(tmp_path / "a", 1, adapted, None, {}, keep_last=1)
    full_ckpt = save_checkpoint(tmp_path / "f", 1, full, None, {}, keep_last=1)
    with pytest.raises(CheckpointError, match="holds a LoRA adapter, but this run trains full weights"):
        load_checkpoint(adapter_ckpt, full, full.config)
    with pytest.raises(CheckpointError, match="holds no LoRA adapter"):
        load_checkpoint(full_ckpt, adapted, adapted.config)
    _, other_rank = lora_policy(tiny_model_dir, "native", r=4)
    with pytest.raises(CheckpointError, match="another rank"):
        load_checkpoint(adapter_ckpt, other_rank, other_rank.config)


def test_the_critic_of_a_lora_policy_starts_from_its_merged_weights(tiny_model_dir):
    from rlvr.config import CriticConfig
    from rlvr.models.lora import merged_state_dict
    from rlvr.trainers.critic import build_critic

    torch.manual_seed(0)
    policy, model = lora_policy(tiny_model_dir, "native")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    critic = build_critic(CriticConfig(enabled=True), model, policy.packed, seed=0)
    state = critic.model.state_dict()
    assert not any("lora" in k for k in state) and state["lm_head.weight"].shape[0] == 1  # a value head
    merged = merged_state_dict(model)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(state[name], merged[name])
    assert all(p.requires_grad for p in critic.model.parameters())
    assert any("lora_B" in n for n, _ in model.named_parameters())  # the policy keeps its adapters


@pytest.fixture
def adapter_checkpoint(tiny_model_dir, tmp_path):
    """An adapter-only checkpoint (no checkpoint.merge_lora) of the tiny model with a nonzero adapter,
    and the same adapter merged into a plain HF directory."""
    from rlvr.models import load_tokenizer
    from rlvr.models.lora import save_merged
    from rlvr.trainers.checkpoint import save_checkpoint

    torch.manual_seed(0)
    _, model = lora_policy(tiny_model_dir, "native")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    tokenizer = load_tokenizer(tiny_model_dir)
    checkpoint = save_checkpoint(tmp_path / "ckpts", 1, model, tokenizer, {}, keep_last=1)
    assert not (checkpoint / "config.json").exists()
    merged = tmp_path / "merged"
    save_merged(model, merged)
    tokenizer.save_pretrained(str(merged))
    return checkpoint, merged


def test_an_adapter_checkpoint_loads_as_its_base_with_the_adapter_merged(adapter_checkpoint, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from rlvr.evaluation import EvalSampling, ModelLoading, eval_command
    from rlvr.models import load_model

    checkpoint, merged = adapter_checkpoint
    ids = torch.tensor([[3, 17, 25, 40, 41, 9, 12]])
    with torch.no_grad():
        loaded = load_model(checkpoint)(ids).logits
        want = AutoModelForCausalLM.from_pretrained(str(merged)).eval()(ids).logits
        base = load_model(tiny_model_dir)(ids).logits
    assert not any("lora" in name for name, _ in load_model(checkpoint).named_parameters())
    assert (loaded - want).abs().max() < 1e-5 and (loaded - base).abs().max() > 1e-2
    # `rlvr eval --model CHECKPOINT` samples the adapted model, as from its merged directory
    sampling, cpu = EvalSampling(max_new_tokens=12), ModelLoading(device="cpu")
    results = [eval_command(str(path), "knights_knaves", None, limit=3, sampling=sampling, loading=cpu,
                            progress=False) for path in (checkpoint, merged)]
    assert [s["completion"] for s in results[0].samples] == [s["completion"] for s in results[1].samples]


def test_a_run_starts_from_an_adapter_checkpoint_given_as_model_path(adapter_checkpoint, tmp_path):
    from rlvr.models.native import read_weights

    checkpoint, merged = adapter_checkpoint
    out = tmp_path / "run"
    run(load_config("recipes/kk-tiny.yaml", [
        f"model.path={checkpoint}", f"out_dir={out}", "threads=1", "logging.progress=false",
        "sft.enabled=false", "data.train_size=32", "data.eval_size=2", "rl.steps=1", "rl.prompts_per_step=2",
        "rl.group_size=2",
        "rl.mini_batches=1", "rl.max_new_tokens=4", "eval.max_new_tokens=4", "eval.samples=0", "eval.every=0",
        "checkpoint.every=0", "logging.samples_every=0", "model.lora.r=4",
    ]))
    start = read_weights(out / "model_merged")
    assert all(torch.equal(tensor, read_weights(merged)[name]) for name, tensor in start.items())
    saved = json.loads((out / "checkpoints/rl/step_000001/adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str((out / "model_merged").resolve())  # the new adapter's base


def test_an_adapter_checkpoint_without_its_base_stops_at_start_up(adapter_checkpoint, tmp_path):
    checkpoint, _ = adapter_checkpoint
    config_file = checkpoint / "adapter_config.json"
    adapter = json.loads(config_file.read_text())
    out = tmp_path / "run"
    cases = [({**adapter, "base_model_name_or_path": str(tmp_path / "gone")},
              r"config key model.path: .*adapter_config.json: the adapter's base model '.*gone' \(key "
              r"base_model_name_or_path\) is not a local directory"),
             ({k: v for k, v in adapter.items() if k != "base_model_name_or_path"},
              r"adapter_config.json is a LoRA adapter without its base model: "
              r"key 'base_model_name_or_path' is missing")]
    for content, message in cases:
        config_file.write_text(json.dumps(content))
        with pytest.raises(ConfigError, match=message):
            run(load_config("recipes/kk-tiny.yaml", [f"model.path={checkpoint}", f"out_dir={out}"]))
        assert not out.exists()
