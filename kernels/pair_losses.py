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
* ``dpop``      −log σ(β(h − λ·max(0, −c))), λ = ``dpop_lambda`` (DPO-Positive, Pal et al. 2024,
  arXiv 2402.13228, eq. 3: the chosen response's log-prob falling below the reference's is
  penalised; not in TRL; PaddleNLP's ``dpop``; default λ = 50, the paper's)

Each loss type is one entry of ``LOSSES`` (a ``LossType``: its per-pair function, whether it
needs a reference, its hyperparameters with defaults and checks, whether its rewards are
length-averaged); a run's choice of types, weights, β, α and hyperparameters is one frozen
``LossSpec``, validated once when it is made. ``LOSS_TYPES`` and ``NEEDS_REFERENCE`` are derived
from ``LOSSES``. Adding a loss type is adding one entry here: the kernels, ``LossSpec``, the
config (``loss.<hyperparameter>=value``) and the trainer take it from the registry.

``NEEDS_REFERENCE``: the types whose loss depends on c and r separately, not only on h
(nca_pair, bco_pair, sppo_hard, apo_zero, apo_down, dpop). They are anchored to the reference, so
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

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F


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


# ---- the registry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hyperparameter:
    """One knob of a loss type.

    name: the keyword of ``LossSpec`` and the config key ``loss.<name>``; default; check(value):
    an error message naming the field, or None; annotation: the type the YAML config checks
    values against; resolve(value, rewards): what the per-pair function receives, computed once
    per call from the given value and the detached rewards [n, 2] (None: the value itself)."""

    name: str
    default: object
    check: Callable[[object], str | None]
    annotation: object = float
    resolve: Callable[[object, torch.Tensor], object] | None = None


@dataclass(frozen=True)
class LossType:
    """One entry of ``LOSSES``.

    fn(c, r, lengths, beta, **hyperparameters) -> [n] per-pair losses from the log-ratios
    c = π_c − π_ref,c and r = π_r − π_ref,r ([n] each, summed over tokens, fp32/fp64) and
    lengths [n, 2] (tokens of the chosen / rejected response, the same float dtype).
    needs_reference: the loss depends on c and r separately, not only on c − r (refuses
    ``ref_logps=None``). length_averaged: the rewards (metrics) are β·(log-ratio / length) when
    this type is used alone (IPO's convention)."""

    name: str
    fn: Callable[..., torch.Tensor]
    needs_reference: bool = False
    hyperparameters: tuple[Hyperparameter, ...] = ()
    length_averaged: bool = False


def _number(name: str, value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{name} must be a finite number; got {value!r}"
    return None


def _smoothing(value) -> str | None:
    return _number("label_smoothing", value) or (
        None if 0.0 <= value < 0.5 else f"label_smoothing must lie in [0, 0.5); got {value}")


def _exo_smoothing(value) -> str | None:
    return _smoothing(value) or (None if value > 0 else (
        "loss_type 'exo_pair' needs label_smoothing > 0 (the EXO paper recommends 1e-3)"))


def _positive(name: str) -> Callable[[object], str | None]:
    def check(value) -> str | None:
        return _number(name, value) or (None if value > 0 else f"{name} must be > 0; got {value}")

    return check


def _bco_delta_check(value) -> str | None:
    if value is None or isinstance(value, RunningRewardMean):
        return None
    if isinstance(value, torch.Tensor):
        return None if value.dim() == 0 else (
            f"bco_delta must be a number, a 0-dim tensor or a RunningRewardMean; got a tensor "
            f"of shape {tuple(value.shape)}")
    return _number("bco_delta", value)


def _bco_delta_value(value, rewards: torch.Tensor):
    """δ for this call: a RunningRewardMean first takes this call's mean reward."""
    if isinstance(value, RunningRewardMean):
        return value.update(rewards.mean())
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=rewards.device, dtype=rewards.dtype)
    return 0.0 if value is None else float(value)  # a Python number: no host-to-device copy


LABEL_SMOOTHING = Hyperparameter("label_smoothing", 0.0, _smoothing)


def _sigmoid(c, r, lengths, beta, label_smoothing):
    eps, h = label_smoothing, c - r
    losses = -F.logsigmoid(beta * h)
    if eps:
        losses = (1 - eps) * losses - eps * F.logsigmoid(-beta * h)
    return losses


def _ipo(c, r, lengths, beta):
    h_avg = c / lengths[:, 0] - r / lengths[:, 1]
    return (h_avg - 1 / (2 * beta)) ** 2


def _hinge(c, r, lengths, beta):
    return torch.relu(1 - beta * (c - r))


