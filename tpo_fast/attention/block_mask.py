"""FlexAttention's block mask for a packed micro-batch, built from its segment structure.

``create_block_mask`` evaluates the mask function at every (query, key) pair: a dense [T, Σk]
tensor (T = 32,768, Σk = 61,440 is 2 GB of booleans; eager it grew a process by 19 GB). The
packed layout does not need that. Query segment ``s`` holds the contiguous queries
``cu_q[s]:cu_q[s+1]`` and the contiguous key slots ``cu_k[s]:cu_k[s+1]``, and query ``i`` of the
segment sees key slot ``m`` iff ``m <= Lk - Lq + i``. So for a tile of queries × key slots and a
segment, the tile's intersection with the segment is a rectangle of local rows ``[i0, i1]`` and
columns ``[m0, m1]``: some pair is allowed iff ``m0 <= off + i1``, all are iff ``m1 <= off + i0``
(``off = Lk - Lq``). A tile is *full* when one segment covers all of it and every pair is
allowed, *partial* when some pair is allowed, and skipped otherwise.

Everything here is computed on the host from Python ints (no device reads), both the key-tile
lists and their transpose (the query-tile lists the backward reads): per segment a grid
of (query tile × key tile) comparisons, i.e. O(Σ_s tiles_q(s) · tiles_k(s)) work and memory, and
O(T + Σk) for the per-token arrays the mask function reads on partial tiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

BLOCK_SIZE = 128  # FlexAttention's default sparse block size


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def bucketed_length(n: int, block: int = BLOCK_SIZE) -> int:
    """``n`` rounded up to whole tiles, at least two. FlexAttention is compiled with dynamic
    shapes; lengths that are whole tiles, and tile counts that are never 1 (Dynamo specialises
    a size of 1), keep one compiled graph for micro-batches of any length
    (tests/attention/test_attention_compile.py counts the compiles)."""
    return max(2, _ceil_div(n, block)) * block


def tile_classes(cu_q: Sequence[int], cu_k: Sequence[int], block: int = BLOCK_SIZE,
                 lengths: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(partial, full): bool [ceil(T/block), ceil(Σk/block)] tile classes of the packed mask
    (or of ``lengths`` (T', Σk') >= (T, Σk): padding tiles are empty)."""
    cu_q, cu_k = np.asarray(cu_q, np.int64), np.asarray(cu_k, np.int64)
    if cu_q.shape != cu_k.shape or cu_q.ndim != 1 or cu_q.size < 1:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must be 1-D of the same length, got "
                         f"{cu_q.shape} and {cu_k.shape}")
    T, K = lengths or (int(cu_q[-1]), int(cu_k[-1]))
    n_qb, n_kb = _ceil_div(T, block), _ceil_div(K, block)
    some = np.zeros((n_qb, n_kb), dtype=bool)
    full = np.zeros((n_qb, n_kb), dtype=bool)
    for q0, q1, k0, k1 in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(),
                              cu_k[1:].tolist()):
        if q1 == q0 or k1 == k0:
            continue
        off = (k1 - k0) - (q1 - q0)
        qb = np.arange(q0 // block, (q1 - 1) // block + 1)[:, None]
        kb = np.arange(k0 // block, (k1 - 1) // block + 1)[None, :]
        a, b = np.maximum(q0, qb * block), np.minimum(q1, (qb + 1) * block)  # rows [a, b)
        c, d = np.maximum(k0, kb * block), np.minimum(k1, (kb + 1) * block)  # cols [c, d)
        i0, i1, m0, m1 = a - q0, b - 1 - q0, c - k0, d - 1 - k0
        some[qb, kb] |= m0 <= off + i1
        whole = (a == qb * block) & (b == (qb + 1) * block) & (c == kb * block) & (
            d == (kb + 1) * block)
        full[qb, kb] |= whole & (m1 <= off + i0)
    return some & ~full, full


def _ordered(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise count and column indices (the set ones first, ascending) as int32."""
    count = classes.sum(axis=1, dtype=np.int32)
    order = np.argsort(~classes, axis=1, kind="stable").astype(np.int32)
    return count, order


def token_arrays(cu_q: Sequence[int], cu_k: Sequence[int], block: int = BLOCK_SIZE,
                 lengths: tuple[int, int] | None = None):
    """Per-token arrays the mask function reads, padded to whole tiles (padding never matches):
    (seg_q, last_q) int32 [tiles_q·block] and (seg_k, pos_k) int32 [tiles_k·block] (tiles of
    ``lengths`` when given)."""
    cu_q, cu_k = np.asarray(cu_q, np.int64), np.asarray(cu_k, np.int64)
    q_len, k_len = np.diff(cu_q), np.diff(cu_k)
    T, K = int(cu_q[-1]), int(cu_k[-1])
    Tp, Kp = lengths or (T, K)
    seg = np.arange(len(q_len))
    seg_q = np.full(_ceil_div(Tp, block) * block, -1, np.int32)
    last_q = np.full_like(seg_q, -1)
    seg_k = np.full(_ceil_div(Kp, block) * block, -2, np.int32)
    pos_k = np.zeros_like(seg_k)
    sq, sk = np.repeat(seg, q_len), np.repeat(seg, k_len)
    seg_q[:T], seg_k[:K] = sq, sk
    last_q[:T] = np.arange(T) - cu_q[sq] + (k_len - q_len)[sq]
    pos_k[:K] = np.arange(K) - cu_k[sk]
    return seg_q, last_q, seg_k, pos_k


def packed_block_mask(cu_q: Sequence[int], cu_k: Sequence[int], device, *,
                      block: int = BLOCK_SIZE, lengths: tuple[int, int] | None = None):
    """FlexAttention ``BlockMask`` of the packed mask (see the module docstring), on ``device``.

    ``cu_q``/``cu_k``: the host cumulative segment lengths (Python ints). ``lengths``: the
    (query, key) lengths the mask is for when the inputs are padded past (T, Σk) (e.g. to
    ``bucketed_length``); padding rows and columns match nothing. Host arrays go to the device
    with non-blocking copies, so building it reads nothing back from the device."""
    from torch.nn.attention.flex_attention import BlockMask

    if lengths is not None and (lengths[0] < cu_q[-1] or lengths[1] < cu_k[-1]):
        raise ValueError(f"lengths {lengths} are shorter than the packed mask's "
                         f"({cu_q[-1]}, {cu_k[-1]})")
    partial, full = tile_classes(cu_q, cu_k, block, lengths)
    dev = torch.device(device)

    def put(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        if dev.type == "cuda":
            t = t.pin_memory()
        return t.to(dev, non_blocking=True)

    seg_q, last_q, seg_k, pos_k = (put(x) for x in token_arrays(cu_q, cu_k, block, lengths))

    def packed_mask(b, h, q_idx, kv_idx):
        return (seg_q[q_idx] == seg_k[kv_idx]) & (pos_k[kv_idx] <= last_q[q_idx])

    # Both orientations from the host matrices (what from_kv_blocks would derive on the device
    # with a dense [tiles_q, tiles_k] transpose per call), so the device only receives copies.
    arrays = {}
    for name, classes in (("kv", partial), ("full_kv", full), ("q", partial.T),
                          ("full_q", full.T)):
        num, idx = _ordered(classes)
        arrays[f"{name}_num_blocks"] = put(num)[None, None]
        arrays[f"{name}_indices"] = put(idx)[None, None]
    seq_lengths = tuple(int(x) for x in lengths) if lengths else (int(cu_q[-1]), int(cu_k[-1]))
    try:
        return BlockMask(seq_lengths=seq_lengths, **arrays, BLOCK_SIZE=(block, block),
                         mask_mod=packed_mask)
    except TypeError:  # a PyTorch whose BlockMask takes other constructor arguments
        return BlockMask.from_kv_blocks(
            arrays["kv_num_blocks"], arrays["kv_indices"], arrays["full_kv_num_blocks"],
            arrays["full_kv_indices"], BLOCK_SIZE=block, mask_mod=packed_mask,
            seq_lengths=seq_lengths)
