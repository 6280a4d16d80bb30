"""Sample, score and summarise: the evaluation harness behind `rlvr eval` and in-loop evals.

evaluate() turns examples into prompts with the tokenizer's chat template, asks a RolloutEngine
for n completions per prompt, scores each with the task's verifier and computes the metrics of
rlvr.evaluation.metrics from the resulting samples. write_eval() stores them as
`metrics.json` (metrics, sampling settings, timing) and `samples.jsonl` (one line per
completion); compute_metrics(read samples, k_values, settings["difficulty_keys"]) gives back the
same metrics.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlvr.data.io import iter_examples, write_json_atomic, write_jsonl_atomic
from rlvr.evaluation.metrics import MetricsAccumulator, compute_metrics, difficulty_keys_of
from rlvr.models.chat import batch_prompt_ids, decode_completion, eos_token_ids, set_prompt_template
from rlvr.models.loading import ModelLoadError, adapter_base, load_model, load_tokenizer
from rlvr.models.native import NativeCausalLM, is_supported
from rlvr.rollout.base import RolloutEngine, SamplingParams
from rlvr.rollout.torch_engine import TorchEngine
from rlvr.rollout.vllm_engine import VLLMEngine, require_vllm  # vllm itself is imported inside
from rlvr.tasks import get
from rlvr.tasks.base import Example, Task


@dataclass
class EvalResult:
    """metrics: flat {name: float} (see metrics.compute_metrics); samples: one dict per completion;
    settings: how the completions were sampled; timing: wall-clock seconds and throughput."""

    metrics: dict[str, float]
    samples: list[dict[str, Any]]
    settings: dict[str, Any]
    timing: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalSampling:
    """How an evaluation samples: n completions per prompt at temperature / top_p / top_k (0: off),
    up to max_new_tokens each, prompts_per_batch prompts per engine call (batch b with seed
    seed + b); k_values: the k of pass@k / maj@k. Settings whose figures would mislead are
    rejected on construction, before any generation is spent."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 1024
    seed: int = 0
    k_values: tuple[int, ...] = (1,)
    prompts_per_batch: int = 64

    def __post_init__(self) -> None:
        n, temperature = self.n, self.temperature
        if n < 1:
            raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if temperature == 0 and n > 1:
            raise ValueError(
                f"temperature 0 (greedy) with n={n} gives {n} identical completions per prompt; "
                "use n=1 for greedy or a temperature > 0 for avg@n / pass@k"
            )
        bad = [k for k in self.k_values if not 1 <= k <= n]
        if bad:
            raise ValueError(f"k values {bad} need 1 <= k <= n={n} samples per prompt (pass@k, maj@k)")
        if self.prompts_per_batch < 1:
            raise ValueError(f"prompts_per_batch must be >= 1, got {self.prompts_per_batch}")

    @classmethod
    def from_options(cls, n: int = 1, k: str | int | Sequence[int] = "1", temperature: float | None = None,
                     top_p: float | None = None, **rest: Any) -> EvalSampling:
        """`rlvr eval`'s options: k parsed (parse_k); temperature / top_p as given, else greedy
        (0.0 / 1.0) for one sample per problem and DeepScaleR's evaluation setting (0.6 / 0.95) for
        several; rest: the other fields."""
        if temperature is None:
            temperature = 0.0 if n == 1 else 0.6
        if top_p is None:
            top_p = 1.0 if temperature == 0.0 else 0.95
        return cls(n=n, temperature=temperature, top_p=top_p, k_values=parse_k(k), **rest)

    def params(self, stop_token_ids: Sequence[int], batch: int) -> SamplingParams:
        """The engine's settings for batch `batch` (seed + batch: reproducible for a given batch size)."""
        return SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              max_new_tokens=self.max_new_tokens, stop_token_ids=tuple(stop_token_ids),
                              seed=self.seed + batch)

    def settings(self) -> dict[str, Any]:
        """The fields as metrics.json's settings record them."""
        return {**asdict(self), "k_values": list(self.k_values)}


def _sample_record(
    index: int, sample_index: int, example: Example, text: str, rollout: Any, score: Any
) -> dict[str, Any]:
    return {
        "prompt_index": index,
        "sample_index": sample_index,
        "metadata": dict(example.metadata),
        "prompt": example.prompt,
        "answer": example.answer,
        "completion": text,
        "extracted": score.extracted,
        "reward": float(score.reward),
        "correct": bool(score.correct),
        "format_ok": bool(score.format_ok),
        "parts": {name: float(value) for name, value in score.parts.items()},
        "n_tokens": len(rollout.token_ids),
        "finish_reason": rollout.finish_reason,
    }


