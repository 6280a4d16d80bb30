"""`rlvr run RECIPE`: data -> model -> cold-start SFT -> eval -> RL -> eval -> summary and report.

Every stage is resumable: running the same recipe on the same run directory again continues
from the newest checkpoint (a finished stage is not redone, cached evaluations are reused).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlvr import tasks
from rlvr.config import ConfigError, RunConfig, dump_yaml, from_dict, to_dict
from rlvr.data.io import DataError, load_examples, write_json_atomic, write_jsonl_atomic
from rlvr.trainers.common import MetricsLogger, setup_torch


class RunDirError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[rlvr] {message}", flush=True)


# Keys that cannot change what a run computes: a run directory resumes across changes to them.
RESUME_FREE_KEYS = ("name", "out_dir", "threads", "logging")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value})
    return out


def config_differences(saved_text: str, config: RunConfig) -> list[str]:
    """The keys (other than RESUME_FREE_KEYS) whose values differ between a saved config.yaml and `config`."""
    import yaml

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
                f"run directory {run_dir} already holds a different run: {'; '.join(differ)}. Pass out_dir=... "
                f"for a new run, or the same recipe and overrides to resume it"
            )
        log(f"resuming the run in {run_dir}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(f"run directory {run_dir} exists, is not empty and holds no config.yaml; choose another out_dir")
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
    from transformers import AutoConfig

    from rlvr.models import load_model, load_tokenizer, native

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


def build_model_dir(config: RunConfig, run_dir: Path) -> Path:
    if config.model.path:
        path = Path(config.model.path)
        if not path.is_dir():
            raise ConfigError(f"config key model.path: {path} is not a directory (rlvr loads local HF directories)")
        return path
    from rlvr.models import init_model

    path = run_dir / "model_init"
    if not (path / "config.json").exists():
        log(f"building the {config.model.preset!r} model and tokenizer offline in {path}")
        init_model(path, preset=config.model.preset, tasks=(config.data.task,), seed=config.seed,
                   task_options={config.data.task: config.data.task_options})
    return path


def with_reward_functions(task: tasks.Task, reward: Any) -> tasks.Task:
    """The task, plus the recipe's reward.function(s) when any (loaded now: bad specs fail here)."""
    from rlvr.tasks.generic import WithRewardFunctions
    from rlvr.tasks.reward_functions import RewardFunctionError, load_reward_function

    specs = ([(reward.function, 1.0)] if reward.function else []) + [(f.function, f.weight) for f in reward.functions]
    if not specs:
        if task.name == "generic":
            raise ConfigError("data.task generic needs reward.function or reward.functions")
        return task
    try:
        loaded = [(load_reward_function(spec, reward.timeout_seconds, reward.error_reward), weight)
                  for spec, weight in specs]
    except RewardFunctionError as error:
        raise ConfigError(f"config key reward: {error}") from None
    return WithRewardFunctions(task, loaded)  # type: ignore[return-value]


@dataclass
class Inputs:
    """What check_inputs read and checked before the run writes anything."""

    task: tasks.Task
    train_rows: list[tasks.Example] | None  # data.train_file's problems (None: generated)
    eval_rows: list[tasks.Example] | None  # data.eval_file's first data.eval_size problems (None: generated)


def _read_input(task: tasks.Task, key: str, path: str, limit: int | None = None) -> list[tasks.Example]:
    try:
        rows = load_examples(task, path, limit=limit)
    except (DataError, OSError) as err:
        raise ConfigError(f"config key {key}: {err}", key=key) from None
    if not rows:
        raise ConfigError(f"config key {key}: {path} holds no problems", key=key)
    return rows


