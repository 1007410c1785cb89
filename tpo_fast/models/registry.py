"""The family registry: one entry per ``config.model_type``, naming the family's adapter and
the steps that turn its decoded frames into model inputs.

"Supported" (``supported_families()``) means: trains, scores and generates from a model folder
through the CLI — the family's adapter runs the packed path (checked packed-vs-stock in
tests/models/test_models_generic.py and tests/models/test_models_packed.py) and its frame steps
follow its Hugging Face video processor (``tpo_fast.video.preprocess``; the folder's processor
config supplies the numbers). ``packed_families()`` adds the families whose packed path is
checked on inputs built in memory but whose processor steps are not written here (see
``Family.missing``).
Adding a family is one entry in ``FAMILIES``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tpo_fast.models.base import VideoLLMAdapter
from tpo_fast.models.frames import Glm4vStyleAdapter, Glm46vAdapter, Qwen3StyleAdapter
from tpo_fast.models.generic import GenericVideoAdapter
from tpo_fast.models.image_frames import InternVLAdapter, SmolVLMAdapter
from tpo_fast.models.kimi import KimiK25Adapter
from tpo_fast.models.llava import LlavaNextVideoAdapter, LlavaOnevisionAdapter, VideoLlavaAdapter
from tpo_fast.models.llava_video import LlavaVideoAdapter
from tpo_fast.models.longva import LongVAAdapter
from tpo_fast.models.omni import OmniThinkerAdapter
from tpo_fast.models.qwen_vl import Qwen2_5VLAdapter, Qwen2VLAdapter, Qwen3VLAdapter
from tpo_fast.video.preprocess import CLIP_MEAN, CLIP_STD, HALF, GridFrames, SquareFrames


@dataclass(frozen=True)
class Family:
    """``adapter``: the packed-path adapter class; ``frames``: its processor's steps from
    decoded frames (``SquareFrames`` / ``GridFrames``), or None with ``missing`` saying which
    processor step is not written (such a family runs only on inputs made elsewhere)."""

    adapter: type[VideoLLMAdapter]
    frames: SquareFrames | GridFrames | None
    missing: str = ""


# The processors' class defaults (transformers 5.x, models/<family>/video_processing_*.py);
# a folder's own processor config overrides mean/std, patch sizes and pixel bounds.
_QWEN2 = GridFrames(CLIP_MEAN, CLIP_STD)                                  # Qwen2VLVideoProcessor
_QWEN3 = GridFrames(HALF, HALF, frames_in_budget=True, time_key="frame_timestamps")
# Glm4vVideoProcessor / Glm46VVideoProcessor: 112*112 .. 28*28*2*30000 pixels, frames counted
_GLM = GridFrames(CLIP_MEAN, CLIP_STD, min_tokens=16, max_tokens=60000, frames_in_budget=True,
                  time_key="frame_timestamps")

FAMILIES: dict[str, Family] = {
    "llava_onevision": Family(LlavaOnevisionAdapter, SquareFrames(HALF, HALF, crop=False)),
    "llava_next_video": Family(LlavaNextVideoAdapter, SquareFrames(CLIP_MEAN, CLIP_STD, True)),
    "longva": Family(LongVAAdapter, SquareFrames(CLIP_MEAN, CLIP_STD, crop=True)),
    # LLaVA-NeXT's SigLipImageProcessor: 384 x 384, mean/std 0.5; frame times for the prompt
    "llava_video": Family(LlavaVideoAdapter, SquareFrames(HALF, HALF, crop=False, times=True)),
    "video_llava": Family(VideoLlavaAdapter, SquareFrames(CLIP_MEAN, CLIP_STD, crop=True)),
    "internvl": Family(InternVLAdapter, SquareFrames(CLIP_MEAN, CLIP_STD, crop=False,
                                                     key="pixel_values", batch_dim=False)),
    # SmolVLMVideoProcessor: frames end square at max_image_size (LANCZOS there; bicubic here)
    "smolvlm": Family(SmolVLMAdapter, SquareFrames(HALF, HALF, crop=False, key="pixel_values")),
    "qwen2_vl": Family(Qwen2VLAdapter, _QWEN2),
    "qwen2_5_vl": Family(Qwen2_5VLAdapter, GridFrames(CLIP_MEAN, CLIP_STD,
                                                      time_key="second_per_grid_ts")),
    "qwen3_vl": Family(Qwen3VLAdapter, _QWEN3),
    "qwen3_vl_moe": Family(Qwen3StyleAdapter, _QWEN3),
    "cohere_compass": Family(Qwen3StyleAdapter, _QWEN3),  # a copy of Qwen3VLVideoProcessor
    # Cosmos3EdgeVideoProcessor: 64*64 .. 24*1024*1024 pixels, tp 1, pixels before channels
    "cosmos3_edge": Family(Qwen3StyleAdapter, GridFrames(
        HALF, HALF, min_tokens=4, max_tokens=24576, frames_in_budget=True, channels_last=True,
        time_key="frame_timestamps")),
    "glm4v": Family(Glm4vStyleAdapter, _GLM),
    "glm4v_moe": Family(Glm4vStyleAdapter, _GLM),  # GLM-4.5V ships Glm4vVideoProcessor
    "glm_ocr": Family(Glm4vStyleAdapter, _GLM),
    "glm46v": Family(Glm46vAdapter, _GLM),
    "hyperclovax_vision_v2": Family(GenericVideoAdapter, _QWEN2),  # Qwen2VLVideoProcessor
    "qwen2_5_omni_thinker": Family(OmniThinkerAdapter, GridFrames(
        CLIP_MEAN, CLIP_STD, time_key="video_second_per_grid")),
    "ernie4_5_vl_moe": Family(GenericVideoAdapter, None,
                              "its processor draws each frame's timestamp onto the frame"),
    "kimi_k25": Family(KimiK25Adapter, None, "its processor's chunking into num_chunks_per_video"),
    "minimax_m3_vl": Family(GenericVideoAdapter, None, "its processor's vision segments"),
    "video_llama_3": Family(GenericVideoAdapter, None,
                            "its processor's token compression (video_compression_mask)"),
}

# kept for callers of the former names
ADAPTERS: dict[str, type[VideoLLMAdapter]] = {
    t: f.adapter for t, f in FAMILIES.items() if f.adapter is not GenericVideoAdapter}
GENERIC_FAMILIES = tuple(sorted(t for t in FAMILIES if t not in (
    "llava_onevision", "llava_next_video", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "longva",
    "llava_video")))


def supported_families() -> tuple[str, ...]:
    """``config.model_type`` values that train, score and generate from a model folder through
    the CLI: a tested packed path and the frame steps of the family's processor."""
    return tuple(sorted(t for t, f in FAMILIES.items() if f.frames is not None))


