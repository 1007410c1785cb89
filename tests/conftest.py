import os

import pytest
import torch
from hypothesis import settings

# Without a GPU, Triton kernels run under the interpreter; it must be set before triton loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Property tests: no per-example deadline (CI machines are slow and shared); a fixed budget.
settings.register_profile("default", deadline=None, max_examples=150)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _nan_filled(factory):
    def filled(*args, **kwargs):
        out = factory(*args, **kwargs)
        if out.is_floating_point():
            out.fill_(float("nan"))
        elif out.dtype in (torch.int8, torch.int16, torch.int32, torch.int64):
            out.fill_(torch.iinfo(out.dtype).max)
        return out

    return filled


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty / empty_like / empty_strided return NaN-filled floats (integers: their
    maximum), so any output element a kernel never writes shows up in the comparison (fla)."""
    for name in ("empty", "empty_like", "empty_strided"):
        monkeypatch.setattr(torch, name, _nan_filled(getattr(torch, name)))
