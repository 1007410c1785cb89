"""Every loss type of ``preference_loss`` against outside implementations, on the Triton path
(the interpreter on CPU) and the chunked torch path, values and gradients (hidden, weight):

* Liger-Kernel 0.8.5's ``LigerFusedLinearDPOLoss(compiled=False)`` for the types it has (all
  but ``ipo``; its ``sigmoid`` ignores label smoothing): fed the same pairs as a padded
  [2n, T, H] batch (chosen rows, then rejected rows; ignore_index -100), its reference through
  ``ref_input`` / ``ref_weight``, summed log-probs (``average_log_prob=False``), its NLL term
  (chosen-token mean, ``alpha``), and its rewards as the metrics' oracle.
* TRL's published formulas (``trl/trainer/dpo_trainer.py``: TRL 1.10.0.dev's per-sequence
  losses; TRL < 0.29's cDPO ``sigmoid`` with label smoothing and ``RunningMoments`` mean for
  ``bco_pair``), transcribed below in plain torch over full [2n, T, V] logits — independent of
  our chunking and packing — in float64 (ground truth) and float32; our float32 error must be at
  most twice the transcription's own float32 error (STYLE.md, 3).
* The weighted mix of loss types (TRL's ``loss_type=[...]``, ``loss_weights=[...]``).

Packed pairs have uneven lengths (pair 0's chosen response is one token) in shuffled order;
H = 40 and V = 301 are not powers of two."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import on_test_device
from tpo_fast.kernels import (
    LOSS_TYPES,
    NEEDS_REFERENCE,
    LossSpec,
    RunningRewardMean,
    dpo_sft_loss,
    naive_linear_logprobs,
    pair_losses,
)
from tpo_fast.kernels import preference_loss as _preference_loss

# impl="triton" runs on TPO_FAST_TEST_DEVICE; inputs and ground truths are built on the CPU
preference_loss = on_test_device(_preference_loss, impls=("triton",))

pytestmark = pytest.mark.usefixtures("nan_empty")

BETA, ALPHA, TAU = 0.3, 0.5, 0.05
SMOOTHING = {"robust": 0.1, "exo_pair": 1e-3, "sigmoid_ls": 0.15}
LIGER_TYPES = ("sigmoid", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard",
               "apo_zero", "apo_down", "discopop")
# the types TRL has (dpop is checked against its own formula below)
TRL_TYPES = tuple(t for t in LOSS_TYPES if t != "dpop")
CASES = (*TRL_TYPES, "sigmoid_ls")  # sigmoid_ls: sigmoid with label smoothing (cDPO)
IMPLS = ("triton", "chunked")


def case_args(case):
    return ("sigmoid" if case == "sigmoid_ls" else case), SMOOTHING.get(case, 0.0)


class Pairs:
    """n pairs as packed tokens (ours) and as padded rows (Liger's and TRL's layout)."""

    def __init__(self, n=5, H=40, V=301, seed=0, dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        lens = torch.randint(1, 9, (n, 2), generator=g)
        lens[0, 0] = 1  # a one-token response
        self.n, self.T = n, int(lens.max())
        rows = torch.cat([torch.arange(n), torch.arange(n, 2 * n)])  # row of seq 2i+k: k*n + i
        self.seq_id = torch.arange(2 * n).repeat_interleave(lens.flatten())
        order = torch.randperm(len(self.seq_id), generator=g)
        self.seq_id = self.seq_id[order]
        # position of each packed token in the padded layout
        pos = torch.cat([torch.arange(int(k)) for k in lens.flatten()])[order]
        self.row = rows.view(2, n).t().flatten()[self.seq_id]
        self.col = pos
        N = len(self.seq_id)
        self.hidden = torch.randn(N, H, generator=g).to(dtype)
        self.weight = (torch.randn(V, H, generator=g) * (2 / H ** 0.5)).to(dtype)
        self.targets = torch.randint(0, V, (N,), generator=g)
        # the reference: a perturbed copy of the same head and states (β·h is O(1))
        self.ref_hidden = (self.hidden.float() + 0.2 * torch.randn(N, H, generator=g)).to(dtype)
        self.ref_weight = (self.weight.float()
                           + 0.03 * torch.randn(V, H, generator=g)).to(dtype)
        ref_tok = naive_linear_logprobs(self.ref_hidden.double(), self.ref_weight.double(),
                                        self.targets)
        self.ref_logps = torch.zeros(2 * n, dtype=torch.float64).index_add(
            0, self.seq_id, ref_tok).view(n, 2).float()

    def padded(self, x, fill=0):
        """[N, ...] packed -> [2n, T, ...] rows (chosen rows 0..n-1, rejected rows n..2n-1)."""
        out = torch.full((2 * self.n, self.T, *x.shape[1:]), fill, dtype=x.dtype)
        out[self.row, self.col] = x
        return out

    def packed(self, x):
        return x[self.row, self.col]


def run_ours(p, impl, hidden=None, weight=None, ref_logps="pairs", **spec):
    h = (p.hidden if hidden is None else hidden).clone().requires_grad_()
    w = (p.weight if weight is None else weight).clone().requires_grad_()
    ref_logps = p.ref_logps if isinstance(ref_logps, str) else ref_logps
    spec = dict(dict(beta=BETA, sft_weight=ALPHA, discopop_tau=TAU), **spec)
    chunk = dict(chunk_tokens=16) if impl == "chunked" else {}  # several chunks, the last partial
    loss, metrics = preference_loss(h, w, p.targets, p.seq_id, ref_logps, LossSpec(**spec),
                                    impl=impl, **chunk)
    loss.backward()
    return loss.detach(), metrics, h.grad, w.grad


# ---- TRL's formulas, transcribed over full logits --------------------------------------------

class TRLRunningMoments:
    """The mean part of TRL < 0.29's ``RunningMoments.update`` on one scalar (single process)."""

    def __init__(self):
        self.mean, self.count = 0.0, 1e-24

    def update(self, x: float) -> float:
        delta = x - self.mean
        tot_count = self.count + 1
        self.mean += delta * 1 / tot_count
        self.count = tot_count
        return self.mean


