"""LLaVA-Video (LLaVA-Video-7B-Qwen2 and its TPO release) in the LLaVA-NeXT checkpoint layout.

A tiny random checkpoint is written here by hand as the published folder is: config.json with
the keys LLaVA-NeXT writes for LLaVA-Video (scripts/video/train/SO400M_Qwen2_7B_ov_to_video_am9.sh
and llava/train/train.py of LLaVA-VL/LLaVA-NeXT: model_type "llava", LlavaQwenForCausalLM,
mm_newline_position "grid", mm_spatial_pool_mode "bilinear", mm_patch_merge_type
"spatial_unpad", image_aspect_ratio "anyres_max_9", mlp2x_gelu, add_time_instruction, ...) and
the tensor names of LlavaQwenForCausalLM (model.vision_tower.vision_tower.vision_model.* with
the SigLIP layers LLaVA-NeXT keeps, model.mm_projector.{0,2}, model.image_newline, model.*,
lm_head), sharded safetensors + index. Checked: loading; the packed path against a plain
re-statement of LLaVA-NeXT's video path (encode, 2x2 bilinear pool, newlines, splice); the time
instruction; export -> reload; ``tpo-fast convert`` -> transformers' LLaVA-OneVision; clear
errors; and (multiprocess) 2 training steps on 2 processes under ZeRO-3 with a live reference.
"""

import copy
import json
import math
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from test_real_paths import QUIET, tpo_fast

from tpo_fast.data.packer import PairPacker
from tpo_fast.models import (
    PreferenceModel,
    adapter_for,
    is_llava_next_checkpoint,
    is_llava_video_checkpoint,
    is_longva_checkpoint,
    load_llava_next,
    load_llava_video,
    save_llava_video,
)
from tpo_fast.models.llava_next_layout import LlavaNextCheckpointError
from tpo_fast.models.llava_video import IMAGE_TOKEN_INDEX, LlavaVideoAdapter
from tpo_fast.models.llava_video_checkpoint import KNOWN_VISION_TOWERS, resolve_vision_config
from tpo_fast.models.stock import stock_pair_logps
from tpo_fast.models.tiny import tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOWER = "model.vision_tower.vision_tower.vision_model."
# SigLIP: 20 px frames, 4 px patches -> a 5x5 grid (odd, as so400m's 27x27), pooled bilinearly
# to ceil(5/2) = 3x3; grid newlines: 3 x (3 + 1) = 12 tokens a frame. 2 stored layers.
SIGLIP = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
              image_size=20, patch_size=4, model_type="siglip_vision_model",
              hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
TEXT = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)
TOKENS_PER_FRAME = 12


def llava_video_config(vocab_size: int, tower: str) -> dict:
    """A LLaVA-Video-7B-Qwen2-style config.json at tiny sizes (``tower``: mm_vision_tower)."""
    pinpoints = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
    return {
        "_name_or_path": "tiny/LLaVA-Video-Qwen2", "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava", "add_faster_video": False, "add_time_instruction": True,
        "attention_dropout": 0.0, "bos_token_id": 2, "eos_token_id": 5, "faster_token_stride": 10,
        "force_sample": True, "hidden_act": "silu", **TEXT, "vocab_size": vocab_size,
        "ignore_index": -100, "image_aspect_ratio": "anyres_max_9", "image_crop_resolution": None,
        "image_grid_pinpoints": pinpoints, "image_split_resolution": None,
        "image_token_index": 151646, "initializer_range": 0.02, "max_position_embeddings": 4096,
        "max_window_layers": 2, "mm_hidden_size": SIGLIP["hidden_size"],
        "mm_newline_position": "grid", "mm_patch_merge_type": "spatial_unpad",
        "mm_projector_lr": None, "mm_projector_type": "mlp2x_gelu", "mm_resampler_type": None,
        "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 2,
        "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model",
        "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
        "mm_vision_tower": tower, "mm_vision_tower_lr": 2e-6, "pos_skipping_range": 4096,
        "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0,
        "sliding_window": 4096, "tie_word_embeddings": False, "tokenizer_model_max_length": 32768,
        "tokenizer_padding_side": "right", "torch_dtype": "float32", "use_cache": True,
        "use_mm_proj": True, "use_pos_skipping": False, "use_sliding_window": False,
        "vision_tower_pretrained": None,
    }


