"""Tiny random models written as model folders on disk, loadable the way a real checkpoint is
(``model.path``: ``from_pretrained``, or ``load_llava_next`` for LongVA's and LLaVA-Video's
LLaVA-NeXT layout). Tests
and trials of the presets use them to take the user's path: a folder, not an in-memory object.
"""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_model(family: str, folder, *, seed: int = 0, hidden: int = 32, layers: int = 2,
                    frame_size: int = 16, dtype: torch.dtype = torch.float32) -> Path:
    """Write a tiny random ``family`` model and its tokenizer into ``folder``; returns it.

    Qwen-VL configs get ``video_min_pixels`` = ``video_max_pixels`` = ``frame_size``², so frames
    of that size are not resized up to the processor's default minimum (thousands of tokens a
    video)."""
    from tpo_fast.models.tiny import tiny_model, tiny_tokenizer

    folder = Path(folder)
    tokenizer = tiny_tokenizer(family)
    model = tiny_model(family, tokenizer, seed=seed, hidden=hidden, layers=layers,
                       frame_size=frame_size, dtype=dtype)
    if family in ("longva", "llava_video"):
        from tpo_fast.models import save_llava_next

        # A real LongVA names a known CLIP tower; the tiny one's config goes into a folder that
        # config.json's mm_vision_tower points at (a local tower folder is what LongVA reads).
        tower = folder.resolve() / "vision_tower"
        model.config.vision_config.save_pretrained(tower)
        model.config.llava["mm_vision_tower"] = str(tower)
        save_llava_next(model, folder, tokenizer=tokenizer, overwrite=True)
        return folder
    if hasattr(model.config, "vision_config") and hasattr(model.config.vision_config,
                                                          "spatial_merge_size"):
        model.config.video_min_pixels = model.config.video_max_pixels = frame_size * frame_size
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


__all__ = ["save_tiny_model"]
