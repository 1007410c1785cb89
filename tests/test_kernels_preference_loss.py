"""preference_loss: fused LM head + log-prob gather + DPO/SFT loss on packed pairs (seq_id 2i
chosen, 2i+1 rejected, shuffled, uneven lengths). Loss, every metric, grad_hidden and
grad_weight against a float64 ground truth with the error at most twice the naive path's own
error in the test dtype; the loss formulas against an independent per-pair computation; the
normalisers under gradient accumulation; bad input; the benchmark's CPU smoke mode."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TEST_DEVICE, on_test_device
from tpo_fast.kernels import LossSpec, dpo_sft_loss, naive_linear_logprobs
from tpo_fast.kernels import preference_loss as _preference_loss

# impl="triton" runs on TPO_FAST_TEST_DEVICE; inputs and ground truths are built on the CPU
preference_loss = on_test_device(_preference_loss, impls=("triton",))

pytestmark = pytest.mark.usefixtures("nan_empty")

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LOSSES = {"sigmoid": ("sigmoid", 0.0), "sigmoid_ls": ("sigmoid", 0.1), "ipo": ("ipo", 0.0),
          "hinge": ("hinge", 0.0)}
ALPHA = 0.5


def make_batch(N, H, V, n_pairs, dtype, seed):
    """N packed response tokens of n_pairs pairs: random uneven lengths (>= 1, pair 0's chosen
    response is a single token), tokens in shuffled order."""
    g = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(N - 2, generator=g)[:2 * n_pairs - 2].add(2).sort().values
    bounds = torch.cat([torch.tensor([0, 1]), cuts, torch.tensor([N])])
    lengths = bounds.diff()
    assert lengths.min() >= 1 and lengths.sum() == N and lengths[0] == 1
    seq_id = torch.arange(2 * n_pairs).repeat_interleave(lengths)
    seq_id = seq_id[torch.randperm(N, generator=g)]
    hidden = torch.randn(N, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) * (3 / H ** 0.5)).to(dtype)
    targets = torch.randint(0, V, (N,), generator=g)
    return hidden, weight, targets, seq_id


def ref_logps_near_policy(hidden, weight, targets, seq_id, n_pairs, seed):
    """Reference log-probs near the policy's (so β·h is O(1) and the loss is not saturated)."""
    token = naive_linear_logprobs(hidden.double(), weight.double(), targets)
    seq = torch.zeros(2 * n_pairs, dtype=torch.float64).index_add(0, seq_id, token)
    noise = torch.randn(2 * n_pairs, generator=torch.Generator().manual_seed(seed)) * 3
    return (seq + noise).view(n_pairs, 2).float()


SPEC_FIELDS = ("beta", "sft_weight", "dpo_weight", "loss_type", "label_smoothing")


def run(hidden, weight, targets, seq_id, ref_logps=None, **kwargs):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    spec = LossSpec(**{k: kwargs.pop(k) for k in SPEC_FIELDS if k in kwargs})
    loss, metrics = preference_loss(h, w, targets, seq_id, ref_logps, spec, **kwargs)
    loss.backward()
    return loss.detach(), metrics, h.grad, w.grad


def assert_within_twice_naive(got, naive, truth, what, scale=None):
    """|got - truth| <= 2 |naive - truth| + tiny (max norms). tiny = 1e-6 (1 + scale) covers
    float32 rounding noise; scale is the magnitude the value is computed from: by default its
    own, for the loss and sequence-level metrics β·max|π| (they are differences of sums π of
    token log-probs, whose fp32 noise scales with |π|)."""
    got, naive, truth = (torch.as_tensor(x).detach().double() for x in (got, naive, truth))
    err = (got - truth).abs().max().item()
    ref = (naive - truth).abs().max().item()
    tiny = 1e-6 * (1 + (truth.abs().max().item() if scale is None else scale))
    assert err <= 2 * ref + tiny, f"{what}: error {err:.3e} > 2 x naive's {ref:.3e} + {tiny:.1e}"


METRICS = ("policy_logps", "chosen_rewards", "rejected_rewards", "margins", "dpo_loss",
           "nll_loss")


