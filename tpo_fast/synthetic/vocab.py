"""The words the generator can write, for a word-level tokenizer that has no ``<unk>`` on them."""

from __future__ import annotations

import re

from tpo_fast.synthetic.questions import ANSWER_TEMPLATES, OPTION_TEMPLATES, QUESTION_TEMPLATES
from tpo_fast.synthetic.scene import DIRECTIONS, EVENT_FORMS, PALETTE, SHAPE_KINDS

# Letters runs, single digits, single punctuation marks: what the tiny tokenizer's pre-tokenizer
# (whitespace split, punctuation split off, digits one by one) makes of the generator's texts.
_WORD = re.compile(r"[^\W\d_]+|\d|[^\w\s]|_")
_PLACEHOLDER = re.compile(r"\{[^}]*\}")


def words(text: str) -> list[str]:
    """``text`` split as the tiny tokenizer's pre-tokenizer splits it."""
    return _WORD.findall(text)


def vocabulary() -> list[str]:
    """Every word of every event text, question, option and answer the generator can write
    (sorted, no duplicates): the templates without their placeholders, and every value a
    placeholder takes (colours, shapes, directions, digits, "shape" of "1 shape appeared")."""
    templates = [*QUESTION_TEMPLATES.values(), *ANSWER_TEMPLATES.values(), *OPTION_TEMPLATES,
                 *(form for forms in EVENT_FORMS.values() for form in forms)]
    found = {w for t in templates for w in words(_PLACEHOLDER.sub(" ", t))}
    found |= {*PALETTE, *SHAPE_KINDS, *DIRECTIONS, "shape", ".", *"0123456789"}
    return sorted(found)
