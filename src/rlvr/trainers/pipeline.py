"""`rlvr run RECIPE`: data -> model -> cold-start SFT -> eval -> RL -> eval -> summary and report.

Every stage is resumable: running the same recipe on the same run directory again continues
from the newest checkpoint (a finished stage is not redone, cached evaluations are reused).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoConfig

from rlvr import tasks
from rlvr.config import RunConfig, dump_yaml, from_dict, to_dict
from rlvr.data.conversations import Conversation, read_conversations, tokenize
from rlvr.data.io import load_examples, write_json_atomic, write_jsonl_atomic
from rlvr.distributed import connect, describe_placement, make_engine, make_learner
from rlvr.distributed import placement as ray_placement
from rlvr.errors import ConfigError, DataError, RunDirError
from rlvr.evaluation import EvalSampling, evaluate, write_eval
from rlvr.evaluation.metrics import breakdown_table, difficulty_keys_of
from rlvr.evaluation.report import write_report
from rlvr.models import (
    batch_prompt_ids,
    eos_token_ids,
    init_model,
    load_model,
    load_tokenizer,
    lora,
    native,
    prompt_ids,
)
from rlvr.models.chat import PromptTemplateError, set_prompt_template, template_as_jinja
from rlvr.models.factory import PRESETS, TYPICAL_VOCAB_SIZE, model_config
from rlvr.models.loading import ModelLoadError, adapter_base, merged_model_dir, model_config_dir
from rlvr.models.lora import hf_state_dict
from rlvr.rollout.partial import PartialRollouts
from rlvr.rollout.torch_engine import TorchEngine
from rlvr.rollout.vllm_engine import INSTALL, VLLMEngine, check_supported, vllm_available
from rlvr.tasks.generic import RowPrompts, WithRewardFunctions
from rlvr.tasks.mixed import MixedTask
from rlvr.tasks.reward_functions import RewardFunctionError, load_reward_function
from rlvr.trainers import metric_names as M
from rlvr.trainers.budget import budget_lines
from rlvr.trainers.common import MetricsLogger, cpu_threads, setup_torch
from rlvr.trainers.critic import Critic, build_critic, check_critic_dir
from rlvr.trainers.rl import ProblemPool, RLRun, Sampler, train_rl
from rlvr.trainers.sft import SFTExample, SFTRun, train_sft, truncate


def log(message: str) -> None:
    print(f"[rlvr] {message}", flush=True)


# Keys that cannot change what a run computes: a run directory resumes across changes to them.
RESUME_FREE_KEYS = ("name", "out_dir", "threads", "logging")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        nested = isinstance(value, dict) and value
        out.update(_flat(value, f"{prefix}{key}.") if nested else {f"{prefix}{key}": value})
    return out


def config_differences(saved_text: str, config: RunConfig) -> list[str]:
    """The keys (other than RESUME_FREE_KEYS) whose values differ between a saved config.yaml and `config`."""
    raw = yaml.safe_load(saved_text) or {}
    try:  # through the loader, so a key the saved file predates compares as its default
        raw = to_dict(from_dict(RunConfig, raw, ""))
    except ConfigError:
        pass
    old, new = _flat(raw), _flat(to_dict(config))
    keys = sorted(set(old) | set(new))
    return [f"{k} ({old.get(k, '<absent>')!r} there, {new.get(k, '<absent>')!r} here)" for k in keys
            if old.get(k, "<absent>") != new.get(k, "<absent>") and k.split(".")[0] not in RESUME_FREE_KEYS]


def prepare_run_dir(config: RunConfig) -> Path:
    """Create the run directory, or check that an existing one holds this same run (then resume).

    Call it only once the inputs are checked (check_inputs): a start that fails must leave nothing."""
    run_dir = Path(config.out_dir)
    saved = run_dir / "config.yaml"
    text = dump_yaml(config)
    if saved.exists():
        differ = config_differences(saved.read_text(), config)
        if differ:
            raise RunDirError(
                f"run directory {run_dir} already holds a different run: {'; '.join(differ)}. Pass "
                f"out_dir=... for a new run, or the same recipe and overrides to resume it"
            )
        log(f"resuming the run in {run_dir}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(f"run directory {run_dir} exists, is not empty and holds no config.yaml; choose "
                          "another out_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(saved)
    return run_dir


@dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: Any
    packed: bool  # native implementation: packed sequences with segment-aware attention
    path: Path


def load_policy(path: Path, impl: str, dtype: str, device: torch.device) -> Policy:
    """The learner: rlvr's native model when it reproduces the architecture exactly, else transformers'."""
    tokenizer = load_tokenizer(path)
    if impl in ("auto", "native"):
        ok, reason = native.is_supported(AutoConfig.from_pretrained(str(path), local_files_only=True))
        if ok:
            torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
            model = native.NativeCausalLM.from_pretrained(str(path), dtype=torch_dtype, device=device)
            return Policy(model.eval(), tokenizer, True, path)
        if impl == "native":
            raise ConfigError(f"model.impl=native cannot run {path}: {reason}; use model.impl=auto or hf")
    return Policy(load_model(path, dtype=dtype, device=str(device)).eval(), tokenizer, False, path)


def with_lora(policy: Policy, config: RunConfig) -> Policy:
    """The policy with model.lora's adapters (peft); only they train. Unchanged when model.lora is null."""
    cfg = config.model.lora
    if cfg is None:
        return policy
    model = lora.apply_lora(policy.model, cfg.r, cfg.alpha, cfg.dropout, cfg.target_modules, policy.path)
    return dataclasses.replace(policy, model=model)