def scored_groups(
    engine: RolloutEngine, tokenizer: Any, task: Task, examples: Iterable[Example], sampling: EvalSampling,
    timing: dict[str, float],
) -> Iterator[list[dict[str, Any]]]:
    """Each example's n scored samples (a list of sample dicts), in example order, streaming.

    Examples are read `sampling.prompts_per_batch` at a time; batch b samples with seed `seed + b`.
    Adds generate_s, score_s and generated_tokens into `timing` as it goes.
    """
    n = sampling.n
    stop_ids = tuple(eos_token_ids(tokenizer))
    iterator = iter(examples)
    start = 0
    for batch in itertools.count():
        chunk = list(itertools.islice(iterator, sampling.prompts_per_batch))
        if not chunk:
            return
        ids = batch_prompt_ids(tokenizer, [task.messages(e) for e in chunk], task.response_prefix)
        params = sampling.params(stop_ids, batch)
        t0 = time.perf_counter()
        rollouts = engine.generate(ids, params)
        t1 = time.perf_counter()
        if len(rollouts) != len(chunk) * n:
            raise RuntimeError(f"engine returned {len(rollouts)} rollouts for {len(chunk)} prompts x n={n}")
        groups: list[list[dict[str, Any]]] = [[] for _ in chunk]
        for rollout in rollouts:
            local = rollout.prompt_index
            example = chunk[local]
            text = decode_completion(tokenizer, rollout.token_ids)
            score = task.score(text, example)
            record = _sample_record(start + local, len(groups[local]), example, text, rollout, score)
            groups[local].append(record)
            timing["generated_tokens"] = timing.get("generated_tokens", 0.0) + len(rollout.token_ids)
        timing["generate_s"] = timing.get("generate_s", 0.0) + t1 - t0
        timing["score_s"] = timing.get("score_s", 0.0) + time.perf_counter() - t1
        start += len(chunk)
        yield from groups


def _settings(task: Task, sampling: EvalSampling, model_path: str | None, n_examples: int) -> dict[str, Any]:
    return {
        "task": task.name, "model": model_path, **sampling.settings(),
        "response_prefix": task.response_prefix, "n_examples": n_examples,
        "difficulty_keys": list(difficulty_keys_of(task)),
    }


def _finish_timing(timing: dict[str, float]) -> dict[str, float]:
    generate_s = timing.get("generate_s", 0.0)
    timing["gen_tokens_per_s"] = timing.get("generated_tokens", 0.0) / generate_s if generate_s > 0 else 0.0
    return timing


def evaluate(
    engine: RolloutEngine,
    tokenizer: Any,
    task: Task,
    examples: Sequence[Example],
    sampling: EvalSampling,
    *,
    model_path: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Evaluate `examples` with sampling.n samples each; returns metrics, per-completion samples, settings.

    Batches of `prompts_per_batch` prompts go to the engine in order; batch b samples with seed
    `seed + b` so a run is reproducible for a given batch size. Stop tokens are the tokenizer's
    eos ids (rlvr.models.chat.eos_token_ids). on_batch(done_prompts, total_prompts) is called
    after each batch (progress display).
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    timing: dict[str, float] = {}
    samples: list[dict[str, Any]] = []
    for done, group in enumerate(scored_groups(engine, tokenizer, task, examples, sampling, timing), start=1):
        samples += group
        if on_batch is not None and (done % sampling.prompts_per_batch == 0 or done == len(examples)):
            on_batch(done, len(examples))
    metrics = compute_metrics(samples, sampling.k_values, difficulty_keys_of(task))
    settings = _settings(task, sampling, model_path, len(examples))
    return EvalResult(metrics, samples, settings, _finish_timing(timing))


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN / inf as null: metrics.json stays valid JSON for any reader."""
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


def write_eval(result: EvalResult, out_dir: str | Path) -> Path:
    """Write out_dir/metrics.json ({"metrics", "settings", "timing"}) and out_dir/samples.jsonl,
    each atomically (temporary file + os.replace). Returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "samples.jsonl", result.samples)
    write_json_atomic(out / "metrics.json", _payload(result))
    return out


def _payload(result: EvalResult) -> dict[str, Any]:
    return {"metrics": _finite(result.metrics), "settings": result.settings, "timing": result.timing}


