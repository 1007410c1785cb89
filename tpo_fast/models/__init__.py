"""Model adapters (one per video-LLM family) and ``PreferenceModel``, the packed forward.

Supported ``config.model_type`` values: ``supported_families()`` — the hand-written adapters'
(llava_onevision, llava_next_video, qwen2_vl, qwen2_5_vl, qwen3_vl, and longva: LLaVA-NeXT-format
LongVA checkpoints, ``load_longva``, ``save_longva``; llava_video: LLaVA-NeXT-format LLaVA-Video
checkpoints, ``load_llava_video``, ``save_llava_video``; ``load_llava_next`` picks either from a
folder) and the transformers families verified
through ``GenericVideoAdapter``. transformers is imported only when a model is used.
"""

from tpo_fast.models.base import VideoLLMAdapter
from tpo_fast.models.llava_next_layout import (is_llava_next_checkpoint, load_llava_next,
                                                save_llava_next)
from tpo_fast.models.llava_video_checkpoint import (is_llava_video_checkpoint, load_llava_video,
                                                    save_llava_video)
from tpo_fast.models.longva_checkpoint import is_longva_checkpoint, load_longva, save_longva
from tpo_fast.models.preference_model import PreferenceModel
from tpo_fast.models.registry import (ADAPTERS, SUPPORTED, adapter_class, adapter_for,
                                      supported_families)

__all__ = ["ADAPTERS", "SUPPORTED", "PreferenceModel", "VideoLLMAdapter", "adapter_class",
           "adapter_for", "is_llava_next_checkpoint", "is_llava_video_checkpoint",
           "is_longva_checkpoint", "load_llava_next", "load_llava_video", "load_longva",
           "save_llava_next", "save_llava_video", "save_longva",
           "supported_families"]
