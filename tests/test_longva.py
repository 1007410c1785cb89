"""LongVA in the LLaVA-NeXT checkpoint layout.

A tiny random checkpoint, written here by hand in LongVA's layout (names and shapes listed
below, sharded safetensors + index + config.json with mm_* fields), loads; its forward equals the
plain composition of its parts; packed log-probs and gradients equal the stock forward on two
unpacked rows; save -> load is bitwise exact; broken checkpoints are errors that name the problem.
"""

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_models_packed import count_calls, make_pairs, stock_logps

from tpo_fast.config import load_config
from tpo_fast.data.packer import PairPacker
from tpo_fast.models import PreferenceModel, adapter_for, load_longva, save_longva
from tpo_fast.models.longva import (
    IMAGE_TOKEN_INDEX,
    LongVAAdapter,
    LongVAConfig,
    LongVAForCausalLM,
)
from tpo_fast.models.longva_checkpoint import (
    KNOWN_VISION_TOWERS,
    LongVACheckpointError,
    is_longva_checkpoint,
)
from tpo_fast.models.tiny import tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOWER = "model.vision_tower.vision_tower.vision_model."
# CLIP: 24 px frames, 4 px patches -> a 6x6 grid, pooled 2x2 -> 9 tokens per frame; 3 layers, so
# select layer -2 (the output of layer 1 of 0..2) is neither the first nor the last.
CLIP = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=3, image_size=24, patch_size=4)
HEADS = {"num_attention_heads": 2}  # the only CLIP field the weights' shapes do not give
TEXT = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


def longva_config(vocab_size: int) -> dict:
    """A LongVA-7B-style config.json at tiny sizes."""
    return {
        "_name_or_path": "tiny/LongVA", "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava_qwen", "attention_dropout": 0.0, "bos_token_id": 2,
        "eos_token_id": 5, "hidden_act": "silu", **TEXT, "vocab_size": vocab_size,
        "image_aspect_ratio": "anyres", "image_grid_pinpoints": [[336, 672], [336, 1008]],
        "max_position_embeddings": 4096, "max_window_layers": 2, "rms_norm_eps": 1e-6,
        "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 4096,
        "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
        "use_sliding_window": False, "mm_hidden_size": CLIP["hidden_size"],
        "mm_patch_merge_type": "unires", "mm_spatial_pool_mode": "average",
        "mm_spatial_pool_stride": 2, "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": None, "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
        "mm_vision_tower": "tiny-random-clip", "tokenizer_model_max_length": 4096,
    }


def longva_shapes(cfg: dict) -> dict:
    """Every tensor of a LongVA (LlavaQwenForCausalLM) checkpoint, by name: the layout spec."""
    c, i_v, grid = CLIP["hidden_size"], CLIP["intermediate_size"], 24 // 4
    h, i_t, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    shapes = {TOWER + "embeddings.class_embedding": (c,),
              TOWER + "embeddings.patch_embedding.weight": (c, 3, 4, 4),
              TOWER + "embeddings.position_embedding.weight": (grid * grid + 1, c),
              TOWER + "pre_layrnorm.weight": (c,), TOWER + "pre_layrnorm.bias": (c,),
              TOWER + "post_layernorm.weight": (c,), TOWER + "post_layernorm.bias": (c,)}
    for n in range(CLIP["num_hidden_layers"]):
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
               "model.embed_tokens.weight": (v, h), "model.norm.weight": (h,),
               "lm_head.weight": (v, h)}
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


def our_name(name: str) -> str:
    """Checkpoint name -> LongVAForCausalLM state_dict name (transformers 5: CLIPVisionModel has
    no vision_model child)."""
    for theirs, ours in ((TOWER, "vision_tower."), ("model.mm_projector.", "mm_projector."),
                         ("model.", "language_model."), ("lm_head.", "lm_head.")):
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    raise AssertionError(name)


