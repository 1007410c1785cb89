"""The one prefetcher (``tpo_fast.prefetch``) and the one tensor walker (``tpo_fast.tensor_tree``)
that the trainer, ``VideoLoader``, ``PackedBatch`` and ``PreferenceModel`` share."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from tpo_fast.packing import pack_pairs
from tpo_fast.prefetch import Prefetcher
from tpo_fast.tensor_tree import map_tensors, move_tensors


def test_map_tensors_reaches_every_tensor_and_keeps_everything_else():
    a, b, c = torch.zeros(2), torch.ones(3), torch.arange(4)
    obj = {"x": a, "videos": [{"pixels": b, "ts": [0.5, 1.0], "name": "v"}, None],
           "pair": (c, 7)}
    out = map_tensors(lambda t: t + 1, obj)
    assert set(out) == {"x", "videos", "pair"} and isinstance(out["pair"], tuple)
    torch.testing.assert_close(out["x"], a + 1)
    torch.testing.assert_close(out["videos"][0]["pixels"], b + 1)
    torch.testing.assert_close(out["pair"][0], c + 1)
    assert out["videos"][0]["ts"] == [0.5, 1.0] and out["videos"][0]["name"] == "v"
    assert out["videos"][1] is None and out["pair"][1] == 7
    torch.testing.assert_close(obj["x"], a)  # the input is not modified


def test_packed_batch_to_moves_the_video_tensors_too():
    videos = [{"pixel_values_videos": torch.zeros(2, 3), "grid": [torch.ones(1, 3)],
               "frame_timestamps": [0.0, 0.5]}]
    batch = pack_pairs([[1, 2, 3]], [[4]], [[5, 6]], videos=videos)
    moved = batch.to("meta")
    assert moved.input_ids.device.type == "meta" and moved.logit_index.device.type == "meta"
    assert moved.videos[0]["pixel_values_videos"].device.type == "meta"
    assert moved.videos[0]["grid"][0].device.type == "meta"
    assert moved.videos[0]["frame_timestamps"] == [0.0, 0.5]
    assert batch.input_ids.device.type == "cpu"
    assert move_tensors([{"a": torch.zeros(1)}], "meta")[0]["a"].device.type == "meta"


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_prefetcher_keeps_order_bounds_lookahead_and_passes_errors(workers):
    started: list[int] = []
    lock = threading.Lock()

    def fn(i):
        with lock:
            started.append(i)
        time.sleep(0.002 * ((7 * i) % 5))  # finish out of order
        if i == 4:
            raise KeyError(i)
        return i * i

    ahead = 3
    got, errors = [], []
    for taken, (i, future) in enumerate(Prefetcher(fn, range(10), workers=workers,
                                                    ahead=ahead)):
        with lock:
            in_flight = max(started) - taken if started else 0
        # never more than `ahead` items started beyond the one taken (none with workers=0)
        assert in_flight <= (0 if workers == 0 else ahead - 1)
        try:
            got.append((i, future.result()))
        except KeyError as exc:
            errors.append((i, exc.args[0]))
    assert got == [(i, i * i) for i in range(10) if i != 4]
    assert errors == [(4, 4)]
    assert sorted(started) == list(range(10))


def test_prefetcher_close_cancels_what_has_not_started():
    gate = threading.Event()
    started = []

    def fn(i):
        started.append(i)
        gate.wait(5)
        return i

    loads = Prefetcher(fn, range(100), workers=1, ahead=4)
    item, future = next(loads)
    gate.set()
    assert (item, future.result()) == (0, 0)
    loads.close()
    assert len(started) <= 4  # the 96 never submitted and the queued ones never ran
    with pytest.raises(StopIteration):
        next(loads)
