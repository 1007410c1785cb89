"""Token log-probs log_softmax(hidden @ weight.T)[n, t[n]] and their gradients: the fused Triton
kernels (under TRITON_INTERPRET=1 on CPU) and the chunked torch path (naive.py), against a float64
ground truth, with the error allowed at most twice the naive path's own error in the test dtype
(plus a tiny epsilon for float32 rounding noise)."""

import subprocess
import sys
import warnings

import pytest
import torch
from conftest import on_test_device
from tpo_fast.kernels import chunked_linear_logprobs, naive_linear_logprobs
from tpo_fast.kernels import fused_linear_logprobs as _fused_linear_logprobs

# the fused kernels run on TPO_FAST_TEST_DEVICE; inputs and ground truths are built on the CPU
fused_linear_logprobs = on_test_device(_fused_linear_logprobs)

pytestmark = pytest.mark.usefixtures("nan_empty")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def small_configs(bn, bv, bh, chunk_bytes=None):
    """Block sizes small enough to make every dimension of the test shapes span several,
    partial, blocks (the pinned defaults are 128 wide)."""
    tile = dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh, num_warps=4, num_stages=2)
    configs = {"fwd": tile, "dlogits": tile,
               "grad_hidden": dict(BLOCK_N=bn, BLOCK_H=bh, BLOCK_V=bv, num_warps=4, num_stages=2),
               "grad_weight": dict(BLOCK_V=bv, BLOCK_H=bh, BLOCK_N=bn, num_warps=4, num_stages=2)}
    if chunk_bytes is not None:
        configs["chunk_bytes"] = chunk_bytes
    return configs


def make_inputs(N, H, V, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) * (3 / H ** 0.5)).to(dtype)  # logits of std ~3
    targets = torch.randint(0, V, (N,), generator=g)
    grad = torch.randn(N, generator=g)  # upstream dL/dlogp
    return hidden, weight, targets, grad


def run(fn, hidden, weight, targets, grad):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    logp = fn(h, w, targets)
    (logp * grad.to(logp.dtype)).sum().backward()
    return logp.detach(), h.grad, w.grad


def truth_and_naive(hidden, weight, targets, grad):
    """float64 ground truth (on the same, already rounded, inputs) and the naive path in the
    test dtype."""
    truth = run(naive_linear_logprobs, hidden.double(), weight.double(), targets, grad.double())
    naive = run(naive_linear_logprobs, hidden, weight, targets, grad)
    return truth, naive


def assert_within_twice_naive(got, naive, truth, what):
    got, naive, truth = (x.detach().double() for x in (got, naive, truth))
    err = (got - truth).abs().max().item()
    ref = (naive - truth).abs().max().item()
    tiny = 1e-6 * (1 + truth.abs().max().item())
    assert err <= 2 * ref + tiny, f"{what}: error {err:.3e} > 2 x naive's {ref:.3e} + {tiny:.1e}"


def check_all(got, truth, naive, hidden, weight):
    logp, grad_hidden, grad_weight = got
    assert logp.dtype == torch.float32 and logp.shape == truth[0].shape
    assert grad_hidden.dtype == hidden.dtype and grad_hidden.shape == hidden.shape
    assert grad_weight.dtype == weight.dtype and grad_weight.shape == weight.shape
    for name, g, n, t in zip(("logp", "grad_hidden", "grad_weight"), got, naive, truth):
        assert_within_twice_naive(g, n, t, name)


IMPLS = {
    "triton": fused_linear_logprobs,
    # 32-token chunks: N = 63 and 97 span several chunks, the last one partial
    "chunked": lambda h, w, t: chunked_linear_logprobs(h, w, t, chunk_tokens=32),
}


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("V", [257, 1000])
@pytest.mark.parametrize("H", [16, 40])
@pytest.mark.parametrize("N", [1, 63, 97])
def test_matches_float64(N, H, V, dtype, impl):
    inputs = make_inputs(N, H, V, DTYPES[dtype], seed=N * 7 + H + V)
    truth, naive = truth_and_naive(*inputs)
    check_all(run(IMPLS[impl], *inputs), truth, naive, inputs[0], inputs[1])


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("N,H,V", [(97, 40, 1000), (1, 40, 257)])
def test_small_blocks_and_vocab_chunks(N, H, V, dtype):
    """Several partial blocks along N, V and H in every kernel, and a backward over several
    vocab chunks (256 columns each, the last one partial) so grad_hidden accumulates."""
    inputs = make_inputs(N, H, V, DTYPES[dtype], seed=5)
    truth, naive = truth_and_naive(*inputs)
    configs = small_configs(32, 64, 16, chunk_bytes=N * 2 * 256)
    got = run(lambda h, w, t: fused_linear_logprobs(h, w, t, configs=configs), *inputs)
    check_all(got, truth, naive, inputs[0], inputs[1])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_vocab_over_65536(dtype):
    N, H, V = 3, 16, 65_621  # V > 2^16 and not a multiple of any block
    inputs = make_inputs(N, H, V, DTYPES[dtype], seed=11)
    inputs[2][0] = V - 1  # the last column is a target
    truth, naive = truth_and_naive(*inputs)
    check_all(run(fused_linear_logprobs, *inputs), truth, naive, inputs[0], inputs[1])
    check_all(run(IMPLS["chunked"], *inputs), truth, naive, inputs[0], inputs[1])


