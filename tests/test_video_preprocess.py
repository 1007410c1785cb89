"""preprocess_video against Hugging Face's processors (their PIL backends run here; torchvision
does not) and against the documented formula computed by hand; layouts against the adapters."""

import logging
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tpo_fast.synthetic.videos import write_index_video
from tpo_fast.video import load_video_inputs, preprocess_video
from tpo_fast.video.preprocess import smart_resize

logging.getLogger("transformers").setLevel(logging.ERROR)
# OpenAI CLIP normalisation, written out here (not imported) so a wrong constant fails.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smooth_frames(n=3, h=48, w=64, seed=0):
    """Smooth (band-limited) uint8 frames [n, h, w, 3], so PIL's and torch's bicubic agree."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for k in range(n):
        ph = seed + k
        out.append(np.stack([128 + 100 * np.sin(xx / 5.0 + yy / 7.0 + ph),
                             128 + 100 * np.cos(xx / 9.0 - ph),
                             128 + 90 * np.sin((xx + yy) / 11.0 + 2 * ph)], -1))
    return torch.from_numpy(np.stack(out).round().astype(np.uint8))


def llava_config(family, size):
    return NS(model_type=family, vision_config=NS(image_size=size))


def qwen_config(family, p=4, m=2, tp=2):
    return NS(model_type=family, vision_config=NS(patch_size=p, spatial_merge_size=m,
                                                  temporal_patch_size=tp))


def by_hand(frames, h, w, mean, std, crop=None):
    """The processors' documented formula: bicubic antialiased resize (torchvision's uint8
    path: float, clamp, round), optional centre crop, x / 255, (x - mean) / std."""
    x = frames.permute(0, 3, 1, 2).double()
    if (h, w) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True,
                          align_corners=False).clamp(0, 255).round()
    if crop is not None:
        top, left = int((h - crop) / 2), int((w - crop) / 2)
        x = x[..., top:top + crop, left:left + crop]
    mean = torch.tensor(mean, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float64).view(3, 1, 1)
    return ((x / 255 - mean) / std).float()


@pytest.mark.parametrize("family, mean, std, crop", [
    ("llava_onevision", (0.5,) * 3, (0.5,) * 3, False),
    ("llava_next_video", CLIP_MEAN, CLIP_STD, True),
    ("longva", CLIP_MEAN, CLIP_STD, True),
])
def test_llava_families_by_hand(family, mean, std, crop):
    frames = smooth_frames(3)
    out = preprocess_video(frames, llava_config(family, 24))
    assert set(out) == {"pixel_values_videos"}
    x = out["pixel_values_videos"]
    assert x.shape == (1, 3, 3, 24, 24) and x.dtype == torch.float32
    # shortest side 48 -> 24: 64 -> int(24 * 64 / 48) = 32, then the centre 24 columns
    expected = by_hand(frames, 24, 32, mean, std, crop=24) if crop else \
        by_hand(frames, 24, 24, mean, std)
    torch.testing.assert_close(x[0], expected, atol=1e-5, rtol=0)


def test_no_resize_is_exactly_rescale_and_normalise():
    frames = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    out = preprocess_video(frames, llava_config("llava_next_video", 16))["pixel_values_videos"]
    manual = (frames.permute(0, 3, 1, 2).double() / 255 - torch.tensor(CLIP_MEAN).view(3, 1, 1)
              .double()) / torch.tensor(CLIP_STD).view(3, 1, 1).double()
    torch.testing.assert_close(out[0], manual.float(), atol=1e-5, rtol=0)


def _levels(ours, hf, std):
    return (ours - hf).abs() * 255 * torch.tensor(std).view(3, 1, 1)


def test_onevision_matches_hf_siglip_processor():
    from PIL import Image
    from transformers import SiglipImageProcessorPil

    frames = smooth_frames(2)
    ours = preprocess_video(frames, llava_config("llava_onevision", 24))["pixel_values_videos"][0]
    proc = SiglipImageProcessorPil(size={"height": 24, "width": 24}, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3)
    for k in range(2):
        hf = proc(Image.fromarray(frames[k].numpy()), return_tensors="pt")["pixel_values"][0]
        diff = _levels(ours[k], hf, (0.5,) * 3)  # PIL's bicubic kernel differs slightly
        assert diff.mean() < 0.3 and diff.max() <= 3


def test_clip_families_match_hf_clip_processor():
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    frames = smooth_frames(2)
    proc = CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    for family in ("llava_next_video", "longva"):
        ours = preprocess_video(frames, llava_config(family, 24))["pixel_values_videos"][0]
        for k in range(2):
            hf = proc(Image.fromarray(frames[k].numpy()), return_tensors="pt")["pixel_values"][0]
            diff = _levels(ours[k], hf, CLIP_STD)
            assert diff.mean() < 0.3 and diff.max() <= 3


@pytest.mark.parametrize("family, p, mean", [
    ("qwen2_vl", 4, CLIP_MEAN), ("qwen2_5_vl", 2, CLIP_MEAN), ("qwen3_vl", 4, (0.5,) * 3)])
def test_qwen_single_frame_matches_hf_qwen2vl_processor_exactly(family, p, mean):
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil

    frame = smooth_frames(1, 40, 56)
    std = CLIP_STD if mean == CLIP_MEAN else (0.5,) * 3
    ours = preprocess_video(frame, qwen_config(family, p=p), size=(40, 56), fps=2.0)
    hf = Qwen2VLImageProcessorPil(patch_size=p, merge_size=2, temporal_patch_size=2,
                                  min_pixels=64, max_pixels=10 ** 6, image_mean=list(mean),
                                  image_std=list(std))
    ref = hf(Image.fromarray(frame[0].numpy()), return_tensors="pt")
    # An image is one frame repeated tp times: the same padding rule as a 1-frame video.
    assert ours["video_grid_thw"].tolist() == ref["image_grid_thw"].tolist()
    torch.testing.assert_close(ours["pixel_values_videos"], ref["pixel_values"], atol=1e-5,
                               rtol=0)


def naive_patches(x, tp, p, m):
    """Row-by-row Qwen patch layout, written with loops (independent of reshape/permute)."""
    n, c, height, width = x.shape
    t, gh, gw = n // tp, height // p, width // p
    rows = []
    for ti in range(t):
        for bh in range(gh // m):
            for bw in range(gw // m):
                for mh in range(m):
                    for mw in range(m):
                        y0, x0 = (bh * m + mh) * p, (bw * m + mw) * p
                        block = x[ti * tp:(ti + 1) * tp, :, y0:y0 + p, x0:x0 + p]  # [tp,c,p,p]
                        rows.append(block.permute(1, 0, 2, 3).reshape(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("n", [4, 5])
def test_qwen_multi_frame_patch_order_and_padding(n):
    frames = torch.randint(0, 256, (n, 24, 40, 3), dtype=torch.uint8)
    out = preprocess_video(frames, qwen_config("qwen2_vl", p=4, m=2, tp=2), size=(24, 40))
    x = by_hand(frames, 24, 40, CLIP_MEAN, CLIP_STD)
    if n % 2:
        x = torch.cat([x, x[-1:]])  # padded with the last frame
    assert out["video_grid_thw"].tolist() == [[(n + 1) // 2, 6, 10]]
    assert out["video_grid_thw"].dtype == torch.long
    torch.testing.assert_close(out["pixel_values_videos"], naive_patches(x, 2, 4, 2),
                               atol=1e-5, rtol=0)


def test_smart_resize_follows_hf():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf

    bounds = (128 * 28 * 28, 768 * 28 * 28)  # Qwen2-VL's video processor defaults
    for h, w in [(720, 1280), (48, 64), (1080, 1920), (333, 500), (2000, 30), (56, 56)]:
        assert smart_resize(h, w, 28, *bounds) == hf(h, w, 28, *bounds), (h, w)
    # Qwen3-VL counts the frames: 32 frames at 720p share 768 * 32 * 32 pixels
    # (beta = sqrt(32 * 720 * 1280 / 786432); floor(720 / beta / 32) = 3, floor(1280 / ...) = 6).
    assert smart_resize(720, 1280, 32, 128 * 1024, 768 * 1024, num_frames=32) == (96, 192)
    frames = torch.zeros(2, 48, 64, 3, dtype=torch.uint8)
    out = preprocess_video(frames, qwen_config("qwen2_vl", p=14, m=2), fps=2.0)
    assert out["video_grid_thw"].tolist() == [[1, 20, 28]]  # 280 x 392 in 14-px patches


def test_model_config_pixel_bounds_apply_unless_given():
    frames = torch.zeros(2, 48, 64, 3, dtype=torch.uint8)
    cfg = qwen_config("qwen2_vl", p=4, m=2)
    default = preprocess_video(frames, cfg, fps=2.0)["video_grid_thw"].tolist()
    cfg.video_min_pixels = cfg.video_max_pixels = 16 * 16
    bounded = preprocess_video(frames, cfg, fps=2.0)["video_grid_thw"].tolist()
    given = preprocess_video(frames, cfg, fps=2.0, min_pixels=64, max_pixels=32 * 32)
    assert bounded == [[1, 2, 4]] and default != bounded  # 8 x 16 px (<= 256) in 4-px patches
    assert given["video_grid_thw"].tolist() != bounded


def test_qwen_time_fields():
    frames = torch.zeros(5, 16, 16, 3, dtype=torch.uint8)
    stamps = [1.0, 1.5, 2.0, 2.5, 3.0]
    q25 = preprocess_video(frames, qwen_config("qwen2_5_vl"), timestamps=stamps, size=(16, 16))
    torch.testing.assert_close(q25["second_per_grid_ts"], torch.tensor([2 / 2.0]))  # tp / 2 fps
    q25 = preprocess_video(frames, qwen_config("qwen2_5_vl"), fps=4.0, size=(16, 16))
    torch.testing.assert_close(q25["second_per_grid_ts"], torch.tensor([0.5]))
    q3 = preprocess_video(frames, qwen_config("qwen3_vl"), timestamps=stamps, size=(16, 16))
    assert q3["frame_timestamps"] == stamps and "second_per_grid_ts" not in q3
    assert preprocess_video(frames, qwen_config("qwen3_vl"), fps=2.0,
                            size=(16, 16))["frame_timestamps"] == [0.0, 0.5, 1.0, 1.5, 2.0]
    q2 = preprocess_video(frames, qwen_config("qwen2_vl"), size=(16, 16))
    assert set(q2) == {"pixel_values_videos", "video_grid_thw"}


@pytest.mark.parametrize("call, match", [
    (lambda f: preprocess_video(f, NS(model_type="gpt2")), "no video preprocessing"),
    (lambda f: preprocess_video(f.float(), llava_config("llava_onevision", 8)), "uint8"),
    (lambda f: preprocess_video(f[0], llava_config("llava_onevision", 8)), "uint8"),
    (lambda f: preprocess_video(f, llava_config("llava_onevision", 8), size=(16, 16)), "size"),
    (lambda f: preprocess_video(f, qwen_config("qwen2_vl"), size=(12, 16)), "multiples of 8"),
    (lambda f: preprocess_video(f, qwen_config("qwen2_5_vl"), size=(16, 16)), "sampling fps"),
    (lambda f: preprocess_video(f, qwen_config("qwen3_vl"), size=(16, 16)), "timestamps"),
    (lambda f: preprocess_video(f, qwen_config("qwen3_vl"), size=(16, 16), timestamps=[0.0]),
     "1 timestamps for 2 frames"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(2, 16, 16, 3, dtype=torch.uint8))


# -- against the project's adapters ---------------------------------------------------------

FAMILIES = ("llava_onevision", "llava_next_video", "qwen2_vl", "qwen2_5_vl", "qwen3_vl",
            "longva")


@pytest.fixture(scope="module")
def index_video(tmp_path_factory):
    return write_index_video(tmp_path_factory.mktemp("pp") / "v.mp4", 20, fps=10.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_is_what_the_adapter_consumes(family, index_video):
    from tpo_fast.models.registry import adapter_for
    from tpo_fast.models.tiny import random_video, tiny_model, tiny_tokenizer

    tok = tiny_tokenizer(family)
    model = tiny_model(family, tok, frame_size=16)
    size = None if family.startswith(("llava", "longva")) else (16, 16)
    inputs, plan = load_video_inputs(index_video, model.config, num_frames=4, size=size)
    want = random_video(family, model.config, 4, fps=plan_fps(plan), frame_size=16)
    assert set(inputs) == set(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert inputs[key].shape == value.shape and inputs[key].dtype == value.dtype, key
    adapter = adapter_for(model)
    adapter.check_video(inputs)
    with torch.no_grad():
        adapter.video_features(inputs)  # the vision tower accepts it
    if family == "qwen3_vl":
        assert inputs["frame_timestamps"] == list(plan.timestamps)


def plan_fps(plan):
    return (len(plan) - 1) / (plan.timestamps[-1] - plan.timestamps[0])


@pytest.mark.gpu
def test_cuda_frames_stay_on_the_gpu():
    """Unvalidated without a GPU."""
    frames = smooth_frames(4).cuda()
    for cfg, kw in ((llava_config("llava_onevision", 24), {}),
                    (qwen_config("qwen2_5_vl"), {"size": (16, 16), "fps": 2.0})):
        out = preprocess_video(frames, cfg, **kw)
        assert out["pixel_values_videos"].is_cuda
        cpu = preprocess_video(frames.cpu(), cfg, **kw)
        torch.testing.assert_close(out["pixel_values_videos"].cpu(), cpu["pixel_values_videos"],
                                   atol=1e-4, rtol=0)
