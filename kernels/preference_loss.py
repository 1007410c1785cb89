"""TPO / DPO loss on packed response tokens: fused LM head + log-prob gather + DPO/SFT loss.

``preference_loss(hidden, weight, target_ids, seq_id, ref_logps, beta, sft_weight, ...)``
computes token log-probs with the fused Triton kernels (CUDA tensors) or the chunked torch
reference (otherwise), sums them per sequence, and applies the preference loss on the
[n, 2] sequence log-probs in torch (a few [2n]-sized ops). Sequence ``2i`` holds the chosen
tokens of pair ``i`` and ``2i + 1`` its rejected tokens (DESIGN.md, PackedBatch), in any order
and of any lengths; every pair needs at least one chosen and one rejected token.

    loss = dpo_weight · Σ_i DPO_i / dpo_normalizer
           + sft_weight · Σ_{chosen tokens} NLL / sft_normalizer

(``dpo_weight`` defaults to 1; 0 with ``sft_weight > 0`` is plain SFT on the chosen responses,
with the DPO metrics still reported.)

With the default normalisers (n pairs in this call; chosen tokens in this call) this is TPO's
``mean_i DPO_i + α · token-mean NLL of the chosen responses``. Under gradient accumulation pass
the totals of the whole step as normalisers, so micro-batch losses add up to the step's loss.

DPO_i, with h_i = (π_c − π_ref,c) − (π_r − π_ref,r) (π: summed log-probs; ``ref_logps=None``
means a reference-free loss, π_ref = 0):
* ``sigmoid``: −(1 − ε)·log σ(β h) − ε·log σ(−β h), ε = ``label_smoothing`` — the
  conservative-DPO (cDPO) form, TRL's ``loss_type="sigmoid"`` with label smoothing (not TRL's /
  Liger's ``"robust"``, which also divides by 1 − 2ε);
* ``ipo``: (h − 1/(2β))², with π and π_ref length-averaged (divided by the sequence's number
  of tokens; ``ref_logps`` are always given as sums);
* ``hinge``: max(0, 1 − β h).
Rewards are β·(π − π_ref) with the same π as the loss (TRL's convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import FLOAT_DTYPES
from ._checks import check_inputs as check
from .reference import CHUNK_TOKENS, chunked_linear_logprobs, naive_linear_logprobs

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
IMPLS = ("auto", "triton", "chunked", "naive")


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, target_ids: torch.Tensor, *,
                    impl: str = "auto", check_inputs: bool = True, skip_eps: float = 0.0,
                    chunk_tokens: int = CHUNK_TOKENS, configs: dict | None = None
                    ) -> torch.Tensor:
    """Token log-probs ``log_softmax(hidden @ weight.T)[n, target_ids[n]]``, fp32 [N].

    impl: "auto" (Triton on CUDA tensors, else "chunked"), "triton", "chunked" (the torch
    reference, ``chunk_tokens`` per chunk) or "naive" (full logits; tests and benchmarks only).
    skip_eps, configs: Triton path only (see ``fused_linear_logprobs``)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
    if impl == "auto":
        impl = "triton" if hidden.is_cuda else "chunked"
    if impl == "triton":
        from .fused_logprobs import fused_linear_logprobs  # imports triton

        return fused_linear_logprobs(hidden, weight, target_ids, skip_eps=skip_eps,
                                     check=check_inputs, configs=configs)
    # float64 is allowed on the naive path only: it is the tests' ground truth
    check(hidden, weight, target_ids, check_values=check_inputs,
          dtypes=FLOAT_DTYPES + ((torch.float64,) if impl == "naive" else ()))
    if impl == "chunked":
        return chunked_linear_logprobs(hidden, weight, target_ids, chunk_tokens=chunk_tokens)
    return naive_linear_logprobs(hidden, weight, target_ids)


