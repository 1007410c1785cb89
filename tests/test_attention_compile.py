"""The GPU-only attention paths, read against their library on the CPU.

* FlexAttention is compiled with dynamic shapes and gets a new BlockMask every micro-batch:
  with T and Σk bucketed (``bucketed_length``) ten micro-batches of different lengths compile
  at most twice (a recompile per length would, past Dynamo's limit, run eager flex with dense
  [T, Σk] scores: at 7B scale, out of memory). Dynamo's guards decide the recompiles, so the
  compiles are counted with a counting backend (the captured graph then runs eagerly on the
  CPU), and the answer is checked against the obvious per-segment attention.
* ``torch_varlen`` against torch 2.11's ``varlen_attn``, whose signature has no
  ``enable_gqa`` (the lent GPU machine's PyTorch).
"""

from __future__ import annotations

import ast
import inspect
import random
import textwrap

import pytest
import torch

from tpo_fast.attention import PackedAttention, backends
from tpo_fast.attention.block_mask import BLOCK_SIZE, bucketed_length
from tpo_fast.attention.naive import naive_prefix_shared_attention
from tpo_fast.packing import build_indices


def _micro_batches(n: int, seed: int = 0):
    """``n`` packed micro-batches of 1-3 pairs of different lengths (prompts 5-200 tokens,
    responses 1-40), as (prompts, chosen, rejected) length lists."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pairs = rng.randint(1, 3)
        out.append(tuple([rng.randint(lo, hi) for _ in range(pairs)]
                         for lo, hi in ((5, 200), (1, 40), (1, 40))))
    return out


def _qkv(ix, heads=4, kv_heads=2, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(ix.num_tokens, heads, dim, generator=g)
    k, v = (torch.randn(ix.num_tokens, kv_heads, dim, generator=g) for _ in range(2))
    return q, k, v


def test_bucketed_length():
    assert bucketed_length(1) == 2 * BLOCK_SIZE  # never one tile: Dynamo specialises size 1
    assert bucketed_length(2 * BLOCK_SIZE) == 2 * BLOCK_SIZE
    assert bucketed_length(2 * BLOCK_SIZE + 1) == 3 * BLOCK_SIZE


def test_flex_compiles_at_most_twice_over_ten_micro_batches():
    from torch._dynamo.testing import CompileCounter
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.reset()
    counter = CompileCounter()
    flex = torch.compile(flex_attention, backend=counter, dynamic=True)
    lengths = set()
    for p, c, r in _micro_batches(10):
        ix = build_indices(p, c, r)
        packed = PackedAttention.from_batch(ix, backend="flex")
        q, k, v = _qkv(ix)
        out = backends.flex_bucketed(flex, packed, q, k[ix.kv_index], v[ix.kv_index], 0.25)
        torch.testing.assert_close(
            out, naive_prefix_shared_attention(packed, q, k, v, scale=0.25),
            rtol=1e-5, atol=1e-5)
        lengths.add((ix.num_tokens, ix.num_keys))
    assert len(lengths) == 10  # ten different (T, Σk)
    assert 1 <= counter.frame_count <= 2, counter.frame_count


# torch 2.11.0's public varlen_attn, as its wheel ships it (torch/nn/attention/varlen.py of the
# pytorch/pytorch v2.11.0 release; the body is not needed). The lent H200 runs torch 2.11.
TORCH_2_11_VARLEN = textwrap.dedent('''
    def varlen_attn(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        cu_seq_q: torch.Tensor,
        cu_seq_k: torch.Tensor,
        max_q: int,
        max_k: int,
        *,
        return_aux: AuxRequest | None = None,
        scale: float | None = None,
        window_size: tuple[int, int] = (-1, -1),
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        pass
''')


def _signature(source: str) -> inspect.Signature:
    """The signature of the one function in ``source``, its defaults evaluated (no imports)."""
    fn = ast.parse(source).body[0]
    a = fn.args
    kinds = [(x, inspect.Parameter.POSITIONAL_OR_KEYWORD) for x in a.args] + [
        (x, inspect.Parameter.KEYWORD_ONLY) for x in a.kwonlyargs]
    defaults = [None] * (len(a.args) - len(a.defaults)) + list(a.defaults) + list(a.kw_defaults)
    return inspect.Signature([
        inspect.Parameter(x.arg, kind, **({} if d is None else
                                          {"default": ast.literal_eval(d)}))
        for (x, kind), d in zip(kinds, defaults)])


def test_torch_varlen_on_torch_2_11s_signature(monkeypatch):
    """torch 2.11's varlen_attn has no enable_gqa: the call binds (a stray keyword would raise
    TypeError as the real one does), is causal through window_size, gets the keys and values
    expanded to the query heads, and computes the packed attention."""
    varlen = pytest.importorskip("torch.nn.attention.varlen")
    sig = _signature(TORCH_2_11_VARLEN)
    assert "enable_gqa" not in sig.parameters and "window_size" in sig.parameters
    seen = []

    def fake(*args, **kwargs):
        a = sig.bind(*args, **kwargs)
        a.apply_defaults()
        a = a.arguments
        seen.append(a)
        assert a["key"].shape[1] == a["query"].shape[1]  # no GQA without enable_gqa
        ident = PackedAttention(a["cu_seq_q"], a["cu_seq_k"], a["max_q"], a["max_k"],
                                torch.arange(a["key"].shape[0]), "sdpa")
        return naive_prefix_shared_attention(ident, a["query"], a["key"], a["value"],
                                                 scale=a["scale"])

    fake.__signature__ = sig
    monkeypatch.setattr(varlen, "varlen_attn", fake)
    backends._torch_varlen.cache_clear()
    try:
        assert backends._torch_varlen().gqa is False
        ix = build_indices([5, 9], [3, 1], [2, 4])
        packed = PackedAttention.from_batch(ix, backend="torch_varlen")
        q, k, v = _qkv(ix, heads=4, kv_heads=2, dim=8)
        out = backends._torch_varlen_attn(packed, q, k[ix.kv_index], v[ix.kv_index], 0.3, 0.0)
    finally:
        backends._torch_varlen.cache_clear()
    torch.testing.assert_close(out, naive_prefix_shared_attention(packed, q, k, v,
                                                                      scale=0.3))
    (a,) = seen
    assert a["window_size"] == (-1, 0) and a["scale"] == 0.3