def llava_video_shapes(cfg: dict) -> dict:
    """Every tensor of a LLaVA-Video (LlavaQwenForCausalLM) checkpoint, by name: the layout
    spec. SigLIP has no class token (positions = grid²) and keeps post_layernorm's weights (the
    module stays, LLaVA-NeXT reads hidden_states[-1] before it); head = Identity stores none."""
    c, i_v, grid = SIGLIP["hidden_size"], SIGLIP["intermediate_size"], 20 // 4
    h, i_t, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    shapes = {TOWER + "embeddings.patch_embedding.weight": (c, 3, 4, 4),
              TOWER + "embeddings.patch_embedding.bias": (c,),
              TOWER + "embeddings.position_embedding.weight": (grid * grid, c),
              TOWER + "post_layernorm.weight": (c,), TOWER + "post_layernorm.bias": (c,)}
    for n in range(SIGLIP["num_hidden_layers"]):
        layer = f"{TOWER}encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes |= {f"{layer}self_attn.{proj}.weight": (c, c),
                       f"{layer}self_attn.{proj}.bias": (c,)}
        for norm in ("layer_norm1", "layer_norm2"):
            shapes |= {f"{layer}{norm}.weight": (c,), f"{layer}{norm}.bias": (c,)}
        shapes |= {f"{layer}mlp.fc1.weight": (i_v, c), f"{layer}mlp.fc1.bias": (i_v,),
                   f"{layer}mlp.fc2.weight": (c, i_v), f"{layer}mlp.fc2.bias": (c,)}
    shapes |= {"model.mm_projector.0.weight": (h, c), "model.mm_projector.0.bias": (h,),
               "model.mm_projector.2.weight": (h, h), "model.mm_projector.2.bias": (h,),
               "model.image_newline": (h,), "model.embed_tokens.weight": (v, h),
               "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for n in range(cfg["num_hidden_layers"]):
        layer = f"model.layers.{n}."
        for proj, rows in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
            shapes |= {f"{layer}self_attn.{proj}.weight": (rows, h),
                       f"{layer}self_attn.{proj}.bias": (rows,)}
        shapes |= {layer + "self_attn.o_proj.weight": (h, h),
                   layer + "mlp.gate_proj.weight": (i_t, h), layer + "mlp.up_proj.weight": (i_t, h),
                   layer + "mlp.down_proj.weight": (h, i_t),
                   layer + "input_layernorm.weight": (h,),
                   layer + "post_attention_layernorm.weight": (h,)}
    return shapes


def write_checkpoint(folder: Path, cfg: dict, tensors: dict, tokenizer, shards: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    names = list(tensors)
    weights, total = {}, 0
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, folder / file, metadata={"format": "pt"})
        weights |= dict.fromkeys(part, file)
        total += sum(t.numel() * t.element_size() for t in part.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weights}))
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer("llava_video")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("LLaVA-Video-tiny")
    tower = root / "siglip-tiny"  # a local tower folder: what mm_vision_tower names offline
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps(SIGLIP))
    cfg = llava_video_config(len(tokenizer), str(tower))
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape in llava_video_shapes(cfg).items():
        value = torch.randn(shape, generator=g) * (0.3 if name.endswith("bias") else 0.15)
        tensors[name] = value + 1 if "norm" in name and name.endswith("weight") else value
    folder = root / "model"
    write_checkpoint(folder, cfg, tensors, tokenizer)
    return SimpleNamespace(folder=folder, cfg=cfg, tensors=tensors, tower=tower)


def variant(checkpoint, dest: Path, **changes) -> Path:
    """A copy of the checkpoint with config.json fields changed."""
    folder = Path(shutil.copytree(checkpoint.folder, dest))
    cfg = {**checkpoint.cfg, **changes}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def frames(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 20, 20, generator=torch.Generator().manual_seed(seed))


def video(n: int, seed: int, seconds: float = 12.5) -> dict:
    return {"pixel_values_videos": frames(n, seed)[None],
            "frame_timestamps": [seconds * (i + 0.5) / n for i in range(n)],
            "video_seconds": seconds}


