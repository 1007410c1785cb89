"""A tiny synthetic preference set for the embedded default and the trainer's tests.

Each video shows a sequence of three solid colours; questions ask which colour was shown
when. The chosen answer is right, the rejected one names a colour or
shape that was not there at that time, as TPO's manipulated-video responses would. Videos are
written with PyAV (H.264, ``videos.write_video``), so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tpo_fast.synthetic.videos import COLOURS, colour_phases, write_video


def make_pairs(out_dir: str | Path, n_pairs: int = 48, n_videos: int = 8, seed: int = 0,
               size: int = 32, n_frames: int = 16, fps: float = 4.0) -> Path:
    """Write ``n_videos`` videos and ``n_pairs`` pairs (``pairs.jsonl``) into ``out_dir``."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    videos = []
    for v in range(n_videos):
        frames, colours, cuts = colour_phases(rng, names, 3, n_frames, size)
        path = out / "videos" / f"video_{v:03d}.mp4"
        write_video(path, frames, fps)
        videos.append((path.name, colours, cuts / fps))
    with (out / "pairs.jsonl").open("w") as f:
        for i in range(n_pairs):
            name, colours, cuts = videos[i % n_videos]
            k = int(rng.integers(3))
            others = [c for c in names if c not in colours]
            wrong = others[int(rng.integers(len(others)))]
            question = ["what colour was the video first ?",
                        f"what colour was the video between {cuts[0]:.0f} and {cuts[1]:.0f} "
                        "seconds ?",
                        "what colour was the video at the end ?"][k]
            f.write(json.dumps({"video": f"videos/{name}", "prompt": question,
                                "chosen": f"it was {colours[k]} .",
                                "rejected": f"it was {wrong} .", "task": ["first", "middle",
                                                                          "last"][k]}) + "\n")
    return out / "pairs.jsonl"
