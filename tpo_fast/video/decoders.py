"""``decode``: exactly the asked frames of a video, through one of three backends.

Backends: ``"pyav"`` (any codec FFmpeg decodes; CPU; seeking; threaded), ``"dali_cpu"``
(VP8/VP9/MJPEG, DALI's CPU decoder), ``"dali_gpu"`` (NVDEC on the target GPU) and ``"auto"``: a
CUDA ``device`` with DALI importable and a codec NVDEC decodes -> dali_gpu; otherwise pyav (on
a CPU, PyAV measured about 2x faster than DALI's CPU decoder: benchmarks/results/video-*.json).
When DALI does not import, "auto" uses PyAV and logs one warning.

Frames decoded on the CPU for a CUDA ``device`` are pinned and copied without blocking, so a
decoding thread hands the GPU uint8 frames and the model's preprocessing runs there.
``decode_counts()`` counts the decodes per backend that produced them (and PyAV fallbacks).

A video given as image frames (``VideoInfo.codec == "frames"``, ``frame_folder.py``) is read
with Pillow whatever the backend, counted as "frames".
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Sequence

import torch

from tpo_fast.video.dali_backend import (
    DALI_CPU_CODECS,
    DALI_GPU_CODECS,
    dali_available,
    decode_dali,
)
from tpo_fast.video.errors import VideoDecodeError
from tpo_fast.video.frame_folder import FRAME_CODEC, decode_frames
from tpo_fast.video.info import VideoInfo, probe
from tpo_fast.video.pyav_backend import _check_indices, decode_pyav
from tpo_fast.video.settings import DEFAULT_THREADS, VIDEO_BACKENDS, resolve_device

logger = logging.getLogger(__name__)
BACKENDS = VIDEO_BACKENDS
_warned_no_dali = False
_counts: Counter = Counter()
_counts_lock = threading.Lock()


def decode_counts() -> Counter:
    """A copy of the decode counters: videos decoded per backend ("pyav", "dali_cpu",
    "dali_gpu") and "fallback" (DALI could not read the file; PyAV decoded it)."""
    with _counts_lock:
        return Counter(_counts)


def reset_decode_counts() -> None:
    with _counts_lock:
        _counts.clear()


def _count(key: str, n: int = 1) -> None:
    with _counts_lock:
        _counts[key] += n


def _is_cuda(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _dali_or_warn() -> bool:
    global _warned_no_dali
    if dali_available():
        return True
    if not _warned_no_dali:
        logger.warning("nvidia.dali does not import: decoding with PyAV instead")
        _warned_no_dali = True
    return False


def choose_backend(info: VideoInfo, device: torch.device | str | None = None) -> str:
    """The backend ``"auto"`` picks for this video and target device: DALI on the GPU for a
    CUDA target (codecs NVDEC decodes), else PyAV."""
    wants_gpu = _is_cuda(device) and torch.cuda.is_available()
    if wants_gpu and info.codec in DALI_GPU_CODECS and _dali_or_warn():
        return "dali_gpu"
    return "pyav"


def to_device(frames: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """``frames`` on ``device``: CPU uint8 frames for a GPU are pinned (in the calling, i.e.
    decoding, thread) and copied without blocking."""
    if device is None or frames.device == torch.device(device):
        return frames
    if _is_cuda(device) and frames.device.type == "cpu":
        return frames.pin_memory().to(device, non_blocking=True)
    return frames.to(device)


def _info(source) -> VideoInfo:
    return source if isinstance(source, VideoInfo) else probe(source)


def _check_backend(backend: str, info: VideoInfo, device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend == "auto":
        return choose_backend(info, device)
    if backend == "dali_cpu" and info.codec not in DALI_CPU_CODECS:
        raise VideoDecodeError(info.path, f"codec {info.codec!r} is not supported by DALI's CPU "
                                          f"decoder ({sorted(DALI_CPU_CODECS)}); use pyav")
    if backend == "dali_gpu":
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'dali_gpu' needs a CUDA device")
        if info.codec not in DALI_GPU_CODECS:
            raise VideoDecodeError(info.path, f"codec {info.codec!r} is not supported by NVDEC "
                                              "through DALI; use pyav")
    return backend


def _explicit(device) -> torch.device | None:
    """``device`` with an explicit CUDA index (this thread's current device for "cuda")."""
    return None if device is None else resolve_device(device)


def _decode_one(info: VideoInfo, frame_indices, chosen: str, device, threads: int):
    if chosen == "pyav":
        frames = torch.from_numpy(decode_pyav(info.path, frame_indices, threads=threads))
    else:
        (frames,) = decode_dali([info.path], [frame_indices], gpu=chosen == "dali_gpu",
                                device=device, num_threads=threads or DEFAULT_THREADS)
        if frames.shape[0] != len(frame_indices):
            raise VideoDecodeError(info.path, f"DALI returned {frames.shape[0]} frames for "
                                              f"{len(frame_indices)} indices")
    _count(chosen)
    return frames


def _fall_back(info: VideoInfo, frame_indices, backend: str, error: VideoDecodeError,
               threads: int) -> torch.Tensor:
    _count("fallback")
    logger.warning("%s cannot decode %s (%s): decoding it with PyAV (%d fallbacks so far)",
                   backend, info.path, error.reason, decode_counts()["fallback"])
    return _decode_one(info, frame_indices, "pyav", None, threads)


def decode(source: str | os.PathLike | VideoInfo, frame_indices: Sequence[int], *,
           backend: str = "auto", device: torch.device | str | None = None,
           threads: int = DEFAULT_THREADS, fallback: bool = False) -> torch.Tensor:
    """Frames ``frame_indices`` (presentation order, 0-based; any order, duplicates allowed)
    of a video as uint8 [n, H, W, 3] RGB, on ``device`` (CPU when None).

    ``threads`` sets PyAV's decoder threads (0: FFmpeg's choice, i.e. every core) and DALI's
    CPU threads. With ``fallback``, a file a DALI backend cannot decode (its codec, or the
    file) is decoded with PyAV instead, counted in ``decode_counts()["fallback"]`` with a
    warning. Raises ``ValueError`` for indices outside the video or an unknown backend and
    ``VideoDecodeError`` (naming the file) for anything the file itself causes."""
    info = _info(source)
    _check_indices(info, frame_indices)
    device = _explicit(device)
    if info.codec == FRAME_CODEC:  # images, not a stream: no decoder backend applies
        frames = decode_frames(info, frame_indices)
        _count("frames")
        return to_device(frames, device)
    chosen = None
    try:
        chosen = _check_backend(backend, info, device)
        frames = _decode_one(info, frame_indices, chosen, device, threads)
    except VideoDecodeError as e:
        if not fallback or chosen == "pyav":
            raise
        frames = _fall_back(info, frame_indices, "DALI", e, threads)
    return to_device(frames, device)


def decode_many(sources: Sequence[str | os.PathLike | VideoInfo],
                frame_indices: Sequence[Sequence[int]], *, backend: str = "auto",
                device: torch.device | str | None = None, threads: int = DEFAULT_THREADS,
                fallback: bool = False) -> list[torch.Tensor]:
    """``decode`` for many videos: DALI backends decode them in batched pipeline runs (all
    videos must resolve to the same DALI backend); PyAV decodes them one after another."""
    if len(sources) != len(frame_indices):
        raise ValueError(f"{len(sources)} sources but {len(frame_indices)} index lists")
    infos = [_info(s) for s in sources]
    for info, idx in zip(infos, frame_indices):
        _check_indices(info, idx)
    device = _explicit(device)
    if not fallback and not any(info.codec == FRAME_CODEC for info in infos):
        chosen = {_check_backend(backend, info, device) for info in infos}
        if len(chosen) == 1 and next(iter(chosen)) != "pyav":
            gpu = chosen == {"dali_gpu"}
            out = decode_dali([i.path for i in infos], frame_indices, gpu=gpu, device=device,
                              num_threads=threads or DEFAULT_THREADS)
            _count(next(iter(chosen)), len(out))
            return [to_device(o, device) for o in out]
    return [decode(i, idx, backend=backend, device=device, threads=threads, fallback=fallback)
            for i, idx in zip(infos, frame_indices)]
