"""The demo's search task: a long video with one relevant segment among conflicting ones.

A video is ``segments`` segments of ``segment_seconds`` each; the answer colours (red, green,
blue, yellow) appear once each, one per segment. With ``distractors="solid"`` (the demo) one
segment, at a random place, fills every frame with horizontal stripes four pixels high: its
*cue* colour (rows 0-3 of every 8-row band; white, black, purple, orange, pink or cyan) over its
*answer* colour (rows 4-7); the other segments are solid answer colours. With ``"cued"`` every
segment is striped with its own cue. Qwen-VL sees a frame as 4x4-pixel patches merged 2x2, so
every visual token of a striped frame carries both of its colours.

Questions (the options are always A. red, B. green, C. blue, D. yellow, so a letter always
means the same colour, and every wrong option is a colour the video also shows):

* ``localized/under``   "which colour was under purple ?": the answer colour of the segment
  whose cue is purple. ``span`` is that segment's [t0, t1] (t1 = its last frame's time, so the
  segment plan holds only its frames);
* ``comprehensive/first`` / ``comprehensive/last``  "which colour came first ?": the answer
  colour of the first / last segment (``span`` None).

Shown only the relevant segment (a "clip"), a model that reads the frames answers a localized
question easily: one answer colour is on screen. Shown the whole video it has to find that
segment among others that show the wrong options; a model trained on clips only has never had
to. That is TPO's precondition (a base that is right on the clip and lost in the long video).

Files under ``out_dir`` (video paths relative to ``out_dir``): ``videos/video_00000.mp4``,
``manifest.jsonl`` (``{"video", "duration", "events"}``, one event per segment, read by the
curation), ``qa.jsonl`` (the ``tpo_fast.synthetic`` question fields plus ``"segment"`` and
``"mc_prompt"``: the question with its options on one line, what the curation asks), and
``clips/`` with ``clips.jsonl``: every localized question again, its video the relevant
segment alone (``"full_video"`` names the whole one), for the clip-only warm-up and the
precondition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tpo_fast.synthetic.videos import write_video

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 190, 50), "blue": (30, 60, 230),
    "yellow": (235, 220, 30), "purple": (140, 40, 190), "white": (245, 245, 245),
    "orange": (245, 140, 20), "black": (15, 15, 15), "pink": (250, 130, 190),
    "cyan": (40, 215, 225),
}
# The options of every question, in this order (so "B" always means green: the tiny model need
# not learn to look an option's letter up); cues come from the other colours.
ANSWER_COLOURS = ("red", "green", "blue", "yellow")
CUE_COLOURS = ("white", "black", "purple", "orange", "pink", "cyan")
LOCALIZED_TEMPLATE = "which colour was under {cue} ?"
COMPREHENSIVE_TEMPLATES = {"comprehensive/first": "which colour came first ?",
                           "comprehensive/last": "which colour came last ?"}
INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCD"


@dataclass(frozen=True)
class SearchVideo:
    """One video's plan: segment ``i`` shows ``cues[i]`` over ``answers[i]`` (a cue of None:
    the segment is solid ``answers[i]``)."""

    cues: tuple[str | None, ...]
    answers: tuple[str, ...]
    segment_seconds: int
    fps: int
    size: int

    @property
    def duration(self) -> float:
        return float(len(self.cues) * self.segment_seconds)

    def span(self, i: int) -> tuple[float, float]:
        """Segment ``i``'s [first frame time, last frame time] in seconds."""
        t0 = float(i * self.segment_seconds)
        return t0, t0 + self.segment_seconds - 1.0 / self.fps


DISTRACTORS = ("solid", "cued")


def plan_video(rng: np.random.Generator, *, segments: int = 4, segment_seconds: int = 3,
               fps: int = 4, size: int = 16, distractors: str = "solid") -> SearchVideo:
    """A random assignment of different colours to cues and answers. ``distractors="cued"``:
    every segment has its own cue; ``"solid"``: one segment (at a random place) has a cue,
    the others are solid colours."""
    if not 2 <= segments <= len(ANSWER_COLOURS):
        raise ValueError(f"segments must be in 2..{len(ANSWER_COLOURS)}, got {segments}")
    if size % 8:
        raise ValueError(f"size must be a multiple of 8 (8-row stripe bands), got {size}")
    if distractors not in DISTRACTORS:
        raise ValueError(f"distractors must be one of {DISTRACTORS}, got {distractors!r}")
    cues: list[str | None] = [str(c) for c in rng.permutation(list(CUE_COLOURS))[:segments]]
    answers = [str(c) for c in rng.permutation(list(ANSWER_COLOURS))[:segments]]
    if distractors == "solid":
        target = int(rng.integers(segments))
        cues = [c if i == target else None for i, c in enumerate(cues)]
    return SearchVideo(tuple(cues), tuple(answers), segment_seconds, fps, size)


