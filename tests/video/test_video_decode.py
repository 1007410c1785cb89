"""Decoders on synthetic index videos (H.264 with B-frames, VP9): every plan decodes to exactly
its frames with PyAV on both codecs and DALI CPU on VP9; probing, timestamps, errors."""

import logging
import os

import numpy as np
import pytest
import torch

from tpo_fast.video import FramePlan, VideoDecodeError, decode, decode_many, probe, pyav_backend
from tpo_fast.video import decoders as decode_module
from tpo_fast.video.dali_backend import dali_available, decode_dali
from tpo_fast.video.synthetic import frame_number, write_index_video

N, FPS, GOP = 40, 10.0, 8
needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia-dali not installed")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {
        "h264": write_index_video(root / "index.mp4", N, fps=FPS, codec="h264", gop=GOP),
        "vp9": write_index_video(root / "index.webm", N, fps=FPS, codec="vp9", gop=GOP),
    }


def numbers(frames: torch.Tensor) -> list[int]:
    return [frame_number(f) for f in frames]


def plans(info):
    yield FramePlan.uniform(info, 8)
    yield FramePlan.uniform(info, 50)  # more than exist: duplicates
    yield FramePlan.segment(info, 1.05, 2.6, 6)
    yield FramePlan.complement(info, 1.0, 3.0, 7)
    yield FramePlan.incomplete(info, 0.5, 3.5, 12, seed=1)
    yield FramePlan.downsample(info, 16, 4)
    yield FramePlan.explicit(info, [39, 0, 17, 17, 8, 7, 39, 1])


def test_synthetic_videos_have_several_gops_and_b_frames(videos):
    index = pyav_backend.frame_index(videos["h264"])
    assert len(index.keyframe_pts) == N // GOP  # seeking has keyframes to go to
    import av

    with av.open(videos["h264"]) as c:
        pts = [p.pts for p in c.demux(c.streams.video[0]) if p.size]
    assert pts != sorted(pts)  # decode order differs from presentation order (B-frames)


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_probe(videos, codec):
    info = probe(videos[codec])
    assert (info.num_frames, info.fps, info.duration) == (N, FPS, N / FPS)
    assert (info.codec, info.width, info.height) == (codec, 64, 48)
    assert info.path == os.fspath(videos[codec])


@pytest.mark.parametrize("codec, backend", [("h264", "pyav"), ("vp9", "pyav"),
                                            pytest.param("vp9", "dali_cpu", marks=needs_dali),
                                            ("h264", "auto"), ("vp9", "auto")])
def test_every_plan_decodes_to_exactly_its_frames(videos, codec, backend):
    info = probe(videos[codec])
    for plan in plans(info):
        frames = decode(info, plan.indices, backend=backend)
        assert frames.dtype == torch.uint8 and frames.shape == (len(plan), 48, 64, 3)
        assert numbers(frames) == list(plan.indices), plan.kind


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_random_index_sets_pyav(videos, codec):
    rng = np.random.default_rng(0)
    for _ in range(25):
        idx = rng.integers(0, N, size=int(rng.integers(1, 10))).tolist()
        assert numbers(decode(videos[codec], idx, backend="pyav", threads=2)) == idx


def test_pyav_seeks_instead_of_decoding_everything(videos, monkeypatch):
    decoded = []
    run = pyav_backend._decode_run

    def counting_run(frames, *args):
        def counted():
            for f in frames:
                decoded.append(f.pts)
                yield f
        return run(counted(), *args)

    monkeypatch.setattr(pyav_backend, "_decode_run", counting_run)
    assert numbers(decode(videos["h264"], [33, 39], backend="pyav")) == [33, 39]
    assert len(decoded) <= GOP  # only the last GOP (frames 32..39)
    decoded.clear()
    assert numbers(decode(videos["h264"], [1, 38], backend="pyav")) == [1, 38]
    assert len(decoded) <= 2 + GOP  # first frames, then a seek to the last GOP


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_plan_timestamps_are_the_frames_presentation_times(videos, codec):
    index = pyav_backend.frame_index(videos[codec])
    import av

    with av.open(videos[codec]) as c:
        base = c.streams.video[0].time_base
    info = index.info
    plan = FramePlan.segment(info, 1.0, 3.0, 9)
    for i, t in zip(plan.indices, plan.timestamps):
        assert float((int(index.pts[i]) - int(index.pts[0])) * base) == pytest.approx(t, abs=1e-3)


@needs_dali
def test_dali_cpu_matches_pyav_pixels(videos):
    idx = [0, 9, 20, 39]
    a = decode(videos["vp9"], idx, backend="pyav").float()
    b = decode(videos["vp9"], idx, backend="dali_cpu").float()
    assert (a - b).abs().mean() < 2.0  # same frames; colour conversion may round differently


@needs_dali
def test_decode_many_batches_videos_through_dali(videos, tmp_path):
    other = write_index_video(tmp_path / "short.webm", 12, codec="vp9", gop=4)
    out = decode_many([videos["vp9"], other], [[5, 1, 30], [11, 0]], backend="dali_cpu")
    assert [numbers(o) for o in out] == [[5, 1, 30], [11, 0]]


