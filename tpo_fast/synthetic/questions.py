"""Questions about a scene's events, as multiple choice (4 options) and open answers.

Localized questions are about one moment or event (``span`` is the time range they concern);
comprehensive ones need the whole video (``span`` is None). "Appeared" always means a shape's
appearance event (a colour reached by a turn did not "appear"). Every answer is computed from
the events alone, so a test can recompute it from the manifest.

Task types (``task_type``):

* ``localized/appear_colour``  what colour was the shape that appeared between 4 and 6 seconds ?
* ``localized/appear_shape``   which shape appeared between 4 and 6 seconds ?
* ``localized/after``          what happened right after the red circle disappeared ?
  (the event with the earliest start at or after the end of the named one)
* ``localized/when``           when did the red circle move left ?
* ``localized/which_moved``    which shape moved left ?  (only when exactly one did)
* ``localized/turn_colour``    what colour did the red circle turn ?
* ``comprehensive/count``       how many shapes appeared ?
* ``comprehensive/count_moves`` how many shapes moved ?
* ``comprehensive/first_colour`` / ``last_colour``  what colour was the first shape to appear ?
* ``comprehensive/order``       in what order did the shapes appear ?  ("red then blue")
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tpo_fast.synthetic.scene import DIRECTIONS, PALETTE, SHAPE_KINDS, Event, indefinite

QUESTION_TEMPLATES: dict[str, str] = {
    "localized/appear_colour": "what colour was the shape that appeared between {t0} and {t1} "
                               "seconds ?",
    "localized/appear_shape": "which shape appeared between {t0} and {t1} seconds ?",
    "localized/after": "what happened right after {event} ?",
    "localized/when": "when did {event} ?",
    "localized/which_moved": "which shape moved {direction} ?",
    "localized/turn_colour": "what colour did the {colour} {shape} turn ?",
    "comprehensive/count": "how many shapes appeared ?",
    "comprehensive/count_moves": "how many shapes moved ?",
    "comprehensive/first_colour": "what colour was the first shape to appear ?",
    "comprehensive/last_colour": "what colour was the last shape to appear ?",
    "comprehensive/order": "in what order did the shapes appear ?",
}
# Open answers: the option filled into the task's form ("count" forms depend on the number).
ANSWER_TEMPLATES: dict[str, str] = {
    "localized/appear_colour": "it was {} .", "localized/appear_shape": "it was {} .",
    "localized/after": "{} .", "localized/when": "it happened {} .",
    "localized/which_moved": "it was {} .", "localized/turn_colour": "it turned {} .",
    "comprehensive/count": "{} shapes appeared .", "comprehensive/count_moves": "{} shapes moved .",
    "comprehensive/first_colour": "it was {} .", "comprehensive/last_colour": "it was {} .",
    "comprehensive/order": "{} .",
}
OPTION_TEMPLATES: tuple[str, ...] = ("a {colour} {shape}", "an {colour} {shape}",
                                     "the {colour} {shape}",
                                     "between {t0} and {t1} seconds", "{colour} then {colour}")
TASK_TYPES: tuple[str, ...] = tuple(QUESTION_TEMPLATES)


@dataclass(frozen=True)
class Question:
    """One question: ``options[answer]`` is right; ``wrong_text`` is the open answer built from
    another option (the rejected response of a supervised pair)."""

    task_type: str
    question: str
    options: tuple[str, str, str, str]
    answer: int
    answer_text: str
    wrong_text: str
    span: tuple[float, float] | None


@dataclass(frozen=True)
class _Draft:
    """A question before its options are drawn: the right option and distractor candidates,
    most plausible (seen in this video) first."""

    task_type: str
    fields: dict
    right: str
    plausible: list[str]
    fallback: list[str]
    span: tuple[float, float] | None = None


def open_answer(task_type: str, option: str) -> str:
    """The open answer that states ``option``: "it was red .", "1 shape appeared ."."""
    form = ANSWER_TEMPLATES[task_type]
    if option == "1" and task_type.startswith("comprehensive/count"):
        form = form.replace("shapes", "shape")
    return form.format(option)


def seconds(t: float) -> str:
    """A whole number of seconds as digits ("4"); other times with one decimal ("4.5")."""
    return str(int(t)) if float(t).is_integer() else f"{t:.1f}"


def window_text(t0: float, t1: float) -> str:
    return f"between {seconds(t0)} and {seconds(t1)} seconds"


def _appearances(events: list[Event]) -> list[Event]:
    return [e for e in events if e.action == "appear"]


def _colours_of(events: list[Event], owner: int) -> set[str]:
    """Every colour shape ``owner`` had (so a distractor never names it under another colour)."""
    return {e.colour for e in events if e.owner == owner} | {
        e.detail for e in events if e.owner == owner and e.action == "turn"}


def _video_colours(events: list[Event]) -> list[str]:
    return sorted({e.colour for e in events} | {e.detail for e in events if e.action == "turn"})


def ref(article: str, colour: str, shape: str) -> str:
    """"the red circle", or with ``article`` "a": "a red circle", "an orange circle"."""
    return f"{indefinite(colour) if article == 'a' else article} {colour} {shape}"


def _refs(events: list[Event], article: str, exclude_owner: int) -> list[str]:
    """"the red circle" for every (colour, shape) of the other shapes of the video."""
    return sorted({ref(article, c, e.shape) for e in events if e.owner != exclude_owner
                   for c in _colours_of(events, e.owner)})


def _all_refs(article: str, exclude: set[str]) -> list[str]:
    return [ref(article, c, k) for c in PALETTE for k in SHAPE_KINDS if c not in exclude]


# ---- localized -----------------------------------------------------------------------------

def _appear_window(rng: np.random.Generator, event: Event, events: list[Event],
                   duration: float) -> tuple[float, float] | None:
    """A window of whole seconds around an appearance that touches no other appearance."""
    others = [e for e in _appearances(events) if e is not event]
    options = [(max(0.0, event.start - a), min(duration, event.end + b))
               for a in (0, 1) for b in (0, 1)]
    ok = [(t0, t1) for t0, t1 in options if all(o.end < t0 or o.start > t1 for o in others)]
    return ok[int(rng.integers(len(ok)))] if ok else None


def _appear_drafts(rng: np.random.Generator, events: list[Event],
                   duration: float) -> list[_Draft]:
    drafts = []
    for e in _appearances(events):
        window = _appear_window(rng, e, events, duration)
        if window is None:
            continue
        t = {"t0": seconds(window[0]), "t1": seconds(window[1])}
        drafts.append(_Draft("localized/appear_colour", t, e.colour,
                             [c for c in _video_colours(events) if c != e.colour],
                             list(PALETTE), window))
        mine = _colours_of(events, e.owner)
        same = [ref("a", e.colour, k) for k in SHAPE_KINDS if k != e.shape]
        drafts.append(_Draft("localized/appear_shape", t, ref("a", e.colour, e.shape),
                             _refs(events, "a", e.owner) + same, _all_refs("a", mine), window))
    return drafts


def _variants(event: Event, colours: list[str]) -> list[str]:
    """Texts of events that did not happen but look like ``event``: other colour, direction."""
    out = []
    for c in colours:
        if c != event.colour:
            out.append(Event(event.start, event.end, event.action, -1, event.shape, c,
                             event.detail).text)
    for d in (DIRECTIONS if event.action == "move" else ()):
        if d != event.detail:
            out.append(Event(event.start, event.end, "move", -1, event.shape, event.colour,
                             d).text)
    for action in ("appear", "disappear"):
        if action != event.action:
            out.append(Event(event.start, event.end, action, -1, event.shape, event.colour).text)
    return out


def _after_drafts(events: list[Event]) -> list[_Draft]:
    drafts = []
    for e in events:
        later = [n for n in events if n.start >= e.end]
        if not later:
            continue
        nxt = min(later, key=lambda n: n.start)
        seen = [o.text for o in events if o is not nxt]
        drafts.append(_Draft("localized/after", {"event": e.past}, nxt.text, seen,
                             _variants(nxt, list(PALETTE)), (e.start, nxt.end)))
    return drafts


def _when_drafts(events: list[Event], duration: float) -> list[_Draft]:
    drafts = []
    for e in events:
        seen = [window_text(o.start, o.end) for o in events]
        shifted = [window_text(e.start + s, e.end + s) for s in (-2, -1, 1, 2, 3, -3)
                   if e.start + s >= 0 and e.end + s <= duration]
        drafts.append(_Draft("localized/when", {"event": e.base}, window_text(e.start, e.end),
                             seen, shifted, (e.start, e.end)))
    return drafts


def _which_moved_drafts(events: list[Event]) -> list[_Draft]:
    drafts = []
    moves = [e for e in events if e.action == "move"]
    for d in DIRECTIONS:
        movers = [e for e in moves if e.detail == d]
        if len(movers) != 1:
            continue
        e = movers[0]
        mine = _colours_of(events, e.owner)
        drafts.append(_Draft("localized/which_moved", {"direction": d},
                             ref("the", e.colour, e.shape), _refs(events, "the", e.owner),
                             _all_refs("the", mine), (e.start, e.end)))
    return drafts


def _turn_drafts(events: list[Event]) -> list[_Draft]:
    drafts = []
    for e in events:
        if e.action == "turn":
            drafts.append(_Draft("localized/turn_colour", {"colour": e.colour, "shape": e.shape},
                                 e.detail, [c for c in _video_colours(events) if c != e.detail],
                                 list(PALETTE), (e.start, e.end)))
    return drafts


# ---- comprehensive -------------------------------------------------------------------------

def _count_options(n: int, low: int, high: int) -> tuple[list[str], list[str]]:
    """Number distractors from [low, high] widened to at least 4 numbers (for the shape count
    with 4 shapes at most, the options are always 1, 2, 3, 4: their set gives nothing away)."""
    pool = range(low, max(high, low + 3, n) + 1)
    return [str(m) for m in pool if m != n], []


def _order_options(colours: list[str]) -> list[str]:
    """Other orders of the same colours, then orders with one colour swapped for an absent one."""
    perms = [" then ".join(p) for p in itertools.permutations(colours)][1:]
    absent = [c for c in PALETTE if c not in colours]
    swapped = [" then ".join(colours[:i] + [c] + colours[i + 1:])
               for c in absent for i in range(len(colours))]
    return perms + swapped


def _comprehensive_drafts(events: list[Event], max_shapes: int) -> list[_Draft]:
    shown = _appearances(events)
    colours = [e.colour for e in shown]
    n_moved = len({e.owner for e in events if e.action == "move"})
    others = _video_colours(events)
    drafts = [
        _Draft("comprehensive/count", {}, str(len(shown)),
               *_count_options(len(shown), 1, max_shapes)),
        _Draft("comprehensive/count_moves", {}, str(n_moved),
               *_count_options(n_moved, 0, max_shapes)),
        _Draft("comprehensive/first_colour", {}, colours[0],
               [c for c in others if c != colours[0]], list(PALETTE)),
    ]
    if len(shown) >= 2:
        drafts.append(_Draft("comprehensive/last_colour", {}, colours[-1],
                             [c for c in others if c != colours[-1]], list(PALETTE)))
        drafts.append(_Draft("comprehensive/order", {}, " then ".join(colours),
                             _order_options(colours), []))
    return drafts


# ---- options -------------------------------------------------------------------------------

def _distractors(rng: np.random.Generator, draft: _Draft) -> list[str]:
    """Three distinct wrong options: random plausible ones first, then random fallback ones."""
    picked: list[str] = []
    for pool in (draft.plausible, draft.fallback):
        candidates = [c for c in dict.fromkeys(pool) if c != draft.right and c not in picked]
        order = rng.permutation(len(candidates)) if candidates else []
        picked += [candidates[int(i)] for i in order][:3 - len(picked)]
    if len(picked) < 3:
        raise RuntimeError(f"not enough distractors for {draft.task_type}: {draft}")
    return picked


def _finish(rng: np.random.Generator, draft: _Draft) -> Question:
    wrong = _distractors(rng, draft)
    options = [draft.right, *wrong]
    order = [int(i) for i in rng.permutation(4)]
    shuffled = tuple(options[i] for i in order)
    return Question(draft.task_type, QUESTION_TEMPLATES[draft.task_type].format(**draft.fields),
                    shuffled, order.index(0), open_answer(draft.task_type, draft.right),
                    open_answer(draft.task_type, wrong[int(rng.integers(3))]), draft.span)


DraftMaker = Callable[[np.random.Generator, list[Event], float, int], list[_Draft]]
_MAKERS: tuple[DraftMaker, ...] = (
    lambda rng, ev, dur, ms: _appear_drafts(rng, ev, dur),
    lambda rng, ev, dur, ms: _after_drafts(ev),
    lambda rng, ev, dur, ms: _when_drafts(ev, dur),
    lambda rng, ev, dur, ms: _which_moved_drafts(ev),
    lambda rng, ev, dur, ms: _turn_drafts(ev),
    lambda rng, ev, dur, ms: _comprehensive_drafts(ev, ms),
)


def make_questions(rng: np.random.Generator, events: list[Event], duration: float, *,
                   max_shapes: int = 4, per_type: int = 2) -> list[Question]:
    """Up to ``per_type`` questions of every task type the events support (chosen at random),
    in the order of ``TASK_TYPES``; ``events`` sorted by start."""
    drafts: dict[str, list[_Draft]] = {t: [] for t in TASK_TYPES}
    for make in _MAKERS:
        for draft in make(rng, events, duration, max_shapes):
            drafts[draft.task_type].append(draft)
    questions = []
    for task_type in TASK_TYPES:
        pool = drafts[task_type]
        keep = sorted(int(i) for i in rng.permutation(len(pool))[:per_type]) if pool else []
        questions += [_finish(rng, pool[i]) for i in keep]
    return questions
