"""``tpo-fast train``: the TPO training loop on DeepSpeed (ZeRO 0-3).

One optimizer step accumulates a run of packing-plan steps (one packed micro-batch per rank
each); every micro-batch's loss is normalised by the whole step's pair and chosen-token counts
(schedule.py), and the trainer owns accumulation (DeepSpeed's unmanaged mode), so steps may hold
different numbers of micro-batches. The plan is a pure function of (lengths, seed, epoch), so
resuming at (epoch, optimizer step in epoch) replays exactly the same batches. Resumed on
another cluster shape, the rest of the epoch is re-planned for it (position.py) and the engine
state comes from DeepSpeed's universal checkpoint (checkpoint.py).

No host syncs for bookkeeping inside a micro-step: the step's statistics and each micro-batch's
finiteness stay on the device and are reduced over ranks once per optimizer step, before the
update (a non-finite loss is reported then, and the update is not applied). Whether every rank
built its micro-batches is agreed once per step too, before its first forward.
"""

from __future__ import annotations

import itertools
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from tpo_fast.config import TrainConfig, save_config
from tpo_fast.prefetch import Prefetcher
from tpo_fast.train import checkpoint as ckpt
from tpo_fast.train.build import build_training
from tpo_fast.train.metrics import MetricsLog, StepLog, plot_metrics
from tpo_fast.train.position import DataPosition, epoch_steps, pairs_of_steps, plan_for, \
    state_fields


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. a non-finite loss); the message says where and what was kept."""


_SUMS = ("loss", "dpo_loss", "sft_nll", "accuracy", "chosen_reward", "rejected_reward", "margin")


class _StepStats:
    """One optimizer step's sums over this rank's micro-batches, kept on the device.

    ``add`` queues no host work; ``reduce`` all-reduces the sums, the pair and token counts and
    every micro-batch's finiteness in one collective and reads them back once."""

    def __init__(self, device: torch.device, micro_batches: int):
        self.device = device
        self.sums = torch.zeros(len(_SUMS), dtype=torch.float64, device=device)
        self.counts = [0, 0]  # pairs, tokens (host ints the packer gave)
        self.finite = torch.ones(micro_batches, dtype=torch.float64, device=device)
        self.seen = 0

    def add(self, loss: torch.Tensor, metrics: dict, pairs: int, tokens: int) -> None:
        finite = torch.isfinite(loss.detach())
        values = torch.stack([
            loss.detach(), metrics["dpo_loss"], metrics["nll_loss"],
            metrics["reward_accuracy"].sum(), metrics["chosen_rewards"].sum(),
            metrics["rejected_rewards"].sum(), metrics["margins"].sum()]).double()
        self.sums += torch.where(finite, values, torch.zeros_like(values))
        self.finite[self.seen] = finite.double()
        self.seen += 1
        self.counts[0] += pairs
        self.counts[1] += tokens

    def skip(self, loss: torch.Tensor) -> None:
        """A padding micro-batch: keeps this rank in the collectives, adds nothing but its
        finiteness (its gradient, zero when finite, still reaches the update)."""
        self.finite[self.seen] = torch.isfinite(loss.detach()).double()
        self.seen += 1

    def reduce(self) -> tuple[dict, list[bool]]:
        """(step values over all ranks, per micro-batch: finite on every rank?)."""
        counts = torch.tensor(self.counts, dtype=torch.float64, device=self.device)
        flat = torch.cat([self.sums, counts, 1.0 - self.finite])
        if dist.is_initialized():
            dist.all_reduce(flat)
        host = flat.tolist()
        n = len(_SUMS)
        total = dict(zip(_SUMS, host[:n]))
        pairs, tokens = host[n], host[n + 1]
        finite = [bad == 0.0 for bad in host[n + 2:]]
        per_pair = max(pairs, 1.0)
        return {"loss": total["loss"], "dpo_loss": total["dpo_loss"],
                "sft_nll": total["sft_nll"], "reward_accuracy": total["accuracy"] / per_pair,
                "chosen_reward": total["chosen_reward"] / per_pair,
                "rejected_reward": total["rejected_reward"] / per_pair,
                "reward_margin": total["margin"] / per_pair, "pairs": int(pairs),
                "tokens": int(tokens)}, finite


class _Prefetcher:
    """Builds this rank's micro-batches (decode + tokenize + pack) ahead on one thread:
    ``depth`` of them build while a step runs."""

    def __init__(self, dataset, plan, bins: list[int], depth: int = 2):
        def build(b: int):
            return dataset.batch(plan.bin(b), bool(plan.bin_padding[b]))

        self.batches = Prefetcher(build, bins, workers=1, ahead=depth + 1, name="tpo-batches",
                                  wait_on_close=False)

    def take(self, count: int) -> list:
        """The next ``count`` (bin index, PackedBatch or the exception building it raised)."""
        taken = []
        for b, future in itertools.islice(self.batches, count):
            try:
                taken.append((b, future.result()))
            except Exception as exc:  # reported by the loop, after saving
                taken.append((b, exc))
        return taken

    def close(self) -> None:
        self.batches.close()


