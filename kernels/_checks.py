"""Input checks shared by the Triton path and the torch paths of naive.py (torch only)."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                 check_values: bool = True, dtypes: tuple = FLOAT_DTYPES) -> None:
    """Shapes, dtypes, devices; with ``check_values`` also 0 <= targets < V (a host sync on
    CUDA)."""
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"hidden must be [N, H] and weight [V, H]; got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [N, H={hidden.shape[1]}] and weight [V, H={weight.shape[1]}] "
                         "disagree on H")
    if hidden.shape[0] < 1 or weight.shape[0] < 1 or hidden.shape[1] < 1:
        raise ValueError(f"empty input: hidden {tuple(hidden.shape)}, weight "
                         f"{tuple(weight.shape)}")
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"targets must be [N={hidden.shape[0]}]; got {tuple(targets.shape)}")
    if hidden.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"hidden must be one of {names}; got {hidden.dtype}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype")
    if targets.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"targets must be int32 or int64; got {targets.dtype}")
    if not (hidden.device == weight.device == targets.device):
        raise ValueError(f"hidden, weight and targets are on different devices: {hidden.device},"
                         f" {weight.device}, {targets.device}")
    if check_values:
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= weight.shape[0]:
            raise ValueError(f"targets must lie in [0, V={weight.shape[0]}); got [{lo}, {hi}]")


def check_saved_weight(weight: torch.Tensor, shape: torch.Size) -> None:
    """The LM-head weight saved for backward must still hold its data (ZeRO-3 partitions and
    empties parameters outside a gathered scope)."""
    if weight.shape != shape:
        raise RuntimeError(f"the LM-head weight saved for backward has shape {tuple(weight.shape)}"
                           f", not {tuple(shape)}: it was released or partitioned between "
                           "forward and backward (ZeRO-3?); keep it gathered until backward")
