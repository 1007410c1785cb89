"""Synthetic temporal-grounding data: short H.264 videos of shapes that appear, move, change
colour and disappear at known times, with ground-truth events, localized and comprehensive
questions (multiple choice and open answers) and supervised pairs; train / held-out splits by
seed. Nothing is downloaded. See ``generate`` for the file formats and ``scene`` for timing.
"""

from tpo_fast.synthetic.generate import (
    HELDOUT_SEED_OFFSET,
    SplitPaths,
    generate_split,
    generate_splits,
)
from tpo_fast.synthetic.questions import TASK_TYPES, Question, make_questions, open_answer
from tpo_fast.synthetic.scene import (
    BACKGROUND,
    PALETTE,
    SHAPE_KINDS,
    Event,
    Scene,
    plan_scene,
    render,
)
from tpo_fast.synthetic.vocab import vocabulary, words

__all__ = ["BACKGROUND", "HELDOUT_SEED_OFFSET", "PALETTE", "SHAPE_KINDS", "TASK_TYPES", "Event",
           "Question", "Scene", "SplitPaths", "generate_split", "generate_splits",
           "make_questions", "open_answer", "plan_scene", "render", "vocabulary", "words"]
