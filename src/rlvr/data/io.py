"""Reading and writing data files: JSON lines, parquet, arrow files and Hugging Face `datasets`
directories in; atomic JSON lines / JSON / parquet out.

Reading streams: a JSONL file is read a line at a time and a parquet file a batch of rows at a
time, so a file larger than memory can be scanned. A bad line is a `DataError` whose message
starts with "FILE:LINE:" (for parquet and arrow, LINE is the 1-based row number). Files ending in
.gz are decompressed on the fly (e.g. train.jsonl.gz). An .arrow file (Arrow IPC, stream or file
format) and a directory written by `datasets`' save_to_disk (its data-*.arrow shards, in the order
of its state.json) are read with pyarrow alone: the `datasets` package is not needed.

Writing is atomic: the data goes to a temporary file in the destination's directory, is flushed
and fsync'ed, then os.replace'd over the destination, so a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rlvr.errors import DataError
from rlvr.tasks import get

if TYPE_CHECKING:
    from rlvr.tasks.base import Example, Task

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
ARROW_SUFFIXES = (".arrow",)
_PARQUET_BATCH_ROWS = 1024


def _kind(path: Path) -> tuple[str, bool]:
    """("json" | "parquet", gzipped) from the file name; an unknown suffix is a DataError."""
    gzipped = path.suffix == ".gz"
    suffix = Path(path.stem).suffix if gzipped else path.suffix
    if suffix in JSON_SUFFIXES:
        return "json", gzipped
    if suffix in PARQUET_SUFFIXES and not gzipped:
        return "parquet", False
    if suffix in ARROW_SUFFIXES and not gzipped:
        return "arrow", False
    valid = ", ".join(JSON_SUFFIXES + PARQUET_SUFFIXES + ARROW_SUFFIXES)
    raise DataError(f"{path}: unknown data file type {''.join(path.suffixes)!r}; expected one of {valid} "
                    "(JSON may be .gz) or a datasets save_to_disk directory")


def read_numbered(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each record of a .jsonl / .json / .parquet file, streaming.

    JSON: one object per line (blank lines skipped); a .json file whose first character is "["
    is read whole as an array of objects (numbered by item). Parquet: one record per row.
    """
    path = Path(path)
    if path.is_dir():
        yield from _read_arrow_shards(path, _dataset_shards(path))
        return
    kind, gzipped = _kind(path)
    if kind == "parquet":
        yield from _read_parquet(path)
        return
    if kind == "arrow":
        yield from _read_arrow_shards(path, [path])
        return
    handle: IO[bytes]
    with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as handle:  # type: ignore[assignment]
        first = _peek_first_byte(handle)
        if first == b"[":
            yield from _read_json_array(path, handle)
        else:
            yield from _read_json_lines(path, handle)


