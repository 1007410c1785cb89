"""``tpo-fast train``: the TPO training loop on DeepSpeed (ZeRO 0-3).

One optimizer step accumulates a run of packing-plan steps (one packed micro-batch per rank
each); every micro-batch's loss is normalised by the whole step's pair and chosen-token counts
(schedule.py), and the trainer owns accumulation (DeepSpeed's unmanaged mode), so steps may hold
different numbers of micro-batches. The plan is a pure function of (lengths, seed, epoch), so
resuming at (epoch, optimizer step in epoch) replays exactly the same batches.
"""

from __future__ import annotations

import copy
import json
import random
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from tpo_fast.config import TrainConfig, save_config
from tpo_fast.packing import plan_bins
from tpo_fast.train import checkpoint as ckpt
from tpo_fast.train.metrics import MetricsLog, plot_metrics
from tpo_fast.train.schedule import lr_lambda, optimizer_steps


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the message says where and what was kept."""


_SUMS = ("loss", "dpo_loss", "sft_nll", "pairs", "accuracy", "chosen_reward", "rejected_reward",
         "margin", "tokens")


@dataclass
class _StepStats:
    """Sums over this rank's micro-batches of one optimizer step (all-reduced at the end)."""

    values: dict = field(default_factory=lambda: dict.fromkeys(_SUMS, 0.0))

    def add(self, loss: torch.Tensor, metrics: dict, tokens: int) -> None:
        v = self.values
        v["loss"] += float(loss)
        v["dpo_loss"] += float(metrics["dpo_loss"])
        v["sft_nll"] += float(metrics["nll_loss"])  # already a share of the step's token mean
        v["pairs"] += len(metrics["reward_accuracy"])
        v["tokens"] += tokens
        v["accuracy"] += float(metrics["reward_accuracy"].sum())
        v["chosen_reward"] += float(metrics["chosen_rewards"].sum())
        v["rejected_reward"] += float(metrics["rejected_rewards"].sum())
        v["margin"] += float(metrics["margins"].sum())

    def reduce(self, device) -> dict:
        t = torch.tensor([self.values[k] for k in _SUMS], dtype=torch.float64, device=device)
        if dist.is_initialized():
            dist.all_reduce(t)
        total = dict(zip(_SUMS, t.tolist()))
        pairs = max(total["pairs"], 1.0)
        return {"loss": total["loss"], "dpo_loss": total["dpo_loss"],
                "sft_nll": total["sft_nll"], "reward_accuracy": total["accuracy"] / pairs,
                "chosen_reward": total["chosen_reward"] / pairs,
                "rejected_reward": total["rejected_reward"] / pairs,
                "reward_margin": total["margin"] / pairs, "pairs": int(total["pairs"]),
                "tokens": int(total["tokens"])}


class _Prefetcher:
    """Builds this rank's micro-batches (decode + tokenize + pack) ahead on one thread."""

    def __init__(self, dataset, plan, bins: list[int], depth: int = 2):
        self.dataset, self.plan = dataset, plan
        self.pending = iter(bins)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tpo-batches")
        self.queue = []
        for _ in range(depth):
            self._submit()

    def _submit(self) -> None:
        b = next(self.pending, None)
        if b is not None:
            self.queue.append((b, self.pool.submit(
                self.dataset.batch, self.plan.bin(b), bool(self.plan.bin_padding[b]))))

    def next(self):
        """(bin index, PackedBatch or the exception building it raised)."""
        b, future = self.queue.pop(0)
        self._submit()
        try:
            return b, future.result()
        except Exception as exc:  # reported by the loop, after saving
            return b, exc

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _any_rank(flag: bool, device) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return bool(t.item())


