"""TPO / DPO loss on packed response tokens: fused LM head + log-prob gather + DPO/SFT loss.

``preference_loss(hidden, weight, target_ids, seq_id, ref_logps, spec)`` computes token
log-probs with the fused Triton kernels (CUDA tensors) or the chunked torch path
(otherwise; ``naive.py``), sums them per sequence, and applies the preference loss on the
[n, 2] sequence log-probs in torch (a few [2n]-sized ops). Sequence ``2i`` holds the chosen
tokens of pair ``i`` and ``2i + 1`` its rejected tokens (DESIGN.md, PackedBatch), in any order
and of any lengths; every pair needs at least one chosen and one rejected token.

    loss = dpo_weight · Σ_i DPO_i / dpo_normalizer
           + sft_weight · Σ_{chosen tokens} NLL / sft_normalizer

``spec`` is a ``LossSpec`` (``pair_losses.py``): β, α = ``sft_weight``, ``dpo_weight``
(default 1; 0 with ``sft_weight > 0`` is plain SFT on the chosen responses, with the DPO
metrics still reported), the loss types, their weights and hyperparameters, validated once
when it is made.

With the default normalisers (n pairs in this call; chosen tokens in this call) this is TPO's
``mean_i DPO_i + α · token-mean NLL of the chosen responses``. Under gradient accumulation pass
the totals of the whole step as normalisers, so micro-batch losses add up to the step's loss.

DPO_i is a per-pair loss over the log-ratios c_i = π_c − π_ref,c and r_i = π_r − π_ref,r
(π: summed log-probs; ``ref_logps=None`` means a reference-free loss, π_ref = 0):
``spec.loss_type`` is one of ``LOSS_TYPES`` (sigmoid, ipo, hinge, robust, exo_pair, nca_pair,
bco_pair, sppo_hard, apo_zero, apo_down, discopop — TRL's formulas, written out in
``pair_losses.py``) or a list of them, mixed as Σ_k w_k · loss_k with ``loss_weights`` (TRL's
``loss_type=[...]``, ``loss_weights=[...]``). Notes: ``sigmoid`` with ``label_smoothing`` ε is
the conservative cDPO form (TRL < 0.29's; TRL ≥ 0.29 and Liger ignore ε there); ``robust``
divides by 1 − 2ε; ``exo_pair`` needs ε > 0; ``ipo`` length-averages c and r (``ref_logps``
are always given as sums); the anchored types (``NEEDS_REFERENCE``) need ``ref_logps``;
``bco_pair``'s reward shift is ``bco_delta`` (0, a value, or a ``RunningRewardMean``).
Rewards are β·(π − π_ref) (length-averaged for ``loss_type="ipo"`` alone, the π of its loss;
summed otherwise), TRL's convention.
"""

from __future__ import annotations

import torch

from ._checks import FLOAT_DTYPES
from ._checks import check_inputs as check
from .naive import CHUNK_TOKENS, chunked_linear_logprobs, naive_linear_logprobs
from .pair_losses import LossSpec

IMPLS = ("auto", "triton", "chunked", "naive")


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, target_ids: torch.Tensor, *,
                    impl: str = "auto", check_inputs: bool = True, skip_eps: float = 0.0,
                    chunk_tokens: int = CHUNK_TOKENS, configs: dict | None = None
                    ) -> torch.Tensor:
    """Token log-probs ``log_softmax(hidden @ weight.T)[n, target_ids[n]]``, fp32 [N].

    impl: "auto" (Triton on CUDA tensors, else "chunked"), "triton", "chunked" (the torch
    path of ``naive.py``, ``chunk_tokens`` per chunk) or "naive" (full logits; tests and
    benchmarks only).
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


def _spec(spec: LossSpec | None) -> LossSpec:
    if spec is None:
        return LossSpec()
    if not isinstance(spec, LossSpec):
        raise TypeError(f"spec must be a LossSpec (e.g. LossSpec(beta=0.1, sft_weight=0.5)); "
                        f"got {spec!r}")
    return spec


def dpo_sft_loss(token_logps: torch.Tensor, seq_id: torch.Tensor,
                 ref_logps: torch.Tensor | None = None, spec: LossSpec | None = None, *,
                 num_pairs: int | None = None,
                 dpo_normalizer: float | torch.Tensor | None = None,
                 sft_normalizer: float | torch.Tensor | None = None,
                 check_inputs: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The preference loss on token log-probs [N] (differentiable); see the module docstring.

    token_logps [N] (float); seq_id [N] int (2i chosen, 2i+1 rejected); ref_logps [n, 2] or
    None; spec: a ``LossSpec`` (default ``LossSpec()``: sigmoid DPO, β = 0.1); num_pairs,
    dpo_normalizer, sft_normalizer, check_inputs: as in ``preference_loss``.

    Returns ``(loss, metrics)``; metrics are detached, in token_logps' float dtype:
    ``policy_logps`` [n, 2] (summed; chosen, rejected), ``chosen_rewards`` [n],
    ``rejected_rewards`` [n], ``margins`` [n] (chosen − rejected reward), ``reward_accuracy``
    [n] (1.0 where the chosen reward is larger), ``dpo_loss`` (Σ_k w_k Σ_i DPO_k,i /
    dpo_normalizer), ``nll_loss`` (Σ chosen-token NLL / sft_normalizer, before sft_weight),
    ``chosen_tokens``.
    """
    spec = _spec(spec)
    spec.check_reference(ref_logps is not None)
    if token_logps.dim() != 1:
        raise ValueError(f"token_logps must be [N]; got {tuple(token_logps.shape)}")
    n = _check_pairs(seq_id, token_logps.shape[0], num_pairs, ref_logps, check_inputs)
    return _loss(token_logps, seq_id, ref_logps, n, spec, dpo_normalizer, sft_normalizer)


