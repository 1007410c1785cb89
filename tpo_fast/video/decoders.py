"""``decode``: exactly the asked frames of a video, through one of three backends.

Backends: ``"pyav"`` (any codec FFmpeg decodes; CPU; seeking; threaded), ``"dali_cpu"``
(VP8/VP9/MJPEG, DALI's CPU decoder), ``"dali_gpu"`` (NVDEC; unvalidated on hardware) and
``"auto"``: a CUDA ``device`` with DALI importable and a codec NVDEC decodes -> dali_gpu; a codec
in DALI-CPU's list with DALI importable -> dali_cpu; else pyav. When DALI does not import,
"auto" uses PyAV and logs one warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

from tpo_fast.video.dali_backend import (
    DALI_CPU_CODECS,
    DALI_GPU_CODECS,
    dali_available,
    decode_dali,
)
from tpo_fast.video.errors import VideoDecodeError
from tpo_fast.video.info import VideoInfo, probe
from tpo_fast.video.pyav_backend import _check_indices, decode_pyav

logger = logging.getLogger(__name__)
BACKENDS = ("auto", "pyav", "dali_cpu", "dali_gpu")
_warned_no_dali = False


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
    """The backend ``"auto"`` picks for this video and target device."""
    wants_gpu = _is_cuda(device) and torch.cuda.is_available()
    if wants_gpu and info.codec in DALI_GPU_CODECS and _dali_or_warn():
        return "dali_gpu"
    if info.codec in DALI_CPU_CODECS and _dali_or_warn():
        return "dali_cpu"
    return "pyav"


def _info(source: str | os.PathLike | VideoInfo) -> VideoInfo:
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


def decode(source: str | os.PathLike | VideoInfo, frame_indices: Sequence[int], *,
           backend: str = "auto", device: torch.device | str | None = None,
           threads: int = 0) -> torch.Tensor:
    """Frames ``frame_indices`` (presentation order, 0-based; any order, duplicates allowed)
    of a video as uint8 [n, H, W, 3] RGB, on ``device`` (CPU when None).

    ``threads`` sets PyAV's decoder threads (0: FFmpeg's choice) and DALI's CPU threads
    (0: 2). Raises ``ValueError`` for indices outside the video or an unknown backend and
    ``VideoDecodeError`` (naming the file) for anything the file itself causes."""
    info = _info(source)
    _check_indices(info, frame_indices)
    chosen = _check_backend(backend, info, device)
    if chosen == "pyav":
        frames = torch.from_numpy(decode_pyav(info.path, frame_indices, threads=threads))
    else:
        (frames,) = decode_dali([info.path], [frame_indices], gpu=chosen == "dali_gpu",
                                device=device, num_threads=threads or 2)
        if frames.shape[0] != len(frame_indices):
            raise VideoDecodeError(info.path, f"DALI returned {frames.shape[0]} frames for "
                                              f"{len(frame_indices)} indices")
    return frames.to(device) if device is not None else frames


def decode_many(sources: Sequence[str | os.PathLike | VideoInfo],
                frame_indices: Sequence[Sequence[int]], *, backend: str = "auto",
                device: torch.device | str | None = None, threads: int = 0
                ) -> list[torch.Tensor]:
    """``decode`` for many videos: DALI backends decode them in batched pipeline runs (all
    videos must resolve to the same DALI backend); PyAV decodes them one after another."""
    if len(sources) != len(frame_indices):
        raise ValueError(f"{len(sources)} sources but {len(frame_indices)} index lists")
    infos = [_info(s) for s in sources]
    for info, idx in zip(infos, frame_indices):
        _check_indices(info, idx)
    chosen = {_check_backend(backend, info, device) for info in infos}
    if len(chosen) == 1 and next(iter(chosen)) != "pyav":
        gpu = chosen == {"dali_gpu"}
        out = decode_dali([i.path for i in infos], frame_indices, gpu=gpu, device=device,
                          num_threads=threads or 2)
        return [o.to(device) if device is not None else o for o in out]
    return [decode(i, idx, backend=backend, device=device, threads=threads)
            for i, idx in zip(infos, frame_indices)]
