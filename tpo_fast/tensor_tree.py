"""The one walker over nested batches: tensors inside dicts, lists and tuples (torch's pytree).

Used for a ``PackedBatch``'s fields, a model's video inputs and the video loader's results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_map


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], obj: Any) -> Any:
    """``obj`` rebuilt with ``fn(t)`` for every tensor ``t`` inside it (dicts, lists, tuples,
    at any depth); every other leaf (ints, strings, None, ...) as it is."""
    return tree_map(lambda x: fn(x) if isinstance(x, torch.Tensor) else x, obj)


def pin_tensors(obj: Any) -> Any:
    """``obj`` with every CPU tensor inside in pinned memory (others as they are)."""
    return map_tensors(lambda t: t.pin_memory() if t.device.type == "cpu" else t, obj)


def move_tensors(obj: Any, device, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor inside moved to ``device``."""
    return map_tensors(lambda t: t.to(device, non_blocking=non_blocking), obj)