def _loss(token_logps, seq_id, ref_logps, n, spec, dpo_normalizer, sft_normalizer):
    dtype = token_logps.dtype
    seq_id = seq_id.long()
    seq_logps = token_logps.new_zeros(2 * n).index_add(0, seq_id, token_logps)
    lengths = token_logps.new_zeros(2 * n).index_add_(0, seq_id,
                                                       torch.ones_like(token_logps)).view(n, 2)
    policy = seq_logps.view(n, 2)
    ref = (ref_logps.to(device=token_logps.device, dtype=dtype) if ref_logps is not None
           else policy.new_zeros(n, 2))
    log_ratios = policy - ref  # [n, 2]: c, r
    # the rewards of the metrics, and BCO's running mean: β·log-ratio, IPO alone averaged
    reward_ratios = log_ratios / lengths if spec.length_averaged else log_ratios
    rewards = spec.beta * reward_ratios.detach()
    dpo_sum = spec.dpo_sum(log_ratios, lengths, rewards)
    dpo_loss = dpo_sum / (n if dpo_normalizer is None else dpo_normalizer)

    chosen = (seq_id % 2 == 0).to(dtype)
    chosen_tokens = chosen.sum()
    nll_sum = -(token_logps * chosen).sum()
    nll_loss = nll_sum / (chosen_tokens if sft_normalizer is None else sft_normalizer)
    loss = spec.dpo_weight * dpo_loss if spec.dpo_weight != 1.0 else dpo_loss
    if spec.sft_weight:
        loss = loss + spec.sft_weight * nll_loss

    with torch.no_grad():
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
                    spec: LossSpec | None = None, *, num_pairs: int | None = None,
                    dpo_normalizer: float | torch.Tensor | None = None,
                    sft_normalizer: float | torch.Tensor | None = None, **logprob_options
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TPO/DPO loss of packed response tokens, never materialising [N, V] logits (except with
    ``impl="naive"``).

    hidden [N, H] (bf16/fp16/fp32): the states that predict each response token; weight [V, H]
    (same dtype): the LM head; target_ids [N]; seq_id [N] (2i chosen, 2i+1 rejected);
    ref_logps [n, 2] fp32 summed reference log-probs (chosen, rejected) or None
    (reference-free). spec: a ``LossSpec`` (β, sft_weight α, dpo_weight, loss types, their
    weights and hyperparameters; default ``LossSpec()``: sigmoid DPO, β = 0.1).
    num_pairs: n, so the CUDA path need not sync to find it. dpo_normalizer / sft_normalizer:
    divide Σ DPO_i and Σ chosen-token NLL (defaults: n; this call's chosen tokens).
    logprob_options: ``linear_logprobs``' keywords — impl ("auto" | "triton" | "chunked" |
    "naive"), check_inputs (validate id ranges and non-empty sequences: host syncs on CUDA;
    shapes and dtypes are always checked), skip_eps, chunk_tokens, configs. NaN/inf in
    hidden, weight or ref_logps is not checked: it propagates to the loss, metrics and
    gradients.

    Returns (loss: 0-dim fp32, metrics: see ``dpo_sft_loss``). grad_hidden comes back in
    hidden's dtype, grad_weight in weight's dtype.
    """
    spec = _spec(spec)  # fail before the expensive part
    spec.check_reference(ref_logps is not None)
    if seq_id.shape != target_ids.shape:
        raise ValueError(f"seq_id {tuple(seq_id.shape)} and target_ids "
                         f"{tuple(target_ids.shape)} must both be [N]")
    n = _check_pairs(seq_id, target_ids.shape[0], num_pairs, ref_logps,
                     logprob_options.get("check_inputs", True))
    token_logps = linear_logprobs(hidden, weight, target_ids, **logprob_options)
    return _loss(token_logps, seq_id, ref_logps, n, spec, dpo_normalizer, sft_normalizer)
