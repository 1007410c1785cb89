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
tokenizer), so a trained model loads wherever LongVA loads.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import torch
from torch import nn

from tpo_fast.models.longva import CHECKPOINT_MODEL_TYPES, LongVAConfig, LongVAForCausalLM

CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DEFAULT_SHARD_BYTES = 5 * 1024**3

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

_TOWER = "model.vision_tower.vision_tower.vision_model."
# Buffers some writers saved; no module owns them as parameters, so they are skipped if present.
_IGNORABLE = re.compile(r"(^|\.)position_ids$|rotary_emb\.inv_freq$")


class LongVACheckpointError(ValueError):
    """A folder that is not a loadable LongVA checkpoint; the message names what is wrong."""


# ---- names ---------------------------------------------------------------------------------
def _tower_prefix(model: LongVAForCausalLM) -> str:
    # transformers 5.x CLIPVisionModel has no ``vision_model`` child (older versions do).
    return "vision_tower.vision_model." if hasattr(model.vision_tower, "vision_model") \
        else "vision_tower."


def checkpoint_names(model: LongVAForCausalLM) -> dict[str, str]:
    """{checkpoint name: our state_dict name} for every tensor a LongVA checkpoint stores."""
    ours_to_theirs = [(_tower_prefix(model), _TOWER), ("mm_projector.", "model.mm_projector."),
                      ("language_model.", "model."), ("lm_head.", "lm_head.")]
    tied = model.config.text_config.tie_word_embeddings
    names = {}
    for ours in model.state_dict():
        if tied and ours == "lm_head.weight":
            continue  # stored once, as model.embed_tokens.weight
        prefix, theirs = next((p, t) for p, t in ours_to_theirs if ours.startswith(p))
        names[theirs + ours[len(prefix):]] = ours
    return names