def trl_losses(loss_type, chosen_logps, rejected_logps, ref_chosen, ref_rejected, chosen_len,
               rejected_len, beta, label_smoothing, tau, bco_mean):
    """One TRL per-sequence loss, [n] (reverse-KL scores = log-ratios)."""
    chosen_scores = chosen_logps - ref_chosen
    rejected_scores = rejected_logps - ref_rejected
    delta_score = chosen_scores - rejected_scores
    eps = label_smoothing
    if loss_type == "sigmoid":  # TRL < 0.29: conservative DPO with label smoothing
        return (-F.logsigmoid(beta * delta_score) * (1 - eps)
                - F.logsigmoid(-beta * delta_score) * eps)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta_score)
    if loss_type == "ipo":
        ipo_delta = chosen_scores / chosen_len - rejected_scores / rejected_len
        return (ipo_delta - 1 / (2 * beta)) ** 2
    if loss_type == "exo_pair":
        epsilon = torch.tensor(eps, dtype=delta_score.dtype)
        qw, log_qw = torch.sigmoid(beta * delta_score), F.logsigmoid(beta * delta_score)
        ql, log_ql = torch.sigmoid(-beta * delta_score), F.logsigmoid(-beta * delta_score)
        return qw * (log_qw - torch.log1p(-epsilon)) + ql * (log_ql - torch.log(epsilon))
    if loss_type == "nca_pair":
        cr, rr = beta * chosen_scores, beta * rejected_scores
        return -F.logsigmoid(cr) - 0.5 * F.logsigmoid(-cr) - 0.5 * F.logsigmoid(-rr)
    if loss_type == "robust":
        clean = -(1 - eps) * F.logsigmoid(beta * delta_score)
        flipped = -eps * F.logsigmoid(-beta * delta_score)
        return (clean - flipped) / (1 - 2 * eps)
    if loss_type == "bco_pair":  # TRL < 0.29: the running mean δ; TRL >= 0.29: δ = 0
        cr, rr = beta * chosen_scores, beta * rejected_scores
        return -F.logsigmoid(cr - bco_mean) - F.logsigmoid(-(rr - bco_mean))
    if loss_type == "sppo_hard":
        return (chosen_scores - 0.5 / beta) ** 2 + (rejected_scores + 0.5 / beta) ** 2
    if loss_type == "apo_zero":
        return (1 - torch.sigmoid(beta * chosen_scores)) + torch.sigmoid(beta * rejected_scores)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * chosen_scores) + (1 - torch.sigmoid(beta * delta_score))
    if loss_type == "discopop":
        logits = delta_score * beta
        modulation = torch.sigmoid(logits / tau)
        return -F.logsigmoid(logits) * (1 - modulation) + torch.exp(-logits) * modulation
    raise AssertionError(loss_type)


