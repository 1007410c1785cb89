"""Multiple-choice long-video QA: readers for Video-MME, MLVU, LongVideoBench and the synthetic
set, option log-likelihood and generation scoring, accuracy per task type and duration group.

    from tpo_fast.eval import evaluate, format_table, read_questions
    questions = read_questions("videomme", "videomme.jsonl", video_root="Video-MME/data")
    results = evaluate(model, tokenizer, questions, method="generate", frames=32,
                       protocol="lmms-eval", task="videomme")   # lmms-eval's protocol
    print(format_table(results))

``tpo_fast.eval.protocol`` is lmms-eval 0.7.3's protocol (prompts, frame sampling, answer
extraction, scores) for Video-MME, MLVU and LongVideoBench.

The command line is ``tpo-fast eval`` (``tpo_fast.eval.cli``). transformers is imported only
when a model is evaluated.
"""

from tpo_fast.eval.extract import extract_choice
from tpo_fast.eval.protocol import TASKS, Task, task_for
from tpo_fast.eval.readers import (
    READERS,
    read_longvideobench,
    read_mlvu,
    read_questions,
    read_synthetic,
    read_videomme,
)
from tpo_fast.eval.records import AnnotationError, MCQuestion, ReadStats, duration_group_of
from tpo_fast.eval.results import format_table, summarize
from tpo_fast.eval.runner import METHODS, PROTOCOLS, EvalSettings, evaluate
from tpo_fast.eval.scoring import format_prompt, option_logps, stock_option_logps

__all__ = [
    "METHODS", "PROTOCOLS", "READERS", "TASKS", "AnnotationError", "EvalSettings", "MCQuestion",
    "ReadStats", "Task", "task_for",
    "duration_group_of", "evaluate", "extract_choice", "format_prompt", "format_table",
    "option_logps", "read_longvideobench", "read_mlvu", "read_questions", "read_synthetic",
    "read_videomme", "stock_option_logps", "summarize",
]
