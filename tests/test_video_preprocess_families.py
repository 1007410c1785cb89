"""The family registry's frame steps against the Hugging Face processors of each family.

* Defaults: each entry's mean/std, pixel bounds and crop equal the class attributes of the
  family's transformers video processor (transformers/models/<family>/video_processing_*.py,
  read from the installed source: the classes import torchvision, which does not run here).
* Pixels: a frame through our torch steps equals the family's slow (PIL/numpy) image processor
  — an image is one frame repeated to the temporal patch size, the padding rule of a 1-frame
  video — for the grid families whose processor layout is their own (GLM-4.1V, GLM-4.6V,
  Cosmos3-Edge with its pixels-before-channels rows, Cohere-Compass).
* Folders: the settings come from the folder's processor config (a changed mean is used), and
  every supported family's inputs from a tiny folder have the layout its adapter consumes.
"""

import ast
import json
import logging
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import torch

from tpo_fast.models.registry import FAMILIES, supported_families
from tpo_fast.synthetic.videos import write_index_video
from tpo_fast.video import load_video_inputs, preprocess_video
from tpo_fast.video.preprocess import GridFrames, SquareFrames

logging.getLogger("transformers").setLevel(logging.ERROR)

# model_type -> (module folder, video processor class) in transformers
HF_VIDEO_PROCESSORS = {
    "llava_onevision": ("llava_onevision", "LlavaOnevisionVideoProcessor"),
    "llava_next_video": ("llava_next_video", "LlavaNextVideoVideoProcessor"),
    "video_llava": ("video_llava", "VideoLlavaVideoProcessor"),
    "internvl": ("internvl", "InternVLVideoProcessor"),
    "smolvlm": ("smolvlm", "SmolVLMVideoProcessor"),
    "qwen2_vl": ("qwen2_vl", "Qwen2VLVideoProcessor"),
    "qwen2_5_vl": ("qwen2_vl", "Qwen2VLVideoProcessor"),
    "qwen2_5_omni_thinker": ("qwen2_vl", "Qwen2VLVideoProcessor"),
    "hyperclovax_vision_v2": ("qwen2_vl", "Qwen2VLVideoProcessor"),
    "qwen3_vl": ("qwen3_vl", "Qwen3VLVideoProcessor"),
    "qwen3_vl_moe": ("qwen3_vl", "Qwen3VLVideoProcessor"),
    "cohere_compass": ("cohere_compass", "CohereCompassVideoProcessor"),
    "cosmos3_edge": ("cosmos3_edge", "Cosmos3EdgeVideoProcessor"),
    "glm4v": ("glm4v", "Glm4vVideoProcessor"),
    "glm4v_moe": ("glm4v", "Glm4vVideoProcessor"),
    "glm_ocr": ("glm4v", "Glm4vVideoProcessor"),
    "glm46v": ("glm46v", "Glm46VVideoProcessor"),
}


def hf_class_attributes(folder: str, name: str) -> dict:
    """The literal class attributes of a transformers video processor, from its source."""
    import transformers
    from transformers import image_utils

    path = Path(transformers.__file__).parent / "models" / folder / f"video_processing_{folder}.py"
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    out = {}
    for node in cls.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            key = node.targets[0].id
            if isinstance(node.value, ast.Name) and hasattr(image_utils, node.value.id):
                out[key] = tuple(getattr(image_utils, node.value.id))  # e.g. OPENAI_CLIP_MEAN
                continue
            try:
                out[key] = eval(compile(ast.Expression(node.value), str(path), "eval"), {})
            except Exception:
                continue
    return out


# where our default is the released checkpoints' value, not the class default: LLaVA-OneVision's
# class defaults to CLIP's mean/std, its published video_preprocessor_config.json files
# (llava-hf/llava-onevision-qwen2-*-ov-hf) say SigLIP's 0.5 (a folder's own file wins anyway)
CHECKPOINT_DEFAULTS = {"llava_onevision": {"image_mean": (0.5,) * 3, "image_std": (0.5,) * 3}}


