"""A tiny synthetic preference set for the embedded default and the trainer's tests.

Each video shows a sequence of solid colours with a square that appears for a while; questions
ask about what happened when. The chosen answer is right, the rejected one names a colour or
shape that was not there at that time, as TPO's manipulated-video responses would. Videos are
written with PyAV (H.264), so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 220),
           "yellow": (230, 210, 40), "purple": (150, 60, 200), "white": (240, 240, 240)}


def write_video(path: Path, frames: np.ndarray, fps: float = 4.0) -> None:
    """uint8 [n, H, W, 3] -> an H.264 mp4 (H and W even)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_pairs(out_dir: str | Path, n_pairs: int = 48, n_videos: int = 8, seed: int = 0,
               size: int = 32, n_frames: int = 16, fps: float = 4.0) -> Path:
    """Write ``n_videos`` videos and ``n_pairs`` pairs (``pairs.jsonl``) into ``out_dir``."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    videos = []
    for v in range(n_videos):
        order = rng.permutation(len(names))[:3]
        cuts = np.sort(rng.choice(np.arange(2, n_frames - 2), 2, replace=False))
        frames = np.zeros((n_frames, size, size, 3), np.uint8)
        for k, (start, end) in enumerate(zip([0, *cuts], [*cuts, n_frames])):
            frames[start:end] = COLOURS[names[order[k]]]
        path = out / "videos" / f"video_{v:03d}.mp4"
        write_video(path, frames, fps)
        videos.append((path.name, [names[i] for i in order], cuts / fps))
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
