"""Everything a training run is built from, in order: process group, pairs, the policy (ZeRO-3
partitioned from ``model.path``, optional LoRA), the dataset and packing plan, the DeepSpeed
engine around the TPO objective, and the reference (see reference.py)."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from tpo_fast.config import TrainConfig, save_config
from tpo_fast.packing import plan_bins
from tpo_fast.train.schedule import lr_lambda, optimizer_steps


@dataclass
class TrainingParts:
    """What ``build_training`` made; the loop (loop.py) only reads it."""

    cfg: TrainConfig
    command: str
    rank: int
    world: int
    device: torch.device
    out: Path
    tokenizer: object
    model: torch.nn.Module  # what trains: the transformers (or LongVA) model, or its peft model
    policy: object  # PreferenceModel around the transformers model
    dataset: object  # TPODataset
    skipped: list
    reference: str  # precomputed | model | none
    lengths: tuple
    first_plan: object
    total_steps: int
    engine: object
    scheduler: object
    dp_world: int  # data-parallel replicas: world / deepspeed.sequence_parallel_size
    dp_rank: int
    sp: object | None  # tpo_fast.sequence_parallel.SequenceParallel (None: SP off)
    ref_scorer: object | None  # a separate live reference (None: precomputed, LoRA or none)
    keep_alive: list  # HfDeepSpeedConfig objects: ZeRO-3 builds read them while models live


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def plan_epoch(cfg: TrainConfig, lengths, dp_world: int, epoch: int):
    """The epoch's packing plan over ``dp_world`` data-parallel replicas; a sequence-parallel
    group's micro-batch holds ``data.token_budget`` tokens per rank of the group."""
    p, c, r = lengths
    budget = cfg.data.token_budget * cfg.deepspeed.sequence_parallel_size
    return plan_bins(p, c, r, budget, dp_world, cfg.run.seed, epoch=epoch,
                     drop_overlong=cfg.data.drop_overlong)