def _robust(c, r, lengths, beta, label_smoothing):
    eps, h = label_smoothing, c - r
    clean, flipped = -(1 - eps) * F.logsigmoid(beta * h), -eps * F.logsigmoid(-beta * h)
    return (clean - flipped) / (1 - 2 * eps)


def _exo_pair(c, r, lengths, beta, label_smoothing):
    eps, x = label_smoothing, beta * (c - r)
    return (torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-eps))
            + torch.sigmoid(-x) * (F.logsigmoid(-x) - math.log(eps)))


def _nca_pair(c, r, lengths, beta):
    rc, rr = beta * c, beta * r
    return -F.logsigmoid(rc) - 0.5 * F.logsigmoid(-rc) - 0.5 * F.logsigmoid(-rr)


def _bco_pair(c, r, lengths, beta, bco_delta):
    delta = 0.0 if bco_delta is None else bco_delta
    rc, rr = beta * c - delta, beta * r - delta
    return -F.logsigmoid(rc) - F.logsigmoid(-rr)


def _sppo_hard(c, r, lengths, beta):
    return (c - 0.5 / beta) ** 2 + (r + 0.5 / beta) ** 2


def _apo_zero(c, r, lengths, beta):
    return 1 - torch.sigmoid(beta * c) + torch.sigmoid(beta * r)


def _apo_down(c, r, lengths, beta):
    return torch.sigmoid(beta * c) + 1 - torch.sigmoid(beta * (c - r))


def _discopop(c, r, lengths, beta, discopop_tau):
    x = beta * (c - r)
    # exp(−x)·σ(x/τ) as exp(−x + log σ(x/τ)): the same value, but finite where the product
    # would be inf · 0 (βh below about −88 in fp32)
    return (-F.logsigmoid(x) * torch.sigmoid(-x / discopop_tau)
            + torch.exp(F.logsigmoid(x / discopop_tau) - x))


def _dpop(c, r, lengths, beta, dpop_lambda):
    return -F.logsigmoid(beta * (c - r - dpop_lambda * torch.relu(-c)))


def _dpop_lambda(value) -> str | None:
    return _number("dpop_lambda", value) or (
        None if value >= 0 else f"dpop_lambda must be >= 0; got {value}")


LOSSES: Mapping[str, LossType] = MappingProxyType({t.name: t for t in (
    LossType("sigmoid", _sigmoid, hyperparameters=(LABEL_SMOOTHING,)),
    LossType("ipo", _ipo, length_averaged=True),
    LossType("hinge", _hinge),
    LossType("robust", _robust, hyperparameters=(LABEL_SMOOTHING,)),
    LossType("exo_pair", _exo_pair, hyperparameters=(
        Hyperparameter("label_smoothing", 0.0, _exo_smoothing),)),
    LossType("nca_pair", _nca_pair, needs_reference=True),
    LossType("bco_pair", _bco_pair, needs_reference=True, hyperparameters=(
        Hyperparameter("bco_delta", None, _bco_delta_check, float | None, _bco_delta_value),)),
    LossType("sppo_hard", _sppo_hard, needs_reference=True),
    LossType("apo_zero", _apo_zero, needs_reference=True),
    LossType("apo_down", _apo_down, needs_reference=True),
    LossType("discopop", _discopop, hyperparameters=(
        Hyperparameter("discopop_tau", 0.05, _positive("discopop_tau")),)),
    LossType("dpop", _dpop, needs_reference=True, hyperparameters=(
        Hyperparameter("dpop_lambda", 50.0, _dpop_lambda),)),
)})

LOSS_TYPES = tuple(LOSSES)
NEEDS_REFERENCE = frozenset(t for t, entry in LOSSES.items() if entry.needs_reference)


def _hyperparameters() -> dict[str, Hyperparameter]:
    """Every hyperparameter name of the registry (the first entry's declaration; entries that
    share a name must share its default and annotation)."""
    out: dict[str, Hyperparameter] = {}
    for entry in LOSSES.values():
        for hp in entry.hyperparameters:
            first = out.setdefault(hp.name, hp)
            if (first.default, first.annotation) != (hp.default, hp.annotation):
                raise TypeError(f"loss hyperparameter {hp.name!r} of loss_type {entry.name!r} "
                                "disagrees with another type's default or annotation")
    return out


HYPERPARAMETERS: Mapping[str, Hyperparameter] = MappingProxyType(_hyperparameters())


def _users(name: str) -> tuple[str, ...]:
    return tuple(t for t, entry in LOSSES.items()
                 if any(hp.name == name for hp in entry.hyperparameters))


