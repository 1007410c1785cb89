"""Every collective of the sequence-parallel code gets tensors on the model's device.

On GPUs the SP group is NCCL, which rejects a host tensor; gloo (every other SP test) takes
any, so it cannot see a tensor made without a device. Here the collectives are fakes that
reject a tensor whose device differs from the model's, and the process's default device is
``meta`` while the model's tensors are on the CPU: a tensor made without a device lands on
``meta`` and is rejected, as a host tensor is by NCCL while the model is on a GPU.
The fake group is rank 0 of 2; the other rank holds the same values as this one.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tpo_fast import sequence_parallel as sp_mod
from tpo_fast.sequence_parallel import SequenceParallel, encode_split, gather_scored, shard_plan

MODEL_DEVICE = torch.device("cpu")
SIZE = 2


class DeviceCheckingCollectives:
    """all_gather / all_reduce / get_rank of a group of ``SIZE`` ranks (this one rank 0, the
    other a copy of it) that raise on a tensor off the model's device."""

    def __init__(self):
        self.calls = []

    def _check(self, name, *tensors):
        for t in tensors:
            if t.device != MODEL_DEVICE:
                raise RuntimeError(f"{name}: a tensor on {t.device}, the model is on "
                                   f"{MODEL_DEVICE} (NCCL: 'Tensors must be CUDA')")
        self.calls.append(name)

    def all_gather(self, outputs, tensor, group=None):
        self._check("all_gather", tensor, *outputs)
        for out in outputs:
            out.copy_(tensor)

    def all_reduce(self, tensor, group=None):
        self._check("all_reduce", tensor)
        tensor.mul_(SIZE)

    def get_rank(self, group=None):
        return 0


class FrameAdapter:
    """The three calls encode_split makes on a family adapter: four frames a video, each frame
    3 rows of width 5 (a frozen-tower stand-in: rows = frame · weight)."""

    def __init__(self):
        self.weight = torch.randn(4, 5, device=MODEL_DEVICE, requires_grad=True)

    def frame_units(self, videos):
        return [(v, f) for v in range(len(videos)) for f in range(videos[v].shape[0])]

    def unit_features(self, units):
        frames = torch.stack([self.videos[v][f] for v, f in units])  # [u, 3, 4]
        return (frames @ self.weight).reshape(-1, 5)

    def assemble_features(self, rows, videos):
        return rows


@pytest.fixture
def collectives(monkeypatch):
    fake = DeviceCheckingCollectives()
    monkeypatch.setattr(sp_mod, "dist", fake)
    return fake


def test_vision_rows_gather_on_the_model_device(collectives):
    adapter = FrameAdapter()
    adapter.videos = [torch.randn(4, 3, 4, device=MODEL_DEVICE) for _ in range(2)]
    group = SequenceParallel(group=None, size=SIZE, rank=0, ulysses=None)
    with torch.device("meta"):  # where a tensor made without a device goes
        rows = encode_split(adapter, adapter.videos, group)
        rows.sum().backward()
    assert rows.device == MODEL_DEVICE
    assert rows.shape == (2 * 4 * 3, 5)  # 8 frames, this rank's 4 twice (the other's copy)
    assert collectives.calls == ["all_gather", "all_gather", "all_reduce"]
    # backward: the rows' gradient summed over the 2 ranks
    expected = torch.stack(adapter.videos)[0].reshape(-1, 4).sum(0)[:, None].expand(4, 5) * SIZE
    torch.testing.assert_close(adapter.weight.grad, expected)


def test_scored_tokens_gather_on_the_model_device(collectives):
    T, N = 23, 7
    batch = SimpleNamespace(input_ids=torch.arange(T), position_ids=torch.arange(T),
                            logit_index=torch.tensor([1, 3, 5, 11, 12, 13, 20]))
    plan = shard_plan(batch, SIZE, 0, video_token_id=999)
    group = SequenceParallel(group=None, size=SIZE, rank=0, ulysses=None)
    local = torch.randn(len(plan.scored), device=MODEL_DEVICE, requires_grad=True)
    with torch.device("meta"):
        joined = gather_scored(local, plan, group)
        joined.sum().backward()
    assert joined.shape == (N,) and joined.device == MODEL_DEVICE
    torch.testing.assert_close(joined[plan.scored], local.detach())
    assert collectives.calls == ["all_gather"]
    torch.testing.assert_close(local.grad, torch.ones_like(local))
