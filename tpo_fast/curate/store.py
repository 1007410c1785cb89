"""Append-only JSONL stage files: whole lines, flushed and fsynced per batch.

Each stage of each rank appends to its own shard file ``<stage>.rank<r>-of-<w>.jsonl``. A record
is keyed by a stable ``id``; a re-run reads every shard of the stage (any world size) and skips
ids already there. A crash can leave at most one torn (newline-less) last line in a file this
rank writes; it is cut off when the file is reopened, so a crash loses at most the batch in
flight and never leaves a corrupt line behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def shard_path(folder: Path, stage: str, rank: int, world: int) -> Path:
    return folder / f"{stage}.rank{rank}-of-{world}.jsonl"


def iter_records(path: Path) -> Iterator[dict]:
    """The complete records of one shard file (a torn or undecodable last line is left out)."""
    with path.open("rb") as f:
        data = f.read()
    for line in data.split(b"\n")[:-1] if data else []:  # the part after the last \n is torn
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # cannot happen for lines this module wrote whole; tolerate others


def read_stage(folder: Path, stage: str) -> dict[str, dict]:
    """Every record of a stage over all shard files, by id (the first copy of an id wins)."""
    records: dict[str, dict] = {}
    for path in sorted(folder.glob(f"{stage}.rank*-of-*.jsonl")):
        for rec in iter_records(path):
            records.setdefault(rec["id"], rec)
    return records


class StageWriter:
    """Appends whole JSON lines to one shard file; ``append`` flushes and fsyncs each batch."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._file = path.open("a", encoding="utf-8")

    def _repair(self) -> None:
        """Cut a torn last line (a crash mid-write) so the next append starts a fresh line."""
        if not self.path.exists():
            return
        with self.path.open("rb+") as f:
            data = f.read()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                f.truncate(keep)

    def append(self, records: Iterable[dict]) -> int:
        """Write the records (one batch), flush and fsync; returns how many were written."""
        lines = [json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records]
        if lines:
            self._file.write("".join(lines))
            self._file.flush()
            os.fsync(self._file.fileno())
        return len(lines)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> StageWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
