"""``VideoInfo`` and ``probe``: what a video is (fps, frame count, duration, codec, size)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class VideoInfo:
    """A video's stream properties. ``num_frames`` counts the frames in the video stream (its
    packets, so it is exact even where the container stores no count); ``duration`` is
    ``num_frames / fps`` seconds; ``codec`` is FFmpeg's codec name ("h264", "vp9", ...)."""

    path: str
    fps: float
    num_frames: int
    duration: float
    codec: str
    width: int
    height: int


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read a video's ``VideoInfo`` without decoding pixels (the container is demuxed once and
    its frame index cached for ``decode``). Raises ``VideoDecodeError`` for a missing, corrupt
    or unsupported file or one without a video stream."""
    from tpo_fast.video.pyav_backend import frame_index

    return frame_index(path).info