def write_checkpoint(folder: Path, cfg: dict, tensors: dict, shards: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    names = list(tensors)
    weight_map, total = {}, 0
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, folder / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
        total += sum(t.numel() * t.element_size() for t in part.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer("longva")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    cfg = longva_config(len(tokenizer))
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape in longva_shapes(cfg).items():
        value = torch.randn(shape, generator=g) * (0.3 if name.endswith("bias") else 0.15)
        tensors[name] = value + 1 if "norm" in name and name.endswith("weight") else value
    folder = tmp_path_factory.mktemp("LongVA-tiny")
    write_checkpoint(folder, cfg, tensors)
    return SimpleNamespace(folder=folder, cfg=cfg, tensors=tensors)


def copy_checkpoint(checkpoint, dest: Path) -> Path:
    return Path(shutil.copytree(checkpoint.folder, dest))


# ---- loading -------------------------------------------------------------------------------
def test_every_tensor_reaches_its_module(checkpoint):
    model = load_longva(checkpoint.folder, vision_config=HEADS)
    state = model.state_dict()
    assert len(state) == len(checkpoint.tensors)  # nothing left uninitialised
    for name, tensor in checkpoint.tensors.items():
        assert torch.equal(state[our_name(name)], tensor), name
    vision = model.config.vision_config
    assert (vision.image_size, vision.patch_size, vision.num_hidden_layers, vision.hidden_size,
            vision.intermediate_size, vision.num_attention_heads) == (24, 4, 3, 16, 24, 2)
    assert not model.training and model.dtype == torch.float32
    assert is_longva_checkpoint(checkpoint.folder) and not is_longva_checkpoint(ROOT)
    assert adapter_for(model).__class__ is LongVAAdapter


def test_loaded_model_equals_a_normally_built_one(checkpoint):
    """Loading builds without weight init; buffers (RoPE, CLIP positions) must still be right."""
    loaded = load_longva(checkpoint.folder, vision_config=HEADS)
    built = LongVAForCausalLM(LongVAConfig(checkpoint.cfg, loaded.config.vision_config))
    built.load_state_dict(loaded.state_dict())
    ids = torch.tensor([[7, 8] + [IMAGE_TOKEN_INDEX] * 9 + [9, 10, 11]])
    pixels = torch.randn(1, 1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded(ids, pixels).logits, built.eval()(ids, pixels).logits,
                               rtol=0, atol=0)


def hand_forward(model, tensors: dict, input_ids: torch.Tensor, frames: torch.Tensor):
    """LongVA's forward written out: CLIP up to the select layer, CLS dropped, the projector
    (checkpoint weights), 2x2 mean pooling per frame, scatter into the token embeddings, Qwen2,
    lm_head (checkpoint weights)."""
    clip = model.vision_tower
    h = clip.pre_layrnorm(clip.embeddings(frames))
    for layer in clip.encoder.layers[:CLIP["num_hidden_layers"] - 1]:  # hidden_states[-2]
        h = layer(h, None)
    h = h[:, 1:]  # [F, 36, 16]
    h = F.linear(h, tensors["model.mm_projector.0.weight"], tensors["model.mm_projector.0.bias"])
    h = F.linear(F.gelu(h), tensors["model.mm_projector.2.weight"],
                 tensors["model.mm_projector.2.bias"])
    n, _, d = h.shape
    pooled = h.reshape(n, 3, 2, 3, 2, d).mean(dim=(2, 4)).reshape(n * 9, d)  # row-major 3x3
    embeds = tensors["model.embed_tokens.weight"][input_ids.clamp(min=0)]
    embeds[input_ids == IMAGE_TOKEN_INDEX] = pooled
    hidden = model.language_model(inputs_embeds=embeds[None]).last_hidden_state
    return hidden @ tensors["lm_head.weight"].T


def test_forward_equals_hand_composition(checkpoint):
    model = load_longva(checkpoint.folder, vision_config=HEADS)
    frames = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([4, 20, 21, 6] + [IMAGE_TOKEN_INDEX] * 18 + [30, 31, 32, 5, 4])
    with torch.no_grad():
        got = model(ids[None], frames[None]).logits
        want = hand_forward(model, checkpoint.tensors, ids, frames)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert adapter_for(model).num_video_tokens({"pixel_values_videos": frames[None]}) == 18
    with pytest.raises(ValueError, match="holds 17 video tokens but the videos make 18"):
        model(torch.cat([ids[:4], ids[5:]])[None], frames[None])


@pytest.mark.parametrize("train_vision_tower", [False, True])
def test_packed_equals_unpacked_on_the_loaded_checkpoint(checkpoint, tokenizer,
                                                         train_vision_tower):
    slow = load_longva(checkpoint.folder, vision_config=HEADS)
    fast = PreferenceModel(copy.deepcopy(slow), train_vision_tower=train_vision_tower)
    trainable = {n: p.requires_grad for n, p in fast.model.named_parameters()}
    for name, p in slow.named_parameters():
        p.requires_grad_(trainable[name])
    pairs = make_pairs("longva", tokenizer, slow, 4, seed=3)
    weights = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))

    slow_calls, h1 = count_calls(slow.vision_tower)
    want = stock_logps(slow, *pairs)
    (want * weights).sum().backward()
    fast_calls, h2 = count_calls(fast.model.vision_tower)
    got = fast.policy_logps(PairPacker(fast.adapter).pack(*pairs))
    (got * weights).sum().backward()
    h1.remove(), h2.remove()

    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    assert len(fast_calls) == 1 and len(slow_calls) == 8  # packed: one tower call per batch
    slow_params = dict(slow.named_parameters())
    checked = 0
    for name, p in fast.model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None and slow_params[name].grad is None, name
            continue
        torch.testing.assert_close(p.grad, slow_params[name].grad, rtol=1e-4, atol=1e-6,
                                   msg=name)
        checked += 1
    tower = sum(1 for _ in fast.model.vision_tower.parameters())
    assert checked == len(trainable) - (0 if train_vision_tower else tower)
    patch = fast.model.vision_tower.embeddings.patch_embedding.weight
    assert (patch.grad is not None) == train_vision_tower


