"""Frame plans: which frames of a video a TPO sample sees, with a timestamp per frame.

Frame ``i`` is shown at ``i / fps`` seconds (its presentation time relative to the first frame),
and a video of ``N`` frames lasts ``N / fps`` seconds. Every plan spreads ``n`` frames evenly
over a set of candidate frames ``c_0 < ... < c_{M-1}`` by taking ``c[round(k (M-1) / (n-1))]``
for ``k = 0..n-1`` (``n = 1`` takes ``c_0``; rounding is half-up).

Policy when ``n`` exceeds the candidates (``n > M``): the same formula, so candidates repeat
(duplicates appear, evenly spread, in non-decreasing order); it is never an error. ``decode``
returns duplicated frames as asked.

Errors (``ValueError``): ``n < 1``; a zero-length video (no frames or fps <= 0); a segment with
``t1 <= t0``, starting before 0 or ending after the video (half a frame period of slack for
rounded annotations), or containing no frame; a complement that leaves no frame; explicit
indices outside ``[0, num_frames)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tpo_fast.video.info import VideoInfo

KINDS = ("uniform", "segment", "complement", "incomplete", "downsample", "explicit")


def spread(count: int, n: int) -> np.ndarray:
    """Positions ``round(k (count-1) / (n-1))``, k = 0..n-1, into ``count`` candidates:
    int64 [n], non-decreasing, first 0 and (for n > 1) last ``count - 1``."""
    if n < 1:
        raise ValueError(f"need at least one frame, got n={n}")
    if count < 1:
        raise ValueError("no candidate frames to choose from")
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    # Integer arithmetic: floor((2 k (count-1) + (n-1)) / (2 (n-1))) is round-half-up, exactly.
    k = np.arange(n, dtype=np.int64)
    return (2 * k * (count - 1) + (n - 1)) // (2 * (n - 1))


def _check_video(info: VideoInfo) -> None:
    if info.num_frames < 1 or not info.fps > 0:
        raise ValueError(f"{info.path}: zero-length video ({info.num_frames} frames at "
                         f"{info.fps} fps)")


def _segment_frames(info: VideoInfo, t0: float, t1: float) -> tuple[int, int]:
    """First and last frame index whose timestamp lies in [t0, t1] (inclusive)."""
    _check_video(info)
    t0, t1 = float(t0), float(t1)
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError(f"segment bounds must be finite, got [{t0}, {t1}]")
    if t1 <= t0:
        raise ValueError(f"empty segment [{t0}, {t1}]: t1 must be greater than t0")
    slack = 0.5 / info.fps
    if t0 < 0 or t1 > info.duration + slack:
        raise ValueError(f"segment [{t0}, {t1}] s is outside the video "
                         f"[0, {info.duration:.6g}] s ({info.path})")
    eps = 1e-9  # seconds: a frame within a nanosecond of a bound counts as inside
    first = max(0, math.ceil((t0 - eps) * info.fps))
    last = min(info.num_frames - 1, math.floor((t1 + eps) * info.fps))
    if first > last:
        raise ValueError(f"segment [{t0}, {t1}] s contains no frame (frames are {1 / info.fps:.4g}"
                         f" s apart, {info.path})")
    return first, last


@dataclass(frozen=True)
class FramePlan:
    """Frame indices (presentation order, 0-based) and their timestamps in seconds.

    ``kind`` is one of ``KINDS``; ``params`` holds the arguments that made the plan; ``info`` is
    the video's ``VideoInfo`` (None for a plan rebuilt with ``from_dict`` without one).
    """

    kind: str
    indices: tuple[int, ...]
    timestamps: tuple[float, ...]
    info: VideoInfo | None = field(default=None, compare=False)
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown plan kind {self.kind!r}; expected one of {KINDS}")
        if len(self.indices) != len(self.timestamps):
            raise ValueError(f"{len(self.indices)} indices but {len(self.timestamps)} timestamps")
        if not self.indices:
            raise ValueError("a frame plan needs at least one frame")

    def __len__(self) -> int:
        return len(self.indices)

    def __hash__(self) -> int:  # params is a dict: hash what identifies the frames
        return hash((self.kind, self.indices, self.timestamps))

    # -- constructors ------------------------------------------------------------------------

    @classmethod
    def _make(cls, kind: str, info: VideoInfo, indices: np.ndarray, **params: Any) -> FramePlan:
        idx = tuple(int(i) for i in indices)
        stamps = tuple(i / info.fps for i in idx)
        return cls(kind, idx, stamps, info, params)

    @classmethod
    def uniform(cls, info: VideoInfo, n: int) -> FramePlan:
        """``n`` frames evenly over the whole video, first and last frame included."""
        _check_video(info)
        return cls._make("uniform", info, spread(info.num_frames, n), n=n)

    @classmethod
    def segment(cls, info: VideoInfo, t0: float, t1: float, n: int) -> FramePlan:
        """``n`` frames evenly over the frames whose timestamps lie in ``[t0, t1]`` seconds."""
        first, last = _segment_frames(info, t0, t1)
        return cls._make("segment", info, first + spread(last - first + 1, n), t0=t0, t1=t1, n=n)

    @classmethod
    def complement(cls, info: VideoInfo, t0: float, t1: float, n: int) -> FramePlan:
        """``n`` frames evenly over every frame *outside* ``[t0, t1]`` (TPO's "irrelevant"
        rejected input): the frames before and after the segment, joined, then spread."""
        first, last = _segment_frames(info, t0, t1)
        gap = last - first + 1
        remaining = info.num_frames - gap
        if remaining < 1:
            raise ValueError(f"segment [{t0}, {t1}] s covers the whole video: its complement "
                             f"is empty ({info.path})")
        pos = spread(remaining, n)
        return cls._make("complement", info, np.where(pos < first, pos, pos + gap),
                         t0=t0, t1=t1, n=n)

    @classmethod
    def incomplete(cls, info: VideoInfo, t0: float, t1: float, n: int, keep: float = 0.5,
                   seed: int = 0) -> FramePlan:
        """A random ``keep`` fraction (``max(1, round(keep * n))`` frames) of
        ``segment(t0, t1, n)``, in time order; the same for the same seed (TPO's
        "incomplete" rejected input)."""
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        full = cls.segment(info, t0, t1, n).indices
        count = max(1, math.floor(keep * n + 0.5))
        chosen = np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
        return cls._make("incomplete", info, np.asarray(full)[chosen], t0=t0, t1=t1, n=n,
                         keep=keep, seed=seed)

    @classmethod
    def downsample(cls, info: VideoInfo, n: int, factor: int) -> FramePlan:
        """Every ``factor``-th frame of ``uniform(n)`` (TPO's comprehensive rejected input):
        ``ceil(n / factor)`` frames."""
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
        full = cls.uniform(info, n).indices
        return cls._make("downsample", info, np.asarray(full)[::factor], n=n, factor=factor)

    @classmethod
    def explicit(cls, info: VideoInfo, indices: Sequence[int]) -> FramePlan:
        """Exactly ``indices`` (any order, duplicates allowed), each in ``[0, num_frames)``."""
        _check_video(info)
        idx = np.asarray(list(indices))
        if idx.size == 0:
            raise ValueError("explicit plan needs at least one index")
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"frame indices must be a flat list of integers, got {indices!r}")
        bad = idx[(idx < 0) | (idx >= info.num_frames)]
        if bad.size:
            raise ValueError(f"frame indices {bad.tolist()[:8]} are outside [0, "
                             f"{info.num_frames}) ({info.path})")
        return cls._make("explicit", info, idx)

    # -- provenance --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-able provenance: ``{"kind", "indices", "timestamps", "params"}``."""
        return {"kind": self.kind, "indices": list(self.indices),
                "timestamps": list(self.timestamps), "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict, info: VideoInfo | None = None) -> FramePlan:
        """The plan ``to_dict`` wrote (``info`` optional; indices checked against it if given)."""
        plan = cls(data["kind"], tuple(int(i) for i in data["indices"]),
                   tuple(float(t) for t in data["timestamps"]), info,
                   dict(data.get("params", {})))
        if info is not None and (min(plan.indices) < 0 or max(plan.indices) >= info.num_frames):
            raise ValueError(f"plan indices exceed the video's {info.num_frames} frames")
        return plan
