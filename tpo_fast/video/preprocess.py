"""Per-model preprocessing: uint8 frames -> the model's video tensors, on the frames' device.

The steps of the Hugging Face video processors (transformers 5.x), written in plain torch so
they run on CUDA frames without a host round trip and without torchvision (which does not run
beside the CPU torch here). Which steps a family takes is its entry in the family registry
(``tpo_fast.models.registry.FAMILIES``); their numbers come from the model folder's own
processor config (``processor_settings``: the keys of ``video_preprocessor_config.json`` /
``preprocessor_config.json`` / ``processor_config.json``), else the processor class's defaults.

* resize with bicubic, antialiased interpolation on float values, then clamp to [0, 255] and
  round (torchvision's uint8 resize, which the processors use), skipped when the size already
  matches;
* rescale by 1/255 and normalise with the family's mean/std, fused as HF does:
  ``(x - 255 mean) / (255 std)``; float32 output;
* ``SquareFrames`` (LLaVA-OneVision, LLaVA-NeXT-Video, LongVA, Video-LLaVA, InternVL, SmolVLM):
  every frame to S x S, S = ``vision_config.image_size`` — a direct resize (OneVision: SigLIP
  mean = std = 0.5, the released checkpoints' ``video_preprocessor_config.json``; InternVL;
  SmolVLM), or the shortest side to S and a centre crop (LLaVA-NeXT-Video, LongVA, Video-LLaVA:
  OpenAI CLIP mean/std);
* ``GridFrames`` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL and the families whose processors copy them):
  ``smart_resize`` to multiples of ``p * m`` (patch size times spatial merge size) within
  [min_pixels, max_pixels] (Qwen3-VL and GLM-4.1V count the frames in the pixel budget, as their
  processors do), frames padded to a multiple of the temporal patch size ``tp`` by repeating the
  last frame, patches flattened in ``Qwen2VLVideoProcessor.patchify``'s order to
  ``[t*h*w, 3*tp*p*p]`` (Cosmos3-Edge: pixels before channels). Default pixel bounds are the
  processors' class defaults written in units of ``(p*m)^2`` (Qwen2-VL: 128 and 768 merged
  tokens), so they equal HF's for the real patch sizes and scale with tiny test models; a model
  config carrying ``video_min_pixels`` / ``video_max_pixels`` overrides the folder's (the demo's
  tiny models do, so training, curation and evaluation see the same video tokens).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_TOKENS, MAX_TOKENS = 128, 768  # Qwen2-VL's default pixel bounds in units of (patch*merge)^2


def supported_families() -> tuple[str, ...]:
    """The families with a frames -> model inputs step (``tpo_fast.models.supported_families``)."""
    from tpo_fast.models.registry import supported_families as families

    return families()


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


# -- the model folder's processor config -------------------------------------------------------

# where a folder keeps its (video) processor settings, most specific first: a video processor's
# config (transformers 5 nests it in processor_config.json; 4.x wrote its own file), else the
# image processor's (families that read a video as frames, older Qwen2-VL folders)
_SETTINGS_SOURCES = (("processor_config.json", "video_processor"),
                     ("video_preprocessor_config.json", None),
                     ("processor_config.json", "image_processor"),
                     ("preprocessor_config.json", None))


@functools.lru_cache(maxsize=64)
def _folder_settings(folder: str) -> tuple[dict, str | None]:
    root = Path(folder)
    for name, key in _SETTINGS_SOURCES:
        path = root / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if key is not None:
            data = data.get(key)
            if not isinstance(data, dict):
                continue
        return data, f"{path}" + (f" [{key}]" if key else "")
    return {}, None


def processor_settings(model_config) -> tuple[dict, str | None]:
    """The (video) processor settings of the folder the model was loaded from
    (``config._name_or_path``) and the file they came from; ``({}, None)`` for a model built in
    memory or a folder without processor files."""
    folder = getattr(model_config, "_name_or_path", None) or ""
    if not folder or not Path(folder).is_dir():
        return {}, None
    return _folder_settings(str(Path(folder).resolve()))


def _pair(value) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None


def _image_size(model_config) -> tuple[int, int]:
    size = _pair(getattr(model_config.vision_config, "image_size", None))
    if size is None:
        raise ValueError(f"{model_config.model_type}: vision_config.image_size is not set")
    return size


# -- LLaVA-style square frames -----------------------------------------------------------------

@dataclass(frozen=True)
class SquareFrames:
    """Every frame to the vision tower's S x S (``vision_config.image_size``): the shortest side
    resized to S and the centre cropped (``crop``), or resized directly; the family's mean/std
    unless the folder's processor config gives its own. Output ``{key: [1, F, 3, S, S]}``
    (``batch_dim=False``: ``[F, 3, S, S]``, the frames as images). ``times``: also
    ``"frame_timestamps"`` (seconds) and ``"video_seconds"`` (the whole video's ``duration``)
    when both are known, for a prompt that states them (LLaVA-Video's time instruction)."""

    mean: tuple
    std: tuple
    crop: bool
    key: str = "pixel_values_videos"
    batch_dim: bool = True
    times: bool = False

    def __call__(self, frames, model_config, settings: dict, source: str | None, *, size=None,
                 mean=None, std=None, timestamps=None, duration=None, **_) -> dict:
        family = model_config.model_type
        side = _image_size(model_config)
        if size is not None and tuple(size) != side:
            raise ValueError(f"{family} takes {side[0]}x{side[1]} frames "
                             f"(vision_config.image_size); size={tuple(size)} is not supported")
        target = self._target(settings)
        if target is not None and target != side:
            raise ValueError(f"{source}: frames of {target[0]}x{target[1]} do not fit the vision "
                             f"tower's image_size {side[0]}x{side[1]} (config.json)")
        x = _as_float_nchw(frames)
        if self.crop:
            x = center_crop(resize(x, *shortest_side_size(*x.shape[-2:], side[0])), *side)
        else:
            x = resize(x, *side)
        x = normalize(x, mean or settings.get("image_mean") or self.mean,
                      std or settings.get("image_std") or self.std)
        out = {self.key: x.unsqueeze(0) if self.batch_dim else x}
        if self.times and timestamps is not None and duration is not None:
            out["frame_timestamps"] = _frame_timestamps(x.shape[0], timestamps, None, family)
            out["video_seconds"] = float(duration)
        return out

    def _target(self, settings: dict) -> tuple[int, int] | None:
        """The frame size the folder's processor config makes (None: it does not say)."""
        crop, size = settings.get("crop_size"), settings.get("size") or {}
        if self.crop and isinstance(crop, dict) and "height" in crop:
            return int(crop["height"]), int(crop["width"])
        if not self.crop and isinstance(size, dict) and "height" in size:
            return int(size["height"]), int(size["width"])
        top = settings.get("max_image_size")  # SmolVLM: frames end square at this side
        if isinstance(top, dict) and "longest_edge" in top:
            return int(top["longest_edge"]), int(top["longest_edge"])
        return None


# -- Qwen-VL-style patch grids -----------------------------------------------------------------

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


def patchify(x: torch.Tensor, tp: int, p: int, m: int,
             channels_last: bool = False) -> tuple[torch.Tensor, list[int]]:
    """float [n, 3, H, W] (H, W multiples of p*m) -> ([t*h*w, 3*tp*p*p], [t, h, w]).

    Frames are padded to a multiple of ``tp`` with copies of the last frame. Row order: temporal
    patch, then merge-block row, merge-block column, row inside the block, column inside the
    block; each row holds channel, then temporal offset, then the p x p pixels (HF's order;
    ``channels_last``: the p x p pixels, then channel, then temporal offset — Cosmos3-Edge's)."""
    if pad := -x.shape[0] % tp:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
    n, c, height, width = x.shape
    t, h, w = n // tp, height // p, width // p
    x = x.reshape(t, tp, c, h // m, m, p, w // m, m, p)
    order = (0, 3, 6, 4, 7, 5, 8, 2, 1) if channels_last else (0, 3, 6, 4, 7, 2, 1, 5, 8)
    x = x.permute(*order)
    return x.reshape(t * h * w, c * tp * p * p), [t, h, w]


def _sampling_fps(timestamps: Sequence[float] | None, fps: float | None, family: str) -> float:
    if fps is not None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        return float(fps)
    if timestamps is not None and len(timestamps) > 1:
        span = float(timestamps[-1]) - float(timestamps[0])
        if span > 0:
            return (len(timestamps) - 1) / span
    raise ValueError(f"{family} needs the sampling fps: pass fps=, or timestamps= spanning "
                     "more than one instant")


def _frame_timestamps(n: int, timestamps, fps, family: str) -> list[float]:
    if timestamps is not None:
        if len(timestamps) != n:
            raise ValueError(f"{len(timestamps)} timestamps for {n} frames")
        return [float(t) for t in timestamps]
    if fps is not None and fps > 0:
        return [i / fps for i in range(n)]
    raise ValueError(f"{family} needs frame timestamps: pass timestamps= (seconds) or fps=")


def _setting(settings: dict, *names):
    for name in names:
        if settings.get(name) is not None:
            return settings[name]
    return None


@dataclass(frozen=True)
class GridFrames:
    """Qwen2-VL's video processor and its copies: smart resize, normalise, patchify.

    ``min_tokens`` / ``max_tokens``: the class-default pixel bounds in units of (p*m)^2;
    ``frames_in_budget``: the bounds count ``t * h * w`` pixels (Qwen3-VL, GLM-4.1V);
    ``channels_last``: Cosmos3-Edge's patch rows; ``time_key``: the time field the model reads —
    ``second_per_grid_ts`` / ``video_second_per_grid`` (tp / sampling fps) or
    ``frame_timestamps`` (seconds, one per frame, for prompts that write each patch's time)."""

    mean: tuple
    std: tuple
    min_tokens: float = MIN_TOKENS
    max_tokens: float = MAX_TOKENS
    frames_in_budget: bool = False
    channels_last: bool = False
    time_key: str | None = None

    def geometry(self, model_config, settings: dict) -> tuple[int, int, int]:
        """(temporal patch, patch, merge): the folder's processor config, else the model's."""
        vision = model_config.vision_config
        p = _setting(settings, "patch_size") or getattr(vision, "patch_size", None)
        tp = _setting(settings, "temporal_patch_size") or getattr(vision, "temporal_patch_size", 1)
        m = _setting(settings, "merge_size") or getattr(vision, "spatial_merge_size", None)
        if p is None or m is None:
            raise ValueError(f"{model_config.model_type}: no patch_size / merge size in the "
                             "processor config or vision_config")
        p = p[0] if isinstance(p, (list, tuple)) else p
        return int(tp), int(p), int(m)

    def bounds(self, model_config, settings: dict, factor: int, min_pixels, max_pixels):
        """explicit > the model config's ``video_min_pixels`` / ``video_max_pixels`` > the
        folder's processor config > the class defaults (in units of factor^2)."""
        size = settings.get("size") if isinstance(settings.get("size"), dict) else {}
        lo = _first(min_pixels, getattr(model_config, "video_min_pixels", None),
                    size.get("shortest_edge"), settings.get("min_pixels"),
                    self.min_tokens * factor * factor)
        hi = _first(max_pixels, getattr(model_config, "video_max_pixels", None),
                    size.get("longest_edge"), settings.get("max_pixels"),
                    self.max_tokens * factor * factor)
        return int(lo), int(hi)

    def __call__(self, frames, model_config, settings: dict, source: str | None, *,
                 timestamps=None, fps=None, size=None, min_pixels=None, max_pixels=None,
                 mean=None, std=None) -> dict:
        family = model_config.model_type
        tp, p, m = self.geometry(model_config, settings)
        factor = p * m
        x = _as_float_nchw(frames)
        n = x.shape[0]
        if size is not None:
            height, width = (int(s) for s in size)
            if height % factor or width % factor or height < factor or width < factor:
                raise ValueError(f"size {tuple(size)} must be positive multiples of {factor} "
                                 "(patch_size * spatial_merge_size)")
        else:
            lo, hi = self.bounds(model_config, settings, factor, min_pixels, max_pixels)
            # the processors that count frames in the budget need >= tp of them
            frames_arg = max(n, tp) if self.frames_in_budget else None
            height, width = smart_resize(x.shape[-2], x.shape[-1], factor, lo, hi, frames_arg, tp)
        x = normalize(resize(x, height, width), mean or settings.get("image_mean") or self.mean,
                      std or settings.get("image_std") or self.std)
        patches, grid = patchify(x, tp, p, m, self.channels_last)
        out = {"pixel_values_videos": patches, "video_grid_thw": torch.tensor([grid])}
        if self.time_key in ("second_per_grid_ts", "video_second_per_grid"):
            out[self.time_key] = torch.tensor([tp / _sampling_fps(timestamps, fps, family)])
        elif self.time_key == "frame_timestamps":
            out["frame_timestamps"] = _frame_timestamps(n, timestamps, fps, family)
        return out


def _first(*values):
    return next(v for v in values if v is not None)


# -- entry point -------------------------------------------------------------------------------

def preprocess_video(frames: torch.Tensor, model_config, *,
                     timestamps: Sequence[float] | None = None, fps: float | None = None,
                     size: tuple[int, int] | None = None, min_pixels: int | None = None,
                     max_pixels: int | None = None, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, duration: float | None = None) -> dict:
    """The model's video inputs from uint8 frames [n, H, W, 3] (CPU or CUDA; the outputs'
    pixel tensors stay on that device; grids and times are CPU).

    Dispatch on ``model_config.model_type`` through the family registry (its entry's frame
    steps; see the module docstring), with the settings of the folder the model came from:

    * square-frame families: ``{"pixel_values_videos": float32 [1, n, 3, S, S]}`` (InternVL:
      ``{"pixel_values": [n, 3, S, S]}``, SmolVLM: ``{"pixel_values": [1, n, 3, S, S]}``);
    * grid families: ``{"pixel_values_videos": float32 [t*h*w, 3*tp*p*p], "video_grid_thw":
      int64 [1, 3]}`` plus the family's time field: ``"second_per_grid_ts"`` float32 [1] (= tp /
      sampling fps; qwen2_5_vl; ``"video_second_per_grid"`` for the Qwen2.5-Omni thinker) or
      ``"frame_timestamps"`` list[float] of n seconds (qwen3_vl and the families that write each
      patch's time into the prompt).

    ``timestamps`` (seconds, one per frame) and ``fps`` (the sampling rate) feed the time
    fields: the per-grid seconds use ``fps``, else ``(n-1) / (t[-1] - t[0])``; frame times use
    ``timestamps``, else ``i / fps``. ``size=(h, w)`` overrides the grid resize target
    (multiples of p*m); ``min_pixels``/``max_pixels`` override its bounds; ``mean``/``std``
    override the normalisation. llava_video also returns ``"frame_timestamps"`` and
    ``"video_seconds"`` (= ``duration``, the whole video's length) when both are given, for
    LLaVA-Video's time instruction.
    """
    from tpo_fast.models.registry import frame_steps

    family = getattr(model_config, "model_type", None)
    steps = frame_steps(family)
    settings, source = processor_settings(model_config)
    if isinstance(steps, SquareFrames):
        return steps(frames, model_config, settings, source, size=size, mean=mean, std=std,
                     timestamps=timestamps, duration=duration)
    return steps(frames, model_config, settings, source, timestamps=timestamps, fps=fps,
                 size=size, min_pixels=min_pixels, max_pixels=max_pixels, mean=mean, std=std)
