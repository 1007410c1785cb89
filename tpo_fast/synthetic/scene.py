"""Scenes: shapes that appear, move, change colour and disappear at known times, and their frames.

A scene is planned from a random generator (``plan_scene``) and rendered to uint8 RGB frames
(``render``). Layout and timing are chosen so a tiny model can read it at low resolution:

* each shape lives in its own quadrant of the frame (shapes never overlap), is ``size // 4``
  pixels wide by default, and moves by the rest of its quadrant (``size // 4`` pixels);
* every colour of the palette is used by at most one shape per video, so "the red circle" names
  one shape; colours are saturated and far apart, on a dark background;
* event times are whole seconds; every event lasts at least 1 s (``fps`` frames); no two events
  start at the same second, so "first", "right after" and "in what order" have one answer;
  the first event starts at 1 s or later and the last one ends 1 s or more before the end.

Event spans (seconds, ``start < end``), chosen so the shape is on screen during the whole span:

* ``appear``    [a, a + 1]: the shape is absent before ``a`` and present from ``a``;
* ``disappear`` [d - 1, d]: the shape is present until ``d`` and absent from ``d``;
* ``turn``      [c - 1, c + 1]: old colour before ``c``, new colour from ``c``;
* ``move``      [m0, m1]: the shape slides linearly, one quadrant-width minus its size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30), "green": (30, 200, 50), "blue": (40, 80, 250),
    "yellow": (245, 230, 30), "purple": (170, 50, 230), "orange": (255, 140, 0),
    "white": (245, 245, 245),
}
BACKGROUND: tuple[int, int, int] = (16, 16, 24)
SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
ACTIONS: tuple[str, ...] = ("appear", "move", "turn", "disappear")

# Present tense for event texts, base form after "did", past tense in questions.
EVENT_FORMS: dict[str, tuple[str, str, str]] = {
    "appear": ("{article} {colour} {shape} appears", "the {colour} {shape} appear",
               "the {colour} {shape} appeared"),
    "move": ("the {colour} {shape} moves {detail}", "the {colour} {shape} move {detail}",
             "the {colour} {shape} moved {detail}"),
    "turn": ("the {colour} {shape} turns {detail}", "the {colour} {shape} turn {detail}",
             "the {colour} {shape} turned {detail}"),
    "disappear": ("the {colour} {shape} disappears", "the {colour} {shape} disappear",
                  "the {colour} {shape} disappeared"),
}


def indefinite(word: str) -> str:
    """The indefinite article for ``word``: "an" before a vowel ("an orange circle")."""
    return "an" if word[:1] in "aeiou" else "a"


@dataclass(frozen=True)
class Event:
    """One ground-truth event: ``action`` of shape ``owner`` (its index in the scene), which is
    a ``colour`` ``shape`` when the event starts; ``detail`` is the direction of a move or the
    new colour of a turn."""

    start: float
    end: float
    action: str
    owner: int
    shape: str
    colour: str
    detail: str = ""

    def _form(self, tense: int) -> str:
        return EVENT_FORMS[self.action][tense].format(
            article=indefinite(self.colour), colour=self.colour, shape=self.shape,
            detail=self.detail)

    @property
    def text(self) -> str:
        """Present tense, as written to the manifest: "the red circle moves left"."""
        return self._form(0)

    @property
    def base(self) -> str:
        """Base form, after "did": "the red circle move left"."""
        return self._form(1)

    @property
    def past(self) -> str:
        """Past tense, in questions: "the red circle moved left"."""
        return self._form(2)

    def to_dict(self) -> dict:
        """The manifest's ``{"start", "end", "text"}``."""
        return {"start": self.start, "end": self.end, "text": self.text}


