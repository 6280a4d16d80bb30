"""rlvr.data.io (streaming reads, line-numbered errors, atomic writes) and rlvr.data.tools."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pytest

from rlvr.data.io import (
    DataError,
    load_examples,
    read_numbered,
    read_records,
    write_json_atomic,
    write_jsonl_atomic,
    write_parquet_atomic,
)
from rlvr.data.tools import generate, guess_task, stats, summarize
from rlvr.tasks import get

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PUBLIC = FIXTURES / "kk_public_sample.jsonl"


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- reading


def test_jsonl_records_with_line_numbers_skipping_blank_lines(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", ['{"x": 1}', "", "   ", '{"x": 2, "y": [1, {"z": null}]}'])
    assert list(read_numbered(path)) == [(1, {"x": 1}), (4, {"x": 2, "y": [1, {"z": None}]})]
    assert list(read_records(str(path))) == [{"x": 1}, {"x": 2, "y": [1, {"z": None}]}]


def test_byte_order_mark_and_unicode(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + '{"name": "Zoë"}\n'.encode())
    assert list(read_records(path)) == [{"name": "Zoë"}]


@pytest.mark.parametrize("bad, message", [
    ('{"x": 1,}', "invalid JSON"),
    ("[1, 2]", "expected a JSON object per line, got list"),
    ('"text"', "got str"),
    ("{'x': 1}", "invalid JSON"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path / "bad.jsonl", ['{"ok": 1}', '{"ok": 2}', bad, '{"ok": 4}'])
    with pytest.raises(DataError) as error:
        list(read_records(path))
    assert str(error.value).startswith(f"{path}:3: ")
    assert message in str(error.value)
    assert isinstance(error.value, ValueError)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not UTF-8"):
        list(read_records(path))


def test_reading_is_streaming(tmp_path):
    # The error on line 2 is raised only when line 2 is reached: nothing is read ahead whole.
    path = write_lines(tmp_path / "s.jsonl", ['{"i": 1}', "not json"])
    records = read_records(path)
    assert next(records) == {"i": 1}
    with pytest.raises(DataError, match=":2:"):
        next(records)


def test_json_array_and_json_lines_in_dot_json(tmp_path):
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"a": 1}, {"a": 2}]))
    assert list(read_numbered(array)) == [(1, {"a": 1}), (2, {"a": 2})]
    lines = write_lines(tmp_path / "lines.json", ['{"a": 1}', '{"a": 2}'])
    assert list(read_records(lines)) == [{"a": 1}, {"a": 2}]
    bad = tmp_path / "bad.json"
    bad.write_text('[{"a": 1}, 3]')
    with pytest.raises(DataError, match="item 2"):
        list(read_records(bad))


def test_gzipped_jsonl(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write('{"a": 1}\n{"a": 2}\n')
    assert list(read_records(path)) == [{"a": 1}, {"a": 2}]


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"unknown data file type '\.csv'"):
        list(read_records(tmp_path / "a.csv"))
    with pytest.raises(FileNotFoundError):
        list(read_records(tmp_path / "absent.jsonl"))


def test_parquet_round_trip_with_nested_fields(tmp_path):
    pytest.importorskip("pyarrow")
    rows = [{"quiz": "q1", "names": ["A", "B"], "reward_model": {"ground_truth": {"s": "x"}}, "i": 1},
            {"quiz": "q2", "names": ["C", "D"], "reward_model": {"ground_truth": {"s": "y"}}, "i": 2}]
    path = tmp_path / "rows.parquet"
    assert write_parquet_atomic(path, rows) == 2
    assert list(read_numbered(path)) == [(1, rows[0]), (2, rows[1])]
    assert os.listdir(tmp_path) == ["rows.parquet"]


def test_not_a_parquet_file(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "fake.parquet"
    path.write_text("not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        list(read_records(path))


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install 'rlvr\[pyarrow\]'"):
        list(read_records(tmp_path / "a.parquet"))


# ----------------------------------------------------------------------------- load_examples


def test_load_examples_from_public_rows_and_limit():
    examples = load_examples("knights_knaves", PUBLIC)
    assert [e.answer["names"] for e in examples] == [["Ruby", "Owen", "Grace"], ["Mia", "Noah"],
                                                       ["Leo", "Aria", "Mason", "Nora"]]
    assert load_examples(get("knights_knaves"), PUBLIC, limit=2) == examples[:2]
    assert load_examples("knights_knaves", PUBLIC, limit=0) == []


def test_load_examples_wraps_record_errors_with_file_and_line(tmp_path):
    rows = [json.loads(line) for line in PUBLIC.read_text().splitlines()]
    rows[1]["solution"] = [False, True]
    rows[1]["solution_text_format"] = "(1) Mia is a knave\n(2) Noah is a knight"
    path = write_lines(tmp_path / "kk.jsonl", [json.dumps(rows[0]), "", json.dumps(rows[1])])
    with pytest.raises(DataError) as error:
        load_examples("knights_knaves", path)
    assert str(error.value).startswith(f"{path}:3: record index=1")
    assert "field 'solution'" in str(error.value)
    assert load_examples("knights_knaves", path, limit=1)[0].answer["names"] == ["Ruby", "Owen", "Grace"]


# ----------------------------------------------------------------------------- writing


def test_write_jsonl_atomic_round_trip_and_no_temporary_left(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    rows = [{"a": 1, "text": "Zoë"}, {"a": 2}]
    assert write_jsonl_atomic(path, iter(rows)) == 2
    assert list(read_records(path)) == rows
    assert "Zoë" in path.read_text(encoding="utf-8")  # written as UTF-8, not \\u escapes
    assert os.listdir(path.parent) == ["out.jsonl"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = write_lines(tmp_path / "out.jsonl", ['{"old": true}'])

    def rows():
        yield {"new": 1}
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, rows())
    with pytest.raises(DataError, match="record 2 is not JSON-serialisable"):
        write_jsonl_atomic(path, [{"ok": 1}, {"bad": object()}])
    assert list(read_records(path)) == [{"old": True}]
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_write_json_atomic(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"accuracy": 0.5, "n": [1, 2]})
    assert json.loads(path.read_text()) == {"accuracy": 0.5, "n": [1, 2]}
    with pytest.raises(DataError, match="not JSON-serialisable"):
        write_json_atomic(path, {"x": {1, 2}})
    assert json.loads(path.read_text()) == {"accuracy": 0.5, "n": [1, 2]}
    assert os.listdir(tmp_path) == ["summary.json"]


# ----------------------------------------------------------------------------- tools


def test_summarize_by_hand():
    result = summarize(list(range(1, 11)))
    assert result == {"mean": 5.5, "min": 1, "max": 10, "p50": 5, "p90": 9, "p95": 10, "p99": 10}
    assert summarize([7]) == {"mean": 7, "min": 7, "max": 7, "p50": 7, "p90": 7, "p95": 7, "p99": 7}
    assert summarize([]) == {}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_generate_then_stats(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    path = tmp_path / f"kk{suffix}"
    assert generate("knights_knaves", 30, 3, path, people=[2, 3, 5]) == path
    generated = get("knights_knaves").examples(30, 3, people=[2, 3, 5])
    assert load_examples("knights_knaves", path) == generated
    result = stats(path)
    assert result["task"] == "knights_knaves" and result["count"] == 30
    assert result["difficulty"] == {"people": {"2": 10, "3": 10, "5": 10}}
    chars = [len(e.prompt) for e in generated]
    assert result["prompt_chars"]["min"] == min(chars) and result["prompt_chars"]["max"] == max(chars)
    assert result["prompt_chars"]["mean"] == pytest.approx(sum(chars) / 30)
    assert result["prompt_words"]["max"] == max(len(e.prompt.split()) for e in generated)


def test_generate_with_task_options(tmp_path):
    path = tmp_path / "plain.jsonl"
    generate("knights_knaves", 3, 0, path, task_options={"phrasing": "plain", "names": ["Al", "Bo", "Cy"]})
    rows = list(read_records(path))
    assert all(set(r["names"]) == {"Al", "Bo", "Cy"} for r in rows)
    assert all(r["quiz"].count(" says that ") == 3 for r in rows)


def test_stats_of_raw_records_and_task_guessing(tmp_path):
    path = write_lines(tmp_path / "raw.jsonl",
                       [json.dumps({"prompt": "one two three"}), json.dumps({"prompt": "four"})])
    result = stats(path)
    assert result["task"] is None and result["count"] == 2
    assert result["prompt_words"] == {"mean": 2.0, "min": 1, "max": 3, "p50": 1, "p90": 3, "p95": 3, "p99": 3}
    assert guess_task({"quiz": "q"}) == "knights_knaves"
    assert guess_task({"reward_model": {"ground_truth": {"solution_text_format": "x"}}}) == "knights_knaves"
    assert guess_task({"nums": [1, 2], "target": 3}) == "countdown"
    # a verl row of countdown (TinyZero's parquet) has reward_model too: the task's own fields win
    assert guess_task({"prompt": [],
                       "reward_model": {"ground_truth": {"target": 3, "numbers": [1, 2]}}}) == "countdown"
    assert guess_task({"problem": "1+1", "answer": "2"}) == "math"
    assert guess_task({"text": "x"}) is None


def test_stats_reports_bad_records_with_line(tmp_path):
    rows = [json.loads(line) for line in PUBLIC.read_text().splitlines()]
    del rows[2]["quiz"]
    path = write_lines(tmp_path / "kk.jsonl", [json.dumps(r) for r in rows])
    with pytest.raises(DataError, match=r"kk\.jsonl:3: .*missing field 'quiz'"):
        stats(path, "knights_knaves")
