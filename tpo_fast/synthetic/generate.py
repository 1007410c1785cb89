"""Write a split: H.264 videos, their event manifest, questions and supervised pairs.

Files under ``out_dir`` (video paths relative to ``out_dir``):

* ``videos/video_00000.mp4`` ...: ``size`` x ``size`` RGB, ``fps`` frames per second;
* ``manifest.jsonl``: ``{"video", "events": [{"start", "end", "text"}], "duration"}`` per video
  (read by ``tpo_fast.curate.manifest.read_inputs``);
* ``qa.jsonl``: ``{"qid", "video", "question", "options" (4), "answer" (index), "answer_text",
  "task_type", "duration", "span" ([t0, t1] or null)}`` per question;
* ``sft.jsonl``: ``{"video", "prompt", "chosen", "rejected", "qid", "task_type"}`` per question
  (the open question, its right answer and an answer naming a wrong option; read by
  ``tpo_fast.data.pairs.read_pairs``).

Video ``i`` of a split depends only on ``(seed, i)``, so a larger split starts with the videos of
a smaller one. Held-out splits use ``seed + HELDOUT_SEED_OFFSET`` (``generate_splits``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tpo_fast.synthetic.questions import Question, make_questions
from tpo_fast.synthetic.scene import Scene, plan_scene, render
from tpo_fast.synthetic.videos import write_video

HELDOUT_SEED_OFFSET = 10_000


@dataclass(frozen=True)
class SplitPaths:
    """Where a split was written."""

    root: Path
    videos: Path
    manifest: Path
    qa: Path
    sft: Path
    n_videos: int
    n_questions: int


def video_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for video ``index`` of split ``seed``: (scene, questions)."""
    return np.random.default_rng([seed, index, 0]), np.random.default_rng([seed, index, 1])


def qa_record(qid: str, video: str, q: Question, duration: float) -> dict:
    """One ``qa.jsonl`` object."""
    return {"qid": qid, "video": video, "question": q.question, "options": list(q.options),
            "answer": q.answer, "answer_text": q.answer_text, "task_type": q.task_type,
            "duration": duration, "span": list(q.span) if q.span is not None else None}


def sft_record(qid: str, video: str, q: Question) -> dict:
    """One ``sft.jsonl`` pair: the open question, the right open answer and a wrong one."""
    return {"video": video, "prompt": q.question, "chosen": q.answer_text,
            "rejected": q.wrong_text, "qid": qid, "task_type": q.task_type}


def _check_args(size: int, fps: float, seconds: tuple[int, int], n_videos: int) -> None:
    if size % 2 or size < 16:
        raise ValueError(f"size must be even and >= 16 (H.264 4:2:0), got {size}")
    if fps <= 0 or not float(fps).is_integer():
        raise ValueError(f"fps must be a positive whole number (the mp4 rate), got {fps}")
    if not 4 <= seconds[0] <= seconds[1]:
        raise ValueError(f"seconds must be (low, high) with 4 <= low <= high, got {seconds}")
    if n_videos < 0:
        raise ValueError(f"n_videos must be >= 0, got {n_videos}")


def _write_jsonl(path: Path, objects: list[dict]) -> None:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects), encoding="utf-8")


def generate_split(out_dir: str | Path, n_videos: int, seed: int, *, size: int = 32,
                   fps: float = 4.0, seconds: tuple[int, int] = (10, 16), max_shapes: int = 4,
                   shape_px: int | None = None, per_type: int = 2) -> SplitPaths:
    """Write ``n_videos`` videos and their manifest, questions and pairs into ``out_dir``.

    Each video lasts a whole number of seconds in ``seconds`` (inclusive) and shows 1 to
    ``max_shapes`` shapes of ``shape_px`` pixels (default ``size // 4``); at most ``per_type``
    questions of each task type per video. Video ``i`` and its questions depend only on
    ``(seed, i)`` and the options.
    """
    _check_args(size, fps, seconds, n_videos)
    root = Path(out_dir)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    manifest, qa, sft = [], [], []
    for i in range(n_videos):
        scene_rng, question_rng = video_rngs(seed, i)
        scene: Scene = plan_scene(scene_rng, size=size, fps=fps, seconds=seconds,
                                  max_shapes=max_shapes, shape_px=shape_px)
        video = f"videos/video_{i:05d}.mp4"
        write_video(root / video, render(scene), fps)
        manifest.append({"video": video, "events": [e.to_dict() for e in scene.events],
                         "duration": scene.duration})
        questions = make_questions(question_rng, scene.events, scene.duration,
                                   max_shapes=max_shapes, per_type=per_type)
        for j, q in enumerate(questions):
            qid = f"{seed}-{i:05d}-{j:02d}"
            qa.append(qa_record(qid, video, q, scene.duration))
            sft.append(sft_record(qid, video, q))
    paths = SplitPaths(root, root / "videos", root / "manifest.jsonl", root / "qa.jsonl",
                       root / "sft.jsonl", n_videos, len(qa))
    _write_jsonl(paths.manifest, manifest)
    _write_jsonl(paths.qa, qa)
    _write_jsonl(paths.sft, sft)
    return paths


def generate_splits(out_dir: str | Path, n_train: int, n_heldout: int, seed: int = 0,
                    **options) -> dict[str, SplitPaths]:
    """``out_dir/train`` from ``seed`` and ``out_dir/heldout`` from ``seed +
    HELDOUT_SEED_OFFSET``; ``options`` go to ``generate_split``."""
    root = Path(out_dir)
    return {"train": generate_split(root / "train", n_train, seed, **options),
            "heldout": generate_split(root / "heldout", n_heldout, seed + HELDOUT_SEED_OFFSET,
                                      **options)}