@dataclass
class ShapeTrack:
    """Where and how one shape is drawn over time (positions are offsets inside its quadrant)."""

    kind: str
    colours: list[str]  # the colour it appears with, then the colour it turns to (if any)
    origin: tuple[int, int]  # top-left corner (x, y) of its quadrant
    position: tuple[int, int]  # (x, y) offset before any move
    appear: float
    disappear: float | None = None
    turn_at: float | None = None
    move: tuple[float, float, tuple[int, int]] | None = None  # (t0, t1, (dx, dy) in pixels)

    def state(self, t: float) -> tuple[str, tuple[int, int]] | None:
        """(colour, top-left pixel) at time ``t``, or None while the shape is not on screen."""
        eps = 1e-9
        if t + eps < self.appear or (self.disappear is not None and t + eps >= self.disappear):
            return None
        turned = self.turn_at is not None and t + eps >= self.turn_at
        colour = self.colours[1] if turned else self.colours[0]
        x, y = self.position
        if self.move is not None and t + eps >= self.move[0]:
            t0, t1, (dx, dy) = self.move
            frac = min(1.0, (t - t0) / (t1 - t0))
            x, y = x + round(frac * dx), y + round(frac * dy)
        return colour, (self.origin[0] + x, self.origin[1] + y)


@dataclass
class Scene:
    """A planned video: its tracks (for drawing) and its events (the ground truth)."""

    duration: float
    fps: float
    size: int
    shape_px: int
    tracks: list[ShapeTrack]
    events: list[Event] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return round(self.duration * self.fps)


# ---- planning ------------------------------------------------------------------------------

_DIRECTION_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _action_plans(rng: np.random.Generator, n_shapes: int) -> list[list[str]]:
    """Per shape: "appear", then a shuffled subset of "move" and "turn", maybe "disappear".
    A turn needs a colour no other shape uses, so turns stop when the palette runs out."""
    spare = len(PALETTE) - n_shapes
    plans = []
    for _ in range(n_shapes):
        middle = [a for a in ("move", "turn") if rng.random() < 0.5]
        if "turn" in middle:
            if spare == 0:
                middle.remove("turn")
            else:
                spare -= 1
        rng.shuffle(middle)
        plans.append(["appear", *middle] + (["disappear"] if rng.random() < 0.5 else []))
    return plans


def _interleave(rng: np.random.Generator, plans: list[list[str]]) -> list[tuple[int, str]]:
    """A uniformly random interleaving of the shapes' action lists, each kept in order."""
    left = [list(p) for p in plans]
    out = []
    while any(left):
        counts = np.array([len(p) for p in left], dtype=float)
        i = int(rng.choice(len(left), p=counts / counts.sum()))
        out.append((i, left[i].pop(0)))
    return out


def _schedule(rng: np.random.Generator, plans: list[list[str]],
              duration: int) -> list[tuple[int, str, int, int]] | None:
    """(shape, action, start, end) in whole seconds with strictly increasing starts, each shape's
    events one after the other; None when they do not end a second before ``duration`` (so the
    last frames show every event's outcome: the shape gone, moved all the way)."""
    free = [0] * len(plans)
    previous = 0
    out = []
    for i, action in _interleave(rng, plans):
        length = {"appear": 1, "disappear": 1, "turn": 2}.get(action) or int(rng.integers(1, 3))
        start = max(previous + 1, free[i]) + int(rng.integers(0, 2))
        free[i], previous = start + length, start
        out.append((i, action, start, start + length))
    return out if max(end for *_, end in out) <= duration - 1 else None


def _drop_one(rng: np.random.Generator, plans: list[list[str]]) -> list[list[str]]:
    """The plans with one optional action removed, or the last shape when none is left."""
    optional = [(i, k) for i, p in enumerate(plans) for k in range(1, len(p))]
    if not optional:
        return plans[:-1]
    i, k = optional[int(rng.integers(len(optional)))]
    return [p if j != i else p[:k] + p[k + 1:] for j, p in enumerate(plans)]


def _fit(rng: np.random.Generator, plans: list[list[str]],
         duration: int) -> tuple[list[list[str]], list[tuple[int, str, int, int]]]:
    """Schedule the plans, dropping actions until they fit in ``duration``."""
    while True:
        timed = _schedule(rng, plans, duration)
        if timed is not None:
            return plans, timed
        plans = _drop_one(rng, plans)


def _start_position(rng: np.random.Generator, travel: int,
                    direction: str | None) -> tuple[int, int]:
    """An offset inside the quadrant from which ``direction`` has the full travel."""
    x, y = (int(v) for v in rng.integers(0, travel + 1, size=2))
    if direction is not None:
        dx, dy = _DIRECTION_STEP[direction]
        x = travel if dx < 0 else 0 if dx > 0 else x
        y = travel if dy < 0 else 0 if dy > 0 else y
    return x, y


