"""Tiny random models written as model folders on disk, loadable the way a real checkpoint is
(``model.path``: ``from_pretrained``, or ``load_llava_next`` for LongVA's and LLaVA-Video's
LLaVA-NeXT layout). Tests
and trials of the presets use them to take the user's path: a folder, not an in-memory object.

A folder holds what a published checkpoint of the family holds: ``config.json`` and the
weights, the tokenizer, the (video) processor's config with the keys of the family's
transformers processor class (transformers 5.x ``models/<family>/video_processing_*.py``: their
class attributes are what ``save_pretrained`` writes), and the chat template in the family's
layout — the tokenizer's ``chat_template.jinja``, or only the processor's
``chat_template.json`` (``{"chat_template": ...}``), as older llava-hf folders
(llava-hf/LLaVA-NeXT-Video-7B-hf, LanguageBind/Video-LLaVA-7B-hf) keep it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# the video processor class that each family's published folder names
VIDEO_PROCESSORS = {
    "llava_onevision": "LlavaOnevisionVideoProcessor",
    "llava_next_video": "LlavaNextVideoVideoProcessor",
    "video_llava": "VideoLlavaVideoProcessor",
    "internvl": "InternVLVideoProcessor",
    "smolvlm": "SmolVLMVideoProcessor",
    "qwen2_vl": "Qwen2VLVideoProcessor",
    "qwen2_5_vl": "Qwen2VLVideoProcessor",
    "qwen2_5_omni_thinker": "Qwen2VLVideoProcessor",
    "hyperclovax_vision_v2": "Qwen2VLVideoProcessor",
    "qwen3_vl": "Qwen3VLVideoProcessor",
    "qwen3_vl_moe": "Qwen3VLVideoProcessor",
    "cohere_compass": "CohereCompassVideoProcessor",
    "cosmos3_edge": "Cosmos3EdgeVideoProcessor",
    "glm4v": "Glm4vVideoProcessor",
    "glm4v_moe": "Glm4vVideoProcessor",
    "glm_ocr": "Glm4vVideoProcessor",
    "glm46v": "Glm46VVideoProcessor",
}
# families whose published folders keep the chat template only in the processor
PROCESSOR_TEMPLATE_FAMILIES = ("llava_next_video", "video_llava")
# InternVL's -hf checkpoints normalise with ImageNet's mean/std (not the class default, CLIP's)
_IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def save_tiny_model(family: str, folder, *, seed: int = 0, hidden: int = 32, layers: int = 2,
                    frame_size: int = 16, dtype: torch.dtype = torch.float32,
                    template: str | None = None, words: list[str] | None = None) -> Path:
    """Write a tiny random ``family`` model, its tokenizer and its processor files into
    ``folder``; returns it.

    ``template``: where the chat template goes — ``"tokenizer"`` (``chat_template.jinja``) or
    ``"processor"`` (only ``chat_template.json``); default: the family's published layout.
    ``words``: extra tokenizer words (e.g. option letters for multiple-choice evaluation).
    Grid (Qwen-VL-style) processors get ``size`` = {shortest_edge, longest_edge} =
    ``frame_size``², so frames of that size are not resized up to the processor's default
    minimum (thousands of tokens a video)."""
    from tpo_fast.models.tiny import tiny_model, tiny_tokenizer

    folder = Path(folder)
    tokenizer = tiny_tokenizer(family, words=words)
    model = tiny_model(family, tokenizer, seed=seed, hidden=hidden, layers=layers,
                       frame_size=frame_size, dtype=dtype)
    if family in ("longva", "llava_video"):
        from tpo_fast.models import save_llava_next

        # A real LongVA names a known CLIP tower; the tiny one's config goes into a folder that
        # config.json's mm_vision_tower points at (a local tower folder is what LongVA reads).
        tower = folder.resolve() / "vision_tower"
        model.config.vision_config.save_pretrained(tower)
        model.config.llava["mm_vision_tower"] = str(tower)
        save_llava_next(model, folder, tokenizer=tokenizer, overwrite=True)
        return folder
    layout = template or ("processor" if family in PROCESSOR_TEMPLATE_FAMILIES else "tokenizer")
    if layout not in ("tokenizer", "processor"):
        raise ValueError(f"template must be 'tokenizer' or 'processor', got {template!r}")
    model.save_pretrained(folder)
    chat_template = tokenizer.chat_template
    if layout == "processor":
        tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    if layout == "processor":
        config = folder / "tokenizer_config.json"
        tokenizer_config = json.loads(config.read_text())
        tokenizer_config.pop("chat_template", None)  # not even a null: the key is absent there
        _write(config, tokenizer_config)
        _write(folder / "chat_template.json", {"chat_template": chat_template})
    processor = processor_config(family, model.config, frame_size)
    if processor is not None:
        name = "preprocessor_config.json" if "image_processor_type" in processor else \
            "video_preprocessor_config.json"
        _write(folder / name, processor)
    return folder


def processor_config(family: str, config, frame_size: int) -> dict | None:
    """The (video) processor config a published folder of ``family`` holds, with the tiny
    model's sizes. Qwen2-VL's folders (Qwen/Qwen2-VL-7B-Instruct) hold only the image
    processor's ``preprocessor_config.json`` with ``min_pixels`` / ``max_pixels``; the others
    a ``video_preprocessor_config.json``."""
    from tpo_fast.models.registry import FAMILIES
    from tpo_fast.video.preprocess import GridFrames

    entry = FAMILIES.get(family)
    if entry is None or entry.frames is None:
        return None
    steps = entry.frames
    common = dict(do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                  do_convert_rgb=True, image_mean=list(steps.mean), image_std=list(steps.std),
                  resample=3)
    if isinstance(steps, GridFrames):
        tp, p, m = steps.geometry(config, {})
        pixels = frame_size * frame_size
        out = dict(common, patch_size=p, temporal_patch_size=tp, merge_size=m)
        if family == "qwen2_vl":
            return dict(out, min_pixels=pixels, max_pixels=pixels,
                        image_processor_type="Qwen2VLImageProcessor",
                        processor_class="Qwen2VLProcessor")
        return dict(out, size={"shortest_edge": pixels, "longest_edge": pixels},
                    video_processor_type=VIDEO_PROCESSORS[family])
    side = config.vision_config.image_size
    side = side[0] if isinstance(side, (list, tuple)) else int(side)
    out = dict(common, video_processor_type=VIDEO_PROCESSORS[family])
    if steps.crop:
        return dict(out, size={"shortest_edge": side}, do_center_crop=True,
                    crop_size={"height": side, "width": side})
    if family == "smolvlm":
        return dict(out, resample=1, size={"longest_edge": 4 * side}, do_pad=True,
                    max_image_size={"longest_edge": side})
    if family == "internvl":
        out.update(_IMAGENET)
    return dict(out, size={"height": side, "width": side})


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


__all__ = ["processor_config", "save_tiny_model"]