# ---- export --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_save_load_round_trip_is_exact(checkpoint, tokenizer, tmp_path, dtype):
    model = load_longva(checkpoint.folder, vision_config=HEADS, dtype=dtype)
    out = save_longva(model, tmp_path / "exported", tokenizer=tokenizer, max_shard_bytes=40_000)
    again = load_longva(out, vision_config=HEADS)

    before, after = model.state_dict(), again.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert tensor.dtype == after[name].dtype and torch.equal(tensor, after[name]), name
    assert again.config.llava == model.config.llava
    assert again.config.vision_config.to_dict() == model.config.vision_config.to_dict()

    exported = json.loads((out / "config.json").read_text())
    assert exported == checkpoint.cfg | {"torch_dtype": "bfloat16" if dtype else "float32"}
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"].keys() == checkpoint.tensors.keys()  # LongVA's own names
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and {s.name for s in shards} == set(index["weight_map"].values())
    written = {k: v for s in shards for k, v in load_file(s).items()}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for t in written.values())
    for name, tensor in checkpoint.tensors.items():
        expected = tensor if dtype is None else tensor.to(dtype)
        assert torch.equal(written[name], expected), name
    with safe_open(shards[0], framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert (out / "tokenizer_config.json").is_file()
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        save_longva(model, out)


def test_export_casts_and_records_the_dtype(checkpoint, tmp_path):
    model = load_longva(checkpoint.folder, vision_config=HEADS)
    out = save_longva(model, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    again = load_longva(out, vision_config=HEADS)
    assert again.dtype == torch.bfloat16
    assert torch.equal(again.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))


def test_single_file_checkpoint_loads(checkpoint, tmp_path):
    folder = tmp_path / "single"
    folder.mkdir()
    shutil.copy(checkpoint.folder / "config.json", folder)
    save_file(checkpoint.tensors, folder / "model.safetensors", metadata={"format": "pt"})
    model = load_longva(folder, vision_config=HEADS)
    assert torch.equal(model.lm_head.weight, checkpoint.tensors["lm_head.weight"])


# ---- errors --------------------------------------------------------------------------------
def rewrite(folder: Path, drop=(), add=None, replace=None) -> None:
    """Edit a written checkpoint: drop tensors, add tensors (to the first shard), replace some."""
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    for file in sorted(set(index["weight_map"].values())):
        tensors = load_file(folder / file)
        tensors = {k: (replace or {}).get(k, v) for k, v in tensors.items() if k not in drop}
        if add and file.startswith("model-00001"):
            tensors |= add
            index["weight_map"] |= dict.fromkeys(add, file)
        save_file(tensors, folder / file, metadata={"format": "pt"})
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k not in drop}
    index_path.write_text(json.dumps(index))


