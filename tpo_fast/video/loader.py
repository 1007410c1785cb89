"""Loading for training and curation: ``load_video_inputs`` (one video -> model inputs) and
``VideoLoader`` (background decoding in threads, in order, skipping unreadable videos)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from tpo_fast.prefetch import Prefetcher
from tpo_fast.tensor_tree import pin_tensors
from tpo_fast.video.decoders import decode
from tpo_fast.video.errors import VideoDecodeError
from tpo_fast.video.info import probe
from tpo_fast.video.plans import FramePlan
from tpo_fast.video.preprocess import preprocess_video
from tpo_fast.video.settings import DEFAULT_THREADS, DecodeSettings

logger = logging.getLogger(__name__)


def resolve_plan(info, *, num_frames: int | None = None,
                 frame_indices: Sequence[int] | None = None,
                 plan: FramePlan | None = None) -> FramePlan:
    """The plan ``load_video_inputs`` uses: explicit indices > the given plan (checked against
    this video) > ``uniform(num_frames)``."""
    if frame_indices is not None:
        return FramePlan.explicit(info, frame_indices)
    if plan is not None:
        bad = [i for i in plan.indices if not 0 <= i < info.num_frames]
        if bad:
            raise ValueError(f"plan indices {bad[:8]} are outside the video's "
                             f"{info.num_frames} frames ({info.path})")
        return plan
    if num_frames is None:
        raise ValueError("give num_frames, frame_indices or plan")
    return FramePlan.uniform(info, num_frames)


def plan_sampling_fps(plan: FramePlan, video_fps: float) -> float:
    """Frames per second of a plan: ``(n-1) / (t[-1] - t[0])``, or the video's fps for a
    single instant."""
    t = plan.timestamps
    span = t[-1] - t[0]
    return (len(t) - 1) / span if len(t) > 1 and span > 0 else video_fps


def load_video_inputs(path: str | os.PathLike, model_config, *, num_frames: int | None = None,
                      frame_indices: Sequence[int] | None = None, plan: FramePlan | None = None,
                      backend: str = "auto", device: torch.device | str | None = None,
                      threads: int = DEFAULT_THREADS, fallback: bool = False,
                      settings: DecodeSettings | None = None,
                      **preprocess_kwargs: Any) -> tuple[dict, FramePlan]:
    """Probe, plan, decode and preprocess one video: ``(model inputs, the plan used)``.

    The plan is ``frame_indices`` if given, else ``plan``, else ``uniform(num_frames)``. Frames
    are decoded onto ``device`` (CPU when None) as uint8 (CPU-decoded frames are pinned and
    copied without blocking) and preprocessed there; ``settings`` (a ``DecodeSettings``)
    replaces ``backend``, ``device``, ``threads`` and ``fallback``. Extra keyword arguments go
    to ``preprocess_video`` (e.g. ``size``). A file that cannot be read, or that has no
    frames, raises ``VideoDecodeError``; bad arguments raise ``ValueError``."""
    if settings is not None:
        backend, device, threads, fallback = (settings.backend, settings.device,
                                              settings.threads, settings.fallback)
    info = probe(path)
    if info.num_frames < 1 or not info.fps > 0:
        raise VideoDecodeError(info.path, f"zero-length video ({info.num_frames} frames at "
                                          f"{info.fps} fps)")
    chosen = resolve_plan(info, num_frames=num_frames, frame_indices=frame_indices, plan=plan)
    frames = decode(info, chosen.indices, backend=backend, device=device, threads=threads,
                    fallback=fallback)
    preprocess_kwargs.setdefault("fps", plan_sampling_fps(chosen, info.fps))
    preprocess_kwargs.setdefault("duration", info.duration)
    inputs = preprocess_video(frames, model_config, timestamps=chosen.timestamps,
                              **preprocess_kwargs)
    return inputs, chosen


class VideoLoader:
    """Run ``fn(request)`` for each request in background threads and iterate
    ``(request, result)`` in request order, at most ``prefetch`` requests ahead.

    A request whose ``fn`` raises ``VideoDecodeError`` is skipped: it is logged, appended to
    ``.skipped`` as ``(request, reason)`` and summarised in one log line when the iteration
    ends. Any other exception propagates. ``num_workers=0`` runs ``fn`` in the caller's
    thread. ``pin_memory`` (default: when CUDA is available) pins the CPU tensors of each
    result in the worker, ready for a non-blocking copy to the GPU.

    Example::

        loader = VideoLoader(pairs, lambda p: load_video_inputs(p.video, cfg, plan=p.plan))
        for pair, (inputs, plan) in loader:
            ...
        print(len(loader.skipped), "videos skipped")
    """

    def __init__(self, requests: Iterable, fn: Callable[[Any], Any], *, num_workers: int = 2,
                 prefetch: int = 4, pin_memory: bool | None = None):
        if num_workers < 0 or prefetch < 1:
            raise ValueError(f"need num_workers >= 0 and prefetch >= 1, got {num_workers}, "
                             f"{prefetch}")
        self.requests, self.fn = requests, fn
        self.num_workers, self.prefetch = num_workers, prefetch
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.skipped: list[tuple[Any, str]] = []
        self.num_loaded = 0

    def _work(self, request: Any) -> Any:
        result = self.fn(request)
        return pin_tensors(result) if self.pin_memory else result

    def _skip(self, request: Any, error: VideoDecodeError) -> None:
        self.skipped.append((request, str(error)))
        logger.warning("skipping unreadable video: %s", error)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        loads = Prefetcher(self._work, self.requests, workers=self.num_workers,
                           ahead=self.prefetch, name="tpo-video")
        try:
            for request, future in loads:
                try:
                    result = future.result()
                except VideoDecodeError as e:
                    self._skip(request, e)
                    continue
                self.num_loaded += 1
                yield request, result
        finally:
            loads.close()
        if self.skipped:
            logger.warning("VideoLoader: skipped %d of %d videos (see .skipped)",
                           len(self.skipped), len(self.skipped) + self.num_loaded)
