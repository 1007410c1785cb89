"""Qwen-VL families: Qwen2-VL, Qwen2.5-VL, Qwen3-VL.

Video input: ``{"pixel_values_videos": [t·h·w, 3·tp·p·p], "video_grid_thw": long [1, 3]}``, plus
``second_per_grid_ts`` [1] for Qwen2.5-VL and ``frame_timestamps`` [F] (seconds) for Qwen3-VL.
Positions are M-RoPE ([3, T]) from the model's own ``get_rope_index`` on each unpacked row.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import torch

from tpo_fast.models.base import Video, VideoLLMAdapter


class Qwen2VLAdapter(VideoLLMAdapter):
    model_types = ("qwen2_vl",)
    video_placeholder = "<|video_pad|>"
    end_of_turn = "<|im_end|>"
    video_keys = ("pixel_values_videos", "video_grid_thw")

    def vision_tower(self):
        return self.base.visual

    def projector_parameters(self):
        return list(self.base.visual.merger.parameters())

    def _grid(self, video: Video) -> torch.Tensor:
        return torch.as_tensor(video["video_grid_thw"]).reshape(1, 3).long()

    def check_video(self, video: Video, where: str = "video") -> None:
        super().check_video(video, where)
        patches = int(self._grid(video).prod())
        if video["pixel_values_videos"].shape[0] != patches:
            raise ValueError(f"{where}: video_grid_thw {self._grid(video).tolist()[0]} means "
                             f"{patches} patches, pixel_values_videos has "
                             f"{video['pixel_values_videos'].shape[0]}")

    def num_video_tokens(self, video: Video) -> int:
        merge = self.model.config.vision_config.spatial_merge_size
        return int(self._grid(video).prod()) // (merge * merge)

    def video_features(self, video: Video):
        grid = self._grid(video).to(video["pixel_values_videos"].device)
        return self.base.get_video_features(video["pixel_values_videos"], grid, return_dict=True)

    def batch_video_features(self, videos: list[Video]):
        """One call: the tower attends within each video's grid (``video_grid_thw`` rows) and
        splits its output per video."""
        device = videos[0]["pixel_values_videos"].device
        pixels = torch.cat([v["pixel_values_videos"] for v in videos])
        grid = torch.cat([self._grid(v) for v in videos]).to(device)
        return self.merge_features([self.base.get_video_features(pixels, grid, return_dict=True)])

    def merge_features(self, outputs):
        return SimpleNamespace(
            pooler_output=tuple(itertools.chain.from_iterable(o.pooler_output for o in outputs)))

    def _rope_kwargs(self, video: Video) -> dict:
        return {"video_grid_thw": self._grid(video)}

    def position_ids_fn(self, prompt_ids, videos):
        video_id = self.video_token_id

        def positions(i: int, prompt_len: int, response_len: int):
            # M-RoPE depends only on where the video tokens are; response tokens are text.
            types = [2 if t == video_id else 0 for t in prompt_ids[i]] + [0] * response_len
            types = torch.tensor([types])
            pos, _ = self.base.get_rope_index(torch.zeros_like(types), mm_token_type_ids=types,
                                              **self._rope_kwargs(videos[i]))
            return pos[:, 0].numpy()

        return positions

    def model_position_ids(self, position_ids):
        return position_ids[:, None, :]  # [3, T] -> [3, 1, T]


class Qwen2_5VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen2_5_vl",)
    video_keys = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")

    def _rope_kwargs(self, video: Video) -> dict:
        seconds = torch.as_tensor(video["second_per_grid_ts"], dtype=torch.float32).reshape(1)
        return {"video_grid_thw": self._grid(video), "second_per_grid_ts": seconds}


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL writes each temporal patch as ``<t seconds><|vision_start|>tokens<|vision_end|>``
    (its processor's expansion of the video placeholder), and adds deepstack features."""

    model_types = ("qwen3_vl",)
    video_keys = ("pixel_values_videos", "video_grid_thw", "frame_timestamps")

    def projector_parameters(self):
        visual = self.base.visual
        return [*visual.merger.parameters(), *visual.deepstack_merger_list.parameters()]

    def video_token_ids(self, tokenizer, video: Video) -> list[int]:
        grid_t = int(self._grid(video)[0, 0])
        per_patch = self.num_video_tokens(video) // grid_t
        stamps = [float(t) for t in video["frame_timestamps"]]
        tp = self.model.config.vision_config.temporal_patch_size
        if math.ceil(len(stamps) / tp) != grid_t:
            raise ValueError(f"{len(stamps)} frame_timestamps for a video of {grid_t} temporal "
                             f"patches of {tp} frames")
        stamps += stamps[-1:] * (-len(stamps) % tp)  # pad as the processor pads frames
        cfg = self.model.config
        ids = []
        for k in range(grid_t):
            mid = (stamps[k * tp] + stamps[k * tp + tp - 1]) / 2
            ids += tokenizer(f"<{mid:.1f} seconds>", add_special_tokens=False)["input_ids"]
            ids += [cfg.vision_start_token_id] + [self.video_token_id] * per_patch
            ids += [cfg.vision_end_token_id]
        return ids

    def merge_features(self, outputs):
        merged = super().merge_features(outputs)
        layers = len(outputs[0].deepstack_features)
        merged.deepstack_features = [
            tuple(itertools.chain.from_iterable(o.deepstack_features[i] for o in outputs))
            for i in range(layers)
        ]
        return merged