def build_training(cfg: TrainConfig, command: str) -> TrainingParts:
    from tpo_fast.data.dataset import TPODataset
    from tpo_fast.data.pairs import read_pairs_config
    from tpo_fast.models import PreferenceModel
    from tpo_fast.train.reference import reference_kind
    from tpo_fast.train.setup import deepspeed_config, init_distributed, load_tokenizer_and_model

    rank, world, device = init_distributed()
    sp_size = cfg.deepspeed.sequence_parallel_size
    if world % sp_size:
        from tpo_fast.config import ConfigError

        raise ConfigError(f"deepspeed.sequence_parallel_size={sp_size} does not divide the "
                          f"{world} processes (ranks form data-parallel x sequence-parallel "
                          "groups)")
    dp_world, dp_rank = world // sp_size, rank // sp_size
    out = Path(cfg.run.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml", command)
    seed_everything(cfg.run.seed)
    if cfg.data.synthetic and not Path(cfg.data.train).exists():
        _write_synthetic_pairs(cfg, rank)
    records, skipped = read_pairs_config(cfg.data)
    ds_config = deepspeed_config(cfg, world, accumulation=1)
    tokenizer, model, keep_alive = load_tokenizer_and_model(cfg, ds_config, role="policy")
    hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    policy = PreferenceModel(hf_model, attention_backend=cfg.model.attention_backend,
                             train_vision_tower=cfg.model.train_vision_tower,
                             train_projector=cfg.model.train_projector)
    sp, mpu = _sequence_parallel(cfg, policy)
    dataset = TPODataset(records, policy, tokenizer, cfg.data)
    reference = reference_kind(cfg, dataset.has_ref_logps)
    lengths = dataset.lengths()
    first_plan = plan_epoch(cfg, lengths, dp_world, 0)
    per_epoch = len(optimizer_steps(first_plan, lengths[1], cfg.optim.global_batch_size))
    total_steps = per_epoch * cfg.optim.epochs
    if cfg.optim.max_steps > 0:
        total_steps = min(total_steps, cfg.optim.max_steps)

    lora_reference = model if reference == "model" and cfg.model.lora.r > 0 else None
    separate = reference == "model" and lora_reference is None
    ref_policy, replay, keep = None, None, [keep_alive]
    if separate:
        ref_policy, replay, ref_keep = _separate_reference(cfg, ds_config, policy)
        ref_policy.enable_sequence_parallel(sp)
        keep.append(ref_keep)
    engine, scheduler = _engine(cfg, ds_config, policy, total_steps, lora_reference, replay,
                                mpu)
    ref_scorer = _reference_engine(cfg, ds_config, ref_policy, replay, device, mpu) \
        if separate else None
    return TrainingParts(cfg=cfg, command=command, rank=rank, world=world, device=device,
                         out=out, tokenizer=tokenizer, model=model, policy=policy,
                         dataset=dataset, skipped=skipped + dataset.skipped, reference=reference,
                         lengths=lengths, first_plan=first_plan, total_steps=total_steps,
                         engine=engine, scheduler=scheduler, ref_scorer=ref_scorer,
                         keep_alive=keep, dp_world=dp_world, dp_rank=dp_rank, sp=sp)


def _sequence_parallel(cfg: TrainConfig, policy):
    """``enable_sequence_parallel``, and ALST's tiled MLP where ``deepspeed.tiled_mlp`` asks
    for it."""
    from tpo_fast.train.setup import enable_sequence_parallel

    if cfg.deepspeed.tiled_mlp:
        from tpo_fast.models.tiled_mlp import enable_tiled_mlp

        enable_tiled_mlp(policy.adapter.base, cfg.deepspeed.tiled_mlp)
    return enable_sequence_parallel(cfg, policy)


def _write_synthetic_pairs(cfg: TrainConfig, rank: int) -> None:
    from tpo_fast.data.synthetic import make_pairs

    target = Path(cfg.data.train)
    if rank == 0:
        written = make_pairs(target.parent, seed=cfg.run.seed)
        if written != target:
            written.rename(target)
        print(f"tpo-fast train: wrote synthetic pairs -> {target}", file=sys.stderr)
    if dist.is_initialized():
        dist.barrier()


def _separate_reference(cfg: TrainConfig, ds_config: dict, policy):
    """The reference as a second model from the policy's source, and the tower replay that lets
    the policy reuse its vision-tower outputs (fast path only)."""
    from tpo_fast.models import PreferenceModel
    from tpo_fast.train.reference import TowerReplay, frozen_vision_modules
    from tpo_fast.train.setup import load_tokenizer_and_model

    _, ref_model, keep = load_tokenizer_and_model(cfg, ds_config, role="reference")
    ref_policy = PreferenceModel(ref_model.requires_grad_(False),
                                 attention_backend=cfg.model.attention_backend,
                                 train_projector=False)
    replay = None
    names = frozen_vision_modules(policy)
    if cfg.run.path == "fast" and names:
        replay = TowerReplay(ref_policy.adapter.vision_tower(), policy.adapter.vision_tower(),
                             names)
    return ref_policy, replay, keep


def _engine(cfg: TrainConfig, ds_config: dict, policy, total_steps: int, lora_reference,
            replay, mpu=None):
    import deepspeed

    from tpo_fast.train.objective import TPOObjective

    objective = TPOObjective(policy, cfg.loss, cfg.run.path, lora_reference=lora_reference,
                             replay=replay)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.adam_betas),
                                  eps=cfg.optim.adam_eps, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, cfg.optim.warmup_ratio, cfg.optim.scheduler))
    engine, *_ = deepspeed.initialize(model=objective, optimizer=optimizer,
                                      lr_scheduler=scheduler, config=ds_config, mpu=mpu)
    return engine, scheduler


def _reference_engine(cfg: TrainConfig, ds_config: dict, ref_policy, replay, device,
                      mpu=None):
    import deepspeed

    from tpo_fast.train.objective import ReferenceScorer

    scorer = ReferenceScorer(ref_policy, replay)
    if cfg.deepspeed.zero_stage == 3:  # partitioned like the policy (it was built so)
        config = {k: v for k, v in ds_config.items() if k != "gradient_clipping"}
        scorer, *_ = deepspeed.initialize(model=scorer, config=config, mpu=mpu)
    else:
        scorer = scorer.to(device)
    scorer.eval()  # (DeepSpeedEngine.eval returns None)
    return scorer


__all__ = ["TrainingParts", "build_training", "plan_epoch"]
