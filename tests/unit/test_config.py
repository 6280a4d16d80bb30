"""Config: YAML + overrides, unknown keys with suggestions, type errors naming the key."""

from __future__ import annotations

import pytest

from rlvr.config import ConfigError, RunConfig, dump_yaml, from_dict, load_config, to_dict


def test_overrides_parse_values_as_yaml():
    cfg = load_config(None, ["rl.lr=1e-6", "rl.group_size=16", "rl.dual_clip=3",
                             "rl.curriculum=[{start_step: 0, value: {people: 3}}, {start_step: 50, value: {people: 4}}]",
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
    with pytest.raises(ConfigError, match=r"r.yaml: unknown config key 'rl.group_sise'.*'rl.group_size'"):
        load_config(recipe)


@pytest.mark.parametrize(
    "override, message",
    [
        ("rl.lr=abc", r"rl.lr: got 'abc', expected a number"),
        ("rl.group_size=2.5", r"rl.group_size: got 2.5, expected an integer"),
        ("rl.enabled=3", r"rl.enabled: got 3, expected true or false"),
        ("rl.zero_variance=drop", r"rl.zero_variance: got 'drop', expected one of"),
        ("rl.mini_batches=3", r"rl.mini_batches: got 3, expected a positive divisor"),
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
    cfg = load_config(None, ["rl.prompts_per_step=8", "rl.group_size=4", "rl.mini_batches=2", "rl.ppo_epochs=3"])
    sizes = cfg.derived_sizes()
    assert sizes["rollouts_per_step (prompts_per_step x group_size)"] == 32
    assert sizes["sequences_per_mini_batch"] == 16
    assert sizes["optimizer_steps_per_rl_step (mini_batches x ppo_epochs)"] == 6


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
