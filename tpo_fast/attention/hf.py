"""Prefix-shared attention as a transformers attention implementation.

``register()`` adds ``"tpo_prefix_shared"`` to transformers' ``AttentionInterface`` (and its mask
interface). A model whose language model uses it runs packed micro-batches when the forward is
given ``tpo_packed=PackedAttention(...)`` (transformers passes extra forward kwargs down to every
attention call), inside ``packed_forward()``. Without ``tpo_packed`` it behaves exactly like
``sdpa``, masks included, so the same model still generates and evaluates normally; that also
keeps gradient-checkpoint recomputation, which re-enters attention outside our code, correct.
"""

from __future__ import annotations

import contextlib
import contextvars

ATTENTION_NAME = "tpo_prefix_shared"
PACKED_KWARG = "tpo_packed"

_packed_forward = contextvars.ContextVar("tpo_packed_forward", default=False)


@contextlib.contextmanager
def packed_forward():
    """Within this context the model builds no attention mask (the packed layout is the mask)."""
    token = _packed_forward.set(True)
    try:
        yield
    finally:
        _packed_forward.reset(token)


def prefix_shared_attention_forward(module, query, key, value, attention_mask, dropout=0.0,
                                    scaling=None, sliding_window=None, **kwargs):
    """transformers' attention signature: q [1, Hq, T, D], k/v [1, Hkv, T, D] -> ([1, T, Hq, D],
    None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = kwargs.pop(PACKED_KWARG, None)
    if packed is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, sliding_window=sliding_window, **kwargs)
    if sliding_window is not None:
        raise NotImplementedError(
            f"layer {getattr(module, 'layer_idx', '?')} uses sliding-window attention, which the "
            "prefix-shared packed forward does not implement; disable use_sliding_window"
        )
    if query.shape[0] != 1:
        raise ValueError(f"a packed micro-batch has batch size 1, got {query.shape[0]}")
    if hasattr(packed, "attend_shard"):  # sequence parallel: tpo_fast.sequence_parallel
        return packed.attend_shard(module, query, key, value, dropout, scaling)
    out = packed.attend(query[0].transpose(0, 1), key[0].transpose(0, 1),
                        value[0].transpose(0, 1), scale=scaling, dropout=dropout)
    return out.unsqueeze(0), None


def _mask(*args, **kwargs):
    from transformers.masking_utils import sdpa_mask

    return None if _packed_forward.get() else sdpa_mask(*args, **kwargs)


def register() -> str:
    """Register the implementation with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, prefix_shared_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, _mask)
    return ATTENTION_NAME
