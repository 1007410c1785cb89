"""Train, ref-logps, curate and eval decode through the configured video backend.

Each path runs on VP9 copies of the tiny synthetic videos (DALI's CPU decoder reads VP9) with
``pyav`` and with ``dali_cpu``; ``decode_counts()`` says which decoder produced the frames.
The GPU tests check that on CUDA the default is DALI on the model's own GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tpo_fast.config import load_config
from tpo_fast.synthetic.pairs import make_pairs
from tpo_fast.video import FramePlan, decode_counts, probe, reset_decode_counts
from tpo_fast.video.dali_backend import dali_available

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
QUIET = ["run.progress=false", "run.tensorboard=false", "run.plot=false"]
BACKENDS = ["pyav", pytest.param("dali_cpu", marks=pytest.mark.skipif(
    not dali_available(), reason="nvidia-dali not installed"))]


def _to_vp9(src: Path, dst: Path) -> None:
    import av

    with av.open(str(src)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(dst), "w") as out:
        s = out.add_stream("libvpx-vp9", rate=4)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


@pytest.fixture(scope="module")
def vp9_pairs(tmp_path_factory):
    """The tiny synthetic pairs (16 of them over 4 videos), their videos re-encoded as VP9."""
    root = tmp_path_factory.mktemp("vp9")
    pairs = make_pairs(root, n_pairs=16, n_videos=4, seed=0)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    for row in rows:
        src = pairs.parent / row["video"]
        dst = src.with_suffix(".webm")
        if not dst.exists():
            _to_vp9(src, dst)
        row["video"] = str(dst)
    out = root / "pairs_vp9.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert probe(rows[0]["video"]).codec == "vp9"
    return out


def _counts_only(backend: str) -> None:
    counts = decode_counts()
    assert counts[backend] > 0, counts
    others = {k: v for k, v in counts.items() if k != backend and v}
    assert not others, counts  # nothing decoded elsewhere, no fallbacks


def _train_cfg(pairs, tmp_path, backend, *extra):
    return load_config(TINY, [f"data.train={pairs}", f"run.output_dir={tmp_path}", *QUIET,
                              f"decode.backend={backend}", *extra])


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_dataset_decodes_with_the_configured_backend(vp9_pairs, tmp_path, backend):
    from tpo_fast.data.dataset import TPODataset
    from tpo_fast.data.packer import PairPacker
    from tpo_fast.data.pairs import read_pairs
    from tpo_fast.models import PreferenceModel
    from tpo_fast.train.setup import load_tokenizer_and_model

    cfg = _train_cfg(vp9_pairs, tmp_path, backend)
    records, _ = read_pairs(Path(cfg.data.train), cfg.data.video_root, cfg.data.skip_invalid)
    tokenizer, model, _ = load_tokenizer_and_model(cfg, None, role="score")
    policy = PreferenceModel(model)
    dataset = TPODataset(records, PairPacker(policy.adapter, tokenizer), cfg.data, cfg.decode,
                         device=policy.device)
    try:
        assert dataset.decode.backend == backend and dataset.decode.device == torch.device("cpu")
        reset_decode_counts()
        batch = dataset.batch([0, 5, 9])
        _counts_only(backend)
        assert decode_counts()[backend] == 3
        assert batch.n_pairs == 3 and policy.policy_logps(batch).isfinite().all()
    finally:
        dataset.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ref_logps_decodes_with_the_configured_backend(vp9_pairs, tmp_path, backend):
    from tpo_fast.train.ref_logps import compute_ref_logps

    cfg = _train_cfg(vp9_pairs, tmp_path, backend)
    reset_decode_counts()
    out = compute_ref_logps(cfg, out=str(tmp_path / "ref.jsonl"), device="cpu", progress=False)
    _counts_only(backend)
    assert decode_counts()[backend] == 16  # one decode per pair
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(len(r["ref_logps"]) == 2 for r in rows)


@pytest.mark.parametrize("backend", BACKENDS)
def test_curate_policy_decodes_with_the_configured_backend(vp9_pairs, backend):
    from tpo_fast.config import DecodeConfig
    from tpo_fast.curate.config import PolicyConfig
    from tpo_fast.curate.policy import HFPolicy, PolicyRequest
    from tpo_fast.models.tiny import tiny_model, tiny_tokenizer

    videos = sorted({json.loads(line)["video"] for line in vp9_pairs.read_text().splitlines()})
    tok = tiny_tokenizer("qwen2_vl")
    model = tiny_model("qwen2_vl", tok)
    cfg = PolicyConfig(tiny="qwen2_vl", dtype="float32", device="cpu", batch_size=2,
                       max_new_tokens=2)
    policy = HFPolicy(model, tok, cfg, "tiny", DecodeConfig(backend=backend))
    requests = []
    for i, v in enumerate(videos[:3]):
        info = probe(v)
        plan = FramePlan.segment(info, 0.5, 3.0, 4) if i % 2 else FramePlan.uniform(info, 4)
        requests.append(PolicyRequest(f"r{i}", Path(v), plan, "what colour ?"))
    reset_decode_counts()
    answers = policy.answer(requests)
    assert all(isinstance(a, str) for a in answers)
    _counts_only(backend)
    assert decode_counts()[backend] == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_decodes_with_the_configured_backend(vp9_pairs, backend):
    from tpo_fast.config import DecodeConfig
    from tpo_fast.eval.records import MCQuestion
    from tpo_fast.eval.runner import evaluate
    from tpo_fast.models.tiny import tiny_model, tiny_tokenizer

    videos = sorted({json.loads(line)["video"] for line in vp9_pairs.read_text().splitlines()})
    tok = tiny_tokenizer("qwen2_vl")
    model = tiny_model("qwen2_vl", tok)
    questions = [MCQuestion(f"q{i}", Path(v), "what colour ?", ["red", "blue"], i % 2, "t",
                            None, f"test:{i}") for i, v in enumerate(videos)]
    reset_decode_counts()
    results = evaluate(model, tok, questions, frames=4, batch_size=2,
                       decode=DecodeConfig(backend=backend), progress=False)
    assert results["n_evaluated"] == len(videos) and results["decode_failures"] == 0
    assert results["settings"]["decode"]["backend"] == backend
    _counts_only(backend)
    assert decode_counts()[backend] == len(videos)


def test_an_unreadable_file_for_dali_falls_back_to_pyav_in_the_dataset(vp9_pairs, tmp_path):
    """decode.backend=dali_cpu with an H.264 file (DALI's CPU decoder cannot read it): the
    dataset decodes it with PyAV and counts the fallback."""
    if not dali_available():
        pytest.skip("nvidia-dali not installed")
    from tpo_fast.data.dataset import TPODataset
    from tpo_fast.data.packer import PairPacker
    from tpo_fast.data.pairs import read_pairs
    from tpo_fast.models import PreferenceModel
    from tpo_fast.train.setup import load_tokenizer_and_model

    rows = [json.loads(line) for line in vp9_pairs.read_text().splitlines()]
    rows[0]["video"] = str(Path(rows[0]["video"]).with_suffix(".mp4"))  # the H.264 original
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _train_cfg(mixed, tmp_path, "dali_cpu")
    records, _ = read_pairs(mixed, None, False)
    tokenizer, model, _ = load_tokenizer_and_model(cfg, None, role="score")
    policy = PreferenceModel(model)
    dataset = TPODataset(records, PairPacker(policy.adapter, tokenizer), cfg.data, cfg.decode,
                         device=policy.device)
    try:
        reset_decode_counts()
        dataset.batch([0, 1])
        counts = decode_counts()
        assert (counts["fallback"], counts["pyav"], counts["dali_cpu"]) == (1, 1, 1), counts
    finally:
        dataset.close()


def test_config_rejects_unknown_video_settings(vp9_pairs, tmp_path):
    from tpo_fast.config import ConfigError

    with pytest.raises(ConfigError, match="decode.backend must be one of auto, .*pyav"):
        _train_cfg(vp9_pairs, tmp_path, "opencv")
    with pytest.raises(ConfigError, match="decode.device must be auto, cpu, cuda or cuda:N"):
        _train_cfg(vp9_pairs, tmp_path, "auto", "decode.device=tpu")


@pytest.mark.parametrize("old, new", [
    ("data.video_backend=pyav", "decode.backend"), ("data.decode_device=cpu", "decode.device"),
    ("data.video_threads=2", "decode.threads"), ("data.decode_threads=2", "decode.workers")])
def test_old_train_decode_keys_name_the_new_key(old, new):
    from tpo_fast.config import ConfigError

    with pytest.raises(ConfigError, match=f"{old.split('=')[0]} is now {new}"):
        load_config(TINY, [old])


@pytest.mark.parametrize("old, new", [
    ("policy.video_backend=pyav", "decode.backend"), ("policy.decode_device=cpu", "decode.device"),
    ("policy.video_threads=2", "decode.threads"), ("policy.decode_workers=2", "decode.workers")])
def test_old_curate_decode_keys_name_the_new_key(old, new):
    from tpo_fast.config import ConfigError
    from tpo_fast.curate.config import load_curate_config

    with pytest.raises(ConfigError, match=f"{old.split('=')[0]} is now {new}"):
        load_curate_config(None, ["input.videos=x", "policy.kind=annotation", old])


def test_one_decode_section_for_train_curate_and_eval():
    """The same DecodeConfig in all three; train's loader defaults to 4 workers, also when the
    decode: section is given without them."""
    from tpo_fast.config import DecodeConfig
    from tpo_fast.curate.config import load_curate_config
    from tpo_fast.eval.runner import EvalSettings

    train = load_config(None, ["model.tiny=qwen2_vl", "data.train=x", "decode.threads=3"])
    curate = load_curate_config(None, ["input.videos=x", "policy.kind=annotation",
                                       "decode.backend=pyav", "decode.workers=0"])
    assert train.decode == DecodeConfig(threads=3, workers=4)
    assert curate.decode == DecodeConfig(backend="pyav", workers=0)
    assert EvalSettings().decode == DecodeConfig()
    with pytest.raises(ValueError, match="decode.backend must be one of"):
        EvalSettings(decode=DecodeConfig(backend="opencv"))


# ---- GPU: the default on CUDA is DALI on the model's own GPU --------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not dali_available(), reason="nvidia-dali not installed")
def test_train_dataset_on_cuda_decodes_with_dali_on_the_models_gpu(vp9_pairs, tmp_path):
    from tpo_fast.data.dataset import TPODataset
    from tpo_fast.data.packer import PairPacker
    from tpo_fast.data.pairs import read_pairs
    from tpo_fast.models import PreferenceModel
    from tpo_fast.train.setup import load_tokenizer_and_model

    device = torch.device("cuda", torch.cuda.device_count() - 1)  # not necessarily cuda:0
    cfg = _train_cfg(vp9_pairs, tmp_path, "auto")
    records, _ = read_pairs(Path(cfg.data.train), None, False)
    tokenizer, model, _ = load_tokenizer_and_model(cfg, None, role="score")
    policy = PreferenceModel(model.to(device))
    dataset = TPODataset(records, PairPacker(policy.adapter, tokenizer), cfg.data, cfg.decode,
                         device=policy.device)
    try:
        assert dataset.decode.device == device
        reset_decode_counts()
        batch = dataset.batch([0, 5])
        _counts_only("dali_gpu")
        for video in batch.videos:
            assert video["pixel_values_videos"].device == device
        assert batch.input_ids.is_pinned()
        logps = policy.policy_logps(batch.to(device, non_blocking=True))
        assert logps.isfinite().all()
    finally:
        dataset.close()


@pytest.mark.gpu
@pytest.mark.skipif(not dali_available(), reason="nvidia-dali not installed")
@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_dali_gpu_frames_are_pyavs_frames(tmp_path, codec):
    """Same frames (the index each frame shows) and pixels within twice the colour-conversion
    difference measured between DALI's CPU decoder and PyAV on these VP9 videos (CPU,
    2026-12: mean 0.53-0.89 levels, 99th percentile 1-2, max 2)."""
    from tpo_fast.synthetic.videos import frame_number, write_index_video
    from tpo_fast.video import decode

    path = write_index_video(tmp_path / f"i.{'mp4' if codec == 'h264' else 'webm'}", 40,
                             codec=codec, gop=8, texture=True)
    idx = [39, 0, 17, 17, 8, 7, 1, 20]
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    gpu = decode(path, idx, backend="dali_gpu", device=device)
    cpu = decode(path, idx, backend="pyav")
    assert gpu.device == device and gpu.dtype == torch.uint8 and gpu.shape == cpu.shape
    assert [frame_number(f) for f in gpu.cpu()] == idx == [frame_number(f) for f in cpu]
    diff = (gpu.cpu().float() - cpu.float()).abs()
    assert diff.mean() < 2.0, float(diff.mean())
    assert np.percentile(diff.numpy(), 99) <= 4, float(np.percentile(diff.numpy(), 99))


@pytest.mark.gpu
def test_pyav_frames_reach_the_gpu_as_uint8_and_are_normalised_there(tmp_path, monkeypatch):
    """backend=pyav with a CUDA device: the uint8 frames are pinned and copied (not the float
    pixels), preprocessing runs on the GPU, and the result equals the CPU path's."""
    from tpo_fast.synthetic.videos import write_index_video
    from tpo_fast.video import decoders, load_video_inputs

    path = write_index_video(tmp_path / "v.mp4", 24, codec="h264", gop=8, texture=True)
    cfg = type("Cfg", (), {"model_type": "llava_onevision",
                           "vision_config": type("V", (), {"image_size": 32})()})()
    moved = []
    real = decoders.to_device

    def spy(frames, device):
        moved.append((frames.dtype, frames.device.type))
        return real(frames, device)

    monkeypatch.setattr(decoders, "to_device", spy)
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    gpu, _ = load_video_inputs(path, cfg, num_frames=4, backend="pyav", device=device)
    cpu, _ = load_video_inputs(path, cfg, num_frames=4, backend="pyav")
    assert moved[0] == (torch.uint8, "cpu")
    assert gpu["pixel_values_videos"].device == device
    torch.testing.assert_close(gpu["pixel_values_videos"].cpu(), cpu["pixel_values_videos"],
                               atol=1e-4, rtol=0)
