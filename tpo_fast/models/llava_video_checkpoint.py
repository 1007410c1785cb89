"""Load, export and convert LLaVA-Video checkpoints in the LLaVA-NeXT layout, offline.

A LLaVA-Video folder (lmms-lab/LLaVA-Video-7B-Qwen2, ruili0/LLaVA-Video-7B-Qwen2-TPO) is a
LLaVA-NeXT one (``llava_next_layout``: names, shards, index) with a SigLIP tower named in
``mm_vision_tower`` ("google/siglip-so400m-patch14-384"), whose config is not in the folder.
``load_llava_video`` takes it from ``vision_config=`` (a ``SiglipVisionConfig``, a dict, or a
folder with its config.json; a dict is completed from the weights' shapes), else from a local
folder named by ``mm_vision_tower``, else from ``KNOWN_VISION_TOWERS``; every choice is checked
against the weights. ``save_llava_video`` writes the same layout back (the harness the paper
used, LLaVA-NeXT / lmms-eval's ``llava_vid``, loads it).

``convert_to_llava_onevision`` writes transformers' ``LlavaOnevisionForConditionalGeneration``
layout (the key mapping of transformers' convert_llava_onevision_weights_to_hf.py). Its video
path is LLaVA-NeXT's with ``mm_newline_position "one_token"`` (one ``image_newline`` after the
whole video) and bilinear pooling; a checkpoint trained with "grid" newlines (LLaVA-Video) keeps
its weights exactly, but transformers' forward places fewer newline tokens, so its video logits
differ from the original model's — the converter says so.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from tpo_fast.models.llava_next_layout import (
    DEFAULT_SHARD_BYTES,
    QWEN_MODEL_TYPES,
    TOWER_PREFIX,
    LlavaNextCheckpointError,
    building,
    load_checkpoint,
    read_llava_config,
    tower_config,
    tower_kind,
    tower_layers,
    write_folder,
)
from tpo_fast.models.llava_video import LlavaVideoConfig, LlavaVideoForCausalLM

LlavaVideoCheckpointError = LlavaNextCheckpointError

# SigLIP towers whose config is known offline: google/siglip-so400m-patch14-384 is LLaVA-NeXT's
# SigLipVisionConfig default (siglip_encoder.py) with the last of its 27 layers deleted (the
# checkpoint stores 26; transformers' LLaVA-OneVision conversion writes num_hidden_layers=26).
KNOWN_VISION_TOWERS = {
    "google/siglip-so400m-patch14-384": dict(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
        image_size=384, patch_size=14, num_channels=3, hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6, attention_dropout=0.0),
}


def vision_shapes(shapes: dict[str, tuple]) -> dict:
    """The SigLIP config fields that the stored tower's weight shapes determine."""
    try:
        patch = shapes[TOWER_PREFIX + "embeddings.patch_embedding.weight"]  # [C, 3, p, p]
        positions = shapes[TOWER_PREFIX + "embeddings.position_embedding.weight"][0]  # grid²
        fc1 = shapes[TOWER_PREFIX + "encoder.layers.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise LlavaVideoCheckpointError(f"the checkpoint has no SigLIP vision tower tensor {exc};"
                                        " LLaVA-NeXT stores it under " + TOWER_PREFIX) from None
    side = round(positions ** 0.5)
    return dict(hidden_size=patch[0], num_channels=patch[1], patch_size=patch[2],
                image_size=side * patch[2], intermediate_size=fc1[0],
                num_hidden_layers=tower_layers(shapes))


def resolve_vision_config(llava: dict, shapes: dict[str, tuple], vision_config=None):
    """The tower's ``SiglipVisionConfig`` (as stored), checked against the weights."""
    from transformers import SiglipVisionConfig

    derived = vision_shapes(shapes)
    config = tower_config(SiglipVisionConfig, "SigLIP", vision_config, llava, derived,
                          KNOWN_VISION_TOWERS)
    # (so400m: 384 px / 14 px patches = a 27-patch side, the last 6 pixels unused)
    derived["patches_per_side"] = derived.pop("image_size") // derived["patch_size"]
    given = {k: getattr(config, k) for k in derived if k != "patches_per_side"}
    given["patches_per_side"] = config.image_size // config.patch_size
    wrong = {k: (given[k], v) for k, v in derived.items() if given[k] != v}
    if wrong:
        raise LlavaVideoCheckpointError("the vision config does not match the checkpoint's "
                                        "tower (field: (config, weights)): " + str(wrong))
    return config


