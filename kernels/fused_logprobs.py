"""Fused LM head + log-prob gather: ``logp[n] = log_softmax(hidden @ weight.T)[n, target[n]]``
for N response tokens, forward and backward, without writing the [N, V] logits.

Shapes and dtypes: ``hidden[N, H]`` and ``weight[V, H]`` in one of bf16 / fp16 / fp32 (the same),
``targets[N]`` int32/int64 in [0, V). Output: ``logp[N]`` fp32. Gradients: ``grad_hidden`` in
hidden's dtype, ``grad_weight`` in weight's dtype, both accumulated in fp32.

Layers (STYLE.md): ``_linear_logprobs_fwd_kernel`` / ``_linear_logprobs_dlogits_kernel`` /
``_grad_hidden_kernel`` / ``_grad_weight_kernel`` -> launchers ``linear_logprobs_fwd`` /
``linear_logprobs_bwd`` -> ``FusedLinearLogProbs`` (autograd.Function) -> ``fused_linear_logprobs``.
The DPO/SFT loss on top of the token log-probs is plain torch on [2n]-sized tensors
(``preference_loss.py``); the plain-torch paths are in ``naive.py``.

Design
------
Forward (one kernel, 2·N·H·V flops, nothing of size N·V written): grid
``(cdiv(N, BLOCK_N), S)``. Program (i, s) owns a block of BLOCK_N tokens and the s-th of S
contiguous vocabulary ranges; it loops over BLOCK_V-wide vocab blocks of its range, computes the
logit tile ``hidden_blk @ weight_blk.T`` with ``tl.dot`` (fp32 accumulators, K loop over H in
BLOCK_H steps, bf16/fp16 operands on the tensor cores), keeps an online log-sum-exp (running max
and rescaled sum, base 2) and picks the target logit out of the same tile. It writes S partial
LSEs and S partial target logits per token ([S, N] fp32, a few hundred KB); torch merges them
(``logsumexp`` over S, sum of target logits). The split over the vocabulary (S > 1) exists for
occupancy: at N = 8192 with BLOCK_N = 128 there are only 64 token blocks for 132 SMs; S is
picked so that S·cdiv(N, BLOCK_N) fills whole waves (``_num_splits``). Programs that share a
vocab range run side by side (token blocks are grid axis 0), so weight tiles are reused from L2.

Backward (2·N·H·V recompute + 4·N·H·V for the two gradient products): the per-token upstream
gradient ``g[n] = dL/dlogp[n]`` comes from autograd (the DPO/SFT derivative in torch), and
``dlogits = g · (onehot(target) − softmax)``. The vocabulary is processed in chunks of Vc
columns, Vc chosen so that one [N, Vc] chunk of dlogits in the compute dtype fits
``DLOGITS_CHUNK_BYTES`` (64 MiB: Vc = 4096 at N = 8192 in bf16). Per chunk:
  1. ``_linear_logprobs_dlogits_kernel`` (grid token blocks × vocab blocks) recomputes the logit
     tiles with ``tl.dot`` in fp32, applies the softmax-gradient epilogue with the saved LSE and
     writes the dlogits chunk in the compute dtype (like the naive path's bf16 dlogits, but from
     fp32 rather than bf16-rounded logits);
  2. ``grad_weight[chunk] = dlogits_chunk.T @ hidden`` — one product over all N tokens, so every
     row of grad_weight is written once, by one GEMM with fp32 accumulation (cuBLAS, through
     ``torch.mm``): deterministic, no atomics, no fp32 [V, H] buffer (2.2 GB for Qwen2-7B);
  3. ``grad_hidden (+)= dlogits_chunk @ weight[chunk]`` — ``_grad_hidden_kernel`` (a Triton GEMM
     whose epilogue adds into an fp32 [N, H] accumulator, 117 MB at N = 8192, H = 3584; the last
     chunk writes hidden's dtype directly). Each program owns its [BLOCK_N, BLOCK_H] tile:
     deterministic, no atomics.
Why not one fully fused backward (CCE): a program that recomputes a logit tile must push it into
both [BLOCK_N, H] and [BLOCK_V, H] gradient slices, too large for registers at H = 3584, so CCE
uses fp32 atomics into both gradients — non-deterministic, an fp32 [V, H] buffer (over the
256 MB budget) or lossy bf16 atomics, and (BLOCK_N + BLOCK_V)·H atomics per tile. Writing the
dlogits chunk costs 6·N·V bytes of traffic in total and the fp32 accumulator N·H·8 bytes per
chunk (estimates at N = 8192 on an H100 at 3 TB/s: ~2.5 ms and ~3 ms over 38 chunks, against
~45 ms for the 8·N·H·V flops at 790 TFLOP/s); in exchange both gradient products run as plain
GEMMs. A larger chunk budget trades memory for fewer accumulator passes.

Optional CCE-style filtering (``skip_eps > 0``, off by default; exact by default): a
[BLOCK_N, BLOCK_V] dlogits tile in which every softmax value is below ``skip_eps`` and that holds
no target is flagged as zero and not written; the two gradient products then run as Triton GEMMs
(``_grad_hidden_kernel`` / ``_grad_weight_kernel`` with FILTER) that skip flagged tiles. Saves the
gradient products of skipped tiles (2/3 of the backward), not the recompute. In this mode the
gradient kernels use the dlogits kernel's BLOCK_N / BLOCK_V and configs are never autotuned.
Known limit: their per-tile branch inside the K loop is not software-pipelined by Triton (seen
when compiling for sm_90 with triton 3.9; the dense kernels are), so filtering pays only when
most tiles are skipped; a per-row-block list of kept tiles would lift that.

Block sizes are ``tl.constexpr``; V need not be a multiple of BLOCK_V, H need not be a power of
two (masked K loop, ``EVEN_H`` drops the masks when H % BLOCK_H == 0), N may be 1. Pinned default
configs below (chosen for H100, untuned); ``TPO_FAST_AUTOTUNE=1`` autotunes over a small list.

Interpreter (TRITON_INTERPRET=1, CPU; triton 3.9) workarounds, selected by ``_INTERPRET`` and
numerically faithful to the GPU: the interpreter multiplies bf16 ``tl.dot`` operands as their raw
uint16 storage, so operands are upcast to fp32 first (exact products, fp32 accumulation, as on
tensor cores); and it truncates fp32 -> bf16 on stores, so bf16 outputs are written to fp32
buffers and rounded to nearest-even by torch.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._checks import check_inputs, check_saved_weight

DLOGITS_CHUNK_BYTES = 64 << 20
"""Budget for the one [N, Vc] dlogits chunk alive in the backward (bytes)."""

_AUTOTUNE = os.environ.get("TPO_FAST_AUTOTUNE", "0") == "1"


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_INTERPRET = _interpreting()
_LOG2E = tl.constexpr(1.4426950408889634)  # the online LSE runs in base 2 (exp2 / log2)

# Pinned default configs (H100-oriented, untuned: the GPU session tunes them).
FWD_CONFIG = dict(BLOCK_N=128, BLOCK_V=128, BLOCK_H=64, num_warps=8, num_stages=3)
DLOGITS_CONFIG = dict(BLOCK_N=128, BLOCK_V=128, BLOCK_H=64, num_warps=8, num_stages=3)
GRAD_HIDDEN_CONFIG = dict(BLOCK_N=128, BLOCK_H=128, BLOCK_V=64, num_warps=8, num_stages=3)
GRAD_WEIGHT_CONFIG = dict(BLOCK_V=128, BLOCK_H=128, BLOCK_N=64, num_warps=8, num_stages=3)

_TILE_CONFIGS = [  # (BLOCK_N, BLOCK_V, BLOCK_H, num_warps, num_stages) for the logit-tile kernels
    (128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (64, 256, 64, 4, 4),
    (128, 128, 64, 4, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
]
_GEMM_CONFIGS = [  # (BLOCK_N, BLOCK_H, BLOCK_V, num_warps, num_stages) for grad_hidden
    (128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 32, 4, 4),
    (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
]


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, acc, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # interpreter only: see the module docstring
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def _logit_tile(h_ptr, w_ptr, offs_n, mask_n, offs_v, mask_v, H, stride_hn, stride_wv,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                EVEN_H: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """fp32 [BLOCK_N, BLOCK_V] tile of hidden @ weight.T (rows/cols outside the masks: 0)."""
    offs_h = tl.arange(0, BLOCK_H)
    h_rows = h_ptr + offs_n[:, None].to(tl.int64) * stride_hn
    w_cols = w_ptr + offs_v[None, :].to(tl.int64) * stride_wv
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        kk = k0 + offs_h
        if EVEN_H:
            a = tl.load(h_rows + kk[None, :], mask=mask_n[:, None], other=0.0)
            b = tl.load(w_cols + kk[:, None], mask=mask_v[None, :], other=0.0)
        else:
            mask_k = kk < H
            a = tl.load(h_rows + kk[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            b = tl.load(w_cols + kk[:, None], mask=mask_v[None, :] & mask_k[:, None], other=0.0)
        acc = _dot(a, b, acc, INPUT_PRECISION, UPCAST)
    return acc


@triton.jit
def _linear_logprobs_fwd_kernel(
    h_ptr, w_ptr, t_ptr, lse_ptr, tgt_ptr,
    N, V, H, stride_hn, stride_wv,
    N_BUCKET,  # autotuning key only (next power of two of N)
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    EVEN_H: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """Partial LSE and target logit of a token block over one vocab split.

    lse_ptr, tgt_ptr: fp32 [S, N]; S = the grid's axis-1 size. A split with no columns writes
    lse = -inf and tgt = 0, which the merge ignores."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    num_splits = tl.num_programs(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    target = tl.load(t_ptr + offs_n, mask=mask_n, other=-1).to(tl.int32)

    blocks_per_split = tl.cdiv(tl.cdiv(V, BLOCK_V), num_splits)
    v_begin = pid_s * blocks_per_split * BLOCK_V
    v_end = tl.minimum(v_begin + blocks_per_split * BLOCK_V, V)

    m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)  # running max, base-2 units
    s = tl.zeros([BLOCK_N], dtype=tl.float32)  # running sum of 2^(x - m)
    tgt = tl.zeros([BLOCK_N], dtype=tl.float32)
    for v0 in range(v_begin, v_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        mask_v = offs_v < v_end
        logits = _logit_tile(h_ptr, w_ptr, offs_n, mask_n, offs_v, mask_v, H, stride_hn,
                             stride_wv, BLOCK_N, BLOCK_V, BLOCK_H, EVEN_H, INPUT_PRECISION, UPCAST)
        tgt += tl.sum(tl.where(offs_v[None, :] == target[:, None], logits, 0.0), axis=1)
        x = tl.where(mask_v[None, :], logits * _LOG2E, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=1))
        s = s * tl.exp2(m - m_new) + tl.sum(tl.exp2(x - m_new[:, None]), axis=1)
        m = m_new
    lse = (m + tl.log2(s)) / _LOG2E
    tl.store(lse_ptr + pid_s * N + offs_n, lse, mask=mask_n)
    tl.store(tgt_ptr + pid_s * N + offs_n, tgt, mask=mask_n)


