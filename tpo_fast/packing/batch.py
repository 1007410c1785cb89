"""PackedBatch index arrays for one micro-batch (the contract of ../DESIGN.md).

Token order per pair is ``[prompt_i | chosen_i | rejected_i]``. The prompt is computed once;
the rejected response attends to the prompt's keys through ``kv_index`` and takes the positions
the chosen response has. Index arrays come from the native builder as numpy buffers and are
wrapped with ``torch.from_numpy`` (no copy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from tpo_fast.packing.backend import as_triplet, get_backend
from tpo_fast.tensor_tree import move_tensors, pin_tensors

# position_ids_fn(pair, prompt_len, response_len) -> int array [prompt_len + response_len] or
# [D, prompt_len + response_len]: the positions of the unpacked row prompt + response.
PositionIdsFn = Callable[[int, int, int], np.ndarray]


class HostOffsets:
    """``num_tokens`` and ``num_keys`` of a packed micro-batch, read from the host copies of its
    offsets (``host_cu_seqlens_q`` / ``host_cu_seqlens_k``: tuples of Python ints), so asking
    never reads a device tensor. A mixin of ``PackedIndices`` and the attention's
    ``PackedAttention``, which both hold those two tuples."""

    @property
    def num_tokens(self) -> int:
        return self.host_cu_seqlens_q[-1]

    @property
    def num_keys(self) -> int:
        return self.host_cu_seqlens_k[-1]


@dataclass(frozen=True)
class PackedIndices(HostOffsets):
    """Index arrays of one micro-batch of n pairs, T packed tokens, N scored tokens.

    pair_offsets  [n+1]   int64  start of each pair on the packed axis
    position_ids  [T] or [D, T] int64  rejected tokens repeat the chosen tokens' positions
    cu_seqlens_q  [2n+1]  int32  query segments prompt_i+chosen_i, rejected_i
    cu_seqlens_k  [2n+1]  int32  key segments of lengths P_i+C_i, P_i+R_i
    kv_index      [Σk]    int64  packed token of every key slot
    logit_index   [N]     int64  packed token whose hidden state predicts each scored token
    target_index  [N]     int64  packed token that is scored
    seq_id        [N]     int64  2i chosen, 2i+1 rejected
    sft_mask      [N]     bool   chosen tokens (the SFT term)
    host_cu_seqlens_q, host_cu_seqlens_k: the offsets as Python ints (read from the tensors
    when not given), so the forward never reads a device tensor to learn a length.
    Attention is causal inside a segment, aligned bottom-right (flash-attn varlen's rule).
    """

    pair_offsets: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    kv_index: torch.Tensor
    logit_index: torch.Tensor
    target_index: torch.Tensor
    seq_id: torch.Tensor
    sft_mask: torch.Tensor
    host_cu_seqlens_q: tuple[int, ...] | None = None
    host_cu_seqlens_k: tuple[int, ...] | None = None

    def __post_init__(self):
        for name, tensor in (("host_cu_seqlens_q", self.cu_seqlens_q),
                             ("host_cu_seqlens_k", self.cu_seqlens_k)):
            if getattr(self, name) is None:  # one read, at construction (CPU when packed)
                object.__setattr__(self, name, tuple(int(x) for x in tensor.tolist()))

    @property
    def n_pairs(self) -> int:
        return len(self.pair_offsets) - 1


def _custom_positions(fn: PositionIdsFn, p: np.ndarray, c: np.ndarray, r: np.ndarray):
    parts = []
    for i, (P, C, R) in enumerate(zip(p.tolist(), c.tolist(), r.tolist())):
        row_c, row_r = np.asarray(fn(i, P, C)), np.asarray(fn(i, P, R))
        for row, L, name in ((row_c, C, "chosen"), (row_r, R, "rejected")):
            if row.dtype.kind not in "iu" or row.ndim not in (1, 2) or row.shape[-1] != P + L:
                raise ValueError(
                    f"position_ids_fn gave pair {i} ({name}) an array of shape {row.shape} and "
                    f"dtype {row.dtype}; expected integers of shape [{P + L}] or [D, {P + L}]"
                )
        if row_c.shape[:-1] != row_r.shape[:-1] or not np.array_equal(row_c[..., :P],
                                                                        row_r[..., :P]):
            raise ValueError(
                f"position_ids_fn gave pair {i} different prompt positions in its chosen and "
                "rejected rows; a shared prompt needs identical positions"
            )
        parts += [row_c, row_r[..., P:]]
    return np.ascontiguousarray(np.concatenate(parts, axis=-1), dtype=np.int64)


def build_indices(
    prompt_lens,
    chosen_lens,
    rejected_lens,
    *,
    position_ids_fn: PositionIdsFn | None = None,
    backend: str = "auto",
) -> PackedIndices:
    """Index arrays of one micro-batch; ``position_ids_fn`` replaces the default 1-D positions
    (model adapters use it for M-RoPE)."""
    p, c, r = as_triplet(prompt_lens, chosen_lens, rejected_lens)
    out = get_backend(backend).build_indices(p, c, r)
    if position_ids_fn is not None:
        out["position_ids"] = _custom_positions(position_ids_fn, p, c, r)
    validate_indices(out, p, c, r)
    q_lens, k_lens = np.diff(out["cu_seqlens_q"]), np.diff(out["cu_seqlens_k"])
    return PackedIndices(
        max_seqlen_q=int(q_lens.max()),
        max_seqlen_k=int(k_lens.max()),
        host_cu_seqlens_q=tuple(out["cu_seqlens_q"].tolist()),
        host_cu_seqlens_k=tuple(out["cu_seqlens_k"].tolist()),
        **{k: torch.from_numpy(v) for k, v in out.items()},
    )


def validate_indices(out: dict, p: np.ndarray, c: np.ndarray, r: np.ndarray) -> None:
    """Check the index arrays of one micro-batch on the host, where they are built, so the
    device hot path can skip its own input checks (each would read a device tensor back).
    Raises ``ValueError`` naming the first broken invariant."""
    n, T = len(p), int((p + c + r).sum())
    N = int((c + r).sum())
    cu_q, cu_k = out["cu_seqlens_q"], out["cu_seqlens_k"]

    def need(ok, what):
        if not ok:
            raise ValueError(f"packed indices are inconsistent: {what}")

    need(cu_q.dtype == np.int32 and cu_k.dtype == np.int32, "cu_seqlens must be int32")
    need(cu_q.shape == (2 * n + 1,) and cu_k.shape == (2 * n + 1,),
         f"cu_seqlens must have {2 * n + 1} entries")
    q_lens = np.stack([p + c, r], 1).reshape(-1)
    k_lens = np.stack([p + c, p + r], 1).reshape(-1)
    need(cu_q[0] == 0 and np.array_equal(np.diff(cu_q), q_lens), "cu_seqlens_q lengths")
    need(cu_k[0] == 0 and np.array_equal(np.diff(cu_k), k_lens), "cu_seqlens_k lengths")
    need(int(cu_k[-1]) < 2 ** 31, f"{int(cu_k[-1])} key slots overflow int32 offsets")
    kv = out["kv_index"]
    need(kv.shape == (int(cu_k[-1]),) and (kv.size == 0 or (kv.min() >= 0 and kv.max() < T)),
         f"kv_index must hold {int(cu_k[-1])} slots in [0, {T})")
    for name in ("logit_index", "target_index"):
        x = out[name]
        need(x.shape == (N,) and (N == 0 or (x.min() >= 0 and x.max() < T)),
             f"{name} must hold {N} tokens in [0, {T})")
    seq = out["seq_id"]
    need(seq.shape == (N,) and (N == 0 or (seq.min() >= 0 and seq.max() < 2 * n)),
         f"seq_id must hold {N} ids in [0, {2 * n})")
    need(out["position_ids"].shape[-1] == T, f"position_ids must cover {T} tokens")


@dataclass(frozen=True, kw_only=True)
class PackedBatch(PackedIndices):
    """One micro-batch on one rank: the indices plus what the model and the loss consume.

    input_ids   [T]     int64
    target_ids  [N]     int64  == input_ids[target_index]
    ref_logps   [n, 2]  float32 or None  reference log-probs (chosen, rejected)
    pair_ids    [n]     int64 or None  the pairs' indices in the dataset
    videos      list of n per-pair video inputs (dicts of tensors; moved by ``to``), or None
    is_padding  bool    a bin that only keeps its rank busy (weight its loss 0)
    shard       this rank's ``tpo_fast.sequence_parallel.ShardPlan`` (host tensors) when the
                batch runs sequence parallel, set by ``PreferenceModel.shard``; else None
    """

    input_ids: torch.Tensor
    target_ids: torch.Tensor
    ref_logps: torch.Tensor | None = None
    pair_ids: torch.Tensor | None = None
    videos: list | None = None
    is_padding: bool = False
    shard: object | None = None

    def to(self, device, non_blocking: bool = False) -> PackedBatch:
        """This batch with every tensor (video inputs included) on ``device``."""
        return replace(self, **{f.name: move_tensors(getattr(self, f.name), device, non_blocking)
                                for f in fields(self)})

    def pin_memory(self) -> PackedBatch:
        """This batch with its CPU tensors (video tensors included) in pinned memory, ready for
        ``to(device, non_blocking=True)``; call it in the loader thread."""
        return replace(self, **{f.name: pin_tensors(getattr(self, f.name)) for f in fields(self)})


def _token_array(x, what: str, i: int) -> np.ndarray:
    arr = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.size == 0:  # [] parses as float64; report it as a length problem instead
        arr = arr.astype(np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"pair {i}: {what} must be a 1-D integer sequence, got shape "
                         f"{arr.shape} and dtype {arr.dtype}")
    return arr


def pack_pairs(
    prompt_ids: Sequence,
    chosen_ids: Sequence,
    rejected_ids: Sequence,
    *,
    ref_logps=None,
    pair_ids=None,
    videos: list | None = None,
    is_padding: bool = False,
    position_ids_fn: PositionIdsFn | None = None,
    backend: str = "auto",
) -> PackedBatch:
    """Pack n pairs of token id sequences into one PackedBatch."""
    n = len(prompt_ids)
    if not (len(chosen_ids) == len(rejected_ids) == n):
        raise ValueError(f"got {n} prompts, {len(chosen_ids)} chosen and {len(rejected_ids)} "
                         "rejected responses")
    rows = [[_token_array(x, what, i) for x, what in zip(triple, ("prompt", "chosen", "rejected"))]
            for i, triple in enumerate(zip(prompt_ids, chosen_ids, rejected_ids))]
    lens = np.array([[len(t) for t in row] for row in rows], dtype=np.int64).reshape(n, 3)
    ix = build_indices(lens[:, 0], lens[:, 1], lens[:, 2], position_ids_fn=position_ids_fn,
                       backend=backend)
    input_ids = torch.from_numpy(np.concatenate([t for row in rows for t in row]).astype(np.int64))
    if ref_logps is not None:
        ref_logps = torch.as_tensor(ref_logps, dtype=torch.float32)
        if ref_logps.shape != (n, 2):
            raise ValueError(f"ref_logps must have shape [{n}, 2], got {list(ref_logps.shape)}")
    if pair_ids is not None:
        pair_ids = torch.as_tensor(pair_ids, dtype=torch.int64)
    if videos is not None and len(videos) != n:
        raise ValueError(f"got {len(videos)} videos for {n} pairs (one video per pair)")
    return PackedBatch(
        **{f.name: getattr(ix, f.name) for f in fields(PackedIndices)},
        input_ids=input_ids,
        target_ids=input_ids[ix.target_index],
        ref_logps=ref_logps,
        pair_ids=pair_ids,
        videos=videos,
        is_padding=is_padding,
    )
