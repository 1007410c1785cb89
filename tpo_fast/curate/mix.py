"""Mixing localized and comprehensive pairs to a ratio (TPO: 5:5) and a target size."""

from __future__ import annotations

import math

from tpo_fast.curate.config import MixConfig
from tpo_fast.curate.targets import stable_seed


def mix_counts(available_l: int, available_c: int, cfg: MixConfig) -> tuple[int, int]:
    """How many localized and comprehensive pairs to take.

    ``target_size == 0``: the most pairs that keep the ratio. Otherwise the target split by the
    ratio; with ``fill``, a kind that falls short is topped up from the other."""
    wl, wc = cfg.localized, cfg.comprehensive
    if cfg.target_size == 0:
        if wl == 0:
            return 0, available_c
        if wc == 0:
            return available_l, 0
        scale = min(available_l / wl, available_c / wc)
        return math.floor(scale * wl + 1e-9), math.floor(scale * wc + 1e-9)
    want_l = round(cfg.target_size * wl / (wl + wc))
    want_c = cfg.target_size - want_l
    n_l, n_c = min(want_l, available_l), min(want_c, available_c)
    if cfg.fill:
        n_l += min(available_l - n_l, want_c - n_c)
        n_c += min(available_c - n_c, want_l - min(want_l, available_l))
    return n_l, n_c


def mix_pairs(pairs: list[dict], cfg: MixConfig, seed: int) -> tuple[list[dict], dict]:
    """(the selected pairs in a seeded, stable order, a description of the mix)."""
    def key(p: dict) -> int:
        return stable_seed(seed, p["id"], "mix")

    local = sorted((p for p in pairs if p["type"] == "localized"), key=key)
    whole = sorted((p for p in pairs if p["type"] == "comprehensive"), key=key)
    n_l, n_c = mix_counts(len(local), len(whole), cfg)
    selected = sorted(local[:n_l] + whole[:n_c], key=key)
    target = cfg.target_size or n_l + n_c
    info = {"ratio": f"{cfg.localized:g}:{cfg.comprehensive:g}", "target_size": cfg.target_size,
            "available_localized": len(local), "available_comprehensive": len(whole),
            "localized": n_l, "comprehensive": n_c, "selected": len(selected),
            "short": max(0, target - len(selected))}
    return selected, info