def check_lora(config: RunConfig) -> None:
    """model.lora: peft is installed and every target names a Linear layer of the run's model (built
    on the meta device from model.path's config.json or the preset: no weights are read)."""
    cfg = config.model.lora
    if cfg is None:
        return
    if not lora.peft_available():
        raise ConfigError(f"config key model.lora: LoRA needs peft, which is not installed ({lora.INSTALL})",
                          key="model.lora")
    if config.model.path:
        hf_config = AutoConfig.from_pretrained(str(model_config_dir(config.model.path)),
                                               local_files_only=True)
    else:
        hf_config = model_config(PRESETS[config.model.preset], TYPICAL_VOCAB_SIZE, pad_id=0, eos_id=1)
    try:
        lora.check_targets(lora.skeleton(hf_config, config.model.impl), cfg.target_modules)
    except lora.LoRAError as error:
        raise ConfigError(f"config key model.lora.target_modules: {error}",
                          key="model.lora.target_modules") from None


def build_model_dir(config: RunConfig, run_dir: Path) -> Path:
    if config.model.path:
        path = Path(config.model.path)
        if not path.is_dir():
            raise ConfigError(f"config key model.path: {path} is not a directory (rlvr loads local HF "
                              "directories)")
        return path

    path = run_dir / "model_init"
    if not (path / "config.json").exists():
        log(f"building the {config.model.preset!r} model and tokenizer offline in {path}")
        init_model(path, preset=config.model.preset, tasks=(config.data.task,), seed=config.seed,
                   task_options={config.data.task: config.data.task_options})
    return path


def reward_specs(section: Any) -> list[tuple[str, float]]:
    """(spec, weight) of a section's `function` (weight 1) and `functions` (reward, a data source)."""
    single = [(section.function, 1.0)] if section.function else []
    return single + [(f.function, f.weight) for f in section.functions]


def recipe_tokenizer(config: RunConfig) -> Any:
    """The tokenizer a run of `config` uses, without writing its run directory: model.path's, the
    run's model_init when it was built, else the preset's, built offline in a temporary directory
    exactly as `rlvr run` builds it (`rlvr data stats --recipe`)."""
    built = Path(config.out_dir) / "model_init"
    if not config.model.path and (built / "config.json").is_file():
        return load_tokenizer(built)
    with tempfile.TemporaryDirectory() as scratch:
        return load_tokenizer(build_model_dir(config, Path(scratch)))


def with_reward_functions(task: tasks.Task, reward: Any, specs: list[tuple[str, float]] | None = None,
                          key: str = "reward", generic_ok: bool = False) -> tasks.Task:
    """The task, plus reward functions when any (loaded now: bad specs fail here, naming `key`).

    specs: (spec, weight) pairs, by default the `reward` section's; reward gives the deadline and
    error_reward. A generic task needs a function unless generic_ok (a source of a mixed run whose
    rows are scored by the run-wide reward functions)."""
    specs = reward_specs(reward) if specs is None else specs
    if not specs:
        if task.name == "generic" and not generic_ok:
            where = "data.task generic" if key == "reward" else f"config key {key}: task generic"
            raise ConfigError(f"{where} needs reward.function or reward.functions"
                              + ("" if key == "reward" else f" (or {key}.function / functions)"), key=key)
        return task
    try:
        loaded = [(load_reward_function(spec, reward.timeout_seconds, reward.error_reward, report=log),
                   weight) for spec, weight in specs]
    except RewardFunctionError as error:
        raise ConfigError(f"config key {key}: {error}", key=key) from None
    return WithRewardFunctions(task, loaded)  # type: ignore[return-value]


def _get_task(name: str, options: dict[str, Any], prefix: str, row_prompt: str = "keep") -> tasks.Task:
    """The task `name`; with row_prompt keep, rows' chat prompts are used as given (RowPrompts)."""
    try:
        task = tasks.get(name, **options)
    except tasks.TaskError as err:  # a spec that does not import, or builds no Task
        raise ConfigError(f"config key {prefix}.task: {err}", key=f"{prefix}.task") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key {prefix}.task_options: {err}", key=f"{prefix}.task_options") from None
    if row_prompt == "keep" and task.name != "generic":  # generic rows are prompted as given anyway
        return RowPrompts(task)  # type: ignore[return-value]
    return task


def build_task(config: RunConfig) -> tasks.Task:
    """The run's task with its reward functions; `mixed`: one task per data source (data.sources),
    each with the source's own functions, and the run-wide reward.function(s) over all of them."""
    data = config.data
    if data.task != "mixed":
        task = _get_task(data.task, data.task_options, "data", data.row_prompt)
        return with_reward_functions(task, config.reward)
    run_wide = bool(reward_specs(config.reward))
    routes = {}
    for name, source in data.sources.items():
        key = f"data.sources.{name}"
        routed = _get_task(source.task, source.task_options, key, data.row_prompt)
        routes[name] = with_reward_functions(routed, config.reward, reward_specs(source), key,
                                             generic_ok=run_wide)
    try:
        task = MixedTask(routes)
    except ValueError as err:
        raise ConfigError(f"config key data.sources: {err}", key="data.sources") from None
    return with_reward_functions(task, config.reward)  # type: ignore[arg-type]


def source_weights(config: RunConfig) -> Callable[[list[tasks.Example]], list[float]] | None:
    """Per-row sampling weights of a mixed run: row of source s gets weight_s / (rows of s in the pool),
    so each source's share of the draws is its weight over the sum (None: uniform over rows)."""
    if config.data.task != "mixed":
        return None
    weights = {name: source.weight for name, source in config.data.sources.items()}

    def per_row(pool: list[tasks.Example]) -> list[float]:
        counts: dict[str, int] = {}
        for ex in pool:
            counts[ex.metadata["data_source"]] = counts.get(ex.metadata["data_source"], 0) + 1
        return [weights[ex.metadata["data_source"]] / counts[ex.metadata["data_source"]] for ex in pool]

    return per_row


