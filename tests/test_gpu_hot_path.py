"""GPU checks of the hot path (skipped without CUDA):

* every installed flash-attn interface (FA2, FA3, FA4), called the way backends.py calls it,
  equals the float32 naive attention as closely as bf16 sdpa does, values and gradients;
* no host sync under ``torch.cuda.set_sync_debug_mode("error")``: the packed attention of
  every backend with the loss and backward, and a whole micro-step (vision tower, packed
  forward, fused loss, backward) of a tiny model;
* FlexAttention with the segment-built block mask equals the naive attention at a long-ish length.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from tpo_fast.attention import PackedAttention, available_backends
from tpo_fast.attention.backends import FLASH_INTERFACES, load_flash_varlen
from tpo_fast.attention.naive import naive_prefix_shared_attention
from tpo_fast.packing import build_indices

pytestmark = pytest.mark.gpu

SHAPES = [([1], [1], [1]), ([1025, 97, 300], [63, 1, 256], [1, 97, 256])]


def _qkv(T, hq=8, hkv=2, d=64, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    make = lambda h: torch.randn(T, h, d, device="cuda", generator=g,  # noqa: E731
                                 dtype=torch.bfloat16).requires_grad_()
    return make(hq), make(hkv), make(hkv)


def _errors_vs_naive(packed, dense, q, k, v):
    truth = naive_prefix_shared_attention(packed, q, k, v)
    g = torch.randn_like(truth)
    true_grads = torch.autograd.grad(truth, (q, k, v), g)
    out = packed.attend(q, k, v).float()
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref = dense.attend(q, k, v).float()
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    errs = [(out - truth).abs().max()] + [(a.float() - b.float()).abs().max()
                                          for a, b in zip(grads, true_grads)]
    bounds = [(ref - truth).abs().max()] + [(a.float() - b.float()).abs().max()
                                            for a, b in zip(ref_grads, true_grads)]
    return errs, bounds


@pytest.mark.parametrize("interface", [name for name, _ in FLASH_INTERFACES])
@pytest.mark.parametrize("p, c, r", SHAPES)
def test_each_flash_interface_equals_naive(interface, p, c, r):
    flash = load_flash_varlen(interface)
    if flash is None:
        pytest.skip(f"{interface} ({dict(FLASH_INTERFACES)[interface]}) is not installed")
    ix = build_indices(p, c, r)
    packed = PackedAttention.from_batch(ix, backend="flash_attn", device="cuda")
    packed.flash = flash
    dense = PackedAttention.from_batch(ix, backend="sdpa", device="cuda")
    errs, bounds = _errors_vs_naive(packed, dense, *_qkv(ix.num_tokens))
    for e, b in zip(errs, bounds):
        assert e <= 2 * b + 1e-3, (interface, [float(x) for x in errs],
                                   [float(x) for x in bounds])


@pytest.mark.parametrize("lens", [([3000, 40], [300, 1], [200, 500])])
def test_flex_with_the_segment_block_mask_equals_naive(lens):
    ix = build_indices(*lens)
    packed = PackedAttention.from_batch(ix, backend="flex", device="cuda")
    dense = PackedAttention.from_batch(ix, backend="sdpa", device="cuda")
    errs, bounds = _errors_vs_naive(packed, dense, *_qkv(ix.num_tokens))
    for e, b in zip(errs, bounds):
        assert e <= 2 * b + 1e-3, ([float(x) for x in errs], [float(x) for x in bounds])


@contextlib.contextmanager
def sync_errors():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _pinned_on_cuda(ix, backend):
    """PackedAttention on the GPU from pinned host indices (non-blocking copies)."""
    pinned = dataclasses.replace(ix, cu_seqlens_q=ix.cu_seqlens_q.pin_memory(),
                                 cu_seqlens_k=ix.cu_seqlens_k.pin_memory(),
                                 kv_index=ix.kv_index.pin_memory())
    return PackedAttention.from_batch(pinned, backend=backend, device="cuda")


@pytest.mark.parametrize("backend", ["sdpa", "flex", "flash_attn"])
def test_attention_and_loss_do_not_sync(backend):
    """Building PackedAttention from pinned host indices, the attention, the fused loss (with
    check_inputs=False, the hot path's setting) and the backward: no host sync."""
    from tpo_fast.kernels import LossSpec, preference_loss

    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} not available")
    ix = build_indices([700, 33], [60, 1], [9, 120])
    n, N, V = ix.n_pairs, ix.target_index.shape[0], 1000
    q, k, v = _qkv(ix.num_tokens)
    weight = torch.randn(V, 8 * 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, V, (N,)).pin_memory()
    seq_id = ix.seq_id.pin_memory()
    logit_index = ix.logit_index.pin_memory()

    def step():
        packed = _pinned_on_cuda(ix, backend)
        out = packed.attend(q, k, v)  # [T, 8, 64] -> hidden [N, 512]
        hidden = out.reshape(ix.num_tokens, -1).index_select(
            0, logit_index.to("cuda", non_blocking=True))
        loss, _ = preference_loss(hidden, weight, targets.to("cuda", non_blocking=True),
                                  seq_id.to("cuda", non_blocking=True), None,
                                  LossSpec(beta=0.1, sft_weight=0.5), num_pairs=n,
                                  check_inputs=False)
        loss.backward()
        return loss

    step()  # compile / autotune outside the check
    with sync_errors():
        loss = step()
    assert torch.isfinite(loss)


def test_a_whole_micro_step_does_not_sync():
    """A tiny LLaVA-OneVision policy: pack on the host, pin, non-blocking copy, vision tower,
    packed forward, fused DPO+SFT loss, backward, all under sync_debug_mode("error")."""
    from tpo_fast.kernels import LossSpec, preference_loss

    from tpo_fast.data.packer import PairPacker
    from tpo_fast.models import PreferenceModel
    from tpo_fast.models.tiny import random_video, tiny_model, tiny_tokenizer

    family = "llava_onevision"
    tok = tiny_tokenizer(family)
    model = tiny_model(family, tok, dtype=torch.bfloat16).cuda()
    policy = PreferenceModel(model, attention_backend="auto")
    videos = [random_video(family, model.config, 4, seed=i) for i in range(2)]
    prompts = [policy.adapter.prompt_ids(tok, "what colour ?", v) for v in videos]
    chosen = [policy.adapter.response_ids(tok, t) for t in ("red", "blue and green")]
    rejected = [policy.adapter.response_ids(tok, t) for t in ("green green", "red")]
    ref = torch.tensor([[-3.0, -4.0], [-5.0, -2.0]])

    packer = PairPacker(policy.adapter)

    def step():
        batch = packer.pack(prompts, chosen, rejected, videos, ref_logps=ref).pin_memory()
        batch = batch.to(policy.device, non_blocking=True)
        hidden = policy.hidden_states(batch)
        loss, _ = preference_loss(hidden, policy.lm_head_weight(), batch.target_ids,
                                  batch.seq_id, batch.ref_logps,
                                  LossSpec(beta=0.1, sft_weight=0.5), num_pairs=batch.n_pairs,
                                  check_inputs=False)
        loss.backward()
        return loss

    step()
    with sync_errors():
        loss = step()
    assert torch.isfinite(loss)
