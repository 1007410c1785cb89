"""LLaVA-Video (LLaVA-Video-7B-Qwen2, LLaVA-Video-7B-Qwen2-TPO): a LLaVA-NeXT-format video LLM.

Like LongVA it is not a transformers model family: it ships in the LLaVA-NeXT layout
(``LlavaQwenForCausalLM``; load/export in ``llava_video_checkpoint``, the shared layout in
``llava_next_layout``). ``LlavaVideoForCausalLM`` is ``LongVAForCausalLM`` with LLaVA-Video's
tower and video path: a ``SiglipVisionModel``, the ``mlp2x_gelu`` projector, the learned
``image_newline`` and a Qwen2 causal LM. ``LlavaVideoAdapter`` runs it packed.

The video path, as LLaVA-NeXT's code runs it (``modalities=["video"]``):

* frames ``[F, 3, 384, 384]`` (SigLIP processor: resize to 384 x 384 bicubic, no crop,
  mean = std = 0.5) go through the SigLIP tower whose **last layer LLaVA-NeXT deletes**
  (``del vision_model.encoder.layers[-1:]``, ``head = Identity``): so the checkpoint stores 26
  of so400m's 27 layers, and the features are ``hidden_states[-1]`` of those 26, before
  ``post_layernorm`` (whose weights are stored, unused); every patch is a token: ``[F, 729,
  1152]`` (27 x 27). ``mm_vision_select_layer`` (-2 in the configs) is not read by the SigLIP
  tower (the deleted layer makes it so);
* ``encode_images``: the projector runs **before** pooling: ``[F, 729, H]``;
* ``get_2dPool`` with stride 2 (the video branch of ``prepare_inputs_labels_for_multimodal``
  calls ``get_2dPool(image_feat)`` with its default stride, whatever ``mm_spatial_pool_stride``
  says): ``mm_spatial_pool_mode`` "bilinear" = ``F.interpolate(size=ceil(27/2) = 14,
  mode="bilinear")`` (align_corners False), "average" = ``avg_pool2d(2)``, "max" =
  ``max_pool2d(2)``; flattened row-major: ``[F, 196, H]``;
* ``mm_patch_merge_type`` "spatial_unpad" (starts with "spatial": the newline branch; "unpad":
  the model has ``image_newline``), then by ``mm_newline_position``: "grid"
  (``add_token_per_grid``: after each pooled row of each frame, so a frame is 14 x (14 + 1) =
  210 tokens), "frame" (``add_token_per_frame``: one after each frame), "one_token" (one after
  the whole video; transformers' LLaVA-OneVision does this), "no_token"; "flat" merges without
  newlines;
* the prompt is LongVA's ``qwen_1_5`` one (``<image>`` -> IMAGE_TOKEN_INDEX, spliced);
  LLaVA-Video's **time instruction** is on by default for this family (its training script sets
  ``--add_time_instruction True``, which LLaVA-NeXT writes into config.json as
  ``add_time_instruction``; lmms-eval's ``llava_vid`` adds the same text): the user turn is
  ``<image>\\n{TIME_INSTRUCTION}\\n{question}``.

Public files checked (read, not copied):
  LLaVA-VL/LLaVA-NeXT llava/model/llava_arch.py (get_2dPool, encode_images, add_token_per_grid,
    add_token_per_frame, the video branch of prepare_inputs_labels_for_multimodal, image_newline
    for "unpad" merge types),
  LLaVA-VL/LLaVA-NeXT llava/model/multimodal_encoder/siglip_encoder.py (SigLipVisionConfig
    defaults = so400m: 1152 wide, 4304 MLP, 27 layers, 16 heads, 384 px, patch 14,
    gelu_pytorch_tanh, eps 1e-6; the last layer deleted, hidden_states[-1]; SigLipImageProcessor
    384 x 384, mean = std = 0.5),
  LLaVA-VL/LLaVA-NeXT llava/model/language_model/llava_qwen.py (rope_scaling None),
  LLaVA-VL/LLaVA-NeXT llava/train/train.py (defaults mm_spatial_pool_mode "bilinear",
    mm_newline_position "grid"; config.json gets mm_newline_position, add_faster_video,
    faster_token_stride, add_time_instruction, force_sample; the time instruction text and its
    place, ``f'{DEFAULT_IMAGE_TOKEN}\\n{time_instruciton}\\n{question}'``),
  LLaVA-VL/LLaVA-NeXT scripts/video/train/SO400M_Qwen2_7B_ov_to_video_am9.sh (siglip-so400m-
    patch14-384, mlp2x_gelu, select layer -2, anyres_max_9, spatial_unpad, mm_newline_position
    grid, add_time_instruction True, force_sample True, mm_spatial_pool_stride 2, qwen_1_5),
  EvolvingLMMs-Lab/lmms-eval lmms_eval/models/simple/llava_vid.py (the time instruction,
    ``f"{time_instruciton}\\n{qs}"`` after ``<image>\\n``; frame times ``f"{t:.2f}s"``),
  ruili33/TPO LLaVA/inference_llava.py (the same text for LLaVA-Video-7B-Qwen2-TPO),
  huggingface.co/nkkbr/ViCA-ScanNet-80p config.json (a fine-tune of lmms-lab/LLaVA-Video-7B-Qwen2
    that keeps its keys: LlavaQwenForCausalLM, add_time_instruction true, force_sample true,
    add_faster_video false, faster_token_stride 10, image_aspect_ratio anyres_max_9).
The published lmms-lab/LLaVA-Video-7B-Qwen2 config.json and safetensors index themselves were
not readable here; the tensor names follow LlavaQwenForCausalLM's modules, as transformers'
convert_llava_onevision_weights_to_hf.py maps them for the same layout.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from tpo_fast.models.base import Video
from tpo_fast.models.longva import (
    _TEXT_KEYS,
    IMAGE_TOKEN_INDEX,
    LongVAAdapter,
    LongVAForCausalLM,
)

POOL_STRIDE = 2  # what LLaVA-NeXT's video branch pools with (get_2dPool's default)
NEWLINE_POSITIONS = ("grid", "frame", "one_token", "no_token")
POOL_MODES = ("bilinear", "average", "max")
# LLaVA-Video's time instruction (LLaVA-NeXT train.py, lmms-eval llava_vid), verbatim: note the
# missing space after "{frame_time}." in the original.
TIME_INSTRUCTION = ("The video lasts for {video_time:.2f} seconds, and {num_frames} frames are "
                    "uniformly sampled from it. These frames are located at {frame_time}.Please "
                    "answer the following questions related to this video.")


def make_time_instruction(video_seconds: float, frame_timestamps) -> str:
    """LLaVA-Video's time instruction for a video of ``video_seconds`` whose sampled frames lie at
    ``frame_timestamps`` (seconds): ``frame_time`` is ``",".join(f"{t:.2f}s")``."""
    stamps = [float(t) for t in frame_timestamps]
    return TIME_INSTRUCTION.format(video_time=float(video_seconds), num_frames=len(stamps),
                                   frame_time=",".join(f"{t:.2f}s" for t in stamps))


class LlavaVideoConfig:
    """A LLaVA-Video config: the checkpoint's ``config.json`` (``llava``, kept verbatim so an
    export writes it back unchanged), the tower's ``SiglipVisionConfig`` (as stored: the layers
    LLaVA-NeXT keeps) and the derived ``Qwen2Config`` (``text_config``). Raises ``ValueError``
    for settings LLaVA-NeXT's video path does not have or this module does not implement."""

    model_type = "llava_video"  # the adapter registry key (not the checkpoint's model_type)

    def __init__(self, llava: dict, vision_config):
        from transformers import Qwen2Config, SiglipVisionConfig

        if isinstance(vision_config, dict):
            vision_config = SiglipVisionConfig(**vision_config)
        vision_config.vision_use_head = False  # head = Identity in LLaVA-NeXT
        self.llava = copy.deepcopy(dict(llava))
        self.vision_config = vision_config
        missing = [k for k in ("mm_vision_tower", "mm_hidden_size", "hidden_size", "vocab_size",
                               "num_hidden_layers", "num_attention_heads") if k not in llava]
        if missing:
            raise ValueError(f"not a LLaVA-NeXT (LLaVA-Video) config: it lacks {missing}")
        self.text_config = Qwen2Config(**{k: llava[k] for k in _TEXT_KEYS if k in llava})
        self.video_token_id = IMAGE_TOKEN_INDEX
        self.mm_projector_type = llava.get("mm_projector_type", "linear")
        self.mm_patch_merge_type = llava.get("mm_patch_merge_type", "flat")
        # LLaVA-NeXT's getattr defaults (llava_arch.py / train.py)
        self.mm_newline_position = llava.get("mm_newline_position") or "one_token"
        self.mm_spatial_pool_mode = llava.get("mm_spatial_pool_mode") or "bilinear"
        # on by default for this family (LLaVA-Video was trained and is evaluated with it)
        self.add_time_instruction = bool(llava.get("add_time_instruction", True))
        self._check(llava)

    def _check(self, llava: dict) -> None:
        problems = []
        if not re.fullmatch(r"linear|mlp\d+x_gelu", self.mm_projector_type):
            problems.append(f"mm_projector_type {self.mm_projector_type!r} (supported: linear, "
                            "mlp<N>x_gelu)")
        merge = self.mm_patch_merge_type
        if merge != "flat" and not merge.startswith("spatial"):
            problems.append(f"mm_patch_merge_type {merge!r} (LLaVA-NeXT's video path takes "
                            "'flat' or 'spatial*')")
        if self.mm_newline_position not in NEWLINE_POSITIONS:
            problems.append(f"mm_newline_position {self.mm_newline_position!r} (one of "
                            f"{NEWLINE_POSITIONS})")
        elif (merge.startswith("spatial") and "unpad" not in merge
              and self.mm_newline_position in ("grid", "frame")):
            problems.append(f"mm_newline_position {self.mm_newline_position!r} needs an 'unpad' "
                            f"merge type (the model has no image_newline under {merge!r})")
        if self.mm_spatial_pool_mode not in POOL_MODES:
            problems.append(f"mm_spatial_pool_mode {self.mm_spatial_pool_mode!r} (one of "
                            f"{POOL_MODES})")
        if llava.get("add_faster_video"):
            problems.append("add_faster_video true (the slow-fast token path is not implemented)")
        if llava.get("mm_resampler_type") not in (None, "identity"):
            problems.append(f"mm_resampler_type {llava['mm_resampler_type']!r}")
        if llava.get("mm_use_im_start_end"):
            problems.append("mm_use_im_start_end true")
        if int(llava["mm_hidden_size"]) != self.vision_config.hidden_size:
            problems.append(f"mm_hidden_size {llava['mm_hidden_size']} but the SigLIP tower's "
                            f"hidden_size is {self.vision_config.hidden_size}")
        if problems:
            raise ValueError("unsupported LLaVA-Video config: " + "; ".join(problems))
        stride = llava.get("mm_spatial_pool_stride")
        if stride not in (None, POOL_STRIDE):
            warnings.warn(f"mm_spatial_pool_stride {stride} is ignored: LLaVA-NeXT's video path "
                          f"pools with stride {POOL_STRIDE} (get_2dPool's default)", stacklevel=3)

    def to_dict(self) -> dict:
        """The checkpoint's config.json (what peft and model cards read of a config)."""
        return copy.deepcopy(self.llava)

    @property
    def has_newline(self) -> bool:
        return "unpad" in self.mm_patch_merge_type

    @property
    def patches_per_side(self) -> int:
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def pooled_side(self) -> int:
        side = self.patches_per_side
        return math.ceil(side / POOL_STRIDE) if self.mm_spatial_pool_mode == "bilinear" \
            else side // POOL_STRIDE

    def num_video_tokens(self, frames: int) -> int:
        """Tokens of one video of ``frames`` frames: pooled grids plus newlines."""
        side = self.pooled_side
        tokens = frames * side * side
        if self.mm_patch_merge_type == "flat":
            return tokens
        return tokens + {"grid": frames * side, "frame": frames,
                         "one_token": int(self.has_newline), "no_token": 0
                         }[self.mm_newline_position]


