"""The `rlvr` command. `rlvr --help` lists the commands; each has its own --help.

    rlvr run RECIPE.yaml [key=value ...]      the whole pipeline of a recipe
    rlvr sft | rl RECIPE.yaml [key=value ...] one stage of a recipe
    rlvr eval --model DIR --task T --data F   evaluate a local model
    rlvr data gen | filter | dedup | stats | mix
    rlvr model init                           tiny offline model + tokenizer, HF format
    rlvr report RUN_DIR                       HTML report with plots
    rlvr noise RECIPE.yaml model.path=CKPT    gradient noise scale of the recipe's RL update and of SFT
    rlvr config RECIPE.yaml [key=value ...]   print the resolved config and derived sizes
    rlvr check-task my_pkg.tasks:MyTask       run the task contract checks on a task
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

# OpenMP threads spin while they wait by default; on a shared or oversubscribed CPU (a laptop,
# a CI box, Ray workers beside the learner) that made 2-thread steps 7-20x slower in our runs.
# Must be set before torch is imported (every torch import below is inside a command).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _kv(items: list[str]) -> dict:
    """--difficulty people=3 -> {"people": 3} (values parsed as YAML; `key=` is the empty string).

    YAML would read an empty value as null, which for an option such as system_prompt means "the
    task's default" -- the opposite of what `system_prompt=` says.
    """
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"rlvr: error: expected key=value, got {item!r}")
        out[key] = yaml.safe_load(value) if value.strip() else ""
    return out


def task_from_args(args: argparse.Namespace) -> tuple[str, dict[str, Any], Any]:
    """(task name, task options, the recipe's config or None) of a command that renders prompts:
    --recipe (a recipe or a run's config.yaml) gives its data.task and data.task_options, --task must
    agree with it, --task-option key=value goes over them. The task options decide the prompts a
    model sees (names, phrasing, system prompt): a model trained on one rendering fails on another."""
    task, options, config = args.task, {}, None
    if getattr(args, "recipe", None):
        from rlvr.config import load_config

        config = load_config(args.recipe, [])
        if task and task != config.data.task:
            raise SystemExit(f"rlvr: error: --task {task} but the recipe {args.recipe} trains "
                             f"{config.data.task}")
        task, options = config.data.task, dict(config.data.task_options)
    if not task:
        command = " ".join(c for c in (args.command, getattr(args, "data_command", None)) if c)
        raise SystemExit(f"rlvr: error: {command} needs --task or --recipe")
    options.update(_kv(getattr(args, "task_option", [])))
    return task, options, config


def cmd_run(args: argparse.Namespace) -> int:
    from rlvr.config import load_config
    from rlvr.trainers.pipeline import run

    overrides = list(args.overrides)
    if args.command == "sft":
        overrides += ["rl.enabled=false"]
    elif args.command == "rl":
        overrides += ["sft.enabled=false"]
    config = load_config(args.recipe, overrides)
    try:
        summary = run(config)
    except KeyboardInterrupt:
        print(f"rlvr: interrupted; {resume_point(Path(config.out_dir))}", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=2))
    return 0


def resume_point(run_dir: Path) -> str:
    """What running the same command again continues from (the newest checkpoint, if any)."""
    from rlvr.trainers.checkpoint import latest_checkpoint

    stages = [p for p in ((run_dir / "checkpoints" / s) for s in ("sft", "rl")) if p.is_dir()]
    newest = [c for c in (latest_checkpoint(p) for p in stages) if c is not None]
    if not newest:
        return ("no checkpoint was written yet: the same command starts the stage over (finished evaluations "
                "and generated data are kept)")
    return f"run the same command again to resume from {newest[-1]}"


def cmd_config(args: argparse.Namespace) -> int:
    from rlvr.config import dump_yaml, load_config
    from rlvr.trainers.budget import budget_lines

    config = load_config(args.recipe, args.overrides)
    print(dump_yaml(config))
    for key, value in config.derived_sizes().items():
        print(f"# {key}: {value}")
    lines, warning = budget_lines(config)
    for line in lines:
        print(f"# {line}")
    if warning:
        print(f"rlvr: {warning}", file=sys.stderr)
    return 0


def cmd_model_init(args: argparse.Namespace) -> int:
    from rlvr.models import init_model

    path = init_model(Path(args.out), preset=args.preset, tasks=tuple(args.task or ["knights_knaves"]),
                      seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def generation_flags() -> dict[str, tuple[Any, list[str]]]:
    """Each generation option (base.GenerationOption) of rlvr's own tasks -> (the option, the tasks
    declaring it): the task flags of `rlvr data gen` (--people, --numbers, --level, ...)."""
    from rlvr import tasks

    flags: dict[str, tuple[Any, list[str]]] = {}
    for name in (*tasks.TASKS, *tasks.OPTIONAL_TASKS):
        for option in tasks.class_default(name, "generation_options", ()):
            flags.setdefault(option.name, (option, []))[1].append(name)
    return flags


def task_flag_values(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """The task flags given on the command line, as difficulty keywords; a flag of another task is
    an error naming the flags `task` has (and --difficulty for the rest)."""
    from rlvr import tasks

    own = {option.name for option in tasks.class_default(task, "generation_options", ())}
    values: dict[str, Any] = {}
    for name, (_, owners) in generation_flags().items():
        value = getattr(args, f"gen_{name}", None)
        if value is None:
            continue
        if name not in own:
            flags = ", ".join(f"--{n.replace('_', '-')}" for n in sorted(own)) or "none"
            raise SystemExit(f"rlvr: error: --{name.replace('_', '-')} is a generation option of "
                             f"{', '.join(owners)}; task {task}'s flags: {flags} (any other difficulty "
                             "keyword: --difficulty key=value)")
        values[name] = value[0] if isinstance(value, list) and len(value) == 1 else value
    return values


def cmd_data_gen(args: argparse.Namespace) -> int:
    from rlvr.data.tools import generate

    task, options, _ = task_from_args(args)
    difficulty = {**_kv(args.difficulty), **task_flag_values(args, task)}
    path = generate(task, args.n, args.seed, Path(args.out), task_options=options, **difficulty)
    print(f"wrote {args.n} {task} problems to {path}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from rlvr.data.curation import stats
    from rlvr.models import load_tokenizer
    from rlvr.trainers.pipeline import recipe_tokenizer

    task: str | None = None
    options: dict[str, Any] = {}
    config = None
    if args.task or args.recipe:
        task, options, config = task_from_args(args)
    tokenizer = None
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    elif config is not None:  # the run's tokenizer, as `rlvr run` builds it
        tokenizer = recipe_tokenizer(config)
    print(json.dumps(stats(args.file, samples=args.samples, task=task, tokenizer=tokenizer,
                           task_options=options, config=config), indent=2))
    return 0


def cmd_data_filter(args: argparse.Namespace) -> int:
    from rlvr.evaluation import EvalSampling
    from rlvr.evaluation.pass_rate import filter_command
    from rlvr.tasks import get

    task, options, config = task_from_args(args)
    max_new_tokens = args.max_new_tokens or (config.rl.max_new_tokens if config is not None else 1024)
    sampling = EvalSampling(n=args.n, temperature=args.temperature, max_new_tokens=max_new_tokens,
                            seed=args.seed)
    report = filter_command(args.data, args.out, get(task, **options), args.model, sampling=sampling,
                            keep=(args.low, args.high), device=args.device)
    print(json.dumps(report, indent=2))
    return 0


def cmd_data_dedup(args: argparse.Namespace) -> int:
    from rlvr.data.curation import dedup
    from rlvr.tasks import get

    task = None
    if args.task or args.recipe:
        name, options, _ = task_from_args(args)
        task = get(name, **options)
    report = dedup(args.data, args.out, against=tuple(args.against), method=args.method,
                   threshold=args.threshold, field=args.field, task=task)
    print(json.dumps(report, indent=2))
    return 0


def cmd_data_mix(args: argparse.Namespace) -> int:
    from rlvr.data.curation import mix

    print(json.dumps(mix(args.sources, args.out, total=args.total, seed=args.seed), indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rlvr.evaluation import EvalSampling, ModelLoading, eval_command, format_summary
    from rlvr.tasks import get

    task, options, config = task_from_args(args)
    max_new_tokens = args.max_new_tokens or (config.eval.max_new_tokens if config is not None else 1024)
    sampling = EvalSampling.from_options(n=args.n, k=args.k, temperature=args.temperature, top_p=args.top_p,
                                         max_new_tokens=max_new_tokens, seed=args.seed)
    if config is not None:  # the recipe's prompts, rendered as its run renders them
        from rlvr.trainers.pipeline import build_task

        config.data.task_options = options
        chosen, template = build_task(config), config.data.prompt_template
    else:
        chosen, template = get(task, **options), ""
    loading = ModelLoading(engine=args.engine, device=args.device, dtype=args.dtype, prompt_template=template)
    result = eval_command(args.model, chosen, args.data, args.out, sampling=sampling, loading=loading,
                          limit=args.limit)
    print(format_summary(result))
    return 0


def cmd_noise(args: argparse.Namespace) -> int:
    from rlvr.config import load_config
    from rlvr.data.io import write_json_atomic
    from rlvr.diagnostics.noise import describe, measure

    config = load_config(args.recipe, args.overrides)
    result = measure(config, groups=args.groups, sft_examples=args.sft_examples, parts=args.parts)
    print(describe(result))
    if args.out:
        write_json_atomic(Path(args.out), result)
        print(f"wrote {args.out}")
    return 0


def cmd_check_task(args: argparse.Namespace) -> int:
    from rlvr.tasks.contract import describe_results, load_and_check

    results = load_and_check(args.task, _kv(args.task_option), args.data, args.n, args.timeout_seconds)
    print(describe_results(args.task, results))
    return 1 if any(r.status == "fail" for r in results) else 0


def cmd_report(args: argparse.Namespace) -> int:
    from rlvr.evaluation.report import write_report

    print(f"wrote {write_report(Path(args.run_dir))}")
    return 0


# ---------------------------------------------------------------------------------------------
# The parser: one function per group of commands.


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every option's help ends with "(required)" or its default, unless
    the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        says_default = "default" in text or "required" in text
        if not action.option_strings or says_default or action.default is argparse.SUPPRESS:
            return text
        if action.required:
            return text + " (required)"
        if action.default is None or (isinstance(action.default, list) and not action.default):
            return text + " (default: none)"
        if isinstance(action, argparse._StoreTrueAction):
            return text + " (default: off)"
        return text + " (default: %(default)s)"


RUN_DESCRIPTION = """Run a recipe: data -> model -> cold-start SFT -> eval -> RL -> eval -> summary.json \
and report.html,
all written to the run directory out_dir (the recipe's; out_dir=DIR picks another).

Resume: running the same command again continues from the newest checkpoint of the unfinished
stage (finished stages, evaluations and generated data are reused); a run directory holding a
different config is refused, naming the keys that differ (threads, logging and name may change).

key=value overrides go anywhere on the line (rl.lr=1e-6 rl.group_size=16). `rlvr config RECIPE
[key=value ...]` prints the resolved config, the batch sizes and the memory estimate without running.
"""

STAGE_DESCRIPTIONS = {
    "sft": "Only the SFT stage of a recipe (rl.enabled=false): trains, evaluates the SFT model once "
           "and writes\n"
           "its own summary.json; checkpoints in OUT_DIR/checkpoints/sft/step_NNNNNN. Resume as `rlvr run`.",
    "rl": "Only the RL stage of a recipe (sft.enabled=false), from model.path: e.g. an SFT checkpoint\n"
          "(model.path=runs/sft/checkpoints/sft/step_000500) into a new out_dir. Resume as `rlvr run`.",
    "config": "Print the resolved config of a recipe with its overrides, the derived batch sizes, the RL\n"
              "stage's samples and tokens, and its peak-memory estimate. Runs nothing; bad keys fail here.",
}


def add_recipe_commands(sub: Any) -> None:
    """run, sft, rl, config: a recipe and key=value overrides."""
    for name, help_text in (("run", "the whole pipeline of a recipe (data, model, SFT, RL, eval, report)"),
                            ("sft", "only the SFT stage of a recipe"),
                            ("rl", "only the RL stage of a recipe"),
                            ("config", "print the resolved config of a recipe and its derived sizes")):
        p = sub.add_parser(name, help=help_text, description=STAGE_DESCRIPTIONS.get(name, RUN_DESCRIPTION),
                           formatter_class=_HelpFormatter)
        p.add_argument("recipe", help="YAML recipe (see recipes/) or a run's config.yaml")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rl.lr=1e-6 out_dir=runs/mine")
        p.set_defaults(func=cmd_config if name == "config" else cmd_run)


def add_task_arguments(p: argparse.ArgumentParser, required_hint: str = "") -> None:
    """--task / --recipe / --task-option of a command that renders a task's prompts (task_from_args)."""
    p.add_argument("--task", default=None,
                   help=f"the task, e.g. knights_knaves, math, countdown{required_hint}")
    p.add_argument("--recipe", default=None,
                   help="a recipe or a run's config.yaml: its data.task and data.task_options (the prompts "
                        "its model was trained on)")
    p.add_argument("--task-option", action="append", default=[],
                   help="task option key=value, over the recipe's (repeatable)")


def add_eval_command(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate a local model on a task's data file",
                       formatter_class=_HelpFormatter,
                       description="Sample a local model on problems of a task and report avg@n, pass@k, "
                                   "maj@k, format errors\nand lengths; with --recipe, the task options and "
                                   "eval.max_new_tokens of that recipe.")
    p.add_argument("--model", required=True, help="local HF model directory (e.g. a run's checkpoint)")
    add_task_arguments(p, " (or take it from --recipe)")
    p.add_argument("--data", default=None, help="JSONL/parquet problems (default: generated by the task)")
    p.add_argument("--n", type=int, default=1, help="samples per problem")
    p.add_argument("--k", type=_int_list, default=[1], help="k values of pass@k / maj@k, e.g. 1,4,16")
    p.add_argument("--temperature", type=float, default=None, help="default: 0 for n=1, else 0.6")
    p.add_argument("--top-p", type=float, default=None, help="default: 1.0 for n=1, else 0.95")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when there is one)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                   help="parameter dtype")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="completion token limit; default: the recipe's eval.max_new_tokens, else 1024")
    p.add_argument("--engine", default="torch", choices=["torch", "vllm"],
                   help="rollout engine: rlvr's torch engine or vLLM (installed separately; many samples)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems")
    p.add_argument("--out", default=None, help="output directory (metrics.json, samples.jsonl)")
    p.set_defaults(func=cmd_eval)


