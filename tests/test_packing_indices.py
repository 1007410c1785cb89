"""build_indices / pack_pairs against the PackedBatch contract (DESIGN.md)."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tpo_fast import _C
from tpo_fast.packing import PackedBatch, build_indices, pack_pairs

INDEX_FIELDS = ("pair_offsets", "position_ids", "cu_seqlens_q", "cu_seqlens_k", "kv_index",
                "logit_index", "target_index", "seq_id", "sft_mask")

lengths = st.integers(1, 40).flatmap(
    lambda n: st.tuples(*(st.lists(st.integers(1, 30), min_size=n, max_size=n) for _ in range(3)))
)
# Awkward fixed cases: one pair, one-token responses and prompt, many pairs, uneven lengths.
CASES = [
    ([1], [1], [1]),
    ([7], [1], [3]),
    ([97], [63], [1]),
    ([5, 1, 12, 3, 9], [1, 4, 2, 8, 1], [6, 1, 1, 2, 5]),
    ([33] * 9, list(range(1, 10)), list(range(9, 0, -1))),
]


@given(lengths)
def test_native_equals_naive(lens):
    a, b = build_indices(*lens, backend="native"), build_indices(*lens, backend="naive")
    for f in INDEX_FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and torch.equal(x, y), f
    assert (a.max_seqlen_q, a.max_seqlen_k) == (b.max_seqlen_q, b.max_seqlen_k)


def unpacked_rows(ix, i, P, C, R):
    """Packed token indices of pair i's two unpacked rows: prompt+chosen, prompt+rejected."""
    base = int(ix.pair_offsets[i])
    prompt = np.arange(base, base + P)
    chosen_row = np.arange(base, base + P + C)
    rejected_row = np.concatenate([prompt, np.arange(base + P + C, base + P + C + R)])
    return chosen_row, rejected_row


def check_contract(ix, p, c, r):
    n = len(p)
    T = int(sum(p) + sum(c) + sum(r))
    cu_q, cu_k = ix.cu_seqlens_q.tolist(), ix.cu_seqlens_k.tolist()
    assert len(cu_q) == len(cu_k) == 2 * n + 1 and cu_q[-1] == T == ix.num_tokens
    # Every token exactly once on the query axis.
    queries = np.concatenate([np.arange(cu_q[s], cu_q[s + 1]) for s in range(2 * n)])
    assert queries.tolist() == list(range(T))
    kv, pos = ix.kv_index.numpy(), ix.position_ids.numpy()
    scored = {s: [] for s in range(2 * n)}
    for j, s in enumerate(ix.seq_id.tolist()):
        scored[s].append(j)
    for i, (P, C, R) in enumerate(zip(p, c, r)):
        rows = unpacked_rows(ix, i, P, C, R)
        for s, row, L in ((2 * i, rows[0], C), (2 * i + 1, rows[1], R)):
            # Keys: the whole unpacked row (the rejected one: its prompt then its own tokens,
            # never a chosen token); queries: the row's tokens not computed before.
            assert kv[cu_k[s]:cu_k[s + 1]].tolist() == row.tolist()
            q = np.arange(cu_q[s], cu_q[s + 1])
            assert q.tolist() == row[len(row) - len(q):].tolist()
            # Positions: those of the unpacked row, so rejected tokens get the chosen ones'.
            assert pos[row].tolist() == list(range(P + L))
            # Scored tokens: the response; each predicted by the row's previous token.
            j = np.array(scored[s])
            assert len(j) == L
            assert ix.target_index[j].tolist() == row[P:].tolist()
            assert ix.logit_index[j].tolist() == row[P - 1:-1].tolist()
            assert ix.sft_mask[j].tolist() == [s % 2 == 0] * L
        chosen_tokens = set(rows[0][P:].tolist())
        assert not chosen_tokens & set(kv[cu_k[2 * i + 1]:cu_k[2 * i + 2]].tolist())


