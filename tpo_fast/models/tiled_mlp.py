"""ALST's tiled MLP (DeepSpeed ``TiledMLP``) on a language model's decoder MLPs.

``enable_tiled_mlp(model, tiles)`` makes every decoder layer's ``mlp`` run over ``tiles``
chunks of its tokens: the forward keeps only the output, the backward recomputes one tile at a
time, so the MLP's intermediate activations ([tokens, intermediate] per projection, the largest
activations of a long sequence) exist for one tile instead of the whole shard. The same number
of tiles on every rank (ZeRO-3 gathers are collectives), so ``tiles`` is a setting, not derived
from each rank's token count.
"""

from __future__ import annotations

import types

import torch
from torch import nn


def _decoder_mlps(model: nn.Module) -> list[nn.Module]:
    """The ``mlp`` of every module that holds both ``self_attn`` and ``mlp`` (a decoder layer),
    outside the vision tower (its layers are named ``blocks``/``encoder``; their MLPs run under
    no_grad or on short per-frame sequences)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(getattr(module, "mlp", None), nn.Module) and hasattr(module, "self_attn"):
            if any(part in ("visual", "vision_tower", "video_tower") for part in name.split(".")):
                continue
            found.append(module.mlp)
    return found


def _padded(x, tiles: int):
    """(x padded with zero tokens to a multiple of ``tiles``, tiles): ``torch.chunk`` inside
    TiledMLP then makes exactly ``tiles`` tiles whatever the token count, so every rank runs the
    MLP's modules the same number of times (under ZeRO-3 each run gathers parameters)."""
    pad = -x.shape[-2] % tiles
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:-2], pad, x.shape[-1])], dim=-2)
    return x, tiles


def enable_tiled_mlp(model: nn.Module, tiles: int) -> int:
    """Wrap the decoder MLPs of ``model`` in DeepSpeed's TiledMLP with ``tiles`` token tiles;
    returns how many MLPs were wrapped (an error if none)."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP

    if tiles < 1:
        raise ValueError(f"tiles must be >= 1, got {tiles}")
    mlps = _decoder_mlps(model)
    if not mlps:
        raise ValueError(f"{type(model).__name__} has no decoder layer with self_attn and mlp "
                         "for the tiled MLP")
    for mlp in mlps:
        if getattr(mlp, "_tpo_tiled", None):
            continue
        plain = type(mlp).forward  # the class's forward: calls the child modules' hooks

        def tiled(self, x, _plain=plain):
            params = [p for p in self.parameters() if p.requires_grad]
            return TiledMLP.apply(_plain, self, *_padded(x, tiles), params)[..., :x.shape[-2], :]

        mlp.forward = types.MethodType(tiled, mlp)
        mlp._tpo_tiled = tiles
    return len(mlps)


__all__ = ["enable_tiled_mlp"]
