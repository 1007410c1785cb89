"""Preference-pair files: read, validate, and rewrite atomically.

Holders (``tables.py``): JSONL, a JSON list, CSV / TSV, Parquet, a folder of Parquet shards, a
``datasets`` ``save_to_disk`` folder. Formats (``formats.py``, ``data.format``, detected by
default): ours / LLaVA-NeXT / LLaVA-Hound-DPO (``{"video", "prompt", "chosen", "rejected",
["frames"], ["fps"], ["ref_logps"], ...}``; a ``<image>`` / ``<video>`` placeholder in the
prompt is removed, the model adapter places the video itself) and TRL's preference format;
``data.fields.*`` maps other column names to ours. Any other fields (provenance) are kept when
the file is rewritten (``ref-logps``).

The video is a file, a folder of frames (sorted by name) or a list of frame images; frame
videos take ``fps`` from the pair, else ``data.frame_fps``.

Every problem names the file, the line (or row) and the field.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tpo_fast.video.frame_folder import DEFAULT_FRAME_FPS, FrameVideo

_PLACEHOLDER = re.compile(r"<(image|video)>\s*")


class PairFileError(ValueError):
    """A pairs file that cannot be used as given."""


@dataclass
class PairRecord:
    video: Path | FrameVideo  # a resolved video file, or a video given as frames
    prompt: str  # the question, without any video placeholder
    chosen: str
    rejected: str
    source: str  # "file:line" / "file[row]" for messages
    frames: int | list[int] | None = None  # a frame count or explicit frame indices
    ref_logps: tuple[float, float] | None = None
    system: str | None = None  # the pair's own system message (TRL); else data.system_prompt
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


def _optional(obj: dict, key: str):
    """An optional field; CSV cells arrive as strings ("16", "[0, 4]", "2.0"; "" is absent)."""
    value = obj.get(key)
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"field {key!r}: {value!r} is not a number or a JSON list") from None
    return value


def _frame_source(value, root: Path, where: str):
    """One frame image: a path (resolved), encoded bytes, or a datasets Image value."""
    if isinstance(value, dict):  # datasets Image: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        path = Path(value) if Path(value).is_absolute() else root / value
        return str(path)
    raise ValueError(f"{where}: a frame must be an image path or image bytes, got "
                     f"{type(value).__name__}")


def _video(value, root: Path, fps: float, source: str):
    """The pair's video: a file (Path), or a FrameVideo (a folder of frames, a list of frames)."""
    if isinstance(value, dict) and "frames" in value:  # TRL images: the video's frames
        frames = value["frames"]
        files = tuple(_frame_source(f, root, f"field 'images'[{i}]") for i, f in enumerate(frames))
        return FrameVideo(files=files, fps=fps, label=f"{source} images")
    if isinstance(value, list):
        if not value:
            raise ValueError("field 'video' is an empty list of frames")
        files = tuple(_frame_source(f, root, f"field 'video'[{i}]") for i, f in enumerate(value))
        return FrameVideo(files=files, fps=fps, label=f"{source} frames")
    if isinstance(value, dict):  # datasets Video value
        if value.get("path"):
            value = value["path"]
        else:
            raise ValueError("field 'video' holds embedded video bytes, which are not supported: "
                             "give video file paths")
    if not isinstance(value, str):
        raise ValueError(f"field 'video' must be a video path, a folder of frames or a list of "
                         f"frames, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("field 'video' is empty")
    path = Path(value) if Path(value).is_absolute() else root / value
    if path.is_dir():
        return FrameVideo(folder=str(path), fps=fps)
    return path


def _json_safe(obj: dict) -> dict:
    """``obj`` without the values a JSONL rewrite cannot hold (e.g. image bytes)."""
    out = {}
    for key, value in obj.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out


def _typed(raw: dict, record: PairRecord) -> dict:
    """A JSONL rewrite of a non-JSON row: our fields with their parsed values (a CSV's "6" is
    6), and the video named even when its frames were embedded."""
    raw.setdefault("video", str(record.video))
    for key, value in (("frames", record.frames), ("ref_logps", record.ref_logps)):
        if value is not None:
            raw[key] = list(value) if isinstance(value, tuple) else value
    if raw.get("fps") is not None and isinstance(record.video, FrameVideo):
        raw["fps"] = record.video.fps
    return raw


def parse_pair(obj, source: str, root: Path, frame_fps: float = DEFAULT_FRAME_FPS) -> PairRecord:
    """One pair object (our fields) -> PairRecord; raises ValueError naming the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("video") is None:
        raise ValueError("missing field 'video'")
    prompt = _PLACEHOLDER.sub("", _text(obj, "prompt")).strip()
    if not prompt:
        raise ValueError("field 'prompt' holds only a video placeholder")
    chosen, rejected = _text(obj, "chosen").strip(), _text(obj, "rejected").strip()
    if chosen == rejected:
        raise ValueError("fields 'chosen' and 'rejected' are identical")
    frames = _optional(obj, "frames")
    if frames is not None:
        ok_count = isinstance(frames, int) and not isinstance(frames, bool) and frames >= 1
        ok_list = (isinstance(frames, list) and frames
                   and all(isinstance(f, int) and not isinstance(f, bool) and f >= 0
                           for f in frames))
        if not (ok_count or ok_list):
            raise ValueError("field 'frames' must be a frame count >= 1 or a non-empty list of "
                             "frame indices")
    ref = _optional(obj, "ref_logps")
    if ref is not None:
        if (not isinstance(ref, list) or len(ref) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                           and math.isfinite(x) for x in ref)):
            raise ValueError("field 'ref_logps' must be two finite numbers [chosen, rejected]")
        ref = (float(ref[0]), float(ref[1]))
    fps = _optional(obj, "fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))
                            or not fps > 0 or not math.isfinite(fps)):
        raise ValueError(f"field 'fps' must be a number > 0, got {fps!r}")
    video = _video(obj["video"], root, float(fps or frame_fps), source)
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError(f"field 'system' must be a string, got {type(system).__name__}")
    return PairRecord(video=video, prompt=prompt, chosen=chosen, rejected=rejected,
                      source=source, frames=frames, ref_logps=ref, system=system or None,
                      raw=obj)


def _check_video(video: Path | FrameVideo) -> None:
    if isinstance(video, FrameVideo):
        from tpo_fast.video import VideoDecodeError

        if video.folder is not None and not video.exists():
            raise ValueError(f"video {video} not found")
        try:
            sources = video.frame_sources()
        except VideoDecodeError as exc:
            raise ValueError(f"video {exc}") from None
        missing = next((s for s in sources if isinstance(s, str) and not os.path.isfile(s)),
                       None)
        if missing is not None:
            raise ValueError(f"frame {missing} not found")
    elif not video.is_file():
        raise ValueError(f"video {video} not found")


def read_pairs(path: str | Path, video_root: str | Path | None = None,
               skip_invalid: bool = False, check_videos: bool = True, *,
               format: str = "auto", fields: dict[str, str] | None = None,
               frame_fps: float = DEFAULT_FRAME_FPS):
    """Read and validate a pairs file (or folder).

    ``format``: ``auto`` or a name in ``formats.FORMATS``; ``fields``: our field -> the file's
    column; ``frame_fps``: the frame rate of frame videos without an ``fps`` field. Relative
    video paths resolve against ``video_root`` (default: the file's folder, or the pairs folder
    itself). Returns ``(records, skipped)`` where ``skipped`` lists ``"source: reason"`` for
    every pair left out. With ``skip_invalid=False`` any invalid pair raises ``PairFileError``
    listing up to ten of them.
    """
    from tpo_fast.data.formats import FORMATS, detect_format, map_columns
    from tpo_fast.data.tables import TableError, read_rows

    path = Path(path)
    if not path.exists():
        raise PairFileError(f"pairs file {path} does not exist")
    if format != "auto" and format not in FORMATS:
        raise PairFileError(f"unknown pairs format {format!r} (auto, {', '.join(FORMATS)})")
    mapping = {k: v for k, v in (fields or {}).items() if v}
    root = Path(video_root) if video_root is not None else (
        path if path.is_dir() else path.parent)
    records, problems, reader, native = [], [], None, True
    try:
        for source, row in read_rows(path):
            try:
                if isinstance(row, Exception):
                    raise row
                if not isinstance(row, dict):
                    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
                row = map_columns(row, mapping)
                if reader is None:
                    name = detect_format(row) if format == "auto" else format
                    reader, native = FORMATS[name], FORMATS[name] is FORMATS["tpo"]
                record = parse_pair(reader(row), source, root, frame_fps)
                if not native or path.suffix.lower() not in (".jsonl", ".json"):
                    record.raw = _typed(_json_safe(record.raw), record)
                if check_videos:
                    _check_video(record.video)
                records.append(record)
            except ValueError as exc:
                problems.append(f"{source}: {exc}")
    except TableError as exc:
        raise PairFileError(str(exc)) from None
    if problems and not skip_invalid:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise PairFileError(f"{len(problems)} invalid pair(s) in {path} (set "
                            f"data.skip_invalid=true to skip them):\n  {shown}{more}")
    if problems:
        import logging

        logging.getLogger(__name__).warning("skipped %d invalid pair(s) in %s; first: %s",
                                            len(problems), path, problems[0])
    if not records:
        raise PairFileError(f"{path} holds no usable pairs")
    return records, problems


def read_pairs_config(data_cfg, check_videos: bool = True):
    """``read_pairs`` with a ``DataConfig``'s settings (train, video_root, skip_invalid,
    format, fields, frame_fps)."""
    import dataclasses

    fields = data_cfg.fields
    fields = dataclasses.asdict(fields) if dataclasses.is_dataclass(fields) else dict(fields)
    return read_pairs(data_cfg.train, data_cfg.video_root, data_cfg.skip_invalid, check_videos,
                      format=data_cfg.format, fields=fields, frame_fps=data_cfg.frame_fps)


@contextlib.contextmanager
def atomic_text_file(path: str | Path, newline: str | None = None):
    """A UTF-8 text file opened for writing that replaces ``path`` only when the block ends
    without error: written to a temporary file in the same folder, fsync'd, then renamed over
    ``path`` (atomic); on error the temporary file is removed and ``path`` stays as it was.
    ``newline``: as ``open``'s ("" writes line endings as given)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_pairs_atomic(path: str | Path, objects: list[dict]) -> None:
    """Write JSONL through a temporary file in the same folder and an atomic rename."""
    with atomic_text_file(path) as f:
        for obj in objects:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