class Trainer:
    """Everything one run holds; ``run()`` trains (or resumes) and returns the summary."""

    def __init__(self, cfg: TrainConfig, command: str | None = None):
        from tpo_fast.data.dataset import TPODataset
        from tpo_fast.data.pairs import read_pairs
        from tpo_fast.models import PreferenceModel
        from tpo_fast.train.setup import (
            deepspeed_config,
            init_distributed,
            load_tokenizer_and_model,
        )

        self.cfg = cfg
        self.command = command or shlex.join(["tpo-fast", *sys.argv[1:]])
        self.rank, self.world, self.device = init_distributed()
        self.out = Path(cfg.run.output_dir)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml", self.command)
        _seed_everything(cfg.run.seed)

        if cfg.data.synthetic and not Path(cfg.data.train).exists():
            self._write_synthetic_pairs()
        records, skipped = read_pairs(cfg.data.train, cfg.data.video_root, cfg.data.skip_invalid)
        self.ds_config = deepspeed_config(cfg, self.world, accumulation=1)
        self.tokenizer, self.model, self._ds_keepalive = load_tokenizer_and_model(cfg,
                                                                                  self.ds_config)
        hf_model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else \
            self.model
        self.policy = PreferenceModel(hf_model, attention_backend=cfg.model.attention_backend,
                                      train_vision_tower=cfg.model.train_vision_tower,
                                      train_projector=cfg.model.train_projector)
        self.dataset = TPODataset(records, self.policy, self.tokenizer, cfg.data)
        self.skipped = skipped + self.dataset.skipped
        self.reference = self._reference_kind()
        # the frozen reference is the starting policy (with LoRA: B = 0, so the base model)
        self.ref_model = (copy.deepcopy(hf_model).eval().requires_grad_(False)
                          if self.reference == "model" else None)
        self.lengths = self.dataset.lengths()
        self.first_plan = self._plan(0)
        per_epoch = len(optimizer_steps(self.first_plan, self.lengths[1],
                                        cfg.optim.global_batch_size))
        self.total_steps = per_epoch * cfg.optim.epochs
        if cfg.optim.max_steps > 0:
            self.total_steps = min(self.total_steps, cfg.optim.max_steps)
        self._build_engine()

    # ---- setup ---------------------------------------------------------------------------------
    def _write_synthetic_pairs(self) -> None:
        from tpo_fast.data.synthetic import make_pairs

        target = Path(self.cfg.data.train)
        if self.rank == 0:
            written = make_pairs(target.parent, seed=self.cfg.run.seed)
            if written != target:
                written.rename(target)
            print(f"tpo-fast train: wrote synthetic pairs -> {target}", file=sys.stderr)
        if dist.is_initialized():
            dist.barrier()

    def _reference_kind(self) -> str:
        kind = self.cfg.loss.reference
        if kind == "auto" and self.cfg.loss.dpo_weight == 0:
            kind = "none"  # plain SFT: the DPO term (and so the reference) is unused
        if kind == "auto":
            kind = "precomputed" if self.dataset.has_ref_logps else "model"
        if kind == "precomputed" and not self.dataset.has_ref_logps:
            raise TrainingError("loss.reference=precomputed but some pairs have no ref_logps; "
                                "run `tpo-fast ref-logps` first or set loss.reference=model")
        return kind

    def _plan(self, epoch: int):
        p, c, r = self.lengths
        return plan_bins(p, c, r, self.cfg.data.token_budget, self.world, self.cfg.run.seed,
                         epoch=epoch, drop_overlong=self.cfg.data.drop_overlong)

    def _build_engine(self) -> None:
        import deepspeed

        from tpo_fast.models import PreferenceModel
        from tpo_fast.train.objective import ReferenceScorer, TPOObjective

        cfg = self.cfg
        self.objective = TPOObjective(self.policy, cfg.loss, cfg.run.path)
        params = [p for p in self.objective.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.adam_betas),
                                      eps=cfg.optim.adam_eps, weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(self.total_steps, cfg.optim.warmup_ratio, cfg.optim.scheduler))
        self.engine, *_ = deepspeed.initialize(model=self.objective, optimizer=optimizer,
                                               lr_scheduler=self.scheduler, config=self.ds_config)
        self.ref_scorer = None
        if self.ref_model is not None:
            scorer = ReferenceScorer(PreferenceModel(
                self.ref_model, attention_backend=cfg.model.attention_backend,
                train_projector=False))
            if cfg.deepspeed.zero_stage == 3:  # partitioned like the policy
                config = {k: v for k, v in self.ds_config.items() if k != "gradient_clipping"}
                scorer, *_ = deepspeed.initialize(model=scorer, config=config)
            else:
                scorer = scorer.to(self.device)
            scorer.eval()  # (DeepSpeedEngine.eval returns None)
            self.ref_scorer = scorer

    # ---- checkpoints ---------------------------------------------------------------------------
    def _state(self, step: int, epoch: int, index: int) -> dict:
        return {"step": step, "epoch": epoch, "index_in_epoch": index,
                "total_steps": self.total_steps, "world_size": self.world,
                "command": self.command}

    def save(self, step: int, epoch: int, index: int) -> Path:
        return ckpt.save_checkpoint(self.engine, self.out, step, self._state(step, epoch, index),
                                    lambda p: save_config(self.cfg, p, self.command),
                                    self.cfg.run.keep_checkpoints, self.rank)

    def _resume(self) -> tuple[int, int, int, bool]:
        """(step, epoch, optimizer step within the epoch, resumed?)."""
        resume = self.cfg.run.resume
        if resume == "never":
            return 0, 0, 0, False
        if resume == "auto":
            found = ckpt.list_checkpoints(self.out)
            if not found:
                return 0, 0, 0, False
            path = found[-1]
        else:
            path = Path(resume)
            if not (path / "trainer_state.json").is_file():
                raise TrainingError(f"run.resume={path} is not a checkpoint folder (no "
                                    "trainer_state.json)")
        state = ckpt.load_checkpoint(self.engine, path, self.rank)
        if state["world_size"] != self.world:
            raise TrainingError(f"{path} was written by {state['world_size']} ranks; this run "
                                f"has {self.world} (the data order depends on it)")
        if self.rank == 0:
            print(f"tpo-fast train: resumed from {path} at step {state['step']}",
                  file=sys.stderr)
        return state["step"], state["epoch"], state["index_in_epoch"], True

    # ---- the loop ------------------------------------------------------------------------------
    def _micro_step(self, batch, opt_step, stats: _StepStats) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.ref_scorer is not None:
            ref = self.ref_scorer(batch)
        elif self.reference == "precomputed":
            ref = batch.ref_logps.to(self.device)
        else:
            ref = None
        loss, metrics = self.engine(batch, ref, float(opt_step.pairs),
                                    float(opt_step.chosen_tokens))
        if batch.is_padding:
            loss = loss * 0.0  # keeps this rank in the collectives, adds nothing
        elif torch.isfinite(loss.detach()).all():
            stats.add(loss.detach(), metrics, batch.num_tokens)
        return loss

    def _fail(self, message: str, step: int, epoch: int, index: int):
        kept = self.save(step, epoch, index)
        raise TrainingError(f"{message}. The last good state is saved in {kept}; fix the "
                            "cause and run the same command again to resume from it")

    def run(self) -> dict:
        cfg, rank, world = self.cfg, self.rank, self.world
        step, epoch, index, resumed = self._resume()
        log = MetricsLog(self.out, enabled=rank == 0, tensorboard=cfg.run.tensorboard,
                         resume_step=step)
        bar = None
        if rank == 0 and cfg.run.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=step, desc="tpo train", unit="step",
                       dynamic_ncols=True)
        if rank == 0 and self.skipped:
            print(f"tpo-fast train: skipped {len(self.skipped)} invalid pair(s); first: "
                  f"{self.skipped[0]}", file=sys.stderr)
        last_saved = step if resumed else -1
        start = time.perf_counter()
        try:
            while step < self.total_steps and epoch < cfg.optim.epochs:
                plan = self.first_plan if epoch == 0 else self._plan(epoch)
                steps = optimizer_steps(plan, self.lengths[1], cfg.optim.global_batch_size)
                todo = steps[index:self.total_steps - step + index]
                bins = [s * world + rank for o in todo for s in o.plan_steps]
                prefetch = _Prefetcher(self.dataset, plan, bins)
                try:
                    for opt_step in todo:
                        t0 = time.perf_counter()
                        stats = _StepStats()
                        for s in opt_step.plan_steps:
                            b, batch = prefetch.next()
                            failed = isinstance(batch, Exception)
                            if _any_rank(failed, self.device):
                                where = ", ".join(self.dataset.describe(p) for p in plan.bin(b))
                                self._fail(f"building micro-batch {s} of optimizer step "
                                           f"{step + 1} failed on some rank (rank {rank}: "
                                           f"{batch if failed else 'ok'}; its pairs: {where})",
                                           step, epoch, index)
                            loss = self._micro_step(batch, opt_step, stats)
                            if _any_rank(not torch.isfinite(loss.detach()).all().item(),
                                         self.device):
                                where = ", ".join(self.dataset.describe(p) for p in plan.bin(b))
                                self._fail(f"non-finite loss at optimizer step {step + 1} "
                                           f"(epoch {epoch}, packing step {s}); rank {rank}'s "
                                           f"micro-batch holds: {where}", step, epoch, index)
                            # DeepSpeed averages gradients over ranks; our normalisers are global
                            self.engine.backward(loss * world, scale_wrt_gas=False)
                        self.engine.step()
                        step, index = step + 1, index + 1
                        values = self._step_values(stats, t0, epoch)
                        if step % cfg.run.log_every == 0 or step == self.total_steps:
                            log.log(step, values)
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(loss=f"{values['loss']:.4f}",
                                            acc=f"{values['reward_accuracy']:.2f}",
                                            margin=f"{values['reward_margin']:.3f}",
                                            tok_s=f"{values['tokens_per_s']:.0f}")
                        if (cfg.run.save_every and step % cfg.run.save_every == 0
                                and step < self.total_steps):
                            self.save(step, epoch, index)
                            last_saved = step
                finally:
                    prefetch.close()
                if index >= len(steps):
                    epoch, index = epoch + 1, 0
            if last_saved != step:
                self.save(step, epoch, index)
            final = self.export()
        finally:
            if bar is not None:
                bar.close()
            log.close()
            self.dataset.close()
        return self._summary(step, final, time.perf_counter() - start)

    def _step_values(self, stats: _StepStats, t0: float, epoch: int) -> dict:
        values = stats.reduce(self.device)
        seconds = time.perf_counter() - t0
        values.update(lr=self.scheduler.get_last_lr()[0], seconds=seconds,
                      tokens_per_s=values["tokens"] / seconds,
                      pairs_per_s=values["pairs"] / seconds, epoch=epoch)
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)
        return values

    def _summary(self, step: int, final: Path, seconds: float) -> dict:
        summary = {"steps": step, "total_steps": self.total_steps, "seconds": seconds,
                   "final_model": str(final), "skipped_pairs": len(self.skipped),
                   "dropped_overlong": int(len(self.first_plan.dropped)),
                   "reference": self.reference, "world_size": self.world}
        if self.rank == 0:
            if self.cfg.run.plot and (self.out / "metrics.jsonl").exists():
                plot = plot_metrics(self.out / "metrics.jsonl", self.out / "metrics.png")
                summary["plot"] = str(plot) if plot else None
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    # ---- export --------------------------------------------------------------------------------
    def export(self) -> Path:
        """The final model in its loadable format: ``save_pretrained`` for transformers models,
        the LLaVA-NeXT layout for LongVA (``save_longva``); LoRA adapters merged first."""
        final = self.out / "final"
        lora = self.cfg.model.lora.r > 0
        if self.cfg.deepspeed.zero_stage != 3:
            if self.rank == 0:
                self._write(final, None)
        elif not lora:  # gathered module by module into rank 0's CPU memory
            state = self.engine._zero3_consolidated_16bit_state_dict()  # collective
            if self.rank == 0:
                prefix = "policy.model."
                self._write(final, {k[len(prefix):]: v for k, v in state.items()
                                    if k.startswith(prefix)})
        else:  # merging LoRA needs whole weights: gather everything, merge on rank 0
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.model.parameters()),
                                                   modifier_rank=None):
                if self.rank == 0:
                    self._write(final, None)
        if dist.is_initialized():
            dist.barrier()
        return final

    def _write(self, final: Path, state: dict | None) -> None:
        model = self.model.merge_and_unload() if self.cfg.model.lora.r > 0 else self.model
        if state is None:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if getattr(model.config, "model_type", None) == "longva":
            from tpo_fast.models import save_longva

            save_longva(model, final, tokenizer=self.tokenizer, state_dict=state, overwrite=True)
        else:
            model.save_pretrained(final, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(final)


def train(cfg: TrainConfig, command: str | None = None) -> dict:
    """Run (or resume) training as configured; returns the run summary (rank 0's view)."""
    return Trainer(cfg, command).run()