def check_inputs(config: RunConfig) -> Inputs:
    """Build the task and read every input the run names (model directory, data files), checking
    each, before anything is written or computed; errors name the key, the file and the line."""
    data = config.data
    try:
        task = tasks.get(data.task, **data.task_options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config key data.task_options: {err}", key="data.task_options") from None
    task = with_reward_functions(task, config.reward)
    if config.model.engine == "vllm":
        check_vllm(config)
    if config.model.path and not Path(config.model.path).is_dir():
        raise ConfigError(f"config key model.path: {config.model.path} is not a directory (rlvr loads local HF "
                          f"directories)", key="model.path")
    if data.require_files:
        for key in ("train_file", "eval_file"):
            if not getattr(data, key):
                raise ConfigError(f"config key data.{key}: this recipe trains on its data files "
                                  f"(data.require_files=true), so pass data.{key}=FILE", key=f"data.{key}")
    eval_rows = _read_input(task, "data.eval_file", data.eval_file, data.eval_size) if data.eval_file else None
    train_rows = None
    rl = config.rl
    if data.train_file and rl.enabled and rl.steps > 0:
        train_rows = _read_input(task, "data.train_file", data.train_file)
        wanted = [(f"rl.curriculum[{i}].value", s.value) for i, s in enumerate(rl.curriculum)]
        if not rl.curriculum or rl.curriculum[0].start_step > 0:
            wanted.insert(0, ("data.difficulty", data.difficulty))
        for key, difficulty in wanted:
            if not any(matches(ex, difficulty) for ex in train_rows):
                raise ConfigError(f"config key data.train_file: {data.train_file} has no problem of the RL "
                                  f"difficulty {difficulty} ({key})", key=key)
    return Inputs(task, train_rows, eval_rows)


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
    examples = task.examples(data.eval_size, seed=config.seed + 10_007, **data.eval_difficulty)
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
                    loaded: list[tasks.Example] | None = None):
    """difficulty -> training problems, never one whose prompt is in the held-out set."""
    data = config.data
    rows: list[tasks.Example] | None = None
    if data.train_file:
        loaded = loaded if loaded is not None else load_examples(task, data.train_file)
        rows = [ex for ex in loaded if ex.prompt not in banned]

    def source(difficulty: dict[str, Any]) -> list[tasks.Example]:
        if rows is not None:
            return [ex for ex in rows if matches(ex, difficulty)]
        generated = task.examples(data.train_size, seed=config.seed, **difficulty)
        return [ex for ex in generated if ex.prompt not in banned]

    return source


def solution_target(task: tasks.Task) -> Callable[[tasks.Example], str] | None:
    """What SFT imitates on a task: its solution trace, else its oracle completion (None: neither)."""
    return getattr(task, "solution_trace", None) or getattr(task, "oracle_completion", None)


