"""Answer-letter extraction from generated text."""

import pytest

from tpo_fast.eval import extract_choice

OPTIONS = ["red circle", "blue square", "green triangle", "dark red circle"]


@pytest.mark.parametrize("text, expected", [
    ("B", 1),
    ("(B)", 1),
    ("B.", 1),
    ("B. blue square", 1),
    ("B) blue square", 1),
    ("b", None),  # a lone lowercase letter is not read as an option
    ("The answer is C.", 2),
    ("the answer is c", 2),  # a lowercase letter that ends the answer
    ("the answer is a blue square", 1),  # ... but here "a" is an article
    ("Answer: (D)", 3),
    ("Best option: (A) red circle", 0),
    ("I think the correct choice is D", 3),
    ("( C )", 2),  # a word-level tokenizer's decode puts spaces around punctuation
    ("The answer is C .", 2),
    ("A", 0),
    ("A. red circle", 0),
    ("A blue square appeared", 1),  # "A" is an article here: the option text decides
    ("It was the green triangle.", 2),
    ("the dark red circle", 3),  # the longest matching option wins over "red circle"
    ("red circle or blue square", None),  # two options of equal length: ambiguous
    ("so it must be (C), the green one", 2),
    ("I would say D", 3),
    ("E", None),  # no fifth option
    ("", None),
    ("   ", None),
    ("no idea what happened", None),
    ("Blue", None),  # a word that starts with a letter is not a letter
])
def test_extract_choice(text, expected):
    assert extract_choice(text, OPTIONS) == expected


def test_letters_beyond_the_options_are_ignored():
    assert extract_choice("The answer is D", ["x", "y", "z"]) is None
    assert extract_choice("C", ["x", "y", "z"]) == 2
