"""NVIDIA DALI backend: ``fn.decoders.video`` on CPU ("dali_cpu") or NVDEC ("dali_gpu").

One pipeline per (backend, device, thread) decodes a batch of in-memory videos, each with its
own list of frame indices (``frames=``: any order, repeats allowed; DALI builds a keyframe
index and seeks). Pipelines live in thread-local storage: each decoding worker builds its own
once and reuses it. The GPU is always named by an explicit index (``device_id``): a worker
thread's ``torch.cuda.current_device()`` is 0 whatever the rank. DALI 2.4's
``fn.decoders.video`` indexes the in-memory stream inside every run (``build_index``; it takes
no index from outside); what is cached per file is our own PyAV frame index (``probe``),
which routes the file and checks the indices before DALI sees it.

DALI's CPU decoder handles VP8, VP9 and MJPEG only (``DALI_CPU_CODECS``); the GPU ("mixed")
decoder adds H.264, HEVC, AV1 and MPEG-4 (``DALI_GPU_CODECS``).

The CPU path is tested here on VP9. **The GPU path (NVDEC decoding, frames handed to torch on
the GPU without a host round trip) is unvalidated on hardware**: it was written against DALI's
documented API on a machine without a GPU.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np
import torch

from tpo_fast.video.errors import VideoDecodeError

DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS = DALI_CPU_CODECS | {"h264", "hevc", "av1", "mpeg4"}
MAX_BATCH = 16  # videos per pipeline run; larger requests are split

_local = threading.local()


def dali_available() -> bool:
    """Whether ``nvidia.dali`` imports."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # a broken install can raise more than ImportError
        return False
    return True


def _build_pipeline(gpu: bool, device_id: int | None, num_threads: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=MAX_BATCH, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=1, exec_dynamic=True)
    def video_pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        return fn.decoders.video(encoded, device="mixed" if gpu else "cpu", frames=frames,
                                 pad_mode="none")

    pipe = video_pipeline()
    pipe.build()
    return pipe


def _pipeline(gpu: bool, device_id: int | None, num_threads: int):
    """This thread's pipeline for the configuration (DALI pipelines are not thread-safe)."""
    cache = getattr(_local, "pipelines", None)
    if cache is None:
        cache = _local.pipelines = {}
    key = (gpu, device_id, num_threads)
    if key not in cache:
        cache[key] = _build_pipeline(gpu, device_id, num_threads)
    return cache[key]


def _drop_pipeline(gpu: bool, device_id: int | None, num_threads: int) -> None:
    getattr(_local, "pipelines", {}).pop((gpu, device_id, num_threads), None)


def _read(path: str) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise VideoDecodeError(path, f"cannot read: {e}") from None


def _to_torch_gpu(tensor, device: torch.device) -> torch.Tensor:
    """Copy one DALI GPU sample into a new CUDA tensor (DLPack view, then a device copy:
    DALI reuses its output buffers on the next run). Unvalidated on hardware."""
    view = torch.from_dlpack(tensor)
    return view.to(device, copy=True)


def _run(paths: list[str], frames: list[np.ndarray], gpu: bool, device: torch.device | None,
         num_threads: int) -> list[torch.Tensor]:
    device_id = device.index if gpu else None
    pipe = _pipeline(gpu, device_id, num_threads)
    pipe.feed_input("encoded", [_read(p) for p in paths])
    pipe.feed_input("frames", frames)
    try:
        (out,) = pipe.run()
    except RuntimeError as e:
        _drop_pipeline(gpu, device_id, num_threads)  # do not reuse a pipeline after an error
        raise _DaliRunError(str(e)) from None
    if gpu:
        return [_to_torch_gpu(out[i], device) for i in range(len(paths))]
    return [torch.from_numpy(np.array(out[i])) for i in range(len(paths))]


class _DaliRunError(RuntimeError):
    pass


def _reason(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    useful = [ln for ln in lines if "due to" in ln or "rror" in ln.split(":")[0]]
    return "DALI: " + (useful[0] if useful else lines[0] if lines else "decoding failed")[:300]


def decode_dali(paths: Sequence[str | os.PathLike], frame_indices: Sequence[Sequence[int]], *,
                gpu: bool = False, device: torch.device | str | None = None,
                num_threads: int = 2) -> list[torch.Tensor]:
    """Decode ``frame_indices[k]`` of ``paths[k]`` for every k, up to ``MAX_BATCH`` videos per
    pipeline run: a list of uint8 [n_k, H, W, 3] tensors (CPU, or on ``device`` for
    ``gpu=True``). Indices are not range-checked here (``decode`` checks them). A run that fails
    is retried video by video so the ``VideoDecodeError`` names the file that failed."""
    paths = [os.fspath(p) for p in paths]
    frames = [np.asarray(list(f), dtype=np.int32) for f in frame_indices]
    if len(paths) != len(frames):
        raise ValueError(f"{len(paths)} paths but {len(frames)} index lists")
    dev = torch.device(device) if device is not None else None
    if gpu and (dev is None or dev.type != "cuda" or dev.index is None):
        raise ValueError(f"the DALI GPU decoder needs an explicit CUDA device (cuda:N), got "
                         f"{device!r}")
    out: list[torch.Tensor] = []
    for lo in range(0, len(paths), MAX_BATCH):
        chunk_p, chunk_f = paths[lo:lo + MAX_BATCH], frames[lo:lo + MAX_BATCH]
        try:
            out += _run(chunk_p, chunk_f, gpu, dev, num_threads)
        except _DaliRunError as e:
            if len(chunk_p) == 1:
                raise VideoDecodeError(chunk_p[0], _reason(str(e))) from None
            for p, f in zip(chunk_p, chunk_f):
                out += decode_dali([p], [f], gpu=gpu, device=dev, num_threads=num_threads)
    return out
