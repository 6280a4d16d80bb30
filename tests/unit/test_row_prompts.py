"""Rows keep their own prompt; data.prompt_template for base models; arrow files and datasets directories."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from rlvr import tasks
from rlvr.config import ConfigError, load_config
from rlvr.data.io import DataError, load_examples, read_numbered, write_jsonl_atomic
from rlvr.models import load_tokenizer, prompt_text
from rlvr.models.chat import PromptTemplateError, set_prompt_template, template_as_jinja
from rlvr.tasks.generic import RowPrompts
from rlvr.trainers.pipeline import check_inputs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VERL_MATH = {"data_source": "gsm8k",
             "prompt": [{"role": "user", "content": "What is 6*7? Let's think step by step."}],
             "reward_model": {"ground_truth": "42"}}


def test_a_verl_rows_chat_prompt_is_used_as_given_unless_the_task_renders_it(tmp_path):
    math = tasks.get("math")
    kept = RowPrompts(math)
    example = kept.from_record(VERL_MATH)
    assert kept.messages(example) == VERL_MATH["prompt"]
    assert math.messages(math.from_record(VERL_MATH))[0]["role"] == "system"  # the task's own prompt
    assert kept.from_record(kept.to_record(example)) == example
    oracle = math.oracle_completion(example)
    assert kept.score(oracle, example) == math.score(oracle, example)
    generated = math.examples(1, seed=0)[0]
    assert kept.messages(generated) == math.messages(generated)  # no row prompt: the task's
    write_jsonl_atomic(tmp_path / "train.jsonl", [VERL_MATH] * 3)
    base = ["data.task=math", f"data.train_file={tmp_path}/train.jsonl",
            f"data.eval_file={tmp_path}/train.jsonl", "sft.enabled=false"]
    assert check_inputs(load_config(overrides=base)).task.messages(example) == VERL_MATH["prompt"]
    rendered = check_inputs(load_config(overrides=[*base, "data.row_prompt=task"])).task
    assert rendered.messages(example) == math.messages(example)


def test_a_row_holding_an_already_templated_prompt_is_refused_under_keep():
    config = ["data.task=knights_knaves", f"data.eval_file={FIXTURES}/kk_logic_rl_verl.jsonl",
              "sft.enabled=false", "rl.enabled=false"]
    with pytest.raises(ConfigError,
                       match=r"config key data.eval_file: .*kk_logic_rl_verl.jsonl:1: field 'prompt': "
                             r"the chat list's text already holds chat-template markers .*"
                             "Set data.row_prompt=task"):
        check_inputs(load_config(overrides=config))
    inputs = check_inputs(load_config(overrides=[*config, "data.row_prompt=task"]))
    assert inputs.eval_rows and "<|im_start|>" not in json.dumps(inputs.task.messages(inputs.eval_rows[0]))


TEMPLATES = [
    "A conversation between User and Assistant. User: {question}\nAssistant: <think>",
    "\n  leading newline and spaces, {{braces}}, \"quotes\", 'single', é ∑ 🙂, {{% raw %}} {{{{ x "
    "}}}}\n{question}\n\n",
    "{question}",
    "Q: {question}\nQ again: {question}\nA:",
]


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_prompt_template_gives_exactly_the_format_string(tiny_model_dir, template):
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = None  # a base model without a chat template
    prefix = "<think>" if template.endswith("<think>") else ""
    set_prompt_template(tokenizer, template, prefix)
    messages = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "first"},
                {"role": "assistant", "content": "x"}, {"role": "user", "content": "2 + 2 = {?}\n"}]
    assert prompt_text(tokenizer, messages, prefix) == template.format(question="2 + 2 = {?}\n")


def test_bad_prompt_templates_name_the_key():
    for template, message in (("User: {q}", r"has fields \['q'\]; expected \{question\}"),
                              ("no field at all", "expected {question}"),
                              ("User: {question", "is not a format string")):
        with pytest.raises(ConfigError,
                           match=r"override data.prompt_template=.*config key data.prompt_template: .*"
                                 + message):
            load_config(overrides=[f"data.prompt_template='{template}'"])
    config = load_config(overrides=["data.prompt_template='User: {question} Assistant:'", "sft.enabled=false",
                                    "data.task_options={response_prefix: '<think>'}"])
    with pytest.raises(ConfigError, match=r"does not end with the task's response_prefix '<think>'"):
        check_inputs(config)
    with pytest.raises(PromptTemplateError):
        template_as_jinja("{question} A:", "<think>")


def arrow_stream(path: Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def test_arrow_files_and_datasets_directories_load_like_parquet(tmp_path):
    rows = [{"problem": f"What is {i} + 1?", "answer": str(i + 1), "level": 1} for i in range(5)]
    saved = tmp_path / "train_ds"  # what datasets.Dataset.save_to_disk writes: shards + state.json
    saved.mkdir()
    arrow_stream(saved / "data-00000-of-00002.arrow", rows[:3])
    arrow_stream(saved / "data-00001-of-00002.arrow", rows[3:])
    shards = [{"filename": "data-00000-of-00002.arrow"}, {"filename": "data-00001-of-00002.arrow"}]
    (saved / "state.json").write_text(json.dumps({"_data_files": shards}))
    (saved / "dataset_info.json").write_text("{}")
    math = tasks.get("math")
    assert [e.prompt for e in load_examples(math, saved)] == [r["problem"] for r in rows]
    assert [n for n, _ in read_numbered(saved)] == [1, 2, 3, 4, 5]
    single = tmp_path / "rows.arrow"  # the IPC file format too
    with pa.OSFile(str(single), "wb") as sink, \
            pa.ipc.new_file(sink, pa.Table.from_pylist(rows).schema) as writer:
        writer.write_table(pa.Table.from_pylist(rows))
    assert [e.answer for e in load_examples(math, single)] == ["1", "2", "3", "4", "5"]
    arrow_stream(saved / "data-00001-of-00002.arrow", [rows[3], {"problem": "no answer", "level": 1}])
    with pytest.raises(DataError, match=rf"^{saved}:5: "):
        load_examples(math, saved)
    config = load_config(overrides=["data.task=math", f"data.eval_file={single}", f"data.train_file={saved}",
                                    "sft.enabled=false"])
    with pytest.raises(ConfigError, match=rf"config key data.train_file: {saved}:5: "):
        check_inputs(config)


def test_datasets_directories_that_cannot_be_read_are_named(tmp_path):
    splits = tmp_path / "dd"
    (splits / "train").mkdir(parents=True)
    (splits / "train" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data.arrow"}]}))
    (splits / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(DataError,
                       match=r"a DatasetDict with splits \['train'\]; name one split's directory, e.g. "
                             rf"{splits}/train"):
        list(read_numbered(splits))
    with pytest.raises(DataError, match=r"shards \['data.arrow'\] named in state.json are missing"):
        list(read_numbered(splits / "train"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="a directory without .arrow files"):
        list(read_numbered(empty))
    (tmp_path / "bad.arrow").write_text("not arrow")
    with pytest.raises(DataError, match="bad.arrow: not a readable arrow file"):
        list(read_numbered(tmp_path / "bad.arrow"))
