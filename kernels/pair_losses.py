"""Per-pair preference losses on sequence log-ratios (plain torch, a few [n]-sized ops).

Shared by every path of ``preference_loss`` / ``dpo_sft_loss``: the Triton kernels and the
chunked torch path compute the token log-probs (and, through autograd, take the upstream
gradient dL/dlogp back into the fused LM-head backward); the loss over the [n, 2] sequence
log-probs is this file, so every loss type has the same formula, and the same gradient
w.r.t. hidden and weight, on every path.

Notation per pair i: c = π_c − π_ref,c and r = π_r − π_ref,r (summed log-probs; π_ref = 0 when
no reference is given), h = c − r, ε = ``label_smoothing``, τ = ``discopop_tau``,
σ the logistic function. The formulas are TRL's (``trl/trainer/dpo_trainer.py``, checked
against TRL 1.10.0.dev of 2026-07; Liger-Kernel 0.8.5's ``LigerFusedLinearDPOLoss`` has the same
ones except IPO):

* ``sigmoid``   −(1 − ε)·log σ(βh) − ε·log σ(−βh)  (DPO; with ε > 0 the conservative cDPO form,
  TRL < 0.29's ``sigmoid``; TRL ≥ 0.29 and Liger ignore ε for ``sigmoid``)
* ``ipo``       (h̄ − 1/(2β))², h̄ = c/|y_c| − r/|y_r| (length-averaged, as TRL)
* ``hinge``     max(0, 1 − βh)
* ``robust``    (−(1 − ε)·log σ(βh) + ε·log σ(−βh)) / (1 − 2ε)
* ``exo_pair``  σ(βh)(log σ(βh) − log(1 − ε)) + σ(−βh)(log σ(−βh) − log ε); needs ε > 0
* ``nca_pair``  −log σ(βc) − ½·log σ(−βc) − ½·log σ(−βr)
* ``bco_pair``  −log σ(βc − δ) − log σ(−(βr − δ)); δ: see below
* ``sppo_hard`` (c − 1/(2β))² + (r + 1/(2β))²
* ``apo_zero``  1 − σ(βc) + σ(βr)
* ``apo_down``  σ(βc) + 1 − σ(βh)
* ``discopop``  −log σ(βh)·(1 − σ(βh/τ)) + exp(−βh)·σ(βh/τ) (the last product taken as
  exp(log σ(βh/τ) − βh): equal where TRL's is finite, finite where TRL's is inf · 0)

``NEEDS_REFERENCE``: the types whose loss depends on c and r separately, not only on h
(nca_pair, bco_pair, sppo_hard, apo_zero, apo_down). They are anchored to the reference, so
they refuse ``ref_logps=None`` (unless ``dpo_weight=0``); pass zeros explicitly for Liger's
``use_ref_model=False``.

BCO's reward shift δ: the BCO paper and TRL < 0.29 use a running mean of the rewards
(``RunningMoments`` over the per-batch mean reward); TRL ≥ 0.29 and Liger use δ = 0. Ours:
``bco_delta=None`` (default) is δ = 0; a float or 0-dim tensor is δ as given; a
``RunningRewardMean`` is TRL < 0.29's running mean — each call first adds this call's mean
reward β·mean(c, r over its pairs) to the state, then uses the updated mean. The state is per
process (TRL < 0.29 averaged the per-rank means over data-parallel ranks first).

A weighted mix (TRL's ``loss_type=[...]``, ``loss_weights=[...]``) is Σ_k w_k · loss_k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair",
              "sppo_hard", "apo_zero", "apo_down", "discopop")
NEEDS_REFERENCE = frozenset({"nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down"})
USES_LABEL_SMOOTHING = frozenset({"sigmoid", "robust", "exo_pair"})


class RunningRewardMean:
    """BCO's reward shift δ as TRL < 0.29 kept it: the running mean of per-call mean rewards
    (each call counts once). Pass it as ``bco_delta``; save ``state_dict()`` with a checkpoint
    to resume the same δ."""

    def __init__(self, mean: float = 0.0, count: int = 0):
        self.mean = float(mean)
        self.count = int(count)

    @torch.no_grad()
    def update(self, batch_mean: torch.Tensor) -> torch.Tensor:
        """Adds one call's mean reward (0-dim tensor); returns the new mean as a tensor on its
        device (a host sync on CUDA, like TRL's ``.item()``)."""
        self.count += 1
        self.mean += (float(batch_mean) - self.mean) / self.count
        return torch.tensor(self.mean, dtype=batch_mean.dtype, device=batch_mean.device)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.count = float(state["mean"]), int(state["count"])

    def __repr__(self) -> str:
        return f"RunningRewardMean(mean={self.mean!r}, count={self.count})"


def loss_mix(loss_type: str | Sequence[str],
             loss_weights: Sequence[float] | None = None) -> tuple[tuple[str, ...],
                                                                   tuple[float, ...]]:
    """(types, weights) of a loss type or a list of them; weights default to 1 each."""
    types = (loss_type,) if isinstance(loss_type, str) else tuple(loss_type)
    if not types:
        raise ValueError("loss_type must name at least one loss type")
    for t in types:
        if t not in LOSS_TYPES:
            hint = " (TRL's 'sft' is sft_weight here)" if t == "sft" else ""
            raise ValueError(f"unknown loss_type {t!r}{hint}; expected one of {LOSS_TYPES}")
    if loss_weights is None:
        return types, (1.0,) * len(types)
    weights = tuple(float(w) for w in loss_weights)
    if len(weights) != len(types):
        raise ValueError(f"loss_weights has {len(weights)} entries for {len(types)} loss "
                         f"type(s) {types}")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"loss_weights must be finite; got {weights}")
    return types, weights