def _any_rank(flag: bool, device) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return bool(t.item())


def _collective_failure(exc: BaseException) -> bool:
    """A collective that failed because a peer died or stopped answering (gloo / NCCL)."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return any(s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed by peer",
                                   "Connection reset by peer", "Timed out waiting"))


class Trainer:
    """Everything one run holds (built by ``build_training``); ``run()`` trains (or resumes)
    and returns the summary."""

    def __init__(self, cfg: TrainConfig, command: str | None = None):
        self.cfg = cfg
        self.command = command or shlex.join(["tpo-fast", *sys.argv[1:]])
        parts = build_training(cfg, self.command)
        self.parts = parts
        self.rank, self.world, self.device, self.out = parts.rank, parts.world, parts.device, \
            parts.out
        self.tokenizer, self.model, self.policy = parts.tokenizer, parts.model, parts.policy
        self.dataset, self.skipped, self.reference = parts.dataset, parts.skipped, \
            parts.reference
        self.lengths, self.first_plan, self.total_steps = parts.lengths, parts.first_plan, \
            parts.total_steps
        self.key = parts.plan_key
        self.excluded = parts.position.excluded  # of the current epoch's plan
        self.engine, self.scheduler, self.ref_scorer = parts.engine, parts.scheduler, \
            parts.ref_scorer
        # an SP group (consecutive ranks) runs one micro-batch: data is split over dp_world
        self.dp_world, self.dp_rank = parts.dp_world, parts.dp_rank
        self.sp_lead = parts.sp is None or parts.sp.rank == 0  # counts its group's statistics
        from tpo_fast.train.setup import backward_scale

        self.backward_scale = backward_scale(cfg, self.world)

    def _plan(self, epoch: int):
        return plan_for(self.key, self.lengths, epoch)

    # ---- checkpoints ---------------------------------------------------------------------------
    def _state(self, step: int, epoch: int, index: int) -> dict:
        position = DataPosition(step=step, epoch=epoch, index=index, excluded=self.excluded)
        return {**state_fields(self.key, position, self.lengths),
                "total_steps": self.total_steps, "world_size": self.world,
                "sequence_parallel_size": self.cfg.deepspeed.sequence_parallel_size,
                "zero_stage": self.cfg.deepspeed.zero_stage,
                "replanned": self.parts.replanned,
                "planned_for": [self.cfg.optim.epochs, self.cfg.optim.max_steps],
                "command": self.command}

    def save(self, step: int, epoch: int, index: int) -> Path:
        try:
            return ckpt.save_checkpoint(self.engine, self.out, step,
                                        self._state(step, epoch, index),
                                        lambda p: save_config(self.cfg, p, self.command),
                                        self.cfg.run.keep_checkpoints, self.rank)
        except ckpt.CheckpointWriteError as exc:
            raise TrainingError(str(exc)) from exc

    def _resume(self) -> tuple[int, int, int, bool]:
        """(step, epoch, optimizer step within the epoch's plan, resumed?); the engine state
        is loaded (from the universal format on another cluster shape)."""
        path, position = self.parts.resume_from, self.parts.position
        if path is None:
            return 0, 0, 0, False
        tag = self.parts.resume_tag
        if tag == "universal":
            tag = ckpt.ensure_universal(path, self.rank, self.device)
        ckpt.load_checkpoint(self.engine, path, self.rank, tag=tag)
        if self.rank == 0:
            state = ckpt.read_trainer_state(path)
            note = ""
            if (state["world_size"], state.get("sequence_parallel_size", 1)) != (
                    self.world, self.cfg.deepspeed.sequence_parallel_size):
                note = (f" (written by {state['world_size']} ranks, SP "
                        f"{state.get('sequence_parallel_size', 1)}; now {self.world}, SP "
                        f"{self.cfg.deepspeed.sequence_parallel_size}: engine state from "
                        f"{path / tag}, epoch {position.epoch} re-planned from here, "
                        f"{len(position.excluded)} pair(s) of it already trained)")
            print(f"tpo-fast train: resumed from {path} at step {position.step}{note}",
                  file=sys.stderr)
        return position.step, position.epoch, position.index, True

    # ---- the loop ------------------------------------------------------------------------------
    def _micro_step(self, batch, opt_step, stats: _StepStats) -> torch.Tensor:
        batch = self.policy.shard(batch).to(self.device, non_blocking=True)
        if self.ref_scorer is not None:
            ref = self.ref_scorer(batch)
        elif self.reference == "precomputed":
            ref = batch.ref_logps.to(self.device, non_blocking=True)
        else:
            ref = None  # none, or a LoRA reference (computed inside the objective)
        loss, metrics = self.engine(batch, ref, float(opt_step.pairs),
                                    float(opt_step.chosen_tokens))
        if batch.is_padding:
            loss = loss * 0.0
            stats.skip(loss)
            return loss  # keeps this rank in the collectives, adds nothing
        if not self.sp_lead:  # the group's lead rank counts the shared micro-batch
            stats.skip(loss)
            return loss
        stats.add(loss, metrics, batch.n_pairs, batch.num_tokens)
        return loss

    def _fail(self, message: str, step: int, epoch: int, index: int):
        kept = self.save(step, epoch, index)
        raise TrainingError(f"{message}. The last good state is saved in {kept}; fix the "
                            "cause and run the same command again to resume from it")

    def _optimizer_step(self, prefetch, plan, opt_step, step: int, epoch: int,
                        index: int) -> dict:
        """Every micro-batch of one optimizer step, then the update; returns the step values."""
        t0 = time.perf_counter()
        batches = prefetch.take(len(opt_step.plan_steps))
        failed = next((b for b in batches if isinstance(b[1], Exception)), None)
        if _any_rank(failed is not None, self.device):  # once per step, before any forward
            where = ", ".join(self.dataset.describe(p) for p in plan.bin(failed[0])) \
                if failed else ""
            self._fail(f"building the micro-batches of optimizer step {step + 1} failed on some "
                       f"rank (rank {self.rank}: {failed[1] if failed else 'ok'}"
                       f"{'; its pairs: ' + where if failed else ''})", step, epoch, index)
        stats = _StepStats(self.device, len(batches))
        for _, batch in batches:
            loss = self._micro_step(batch, opt_step, stats)
            # DeepSpeed averages the gradients it reduces; our normalisers are global
            self.engine.backward(loss * self.backward_scale, scale_wrt_gas=False)
        values, finite = stats.reduce()  # the step's one host sync for bookkeeping
        if not all(finite):
            k = finite.index(False)
            where = ", ".join(self.dataset.describe(p) for p in plan.bin(batches[k][0]))
            self._fail(f"non-finite loss at optimizer step {step + 1} (epoch {epoch}, packing "
                       f"step {opt_step.plan_steps[k]}); rank {self.rank}'s micro-batch holds: "
                       f"{where}", step, epoch, index)
        self.engine.step()
        values.update(self._timing(values, t0, epoch))
        return values

    def run(self) -> dict:
        cfg, rank = self.cfg, self.rank
        step, epoch, index, resumed = self._resume()
        log = MetricsLog(self.out, enabled=rank == 0, tensorboard=cfg.run.tensorboard,
                         resume_step=step)
        order = StepLog(self.out / "data_order.jsonl", enabled=rank == 0, resume_step=step)
        start_epoch = epoch
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
                plan = self.first_plan if epoch == start_epoch else self._plan(epoch)
                steps = epoch_steps(self.key, plan, self.lengths)
                todo = steps[index:self.total_steps - step + index]
                bins = [s * self.dp_world + self.dp_rank for o in todo for s in o.plan_steps]
                prefetch = _Prefetcher(self.dataset, plan, bins)
                try:
                    for opt_step in todo:
                        values = self._optimizer_step(prefetch, plan, opt_step, step, epoch,
                                                      index)
                        step, index = step + 1, index + 1
                        if step % cfg.run.log_every == 0 or step == self.total_steps:
                            log.log(step, values)
                        order.log(step, {"epoch": epoch, "pairs": sorted(
                            int(i) for i in pairs_of_steps(plan, [opt_step]))})
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
                    epoch, index, self.excluded = epoch + 1, 0, ()
            if last_saved != step:
                self.save(step, epoch, index)
            final = self.export()
        except RuntimeError as exc:
            if isinstance(exc, TrainingError) or not _collective_failure(exc):
                raise
            raise TrainingError(
                f"rank {rank}: a collective failed at optimizer step {step + 1} ({exc}); a peer "
                "process died, or did not answer within deepspeed.timeout_minutes="
                f"{cfg.deepspeed.timeout_minutes} (the launcher's log names the rank that "
                "exited). Run the same command again to resume from the last checkpoint"
            ) from exc
        finally:
            if bar is not None:
                bar.close()
            log.close()
            self.dataset.close()
        return self._summary(step, final, time.perf_counter() - start)

    def _timing(self, values: dict, t0: float, epoch: int) -> dict:
        seconds = time.perf_counter() - t0
        timing = dict(lr=self.scheduler.get_last_lr()[0], seconds=seconds,
                      tokens_per_s=values["tokens"] / seconds,
                      pairs_per_s=values["pairs"] / seconds, epoch=epoch)
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            timing["grad_norm"] = float(grad_norm)
        return timing

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
        """The final model in its loadable format (export.py): LoRA merged, ZeRO-3 gathered
        module by module."""
        from tpo_fast.train.export import export_model

        return export_model(self.model, self.tokenizer, self.out / "final",
                            zero3=self.cfg.deepspeed.zero_stage == 3, rank=self.rank)


def train(cfg: TrainConfig, command: str | None = None) -> dict:
    """Run (or resume) training as configured; returns the run summary (rank 0's view)."""
    return Trainer(cfg, command).run()
