"""The `rlvr` command's parser: help that says what a flag does and its default, --recipe on every
command that renders a task's prompts, and the commands' own checks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from rlvr import tasks
from rlvr.cli import build_parser, main, task_from_args
from rlvr.config import load_config

RECIPE = str(Path(__file__).resolve().parents[2] / "recipes" / "kk-tiny.yaml")


def _subparser(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("command",
                         [("data", "gen"), ("data", "filter"), ("data", "stats"), ("data", "dedup"),
                          ("eval",), ("model", "init"), ("noise",)])
def test_every_flag_has_help_and_shows_its_default(command):
    parser = _subparser(*command)
    page = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{' '.join(command)} {action.option_strings[0]} has no help"
        text = parser._get_formatter()._get_help_string(action) % {"default": action.default}
        assert "default" in text or "required" in text, f"{action.option_strings[0]}: {text!r}"
    assert "--recipe" in page or command in (("model", "init"), ("noise",))


def test_run_help_names_resume_out_dir_and_rlvr_config():
    page = _subparser("run").format_help()
    assert "resumes" in page.lower() or "resume" in page.lower()
    assert "out_dir" in page and "rlvr config" in page
    assert "model.path" in _subparser("rl").format_help()


@pytest.mark.parametrize("command", ["gen", "filter", "stats", "dedup"])
def test_data_commands_that_render_prompts_take_the_recipes_task_options(command):
    args = build_parser().parse_args(["data", command, *(["kk.jsonl"] if command == "stats" else []),
                                      *({"gen": ["--n", "1", "--out", "x"],
                                         "filter": ["--model", "m", "--data", "d", "--out", "o"],
                                         "dedup": ["--data", "d", "--out", "o"]}.get(command, [])),
                                      "--recipe", RECIPE, "--task-option", "phrasing=plain"])
    task, options, config = task_from_args(args)
    wanted = dict(load_config(RECIPE).data.task_options, phrasing="plain")
    assert task == "knights_knaves" and options == wanted and config is not None


def test_a_task_other_than_the_recipes_or_none_at_all_is_refused():
    with pytest.raises(SystemExit, match="trains knights_knaves"):
        task_from_args(build_parser().parse_args(["data", "gen", "--n", "1", "--out", "x", "--recipe", RECIPE,
                                                  "--task", "math"]))
    with pytest.raises(SystemExit, match="data gen needs --task or --recipe"):
        task_from_args(build_parser().parse_args(["data", "gen", "--n", "1", "--out", "x"]))


def test_data_gen_with_a_recipe_writes_the_recipes_puzzles(tmp_path):
    out = tmp_path / "kk.jsonl"
    assert main(["data", "gen", "--recipe", RECIPE, "--people", "3", "--n", "3", "--seed", "4",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    task = tasks.get("knights_knaves", **load_config(RECIPE).data.task_options)
    assert [r["quiz"] for r in rows] == [ex.prompt for ex in task.examples(3, 4, people=3)]
    pool = set(load_config(RECIPE).data.task_options["names"])
    assert all(set(r["names"]) <= pool for r in rows)  # the recipe's 8 names, not the task's default pool
    plain = tasks.get("knights_knaves").examples(3, 4, people=3)
    assert [r["quiz"] for r in rows] != [ex.prompt for ex in plain]


def test_data_gen_flags_are_the_tasks_generation_options(tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    assert main(["data", "gen", "--task", "math", "--level", "2", "--n", "2", "--out", str(out)]) == 0
    assert [json.loads(line)["level"] for line in out.read_text().splitlines()] == [2, 2]
    assert main(["data", "gen", "--task", "knights_knaves", "--people", "2", "4", "--n", "2", "--out",
                 str(out)]) == 0
    assert [len(json.loads(line)["names"]) for line in out.read_text().splitlines()] == [2, 4]
    with pytest.raises(SystemExit,
                       match="--people is a generation option of knights_knaves; task countdown's "
                                         "flags: --numbers"):
        main(["data", "gen", "--task", "countdown", "--people", "3", "--n", "1", "--out", str(out)])
    with pytest.raises(SystemExit):
        main(["data", "gen", "--help"])
    assert "countdown: how many numbers" in capsys.readouterr().out


def test_data_stats_counts_prompt_tokens_as_the_model_sees_them(tiny_model_dir, tmp_path, capsys):
    from rlvr.models import prompt_ids

    out = tmp_path / "kk.jsonl"
    assert main(["data", "gen", "--recipe", RECIPE, "--n", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["data", "stats", str(out), "--recipe", RECIPE, "--tokenizer", str(tiny_model_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    task = tasks.get("knights_knaves", **load_config(RECIPE).data.task_options)
    from rlvr.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    lengths = [len(prompt_ids(tokenizer, task.messages(ex), task.response_prefix))
               for ex in task.examples(2, 0)]
    assert result["prompt_tokens"]["max"] == max(lengths) and result["count"] == 2
