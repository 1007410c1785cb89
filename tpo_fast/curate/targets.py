"""Query targets: short segments of a video (localized TPO) and the whole video (comprehensive).

Target ids are stable across runs and world sizes: ``<video id>#L<k>`` and ``<video id>#C``.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from tpo_fast.curate.manifest import VideoEntry


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' text (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Target:
    id: str
    video_id: str
    kind: str  # "localized" | "comprehensive"
    t0: float  # seconds
    t1: float

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "t0": self.t0, "t1": self.t1}


def make_targets(entry: VideoEntry, duration: float, per_video: int, lengths: list[float],
                 comprehensive: bool, seed: int) -> list[Target]:
    """The targets of one video: the manifest's segments (else ``per_video`` segments of the
    given lengths, placed by a seeded draw) and, optionally, the whole video."""
    if entry.segments is not None:
        spans = [(min(t0, duration), min(t1, duration)) for t0, t1 in entry.segments]
        spans = [(t0, t1) for t0, t1 in spans if t1 > t0]
    else:
        spans = _draw_segments(duration, per_video, lengths, stable_seed(seed, entry.id, "seg"))
    targets = [Target(f"{entry.id}#L{k}", entry.id, "localized", round(t0, 3), round(t1, 3))
               for k, (t0, t1) in enumerate(spans)]
    if comprehensive:
        targets.append(Target(f"{entry.id}#C", entry.id, "comprehensive", 0.0, round(duration, 3)))
    return targets


def _draw_segments(duration: float, count: int, lengths: list[float],
                   seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    spans = []
    for k in range(count):
        length = min(lengths[k % len(lengths)], duration)
        t0 = rng.uniform(0.0, duration - length)
        spans.append((t0, t0 + length))
    return spans