def run_trl(p, loss_types, loss_weights, dtype, label_smoothing=0.0, bco=None, ref=True):
    """TRL's DPO loss + α·SFT of the padded rows through full logits, in ``dtype``; returns
    (loss, grad of the packed hidden, grad of the weight). ``bco``: a TRLRunningMoments, or a
    fixed δ (a float), or None (δ = 0)."""
    rows = p.padded(p.hidden).to(dtype, copy=True).requires_grad_()
    weight = p.weight.to(dtype, copy=True).requires_grad_()
    labels = p.padded(p.targets, fill=-100)
    mask = labels != -100
    logps = (rows @ weight.t()).log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    logps = (logps * mask).sum(-1)
    chosen_logps, rejected_logps = logps.chunk(2)
    lengths = mask.sum(-1).to(dtype)
    chosen_len, rejected_len = lengths.chunk(2)
    if ref:
        ref_chosen, ref_rejected = p.ref_logps.to(dtype).unbind(1)
    else:
        ref_chosen = ref_rejected = torch.zeros(p.n, dtype=dtype)
    bco_mean = 0.0
    if isinstance(bco, TRLRunningMoments):
        rewards = torch.cat([BETA * (chosen_logps - ref_chosen),
                             BETA * (rejected_logps - ref_rejected)]).mean().detach()
        bco_mean = bco.update(float(rewards))
    elif bco is not None:
        bco_mean = bco
    loss = 0.0
    for loss_type, w in zip(loss_types, loss_weights):
        losses = trl_losses(loss_type, chosen_logps, rejected_logps, ref_chosen, ref_rejected,
                            chosen_len, rejected_len, BETA, label_smoothing, TAU, bco_mean)
        loss = loss + losses.mean() * w
    chosen_logits = (rows[:p.n] @ weight.t())[mask[:p.n]]
    loss = loss + ALPHA * F.cross_entropy(chosen_logits, labels[:p.n][mask[:p.n]])
    loss.backward()
    return loss.detach(), p.packed(rows.grad), weight.grad


def within_twice(got, ref32, truth, what, scale=None):
    got, ref32, truth = (torch.as_tensor(x).detach().double() for x in (got, ref32, truth))
    err = (got - truth).abs().max().item()
    ref_err = (ref32 - truth).abs().max().item()
    tiny = 1e-6 * (1 + (truth.abs().max().item() if scale is None else scale))
    assert err <= 2 * ref_err + tiny, (f"{what}: error {err:.3e} > 2 x the transcription's "
                                       f"float32 error {ref_err:.3e} + {tiny:.1e}")


def close(got, want, what):
    """fp32 against fp32 (Liger): the difference is summation-order noise, ~1e-7 relative;
    a wrong formula is off by O(1)."""
    got, want = got.detach().double(), want.detach().double()
    err = (got - want).abs().max().item()
    tol = 1e-5 * (1 + want.abs().max().item())
    assert err <= tol, f"{what}: |ours - Liger| = {err:.3e} > {tol:.1e}"


@functools.cache
def pairs():
    return Pairs()


@functools.cache
def ours(case, impl):
    loss_type, eps = case_args(case)
    return run_ours(pairs(), impl, loss_type=loss_type, label_smoothing=eps)


# ---- tests -----------------------------------------------------------------------------------

def test_loss_types_listed():
    assert set(LOSS_TYPES) == {"sigmoid", "ipo", "hinge", "robust", "bco_pair", "exo_pair",
                               "nca_pair", "sppo_hard", "apo_zero", "apo_down", "discopop",
                               "dpop"}
    assert NEEDS_REFERENCE == {"nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down",
                               "dpop"}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", [c for c in CASES if c in LIGER_TYPES])
