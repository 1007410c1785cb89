"""The obvious prefix-shared attention: one segment at a time, in float32. Tests only."""

from __future__ import annotations

import functools

import torch


def naive_prefix_shared_attention(packed, q, k, v, scale: float | None = None):
    """q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D] per the PackedBatch contract, in float32
    (float64 inputs stay float64: the tests' ground truth)."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    groups = q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.full_like(q, float("nan"))
    cu_q, cu_k = packed.cu_seqlens_q.tolist(), packed.cu_seqlens_k.tolist()
    for s in range(len(cu_q) - 1):
        keys = packed.kv_index[cu_k[s]:cu_k[s + 1]]
        qs = q[cu_q[s]:cu_q[s + 1]].transpose(0, 1)  # [Hq, Lq, D]
        ks = k[keys].repeat_interleave(groups, dim=1).transpose(0, 1)
        vs = v[keys].repeat_interleave(groups, dim=1).transpose(0, 1)
        lq, lk = qs.shape[1], ks.shape[1]
        ar = functools.partial(torch.arange, device=q.device)
        allowed = ar(lk)[None, :] <= ar(lq)[:, None] + (lk - lq)
        scores = (qs @ ks.transpose(1, 2) * scale).masked_fill(~allowed, float("-inf"))
        out[cu_q[s]:cu_q[s + 1]] = (scores.softmax(-1) @ vs).transpose(0, 1)
    return out
