"""TPO data curation: preference pairs from raw videos by self-training (``tpo-fast curate``).

    from tpo_fast.curate import load_curate_config, run_curation
    summary = run_curation(load_curate_config("configs/curate_synthetic.yaml"))

See :mod:`tpo_fast.curate.pipeline` for the stages and files. Heavy imports (torch models,
transformers, the video decoders) happen only when a stage needs them.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CurateConfig": "tpo_fast.curate.config",
    "load_curate_config": "tpo_fast.curate.config",
    "TASK_TYPES": "tpo_fast.curate.config",
    "Curator": "tpo_fast.curate.pipeline",
    "run_curation": "tpo_fast.curate.pipeline",
    "merge": "tpo_fast.curate.pipeline",
    "format_report": "tpo_fast.curate.pipeline",
    "read_inputs": "tpo_fast.curate.manifest",
    "AnnotationLLM": "tpo_fast.curate.llm",
    "OpenAIChatLLM": "tpo_fast.curate.llm",
    "HFChatLLM": "tpo_fast.curate.llm",
    "LLMRequest": "tpo_fast.curate.llm",
    "LLMResult": "tpo_fast.curate.llm",
    "AnnotationPolicy": "tpo_fast.curate.policy",
    "HFPolicy": "tpo_fast.curate.policy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tpo_fast.curate' has no attribute {name!r}")
