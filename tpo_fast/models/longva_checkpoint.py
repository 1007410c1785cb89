"""Load and export LongVA checkpoints in the LLaVA-NeXT layout, offline.

A LongVA folder (lmms-lab/LongVA-7B, ruili0/LongVA-7B-TPO) holds ``config.json`` (Qwen2 fields
plus ``mm_*`` fields), sharded safetensors with ``model.safetensors.index.json`` (or one
``model.safetensors``) and the tokenizer files. Tensor names are those of LongVA's
``LlavaQwenForCausalLM``; ours differ only by these prefixes::

    checkpoint                                         LongVAForCausalLM
    model.vision_tower.vision_tower.vision_model.*  <-> vision_tower.*         (CLIPVisionModel)
    model.mm_projector.*                            <-> mm_projector.*
    model.{embed_tokens,layers,norm}.*              <-> language_model.*       (Qwen2Model)
    lm_head.weight                                  <-> lm_head.weight

The CLIP tower's own config is not in the folder (LongVA fetches it by the name in
``mm_vision_tower``); ``load_longva`` takes it from ``vision_config=`` (a ``CLIPVisionConfig``, a
dict, or a folder with its config.json; a partial dict is completed from the weights' shapes),
else from a local folder named by ``mm_vision_tower``, else from ``KNOWN_VISION_TOWERS``. Every
choice is checked against the weights' shapes.

``save_longva`` writes the same layout (config.json as loaded, shards + index, optionally the
tokenizer), so a trained model loads wherever LongVA loads. The layout's reading, loading and
writing are shared with LLaVA-Video (``llava_next_layout``); ``LongVACheckpointError`` is its
``LlavaNextCheckpointError``.
"""

from __future__ import annotations

from pathlib import Path

from tpo_fast.models.llava_next_layout import (
    CONFIG_NAME,
    DEFAULT_SHARD_BYTES,
    INDEX_NAME,
    SINGLE_NAME,
    TOWER_PREFIX,
    LlavaNextCheckpointError,
    checkpoint_names,
    load_checkpoint,
    read_llava_config,
    tower_config,
    tower_kind,
    tower_layers,
    write_folder,
)
from tpo_fast.models.longva import CHECKPOINT_MODEL_TYPES, LongVAConfig, LongVAForCausalLM

# Vision towers whose CLIP config is known offline (openai/clip-vit-large-patch14-336's
# config.json: ViT-L/14 at 336 px; hidden_act quick_gelu, layer_norm_eps 1e-5).
KNOWN_VISION_TOWERS = {
    "openai/clip-vit-large-patch14-336": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, num_channels=3, projection_dim=768,
        hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "openai/clip-vit-large-patch14": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=224, patch_size=14, num_channels=3, projection_dim=768,
        hidden_act="quick_gelu", layer_norm_eps=1e-5),
}

_TOWER = TOWER_PREFIX
LongVACheckpointError = LlavaNextCheckpointError  # (the name this module always raised)
__all__ = ["CONFIG_NAME", "DEFAULT_SHARD_BYTES", "INDEX_NAME", "KNOWN_VISION_TOWERS",
           "SINGLE_NAME", "LongVACheckpointError", "checkpoint_names", "is_longva_checkpoint",
           "load_longva", "resolve_vision_config", "save_longva", "vision_shapes"]


# ---- reading -------------------------------------------------------------------------------
def vision_shapes(shapes: dict[str, tuple]) -> dict:
    """The CLIP config fields that the tower's weight shapes determine."""
    try:
        patch = shapes[_TOWER + "embeddings.patch_embedding.weight"]  # [C, 3, p, p]
        positions = shapes[_TOWER + "embeddings.position_embedding.weight"][0]  # grid² + 1
        fc1 = shapes[_TOWER + "encoder.layers.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise LongVACheckpointError(f"the checkpoint has no CLIP vision tower tensor {exc}; "
                                    "LongVA stores it under " + _TOWER) from None
    side = round((positions - 1) ** 0.5)
    return dict(hidden_size=patch[0], num_channels=patch[1], patch_size=patch[2],
                image_size=side * patch[2], intermediate_size=fc1[0],
                num_hidden_layers=tower_layers(shapes))


