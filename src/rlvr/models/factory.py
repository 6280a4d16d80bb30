"""The offline model factory behind `rlvr model init`: a tokenizer trained on task text and a small
Qwen2-architecture causal LM with random weights, saved as a Hugging Face directory.

    init_model("models/tiny", preset="tiny", tasks=("knights_knaves",), seed=0)
      -> models/tiny/{config.json, generation_config.json, model.safetensors, tokenizer.json,
                      tokenizer_config.json, chat_template.jinja, rlvr_model.json}

Everything is a function of (preset, tasks, seed, vocab_size, corpus size): with the same
transformers / tokenizers versions the same arguments give byte-identical files. The seed moves
the weights only; the tokenizer depends on the tasks and vocabulary size. The directory loads
with AutoModelForCausalLM / AutoTokenizer like any Qwen2.5 checkpoint, so the rest of rlvr never
needs to know the model was made here.
"""

from __future__ import annotations

import filecmp
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlvr import tasks as task_registry
from rlvr.models.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    EOS_TOKEN,
    PAD_TOKEN,
    render_chatml,
    save_tokenizer,
    train_tokenizer,
)

# torch and transformers are imported inside the functions that use them: config validation
# (model.preset) and `rlvr --help` import this module (start-up time).
DEFAULT_CORPUS_SIZE = 700  # examples per task, split evenly over its levels (100 per KK size)
# The tokenizer corpus has its own fixed seed: models of different seeds share one tokenizer (their
# token ids, SFT caches and samples stay comparable); the seed moves the weights only.
CORPUS_SEED = 7919


# Vocabulary size `Preset.params` is quoted at: about what the KK tokenizer needs (610 tokens).
TYPICAL_VOCAB_SIZE = 640


@dataclass(frozen=True)
class Preset:
    """A Qwen2 shape. `params` counts parameters at TYPICAL_VOCAB_SIZE (embeddings tied);
    count_params(preset, vocab_size) gives the exact figure for another vocabulary."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    description: str
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = True

    @property
    def params(self) -> int:
        return count_params(self, TYPICAL_VOCAB_SIZE)


def count_params(preset: Preset, vocab_size: int) -> int:
    """Exact parameter count of Qwen2ForCausalLM for `preset` and `vocab_size`.

    Per layer: q/k/v projections with bias, o projection without, a SwiGLU MLP (gate, up, down)
    and two RMSNorm weights; then the final norm, the embedding and, untied, the lm head.
    """
    h, inter = preset.hidden_size, preset.intermediate_size
    kv = preset.num_key_value_heads * (h // preset.num_attention_heads)
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h
    layer = attention + 3 * h * inter + 2 * h
    embeddings = vocab_size * h * (1 if preset.tie_word_embeddings else 2)
    return preset.num_hidden_layers * layer + h + embeddings


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        description="~1.1M params: the 2-core CPU default (the size of the KK-tiny feasibility runs)",
    ),
    "mini": Preset(
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=768,
        description="~3.4M params: a stronger CPU model, about 3x slower per token than tiny",
    ),
    "small": Preset(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=2048,
        description="~32M params: for a GPU or a patient CPU; head_dim 64 as in Qwen2.5",
    ),
}


def model_config(preset: Preset, vocab_size: int, pad_id: int, eos_id: int) -> Any:
    """The Qwen2Config for a preset (fp32 weights, eos `<|im_end|>`, pad and bos `<|endoftext|>`)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        max_position_embeddings=preset.max_position_embeddings,
        tie_word_embeddings=preset.tie_word_embeddings,
        rms_norm_eps=1e-6,
        # RoPE: the default base 10000 (transformers 4.x `rope_theta`, 5.x `rope_parameters`): for
        # sequences under 8k it uses every rotary frequency band, unlike Qwen2.5's 1e6.
        initializer_range=0.02,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
        architectures=["Qwen2ForCausalLM"],
    )


def random_model(config: Any, seed: int) -> Any:
    """Qwen2ForCausalLM with weights drawn from its own generator, independent of global RNG.

    As transformers' Qwen2 init: matrices and embeddings ~ N(0, initializer_range), biases 0,
    RMSNorm weights 1; drawn in parameter-name order from torch.Generator(seed) so that the
    weights depend on the seed and the shapes only (not on transformers' init code).
    """
    import torch
    from transformers import Qwen2ForCausalLM

    with torch.random.fork_rng(devices=[]):  # construction's own init must not move the caller's RNG
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if parameter.ndim >= 2:
                parameter.normal_(0.0, config.initializer_range, generator=generator)
            elif name.endswith("norm.weight"):
                parameter.fill_(1.0)
            else:
                parameter.zero_()
    return model.float().eval()


def _target_completion(task: Any, example: Any) -> str:
    for method in ("solution_trace", "oracle_completion"):
        if callable(getattr(task, method, None)):
            return str(getattr(task, method)(example))
    return ""


