"""The LLaVA-NeXT checkpoint layout, shared by LongVA and LLaVA-Video: reading, loading (also
ZeRO-3 partitioned), writing, and telling the families apart, offline.

A LLaVA-NeXT folder (``LlavaQwenForCausalLM.save_pretrained``) holds ``config.json`` (Qwen2
fields plus ``mm_*`` fields), sharded safetensors with ``model.safetensors.index.json`` (or one
``model.safetensors``) and the tokenizer files. Tensor names; ours differ only by prefix::

    checkpoint                                         our model (LongVA / LLaVA-Video)
    model.vision_tower.vision_tower.vision_model.*  <-> vision_tower.*     (CLIP / SigLIP tower)
    model.mm_projector.*                            <-> mm_projector.*
    model.image_newline                             <-> image_newline     ("unpad" merge types)
    model.{embed_tokens,layers,norm}.*              <-> language_model.*  (Qwen2Model)
    lm_head.weight                                  <-> lm_head.weight

(LLaVA-VL/LLaVA-NeXT llava/model/llava_arch.py ``LlavaMetaModel.__init__`` builds
``vision_tower``, ``mm_projector`` and, for an "unpad" ``mm_patch_merge_type``,
``image_newline``; transformers' convert_llava_onevision_weights_to_hf.py maps the same names.)

The family is read from config.json: a folder with ``mm_vision_tower`` is LLaVA-NeXT-layout; a
SigLIP tower (the name, or a local tower folder's ``model_type``) makes it LLaVA-Video, a CLIP
tower LongVA. ``load_llava_next`` picks the loader; any other LLaVA-NeXT folder is refused in
milliseconds, naming what it holds (transformers would build a default-size model from a
``model_type: "llava"`` config first).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import torch
from torch import nn

CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DEFAULT_SHARD_BYTES = 5 * 1024**3
TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
QWEN_MODEL_TYPES = ("llava", "llava_qwen", "qwen2")  # what LLaVA-NeXT Qwen2 folders declare
# Buffers some writers saved; no module owns them as parameters, so they are skipped if present.
IGNORABLE = re.compile(r"(^|\.)position_ids$|rotary_emb\.inv_freq$")


class LlavaNextCheckpointError(ValueError):
    """A folder that is not a loadable LLaVA-NeXT checkpoint; the message names what is wrong."""


# ---- names ---------------------------------------------------------------------------------
def checkpoint_names(model: nn.Module, keys=None) -> dict[str, str]:
    """{checkpoint name: our state_dict name} for every tensor the folder stores (a tied
    ``lm_head.weight`` is stored once, as ``model.embed_tokens.weight``); ``keys``: our names
    (default: the model's state_dict; an export passes its merged state dict's, since LoRA
    layers rename the model's own)."""
    # transformers 5.x CLIP/SigLIP vision models have no ``vision_model`` child (older ones do)
    tower = "vision_tower.vision_model." if hasattr(model.vision_tower, "vision_model") \
        else "vision_tower."
    ours_to_theirs = [(tower, TOWER_PREFIX), ("mm_projector.", "model.mm_projector."),
                      ("image_newline", "model.image_newline"), ("language_model.", "model."),
                      ("lm_head.", "lm_head.")]
    tied = model.config.text_config.tie_word_embeddings
    names = {}
    for ours in (model.state_dict() if keys is None else keys):
        if tied and ours == "lm_head.weight":
            continue
        prefix, theirs = next((p, t) for p, t in ours_to_theirs if ours.startswith(p))
        names[theirs + ours[len(prefix):]] = ours
    return names


def listing(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


# ---- reading -------------------------------------------------------------------------------
def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LlavaNextCheckpointError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise LlavaNextCheckpointError(f"{path} is not valid JSON: {exc}") from None


def weight_map(folder: Path) -> dict[str, Path]:
    """{tensor name: shard file}, from the index or the single safetensors file."""
    from safetensors import safe_open

    if (folder / INDEX_NAME).is_file():
        index = read_json(folder / INDEX_NAME)
        if not isinstance(index.get("weight_map"), dict):
            raise LlavaNextCheckpointError(f"{folder / INDEX_NAME} has no weight_map")
        files = {name: folder / file for name, file in index["weight_map"].items()}
        absent = sorted({str(f.name) for f in files.values() if not f.is_file()})
        if absent:
            raise LlavaNextCheckpointError(f"{folder / INDEX_NAME} lists shard files that do "
                                           f"not exist: {absent}")
    elif (folder / SINGLE_NAME).is_file():
        with safe_open(folder / SINGLE_NAME, framework="pt") as f:
            files = {name: folder / SINGLE_NAME for name in f.keys()}
    else:
        raise LlavaNextCheckpointError(f"{folder} holds neither {INDEX_NAME} nor {SINGLE_NAME}")
    return files


def tensor_shapes(files: dict[str, Path]) -> dict[str, tuple]:
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
                raise LlavaNextCheckpointError(f"the index puts {listing(lost)} in {file.name}, "
                                               "which does not hold them")
            for name in names:
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def tower_layers(shapes: dict[str, tuple]) -> int:
    """How many encoder layers the stored vision tower has."""
    layers = {int(m.group(1)) for n in shapes
              if (m := re.match(re.escape(TOWER_PREFIX) + r"encoder\.layers\.(\d+)\.", n))}
    return max(layers) + 1 if layers else 0


def as_dtype(value) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise LlavaNextCheckpointError(f"unknown dtype {value!r}")
    return dtype


# ---- building and loading ------------------------------------------------------------------
@contextlib.contextmanager
def building(dtype: torch.dtype, device, zero3_config: dict | None = None):
    """Modules created inside get ``dtype`` parameters on ``device``, without initialisation
    (every parameter is overwritten from the checkpoint); with a ZeRO-3 config they are
    partitioned (``zero.Init``; the dtype then comes from the config's bf16 / fp16 flags, as for
    transformers' from_pretrained)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from transformers.modeling_utils import no_init_weights
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), no_init_weights(), _partitioned(zero3_config):
            yield
    finally:
        torch.set_default_dtype(previous)


def full_shape(tensor: torch.Tensor) -> tuple:
    """A tensor's full shape, also when ZeRO-3 has partitioned it away (``ds_shape``)."""
    return tuple(getattr(tensor, "ds_shape", tensor.shape))


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextlib.contextmanager
def _partitioned(zero3_config: dict | None):
    if zero3_config is None:
        yield
        return
    import deepspeed

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


def load_tensors(model: nn.Module, folder: Path, files: dict[str, Path],
                 shapes: dict[str, tuple], zero3_config: dict | None, family: str) -> None:
    """Copy every checkpoint tensor into ``model`` (built to the folder's config), after checking
    that names and shapes match exactly. ZeRO-3: module by module, rank 0 reads the files and the
    other ranks receive their shards."""
    from safetensors import safe_open

    names = checkpoint_names(model)
    missing = names.keys() - shapes.keys()
    unexpected = {n for n in shapes.keys() - names.keys() if not IGNORABLE.search(n)}
    if missing or unexpected:
        parts = [f"{len(missing)} missing: {listing(missing)}"] if missing else []
        parts += [f"{len(unexpected)} unexpected: {listing(unexpected)}"] if unexpected else []
        raise LlavaNextCheckpointError(f"{folder} does not match a {family} model of its "
                                       "config.json; tensors " + "; ".join(parts))
    params = dict(model.named_parameters())
    params.update(model.named_buffers())
    wrong = [f"{n}: {shapes[n]} in the checkpoint, {full_shape(params[ours])} in the model"
             for n, ours in names.items() if shapes[n] != full_shape(params[ours])]
    if wrong:
        raise LlavaNextCheckpointError(f"{folder}: tensors of the wrong shape: {listing(wrong)}")
    ours_to_file = {ours: (files[theirs], theirs) for theirs, ours in names.items()}
    handles: dict[Path, object] = {}
    reads = zero3_config is None or _rank() == 0
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


def tower_config(config_class, tower: str, vision_config, llava: dict, derived: dict,
                 known: dict):
    """The vision tower's config (``config_class``: CLIP's or SigLIP's ``...VisionConfig``):
    ``vision_config`` (such a config, a dict with at least num_attention_heads over the fields
    the weights give, ``derived``, or a folder), else the ``mm_vision_tower`` folder, else
    ``known[mm_vision_tower]``. Not yet checked against the weights (the caller does that)."""
    name = llava.get("mm_vision_tower", "")
    if isinstance(vision_config, config_class):
        return vision_config
    if isinstance(vision_config, dict):
        if "num_attention_heads" not in vision_config:
            raise LlavaNextCheckpointError("vision_config must give num_attention_heads (the "
                                           "weights' shapes do not determine it)")
        return config_class(**{**derived, **vision_config})
    if vision_config is not None:
        return config_class.from_pretrained(str(vision_config))
    if name and Path(name).is_dir():
        return config_class.from_pretrained(name)
    if name in known:
        return config_class(**known[name])
    raise LlavaNextCheckpointError(
        f"the {tower} config of vision tower {name!r} is not known offline: pass vision_config= "
        f"(a {config_class.__name__}, a folder holding its config.json, or a dict with at least "
        f"num_attention_heads; the weights give {derived})")


def load_checkpoint(path, *, name: str, model_types, config_class, model_class,
                    resolve_vision_config, vision_config=None, dtype=None, device="cpu",
                    attn_implementation: str = "sdpa", zero3_config: dict | None = None):
    """One LLaVA-NeXT-layout family's folder -> ``model_class`` in eval mode (the steps LongVA
    and LLaVA-Video share): check config.json, read the weights' shapes, resolve the tower's
    config (``resolve_vision_config(llava, shapes, vision_config)``), build (under ``zero.Init``
    with ``zero3_config``) and load. Raises ``LlavaNextCheckpointError`` before any model is
    built where the folder is not the family's."""
    folder = Path(path)
    llava = read_json(folder / CONFIG_NAME)
    if "mm_vision_tower" not in llava:
        raise LlavaNextCheckpointError(f"{folder / CONFIG_NAME} has no mm_vision_tower: not a "
                                       "LLaVA-NeXT checkpoint")
    if llava.get("model_type") not in model_types:
        raise LlavaNextCheckpointError(f"{folder / CONFIG_NAME}: model_type "
                                       f"{llava.get('model_type')!r} is not a {name} (Qwen2) "
                                       f"model (expected one of {tuple(model_types)})")
    files = weight_map(folder)
    shapes = tensor_shapes(files)
    try:
        config = config_class(llava, resolve_vision_config(llava, shapes, vision_config))
    except LlavaNextCheckpointError:
        raise
    except ValueError as exc:
        raise LlavaNextCheckpointError(f"{folder / CONFIG_NAME}: {exc}") from None
    dtype = as_dtype(dtype) or as_dtype(llava.get("torch_dtype")) or torch.float32
    with building(dtype, device, zero3_config):
        model = model_class(config, attn_implementation=attn_implementation)
    load_tensors(model, folder, files, shapes, zero3_config, name)
    model.config.llava["torch_dtype"] = str(dtype).removeprefix("torch.")  # what it now holds
    return model.eval()


# ---- writing -------------------------------------------------------------------------------
def write_folder(model: nn.Module, path, config: dict, *, tokenizer=None, dtype=None,
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES, state_dict: dict | None = None,
                 overwrite: bool = False) -> Path:
    """Write ``model`` in the layout: ``config`` as config.json (``torch_dtype`` set to what is
    written), ``model-0000i-of-0000n.safetensors`` shards of at most ``max_shard_bytes`` (a
    larger tensor gets a shard of its own), the index, and the tokenizer files if given.
    ``state_dict``: our-named tensors to write instead of the model's own (e.g. a ZeRO-3
    consolidated state dict); ``dtype``: cast the tensors (default: as they are)."""
    from safetensors.torch import save_file

    folder = Path(path)
    if folder.exists() and not overwrite and (any(folder.glob("*.safetensors"))
                                              or (folder / CONFIG_NAME).exists()):
        raise FileExistsError(f"{folder} already holds a checkpoint (pass overwrite=True)")
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("model*.safetensors"), folder / INDEX_NAME]:
        old.unlink(missing_ok=True)

    tensors = state_dict if state_dict is not None else model.state_dict()
    dtype = as_dtype(dtype)
    named = []
    for theirs, ours in checkpoint_names(model, tensors.keys()).items():
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
    weights, total = {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: t.cpu().contiguous() for n, t in shard}, folder / file,
                  metadata={"format": "pt"})
        for name, tensor in shard:
            weights[name] = file
            total += tensor.numel() * tensor.element_size()
    (folder / INDEX_NAME).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weights.items()))},
        indent=2) + "\n")
    config = dict(config)
    config["torch_dtype"] = str(named[0][1].dtype).removeprefix("torch.")
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


