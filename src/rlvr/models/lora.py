"""LoRA adapters through peft (`model.lora`): wrap, check targets, save, load, merge.

    model = apply_lora(model, LoRAConfig(r=16, alpha=32), base_path)   # a peft PeftModel
    save_adapter(model, dir)        -> adapter_model.safetensors + adapter_config.json
    load_adapter(dir, model)        the adapter weights of a checkpoint, back into the model
    merged_state_dict(model)        HF-named weights with every adapter folded in (vLLM push, export)
    save_merged(model, dir)         a plain HF model directory (transformers, vLLM)

The wrapped model still answers rlvr's calls: PeftModel forwards attributes to the model it wraps,
so rlvr's native model keeps `completion_logits`, `prefill` and `decode_step` (whose fused decode
weights add the adapters' products, see native.adapted_weight) and a transformers model keeps its
forward. Only the adapters require gradients; the base weights are frozen and never change. A
saved adapter names the base model's directory and uses transformers' parameter names (rlvr's
native model has the same), so `peft.PeftModel.from_pretrained(AutoModelForCausalLM...(base), dir)`
loads it whichever implementation trained it.

peft is imported only by the functions that need it (an optional extra: `pip install rlvr[lora]`).
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rlvr.models import native
from rlvr.models.native import adapted_weight

INSTALL = "pip install 'rlvr[lora]'"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoRAError(ValueError):
    """A LoRA setting or adapter file that cannot be used; the message names what and why."""


def peft_available() -> bool:
    return importlib.util.find_spec("peft") is not None


def is_lora(model: Any) -> bool:
    """Whether `model` is a peft-wrapped model (apply_lora's result)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def skeleton(hf_config: Any, impl: str) -> nn.Module:
    """The model rlvr would build for `hf_config` with model.impl=`impl`, on the meta device (no
    memory, no weights): its module names are what LoRA targets are matched against."""
    with torch.device("meta"):
        if impl in ("auto", "native") and native.is_supported(hf_config)[0]:
            return native.NativeCausalLM(hf_config)
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(hf_config)


def check_targets(model: nn.Module, target_modules: list[str]) -> None:
    """Every target must name a decoder Linear layer of `model`, by peft's rule (a module whose name
    is the target or ends with "." + target); LoRAError names the first that does not."""
    modules = dict(model.named_modules())
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in modules.items()
                     if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] != "lm_head"})
    for target in target_modules:
        matched = [name for name in modules if name == target or name.endswith("." + target)]
        if not matched:
            raise LoRAError(f"target {target!r} matches no module of the model (its Linear layers: "
                            f"{', '.join(linear)})")
        for name in matched:
            if name.rsplit(".", 1)[-1] == "lm_head":
                raise LoRAError(f"target {target!r} is the output layer lm_head; LoRA here adapts the "
                                f"decoder's Linear layers ({', '.join(linear)})")
            if not isinstance(modules[name], nn.Linear):
                raise LoRAError(f"target {target!r} matches {name}, a {type(modules[name]).__name__}, not a "
                                f"Linear layer (the model's Linear layers: {', '.join(linear)})")


def apply_lora(model: nn.Module, r: int, alpha: float, dropout: float, target_modules: list[str],
               base_path: str | os.PathLike[str]) -> Any:
    """`model` with LoRA adapters on `target_modules` (a peft PeftModel); only they require grad.

    B starts at zero (peft's default), so the wrapped model computes exactly what `model` did."""
    if not peft_available():
        raise LoRAError(f"model.lora needs peft, which is not installed ({INSTALL})")
    from peft import LoraConfig, get_peft_model

    check_targets(model, target_modules)
    transformers_model = hasattr(model, "can_generate")  # a PreTrainedModel, not rlvr's native one
    # lora_alpha is typed int in peft; rlvr's alpha may be any number (the scale is alpha / r)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,  # type: ignore[arg-type]
                        target_modules=list(target_modules), bias="none",
                        task_type="CAUSAL_LM" if transformers_model else None)
    wrapped = get_peft_model(model, config)
    wrapped.peft_config["default"].base_model_name_or_path = str(Path(base_path).resolve())
    return wrapped


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_adapter(model: Any, out: Path) -> None:
    """Write the adapter as peft does (adapter_model.safetensors + adapter_config.json).

    The config says task_type CAUSAL_LM whichever implementation trained it: the weight names are
    transformers' (rlvr's native model uses them too), so peft loads the adapter onto the HF model."""
    from peft import get_peft_model_state_dict

    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = copy.deepcopy(model.peft_config["default"])
    config.task_type = "CAUSAL_LM"
    config.inference_mode = True
    config.save_pretrained(str(out))


