"""Synthetic preference-set lengths shaped like TPO's video pairs (demo, benchmark, tests)."""

from __future__ import annotations

import numpy as np


def synthetic_lengths(
    n: int,
    seed: int = 0,
    prompt_range: tuple[int, int] = (4096, 28672),
    response_range: tuple[int, int] = (16, 1024),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[n] prompt, chosen and rejected token counts (int64).

    Prompts are uniform over ``prompt_range`` (32 to 128 frames of video plus a question);
    responses are log-uniform over ``response_range`` (most are short, a few are long).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    lo, hi = np.log(response_range[0]), np.log(response_range[1])
    prompt = rng.integers(prompt_range[0], prompt_range[1] + 1, n)
    chosen, rejected = (np.rint(np.exp(rng.uniform(lo, hi, n))) for _ in range(2))
    return prompt.astype(np.int64), chosen.astype(np.int64), rejected.astype(np.int64)
