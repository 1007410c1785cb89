"""The Qwen2.5-Omni thinker (video without audio): the generic adapter, with the processor's
``video_second_per_grid`` passed to the rope index under its name there (``second_per_grids``),
as the thinker's own forward does. (Qwen3-Omni's thinker uses fractional temporal positions,
which packed batches, with integer positions, do not carry.)

Video input: ``pixel_values_videos``, ``video_grid_thw``, ``video_second_per_grid`` [1].
"""

from __future__ import annotations

import torch

from tpo_fast.models.base import Video
from tpo_fast.models.generic import GenericVideoAdapter


class OmniThinkerAdapter(GenericVideoAdapter):
    model_types = ("qwen2_5_omni_thinker",)

    @property
    def video_keys(self):
        return (*super().video_keys, "video_second_per_grid")

    def rope_kwargs(self, video: Video) -> dict:
        seconds = torch.as_tensor(video["video_second_per_grid"], dtype=torch.float32).reshape(1)
        return {"video_grid_thw": self._grid(video), "second_per_grids": seconds}
