"""Synthetic test videos, written with PyAV: every generator of ``tpo_fast.synthetic`` encodes here.

``write_index_video``: frames that carry their own index, for the decoder tests and benchmarks.

Frame ``i`` shows ``i`` in binary as a 4 x 3 grid of blocks (``BITS`` = 12 bits, least
significant bit top-left, row-major): a set bit is bright (about 200), a clear bit dark (about
55). Each block is large and flat enough to survive lossy H.264/VP9 coding, so
``frame_number(decoded)`` recovers the index exactly. ``texture=True`` adds a moving pattern and
fine noise (amplitude well below the bright/dark gap) so encoders and decoders do real work,
as in the benchmark.

``write_video`` encodes any uint8 frames as H.264; ``colour_phases`` draws the solid-colour
phases that the tiny pairs (``pairs.py``) and the curation videos (``curate.py``) show.
"""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

GRID_COLS, GRID_ROWS = 4, 3
BITS = GRID_COLS * GRID_ROWS
BRIGHT, DARK = 200, 55
ENCODERS = {"h264": "libx264", "vp9": "libvpx-vp9", "vp8": "libvpx", "mjpeg": "mjpeg"}
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 220),
           "yellow": (230, 210, 40), "purple": (150, 60, 200), "white": (240, 240, 240)}


def _encode(path: str | os.PathLike, frames, *, width: int, height: int, rate, codec: str,
            options: dict[str, str], gop: int | None = None) -> str:
    """Encode uint8 [H, W, 3] RGB ``frames`` (any iterable) into ``path`` with PyAV."""
    import av

    path = os.fspath(path)
    with av.open(path, "w") as container:
        stream = container.add_stream(ENCODERS[codec], rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        stream.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 4.0) -> None:
    """uint8 [n, H, W, 3] -> an H.264 mp4 (H and W even; crf 18, ultrafast)."""
    _encode(path, frames, width=frames.shape[2], height=frames.shape[1], rate=int(fps),
            codec="h264", options={"crf": "18", "preset": "ultrafast"})


def colour_phases(rng: np.random.Generator, names: list[str], phases: int, n_frames: int,
                  size: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``phases`` solid colours drawn from ``names`` (keys of ``COLOURS``), one after another.

    Returns uint8 frames [n_frames, size, size, 3], the colours in order, and the ``phases - 1``
    cut frames (sorted, each in ``[2, n_frames - 2)``)."""
    order = rng.permutation(len(names))[:phases]
    cuts = np.sort(rng.choice(np.arange(2, n_frames - 2), phases - 1, replace=False))
    colours = [names[i] for i in order]
    frames = np.zeros((n_frames, size, size, 3), np.uint8)
    for colour, start, end in zip(colours, [0, *cuts], [*cuts, n_frames]):
        frames[start:end] = COLOURS[colour]
    return frames, colours, cuts


def _blocks(height: int, width: int):
    bh, bw = height // GRID_ROWS, width // GRID_COLS
    for b in range(BITS):
        r, c = divmod(b, GRID_COLS)
        yield b, slice(r * bh, (r + 1) * bh), slice(c * bw, (c + 1) * bw)


def index_frame(i: int, height: int, width: int, texture: np.ndarray | None = None
                ) -> np.ndarray:
    """uint8 [height, width, 3] RGB showing ``i`` (0 <= i < 2**BITS)."""
    if not 0 <= i < 2 ** BITS:
        raise ValueError(f"frame index {i} does not fit in {BITS} bits")
    img = np.full((height, width), DARK, dtype=np.int16)
    for b, rows, cols in _blocks(height, width):
        if (i >> b) & 1:
            img[rows, cols] = BRIGHT
    if texture is not None:
        img += texture
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def frame_number(frame) -> int:
    """The index a decoded ``index_frame`` shows (uint8 [H, W, 3] array or tensor)."""
    img = np.asarray(frame)[..., :3].astype(np.float32).mean(axis=-1)
    height, width = img.shape
    value = 0
    for b, rows, cols in _blocks(height, width):
        block = img[rows, cols]
        mh, mw = max(1, block.shape[0] // 4), max(1, block.shape[1] // 4)
        if block[mh:-mh or None, mw:-mw or None].mean() > (BRIGHT + DARK) / 2:
            value |= 1 << b
    return value


def _textures(height: int, width: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    wave = (25 * np.sin(xx / 23.0) * np.cos(yy / 17.0)).astype(np.int16)
    return [wave + rng.integers(-8, 9, size=(height, width), dtype=np.int16)
            for _ in range(count)]


def write_index_video(path: str | os.PathLike, num_frames: int, *, width: int = 64,
                      height: int = 48, fps: float = 10.0, codec: str = "h264", gop: int = 8,
                      texture: bool = False, bframes: bool = True, seed: int = 0) -> str:
    """Write an index video with PyAV: ``codec`` in ``ENCODERS`` (H.264 in .mp4, VP8/VP9 in
    .webm, MJPEG in .avi or .mkv, as ``path`` says), a keyframe every ``gop`` frames, B-frames
    for H.264 when ``bframes``. Fast encoder settings (x264 ultrafast-like, VP9 realtime,
    cpu-used 8). Returns the path."""
    textures = _textures(height, width, 8, seed) if texture else None

    def frames():
        for i in range(num_frames):
            tex = None
            if textures is not None:
                tex = np.roll(textures[i % len(textures)], shift=3 * i, axis=1)
            yield index_frame(i, height, width, tex)

    return _encode(path, frames(), width=width, height=height,
                   rate=Fraction(fps).limit_denominator(1001), codec=codec,
                   options=_encoder_options(codec, bframes), gop=gop)


def _encoder_options(codec: str, bframes: bool) -> dict[str, str]:
    if codec == "h264":
        return {"preset": "ultrafast" if not bframes else "veryfast",
                "bf": "3" if bframes else "0", "threads": "2"}
    if codec in ("vp9", "vp8"):
        return {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "threads": "2"}
    return {}