def test_auto_backend_choice(videos, monkeypatch, caplog):
    """On a CPU target auto is PyAV for every codec (measured faster than DALI's CPU decoder);
    on a CUDA target DALI on the GPU, or PyAV with one warning when DALI does not import."""
    h264, vp9 = probe(videos["h264"]), probe(videos["vp9"])
    assert decode_module.choose_backend(h264) == "pyav"
    assert decode_module.choose_backend(vp9) == "pyav"
    assert decode_module.choose_backend(vp9, "cpu") == "pyav"
    monkeypatch.setattr(decode_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(decode_module, "dali_available", lambda: True)
    assert decode_module.choose_backend(h264, "cuda:1") == "dali_gpu"
    monkeypatch.setattr(decode_module, "dali_available", lambda: False)
    monkeypatch.setattr(decode_module, "_warned_no_dali", False)
    with caplog.at_level(logging.WARNING, logger="tpo_fast.video.decoders"):
        assert decode_module.choose_backend(vp9, "cuda:1") == "pyav"
        assert decode_module.choose_backend(h264, "cuda:1") == "pyav"
    assert sum("does not import" in r.message for r in caplog.records) == 1


@needs_dali
def test_dali_failure_falls_back_to_pyav_counted(videos, caplog):
    decode_module.reset_decode_counts()
    with pytest.raises(VideoDecodeError):
        decode(videos["h264"], [0], backend="dali_cpu")  # no fallback unless asked
    with caplog.at_level(logging.WARNING, logger="tpo_fast.video.decoders"):
        frames = decode(videos["h264"], [7, 2], backend="dali_cpu", fallback=True)
    assert numbers(frames) == [7, 2]
    assert numbers(decode(videos["vp9"], [7, 2], backend="dali_cpu", fallback=True)) == [7, 2]
    counts = decode_module.decode_counts()
    assert (counts["fallback"], counts["pyav"], counts["dali_cpu"]) == (1, 1, 1)
    assert sum("decoding it with PyAV" in r.message for r in caplog.records) == 1


def test_dali_gpu_needs_an_explicit_device_index():
    with pytest.raises(ValueError, match="explicit CUDA device"):
        decode_dali(["x.mp4"], [[0]], gpu=True, device="cuda")


# -- errors ----------------------------------------------------------------------------------

def _write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.mp4")
    with pytest.raises(VideoDecodeError, match="file not found") as e:
        probe(path)
    assert e.value.path == path and path in str(e.value)
    with pytest.raises(VideoDecodeError, match="file not found"):
        decode(path, [0])


def test_corrupt_files(tmp_path, videos):
    garbage = _write(tmp_path / "garbage.mp4", np.random.default_rng(0).bytes(5000))
    truncated = _write(tmp_path / "cut.webm", open(videos["vp9"], "rb").read()[:60])
    for path in (garbage, truncated, str(tmp_path)):
        with pytest.raises(VideoDecodeError) as e:
            decode(path, [0])
        assert e.value.path == path and e.value.reason


def test_audio_only_file_has_no_video_stream(tmp_path):
    import av

    path = str(tmp_path / "audio.wav")
    with av.open(path, "w") as c:
        stream = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for p in stream.encode(frame):
            c.mux(p)
    with pytest.raises(VideoDecodeError, match="no video stream"):
        probe(path)


def test_out_of_range_indices_and_unknown_backend(videos):
    with pytest.raises(ValueError, match="outside"):
        decode(videos["h264"], [0, N])
    with pytest.raises(ValueError, match="outside"):
        decode(videos["h264"], [-1])
    with pytest.raises(ValueError, match="unknown backend"):
        decode(videos["h264"], [0], backend="opencv")


def test_dali_cpu_refuses_h264(videos):
    with pytest.raises(VideoDecodeError, match="not supported by DALI's CPU decoder"):
        decode(videos["h264"], [0], backend="dali_cpu")


@needs_dali
def test_dali_errors_name_the_failing_file(tmp_path, videos):
    bad = _write(tmp_path / "bad.webm", b"\x1aE\xdf\xa3" + b"\x00" * 4000)
    with pytest.raises(VideoDecodeError) as e:
        decode_dali([videos["vp9"], bad], [[0], [0]])
    assert e.value.path == bad and e.value.reason.startswith("DALI")
    assert numbers(decode_dali([videos["vp9"]], [[4]])[0]) == [4]  # the pipeline recovers


@pytest.mark.parametrize("ext, codec", [("webm", "libvpx-vp9"), ("mp4", "libx264")])
def test_zero_frame_video(tmp_path, ext, codec):
    import av

    path = str(tmp_path / f"empty.{ext}")
    with av.open(path, "w") as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()  # a header, no frames
    with pytest.raises(VideoDecodeError) as e:
        probe(path)
    assert e.value.path == path


@pytest.mark.gpu
@needs_dali
def test_dali_gpu_decodes_to_cuda(videos):
    """Unvalidated without a GPU: NVDEC decoding straight into CUDA tensors."""
    for codec in ("h264", "vp9"):
        frames = decode(videos[codec], [39, 3, 3], backend="auto", device="cuda")
        assert frames.is_cuda and numbers(frames.cpu()) == [39, 3, 3]
    assert decode_module.choose_backend(probe(videos["h264"]), "cuda") == "dali_gpu"
