"""TPO's task types, the query writer's and the judge's prompts, and parsing their replies."""

from __future__ import annotations

import json
import re

from tpo_fast.curate.manifest import Span

TASK_DESCRIPTIONS = {
    "temporal": "the order or timing of events (what happens before, after or when)",
    "action": "an action a person, animal or object performs",
    "causal": "why something happens, or what it causes",
    "information_extraction": "a specific fact shown in the video (a number, text, a colour)",
    "descriptive": "a description of a scene, object or event",
    "summarisation": "a summary of what happens",
    "object": "the objects present, their attributes or how many there are",
    "spatial": "where things are, or how they move relative to each other",
}

QUERY_SYSTEM = (
    "You write questions that test whether a video assistant watched a video carefully. You see "
    "time-stamped captions of the video, not the video. Write ONE question of the requested type "
    "whose answer is determined by the captions, is unambiguous, and needs the video to answer. "
    "Reply with the question only. If no good question of that type can be asked, reply None.")

JUDGE_SYSTEM = (
    "You check preference pairs for training a video assistant. You see time-stamped captions "
    "of a video, a question, response A and response B. Answer three checks: (1) chosen_better: "
    "is A better than B as an answer? (2) consistent: are the question and A consistent with the "
    "captions, and is the question unambiguous? (3) chosen_correct: is A correct according to "
    "the captions? Reply with JSON only: {\"chosen_better\": true|false, \"consistent\": "
    "true|false, \"chosen_correct\": true|false, \"reason\": \"...\"}")

JUDGE_CHECKS = ("chosen_better", "consistent", "chosen_correct")


def format_captions(captions: list[Span]) -> str:
    return "\n".join(f"[{c.start:.1f}s - {c.end:.1f}s] {c.text}" for c in captions)


def query_messages(captions: list[Span], kind: str, t0: float, t1: float,
                   task: str) -> list[dict]:
    """Chat messages asking for one question of type ``task`` about a target."""
    where = (f"the part of the video from {t0:.1f}s to {t1:.1f}s (the question must be about "
             "this part only and should say which part it means)" if kind == "localized"
             else "the whole video")
    user = (f"Captions:\n{format_captions(captions)}\n\nWrite one {task.replace('_', ' ')} "
            f"question ({TASK_DESCRIPTIONS[task]}) about {where}.")
    return [{"role": "system", "content": QUERY_SYSTEM}, {"role": "user", "content": user}]


def judge_messages(captions: list[Span], question: str, chosen: str,
                   rejected: str) -> list[dict]:
    """Chat messages asking for TPO's three checks on one pair."""
    user = (f"Captions:\n{format_captions(captions)}\n\nQuestion: {question}\n\n"
            f"Response A: {chosen}\n\nResponse B: {rejected}")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_PREFIX = re.compile(r"^\s*(?:\*\*)?(?:question|q)\s*[:.\-]\s*(?:\*\*)?\s*", re.IGNORECASE)


def parse_question(text: str) -> str | None:
    """The query writer's reply -> a question, or None when it declined ("None") or gave none."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    question = _PREFIX.sub("", lines[0]).strip().strip('"').strip()
    if question.rstrip(".!").strip().lower() in ("none", "n/a", ""):
        return None
    return question


def parse_judgement(text: str) -> dict[str, bool] | None:
    """The judge's reply -> ``{check: bool}`` for TPO's three checks, or None if unparseable."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if not match:
        return None
    try:
        obj = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    out = {}
    for check in JUDGE_CHECKS:
        value = obj.get(check)
        if isinstance(value, str):
            value = {"true": True, "yes": True, "false": False, "no": False}.get(value.lower())
        if not isinstance(value, bool):
            return None
        out[check] = value
    return out