class LlavaVideoForCausalLM(LongVAForCausalLM):
    """SigLIP tower + ``mm_projector`` + ``image_newline`` + Qwen2 + ``lm_head``.

    ``forward(input_ids [B, T] (video positions hold IMAGE_TOKEN_INDEX), pixel_values_videos
    [B, F, 3, S, S] or a list of [F, 3, S, S]) -> .logits [B, T, V]`` (LongVA's forward; only
    ``get_video_features`` differs)."""

    def __init__(self, config: LlavaVideoConfig, attn_implementation: str = "sdpa"):
        super().__init__(config, attn_implementation=attn_implementation)
        if self.config.has_newline:
            hidden = self.config.text_config.hidden_size
            self.image_newline = nn.Parameter(torch.zeros(hidden))

    @staticmethod
    def vision_model_class():
        from transformers import SiglipVisionModel

        return SiglipVisionModel

    def pooled_frame_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frames [F, 3, S, S] -> [F, pooled_side², H]: tower (all stored layers, no
        post_layernorm), projector, 2-D pooling, row-major."""
        cfg = self.config
        out = self.vision_tower(pixel_values.to(self.vision_tower.dtype), output_hidden_states=True)
        features = out.hidden_states[-1]
        features = self.mm_projector(features.to(next(self.mm_projector.parameters()).dtype))
        frames, _, hidden = features.shape
        side = cfg.patches_per_side
        grid = features.view(frames, side, side, hidden).permute(0, 3, 1, 2)
        if cfg.mm_spatial_pool_mode == "bilinear":
            grid = F.interpolate(grid, size=[cfg.pooled_side] * 2, mode="bilinear")
        elif cfg.mm_spatial_pool_mode == "average":
            grid = F.avg_pool2d(grid, POOL_STRIDE)
        else:
            grid = F.max_pool2d(grid, POOL_STRIDE)
        return grid.permute(0, 2, 3, 1).reshape(frames, -1, hidden)

    def arrange(self, pooled: torch.Tensor) -> torch.Tensor:
        """One video's pooled frames [F, side², H] -> its token rows [N, H], newlines placed per
        ``mm_newline_position``."""
        cfg = self.config
        frames, tokens, hidden = pooled.shape
        if cfg.mm_patch_merge_type == "flat" or cfg.mm_newline_position == "no_token":
            return pooled.reshape(-1, hidden)
        if cfg.mm_newline_position == "one_token":
            rows = pooled.reshape(-1, hidden)
            return torch.cat([rows, self.image_newline[None].to(rows)]) if cfg.has_newline \
                else rows
        newline = self.image_newline.to(pooled)
        if cfg.mm_newline_position == "grid":
            side = cfg.pooled_side
            grid = pooled.reshape(frames, side, side, hidden)
            grid = torch.cat([grid, newline.expand(frames, side, 1, hidden)], dim=2)
            return grid.reshape(-1, hidden)
        return torch.cat([pooled, newline.expand(frames, 1, hidden)], dim=1).reshape(-1, hidden)

    def get_video_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One video's frames [F, 3, S, S] -> [num_video_tokens(F), H]."""
        return self.arrange(self.pooled_frame_features(pixel_values))


