"""Model adapters (one per video-LLM family) and ``PreferenceModel``, the packed forward.

Supported ``config.model_type`` values: ``supported_families()`` — the families that train, score
and generate from a model folder through the CLI (one registry, ``registry.FAMILIES``: each
entry's adapter and its processor's frame steps; longva: LLaVA-NeXT-format LongVA checkpoints,
``load_longva``, ``save_longva``; llava_video: LLaVA-NeXT-format LLaVA-Video checkpoints,
``load_llava_video``, ``save_llava_video``; ``load_llava_next`` picks either from a folder);
``registry.packed_families()`` adds those whose packed path is tested on inputs built in memory
only. Folders load through ``folder.load_tokenizer`` / ``folder.load_model``. transformers is
imported only when a model is used.
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