def trace_pairs(task: tasks.Task, tokenizer: Any, examples: Sequence[tasks.Example], eos_id: int,
                target: Callable[[tasks.Example], str]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target completion ids + EOS) of `examples`, tokenized in batches."""
    from rlvr.models import batch_prompt_ids

    prompts = batch_prompt_ids(tokenizer, [task.messages(ex) for ex in examples], task.response_prefix)
    completions = tokenizer([target(ex) for ex in examples], add_special_tokens=False)["input_ids"]
    return [(p, list(c) + [eos_id]) for p, c in zip(prompts, completions)]


def sft_pairs(config: RunConfig, task: tasks.Task, tokenizer: Any, eos_id: int, banned: set[str]):
    """(prompt ids, target completion ids + EOS) for cold-start SFT, tokenized in batches."""
    target = solution_target(task)
    if target is None:
        raise ConfigError(f"sft.enabled: task {task.name!r} has no solution traces to imitate; set sft.enabled=false")
    examples = task.examples(config.sft.data_size, seed=config.seed + 20_011, **config.sft.difficulty)
    examples = [ex for ex in examples if ex.prompt not in banned]
    return trace_pairs(task, tokenizer, examples, eos_id, target)


def run_eval(name: str, policy: Policy, engine: Any, task: tasks.Task, examples: list[tasks.Example],
             config: RunConfig, run_dir: Path, n: int, temperature: float) -> dict[str, float]:
    """Evaluate (or reuse a finished evaluation of) the current policy; returns its metrics."""
    from rlvr.evaluation import evaluate, write_eval

    out = run_dir / "eval" / name
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())["metrics"]
    ev = config.eval
    k_values = tuple(k for k in ev.k_values if k <= n) or (1,)
    result = evaluate(engine, policy.tokenizer, task, examples, n=n, temperature=temperature,
                      top_p=ev.top_p if temperature > 0 else 1.0, max_new_tokens=ev.max_new_tokens,
                      seed=config.seed, k_values=k_values, prompts_per_batch=ev.prompts_per_batch,
                      model_path=str(policy.path))
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


def in_loop_eval(prefix: str, engine: Any, policy: Policy, task: tasks.Task, examples: list[tasks.Example],
                 config: RunConfig):
    """A step -> metrics function: greedy accuracy on the first 64 held-out problems (logged only,
    never used to pick a checkpoint)."""
    from rlvr.evaluation import evaluate

    subset = examples[:64]

    def fn(step: int) -> dict[str, float]:
        result = evaluate(engine, policy.tokenizer, task, subset, n=1, temperature=0.0,
                          max_new_tokens=config.eval.max_new_tokens, seed=config.seed, k_values=(1,),
                          prompts_per_batch=config.eval.prompts_per_batch)
        return {f"{prefix}/greedy_accuracy": float(result.metrics["avg@n"]),
                f"{prefix}/format_error_rate": float(result.metrics["format_error_rate"])}

    return fn


def curve_eval(engine: Any, policy: Policy, task: tasks.Task, examples: list[tasks.Example], config: RunConfig):
    """A step -> metrics function: one point of the RL learning curve (eval.every): sampled accuracy
    on the first eval.curve_size held-out problems, eval.curve_samples samples each at
    eval.temperature. Every point samples with the same seed, so two points differ by the policy
    and not by the draw of random numbers (logged only, never used to pick a checkpoint)."""
    from rlvr.evaluation import evaluate

    ev = config.eval
    subset = examples[: ev.curve_size]
    temperature = ev.temperature if ev.temperature > 0 else 0.0
    n = ev.curve_samples if temperature > 0 else 1

    def fn(step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        result = evaluate(engine, policy.tokenizer, task, subset, n=n, temperature=temperature,
                          top_p=ev.top_p if temperature > 0 else 1.0, max_new_tokens=ev.max_new_tokens,
                          seed=config.seed + 30_011, k_values=(1,), prompts_per_batch=ev.prompts_per_batch)
        return {"eval/sampled_accuracy": float(result.metrics["avg@n"]),
                "eval/format_error_rate": float(result.metrics["format_error_rate"]),
                "eval/response_length": float(result.metrics.get("length/mean", float("nan"))),
                "eval/samples": float(len(subset) * n), "timing_s/eval": time.perf_counter() - t0}

    return fn


def accuracy(metrics: dict[str, float], n: int) -> float:
    """pass@1 averaged over the n samples of each problem (avg@n)."""
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
    from rlvr.evaluation.report import write_report

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


def _run(config: RunConfig, inputs: Inputs, run_dir: Path) -> dict[str, Any]:
    from rlvr.models import eos_token_ids, prompt_ids
    from rlvr.rollout.torch_engine import TorchEngine
    from rlvr.trainers.rl import ProblemPool, train_rl
    from rlvr.trainers.sft import train_sft

    t_start = time.perf_counter()
    device = setup_torch(config.seed, config.threads, config.device)
    for key, value in config.derived_sizes().items():
        log(f"{key}: {value}")
    task = inputs.task
    held_out = held_out_examples(config, task, run_dir, inputs.eval_rows)
    banned = {ex.prompt for ex in held_out}
    log(f"held-out set: {len(held_out)} problems ({config.data.eval_difficulty})")

    policy = load_policy(build_model_dir(config, run_dir), config.model.impl, config.model.dtype, device)
    if config.model.engine == "vllm":
        from rlvr.rollout.vllm_engine import check_supported

        try:
            check_supported(policy.path)
        except ValueError as error:
            raise ConfigError(f"model.engine=vllm: {error}") from None
    n_params = sum(p.numel() for p in policy.model.parameters())
    log(f"model: {policy.path} ({n_params / 1e6:.2f}M parameters, {'native' if policy.packed else 'transformers'})")
    eos_ids = eos_token_ids(policy.tokenizer)
    if config.critic.enabled and config.critic.path:  # refused before any work, not after SFT
        from rlvr.trainers.critic import check_critic_dir

        check_critic_dir(config.critic.path, policy.model.config)
    from rlvr.trainers.budget import budget_lines

    lines, warning = budget_lines(config, policy.tokenizer)
    for line in lines:
        log(line)
    if warning:
        log(warning)
    logger = MetricsLogger(run_dir, config.logging.tensorboard, config.logging.wandb, config.logging.wandb_project,
                           config=to_dict(config))
    decode_dtype = engine_dtype(config, policy)
    engine = TorchEngine(policy.model, eos_token_ids=eos_ids, pad_token_id=policy.tokenizer.pad_token_id or 0,
                         device=str(device), dtype=decode_dtype, workers=engine_workers(config))

    if config.sft.enabled:
        t0 = time.perf_counter()
        pairs = sft_pairs(config, task, policy.tokenizer, eos_ids[0], banned)
        log(f"SFT: {len(pairs)} traces ({time.perf_counter() - t0:.1f}s to build), {config.sft.steps} steps")
        train_sft(policy.model, policy.tokenizer, pairs, config.sft, run_dir=run_dir, logger=logger,
                  device=device, packed=policy.packed, seed=config.seed, checkpoint=config.checkpoint,
                  progress=config.logging.progress,
                  eval_fn=in_loop_eval("sft_eval", engine, policy, task, held_out, config))

    if not (config.rl.enabled and config.rl.steps > 0):  # `rlvr sft`, or an evaluation of the model only
        stage = "after_sft" if config.sft.enabled else "model"
        final = evaluate_both(stage, policy, engine, task, held_out, config, run_dir)
        log(f"{stage.replace('_', ' ')}: {_describe(final, config)}")
        logger.close()
        return stage_summary(config, stage, final, held_out)

    before = evaluate_both("before_rl", policy, engine, task, held_out, config, run_dir)
    log(f"before RL: {_describe(before, config)}")

    cache: dict[str, list[int]] = {}

    def prompt_cache(ex: tasks.Example) -> list[int]:
        if ex.prompt not in cache:
            cache[ex.prompt] = prompt_ids(policy.tokenizer, task.messages(ex), task.response_prefix)
        return cache[ex.prompt]

    rl_summary: dict[str, Any] = {}
    if config.rl.enabled and config.rl.steps > 0:
        pool = ProblemPool(training_source(config, task, banned, inputs.train_rows), seed=config.seed)
        train_engine, learner, closers = training_engine(config, policy, engine, eos_ids, decode_dtype)
        critic = None
        if config.critic.enabled:
            from rlvr.trainers.critic import build_critic

            critic = build_critic(config.critic, policy.model, policy.packed, device, config.model.impl,
                                  config.model.dtype, config.seed)
        try:
            rl_summary = train_rl(policy.model, policy.tokenizer, train_engine, task, pool, prompt_cache, config.rl,
                                  run_dir=run_dir, logger=logger, device=device, packed=policy.packed,
                                  seed=config.seed, eos_ids=eos_ids, default_difficulty=config.data.difficulty,
                                  checkpoint=config.checkpoint, logging=config.logging,
                                  engine_shares_weights=train_engine is engine, learner=learner,
                                  eval_fn=curve_eval(engine, policy, task, held_out, config),
                                  eval_every=config.eval.every, critic=critic)
        finally:
            for close in closers:
                close()
    after = evaluate_both("after_rl", policy, engine, task, held_out, config, run_dir)
    log(f"after RL: {_describe(after, config)}")
    logger.close()

    return make_summary(config, before, after, held_out, time.perf_counter() - t_start, rl_summary)


def engine_workers(config: RunConfig) -> int:
    """TorchEngine's workers: model.engine_workers, or with 0 the run's threads (torch's count when 0)."""
    return config.model.engine_workers or config.threads or torch.get_num_threads()


def engine_dtype(config: RunConfig, policy: Policy) -> torch.dtype | None:
    """TorchEngine's decoding dtype: model.engine_dtype on rlvr's native model; a transformers model
    decodes in its own dtype (None), so only the default model.engine_dtype=float32 fits it."""
    if policy.packed:
        return getattr(torch, config.model.engine_dtype)
    if config.model.engine_dtype != "float32":
        raise ConfigError(f"model.engine_dtype={config.model.engine_dtype} needs rlvr's native model, but "
                          f"{policy.path} runs on transformers; set model.dtype instead (the engine decodes in it)")
    return None


def training_engine(config: RunConfig, policy: Policy, engine: Any, eos_ids: tuple[int, ...],
                    decode_dtype: torch.dtype | None = None):
    """The RL loop's engine and learner: in-process by default, Ray actors with distributed=ray,
    wrapped for partial rollouts when rl.partial_tokens_per_step > 0. Evaluation keeps `engine`.
    Ray's torch rollout workers decode in decode_dtype, as `engine` does, unless ray.engine_options
    sets a dtype."""
    train_engine, learner, closers = engine, None, []
    if config.model.engine == "vllm" and config.distributed != "ray":
        train_engine = vllm_engine(config, policy, eos_ids)
        closers.append(train_engine.shutdown)
    if config.distributed == "ray":
        from rlvr.distributed import make_engine, make_learner

        ray_cfg = config.ray
        if ray_cfg.rollout_engine == "torch" and decode_dtype is not None and "dtype" not in ray_cfg.engine_options:
            ray_cfg = dataclasses.replace(ray_cfg, engine_options={**ray_cfg.engine_options, "dtype": decode_dtype})
        train_engine = make_engine(ray_cfg, policy.model, eos_ids, policy.tokenizer.pad_token_id or 0,
                                   model_dir=str(policy.path))
        closers.append(train_engine.shutdown)
        learner = make_learner(config.ray, policy.model, config.rl, policy.packed)
        if learner is not None:
            closers.append(learner.shutdown)
    if config.rl.partial_tokens_per_step:
        from rlvr.rollout.partial import PartialRollouts

        train_engine = PartialRollouts(train_engine, config.rl.partial_tokens_per_step)
    return train_engine, learner, closers


def check_vllm(config: RunConfig) -> None:
    """model.engine=vllm: vLLM must be importable (one message naming the install command)."""
    from rlvr.rollout.vllm_engine import INSTALL, vllm_available

    if config.distributed == "ray":
        raise ConfigError("model.engine=vllm runs vLLM in this process; with distributed=ray set "
                          "ray.rollout_engine=vllm instead")
    if not vllm_available():
        raise ConfigError(f"model.engine=vllm: vLLM is not installed in this Python ({INSTALL})")


def vllm_engine(config: RunConfig, policy: Policy, eos_ids: tuple[int, ...]):
    """The RL stage's VLLMEngine (colocated, in this process) holding the policy's current weights.
    One step's prompts x group size fit in one batch; a sequence may hold 1024 prompt tokens plus
    the largest completion budget of the recipe."""
    from rlvr.rollout.vllm_engine import VLLMEngine

    rl = config.rl
    group = max([rl.group_size] + [int(s.value) for s in rl.group_size_stages])
    new_tokens = max([rl.max_new_tokens] + [int(s.value) for s in rl.max_new_tokens_stages])
    engine = VLLMEngine(str(policy.path), eos_token_ids=eos_ids, dtype=config.model.engine_dtype,
                        max_num_seqs=rl.prompts_per_step * group, max_model_len=1024 + new_tokens,
                        threads=config.threads or None, seed=config.seed)
    engine.load_weights(policy.model.state_dict())  # after SFT the policy differs from its directory
    log(f"rollout engine: vLLM ({config.model.engine_dtype}, weights pushed after every update)")
    return engine


def _describe(results: dict[str, dict[str, float]], config: RunConfig) -> str:
    parts = []
    if "greedy" in results:
        parts.append(f"greedy accuracy {accuracy(results['greedy'], 1):.3f}")
    if "sampled" in results:
        n = config.eval.samples
        parts.append(f"sampled accuracy {accuracy(results['sampled'], n):.3f} (avg@{n}, T={config.eval.temperature})")
    return ", ".join(parts)


def stage_summary(config: RunConfig, stage: str, results: dict, held_out: list) -> dict[str, Any]:
    """summary.json of a run without an RL stage (`rlvr sft`): the one evaluation of its model."""
    headline = "sampled" if "sampled" in results else "greedy"
    n = config.eval.samples if headline == "sampled" else 1
    summary: dict[str, Any] = {
        "stage": stage,
        "accuracy": accuracy(results[headline], n) if results else None,
        "accuracy_metric": (f"pass@1 averaged over {n} samples at temperature {config.eval.temperature}, "
                            f"top_p {config.eval.top_p}" if headline == "sampled" else "greedy pass@1"),
        "eval_size": len(held_out),
        "eval_max_new_tokens": config.eval.max_new_tokens,
        "sft_steps": config.sft.steps if config.sft.enabled else 0,
        "seed": config.seed,
    }
    for kind, nn in (("greedy", 1), ("sampled", config.eval.samples)):
        if kind in results:
            summary[f"{kind}_accuracy"] = accuracy(results[kind], nn)
    return summary


def make_summary(config: RunConfig, before: dict, after: dict, held_out: list, seconds: float,
                 rl_summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json: headline accuracy = pass@1 averaged over eval.samples samples (sampled), else greedy."""
    headline = "sampled" if "sampled" in before else "greedy"
    n = config.eval.samples if headline == "sampled" else 1
    people = sorted({ex.metadata.get("people") for ex in held_out if "people" in ex.metadata})
    summary: dict[str, Any] = {
        "accuracy_before_rl": accuracy(before[headline], n),
        "accuracy_after_rl": accuracy(after[headline], n),
        "accuracy_metric": (f"pass@1 averaged over {n} samples at temperature {config.eval.temperature}, "
                            f"top_p {config.eval.top_p}" if headline == "sampled" else "greedy pass@1"),
        "eval_size": len(held_out),
        "eval_people": people,
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
            nn = 1 if kind == "greedy" else config.eval.samples
            summary[f"{kind}_accuracy_before_rl"] = accuracy(before[kind], nn)
            summary[f"{kind}_accuracy_after_rl"] = accuracy(after[kind], nn)
    return summary
