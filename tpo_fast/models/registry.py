"""Picks the adapter of a model from ``config.model_type``."""

from __future__ import annotations

from tpo_fast.models.base import VideoLLMAdapter
from tpo_fast.models.llava import LlavaNextVideoAdapter, LlavaOnevisionAdapter
from tpo_fast.models.longva import LongVAAdapter
from tpo_fast.models.qwen_vl import Qwen2_5VLAdapter, Qwen2VLAdapter, Qwen3VLAdapter

ADAPTERS: dict[str, type[VideoLLMAdapter]] = {
    t: cls
    for cls in (LlavaOnevisionAdapter, LlavaNextVideoAdapter, Qwen2VLAdapter, Qwen2_5VLAdapter,
                Qwen3VLAdapter, LongVAAdapter)
    for t in cls.model_types
}
SUPPORTED = tuple(sorted(ADAPTERS))


def adapter_class(model_type: str) -> type[VideoLLMAdapter]:
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise ValueError(f"model type {model_type!r} is not supported; supported video LLMs: "
                         f"{', '.join(SUPPORTED)}") from None


def adapter_for(model) -> VideoLLMAdapter:
    """The adapter for a Hugging Face ``<Family>ForConditionalGeneration`` model."""
    return adapter_class(model.config.model_type)(model)