def test_missing_and_unexpected_tensors_are_named(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "broken")
    rewrite(folder, drop={"model.layers.1.mlp.up_proj.weight"},
            add={"model.image_newline": torch.zeros(32),
                 TOWER + "embeddings.position_ids": torch.arange(37)[None]})  # a known buffer
    with pytest.raises(LongVACheckpointError) as err:
        load_longva(folder, vision_config=HEADS)
    message = str(err.value)
    assert "1 missing: ['model.layers.1.mlp.up_proj.weight']" in message
    assert "1 unexpected: ['model.image_newline']" in message

    folder = copy_checkpoint(checkpoint, tmp_path / "extra")
    rewrite(folder, add={"model.vision_resampler.weight": torch.zeros(2)})
    with pytest.raises(LongVACheckpointError, match=r"tensors 1 unexpected: "
                                                    r"\['model.vision_resampler.weight'\]$"):
        load_longva(folder, vision_config=HEADS)


def test_wrong_shapes_and_broken_indexes_are_named(checkpoint, tmp_path):
    folder = copy_checkpoint(checkpoint, tmp_path / "shape")
    rewrite(folder, replace={"model.norm.weight": torch.ones(31)})
    wrong = r"model\.norm\.weight: \(31,\) in the checkpoint, \(32,\) in the model"
    with pytest.raises(LongVACheckpointError, match=wrong):
        load_longva(folder, vision_config=HEADS)

    folder = copy_checkpoint(checkpoint, tmp_path / "lost-shard")
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(LongVACheckpointError, match="do not exist: .*model-00002-of-00003"):
        load_longva(folder, vision_config=HEADS)

    folder = copy_checkpoint(checkpoint, tmp_path / "bad-index")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "model-00001-of-00003.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(LongVACheckpointError, match=r"puts \['lm_head.weight'\] in model-00001"):
        load_longva(folder, vision_config=HEADS)


def edited_config(checkpoint, tmp_path, **changes) -> Path:
    folder = copy_checkpoint(checkpoint, tmp_path / "cfg")
    cfg = {k: v for k, v in (checkpoint.cfg | changes).items() if v is not ...}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("changes, vision, message", [
    (dict(mm_vision_tower=...), HEADS, "has no mm_vision_tower: not a LLaVA-NeXT checkpoint"),
    (dict(model_type="llama"), HEADS, "model_type 'llama' is not a LongVA"),
    ({}, None, "vision tower 'tiny-random-clip' is not known offline: pass vision_config="),
    ({}, {"hidden_act": "gelu"}, "must give num_attention_heads"),
    ({}, HEADS | {"image_size": 32}, r"'image_size': \(32, 24\)"),
    (dict(mm_patch_merge_type="spatial_unpad"), HEADS, "mm_patch_merge_type 'spatial_unpad'"),
    (dict(mm_vision_select_feature="cls_patch"), HEADS, "mm_vision_select_feature 'cls_patch'"),
    (dict(mm_hidden_size=1024), HEADS, "mm_hidden_size 1024 but the CLIP tower's hidden_size"),
])
def test_config_errors(checkpoint, tmp_path, changes, vision, message):
    folder = edited_config(checkpoint, tmp_path, **changes)
    with pytest.raises(LongVACheckpointError, match=message):
        load_longva(folder, vision_config=vision)