def read_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Each record (a dict) of a .jsonl / .json / .parquet file, streaming; see read_numbered."""
    for _, record in read_numbered(path):
        yield record


def _peek_first_byte(handle: IO[bytes]) -> bytes:
    """The first non-whitespace byte (after a UTF-8 byte-order mark); the handle is rewound."""
    head = handle.read(4096)
    handle.seek(0)
    return head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]


def _read_json_lines(path: Path, handle: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, raw in enumerate(handle, start=1):
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"{path}:{number}: not UTF-8 ({error.reason} at byte {error.start})") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: invalid JSON: {error.msg} (column {error.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
        yield number, record


def _read_json_array(path: Path, handle: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        items = json.loads(handle.read().decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        line = getattr(error, "lineno", "?")
        raise DataError(f"{path}:{line}: invalid JSON array: {error}") from None
    for number, record in enumerate(items, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path}: item {number} of the array is a {type(record).__name__}, "
                            "expected an object")
        yield number, record


def _read_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    pq = _pyarrow_parquet(f"reading {path}")
    try:
        parquet_file = pq.ParquetFile(path)
    except FileNotFoundError:
        raise
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError for a file that is not parquet
        raise DataError(f"{path}: not a readable parquet file ({error})") from None
    number = 0
    for batch in parquet_file.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for record in batch.to_pylist():
            number += 1
            yield number, record


def _dataset_shards(directory: Path) -> list[Path]:
    """The arrow shards of a `datasets` save_to_disk directory, in its state.json order."""
    if (directory / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in directory.iterdir() if (p / "state.json").is_file())
        raise DataError(f"{directory}: a DatasetDict with splits {splits}; name one split's directory, e.g. "
                        f"{directory / (splits[0] if splits else 'train')}")
    state = directory / "state.json"
    if state.is_file():
        try:
            files = [entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{state}: not a datasets state.json ({type(error).__name__}: {error})") from None
        shards = [directory / name for name in files]
    else:
        shards = sorted(directory.glob("*.arrow"))
    missing = [p.name for p in shards if not p.is_file()]
    if not shards or missing:
        problem = (f"shards {missing} named in state.json are missing" if missing else
                   "a directory without .arrow files; expected a datasets save_to_disk directory "
                   "(data-00000-of-00001.arrow, state.json) or a data file")
        raise DataError(f"{directory}: {problem}")
    return shards


def _read_arrow_shards(path: Path, shards: list[Path]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of Arrow IPC files (stream format, as datasets writes them, or file format), numbered
    across shards from 1; errors name `path`."""
    try:
        import pyarrow as pa
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow; install it with: "
                          "pip install 'rlvr[pyarrow]'") from None
    number = 0
    for shard in shards:
        try:
            try:
                reader: Any = pa.ipc.open_stream(pa.memory_map(str(shard)))
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(pa.memory_map(str(shard)))
                batches: Iterator[Any] = (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                batches = iter(reader)
        except (pa.ArrowInvalid, OSError) as error:
            raise DataError(f"{shard}: not a readable arrow file ({error})") from None
        for batch in batches:
            for record in batch.to_pylist():
                number += 1
                yield number, record


def _pyarrow_parquet(what: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{what} needs pyarrow; install it with: pip install 'rlvr[pyarrow]'") from None
    return pq


def iter_examples(task: Task | str, path: str | os.PathLike[str]) -> Iterator[Example]:
    """The task's Examples from a data file, streaming, in file order.

    A record the task rejects becomes a DataError "FILE:LINE: <the task's message>".
    """
    if isinstance(task, str):
        task = get(task)
    for number, record in read_numbered(path):
        try:
            yield task.from_record(record)
        except (ValueError, KeyError, TypeError) as error:  # RecordError is a ValueError
            raise DataError(f"{path}:{number}: {error}") from error


def load_examples(task: Task | str, path: str | os.PathLike[str], limit: int | None = None) -> list[Example]:
    """The first `limit` (default all) Examples of a data file; errors as in iter_examples."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    return list(itertools.islice(iter_examples(task, path), limit))


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path next to `path`; on success it is fsync'ed and renamed onto `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); not possible on every platform, hence best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_jsonl_atomic(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line, atomically; returns the number of records written."""
    count = 0
    with _atomic_path(path) as temp, open(temp, "w", encoding="utf-8") as handle:
        for count, record in enumerate(records, start=1):
            try:
                line = json.dumps(record, ensure_ascii=False)
            except (TypeError, ValueError) as error:
                raise DataError(f"{path}: record {count} is not JSON-serialisable: {error}") from None
            handle.write(line + "\n")
    return count


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write one JSON document (indented), atomically."""
    try:
        text = json.dumps(obj, ensure_ascii=False, indent=2)
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: object is not JSON-serialisable: {error}") from None
    with _atomic_path(path) as temp:
        temp.write_text(text + "\n", encoding="utf-8")


def write_parquet_atomic(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> int:
    """Write records as one parquet table (columns inferred by pyarrow), atomically; returns the count."""
    pq = _pyarrow_parquet(f"writing {path}")
    import pyarrow as pa

    rows = list(records)
    with _atomic_path(path) as temp:
        pq.write_table(pa.Table.from_pylist(rows), temp)
    return len(rows)


def write_records_atomic(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> int:
    """write_parquet_atomic for .parquet, write_jsonl_atomic otherwise (.jsonl / .json lines)."""
    kind, gzipped = _kind(Path(path))
    if gzipped:
        raise DataError(f"{path}: writing .gz is not supported; write plain JSON lines or parquet")
    return write_parquet_atomic(path, records) if kind == "parquet" else write_jsonl_atomic(path, records)