# ---- loading -------------------------------------------------------------------------------
def test_every_tensor_reaches_its_module(checkpoint):
    start = time.monotonic()
    model = load_llava_next(checkpoint.folder)
    state = model.state_dict()
    assert len(state) == len(checkpoint.tensors)  # nothing left uninitialised
    ours = {"model.image_newline": "image_newline", "lm_head.weight": "lm_head.weight"}
    for name, tensor in checkpoint.tensors.items():
        if name.startswith(TOWER):
            key = "vision_tower." + name.removeprefix(TOWER)
        elif name.startswith("model.mm_projector."):
            key = name.removeprefix("model.")
        else:
            key = ours.get(name) or "language_model." + name.removeprefix("model.")
        assert torch.equal(state[key], tensor), name
    vision = model.config.vision_config
    assert (vision.image_size, vision.patch_size, vision.num_hidden_layers, vision.hidden_size,
            vision.num_attention_heads, vision.vision_use_head) == (20, 4, 2, 16, 2, False)
    assert not model.training and model.dtype == torch.float32
    assert isinstance(adapter_for(model), LlavaVideoAdapter)
    assert is_llava_video_checkpoint(checkpoint.folder)
    assert is_llava_next_checkpoint(checkpoint.folder)
    assert not is_longva_checkpoint(checkpoint.folder)  # model_type llava + SigLIP: not LongVA
    assert not is_llava_next_checkpoint(ROOT)
    assert time.monotonic() - start < 30


def test_the_published_tower_is_known_offline():
    """mm_vision_tower "google/siglip-so400m-patch14-384" as published: its config is known
    (LLaVA-NeXT's SigLipVisionConfig defaults) with the 26 layers LLaVA-NeXT keeps, checked
    against the shapes alone (no weights needed)."""
    name = "google/siglip-so400m-patch14-384"
    so400m = {TOWER + "embeddings.patch_embedding.weight": (1152, 3, 14, 14),
              TOWER + "embeddings.position_embedding.weight": (729, 1152)}
    for n in range(26):
        so400m[f"{TOWER}encoder.layers.{n}.mlp.fc1.weight"] = (4304, 1152)
    config = resolve_vision_config({"mm_vision_tower": name}, so400m)
    assert (config.image_size, config.patch_size, config.num_hidden_layers,
            config.num_attention_heads, config.hidden_act) == (384, 14, 26, 16,
                                                              "gelu_pytorch_tanh")
    assert KNOWN_VISION_TOWERS[name]["num_hidden_layers"] == 26
    so400m[f"{TOWER}encoder.layers.26.mlp.fc1.weight"] = (4304, 1152)  # all 27: not LLaVA-NeXT's
    with pytest.raises(LlavaNextCheckpointError, match="num_hidden_layers"):
        resolve_vision_config({"mm_vision_tower": name}, so400m)


# ---- the oracle: LLaVA-NeXT's video path, restated -------------------------------------------
def llava_next_video_embeds(model, tensors, input_ids: list[int], pixels: torch.Tensor,
                            newline_position: str) -> torch.Tensor:
    """LLaVA-NeXT's prepare_inputs_labels_for_multimodal for one video row, written out from
    llava/model/llava_arch.py with the checkpoint's tensors: encode_images (SigLipVisionTower:
    hidden_states[-1] of the stored layers, then mm_projector), get_2dPool (bilinear to
    ceil(side/2)), add_token_per_grid or the one_token newline, then the splice at
    IMAGE_TOKEN_INDEX."""
    tower = model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1]
    feat = F.linear(tower, tensors["model.mm_projector.0.weight"],
                    tensors["model.mm_projector.0.bias"])
    feat = F.linear(F.gelu(feat), tensors["model.mm_projector.2.weight"],
                    tensors["model.mm_projector.2.bias"])
    # get_2dPool
    num_frames, num_tokens, num_dim = feat.shape
    height = width = 5
    feat = feat.view(num_frames, height, width, -1).permute(0, 3, 1, 2).contiguous()
    feat = F.interpolate(feat, size=[math.ceil(height / 2), math.ceil(width / 2)],
                         mode="bilinear")
    feat = feat.permute(0, 2, 3, 1).view(num_frames, -1, num_dim)
    newline = tensors["model.image_newline"]
    if newline_position == "grid":  # add_token_per_grid
        resize_h = int(math.sqrt(feat.shape[1]))
        feat = feat.view(num_frames, 1, resize_h, resize_h, -1)
        feat = feat.permute(4, 0, 2, 1, 3).contiguous().flatten(1, 2).flatten(2, 3)
        feat = torch.cat((feat, newline[:, None, None].expand(*feat.shape[:-1], 1)), dim=-1)
        feat = feat.flatten(1, 2).transpose(0, 1)
    else:  # "one_token" with an unpad merge type
        feat = torch.cat((feat.flatten(0, 1), newline[None]), dim=0)
    ids = torch.tensor(input_ids)
    cut = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0])
    assert int((ids == IMAGE_TOKEN_INDEX).sum()) == 1
    embed = tensors["model.embed_tokens.weight"]
    return torch.cat([embed[ids[:cut]], feat, embed[ids[cut + 1:]]])


