"""Load a local Hugging Face checkpoint directory: tokenizer and causal LM.

rlvr never downloads: every path must be a directory on this machine (one written by
`rlvr model init`, a trainer checkpoint, or a Qwen2.5 / Llama directory you fetched yourself).
Problems are reported before transformers sees the path, naming the directory and the file that
was expected, so that a typo does not turn into a stack trace about the hub.

An adapter-only LoRA checkpoint (adapter_config.json + adapter_model.safetensors, what rlvr's
checkpoints hold without checkpoint.merge_lora) loads as a model too: the base directory its
adapter_config.json names (base_model_name_or_path) is loaded and the adapter merged into it
(adapter_base, load_model, merged_model_dir; peft needed).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from rlvr.errors import ModelLoadError

# torch and transformers are imported inside the functions that use them: `import rlvr.models`
# (prompt ids, presets) must not pay their start-up time.

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
DTYPES = ("float32", "bfloat16", "float16", "auto")

ADAPTER_CONFIG = "adapter_config.json"
BASE_KEY = "base_model_name_or_path"

# "Org/Name" or "Org/Name-7B": one slash, no leading "." or "/", no "~": looks like a hub id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_dir(path: str | Path, need_weights: bool = True, need_tokenizer: bool = False) -> Path:
    """The path as a Path to an existing model directory, or ModelLoadError naming what is missing."""
    text = str(path)
    directory = Path(text).expanduser()
    if not directory.exists():
        if _HUB_ID.match(text):
            raise ModelLoadError(
                f"no directory {text!r} here. If it is a Hugging Face hub id: rlvr loads local "
                "directories only and never downloads. Fetch the model yourself, e.g. "
                f"`huggingface-cli download {text} --local-dir models/{text.split('/')[-1]}`, "
                "then point rlvr at that directory (a path such as ./models/NAME or /abs/path)."
            )
        raise ModelLoadError(f"model directory {text!r} does not exist")
    if not directory.is_dir():
        raise ModelLoadError(f"{text!r} is a file; expected a Hugging Face model directory")
    if not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"{text!r} has no config.json; expected a Hugging Face model directory "
            "(config.json, weights, tokenizer files), e.g. one written by `rlvr model init`"
        )
    if (
        need_weights
        and not any((directory / name).is_file() for name in WEIGHT_FILES)
        and not any(directory.glob("*.safetensors"))
    ):
        raise ModelLoadError(
            f"{text!r} has no weights; expected one of {', '.join(WEIGHT_FILES)} (or *.safetensors shards)"
        )
    if need_tokenizer and not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{text!r} has no tokenizer; expected one of {', '.join(TOKENIZER_FILES)}")
    return directory


def adapter_base(path: str | Path) -> Path | None:
    """The base model directory of an adapter-only LoRA checkpoint at `path` (its adapter_config.json's
    base_model_name_or_path, relative paths read from the checkpoint), checked to be a local model
    directory with weights; None when `path` holds no adapter_config.json. ModelLoadError names the
    file and the key when the base is missing or not here."""
    file = Path(str(path)).expanduser() / ADAPTER_CONFIG
    if not file.is_file():
        return None
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{file}:{error.lineno}: not valid JSON ({error.msg})") from None
    base = raw.get(BASE_KEY) if isinstance(raw, dict) else None
    if not isinstance(base, str) or not base:
        raise ModelLoadError(f"{file} is a LoRA adapter without its base model: key {BASE_KEY!r} is missing "
                             "or empty (set it to the base model's local directory)")
    directory = Path(base).expanduser()
    if not directory.is_absolute() and not directory.is_dir() and (file.parent / directory).is_dir():
        directory = file.parent / directory
    if not directory.is_dir():
        raise ModelLoadError(f"{file}: the adapter's base model {base!r} (key {BASE_KEY}) is not a local "
                             "directory; rlvr never downloads: put the base model there, or set the key to "
                             "where it is")
    try:
        return check_model_dir(directory, need_weights=True)
    except ModelLoadError as error:
        raise ModelLoadError(f"{file}: the adapter's base model (key {BASE_KEY}): {error}") from None


def model_config_dir(path: str | Path) -> Path:
    """The directory whose config.json describes the model at `path`: the base of an adapter-only
    LoRA checkpoint (adapter_base), else `path` itself."""
    return adapter_base(path) or Path(str(path)).expanduser()


def _tokenizer_dir(path: str | Path) -> Path:
    """Tokenizer directories need no config.json or weights, only tokenizer files (an adapter
    checkpoint without them: its base model's)."""
    text = str(path)
    directory = Path(text).expanduser()
    if directory.is_dir() and any((directory / name).is_file() for name in TOKENIZER_FILES):
        return directory
    base = adapter_base(directory) if directory.is_dir() else None
    if base is not None:
        return _tokenizer_dir(base)
    return check_model_dir(path, need_weights=False, need_tokenizer=True)


def load_tokenizer(path: str | Path) -> Any:
    """AutoTokenizer.from_pretrained on a local directory (never the hub).

    A tokenizer without a pad token (Llama-style) gets its eos as pad: batching needs some pad id,
    and padded positions are masked by whoever pads.
    """
    from transformers import AutoTokenizer

    directory = _tokenizer_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"could not load the tokenizer in {str(path)!r}: {error}") from error
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_dtype(dtype: str) -> Any:
    """'float32' | 'bfloat16' | 'float16' -> torch dtype; 'auto' stays 'auto' (the config's)."""
    import torch

    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


def _dtype_keyword() -> str:
    """from_pretrained's dtype argument: `dtype` since transformers 4.56, `torch_dtype` before."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def load_model(path: str | Path, dtype: str = "float32", device: str = "cpu") -> Any:
    """AutoModelForCausalLM.from_pretrained on a local directory, moved to `device`, eval mode.

    dtype: 'float32' (CPU default: bf16 matmuls are slower than fp32 on most CPUs for small
    models), 'bfloat16', 'float16', or 'auto' (the dtype recorded in config.json).
    An adapter-only LoRA checkpoint: its base model with the adapter merged in (a plain model).
    """
    from transformers import AutoModelForCausalLM

    base = adapter_base(path)
    directory = base if base is not None else check_model_dir(path, need_weights=True)
    torch_dtype = resolve_dtype(dtype)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(directory), local_files_only=True, **{_dtype_keyword(): torch_dtype}
        )
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"could not load the model in {str(directory)!r}: {error}") from error
    if base is not None:
        from rlvr.models.lora import LoRAError, merge_adapter

        try:
            model = merge_adapter(model, Path(str(path)).expanduser())
        except LoRAError as error:
            raise ModelLoadError(str(error)) from None
    return model.to(device).eval()


def merged_model_dir(path: str | Path, out: Path) -> Path:
    """`path` itself when it is a model directory; for an adapter-only LoRA checkpoint, a plain HF
    model directory at `out` (config, merged weights, tokenizer), written once (atomically) and
    reused: what a run given such a checkpoint as model.path trains and samples from."""
    if adapter_base(path) is None:
        return Path(str(path)).expanduser()
    if (out / "config.json").is_file():
        return out
    temp = out.with_name(out.name + ".tmp")
    shutil.rmtree(temp, ignore_errors=True)
    load_model(path).save_pretrained(str(temp))
    load_tokenizer(path).save_pretrained(str(temp))
    temp.replace(out)
    return out
