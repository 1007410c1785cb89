"""Which packer runs: the native extension tpo_fast._C, or the numpy oracle (naive.py)."""

from __future__ import annotations

import types
import warnings

import numpy as np

from tpo_fast.packing import naive

_native: types.ModuleType | None = None
_native_error: str | None = None
_warned = False


def _load_native() -> types.ModuleType | None:
    global _native, _native_error
    if _native is None and _native_error is None:
        try:
            from tpo_fast import _C

            _native = _C
        except ImportError as exc:
            _native_error = str(exc)
    return _native


def native_available() -> bool:
    return _load_native() is not None


def get_backend(name: str = "auto"):
    """The module that implements plan_bins/build_indices: "auto", "native" or "naive"."""
    global _warned
    if name == "naive":
        return naive
    if name not in ("auto", "native"):
        raise ValueError(
            f"unknown packing backend {name!r}; choose 'auto', 'native' or 'naive'"
        )
    native = _load_native()
    if native is not None:
        return native
    if name == "native":
        raise ImportError(f"tpo_fast._C is not built ({_native_error}); run `pip install -e .`")
    if not _warned:
        warnings.warn(
            "tpo_fast._C is not built; packing uses the numpy oracle (tpo_fast.packing.naive), "
            f"which is much slower ({_native_error}). Build it with `pip install -e .`.",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned = True
    return naive


def as_lengths(values, name: str, expect: int | None = None) -> np.ndarray:
    """A 1-D int64 array of token counts, with a clear error for anything else."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if expect is not None and arr.shape[0] != expect:
        raise ValueError(f"{name} has {arr.shape[0]} entries but prompt_lens has {expect}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def as_triplet(prompt_lens, chosen_lens, rejected_lens):
    p = as_lengths(prompt_lens, "prompt_lens")
    return (p, as_lengths(chosen_lens, "chosen_lens", p.size),
            as_lengths(rejected_lens, "rejected_lens", p.size))
