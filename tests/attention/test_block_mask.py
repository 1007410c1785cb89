"""FlexAttention's block mask built from the segment structure equals the dense packed mask,
tile by tile, and building it for a long micro-batch stays small."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tpo_fast.attention import PackedAttention
from tpo_fast.attention.block_mask import packed_block_mask, tile_classes
from tpo_fast.packing import build_indices


def _materialise(bm, T: int, K: int, block: int) -> torch.Tensor:
    """The [T, K] mask a BlockMask stands for: full tiles all True, partial tiles the mask_mod,
    every other tile False (what FlexAttention's kernels compute)."""
    n_qb = bm.kv_num_blocks.shape[-1]
    out = torch.zeros(n_qb * block, bm.kv_indices.shape[-1] * block, dtype=torch.bool)
    q = torch.arange(n_qb * block)
    for qb in range(n_qb):
        rows = slice(qb * block, (qb + 1) * block)
        for kb in bm.full_kv_indices[0, 0, qb, :int(bm.full_kv_num_blocks[0, 0, qb])].tolist():
            out[rows, kb * block:(kb + 1) * block] = True
        for kb in bm.kv_indices[0, 0, qb, :int(bm.kv_num_blocks[0, 0, qb])].tolist():
            kv = torch.arange(kb * block, (kb + 1) * block)
            out[rows, kb * block:(kb + 1) * block] = bm.mask_mod(0, 0, q[rows, None], kv[None, :])
    return out[:T, :K]


CASES = [([1], [1], [1]), ([5], [3], [2]), ([40, 7, 1], [1, 30, 9], [9, 1, 33]),
         ([130, 257], [63, 1], [1, 97]), ([1025, 97, 300], [63, 1, 256], [1, 97, 256])]


@pytest.mark.parametrize("p, c, r", CASES)
@pytest.mark.parametrize("block", [16, 128])
def test_block_mask_equals_dense_mask(p, c, r, block):
    ix = build_indices(p, c, r)
    packed = PackedAttention.from_batch(ix, backend="sdpa")
    dense = packed.dense_mask("cpu")
    bm = packed_block_mask(ix.host_cu_seqlens_q, ix.host_cu_seqlens_k, "cpu", block=block)
    assert bm.seq_lengths == tuple(dense.shape)
    torch.testing.assert_close(_materialise(bm, *dense.shape, block), dense)


@pytest.mark.parametrize("p, c, r", CASES)
def test_tile_classes_equal_create_block_mask(p, c, r):
    """Full and partial tiles are exactly the ones create_block_mask finds from the dense mask
    (which it evaluates at every pair; fine at these sizes)."""
    from torch.nn.attention.flex_attention import create_block_mask

    ix = build_indices(p, c, r)
    packed = PackedAttention.from_batch(ix, backend="sdpa")
    dense = packed.dense_mask("cpu")
    ref = create_block_mask(lambda b, h, qi, ki: dense[qi, ki], None, None, *dense.shape,
                            device="cpu", BLOCK_SIZE=16)
    partial, full = tile_classes(ix.host_cu_seqlens_q, ix.host_cu_seqlens_k, 16)

    def as_set(num, idx):
        return {(qb, kb) for qb in range(num.shape[-1])
                for kb in idx[0, 0, qb, :int(num[0, 0, qb])].tolist()}

    assert as_set(ref.full_kv_num_blocks, ref.full_kv_indices) == set(zip(*np.nonzero(full)))
    assert as_set(ref.kv_num_blocks, ref.kv_indices) == set(zip(*np.nonzero(partial)))


def test_flex_attention_with_the_block_mask_equals_sdpa():
    from torch.nn.attention.flex_attention import flex_attention

    ix = build_indices([40, 7], [9, 30], [17, 1])
    packed = PackedAttention.from_batch(ix, backend="sdpa")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(ix.num_tokens, 4, 8, generator=g)
    k, v = (torch.randn(ix.num_tokens, 2, 8, generator=g) for _ in range(2))
    expected = packed.attend(q, k, v)
    kk, vv = k[ix.kv_index], v[ix.kv_index]
    bm = packed_block_mask(ix.host_cu_seqlens_q, ix.host_cu_seqlens_k, "cpu", block=16)
    out = flex_attention(q.transpose(0, 1)[None], kk.transpose(0, 1)[None],
                         vv.transpose(0, 1)[None], block_mask=bm, enable_gqa=True)
    torch.testing.assert_close(out[0].transpose(0, 1), expected, rtol=1e-5, atol=1e-5)


_MEASURE = r"""
import json, resource, sys, tracemalloc
import torch
from tpo_fast.attention import PackedAttention
from tpo_fast.packing import build_indices
p, c, r = json.loads(sys.argv[1])
ix = build_indices(p, c, r)
packed = PackedAttention.from_batch(ix, backend="flex")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
bm = packed.block_mask("cpu")
_, numpy_peak = tracemalloc.get_traced_memory()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"T": ix.num_tokens, "K": ix.num_keys, "rss_growth": (after - before) * 1024,
                  "numpy_peak": numpy_peak, "tiles": list(bm.kv_indices.shape[-2:])}))
"""


def test_block_mask_for_a_long_batch_allocates_little():
    """T = 32,768, Σk = 61,440 (4 pairs of 7,168 + 512 + 512): a dense bool mask is 2.0 GB. The
    peak RSS of a fresh process (which counts torch's and numpy's allocations) may grow by at
    most 256 MB while the mask is built."""
    lens = [[7168] * 4, [512] * 4, [512] * 4]
    out = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(lens)], check=True,
                         capture_output=True, text=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert (got["T"], got["K"]) == (32768, 61440)
    assert got["tiles"] == [256, 480]
    assert got["rss_growth"] < 256 * 2 ** 20, got
    assert got["numpy_peak"] < 256 * 2 ** 20, got