def test_known_tower_needs_no_vision_config(checkpoint, tmp_path):
    """A known name gives the config, still checked against the weights (here it must fail)."""
    folder = edited_config(checkpoint, tmp_path,
                           mm_vision_tower="openai/clip-vit-large-patch14-336")
    with pytest.raises(LongVACheckpointError, match=r"'hidden_size': \(1024, 16\)"):
        load_longva(folder)


# ---- LongVA conventions --------------------------------------------------------------------
def test_released_model_makes_144_tokens_per_frame():
    cfg = longva_config(152064) | dict(hidden_size=3584, mm_hidden_size=1024,
                                       mm_vision_tower="openai/clip-vit-large-patch14-336")
    config = LongVAConfig(cfg, KNOWN_VISION_TOWERS["openai/clip-vit-large-patch14-336"])
    assert (config.patches_per_side, config.tokens_per_frame) == (24, 144)
    adapter = LongVAAdapter(SimpleNamespace(config=config))
    assert adapter.num_video_tokens({"pixel_values_videos": torch.empty(1, 32, 3, 0, 0)}) == 4608
    assert adapter.video_token_id == IMAGE_TOKEN_INDEX == -200


class CharTokenizer:
    """One id per character: shows the exact text a prompt is built from."""

    calls = 0

    def __call__(self, text, add_special_tokens=True):
        assert not add_special_tokens
        self.calls += 1
        return {"input_ids": [ord(c) for c in text]}


def test_prompt_is_longva_qwen_1_5_template(checkpoint, tokenizer):
    model = load_longva(checkpoint.folder, vision_config=HEADS)
    adapter = adapter_for(model)
    video = {"pixel_values_videos": torch.zeros(1, 2, 3, 24, 24)}

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    # The model card's prompt, with <image> replaced as tokenizer_image_token does.
    before = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    after = "\nhow many shapes appeared ?<|im_end|>\n<|im_start|>assistant\n"
    prompt = adapter.prompt_ids(tokenizer, "how many shapes appeared ?", video)
    assert prompt == ids(before) + [IMAGE_TOKEN_INDEX] * 18 + ids(after)
    no_system = adapter.prompt_ids(tokenizer, "how many ?", video, system="")
    assert no_system[:len(ids("<|im_start|>user\n"))] == ids("<|im_start|>user\n")
    assert adapter.response_ids(tokenizer, "a red circle")[-1] == tokenizer.convert_tokens_to_ids(
        "<|im_end|>")
    # Exact text, character by character (the tiny word-level tokenizer drops newlines).
    chars = CharTokenizer()
    prompt = adapter.prompt_ids(chars, "what happened ?", video)
    card = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<image>\nwhat happened ?<|im_end|>\n<|im_start|>assistant\n")
    at = card.index("<image>")
    assert prompt == [ord(c) for c in card[:at]] + [IMAGE_TOKEN_INDEX] * 18 + \
        [ord(c) for c in card[at + len("<image>"):]]
    assert chars.calls == 2  # each side of the placeholder tokenized on its own
    with pytest.raises(ValueError, match="2 video placeholders '<image>'"):
        adapter.prompt_ids(tokenizer, "what is in <image> ?", video)
    with pytest.raises(ValueError, match="chat_template is not supported"):
        adapter.prompt_ids(tokenizer, "what ?", video, chat_template="{{ x }}")


def test_preset_config_has_the_paper_settings():
    path = ROOT / "configs" / "longva_7b_tpo.yaml"
    assert path.read_text().splitlines()[0] == "# tpo-fast train configs/longva_7b_tpo.yaml"
    cfg = load_config(path)
    assert (cfg.loss.beta, cfg.loss.sft_weight, cfg.loss.loss_type) == (0.3, 0.5, "sigmoid")
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.optim.global_batch_size) == (4e-6, 1, 64)
    assert (cfg.optim.scheduler, cfg.optim.warmup_ratio) == ("cosine", 0.1)
    assert (cfg.model.train_vision_tower, cfg.model.train_projector) == (False, True)
    assert cfg.data.frames == 32


def test_import_stays_light():
    code = ("import sys, tpo_fast.models, tpo_fast.models.longva, tpo_fast.models.longva_checkpoint"
            "\nprint('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
