"""Config: YAML + overrides, unknown keys with suggestions, type errors naming the key."""

from __future__ import annotations

import re

import pytest

from rlvr.config import ConfigError, RunConfig, dump_yaml, from_dict, load_config, to_dict


def test_overrides_parse_values_as_yaml():
    cfg = load_config(None, ["rl.lr=1e-6", "rl.group_size=16", "rl.dual_clip=3",
                             "rl.curriculum=[{start_step: 0, value: {people: 3}}, {start_step: 50, "
                             "value: {people: 4}}]",
                             "data.task_options={reward_scheme: logic_rl}"])
    assert cfg.rl.lr == pytest.approx(1e-6)
    assert cfg.rl.group_size == 16 and cfg.rl.dual_clip == 3.0
    assert [s.value for s in cfg.rl.curriculum] == [{"people": 3}, {"people": 4}]
    assert cfg.data.task_options == {"reward_scheme": "logic_rl"}


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'rl.lrr'.*did you mean 'rl.lr'"):
        load_config(None, ["rl.lrr=1"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rl:\n  group_sise: 4\n")
    with pytest.raises(ConfigError,
                       match=r"r.yaml line 2: unknown config key 'rl.group_sise'.*'rl.group_size'"):
        load_config(recipe)


@pytest.mark.parametrize(
    "override, message",
    [
        ("rl.lr=abc", r"rl.lr: got 'abc', expected a number"),
        ("rl.group_size=2.5", r"rl.group_size: got 2.5, expected an integer"),
        ("rl.enabled=3", r"rl.enabled: got 3, expected true or false"),
        ("rl.zero_variance=drop", r"rl.zero_variance: got 'drop', expected one of"),
        ("rl.mini_batches=3", r"rl.mini_batches: got 3, expected a positive divisor"),
        ("rl.ref_sync_every=5", r"rl.ref_sync_every: got 5, expected 0 when rl.kl_coef is 0"),
        ("rl.curriculum=[{start_step: 5, value: {people: 3}}, {start_step: 2, value: {people: 4}}]",
         r"strictly increasing"),
        ("rl.lr.x=1", r"rl.lr is a value, not a section"),
        ("nonsense", r"must look like key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_resolved_config_round_trips():
    cfg = load_config("recipes/kk-tiny.yaml", ["rl.steps=7"])
    again = from_dict(RunConfig, to_dict(cfg), "")
    assert dump_yaml(again) == dump_yaml(cfg)
    assert again.rl.steps == 7


def test_derived_sizes_use_one_unit():
    cfg = load_config(None,
                      ["rl.prompts_per_step=8", "rl.group_size=4", "rl.mini_batches=2", "rl.ppo_epochs=3"])
    sizes = cfg.derived_sizes()
    assert sizes["rollouts_per_step (prompts_per_step x group_size)"] == 32
    assert sizes["sequences_per_mini_batch"] == 16
    assert sizes["optimizer_steps_per_rl_step (mini_batches x ppo_epochs)"] == 6
    assert sizes["total_rl_rollouts (through group_size_stages)"] == 32 * 150


def test_total_rollouts_follow_the_group_size_stages():
    cfg = load_config("recipes/deepscaler-1.5b.yaml")
    sizes = cfg.derived_sizes()
    # DeepScaleR: 128 prompts x 8 samples for steps 1-1040, then x 16 for steps 1041-1750
    assert sizes["rollouts_per_step from step 1041 (group_size 16)"] == 2048
    assert sizes["total_rl_rollouts (through group_size_stages)"] == 1040 * 1024 + 710 * 2048


def test_missing_recipe_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_cli_key_value_options_parse_yaml_and_keep_empty_strings():
    from rlvr.cli import _kv

    got = _kv(["people=3", "system_prompt=", 'names=["Zoey", "Lily"]', "phrasing=terse"])
    assert got == {"people": 3, "system_prompt": "", "names": ["Zoey", "Lily"], "phrasing": "terse"}
    with pytest.raises(SystemExit, match="expected key=value"):
        _kv(["people"])
    with pytest.raises(SystemExit, match="expected key=value"):
        _kv(["=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("rl.advantage=grpoo",
         r"rl.advantage: got 'grpoo', expected an advantage estimator; did you mean 'grpo'"),
        ("rl.advantage_options={epsilon: 0.1}",
         r"rl.advantage_options: got \{'epsilon': 0.1\}, expected only grpo's own options \(eps\); "
         r"epsilon is not"),
        ("rl.advantage_options={tokens: [1]}", r"expected only grpo's own options \(eps\); tokens is not"),
        ("rl.loss=ppoo", r"rl.loss: got 'ppoo', expected a policy loss; did you mean 'ppo'.*cispo"),
        ("rl.loss_agg=foo", r"rl.loss_agg: got 'foo', expected a loss aggregation.*token-mean"),
        ("sft.steps=-5", r"sft.steps: got -5, expected an integer >= 0"),
        ("data.eval_size=-1", r"data.eval_size: got -1, expected a positive integer"),
        ("data.eval_size=0", r"data.eval_size: got 0, expected a positive integer"),
        ("eval.prompts_per_batch=0", r"eval.prompts_per_batch: got 0, expected a positive integer"),
        ("sft.micro_batch_tokens=-1", r"sft.micro_batch_tokens: got -1, expected a positive integer"),
        ("rl.micro_batch_tokens=0", r"rl.micro_batch_tokens: got 0, expected a positive integer"),
        ("threads=-1", r"threads: got -1, expected an integer >= 0 \(0: all cores\)"),
        ("checkpoint.every=-1", r"checkpoint.every: got -1, expected an integer >= 0"),
        ("data.task=knights_knave",
         r"data.task: got 'knights_knave', expected a task name or a spec .*; did you mean 'knights_knaves'"),
        ("model.preset=tinyy", r"model.preset: got 'tinyy', expected a model preset; did you mean 'tiny'"),
        ("model.engine_workers=-1", r"model.engine_workers: got -1, expected an integer >= 0"),
        ("rl.adam_betas=[0.9]", r"rl.adam_betas: got \[0.9\], expected two numbers in \[0, 1\)"),
        ("rl.curriculum=[{start_step: -1, value: {people: 3}}]", r"rl.curriculum\[0\].start_step: got -1"),
        ("rl.top_p=0", r"rl.top_p: got 0.0, expected a number in \(0, 1\]"),
        ("rl.ref_sync_alpha=0", r"rl.ref_sync_alpha: got 0.0, expected a number in \(0, 1\]"),
        ("rl.ref_sync_every=-2", r"rl.ref_sync_every: got -2, expected an integer >= 0"),
        ("rl.weight_decay=.nan", r"rl.weight_decay: got nan"),
        ("ray.cpus_per_worker=-1", r"ray.cpus_per_worker: got -1.0, expected a number >= 0.0"),
        ("ray.resources_per_worker={GPU: 1}",
         r"ray.resources_per_worker: got \{'GPU': 1\}, expected custom Ray "
          r"resource names \(not CPU, GPU"),
        ("ray.resources_per_learner={learner: 0}",
         r"ray.resources_per_learner: got \{'learner': 0\}.*amounts > 0"),
        ("ray.resources_per_learner={learner: yes}", r"ray.resources_per_learner: got \{'learner': True\}"),
        ("ray.resources_per_worker=1", r"ray.resources_per_worker: got 1, expected a mapping"),
    ],
)
def test_every_field_has_a_domain_and_the_override_is_named(override, message):
    with pytest.raises(ConfigError, match=r"^override " + re.escape(override) + ": .*" + message):
        load_config("recipes/kk-tiny.yaml", [override])


def test_every_numeric_field_has_a_domain():
    """A field of an int / float type that DOMAINS does not name falls back to its type's domain."""
    import dataclasses
    import typing

    from rlvr.config import _DEFAULT_DOMAINS, DOMAINS, _section

    def walk(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = _section(hints[f.name])  # an optional section (model.lora) is walked as its dataclass
            if dataclasses.is_dataclass(tp):
                yield from walk(tp, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}", tp

    for path, tp in walk(RunConfig):
        base = ([a for a in typing.get_args(tp) if a is not type(None)]
                if typing.get_origin(tp) is not None else [tp])
        if base and base[0] in (int, float):
            assert path in DOMAINS or base[0] in _DEFAULT_DOMAINS, path
    for path in DOMAINS:  # no stale entries
        assert path.split(".")[-1] in {p.rsplit(".", 1)[-1] for p, _ in walk(RunConfig)}, path


def test_recipe_errors_give_the_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nrl:\n  steps: 3\n  advantage: grpoo\n")
    with pytest.raises(ConfigError, match=r"r.yaml line 4: config key rl.advantage: got 'grpoo'"):
        load_config(recipe)
    with pytest.raises(ConfigError, match=r"^override rl.advantage=rloox: "):  # the override, not the file
        load_config(recipe, ["rl.advantage=rloox"])
    recipe.write_text("rl:\n  prompts_per_step: 8\n  mini_batches: 3\n")
    with pytest.raises(ConfigError, match=r"r.yaml line 3: config key rl.mini_batches: got 3"):
        load_config(recipe)


def test_adam_betas_are_configurable():
    cfg = load_config(None,
                      ["rl.adam_betas=[0.9, 0.999]", "rl.weight_decay=0.01", "sft.adam_betas=[0.8, 0.9]"])
    assert (cfg.rl.adam_betas == [0.9, 0.999] and cfg.rl.weight_decay == 0.01
            and cfg.sft.adam_betas == [0.8, 0.9])


def test_the_optional_lora_section():
    config = load_config("recipes/kk-tiny.yaml", [])
    assert config.model.lora is None and config.checkpoint.merge_lora is False
    config = load_config("recipes/kk-tiny.yaml", ["model.lora.r=4", "checkpoint.merge_lora=true"])
    assert config.model.lora.r == 4 and config.model.lora.target_modules[0] == "q_proj"
    assert load_config("recipes/kk-tiny.yaml", ["model.lora={alpha: 8}"]).model.lora.alpha == 8.0
    for override, message in [
        ("model.lora.alpah=4", r"unknown config key 'model.lora.alpah'; did you mean 'model.lora.alpha'"),
        ("model.lora.dropout=1.0", r"config key model.lora.dropout: got 1.0, expected a number in \[0, 1\)"),
        ("model.lora.target_modules=[]",
         r"config key model.lora.target_modules: got \[\], expected a non-empty list"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config("recipes/kk-tiny.yaml", [override])
    with pytest.raises(ConfigError,
                       match="checkpoint.merge_lora: got True, expected false without model.lora"):
        load_config("recipes/kk-tiny.yaml", ["checkpoint.merge_lora=true"])
    with pytest.raises(ConfigError, match="model.lora: .*expected null with distributed=ray"):
        load_config("recipes/kk-tiny.yaml", ["model.lora.r=4", "distributed=ray"])


def test_engine_workers_default_to_the_run_threads():
    from rlvr.trainers.pipeline import engine_workers

    assert engine_workers(load_config("recipes/kk-tiny.yaml", [])) == 2  # the recipe's threads: 2
    assert engine_workers(load_config("recipes/kk-tiny.yaml", ["model.engine_workers=1"])) == 1
    assert engine_workers(load_config("recipes/kk-tiny.yaml", ["threads=3"])) == 3