def task_corpus(task_names: Sequence[str], seed: int = 0, n_per_task: int = DEFAULT_CORPUS_SIZE,
                task_options: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Tokenizer training texts: for each example, its chat prompt followed by its target completion.

    task_options[name] are the options task `name` is built with (e.g. a recipe's
    data.task_options), so the tokenizer learns the words of the prompts and traces the run uses.

    Text = ChatML(task.messages(example)) + "<|im_start|>assistant\\n" + response_prefix + target
    + "<|im_end|>", where target is task.solution_trace(example) or task.oracle_completion(example)
    when the task has one. Examples are split evenly over the task's corpus_levels (KK: 2..8 people;
    a task without them: its default_difficulty).
    """
    texts: list[str] = []
    for name in task_names:
        task = task_registry.get(name, **dict((task_options or {}).get(name, {})))
        levels = list(getattr(task, "corpus_levels", ())) or [dict(getattr(task, "default_difficulty", {}))]
        per_level = max(1, math.ceil(n_per_task / len(levels)))
        for level in levels:
            for example in task.examples(per_level, seed, **level):
                prompt = render_chatml(task.messages(example), add_generation_prompt=True)
                target = _target_completion(task, example)
                texts.append(prompt + task.response_prefix + target + EOS_TOKEN)
    return texts


def tokens_per_word(tokenizer: Any, texts: Iterable[str]) -> float:
    """Mean tokens per whitespace-separated word (lower is faster sampling and training)."""
    batch = list(texts)
    words = sum(len(text.split()) for text in batch)
    # verbose=False: corpus texts may exceed model_max_length (8-person traces); only counting here
    tokens = sum(len(ids) for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"])
    return tokens / max(words, 1)


def _same_tree(a: Path, b: Path) -> bool:
    names_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*"))
    names_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*"))
    if names_a != names_b:
        return False
    return all(
        (a / n).is_dir() == (b / n).is_dir()
        and ((a / n).is_dir() or filecmp.cmp(a / n, b / n, shallow=False))
        for n in names_a
    )


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """No "Writing model shards" bar for a single small file; restores the caller's setting."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def _build(
    directory: Path, preset_name: str, tasks: Sequence[str], seed: int, vocab_size: int, n_per_task: int,
    task_options: Mapping[str, Mapping[str, Any]],
) -> None:
    """Write tokenizer, model and provenance into the (new, empty) `directory`."""
    from transformers import GenerationConfig

    preset = PRESETS[preset_name]
    corpus = task_corpus(tasks, seed=CORPUS_SEED, n_per_task=n_per_task, task_options=task_options)
    tokenizer = train_tokenizer(corpus, vocab_size)
    vocab = tokenizer.get_vocab()
    pad_id, eos_id = vocab[PAD_TOKEN], vocab[EOS_TOKEN]
    model = random_model(model_config(preset, len(tokenizer), pad_id, eos_id), seed)
    model.generation_config = GenerationConfig(eos_token_id=[eos_id, pad_id], pad_token_id=pad_id)
    with _quiet_progress():
        model.save_pretrained(str(directory))
    tokenizer.model_max_length = preset.max_position_embeddings
    save_tokenizer(tokenizer, directory)
    provenance = {
        "made_by": "rlvr model init",
        "preset": preset_name,
        "shape": {k: v for k, v in asdict(preset).items() if k != "description"},
        "params": sum(p.numel() for p in model.parameters()),
        "tasks": list(tasks),
        **({"task_options": {k: dict(v) for k, v in task_options.items()}} if task_options else {}),
        "seed": seed,
        "vocab_size": len(tokenizer),
        "vocab_size_requested": vocab_size,
        "corpus": {"texts": len(corpus), "n_per_task": n_per_task, "characters": sum(map(len, corpus))},
        "tokens_per_word": round(tokens_per_word(tokenizer, corpus), 4),
    }
    (directory / "rlvr_model.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")


def init_model(
    out_dir: str | Path,
    preset: str = "tiny",
    tasks: Sequence[str] = ("knights_knaves",),
    seed: int = 0,
    vocab_size: int | None = None,
    overwrite: bool = False,
    n_per_task: int = DEFAULT_CORPUS_SIZE,
    task_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Build the model directory `out_dir` offline and return its path.

    task_options: per task name, the options the tokenizer's corpus is written with (task_corpus).

    The directory is written next to `out_dir` under a temporary name and renamed into place, so
    readers never see a half-written model. When `out_dir` exists: identical contents -> it is
    kept as it is; different contents -> FileExistsError unless overwrite=True.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if not tasks:
        raise ValueError("tasks must name at least one task (the tokenizer is trained on their text)")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{str(out)!r} exists and is a file; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / "rlvr_model.json").is_file() and not overwrite:
        raise _exists_error(out)  # not made by init_model, so it cannot be the identical model
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        _build(temporary, preset, tuple(tasks), seed, vocab_size or DEFAULT_VOCAB_SIZE, n_per_task,
               {name: task_options[name] for name in tasks if task_options and task_options.get(name)})
        _move_into_place(temporary, out, overwrite)
        return out
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)


def _exists_error(out: Path) -> FileExistsError:
    return FileExistsError(
        f"{str(out)!r} already exists and differs from the model these arguments make; "
        "pass overwrite=True (--overwrite) to replace it, or choose another --out"
    )


def _move_into_place(temporary: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished `temporary` directory to `out` (rename is atomic on one filesystem)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty directory made beforehand is not a model to protect
    if not out.exists():
        try:
            temporary.rename(out)
            return
        except OSError:
            if not out.exists():
                raise
            # another process finished the same directory first: judge its contents below
    if _same_tree(temporary, out):
        return
    if not overwrite:
        raise _exists_error(out)
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    try:
        temporary.rename(out)
    except OSError:
        old.rename(out)  # put the previous model back rather than leave nothing
        raise
    shutil.rmtree(old)
