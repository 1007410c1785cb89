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


def init_distributed(timeout_minutes: float = 30.0) -> tuple[int, int, torch.device]:
    """Join (or, run without a launcher, create) the process group: (rank, world, device).
    A collective that waits longer than ``timeout_minutes`` for a peer raises (the job ends
    instead of hanging on a dead or stuck rank)."""
    from datetime import timedelta

    import deepspeed

    if "RANK" not in os.environ:  # plain `tpo-fast train`: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    cuda = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo",
                               timeout=timedelta(minutes=timeout_minutes))
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
        # reduce_scatter pinned: ``backward_scale`` relies on the gradient path it selects
        zero.update(stage3_gather_16bit_weights_on_model_save=True, reduce_scatter=True)
    if cfg.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if cfg.deepspeed.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    sp = cfg.deepspeed.sequence_parallel_size
    extra = {"sequence_parallel_size": sp} if sp > 1 else {}  # read by HF's zero.Init config
    return {
        # One packed micro-batch per rank per backward; the trainer owns accumulation (variable
        # micro-batches per step), so DeepSpeed only reduces and steps when step() is called.
        # An SP group shares its micro-batch: the data-parallel world is world / SP.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": max(1, accumulation),
        "train_batch_size": max(1, accumulation) * (world // sp),
        **extra,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.optim.max_grad_norm,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def backward_scale(cfg: TrainConfig, world: int) -> int:
    """What a micro-batch's loss (its share of the step's global loss) is multiplied by before
    ``engine.backward``, so that DeepSpeed's gradient reduction leaves the global gradient.

    DeepSpeed divides the summed gradients by the data-parallel world (world / SP: an SP
    group's ranks hold shares of one replica's gradient, to be summed) in ZeRO-0/1/2. ZeRO-3's
    reduce-scatter path (``__avg_scatter_grads`` → ``reduce_scatter_coalesced``, DeepSpeed
    0.19.8) divides by the whole world whatever the SP size; measured here as a halved
    gradient norm at SP = 2 (tests/sequence_parallel/test_sequence_parallel.py compares the
    norms)."""
    sp = cfg.deepspeed.sequence_parallel_size
    return world if cfg.deepspeed.zero_stage == 3 else world // sp


def enable_sequence_parallel(cfg: TrainConfig, policy):
    """(SequenceParallel, DeepSpeed mpu) for ``deepspeed.sequence_parallel_size`` > 1 with
    ``policy`` (a PreferenceModel) switched to it, or (None, None); what Ulysses cannot split
    is a ConfigError."""
    from tpo_fast.config import ConfigError
    from tpo_fast.sequence_parallel import init_sequence_parallel

    try:
        sp, mpu = init_sequence_parallel(cfg.deepspeed.sequence_parallel_size,
                                         policy.model.config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    policy.enable_sequence_parallel(sp)
    return sp, mpu


ROLES = ("policy", "reference", "score")


def load_tokenizer_and_model(cfg: TrainConfig, ds_config: dict | None, role: str = "policy"):
    """(tokenizer, model, keep-alive) for one of three roles:

    * ``policy`` — trains: ZeRO-3 builds a ``model.path`` model partitioned
      (``HfDeepSpeedConfig`` → ``zero.Init``; the config object is returned and must stay alive
      while the model lives), then gradient checkpointing and LoRA as configured;
    * ``reference`` — the frozen starting policy beside it: the same build, without gradient
      checkpointing or LoRA, in eval mode;
    * ``score`` — one model per process for no-grad scoring (``ref-logps``): never partitioned.

    The LoRA adapters go on the language model only (``target_modules`` inside the vision tower
    and the projector are excluded: the tower is frozen, and a LoRA reference needs them
    untouched)."""
    from transformers.integrations import HfDeepSpeedConfig

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
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
        if role != "score" and cfg.deepspeed.zero_stage == 3:
            if ds_config is None:
                raise ValueError("a ZeRO-3 build needs the DeepSpeed config")
            keep_alive = HfDeepSpeedConfig(ds_config)
        from tpo_fast.models.folder import load_model, load_tokenizer

        tokenizer = load_tokenizer(cfg.model.path)  # the processor's template where it has none
        model = load_model(cfg.model.path, dtype,
                           zero3_config=ds_config if keep_alive is not None else None)
    if role != "policy":
        return tokenizer, model.eval(), keep_alive
    model.train()
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.model.lora.r > 0:
        # LoRA's A factors are random: seed them here, so every rank (and a run with another
        # ZeRO stage, whose model build drew other random numbers before) gets the same ones
        torch.manual_seed(cfg.run.seed)
        model = _with_lora(model, cfg.model.lora)
    return tokenizer, model, keep_alive


def _with_lora(model, lora):
    from peft import LoraConfig, get_peft_model

    from tpo_fast.models import adapter_for

    adapter = adapter_for(model)
    visual = {id(m) for m in adapter.vision_tower().modules()}
    projector = {id(p) for p in adapter.projector_parameters()}
    targets = tuple(lora.target_modules)

    def frozen_part(module) -> bool:
        params = list(module.parameters())
        return id(module) in visual or bool(params) and all(id(p) in projector for p in params)

    excluded = [name for name, module in model.named_modules()
                if name.rsplit(".", 1)[-1] in targets and frozen_part(module)]
    return get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, exclude_modules=excluded or None,
        # LongVA / LLaVA-Video are no transformers PreTrainedModel (no generation API to wrap)
        task_type="CAUSAL_LM" if hasattr(model, "prepare_inputs_for_generation") else None))
