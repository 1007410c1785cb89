"""``tpo-fast ref-logps``: the reference model's summed log-probs of every pair, stored with the
pairs, so ``train`` needs no live reference model (one no-grad pass over the packed path).

The pairs file is rewritten atomically (temporary file + rename) with ``ref_logps: [chosen,
rejected]`` added to each pair; every other field is kept. A LLaVA-NeXT ``.json`` list is
written as JSONL next to it (``<name>.jsonl``) unless an output path is given.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tpo_fast.config import TrainConfig


def output_path(pairs: Path, out: str | None) -> Path:
    if out:
        return Path(out)
    return pairs if pairs.suffix == ".jsonl" else pairs.with_suffix(".jsonl")


@torch.no_grad()
def compute_ref_logps(cfg: TrainConfig, out: str | None = None, device: str | None = None,
                      progress: bool = True) -> Path:
    """Score every valid pair with the configured (starting) model; returns the written file."""
    from tpo_fast.data.dataset import TPODataset
    from tpo_fast.data.pairs import read_pairs, write_pairs_atomic
    from tpo_fast.models import PreferenceModel
    from tpo_fast.packing import plan_bins
    from tpo_fast.train.setup import load_tokenizer_and_model

    source = Path(cfg.data.train)
    records, skipped = read_pairs(source, cfg.data.video_root, cfg.data.skip_invalid)
    tokenizer, model, _ = load_tokenizer_and_model(cfg, ds_config=None, for_training=False)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    policy = PreferenceModel(model.to(device).eval(),
                             attention_backend=cfg.model.attention_backend)
    dataset = TPODataset(records, policy, tokenizer, cfg.data)
    p, c, r = dataset.lengths()
    plan = plan_bins(p, c, r, cfg.data.token_budget, 1, cfg.run.seed,
                     drop_overlong=cfg.data.drop_overlong)
    scores: dict[int, list[float]] = {}
    bins = range(plan.num_bins)
    if progress:
        from tqdm.auto import tqdm

        bins = tqdm(bins, desc="ref log-probs", unit="batch", dynamic_ncols=True)
    try:
        for b in bins:
            ids = plan.bin(b)
            logps = policy.policy_logps(dataset.batch(ids).to(device)).cpu()
            for i, pair in enumerate(ids):
                scores[int(pair)] = [float(logps[i, 0]), float(logps[i, 1])]
    finally:
        dataset.close()
    objects = []
    for i, record in enumerate(dataset.records):
        obj = dict(record.raw)
        if i in scores:
            obj["ref_logps"] = scores[i]
        else:  # over the token budget: left without (train drops it as well)
            obj.pop("ref_logps", None)
        objects.append(obj)
    target = output_path(source, out)
    write_pairs_atomic(target, objects)
    left_out = len(skipped) + len(dataset.skipped)
    print(f"tpo-fast ref-logps: scored {len(scores)} of {len(dataset.records)} pairs -> {target}"
          + (f"; {left_out} invalid pair(s) left out of the file" if left_out else "")
          + (f"; {len(plan.dropped)} over-long pair(s) kept without ref_logps"
             if len(plan.dropped) else ""), file=sys.stderr)
    return target
