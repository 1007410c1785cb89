"""Optimizer steps over a packing plan, with the exact loss normalisers of each step.

A packing plan's steps (one micro-batch per rank) are grouped, in order, into optimizer steps of
about ``global_batch_size`` pairs. The plan is identical on every rank, so every rank knows, with
no communication, how many pairs and chosen tokens the whole optimizer step holds: each
micro-batch's loss is normalised by those global counts, which makes gradient accumulation
exact when micro-batches hold different numbers of pairs and tokens (``loss_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tpo_fast.packing import PackingPlan


@dataclass(frozen=True)
class OptimizerStep:
    index: int
    plan_steps: range  # the packing-plan steps (micro-batches per rank) it accumulates
    pairs: int  # real (non-padding) pairs over all ranks
    chosen_tokens: int  # their chosen-response tokens (the SFT term's denominator)
    tokens: int  # packed tokens over all ranks


def optimizer_steps(plan: PackingPlan, chosen_lens: np.ndarray, global_batch_size: int,
                    start_index: int = 0) -> list[OptimizerStep]:
    """Group the plan's steps into optimizer steps of at least ``global_batch_size`` pairs (the
    last one may hold fewer)."""
    real = ~plan.bin_padding
    sizes = np.diff(plan.bin_offsets)
    bin_of_pair = np.repeat(np.arange(plan.num_bins), sizes)
    chosen_per_bin = np.bincount(bin_of_pair, weights=chosen_lens[plan.pair_index],
                                 minlength=plan.num_bins).astype(np.int64)
    w = plan.world_size
    step_pairs = (sizes * real).reshape(-1, w).sum(1)
    step_chosen = (chosen_per_bin * real).reshape(-1, w).sum(1)
    step_tokens = (plan.bin_tokens * real).reshape(-1, w).sum(1)

    out, first = [], 0
    while first < plan.num_steps:
        last, pairs = first, 0
        while last < plan.num_steps and pairs < global_batch_size:
            pairs += int(step_pairs[last])
            last += 1
        span = slice(first, last)
        out.append(OptimizerStep(start_index + len(out), range(first, last), pairs,
                                 int(step_chosen[span].sum()), int(step_tokens[span].sum())))
        first = last
    return out


def lr_lambda(total_steps: int, warmup_ratio: float, kind: str):
    """Learning-rate multiplier per optimizer step: linear warmup, then cosine/linear/constant."""
    warmup = int(round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + np.cos(np.pi * min(1.0, progress)))

    return factor
