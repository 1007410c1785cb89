"""PyAV (FFmpeg) backend: the frame index behind ``probe`` and a seeking, threaded decoder.

Frame ``i`` is the ``i``-th frame in presentation order. The index is built by demuxing the
video stream once (no decoding): the sorted packet timestamps give frame ``i``'s pts, and the
keyframe packets give where decoding can start. ``decode_pyav`` groups the wanted frames by
keyframe: it seeks to the keyframe at or before the next wanted frame, decodes forward, and
seeks again only when another keyframe lies before the next wanted frame, so a 32-frame plan
of a long video decodes a few GOPs, not the whole file.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from tpo_fast.video.errors import VideoDecodeError
from tpo_fast.video.info import VideoInfo

_CACHE_SIZE = 512
_cache: OrderedDict[tuple, FrameIndex] = OrderedDict()
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class FrameIndex:
    """``info`` plus frame ``i``'s presentation timestamp ``pts[i]`` (stream time base, int64
    [N], sorted) and the keyframes' timestamps ``keyframe_pts`` (sorted); ``pts`` is None when
    the container has no packet timestamps (decoding then counts frames from the start)."""

    info: VideoInfo
    pts: np.ndarray | None
    keyframe_pts: np.ndarray | None


def _av():
    import av

    return av


def _stat_key(path: str) -> tuple:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoDecodeError(path, "file not found") from None
    except OSError as e:
        raise VideoDecodeError(path, f"cannot stat: {e}") from None
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "not a regular file")
    return (path, st.st_mtime_ns, st.st_size)


def frame_index(path: str | os.PathLike) -> FrameIndex:
    """The (cached) ``FrameIndex`` of ``path``; rebuilt when the file changes."""
    path = os.fspath(path)
    key = _stat_key(path)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    index = _build_index(path)
    with _cache_lock:
        _cache[key] = index
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return index


def _build_index(path: str) -> FrameIndex:
    av = _av()
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context.name if stream.codec_context is not None else None
            if not codec:
                raise VideoDecodeError(path, "unsupported codec (no FFmpeg decoder)")
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            pts, keys, missing = [], [], False
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker
                    continue
                t = packet.pts if packet.pts is not None else packet.dts
                missing |= t is None
                pts.append(t)
                if packet.is_keyframe:
                    keys.append(t)
            width, height = stream.codec_context.width, stream.codec_context.height
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise VideoDecodeError(path, f"cannot read the container: {e}") from None
    n = len(pts)
    info = VideoInfo(path=path, fps=fps, num_frames=n, duration=n / fps if fps > 0 else 0.0,
                     codec=codec, width=int(width), height=int(height))
    if missing or not keys:
        return FrameIndex(info, None, None)
    return FrameIndex(info, np.sort(np.asarray(pts, np.int64)),
                      np.unique(np.asarray(keys, np.int64)))


def _check_indices(info: VideoInfo, indices: Sequence[int]) -> np.ndarray:
    idx = np.asarray(list(indices), dtype=np.int64)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError("frame_indices must be a non-empty flat sequence of integers")
    bad = idx[(idx < 0) | (idx >= info.num_frames)]
    if bad.size:
        raise ValueError(f"frame indices {bad.tolist()[:8]} are outside [0, {info.num_frames}) "
                         f"({info.path})")
    return idx


def decode_pyav(source: str | os.PathLike | VideoInfo, frame_indices: Sequence[int], *,
                threads: int = 2) -> np.ndarray:
    """Decode exactly ``frame_indices`` (any order, duplicates allowed) of a video:
    uint8 [n, H, W, 3] RGB. ``threads``: FFmpeg decoder threads (0 = FFmpeg's choice: every core,
    which multiplies with decoding workers and ranks, so the data path passes its own).
    Raises ``ValueError`` for indices outside the video, ``VideoDecodeError`` otherwise."""
    path = source.path if isinstance(source, VideoInfo) else os.fspath(source)
    index = frame_index(path)
    idx = _check_indices(index.info, frame_indices)
    wanted = np.unique(idx)
    av = _av()
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.thread_count = threads
            if index.pts is None:
                got = _decode_sequential(container, stream, wanted)
            else:
                got = _decode_seeking(container, stream, index, wanted)
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, ValueError) as e:
        raise VideoDecodeError(path, f"decoding failed: {e}") from None
    missing = [int(i) for i in wanted if int(i) not in got]
    if missing:
        raise VideoDecodeError(path, f"frames {missing[:8]} did not decode (of "
                                     f"{index.info.num_frames} indexed)")
    shapes = {a.shape for a in got.values()}
    if len(shapes) != 1:
        raise VideoDecodeError(path, f"frame size changes inside the video: {sorted(shapes)}")
    return np.stack([got[int(i)] for i in idx])


def _rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _decode_sequential(container, stream, wanted: np.ndarray) -> dict[int, np.ndarray]:
    """Decode from the start, counting frames (containers without timestamps)."""
    targets, got = set(int(i) for i in wanted), {}
    last = int(wanted[-1])
    for i, frame in enumerate(container.decode(stream)):
        if i in targets:
            got[i] = _rgb(frame)
        if i >= last:
            break
    return got


def _decode_seeking(container, stream, index: FrameIndex, wanted: np.ndarray
                    ) -> dict[int, np.ndarray]:
    """Seek to the keyframe before each run of wanted frames and decode forward."""
    pts, keys = index.pts, index.keyframe_pts
    target_pts = pts[wanted]
    by_pts = {int(p): int(i) for p, i in zip(target_pts, wanted)}
    got: dict[int, np.ndarray] = {}
    pos, retried = 0, False
    while pos < len(wanted):
        goal = int(target_pts[pos])
        start = int(keys[max(0, np.searchsorted(keys, goal, side="right") - 1)])
        if retried:  # a seek that landed late: decode this run from the first keyframe
            start = int(keys[0])
        container.seek(start, stream=stream, backward=True, any_frame=False)
        before = pos
        pos = _decode_run(container.decode(stream), keys, target_pts, pos, start, by_pts, got)
        if pos == before:
            if retried:
                break  # reported as missing frames by the caller
            retried = True
        else:
            retried = False
    return got


def _decode_run(frames: Iterator, keys: np.ndarray, target_pts: np.ndarray, pos: int,
                start: int, by_pts: dict[int, int], got: dict[int, np.ndarray]) -> int:
    """Decode frames after a seek to ``start``; store wanted ones; return the next position in
    ``target_pts`` to look for. Stops at the end of the wanted frames, at a frame past the next
    target (a miss), or when a keyframe after the current frame precedes the next target
    (seeking is cheaper than decoding through)."""
    for frame in frames:
        t = frame.pts
        if t is None:
            continue
        goal = int(target_pts[pos])
        if t == goal:
            got[by_pts[goal]] = _rgb(frame)
            pos += 1
            if pos == len(target_pts):
                return pos
            goal = int(target_pts[pos])
        elif t > goal:
            return pos  # the wanted frame was not produced after this seek
        next_key = int(keys[max(0, np.searchsorted(keys, goal, side="right") - 1)])
        if t >= start and next_key > t:
            return pos
    return pos
