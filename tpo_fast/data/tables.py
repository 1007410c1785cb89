"""Rows of a pairs file, whatever holds them, each with the place it came from.

``read_rows(path)`` yields ``(source, row)``: ``row`` is a dict of column -> Python value, or
the ``ValueError`` that made the row unreadable; ``source`` is ``file:line`` (JSONL, CSV/TSV:
the row's first line) or ``file[i]`` (a JSON list, Parquet/Arrow: the 0-based row of that
file). Holders:

* ``.jsonl`` (one object a line), ``.json`` (a list, or JSON Lines as ``datasets``'
  ``to_json`` writes it),
* ``.csv`` / ``.tsv`` (a header row; every value a string),
* ``.parquet`` and a folder of ``*.parquet`` shards (read in name order),
* a ``datasets`` ``save_to_disk`` folder: ``state.json`` lists its ``data-XXXXX-of-NNNNN.arrow``
  files (Arrow IPC streams) beside ``dataset_info.json`` (datasets
  ``src/datasets/arrow_dataset.py::Dataset.save_to_disk``), and a single ``.arrow`` file.

Parquet and Arrow need ``pyarrow`` (``pip install 'tpo-fast[data]'``); it is imported only for
them. A ``datasets`` ``Image`` value arrives as ``{"bytes": ..., "path": ...}``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path


class TableError(ValueError):
    """A file or folder that cannot be read as rows at all (not one bad row)."""


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise TableError("reading Parquet / Arrow pairs needs pyarrow: pip install "
                         "'tpo-fast[data]' (or pyarrow)") from None
    return pyarrow


def _json_rows(path: Path) -> Iterator[tuple[str, object]]:
    text = path.read_text(encoding="utf-8")
    # a list, else JSON Lines (what datasets' to_json writes, whatever the file's suffix)
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TableError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(items, list):
            raise TableError(f"{path}: a .json pairs file must hold a list of pairs")
        for i, item in enumerate(items):
            yield f"{path}[{i}]", item
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{n}", json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"{path}:{n}", ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})")


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[str, object]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise TableError(f"{path}: empty file (a header row is needed)") from None
        except csv.Error as exc:
            raise TableError(f"{path}:1: {exc}") from None
        if len(set(header)) != len(header):
            raise TableError(f"{path}:1: repeated column names in the header {header}")
        start = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield f"{path}:{start}", ValueError(f"malformed CSV ({exc})")
                start = reader.line_num + 1
                continue
            source, start = f"{path}:{start}", reader.line_num + 1
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                yield source, ValueError(f"{len(values)} values for {len(header)} columns")
                continue
            yield source, dict(zip(header, values))


def _table_rows(table, name: str) -> Iterator[tuple[str, object]]:
    for i, row in enumerate(table.to_pylist()):
        yield f"{name}[{i}]", row


def _parquet_rows(path: Path) -> Iterator[tuple[str, object]]:
    pa = _pyarrow()
    try:
        table = pa.parquet.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise TableError(f"{path}: not a readable Parquet file ({exc})") from None
    yield from _table_rows(table, str(path))


def _arrow_rows(path: Path) -> Iterator[tuple[str, object]]:
    """An Arrow IPC stream (what ``datasets`` writes) or an Arrow IPC file."""
    pa = _pyarrow()
    try:
        with pa.memory_map(str(path)) as source:
            try:
                table = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowException) as exc:
        raise TableError(f"{path}: not a readable Arrow file ({exc})") from None
    yield from _table_rows(table, str(path))


def _saved_dataset_files(folder: Path) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` folder, in ``state.json``'s order."""
    try:
        state = json.loads((folder / "state.json").read_text())
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TableError(f"{folder / 'state.json'}: not a datasets state file ({exc})") from None
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise TableError(f"{folder}: state.json lists {missing[0]}, which is not there")
    return [folder / n for n in names]


def _folder_rows(folder: Path) -> Iterator[tuple[str, object]]:
    if (folder / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
        raise TableError(f"{folder} is a datasets DatasetDict folder: point data.train at one "
                         f"of its splits ({', '.join(splits) or 'none found'})")
    if (folder / "state.json").is_file():
        for file in _saved_dataset_files(folder):
            yield from _arrow_rows(file)
        return
    shards = sorted(folder.glob("*.parquet"))
    if not shards:
        raise TableError(f"{folder}: a pairs folder must hold *.parquet shards or be a datasets "
                         "save_to_disk folder (state.json, dataset_info.json, data-*.arrow)")
    for shard in shards:
        yield from _parquet_rows(shard)


READERS = {".jsonl": _json_rows, ".json": _json_rows, ".parquet": _parquet_rows,
           ".arrow": _arrow_rows, ".csv": lambda p: _csv_rows(p, ","),
           ".tsv": lambda p: _csv_rows(p, "\t")}


def read_rows(path: str | Path) -> Iterator[tuple[str, object]]:
    """``(source, row or ValueError)`` for every row of ``path`` (see the module docstring).
    Raises ``TableError`` when the file or folder cannot be read at all."""
    path = Path(path)
    if path.is_dir():
        return _folder_rows(path)
    reader = READERS.get(path.suffix.lower(), _json_rows)  # any other name: JSON / JSONL
    return reader(path)
