"""Annotation readers: Video-MME, MLVU, LongVideoBench and the synthetic format -> MCQuestion.

Every reader takes the annotation file (MLVU: also a folder of its per-task JSON files) and the
folder that holds the videos, and returns ``MCQuestion`` records in file order. A malformed item
raises ``AnnotationError`` naming its ``file:line`` (JSONL) or ``file:item N`` (JSON list,
0-based); with ``skip_invalid=True`` it is skipped instead and counted in ``ReadStats``. A video
that does not exist is *not* an annotation error: evaluation counts it as a decode failure.

What each reader is based on (field names as the benchmarks' own loaders use them):

* **Video-MME** — the Hugging Face export ``lmms-lab/Video-MME`` (``videomme/test-*.parquet``;
  its dataset card lists ``video_id, duration, domain, sub_category, url, videoID, question_id,
  task_type, question, options (sequence of "A. ..."), answer ("A")``) and loaders built on it
  (e.g. retake's ``build_videomme_dataset.py``, VideoMind's ``videomme`` dataset), which find the
  video as ``<videoID>.mp4`` in the unzipped ``data/`` folder. The original GitHub JSON (one item
  per video with a nested ``questions`` list) is accepted too.
* **MLVU** — the MLVU dev JSON per task (``json/1_plotQA.json`` ...), as read by MLVU's
  ``choice_bench.py``: ``video, duration (s), question, candidates [texts], answer (the correct
  candidate's text), question_type``; videos live in ``video/<task file stem>/``.
* **LongVideoBench** — ``lvb_val.json`` as read by the official ``LongVideoBenchDataset``
  (``longvideobench/longvideobench_dataset.py``: ``video_path`` under ``videos/``,
  ``question``, ``candidates``, ``correct_choice`` (index), ``id``, ``duration``) and by
  lmms-eval's ``longvideobench`` task (``question_category``, ``duration_group``).
* **synthetic** — this project's own format (``tpo_fast.synthetic``): JSONL lines ``{"qid",
  "video", "question", "options", "answer" (index), "task_type", "duration" (s), ...}``, with
  relative video paths resolved against the annotation file's folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tpo_fast.eval.records import (
    LETTERS,
    AnnotationError,
    MCQuestion,
    ReadStats,
    duration_group_of,
)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
Item = dict[str, Any]


# ---- files -> (where, item) ------------------------------------------------------------------
def iter_items(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, item)`` for each item of a JSON list, a JSONL file or a parquet table.

    A ``.json`` file that is not one JSON document but whose lines are is read as JSONL. A JSONL
    line that is not JSON yields an ``AnnotationError`` in place of the item (so a reader can
    skip it and go on)."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    if path.suffix == ".parquet":
        yield from _parquet_items(path)
        return
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if "\n" not in text.strip():
                raise AnnotationError(f"{path}:{e.lineno}", f"invalid JSON ({e.msg})") from None
            data = None  # try it as JSONL
        if data is not None:
            if not isinstance(data, list):
                raise AnnotationError(str(path), f"expected a JSON list of items, got a "
                                                 f"{type(data).__name__}")
            for i, item in enumerate(data):
                yield f"{path}:item {i}", item
            return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            yield where, AnnotationError(where, f"invalid JSON ({e.msg} at column {e.colno})")


def _parquet_items(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow), or export the "
                          "table to JSON/JSONL first") from None
    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path}:row {i}", row


# ---- field checks ----------------------------------------------------------------------------
def field(item: Item, where: str, *names: str, kind: type | tuple[type, ...] = str,
          default: Any = ...) -> Any:
    """The value of the first of ``names`` present in ``item``, checked to be a ``kind``."""
    for name in names:
        if name in item and item[name] is not None:
            value = item[name]
            if isinstance(value, bool) or not isinstance(value, kind):
                wanted = kind.__name__ if isinstance(kind, type) else "/".join(
                    k.__name__ for k in kind)
                raise AnnotationError(where, f"field {name!r} must be a {wanted}, got "
                                             f"{type(value).__name__} {value!r:.60}")
            return value
    if default is not ...:
        return default
    listed = " or ".join(repr(n) for n in names)
    raise AnnotationError(where, f"missing field {listed} (the item has {sorted(item)})")


def string_list(item: Item, where: str, name: str) -> list[str]:
    """A list of at least two non-empty strings."""
    values = field(item, where, name, kind=list)
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            raise AnnotationError(where, f"{name}[{i}] must be a non-empty string, got {v!r:.60}")
    if len(values) < 2:
        raise AnnotationError(where, f"{name} needs at least 2 options, got {len(values)}")
    if len(values) > len(LETTERS):
        raise AnnotationError(where, f"{name} has {len(values)} options; at most {len(LETTERS)}")
    return [v.strip() for v in values]


def answer_index(value: Any, n_options: int, where: str) -> int:
    """An option index from an int or a letter ("B", "(B)", "B."), checked against n_options."""
    if isinstance(value, str):
        letter = value.strip().strip("().").strip().upper()
        if len(letter) != 1 or letter not in LETTERS:
            raise AnnotationError(where, f"answer {value!r} is not an option letter")
        index = LETTERS.index(letter)
    elif isinstance(value, int) and not isinstance(value, bool):
        index = value
    else:
        raise AnnotationError(where, f"answer must be an option index or letter, got {value!r}")
    if not 0 <= index < n_options:
        raise AnnotationError(where, f"answer {value!r} is outside the {n_options} options")
    return index


def strip_letter_prefixes(options: list[str], where: str) -> list[str]:
    """``["A. red", "B. blue"]`` -> ``["red", "blue"]``; options without prefixes are kept.
    Mixed or out-of-order prefixes are an error (they would mislabel the options)."""
    prefixed = [len(o) > 2 and o[0] in LETTERS and o[1] in ".):" for o in options]
    if not any(prefixed):
        return options
    for i, o in enumerate(options):
        if not prefixed[i] or o[0] != LETTERS[i]:
            raise AnnotationError(where, f"option {i} {o!r:.40} should start with "
                                         f"'{LETTERS[i]}.' like the others")
    stripped = [o[2:].strip() for o in options]
    if not all(stripped):
        raise AnnotationError(where, "an option has a letter but no text")
    return stripped


def find_video(candidates: list[Path]) -> Path:
    """The first candidate that exists (each also tried with the common video extensions);
    the first candidate itself if none does (evaluation then counts a decode failure)."""
    for path in candidates:
        if path.is_file():
            return path
        if not path.suffix:
            for ext in VIDEO_EXTENSIONS:
                if path.with_suffix(ext).is_file():
                    return path.with_suffix(ext)
    first = candidates[0]
    return first if first.suffix else first.with_suffix(".mp4")


def make_question(where: str, *, qid: str, video: Path, question: str, options: list[str],
                  answer: int, task_type: str, duration_group: str | None,
                  duration: float | None = None) -> MCQuestion:
    """An ``MCQuestion`` after the checks every format shares."""
    if not question.strip():
        raise AnnotationError(where, "empty question")
    if len(set(options)) != len(options):
        raise AnnotationError(where, f"options repeat: {options}")
    return MCQuestion(qid=str(qid), video=video, question=question.strip(), options=options,
                      answer=answer, task_type=task_type or "unknown",
                      duration_group=duration_group, source=where,
                      duration=None if duration is None else float(duration))


# ---- one function per format -----------------------------------------------------------------
def _videomme(item: Item, where: str, video_root: Path) -> list[MCQuestion]:
    name = str(field(item, where, "videoID", "video_id", kind=(str, int)))
    video = find_video([video_root / name, video_root / "data" / name])
    group = field(item, where, "duration", kind=str, default=None)
    if "questions" in item:  # the original GitHub JSON: one item per video
        questions = field(item, where, "questions", kind=list)
        return [_videomme_question(q, f"{where}.questions[{j}]", video, name, group, j)
                for j, q in enumerate(questions)]
    return [_videomme_question(item, where, video, name, group, 0)]


def _videomme_question(item: Any, where: str, video: Path, name: str, group: str | None,
                       j: int) -> MCQuestion:
    if not isinstance(item, dict):
        raise AnnotationError(where, f"expected an object, got {type(item).__name__}")
    options = strip_letter_prefixes(string_list(item, where, "options"), where)
    return make_question(
        where, qid=str(field(item, where, "question_id", kind=(str, int), default=f"{name}-{j}")),
        video=video, question=field(item, where, "question"), options=options,
        answer=answer_index(field(item, where, "answer"), len(options), where),
        task_type=field(item, where, "task_type", default="unknown"), duration_group=group)


def _mlvu(item: Item, where: str, video_root: Path, task_file: Path) -> list[MCQuestion]:
    options = string_list(item, where, "candidates")
    answer = field(item, where, "answer")
    if answer.strip() not in options:
        raise AnnotationError(where, f"answer {answer!r:.60} is not one of the candidates")
    name = field(item, where, "video")
    duration = field(item, where, "duration", kind=(int, float), default=None)
    qid = field(item, where, "uid", "question_id", kind=(str, int),
                default=f"{task_file.stem}/{_item_number(where)}")
    video = find_video([video_root / name, video_root / task_file.stem / name])
    return [make_question(
        where, qid=str(qid), video=video, question=field(item, where, "question"), options=options,
        answer=options.index(answer.strip()),
        task_type=field(item, where, "question_type", default=task_file.stem),
        duration_group=duration_group_of(duration), duration=duration)]


def _item_number(where: str) -> str:
    """``"f.json:item 3"`` -> ``"3"``; ``"f.jsonl:7"`` -> ``"7"``."""
    return where.rsplit(":", 1)[-1].removeprefix("item ")


def _longvideobench(item: Item, where: str, video_root: Path) -> list[MCQuestion]:
    options = string_list(item, where, "candidates")
    if "correct_choice" not in item:
        raise AnnotationError(where, "no 'correct_choice' (the test split has no answers; "
                                     "use lvb_val.json)")
    group = field(item, where, "duration_group", kind=(int, float, str), default=None)
    name = field(item, where, "video_path")
    return [make_question(
        where, qid=str(field(item, where, "id", kind=(str, int))),
        video=find_video([video_root / name, video_root / "videos" / name]),
        question=field(item, where, "question"), options=options,
        answer=answer_index(field(item, where, "correct_choice", kind=int), len(options), where),
        task_type=field(item, where, "question_category", default="unknown"),
        duration_group=None if group is None else _group_name(group),
        duration=field(item, where, "duration", kind=(int, float), default=None))]


def _group_name(group: int | float | str) -> str:
    return str(int(group)) if isinstance(group, float) and group.is_integer() else str(group)


def _synthetic(item: Item, where: str, video_root: Path) -> list[MCQuestion]:
    options = string_list(item, where, "options")
    duration = field(item, where, "duration", kind=(int, float), default=None)
    group = field(item, where, "duration_group", kind=str, default=None)
    return [make_question(
        where, qid=str(field(item, where, "qid", kind=(str, int))),
        video=video_root / field(item, where, "video"),  # an absolute path stays absolute
        question=field(item, where, "question"), options=options,
        answer=answer_index(field(item, where, "answer", kind=int), len(options), where),
        task_type=field(item, where, "task_type", default="unknown"),
        duration_group=group or duration_group_of(duration), duration=duration)]


# ---- the public readers ----------------------------------------------------------------------
Parser = Callable[[Item, str], list[MCQuestion]]


def read_items(path: Path, parse: Parser, *, skip_invalid: bool, stats: ReadStats,
               seen: dict[str, str] | None = None) -> list[MCQuestion]:
    """Parse every item of ``path``; a qid already in ``seen`` (qid -> where) is an error too."""
    out: list[MCQuestion] = []
    seen = {} if seen is None else seen
    for where, item in iter_items(path):
        try:
            if isinstance(item, AnnotationError):
                raise item
            if not isinstance(item, dict):
                raise AnnotationError(where, f"expected an object, got {type(item).__name__}")
            questions = parse(item, where)
            for q in questions:
                if q.qid in seen:
                    raise AnnotationError(where, f"qid {q.qid!r} repeats (first at "
                                                 f"{seen[q.qid]})")
        except AnnotationError as e:
            if not skip_invalid:
                raise
            stats.skip(e)
            continue
        for q in questions:
            seen[q.qid] = where
        out.extend(questions)
        stats.read += len(questions)
    return out


def _root(video_root: str | os.PathLike | None, annotations: Path) -> Path:
    return Path(video_root) if video_root is not None else annotations.parent


def read_videomme(annotations: str | os.PathLike, video_root: str | os.PathLike | None = None,
                  *, skip_invalid: bool = False, stats: ReadStats | None = None
                  ) -> list[MCQuestion]:
    """Video-MME (parquet, JSON list or JSONL); videos ``<video_root>/[data/]<videoID>.mp4``."""
    path = Path(annotations)
    root = _root(video_root, path)
    return read_items(path, lambda item, where: _videomme(item, where, root),
                      skip_invalid=skip_invalid, stats=stats if stats is not None else ReadStats())


def read_mlvu(annotations: str | os.PathLike, video_root: str | os.PathLike | None = None, *,
              skip_invalid: bool = False, stats: ReadStats | None = None) -> list[MCQuestion]:
    """MLVU: one task's JSON file, or a folder of them (read in name order); videos
    ``<video_root>/<video>`` or ``<video_root>/<task file stem>/<video>``."""
    path = Path(annotations)
    stats = stats if stats is not None else ReadStats()
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no MLVU *.json files in {path}")
    out: list[MCQuestion] = []
    seen: dict[str, str] = {}  # qids are unique across the task files
    for task_file in files:
        root = _root(video_root, task_file)
        out.extend(read_items(task_file,
                              lambda item, where, f=task_file, r=root: _mlvu(item, where, r, f),
                              skip_invalid=skip_invalid, stats=stats, seen=seen))
    return out


def read_longvideobench(annotations: str | os.PathLike,
                        video_root: str | os.PathLike | None = None, *,
                        skip_invalid: bool = False, stats: ReadStats | None = None
                        ) -> list[MCQuestion]:
    """LongVideoBench ``lvb_val.json``; videos ``<video_root>/[videos/]<video_path>``."""
    path = Path(annotations)
    root = _root(video_root, path)
    return read_items(path, lambda item, where: _longvideobench(item, where, root),
                      skip_invalid=skip_invalid, stats=stats if stats is not None else ReadStats())


def read_synthetic(annotations: str | os.PathLike, video_root: str | os.PathLike | None = None,
                   *, skip_invalid: bool = False, stats: ReadStats | None = None
                   ) -> list[MCQuestion]:
    """The synthetic JSONL; relative video paths resolve against ``video_root`` if given, else
    against the annotation file's folder."""
    path = Path(annotations)
    root = _root(video_root, path)
    return read_items(path, lambda item, where: _synthetic(item, where, root),
                      skip_invalid=skip_invalid, stats=stats if stats is not None else ReadStats())


READERS: dict[str, Callable[..., list[MCQuestion]]] = {
    "synthetic": read_synthetic,
    "videomme": read_videomme,
    "mlvu": read_mlvu,
    "longvideobench": read_longvideobench,
}


def read_questions(fmt: str, annotations: str | os.PathLike,
                   video_root: str | os.PathLike | None = None, *, skip_invalid: bool = False,
                   stats: ReadStats | None = None) -> list[MCQuestion]:
    """Read ``annotations`` in format ``fmt`` (one of ``READERS``)."""
    if fmt not in READERS:
        raise ValueError(f"unknown annotation format {fmt!r}; choose from {sorted(READERS)}")
    return READERS[fmt](annotations, video_root, skip_invalid=skip_invalid, stats=stats)
