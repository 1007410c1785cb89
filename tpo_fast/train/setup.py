"""Process group, model and DeepSpeed engine for ``tpo-fast train``."""

from __future__ import annotations

import os
import socket

import torch

from tpo_fast.config import TrainConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, torch.device]:
    """Join (or, run without a launcher, create) the process group: (rank, world, device)."""
    import deepspeed

    if "RANK" not in os.environ:  # plain `tpo-fast train`: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    cuda = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def deepspeed_config(cfg: TrainConfig, world: int, accumulation: int) -> dict:
    """The DeepSpeed config our settings imply (no "auto" values left)."""
    zero = {"stage": cfg.deepspeed.zero_stage}
    if cfg.deepspeed.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    if cfg.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if cfg.deepspeed.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        # One packed micro-batch per rank per backward; the trainer owns accumulation (variable
        # micro-batches per step), so DeepSpeed only reduces and steps when step() is called.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": max(1, accumulation),
        "train_batch_size": max(1, accumulation) * world,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.optim.max_grad_norm,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def load_tokenizer_and_model(cfg: TrainConfig, ds_config: dict | None, for_training: bool = True):
    """(tokenizer, HF model, keep-alive). Under ZeRO-3 a model from ``model.path`` is built
    partitioned (``HfDeepSpeedConfig`` must stay alive while the model lives: it is returned).
    ``for_training=False`` (scoring): no ZeRO-3 build, gradient checkpointing or LoRA."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig

    dtype = DTYPES[cfg.model.dtype]
    keep_alive = None
    if cfg.model.tiny:
        from tpo_fast.models.tiny import tiny_model, tiny_tokenizer

        tokenizer = tiny_tokenizer(cfg.model.tiny)
        # Tiny models are built whole on every rank from the same seed; DeepSpeed partitions
        # them at initialize, so 1 and N processes start from identical weights.
        model = tiny_model(cfg.model.tiny, tokenizer, seed=cfg.run.seed, dtype=dtype,
                           hidden=cfg.model.tiny_hidden, layers=cfg.model.tiny_layers)
    else:
        if not os.path.isdir(cfg.model.path):
            raise FileNotFoundError(f"model.path {cfg.model.path} is not a folder (models are "
                                    "loaded from local Hugging Face folders)")
        if for_training and cfg.deepspeed.zero_stage == 3:
            keep_alive = HfDeepSpeedConfig(ds_config)
        from tpo_fast.models import is_longva_checkpoint, load_longva

        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
        if is_longva_checkpoint(cfg.model.path):  # LLaVA-NeXT layout: not a transformers class
            model = load_longva(cfg.model.path, dtype=dtype)
        else:
            model = AutoModelForImageTextToText.from_pretrained(cfg.model.path, dtype=dtype)
    if not for_training:
        return tokenizer, model.eval(), keep_alive
    model.train()
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.model.lora.r > 0:
        from peft import LoraConfig, get_peft_model

        lora = cfg.model.lora
        model = get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, task_type="CAUSAL_LM"))
    return tokenizer, model, keep_alive