def _check_pairs(seq_id: torch.Tensor, n_tokens: int, num_pairs: int | None,
                 ref_logps: torch.Tensor | None, check_values: bool) -> int:
    if seq_id.shape != (n_tokens,):
        raise ValueError(f"seq_id must be [N={n_tokens}]; got {tuple(seq_id.shape)}")
    if seq_id.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"seq_id must be int32 or int64; got {seq_id.dtype}")
    if num_pairs is None:
        top = int(seq_id.max())  # a host sync on CUDA: pass num_pairs to avoid it
        if top % 2 == 0:
            raise ValueError(f"pair {top // 2} has chosen tokens (seq_id {top}) but no rejected "
                             f"token (seq_id {top + 1})")
        num_pairs = (top + 1) // 2
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1; got {num_pairs}")
    if ref_logps is not None and ref_logps.shape != (num_pairs, 2):
        raise ValueError(f"ref_logps must be [n={num_pairs}, 2]; got {tuple(ref_logps.shape)}")
    if check_values:
        lo, hi = int(seq_id.min()), int(seq_id.max())
        if lo < 0 or hi >= 2 * num_pairs:
            raise ValueError(f"seq_id must lie in [0, 2n={2 * num_pairs}); got [{lo}, {hi}]")
        counts = torch.bincount(seq_id.long(), minlength=2 * num_pairs)
        empty = (counts == 0).nonzero()[:, 0].tolist()
        if empty:
            s = empty[0]
            kind = "chosen" if s % 2 == 0 else "rejected"
            raise ValueError(f"pair {s // 2} has no {kind} token (seq_id {s} is empty; "
                             f"{len(empty)} empty sequence(s) in all)")
    return num_pairs


