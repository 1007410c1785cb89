"""tpo_fast: a fast trainer for Temporal Preference Optimization (TPO) of video LLMs.

Importing this package is cheap: subpackages (and with them torch, transformers, DeepSpeed and
DALI) load on first use, e.g. ``tpo_fast.packing``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

_SUBPACKAGES = ("attention", "cli", "curate", "data", "kernels", "models", "packing", "train",
                "video")


class _CloneKernels(importlib.abc.MetaPathFinder):
    """``tpo_fast.kernels`` from a bare clone. An install maps the top-level ``kernels/`` folder
    (the design card's layout) to ``tpo_fast.kernels`` (setup.py's ``package_dir``); a clone on
    ``PYTHONPATH`` without an install (the lent GPU machine) has no such mapping. Appended last
    to ``sys.meta_path``, so an installed or editable mapping is always found first."""

    def __init__(self, folder: Path):
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname != f"{__name__}.kernels":
            return None
        return importlib.util.spec_from_file_location(
            fullname, self.folder / "__init__.py", submodule_search_locations=[str(self.folder)])


_clone_kernels = Path(__file__).resolve().parent.parent / "kernels"
if (_clone_kernels / "__init__.py").is_file() and not any(
        isinstance(f, _CloneKernels) for f in sys.meta_path):
    sys.meta_path.append(_CloneKernels(_clone_kernels))


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES))