def read_eval(eval_dir: str | Path) -> dict[str, Any]:
    """metrics.json of an eval directory as a dict ({"metrics", "settings", "timing"})."""
    path = Path(eval_dir) / "metrics.json"
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error
    if not isinstance(payload, dict) or "metrics" not in payload:
        raise ValueError(f"{path}: expected an object with a 'metrics' key (written by rlvr eval)")
    return payload


def load_engine(
    model_dir: str | Path, device: str = "auto", dtype: str = "float32", native: bool = True,
    max_batch_size: int | None = None,
) -> tuple[Any, Any]:
    """(TorchEngine, tokenizer) for a local model directory.

    native: use rlvr's compact decoder (rlvr.models.native) when it reproduces the checkpoint's
    architecture exactly (Qwen2 / Llama without RoPE scaling): same numbers, faster decoding.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=dtype, device=device)
    stop_ids = eos_token_ids(tokenizer, model)
    if native and is_supported(model.config)[0]:
        model = NativeCausalLM.from_hf(model).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    engine = TorchEngine(model, stop_ids, pad_token_id=pad, device=device,
                         decode_fn=lambda ids: decode_completion(tokenizer, ids),
                         max_batch_size=max_batch_size)
    return engine, tokenizer


def load_vllm_engine(model_dir: str | Path, dtype: str = "float32", rows: int = 64,
                     max_new_tokens: int = 1024) -> tuple[Any, Any]:
    """(VLLMEngine, tokenizer) for a local model directory: rows completions in flight, sequences of
    up to 1024 prompt tokens + max_new_tokens; stops on the same ids as load_engine's TorchEngine."""
    require_vllm()
    if adapter_base(model_dir) is not None:
        raise ModelLoadError(f"{model_dir} is an adapter-only LoRA checkpoint, which vLLM does not load as a "
                             "model: evaluate its merged/ directory (checkpoint.merge_lora) or use "
                             "--engine torch")
    tokenizer = load_tokenizer(model_dir)
    vllm_dtype = "float32" if dtype == "auto" else dtype
    engine = VLLMEngine(str(model_dir), eos_token_ids(tokenizer, str(model_dir)), dtype=vllm_dtype,
                        max_num_seqs=rows, max_model_len=1024 + max_new_tokens)
    return engine, tokenizer


@dataclass(frozen=True)
class ModelLoading:
    """How `rlvr eval` loads the model under evaluation: its rollout engine ("torch": load_engine,
    "vllm": load_vllm_engine), device and dtype, and the prompt template set on its tokenizer (a
    recipe's data.prompt_template, as the run sets it: rlvr.trainers.pipeline.run_policy)."""

    engine: str = "torch"
    device: str = "auto"
    dtype: str = "float32"
    prompt_template: str = ""

    def __post_init__(self) -> None:
        if self.engine not in ("torch", "vllm"):
            raise ValueError(f"engine must be 'torch' or 'vllm', got {self.engine!r}")

    def load(self, model_dir: str | Path, task: Task, sampling: EvalSampling) -> tuple[Any, Any]:
        """(engine, tokenizer) for `model_dir`; a vLLM engine holds the rows and lengths `sampling` needs."""
        if self.engine == "vllm":
            engine, tokenizer = load_vllm_engine(model_dir, dtype=self.dtype,
                                                 rows=sampling.prompts_per_batch * sampling.n,
                                                 max_new_tokens=sampling.max_new_tokens)
        else:
            engine, tokenizer = load_engine(model_dir, device=self.device, dtype=self.dtype)
        if self.prompt_template:
            set_prompt_template(tokenizer, self.prompt_template, task.response_prefix)
        return engine, tokenizer


def parse_k(k: str | int | Sequence[int]) -> tuple[int, ...]:
    """"1,4,16" / 4 / [1, 4] -> (1, 4, 16) / (4,) / (1, 4); sorted, without repeats."""
    if isinstance(k, int):
        values = [k]
    elif isinstance(k, str):
        try:
            values = [int(part) for part in k.replace(" ", "").split(",") if part]
        except ValueError:
            raise ValueError(f"k must be comma-separated integers such as 1,4,16, got {k!r}") from None
    else:
        values = [int(v) for v in k]
    if not values:
        raise ValueError("k needs at least one value")
    return tuple(sorted(set(values)))


def eval_problems(task: Task, data: str | None, limit: int | None, data_seed: int) -> Iterable[Example]:
    """The problems of an evaluation: the first `limit` rows of `data`, read lazily, or `limit`
    (default 256) problems generated by the task with data_seed when there is no data file."""

    if data is None:
        return task.examples(256 if limit is None else limit, data_seed)
    return itertools.islice(iter_examples(task, data), limit)