@triton.jit
def _linear_logprobs_dlogits_kernel(
    h_ptr, w_ptr, t_ptr, lse_ptr, g_ptr, d_ptr, flag_ptr,
    N, H, v_lo, v_hi, stride_hn, stride_wv, stride_dn, skip_eps, flag_cols,
    N_BUCKET,  # autotuning key only
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    EVEN_H: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    FILTER: tl.constexpr,
):
    """d[n, v - v_lo] = g[n] * (onehot(v == t[n]) - exp(logit[n, v] - lse[n])) for v in
    [v_lo, v_hi). With FILTER, flag[pid_n, pid_v] = 0 marks a tile where every softmax value is
    below skip_eps and no target falls: such a tile is not written."""
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_v = v_lo + pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_v = offs_v < v_hi
    logits = _logit_tile(h_ptr, w_ptr, offs_n, mask_n, offs_v, mask_v, H, stride_hn, stride_wv,
                         BLOCK_N, BLOCK_V, BLOCK_H, EVEN_H, INPUT_PRECISION, UPCAST)
    lse = tl.load(lse_ptr + offs_n, mask=mask_n, other=0.0)
    g = tl.load(g_ptr + offs_n, mask=mask_n, other=0.0)
    target = tl.load(t_ptr + offs_n, mask=mask_n, other=-1).to(tl.int32)
    p = tl.exp2((logits - lse[:, None]) * _LOG2E)
    is_target = offs_v[None, :] == target[:, None]
    d = g[:, None] * (tl.where(is_target, 1.0, 0.0) - p)
    d_ptrs = d_ptr + offs_n[:, None].to(tl.int64) * stride_dn + (offs_v - v_lo)[None, :]
    d_mask = mask_n[:, None] & mask_v[None, :]
    if FILTER:
        keep = ((p >= skip_eps) | is_target) & d_mask
        any_keep = tl.max(keep.to(tl.int32), axis=1)
        any_keep = tl.max(any_keep, axis=0)
        tl.store(flag_ptr + pid_n * flag_cols + pid_v, any_keep)
        if any_keep > 0:
            tl.store(d_ptrs, d.to(d_ptr.dtype.element_ty), mask=d_mask)
    else:
        tl.store(d_ptrs, d.to(d_ptr.dtype.element_ty), mask=d_mask)


