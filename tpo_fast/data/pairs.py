"""Preference-pair files: read, validate, and rewrite atomically.

Formats:
* JSONL, one pair per line: ``{"video", "prompt", "chosen", "rejected", ["frames"],
  ["ref_logps"], ...}``; any other fields (provenance) are kept when the file is rewritten.
* The LLaVA-NeXT / TPO DPO format: a JSON list (or JSONL) of ``{"id", "video", "prompt",
  "chosen", "rejected", ...}`` whose prompt may carry an ``<image>`` or ``<video>``
  placeholder; the placeholder is removed (the model adapter places the video itself).

Every problem names the file, the line (or list item) and the field.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

_PLACEHOLDER = re.compile(r"<(image|video)>\s*")


class PairFileError(ValueError):
    """A pairs file that cannot be used as given."""


@dataclass
class PairRecord:
    video: Path  # resolved path
    prompt: str  # the question, without any video placeholder
    chosen: str
    rejected: str
    source: str  # "file:line" for messages
    frames: int | list[int] | None = None  # a frame count or explicit frame indices
    ref_logps: tuple[float, float] | None = None
    raw: dict = field(default_factory=dict, repr=False)  # the original object, for rewriting


def _text(obj: dict, key: str) -> str:
    value = obj.get(key)
    if value is None:
        raise ValueError(f"missing field {key!r}")
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"field {key!r} is empty")
    return value


def parse_pair(obj, source: str, root: Path) -> PairRecord:
    """One pair object -> PairRecord; raises ValueError naming the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    video = _text(obj, "video")
    prompt = _PLACEHOLDER.sub("", _text(obj, "prompt")).strip()
    if not prompt:
        raise ValueError("field 'prompt' holds only a video placeholder")
    chosen, rejected = _text(obj, "chosen").strip(), _text(obj, "rejected").strip()
    if chosen == rejected:
        raise ValueError("fields 'chosen' and 'rejected' are identical")
    frames = obj.get("frames")
    if frames is not None:
        ok_count = isinstance(frames, int) and not isinstance(frames, bool) and frames >= 1
        ok_list = (isinstance(frames, list) and frames
                   and all(isinstance(f, int) and not isinstance(f, bool) and f >= 0
                           for f in frames))
        if not (ok_count or ok_list):
            raise ValueError("field 'frames' must be a frame count >= 1 or a non-empty list of "
                             "frame indices")
    ref = obj.get("ref_logps")
    if ref is not None:
        if (not isinstance(ref, list) or len(ref) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                           and math.isfinite(x) for x in ref)):
            raise ValueError("field 'ref_logps' must be two finite numbers [chosen, rejected]")
        ref = (float(ref[0]), float(ref[1]))
    path = Path(video)
    return PairRecord(video=path if path.is_absolute() else root / path, prompt=prompt,
                      chosen=chosen, rejected=rejected, source=source, frames=frames,
                      ref_logps=ref, raw=obj)


def _objects(path: Path):
    """Yield (source, object or exception) for every pair in a JSONL file or JSON list."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PairFileError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(items, list):
            raise PairFileError(f"{path}: a .json pairs file must hold a list of pairs")
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


def read_pairs(path: str | Path, video_root: str | Path | None = None,
               skip_invalid: bool = False, check_videos: bool = True):
    """Read and validate a pairs file.

    Returns ``(records, skipped)`` where ``skipped`` lists ``"file:line: reason"`` for every
    pair left out. With ``skip_invalid=False`` any invalid pair raises ``PairFileError`` listing
    up to ten of them.
    """
    path = Path(path)
    if not path.is_file():
        raise PairFileError(f"pairs file {path} does not exist")
    root = Path(video_root) if video_root is not None else path.parent
    records, problems = [], []
    for source, obj in _objects(path):
        try:
            if isinstance(obj, Exception):
                raise obj
            record = parse_pair(obj, source, root)
            if check_videos and not record.video.is_file():
                raise ValueError(f"video {record.video} not found")
            records.append(record)
        except ValueError as exc:
            problems.append(f"{source}: {exc}")
    if problems and not skip_invalid:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise PairFileError(f"{len(problems)} invalid pair(s) in {path} (set "
                            f"data.skip_invalid=true to skip them):\n  {shown}{more}")
    if not records:
        raise PairFileError(f"{path} holds no usable pairs")
    return records, problems


def write_pairs_atomic(path: str | Path, objects: list[dict]) -> None:
    """Write JSONL through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for obj in objects:
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
