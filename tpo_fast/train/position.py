"""The data position of a run, and how it is carried to another cluster shape.

A run's position is (epoch, optimizer step within the epoch's plan) plus ``excluded``: the pairs
of the epoch that were already trained before the epoch's plan was made. An epoch's plan is the
packing plan of its pairs (less ``excluded``) over the data-parallel ranks, a pure function of
the pair lengths, ``run.seed``, the epoch, the DP size and the micro-batch budget
(``data.token_budget`` × SP). Resumed on the same shape, the run replays that plan from the
stored step: exactly the batches an uninterrupted run would have seen.

Resumed on another shape (DP size, or DP × SP; or other planning settings: token budget, global
batch, seed), the plan of the old shape is rebuilt from the settings stored in the checkpoint,
the pairs of its steps already done are added to ``excluded``, and the rest of the epoch is
planned anew for the new shape. So within the epoch every pair is trained exactly once; the
steps after the change hold the pairs the new shape's plan groups together (their losses are
those of a run on the new shape from that state, not the old run's). Later epochs are the new
shape's plans.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from tpo_fast.config import TrainConfig
from tpo_fast.packing import plan_bins
from tpo_fast.train.schedule import optimizer_steps


class PositionError(ValueError):
    """A checkpoint's data position cannot be carried to this run; the message says what to do."""


@dataclass(frozen=True)
class PlanKey:
    """Everything an epoch's plan depends on besides the pair lengths and the epoch."""

    dp_world: int
    sequence_parallel_size: int
    token_budget: int  # per rank (a micro-batch holds token_budget x SP tokens)
    global_batch_size: int
    seed: int
    drop_overlong: bool

    @classmethod
    def of(cls, cfg: TrainConfig, dp_world: int) -> PlanKey:
        return cls(dp_world, cfg.deepspeed.sequence_parallel_size, cfg.data.token_budget,
                   cfg.optim.global_batch_size, cfg.run.seed, cfg.data.drop_overlong)


@dataclass(frozen=True)
class DataPosition:
    step: int = 0  # optimizer steps done in the run
    epoch: int = 0
    index: int = 0  # optimizer steps done in the epoch's plan
    excluded: tuple[int, ...] = ()  # pairs of the epoch trained before its plan was made


def lengths_digest(lengths) -> str:
    """A fingerprint of the pair lengths (the data order depends on nothing else of the data)."""
    h = hashlib.sha256()
    for a in lengths:
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def plan_for(key: PlanKey, lengths, epoch: int, excluded=()):
    """The packing plan of ``epoch`` over ``key.dp_world`` replicas, without the ``excluded``
    pairs; pair ids are the dataset's."""
    p, c, r = lengths
    budget = key.token_budget * key.sequence_parallel_size
    if not len(excluded):
        return plan_bins(p, c, r, budget, key.dp_world, key.seed, epoch=epoch,
                         drop_overlong=key.drop_overlong)
    keep = np.setdiff1d(np.arange(len(p)), np.asarray(excluded, dtype=np.int64))
    sub = plan_bins(p[keep], c[keep], r[keep], budget, key.dp_world, key.seed, epoch=epoch,
                    drop_overlong=key.drop_overlong)
    return dataclasses.replace(sub, pair_index=keep[sub.pair_index], dropped=keep[sub.dropped],
                               n_pairs=len(p))


def epoch_steps(key: PlanKey, plan, lengths) -> list:
    return optimizer_steps(plan, lengths[1], key.global_batch_size)


def pairs_of_steps(plan, steps) -> np.ndarray:
    """The real (non-padding) pairs of the given optimizer steps of ``plan``."""
    w = plan.world_size
    ids = [plan.bin(s * w + k) for o in steps for s in o.plan_steps for k in range(w)
           if not plan.bin_padding[s * w + k]]
    return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)


def state_fields(key: PlanKey, position: DataPosition, lengths) -> dict:
    """What a checkpoint's trainer_state stores of the position (``carry`` reads it back)."""
    return {"step": position.step, "epoch": position.epoch, "index_in_epoch": position.index,
            "excluded": list(position.excluded), "plan": dataclasses.asdict(key),
            "lengths_digest": lengths_digest(lengths)}


def _stored_key(state: dict, now: PlanKey) -> PlanKey:
    if "plan" in state:
        return PlanKey(**state["plan"])
    sp = state.get("sequence_parallel_size", 1)  # a checkpoint from before the key was stored
    return dataclasses.replace(now, dp_world=state["world_size"] // sp,
                               sequence_parallel_size=sp)


def carry(key: PlanKey, lengths, state: dict, where) -> tuple[DataPosition, bool]:
    """The position to continue from: (position, re-planned?). ``state`` is a checkpoint's
    trainer_state; re-planned is True when ``key`` differs from the checkpoint's (the rest of
    the epoch is then planned with ``key``)."""
    digest = state.get("lengths_digest")
    if digest is not None and digest != lengths_digest(lengths):
        raise PositionError(
            f"{where}: the pairs (their number or token lengths) differ from those the "
            f"checkpoint was trained on ({len(lengths[0])} pairs now), so its data position "
            "cannot be carried: restore that pairs file and config (data.*, model), or start a "
            "new run (a new run.output_dir, or run.resume=never)")
    then = _stored_key(state, key)
    position = DataPosition(step=state["step"], epoch=state["epoch"],
                            index=state["index_in_epoch"],
                            excluded=tuple(state.get("excluded", ())))
    if then == key:
        return position, False
    old = plan_for(then, lengths, position.epoch, position.excluded)
    steps = epoch_steps(then, old, lengths)
    done = pairs_of_steps(old, steps[:position.index])
    excluded = tuple(sorted(set(position.excluded) | {int(i) for i in done}))
    p, c, r = (np.asarray(a, dtype=np.int64) for a in lengths)
    fits = (p + c + r <= key.token_budget * key.sequence_parallel_size) | (not key.drop_overlong)
    fits[list(excluded)] = False
    left = int(fits.sum())  # pairs the rest of the epoch trains with the new key
    if position.index >= len(steps) or left == 0:  # the epoch was finished
        return DataPosition(step=position.step, epoch=position.epoch + 1), True
    if left < key.dp_world:
        raise PositionError(
            f"{where}: {left} pair(s) of epoch {position.epoch} are left, fewer than the "
            f"{key.dp_world} data-parallel ranks of this run, and every rank needs a pair each "
            f"step: resume on at most {left} data-parallel rank(s), or on the checkpoint's "
            f"{then.dp_world} x SP {then.sequence_parallel_size}")
    return DataPosition(step=position.step, epoch=position.epoch, index=0,
                        excluded=excluded), True


def total_steps(cfg: TrainConfig, key: PlanKey, lengths, position: DataPosition,
                current_plan) -> int:
    """The run's optimizer steps: the steps done before the current epoch's plan, its steps,
    and the later epochs' (each as many as epoch 0 has); capped by ``optim.max_steps``. From
    the start this is (steps of epoch 0) x epochs."""
    per_epoch = len(epoch_steps(key, plan_for(key, lengths, 0), lengths))
    now = len(epoch_steps(key, current_plan, lengths))
    total = (position.step - position.index + now
             + per_epoch * max(0, cfg.optim.epochs - position.epoch - 1))
    if cfg.optim.max_steps > 0:
        total = min(total, cfg.optim.max_steps)
    return total