# ---- which family ----------------------------------------------------------------------------
def tower_kind(llava: dict) -> str | None:
    """"siglip" or "clip" from ``mm_vision_tower`` (a local tower folder: its config.json's
    ``model_type``; else the name, as LLaVA-NeXT's multimodal_encoder/builder.py dispatches on
    "siglip" in it), or None when neither."""
    name = str(llava.get("mm_vision_tower") or "")
    tower_config = Path(name) / CONFIG_NAME
    if name and tower_config.is_file():
        try:
            name = str(json.loads(tower_config.read_text()).get("model_type", name))
        except (OSError, json.JSONDecodeError):
            pass
    lowered = name.lower()
    if "siglip" in lowered:
        return "siglip"
    if "clip" in lowered:
        return "clip"
    return None


def read_llava_config(path) -> dict | None:
    """config.json of a LLaVA-NeXT-layout folder (it names ``mm_vision_tower``), else None."""
    try:
        llava = json.loads((Path(path) / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return llava if isinstance(llava, dict) and "mm_vision_tower" in llava else None


def is_llava_next_checkpoint(path) -> bool:
    """True for a folder in the LLaVA-NeXT layout (config.json names ``mm_vision_tower``):
    load it with ``load_llava_next``, never with transformers' ``from_pretrained``."""
    return read_llava_config(path) is not None


def llava_next_family(path) -> str:
    """"longva" or "llava_video" for a LLaVA-NeXT folder; ``LlavaNextCheckpointError`` naming
    the model_type and tower otherwise."""
    llava = read_llava_config(path)
    if llava is None:
        raise LlavaNextCheckpointError(f"{Path(path) / CONFIG_NAME} is missing or has no "
                                       "mm_vision_tower: not a LLaVA-NeXT-layout folder")
    kind, model_type = tower_kind(llava), llava.get("model_type")
    if model_type in QWEN_MODEL_TYPES and kind == "siglip":
        return "llava_video"
    if model_type in ("llava_qwen", "qwen2"):
        return "longva"  # its loader names an unknown tower
    raise LlavaNextCheckpointError(
        f"{Path(path) / CONFIG_NAME}: a LLaVA-NeXT-layout folder with model_type {model_type!r} "
        f"and mm_vision_tower {llava.get('mm_vision_tower')!r} ({kind or 'unknown'} tower) is "
        "not supported; supported: LongVA (a CLIP tower, model_type llava_qwen or qwen2) and "
        "LLaVA-Video (a SigLIP tower, model_type llava, llava_qwen or qwen2)")


def load_llava_next(path, **kwargs) -> nn.Module:
    """A LLaVA-NeXT-layout folder -> ``LongVAForCausalLM`` or ``LlavaVideoForCausalLM`` (eval
    mode); ``kwargs`` go to ``load_longva`` / ``load_llava_video`` (dtype, zero3_config, ...)."""
    if llava_next_family(path) == "llava_video":
        from tpo_fast.models.llava_video_checkpoint import load_llava_video

        return load_llava_video(path, **kwargs)
    from tpo_fast.models.longva_checkpoint import load_longva

    return load_longva(path, **kwargs)


def save_llava_next(model: nn.Module, path, **kwargs) -> Path:
    """Write a loaded LongVA / LLaVA-Video model back to its layout (``write_folder`` kwargs)."""
    return write_folder(model, path, model.config.llava, **kwargs)
