"""Families that read a video as its frames, each an image (InternVL, SmolVLM).

Their processors turn a video into ``pixel_values`` (one image per sampled frame) and expand
its placeholder into image tokens; the model has no ``get_video_features`` and its forward
encodes the frames with ``get_image_features`` and scatters them through the image mask. The
generic adapter does the same with ``mm_encoder_outputs={"image": ...}``.

Video input: ``{"pixel_values": float [F, 3, S, S]}`` (SmolVLM: ``[1, F, 3, S, S]``), frames
in time order. Positions are 1-D. (A frame here is one tile: the processors' image splitting
into several tiles per frame is not handled.)
"""

from __future__ import annotations

import torch

from tpo_fast.models.base import Video
from tpo_fast.models.generic import GenericVideoAdapter


class ImageFramesAdapter(GenericVideoAdapter):
    """A video as image frames, through the generic hooks; a frame's token count is measured
    (once per frame size) unless a subclass knows the formula."""
    feature_fn = "get_image_features"
    modality = "image"
    pixel_key = "pixel_values"

    def check_video(self, video: Video, where: str = "video") -> None:
        super().check_video(video, where)
        if video[self.pixel_key].dim() not in (4, 5):
            raise ValueError(f"{where}: {self.pixel_key} must be frames [F, 3, S, S] or "
                             f"[1, F, 3, S, S], got {list(video[self.pixel_key].shape)}")

    def _frame_axis(self, video: Video) -> int:
        return 1 if video[self.pixel_key].dim() == 5 else 0

    def batch_video_features(self, videos: list[Video]):
        """All videos' frames in one call (each frame is an independent image)."""
        axis = self._frame_axis(videos[0])
        frames = torch.cat([v[self.pixel_key] for v in videos], dim=axis)
        return self.video_features({self.pixel_key: frames})

    def num_video_tokens(self, video: Video) -> int:
        """Frames × the tokens of one frame."""
        axis = self._frame_axis(video)
        pixels = video[self.pixel_key]
        per_frame = self.tokens_per_frame(tuple(pixels.shape[-2:]))
        if per_frame is None:
            per_frame = self._measured_token_count({self.pixel_key: pixels.narrow(axis, 0, 1)})
        return pixels.shape[axis] * per_frame

    def tokens_per_frame(self, size: tuple[int, int]) -> int | None:
        return None

    def _patch_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        patch = self.model.config.vision_config.patch_size
        ph, pw = (patch, patch) if isinstance(patch, int) else patch
        return size[0] // ph, size[1] // pw

    def placeholder_id(self, tokenizer) -> int:
        video = getattr(self.model.config, "video_token_id", None)
        return video if isinstance(video, int) else self.video_token_id


class InternVLAdapter(ImageFramesAdapter):
    model_types = ("internvl",)

    def tokens_per_frame(self, size):
        rows, cols = self._patch_grid(size)  # pixel shuffle by downsample_ratio
        ratio = self.model.config.downsample_ratio
        return int(rows * ratio) * int(cols * ratio)


class SmolVLMAdapter(ImageFramesAdapter):
    model_types = ("smolvlm",)

    def tokens_per_frame(self, size):
        rows, cols = self._patch_grid(size)  # the connector's pixel shuffle
        return rows * cols // self.model.config.scale_factor ** 2