class LlavaVideoAdapter(LongVAAdapter):
    """Video input: ``{"pixel_values_videos": float [1, F, 3, S, S]}``, plus ``frame_timestamps``
    (seconds, one per frame) and ``video_seconds`` (the whole video's length) for the time
    instruction. Positions are 1-D; the prompt is LongVA's (qwen_1_5, IMAGE_TOKEN_INDEX)."""

    model_types = ("llava_video",)

    def projector_parameters(self):
        params = list(self.model.mm_projector.parameters())
        return params + ([self.model.image_newline] if self.model.config.has_newline else [])

    def num_video_tokens(self, video: Video) -> int:
        return self.model.config.num_video_tokens(video["pixel_values_videos"].shape[1])

    def video_features(self, video: Video):
        return SimpleNamespace(
            pooler_output=self.model.get_video_features(video["pixel_values_videos"][0])[None])

    def _arranged(self, pooled: torch.Tensor, videos: list[Video]):
        counts = [v["pixel_values_videos"].shape[1] for v in videos]
        rows = [self.model.arrange(p) for p in pooled.split(counts)]
        return SimpleNamespace(pooler_output=torch.cat(rows)[None])

    def batch_video_features(self, videos: list[Video]):
        """All frames of the micro-batch through the tower in one call, arranged per video."""
        frames = torch.cat([v["pixel_values_videos"][0] for v in videos])
        return self._arranged(self.model.pooled_frame_features(frames), videos)

    # sequence parallelism: frames are the units; newlines are placed once all are back
    def unit_features(self, units: list) -> torch.Tensor:
        out = self.model.pooled_frame_features(torch.stack(units))
        return out.reshape(-1, out.shape[-1])

    def assemble_features(self, rows: torch.Tensor, videos: list[Video]):
        side = self.model.config.pooled_side
        return self._arranged(rows.reshape(-1, side * side, rows.shape[-1]), videos)

    def prompt_ids(self, tokenizer, question: str, video: Video, system: str | None = None,
                   chat_template: str | None = None,
                   time_instruction: bool | None = None) -> list[int]:
        """LongVA's ``qwen_1_5`` prompt; with the time instruction (default: config.json's
        ``add_time_instruction``, true when absent) the user turn is ``<image>\\n{instruction}\\n
        {question}``, the instruction built from ``video["video_seconds"]`` and
        ``video["frame_timestamps"]``."""
        if time_instruction is None:
            time_instruction = self.model.config.add_time_instruction
        if time_instruction:
            if not question or not question.strip():
                raise ValueError("empty question")
            missing = [k for k in ("video_seconds", "frame_timestamps") if k not in video]
            if missing:
                raise ValueError(f"the LLaVA-Video time instruction needs the video's {missing} "
                                 "(the video loader adds them; or set add_time_instruction "
                                 "false in the model's config.json)")
            frames = video["pixel_values_videos"].shape[1]
            if len(video["frame_timestamps"]) != frames:
                raise ValueError(f"{len(video['frame_timestamps'])} frame_timestamps for a video "
                                 f"of {frames} frames")
            instruction = make_time_instruction(video["video_seconds"], video["frame_timestamps"])
            question = f"{instruction}\n{question}"
        return super().prompt_ids(tokenizer, question, video, system=system,
                                  chat_template=chat_template)
