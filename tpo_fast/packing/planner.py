"""Assign preference pairs to micro-batches ("bins") and ranks.

Cost model: a pair costs ``tokens + (Σ q_len·k_len over its two attention segments) /
qk_per_token`` token-equivalents, i.e. its linear-layer work plus its attention work. Segments
are ``prompt+chosen`` (q = k = P+C) and ``rejected`` (q = R, k = P+R). The default
``qk_per_token = 65536`` is a 7B model's ratio (Qwen2-7B: 2·233M linear FLOPs per token against
4·H = 14k FLOPs per attended (q, k) pair, halved for the causal mask).

Algorithm (identical in csrc/packing.cpp and naive.py):
1. pairs over ``token_budget`` raise, or are dropped and counted with ``drop_overlong=True``;
2. first-fit-decreasing by cost into bins of at most ``token_budget`` tokens;
3. until the bin count divides ``world_size``: split the fullest bin (alternate pairs), or,
   when every bin holds one pair, add padding bins that repeat the cheapest pair (their
   ``padding`` flag tells the trainer to weight them zero; ZeRO-3 needs every rank busy);
4. bins sorted by cost and taken ``world_size`` at a time form the steps (similar cost per
   step, so ranks wait little); the order of steps and of ranks within a step is shuffled with
   splitmix64 seeded by ``seed`` and ``epoch``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tpo_fast.packing.backend import as_triplet, get_backend

DEFAULT_QK_PER_TOKEN = 65536


@dataclass(frozen=True)
class PackingPlan:
    """Micro-batches of one epoch, step-major: bin ``b`` runs on rank ``b % world_size`` at
    step ``b // world_size``. Arrays are numpy int64 unless said otherwise."""

    bin_offsets: np.ndarray  # [B+1] into pair_index
    pair_index: np.ndarray  # pair ids of every bin, bin after bin
    bin_tokens: np.ndarray  # [B]
    bin_cost: np.ndarray  # [B], in units of 1/qk_per_token token
    bin_padding: np.ndarray  # [B] bool: repeats a pair only to keep a rank busy; weight it 0
    dropped: np.ndarray  # pairs over the token budget (drop_overlong=True)
    n_pairs: int
    token_budget: int
    world_size: int
    qk_per_token: int
    seed: int
    epoch: int

    @property
    def num_bins(self) -> int:
        return len(self.bin_tokens)

    @property
    def num_steps(self) -> int:
        return self.num_bins // self.world_size

    def bin(self, b: int) -> np.ndarray:
        """Pair ids of bin ``b``."""
        return self.pair_index[self.bin_offsets[b] : self.bin_offsets[b + 1]]

    def step(self, s: int) -> list[np.ndarray]:
        """Pair ids of step ``s``, one array per rank."""
        if not 0 <= s < self.num_steps:
            raise IndexError(f"step {s} out of range [0, {self.num_steps})")
        return [self.bin(s * self.world_size + r) for r in range(self.world_size)]

    def for_rank(self, rank: int):
        """Yield ``(step, pair_ids, is_padding)`` for every step of ``rank``."""
        if not 0 <= rank < self.world_size:
            raise IndexError(f"rank {rank} out of range [0, {self.world_size})")
        for s in range(self.num_steps):
            b = s * self.world_size + rank
            yield s, self.bin(b), bool(self.bin_padding[b])

    def summary(self) -> dict:
        """Fill (tokens / budget over all bins) and imbalance: Σ_steps max rank cost over
        Σ_steps mean rank cost, i.e. the time a synchronous step loses to its slowest rank."""
        cost = (self.bin_cost / self.qk_per_token).reshape(self.num_steps, self.world_size)
        per_step = cost.max(axis=1) / cost.mean(axis=1)
        return {
            "pairs": self.n_pairs,
            "planned": self.n_pairs - len(self.dropped),
            "dropped_overlong": len(self.dropped),
            "padding_bins": int(self.bin_padding.sum()),
            "bins": self.num_bins,
            "steps": self.num_steps,
            "world_size": self.world_size,
            "token_budget": self.token_budget,
            "pairs_per_bin": float((self.n_pairs - len(self.dropped)) / self.num_bins),
            "fill": float(self.bin_tokens.sum() / (self.num_bins * self.token_budget)),
            "imbalance": float(cost.max(axis=1).sum() / cost.mean(axis=1).sum()),
            "worst_step_imbalance": float(per_step.max()),
        }


def plan_bins(
    prompt_lens,
    chosen_lens,
    rejected_lens,
    token_budget: int,
    world_size: int = 1,
    seed: int = 0,
    *,
    epoch: int = 0,
    qk_per_token: int = DEFAULT_QK_PER_TOKEN,
    drop_overlong: bool = False,
    backend: str = "auto",
) -> PackingPlan:
    """Plan one epoch of packed micro-batches for ``world_size`` ranks.

    Args:
        prompt_lens, chosen_lens, rejected_lens: [n] token counts per pair (integers >= 1).
        token_budget: most packed tokens (P + C + R summed over pairs) in one micro-batch.
        world_size: data-parallel ranks; every rank gets a non-empty bin at every step.
        seed, epoch: the bin-level shuffle; the same values give the same plan.
        qk_per_token: attention-vs-linear weight of the cost model (module docstring).
        drop_overlong: skip (and count) pairs over the budget instead of raising.
        backend: "auto" (native, else naive with a warning), "native" or "naive".
    """
    p, c, r = as_triplet(prompt_lens, chosen_lens, rejected_lens)
    for name, value in (("token_budget", token_budget), ("world_size", world_size),
                        ("seed", seed), ("epoch", epoch), ("qk_per_token", qk_per_token)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= seed < 2**64 or not 0 <= epoch < 2**64:
        raise ValueError(f"seed and epoch must be in [0, 2^64), got seed={seed} epoch={epoch}")
    out = get_backend(backend).plan_bins(
        p, c, r, int(token_budget), int(world_size), int(seed), int(epoch), int(qk_per_token),
        bool(drop_overlong),
    )
    return PackingPlan(
        **out, n_pairs=len(p), token_budget=int(token_budget), world_size=int(world_size),
        qk_per_token=int(qk_per_token), seed=int(seed), epoch=int(epoch),
    )
