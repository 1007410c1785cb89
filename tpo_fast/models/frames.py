"""Families whose processor writes a video one temporal patch at a time, each with its time.

Qwen3-VL-style (Qwen3-VL-MoE, Cosmos3-Edge): ``<t seconds><|vision_start|>
tokens<|vision_end|>`` per temporal patch, t the mean time of the patch's frames. GLM-4.1V-style
(GLM-4.1V/4.5V, GLM-4.6V, GLM-OCR): ``<|begin_of_image|>tokens<|end_of_image|>t`` per patch, t
the time of its first frame, the video's slots being image tokens. Their rope index restarts
the spatial grid for each patch, so the prompt must keep the patches apart; everything else is
the generic adapter.

Video input: the generic one plus ``frame_timestamps`` [F] (seconds, one per sampled frame).
"""

from __future__ import annotations

import math

from tpo_fast.models.base import Video
from tpo_fast.models.generic import GenericVideoAdapter


class TimestampedFramesAdapter(GenericVideoAdapter):
    """``{before(t)}{start}{video tokens}{end}{after(t)}`` per temporal patch of time t; start
    and end are the config's token ids named by ``start_field`` / ``end_field``."""

    start_field = "vision_start_token_id"
    end_field = "vision_end_token_id"
    patch_time = "mean"  # the time of a patch: "mean" of its frames' times, or its "first"

    def before(self, t: float) -> str:
        return f"<{t:.1f} seconds>"

    def after(self, t: float) -> str:
        return ""

    @property
    def video_keys(self):
        return (*super().video_keys, "frame_timestamps")

    def _patch_times(self, video: Video, patches: int) -> list[float]:
        stamps = [float(t) for t in video["frame_timestamps"]]
        tp = getattr(self.model.config.vision_config, "temporal_patch_size", 1)
        if math.ceil(len(stamps) / tp) != patches:
            raise ValueError(f"{len(stamps)} frame_timestamps for a video of {patches} temporal "
                             f"patches of {tp} frames")
        stamps += stamps[-1:] * (-len(stamps) % tp)  # pad as the processor pads frames
        groups = [stamps[k * tp:(k + 1) * tp] for k in range(patches)]
        if self.patch_time == "mean":
            return [(g[0] + g[-1]) / 2 for g in groups]
        return [g[0] for g in groups]

    def video_token_ids(self, tokenizer, video: Video) -> list[int]:
        patches = int(self._grid(video)[0, 0])
        per_patch = self.num_video_tokens(video) // patches
        config = self.model.config
        start, end = getattr(config, self.start_field), getattr(config, self.end_field)

        def text(s: str) -> list[int]:
            return tokenizer(s, add_special_tokens=False)["input_ids"] if s else []

        ids = []
        for t in self._patch_times(video, patches):
            ids += text(self.before(t)) + [start] + [self.video_token_id] * per_patch + [end]
            ids += text(self.after(t))
        return ids


class Qwen3StyleAdapter(TimestampedFramesAdapter):
    model_types = ("qwen3_vl_moe", "cosmos3_edge", "cohere_compass")


class Glm4vStyleAdapter(TimestampedFramesAdapter):
    model_types = ("glm4v", "glm4v_moe", "glm_ocr")
    start_field = "image_start_token_id"
    end_field = "image_end_token_id"
    patch_time = "first"

    def before(self, t):
        return ""

    def after(self, t):
        return str(int(t))


class Glm46vAdapter(Glm4vStyleAdapter):
    model_types = ("glm46v",)

    def after(self, t):
        return f"{t:.1f} seconds"
