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
from tpo_fast.train import checkpoint as ckpt
from tpo_fast.train.position import DataPosition, PlanKey, PositionError, carry, plan_for
from tpo_fast.train.position import total_steps as plan_total_steps
from tpo_fast.train.schedule import lr_lambda


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
    first_plan: object  # the plan of the epoch the run starts (or resumes) in
    total_steps: int
    plan_key: object  # position.PlanKey of this run
    position: object  # position.DataPosition to start from
    resume_from: Path | None  # the checkpoint to load (None: a fresh start)
    resume_tag: str  # its DeepSpeed folder: "ds", or "universal" on another cluster shape
    replanned: bool  # the data order was re-planned (now, or at an earlier resume)
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


def plan_epoch(cfg: TrainConfig, lengths, dp_world: int, epoch: int, excluded=()):
    """The epoch's packing plan over ``dp_world`` data-parallel replicas (without the
    ``excluded`` pairs); a sequence-parallel group's micro-batch holds ``data.token_budget``
    tokens per rank of the group."""
    from tpo_fast.train.position import PlanKey, plan_for

    return plan_for(PlanKey.of(cfg, dp_world), lengths, epoch, excluded)


def build_training(cfg: TrainConfig, command: str) -> TrainingParts:
    from tpo_fast.data.dataset import TPODataset
    from tpo_fast.data.packer import PairPacker
    from tpo_fast.data.pairs import read_pairs_config
    from tpo_fast.models import PreferenceModel
    from tpo_fast.train.reference import reference_kind
    from tpo_fast.train.setup import deepspeed_config, init_distributed, load_tokenizer_and_model

    rank, world, device = init_distributed(cfg.deepspeed.timeout_minutes)
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
    resume_from = ckpt.find_resume(cfg.run.resume, out)
    state = ckpt.read_trainer_state(resume_from) if resume_from else None
    reshaped = state is not None and (state["world_size"], state.get(
        "sequence_parallel_size", 1)) != (world, sp_size)
    resume_tag = "ds"
    if reshaped:
        _check_reshape(cfg, state, resume_from)
        if ckpt.needs_universal(resume_from):
            resume_tag = "universal"
    ds_config = deepspeed_config(cfg, world, accumulation=1)
    if resume_tag == "universal":
        ds_config["checkpoint"] = {"load_universal": True}
    tokenizer, model, keep_alive = load_tokenizer_and_model(cfg, ds_config, role="policy")
    hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    policy = PreferenceModel(hf_model, attention_backend=cfg.model.attention_backend,
                             train_vision_tower=cfg.model.train_vision_tower,
                             train_projector=cfg.model.train_projector)
    sp, mpu = _sequence_parallel(cfg, policy)
    dataset = TPODataset(records, PairPacker(policy.adapter, tokenizer), cfg.data, cfg.decode,
                         device=policy.device)
    reference = reference_kind(cfg, dataset.has_ref_logps)
    lengths = dataset.lengths()
    key = PlanKey.of(cfg, dp_world)
    position, replanned = DataPosition(), False
    if state is not None:
        try:
            position, replanned = carry(key, lengths, state, resume_from)
        except PositionError as exc:
            from tpo_fast.config import ConfigError

            raise ConfigError(str(exc)) from None
    first_plan = plan_for(key, lengths, position.epoch, position.excluded)
    if state is not None and not replanned and state.get("replanned") and \
            state.get("planned_for") == [cfg.optim.epochs, cfg.optim.max_steps]:
        total_steps = state["total_steps"]  # the schedule the re-planned run has been using
    elif replanned:
        total_steps = plan_total_steps(cfg, key, lengths, position, first_plan)
    else:  # as from the start: (steps of epoch 0) x epochs
        total_steps = plan_total_steps(cfg, key, lengths, DataPosition(),
                                       plan_for(key, lengths, 0))
    replanned = replanned or bool(state and state.get("replanned"))

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
                         plan_key=key, position=position, resume_from=resume_from,
                         resume_tag=resume_tag, replanned=replanned,
                         engine=engine, scheduler=scheduler, ref_scorer=ref_scorer,
                         keep_alive=keep, dp_world=dp_world, dp_rank=dp_rank, sp=sp)


def _check_reshape(cfg: TrainConfig, state: dict, path: Path) -> None:
    """What a checkpoint resumed on another cluster shape cannot carry: refused with what to
    do instead."""
    from tpo_fast.config import ConfigError

    then = f"{state['world_size']} ranks, SP {state.get('sequence_parallel_size', 1)}"
    stage = state.get("zero_stage")
    if stage is not None and stage != cfg.deepspeed.zero_stage:
        raise ConfigError(f"{path} was written with deepspeed.zero_stage={stage} ({then}); "
                          f"resume with deepspeed.zero_stage={stage}")
    if cfg.deepspeed.zero_stage == 0 and cfg.model.dtype != "float32":
        raise ConfigError(f"{path} ({then}, ZeRO-0, {cfg.model.dtype}): DeepSpeed keeps a "
                          "16-bit run's optimizer state per rank in a layout only the same "
                          "number of ranks can load and that it cannot convert without ZeRO: "
                          "resume on the same cluster shape, or train with "
                          "deepspeed.zero_stage>=1 to be able to change it")


def _sequence_parallel(cfg: TrainConfig, policy):
    """``enable_sequence_parallel``, and ALST's tiled MLP where ``deepspeed.tiled_mlp`` asks
    for it."""
    from tpo_fast.train.setup import enable_sequence_parallel

    if cfg.deepspeed.tiled_mlp:
        from tpo_fast.models.tiled_mlp import enable_tiled_mlp

        enable_tiled_mlp(policy.adapter.base, cfg.deepspeed.tiled_mlp)
    return enable_sequence_parallel(cfg, policy)


def _write_synthetic_pairs(cfg: TrainConfig, rank: int) -> None:
    from tpo_fast.synthetic.pairs import make_pairs

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

    objective = TPOObjective(policy, cfg.loss.spec(), cfg.run.path, lora_reference=lora_reference,
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