def _quoted(names: Sequence[str]) -> str:
    items = [repr(n) for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _is_default(value, default) -> bool:
    if value is default:
        return True
    plain = (int, float)
    return (isinstance(value, plain) and not isinstance(value, bool)
            and isinstance(default, plain) and value == default)


def _loss_types(loss_type) -> tuple[str, ...]:
    types = (loss_type,) if isinstance(loss_type, str) else tuple(loss_type)
    if not types:
        raise ValueError("loss_type must name at least one loss type")
    for t in types:
        if t not in LOSSES:
            hint = " (TRL's 'sft' is sft_weight here)" if t == "sft" else ""
            near = difflib.get_close_matches(str(t), LOSS_TYPES, n=1)
            near = f"; did you mean {near[0]!r}?" if near and not hint else ""
            raise ValueError(f"unknown loss_type {t!r}{hint}; expected one of {LOSS_TYPES}{near}")
    return types


def _loss_weights(weights, types: tuple[str, ...]) -> tuple[float, ...]:
    if weights is None:
        return (1.0,) * len(types)
    weights = tuple(float(w) for w in weights)
    if len(weights) != len(types):
        raise ValueError(f"loss_weights has {len(weights)} entries for {len(types)} loss "
                         f"type(s) {types}")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"loss_weights must be finite; got {weights}")
    return weights