def add_tool_commands(sub: Any) -> None:
    """noise, check-task, report, model init."""
    p = sub.add_parser("noise",
                       help="gradient noise scale of a recipe's RL update (and of SFT) at a checkpoint",
                       formatter_class=_HelpFormatter)
    p.add_argument("recipe", help="YAML recipe (its RL settings and task); pass model.path=CHECKPOINT")
    p.add_argument("overrides", nargs="*",
                   help="key=value overrides, e.g. model.path=runs/x/checkpoints/sft/step_000500")
    p.add_argument("--groups", type=int, default=256, help="RL groups to take gradients of")
    p.add_argument("--sft-examples", type=int, default=256,
                   help="solution traces to take SFT gradients of (0: none)")
    p.add_argument("--parts", type=int, default=8,
                   help="interleaved parts of the units, for the jackknife interval of B_noise (even, >= 2; "
                        "memory: 2 x parts float64 copies of the trained parameters)")
    p.add_argument("--out", default=None, help="JSON file for the figures")
    p.set_defaults(func=cmd_noise)

    p = sub.add_parser("check-task", help="run the task contract checks (oracle scores the max, garbage the "
                                          "min, scorer total and bounded in time) on a task",
                       formatter_class=_HelpFormatter)
    p.add_argument("task", help="a task name or spec: my_pkg.tasks:MyTask, path/to/file.py:MyTask")
    p.add_argument("--task-option", action="append", default=[], help="task option key=value (repeatable)")
    p.add_argument("--data", default=None, help="check on this file's rows (a task without a generator)")
    p.add_argument("--n", type=int, default=8, help="problems to check on")
    p.add_argument("--timeout-seconds", type=float, default=10.0, help="deadline of one score call")
    p.set_defaults(func=cmd_check_task)

    p = sub.add_parser("report", help="write RUN_DIR/report.html with plots", formatter_class=_HelpFormatter)
    p.add_argument("run_dir", help="a run directory (metrics.jsonl, eval/, summary.json)")
    p.set_defaults(func=cmd_report)

    model = sub.add_parser("model", help="model tools").add_subparsers(dest="model_command", required=True)
    p = model.add_parser("init", help="build a tiny model + tokenizer offline in HF format",
                         formatter_class=_HelpFormatter)
    p.add_argument("--preset", default="tiny", choices=list(_presets()), help="model size")
    p.add_argument("--task", action="append", default=None,
                   help="task(s) whose text trains the tokenizer (repeatable; default: knights_knaves)")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model there")
    p.set_defaults(func=cmd_model_init)