def _build_tracks(rng: np.random.Generator, plans: list[list[str]],
                  timed: list[tuple[int, str, int, int]], size: int,
                  shape_px: int) -> tuple[list[ShapeTrack], list[Event]]:
    """Tracks and events of the scheduled actions: kinds, colours, quadrants, directions."""
    n = len(plans)
    colours = [str(c) for c in rng.permutation(list(PALETTE))]
    kinds = [SHAPE_KINDS[int(k)] for k in rng.integers(0, len(SHAPE_KINDS), size=n)]
    quadrants = rng.permutation(4)[:n]
    half, travel = size // 2, size // 2 - shape_px
    directions = [DIRECTIONS[int(d)] for d in rng.integers(0, len(DIRECTIONS), size=n)]
    tracks = []
    for i in range(n):
        moves = "move" in plans[i]
        q = int(quadrants[i])
        tracks.append(ShapeTrack(kind=kinds[i], colours=[colours[i]],
                                 origin=((q % 2) * half, (q // 2) * half),
                                 position=_start_position(rng, travel,
                                                          directions[i] if moves else None),
                                 appear=0.0))
    spare = iter(colours[n:])
    events = []
    for i, action, start, end in timed:
        track = tracks[i]
        colour, detail = track.colours[-1], ""  # the colour when the event starts
        if action == "appear":
            track.appear = float(start)
        elif action == "disappear":
            track.disappear = float(end)
        elif action == "turn":
            detail = next(spare)
            track.colours.append(detail)
            track.turn_at = float(start + 1)
        else:
            detail = directions[i]
            dx, dy = _DIRECTION_STEP[detail]
            track.move = (float(start), float(end), (dx * travel, dy * travel))
        events.append(Event(float(start), float(end), action, i, track.kind, colour, detail))
    return tracks, events


def plan_scene(rng: np.random.Generator, *, size: int = 32, fps: float = 4.0,
               seconds: tuple[int, int] = (10, 16), max_shapes: int = 4,
               shape_px: int | None = None) -> Scene:
    """A random scene of 1..``max_shapes`` shapes over a whole number of seconds drawn from
    ``seconds`` (inclusive); events sorted by start."""
    if not 1 <= max_shapes <= 4:
        raise ValueError(f"max_shapes must be in 1..4 (one quadrant each), got {max_shapes}")
    shape_px = size // 4 if shape_px is None else shape_px
    if not 3 <= shape_px < size // 2:
        raise ValueError(f"shape_px must be in 3..{size // 2 - 1} for size {size}, got {shape_px}")
    duration = int(rng.integers(seconds[0], seconds[1] + 1))
    plans = _action_plans(rng, int(rng.integers(1, max_shapes + 1)))
    plans, timed = _fit(rng, plans, duration)
    tracks, events = _build_tracks(rng, plans, timed, size, shape_px)
    return Scene(float(duration), fps, size, shape_px, tracks, events)


# ---- rendering -----------------------------------------------------------------------------

def shape_mask(kind: str, px: int) -> np.ndarray:
    """bool [px, px]: a filled circle, square or upward triangle."""
    yy, xx = np.mgrid[0:px, 0:px] + 0.5
    if kind == "square":
        return np.ones((px, px), bool)
    if kind == "circle":
        return (xx - px / 2) ** 2 + (yy - px / 2) ** 2 <= (px / 2) ** 2
    if kind == "triangle":  # apex at the top centre, base along the bottom row
        return np.abs(xx - px / 2) <= yy / 2
    raise ValueError(f"unknown shape kind {kind!r}")


def render(scene: Scene) -> np.ndarray:
    """uint8 [n_frames, size, size, 3] RGB frames of the scene; frame k shows time k / fps."""
    frames = np.empty((scene.n_frames, scene.size, scene.size, 3), np.uint8)
    frames[:] = BACKGROUND
    masks = {kind: shape_mask(kind, scene.shape_px) for kind in SHAPE_KINDS}
    px = scene.shape_px
    for k in range(scene.n_frames):
        for track in scene.tracks:
            state = track.state(k / scene.fps)
            if state is None:
                continue
            colour, (x, y) = state
            frames[k, y:y + px, x:x + px][masks[track.kind]] = PALETTE[colour]
    return frames
