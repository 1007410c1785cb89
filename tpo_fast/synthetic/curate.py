"""Synthetic videos with known events, and their manifest: the curation demo and tests.

Each video shows a sequence of solid colours ("the screen turns red") and, at random times, a
white square for a short while ("a white square appears"). The manifest lists these as
ground-truth ``events``, which the annotation backends read. Written with PyAV (H.264).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tpo_fast.synthetic.videos import COLOURS, colour_phases, write_video


def _events_video(rng: np.random.Generator, n_frames: int, size: int, fps: float,
                  phases: int, squares: int) -> tuple[np.ndarray, list[dict]]:
    names = [c for c in COLOURS if c != "white"]
    frames, colours, cuts = colour_phases(rng, names, phases, n_frames, size)
    events = [{"start": a / fps, "end": b / fps, "text": f"the screen turns {colour}"}
              for colour, a, b in zip(colours, [0, *cuts], [*cuts, n_frames])]
    lo, hi = size // 4, 3 * size // 4
    for _ in range(squares):
        length = int(rng.integers(2, 5))
        a = int(rng.integers(0, n_frames - length))
        frames[a:a + length, lo:hi, lo:hi] = COLOURS["white"]
        events.append({"start": a / fps, "end": (a + length) / fps,
                       "text": "a white square appears"})
    events.sort(key=lambda e: (e["start"], e["end"]))
    return frames, events


def make_synthetic_videos(out_dir: str | Path, n_videos: int = 4, seed: int = 0,
                          size: int = 32, n_frames: int = 48, fps: float = 4.0,
                          phases: int = 3, squares: int = 1) -> Path:
    """Write ``n_videos`` videos under ``out_dir/videos`` and ``out_dir/manifest.jsonl``
    (``{"video", "events"}`` per line, relative paths); returns the manifest's path."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for v in range(n_videos):
        frames, events = _events_video(rng, n_frames, size, fps, phases, squares)
        name = f"videos/events_{v:03d}.mp4"
        write_video(out / name, frames, fps)
        lines.append(json.dumps({"video": name, "events": events}))
    manifest = out / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
