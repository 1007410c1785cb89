"""Plain-torch paths for the token log-probs ``log_softmax(hidden @ weight.T)[n, t[n]]``.

* ``chunked_linear_logprobs`` — the CPU path and the test oracle's twin: chunked over tokens,
  at most one chunk of logits alive, forward and backward (its own autograd.Function recomputes
  the chunk's logits in the backward instead of saving them). Chunk: ``chunk_tokens`` tokens
  (default ``CHUNK_TOKENS`` = 512, i.e. a [512, V] fp32 logits chunk: 311 MB at V = 152,064).
  Numerics are the usual ones: logits from a matmul in the input dtype, cast to fp32,
  log-softmax in fp32; dlogits cast back to the input dtype for the gradient matmuls;
  grad_weight accumulated over chunks in fp32 (a [V, H] fp32 buffer unless weight is fp32).
* ``naive_linear_logprobs`` — full [N, V] logits + log_softmax + gather through autograd; for
  tests (in float64 it is the ground truth) and benchmarks only. Never use it for training.
"""

from __future__ import annotations

import torch

from ._checks import check_saved_weight

CHUNK_TOKENS = 512


def naive_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor,
                          targets: torch.Tensor) -> torch.Tensor:
    """logp[N] (fp32, or fp64 for fp64 inputs) through full [N, V] logits."""
    logits = hidden @ weight.t()
    if logits.dtype != torch.float64:
        logits = logits.float()
    return logits.log_softmax(-1).gather(1, targets.long()[:, None])[:, 0]


def _chunk_forward(h: torch.Tensor, weight: torch.Tensor, t: torch.Tensor):
    logits = (h @ weight.t()).float()
    lse = logits.logsumexp(-1)
    return logits.gather(1, t[:, None])[:, 0] - lse, lse


def _chunk_dlogits(h, weight, t, lse, g):
    """g[:, None] * (onehot(t) - softmax) in the input dtype, [C, V]."""
    p = ((h @ weight.t()).float() - lse[:, None]).exp_()
    d = p.mul_(-g[:, None])
    d.scatter_add_(1, t[:, None], g[:, None])
    return d.to(h.dtype)


_compiled: dict = {}


def _step(name, fn, compiled: bool):
    if not compiled:
        return fn
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=True)
    return _compiled[name]


class ChunkedLinearLogProbs(torch.autograd.Function):
    """logp[N] fp32 through token chunks; see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens=CHUNK_TOKENS, compiled=False):
        targets = targets.long()
        fwd = _step("fwd", _chunk_forward, compiled)
        logps, lses = [], []
        for start in range(0, hidden.shape[0], chunk_tokens):
            sl = slice(start, start + chunk_tokens)
            logp, lse = fwd(hidden[sl], weight, targets[sl])
            logps.append(logp)
            lses.append(lse)
        lse = torch.cat(lses)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.weight_shape = weight.shape
        ctx.chunk_tokens = chunk_tokens
        ctx.compiled = compiled
        return torch.cat(logps)

    @staticmethod
    def backward(ctx, grad_logp):
        hidden, weight, targets, lse = ctx.saved_tensors
        check_saved_weight(weight, ctx.weight_shape)
        need_h, need_w = ctx.needs_input_grad[:2]
        dlogits = _step("dlogits", _chunk_dlogits, ctx.compiled)
        grad_logp = grad_logp.float()
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_w32 = None
        if need_w:
            grad_w32 = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.shape[0], ctx.chunk_tokens):
            sl = slice(start, start + ctx.chunk_tokens)
            d = dlogits(hidden[sl], weight, targets[sl], lse[sl], grad_logp[sl])
            if need_h:
                torch.mm(d, weight, out=grad_hidden[sl])
            if need_w:
                if weight.dtype == torch.float32:
                    grad_w32.addmm_(d.t(), hidden[sl])
                else:
                    grad_w32.add_(d.t() @ hidden[sl])
        grad_weight = grad_w32.to(weight.dtype) if need_w else None
        return grad_hidden, grad_weight, None, None, None


def chunked_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                            *, chunk_tokens: int = CHUNK_TOKENS,
                            compiled: bool = False) -> torch.Tensor:
    """Token log-probs fp32 [N], chunked over tokens (see the module docstring).

    ``compiled=True`` runs the per-chunk steps through ``torch.compile`` (benchmarks)."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1; got {chunk_tokens}")
    return ChunkedLinearLogProbs.apply(hidden, weight, targets, int(chunk_tokens), compiled)
