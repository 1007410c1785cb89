"""load_video_inputs (plan precedence, errors) and VideoLoader (order, skipping, prefetch)."""

import logging
import threading
from types import SimpleNamespace as NS

import pytest
import torch

from tpo_fast.synthetic.videos import frame_number, write_index_video
from tpo_fast.video import (
    FramePlan,
    VideoDecodeError,
    VideoInfo,
    VideoLoader,
    load_video_inputs,
    probe,
)
from tpo_fast.video import loader as loader_module

CFG = NS(model_type="qwen2_5_vl", vision_config=NS(patch_size=4, spatial_merge_size=2,
                                                    temporal_patch_size=2))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_index_video(tmp_path_factory.mktemp("ld") / "v.mp4", 30, fps=10.0, gop=6)


def raw(path, plan_kwargs):
    """Decoded frames through load_video_inputs with an identity-like config (no resize)."""
    cfg = NS(model_type="llava_onevision", vision_config=NS(image_size=48))
    return load_video_inputs(path, cfg, **plan_kwargs)


def test_plan_precedence(video):
    info = probe(video)
    seg = FramePlan.segment(info, 1.0, 2.0, 4)
    _, plan = raw(video, dict(num_frames=5, plan=seg, frame_indices=[7, 3]))
    assert plan.kind == "explicit" and plan.indices == (7, 3)
    _, plan = raw(video, dict(num_frames=5, plan=seg))
    assert plan is seg
    _, plan = raw(video, dict(num_frames=5))
    assert plan == FramePlan.uniform(info, 5)
    with pytest.raises(ValueError, match="num_frames, frame_indices or plan"):
        raw(video, {})


def test_inputs_hold_the_planned_frames(video):
    cfg = NS(model_type="qwen3_vl", vision_config=NS(patch_size=4, spatial_merge_size=2,
                                                     temporal_patch_size=1))
    inputs, plan = load_video_inputs(video, cfg, frame_indices=[29, 4, 4], size=(48, 64))
    x = inputs["pixel_values_videos"].view(3, 6, 8, 2, 2, 3, 1, 4, 4)  # t, bh, bw, mh, mw, c
    frames = x.permute(0, 1, 3, 7, 2, 4, 8, 5, 6).reshape(3, 48, 64, 3)
    frames = ((frames * 0.5 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8)
    assert [frame_number(f) for f in frames] == [29, 4, 4]
    assert inputs["frame_timestamps"] == pytest.approx([2.9, 0.4, 0.4])


def test_sampling_fps_reaches_qwen2_5(video):
    info = probe(video)
    plan = FramePlan.segment(info, 0.0, 2.0, 5)  # frames 0, 5, 10, 15, 20: 2 fps
    inputs, _ = load_video_inputs(video, CFG, plan=plan, size=(16, 16))
    torch.testing.assert_close(inputs["second_per_grid_ts"], torch.tensor([2 / 2.0]))


def test_plan_from_another_video_is_checked(video):
    other = VideoInfo("o.mp4", 10.0, 100, 10.0, "h264", 64, 48)
    with pytest.raises(ValueError, match="outside"):
        load_video_inputs(video, CFG, plan=FramePlan.uniform(other, 4), size=(16, 16))


def test_zero_length_video_is_a_decode_error(video, monkeypatch):
    empty = VideoInfo(str(video), 10.0, 0, 0.0, "h264", 64, 48)
    monkeypatch.setattr(loader_module, "probe", lambda path: empty)
    with pytest.raises(VideoDecodeError, match="zero-length"):
        load_video_inputs(video, CFG, num_frames=4)


def test_missing_video_is_a_decode_error(tmp_path):
    with pytest.raises(VideoDecodeError, match="file not found"):
        load_video_inputs(tmp_path / "gone.mp4", CFG, num_frames=4)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_loader_keeps_order_and_skips_unreadable_videos(video, tmp_path, workers, caplog):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 50)
    requests = [(video, [1]), (tmp_path / "gone.mp4", [0]), (video, [7, 2]), (bad, [0]),
                (video, [29])]

    def fn(req):
        from tpo_fast.video import decode

        return decode(req[0], req[1])

    with caplog.at_level(logging.WARNING, logger="tpo_fast.video.loader"):
        loader = VideoLoader(requests, fn, num_workers=workers, prefetch=2)
        got = [(req[1], [frame_number(f) for f in out]) for req, out in loader]
    assert got == [([1], [1]), ([7, 2], [7, 2]), ([29], [29])]
    assert [r for r, _ in loader.skipped] == [requests[1], requests[3]]
    assert "file not found" in loader.skipped[0][1] and str(bad) in loader.skipped[1][1]
    assert loader.num_loaded == 3
    assert any("skipped 2 of 5" in r.message for r in caplog.records)


@pytest.mark.parametrize("workers", [0, 2])
def test_other_errors_propagate(workers):
    def fn(x):
        if x == 2:
            raise KeyError("boom")
        return x

    seen = []
    with pytest.raises(KeyError, match="boom"):
        for _, out in VideoLoader(range(5), fn, num_workers=workers):
            seen.append(out)
    assert seen == [0, 1]


def test_prefetch_bounds_the_work_ahead():
    pulled, lock = [], threading.Lock()

    def requests():
        for i in range(20):
            with lock:
                pulled.append(i)
            yield i

    loader = VideoLoader(requests(), lambda x: x * x, num_workers=2, prefetch=3)
    for req, out in loader:
        assert out == req * req
        with lock:
            assert len(pulled) <= req + 1 + 3  # consumed + at most `prefetch` in flight
    assert len(pulled) == 20


def test_loader_argument_errors():
    with pytest.raises(ValueError):
        VideoLoader([], lambda x: x, prefetch=0)
    with pytest.raises(ValueError):
        VideoLoader([], lambda x: x, num_workers=-1)


@pytest.mark.gpu
def test_pin_memory_with_cuda(video):
    """Unvalidated without a GPU."""
    loader = VideoLoader([video], lambda p: load_video_inputs(p, CFG, num_frames=4,
                                                              size=(16, 16))[0])
    (_, inputs), = list(loader)
    assert loader.pin_memory and inputs["pixel_values_videos"].is_pinned()
