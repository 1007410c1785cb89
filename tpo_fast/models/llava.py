"""LLaVA-style families: LLaVA-OneVision (LLaVA-Video-7B-Qwen2 uses it), LLaVA-NeXT-Video and
Video-LLaVA.

Video input: ``{"pixel_values_videos": float [1, F, 3, S, S]}`` (S = the vision tower's
image_size), one entry per pair. Positions are plain 1-D.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from tpo_fast.models.base import Video, VideoLLMAdapter
from tpo_fast.models.generic import GenericVideoAdapter


class _LlavaAdapter(VideoLLMAdapter):
    video_placeholder = "<video>"

    def vision_tower(self):
        return self.base.vision_tower

    def check_video(self, video: Video, where: str = "video") -> None:
        super().check_video(video, where)
        shape = tuple(video["pixel_values_videos"].shape)
        size = self.model.config.vision_config.image_size
        if len(shape) != 5 or shape[0] != 1 or shape[2] != 3 or shape[3:] != (size, size):
            raise ValueError(f"{where}: pixel_values_videos must be [1, frames, 3, {size}, {size}],"
                             f" got {list(shape)}")

    def _patches_per_side(self) -> int:
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size

    def video_features(self, video: Video):
        cfg = self.model.config
        pixels = video["pixel_values_videos"].to(self.vision_tower().dtype)
        return self.base.get_video_features(
            pixels, vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True,
        )

    def batch_video_features(self, videos: list[Video]):
        """Every frame of every video as a one-frame video, in one call (the tower, projector
        and pooling work frame by frame), regrouped per video by ``_regroup``."""
        frames = [v["pixel_values_videos"][0] for v in videos]
        out = self.video_features({"pixel_values_videos": torch.cat(frames)[:, None]})
        return SimpleNamespace(
            pooler_output=self._regroup(out.pooler_output, [f.shape[0] for f in frames]))

    def frame_units(self, videos: list[Video]) -> list:
        return [frame for v in videos for frame in v["pixel_values_videos"][0]]

    def unit_features(self, units: list) -> torch.Tensor:
        """[frames · tokens per one-frame video, H]: each frame as a one-frame video."""
        out = self.video_features({"pixel_values_videos": torch.stack(units)[:, None]})
        return out.pooler_output.reshape(-1, out.pooler_output.shape[-1])

    def assemble_features(self, rows: torch.Tensor, videos: list[Video]):
        counts = [v["pixel_values_videos"].shape[1] for v in videos]
        per_frame = rows.reshape(sum(counts), -1, rows.shape[-1])
        return SimpleNamespace(pooler_output=self._regroup(per_frame, counts))

    def _regroup(self, per_frame: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """[sum F, tokens per one-frame video, H] -> [1, all videos' tokens, H]."""
        return per_frame.reshape(1, -1, per_frame.shape[-1])


class LlavaOnevisionAdapter(_LlavaAdapter, GenericVideoAdapter):
    """The generic adapter (video token, projector = multi_modal_projector + image_newline),
    with LLaVA's frame-by-frame batching and token count."""

    model_types = ("llava_onevision",)
    end_of_turn = "<|im_end|>"

    def _regroup(self, per_frame, counts):
        # each one-frame video ends with the newline; a video ends with one newline in all
        parts = []
        for rows in per_frame.split(counts):
            parts += [rows[:, :-1].reshape(-1, rows.shape[-1]), rows[-1, -1:]]
        return torch.cat(parts)[None]

    def num_video_tokens(self, video: Video) -> int:
        # Per frame: the patch grid pooled 2x2 (bilinear, ceil); then one newline per video.
        side = math.ceil(self._patches_per_side() / 2)
        return video["pixel_values_videos"].shape[1] * side * side + 1


class LlavaNextVideoAdapter(_LlavaAdapter, GenericVideoAdapter):
    """The generic adapter, with LLaVA's frame-by-frame batching and token count; its
    ``image_newline`` serves images only, so the projector leaves it out."""

    model_types = ("llava_next_video",)

    def projector_parameters(self):
        return [*self.base.multi_modal_projector.parameters(),
                *self.base.vision_resampler.parameters()]

    def num_video_tokens(self, video: Video) -> int:
        side = self._patches_per_side() // self.model.config.spatial_pool_stride
        return video["pixel_values_videos"].shape[1] * side * side


class VideoLlavaAdapter(_LlavaAdapter, GenericVideoAdapter):
    """Video-LLaVA: the generic adapter with LLaVA's frame batching (its video tower encodes
    frame by frame); every patch and the class token of each frame are video tokens."""

    model_types = ("video_llava",)

    def vision_tower(self):
        return self.base.video_tower

    def num_video_tokens(self, video: Video) -> int:
        side = self._patches_per_side()
        return video["pixel_values_videos"].shape[1] * (side * side + 1)
