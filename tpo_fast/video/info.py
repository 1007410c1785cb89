"""``VideoInfo`` and ``probe``: what a video is (fps, frame count, duration, codec, size)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class VideoInfo:
    """A video's stream properties. ``num_frames`` counts the frames in the video stream (its
    packets, so it is exact even where the container stores no count); ``duration`` is
    ``num_frames / fps`` seconds; ``codec`` is FFmpeg's codec name ("h264", "vp9", ...), or
    ``"frames"`` for a video given as images (``frame_folder.py``), whose ``frames`` holds the
    frame sources in order."""

    path: str
    fps: float
    num_frames: int
    duration: float
    codec: str
    width: int
    height: int
    frames: tuple = field(default=(), compare=False, repr=False)


def probe(path) -> VideoInfo:
    """Read a video's ``VideoInfo`` without decoding pixels (the container is demuxed once and
    its frame index cached for ``decode``). ``path`` may also be a folder of frames or a
    ``FrameVideo`` (``frame_folder.py``; a bare folder gets the default frame rate). Raises
    ``VideoDecodeError`` for a missing, corrupt or unsupported file or one without a video
    stream."""
    from tpo_fast.video.frame_folder import FrameVideo, probe_frames
    from tpo_fast.video.pyav_backend import frame_index

    if isinstance(path, FrameVideo):
        return probe_frames(path)
    if os.path.isdir(path):
        return probe_frames(FrameVideo(folder=os.fspath(path)))
    return frame_index(path).info
