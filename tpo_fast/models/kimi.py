"""Kimi-K2.5: the generic adapter with its token count. Its vision tower pools a video's frames
together (temporal merge) and then merges ``merge_kernel_size`` patches, so a video of grid
(t, h, w) gives h·w / (kh·kw) tokens whatever t is (its ``get_image_features`` split).

Video input: ``{"pixel_values_videos": [t·h·w, 3, p, p], "video_grid_thw": long [1, 3]}``.
"""

from __future__ import annotations

from tpo_fast.models.base import Video
from tpo_fast.models.generic import GenericVideoAdapter


class KimiK25Adapter(GenericVideoAdapter):
    model_types = ("kimi_k25",)

    def num_video_tokens(self, video: Video) -> int:
        kh, kw = self.vision_tower().merge_kernel_size
        return int(self._grid(video)[:, 1:].prod(-1).sum()) // (kh * kw)
