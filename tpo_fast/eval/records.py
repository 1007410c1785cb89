"""The one record every reader produces (``MCQuestion``), its errors and the read statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# Upper bounds (seconds) of the duration groups used where a benchmark gives only seconds
# (MLVU, the synthetic set); Video-MME and LongVideoBench name their own groups.
DURATION_EDGES: tuple[tuple[float, str], ...] = (
    (15.0, "0-15s"), (60.0, "15-60s"), (180.0, "1-3min"), (600.0, "3-10min"),
    (1800.0, "10-30min"), (3600.0, "30-60min"),
)


@dataclass(frozen=True)
class MCQuestion:
    """One multiple-choice question about one video.

    ``answer`` is the index of the correct option in ``options``; ``source`` says where the
    question was read (``"file:line"`` for JSONL, ``"file:item"`` for a JSON list, with a 1-based
    line and a 0-based item) so that every error and prediction can point back to it."""

    qid: str
    video: Path
    question: str
    options: list[str]
    answer: int
    task_type: str
    duration_group: str | None
    source: str
    duration: float | None = None  # seconds, where the annotation gives them
    # The question as lmms-eval's task reads it (its parquet row's fields), for the lmms-eval
    # protocol (``tpo_fast.eval.protocol``); None for the synthetic format.
    doc: dict | None = field(default=None, compare=False, repr=False)


class AnnotationError(ValueError):
    """A malformed annotation item; the message starts with its ``file:line`` (or item)."""

    def __init__(self, where: str, reason: str):
        self.where, self.reason = where, reason
        super().__init__(f"{where}: {reason}")


@dataclass
class ReadStats:
    """What a reader did: items read, items skipped as invalid (with their errors), and items
    left out by design (``not_multiple_choice``: MLVU's generation tasks, which have no
    candidates; counted per file in ``left_out``)."""

    read: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    not_multiple_choice: int = 0
    left_out: dict[str, int] = field(default_factory=dict)

    def skip(self, error: AnnotationError) -> None:
        self.skipped += 1
        self.errors.append(str(error))


def duration_group_of(seconds: float | None) -> str | None:
    """The ``DURATION_EDGES`` group of a duration in seconds (None stays None)."""
    if seconds is None:
        return None
    for upper, name in DURATION_EDGES:
        if seconds <= upper:
            return name
    return ">60min"


def letter(index: int) -> str:
    """0 -> "A", 1 -> "B", ..."""
    if not 0 <= index < len(LETTERS):
        raise ValueError(f"option index {index} has no letter (at most {len(LETTERS)} options)")
    return LETTERS[index]
