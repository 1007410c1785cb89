"""Qwen-VL families: Qwen2-VL, Qwen2.5-VL, Qwen3-VL.

Video input: ``{"pixel_values_videos": [t·h·w, 3·tp·p·p], "video_grid_thw": long [1, 3]}``, plus
``second_per_grid_ts`` [1] for Qwen2.5-VL and ``frame_timestamps`` [F] (seconds) for Qwen3-VL.
Everything runs through the generic adapter (the model's own ``get_video_features``, placeholder
mask and ``get_rope_index`` on each unpacked row, M-RoPE positions [3, T]); what is left here is
the chat format and a check of the patch count against the grid.
"""

from __future__ import annotations

import torch

from tpo_fast.models.base import Video
from tpo_fast.models.frames import Qwen3StyleAdapter
from tpo_fast.models.generic import GenericVideoAdapter


class _QwenVideoChecks:
    end_of_turn = "<|im_end|>"

    def check_video(self, video: Video, where: str = "video") -> None:
        super().check_video(video, where)
        patches = int(self._grid(video).prod())
        if video["pixel_values_videos"].shape[0] != patches:
            raise ValueError(f"{where}: video_grid_thw {self._grid(video).tolist()[0]} means "
                             f"{patches} patches, pixel_values_videos has "
                             f"{video['pixel_values_videos'].shape[0]}")


class Qwen2VLAdapter(_QwenVideoChecks, GenericVideoAdapter):
    model_types = ("qwen2_vl",)

    # The vision tower attends within each temporal patch (its cu_seqlens repeat h·w per grid
    # step) and its rotary positions are spatial, so a video's grid steps are independent units.
    def frame_units(self, videos: list[Video]) -> list:
        units = []
        for video in videos:
            t, h, w = self._grid(video)[0].tolist()
            extra = {k: v for k, v in video.items()
                     if k not in ("pixel_values_videos", "video_grid_thw")}
            for rows in video["pixel_values_videos"].split(h * w):
                units.append({"pixel_values_videos": rows,
                              "video_grid_thw": torch.tensor([[1, h, w]]), **extra})
        return units

    def unit_features(self, units: list) -> torch.Tensor:
        out = self.batch_video_features(units).pooler_output
        return torch.cat(list(out)) if isinstance(out, (tuple, list)) else \
            out.reshape(-1, out.shape[-1])

    def assemble_features(self, rows: torch.Tensor, videos: list[Video]):
        from types import SimpleNamespace

        return SimpleNamespace(pooler_output=(rows,))


class Qwen2_5VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen2_5_vl",)

    @property
    def video_keys(self):
        # get_rope_index defaults the seconds to 1 per grid step: require the real value
        return (*super().video_keys, "second_per_grid_ts")

    def rope_kwargs(self, video: Video) -> dict:
        seconds = torch.as_tensor(video["second_per_grid_ts"], dtype=torch.float32).reshape(1)
        return {"video_grid_thw": self._grid(video), "second_per_grid_ts": seconds}


class Qwen3VLAdapter(_QwenVideoChecks, Qwen3StyleAdapter):
    """Qwen3-VL writes each temporal patch as ``<t seconds><|vision_start|>tokens<|vision_end|>``
    (its processor's expansion of the video placeholder) and adds deepstack features, which the
    generic feature merge carries along."""

    model_types = ("qwen3_vl",)