def test_matches_liger(case, impl):
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    p = pairs()
    loss_type, eps = case_args(case)
    liger = LigerFusedLinearDPOLoss(beta=BETA, alpha=ALPHA, compute_nll_loss=True, compiled=False,
                                    use_ref_model=True, average_log_prob=False,
                                    loss_type=loss_type, label_smoothing=eps, discopop_tau=TAU)
    rows = p.padded(p.hidden).requires_grad_()
    weight = p.weight.clone().requires_grad_()
    want, aux = liger(weight, rows, p.padded(p.targets, fill=-100),
                      ref_input=p.padded(p.ref_hidden), ref_weight=p.ref_weight)
    want.backward()
    chosen_logps, rejected_logps, *_, nll, chosen_rewards, rejected_rewards = aux

    loss, metrics, grad_hidden, grad_weight = ours(case, impl)
    close(loss, want, "loss")
    close(metrics["policy_logps"], torch.stack([chosen_logps, rejected_logps], 1),
          "policy_logps")
    close(metrics["nll_loss"], nll, "nll_loss")
    close(metrics["chosen_rewards"], chosen_rewards, "chosen_rewards")
    close(metrics["rejected_rewards"], rejected_rewards, "rejected_rewards")
    close(grad_hidden, p.packed(rows.grad), "grad_hidden")
    close(grad_weight, weight.grad, "grad_weight")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES)
def test_matches_trl_formulas(case, impl):
    p = pairs()
    loss_type, eps = case_args(case)
    truth = run_trl(p, [loss_type], [1.0], torch.float64, eps)
    ref32 = run_trl(p, [loss_type], [1.0], torch.float32, eps)
    loss, _, grad_hidden, grad_weight = ours(case, impl)
    scale = BETA * p.ref_logps.abs().max().item() + truth[0].abs().item()
    if loss_type in ("ipo", "sppo_hard"):  # squares of log-ratios: noise scales with them
        scale = scale ** 2
    within_twice(loss, ref32[0], truth[0], "loss", scale)
    within_twice(grad_hidden, ref32[1], truth[1], "grad_hidden")
    within_twice(grad_weight, ref32[2], truth[2], "grad_weight")


MIX = (["sigmoid", "bco_pair", "ipo", "discopop"], [0.8, 0.2, 0.5, 1.3])


@pytest.mark.parametrize("impl", IMPLS)
def test_weighted_mix_matches_trl(impl):
    p = pairs()
    truth = run_trl(p, *MIX, torch.float64)
    ref32 = run_trl(p, *MIX, torch.float32)
    loss, metrics, grad_hidden, grad_weight = run_ours(p, impl, loss_type=MIX[0],
                                                      loss_weights=MIX[1])
    scale = (BETA * p.ref_logps.abs().max().item() + truth[0].abs().item()) ** 2
    within_twice(loss, ref32[0], truth[0], "loss", scale)
    within_twice(grad_hidden, ref32[1], truth[1], "grad_hidden")
    within_twice(grad_weight, ref32[2], truth[2], "grad_weight")
    # rewards of a mix are the summed log-ratios' (IPO's averaging is its own term's)
    summed = ours("sigmoid", impl)[1]["chosen_rewards"]
    torch.testing.assert_close(metrics["chosen_rewards"], summed)


@pytest.mark.parametrize("impl", IMPLS)
def test_one_pair_every_type_mixed_matches_trl(impl):
    """A packed batch of a single pair (a one-token chosen response), every type in one mix."""
    p = Pairs(n=1, seed=11)
    types = list(TRL_TYPES)
    weights = [1.0 - 0.15 * i for i in range(len(types))]  # some negative
    truth = run_trl(p, types, weights, torch.float64, label_smoothing=1e-3)
    ref32 = run_trl(p, types, weights, torch.float32, label_smoothing=1e-3)
    loss, _, grad_hidden, grad_weight = run_ours(p, impl, loss_type=types, loss_weights=weights,
                                                 label_smoothing=1e-3)
    scale = (BETA * p.ref_logps.abs().max().item() + truth[0].abs().item()) ** 2
    within_twice(loss, ref32[0], truth[0], "loss", scale)
    within_twice(grad_hidden, ref32[1], truth[1], "grad_hidden")
    within_twice(grad_weight, ref32[2], truth[2], "grad_weight")


