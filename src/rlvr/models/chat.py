"""Chat messages -> prompt token ids, stop tokens, completion text.

The prompt a policy sees is the tokenizer's own chat template with the generation prompt (the
opened assistant turn), followed by the task's `response_prefix` as plain text (e.g. "<think>\n"
for Logic-RL's pre-filled prompt). Completions are the tokens sampled after that; their text is
scored with the same prefix in mind (see rlvr.rewards.check_format).
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Messages = Sequence[dict[str, str]]


class PromptTemplateError(ValueError):
    """A data.prompt_template that cannot be used; the message says why."""


def check_prompt_template(template: str) -> None:
    """A format string whose only field is {question} (at least once); literal braces are {{ }}."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise PromptTemplateError(f"{template!r} is not a format string: {error} (write literal "
                                  f"braces as {{{{ }}}})") \
            from None
    others = sorted(set(fields) - {"question"})
    if others or "question" not in fields:
        raise PromptTemplateError(f"{template!r} has fields {fields}; expected {{question}} "
                                  "(and no other field: write literal braces as {{ }})")


def template_as_jinja(template: str, response_prefix: str = "") -> str:
    """A chat template (Jinja) that writes the format string `template` with question = the last
    user message, less its trailing `response_prefix` (prompt_text appends the prefix after the
    chat template, so the prompt is exactly template.format(question=...)). System messages are not
    written: the template holds the whole prompt."""
    check_prompt_template(template)
    if not template.endswith(response_prefix):
        raise PromptTemplateError(f"{template!r} does not end with the task's response_prefix "
                                  f"{response_prefix!r}: the template holds the pre-fill the scorer assumes "
                                  "(set data.task_options.response_prefix to the template's pre-filled tail)")
    body = template[: len(template) - len(response_prefix)] if response_prefix else template
    parts = ["{%- set ns = namespace(question='') -%}{%- for message in messages -%}"
             "{%- if message['role'] == 'user' -%}{%- set ns.question = message['content'] -%}{%- endif -%}"
             "{%- endfor -%}"]
    for literal, name, _, _ in string.Formatter().parse(body):
        if literal:  # a Jinja string expression: exact, whatever trim_blocks / lstrip_blocks do to text
            parts.append("{{ " + json.dumps(literal, ensure_ascii=False) + " }}")
        if name is not None:
            parts.append("{{ ns.question }}")
    return "".join(parts)


def set_prompt_template(tokenizer: Any, template: str, response_prefix: str = "") -> None:
    """Make `template` (data.prompt_template) the tokenizer's chat template (see template_as_jinja)."""
    tokenizer.chat_template = template_as_jinja(template, response_prefix)


def prompt_text(tokenizer: Any, messages: Messages, response_prefix: str = "") -> str:
    """The chat template applied with add_generation_prompt=True, then `response_prefix`."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; rlvr builds "
            "prompts with the tokenizer's chat template (a base model's directory may lack one: add "
            "'chat_template' to its tokenizer_config.json or a chat_template.jinja file, or set "
            "data.prompt_template, e.g. 'User: {question}\\nAssistant: <think>')"
        )
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return text + response_prefix


def prompt_ids(tokenizer: Any, messages: Messages, response_prefix: str = "") -> list[int]:
    """Token ids of prompt_text(...).

    The template already writes every special token it needs (e.g. `<|im_start|>`), so the text
    is encoded with add_special_tokens=False: no second bos. Special tokens written in the text
    are matched whole by the tokenizer and become their single ids.
    """
    text = prompt_text(tokenizer, messages, response_prefix)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def batch_prompt_ids(
    tokenizer: Any, list_of_messages: Sequence[Messages], response_prefix: str = ""
) -> list[list[int]]:
    """prompt_ids for many conversations; one batched call into the Rust tokenizer."""
    if not list_of_messages:
        return []
    texts = [prompt_text(tokenizer, messages, response_prefix) for messages in list_of_messages]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _config_eos_ids(model_config: Any) -> list[int]:
    """eos ids named by a model, a config, a GenerationConfig or a checkpoint directory."""
    if isinstance(model_config, (str, Path)):
        ids: list[int] = []
        for name in ("config.json", "generation_config.json"):
            file = Path(model_config) / name
            if file.is_file():
                ids += _as_ids(json.loads(file.read_text(encoding="utf-8")).get("eos_token_id"))
        return ids
    ids = []
    for source in (
        getattr(model_config, "config", None),
        model_config,
        getattr(model_config, "generation_config", None),
    ):
        if source is not None:
            ids += _as_ids(getattr(source, "eos_token_id", None))
    return ids


def eos_token_ids(tokenizer: Any, model_config: Any = None) -> tuple[int, ...]:
    """Every id that ends a completion, the tokenizer's eos first, without repeats.

    The union of: the tokenizer's eos id; `<|im_end|>` and `<|endoftext|>` when the vocabulary
    has them (a Qwen2.5 base model's eos is `<|endoftext|>` while its chat template closes turns
    with `<|im_end|>`); and the eos ids of `model_config`, which may be a model, its config, a
    GenerationConfig or a checkpoint directory (config.json and generation_config.json).
    """
    ids = _as_ids(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids += [vocab[token] for token in ("<|im_end|>", "<|endoftext|>") if token in vocab]
    if model_config is not None:
        ids += _config_eos_ids(model_config)
    if not ids:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos token and the model "
            "config names none: rlvr cannot tell where a completion ends"
        )
    return tuple(dict.fromkeys(ids))


def decode_completion(tokenizer: Any, token_ids: Sequence[int]) -> str:
    """Completion text without special tokens (eos, pad); `<think>`/`<answer>` tags are kept."""
    return str(tokenizer.decode(list(token_ids), skip_special_tokens=True))