@triton.jit
def _grad_hidden_kernel(
    d_ptr, w_ptr, acc_ptr, out_ptr, flag_ptr,
    N, H, Vc, v_lo, stride_dn, stride_wv, stride_accn, stride_outn, flag_cols,
    N_BUCKET,  # autotuning key only
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_V: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ACCUMULATE: tl.constexpr, FILTER: tl.constexpr,
):
    """out[n, h] = (acc[n, h] if ACCUMULATE else 0) + sum_k d[n, k] * w[v_lo + k, h], k < Vc.

    acc is fp32 (it may alias out); out is fp32 or hidden's dtype. With FILTER, the K-block
    (pid_n, k // BLOCK_V) is skipped when flag[pid_n, k // BLOCK_V] == 0."""
    pid_n = tl.program_id(0)
    pid_h = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_n = offs_n < N
    mask_h = offs_h < H
    d_rows = d_ptr + offs_n[:, None].to(tl.int64) * stride_dn
    offs_k = tl.arange(0, BLOCK_V)
    result = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
    for k0 in range(0, Vc, BLOCK_V):
        kk = k0 + offs_k
        mask_k = kk < Vc
        if FILTER:
            keep = tl.load(flag_ptr + pid_n * flag_cols + k0 // BLOCK_V)
            if keep != 0:
                a = tl.load(d_rows + kk[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
                b = tl.load(w_ptr + (v_lo + kk)[:, None].to(tl.int64) * stride_wv + offs_h[None, :],
                            mask=mask_k[:, None] & mask_h[None, :], other=0.0)
                result = _dot(a, b, result, INPUT_PRECISION, UPCAST)
        else:
            a = tl.load(d_rows + kk[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            b = tl.load(w_ptr + (v_lo + kk)[:, None].to(tl.int64) * stride_wv + offs_h[None, :],
                        mask=mask_k[:, None] & mask_h[None, :], other=0.0)
            result = _dot(a, b, result, INPUT_PRECISION, UPCAST)
    tile_mask = mask_n[:, None] & mask_h[None, :]
    if ACCUMULATE:
        result += tl.load(acc_ptr + offs_n[:, None].to(tl.int64) * stride_accn + offs_h[None, :],
                          mask=tile_mask, other=0.0)
    tl.store(out_ptr + offs_n[:, None].to(tl.int64) * stride_outn + offs_h[None, :],
             result.to(out_ptr.dtype.element_ty), mask=tile_mask)


@triton.jit
def _grad_weight_kernel(
    d_ptr, h_ptr, out_ptr, flag_ptr,
    N, H, Vc, v_lo, stride_dn, stride_hn, stride_outv, flag_cols,
    BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """out[v_lo + v, h] = sum_n d[n, v] * hidden[n, h], skipping the token blocks whose
    flag[n // BLOCK_N, pid_v] is 0 (FILTER mode only; the dense path uses torch.mm)."""
    pid_v = tl.program_id(0)
    pid_h = tl.program_id(1)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_v = offs_v < Vc
    mask_h = offs_h < H
    offs_k = tl.arange(0, BLOCK_N)
    result = tl.zeros([BLOCK_V, BLOCK_H], dtype=tl.float32)
    for k0 in range(0, N, BLOCK_N):
        keep = tl.load(flag_ptr + (k0 // BLOCK_N) * flag_cols + pid_v)
        if keep != 0:
            kk = k0 + offs_k
            mask_k = kk < N
            a = tl.load(d_ptr + kk[None, :].to(tl.int64) * stride_dn + offs_v[:, None],
                        mask=mask_v[:, None] & mask_k[None, :], other=0.0)  # [BLOCK_V, BLOCK_N]
            b = tl.load(h_ptr + kk[:, None].to(tl.int64) * stride_hn + offs_h[None, :],
                        mask=mask_k[:, None] & mask_h[None, :], other=0.0)  # [BLOCK_N, BLOCK_H]
            result = _dot(a, b, result, INPUT_PRECISION, UPCAST)
    tl.store(out_ptr + (v_lo + offs_v)[:, None].to(tl.int64) * stride_outv + offs_h[None, :],
             result.to(out_ptr.dtype.element_ty), mask=mask_v[:, None] & mask_h[None, :])


def _tile_configs():
    return [triton.Config(dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh), num_warps=w, num_stages=s)
            for bn, bv, bh, w, s in _TILE_CONFIGS]


def _interpreter_bench(kernel_call, quantiles=None):
    """Wall-clock timing for the autotuner under the interpreter (no driver to time with)."""
    import time

    start = time.perf_counter()
    kernel_call()
    ms = (time.perf_counter() - start) * 1e3
    return [ms] * len(quantiles) if quantiles else ms


if _AUTOTUNE:
    _bench = {"do_bench": _interpreter_bench} if _INTERPRET else {}
    _fwd_tuned = triton.autotune(_tile_configs(), key=["N_BUCKET", "V", "H"], **_bench)(
        _linear_logprobs_fwd_kernel)
    _dlogits_tuned = triton.autotune(_tile_configs(), key=["N_BUCKET", "H"], **_bench)(
        _linear_logprobs_dlogits_kernel)
    _grad_hidden_tuned = triton.autotune(
        [triton.Config(dict(BLOCK_N=bn, BLOCK_H=bh, BLOCK_V=bv), num_warps=w, num_stages=s)
         for bn, bh, bv, w, s in _GEMM_CONFIGS],
        # restore_value: insurance. Tuning runs on a key's first call, which (first chunk,
        # or out != acc) is idempotent today; an in-place accumulating call must not be rerun.
        key=["N_BUCKET", "H"], restore_value=["out_ptr"], **_bench)(_grad_hidden_kernel)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _launch(kernel, tuned, config, grid, *args, **constexprs):
    """Run ``kernel`` with an explicit config, or its autotuned wrapper when ``config`` is None
    and TPO_FAST_AUTOTUNE=1 (the grid is then a function of the chosen meta-parameters)."""
    if config is None and tuned is not None:
        tuned[grid](*args, **constexprs)
        return
    config = dict(config)
    meta = {k: config.pop(k) for k in list(config) if k.startswith("BLOCK_")}
    kernel[grid(meta)](*args, **meta, **constexprs, **config)


def _num_splits(token_blocks: int, vocab_blocks: int, device: torch.device) -> int:
    """Vocab splits S for the forward grid: the smallest S whose wave-quantised time
    ceil(T·S / SMs) / S is within 5% of the best over S <= 64 (one resident program per SM)."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 4  # interpreter: small, so the split/merge path is exercised on small shapes
    limit = max(1, min(64, vocab_blocks))
    cost = {s: -(-token_blocks * s // sms) / s for s in range(1, limit + 1)}
    best = min(cost.values())
    return min(s for s, c in cost.items() if c <= best * 1.05)


def _compute_dtypes(dtype: torch.dtype) -> tuple[str, bool]:
    """(tl.dot input precision, upcast operands) for a compute dtype."""
    precision = "ieee" if dtype == torch.float32 else "tf32"  # fp32: no silent TF32
    return precision, _INTERPRET and dtype != torch.float32


def _store_dtype(dtype: torch.dtype) -> torch.dtype:
    """Buffer dtype for a kernel output meant to hold ``dtype`` (see the interpreter note)."""
    return torch.float32 if _INTERPRET and dtype == torch.bfloat16 else dtype


def _check_triton_device(t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not _INTERPRET:
        raise RuntimeError("the Triton path needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "triton is imported (CPU interpreter, slow); on CPU use "
                           "impl='chunked'")


def linear_logprobs_fwd(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                        config: dict | None = None, num_splits: int | None = None,
                        check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probs and log-sum-exps, both fp32 [N]."""
    check_inputs(hidden, weight, targets, check_values=check)
    _check_triton_device(hidden)
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    targets = targets.contiguous()
    N, H = hidden.shape
    V = weight.shape[0]
    precision, upcast = _compute_dtypes(hidden.dtype)
    use = None if (_AUTOTUNE and config is None) else dict(config or FWD_CONFIG)

    def splits(meta):
        if num_splits is not None:  # as given (tests use it to reach an empty split)
            return num_splits
        vocab_blocks = triton.cdiv(V, meta["BLOCK_V"])
        s = _num_splits(triton.cdiv(N, meta["BLOCK_N"]), vocab_blocks, hidden.device)
        return triton.cdiv(vocab_blocks, triton.cdiv(vocab_blocks, s))  # no empty split

    max_splits = num_splits or 64
    lse_part = torch.empty(max_splits, N, dtype=torch.float32, device=hidden.device)
    tgt_part = torch.empty(max_splits, N, dtype=torch.float32, device=hidden.device)
    used = {}

    def grid(meta):
        used["S"] = splits(meta)
        return (triton.cdiv(N, meta["BLOCK_N"]), used["S"])

    even_h = None
    if use is not None:
        even_h = H % use["BLOCK_H"] == 0
    else:  # every autotune config has BLOCK_H = 64
        even_h = H % 64 == 0
    _launch(_linear_logprobs_fwd_kernel, _fwd_tuned if _AUTOTUNE else None, use, grid,
            hidden, weight, targets, lse_part, tgt_part, N, V, H, hidden.stride(0),
            weight.stride(0), triton.next_power_of_2(N),
            EVEN_H=even_h, INPUT_PRECISION=precision, UPCAST=upcast)
    S = used["S"]
    if S == 1:
        lse = lse_part[0]
        tgt = tgt_part[0]
    else:
        lse = torch.logsumexp(lse_part[:S], dim=0)
        tgt = tgt_part[:S].sum(0)
    return tgt - lse, lse


def linear_logprobs_bwd(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        lse: torch.Tensor, grad_logp: torch.Tensor, *, need_hidden: bool = True,
                        need_weight: bool = True, skip_eps: float = 0.0,
                        chunk_bytes: int = DLOGITS_CHUNK_BYTES,
                        configs: dict | None = None
                        ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """grad_hidden [N, H] (hidden's dtype) and grad_weight [V, H] (weight's dtype) of
    sum_n grad_logp[n] * logp[n]. ``configs`` may override "dlogits", "grad_hidden" and
    "grad_weight" (dicts like the *_CONFIG constants)."""
    _check_triton_device(hidden)
    if skip_eps < 0:
        raise ValueError(f"skip_eps must be >= 0; got {skip_eps}")
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    N, H = hidden.shape
    V = weight.shape[0]
    dtype, device = hidden.dtype, hidden.device
    grad_logp = grad_logp.to(torch.float32).contiguous()
    lse = lse.contiguous()
    precision, upcast = _compute_dtypes(dtype)
    filt = skip_eps > 0
    configs = configs or {}
    autotune = _AUTOTUNE and not filt
    d_cfg = configs.get("dlogits") or (None if autotune else DLOGITS_CONFIG)
    gh_cfg = configs.get("grad_hidden") or (None if autotune else GRAD_HIDDEN_CONFIG)
    gw_cfg = dict(configs.get("grad_weight") or GRAD_WEIGHT_CONFIG)
    if filt:  # the gradient kernels walk the dlogits kernel's tiles
        gh_cfg = dict(gh_cfg, BLOCK_N=d_cfg["BLOCK_N"], BLOCK_V=d_cfg["BLOCK_V"])
        gw_cfg = dict(gw_cfg, BLOCK_N=d_cfg["BLOCK_N"], BLOCK_V=d_cfg["BLOCK_V"])

    grad_hidden = grad_weight = None
    if not (need_hidden or need_weight):
        return None, None
    # Vocab chunk: a multiple of 256 (every BLOCK_V divides it) within the byte budget.
    align = 256
    vc = max(align, (chunk_bytes // (N * hidden.element_size())) // align * align)
    vc = min(vc, triton.cdiv(V, align) * align)
    d_buf = torch.empty(N, vc, dtype=_store_dtype(dtype), device=device)
    d_view = d_buf  # what the gradient products read
    flags = None
    if filt:
        flags = torch.empty(triton.cdiv(N, d_cfg["BLOCK_N"]), triton.cdiv(vc, d_cfg["BLOCK_V"]),
                            dtype=torch.int32, device=device)
    n_chunks = triton.cdiv(V, vc)
    if need_hidden:
        grad_hidden = torch.empty(N, H, dtype=_store_dtype(dtype), device=device)
        acc = grad_hidden if grad_hidden.dtype == torch.float32 else (
            torch.empty(N, H, dtype=torch.float32, device=device) if n_chunks > 1 else None)
    if need_weight:  # the dense path writes it with torch.mm, which rounds like the GPU
        grad_weight = torch.empty(V, H, dtype=_store_dtype(dtype) if filt else dtype,
                                  device=device)
    n_bucket = triton.next_power_of_2(N)
    even_h = H % (d_cfg["BLOCK_H"] if d_cfg is not None else 64) == 0

    for ci, v_lo in enumerate(range(0, V, vc)):
        v_hi = min(V, v_lo + vc)
        width = v_hi - v_lo
        _launch(_linear_logprobs_dlogits_kernel, _dlogits_tuned if autotune else None, d_cfg,
                lambda m, width=width: (triton.cdiv(N, m["BLOCK_N"]),
                                        triton.cdiv(width, m["BLOCK_V"])),
                hidden, weight, targets, lse, grad_logp, d_buf,
                flags if filt else d_buf, N, H, v_lo, v_hi, hidden.stride(0), weight.stride(0),
                d_buf.stride(0), float(skip_eps), flags.shape[1] if filt else 0, n_bucket,
                EVEN_H=even_h, INPUT_PRECISION=precision, UPCAST=upcast, FILTER=filt)
        if _INTERPRET and dtype == torch.bfloat16:
            d_view = d_buf.to(dtype)  # round to nearest even, as the GPU's store does
        if need_weight:
            if filt:
                cfg = dict(gw_cfg)
                _launch(_grad_weight_kernel, None, cfg,
                        lambda m, width=width: (triton.cdiv(width, m["BLOCK_V"]),
                                                triton.cdiv(H, m["BLOCK_H"])),
                        d_view, hidden, grad_weight, flags, N, H, width, v_lo, d_view.stride(0),
                        hidden.stride(0), grad_weight.stride(0), flags.shape[1],
                        INPUT_PRECISION=precision, UPCAST=upcast)
            else:  # one GEMM over all tokens per row block of grad_weight: fp32 accumulation
                torch.mm(d_view[:, :width].t(), hidden, out=grad_weight[v_lo:v_hi])
        if need_hidden:
            last = ci == n_chunks - 1
            out = grad_hidden if (last or acc is None) else acc
            _launch(_grad_hidden_kernel, _grad_hidden_tuned if autotune else None, gh_cfg,
                    lambda m: (triton.cdiv(N, m["BLOCK_N"]), triton.cdiv(H, m["BLOCK_H"])),
                    d_view, weight, acc if acc is not None else out, out,
                    flags if filt else d_view, N, H, width, v_lo, d_view.stride(0),
                    weight.stride(0), (acc if acc is not None else out).stride(0), out.stride(0),
                    flags.shape[1] if filt else 0, n_bucket,
                    INPUT_PRECISION=precision, UPCAST=upcast, ACCUMULATE=ci > 0, FILTER=filt)
    if grad_hidden is not None and grad_hidden.dtype != dtype:
        grad_hidden = grad_hidden.to(dtype)
    if grad_weight is not None and grad_weight.dtype != dtype:
        grad_weight = grad_weight.to(dtype)
    return grad_hidden, grad_weight


# --------------------------------------------------------------------------------------------
# autograd.Function and functional
# --------------------------------------------------------------------------------------------


class FusedLinearLogProbs(torch.autograd.Function):
    """logp[N] fp32 = log_softmax(hidden @ weight.T)[n, targets[n]] (Triton, fused)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, skip_eps=0.0, check=True, configs=None):
        configs = configs or {}
        logp, lse = linear_logprobs_fwd(hidden, weight, targets, config=configs.get("fwd"),
                                        num_splits=configs.get("num_splits"), check=check)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.weight_shape = weight.shape
        ctx.skip_eps = skip_eps
        ctx.configs = configs
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        hidden, weight, targets, lse = ctx.saved_tensors
        check_saved_weight(weight, ctx.weight_shape)
        grad_hidden, grad_weight = linear_logprobs_bwd(
            hidden, weight, targets, lse, grad_logp, need_hidden=ctx.needs_input_grad[0],
            need_weight=ctx.needs_input_grad[1], skip_eps=ctx.skip_eps,
            chunk_bytes=ctx.configs.get("chunk_bytes", DLOGITS_CHUNK_BYTES), configs=ctx.configs)
        return grad_hidden, grad_weight, None, None, None, None


def fused_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                          skip_eps: float = 0.0, check: bool = True,
                          configs: dict | None = None) -> torch.Tensor:
    """Token log-probs ``log_softmax(hidden @ weight.T)[n, targets[n]]``, fp32 [N], through the
    fused Triton kernels; differentiable in hidden and weight.

    hidden [N, H], weight [V, H]: bf16 / fp16 / fp32 (the same); targets [N] int in [0, V).
    skip_eps: CCE-style gradient filtering threshold (0 = exact). check: validate targets'
    range (a host sync on CUDA). configs: test/benchmark overrides — keys "fwd", "dlogits",
    "grad_hidden", "grad_weight" (block-size dicts), "num_splits", "chunk_bytes".
    """
    return FusedLinearLogProbs.apply(hidden, weight, targets, float(skip_eps), check, configs)
