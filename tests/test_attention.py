"""Prefix-shared attention backends against the per-segment naive attention and unpacked rows."""

import pytest
import torch
from tolerance import assert_within_reference_error

from tpo_fast.attention import (
    ATTENTION_NAME,
    PACKED_KWARG,
    PackedAttention,
    available_backends,
    register,
)
from tpo_fast.attention.naive import naive_prefix_shared_attention
from tpo_fast.models.tiny import tiny_model, tiny_tokenizer
from tpo_fast.packing import build_indices

CASES = [([1], [1], [1]), ([7], [1], [3]), ([5, 1, 12, 3, 9], [1, 4, 2, 8, 1], [6, 1, 1, 2, 5]),
         ([97], [63], [1])]


def random_qkv(T, hq, hkv, d=8, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.randn(T, h, d, generator=g).to(device, dtype).requires_grad_()
            for h in (hq, hkv, hkv)]


@pytest.mark.parametrize("p, c, r", CASES)
@pytest.mark.parametrize("hq, hkv", [(4, 4), (4, 2), (6, 1)])
def test_sdpa_backend_equals_naive(p, c, r, hq, hkv):
    ix = build_indices(p, c, r)
    packed = PackedAttention.from_batch(ix, backend="sdpa")
    q, k, v = random_qkv(ix.num_tokens, hq, hkv, seed=hq + hkv)
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = packed.attend(q, k, v, scale=0.3)
    ref = naive_prefix_shared_attention(packed, q, k, v, scale=0.3)
    truth = naive_prefix_shared_attention(packed, *exact, scale=0.3)
    assert_within_reference_error(out, ref, truth, msg="output")
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    true_grads = torch.autograd.grad(truth, exact, g.double())
    for name, a, b, t in zip("qkv", grads, ref_grads, true_grads):
        assert_within_reference_error(a, b, t, msg=f"d{name}")


def test_prompt_kv_gradients_come_from_both_responses():
    """The shared prompt's k/v gradient is the sum of its gradients in the two unpacked rows."""
    P, C, R = 6, 3, 4
    ix = build_indices([P], [C], [R])
    packed = PackedAttention.from_batch(ix, backend="sdpa")
    q, k, v = random_qkv(P + C + R, 4, 2, seed=7)
    upstream = torch.randn(P + C + R, 4, 8, generator=torch.Generator().manual_seed(8))
    dk, dv = torch.autograd.grad(packed.attend(q, k, v), (k, v), upstream)

    expected_dk, expected_dv = torch.zeros_like(k), torch.zeros_like(v)
    rows = (torch.arange(P + C), torch.cat([torch.arange(P), torch.arange(P + C, P + C + R)]))
    for row, queries in zip(rows, (torch.arange(P + C), torch.arange(P + C, P + C + R))):
        row_ix = build_indices([len(row) - 1], [1], [1])  # its first segment is the whole row
        first = PackedAttention(row_ix.cu_seqlens_q[:2], row_ix.cu_seqlens_k[:2], len(row),
                                len(row), row_ix.kv_index[:len(row)], "sdpa")
        out = first.attend(q[row], k[row], v[row])
        keep = torch.isin(row, queries)  # the prompt's own queries are computed once (chosen)
        gk, gv = torch.autograd.grad(out[keep], (k, v), upstream[row][keep])
        expected_dk += gk
        expected_dv += gv
    torch.testing.assert_close(dk, expected_dk, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dv, expected_dv, rtol=1e-5, atol=1e-6)
    assert dk[:P].abs().sum() > 0


def test_errors():
    ix = build_indices([4], [2], [2])
    packed = PackedAttention.from_batch(ix, backend="sdpa")
    q, k, v = random_qkv(8, 4, 2)
    with pytest.raises(ValueError, match="expects 8 tokens"):
        packed.attend(q[:7], k[:7], v[:7])
    with pytest.raises(ValueError, match="not a multiple"):
        packed.attend(q[:, :3], k, v)
    with pytest.raises(ValueError, match="unknown attention backend"):
        PackedAttention.from_batch(ix, backend="fast")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="not available on cpu; available: \\['sdpa'\\]"):
            PackedAttention.from_batch(ix, backend="flash_attn").attend(q, k, v)
        assert available_backends("cpu") == ["sdpa"]