@given(lengths)
def test_contract_invariants_hypothesis(lens):
    check_contract(build_indices(*lens), *lens)


def segment_attention(q, k, v, bottom_right=True):
    """Dense causal attention of one segment: q [Lq, d], k/v [Lk, d]."""
    Lq, Lk = q.shape[0], k.shape[0]
    offset = Lk - Lq if bottom_right else 0
    allowed = torch.arange(Lk)[None, :] <= torch.arange(Lq)[:, None] + offset
    scores = (q @ k.T) / q.shape[-1] ** 0.5
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def packed_attention(ix, q, k, v, bottom_right=True):
    out = torch.full_like(q, float("nan"))
    cu_q, cu_k = ix.cu_seqlens_q.tolist(), ix.cu_seqlens_k.tolist()
    for s in range(len(cu_q) - 1):
        keys = ix.kv_index[cu_k[s]:cu_k[s + 1]]
        out[cu_q[s]:cu_q[s + 1]] = segment_attention(q[cu_q[s]:cu_q[s + 1]], k[keys], v[keys],
                                                     bottom_right)
    return out


@pytest.mark.parametrize("p, c, r", CASES)
def test_prefix_shared_attention_equals_unpacked_rows(p, c, r):
    ix = build_indices(p, c, r)
    torch.manual_seed(len(p))
    q, k, v = (torch.randn(ix.num_tokens, 16) for _ in range(3))
    packed = packed_attention(ix, q, k, v)
    assert not packed.isnan().any()  # every query written
    for i, (P, C, R) in enumerate(zip(p, c, r)):
        for row in unpacked_rows(ix, i, P, C, R):
            row = torch.from_numpy(row)
            # The unpacked row is an ordinary causal sequence (q_len == k_len).
            expected = segment_attention(q[row], k[row], v[row])
            torch.testing.assert_close(packed[row], expected, rtol=1e-5, atol=1e-5)


def test_contract_test_detects_wrong_causal_alignment():
    # Top-left alignment lets a rejected token see too little: the comparison must catch it.
    p, c, r = [6], [2], [3]
    ix = build_indices(p, c, r)
    torch.manual_seed(0)
    q, k, v = (torch.randn(ix.num_tokens, 8) for _ in range(3))
    wrong = packed_attention(ix, q, k, v, bottom_right=False)
    row = torch.from_numpy(unpacked_rows(ix, 0, 6, 2, 3)[1])
    assert not torch.allclose(wrong[row[-3:]], segment_attention(q[row], k[row], v[row])[-3:])


@pytest.mark.parametrize("p, c, r", CASES)
def test_contract_invariants_fixed_cases(p, c, r):
    check_contract(build_indices(p, c, r), p, c, r)


def test_dtypes_and_zero_copy():
    ix = build_indices([4, 5], [2, 1], [3, 3])
    assert ix.cu_seqlens_q.dtype == ix.cu_seqlens_k.dtype == torch.int32  # flash-attn varlen
    for f in ("pair_offsets", "position_ids", "kv_index", "logit_index", "target_index",
              "seq_id"):
        assert getattr(ix, f).dtype == torch.int64, f
    assert ix.sft_mask.dtype == torch.bool
    # The native arrays wrap the C++ buffers, and the tensors wrap those arrays.
    raw = _C.build_indices(np.array([4]), np.array([2]), np.array([3]))
    assert type(raw["kv_index"].base).__name__ == "PyCapsule"
    assert torch.from_numpy(raw["kv_index"]).data_ptr() == raw["kv_index"].ctypes.data


def mrope_like(i, P, L):
    """Qwen-VL-style [3, P+L] positions: 2 text tokens, a 2x2x2 video grid, then text."""
    t, h, w = np.meshgrid(np.arange(2), np.arange(2), np.arange(2), indexing="ij")
    video = np.stack([t.ravel(), h.ravel(), w.ravel()]) + 2
    text_after = np.arange(P + L - 10) + video.max() + 1
    return np.concatenate([np.tile(np.arange(2), (3, 1)), video, np.tile(text_after, (3, 1))],
                          axis=1)