def test_mix_is_the_weighted_sum_of_single_types():
    p = pairs()
    types = ["hinge", "nca_pair", "apo_down"]
    weights = [0.25, -0.5, 2.0]
    mixed = run_ours(p, "chunked", loss_type=types, loss_weights=weights, sft_weight=0.0)
    single = [run_ours(p, "chunked", loss_type=t, sft_weight=0.0) for t in types]
    for i, what in ((0, "loss"), (2, "grad_hidden"), (3, "grad_weight")):
        want = sum(w * s[i] for w, s in zip(weights, single))
        torch.testing.assert_close(mixed[i], want, rtol=1e-5, atol=1e-6, msg=what)
    torch.testing.assert_close(mixed[1]["dpo_loss"], mixed[0])
    # default weights are 1
    ones = run_ours(p, "chunked", loss_type=types, sft_weight=0.0)
    torch.testing.assert_close(ones[0], sum(s[0] for s in single), rtol=1e-5, atol=1e-6)


def test_bco_running_mean_matches_trl_before_0_29(impl="chunked"):
    """Three calls with one RunningRewardMean give TRL < 0.29's running δ and losses; a fixed
    δ is used as given. (δ is torch on top of the token log-probs: the Triton path's bco_pair
    gradients are checked above.)"""
    batches = [Pairs(n=3, seed=s) for s in (1, 2, 3)]
    state, trl_state, trl_state32 = RunningRewardMean(), TRLRunningMoments(), TRLRunningMoments()
    for p in batches:
        truth = run_trl(p, ["bco_pair"], [1.0], torch.float64, bco=trl_state)
        ref32 = run_trl(p, ["bco_pair"], [1.0], torch.float32, bco=trl_state32)
        loss, _, grad_hidden, _ = run_ours(p, impl, loss_type="bco_pair", bco_delta=state)
        assert state.mean == pytest.approx(trl_state.mean, rel=1e-5, abs=1e-6)
        within_twice(loss, ref32[0], truth[0], "loss", 1.0)
        within_twice(grad_hidden, ref32[1], truth[1], "grad_hidden")
    assert state.count == 3 and state.mean != 0
    resumed = RunningRewardMean()
    resumed.load_state_dict(state.state_dict())
    assert resumed.state_dict() == state.state_dict()
    p = batches[0]
    fixed = run_ours(p, impl, loss_type="bco_pair", bco_delta=0.7)
    truth = run_trl(p, ["bco_pair"], [1.0], torch.float64, bco=0.7)
    ref32 = run_trl(p, ["bco_pair"], [1.0], torch.float32, bco=0.7)
    within_twice(fixed[0], ref32[0], truth[0], "loss (fixed delta)", 1.0)
    assert not torch.allclose(fixed[0], run_ours(p, impl, loss_type="bco_pair")[0])
    as_tensor = run_ours(p, impl, loss_type="bco_pair", bco_delta=torch.tensor(0.7))
    torch.testing.assert_close(as_tensor[0], fixed[0])


def test_bf16_every_type_on_the_triton_path():
    """All types in one weighted mix, bf16 inputs, Triton path: loss and gradients within twice
    the naive path's bf16 error of the float64 ground truth."""
    p = Pairs(n=4, seed=7, dtype=torch.bfloat16)
    types = list(LOSS_TYPES)
    weights = [0.5 + 0.1 * i for i in range(len(types))]
    kwargs = dict(loss_type=types, loss_weights=weights, label_smoothing=1e-3)
    truth = run_ours(p, "naive", hidden=p.hidden.double(), weight=p.weight.double(),
                     ref_logps=p.ref_logps.double(), **kwargs)
    naive = run_ours(p, "naive", **kwargs)
    got = run_ours(p, "triton", **kwargs)
    assert got[2].dtype == torch.bfloat16 and got[3].dtype == torch.bfloat16
    scale = (BETA * p.ref_logps.abs().max().item() + truth[0].abs().item()) ** 2
    for i, what, s in ((0, "loss", scale), (2, "grad_hidden", None), (3, "grad_weight", None)):
        got_i, naive_i, truth_i = (x[i] for x in (got, naive, truth))
        err = (got_i.double() - truth_i).abs().max().item()
        ref_err = (naive_i.double() - truth_i).abs().max().item()
        tiny = 1e-6 * (1 + (truth_i.abs().max().item() if s is None else s))
        assert err <= 2 * ref_err + tiny, f"{what}: {err:.3e} > 2 x {ref_err:.3e} + {tiny:.1e}"