def packed_families() -> tuple[str, ...]:
    """``config.model_type`` values whose packed path is tested (packed-vs-stock), on inputs
    built in memory: ``supported_families()`` and the families without frame steps."""
    return tuple(sorted(FAMILIES))


SUPPORTED = supported_families()


def frame_steps(model_type: str | None) -> SquareFrames | GridFrames:
    """The family's steps from decoded frames to model inputs."""
    family = FAMILIES.get(model_type)
    if family is None or family.frames is None:
        why = f" ({family.missing} is not written)" if family is not None else ""
        raise ValueError(f"no video preprocessing for model_type {model_type!r}{why}; "
                         f"supported: {SUPPORTED}")
    return family.frames


def adapter_class(model_type: str) -> type[VideoLLMAdapter]:
    """The adapter class of a family with a tested packed path (``packed_families()``)."""
    if model_type in FAMILIES:
        return FAMILIES[model_type].adapter
    raise ValueError(f"model type {model_type!r} is not supported; supported video LLMs: "
                     f"{', '.join(SUPPORTED)}")


def adapter_for(model) -> VideoLLMAdapter:
    """The adapter for a Hugging Face ``<Family>ForConditionalGeneration`` model: the family's
    own adapter where it has one, else the generic adapter — also for families not in
    ``packed_families()`` (untested: it raises ``UnsupportedModelError`` naming what the
    model lacks, and the packed path's equality with the stock forward is unchecked)."""
    family = FAMILIES.get(model.config.model_type)
    return (family.adapter if family is not None else GenericVideoAdapter)(model)