def render_search(video: SearchVideo) -> np.ndarray:
    """uint8 [n_frames, size, size, 3]: each segment's cue/answer stripes."""
    per = video.segment_seconds * video.fps
    frames = np.empty((per * len(video.cues), video.size, video.size, 3), np.uint8)
    rows = (np.arange(video.size) % 8) < 4  # True: a cue row
    for i, (cue, answer) in enumerate(zip(video.cues, video.answers)):
        top = COLOURS[answer if cue is None else cue]
        frame = np.where(rows[:, None, None], top, COLOURS[answer]).astype(np.uint8)
        frames[i * per:(i + 1) * per] = np.broadcast_to(frame, (video.size, video.size, 3))
    return frames


def mc_prompt(question: str, options: list[str]) -> str:
    """The question and its lettered options on one line (the tiny tokenizer splits on any
    whitespace, so this tokenizes like the evaluation's multi-line prompt)."""
    return " ".join([question, *(f"{LETTERS[i]}. {o}" for i, o in enumerate(options)),
                     INSTRUCTION])


def search_questions(rng: np.random.Generator, video: SearchVideo) -> list[dict]:
    """One localized question per segment and the two comprehensive ones (options shuffled):
    ``{"task_type", "question", "options", "answer", "answer_text", "span", "segment"}``."""
    out = []
    asks = [("localized/under", LOCALIZED_TEMPLATE.format(cue=cue), i)
            for i, cue in enumerate(video.cues) if cue is not None]
    asks += [("comprehensive/first", COMPREHENSIVE_TEMPLATES["comprehensive/first"], 0),
             ("comprehensive/last", COMPREHENSIVE_TEMPLATES["comprehensive/last"],
              len(video.cues) - 1)]
    for task, question, segment in asks:
        options = list(ANSWER_COLOURS)
        answer = options.index(video.answers[segment])
        out.append({"task_type": task, "question": question, "options": options,
                    "answer": answer, "answer_text": f"{LETTERS[answer]}. {options[answer]}",
                    "span": list(video.span(segment)) if task.startswith("localized") else None,
                    "segment": segment})
    return out


def search_vocabulary() -> list[str]:
    """Every word the task writes (for the demo's word-level tokenizer)."""
    from tpo_fast.synthetic.vocab import words

    texts = [LOCALIZED_TEMPLATE, *COMPREHENSIVE_TEMPLATES.values(), INSTRUCTION, "under over solid",
             *COLOURS, *LETTERS.lower(), *LETTERS]
    return sorted({w for t in texts for w in words(t.replace("{cue}", " "))})


def _jsonl(path: Path, objects: list[dict]) -> None:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects), encoding="utf-8")


def generate_search_split(out_dir: str | Path, n_videos: int, seed: int, *, segments: int = 4,
                          segment_seconds: int = 3, fps: int = 4, size: int = 16,
                          distractors: str = "solid", exclude: set | None = None) -> dict:
    """Write ``n_videos`` videos, their manifest, questions and clips into ``out_dir``; returns
    the paths, counts and ``plans`` (the videos' (cues, answers)). Video ``i`` is drawn from
    ``(seed, i)``, again from the same generator while it equals an earlier video of the split
    or one in ``exclude`` (a held-out split passes the train split's ``plans``)."""
    root = Path(out_dir)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    manifest, qa, clips = [], [], []
    seen: set[tuple] = set()
    taken = set(exclude or ())
    for i in range(n_videos):
        rng = np.random.default_rng([seed, i, 0])
        while True:  # no two videos of a split alike (the annotation backends key on events)
            video = plan_video(rng, segments=segments, segment_seconds=segment_seconds,
                               fps=fps, size=size, distractors=distractors)
            if (video.cues, video.answers) not in seen | taken:
                break
        seen.add((video.cues, video.answers))
        frames = render_search(video)
        name = f"videos/video_{i:05d}.mp4"
        write_video(root / name, frames, fps)
        per = segment_seconds * fps
        manifest.append({"video": name, "duration": video.duration, "events": [
            {"start": video.span(k)[0], "end": video.span(k)[0] + segment_seconds,
             "text": f"{cue} over {answer}" if cue else f"solid {answer}"}
            for k, (cue, answer) in enumerate(zip(video.cues, video.answers))]})
        for j, q in enumerate(search_questions(np.random.default_rng([seed, i, 1]), video)):
            record = {"qid": f"{seed}-{i:05d}-{j:02d}", "video": name, **q,
                      "mc_prompt": mc_prompt(q["question"], q["options"]),
                      "duration": video.duration}
            qa.append(record)
            if q["span"] is not None:
                clip = f"clips/video_{i:05d}_segment{q['segment']}.mp4"
                k = q["segment"]
                write_video(root / clip, frames[k * per:(k + 1) * per], fps)
                clips.append(record | {"video": clip, "duration": float(segment_seconds),
                                       "full_video": name})
    _jsonl(root / "manifest.jsonl", manifest)
    _jsonl(root / "qa.jsonl", qa)
    _jsonl(root / "clips.jsonl", clips)
    return {"root": root, "manifest": root / "manifest.jsonl", "qa": root / "qa.jsonl",
            "clips": root / "clips.jsonl", "n_videos": n_videos, "n_questions": len(qa),
            "plans": seen}
