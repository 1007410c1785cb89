"""Pure-numpy oracle of the native packer (csrc/packing.cpp), step for step.

It is the test oracle for ``tpo_fast._C`` and the fallback when the extension is not built.
Both return the same dict of numpy arrays; the tests require them to be identical.
"""

from __future__ import annotations

import numpy as np

MAX_TOKEN_BUDGET = 1 << 24
MAX_QK_PER_TOKEN = 1 << 20
_MASK64 = (1 << 64) - 1
_FIELDS = ("prompt", "chosen", "rejected")


def check_lengths(prompt: np.ndarray, chosen: np.ndarray, rejected: np.ndarray) -> None:
    if prompt.size == 0:
        raise ValueError("no pairs given")
    for field, lengths in zip(_FIELDS, (prompt, chosen, rejected)):
        bad = np.flatnonzero(lengths < 1)
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"pair {i}: {field} length {int(lengths[i])} "
                "(every prompt and response needs at least one token)"
            )


class SplitMix64:
    """The generator of csrc/packing.cpp, bit for bit."""

    def __init__(self, state: int):
        self.state = state & _MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def shuffle(self, values: list) -> None:
        for i in range(len(values) - 1, 0, -1):
            j = self.next() % (i + 1)
            values[i], values[j] = values[j], values[i]


def plan_bins(prompt, chosen, rejected, token_budget, world_size, seed, epoch, qk_per_token,
              drop_overlong) -> dict:
    check_lengths(prompt, chosen, rejected)
    if not 1 <= token_budget <= MAX_TOKEN_BUDGET:
        raise ValueError(f"token_budget must be in [1, {MAX_TOKEN_BUDGET}], got {token_budget}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 1 <= qk_per_token <= MAX_QK_PER_TOKEN:
        raise ValueError(f"qk_per_token must be in [1, {MAX_QK_PER_TOKEN}], got {qk_per_token}")

    budget = token_budget
    capped = [np.minimum(x, budget + 1) for x in (prompt, chosen, rejected)]  # no overflow
    over = (capped[0] + capped[1] + capped[2]) > budget
    if over.any() and not drop_overlong:
        i = int(np.flatnonzero(over)[0])
        raise ValueError(
            f"pair {i} (prompt {prompt[i]} + chosen {chosen[i]} + rejected {rejected[i]} tokens) "
            f"exceeds token_budget {budget}; raise the budget or pass drop_overlong=True"
        )
    dropped = np.flatnonzero(over).astype(np.int64)
    kept = np.flatnonzero(~over).astype(np.int64)
    if kept.size < world_size:
        raise ValueError(
            f"{kept.size} pairs to plan ({dropped.size} dropped as over the budget) for "
            f"{world_size} ranks: every rank needs at least one pair every step"
        )

    p, c, r = (np.where(over, 0, x) for x in (prompt, chosen, rejected))
    tokens = p + c + r
    cost = tokens * qk_per_token + (p + c) * (p + c) + r * (p + r)

    # First fit, most expensive pair first; ties by pair index.
    order = kept[np.lexsort((kept, -cost[kept]))]
    room = np.zeros(kept.size, dtype=np.int64)
    bins: list[list[int]] = []
    for i in order:
        fits = room[: len(bins)] >= tokens[i]
        b = int(fits.argmax()) if fits.any() else len(bins)
        if b == len(bins):
            bins.append([])
            room[b] = budget
        bins[b].append(int(i))
        room[b] -= tokens[i]

    padding = [False] * len(bins)
    while len(bins) % world_size:
        fullest = max(range(len(bins)), key=lambda b: (len(bins[b]), -b))
        if len(bins[fullest]) < 2:
            break
        bins.append(bins[fullest][1::2])
        bins[fullest] = bins[fullest][0::2]
        padding.append(False)
    while len(bins) % world_size:
        bins.append([int(order[-1])])
        padding.append(True)

    bin_tokens = np.array([tokens[b].sum() for b in bins], dtype=np.int64)
    bin_cost = np.array([cost[b].sum() for b in bins], dtype=np.int64)
    by_cost = np.lexsort((np.arange(len(bins)), -bin_cost))
    n_steps = len(bins) // world_size
    rng = SplitMix64(seed ^ ((epoch * 0xD1B54A32D192ED03) & _MASK64))
    steps = list(range(n_steps))
    rng.shuffle(steps)
    out_bins = []
    for s in steps:
        slot = [int(b) for b in by_cost[s * world_size : (s + 1) * world_size]]
        rng.shuffle(slot)
        out_bins.extend(slot)

    sizes = np.array([len(bins[b]) for b in out_bins], dtype=np.int64)
    return {
        "bin_offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "pair_index": np.array([i for b in out_bins for i in bins[b]], dtype=np.int64),
        "bin_tokens": bin_tokens[out_bins],
        "bin_cost": bin_cost[out_bins],
        "bin_padding": np.array([padding[b] for b in out_bins], dtype=bool),
        "dropped": dropped,
    }


def build_indices(prompt, chosen, rejected) -> dict:
    check_lengths(prompt, chosen, rejected)
    if (2 * prompt + chosen + rejected).sum() > np.iinfo(np.int32).max:
        raise ValueError("micro-batch over 2^31 - 1 key slots; lower the token budget")
    out = {k: [] for k in ("position_ids", "kv_index", "logit_index", "target_index", "seq_id",
                           "sft_mask")}
    pair_offsets, cu_q, cu_k = [0], [0], [0]
    for i, (P, C, R) in enumerate(zip(prompt.tolist(), chosen.tolist(), rejected.tolist())):
        base = pair_offsets[-1]
        prompt_tok = base + np.arange(P)
        chosen_tok = base + P + np.arange(C)
        rejected_tok = base + P + C + np.arange(R)
        out["position_ids"] += [np.arange(P + C), P + np.arange(R)]
        cu_q += [base + P + C, base + P + C + R]
        cu_k += [cu_k[-1] + P + C, cu_k[-1] + P + C + P + R]
        out["kv_index"] += [prompt_tok, chosen_tok, prompt_tok, rejected_tok]
        out["target_index"] += [chosen_tok, rejected_tok]
        predictor = np.concatenate([prompt_tok[-1:], rejected_tok[:-1]])
        out["logit_index"] += [chosen_tok - 1, predictor]
        out["seq_id"] += [np.full(C, 2 * i), np.full(R, 2 * i + 1)]
        out["sft_mask"] += [np.ones(C, bool), np.zeros(R, bool)]
        pair_offsets.append(base + P + C + R)
    result = {k: np.concatenate(v).astype(bool if k == "sft_mask" else np.int64)
              for k, v in out.items()}
    result["pair_offsets"] = np.array(pair_offsets, dtype=np.int64)
    result["cu_seqlens_q"] = np.array(cu_q, dtype=np.int32)
    result["cu_seqlens_k"] = np.array(cu_k, dtype=np.int32)
    return result