def add_data_commands(sub: Any) -> None:
    """data gen, stats, and the curation tools (filter, dedup, mix)."""
    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("gen", help="generate problems of a task", formatter_class=_HelpFormatter,
                        description="Write --n problems of a task. The task flags below are the tasks' own\n"
                                    "generation options (a task's generation_options); any other difficulty\n"
                                    "keyword of the task's generator: --difficulty key=value.")
    add_task_arguments(p, " (required unless --recipe)")
    p.add_argument("--n", type=int, required=True, help="problems to write")
    p.add_argument("--seed", type=int, default=0, help="generator seed (problem i comes from seed + i)")
    for name, (option, owners) in generation_flags().items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=f"gen_{name}", type=option.type, default=None,
                       nargs="+" if option.several else None, metavar=name.upper(),
                       help=f"{', '.join(owners)}: {option.help}")
    p.add_argument("--difficulty", nargs="*", default=None,
                   help="other difficulty keywords as key=value (default: none)")
    p.add_argument("--out", required=True, help="output .jsonl or .parquet")
    p.set_defaults(func=cmd_data_gen)

    p = data.add_parser("stats", help="length and difficulty statistics of a data file",
                        formatter_class=_HelpFormatter)
    p.add_argument("file", help="JSONL/parquet data file")
    add_task_arguments(p, " (default: guessed from the fields)")
    p.add_argument("--samples", default=None, help="a samples.jsonl: adds Light-R1's context-length advice")
    p.add_argument("--tokenizer", default=None,
                   help="a model directory: adds token lengths (prompts as the model sees them, chat "
                        "template included)")
    p.set_defaults(func=cmd_data_stats)

    add_curation_commands(data)