def oracle_logps(model, tensors, prompt_text_ids, responses, pixels, newline_position):
    """Summed log-probs of each response after the prompt (one <image> id), LLaVA-NeXT style:
    one unpadded row per response through Qwen2 and lm_head (checkpoint weights)."""
    out = []
    for response in responses:
        embeds = llava_next_video_embeds(model, tensors, prompt_text_ids + response, pixels,
                                         newline_position)
        hidden = model.language_model(inputs_embeds=embeds[None]).last_hidden_state[0]
        logps = (hidden @ tensors["lm_head.weight"].T).log_softmax(-1)
        start = embeds.shape[0] - len(response)
        out.append(sum(logps[start - 1 + j, t] for j, t in enumerate(response)))
    return torch.stack(out)


@pytest.mark.parametrize("newline_position", ["grid", "one_token"])
def test_packed_path_equals_llava_next_restated(checkpoint, tokenizer, tmp_path,
                                                newline_position):
    folder = variant(checkpoint, tmp_path / "m", mm_newline_position=newline_position)
    model = load_llava_video(folder)
    fast = PreferenceModel(copy.deepcopy(model))
    adapter = fast.adapter
    g = torch.Generator().manual_seed(5)
    prompts, chosen, rejected, videos, oracle = [], [], [], [], []
    for i, (n, question) in enumerate([(2, "what happened ?"), (3, "which shape moved left ?")]):
        v = video(n, seed=10 + i)
        prompt = adapter.prompt_ids(tokenizer, question, v)
        count = n * TOKENS_PER_FRAME if newline_position == "grid" else n * 9 + 1
        assert prompt.count(IMAGE_TOKEN_INDEX) == count == adapter.num_video_tokens(v)
        c, r = (torch.randint(20, len(tokenizer), (k,), generator=g).tolist() for k in (3, 1))
        first = prompt.index(IMAGE_TOKEN_INDEX)
        short = prompt[:first + 1] + prompt[first + count:]  # the row as LLaVA-NeXT gets it
        with torch.no_grad():
            oracle.append(oracle_logps(model, checkpoint.tensors, short, [c, r],
                                       v["pixel_values_videos"][0], newline_position))
        prompts.append(prompt), chosen.append(c), rejected.append(r), videos.append(v)
    oracle = torch.stack(oracle)
    with torch.no_grad():
        batch = PairPacker(fast.adapter).pack(prompts, chosen, rejected, videos)
        packed = fast.policy_logps(batch)
        stock = stock_pair_logps(model, prompts, chosen, rejected, videos)
    torch.testing.assert_close(packed, oracle, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stock, oracle, rtol=1e-5, atol=1e-5)


