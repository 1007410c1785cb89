"""Which option a generated answer chose: ``extract_choice(text, options) -> index | None``.

The rules, first match wins (``K`` = number of options, letters A..K):

1. an explicit statement: "The answer is B", "Answer: (B)", "Best option: B.", "option B";
2. a leading letter: "B", "(B)", "B.", "B) red", "B: red", "B. red" — a leading "A"/"I"
   followed by a lowercase word ("A red circle") is read as a word, not a letter;
3. an option's text: the longest option text that the answer contains as whole words
   (case-insensitive), if every other option it contains is part of that one ("dark red"
   over "red");
4. a letter in parentheses anywhere: "... so (C)";
5. exactly one distinct stand-alone capital letter among A..K (articles excluded as in 2).

Anything else is unparseable (``None``), which evaluation counts as wrong.
"""

from __future__ import annotations

import re

from tpo_fast.eval.records import LETTERS

_STATEMENT = re.compile(
    r"\b(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*(?:option\s+)?\(?\s*([A-Z])(?![A-Za-z])",
    re.IGNORECASE,
)
_LEADING = re.compile(r"^[\s*\"'`]*\(?\s*([A-Z])\s*(?:\)|\.|:|,|(?=\s)|$)(\s+\S)?")
_PARENS = re.compile(r"\(\s*([A-Z])\s*\)")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])(\s+[a-z])?")


def _valid(letter: str, n_options: int) -> int | None:
    index = LETTERS.find(letter.upper())
    return index if 0 <= index < n_options else None


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _by_statement(text: str, n: int) -> int | None:
    for m in _STATEMENT.finditer(text):
        # a lowercase letter only where it ends the answer: "the answer is b." but not
        # "the answer is a red circle"
        if m.group(1).isupper() or not text[m.end():].strip(" .!)\n"):
            index = _valid(m.group(1), n)
            if index is not None:
                return index
    return None


def _by_leading_letter(text: str, n: int) -> int | None:
    m = _LEADING.match(text)
    if not m:
        return None
    article = m.group(1) in "AI" and m.group(2) and m.group(2).strip()[0].islower()
    if article and not text.lstrip(" *\"'`(").startswith((f"{m.group(1)}.", f"{m.group(1)})")):
        return None
    return _valid(m.group(1), n)


def _by_option_text(text: str, options: list[str]) -> int | None:
    said = f" {_words(text)} "
    hits = [(len(_words(o)), i) for i, o in enumerate(options)
            if _words(o) and f" {_words(o)} " in said]
    if not hits:
        return None
    best = max(hits)[1]
    longest = f" {_words(options[best])} "
    if any(f" {_words(options[i])} " not in longest for _, i in hits):
        return None  # two options that are not part of one another both occur: ambiguous
    return best


def _by_parentheses(text: str, n: int) -> int | None:
    found = {_valid(m.group(1), n) for m in _PARENS.finditer(text)} - {None}
    return found.pop() if len(found) == 1 else None


def _by_standalone_letter(text: str, n: int) -> int | None:
    found = set()
    for m in _STANDALONE.finditer(text):
        if m.group(1) in "AI" and m.group(2):  # an article or a pronoun
            continue
        index = _valid(m.group(1), n)
        if index is not None:
            found.add(index)
    return found.pop() if len(found) == 1 else None


def extract_choice(text: str, options: list[str]) -> int | None:
    """The index of the option that ``text`` (a generated answer) chose, or None."""
    if not text or not text.strip():
        return None
    n = len(options)
    for rule in (lambda: _by_statement(text, n), lambda: _by_leading_letter(text, n),
                 lambda: _by_option_text(text, options), lambda: _by_parentheses(text, n),
                 lambda: _by_standalone_letter(text, n)):
        index = rule()
        if index is not None:
            return index
    return None
