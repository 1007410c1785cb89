"""The trained model as a folder that loads without tpo_fast: ``save_pretrained`` for
transformers models, the LLaVA-NeXT layout for LongVA, LoRA updates merged into the weights
(and the adapter itself beside them, in peft's format, under ``lora_adapter/``).

Under ZeRO-3 the weights are gathered one module at a time (a LoRA layer: its base weight and
its two factors together), copied to rank 0's CPU memory and released before the next module,
so no rank ever holds the whole model on its device; without ZeRO-3 the same walk reads the
weights in place. All ranks must call ``export_model`` (the gathers are collectives).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

_LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def _gathered(params: list, zero3: bool):
    if not zero3 or not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _is_lora_layer(module: nn.Module) -> bool:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return False
    return isinstance(module, LoraLayer)


def _local_tensors(module: nn.Module):
    """(name, tensor) of a module's own parameters and persistent buffers."""
    yield from module.named_parameters(recurse=False)
    skip = getattr(module, "_non_persistent_buffers_set", set())
    for name, buf in module.named_buffers(recurse=False):
        if name not in skip:
            yield name, buf


def gathered_weights(model: nn.Module, *, zero3: bool, rank: int) -> tuple[dict, dict]:
    """Walk ``model`` (a transformers model, or the peft-wrapped base model) module by module.

    Returns, on rank 0, (merged state dict in the base model's names, LoRA factors in the
    wrapped model's names); on other ranks two empty dicts."""
    merged: dict[str, torch.Tensor] = {}
    lora: dict[str, torch.Tensor] = {}
    inside_lora: list[str] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if any(prefix.startswith(f"{outer}.") for outer in inside_lora):
            continue  # handled with its LoRA layer
        if _is_lora_layer(module):
            inside_lora.append(name)
            params = list(module.parameters())
            with _gathered(params, zero3), torch.no_grad():
                if rank == 0:
                    _merge_lora_layer(module, prefix, merged, lora)
            continue
        local = list(_local_tensors(module))
        with _gathered([t for _, t in local if isinstance(t, nn.Parameter)], zero3):
            if rank == 0:
                for key, tensor in local:
                    merged[prefix + key] = tensor.detach().cpu().clone()
    return merged, lora


def _merge_lora_layer(layer, prefix: str, merged: dict, lora: dict) -> None:
    """base weight + Σ active adapters' ΔW under the base layer's own name (no ``base_layer``)."""
    base = layer.get_base_layer()
    for key, tensor in _local_tensors(base):
        merged[prefix + key] = tensor.detach().cpu().clone()
    weight = merged[prefix + "weight"]
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A or adapter in getattr(layer, "lora_embedding_A", {}):
            delta = layer.get_delta_weight(adapter).detach().cpu()
            weight = weight + delta.to(weight.dtype)
    merged[prefix + "weight"] = weight
    for key, tensor in layer.named_parameters():
        if key.split(".", 1)[0] in _LORA_PARTS:
            lora[prefix + key] = tensor.detach().cpu().clone()


def export_model(model: nn.Module, tokenizer, final: Path, *, zero3: bool, rank: int) -> Path:
    """Collective. ``model``: what was trained (a transformers/LongVA model or a peft model)."""
    final = Path(final)
    peft_model = model if hasattr(model, "get_base_model") else None
    base = peft_model.get_base_model() if peft_model is not None else model
    merged, lora = gathered_weights(base, zero3=zero3, rank=rank)
    if rank == 0:
        final.mkdir(parents=True, exist_ok=True)
        if getattr(base.config, "model_type", None) in ("longva", "llava_video"):
            from tpo_fast.models import save_llava_next  # back to the LLaVA-NeXT layout

            save_llava_next(base, final, tokenizer=tokenizer, state_dict=merged, overwrite=True)
        else:
            _save_plain(base, final, merged)
            tokenizer.save_pretrained(final)
            from tpo_fast.models.folder import copy_processor_files

            copy_processor_files(getattr(base.config, "_name_or_path", None), final)
        if peft_model is not None:
            # peft names: the wrapped model's names under base_model.model.
            peft_model.save_pretrained(final / "lora_adapter", state_dict={
                f"base_model.model.{k}": v for k, v in lora.items()})
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return final


def _save_plain(base: nn.Module, final: Path, state: dict) -> None:
    """``save_pretrained`` of the merged weights; a peft-wrapped base saves as its own class
    (the LoRA layers are gone from the weights, so the config is the original one)."""
    config = base.config
    if hasattr(config, "use_cache"):
        config.use_cache = True  # training turned it off for gradient checkpointing
    base.save_pretrained(final, state_dict=state, safe_serialization=True)


__all__ = ["export_model", "gathered_weights"]
