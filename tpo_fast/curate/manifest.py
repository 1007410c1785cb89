"""The curation input: a folder of videos or a JSONL manifest.

Manifest lines are ``{"video": path, ["id"], ["captions"], ["segments"], ["events"]}``:

* ``captions``: a string (the whole video) or a list of ``{"start", "end", "text"}``;
* ``segments``: a list of ``[t0, t1]`` or ``{"start", "end"}`` (seconds) — the localized targets;
* ``events``: a list of ``{"start", "end", "text"}`` ground-truth events (the annotation backends).

Malformed lines are reported as ``file:line: reason`` and skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Span:
    """A time span of a video, in seconds, with optional text (a caption or an event)."""

    start: float
    end: float
    text: str = ""

    def overlaps(self, t0: float, t1: float) -> bool:
        return self.start < t1 and t0 < self.end

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "text": self.text}


@dataclass
class VideoEntry:
    """One video to curate. ``id`` is stable across runs (the manifest id or the given path)."""

    id: str
    path: Path
    source: str  # "file:line" or the folder, for messages
    captions: list[Span] | None = None
    segments: list[tuple[float, float]] | None = None
    events: list[Span] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # other manifest fields, kept as provenance


def read_inputs(videos: str | Path, video_root: str | Path | None = None,
                extensions: list[str] | tuple[str, ...] = (".mp4",),
                limit: int = 0) -> tuple[list[VideoEntry], list[str]]:
    """A folder or a JSONL manifest -> (entries in a stable order, problems ``"where: why"``)."""
    src = Path(videos)
    if src.is_dir():
        entries, problems = _read_folder(src, extensions), []
    elif src.is_file():
        entries, problems = _read_manifest(src, Path(video_root) if video_root else src.parent)
    else:
        raise FileNotFoundError(f"input {src} is neither a folder nor a manifest file")
    return (entries[:limit] if limit > 0 else entries), problems


def _read_folder(folder: Path, extensions) -> list[VideoEntry]:
    exts = {e.lower() for e in extensions}
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    return [VideoEntry(id=p.relative_to(folder).as_posix(), path=p.absolute(), source=str(folder))
            for p in paths]


def _read_manifest(path: Path, root: Path) -> tuple[list[VideoEntry], list[str]]:
    entries: list[VideoEntry] = []
    problems: list[str] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            entry = parse_entry(json.loads(line), where, root)
            if entry.id in seen:
                raise ValueError(f"duplicate video id {entry.id!r}")
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        seen.add(entry.id)
        entries.append(entry)
    return entries, problems


def parse_entry(obj, where: str, root: Path) -> VideoEntry:
    """One manifest object -> VideoEntry (its video path made absolute, so the pairs file
    works from any folder); raises ValueError naming the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    video = obj.get("video")
    if not isinstance(video, str) or not video.strip():
        raise ValueError("field 'video' must be a non-empty string")
    vid = obj.get("id", video)
    if not isinstance(vid, (str, int)) or isinstance(vid, bool):
        raise ValueError("field 'id' must be a string or an integer")
    path = Path(video)
    known = {"video", "id", "captions", "segments", "events"}
    return VideoEntry(
        id=str(vid), path=path if path.is_absolute() else (root / path).absolute(), source=where,
        captions=_captions(obj.get("captions")), segments=_segments(obj.get("segments")),
        events=_spans(obj.get("events") or [], "events"),
        extra={k: v for k, v in obj.items() if k not in known})


def _number(x, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or x < 0:
        raise ValueError(f"{what} must be a number of seconds >= 0, got {x!r}")
    return float(x)


def _spans(items, name: str, need_text: bool = True) -> list[Span]:
    if not isinstance(items, list):
        raise ValueError(f"field {name!r} must be a list")
    spans = []
    for i, item in enumerate(items):
        what = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{what} must be an object {{start, end, text}}")
        start, end = _number(item.get("start"), f"{what}.start"), _number(item.get("end"),
                                                                          f"{what}.end")
        if end <= start:
            raise ValueError(f"{what}: end {end} must be after start {start}")
        text = item.get("text", "")
        if not isinstance(text, str) or (need_text and not text.strip()):
            raise ValueError(f"{what}.text must be a non-empty string")
        spans.append(Span(start, end, text.strip()))
    return spans


def _captions(value) -> list[Span] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("field 'captions' is empty")
        return [Span(0.0, float("inf"), value.strip())]
    return _spans(value, "captions")


def _segments(value) -> list[tuple[float, float]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("field 'segments' must be a list of [t0, t1] or {start, end}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            item = [item.get("start"), item.get("end")]
        if not isinstance(item, list) or len(item) != 2:
            raise ValueError(f"segments[{i}] must be [t0, t1] or {{start, end}}")
        t0, t1 = _number(item[0], f"segments[{i}][0]"), _number(item[1], f"segments[{i}][1]")
        if t1 <= t0:
            raise ValueError(f"segments[{i}]: end {t1} must be after start {t0}")
        out.append((t0, t1))
    return out


def shard(entries: list[VideoEntry], rank: int, world: int) -> list[VideoEntry]:
    """The videos of one rank: every ``world``-th entry from ``rank`` (a stable split)."""
    return entries[rank::world]