def stream_samples(groups: Iterable[list[dict[str, Any]]], accumulator: MetricsAccumulator, out: str | None,
                   progress_every: int = 0) -> list[dict[str, Any]]:
    """Feed each problem's scored samples to the accumulator as they come, writing them to
    out/samples.jsonl (atomic) when out is given; returns them only when out is None, so a long
    evaluation never holds its samples. progress_every > 0: a count on stderr every that many problems."""

    kept: list[dict[str, Any]] = []

    def stream() -> Iterator[dict[str, Any]]:
        for done, group in enumerate(groups, start=1):
            accumulator.add(group)
            if out is None:
                kept.extend(group)
            if progress_every and done % progress_every == 0:
                sys.stderr.write(f"\r[eval] {done} prompts")
                sys.stderr.flush()
            yield from group

    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(Path(out) / "samples.jsonl", stream())
    else:
        collections.deque(stream(), maxlen=0)
    if progress_every:
        sys.stderr.write(f"\r[eval] {accumulator.total.prompts} prompts\n")
    return kept


def eval_command(
    model: str,
    task: str | Task,
    data: str | None,
    out: str | None = None,
    *,
    sampling: EvalSampling = EvalSampling(),
    loading: ModelLoading = ModelLoading(),
    limit: int | None = None,
    data_seed: int = 12345,
    progress: bool = True,
) -> EvalResult:
    """`rlvr eval`: evaluate a local model on a data file of `task`; writes out/ when given.

    task: a task name or a built Task (`rlvr eval`: the one the options or the recipe describe,
    rlvr.trainers.pipeline.build_task). loading.prompt_template: a recipe's data.prompt_template,
    so the model sees the prompts of its training run.
    Streams (stream_samples): the data file is read a batch at a time and samples go straight to
    out/samples.jsonl, with the metrics accumulated on the way, so the returned EvalResult's
    samples list is empty when `out` is given (read them from the file) and full otherwise.
    sampling: EvalSampling.from_options for the command line's defaults; recorded in metrics.json's settings.
    data: JSONL / JSON / parquet rows in the task's public format (e.g. MATH-500 or AIME rows
    with problem + answer for task "math"); limit: evaluate the first `limit` rows only.
    data None: `limit` (default 256) problems generated by the task with seed `data_seed`.
    """
    task_obj = get(task) if isinstance(task, str) else task
    examples = eval_problems(task_obj, data, limit, data_seed)
    engine, tokenizer = loading.load(model, task_obj, sampling)
    timing: dict[str, float] = {}
    groups = scored_groups(engine, tokenizer, task_obj, examples, sampling, timing)
    accumulator = MetricsAccumulator(sampling.k_values, difficulty_keys_of(task_obj))
    kept = stream_samples(groups, accumulator, out, sampling.prompts_per_batch if progress else 0)
    if not accumulator.total.prompts:
        raise ValueError(f"no examples to evaluate in {data}")
    settings = _settings(task_obj, sampling, str(model), accumulator.total.prompts)
    settings["prompt_template"] = loading.prompt_template
    settings["data"] = str(data) if data is not None else f"generated (seed {data_seed})"
    result = EvalResult(accumulator.result(), kept, settings, _finish_timing(timing))
    if out is not None:
        write_json_atomic(Path(out) / "metrics.json", _payload(result))
    return result


def format_summary(result: EvalResult) -> str:
    """A few lines for a terminal: settings, headline metrics, per-difficulty accuracy."""
    s, m = result.settings, result.metrics
    lines = [
        f"{s['task']}: {int(m['n_prompts'])} prompts x n={s['n']}  temperature {s['temperature']}  "
        f"top_p {s['top_p']}  max_new_tokens {s['max_new_tokens']}  seed {s['seed']}",
        "  " + "  ".join(f"{key} {m[key]:.3f}" for key in m if key.startswith(("avg@", "pass@", "maj@"))),
        f"  truncation {m['truncation_rate']:.3f}  format errors {m['format_error_rate']:.3f}  "
        f"length mean {m['length/mean']:.1f}  "
        f"reflection words/response {m['reflection_words_per_response']:.2f}",
    ]
    for name in sorted({key.split("/")[0] for key in m if key.startswith("by_")}):
        cells = [f"{key.split('/')[1]}: {value:.3f}" for key, value in m.items()
                 if key.startswith(name + "/") and key.endswith("/avg@n")]
        lines.append(f"  {name[3:]} avg@n  " + "  ".join(cells))
    return "\n".join(lines)
