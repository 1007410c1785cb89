"""Per-model preprocessing: uint8 frames -> the model's video tensors, on the frames' device.

Follows the Hugging Face video processors' formula (transformers 5.x), written in plain torch
so it runs on CUDA frames without a host round trip and without torchvision:

* resize with bicubic, antialiased interpolation on float values, then clamp to [0, 255] and
  round (torchvision's uint8 resize, which the processors use), skipped when the size already
  matches;
* rescale by 1/255 and normalise with the family's mean/std, fused as HF does:
  ``(x - 255 mean) / (255 std)``; float32 output;
* LLaVA-OneVision: resize to S x S (S = ``vision_config.image_size``), SigLIP mean = std = 0.5
  (the released checkpoints' ``video_preprocessor_config.json``; transformers' class default
  is CLIP's, overridden by those files);
* LLaVA-NeXT-Video and LongVA: resize the shortest side to S, centre-crop S x S, OpenAI CLIP
  mean/std (LongVA: the CLIP image processor it ships);
* Qwen2-VL / Qwen2.5-VL / Qwen3-VL: ``smart_resize`` to multiples of ``p * m`` (patch size
  times spatial merge size) within [min_pixels, max_pixels] (Qwen3-VL counts the frames in the
  pixel budget, as its processor does), frames padded to a multiple of the temporal patch size
  ``tp`` by repeating the last frame, patches flattened in ``Qwen2VLVideoProcessor.patchify``'s
  order to ``[t*h*w, 3*tp*p*p]``; mean/std CLIP for Qwen2/2.5, 0.5 for Qwen3. Default pixel
  bounds are the processors' class defaults written in units of ``(p*m)^2`` (128 and 768 merged
  tokens), so they equal HF's for the real patch sizes and scale with tiny test models; a model
  config carrying ``video_min_pixels`` / ``video_max_pixels`` overrides them (the demo's tiny
  models do, so training, curation and evaluation see the same video tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

LLAVA_FAMILIES = {  # model_type: (mean, std, shortest-side resize + centre crop)
    "llava_onevision": (HALF, HALF, False),
    "llava_next_video": (CLIP_MEAN, CLIP_STD, True),
    "longva": (CLIP_MEAN, CLIP_STD, True),
    "llava_video": (HALF, HALF, False),  # LLaVA-NeXT's SigLipImageProcessor: 384 x 384, 0.5
}
QWEN_FAMILIES = {  # model_type: (mean, std)
    "qwen2_vl": (CLIP_MEAN, CLIP_STD),
    "qwen2_5_vl": (CLIP_MEAN, CLIP_STD),
    "qwen3_vl": (HALF, HALF),
}
MIN_TOKENS, MAX_TOKENS = 128, 768  # default pixel bounds in units of (patch * merge)^2


def supported_families() -> tuple[str, ...]:
    return tuple(LLAVA_FAMILIES) + tuple(QWEN_FAMILIES)


# -- shared steps ------------------------------------------------------------------------------

def _as_float_nchw(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> float32 [n, 3, H, W] (values 0..255)."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [n, H, W, 3], got {frames.dtype} "
                         f"{list(frames.shape)}")
    if frames.shape[0] < 1:
        raise ValueError("no frames to preprocess")
    return frames.permute(0, 3, 1, 2).to(torch.float32)


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic antialiased resize of float [n, 3, H, W] (0..255), rounded to uint8 levels."""
    if tuple(x.shape[-2:]) == (height, width):
        return x
    y = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False,
                      antialias=True)
    return y.clamp_(0, 255).round_()


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x / 255 - mean) / std, fused as ``(x - 255 mean) / (255 std)``; x: [..., 3, H, W]."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(3, 1, 1) * 255.0
    return (x - m) / s