# ---- the prompt --------------------------------------------------------------------------------
def test_time_instruction_prompt(checkpoint, tokenizer, tmp_path):
    """The user turn is ``<image>\\n{time instruction}\\n{question}`` (LLaVA-NeXT train.py,
    lmms-eval llava_vid), the instruction's text verbatim; off when config.json says
    add_time_instruction false; a video without its times is an error naming them."""
    model = load_llava_video(checkpoint.folder)
    adapter = adapter_for(model)
    v = {"pixel_values_videos": frames(3, 1)[None], "frame_timestamps": [0.0, 6.25, 12.5],
         "video_seconds": 13.0}

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    before = ids("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    instruction = ("The video lasts for 13.00 seconds, and 3 frames are uniformly sampled from "
                   "it. These frames are located at 0.00s,6.25s,12.50s.Please answer the "
                   "following questions related to this video.")
    after = ids(f"\n{instruction}\nwhat happened ?<|im_end|>\n<|im_start|>assistant\n")
    video_ids = [IMAGE_TOKEN_INDEX] * (3 * TOKENS_PER_FRAME)
    assert adapter.prompt_ids(tokenizer, "what happened ?", v) == before + video_ids + after
    plain = ids("\nwhat happened ?<|im_end|>\n<|im_start|>assistant\n")
    assert adapter.prompt_ids(tokenizer, "what happened ?", v, time_instruction=False) == \
        before + video_ids + plain
    off = adapter_for(load_llava_video(variant(checkpoint, tmp_path / "off",
                                               add_time_instruction=False)))
    assert off.prompt_ids(tokenizer, "what happened ?", v) == before + video_ids + plain
    with pytest.raises(ValueError, match="video_seconds"):
        adapter.prompt_ids(tokenizer, "what happened ?", {"pixel_values_videos": v[
            "pixel_values_videos"]})


# ---- export and conversion ---------------------------------------------------------------------
def test_export_reload_gives_the_same_logits(checkpoint, tmp_path):
    model = load_llava_video(checkpoint.folder)
    out = save_llava_video(model, tmp_path / "export", max_shard_bytes=20_000)
    assert len(list(out.glob("model-*.safetensors"))) > 1
    written = json.loads((out / "config.json").read_text())
    assert written == checkpoint.cfg  # config.json written back as it came
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == set(checkpoint.tensors)
    again = load_llava_video(out)
    ids = torch.tensor([[7, 8] + [IMAGE_TOKEN_INDEX] * (2 * TOKENS_PER_FRAME) + [9, 10, 11]])
    pixels = frames(2, 3)[None]
    with torch.no_grad():
        torch.testing.assert_close(again(ids, pixels).logits, model(ids, pixels).logits,
                                   rtol=0, atol=0)


def onevision_ids(prompt: list[int], video_token_id: int) -> torch.Tensor:
    return torch.tensor([[video_token_id if t == IMAGE_TOKEN_INDEX else t for t in prompt]])