def test_every_supported_family_has_its_hf_processor_named():
    # LongVA and LLaVA-Video: LLaVA-NeXT's layout, whose image processors are LLaVA-NeXT's own
    # (CLIP's, and its SigLipImageProcessor), not transformers classes
    assert set(HF_VIDEO_PROCESSORS) | {"longva", "llava_video"} == set(supported_families())


@pytest.mark.parametrize("family", sorted(HF_VIDEO_PROCESSORS))
def test_frame_step_defaults_are_the_hf_video_processors(family):
    steps = FAMILIES[family].frames
    hf = {**hf_class_attributes(*HF_VIDEO_PROCESSORS[family]),
          **CHECKPOINT_DEFAULTS.get(family, {})}
    assert tuple(steps.mean) == pytest.approx(tuple(hf["image_mean"]))
    assert tuple(steps.std) == pytest.approx(tuple(hf["image_std"]))
    if isinstance(steps, GridFrames):
        factor = hf["patch_size"] * hf["merge_size"]
        assert steps.min_tokens * factor ** 2 == hf["size"]["shortest_edge"]
        assert steps.max_tokens * factor ** 2 == hf["size"]["longest_edge"]
    else:
        assert steps.crop == bool(hf.get("do_center_crop", False))


def _frame(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("family, processor, tp", [
    ("glm4v", "transformers.models.glm4v.image_processing_pil_glm4v.Glm4vImageProcessorPil", 2),
    ("glm46v", "transformers.models.glm46v.image_processing_pil_glm46v.Glm46VImageProcessorPil",
     2),
    ("cosmos3_edge",
     "transformers.models.cosmos3_edge.image_processing_pil_cosmos3_edge."
     "Cosmos3EdgeImageProcessorPil", 1),
    ("cohere_compass",
     "transformers.models.cohere_compass.image_processing_pil_cohere_compass."
     "CohereCompassImageProcessorPil", 2),
])
def test_one_frame_equals_the_hf_slow_image_processor(family, processor, tp):
    import importlib

    from PIL import Image

    module, name = processor.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    steps = FAMILIES[family].frames
    frame = _frame(32, 48)  # multiples of p * m = 8: no resize on either side
    config = NS(model_type=family, vision_config=NS(patch_size=4, spatial_merge_size=2,
                                                    temporal_patch_size=tp))
    ours = preprocess_video(frame, config, size=(32, 48), fps=2.0)
    hf = cls(patch_size=4, merge_size=2, temporal_patch_size=tp,
             size={"shortest_edge": 64, "longest_edge": 10 ** 6}, image_mean=list(steps.mean),
             image_std=list(steps.std))
    ref = hf(Image.fromarray(frame[0].numpy()), return_tensors="pt")
    assert ours["video_grid_thw"].tolist() == ref["image_grid_thw"].tolist() == [[1, 8, 12]]
    torch.testing.assert_close(ours["pixel_values_videos"], ref["pixel_values"].float(),
                               atol=1e-5, rtol=0)


def test_video_llava_matches_the_hf_clip_processor():
    """Video-LLaVA's video processor is CLIP's steps (shortest edge, centre crop, CLIP mean/std;
    transformers/models/video_llava/video_processing_video_llava.py): against the slow CLIP
    image processor per frame, to PIL's bicubic kernel (within 3 levels, mean < 0.3)."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    frames = torch.stack([torch.stack([128 + 100 * torch.sin(xx / 5 + yy / 7 + k),
                                       128 + 100 * torch.cos(xx / 9 - k),
                                       128 + 90 * torch.sin((xx + yy) / 11 + 2 * k)], -1)
                          for k in range(2)]).round().to(torch.uint8)
    config = NS(model_type="video_llava", vision_config=NS(image_size=24))
    ours = preprocess_video(frames, config)["pixel_values_videos"][0]
    proc = CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    std = torch.tensor(FAMILIES["video_llava"].frames.std).view(3, 1, 1)
    for k in range(2):
        hf = proc(Image.fromarray(frames[k].numpy()), return_tensors="pt")["pixel_values"][0]
        levels = (ours[k] - hf).abs() * 255 * std
        assert levels.mean() < 0.3 and levels.max() <= 3


def test_pixels_before_channels_is_a_different_layout():
    """Cosmos3-Edge's rows differ from Qwen's for the same pixels (the flag is not a no-op)."""
    frame = _frame(16, 16)
    cfg = lambda t: NS(model_type=t, vision_config=NS(patch_size=4, spatial_merge_size=2,
                                                      temporal_patch_size=1))
    cosmos = preprocess_video(frame, cfg("cosmos3_edge"), size=(16, 16), fps=2.0)
    qwen3 = preprocess_video(frame, cfg("qwen3_vl_moe"), size=(16, 16), fps=2.0)
    a, b = cosmos["pixel_values_videos"], qwen3["pixel_values_videos"]
    assert a.shape == b.shape and not torch.equal(a, b)
    # the same values per row, reordered: (c, p, p) vs (p, p, c)
    torch.testing.assert_close(a.reshape(-1, 4, 4, 3).permute(0, 3, 1, 2).reshape(a.shape), b)


@pytest.fixture(scope="module")
def index_video(tmp_path_factory):
    return write_index_video(tmp_path_factory.mktemp("ppf") / "v.mp4", 20, fps=10.0)


@pytest.mark.parametrize("family", supported_families())
def test_folder_inputs_have_the_layout_the_adapter_consumes(family, index_video, tmp_path):
    """From a tiny folder (its processor config on disk) to inputs with the keys, shapes and
    dtypes of ``random_video`` — the inputs the packed path is checked on — that the adapter
    accepts and its vision tower encodes."""
    from tpo_fast.models.folder import load_model
    from tpo_fast.models.registry import adapter_for
    from tpo_fast.models.tiny import random_video
    from tpo_fast.models.tiny_folders import save_tiny_model

    folder = save_tiny_model(family, tmp_path / "m", frame_size=16)
    model = load_model(folder, torch.float32)
    inputs, plan = load_video_inputs(index_video, model.config, num_frames=4)
    fps = (len(plan) - 1) / (plan.timestamps[-1] - plan.timestamps[0])
    want = random_video(family, model.config, 4, fps=fps, frame_size=16)
    for key, value in want.items():
        if torch.is_tensor(value):
            assert inputs[key].dtype == value.dtype, key
            if key == "pixel_values_videos" and "video_grid_thw" in want:
                assert inputs[key].shape[1:] == value.shape[1:], key  # rows follow the grid
            elif key != "video_grid_thw":
                assert inputs[key].shape == value.shape, key
    adapter = adapter_for(model)
    adapter.check_video(inputs)
    with torch.no_grad():
        features = adapter.video_features(inputs)
    pooled = features.pooler_output
    rows = sum(p.reshape(-1, p.shape[-1]).shape[0] for p in pooled) if isinstance(
        pooled, (tuple, list)) else pooled.reshape(-1, pooled.shape[-1]).shape[0]
    assert rows == adapter.num_video_tokens(inputs)


def test_the_folders_processor_config_is_used(tmp_path):
    """A folder's image_mean (InternVL -hf checkpoints: ImageNet's, not the class default CLIP)
    and its pixel bounds reach the inputs; a size the tower cannot take is named with its file."""
    from tpo_fast.models.folder import load_model
    from tpo_fast.models.tiny_folders import save_tiny_model

    frames = _frame(16, 16).expand(2, -1, -1, -1).contiguous()
    folder = save_tiny_model("internvl", tmp_path / "internvl", frame_size=16)
    model = load_model(folder, torch.float32)
    ours = preprocess_video(frames, model.config)["pixel_values"]
    imagenet = preprocess_video(frames, model.config, mean=(0.485, 0.456, 0.406),
                                std=(0.229, 0.224, 0.225))["pixel_values"]
    torch.testing.assert_close(ours, imagenet)
    in_memory = NS(model_type="internvl", vision_config=model.config.vision_config)
    assert not torch.allclose(preprocess_video(frames, in_memory)["pixel_values"], ours)

    settings = folder / "video_preprocessor_config.json"
    data = json.loads(settings.read_text())
    data["size"] = {"height": 32, "width": 32}
    settings.write_text(json.dumps(data))
    from tpo_fast.video.preprocess import _folder_settings

    _folder_settings.cache_clear()
    with pytest.raises(ValueError, match="video_preprocessor_config.json.*32x32.*image_size"):
        preprocess_video(frames, model.config)
    _folder_settings.cache_clear()

    qwen = save_tiny_model("qwen2_vl", tmp_path / "qwen2_vl", frame_size=16)
    config = load_model(qwen, torch.float32).config
    old = json.loads((qwen / "preprocessor_config.json").read_text())
    assert old["min_pixels"] == old["max_pixels"] == 256  # Qwen2-VL's older keys
    grid = preprocess_video(_frame(48, 64).expand(2, -1, -1, -1), config, fps=2.0)
    assert grid["video_grid_thw"].tolist() == [[1, 2, 4]]  # 8 x 16 px within 256 pixels


def test_families_without_frame_steps_say_what_is_missing():
    for family, entry in FAMILIES.items():
        if entry.frames is None:
            with pytest.raises(ValueError, match=f"{family}.*is not written"):
                preprocess_video(_frame(16, 16), NS(model_type=family))
        else:
            assert isinstance(entry.frames, (GridFrames, SquareFrames))


@pytest.mark.gpu
@pytest.mark.parametrize("family", sorted(HF_VIDEO_PROCESSORS))
def test_equals_the_real_hf_video_processor(family, tmp_path):
    """Unvalidated without a GPU (the GPU machine's image has torchvision, so the real fast
    video processors run there): the tiny folder's own processor, loaded by transformers from
    its video_preprocessor_config.json / preprocessor_config.json, against our steps."""
    pytest.importorskip("torchvision")
    from transformers import AutoVideoProcessor

    from tpo_fast.models.folder import load_model
    from tpo_fast.models.tiny_folders import save_tiny_model

    folder = save_tiny_model(family, tmp_path / "m", frame_size=16)
    config = load_model(folder, torch.float32).config
    try:
        hf = AutoVideoProcessor.from_pretrained(folder)
    except (ValueError, KeyError, AttributeError) as exc:  # a class newer than this transformers
        pytest.skip(f"transformers here cannot build {family}'s video processor: {exc}")
    frames = torch.stack([_frame(24, 40, seed=k)[0] for k in range(4)])
    ours = preprocess_video(frames, config, fps=2.0)
    ref = hf(videos=[frames.permute(0, 3, 1, 2)], do_sample_frames=False, return_tensors="pt")
    key = "pixel_values" if "pixel_values" in ours else "pixel_values_videos"
    theirs = (ref[key] if key in ref else ref["pixel_values_videos"]).float()
    if "video_grid_thw" in ours:
        assert ours["video_grid_thw"].tolist() == ref["video_grid_thw"].tolist()
    if theirs.dim() == ours[key].dim() + 1:
        theirs = theirs[0]  # InternVL: its processor's [1, F, 3, S, S]; ours the frames
    assert ours[key].shape == theirs.shape
    # the same resize (torchvision's antialiased bicubic on float, rounded): within 2 levels
    # (std >= 0.2 for every family)
    assert (ours[key] - theirs).abs().max() <= 2 / 255 / 0.2