def _listing(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


# ---- reading -------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LongVACheckpointError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise LongVACheckpointError(f"{path} is not valid JSON: {exc}") from None


def _weight_map(folder: Path) -> dict[str, Path]:
    """{tensor name: shard file}, from the index or the single safetensors file."""
    from safetensors import safe_open

    if (folder / INDEX_NAME).is_file():
        index = _read_json(folder / INDEX_NAME)
        if not isinstance(index.get("weight_map"), dict):
            raise LongVACheckpointError(f"{folder / INDEX_NAME} has no weight_map")
        files = {name: folder / file for name, file in index["weight_map"].items()}
        absent = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if absent:
            raise LongVACheckpointError(f"{folder / INDEX_NAME} lists shard files that do not "
                                        f"exist: {absent}")
    elif (folder / SINGLE_NAME).is_file():
        with safe_open(folder / SINGLE_NAME, framework="pt") as f:
            files = {name: folder / SINGLE_NAME for name in f.keys()}
    else:
        raise LongVACheckpointError(f"{folder} holds neither {INDEX_NAME} nor {SINGLE_NAME}")
    return files


def _shapes(files: dict[str, Path]) -> dict[str, tuple]:
    """Every tensor's shape from the shard headers (no tensor data is read)."""
    from safetensors import safe_open

    shapes, by_file = {}, {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(file, framework="pt") as f:
            stored = set(f.keys())
            lost = [n for n in names if n not in stored]
            if lost:
                raise LongVACheckpointError(f"the index puts {_listing(lost)} in {file.name}, "
                                            "which does not hold them")
            for name in names:
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def vision_shapes(shapes: dict[str, tuple]) -> dict:
    """The CLIP config fields that the tower's weight shapes determine."""
    try:
        patch = shapes[_TOWER + "embeddings.patch_embedding.weight"]  # [C, 3, p, p]
        positions = shapes[_TOWER + "embeddings.position_embedding.weight"][0]  # grid² + 1
        fc1 = shapes[_TOWER + "encoder.layers.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise LongVACheckpointError(f"the checkpoint has no CLIP vision tower tensor {exc}; "
                                    "LongVA stores it under " + _TOWER) from None
    layers = {int(m.group(1)) for n in shapes
              if (m := re.match(re.escape(_TOWER) + r"encoder\.layers\.(\d+)\.", n))}
    side = round((positions - 1) ** 0.5)
    return dict(hidden_size=patch[0], num_channels=patch[1], patch_size=patch[2],
                image_size=side * patch[2], intermediate_size=fc1[0],
                num_hidden_layers=max(layers) + 1)


def resolve_vision_config(llava: dict, shapes: dict[str, tuple], vision_config=None):
    """The tower's ``CLIPVisionConfig``: ``vision_config`` (config, dict, or folder), else the
    ``mm_vision_tower`` folder, else ``KNOWN_VISION_TOWERS``; checked against the weights."""
    from transformers import CLIPVisionConfig

    derived = vision_shapes(shapes)
    name = llava.get("mm_vision_tower", "")
    if isinstance(vision_config, CLIPVisionConfig):
        config = vision_config
    elif isinstance(vision_config, dict):
        if "num_attention_heads" not in vision_config:
            raise LongVACheckpointError("vision_config must give num_attention_heads (the "
                                        "weights' shapes do not determine it)")
        config = CLIPVisionConfig(**{**derived, **vision_config})
    elif vision_config is not None:
        config = CLIPVisionConfig.from_pretrained(str(vision_config))
    elif name and Path(name).is_dir():
        config = CLIPVisionConfig.from_pretrained(name)
    elif name in KNOWN_VISION_TOWERS:
        config = CLIPVisionConfig(**KNOWN_VISION_TOWERS[name])
    else:
        raise LongVACheckpointError(
            f"the CLIP config of vision tower {name!r} is not known offline: pass vision_config= "
            "(a CLIPVisionConfig, a folder holding its config.json, or a dict with at least "
            f"num_attention_heads; the weights give {derived})")
    wrong = {k: (getattr(config, k), v) for k, v in derived.items() if getattr(config, k) != v}
    if wrong:
        raise LongVACheckpointError("the vision config does not match the checkpoint's tower "
                                    "(field: (config, weights)): " + str(wrong))
    return config


def _dtype(value) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise LongVACheckpointError(f"unknown dtype {value!r}")
    return dtype


@contextlib.contextmanager
def _building(dtype: torch.dtype, device):
    """Modules created inside get ``dtype`` parameters on ``device``, without initialisation
    (every parameter is overwritten from the checkpoint)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from transformers.modeling_utils import no_init_weights
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), no_init_weights():
            yield
    finally:
        torch.set_default_dtype(previous)


def _shape(tensor: torch.Tensor) -> tuple:
    """A tensor's full shape, also when ZeRO-3 has partitioned it away (``ds_shape``)."""
    return tuple(getattr(tensor, "ds_shape", tensor.shape))


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextlib.contextmanager
def _partitioned(zero3_config: dict | None):
    """Without a config: nothing. With one: modules created inside are ZeRO-3 partitioned."""
    if zero3_config is None:
        yield
        return
    import deepspeed

    # the dtype comes from the config's bf16 / fp16 flags (as for transformers' from_pretrained;
    # an explicit dtype= is overridden on accelerators without fp16, e.g. the CPU)
    with deepspeed.zero.Init(config_dict_or_path=zero3_config):
        yield


@contextlib.contextmanager
def _gathered(params: list, zero3_config: dict | None):
    """ZeRO-3: gather one module's parameters, rank 0's writes scattered back on exit."""
    if zero3_config is None or not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        yield


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
    from safetensors import safe_open

    folder = Path(path)
    llava = _read_json(folder / CONFIG_NAME)
    if "mm_vision_tower" not in llava:
        raise LongVACheckpointError(f"{folder / CONFIG_NAME} has no mm_vision_tower: not a "
                                    "LLaVA-NeXT checkpoint")
    if llava.get("model_type") not in CHECKPOINT_MODEL_TYPES:
        raise LongVACheckpointError(f"{folder / CONFIG_NAME}: model_type "
                                    f"{llava.get('model_type')!r} is not a LongVA (Qwen2) model "
                                    f"(expected one of {CHECKPOINT_MODEL_TYPES})")
    files = _weight_map(folder)
    shapes = _shapes(files)
    try:
        config = LongVAConfig(llava, resolve_vision_config(llava, shapes, vision_config))
    except LongVACheckpointError:
        raise
    except ValueError as exc:
        raise LongVACheckpointError(f"{folder / CONFIG_NAME}: {exc}") from None
    dtype = _dtype(dtype) or _dtype(llava.get("torch_dtype")) or torch.float32
    with _building(dtype, device), _partitioned(zero3_config):
        model = LongVAForCausalLM(config, attn_implementation=attn_implementation)

    names = checkpoint_names(model)
    missing = names.keys() - shapes.keys()
    unexpected = {n for n in shapes.keys() - names.keys() if not _IGNORABLE.search(n)}
    if missing or unexpected:
        parts = [f"{len(missing)} missing: {_listing(missing)}"] if missing else []
        parts += [f"{len(unexpected)} unexpected: {_listing(unexpected)}"] if unexpected else []
        raise LongVACheckpointError(f"{folder} does not match a LongVA model of its config.json; "
                                    "tensors " + "; ".join(parts))
    params = dict(model.named_parameters())
    params.update(model.named_buffers())
    wrong = [f"{n}: {shapes[n]} in the checkpoint, {_shape(params[ours])} in the model"
             for n, ours in names.items() if shapes[n] != _shape(params[ours])]
    if wrong:
        raise LongVACheckpointError(f"{folder}: tensors of the wrong shape: {_listing(wrong)}")
    ours_to_file = {ours: (files[theirs], theirs) for theirs, ours in names.items()}
    handles: dict[Path, object] = {}
    reads = zero3_config is None or _rank() == 0  # ZeRO-3: rank 0 reads, the rest receive
    try:
        with torch.no_grad():
            for prefix, module in model.named_modules():
                prefix = f"{prefix}." if prefix else ""
                local = [(f"{prefix}{n}", t) for n, t in [*module.named_parameters(recurse=False),
                                                          *module.named_buffers(recurse=False)]]
                local = [(n, t) for n, t in local if n in ours_to_file]
                if not local:
                    continue
                with _gathered([t for _, t in local if isinstance(t, nn.Parameter)],
                               zero3_config):
                    for ours, tensor in local:
                        if not reads and isinstance(tensor, nn.Parameter):
                            continue  # (buffers are not partitioned: every rank loads them)
                        file, theirs = ours_to_file[ours]
                        if file not in handles:
                            handles[file] = safe_open(file, framework="pt")
                        tensor.copy_(handles[file].get_tensor(theirs))  # casts to its dtype
    finally:
        handles.clear()
    model.config.llava["torch_dtype"] = str(dtype).removeprefix("torch.")  # what it now holds
    return model.eval()


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
    from safetensors.torch import save_file

    folder = Path(path)
    if folder.exists() and not overwrite and (any(folder.glob("*.safetensors"))
                                              or (folder / CONFIG_NAME).exists()):
        raise FileExistsError(f"{folder} already holds a checkpoint (pass overwrite=True)")
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("model*.safetensors"), folder / INDEX_NAME]:
        old.unlink(missing_ok=True)

    tensors = state_dict if state_dict is not None else model.state_dict()
    dtype = _dtype(dtype)
    named = []
    for theirs, ours in checkpoint_names(model).items():
        tensor = tensors[ours].detach()
        named.append((theirs, tensor.to(dtype) if dtype is not None else tensor))
    shards, size = [[]], 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, tensor))
        size += nbytes
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: t.cpu().contiguous() for n, t in shard}, folder / file,
                  metadata={"format": "pt"})
        for name, tensor in shard:
            weight_map[name] = file
            total += tensor.numel() * tensor.element_size()
    (folder / INDEX_NAME).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        indent=2) + "\n")
    config = dict(model.config.llava)
    config["torch_dtype"] = str(named[0][1].dtype).removeprefix("torch.")
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def is_longva_checkpoint(path) -> bool:
    """True for a folder whose config.json is a LLaVA-NeXT LongVA one (``mm_vision_tower`` and a
    Qwen2 ``model_type``): such a folder loads with ``load_longva``, not ``from_pretrained``."""
    try:
        llava = json.loads((Path(path) / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return "mm_vision_tower" in llava and llava.get("model_type") in CHECKPOINT_MODEL_TYPES