def dpo_sft_loss(token_logps: torch.Tensor, seq_id: torch.Tensor,
                 ref_logps: torch.Tensor | None = None, beta: float = 0.1,
                 sft_weight: float = 0.0, loss_type: str = "sigmoid",
                 label_smoothing: float = 0.0, *, num_pairs: int | None = None,
                 dpo_normalizer: float | torch.Tensor | None = None,
                 sft_normalizer: float | torch.Tensor | None = None,
                 check_inputs: bool = True, dpo_weight: float = 1.0
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The preference loss on token log-probs [N] (differentiable); see the module docstring.

    Returns ``(loss, metrics)``; metrics are detached, in token_logps' float dtype:
    ``policy_logps`` [n, 2] (summed; chosen, rejected), ``chosen_rewards`` [n],
    ``rejected_rewards`` [n], ``margins`` [n] (chosen − rejected reward), ``reward_accuracy``
    [n] (1.0 where the chosen reward is larger), ``dpo_loss`` (Σ DPO_i / dpo_normalizer),
    ``nll_loss`` (Σ chosen-token NLL / sft_normalizer, before sft_weight), ``chosen_tokens``.
    """
    _check_loss_args(beta, loss_type, label_smoothing)
    if token_logps.dim() != 1:
        raise ValueError(f"token_logps must be [N]; got {tuple(token_logps.shape)}")
    n = _check_pairs(seq_id, token_logps.shape[0], num_pairs, ref_logps, check_inputs)
    return _loss(token_logps, seq_id, ref_logps, n, beta, sft_weight, loss_type,
                 label_smoothing, dpo_normalizer, sft_normalizer, dpo_weight)


def _check_loss_args(beta, loss_type, label_smoothing) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5); got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to loss_type='sigmoid' only; got "
                         f"{loss_type!r} with label_smoothing={label_smoothing}")


def _loss(token_logps, seq_id, ref_logps, n, beta, sft_weight, loss_type, label_smoothing,
          dpo_normalizer, sft_normalizer, dpo_weight=1.0):
    dtype = token_logps.dtype
    seq_id = seq_id.long()
    seq_logps = token_logps.new_zeros(2 * n).index_add(0, seq_id, token_logps)
    lengths = token_logps.new_zeros(2 * n).index_add_(0, seq_id,
                                                       torch.ones_like(token_logps))
    policy = seq_logps.view(n, 2)
    ref = (ref_logps.to(device=token_logps.device, dtype=dtype) if ref_logps is not None
           else policy.new_zeros(n, 2))
    if loss_type == "ipo":
        policy_used, ref_used = policy / lengths.view(n, 2), ref / lengths.view(n, 2)
    else:
        policy_used, ref_used = policy, ref
    log_ratios = policy_used - ref_used  # [n, 2]
    h = log_ratios[:, 0] - log_ratios[:, 1]
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
        if label_smoothing:
            losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    dpo_loss = losses.sum() / (n if dpo_normalizer is None else dpo_normalizer)

    chosen = (seq_id % 2 == 0).to(dtype)
    chosen_tokens = chosen.sum()
    nll_sum = -(token_logps * chosen).sum()
    nll_loss = nll_sum / (chosen_tokens if sft_normalizer is None else sft_normalizer)
    loss = dpo_weight * dpo_loss if dpo_weight != 1.0 else dpo_loss
    if sft_weight:
        loss = loss + sft_weight * nll_loss

    with torch.no_grad():
        rewards = beta * log_ratios.detach()
        metrics = {
            "policy_logps": policy.detach(),
            "chosen_rewards": rewards[:, 0],
            "rejected_rewards": rewards[:, 1],
            "margins": rewards[:, 0] - rewards[:, 1],
            "reward_accuracy": (rewards[:, 0] > rewards[:, 1]).to(dtype),
            "dpo_loss": dpo_loss.detach(),
            "nll_loss": nll_loss.detach(),
            "chosen_tokens": chosen_tokens,
        }
    return loss, metrics


def preference_loss(hidden: torch.Tensor, weight: torch.Tensor, target_ids: torch.Tensor,
                    seq_id: torch.Tensor, ref_logps: torch.Tensor | None = None,
                    beta: float = 0.1, sft_weight: float = 0.0, loss_type: str = "sigmoid",
                    label_smoothing: float = 0.0, *, num_pairs: int | None = None,
                    dpo_normalizer: float | torch.Tensor | None = None,
                    sft_normalizer: float | torch.Tensor | None = None, impl: str = "auto",
                    check_inputs: bool = True, skip_eps: float = 0.0,
                    chunk_tokens: int = CHUNK_TOKENS, configs: dict | None = None,
                    dpo_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TPO/DPO loss of packed response tokens, never materialising [N, V] logits (except with
    ``impl="naive"``).

    hidden [N, H] (bf16/fp16/fp32): the states that predict each response token; weight [V, H]
    (same dtype): the LM head; target_ids [N]; seq_id [N] (2i chosen, 2i+1 rejected);
    ref_logps [n, 2] fp32 summed reference log-probs (chosen, rejected) or None
    (reference-free). beta, sft_weight (α), loss_type ("sigmoid" | "ipo" | "hinge"),
    label_smoothing (sigmoid only, cDPO form): see the module docstring.
    num_pairs: n, so the CUDA path need not sync to find it. dpo_normalizer / sft_normalizer:
    divide Σ DPO_i and Σ chosen-token NLL (defaults: n; this call's chosen tokens).
    impl: "auto" | "triton" | "chunked" | "naive" (see ``linear_logprobs``).
    check_inputs: validate id ranges and non-empty sequences (host syncs on CUDA); shapes and
    dtypes are always checked. NaN/inf in hidden, weight or ref_logps is not checked: it
    propagates to the loss, metrics and gradients.

    Returns (loss: 0-dim fp32, metrics: see ``dpo_sft_loss``). grad_hidden comes back in
    hidden's dtype, grad_weight in weight's dtype.
    """
    _check_loss_args(beta, loss_type, label_smoothing)  # fail before the expensive part
    if seq_id.shape != target_ids.shape:
        raise ValueError(f"seq_id {tuple(seq_id.shape)} and target_ids "
                         f"{tuple(target_ids.shape)} must both be [N]")
    n = _check_pairs(seq_id, target_ids.shape[0], num_pairs, ref_logps, check_inputs)
    token_logps = linear_logprobs(hidden, weight, target_ids, impl=impl,
                                  check_inputs=check_inputs, skip_eps=skip_eps,
                                  chunk_tokens=chunk_tokens, configs=configs)
    return _loss(token_logps, seq_id, ref_logps, n, beta, sft_weight, loss_type,
                 label_smoothing, dpo_normalizer, sft_normalizer, dpo_weight)
