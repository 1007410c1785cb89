"""tpo_fast: a fast trainer for Temporal Preference Optimization (TPO) of video LLMs.

Importing this package is cheap: subpackages (and with them torch, transformers, DeepSpeed and
DALI) load on first use, e.g. ``tpo_fast.packing``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = ("attention", "cli", "curate", "data", "kernels", "models", "packing", "train",
                "video")


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES))