def load_adapter(directory: Path, model: Any) -> None:
    """Load a saved adapter into `model` (apply_lora's result); LoRAError when the file is missing or
    its tensors are not this model's adapters (another rank or other targets)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    path = directory / ADAPTER_WEIGHTS
    if not path.is_file():
        raise LoRAError(f"{directory} holds no LoRA adapter ({ADAPTER_WEIGHTS}); "
                        "the run trains one (model.lora)")
    saved = load_file(str(path))
    own = get_peft_model_state_dict(model)
    if set(saved) != set(own):
        differ = sorted(set(saved) ^ set(own))
        raise LoRAError(f"{path} holds other adapters than model.lora makes: e.g. {differ[0]!r}")
    for name, tensor in saved.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise LoRAError(f"{path}: {name} has shape {tuple(tensor.shape)}, model.lora makes "
                            f"{tuple(own[name].shape)} (another rank?)")
    set_peft_model_state_dict(model, saved)


def merged_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The base model's state dict under its own (HF) names with each adapted weight replaced by
    W + (alpha / r) B A. Computed out of place: the model's base weights are left untouched."""
    base = model.get_base_model()
    out = {key.replace(".base_layer.", "."): tensor for key, tensor in base.state_dict().items()
           if ".lora_" not in key}
    with torch.no_grad():
        for name, module in base.named_modules():
            if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight"):
                out[f"{name}.weight"] = adapted_weight(module).detach()
    return out


def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights an engine of the base architecture runs (HF names): merged for a LoRA model."""
    return merged_state_dict(model) if is_lora(model) else model.state_dict()


def merged_copy(model: Any) -> nn.Module:
    """A standalone copy of the adapted model with every adapter folded in (no peft layers left)."""
    return copy.deepcopy(model).merge_and_unload()


def save_merged(model: Any, out: Path) -> None:
    """Write the adapted model as a plain HF directory (config.json + model.safetensors)."""
    base = model.get_base_model()
    base.save_pretrained(str(out), state_dict=merged_state_dict(model))


def is_adapter_dir(directory: Path) -> bool:
    return (directory / ADAPTER_CONFIG).is_file()


def merge_adapter(model: nn.Module, directory: Path) -> nn.Module:
    """A transformers `model` (the base) with the saved adapter of `directory` folded into its
    weights: a plain model, no peft layers left. LoRAError when peft is missing, the adapter file is
    absent, or its tensors do not all fit the model (another base or architecture)."""
    if not peft_available():
        raise LoRAError(f"{directory} is a LoRA adapter; loading it needs peft, which is not installed "
                        f"({INSTALL})")
    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise LoRAError(f"{directory} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig.from_pretrained(str(directory))
    config.inference_mode = False
    wrapped = get_peft_model(model, config)  # type: ignore[arg-type]
    try:
        load_adapter(directory, wrapped)
    except RuntimeError as error:  # a tensor of another size (another base model)
        raise LoRAError(f"{directory / ADAPTER_WEIGHTS} does not fit its base model: {error}") from None
    return wrapped.merge_and_unload()  # type: ignore[no-any-return]
