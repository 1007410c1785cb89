"""Lengths come from the host, never from a device tensor; packed indices are checked where they
are built; ``PackedBatch.to`` moves the video tensors.

The meta device stands in for a GPU here: reading a meta tensor's value (``int()``,
``.item()``, ``.tolist()``, a data-dependent shape) raises, so code that runs on meta tensors
would not sync a CUDA stream either.
"""

import numpy as np
import pytest
import torch

from tpo_fast.attention import PackedAttention
from tpo_fast.attention.block_mask import packed_block_mask
from tpo_fast.packing import batch as batch_module
from tpo_fast.packing import build_indices, pack_pairs


def test_packed_attention_reads_no_device_values():
    ix = build_indices([5, 9, 1], [3, 1, 2], [2, 4, 1])
    packed = PackedAttention.from_batch(ix, backend="sdpa", device="meta")
    assert packed.cu_seqlens_q.device.type == "meta"
    assert (packed.num_tokens, packed.num_keys) == (ix.num_tokens, ix.num_keys)
    q = torch.randn(ix.num_tokens, 4, 8, device="meta", requires_grad=True)
    k = torch.randn(ix.num_tokens, 2, 8, device="meta", requires_grad=True)
    v = torch.randn(ix.num_tokens, 2, 8, device="meta", requires_grad=True)
    out = packed.attend(q, k, v)  # dense mask built on the device from host lengths
    out.sum().backward()
    assert out.shape == q.shape and k.grad.shape == k.shape
    bm = packed_block_mask(ix.host_cu_seqlens_q, ix.host_cu_seqlens_k, "meta")
    assert bm.kv_num_blocks.device.type == "meta"
    with pytest.raises((RuntimeError, NotImplementedError)):
        int(packed.cu_seqlens_q[-1])  # the meta device does refuse value reads


def test_host_offsets_equal_the_tensors_and_survive_to():
    video = {"pixel_values_videos": torch.randn(1, 2, 3, 4, 4), "video_grid_thw":
             torch.tensor([[1, 2, 2]]), "frame_timestamps": [0.0, 0.5]}
    b = pack_pairs([[1, 2, 3], [4, 5]], [[6], [7, 8]], [[9, 10], [11]], videos=[video, video])
    assert b.host_cu_seqlens_q == tuple(b.cu_seqlens_q.tolist())
    assert b.host_cu_seqlens_k == tuple(b.cu_seqlens_k.tolist())
    moved = b.to("meta")
    assert moved.input_ids.device.type == "meta" and moved.num_tokens == b.num_tokens
    for v in moved.videos:
        assert v["pixel_values_videos"].device.type == "meta"
        assert v["video_grid_thw"].device.type == "meta"
        assert v["frame_timestamps"] == [0.0, 0.5]
    assert b.videos[0]["pixel_values_videos"].device.type == "cpu"  # the original is kept
    packed = PackedAttention.from_batch(moved, backend="sdpa", device="meta")
    assert packed.num_tokens == b.num_tokens


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs CUDA")
def test_pin_memory_pins_indices_and_videos():
    b = pack_pairs([[1, 2]], [[3]], [[4]], videos=[{"pixel_values_videos": torch.zeros(2)}])
    p = b.pin_memory()
    assert p.input_ids.is_pinned() and p.videos[0]["pixel_values_videos"].is_pinned()


@pytest.mark.parametrize("breakage, message", [
    (lambda o: o["kv_index"].__setitem__(0, 10_000), "kv_index"),
    (lambda o: o["cu_seqlens_q"].__setitem__(1, 2), "cu_seqlens_q"),
    (lambda o: o.__setitem__("cu_seqlens_k", o["cu_seqlens_k"].astype(np.int64)), "int32"),
    (lambda o: o["seq_id"].__setitem__(0, 7), "seq_id"),
    (lambda o: o["logit_index"].__setitem__(-1, -1), "logit_index"),
])
def test_broken_indices_are_caught_on_the_host(monkeypatch, breakage, message):
    real = batch_module.get_backend

    class Broken:
        def __init__(self, inner):
            self.inner = inner

        def build_indices(self, p, c, r):
            out = self.inner.build_indices(p, c, r)
            breakage(out)
            return out

    monkeypatch.setattr(batch_module, "get_backend", lambda name: Broken(real(name)))
    with pytest.raises(ValueError, match=message):
        build_indices([4, 3], [2, 1], [1, 2])