@dataclass
class Inputs:
    """What check_inputs read and checked before the run writes anything."""

    task: tasks.Task
    train_rows: list[tasks.Example] | None  # data.train_file's problems (None: generated)
    eval_rows: list[tasks.Example] | None  # data.eval_file's first data.eval_size problems (None: generated)
    sft_rows: list[Conversation] | None = None  # sft.train_file's conversations (None: solver traces)


def _read_input(task: tasks.Task, key: str, path: str, limit: int | None = None) -> list[tasks.Example]:
    try:
        rows = load_examples(task, path, limit=limit)
    except (DataError, OSError) as err:
        raise ConfigError(f"config key {key}: {err}", key=key) from None
    if not rows:
        raise ConfigError(f"config key {key}: {path} holds no problems", key=key)
    return rows


def check_model_path(config: RunConfig) -> None:
    """model.path, when set, is a local directory; an adapter-only LoRA checkpoint's base model is here."""
    if not config.model.path:
        return
    if not Path(config.model.path).is_dir():
        raise ConfigError(f"config key model.path: {config.model.path} is not a directory (rlvr loads "
                          f"local HF directories)", key="model.path")
    try:
        adapter_base(config.model.path)
    except ModelLoadError as err:
        raise ConfigError(f"config key model.path: {err}", key="model.path") from None


def check_inputs(config: RunConfig) -> Inputs:
    """Build the task and read every input the run names (model directory, data files), checking
    each, before anything is written or computed; errors name the key, the file and the line."""
    data = config.data
    task = build_task(config)
    if data.prompt_template:
        try:
            template_as_jinja(data.prompt_template, task.response_prefix)
        except PromptTemplateError as err:
            raise ConfigError(f"config key data.prompt_template: {err}", key="data.prompt_template") from None
    if config.model.engine == "vllm":
        check_vllm(config)
    if config.distributed == "ray" and config.ray.address and config.rl.enabled and config.rl.steps > 0:
        check_ray_cluster(config)
    check_model_path(config)
    check_lora(config)
    if data.require_files:
        for key in ("train_file", "eval_file"):
            if not getattr(data, key):
                raise ConfigError(f"config key data.{key}: this recipe trains on its data files "
                                  f"(data.require_files=true), so pass data.{key}=FILE", key=f"data.{key}")
    rl = config.rl
    check_generated_difficulties(config, task)
    eval_rows = (_read_input(task, "data.eval_file", data.eval_file, data.eval_size)
                 if data.eval_file else None)
    train_rows = None
    if data.train_file and rl.enabled and rl.steps > 0:
        train_rows = _read_input(task, "data.train_file", data.train_file)
        wanted = [(f"rl.curriculum[{i}].value", s.value) for i, s in enumerate(rl.curriculum)]
        if not rl.curriculum or rl.curriculum[0].start_step > 0:
            wanted.insert(0, ("data.difficulty", data.difficulty))
        for key, difficulty in wanted:
            if not any(matches(ex, difficulty) for ex in train_rows):
                raise ConfigError(f"config key data.train_file: {data.train_file} has no problem of the RL "
                                  f"difficulty {difficulty} ({key})", key=key)
        present = {ex.metadata.get("data_source") for ex in train_rows}
        for name in data.sources:
            if name not in present:
                raise ConfigError(f"config key data.sources.{name}: {data.train_file} has no row of "
                                  f"data_source {name!r} (its sources: "
                                  f"{', '.join(sorted(map(str, present)))})",
                                  key=f"data.sources.{name}")
    return Inputs(task, train_rows, eval_rows, read_sft_file(config))


def read_sft_file(config: RunConfig) -> list[Conversation] | None:
    """sft.train_file's conversations, every row checked (None without the file or an SFT stage)."""
    sft = config.sft
    if not (sft.train_file and sft.enabled and sft.steps > 0):
        return None
    try:
        rows = read_conversations(sft.train_file)
    except (DataError, OSError) as err:
        raise ConfigError(f"config key sft.train_file: {err}", key="sft.train_file") from None
    if not rows:
        raise ConfigError(f"config key sft.train_file: {sft.train_file} holds no conversations",
                          key="sft.train_file")
    return rows


def check_generated_difficulties(config: RunConfig, task: tasks.Task) -> None:
    """Generate one problem of every difficulty the run will generate (held-out set, RL problems
    and curriculum stages without data files, SFT traces): a difficulty the task refuses stops the
    run at start-up, naming the key."""
    data, rl = config.data, config.rl
    generated = [("data.eval_difficulty", data.eval_difficulty)] if not data.eval_file else []
    if rl.enabled and rl.steps > 0 and not data.train_file:
        generated += [("data.difficulty", data.difficulty)]
        generated += [(f"rl.curriculum[{i}].value", s.value) for i, s in enumerate(rl.curriculum)]
    if config.sft.enabled:
        generated += [("sft.difficulty", config.sft.difficulty)]
    for key, difficulty in generated:
        try:
            task.examples(1, seed=config.seed, **(difficulty or {}))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config key {key}: task {task.name!r} cannot generate problems of difficulty "
                              f"{difficulty}: {err}", key=key) from None


def held_out_examples(config: RunConfig, task: tasks.Task, run_dir: Path,
                      rows: list[tasks.Example] | None = None) -> list[tasks.Example]:
    data = config.data
    if rows is not None:
        return rows
    if data.eval_file:
        return load_examples(task, data.eval_file, limit=data.eval_size)
    cached = run_dir / "data" / "eval.jsonl"
    if cached.exists():
        return load_examples(task, cached)
    examples = task.examples(data.eval_size, seed=config.seed + 10_007, **(data.eval_difficulty or {}))
    write_jsonl_atomic(cached, [task.to_record(ex) for ex in examples])
    return examples


def matches(example: tasks.Example, difficulty: dict[str, Any]) -> bool:
    for key, wanted in difficulty.items():
        value = example.metadata.get(key)
        allowed = wanted if isinstance(wanted, list | tuple) else [wanted]
        if value not in allowed:
            return False
    return True