def test_registered_implementation_behaves_like_sdpa_outside_packed_forwards():
    """Padding masks and generation still work with the implementation switched on."""
    tokenizer = tiny_tokenizer("qwen2_vl")
    stock = tiny_model("qwen2_vl", tokenizer, attn_implementation="sdpa")
    ours = tiny_model("qwen2_vl", tokenizer, attn_implementation="sdpa")
    ours.set_attn_implementation({"text_config": register()})
    assert ours.config.text_config._attn_implementation == ATTENTION_NAME
    assert ours.config.vision_config._attn_implementation == "sdpa"
    ids = torch.randint(20, len(tokenizer), (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    a = stock(input_ids=ids, attention_mask=mask).logits
    b = ours(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], rtol=1e-5, atol=1e-6)
    gen = dict(max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(stock.generate(input_ids=ids, attention_mask=mask, **gen),
                       ours.generate(input_ids=ids, attention_mask=mask, **gen))


def test_packed_call_rejects_sliding_window_and_batches():
    from tpo_fast.attention.hf import prefix_shared_attention_forward

    ix = build_indices([4], [2], [2])
    packed = PackedAttention.from_batch(ix, backend="sdpa")
    q, k, v = (t.detach().transpose(0, 1)[None] for t in random_qkv(8, 4, 4))
    module = torch.nn.Module()
    with pytest.raises(NotImplementedError, match="sliding-window"):
        prefix_shared_attention_forward(module, q, k, v, None, sliding_window=4,
                                        **{PACKED_KWARG: packed})
    with pytest.raises(ValueError, match="batch size 1, got 2"):
        prefix_shared_attention_forward(module, q.expand(2, -1, -1, -1), k, v, None,
                                        **{PACKED_KWARG: packed})
    out, weights = prefix_shared_attention_forward(module, q, k, v, None, **{PACKED_KWARG: packed})
    assert out.shape == (1, 8, 4, 8) and weights is None


# ---- GPU: every available backend in bf16 against the float32 naive attention --------------------

def _gpu_backends():
    return available_backends("cuda") if torch.cuda.is_available() else []


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "flex", "torch_varlen", "flash_attn"])
@pytest.mark.parametrize("p, c, r", [([1], [1], [1]), ([1025, 97, 300], [63, 1, 256],
                                                          [1, 97, 256])])
def test_cuda_backend_matches_naive(backend, p, c, r):
    if backend not in _gpu_backends():
        pytest.skip(f"{backend} not installed")
    ix = build_indices(p, c, r)
    packed = PackedAttention.from_batch(ix, backend=backend, device="cuda")
    q, k, v = random_qkv(ix.num_tokens, 8, 2, d=64, dtype=torch.bfloat16, device="cuda")
    truth = naive_prefix_shared_attention(packed, q, k, v)
    out = packed.attend(q, k, v).float()
    g = torch.randn_like(truth)
    grads = torch.autograd.grad(out, (q, k, v), g)
    true_grads = torch.autograd.grad(truth, (q, k, v), g)
    # The bf16 dense naive attention's own error is the yardstick.
    dense = PackedAttention.from_batch(ix, backend="sdpa", device="cuda").attend(q, k, v).float()
    dense_grads = torch.autograd.grad(dense, (q, k, v), g)
    assert (out - truth).abs().max() <= 2 * (dense - truth).abs().max() + 1e-3
    for a, b, d in zip(grads, true_grads, dense_grads):
        assert (a.float() - b.float()).abs().max() <= 2 * (d.float() - b.float()).abs().max() + 1e-3
