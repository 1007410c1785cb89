"""Picks the adapter of a model from ``config.model_type``."""

from __future__ import annotations

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

ADAPTERS: dict[str, type[VideoLLMAdapter]] = {
    t: cls
    for cls in (LlavaOnevisionAdapter, LlavaNextVideoAdapter, Qwen2VLAdapter, Qwen2_5VLAdapter,
                Qwen3VLAdapter, LongVAAdapter, Qwen3StyleAdapter, Glm4vStyleAdapter, Glm46vAdapter,
                InternVLAdapter, SmolVLMAdapter, VideoLlavaAdapter, KimiK25Adapter,
                OmniThinkerAdapter, LlavaVideoAdapter)
    for t in cls.model_types
}
# Families without a hand-written adapter that run through GenericVideoAdapter, each checked
# packed-vs-stock in tests/test_models_generic.py (tiny configs from tpo_fast.models.tiny).
GENERIC_FAMILIES = ("cohere_compass", "cosmos3_edge", "ernie4_5_vl_moe", "glm46v", "glm4v",
                    "glm4v_moe", "glm_ocr", "hyperclovax_vision_v2", "internvl", "kimi_k25",
                    "minimax_m3_vl", "qwen2_5_omni_thinker", "qwen3_vl_moe", "smolvlm",
                    "video_llama_3", "video_llava")


def supported_families() -> tuple[str, ...]:
    """``config.model_type`` values the packed path is tested on: the hand-written adapters'
    families and the families verified through the generic adapter."""
    return tuple(sorted(set(ADAPTERS) | set(GENERIC_FAMILIES)))


SUPPORTED = supported_families()


def adapter_class(model_type: str) -> type[VideoLLMAdapter]:
    """The adapter class of a tested family (``supported_families()``)."""
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    if model_type in GENERIC_FAMILIES:
        return GenericVideoAdapter
    raise ValueError(f"model type {model_type!r} is not supported; supported video LLMs: "
                     f"{', '.join(SUPPORTED)}")


def adapter_for(model) -> VideoLLMAdapter:
    """The adapter for a Hugging Face ``<Family>ForConditionalGeneration`` model: the family's
    own adapter where it has one, else the generic adapter — also for families not in
    ``supported_families()`` (untested: it raises ``UnsupportedModelError`` naming what the
    model lacks, and the packed path's equality with the stock forward is unchecked)."""
    return ADAPTERS.get(model.config.model_type, GenericVideoAdapter)(model)