def test_position_hook_mrope():
    p, c, r = [12, 15], [3, 1], [2, 4]
    ix = build_indices(p, c, r, position_ids_fn=mrope_like)
    assert ix.position_ids.shape == (3, sum(p) + sum(c) + sum(r))
    for i, (P, C, R) in enumerate(zip(p, c, r)):
        for row, L in zip(unpacked_rows(ix, i, P, C, R), (C, R)):
            assert np.array_equal(ix.position_ids[:, row].numpy(), mrope_like(i, P, L))
    # The hook returning the default positions reproduces the default.
    default = build_indices(p, c, r)
    same = build_indices(p, c, r, position_ids_fn=lambda i, P, L: np.arange(P + L))
    assert torch.equal(default.position_ids, same.position_ids)


def test_position_hook_errors():
    with pytest.raises(ValueError, match=r"pair 0 \(chosen\) an array of shape \(4,\)"):
        build_indices([3], [2], [2], position_ids_fn=lambda i, P, L: np.arange(4))
    with pytest.raises(ValueError, match="different prompt positions"):
        build_indices([3], [2], [1], position_ids_fn=lambda i, P, L: np.arange(P + L) * L)


@pytest.mark.parametrize("backend", ["native", "naive"])
def test_bad_lengths(backend):
    with pytest.raises(ValueError, match=r"pair 1: rejected length 0"):
        build_indices([3, 4], [1, 1], [1, 0], backend=backend)
    with pytest.raises(ValueError, match="no pairs given"):
        build_indices([], [], [], backend=backend)


def test_pack_pairs():
    prompts = [np.array([10, 11, 12]), [20], torch.tensor([30, 31])]
    chosen = [[1, 2], [3], [4, 5, 6]]
    rejected = [[7], [8, 9], [5]]
    batch = pack_pairs(prompts, chosen, rejected, ref_logps=[[-1, -2], [-3, -4], [-5, -6]],
                       pair_ids=[4, 0, 9])
    assert isinstance(batch, PackedBatch) and batch.n_pairs == 3
    assert batch.input_ids.tolist() == [10, 11, 12, 1, 2, 7, 20, 3, 8, 9, 30, 31, 4, 5, 6, 5]
    assert batch.target_ids.tolist() == [1, 2, 7, 3, 8, 9, 4, 5, 6, 5]
    assert batch.seq_id.tolist() == [0, 0, 1, 2, 3, 3, 4, 4, 4, 5]
    # The first rejected token of pair 0 is predicted by the last prompt token (index 2).
    assert batch.logit_index.tolist()[:3] == [2, 3, 2]
    assert batch.ref_logps.dtype == torch.float32 and batch.ref_logps.shape == (3, 2)
    moved = batch.to("cpu")
    assert torch.equal(moved.input_ids, batch.input_ids) and moved.pair_ids.tolist() == [4, 0, 9]


def test_pack_pairs_bad_input():
    with pytest.raises(ValueError, match="got 2 prompts, 1 chosen"):
        pack_pairs([[1], [2]], [[1]], [[1], [2]])
    with pytest.raises(ValueError, match=r"pair 1: chosen must be a 1-D integer sequence"):
        pack_pairs([[1], [2]], [[1], [0.5]], [[1], [2]])
    with pytest.raises(ValueError, match=r"pair 0: rejected length 0"):
        pack_pairs([[1]], [[1]], [[]])
    with pytest.raises(ValueError, match=r"ref_logps must have shape \[1, 2\]"):
        pack_pairs([[1]], [[1]], [[2]], ref_logps=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="got 2 videos for 1 pairs"):
        pack_pairs([[1]], [[1]], [[2]], videos=[None, None])