def add_curation_commands(data: Any) -> None:
    """data filter, dedup, mix: the curation tools (rlvr.data.curation, rlvr.evaluation.pass_rate)."""
    p = data.add_parser("filter", help="keep problems whose pass rate under a model is in [low, high]",
                        formatter_class=_HelpFormatter,
                        description="Light-R1's difficulty filter: sample each problem --n times with a "
                                    "local model and keep\nthose whose pass rate is in [--low, --high]. "
                                    "Writes OUT, OUT's .pass_rates.jsonl and .filter.json.")
    p.add_argument("--model", required=True, help="local HF model directory that samples the problems")
    add_task_arguments(p, " (required unless --recipe)")
    p.add_argument("--data", required=True, help="JSONL/parquet problems to filter")
    p.add_argument("--out", required=True, help="output file of the kept problems")
    p.add_argument("--n", type=int, default=8, help="samples per problem")
    p.add_argument("--low", type=float, default=0.2, help="lowest pass rate kept")
    p.add_argument("--high", type=float, default=0.625, help="highest pass rate kept")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="completion token limit; default: the recipe's rl.max_new_tokens, else 1024")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when there is one)")
    p.set_defaults(func=cmd_data_filter)

    p = data.add_parser("dedup", help="remove exact, normalised and near duplicates (and contamination)",
                        formatter_class=_HelpFormatter)
    p.add_argument("--data", required=True, help="JSONL/parquet problems")
    p.add_argument("--out", required=True, help="output file of the kept problems")
    p.add_argument("--against", nargs="*", default=[], help="benchmark files to check contamination against")
    p.add_argument("--field", default=None, help="text field (default: the task's prompt)")
    add_task_arguments(p, " whose prompt is the text compared (default: guessed)")
    p.add_argument("--threshold", type=float, default=0.8,
                   help="MinHash Jaccard threshold of near duplicates")
    p.add_argument("--method", default="minhash", choices=["minhash", "embedding", "none"],
                   help="near-duplicate method (none: exact and normalised only)")
    p.set_defaults(func=cmd_data_dedup)

    p = data.add_parser("mix", help="mix sources with weights into one file, keeping provenance",
                        formatter_class=_HelpFormatter)
    p.add_argument("sources", nargs="+", help="FILE[:WEIGHT]")
    p.add_argument("--total", type=int, default=None,
                   help="rows to write (default: the most without repeats)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", required=True, help="output file")
    p.set_defaults(func=cmd_data_mix)


def _presets() -> list[str]:
    from rlvr.models.factory import PRESETS  # no torch import

    return list(PRESETS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlvr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_recipe_commands(sub)
    add_eval_command(sub)
    add_tool_commands(sub)
    add_data_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides after options (`rlvr noise R --groups 8 threads=1`) belong to them too
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from rlvr.errors import USER_ERRORS

    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"rlvr: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as err:  # a bad argument deep inside: one line, not a traceback
        if os.environ.get("RLVR_TRACEBACK"):
            raise
        print(f"rlvr: error: {err} (RLVR_TRACEBACK=1 shows where)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlvr: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