@pytest.mark.parametrize("impl", ["triton", "chunked"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("with_ref", [True, False], ids=["ref", "reference_free"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("N,H,V,n_pairs", [(63, 40, 257, 5), (97, 16, 1000, 8)])
def test_matches_float64(N, H, V, n_pairs, loss, with_ref, dtype, impl):
    hidden, weight, targets, seq_id = make_batch(N, H, V, n_pairs, DTYPES[dtype], seed=N + V)
    ref = (ref_logps_near_policy(hidden, weight, targets, seq_id, n_pairs, seed=1)
           if with_ref else None)
    loss_type, smoothing = LOSSES[loss]
    beta = 0.3 if with_ref or loss_type == "ipo" else 0.05
    kwargs = dict(ref_logps=ref, beta=beta, sft_weight=ALPHA, loss_type=loss_type,
                  label_smoothing=smoothing)
    truth = run(hidden.double(), weight.double(), targets, seq_id, impl="naive", **kwargs)
    naive = run(hidden, weight, targets, seq_id, impl="naive", **kwargs)
    chunk = dict(chunk_tokens=32) if impl == "chunked" else {}
    got = run(hidden, weight, targets, seq_id, impl=impl, **chunk, **kwargs)

    loss_, metrics, grad_hidden, grad_weight = got
    assert loss_.dtype == torch.float32 and loss_.dim() == 0
    assert grad_hidden.dtype == hidden.dtype and grad_weight.dtype == weight.dtype
    scale = beta * truth[1]["policy_logps"].abs().max().item() + truth[0].abs().item()
    assert_within_twice_naive(loss_, naive[0], truth[0], "loss", scale)
    for name in METRICS:
        assert metrics[name].shape == truth[1][name].shape, name
        assert_within_twice_naive(metrics[name], naive[1][name], truth[1][name], name,
                                  max(scale, truth[1][name].abs().max().item()))
    assert metrics["chosen_tokens"] == truth[1]["chosen_tokens"]
    # reward accuracy: equal wherever the true margin is farther from 0 than the naive error
    margin_err = (naive[1]["margins"].double() - truth[1]["margins"]).abs().max()
    clear = truth[1]["margins"].abs() > 2 * margin_err + 1e-6
    assert torch.equal(metrics["reward_accuracy"][clear].double(),
                       truth[1]["reward_accuracy"][clear])
    assert_within_twice_naive(grad_hidden, naive[2], truth[2], "grad_hidden")
    assert_within_twice_naive(grad_weight, naive[3], truth[3], "grad_weight")


def expected_loss(token_logps, seq_id, n_pairs, ref, beta, alpha, loss_type, eps,
                  dpo_norm=None, sft_norm=None):
    """The DPO + α·SFT formulas, written out per pair in float64 Python."""
    sums = [0.0] * (2 * n_pairs)
    counts = [0] * (2 * n_pairs)
    for lp, s in zip(token_logps.tolist(), seq_id.tolist()):
        sums[s] += lp
        counts[s] += 1
    total = 0.0
    for i in range(n_pairs):
        pc, pr = sums[2 * i], sums[2 * i + 1]
        rc, rr = (0.0, 0.0) if ref is None else (float(ref[i, 0]), float(ref[i, 1]))
        if loss_type == "ipo":
            pc, rc = pc / counts[2 * i], rc / counts[2 * i]
            pr, rr = pr / counts[2 * i + 1], rr / counts[2 * i + 1]
        h = (pc - rc) - (pr - rr)

        def log_sigmoid(x):
            return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))

        if loss_type == "sigmoid":
            total += -(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)
        elif loss_type == "ipo":
            total += (h - 1 / (2 * beta)) ** 2
        else:
            total += max(0.0, 1 - beta * h)
    chosen = [lp for lp, s in zip(token_logps.tolist(), seq_id.tolist()) if s % 2 == 0]
    nll = -sum(chosen) / (len(chosen) if sft_norm is None else sft_norm)
    return total / (n_pairs if dpo_norm is None else dpo_norm) + alpha * nll


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("with_ref", [True, False], ids=["ref", "reference_free"])
def test_formulas(loss, with_ref):
    n_pairs = 6
    hidden, weight, targets, seq_id = make_batch(50, 16, 300, n_pairs, torch.float64, seed=3)
    ref = ref_logps_near_policy(hidden, weight, targets, seq_id, n_pairs, 2).double() \
        if with_ref else None
    token = naive_linear_logprobs(hidden, weight, targets)
    loss_type, eps = LOSSES[loss]
    for norms in ({"dpo_normalizer": 10.0, "sft_normalizer": 123.0}, {}):
        spec = LossSpec(beta=0.3, sft_weight=ALPHA, loss_type=loss_type, label_smoothing=eps)
        got, metrics = dpo_sft_loss(token, seq_id, ref, spec, **norms)
        want = expected_loss(token, seq_id, n_pairs, ref, 0.3, ALPHA, loss_type, eps,
                             norms.get("dpo_normalizer"), norms.get("sft_normalizer"))
        assert abs(got.item() - want) < 1e-9 * (1 + abs(want))
    # metrics of the default normalisers (the last call)
    seq = torch.zeros(2 * n_pairs, dtype=torch.float64).index_add(0, seq_id, token).view(-1, 2)
    assert torch.allclose(metrics["policy_logps"], seq)
    if loss_type != "ipo":
        r = 0.3 * (seq - (ref if with_ref else 0))
        assert torch.allclose(metrics["chosen_rewards"], r[:, 0])
        assert torch.allclose(metrics["rejected_rewards"], r[:, 1])
        assert torch.equal(metrics["reward_accuracy"], (r[:, 0] > r[:, 1]).double())
    assert metrics["chosen_tokens"] == (seq_id % 2 == 0).sum()
    nll = -token[seq_id % 2 == 0].mean()
    assert torch.allclose(metrics["nll_loss"], nll)


@pytest.mark.parametrize("impl", ["triton", "chunked"])
def test_normalisers_make_micro_batches_add_up(impl):
    """Two micro-batches with the step's totals as normalisers give the full batch's loss and
    gradients (what the trainer's gradient accumulation relies on)."""
    n_pairs, N = 6, 70
    hidden, weight, targets, seq_id = make_batch(N, 16, 257, n_pairs, torch.float32, seed=8)
    ref = ref_logps_near_policy(hidden, weight, targets, seq_id, n_pairs, 3)
    kwargs = dict(beta=0.3, sft_weight=ALPHA, impl=impl)
    full = run(hidden, weight, targets, seq_id, ref_logps=ref, **kwargs)
    chosen_tokens = int((seq_id % 2 == 0).sum())
    loss_sum, grad_h, grad_w = 0.0, torch.zeros_like(hidden), torch.zeros_like(weight)
    for pairs in (range(0, 2), range(2, n_pairs)):
        sel = (seq_id // 2 >= pairs.start) & (seq_id // 2 < pairs.stop)
        part = run(hidden[sel], weight, targets[sel], seq_id[sel] - 2 * pairs.start,
                   ref_logps=ref[pairs.start:pairs.stop], num_pairs=len(pairs),
                   dpo_normalizer=n_pairs, sft_normalizer=chosen_tokens, **kwargs)
        loss_sum += part[0]
        grad_h[sel] += part[2]
        grad_w += part[3]
    assert abs(loss_sum - full[0]) < 1e-5 * (1 + abs(full[0]))
    assert (grad_h - full[2]).abs().max() < 1e-5
    assert (grad_w - full[3]).abs().max() < 1e-5


def test_num_pairs_reference_free_and_alpha_zero():
    hidden, weight, targets, seq_id = make_batch(40, 16, 257, 4, torch.float32, seed=4)
    spec = LossSpec(beta=0.1, sft_weight=ALPHA)
    base = preference_loss(hidden, weight, targets, seq_id, None, spec, impl="triton")
    given = preference_loss(hidden, weight, targets, seq_id, None, spec, num_pairs=4,
                            impl="triton")
    zeros = preference_loss(hidden, weight, targets, seq_id, torch.zeros(4, 2), spec,
                            impl="triton")
    assert torch.equal(base[0], given[0]) and torch.equal(base[0], zeros[0])
    no_sft, metrics = preference_loss(hidden, weight, targets, seq_id, None,
                                      LossSpec(beta=0.1, sft_weight=0.0), impl="triton")
    assert torch.equal(no_sft, metrics["dpo_loss"])
    assert torch.allclose(base[0], no_sft + ALPHA * metrics["nll_loss"])


@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_dpo_weight_scales_only_the_dpo_term(impl):
    hidden, weight, targets, seq_id = make_batch(40, 16, 257, 4, torch.float32, seed=5)
    ref = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    grads = {}
    for w in (0.0, 1.0, 2.5):
        h = hidden.clone().requires_grad_()
        loss, m = preference_loss(h, weight, targets, seq_id, ref,
                                  LossSpec(beta=0.1, sft_weight=ALPHA, dpo_weight=w), impl=impl)
        torch.testing.assert_close(loss, w * m["dpo_loss"] + ALPHA * m["nll_loss"])
        loss.backward()
        grads[w] = h.grad
    # the gradient is linear in dpo_weight (0: the chosen tokens' NLL alone)
    assert not torch.equal(grads[0.0], grads[1.0])
    torch.testing.assert_close(grads[2.5] - grads[0.0], 2.5 * (grads[1.0] - grads[0.0]),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_one_pair_of_one_token_responses(dtype):
    hidden, weight, targets, _ = make_batch(4, 40, 1000, 1, DTYPES[dtype], seed=6)
    hidden, targets, seq_id = hidden[:2], targets[:2], torch.tensor([1, 0])
    kwargs = dict(ref_logps=torch.tensor([[-7.0, -6.5]]), beta=0.3, sft_weight=1.0)
    truth = run(hidden.double(), weight.double(), targets, seq_id, impl="naive", **kwargs)
    naive = run(hidden, weight, targets, seq_id, impl="naive", **kwargs)
    got = run(hidden, weight, targets, seq_id, impl="triton", **kwargs)
    for i, name in ((0, "loss"), (2, "grad_hidden"), (3, "grad_weight")):
        assert_within_twice_naive(got[i], naive[i], truth[i], name)


def test_auto_impl_on_cpu_is_the_chunked_path():
    hidden, weight, targets, seq_id = make_batch(40, 16, 257, 4, torch.float32, seed=4)
    spec = LossSpec(beta=0.1, sft_weight=ALPHA)
    auto = _preference_loss(hidden, weight, targets, seq_id, None, spec)
    chunked = _preference_loss(hidden, weight, targets, seq_id, None, spec, impl="chunked")
    assert torch.equal(auto[0], chunked[0])


BAD = [
    (dict(seq_id=torch.tensor([0, 1, 2, 3, 4])), ValueError, r"pair 2 has chosen tokens"),
    (dict(seq_id=torch.tensor([0, 2, 3, 2, 3])), ValueError, r"pair 0 has no rejected token"),
    (dict(seq_id=torch.tensor([1, 1, 3, 2, 3])), ValueError, r"pair 0 has no chosen token"),
    (dict(seq_id=torch.tensor([0, 1, 2, 3, 4]), num_pairs=2), ValueError,
     r"seq_id must lie in \[0, 2n=4\)"),
    (dict(seq_id=torch.tensor([0, 1, -1, 1, 0]), num_pairs=1), ValueError, "seq_id must lie"),
    (dict(seq_id=torch.tensor([0, 1, 1, 0])), ValueError, r"seq_id \(4,\) and target_ids"),
    (dict(seq_id=torch.tensor([0.0, 1, 1, 0, 1])), TypeError, "seq_id must be int"),
    (dict(target_ids=torch.tensor([0, 1, 2, 3, 257])), ValueError, "targets must lie in"),
    (dict(target_ids=torch.tensor([0, -1, 2, 3, 4])), ValueError, "targets must lie in"),
    (dict(weight=torch.randn(257, 8)), ValueError, "disagree on H"),
    (dict(weight=torch.randn(257, 16, dtype=torch.bfloat16)), TypeError, "share a dtype"),
    (dict(ref_logps=torch.zeros(2, 2)), ValueError, r"ref_logps must be \[n=1, 2\]"),
    (dict(loss_type="kto"), ValueError, "unknown loss_type 'kto'"),
    (dict(loss_type="ipo", label_smoothing=0.1), ValueError, "label_smoothing applies"),
    (dict(label_smoothing=0.5), ValueError, "label_smoothing must lie"),
    (dict(beta=0.0), ValueError, "beta must be > 0"),
    (dict(impl="cuda"), ValueError, "unknown impl 'cuda'"),
]


@pytest.mark.parametrize("impl", ["triton", "chunked"])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(case, impl):
    bad, error, match = BAD[case]
    args = dict(hidden=torch.randn(5, 16), weight=torch.randn(257, 16),
                target_ids=torch.tensor([0, 1, 2, 3, 4]), seq_id=torch.tensor([0, 1, 1, 0, 1]),
                ref_logps=None, beta=0.1, sft_weight=ALPHA, impl=impl)
    args.update(bad)
    with pytest.raises(error, match=match):
        spec = LossSpec(**{k: args.pop(k) for k in SPEC_FIELDS if k in args})
        preference_loss(**args, spec=spec)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's NaN arithmetic
@pytest.mark.parametrize("impl", ["triton", "chunked"])
def test_nan_propagates_to_loss_and_gradients(impl):
    """Documented behaviour: NaN in hidden, weight or ref_logps is not checked; it reaches the
    loss and the gradients (never silently dropped)."""
    hidden, weight, targets, seq_id = make_batch(20, 16, 257, 2, torch.float32, seed=1)
    for where in ("hidden", "weight", "ref"):
        h = hidden.clone()
        w = weight.clone()
        ref = torch.zeros(2, 2)
        {"hidden": h, "weight": w, "ref": ref}[where].view(-1)[3] = float("nan")
        out = run(h, w, targets, seq_id, ref_logps=ref, beta=0.1, sft_weight=ALPHA, impl=impl)
        assert out[0].isnan(), where
        assert out[2].isnan().any() and out[3].isnan().any(), where


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "kernels.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.kernels", "--smoke", "--out",
                           str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "benchmarks.kernels" in result["environment"]["command"]
    runs = result["results"]
    assert runs and all(r["config"]["N"] > 0 for r in runs)
    for r in runs:
        for name in ("fused_triton", "naive", "chunked", "roofline_matmuls"):
            entry = r["variants"][name]
            assert entry["fwd_bwd"]["median_s"] > 0, name
        assert r["variants"]["fused_triton"]["max_abs_loss_diff_vs_naive"] < 1e-3
        assert "liger" in r["variants"]
    assert set(result["targets"]) == {"vs_roofline", "vs_liger", "peak_extra_memory"}
    assert "fused_triton" in proc.stdout


@pytest.mark.parametrize("impl", ["triton", "chunked"])
def test_weight_released_before_backward_is_a_clear_error(impl):
    """ZeRO-3 empties a partitioned parameter outside its gathered scope; the saved weight must
    not silently become an empty tensor in the backward."""
    device = TEST_DEVICE if impl == "triton" else "cpu"  # the parameter itself, on its device
    hidden, weight, targets, seq_id = (x.to(device) for x in make_batch(20, 16, 257, 2,
                                                                         torch.float32, seed=1))
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss, _ = _preference_loss(h, w, targets, seq_id, None,
                               LossSpec(beta=0.1, sft_weight=ALPHA), impl=impl)
    w.data = torch.empty(0, device=device)  # what ZeRO-3's partitioning does to its data
    with pytest.raises(RuntimeError, match="released or partitioned"):
        loss.backward()


@pytest.mark.gpu
def test_gpu_matches_float64_at_qwen2_7b_head_shape():
    """The real head shape (H = 3584, V = 152,064) in bf16 on the GPU, packed pairs of uneven
    lengths, against float64."""
    hidden, weight, targets, seq_id = make_batch(600, 3584, 152_064, 6, torch.bfloat16, seed=2)
    hidden, weight, targets, seq_id = (x.cuda() for x in (hidden, weight, targets, seq_id))
    ref = ref_logps_near_policy(hidden, weight, targets, seq_id, 6, seed=1).cuda()
    kwargs = dict(ref_logps=ref, beta=0.3, sft_weight=ALPHA)
    truth = run(hidden.double(), weight.double(), targets, seq_id, impl="naive", **kwargs)
    naive = run(hidden, weight, targets, seq_id, impl="naive", **kwargs)
    got = run(hidden, weight, targets, seq_id, impl="triton", **kwargs)
    scale = 0.3 * truth[1]["policy_logps"].abs().max().item() + truth[0].abs().item()
    assert_within_twice_naive(got[0], naive[0], truth[0], "loss", scale)
    assert_within_twice_naive(got[1]["policy_logps"], naive[1]["policy_logps"],
                              truth[1]["policy_logps"], "policy_logps", scale)
    assert_within_twice_naive(got[2], naive[2], truth[2], "grad_hidden")
    assert_within_twice_naive(got[3], naive[3], truth[3], "grad_weight")


@pytest.mark.gpu
def test_gpu_path_does_not_sync_with_the_host():
    """num_pairs given and check_inputs off: forward and backward queue work without a host
    synchronisation (what the trainer's step relies on)."""
    hidden, weight, targets, seq_id = (
        x.cuda() for x in make_batch(1000, 256, 32_000, 8, torch.bfloat16, seed=3))
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    kwargs = dict(num_pairs=8, check_inputs=False)
    spec = LossSpec(beta=0.1, sft_weight=ALPHA)
    preference_loss(h, w, targets, seq_id, None, spec, **kwargs)[0].backward()  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        preference_loss(h, w, targets, seq_id, None, spec, **kwargs)[0].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