def training_source(config: RunConfig, task: tasks.Task, banned: set[str],
                    loaded: list[tasks.Example] | None = None,
                    fits: Callable[[tasks.Example], bool] | None = None):
    """difficulty -> training problems, never one whose prompt is in the held-out set, and only
    those whose prompt `fits` (data.max_prompt_tokens) when given."""
    data = config.data
    rows: list[tasks.Example] | None = None
    if data.train_file:
        loaded = loaded if loaded is not None else load_examples(task, data.train_file)
        rows = [ex for ex in loaded if ex.prompt not in banned]
        if fits is not None:
            kept = [ex for ex in rows if fits(ex)]
            log(f"data.max_prompt_tokens {data.max_prompt_tokens}: left out {len(rows) - len(kept)} of "
                f"{len(rows)} training problems of {data.train_file} with a longer prompt")
            rows = kept

    def source(difficulty: dict[str, Any]) -> list[tasks.Example]:
        if rows is not None:
            return [ex for ex in rows if matches(ex, difficulty)]
        generated = task.examples(data.train_size, seed=config.seed, **difficulty)
        return [ex for ex in generated if ex.prompt not in banned and (fits is None or fits(ex))]

    return source


def prompt_tokens(tokenizer: Any, task: tasks.Task, limit: int) -> tuple[
        Callable[[tasks.Example], list[int]], Callable[[tasks.Example], bool] | None]:
    """(example -> its prompt's token ids, cached; example -> whether they fit data.max_prompt_tokens,
    or None without a limit)."""
    cache: dict[str, list[int]] = {}

    def ids(ex: tasks.Example) -> list[int]:
        if ex.prompt not in cache:
            cache[ex.prompt] = prompt_ids(tokenizer, task.messages(ex), task.response_prefix)
        return cache[ex.prompt]

    return ids, ((lambda ex: len(ids(ex)) <= limit) if limit else None)


def within_prompt_limit(examples: list[tasks.Example], fits: Callable[[tasks.Example], bool], limit: int,
                        what: str) -> list[tasks.Example]:
    """The examples whose prompt fits data.max_prompt_tokens (logged; none left is an error)."""
    kept = [ex for ex in examples if fits(ex)]
    if len(kept) < len(examples):
        log(f"data.max_prompt_tokens {limit}: left out {len(examples) - len(kept)} of {len(examples)} {what} "
            f"with a longer prompt")
    if not kept:
        raise ConfigError(f"config key data.max_prompt_tokens: every one of the {len(examples)} {what} has a "
                          f"prompt longer than {limit} tokens", key="data.max_prompt_tokens")
    return kept


def solution_target(task: tasks.Task) -> Callable[[tasks.Example], str] | None:
    """What SFT imitates on a task: its solution trace, else its oracle completion (None: neither)."""
    return getattr(task, "solution_trace", None) or getattr(task, "oracle_completion", None)


