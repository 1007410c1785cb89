"""The post-filter's rules: cheap checks on a pair's two responses. Each returns a drop reason
or None; the LLM judge (TPO's three checks) runs after them in the pipeline."""

from __future__ import annotations

import difflib
import re

from tpo_fast.curate.config import FilterConfig


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def rule_reasons(chosen: str, rejected: str, cfg: FilterConfig) -> list[str]:
    """The drop reasons the enabled rules give for a pair (empty list: keep), in rule order;
    only the first failing rule is reported, so every drop has exactly one rule reason. An empty
    response, or two responses equal after stripping, is always dropped (the trainer refuses
    such pairs), whichever rules are enabled."""
    if not chosen.strip() or not rejected.strip():
        return ["rule:empty"]
    if chosen.strip() == rejected.strip():
        return ["rule:identical"]
    checks = {
        "empty": lambda: not chosen.strip() or not rejected.strip(),
        "identical": lambda: _norm(chosen) == _norm(rejected),
        "near_identical": lambda: difflib.SequenceMatcher(
            None, _norm(chosen), _norm(rejected)).ratio() >= cfg.near_identical,
        "overlong": lambda: max(len(chosen.split()), len(rejected.split())) > cfg.max_words,
        "refusal": lambda: any(p in chosen.lower() for p in cfg.refusal_patterns),
    }
    for rule in cfg.rules:
        if checks[rule]():
            return [f"rule:{rule}"]
    return []
