"""Videos given as image frames: a folder of frames (sorted by name), or an explicit list of
frame images (paths, or encoded image bytes as a ``datasets`` ``Image`` column stores them).

LLaVA-Hound-DPO's 17k pairs name such folders (``ffmpeg ... c01_%04d.jpeg``: LLaVA-Hound-DPO
``llava_hound_dpo/inference/inference_utils.py::decode2frame``, read back with ``os.listdir``
and a plain name sort in ``.../languagebind/video/processing_video.py::load_frames``, as
LLaVA-NeXT's ``llava/train/train_dpo.py`` does); TRL's vision format gives frames as an
``images`` column. A frame folder carries no time base: ``fps`` comes from the pair (a field)
or a setting (``data.frame_fps``); frame ``i`` is at ``i / fps`` seconds.

This is the ``"frames"`` entry of the decoder registry (``decoders.DECODERS``), a *source*: it
decodes every video whose codec is ``FRAME_CODEC`` whatever ``decode.backend`` says, and
``decode.backend`` cannot name it. Frames are read with Pillow.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tpo_fast.video.errors import VideoDecodeError
from tpo_fast.video.info import VideoInfo

FRAME_CODEC = "frames"  # VideoInfo.codec of a frame folder / frame list
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# LLaVA-Hound-DPO extracts frames at 2 fps (inference_utils.py::decode2frame, "fps=2")
DEFAULT_FRAME_FPS = 2.0


@dataclass(frozen=True)
class FrameVideo:
    """A video given as frames. ``folder``: its images (``IMAGE_EXTENSIONS``, any case) in name
    order; or ``files``: the frames in order, each a path or encoded image bytes. ``label``
    names the video in messages when there is no folder (e.g. ``pairs.parquet[row 3].images``).
    """

    folder: str | None = None
    files: tuple = ()
    fps: float = DEFAULT_FRAME_FPS
    label: str = ""

    def __post_init__(self):
        if (self.folder is None) == (not self.files):
            raise ValueError("FrameVideo needs a folder or a list of frames (one of them)")
        if not (isinstance(self.fps, (int, float)) and self.fps > 0):
            raise ValueError(f"frame fps must be > 0, got {self.fps!r}")

    @property
    def name(self) -> str:
        return Path(self.folder).name if self.folder is not None else self.label

    def __str__(self) -> str:
        return self.folder if self.folder is not None else self.label or "<frames>"

    def exists(self) -> bool:
        return os.path.isdir(self.folder) if self.folder is not None else True

    def frame_sources(self) -> tuple:
        """The frames in order (paths or bytes). Raises ``VideoDecodeError`` for a folder that
        is missing or holds no images."""
        if self.folder is None:
            return self.files
        try:
            names = sorted(n for n in os.listdir(self.folder)
                           if n.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(self.folder, n)))
        except OSError as exc:
            raise VideoDecodeError(self.folder, f"cannot list the frame folder ({exc})") from None
        if not names:
            raise VideoDecodeError(self.folder, f"no frame images ({', '.join(IMAGE_EXTENSIONS)}"
                                                ") in the folder")
        return tuple(os.path.join(self.folder, n) for n in names)


def _open(source, where: str):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (OSError, UnidentifiedImageError) as exc:
        raise VideoDecodeError(where, f"unreadable frame image ({exc})") from None


def _where(video: FrameVideo, source, i: int) -> str:
    return source if isinstance(source, str) else f"{video} (frame {i})"


def probe_frames(video: FrameVideo) -> VideoInfo:
    """A frame video's ``VideoInfo``: its frame count, ``fps``, the first frame's size (a
    header read) and ``codec="frames"``; ``info.frames`` holds the frame sources."""
    sources = video.frame_sources()
    with _open(sources[0], _where(video, sources[0], 0)) as first:
        width, height = first.size
    return VideoInfo(path=str(video), fps=float(video.fps), num_frames=len(sources),
                     duration=len(sources) / video.fps, codec=FRAME_CODEC, width=width,
                     height=height, frames=sources)


def decode_frames(info: VideoInfo, frame_indices: Sequence[int]) -> torch.Tensor:
    """Frames ``frame_indices`` of a frame video as uint8 [n, H, W, 3] RGB (each image read
    once). A frame of another size than the first raises ``VideoDecodeError`` naming it. An
    info without its frame sources (rebuilt from a stored dict) re-lists its folder."""
    sources = info.frames or FrameVideo(folder=info.path, fps=info.fps).frame_sources()
    video = FrameVideo(files=sources, label=info.path, fps=info.fps)
    out = np.empty((len(frame_indices), info.height, info.width, 3), np.uint8)
    done: dict[int, int] = {}
    for k, i in enumerate(frame_indices):
        i = int(i)
        if i in done:
            out[k] = out[done[i]]
            continue
        source = sources[i]
        where = _where(video, source, i)
        with _open(source, where) as image:
            if image.size != (info.width, info.height):
                raise VideoDecodeError(where, f"frame is {image.size[0]}x{image.size[1]}, the "
                                              f"first frame {info.width}x{info.height}")
            try:
                out[k] = np.asarray(image.convert("RGB"))
            except OSError as exc:
                raise VideoDecodeError(where, f"unreadable frame image ({exc})") from None
        done[i] = k
    return torch.from_numpy(out)
