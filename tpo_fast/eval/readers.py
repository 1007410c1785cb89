"""Annotation readers: Video-MME, MLVU, LongVideoBench and the synthetic format -> MCQuestion.

Every reader takes the annotation file (MLVU: also a folder of its per-task JSON files) and the
folder that holds the videos, and returns ``MCQuestion`` records in file order. A malformed item
raises ``AnnotationError`` naming its ``file:line`` (JSONL) or ``file:item N`` (JSON list,
0-based); with ``skip_invalid=True`` it is skipped instead and counted in ``ReadStats``. A video
that does not exist is *not* an annotation error: evaluation counts it as a decode failure.

What each reader is based on (field names as the benchmarks' own loaders use them). Every
benchmark question also keeps its lmms-eval *document* (``MCQuestion.doc``: the fields of the
Hugging Face parquet row that lmms-eval's task reads), built from whichever layout was read, for
the lmms-eval protocol (``tpo_fast.eval.protocol``).

* **Video-MME** — the Hugging Face export ``lmms-lab/Video-MME`` (``videomme/test-*.parquet``;
  its dataset card lists ``video_id, duration, domain, sub_category, url, videoID, question_id,
  task_type, question, options (sequence of "A. ..."), answer ("A")``) and loaders built on it
  (e.g. retake's ``build_videomme_dataset.py``, VideoMind's ``videomme`` dataset), which find the
  video as ``<videoID>.mp4`` in the unzipped ``data/`` folder (some ship as ``.MP4``: extensions
  match in any case, as lmms-eval's ``videomme_doc_to_visual`` tries ``.MP4`` too). The
  original GitHub JSON (one item per video with a nested ``questions`` list) is accepted too.
* **MLVU** — the MLVU dev JSON per task (``json/1_plotQA.json`` ...), as read by MLVU's
  ``choice_bench.py``: ``video, duration (s), question, candidates [texts], answer (the correct
  candidate's text), question_type``; videos live in ``video/<task file stem>/``. Items without
  ``candidates`` (the generation tasks ``8_sub_scene.json``, ``9_summary.json``) are left out by
  design and counted (``ReadStats.not_multiple_choice``). Also lmms-eval's parquet
  (``sy1998/MLVU_dev``: ``video_name, duration, question`` with "(A) ..." option lines,
  ``candidates, answer`` (a letter), ``task_type, question_id``).
* **LongVideoBench** — ``lvb_val.json`` as read by the official ``LongVideoBenchDataset``
  (``longvideobench/longvideobench_dataset.py``: ``video_path`` under ``videos/``,
  ``question``, ``candidates``, ``correct_choice`` (index), ``id``, ``duration``) and by
  lmms-eval's ``longvideobench`` task (``question_category``, ``duration_group``), which reads
  the HF parquet: ``option0``..``option4`` ("N/A" past the last) in place of ``candidates``.
* **synthetic** — this project's own format (``tpo_fast.synthetic``): JSONL lines ``{"qid",
  "video", "question", "options", "answer" (index), "task_type", "duration" (s), ...}``, with
  relative video paths resolved against the annotation file's folder.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tpo_fast.eval.protocol import longvideobench_options
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
    """The first candidate that exists — matched case-insensitively (Video-MME ships some
    videos as ``X.MP4``), and without a suffix tried with each of ``VIDEO_EXTENSIONS`` —; the
    first candidate itself if none does (evaluation then counts a decode failure)."""
    for path in candidates:
        if path.is_file():
            return path
        names = [path.name] if path.suffix else [path.name + ext for ext in VIDEO_EXTENSIONS]
        listing = _listing(path.parent)
        for name in names:
            if name.lower() in listing:
                return path.parent / listing[name.lower()]
    first = candidates[0]
    return first if first.suffix else first.with_suffix(".mp4")


def _listing(folder: Path) -> dict[str, str]:
    """``{lowercase name: name}`` of the files in ``folder`` (empty if it does not exist),
    cached until the folder changes."""
    try:
        return _listing_at(folder, folder.stat().st_mtime_ns)
    except (FileNotFoundError, NotADirectoryError):
        return {}


@functools.lru_cache(maxsize=64)
def _listing_at(folder: Path, mtime_ns: int) -> dict[str, str]:
    return {entry.name.lower(): entry.name for entry in os.scandir(folder) if entry.is_file()}


def make_question(where: str, *, qid: str, video: Path, question: str, options: list[str],
                  answer: int, task_type: str, duration_group: str | None,
                  duration: float | None = None, doc: dict | None = None) -> MCQuestion:
    """An ``MCQuestion`` after the checks every format shares."""
    if not question.strip():
        raise AnnotationError(where, "empty question")
    if len(set(options)) != len(options):
        raise AnnotationError(where, f"options repeat: {options}")
    return MCQuestion(qid=str(qid), video=video, question=question.strip(), options=options,
                      answer=answer, task_type=task_type or "unknown",
                      duration_group=duration_group, source=where,
                      duration=None if duration is None else float(duration), doc=doc)


# ---- one function per format -----------------------------------------------------------------
def _videomme(item: Item, where: str, video_root: Path) -> list[MCQuestion]:
    name = str(field(item, where, "videoID", "video_id", kind=(str, int)))
    video = find_video([video_root / name, video_root / "data" / name])
    group = field(item, where, "duration", kind=str, default=None)
    if "questions" in item:  # the original GitHub JSON: one item per video
        questions = field(item, where, "questions", kind=list)
        shared = {k: v for k, v in item.items() if k != "questions"}
        return [_videomme_question(q, f"{where}.questions[{j}]", video, name, group, j, shared)
                for j, q in enumerate(questions)]
    return [_videomme_question(item, where, video, name, group, 0, {})]


def _videomme_question(item: Any, where: str, video: Path, name: str, group: str | None,
                       j: int, shared: Item) -> MCQuestion:
    if not isinstance(item, dict):
        raise AnnotationError(where, f"expected an object, got {type(item).__name__}")
    raw_options = string_list(item, where, "options")
    options = strip_letter_prefixes(raw_options, where)
    qid = str(field(item, where, "question_id", kind=(str, int), default=f"{name}-{j}"))
    # lmms-eval's document: the parquet row (the options keep their "A. " prefixes)
    doc = {**shared, **item, "videoID": name, "question_id": qid, "options": list(raw_options)}
    return make_question(
        where, qid=qid, video=video, question=field(item, where, "question"), options=options,
        answer=answer_index(field(item, where, "answer"), len(options), where),
        task_type=field(item, where, "task_type", default="unknown"), duration_group=group,
        doc=doc)


# MLVU's json/ question_type -> lmms-eval's task_type (the others are the same words)
MLVU_TASK_TYPES = {"findNeedle": "needle"}


def _mlvu(item: Item, where: str, video_root: Path, task_file: Path,
          stats: ReadStats) -> list[MCQuestion]:
    if "video_name" in item:
        return _mlvu_lmms_eval(item, where, video_root, task_file)
    if "candidates" not in item:
        # A generation task (json/8_sub_scene.json, 9_summary.json): not multiple choice, so
        # left out by design and counted; lmms-eval's mlvu_dev leaves them out too.
        stats.not_multiple_choice += 1
        stats.left_out[str(task_file)] = stats.left_out.get(str(task_file), 0) + 1
        return []
    options = string_list(item, where, "candidates")
    answer = field(item, where, "answer")
    if answer.strip() not in options:
        raise AnnotationError(where, f"answer {answer!r:.60} is not one of the candidates")
    name = field(item, where, "video")
    duration = field(item, where, "duration", kind=(int, float), default=None)
    qid = str(field(item, where, "uid", "question_id", kind=(str, int),
                    default=f"{task_file.stem}/{_item_number(where)}"))
    video = find_video([video_root / name, video_root / task_file.stem / name])
    question = field(item, where, "question")
    question_type = field(item, where, "question_type", default=task_file.stem)
    index = options.index(answer.strip())
    # lmms-eval's document (sy1998/MLVU_dev's parquet row): the question with its options as
    # "(A) ..." lines, the answer as a letter, and lmms-eval's task_type.
    doc = {"video_name": name, "duration": duration,
           "question": question + "\n" + "".join(f"({LETTERS[i]}) {c}\n"
                                                 for i, c in enumerate(item["candidates"])),
           "candidates": list(item["candidates"]), "answer": LETTERS[index],
           "task_type": MLVU_TASK_TYPES.get(question_type, question_type), "question_id": qid}
    return [make_question(
        where, qid=qid, video=video, question=question, options=options, answer=index,
        task_type=question_type, duration_group=duration_group_of(duration), duration=duration,
        doc=doc)]


def _mlvu_lmms_eval(item: Item, where: str, video_root: Path, task_file: Path
                    ) -> list[MCQuestion]:
    """A row of lmms-eval's MLVU parquet (``sy1998/MLVU_dev``: ``video_name, duration,
    question`` (with "(A) ..." option lines), ``candidates, answer`` (a letter),
    ``task_type, question_id``)."""
    options = string_list(item, where, "candidates")
    task_type = field(item, where, "task_type")
    name = field(item, where, "video_name")
    duration = field(item, where, "duration", kind=(int, float), default=None)
    text = field(item, where, "question")
    qid = str(field(item, where, "question_id", kind=(str, int),
                    default=f"{task_file.stem}/{_item_number(where)}"))
    return [make_question(
        where, qid=qid, video=find_video([video_root / name, video_root / task_type / name]),
        question=text.split("\n(A) ")[0], options=options,
        answer=answer_index(field(item, where, "answer"), len(options), where),
        task_type=task_type, duration_group=duration_group_of(duration), duration=duration,
        doc={**item, "question_id": qid})]


def _item_number(where: str) -> str:
    """``"f.json:item 3"`` -> ``"3"``; ``"f.jsonl:7"`` -> ``"7"``; ``"f.parquet:row 2"`` ->
    ``"2"``."""
    return where.rsplit(":", 1)[-1].removeprefix("item ").removeprefix("row ")


def _longvideobench(item: Item, where: str, video_root: Path) -> list[MCQuestion]:
    if "candidates" in item or "option0" not in item:  # lvb_val.json
        options = string_list(item, where, "candidates")
        if len(options) > 5:
            raise AnnotationError(where, f"candidates has {len(options)} options; "
                                         "LongVideoBench has at most 5")
        # lmms-eval's document (the HF parquet row): option0..option4, "N/A" past the last
        doc = {**item, **{f"option{i}": item["candidates"][i] if i < len(options) else "N/A"
                          for i in range(5)}}
    else:  # lmms-eval's parquet layout: option0..option4
        doc = dict(item)
        options = string_list({"options": longvideobench_options(item)}, where, "options")
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
        duration=field(item, where, "duration", kind=(int, float), default=None), doc=doc)]


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
    """MLVU: one task's JSON file or lmms-eval's parquet (``sy1998/MLVU_dev``'s
    ``mlvu/test-00000-of-00001.parquet``), or a folder of them (read in name order); videos
    ``<video_root>/<video>`` or ``<video_root>/<task file stem | task_type>/<video>``. Items
    without ``candidates`` (the generation tasks) are left out and counted in
    ``stats.not_multiple_choice``."""
    path = Path(annotations)
    stats = stats if stats is not None else ReadStats()
    files = (sorted([*path.glob("*.json"), *path.glob("*.parquet")]) if path.is_dir()
             else [path])
    if not files:
        raise FileNotFoundError(f"no MLVU *.json or *.parquet files in {path}")
    out: list[MCQuestion] = []
    seen: dict[str, str] = {}  # qids are unique across the task files
    for task_file in files:
        root = _root(video_root, task_file)
        out.extend(read_items(
            task_file, lambda item, where, f=task_file, r=root: _mlvu(item, where, r, f, stats),
            skip_invalid=skip_invalid, stats=stats, seen=seen))
    return out


def read_longvideobench(annotations: str | os.PathLike,
                        video_root: str | os.PathLike | None = None, *,
                        skip_invalid: bool = False, stats: ReadStats | None = None
                        ) -> list[MCQuestion]:
    """LongVideoBench ``lvb_val.json``, or lmms-eval's parquet (the HF dataset's
    ``validation-00000-of-00001.parquet``: ``option0``..``option4`` in place of
    ``candidates``); videos ``<video_root>/[videos/]<video_path>``."""
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
