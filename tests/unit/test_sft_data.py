"""SFT from files: the three row layouts, loss on assistant turns only, truncation, bad rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlvr.data.conversations import Conversation, read_conversations, record_messages, tokenize
from rlvr.data.io import DataError
from rlvr.models import eos_token_ids, load_tokenizer, prompt_ids
from rlvr.trainers.common import build_batch
from rlvr.trainers.sft import SFTExample, truncate

MULTI_TURN = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Who is a knight?"},
    {"role": "assistant", "content": "Zoey is a knight."},
    {"role": "user", "content": "And Oliver?"},
    {"role": "assistant", "content": "Oliver is a knave."},
]}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def trained_text(tokenizer, ids, trained) -> str:
    return tokenizer.decode([t for t, on in zip(ids, trained) if on])


def test_the_three_layouts_give_the_same_conversation():
    user, answer = "Who is a knight?", "Zoey."
    chat = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    assert record_messages({"messages": chat, "id": 3}) == (chat, False)
    assert record_messages({"prompt": user, "completion": answer}) == (chat, True)
    assert record_messages({"conversations": [{"from": "human", "value": user},
                                              {"from": "gpt", "value": answer}]}) \
        == (chat, False)
    # TRL's conversational prompt/completion: chat lists on both sides
    assert record_messages({"prompt": chat[:1], "completion": chat[1:]}) == (chat, False)


def test_loss_is_on_every_assistant_turn_and_nothing_else(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    eos = eos_token_ids(tokenizer)
    conversation = Conversation(*record_messages(MULTI_TURN), "f:1")
    [(ids, trained)] = tokenize(tokenizer, [conversation], eos)
    assert trained_text(tokenizer, ids, trained) == "Zoey is a knight.<|im_end|>Oliver is a knave.<|im_end|>"
    # the whole sequence is the template's rendering of the conversation
    whole = tokenizer.apply_chat_template(MULTI_TURN["messages"], tokenize=False)
    assert tokenizer.decode(ids) == whole
    # the context before the first answer is exactly the prompt RL would generate from
    first = trained.index(True)
    assert ids[:first] == prompt_ids(tokenizer, MULTI_TURN["messages"][:2])


def test_plain_prompt_completion_without_a_chat_template(tiny_model_dir, tmp_path):
    directory = tmp_path / "tok"
    shutil.copytree(tiny_model_dir, directory)
    (directory / "chat_template.jinja").unlink()
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(directory)
    assert tokenizer.chat_template is None
    eos = eos_token_ids(tokenizer)
    plain = Conversation(*record_messages({"prompt": "Zoey says", "completion": " Oliver lies."}), "f:1")
    [(ids, trained)] = tokenize(tokenizer, [plain], eos)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Zoey says Oliver lies."
    assert ids[-1] == eos[0] and trained[-1] and not trained[0]
    chat = Conversation(*record_messages(MULTI_TURN), "f.jsonl:7")
    with pytest.raises(ValueError, match="f.jsonl:7: the tokenizer has no chat template"):
        tokenize(tokenizer, [chat], eos)


def test_bad_rows_name_the_file_line_and_what_was_expected(tmp_path):
    good = {"prompt": "a", "completion": "b"}
    cases = [
        (['{"messages": [}'], r"bad.jsonl:1: invalid JSON: .*\(column 15\)"),
        ([good, {"question": "x", "answer": "y"}],
         r"bad.jsonl:2: expected `messages` .*`prompt` \+ `completion`.*`conversations`.*; the "
         r"row has the keys "
         r"answer, question"),
        ([{"messages": [{"role": "user", "content": "x"}]}], r"bad.jsonl:1: messages has no assistant turn"),
        ([{"messages": [{"role": "user", "text": "x"}]}], r"bad.jsonl:1: messages\[0\] must be"),
        ([{"conversations": [{"from": "human", "value": "x"}, {"from": "robot", "value": "y"}]}],
         r"bad.jsonl:1: conversations\[1\]: unknown speaker from='robot'"),
        ([{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}],
         r"bad.jsonl:1: messages starts with an assistant turn"),
    ]
    for rows, message in cases:
        with pytest.raises(DataError, match=message):
            read_conversations(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert len(read_conversations(write_jsonl(tmp_path / "ok.jsonl", [good, MULTI_TURN]))) == 2


def test_parquet_rows_read_like_jsonl(tmp_path):
    from rlvr.data.io import write_parquet_atomic

    write_parquet_atomic(tmp_path / "sft.parquet", [MULTI_TURN, MULTI_TURN])
    rows = read_conversations(tmp_path / "sft.parquet")
    assert ([r.messages for r in rows] == [MULTI_TURN["messages"]] * 2
            and rows[1].where.endswith("sft.parquet:2"))


def test_truncation_cuts_counts_and_drops_sequences_left_without_targets():
    short = SFTExample.from_pair([1, 2], [3, 4])
    long = SFTExample.from_pair([1, 2, 3], [4, 5, 6, 7])
    prompt_only = SFTExample.from_pair([1, 2, 3, 4, 5, 6], [7])
    kept, dropped = truncate([short, long, prompt_only], max_len=5)
    assert dropped == 1 and [ex.truncated for ex in kept] == [False, True]
    assert kept[1].ids == [1, 2, 3, 4, 5] and kept[1].targets == 2


def test_a_trained_mask_puts_the_loss_before_each_trained_token():
    ids = [10, 11, 12, 13, 14, 15]
    trained = [False, False, True, False, True, True]  # two assistant pieces: [12] and [14, 15]
    batch = build_batch([ids], [0], [[0]], [trained])
    assert batch.loss_mask.tolist() == [[0, 1, 0, 1, 1, 0]]
    assert batch.target_ids[0, [1, 3, 4]].tolist() == [12, 14, 15]