def resolve_vision_config(llava: dict, shapes: dict[str, tuple], vision_config=None):
    """The tower's ``CLIPVisionConfig``: ``vision_config`` (config, dict, or folder), else the
    ``mm_vision_tower`` folder, else ``KNOWN_VISION_TOWERS``; checked against the weights."""
    from transformers import CLIPVisionConfig

    derived = vision_shapes(shapes)
    config = tower_config(CLIPVisionConfig, "CLIP", vision_config, llava, derived,
                          KNOWN_VISION_TOWERS)
    wrong = {k: (getattr(config, k), v) for k, v in derived.items() if getattr(config, k) != v}
    if wrong:
        raise LongVACheckpointError("the vision config does not match the checkpoint's tower "
                                    "(field: (config, weights)): " + str(wrong))
    return config


def load_longva(path, *, vision_config=None, dtype=None, device="cpu",
                attn_implementation: str = "sdpa",
                zero3_config: dict | None = None) -> LongVAForCausalLM:
    """A LongVA checkpoint folder -> ``LongVAForCausalLM`` in eval mode.

    Args:
        vision_config: the CLIP tower's config (see the module docstring); needed unless the
            tower is in ``KNOWN_VISION_TOWERS`` or a local folder.
        dtype: parameter dtype (torch.dtype or name); default: config.json's ``torch_dtype``.
        device: where the model is built and loaded.
        zero3_config: a DeepSpeed ZeRO-3 config: the model is built under ``zero.Init`` (each
            rank holds only its partition, never the whole model) and loaded module by module,
            rank 0 reading the files and the others receiving their shards.
    Raises ``LongVACheckpointError`` naming missing, unexpected or mis-shaped tensors.
    """
    return load_checkpoint(path, name="LongVA", model_types=CHECKPOINT_MODEL_TYPES,
                           config_class=LongVAConfig, model_class=LongVAForCausalLM,
                           resolve_vision_config=resolve_vision_config,
                           vision_config=vision_config, dtype=dtype, device=device,
                           attn_implementation=attn_implementation, zero3_config=zero3_config)


# ---- writing -------------------------------------------------------------------------------
def save_longva(model: LongVAForCausalLM, path, *, tokenizer=None, dtype=None,
                max_shard_bytes: int = DEFAULT_SHARD_BYTES, state_dict: dict | None = None,
                overwrite: bool = False) -> Path:
    """Write ``model`` as a LongVA checkpoint folder: config.json (the loaded one, with
    ``torch_dtype`` set to what is written), ``model-0000i-of-0000n.safetensors`` shards of at
    most ``max_shard_bytes`` (a larger tensor gets a shard of its own), the index, and the
    tokenizer files if ``tokenizer`` is given.

    ``state_dict``: our-named tensors to write instead of the model's own (e.g. a ZeRO-3
    consolidated state dict); ``dtype``: cast the tensors (default: as they are).
    """
    return write_folder(model, path, model.config.llava, tokenizer=tokenizer, dtype=dtype,
                        max_shard_bytes=max_shard_bytes, state_dict=state_dict,
                        overwrite=overwrite)


def is_longva_checkpoint(path) -> bool:
    """True for a folder whose config.json is a LLaVA-NeXT LongVA one (``mm_vision_tower`` and a
    Qwen2 ``model_type``): such a folder loads with ``load_longva``, not ``from_pretrained``."""
    llava = read_llava_config(path)
    return (llava is not None and llava.get("model_type") in CHECKPOINT_MODEL_TYPES
            and tower_kind(llava) != "siglip")  # a SigLIP tower is LLaVA-Video