def test_convert_cli_to_llava_onevision(checkpoint, tokenizer, tmp_path):
    """``tpo-fast convert``: transformers' LlavaOnevisionForConditionalGeneration gives our
    logits — through its own video path for a one_token folder (the newline layout it has); for
    the published grid layout the weights convert exactly (text logits, the tower + projector +
    pooling rows, and the grid spliced from its own modules), and the converter warns."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from tpo_fast.cli import main

    one = variant(checkpoint, tmp_path / "one", mm_newline_position="one_token")
    assert main(["convert", str(one), str(tmp_path / "one_hf")]) == 0
    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "one_hf").eval()
    ours = load_llava_video(one)
    adapter = adapter_for(ours)
    v = video(3, seed=4)
    prompt = adapter.prompt_ids(tokenizer, "what happened ?", v) + [30, 31]
    video_id = hf.config.video_token_id
    assert video_id == tokenizer.convert_tokens_to_ids("<video>")
    with torch.no_grad():
        mine = ours(torch.tensor([prompt]), v["pixel_values_videos"]).logits
        theirs = hf(input_ids=onevision_ids(prompt, video_id),
                    pixel_values_videos=v["pixel_values_videos"]).logits
    torch.testing.assert_close(theirs, mine, rtol=1e-5, atol=1e-5)

    with pytest.warns(UserWarning, match="mm_newline_position 'grid'"):
        assert main(["convert", str(checkpoint.folder), str(tmp_path / "grid_hf")]) == 0
    hf = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "grid_hf").eval()
    ours = load_llava_video(checkpoint.folder)
    adapter = adapter_for(ours)
    text = [7, 8, 9, 10, 11, 12]
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=torch.tensor([text])).logits,
                                   ours(torch.tensor([text])).logits, rtol=1e-5, atol=1e-5)
        rows = hf.model.get_video_features(v["pixel_values_videos"], vision_feature_layer=-1,
                                           vision_feature_select_strategy="full").pooler_output
        pooled = ours.pooled_frame_features(v["pixel_values_videos"][0])
        torch.testing.assert_close(rows[0, :-1], pooled.reshape(-1, 32), rtol=1e-5, atol=1e-6)
        # the grid, spliced from the converted model's own pooled rows and image_newline
        grid = torch.cat([rows[0, :-1].reshape(3, 3, 3, 32),
                          hf.model.image_newline.expand(3, 3, 1, 32)], dim=2).reshape(-1, 32)
        prompt = adapter.prompt_ids(tokenizer, "what happened ?", v)
        ids = onevision_ids(prompt, video_id)
        embeds = hf.get_input_embeddings()(ids)
        embeds[ids == video_id] = grid
        torch.testing.assert_close(hf(inputs_embeds=embeds).logits,
                                   ours(torch.tensor([prompt]), v["pixel_values_videos"]).logits,
                                   rtol=1e-5, atol=1e-5)


# ---- bad folders -------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, match", [
    ({"mm_vision_tower": "openai/clip-vit-large-patch14-336"}, "model_type 'llava'"),
    ({"mm_vision_tower": "google/siglip-base-patch16-224"}, "not known offline"),
    ({"add_faster_video": True}, "add_faster_video"),
    ({"mm_newline_position": "diagonal"}, "mm_newline_position 'diagonal'"),
    ({"mm_spatial_pool_mode": "conv"}, "mm_spatial_pool_mode 'conv'"),
    ({"mm_hidden_size": 1152}, "mm_hidden_size 1152"),
])
def test_bad_configs_are_clear_errors_before_any_build(checkpoint, tmp_path, changes, match):
    """A model_type "llava" folder that is not LLaVA-Video (transformers would build a
    default-size Llava from it first) or holds an unsupported setting: one error naming it."""
    folder = variant(checkpoint, tmp_path / "bad", **changes)
    start = time.monotonic()
    with pytest.raises(LlavaNextCheckpointError, match=match):
        load_llava_next(folder)
    assert time.monotonic() - start < 10


def test_missing_tensor_is_named(checkpoint, tmp_path):
    folder = Path(shutil.copytree(checkpoint.folder, tmp_path / "m"))
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    del index["weight_map"]["model.image_newline"]
    index_file.write_text(json.dumps(index))
    with pytest.raises(LlavaNextCheckpointError, match="1 missing: .*model.image_newline"):
        load_llava_video(folder)


# ---- the CLI on 2 processes --------------------------------------------------------------------
@pytest.mark.multiprocess_cpu
def test_zero3_two_processes_live_reference_and_export(checkpoint, tmp_path):
    """2 optimizer steps on 2 gloo processes under ZeRO-3, the reference a second model loaded
    from the folder; the export is the LLaVA-NeXT layout again, and reloads."""
    from tpo_fast.synthetic.pairs import make_pairs
    from tpo_fast.train.metrics import read_metrics

    pairs = make_pairs(tmp_path / "pairs", n_pairs=16, n_videos=4, seed=2)
    out = tmp_path / "run"
    tpo_fast(["train", ROOT / "configs" / "tiny.yaml", "model.tiny=null",
              f"model.path={checkpoint.folder}", f"data.train={pairs}", f"run.output_dir={out}",
              *QUIET, "deepspeed.zero_stage=3", "loss.reference=model", "optim.max_steps=2",
              "optim.global_batch_size=8", "data.frames=4", "data.token_budget=1024",
              "optim.warmup_ratio=0"], nproc=2)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert rows[0]["chosen_reward"] == 0.0  # the live reference is the starting policy
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["reference"] == "model"
    final = out / "final"
    assert is_llava_video_checkpoint(final)
    assert json.loads((final / "config.json").read_text())["mm_newline_position"] == "grid"
    trained, start = load_llava_video(final), load_llava_video(checkpoint.folder)
    changed = [n for n, p in trained.state_dict().items()
               if not torch.equal(p, start.state_dict()[n])]
    assert changed and not any(n.startswith("vision_tower.") for n in changed)