def test_metrics_do_not_depend_on_the_loss_type():
    base = ours("sigmoid", "chunked")[1]
    for case in CASES:
        if case == "ipo":  # IPO alone reports length-averaged rewards (unchanged behaviour)
            continue
        metrics = ours(case, "chunked")[1]
        for name in ("policy_logps", "chosen_rewards", "rejected_rewards", "margins",
                     "reward_accuracy", "nll_loss", "chosen_tokens"):
            assert torch.equal(metrics[name], base[name]), (case, name)


BAD = [
    (dict(loss_type="kto"), "unknown loss_type 'kto'"),
    (dict(loss_type=["sigmoid", "sft"]), r"unknown loss_type 'sft' \(TRL's 'sft' is sft_weight"),
    (dict(loss_type=[]), "at least one loss type"),
    (dict(loss_type=["sigmoid", "hinge"], loss_weights=[1.0]), "loss_weights has 1 entries"),
    (dict(loss_type="hinge", loss_weights=[math.nan]), "must be finite"),
    (dict(loss_type="exo_pair"), "'exo_pair' needs label_smoothing > 0"),
    (dict(loss_type="hinge", label_smoothing=0.1), "label_smoothing applies"),
    (dict(loss_type="robust", label_smoothing=0.5), "label_smoothing must lie"),
    (dict(loss_type="discopop", discopop_tau=0.0), "discopop_tau must be > 0"),
    (dict(loss_type="sigmoid", bco_delta=0.1), "bco_delta is used by loss_type 'bco_pair'"),
    *[(dict(loss_type=t, ref_logps=None), f"loss_type '{t}' needs ref_logps")
      for t in sorted(NEEDS_REFERENCE)],
    (dict(loss_type=["sigmoid", "apo_zero"], ref_logps=None), "'apo_zero' needs ref_logps"),
]


@pytest.mark.parametrize("fn", ["preference_loss", "dpo_sft_loss"])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_loss_arguments(case, fn):
    bad, match = BAD[case]
    p = pairs()
    args = dict(beta=BETA)
    args.update(bad)
    ref = args.pop("ref_logps", p.ref_logps)
    with pytest.raises(ValueError, match=match):
        if fn == "preference_loss":
            preference_loss(p.hidden, p.weight, p.targets, p.seq_id, ref, LossSpec(**args),
                            impl="chunked")
        else:
            dpo_sft_loss(naive_linear_logprobs(p.hidden, p.weight, p.targets), p.seq_id, ref,
                         LossSpec(**args))


def test_reference_free_types_still_work_and_zeros_are_explicit():
    """Types that only use h run without a reference; the anchored ones take explicit zeros
    (Liger's use_ref_model=False)."""
    p = pairs()
    token = naive_linear_logprobs(p.hidden, p.weight, p.targets)
    for t in LOSS_TYPES:
        eps = SMOOTHING.get(t, 0.0)
        ref = torch.zeros(p.n, 2) if t in NEEDS_REFERENCE else None
        loss, _ = dpo_sft_loss(token, p.seq_id, ref,
                               LossSpec(beta=BETA, loss_type=t, label_smoothing=eps))
        assert torch.isfinite(loss), t
        # plain SFT (dpo_weight 0) needs no reference whatever the type
        sft, metrics = dpo_sft_loss(token, p.seq_id, None, LossSpec(
            beta=BETA, sft_weight=1.0, loss_type=t, label_smoothing=eps, dpo_weight=0.0))
        torch.testing.assert_close(sft, metrics["nll_loss"])


def test_discopop_stays_finite_where_trl_product_overflows():
    """exp(−βh)·σ(βh/τ) is inf · 0 in fp32 for βh < −88; ours is its finite limit, and equal to
    TRL's product wherever that is finite."""
    h = torch.tensor([-400.0, -50.0, -1.0, 0.0, 2.0, 400.0], requires_grad=True)
    zeros = torch.zeros_like(h)
    ours_ = pair_losses("discopop", h, zeros, None, BETA, discopop_tau=TAU)
    ours_.sum().backward()
    trl = trl_losses("discopop", h.detach(), zeros, zeros, zeros, None, None, BETA, 0.0, TAU, 0.0)
    assert torch.isfinite(ours_).all() and torch.isfinite(h.grad).all()
    assert trl[0].isnan()  # the product form
    torch.testing.assert_close(ours_[1:], trl[1:])
    # far below: the logistic part −log σ(βh) ≈ −βh remains
    torch.testing.assert_close(ours_[0], -BETA * h[0].detach())