@pytest.mark.parametrize("num_splits", [1, 3, 7])
def test_vocab_splits_merge(num_splits):
    """The forward's partial LSEs over S vocab ranges merge exactly; with 9 vocab blocks and
    S = 7, blocks_per_split = 2 leaves the last two splits empty (lse = -inf there)."""
    N, H, V = 40, 16, 9 * 32 - 5
    hidden, weight, targets, _ = make_inputs(N, H, V, torch.float32, seed=3)
    truth = naive_linear_logprobs(hidden.double(), weight.double(), targets)
    configs = dict(small_configs(16, 32, 16), num_splits=num_splits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the interpreter's log2(0) = -inf
        got = fused_linear_logprobs(hidden, weight, targets, configs=configs)
    assert (got.double() - truth).abs().max() < 1e-5


def test_backward_is_deterministic():
    inputs = make_inputs(63, 40, 1000, torch.bfloat16, seed=2)
    first = run(fused_linear_logprobs, *inputs)
    second = run(fused_linear_logprobs, *inputs)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_only_requested_gradients():
    hidden, weight, targets, grad = make_inputs(17, 16, 257, torch.float32)
    truth = run(naive_linear_logprobs, hidden.double(), weight.double(), targets, grad.double())
    w = weight.clone().requires_grad_()
    (fused_linear_logprobs(hidden, w, targets) * grad).sum().backward()
    assert (w.grad.double() - truth[2]).abs().max() < 1e-5
    h = hidden.clone().requires_grad_()
    (fused_linear_logprobs(h, weight, targets) * grad).sum().backward()
    assert (h.grad.double() - truth[1]).abs().max() < 1e-5


def test_filtering_with_tiny_eps_is_exact():
    inputs = make_inputs(63, 40, 1000, torch.bfloat16, seed=4)
    truth, naive = truth_and_naive(*inputs)
    configs = small_configs(32, 64, 16, chunk_bytes=63 * 2 * 256)
    got = run(lambda h, w, t: fused_linear_logprobs(h, w, t, skip_eps=1e-30, configs=configs),
              *inputs)
    check_all(got, truth, naive, inputs[0], inputs[1])


def test_filtering_skips_exactly_the_tiles_without_mass():
    """skip_eps = 2 exceeds every softmax value, so exactly the [BLOCK_N, BLOCK_V] dlogits tiles
    that hold no target are dropped: the gradients equal the float64 ones computed from dlogits
    masked to the tiles that hold a target."""
    N, H, V, bn, bv = 70, 40, 1000, 32, 64
    hidden, weight, targets, grad = make_inputs(N, H, V, torch.float32, seed=9)
    # 768-column vocab chunks: the last one (232 columns) has fewer tile columns (4) than the
    # flag array (12), so a wrong flag row stride shows
    configs = small_configs(bn, bv, 16, chunk_bytes=N * 4 * 768)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    (fused_linear_logprobs(h, w, targets, skip_eps=2.0, configs=configs) * grad).sum().backward()

    h64, w64, g64 = hidden.double(), weight.double(), grad.double()
    probs = (h64 @ w64.T).softmax(-1)
    dlogits = g64[:, None] * (torch.nn.functional.one_hot(targets, V).double() - probs)
    tile_has_target = torch.zeros(-(-N // bn), -(-V // bv), dtype=torch.bool)
    tile_has_target[torch.arange(N) // bn, targets // bv] = True
    keep = tile_has_target.repeat_interleave(bn, 0)[:N].repeat_interleave(bv, 1)[:, :V]
    assert not keep.all()
    masked = dlogits * keep
    expect_h, expect_w = masked @ w64, masked.T @ h64
    # the filter changes the result here
    assert ((masked - dlogits).T @ h64).abs().max() > 1e-2
    assert (h.grad.double() - expect_h).abs().max() < 1e-5 * (1 + expect_h.abs().max())
    assert (w.grad.double() - expect_w).abs().max() < 1e-5 * (1 + expect_w.abs().max())


def test_bad_inputs():
    hidden, weight, targets, _ = make_inputs(5, 16, 257, torch.float32)
    with pytest.raises(ValueError, match="disagree on H"):
        fused_linear_logprobs(hidden, weight[:, :8], targets)
    with pytest.raises(ValueError, match="targets must be"):
        fused_linear_logprobs(hidden, weight, targets[:4])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, V=257\)"):
        fused_linear_logprobs(hidden, weight, torch.tensor([0, 1, 2, 3, 257]))
    with pytest.raises(TypeError, match="share a dtype"):
        fused_linear_logprobs(hidden, weight.double(), targets)
    with pytest.raises(TypeError, match="float32, bfloat16, float16"):
        fused_linear_logprobs(hidden.double(), weight.double(), targets)
    with pytest.raises(ValueError, match="skip_eps"):
        h = hidden.clone().requires_grad_()
        fused_linear_logprobs(h, weight, targets, skip_eps=-1.0).sum().backward()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's NaN arithmetic
def test_nan_inputs_propagate():
    hidden, weight, targets, _ = make_inputs(9, 16, 257, torch.float32)
    hidden[4, 3] = float("nan")
    for fn in IMPLS.values():
        logp = fn(hidden, weight, targets)
        assert logp[4].isnan() and not logp[[0, 1, 2, 3, 5, 6, 7, 8]].isnan().any()
    weight[17, 0] = float("nan")  # a non-target column poisons every token's log-sum-exp
    for fn in IMPLS.values():
        assert fn(hidden, weight, targets).isnan().all()


def test_import_does_not_load_triton():
    code = ("import sys, tpo_fast.kernels as k; assert 'triton' not in sys.modules; "
            "k.fused_linear_logprobs; assert 'triton' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


AUTOTUNE_CHECK = """
import os, sys
sys.path.insert(0, {tests!r})
import torch
from test_kernels_logprobs import make_inputs, truth_and_naive, run, check_all
from test_kernels_logprobs import fused_linear_logprobs  # on TPO_FAST_TEST_DEVICE
import tpo_fast.kernels.fused_logprobs as fl
assert fl._AUTOTUNE
for dtype in (torch.float32, torch.float16):
    inputs = make_inputs(40, 64, 700, dtype, seed=12)
    truth, naive = truth_and_naive(*inputs)
    # 256-column vocab chunks: grad_hidden accumulates over chunks with tuned configs
    fn = lambda h, w, t: fused_linear_logprobs(h, w, t, configs={{"chunk_bytes": 40 * 4 * 256}})
    check_all(run(fn, *inputs), truth, naive, inputs[0], inputs[1])
assert fl._grad_hidden_tuned.best_config is not None
"""


def test_autotune_path():
    """TPO_FAST_AUTOTUNE=1 (read at import, hence a fresh interpreter): the tuned kernels give
    the same answers, with grad_hidden accumulated over several vocab chunks."""
    from pathlib import Path

    env = dict(__import__("os").environ, TPO_FAST_AUTOTUNE="1", TRITON_INTERPRET="1")
    code = AUTOTUNE_CHECK.format(tests=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_nan_fixture_is_active():
    assert torch.empty(3).isnan().all() and torch.empty_like(torch.zeros(2)).isnan().all()
    assert (torch.empty(2, dtype=torch.int32) == torch.iinfo(torch.int32).max).all()


HOPPER_CHECK = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import tpo_fast.kernels.fused_logprobs as fl
assert not fl._INTERPRET
POINTERS = {"t_ptr": "*i64", "lse_ptr": "*fp32", "tgt_ptr": "*fp32", "g_ptr": "*fp32",
            "acc_ptr": "*fp32", "flag_ptr": "*i32"}

def compile_sm90(kernel, config, **constexprs):
    signature, attrs = {}, {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            continue
        signature[p.name] = (POINTERS.get(p.name, "*bf16") if p.name.endswith("_ptr")
                             else "fp32" if p.name == "skip_eps" else "i32")
        if signature[p.name] != "fp32":  # what a launch on aligned tensors/sizes specialises
            attrs[(i,)] = [["tt.divisibility", 16]]
    meta = {k: v for k, v in config.items() if k.startswith("BLOCK_")}
    source = ASTSource(kernel, signature, constexprs={**constexprs, **meta}, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=config["num_warps"],
                                        num_stages=config["num_stages"]))

common = dict(INPUT_PRECISION="tf32", UPCAST=False)
dense = [
    compile_sm90(fl._linear_logprobs_fwd_kernel, fl.FWD_CONFIG, EVEN_H=True, **common),
    compile_sm90(fl._linear_logprobs_dlogits_kernel, fl.DLOGITS_CONFIG, EVEN_H=True,
                 FILTER=False, **common),
    compile_sm90(fl._grad_hidden_kernel, fl.GRAD_HIDDEN_CONFIG, ACCUMULATE=True, FILTER=False,
                 **common),
]
for k in dense:  # tensor cores (wgmma) and a software-pipelined K loop (cp.async)
    assert "wgmma.mma_async" in k.asm["ptx"], k.name
    assert "async_copy_global_to_local" in k.asm["ttgir"], k.name
compile_sm90(fl._linear_logprobs_dlogits_kernel, fl.DLOGITS_CONFIG, EVEN_H=False, FILTER=True,
             **common)
compile_sm90(fl._grad_hidden_kernel, fl.GRAD_HIDDEN_CONFIG, ACCUMULATE=False, FILTER=True,
             **common)
compile_sm90(fl._grad_weight_kernel, fl.GRAD_WEIGHT_CONFIG, **common)
print("ok")
"""


def test_kernels_compile_for_hopper():
    """Without a GPU, compile the pinned configs for sm_90 (no driver needed): catches what the
    interpreter cannot (typing of branches, dot layouts), and checks the dense kernels use
    wgmma with a software-pipelined K loop. Uses triton's compiler API directly."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", HOPPER_CHECK], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
