"""DecodeSettings: the device is explicit (resolved in the constructing thread), and the DALI
GPU decoder in a worker thread gets that index, not the worker's current device (always 0)."""

import pytest
import torch

from tpo_fast.synthetic.videos import write_index_video
from tpo_fast.video import DecodeSettings, VideoLoader, load_video_inputs
from tpo_fast.video import decoders as decode_module
from tpo_fast.video.settings import resolve_device


def test_auto_follows_the_model_device():
    s = DecodeSettings.build("auto", "auto", model_device=torch.device("cuda", 3))
    assert s.device == torch.device("cuda", 3) and s.on_cuda
    assert DecodeSettings.build().device == torch.device("cpu")
    assert resolve_device("cpu", torch.device("cuda", 1)) == torch.device("cpu")
    assert resolve_device("cuda:2") == torch.device("cuda", 2)


def test_bad_settings():
    with pytest.raises(ValueError, match="explicit CUDA index"):
        DecodeSettings("auto", torch.device("cuda"))
    with pytest.raises(ValueError, match="unknown video backend"):
        DecodeSettings("opencv")
    with pytest.raises(ValueError, match="threads"):
        DecodeSettings("pyav", threads=0)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs CUDA"):
            resolve_device("cuda")


def test_worker_threads_pass_the_explicit_index_to_dali(tmp_path, monkeypatch):
    """With the model on cuda:3, a VideoLoader worker decodes through DALI's GPU decoder with
    device cuda:3 (stubbed: no GPU here) and the threads the settings name."""
    path = write_index_video(tmp_path / "v.mp4", 12, codec="h264", gop=4)
    seen = []

    def fake_decode_dali(paths, frames, *, gpu, device, num_threads):
        seen.append((gpu, device, num_threads))
        return [torch.zeros(len(f), 48, 64, 3, dtype=torch.uint8) for f in frames]

    monkeypatch.setattr(decode_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(decode_module, "dali_available", lambda: True)
    monkeypatch.setattr(decode_module, "decode_dali", fake_decode_dali)
    monkeypatch.setattr(decode_module, "to_device", lambda frames, device: frames)
    settings = DecodeSettings.build("auto", "auto", 3, model_device=torch.device("cuda", 3))
    cfg = type("Cfg", (), {"model_type": "llava_onevision",
                           "vision_config": type("V", (), {"image_size": 32})()})()
    loader = VideoLoader([path] * 3, lambda p: load_video_inputs(p, cfg, num_frames=4,
                                                                 settings=settings)[0],
                         num_workers=2, pin_memory=False)
    assert len(list(loader)) == 3
    assert seen == [(True, torch.device("cuda", 3), 3)] * 3
    assert decode_module.decode_counts()["dali_gpu"] >= 3