def trace_pairs(task: tasks.Task, tokenizer: Any, examples: Sequence[tasks.Example], eos_id: int,
                target: Callable[[tasks.Example], str]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target completion ids + EOS) of `examples`, tokenized in batches."""
    prompts = batch_prompt_ids(tokenizer, [task.messages(ex) for ex in examples], task.response_prefix)
    completions = tokenizer([target(ex) for ex in examples], add_special_tokens=False)["input_ids"]
    return [(p, list(c) + [eos_id]) for p, c in zip(prompts, completions)]


def sft_pairs(config: RunConfig, task: tasks.Task, tokenizer: Any, eos_id: int, banned: set[str]):
    """(prompt ids, target completion ids + EOS) for cold-start SFT, tokenized in batches."""
    target = solution_target(task)
    if target is None:
        raise ConfigError(f"sft.enabled: task {task.name!r} has no solution traces to imitate; set "
                          "sft.enabled=false")
    examples = task.examples(config.sft.data_size, seed=config.seed + 20_011, **(config.sft.difficulty or {}))
    examples = [ex for ex in examples if ex.prompt not in banned]
    pairs = trace_pairs(task, tokenizer, examples, eos_id, target)
    limit = config.data.max_prompt_tokens
    return [(p, c) for p, c in pairs if len(p) <= limit] if limit else pairs


def sft_examples(config: RunConfig, task: tasks.Task, policy: Policy, eos_ids: tuple[int, ...],
                 banned: set[str],
                 rows: list[Conversation] | None) -> tuple[list[SFTExample], dict[str, Any]]:
    """The SFT stage's sequences (sft.train_file's conversations, else the task's solver traces), cut
    at sft.max_seq_len, and what the summary reports about them."""
    if rows is not None:
        try:
            examples = [SFTExample(ids, trained)
                        for ids, trained in tokenize(policy.tokenizer, rows, eos_ids)]
        except ValueError as error:
            raise ConfigError(f"config key sft.train_file: {error}", key="sft.train_file") from None
        source = f"{len(examples)} conversations of {config.sft.train_file}"
    else:
        pairs = sft_pairs(config, task, policy.tokenizer, eos_ids[0], banned)
        examples = [SFTExample.from_pair(p, c) for p, c in pairs]
        source = f"{len(examples)} traces"
    model_limit = int(getattr(policy.model.config, "max_position_embeddings", 0) or 1 << 30)
    max_len = config.sft.max_seq_len or model_limit
    kept, dropped = truncate(examples, max_len)
    if not kept:
        raise ConfigError(f"config key sft.max_seq_len: every SFT sequence's prompt fills {max_len} tokens; "
                          "nothing is left to train on", key="sft.max_seq_len")
    cut = sum(ex.truncated for ex in kept) + dropped
    log(f"SFT data: {source}; {cut} ({cut / len(examples):.1%}) longer than {max_len} tokens were cut"
        + (f", {dropped} of them dropped (no assistant token left)" if dropped else ""))
    return kept, {"sft_truncated_fraction": cut / len(examples), "sft_max_seq_len": max_len}


def run_eval(name: str, policy: Policy, engine: Any, task: tasks.Task, examples: list[tasks.Example],
             config: RunConfig, run_dir: Path, n: int, temperature: float) -> dict[str, float]:
    """Evaluate (or reuse a finished evaluation of) the current policy; returns its metrics."""
    out = run_dir / "eval" / name
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())["metrics"]
    ev = config.eval
    k_values = tuple(k for k in ev.k_values if k <= n) or (1,)
    sampling = EvalSampling(n=n, temperature=temperature, top_p=ev.top_p if temperature > 0 else 1.0,
                            max_new_tokens=ev.max_new_tokens, seed=config.seed, k_values=k_values,
                            prompts_per_batch=ev.prompts_per_batch)
    result = evaluate(engine, policy.tokenizer, task, examples, sampling, model_path=str(policy.path))
    write_eval(result, out)
    return result.metrics


def evaluate_both(stage: str, policy: Policy, engine: Any, task: tasks.Task, examples: list[tasks.Example],
                  config: RunConfig, run_dir: Path) -> dict[str, dict[str, float]]:
    out = {}
    if config.eval.greedy:
        out["greedy"] = run_eval(f"{stage}_greedy", policy, engine, task, examples, config, run_dir, 1, 0.0)
    if config.eval.samples:
        out["sampled"] = run_eval(f"{stage}_sampled", policy, engine, task, examples, config, run_dir,
                                  config.eval.samples, config.eval.temperature)
    return out


def in_loop_eval(engine: Any, policy: Policy, task: tasks.Task, examples: list[tasks.Example],
                 config: RunConfig) -> Callable[[int], dict[str, float]]:
    """A step -> metrics function for SFT (sft.eval_every): greedy accuracy on the first 64 held-out
    problems (logged only, never used to pick a checkpoint)."""
    subset = examples[:64]
    greedy = EvalSampling(n=1, temperature=0.0, max_new_tokens=config.eval.max_new_tokens, seed=config.seed,
                          k_values=(1,), prompts_per_batch=config.eval.prompts_per_batch)

    def fn(_step: int) -> dict[str, float]:  # eval_fn(step): only the current weights matter
        result = evaluate(engine, policy.tokenizer, task, subset, greedy)
        return {M.SFT_EVAL_GREEDY_ACCURACY: float(result.metrics["avg@n"]),
                M.SFT_EVAL_FORMAT_ERROR_RATE: float(result.metrics["format_error_rate"])}

    return fn


def curve_eval(engine: Any, policy: Policy, task: tasks.Task, examples: list[tasks.Example],
               config: RunConfig) -> Callable[[int], dict[str, float]]:
    """A step -> metrics function: one point of the RL learning curve (eval.every): sampled accuracy
    on the first eval.curve_size held-out problems, eval.curve_samples samples each at
    eval.temperature. Every point samples with the same seed, so two points differ by the policy
    and not by the draw of random numbers (logged only, never used to pick a checkpoint)."""
    ev = config.eval
    subset = examples[: ev.curve_size]
    temperature = ev.temperature if ev.temperature > 0 else 0.0
    n = ev.curve_samples if temperature > 0 else 1
    sampling = EvalSampling(n=n, temperature=temperature, top_p=ev.top_p if temperature > 0 else 1.0,
                            max_new_tokens=ev.max_new_tokens, seed=config.seed + 30_011, k_values=(1,),
                            prompts_per_batch=ev.prompts_per_batch)

    def fn(_step: int) -> dict[str, float]:  # eval_fn(step): only the current weights matter
        t0 = time.perf_counter()
        result = evaluate(engine, policy.tokenizer, task, subset, sampling)
        by_source = {M.EVAL_SOURCE_SAMPLED_ACCURACY.replace("<source>", name): value
                     for name, value in per_source(result.metrics, config).items()}
        return {M.EVAL_SAMPLED_ACCURACY: float(result.metrics["avg@n"]),
                M.EVAL_FORMAT_ERROR_RATE: float(result.metrics["format_error_rate"]),
                M.EVAL_RESPONSE_LENGTH: float(result.metrics.get("length/mean", float("nan"))),
                M.EVAL_SAMPLES: float(len(subset) * n), M.TIMING_EVAL: time.perf_counter() - t0, **by_source}

    return fn


def accuracy(metrics: dict[str, float]) -> float:
    """pass@1 averaged over the samples of each problem (avg@n; greedy: n = 1)."""
    return float(metrics["avg@n"])


def run(config: RunConfig) -> dict[str, Any]:
    """Check the inputs, then run (or resume) the recipe's stages; writes summary.json and report.html.

    summary.json's wall_seconds is the total over every invocation on this run directory
    (wall_seconds_last_invocation: this one)."""
    t_start = time.perf_counter()
    inputs = check_inputs(config)
    run_dir = prepare_run_dir(config)
    try:
        summary = _run(config, inputs, run_dir)
    except BaseException:
        add_wall_time(run_dir, time.perf_counter() - t_start)
        raise
    summary.update(add_wall_time(run_dir, time.perf_counter() - t_start))
    summary["wall_seconds"] = summary.pop("wall_seconds_total")
    write_json_atomic(run_dir / "summary.json", summary)

    log(f"report: {write_report(run_dir)}")
    return summary


def add_wall_time(run_dir: Path, seconds: float) -> dict[str, Any]:
    """Add one invocation's wall time to RUN_DIR/wall_time.json (written when an invocation ends,
    also by an exception or Ctrl-C; a kill -9 loses that invocation's time) and return the totals."""
    path = run_dir / "wall_time.json"
    totals = json.loads(path.read_text()) if path.exists() else {"wall_seconds_total": 0.0, "invocations": 0}
    totals = {"wall_seconds_total": round(totals["wall_seconds_total"] + seconds, 1),
              "invocations": totals["invocations"] + 1, "wall_seconds_last_invocation": round(seconds, 1)}
    write_json_atomic(path, totals)
    return totals