def check_loss_args(beta: float, types: tuple[str, ...], label_smoothing: float,
                    discopop_tau: float, has_reference: bool, bco_delta) -> None:
    """Raises ValueError for an argument combination no loss type of ``types`` can use."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5); got {label_smoothing}")
    if label_smoothing and not USES_LABEL_SMOOTHING.intersection(types):
        raise ValueError(f"label_smoothing applies to loss_type 'sigmoid', 'robust' and "
                         f"'exo_pair' only; got {types if len(types) > 1 else types[0]!r} with "
                         f"label_smoothing={label_smoothing}")
    if "exo_pair" in types and not label_smoothing > 0:
        raise ValueError("loss_type 'exo_pair' needs label_smoothing > 0 (the EXO paper "
                         "recommends 1e-3)")
    if "discopop" in types and not discopop_tau > 0:
        raise ValueError(f"discopop_tau must be > 0; got {discopop_tau}")
    anchored = [t for t in types if t in NEEDS_REFERENCE]
    if anchored and not has_reference:
        raise ValueError(f"loss_type {anchored[0]!r} needs ref_logps: its loss depends on each "
                         "response's log-ratio to the reference, not only on their difference "
                         "(pass zeros to use log-probs as they are)")
    if bco_delta is not None and "bco_pair" not in types:
        raise ValueError(f"bco_delta is used by loss_type 'bco_pair' only; got {types}")


def pair_losses(loss_type: str, chosen: torch.Tensor, rejected: torch.Tensor,
                lengths: torch.Tensor, beta: float, label_smoothing: float = 0.0,
                discopop_tau: float = 0.05, bco_delta: float | torch.Tensor = 0.0
                ) -> torch.Tensor:
    """[n] losses of one type from the log-ratios ``chosen`` = c, ``rejected`` = r ([n] each,
    summed over tokens) and ``lengths`` [n, 2] (tokens of the chosen / rejected response; IPO
    only). Arguments are not checked here (``check_loss_args``)."""
    eps = label_smoothing
    h = chosen - rejected
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
        if eps:
            losses = (1 - eps) * losses - eps * F.logsigmoid(-beta * h)
        return losses
    if loss_type == "ipo":
        h_avg = chosen / lengths[:, 0] - rejected / lengths[:, 1]
        return (h_avg - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return torch.relu(1 - beta * h)
    if loss_type == "robust":
        clean, flipped = -(1 - eps) * F.logsigmoid(beta * h), -eps * F.logsigmoid(-beta * h)
        return (clean - flipped) / (1 - 2 * eps)
    if loss_type == "exo_pair":
        x = beta * h
        return (torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-eps))
                + torch.sigmoid(-x) * (F.logsigmoid(-x) - math.log(eps)))
    if loss_type == "nca_pair":
        rc, rr = beta * chosen, beta * rejected
        return -F.logsigmoid(rc) - 0.5 * F.logsigmoid(-rc) - 0.5 * F.logsigmoid(-rr)
    if loss_type == "bco_pair":
        rc, rr = beta * chosen - bco_delta, beta * rejected - bco_delta
        return -F.logsigmoid(rc) - F.logsigmoid(-rr)
    if loss_type == "sppo_hard":
        return (chosen - 0.5 / beta) ** 2 + (rejected + 0.5 / beta) ** 2
    if loss_type == "apo_zero":
        return 1 - torch.sigmoid(beta * chosen) + torch.sigmoid(beta * rejected)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * chosen) + 1 - torch.sigmoid(beta * h)
    if loss_type == "discopop":
        x = beta * h
        # exp(−x)·σ(x/τ) as exp(−x + log σ(x/τ)): the same value, but finite where the product
        # would be inf · 0 (βh below about −88 in fp32)
        return (-F.logsigmoid(x) * torch.sigmoid(-x / discopop_tau)
                + torch.exp(F.logsigmoid(x / discopop_tau) - x))
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