def shortest_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """HF's ``shortest_edge`` resize target: the short side becomes ``side``, the long side
    ``int(side * long / short)``."""
    if height <= width:
        return side, int(side * width / height)
    return int(side * height / width), side


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the centre ``height x width`` (top/left offsets truncated, as HF does)."""
    h, w = x.shape[-2:]
    if height > h or width > w:
        raise ValueError(f"crop {height}x{width} larger than the frame {h}x{w}")
    top, left = int((h - height) / 2.0), int((w - width) / 2.0)
    return x[..., top:top + height, left:left + width]


# -- LLaVA-style families ----------------------------------------------------------------------

def _llava(frames: torch.Tensor, model_config, family: str, size, mean, std, timestamps=None,
           duration=None) -> dict:
    side = int(model_config.vision_config.image_size)
    if size is not None and tuple(size) != (side, side):
        raise ValueError(f"{family} takes {side}x{side} frames (vision_config.image_size); "
                         f"size={tuple(size)} is not supported")
    default_mean, default_std, crop = LLAVA_FAMILIES[family]
    x = _as_float_nchw(frames)
    if crop:
        x = center_crop(resize(x, *shortest_side_size(*x.shape[-2:], side)), side, side)
    else:
        x = resize(x, side, side)
    x = normalize(x, mean or default_mean, std or default_std)
    out = {"pixel_values_videos": x.unsqueeze(0)}
    if family == "llava_video" and timestamps is not None and duration is not None:
        # LLaVA-Video's time instruction (tpo_fast.models.llava_video) states both
        out["frame_timestamps"] = _frame_timestamps(x.shape[0], timestamps, None)
        out["video_seconds"] = float(duration)
    return out


# -- Qwen-VL families --------------------------------------------------------------------------

def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int,
                 num_frames: int | None = None, temporal_factor: int = 2) -> tuple[int, int]:
    """The Qwen-VL resize target: both sides multiples of ``factor``, aspect ratio kept, the
    pixel count within [min_pixels, max_pixels]. With ``num_frames`` (Qwen3-VL) the count is
    ``t_bar * h * w`` (t_bar = num_frames rounded to ``temporal_factor``) and sides shorter than
    ``factor`` are first scaled up."""
    if num_frames is not None and (height < factor or width < factor):
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} > 200")
    frames = 1 if num_frames is None else num_frames
    t_bar = 1 if num_frames is None else round(num_frames / temporal_factor) * temporal_factor
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify(x: torch.Tensor, tp: int, p: int, m: int) -> tuple[torch.Tensor, list[int]]:
    """float [n, 3, H, W] (H, W multiples of p*m) -> ([t*h*w, 3*tp*p*p], [t, h, w]).

    Frames are padded to a multiple of ``tp`` with copies of the last frame. Row order: temporal
    patch, then merge-block row, merge-block column, row inside the block, column inside the
    block; each row holds channel, then temporal offset, then the p x p pixels (HF's order)."""
    if pad := -x.shape[0] % tp:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
    n, c, height, width = x.shape
    t, h, w = n // tp, height // p, width // p
    x = x.reshape(t, tp, c, h // m, m, p, w // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * h * w, c * tp * p * p), [t, h, w]


def _sampling_fps(timestamps: Sequence[float] | None, fps: float | None) -> float:
    if fps is not None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        return float(fps)
    if timestamps is not None and len(timestamps) > 1:
        span = float(timestamps[-1]) - float(timestamps[0])
        if span > 0:
            return (len(timestamps) - 1) / span
    raise ValueError("qwen2_5_vl needs the sampling fps: pass fps=, or timestamps= spanning "
                     "more than one instant")


def _qwen(frames: torch.Tensor, model_config, family: str, *, timestamps, fps, size,
          min_pixels, max_pixels, mean, std) -> dict:
    vision = model_config.vision_config
    tp, p, m = vision.temporal_patch_size, vision.patch_size, vision.spatial_merge_size
    factor = p * m
    x = _as_float_nchw(frames)
    n = x.shape[0]
    if size is not None:
        height, width = (int(s) for s in size)
        if height % factor or width % factor or height < factor or width < factor:
            raise ValueError(f"size {tuple(size)} must be positive multiples of {factor} "
                             "(patch_size * spatial_merge_size)")
    else:
        # explicit bounds > the model config's own (``video_min_pixels`` / ``video_max_pixels``,
        # so every stage that loads a model resizes alike) > the processors' defaults
        min_pixels = min_pixels or getattr(model_config, "video_min_pixels", None)
        max_pixels = max_pixels or getattr(model_config, "video_max_pixels", None)
        lo = min_pixels if min_pixels is not None else MIN_TOKENS * factor * factor
        hi = max_pixels if max_pixels is not None else MAX_TOKENS * factor * factor
        # Qwen3-VL's processor counts frames in the budget (and needs >= tp of them).
        frames_arg = max(n, tp) if family == "qwen3_vl" else None
        height, width = smart_resize(x.shape[-2], x.shape[-1], factor, lo, hi, frames_arg, tp)
    default_mean, default_std = QWEN_FAMILIES[family]
    x = normalize(resize(x, height, width), mean or default_mean, std or default_std)
    patches, grid = patchify(x, tp, p, m)
    out = {"pixel_values_videos": patches, "video_grid_thw": torch.tensor([grid])}
    if family == "qwen2_5_vl":
        out["second_per_grid_ts"] = torch.tensor([tp / _sampling_fps(timestamps, fps)])
    if family == "qwen3_vl":
        out["frame_timestamps"] = _frame_timestamps(n, timestamps, fps)
    return out


def _frame_timestamps(n: int, timestamps, fps) -> list[float]:
    if timestamps is not None:
        if len(timestamps) != n:
            raise ValueError(f"{len(timestamps)} timestamps for {n} frames")
        return [float(t) for t in timestamps]
    if fps is not None and fps > 0:
        return [i / fps for i in range(n)]
    raise ValueError("qwen3_vl needs frame timestamps: pass timestamps= (seconds) or fps=")


# -- entry point -------------------------------------------------------------------------------

def preprocess_video(frames: torch.Tensor, model_config, *,
                     timestamps: Sequence[float] | None = None, fps: float | None = None,
                     size: tuple[int, int] | None = None, min_pixels: int | None = None,
                     max_pixels: int | None = None, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, duration: float | None = None) -> dict:
    """The model's video inputs from uint8 frames [n, H, W, 3] (CPU or CUDA; the outputs'
    pixel tensors stay on that device; grids and times are CPU).

    Dispatch on ``model_config.model_type`` (see the module docstring for each family):

    * llava_onevision, llava_next_video, longva: ``{"pixel_values_videos": float32
      [1, n, 3, S, S]}``;
    * qwen2_vl, qwen2_5_vl, qwen3_vl: ``{"pixel_values_videos": float32 [t*h*w, 3*tp*p*p],
      "video_grid_thw": int64 [1, 3]}`` plus ``"second_per_grid_ts"`` float32 [1] (= tp /
      sampling fps; qwen2_5_vl) or ``"frame_timestamps"`` list[float] of n seconds (qwen3_vl).

    ``timestamps`` (seconds, one per frame) and ``fps`` (the sampling rate) feed the time
    fields: qwen2_5_vl uses ``fps``, else ``(n-1) / (t[-1] - t[0])``; qwen3_vl uses
    ``timestamps``, else ``i / fps``. ``size=(h, w)`` overrides the Qwen resize target (multiples
    of p*m); ``min_pixels``/``max_pixels`` override its bounds (match a checkpoint's
    ``video_preprocessor_config.json``); ``mean``/``std`` override the normalisation.
    llava_video also returns ``"frame_timestamps"`` and ``"video_seconds"`` (= ``duration``, the
    whole video's length) when both are given, for LLaVA-Video's time instruction.
    """
    family = getattr(model_config, "model_type", None)
    if family in LLAVA_FAMILIES:
        return _llava(frames, model_config, family, size, mean, std, timestamps, duration)
    if family in QWEN_FAMILIES:
        return _qwen(frames, model_config, family, timestamps=timestamps, fps=fps, size=size,
                     min_pixels=min_pixels, max_pixels=max_pixels, mean=mean, std=std)
    raise ValueError(f"no video preprocessing for model_type {family!r}; supported: "
                     f"{supported_families()}")