def load_llava_video(path, *, vision_config=None, dtype=None, device="cpu",
                     attn_implementation: str = "sdpa",
                     zero3_config: dict | None = None) -> LlavaVideoForCausalLM:
    """A LLaVA-Video checkpoint folder -> ``LlavaVideoForCausalLM`` in eval mode. Arguments as
    ``load_longva``'s (``vision_config``: the SigLIP tower's). Raises
    ``LlavaVideoCheckpointError`` naming missing, unexpected or mis-shaped tensors and
    unsupported settings, before any model is built."""
    return load_checkpoint(path, name="LLaVA-Video", model_types=QWEN_MODEL_TYPES,
                           config_class=LlavaVideoConfig, model_class=LlavaVideoForCausalLM,
                           resolve_vision_config=resolve_vision_config,
                           vision_config=vision_config, dtype=dtype, device=device,
                           attn_implementation=attn_implementation, zero3_config=zero3_config)


def save_llava_video(model: LlavaVideoForCausalLM, path, *, tokenizer=None, dtype=None,
                     max_shard_bytes: int = DEFAULT_SHARD_BYTES, state_dict: dict | None = None,
                     overwrite: bool = False) -> Path:
    """Write ``model`` as a LLaVA-Video checkpoint folder (config.json as loaded, shards +
    index, the tokenizer if given); arguments as ``save_longva``'s."""
    return write_folder(model, path, model.config.llava, tokenizer=tokenizer, dtype=dtype,
                        max_shard_bytes=max_shard_bytes, state_dict=state_dict,
                        overwrite=overwrite)


def is_llava_video_checkpoint(path) -> bool:
    """True for a LLaVA-NeXT-layout folder with a SigLIP tower and a Qwen2 model_type."""
    llava = read_llava_config(path)
    return (llava is not None and llava.get("model_type") in QWEN_MODEL_TYPES
            and tower_kind(llava) == "siglip")