def run_policy(config: RunConfig, run_dir: Path, device: torch.device, task: tasks.Task) -> Policy:
    """The run's policy: the model directory (built, or model.path) loaded, with data.prompt_template
    set on its tokenizer (checkpoints save it with the tokenizer), checked for vLLM when it samples."""
    # an adapter-only LoRA checkpoint is merged onto its base first
    model_dir = merged_model_dir(build_model_dir(config, run_dir), run_dir / "model_merged")
    policy = with_lora(load_policy(model_dir, config.model.impl, config.model.dtype, device), config)
    if config.data.prompt_template:  # a base model's prompt format
        set_prompt_template(policy.tokenizer, config.data.prompt_template, task.response_prefix)
    if config.model.engine == "vllm":
        try:
            check_supported(policy.path)
        except ValueError as error:
            raise ConfigError(f"model.engine=vllm: {error}") from None
    return policy


def _run(config: RunConfig, inputs: Inputs, run_dir: Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    run = prepare(config, inputs, run_dir)
    sft_info = sft_stage(run) if config.sft.enabled else {}
    if not (config.rl.enabled and config.rl.steps > 0):  # `rlvr sft`, or an evaluation of the model only
        stage = "after_sft" if config.sft.enabled else "model"
        final = evaluate_both(stage, run.policy, run.engine, inputs.task, run.held_out, config, run_dir)
        log(f"{stage.replace('_', ' ')}: {_describe(final, config)}")
        run.logger.close()
        return {**stage_summary(config, stage, final, run.held_out), **sft_info}

    before = evaluate_both("before_rl", run.policy, run.engine, inputs.task, run.held_out, config, run_dir)
    log(f"before RL: {_describe(before, config)}")
    rl_summary = rl_stage(run)
    after = evaluate_both("after_rl", run.policy, run.engine, inputs.task, run.held_out, config, run_dir)
    log(f"after RL: {_describe(after, config)}")
    run.logger.close()
    summary = make_summary(config, before, after, run.held_out, difficulty_keys_of(inputs.task),
                           time.perf_counter() - t_start, rl_summary)
    return {**summary, **sft_info}


@dataclass
class RunParts:
    """What the stages of one run share: the policy and its in-process engine (the evaluations', and by
    default the rollouts'), the logger, the held-out problems (banned: their prompts, never trained on)
    and the cached prompt ids (fits: whether a prompt fits data.max_prompt_tokens, None without a limit)."""

    config: RunConfig
    inputs: Inputs
    run_dir: Path
    device: torch.device
    policy: Policy
    engine: TorchEngine
    decode_dtype: torch.dtype | None
    logger: MetricsLogger
    held_out: list[tasks.Example]
    banned: set[str]
    prompt_cache: Callable[[tasks.Example], list[int]]
    fits: Callable[[tasks.Example], bool] | None


def prepare(config: RunConfig, inputs: Inputs, run_dir: Path) -> RunParts:
    """Seed and thread settings, the held-out set, the policy (checked and described, with the recipe's
    memory budget), the metrics logger and the in-process engine."""
    device = setup_torch(config.seed, config.threads, config.device)
    log(f"device: {device}, {torch.get_num_threads()} torch CPU threads (threads={config.threads})")
    for key, value in config.derived_sizes().items():
        log(f"{key}: {value}")
    task = inputs.task
    held_out = held_out_examples(config, task, run_dir, inputs.eval_rows)
    banned = {ex.prompt for ex in held_out}
    log(f"held-out set: {len(held_out)} problems ({config.data.eval_difficulty})")

    policy = run_policy(config, run_dir, device, task)
    describe_policy(config, policy)
    prompt_cache, fits = prompt_tokens(policy.tokenizer, task, config.data.max_prompt_tokens)
    if fits is not None:
        held_out = within_prompt_limit(held_out, fits, config.data.max_prompt_tokens, "held-out problems")
    if config.critic.enabled and config.critic.path:  # refused before any work, not after SFT
        check_critic_dir(config.critic.path, policy.model.config)

    lines, warning = budget_lines(config, policy.tokenizer)
    for line in lines:
        log(line)
    if warning:
        log(warning)
    logging = config.logging
    logger = MetricsLogger(run_dir, logging.tensorboard, logging.wandb, logging.wandb_project,
                           config=to_dict(config))
    decode_dtype = engine_dtype(config, policy)
    engine = TorchEngine(policy.model, eos_token_ids=eos_token_ids(policy.tokenizer),
                         pad_token_id=policy.tokenizer.pad_token_id or 0, device=str(device),
                         dtype=decode_dtype, workers=engine_workers(config))
    return RunParts(config, inputs, run_dir, device, policy, engine, decode_dtype, logger, held_out, banned,
                    prompt_cache, fits)


def describe_policy(config: RunConfig, policy: Policy) -> None:
    """Log the model's size and implementation (and with LoRA, its trainable parameters)."""
    n_params = sum(p.numel() for p in policy.model.parameters())
    impl = "native" if policy.packed else "transformers"
    log(f"model: {policy.path} ({n_params / 1e6:.2f}M parameters, {impl})")
    if config.model.lora is not None:
        trained = sum(p.numel() for p in policy.model.parameters() if p.requires_grad)
        log(f"LoRA r={config.model.lora.r} on {', '.join(config.model.lora.target_modules)}: "
            f"{trained / 1e6:.3f}M trainable parameters")


def sft_stage(run: RunParts) -> dict[str, Any]:
    """Cold-start SFT (rlvr.trainers.sft.train_sft) on the run's SFT data; returns what the summary
    reports about that data."""
    config, policy = run.config, run.policy
    t0 = time.perf_counter()
    examples, sft_info = sft_examples(config, run.inputs.task, policy, eos_token_ids(policy.tokenizer),
                                      run.banned, run.inputs.sft_rows)
    log(f"SFT: {len(examples)} sequences ({time.perf_counter() - t0:.1f}s to build), "
        f"{config.sft.steps} steps")
    sft_run = SFTRun(policy.model, policy.tokenizer, run.run_dir, run.logger, run.device, policy.packed,
                     config.seed,
                     eval_fn=in_loop_eval(run.engine, policy, run.inputs.task, run.held_out, config))
    train_sft(sft_run, examples, config.sft, config.checkpoint, config.logging)
    return sft_info


def rl_stage(run: RunParts) -> dict[str, Any]:
    """The RL stage (rlvr.trainers.rl.train_rl) on the run's problems, none of them held out; the
    in-process engine draws the learning curve and, unless the recipe names another, the rollouts."""
    config, policy, task = run.config, run.policy, run.inputs.task
    eos_ids = eos_token_ids(policy.tokenizer)
    pool = ProblemPool(training_source(config, task, run.banned, run.inputs.train_rows, run.fits),
                       seed=config.seed, weights=source_weights(config))
    train_engine, learner_ranks, closers, placement = training_engine(config, policy, run.engine, eos_ids,
                                                                      run.decode_dtype)
    critic = start_critic(config, policy, run.device) if config.critic.enabled else None
    sampler = Sampler(train_engine, policy.tokenizer, task, pool, run.prompt_cache, eos_ids)
    rl_run = RLRun(policy.model, sampler, run.run_dir, run.logger, run.device, policy.packed, config.seed,
                   config.data.difficulty or {}, engine_shares_weights=train_engine is run.engine,
                   learner_ranks=learner_ranks, critic=critic,
                   eval_fn=curve_eval(run.engine, policy, task, run.held_out, config),
                   eval_every=config.eval.every)
    try:
        rl_summary = train_rl(rl_run, config.rl, config.checkpoint, config.logging)
    finally:
        for close in closers:
            close()
    if placement:
        rl_summary["placement"] = placement
    return rl_summary


def start_critic(config: RunConfig, policy: Policy, device: torch.device) -> Critic:
    """rl.advantage=gae's value model: a value head on the policy, or on the model of critic.path."""
    lm, packed = policy.model, policy.packed
    if config.critic.path:
        loaded = load_policy(check_critic_dir(config.critic.path, getattr(policy.model, "config", None)),
                             config.model.impl, config.model.dtype, device)
        lm, packed = loaded.model, loaded.packed
    return build_critic(config.critic, lm, packed, config.seed)


def engine_workers(config: RunConfig) -> int:
    """TorchEngine's workers: model.engine_workers, or with 0 the run's threads (every core when 0)."""
    return config.model.engine_workers or cpu_threads(config.threads)


def engine_dtype(config: RunConfig, policy: Policy) -> torch.dtype | None:
    """TorchEngine's decoding dtype: model.engine_dtype on rlvr's native model; a transformers model
    decodes in its own dtype (None), so only the default model.engine_dtype=float32 fits it."""
    if policy.packed:
        return getattr(torch, config.model.engine_dtype)
    if config.model.engine_dtype != "float32":
        raise ConfigError(f"model.engine_dtype={config.model.engine_dtype} needs rlvr's native model, but "
                          f"{policy.path} runs on transformers; set model.dtype instead (the engine decodes "
                          "in it)")
    return None


def training_engine(config: RunConfig, policy: Policy, engine: Any, eos_ids: tuple[int, ...],
                    decode_dtype: torch.dtype | None = None):
    """The RL loop's engine and learner: in-process by default, Ray actors with distributed=ray,
    wrapped for partial rollouts when rl.partial_tokens_per_step > 0. Evaluation keeps `engine`.
    Ray's torch rollout workers decode in decode_dtype, as `engine` does, unless ray.engine_options
    sets a dtype; its vLLM workers hold config.context_tokens() unless it sets max_model_len.
    Returns (engine, learner, closers, placement): placement says on which Ray node each process
    runs (rlvr.distributed.placement; {} without Ray), for summary.json."""
    train_engine, learner, closers, placement = engine, None, [], {}
    if config.model.engine == "vllm" and config.distributed != "ray":
        train_engine = vllm_engine(config, policy, eos_ids)
        closers.append(train_engine.shutdown)
    if config.distributed == "ray":
        ray_cfg = config.ray
        options = ray_cfg.engine_options
        if ray_cfg.rollout_engine == "torch" and decode_dtype is not None and "dtype" not in options:
            ray_cfg = dataclasses.replace(ray_cfg, engine_options={**options, "dtype": decode_dtype})
        if ray_cfg.rollout_engine == "vllm" and "max_model_len" not in ray_cfg.engine_options:
            ray_cfg = dataclasses.replace(ray_cfg, engine_options={**ray_cfg.engine_options,
                                                                   "max_model_len": config.context_tokens()})
        train_engine = make_engine(ray_cfg, policy.model, eos_ids, policy.tokenizer.pad_token_id or 0,
                                   model_dir=str(policy.path))
        closers.append(train_engine.shutdown)
        learner = make_learner(config.ray, policy.model, config.rl, policy.packed)
        if learner is not None:
            closers.append(learner.shutdown)
        placement = ray_placement(train_engine, learner)
        log(f"ray placement: {describe_placement(placement)}")
    if config.rl.partial_tokens_per_step:
        train_engine = PartialRollouts(train_engine, config.rl.partial_tokens_per_step)
    return train_engine, learner, closers, placement


def check_ray_cluster(config: RunConfig) -> None:
    """ray.address set: join that cluster now and check it has the custom resources the actors reserve
    (rlvr.distributed.connect), so a misspelt resource or a node started without it stops the run
    before SFT rather than leaving the RL stage's actors pending."""
    try:
        connect(config.ray)
    except RuntimeError as err:
        raise ConfigError(str(err), key="ray") from None


def check_vllm(config: RunConfig) -> None:
    """model.engine=vllm: vLLM must be importable (one message naming the install command)."""
    if config.distributed == "ray":
        raise ConfigError("model.engine=vllm runs vLLM in this process; with distributed=ray set "
                          "ray.rollout_engine=vllm instead")
    if not vllm_available():
        raise ConfigError(f"model.engine=vllm: vLLM is not installed in this Python ({INSTALL})")


def vllm_engine(config: RunConfig, policy: Policy, eos_ids: tuple[int, ...]):
    """The RL stage's VLLMEngine (colocated, in this process) holding the policy's current weights.
    One step's prompts x group size fit in one batch; a sequence may hold config.context_tokens()
    (the prompt limit plus the largest completion budget of the recipe)."""
    rl = config.rl
    group = max([rl.group_size] + [int(s.value) for s in rl.group_size_stages])
    engine = VLLMEngine(str(policy.path), eos_token_ids=eos_ids, dtype=config.model.engine_dtype,
                        max_num_seqs=rl.prompts_per_step * group, max_model_len=config.context_tokens(),
                        threads=config.threads or None, seed=config.seed)
    engine.load_weights(hf_state_dict(policy.model))  # after SFT the policy differs from its directory
    log(f"rollout engine: vLLM ({config.model.engine_dtype}, weights pushed after every update)")
    return engine


def per_source(metrics: dict[str, float], config: RunConfig) -> dict[str, float]:
    """A mixed run's eval accuracy (avg@n) per data source, from the by_source breakdown; {} otherwise."""
    return breakdown_table(metrics, "source") if config.data.task == "mixed" else {}


def _describe(results: dict[str, dict[str, float]], config: RunConfig) -> str:
    def sources(metrics: dict[str, float]) -> str:
        table = per_source(metrics, config)
        return f" ({', '.join(f'{name} {value:.3f}' for name, value in table.items())})" if table else ""

    parts = []
    if "greedy" in results:
        parts.append(f"greedy accuracy {accuracy(results['greedy']):.3f}{sources(results['greedy'])}")
    if "sampled" in results:
        n = config.eval.samples
        parts.append(f"sampled accuracy {accuracy(results['sampled']):.3f} (avg@{n}, "
                     f"T={config.eval.temperature})"
                     f"{sources(results['sampled'])}")
    return ", ".join(parts)


def stage_summary(config: RunConfig, stage: str, results: dict, held_out: list) -> dict[str, Any]:
    """summary.json of a run without an RL stage (`rlvr sft`): the one evaluation of its model."""
    headline = "sampled" if "sampled" in results else "greedy"
    n = config.eval.samples if headline == "sampled" else 1
    summary: dict[str, Any] = {
        "stage": stage,
        "accuracy": accuracy(results[headline]) if results else None,
        "accuracy_metric": (f"pass@1 averaged over {n} samples at temperature {config.eval.temperature}, "
                            f"top_p {config.eval.top_p}" if headline == "sampled" else "greedy pass@1"),
        "eval_size": len(held_out),
        "eval_max_new_tokens": config.eval.max_new_tokens,
        "sft_steps": config.sft.steps if config.sft.enabled else 0,
        "seed": config.seed,
    }
    for kind in ("greedy", "sampled"):
        if kind in results:
            summary[f"{kind}_accuracy"] = accuracy(results[kind])
    if results and per_source(results[headline], config):
        summary["accuracy_by_source"] = per_source(results[headline], config)
    return summary


def make_summary(config: RunConfig, before: dict, after: dict, held_out: list, difficulty_keys: Sequence[str],
                 seconds: float, rl_summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json: headline accuracy = pass@1 averaged over eval.samples samples (sampled), else greedy.
    eval_difficulty: the values each of the task's difficulty keys takes in the held-out set."""
    headline = "sampled" if "sampled" in before else "greedy"
    n = config.eval.samples if headline == "sampled" else 1
    levels = {key: sorted({ex.metadata[key] for ex in held_out if key in ex.metadata}, key=str)
              for key in difficulty_keys}
    summary: dict[str, Any] = {
        "accuracy_before_rl": accuracy(before[headline]),
        "accuracy_after_rl": accuracy(after[headline]),
        "accuracy_metric": (f"pass@1 averaged over {n} samples at temperature {config.eval.temperature}, "
                            f"top_p {config.eval.top_p}" if headline == "sampled" else "greedy pass@1"),
        "eval_size": len(held_out),
        "eval_difficulty": {key: values for key, values in levels.items() if values},
        "eval_max_new_tokens": config.eval.max_new_tokens,
        "wall_seconds": round(seconds, 1),
        "seed": config.seed,
        # rl.shuffle_rewards: each group's rewards were permuted among its samples (no signal); the
        # RL gain of such a run is what the update's noise alone does.
        "placebo_control": bool(config.rl.enabled and config.rl.steps > 0 and config.rl.shuffle_rewards),
        **rl_summary,
    }
    for kind in ("greedy", "sampled"):
        if kind in before:
            summary[f"{kind}_accuracy_before_rl"] = accuracy(before[kind])
            summary[f"{kind}_accuracy_after_rl"] = accuracy(after[kind])
    if per_source(before[headline], config):  # a mixed run: the headline accuracy of each data source
        summary["accuracy_by_source_before_rl"] = per_source(before[headline], config)
        summary["accuracy_by_source_after_rl"] = per_source(after[headline], config)
    return summary
