"""Prefix-shared attention: both responses of a pair attend to one copy of its prompt.

``PackedAttention`` runs the attention of a packed micro-batch with a choice of kernels
(``backends``); ``register()`` makes it a transformers attention implementation, so unmodified
Hugging Face models run packed batches (``hf``).
"""

from tpo_fast.attention.backends import BACKENDS, PackedAttention, available_backends
from tpo_fast.attention.hf import ATTENTION_NAME, PACKED_KWARG, packed_forward, register

__all__ = ["ATTENTION_NAME", "BACKENDS", "PACKED_KWARG", "PackedAttention", "available_backends",
           "packed_forward", "register"]