def test_spec_is_one_frozen_validated_object():
    """LossSpec: hyperparameters as keywords (defaults from LOSSES), read-only, validated when
    made; an unknown hyperparameter names the nearest one."""
    import dataclasses

    from tpo_fast.kernels import LOSSES

    spec = LossSpec(beta=BETA, loss_type=["sigmoid", "discopop"], label_smoothing=0.1)
    assert spec.loss_type == ("sigmoid", "discopop") and spec.loss_weights == (1.0, 1.0)
    assert dict(spec.hyperparameters) == {"discopop_tau": TAU, "label_smoothing": 0.1}
    assert spec.label_smoothing == 0.1 and spec.bco_delta is None  # unused: its default
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.beta = 1.0
    with pytest.raises(TypeError):
        spec.hyperparameters["label_smoothing"] = 0.2
    assert spec.replace(beta=0.5).beta == 0.5 and spec.replace(beta=0.5) != spec
    assert spec.replace() == spec and hash(spec.replace()) == hash(spec)
    with pytest.raises(ValueError, match="label_smoothing must lie"):
        spec.replace(label_smoothing=0.7)
    with pytest.raises(ValueError, match=r"unknown loss hyperparameter 'discopop_ta'; did you "
                                         r"mean 'discopop_tau'\?"):
        LossSpec(loss_type="discopop", discopop_ta=0.1)
    with pytest.raises(ValueError, match="dpo_weight and sft_weight cannot both be 0"):
        LossSpec(dpo_weight=0.0)
    with pytest.raises(TypeError, match="spec must be a LossSpec"):
        dpo_sft_loss(torch.zeros(2), torch.tensor([0, 1]), None, 0.1)
    # the per-type facts are the registry's
    assert set(NEEDS_REFERENCE) == {t for t, e in LOSSES.items() if e.needs_reference}
    assert tuple(LOSSES) == LOSS_TYPES


def test_config_keys_come_from_the_registry():
    """Every hyperparameter of LOSSES is a ``loss.<name>`` config key with the registry's
    default; LossConfig.spec() is the LossSpec; bad values are ConfigErrors naming the key."""
    from tpo_fast.kernels import HYPERPARAMETERS

    from tpo_fast.config import ConfigError, LossConfig, load_config

    base = ["model.tiny=qwen2_vl", "data.train=pairs.jsonl"]
    assert all(getattr(LossConfig(), name) == hp.default
               for name, hp in HYPERPARAMETERS.items())
    cfg = load_config(None, base + ["loss.loss_type=discopop", "loss.discopop_tau=0.2",
                                    "loss.beta=0.3", "loss.sft_weight=0.5"])
    assert cfg.loss.spec() == LossSpec(loss_type="discopop", beta=0.3, sft_weight=0.5,
                                       discopop_tau=0.2)
    bco = load_config(None, base + ["loss.loss_type=bco_pair", "loss.bco_delta=0.25"])
    assert bco.loss.spec().bco_delta == 0.25
    from tpo_fast.train.reference import reference_kind

    anchored = load_config(None, base + ["loss.loss_type=nca_pair", "loss.reference=none"])
    with pytest.raises(ConfigError, match="loss.reference=none but loss_type 'nca_pair' needs"):
        reference_kind(anchored, has_ref_logps=True)
    assert reference_kind(bco, has_ref_logps=True) == "precomputed"
    for override, message in (
            ("loss.discopop_ta=1", r"unknown config key loss.discopop_ta; did you mean "
                                   r"loss.discopop_tau\?"),
            ("loss.label_smoothing=0.6", r"loss: label_smoothing must lie in \[0, 0.5\)"),
            ("loss.discopop_tau=0.1", r"loss: discopop_tau is used by loss_type 'discopop'"),
            ("loss.beta=0", r"loss: beta must be > 0"),
            ("loss.reference=live", r"loss.reference must be precomputed, model, none or auto")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, base + [override])


