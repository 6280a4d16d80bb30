"""SFT data from files (`sft.train_file`): rows -> conversations -> token ids with an assistant mask.

Each row of a JSONL/parquet file is one conversation, in any of the three layouts users bring:
    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]}
    {"prompt": "...", "completion": "..."}       (either may also be a chat list, as in TRL)
    {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}  (ShareGPT)
The loss is on assistant turns only: `tokenize` renders the conversation with the tokenizer's chat
template turn by turn, marks the tokens of each assistant turn up to and including its end-of-turn
token as trained, and everything else (system, user, tool turns, the template's headers) as context.
A prompt/completion row of plain strings needs no template: without one it is prompt text followed
by completion text and an eos.

read_conversations checks every row before anything is trained: a line that is not JSON names the
file, line and column; a row in none of the layouts names the file, line and the keys expected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlvr.data.io import DataError, read_numbered

LAYOUTS = ("`messages` (a chat list of role/content), `prompt` + `completion`, or ShareGPT `conversations` "
           "(a list of from/value)")
# ShareGPT speaker names -> chat roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "model": "assistant", "system": "system", "tool": "tool"}


@dataclass(frozen=True)
class Conversation:
    """Chat messages of one row. `plain`: a prompt/completion row of strings (usable without a chat
    template). `where`: FILE:LINE, for errors found when the conversation is tokenized."""

    messages: list[dict[str, str]]
    plain: bool
    where: str


def record_messages(record: dict[str, Any]) -> tuple[list[dict[str, str]], bool]:
    """(messages, plain) of a row in one of the LAYOUTS; ValueError says what is wrong."""
    if "messages" in record:
        return _chat(record["messages"], "messages"), False
    if "conversations" in record:
        return _sharegpt(record["conversations"]), False
    if "prompt" in record and "completion" in record:
        prompt, completion = record["prompt"], record["completion"]
        plain = isinstance(prompt, str) and isinstance(completion, str)
        head = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                else _chat(prompt, "prompt", False))
        if isinstance(completion, str):
            tail = [{"role": "assistant", "content": completion}]
        else:
            tail = _chat(completion, "completion", False)
        messages = head + tail
        if not any(m["role"] == "assistant" for m in tail):
            raise ValueError("completion has no assistant message to train on")
        return messages, plain
    keys = ", ".join(sorted(map(str, record))) or "none"
    raise ValueError(f"expected {LAYOUTS}; the row has the keys {keys}")


def _chat(value: Any, key: str, need_assistant: bool = True) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{key} must be a non-empty list of {{role, content}} messages, got {_kind(value)}")
    messages = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str) \
                or not isinstance(item.get("content"), str):
            raise ValueError(f"{key}[{i}] must be {{\"role\": str, \"content\": str}}, got {_short(item)}")
        messages.append({"role": item["role"], "content": item["content"]})
    if need_assistant:
        _check_turns(messages, key)
    return messages


def _sharegpt(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"conversations must be a non-empty list of {{from, value}} turns, "
                         f"got {_kind(value)}")
    messages = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("from"), str) \
                or not isinstance(item.get("value"), str):
            raise ValueError(f"conversations[{i}] must be {{\"from\": str, \"value\": str}}, "
                             f"got {_short(item)}")
        role = SHAREGPT_ROLES.get(item["from"].lower())
        if role is None:
            raise ValueError(f"conversations[{i}]: unknown speaker from={item['from']!r}; expected one of "
                             f"{', '.join(SHAREGPT_ROLES)}")
        messages.append({"role": role, "content": item["value"]})
    _check_turns(messages, "conversations")
    return messages


def _check_turns(messages: list[dict[str, str]], key: str) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{key} has no assistant turn to train on")
    first = next(m["role"] for m in messages if m["role"] != "system")
    if first == "assistant":
        raise ValueError(f"{key} starts with an assistant turn: there is no prompt to condition it on")


def _kind(value: Any) -> str:
    return "an empty list" if value == [] else type(value).__name__


def _short(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def read_conversations(path: str | os.PathLike[str]) -> list[Conversation]:
    """Every row of an SFT file as a Conversation; DataError "FILE:LINE: ..." on the first bad row."""
    out = []
    for number, record in read_numbered(path):
        try:
            messages, plain = record_messages(record)
        except ValueError as error:
            raise DataError(f"{path}:{number}: {error}") from None
        out.append(Conversation(messages, plain, f"{path}:{number}"))
    return out


def segments(tokenizer: Any, conversation: Conversation) -> list[tuple[str, bool]]:
    """The conversation's text as (piece, is_assistant_turn) pieces whose concatenation is the chat
    template's rendering of the whole conversation (up to its last assistant turn)."""
    if getattr(tokenizer, "chat_template", None) is None:
        if conversation.plain:
            return [(conversation.messages[0]["content"], False), (conversation.messages[1]["content"], True)]
        raise ValueError(f"{conversation.where}: the tokenizer has no chat template, so chat "
                         "messages cannot be rendered (a prompt/completion row of plain strings can)")
    messages = conversation.messages
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (before.startswith(done) and through.startswith(before)):
            raise ValueError(f"{conversation.where}: the chat template renders earlier turns "
                             "differently once later turns follow (e.g. it drops the reasoning "
                             "of past assistant turns), so the loss cannot be put on every "
                             "assistant turn; split the conversation into one row per assistant turn")
        pieces += [(before[len(done):], False), (through[len(before):], True)]
        done = through
    return [(text, trained) for text, trained in pieces if text]


def tokenize(tokenizer: Any, conversations: Sequence[Conversation],
             eos_ids: Sequence[int]) -> list[tuple[list[int], list[bool]]]:
    """(token ids, trained) per conversation: trained[t] says whether token t is a target.

    An assistant turn is trained up to and including its first end-of-turn id (what follows it,
    e.g. the template's newline, is context); a turn the template does not close gets an eos."""
    rendered = [segments(tokenizer, c) for c in conversations]
    texts = [text for pieces in rendered for text, _ in pieces]
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    stops = set(eos_ids)
    out = []
    for pieces in rendered:
        ids: list[int] = []
        trained: list[bool] = []
        for _, is_turn in pieces:
            piece = list(next(encoded))
            if not is_turn:
                ids += piece
                trained += [False] * len(piece)
                continue
            end = next((k for k, t in enumerate(piece) if t in stops), None)
            if end is None:
                piece, end = piece + [eos_ids[0]], len(piece)
            ids += piece
            trained += [True] * (end + 1) + [False] * (len(piece) - end - 1)
        out.append((ids, trained))
    return out


def is_conversation(record: dict[str, Any]) -> bool:
    """Whether a row is in one of the SFT LAYOUTS (rather than a task's problem row)."""
    return ("messages" in record or "conversations" in record
            or ("prompt" in record and "completion" in record))


def token_lengths(tokenizer: Any, conversations: Sequence[Conversation],
                  eos_ids: Sequence[int]) -> dict[str, list[int]]:
    """Per conversation, in tokens: `prompt` (the context before its first assistant turn),
    `completion` (its assistant turns, what SFT trains) and `sequence` (the whole rendering)."""
    out: dict[str, list[int]] = {"prompt": [], "completion": [], "sequence": []}
    for ids, trained in tokenize(tokenizer, conversations, eos_ids):
        out["prompt"].append(trained.index(True) if True in trained else len(ids))
        out["completion"].append(sum(trained))
        out["sequence"].append(len(ids))
    return out