@pytest.mark.parametrize("p, c, r", CASES)
def test_query_side_equals_what_from_kv_blocks_derives(p, c, r):
    """The transposed (query-tile) lists we build on the host, which the backward pass reads,
    equal the ones BlockMask.from_kv_blocks derives from the key-tile lists."""
    from torch.nn.attention.flex_attention import BlockMask

    ix = build_indices(p, c, r)
    bm = packed_block_mask(ix.host_cu_seqlens_q, ix.host_cu_seqlens_k, "cpu", block=16)
    assert type(bm) is BlockMask
    ref = BlockMask.from_kv_blocks(bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks,
                                   bm.full_kv_indices, BLOCK_SIZE=16, mask_mod=bm.mask_mod,
                                   seq_lengths=bm.seq_lengths)
    for num, idx in (("q_num_blocks", "q_indices"), ("full_q_num_blocks", "full_q_indices")):
        a_num, b_num = getattr(bm, num), getattr(ref, num)
        torch.testing.assert_close(a_num, b_num)
        a_idx, b_idx = getattr(bm, idx), getattr(ref, idx)
        for row in range(a_num.shape[-1]):
            k = int(a_num[0, 0, row])
            assert a_idx[0, 0, row, :k].tolist() == b_idx[0, 0, row, :k].tolist()


@pytest.mark.gpu
def test_flex_backward_with_the_block_mask_equals_sdpa():
    """Gradients through FlexAttention (eager; CPU has no flex backward) with our block mask,
    float32, equal the dense path's."""
    from torch.nn.attention.flex_attention import flex_attention

    ix = build_indices([40, 7], [9, 30], [17, 1])
    packed = PackedAttention.from_batch(ix, backend="sdpa", device="cuda")
    g = torch.Generator(device="cuda").manual_seed(1)
    make = lambda: torch.randn(ix.num_tokens, 2, 8, generator=g, device="cuda",  # noqa: E731
                               requires_grad=True)
    q, k, v = make(), make(), make()
    up = torch.randn(ix.num_tokens, 2, 8, generator=g, device="cuda")
    expected = torch.autograd.grad(packed.attend(q, k, v), (q, k, v), up)
    kv = ix.kv_index.cuda()
    bm = packed_block_mask(ix.host_cu_seqlens_q, ix.host_cu_seqlens_k, "cuda", block=16)
    out = flex_attention(q.transpose(0, 1)[None], k[kv].transpose(0, 1)[None],
                         v[kv].transpose(0, 1)[None], block_mask=bm)
    got = torch.autograd.grad(out[0].transpose(0, 1), (q, k, v), up)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