# ---- transformers' LLaVA-OneVision layout ------------------------------------------------------
def onevision_state_dict(model: LlavaVideoForCausalLM) -> dict[str, torch.Tensor]:
    """Our tensors under ``LlavaOnevisionForConditionalGeneration`` names (transformers 5)."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("vision_tower."):
            # (both towers are the same transformers class: its module path is ours)
            key = "model.vision_tower." + name.removeprefix("vision_tower.")
        elif name.startswith("mm_projector."):
            index, rest = name.removeprefix("mm_projector.").split(".", 1)
            key = f"model.multi_modal_projector.linear_{int(index) // 2 + 1}.{rest}"
        elif name == "image_newline":
            key = "model.image_newline"
        elif name.startswith("language_model."):
            key = "model.language_model." + name.removeprefix("language_model.")
        else:
            key = name  # lm_head.weight
        out[key] = tensor
    return out


def onevision_config(model: LlavaVideoForCausalLM, tokenizer):
    """A ``LlavaOnevisionConfig`` for the model: the SigLIP tower as stored (hidden_states[-1]
    = the features LLaVA-NeXT takes), "full" features, the ``<image>`` / ``<video>`` token ids of
    ``tokenizer``."""
    from transformers import LlavaOnevisionConfig

    cfg = model.config
    ids = {}
    for token in ("<image>", "<video>"):
        found = tokenizer.convert_tokens_to_ids(token)
        if found is None or found == tokenizer.unk_token_id:
            raise LlavaVideoCheckpointError(f"the tokenizer has no {token} token (add it first)")
        if found >= cfg.text_config.vocab_size:
            raise LlavaVideoCheckpointError(f"{token} is id {found}, outside the model's "
                                            f"{cfg.text_config.vocab_size} embedding rows")
        ids[token] = found
    text = cfg.text_config.to_dict()
    text["model_type"] = "qwen2"
    vision = cfg.vision_config.to_dict()
    vision.update(model_type="siglip_vision_model", vision_use_head=False)
    return LlavaOnevisionConfig(
        text_config=text, vision_config=vision, image_token_index=ids["<image>"],
        video_token_index=ids["<video>"], vision_feature_layer=-1,
        vision_feature_select_strategy="full", use_image_newline_parameter=True,
        projector_hidden_act="gelu", tie_word_embeddings=cfg.text_config.tie_word_embeddings)


def convert_to_llava_onevision(path, out, *, tokenizer=None, dtype=None,
                               vision_config=None, overwrite: bool = False) -> Path:
    """Convert the LLaVA-Video folder ``path`` into a transformers LLaVA-OneVision folder
    ``out`` (config.json, safetensors, the tokenizer with ``<image>`` / ``<video>`` added if
    missing). Raises ``LlavaVideoCheckpointError`` for what the transformers class cannot hold
    (a projector other than mlp2x_gelu, pooling other than bilinear); warns when the video
    newlines differ (``mm_newline_position`` other than "one_token")."""
    from transformers import AddedToken, AutoTokenizer, LlavaOnevisionForConditionalGeneration

    out = Path(out)
    if out.exists() and not overwrite and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty (pass overwrite=True)")
    model = load_llava_video(path, vision_config=vision_config, dtype=dtype)
    cfg = model.config
    problems = []
    if cfg.mm_projector_type != "mlp2x_gelu":
        problems.append(f"mm_projector_type {cfg.mm_projector_type!r} (LLaVA-OneVision's "
                        "projector is mlp2x_gelu)")
    if cfg.mm_spatial_pool_mode != "bilinear":
        problems.append(f"mm_spatial_pool_mode {cfg.mm_spatial_pool_mode!r} (LLaVA-OneVision "
                        "pools bilinearly)")
    if not cfg.has_newline:
        problems.append(f"mm_patch_merge_type {cfg.mm_patch_merge_type!r} (LLaVA-OneVision has "
                        "an image_newline)")
    if problems:
        raise LlavaVideoCheckpointError(f"{path} cannot be written as LLaVA-OneVision: "
                                        + "; ".join(problems))
    if cfg.mm_newline_position != "one_token":
        warnings.warn(
            f"{path}: mm_newline_position {cfg.mm_newline_position!r}, but transformers' "
            "LLaVA-OneVision puts one image_newline after the whole video: the weights convert "
            "exactly, text-only logits are equal, but video inputs get other newline tokens "
            "than this model was trained with", stacklevel=2)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    for token in ("<image>", "<video>"):
        if token not in tokenizer.get_vocab():
            tokenizer.add_tokens(AddedToken(token, special=True, normalized=False),
                                 special_tokens=True)
    hf_config = onevision_config(model, tokenizer)
    hf_config.dtype = model.dtype
    with building(model.dtype, "cpu"):
        hf = LlavaOnevisionForConditionalGeneration(hf_config)
    state = onevision_state_dict(model)
    if cfg.text_config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.text_config.tie_word_embeddings
                                          and k == "lm_head.weight")]
    if missing or unexpected:
        raise LlavaVideoCheckpointError(f"LLaVA-OneVision names do not match: missing {missing},"
                                        f" unexpected {unexpected}")
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "tpo_fast_convert.json").write_text(json.dumps(
        {"source": str(Path(path).resolve()), "source_layout": "llava_next",
         "mm_newline_position": cfg.mm_newline_position}, indent=2) + "\n")
    return out


__all__ = ["KNOWN_VISION_TOWERS", "LlavaVideoCheckpointError", "convert_to_llava_onevision",
           "is_llava_video_checkpoint", "load_llava_video", "onevision_config",
           "onevision_state_dict", "resolve_vision_config", "save_llava_video", "vision_shapes"]
