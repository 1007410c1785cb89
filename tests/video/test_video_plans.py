"""FramePlan: exact indices, timestamps, the duplicates policy, determinism and every error."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpo_fast.video import FramePlan, VideoInfo
from tpo_fast.video.plans import spread


def video(num_frames=100, fps=10.0):
    return VideoInfo(path="v.mp4", fps=fps, num_frames=num_frames,
                     duration=num_frames / fps if fps else 0.0, codec="h264", width=64,
                     height=48)


def test_uniform_spans_the_whole_video_with_rounded_even_spacing():
    plan = FramePlan.uniform(video(100), 4)
    assert plan.kind == "uniform"
    assert plan.indices == (0, 33, 66, 99)  # 0, 33, 66, 99 exactly: (k * 99 / 3)
    assert plan.timestamps == pytest.approx((0.0, 3.3, 6.6, 9.9))
    assert FramePlan.uniform(video(10), 4).indices == (0, 3, 6, 9)
    assert FramePlan.uniform(video(9), 3).indices == (0, 4, 8)
    assert FramePlan.uniform(video(8), 3).indices == (0, 4, 7)  # 3.5 rounds half up
    assert FramePlan.uniform(video(100), 1).indices == (0,)


def test_more_frames_than_exist_repeat_evenly():
    plan = FramePlan.uniform(video(3), 7)
    assert plan.indices == (0, 0, 1, 1, 1, 2, 2)
    seg = FramePlan.segment(video(100, fps=10.0), 1.0, 1.2, 5)  # frames 10, 11, 12
    assert seg.indices == (10, 11, 11, 12, 12)


def test_segment_takes_frames_whose_timestamps_lie_inside():
    info = video(100, fps=10.0)
    plan = FramePlan.segment(info, 2.05, 4.0, 3)  # frames 21..40 (2.1 s .. 4.0 s)
    assert plan.indices == (21, 31, 40)  # 21 + round(k * 19 / 2)
    assert all(2.05 <= t <= 4.0 for t in plan.timestamps)
    assert plan.params == {"t0": 2.05, "t1": 4.0, "n": 3}
    whole = FramePlan.segment(info, 0.0, info.duration, 100)
    assert whole.indices == tuple(range(100))


def test_complement_avoids_the_segment_and_spreads_over_both_sides():
    info = video(100, fps=10.0)
    plan = FramePlan.complement(info, 3.0, 6.0, 8)  # excludes frames 30..60
    outside = [i for i in range(100) if not 30 <= i <= 60]
    expected = tuple(outside[p] for p in spread(len(outside), 8))
    assert plan.indices == expected
    assert expected[0] == 0 and expected[-1] == 99
    assert not any(30 <= i <= 60 for i in plan.indices)
    assert any(i < 30 for i in plan.indices) and any(i > 60 for i in plan.indices)
    # A segment at the start: only frames after it.
    assert min(FramePlan.complement(info, 0.0, 5.0, 4).indices) == 51


def test_incomplete_is_a_sorted_deterministic_subset_of_the_segment():
    info = video(100, fps=10.0)
    seg = FramePlan.segment(info, 2.0, 8.0, 16)
    a = FramePlan.incomplete(info, 2.0, 8.0, 16, keep=0.5, seed=3)
    b = FramePlan.incomplete(info, 2.0, 8.0, 16, keep=0.5, seed=3)
    c = FramePlan.incomplete(info, 2.0, 8.0, 16, keep=0.5, seed=4)
    assert a == b and a.indices != c.indices
    assert len(a) == 8 and list(a.indices) == sorted(a.indices)
    assert set(a.indices) <= set(seg.indices)
    assert len(FramePlan.incomplete(info, 2.0, 8.0, 5, keep=0.1)) == 1
    assert FramePlan.incomplete(info, 2.0, 8.0, 16, keep=1.0).indices == seg.indices


def test_downsample_thins_the_uniform_plan():
    info = video(100)
    full = FramePlan.uniform(info, 32)
    plan = FramePlan.downsample(info, 32, 4)
    assert plan.indices == full.indices[::4] and len(plan) == 8
    assert FramePlan.downsample(info, 32, 1).indices == full.indices
    assert plan.params == {"n": 32, "factor": 4}


def test_explicit_keeps_order_and_duplicates():
    plan = FramePlan.explicit(video(10), [9, 0, 0, 4])
    assert plan.indices == (9, 0, 0, 4)
    assert plan.timestamps == pytest.approx((0.9, 0.0, 0.0, 0.4))


def test_to_dict_is_json_provenance_and_round_trips():
    info = video(100)
    plan = FramePlan.incomplete(info, 1.0, 5.0, 8, seed=7)
    d = json.loads(json.dumps(plan.to_dict()))
    assert set(d) == {"kind", "indices", "timestamps", "params"}
    assert d["params"] == {"t0": 1.0, "t1": 5.0, "n": 8, "keep": 0.5, "seed": 7}
    again = FramePlan.from_dict(d, info)
    assert again == plan and again.info is info and hash(again) == hash(plan)


@pytest.mark.parametrize("make, match", [
    (lambda i: FramePlan.uniform(i, 0), "at least one frame"),
    (lambda i: FramePlan.segment(i, 3.0, 3.0, 4), "empty segment"),
    (lambda i: FramePlan.segment(i, 5.0, 2.0, 4), "empty segment"),
    (lambda i: FramePlan.segment(i, -1.0, 2.0, 4), "outside the video"),
    (lambda i: FramePlan.segment(i, 8.0, 12.0, 4), "outside the video"),
    (lambda i: FramePlan.segment(i, 20.0, 30.0, 4), "outside the video"),
    (lambda i: FramePlan.segment(i, 1.01, 1.09, 4), "no frame"),
    (lambda i: FramePlan.segment(i, 1.0, 2.0, 0), "at least one frame"),
    (lambda i: FramePlan.complement(i, 0.0, 10.0, 4), "complement is empty"),
    (lambda i: FramePlan.incomplete(i, 1.0, 2.0, 4, keep=0.0), "keep"),
    (lambda i: FramePlan.incomplete(i, 1.0, 2.0, 4, keep=1.5), "keep"),
    (lambda i: FramePlan.downsample(i, 8, 0), "factor"),
    (lambda i: FramePlan.downsample(i, 8, 1.5), "factor"),
    (lambda i: FramePlan.explicit(i, [0, 100]), "outside"),
    (lambda i: FramePlan.explicit(i, [-1]), "outside"),
    (lambda i: FramePlan.explicit(i, []), "at least one"),
])
def test_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make(video(100, fps=10.0))


@pytest.mark.parametrize("info", [video(0), video(10, fps=0.0)])
def test_zero_length_video_is_an_error_for_every_plan(info):
    for make in (lambda: FramePlan.uniform(info, 4), lambda: FramePlan.segment(info, 0, 1, 4),
                 lambda: FramePlan.complement(info, 0, 1, 4),
                 lambda: FramePlan.downsample(info, 4, 2), lambda: FramePlan.explicit(info, [0])):
        with pytest.raises(ValueError, match="zero-length"):
            make()


def test_half_frame_slack_at_the_end():
    info = video(100, fps=10.0)  # 10 s
    assert FramePlan.segment(info, 9.0, 10.04, 2).indices == (90, 99)
    with pytest.raises(ValueError, match="outside"):
        FramePlan.segment(info, 9.0, 10.06, 2)


@given(count=st.integers(1, 500), n=st.integers(1, 300))
def test_spread_properties(count, n):
    pos = spread(count, n)
    assert len(pos) == n and pos[0] == 0 and pos.min() >= 0 and pos.max() <= count - 1
    assert np.all(np.diff(pos) >= 0)
    if n > 1:
        assert pos[-1] == count - 1
        exact = np.arange(n) * (count - 1) / (n - 1)
        assert np.all(np.abs(pos - exact) <= 0.5)
    if n <= count:
        assert len(set(pos.tolist())) == n  # no duplicates unless more frames than exist


@given(n_frames=st.integers(2, 400), fps=st.sampled_from([1.0, 7.5, 24.0, 29.97, 30.0]),
       a=st.floats(0, 1), b=st.floats(0, 1), n=st.integers(1, 64))
def test_segment_and_complement_partition_property(n_frames, fps, a, b, n):
    info = video(n_frames, fps)
    t0, t1 = sorted((a * info.duration, b * info.duration))
    inside = [i for i in range(n_frames) if t0 - 1e-9 <= i / fps <= t1 + 1e-9]
    if t1 <= t0 or not inside:
        with pytest.raises(ValueError):
            FramePlan.segment(info, t0, t1, n)
        return
    seg = FramePlan.segment(info, t0, t1, n)
    assert set(seg.indices) <= set(inside) and seg.indices[0] == inside[0]
    if len(inside) < n_frames:
        comp = FramePlan.complement(info, t0, t1, n)
        assert not set(comp.indices) & set(inside)
        assert all(t == pytest.approx(i / fps) for i, t in zip(comp.indices, comp.timestamps))