@dataclass(frozen=True, init=False)
class LossSpec:
    """What to optimise, validated once (ValueError naming the field):

        loss = dpo_weight · Σ_k w_k Σ_i loss_k(c_i, r_i) / dpo_normalizer
               + sft_weight · Σ_{chosen tokens} NLL / sft_normalizer

    loss_type: one name of ``LOSSES`` or a sequence of them (TRL's ``loss_type=[...]``), stored
    as a tuple; loss_weights: one per type (default 1 each); beta (β > 0); sft_weight (α ≥ 0);
    dpo_weight (≥ 0; 0 with α > 0 is plain SFT on the chosen responses); hyperparameters: the
    listed types' hyperparameters as keywords (``label_smoothing=0.1``, ``discopop_tau=0.1``,
    ``bco_delta=...``; defaults from ``LOSSES``). A hyperparameter no listed type uses must
    keep its default. Read them as ``spec.hyperparameters[name]`` or ``spec.<name>``.

        LossSpec(beta=0.3, sft_weight=0.5)                       # TPO: DPO + α·SFT
        LossSpec(loss_type=["sigmoid", "bco_pair"], loss_weights=[0.8, 0.2], beta=0.1)
    """

    loss_type: tuple[str, ...]
    loss_weights: tuple[float, ...]
    beta: float
    sft_weight: float
    dpo_weight: float
    hyperparameters: Mapping[str, object]  # name -> value, for every hyperparameter of the types

    def __init__(self, *, loss_type: str | Sequence[str] = "sigmoid",
                 loss_weights: Sequence[float] | None = None, beta: float = 0.1,
                 sft_weight: float = 0.0, dpo_weight: float = 1.0,
                 hyperparameters: Mapping[str, object] | None = None, **given):
        types = _loss_types(loss_type)
        weights = _loss_weights(loss_weights, types)
        for name, value, rule in (("beta", beta, "> 0"), ("sft_weight", sft_weight, ">= 0"),
                                  ("dpo_weight", dpo_weight, ">= 0")):
            error = _number(name, value)
            if error:
                raise ValueError(error)
            if not (value > 0 if rule == "> 0" else value >= 0):
                raise ValueError(f"{name} must be {rule}; got {value}")
        if dpo_weight == 0 and sft_weight == 0:
            raise ValueError("dpo_weight and sft_weight cannot both be 0 (the loss would be 0)")
        given = {**(hyperparameters or {}), **given}
        used = {hp.name for t in types for hp in LOSSES[t].hyperparameters}
        for name, value in given.items():
            if name not in HYPERPARAMETERS:
                near = difflib.get_close_matches(name, list(HYPERPARAMETERS), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ValueError(f"unknown loss hyperparameter {name!r}{hint} (known: "
                                 f"{', '.join(HYPERPARAMETERS)})")
            if name not in used and not _is_default(value, HYPERPARAMETERS[name].default):
                got = types if len(types) > 1 else types[0]
                raise ValueError(f"{name} is used by loss_type {_quoted(_users(name))} only "
                                 f"({name} applies to no other type); got {got!r} with "
                                 f"{name}={value!r}")
        values = {name: given.get(name, HYPERPARAMETERS[name].default) for name in sorted(used)}
        for t in types:
            for hp in LOSSES[t].hyperparameters:
                error = hp.check(values[hp.name])
                if error:
                    raise ValueError(error)
        for name, value in (("loss_type", types), ("loss_weights", weights),
                            ("beta", float(beta)), ("sft_weight", float(sft_weight)),
                            ("dpo_weight", float(dpo_weight)),
                            ("hyperparameters", MappingProxyType(values))):
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        """``spec.label_smoothing``: a hyperparameter's value (its default where no listed type
        uses it)."""
        values = self.__dict__.get("hyperparameters")
        if values is None or name not in HYPERPARAMETERS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return values.get(name, HYPERPARAMETERS[name].default)

    def __hash__(self) -> int:
        return hash((self.loss_type, self.loss_weights, self.beta, self.sft_weight,
                     self.dpo_weight, tuple(self.hyperparameters.items())))

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.hyperparameters.items())
        return (f"LossSpec(loss_type={self.loss_type!r}, loss_weights={self.loss_weights!r}, "
                f"beta={self.beta!r}, sft_weight={self.sft_weight!r}, "
                f"dpo_weight={self.dpo_weight!r}{extra})")

    def replace(self, **changes) -> LossSpec:
        """A copy with some fields or hyperparameters changed (validated again)."""
        hyper = {k: changes.pop(k) for k in list(changes) if k in HYPERPARAMETERS}
        fields = dict(loss_type=self.loss_type, loss_weights=self.loss_weights, beta=self.beta,
                      sft_weight=self.sft_weight, dpo_weight=self.dpo_weight)
        return LossSpec(**{**fields, **changes}, **{**self.hyperparameters, **hyper})

    @property
    def needs_reference(self) -> tuple[str, ...]:
        """The listed types that refuse ``ref_logps=None`` (none of them when dpo_weight = 0)."""
        if self.dpo_weight == 0:
            return ()
        return tuple(t for t in self.loss_type if LOSSES[t].needs_reference)

    def check_reference(self, has_reference: bool) -> None:
        """ValueError when a listed type needs ``ref_logps`` and none is given."""
        anchored = self.needs_reference
        if anchored and not has_reference:
            raise ValueError(f"loss_type {anchored[0]!r} needs ref_logps: its loss depends on "
                             "each response's log-ratio to the reference, not only on their "
                             "difference (pass zeros to use log-probs as they are)")

    @property
    def length_averaged(self) -> bool:
        """The rewards are β·(log-ratio / length): every listed type is length-averaged."""
        return all(LOSSES[t].length_averaged for t in self.loss_type)

    def dpo_sum(self, log_ratios: torch.Tensor, lengths: torch.Tensor,
                rewards: torch.Tensor) -> torch.Tensor:
        """Σ_k w_k Σ_i loss_k over the pairs: log_ratios [n, 2] (c, r), lengths [n, 2] and the
        detached rewards [n, 2] (for hyperparameters resolved per call, e.g. BCO's running
        mean), all in one float dtype. Returns a 0-dim tensor."""
        resolved = {}
        for name, value in self.hyperparameters.items():
            resolve = HYPERPARAMETERS[name].resolve
            resolved[name] = value if resolve is None else resolve(value, rewards)
        total = 0.0
        for t, w in zip(self.loss_type, self.loss_weights):
            entry = LOSSES[t]
            losses = entry.fn(log_ratios[:, 0], log_ratios[:, 1], lengths, self.beta,
                              **{hp.name: resolved[hp.name] for hp in entry.hyperparameters})
            total = total + (losses.sum() if w == 1.0 else w * losses.sum())
        return total


def pair_losses(loss_type: str, chosen: torch.Tensor, rejected: torch.Tensor,
                lengths: torch.Tensor | None, beta: float, **hyperparameters) -> torch.Tensor:
    """[n] losses of one type from the log-ratios ``chosen`` = c, ``rejected`` = r ([n] each,
    summed over tokens) and ``lengths`` [n, 2] (tokens of the chosen / rejected response; IPO
    only); the type's hyperparameters as keywords (defaults from ``LOSSES``). Values are not
    checked here (``LossSpec`` checks them)."""
    entry = LOSSES.get(loss_type)
    if entry is None:
        _loss_types(loss_type)  # raises, naming the types
    values = {hp.name: hyperparameters.pop(hp.name, hp.default) for hp in entry.hyperparameters}
    if hyperparameters:
        raise ValueError(f"loss_type {loss_type!r} takes the hyperparameters "
                         f"{[hp.name for hp in entry.hyperparameters]}; got "
                         f"{sorted(hyperparameters)}")
    return entry.fn(chosen, rejected, lengths, beta, **values)
