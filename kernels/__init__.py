"""tpo_fast.kernels: Triton kernels with their launchers, autograd Functions and plain-torch
paths (``naive.py``). Self-contained: depends on torch and triton only (installed from the top-level
``kernels/`` folder as ``tpo_fast.kernels``). triton is imported only when the Triton path is
used (lazily), so the torch paths work without it.

The op: fused LM head + log-prob gather + DPO/SFT loss for packed preference pairs.

* ``preference_loss(hidden, weight, target_ids, seq_id, ref_logps, spec, *, num_pairs,
  dpo_normalizer, sft_normalizer, impl, ...)`` -> ``(loss, metrics)`` — Triton on CUDA
  tensors, the chunked torch path otherwise (``preference_loss.py``).
* ``LossSpec(loss_type=..., loss_weights=..., beta=..., sft_weight=..., dpo_weight=...,
  **hyperparameters)`` — what to optimise, one frozen object validated once; ``LOSSES`` — the
  registry of loss types (per-pair formula, needs a reference, hyperparameters);
  ``LOSS_TYPES`` and ``NEEDS_REFERENCE`` derive from it; BCO's ``RunningRewardMean``. All in
  ``pair_losses.py``.
* ``dpo_sft_loss(token_logps, seq_id, ref_logps, spec, ...)`` — the same loss on precomputed
  token log-probs.
* ``linear_logprobs(hidden, weight, target_ids, impl=...)`` — token log-probs only.
* ``fused_linear_logprobs`` / ``FusedLinearLogProbs`` — the Triton path
  (``fused_logprobs.py``: kernels, launchers, autograd.Function, functional).
* ``chunked_linear_logprobs`` / ``naive_linear_logprobs`` — the torch paths
  (``naive.py``; ``naive_linear_logprobs`` is for tests and benchmarks only).

Environment variables (all of them, for this package):

* ``TPO_FAST_AUTOTUNE=1`` — autotune the Triton kernels over a small config list (keyed on N
  rounded up to a power of two, V and H) instead of the pinned default configs; read at
  import; never applies with ``skip_eps > 0``.
* ``TRITON_INTERPRET=1`` — triton's own: run the Triton kernels on CPU tensors in the
  interpreter (slow); must be set before triton is imported. The tests set it without a GPU.
"""

from __future__ import annotations

from .naive import CHUNK_TOKENS, chunked_linear_logprobs, naive_linear_logprobs
from .pair_losses import (
    HYPERPARAMETERS,
    LOSS_TYPES,
    LOSSES,
    NEEDS_REFERENCE,
    Hyperparameter,
    LossSpec,
    LossType,
    RunningRewardMean,
    pair_losses,
)
from .preference_loss import dpo_sft_loss, linear_logprobs, preference_loss

_TRITON_EXPORTS = ("fused_linear_logprobs", "FusedLinearLogProbs", "linear_logprobs_fwd",
                   "linear_logprobs_bwd")

__all__ = ["CHUNK_TOKENS", "HYPERPARAMETERS", "LOSSES", "LOSS_TYPES", "NEEDS_REFERENCE",
           "Hyperparameter", "LossSpec", "LossType", "RunningRewardMean",
           "chunked_linear_logprobs", "dpo_sft_loss", "linear_logprobs", "naive_linear_logprobs",
           "pair_losses", "preference_loss", *_TRITON_EXPORTS]


def __getattr__(name: str):
    if name in _TRITON_EXPORTS:
        from . import fused_logprobs as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