# ---- DPO-Positive: a loss type added through the registry alone ------------------------------
# DPOP (Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with
# DPO-Positive", arXiv 2402.13228, eq. 3):
#   L = −log σ(β·(c − r − λ·max(0, log π_ref(y_c) − log π(y_c)))),  c, r the summed log-ratios.
# Confirmed against PaddlePaddle/PaddleNLP paddlenlp/trl/dpo_criterion.py (commit 214cbf33,
# ``loss_type == "dpop"``: ``-log_sigmoid(beta * (logits - dpop_lambda * clip(ref_chosen -
# policy_chosen, min=0)))``); λ = 50 is the paper's and PaddleNLP's default.

def naive_dpop(p, lam, dtype):
    """The formula above over full logits of the padded rows, in ``dtype``; (loss, grad of the
    packed hidden, grad of the weight), + α·SFT as run_ours adds it."""
    rows = p.padded(p.hidden).to(dtype, copy=True).requires_grad_()
    weight = p.weight.to(dtype, copy=True).requires_grad_()
    labels = p.padded(p.targets, fill=-100)
    mask = labels != -100
    logps = (rows @ weight.t()).log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    policy_chosen, policy_rejected = (logps * mask).sum(-1).chunk(2)
    ref_chosen, ref_rejected = p.ref_logps.to(dtype).unbind(1)
    penalty = torch.clamp(ref_chosen - policy_chosen, min=0)
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected) - lam * penalty
    loss = -F.logsigmoid(BETA * logits).mean()
    chosen_logits = (rows[:p.n] @ weight.t())[mask[:p.n]]
    loss = loss + ALPHA * F.cross_entropy(chosen_logits, labels[:p.n][mask[:p.n]])
    loss.backward()
    return loss.detach(), p.packed(rows.grad), weight.grad


@pytest.mark.parametrize("impl", IMPLS)
def test_dpop_matches_its_formula(impl):
    p = pairs()
    c = (ours("sigmoid", "chunked")[1]["policy_logps"][:, 0] - p.ref_logps[:, 0])
    assert (c < 0).any() and (c > 0).any()  # the penalty is active for some pairs, not all
    lam = 2.5
    truth = naive_dpop(p, lam, torch.float64)
    ref32 = naive_dpop(p, lam, torch.float32)
    loss, _, grad_hidden, grad_weight = run_ours(p, impl, loss_type="dpop", dpop_lambda=lam)
    scale = BETA * lam * p.ref_logps.abs().max().item() + truth[0].abs().item()
    within_twice(loss, ref32[0], truth[0], "loss", scale)
    within_twice(grad_hidden, ref32[1], truth[1], "grad_hidden")
    within_twice(grad_weight, ref32[2], truth[2], "grad_weight")
    # λ = 0 is sigmoid DPO; the penalty only adds where the chosen log-ratio is negative
    torch.testing.assert_close(run_ours(p, "chunked", loss_type="dpop", dpop_lambda=0.0)[0],
                               ours("sigmoid", "chunked")[0])
    assert loss > ours("sigmoid", impl)[0]


def test_dpop_gradient_and_settings():
    """The per-pair gradient by finite differences (away from the kink c = 0); the default λ,
    the reference it needs and its checks; settable from the YAML config."""
    from tpo_fast.config import ConfigError, load_config

    g = torch.Generator().manual_seed(3)
    c = torch.tensor([-3.0, -0.7, 0.4, 2.0], dtype=torch.float64).requires_grad_()
    r = (torch.randn(4, generator=g, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, r: pair_losses("dpop", c, r, None, BETA,
                                                             dpop_lambda=3.0), (c, r))
    assert LossSpec(loss_type="dpop").dpop_lambda == 50.0 and "dpop" in NEEDS_REFERENCE
    with pytest.raises(ValueError, match="dpop_lambda must be >= 0"):
        LossSpec(loss_type="dpop", dpop_lambda=-1.0)
    with pytest.raises(ValueError, match="loss_type 'dpop' needs ref_logps"):
        dpo_sft_loss(torch.zeros(2), torch.tensor([0, 1]), None, LossSpec(loss_type="dpop"))
    base = ["model.tiny=qwen2_vl", "data.train=pairs.jsonl"]
    cfg = load_config(None, base + ["loss.loss_type=dpop", "loss.dpop_lambda=5"])
    assert cfg.loss.spec() == LossSpec(loss_type="dpop", dpop_lambda=5.0)
    with pytest.raises(ConfigError, match="loss: dpop_lambda is used by loss_type 'dpop'"):
        load_config(None, base + ["loss.dpop_lambda=5"])
